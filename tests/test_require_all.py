"""The require-all plugin (tests/require_all.py): in CI a missing dependency fails instead of skipping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from require_all import REQUIRE_ALL_ENV, REQUIRED_MODULES, missing_modules, require_all

TESTS = Path(__file__).parent

SUITE = '''
import pytest

def test_needs_a_missing_package():
    pytest.importorskip("fashionbox_no_such_package")

def test_needs_the_server_distribution():
    pytest.skip("the embedded server needs fashionbox-server (nvidia-pytriton)")

def test_skips_for_another_reason():
    pytest.skip("reads /proc")

@pytest.mark.cuda
def test_needs_a_gpu_package():
    pytest.importorskip("fashionbox_no_such_gpu_package")

def test_runs():
    assert True
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("fashionbox_no_such_package", reason="YOLOS needs fashionbox-converter[hf] (transformers)")

def test_never_collected():
    pass
'''


def _run(tmp_path: Path, env: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: needs a GPU\n", encoding="utf-8")
    (tmp_path / "test_suite.py").write_text(SUITE, encoding="utf-8")
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", REQUIRE_ALL_ENV)}
    environ.update(env, PYTHONPATH=os.pathsep.join([str(TESTS), environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "require_all", "-p", "no:cacheprovider", "-rA",
                           "-q", *files], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=120, check=False)


def test_without_ci_missing_packages_skip_as_usual(tmp_path: Path) -> None:
    done = _run(tmp_path, {}, "test_suite.py", "test_module_skip.py")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 5 skipped" in done.stdout, done.stdout


@pytest.mark.parametrize("env", [{REQUIRE_ALL_ENV: "1"}, {"CI": "true"}])
def test_in_ci_a_skip_for_a_missing_package_fails_and_hardware_skips_stay(tmp_path: Path, env: dict[str, str]) -> None:
    done = _run(tmp_path, env, "test_suite.py")

    assert done.returncode == 1, done.stdout + done.stderr
    failed = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("FAILED")}
    expected = {"test_suite.py::test_needs_a_missing_package", "test_suite.py::test_needs_the_server_distribution"}
    assert failed == expected, done.stdout
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 2, done.stdout  # "reads /proc" and the cuda-marked test
    assert "1 passed" in done.stdout and "missing dependency, which is an error under CI" in done.stdout


def test_in_ci_a_module_skipped_for_a_missing_package_is_a_collection_error(tmp_path: Path) -> None:
    done = _run(tmp_path, {REQUIRE_ALL_ENV: "1"}, "test_module_skip.py")

    assert done.returncode == 2, done.stdout + done.stderr  # interrupted: errors during collection
    assert "ERROR test_module_skip.py - skipped for a missing dependency" in done.stdout, done.stdout
    assert "YOLOS needs fashionbox-converter[hf] (transformers)" in done.stdout


def test_explicitly_off_wins_over_ci(tmp_path: Path) -> None:
    done = _run(tmp_path, {"CI": "true", REQUIRE_ALL_ENV: "0"}, "test_suite.py", "test_module_skip.py")

    assert done.returncode == 0, done.stdout + done.stderr


def test_require_all_reads_ci_and_an_explicit_setting_wins() -> None:
    assert not require_all({})
    assert require_all({"CI": "true"})
    assert require_all({REQUIRE_ALL_ENV: "1"})
    assert not require_all({"CI": "true", REQUIRE_ALL_ENV: "0"})


def test_missing_modules_names_what_cannot_be_imported_including_dotted_names() -> None:
    assert missing_modules(["json", "fashionbox_no_such_package", "fashionbox_no_such_package.grpc"]) == [
        "fashionbox_no_such_package", "fashionbox_no_such_package.grpc"]


def test_this_machine_has_every_required_module() -> None:
    """scripts/test.sh runs with FASHIONBOX_REQUIRE_ALL=1, so the full suite depends on this."""
    assert missing_modules() == [], {name: REQUIRED_MODULES[name] for name in missing_modules()}


def test_in_ci_the_session_refuses_to_start_without_a_required_module(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("import require_all\n"
                                          "require_all.REQUIRED_MODULES['fashionbox_no_such_package'] = 'a stand-in'\n",
                                          encoding="utf-8")
    done = _run(tmp_path, {REQUIRE_ALL_ENV: "1"}, "test_suite.py")

    assert done.returncode == 4, done.stdout + done.stderr  # usage error: nothing ran
    assert "these are missing" in done.stderr and "fashionbox_no_such_package: a stand-in" in done.stderr
