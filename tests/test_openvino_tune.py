"""``fashionbox tune`` with the runtime as a coordinate: ONNX Runtime or OpenVINO by a config parameter.

On target cpu the ``detector`` and ``attributes`` python models run the same ``model.onnx`` in
either runtime, so the search switches their ``runtime``/``precision`` parameters (no
re-conversion), measures each candidate once at the starting scheduling and keeps the best by the
same noise guard as every other coordinate. Without a server here: the configs and the choice on
known objectives; the real reload path is the one the scheduling search already uses.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fashionbox import contract
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.repository import (
    CONFIG_FILE,
    ImageBranch,
    RepositorySettings,
    model_configs,
    write_model_config,
)
from fashionbox.core.serving import RuntimeSettings
from fashionbox.loadtest.errors import LoadTestConfigError
from fashionbox.loadtest.tune import (
    CPU_RUNTIMES,
    Trial,
    TuneConfig,
    TuneOptions,
    TuneReport,
    TuneSpace,
    apply_runtime,
    choose_runtime,
    read_configs,
    runtime_models,
    runtime_of,
    write_back,
)

LABELS = default_label_map()
CPU_CONFIGS = model_configs(RepositorySettings(), LABELS)
START: TuneConfig = ()


def test_a_cpu_repository_runs_onnx_runtime_fp32_until_told_otherwise() -> None:
    assert runtime_of(CPU_CONFIGS) == "onnxruntime/fp32"
    openvino = model_configs(RepositorySettings(runtime=RuntimeSettings(runtime="openvino", precision="bf16")), LABELS)
    assert runtime_of(openvino) == "openvino/bf16"


def test_switching_the_runtime_rewrites_only_the_network_models_parameters() -> None:
    switched = apply_runtime(CPU_CONFIGS, "openvino/bf16")

    assert runtime_of(switched) == "openvino/bf16"
    for name in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
        assert switched[name].parameters["runtime"].string_value == "openvino"
        assert switched[name].parameters["precision"].string_value == "bf16"
    for name in (contract.PREPROCESS_MODEL, contract.POSTPROCESS_MODEL, contract.ENSEMBLE_MODEL):
        assert switched[name] == CPU_CONFIGS[name]
    assert runtime_of(CPU_CONFIGS) == "onnxruntime/fp32", "the input configs are not changed"
    # what the converter writes for --runtime openvino is exactly what the switch writes
    converted = model_configs(RepositorySettings(runtime=RuntimeSettings(runtime="openvino", precision="bf16")),
                              LABELS)
    for name in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
        assert dict(switched[name].parameters) == dict(converted[name].parameters)
    assert apply_runtime(switched, "onnxruntime/fp32")[contract.DETECTOR_MODEL].parameters["runtime"].string_value \
        == "onnxruntime"


def test_the_image_level_networks_switch_with_the_others() -> None:
    """A classifier and an embedder run in the repository's runtime, as the converter writes them."""
    branches = {"classifier": ImageBranch(name="hf:c", view="{}", height=32, width=32, size=3, labels=("a", "b", "c")),
                "embedder": ImageBranch(name="hf:e", view="{}", height=32, width=32, size=8)}
    configs = model_configs(RepositorySettings(**branches), LABELS)  # type: ignore[arg-type]
    converted = model_configs(RepositorySettings(runtime=RuntimeSettings(runtime="openvino", precision="fp32"),
                                                 **branches), LABELS)  # type: ignore[arg-type]

    assert runtime_models(configs) == (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL, contract.CLASSIFIER_MODEL,
                                       contract.EMBEDDER_MODEL)
    switched = apply_runtime(configs, "openvino/fp32")
    for name in (contract.CLASSIFIER_MODEL, contract.EMBEDDER_MODEL):
        assert dict(switched[name].parameters) == dict(converted[name].parameters), name
        back = apply_runtime(switched, "onnxruntime/fp32")[name].parameters
        assert (back["runtime"].string_value, back["precision"].string_value) == ("onnxruntime", "fp32")


