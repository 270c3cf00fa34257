"""``fashionbox tune`` switching the runtime on a real embedded Triton: reloads, labels, write-back.

A repository converted with ONNX Runtime is tuned with the runtime as a coordinate: each candidate
is loaded by rewriting the network models' ``runtime``/``precision`` parameters in the served copy
and reloading them through Triton's repository API, then measured; a candidate that failed to load
would carry its error. A repository converted for the torch runtime switches to ONNX Runtime and back
the same way. Short windows: this checks the mechanism, not which runtime is faster.
"""

from __future__ import annotations

import json
import shutil
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from fashionbox.converter import ConvertOptions, convert
from fashionbox.loadtest.errors import LoadTestConfigError
from fashionbox.loadtest.tune import (
    Launcher,
    TuneOptions,
    TuneReport,
    TuneSpace,
    read_configs,
    runtime_of,
    tune,
    write_back,
)
from fashionbox.loadtest.windows import StabilityRule
from fashionbox.server import serve_for_tuning
from fashionbox.synth import render_scene


def _short_tune(repository: Path, runtimes: tuple[str, ...], launch: Launcher = serve_for_tuning) -> TuneReport:
    """Each runtime measured once, then one scheduling trial of the detector: seconds, not minutes."""
    images = tuple(render_scene(50 + i, size=(640, 480)).encode(format="JPEG") for i in range(2))
    return tune(TuneOptions(
        repository=repository, images=images, concurrency=(2,), max_trials=1, confirm=False,
        space=TuneSpace(models=("detector",), instances=(1,), threads=(1,), max_batch_sizes=(8,),
                        queue_delays_us=(0,)),
        window_s=0.5, warmup_s=0.5, max_duration_s=2.0, stability=StabilityRule(tolerance=0.5),
        runtimes=runtimes), launch=launch)


def _tune_and_write(tmp_path: Path, converted: str, runtimes: tuple[str, ...], written: str) -> tuple[Path, Path]:
    """A repository converted for ``converted``, tuned over ``runtimes`` (each measured, the original left as
    it was), and a copy with ``written`` written back: (the repository, the copy)."""
    repository = convert(ConvertOptions(out=tmp_path / "repository", runtime=converted, compare_samples=1)).repository
    report = _short_tune(repository, runtimes)

    runtime_trials = report.trials[:len(runtimes)]
    assert [t.runtime for t in runtime_trials] == list(runtimes)
    assert [t.change for t in runtime_trials] == ["baseline", *(f"runtime {runtimes[0]} -> {r}" for r in runtimes[1:])]
    assert all(not t.error and t.throughput_rps > 0 for t in report.trials), [t.error for t in report.trials]
    assert report.baseline.runtime == runtimes[0]
    assert report.best.runtime in runtimes
    assert runtime_of(read_configs(repository)) == runtimes[0], "the original is untouched"

    copy = tmp_path / "written"
    shutil.copytree(repository, copy)
    write_back(copy, report.best.config, runtime=written)
    assert runtime_of(read_configs(copy)) == written
    return repository, copy


@pytest.mark.integration
def test_tune_measures_each_runtime_on_the_served_copy_and_writes_the_chosen_one_back(tmp_path: Path) -> None:
    repository, _ = _tune_and_write(tmp_path, "onnxruntime", ("onnxruntime/fp32", "openvino/fp32"), "openvino/fp32")

    def no_server(repository: Path, log_path: Path | None) -> AbstractContextManager[str]:
        raise AssertionError("a runtime the repository cannot serve must be refused before any server starts")

    lacking = r"torch/fp32 cannot run here: .* lacks detector/1/model\.safetensors"
    with pytest.raises(LoadTestConfigError, match=lacking):
        _short_tune(repository, ("onnxruntime/fp32", "torch/fp32"), launch=no_server)


@pytest.mark.integration
def test_tune_switches_a_torch_repository_to_onnx_runtime_and_back_on_the_served_copy(tmp_path: Path) -> None:
    _, copy = _tune_and_write(tmp_path, "torch", ("torch/fp32", "onnxruntime/fp32"), "onnxruntime/fp32")

    detector = read_configs(copy)["detector"].parameters
    assert (detector["runtime"].string_value, detector["intra_op_threads"].string_value) == ("onnxruntime", "1")
    assert "torch_threads" not in detector and "score_threshold" not in detector
    manifest = json.loads((copy / "manifest.json").read_text())
    assert (manifest["runtime"], manifest["precision"], manifest["converted_runtime"]) == \
        ("onnxruntime", "fp32", "torch/fp32")
