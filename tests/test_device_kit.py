"""The GPU session's kit (scripts/device_kit.py): the Triton it cuts to serving still serves.

Building the whole kit downloads wheels and compresses 190 MB (a minute and more), so the tests
take the part that can silently break: the shared libraries read with ``ldd``. A library left out
fails only when the server starts on the device, where time is short; here a server is started
from the cut copy alone and answers.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_server import ECHO_MODEL, write_model

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _kit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("device_kit", ROOT / "scripts" / "device_kit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cut_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("cut-site")
    _kit_module().copy_triton(site, PYTHON_VERSION)
    return site


def test_the_cut_triton_holds_only_what_serving_loads(cut_site: Path) -> None:
    from fashionbox.server import find_triton_distribution

    installed = find_triton_distribution()
    root = cut_site / "pytriton" / "tritonserver"
    assert (root / "bin" / "tritonserver").is_file()
    assert (root / "backends" / "python" / "libtriton_python.so").is_file()
    assert [p.name for p in (root / "python_backend_stubs").iterdir()] == [PYTHON_VERSION]
    libraries = {p.name for p in (cut_site / installed.libs.name).iterdir()}
    assert any(name.startswith("libtritonserver") for name in libraries)
    assert libraries < {p.name for p in installed.libs.iterdir()}  # a strict subset: something was cut
    assert not any(name.startswith("libpython") for name in libraries)  # the other Pythons' stubs' needs
    metadata = (cut_site / f"nvidia_pytriton-{installed.version}.dist-info" / "METADATA").read_text()
    assert f"Version: {installed.version}" in metadata


def test_a_stub_missing_for_the_python_asked_for_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no python backend stub for Python 2\.7"):
        _kit_module().copy_triton(tmp_path, "2.7")


@pytest.mark.integration
def test_a_server_started_from_the_cut_triton_alone_answers(cut_site: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "echo", ECHO_MODEL)
    # A child whose PYTHONPATH puts the cut copy before the installed wheel, with a fresh backends
    # cache, so binary, libraries, backend and stub all come from the cut copy.
    program = f"""
import numpy as np, tritonclient.grpc as grpcclient
from fashionbox.server import find_triton_distribution, start_on_free_ports
assert find_triton_distribution().root.is_relative_to({str(cut_site)!r}), find_triton_distribution()
server = start_on_free_ports(__import__("pathlib").Path({str(repository)!r}), {str(tmp_path)!r})
try:
    client = grpcclient.InferenceServerClient(server.endpoints.grpc)
    tensor = grpcclient.InferInput("INPUT", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.arange(3, dtype=np.float32).reshape(1, 3))
    print("OUTPUT", client.infer("echo", [tensor]).as_numpy("OUTPUT").tolist())
    client.close()
finally:
    server.stop()
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(cut_site), os.environ.get("PYTHONPATH")])),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OUTPUT [[0.0, 1.0, 2.0]]" in done.stdout


def _session_arguments(script: Path, variable: str, benchmark: str) -> tuple[argparse.Namespace, ModuleType]:
    """``variable``'s default in the session script, parsed by ``benchmark``'s own argument parser; and
    that benchmark's module."""
    match = re.search(rf"^{variable}=\$\{{{variable}:-(.*)\}}$", script.read_text(), re.MULTILINE)
    assert match is not None, f"gpu_session.sh sets no default {variable}"
    sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
    try:
        module = importlib.import_module(benchmark)
    finally:
        sys.path.remove(str(ROOT / "tests" / "benchmarks"))
    parsed: argparse.Namespace = module.build_parser().parse_args(shlex.split(match.group(1)))
    return parsed, module


def test_the_session_script_is_valid_bash_and_its_benchmark_arguments_parse() -> None:
    script = ROOT / "scripts" / "gpu_session.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    args, bench_gpu = _session_arguments(script, "BENCH_ARGS", "bench_gpu")
    assert set(args.profiles.split(",")) <= set(bench_gpu.PROFILES)
    assert {"cpu-best", "gpu"} <= set(args.profiles.split(","))  # GPU against the best CPU runtime (issue 23)
    assert "gpu-same-shape" in args.profiles.split(",")  # what ragged batches bring to postprocess on the GPU
    assert args.rounds >= 2  # medians of several runs
    # The training-cost step (issue 18): bench_train_coco on CUDA with mixed precision.
    train, _ = _session_arguments(script, "TRAIN_ARGS", "bench_train_coco")
    assert train.device == "cuda" and train.amp and train.detector_steps > 0 and train.attribute_steps > 0
    # A family on the GPU (issue 20): a transformers detector through the torch runtime against the best CPU.
    family, _ = _session_arguments(script, "FAMILY_ARGS", "bench_gpu")
    assert family.detector in bench_gpu.DETECTORS and family.detector != "default"
    assert {"cpu-best", "gpu"} == set(family.profiles.split(","))
    steps = re.search(r"^STEPS=\$\{STEPS:-(.*)\}$", script.read_text(), re.MULTILINE)
    assert steps is not None and set(steps.group(1).split()) == {"shapes", "tests", "bench", "train", "family"}


def test_the_gpu_summary_keeps_levels_where_no_request_finished_and_ratios_only_over_measured_rates() -> None:
    """A heavy family's CPU profile at a high level may finish no request in a short window: its latency is
    None there. The summary (written after every profile, so a run cut short keeps it) must not fail on it."""
    _, bench_gpu = _session_arguments(ROOT / "scripts" / "gpu_session.sh", "BENCH_ARGS", "bench_gpu")

    def run(rate: float, p50: float | None) -> dict[str, Any]:
        point = {"throughput_rps": rate, "concurrency": 16, "errors": 0, "latency_ms": {"p50": p50, "p99": p50}}
        return {"best": point, "points": {"16": point}, "latency_c1": {"latency_ms": {"p50": 600.0, "p99": 700.0}}}

    summary = bench_gpu.summary_with_ratios([{"gpu": run(300.0, 50.0), "cpu-best": run(0.0, None)},
                                             {"gpu": run(310.0, 52.0), "cpu-best": run(2.0, 4000.0)},
                                             {"gpu": run(320.0, 60.0)}])  # the last round still under way
    assert summary["cpu-best"]["p50_ms"] == 4000.0 and summary["gpu"]["p50_ms"] == 52.0
    assert summary["gpu_over_best_cpu"] == round(310.0 / 1.0, 1)
    summary = bench_gpu.summary_with_ratios([{"gpu": run(300.0, 50.0), "cpu-best": run(0.0, None)}])
    assert summary["cpu-best"]["p50_ms"] is None and "gpu_over_best_cpu" not in summary