def test_repositories_whose_networks_are_not_onnx_python_models_are_refused() -> None:
    torch_configs = model_configs(RepositorySettings(runtime=RuntimeSettings(runtime="torch")), LABELS)
    with pytest.raises(LoadTestConfigError, match="convert with --target cpu"):
        apply_runtime(torch_configs, "openvino/fp32")
    with pytest.raises(LoadTestConfigError, match="unknown runtime"):
        apply_runtime(CPU_CONFIGS, "tvm/fp32")
    with pytest.raises(LoadTestConfigError, match="unknown runtimes"):
        TuneOptions(repository=Path("r"), images=(b"jpeg",), runtimes=("openvino/fp16",))


def _choose(throughput: dict[str, float], errors: frozenset[str] = frozenset(),
            current: str = "onnxruntime/fp32") -> tuple[list[Trial], str]:
    async def evaluate(runtime: str, change: str) -> Trial:
        error = "failed to load" if runtime in errors else ""
        return Trial(0, START, change, throughput[runtime], 50.0, 4, True, error=error, runtime=runtime)

    return asyncio.run(choose_runtime(evaluate, current, CPU_RUNTIMES, min_gain=0.03))


def test_the_runtime_search_measures_each_candidate_once_and_keeps_the_fastest() -> None:
    trials, chosen = _choose({"onnxruntime/fp32": 40.0, "openvino/fp32": 30.0, "openvino/bf16": 55.0})

    assert chosen == "openvino/bf16"
    assert [t.runtime for t in trials] == list(CPU_RUNTIMES)
    assert [t.change for t in trials] == ["baseline", "runtime onnxruntime/fp32 -> openvino/fp32",
                                          "runtime onnxruntime/fp32 -> openvino/bf16"]


def test_a_runtime_within_the_noise_guard_does_not_replace_the_current_one() -> None:
    _, chosen = _choose({"onnxruntime/fp32": 40.0, "openvino/fp32": 40.8, "openvino/bf16": 41.0})
    assert chosen == "onnxruntime/fp32"


def test_a_runtime_that_fails_to_load_never_wins() -> None:
    _, chosen = _choose({"onnxruntime/fp32": 40.0, "openvino/fp32": 30.0, "openvino/bf16": 90.0},
                        errors=frozenset({"openvino/bf16"}))
    assert chosen == "onnxruntime/fp32"


def test_write_back_writes_the_chosen_runtime_into_both_network_models(tmp_path: Path) -> None:
    for name, config in CPU_CONFIGS.items():
        (tmp_path / name).mkdir()
        write_model_config(tmp_path / name / CONFIG_FILE, config)

    written = write_back(tmp_path, START, runtime="openvino/fp32")

    assert sorted(p.parent.name for p in written) == [contract.ATTRIBUTES_MODEL, contract.DETECTOR_MODEL]
    assert runtime_of(read_configs(tmp_path)) == "openvino/fp32"
    assert write_back(tmp_path, START, runtime="openvino/fp32") == []


def test_a_runtime_change_alone_counts_as_a_recommendation() -> None:
    baseline = Trial(0, START, "baseline", 40.0, 50.0, 4, True, runtime="onnxruntime/fp32")
    best = Trial(2, START, "runtime onnxruntime/fp32 -> openvino/bf16", 55.0, 50.0, 4, True, runtime="openvino/bf16")
    report = TuneReport(Path("r"), 100.0, (4,), TuneSpace(), (baseline, best), best, baseline, min_gain=0.03)

    assert report.confirmed
    assert report.to_dict()["runtime"] == "openvino/bf16"
    assert report.to_dict()["trials"][1]["runtime"] == "openvino/bf16"


def test_the_tune_command_offers_exactly_the_runtimes_tune_searches() -> None:
    import argparse

    from fashionbox.loadtest.cli import add_tune_arguments
    from fashionbox.loadtest.tune import CPU_RUNTIMES

    parser = argparse.ArgumentParser()
    add_tune_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == "runtimes"]
    assert tuple(action.choices or ()) == CPU_RUNTIMES
    args = parser.parse_args(["--runtime", "openvino/bf16", "--runtime", "onnxruntime/fp32"])
    assert args.runtimes == ["openvino/bf16", "onnxruntime/fp32"]
