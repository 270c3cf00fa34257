"""``fashionbox tune`` switching the runtime on a real embedded Triton: reloads, labels, write-back.

A repository converted with ONNX Runtime is tuned with the runtime as a coordinate: each candidate
is loaded by rewriting the network models' ``runtime``/``precision`` parameters in the served copy
and reloading them through Triton's repository API, then measured; a candidate that failed to load
would carry its error. Short windows: this checks the mechanism, not which runtime is faster.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fashionbox.converter import ConvertOptions, convert
from fashionbox.loadtest.tune import TuneOptions, TuneSpace, read_configs, runtime_of, tune, write_back
from fashionbox.loadtest.windows import StabilityRule
from fashionbox.server import serve_for_tuning
from fashionbox.synth import render_scene


@pytest.mark.integration
def test_tune_measures_each_runtime_on_the_served_copy_and_writes_the_chosen_one_back(tmp_path: Path) -> None:
    repository = convert(ConvertOptions(out=tmp_path / "repository", runtime="onnxruntime",
                                        compare_samples=1)).repository
    images = tuple(render_scene(50 + i, size=(640, 480)).encode(format="JPEG") for i in range(2))
    report = tune(TuneOptions(
        repository=repository, images=images, concurrency=(2,), max_trials=1, confirm=False,
        space=TuneSpace(models=("detector",), instances=(1,), threads=(1,), max_batch_sizes=(8,),
                        queue_delays_us=(0,)),
        window_s=0.5, warmup_s=0.5, max_duration_s=2.0, stability=StabilityRule(tolerance=0.5),
        runtimes=("onnxruntime/fp32", "openvino/fp32")), launch=serve_for_tuning)

    runtime_trials = report.trials[:2]
    assert [t.runtime for t in runtime_trials] == ["onnxruntime/fp32", "openvino/fp32"]
    assert [t.change for t in runtime_trials] == ["baseline", "runtime onnxruntime/fp32 -> openvino/fp32"]
    assert all(not t.error and t.throughput_rps > 0 for t in report.trials), [t.error for t in report.trials]
    assert report.baseline.runtime == "onnxruntime/fp32"
    assert report.best.runtime in ("onnxruntime/fp32", "openvino/fp32")
    assert runtime_of(read_configs(repository)) == "onnxruntime/fp32", "the original is untouched"

    copy = tmp_path / "written"
    shutil.copytree(repository, copy)
    write_back(copy, report.best.config, runtime="openvino/fp32")
    assert runtime_of(read_configs(copy)) == "openvino/fp32"
