"""``fashionbox tune`` with the runtime as a coordinate: ONNX Runtime or OpenVINO by a config parameter.

On target cpu the ``detector`` and ``attributes`` python models run the same ``model.onnx`` in
either runtime, so the search switches their ``runtime``/``precision`` parameters (no
re-conversion), measures each candidate once at the starting scheduling and keeps the best by the
same noise guard as every other coordinate. A repository converted for the torch runtime ships the
graphs beside its checkpoints, so it switches to those two and back. Without a server here: the
configs and the choice on known objectives; the real reload path is the one the scheduling search
already uses (``tests/test_openvino_tune_served.py`` serves both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
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
from fashionbox.core.serving import OrtSettings, RuntimeSettings
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
    configs_for,
    missing_runtime_files,
    read_configs,
    runtime_models,
    runtime_of,
    threads_of,
    torch_settings_of,
    tuning_of,
    write_back,
)

LABELS = default_label_map()
CPU_CONFIGS = model_configs(RepositorySettings(), LABELS)
START: TuneConfig = ()
BRANCHES = {"classifier": ImageBranch(name="hf:c", view="{}", height=32, width=32, size=3, labels=("a", "b", "c")),
            "embedder": ImageBranch(name="hf:e", view="{}", height=32, width=32, size=8)}


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
    configs = model_configs(RepositorySettings(**BRANCHES), LABELS)  # type: ignore[arg-type]
    converted = model_configs(RepositorySettings(runtime=RuntimeSettings(runtime="openvino", precision="fp32"),
                                                 **BRANCHES), LABELS)  # type: ignore[arg-type]

    assert runtime_models(configs) == (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL, contract.CLASSIFIER_MODEL,
                                       contract.EMBEDDER_MODEL)
    switched = apply_runtime(configs, "openvino/fp32")
    for name in (contract.CLASSIFIER_MODEL, contract.EMBEDDER_MODEL):
        assert dict(switched[name].parameters) == dict(converted[name].parameters), name
        back = apply_runtime(switched, "onnxruntime/fp32")[name].parameters
        assert (back["runtime"].string_value, back["precision"].string_value) == ("onnxruntime", "fp32")


def test_an_embedders_text_tower_follows_into_openvino_and_stays_in_onnx_runtime_elsewhere() -> None:
    """``text_embedder`` (ONNX only) is written as the converter writes it for each runtime: OpenVINO's
    parameters with the networks there, none (ONNX Runtime) for ONNX Runtime and for the torch runtime."""
    branches = {**BRANCHES, "embedder": dataclasses.replace(BRANCHES["embedder"], text=True)}

    def converted(runtime: str, precision: str = "fp32") -> dict[str, object]:
        return model_configs(RepositorySettings(runtime=RuntimeSettings(runtime=runtime, precision=precision),
                                                **branches), LABELS)  # type: ignore[arg-type]

    text = contract.TEXT_EMBEDDER_MODEL
    onnx, torch = converted("onnxruntime"), converted("torch")
    assert "runtime" not in onnx[text].parameters and "runtime" not in torch[text].parameters  # type: ignore[attr-defined]
    for start in (onnx, torch):
        for runtime, precision in (("openvino", "fp32"), ("openvino", "bf16")):
            switched = apply_runtime(start, f"{runtime}/{precision}")
            assert switched[text] == converted(runtime, precision)[text], (runtime, precision)
            assert apply_runtime(switched, "onnxruntime/fp32")[text] == onnx[text]
    assert apply_runtime(torch, "torch/fp32")[text] == torch[text]


def test_a_torch_repository_switches_to_onnx_runtime_and_openvino_as_the_converter_writes_them() -> None:
    torch_configs = model_configs(RepositorySettings(runtime=RuntimeSettings(runtime="torch", torch_threads=2),
                                                     **BRANCHES), LABELS)  # type: ignore[arg-type]
    assert runtime_of(torch_configs) == "torch/fp32"

    for runtime, precision in (("openvino", "fp32"), ("onnxruntime", "fp32")):
        switched = apply_runtime(torch_configs, f"{runtime}/{precision}")
        converted = model_configs(RepositorySettings(ort=OrtSettings(intra_op_threads=2),
                                                     runtime=RuntimeSettings(runtime=runtime, precision=precision),
                                                     **BRANCHES), LABELS)  # type: ignore[arg-type]
        assert runtime_of(switched) == f"{runtime}/{precision}"
        for name in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL, contract.CLASSIFIER_MODEL,
                     contract.EMBEDDER_MODEL):
            parameters = {key: value.string_value for key, value in switched[name].parameters.items()}
            wanted = {key: value.string_value for key, value in converted[name].parameters.items()}
            # the converter names no runtime for ONNX Runtime (its default); the switch names it
            assert parameters == {**wanted, "runtime": runtime, "precision": precision}, name
            assert threads_of(switched[name]) == 2, "the threads per instance carry over"
    assert apply_runtime(torch_configs, "torch/fp32") == torch_configs, "back to torch: the configs as converted"


def test_only_a_repository_converted_for_torch_switches_to_it_and_gpu_profiles_not_at_all() -> None:
    with pytest.raises(LoadTestConfigError, match="runs onnxruntime; the torch runtime's checkpoints"):
        apply_runtime(CPU_CONFIGS, "torch/fp32")
    gpu_torch = model_configs(RepositorySettings(target="gpu", runtime=RuntimeSettings(runtime="torch")), LABELS)
    with pytest.raises(LoadTestConfigError, match="convert with --target cpu"):
        apply_runtime(gpu_torch, "onnxruntime/fp32")


def test_a_repository_converted_for_torch_goes_back_to_it_after_tune_wrote_another_runtime(tmp_path: Path) -> None:
    """``tune --write`` moved a torch repository to ONNX Runtime: its manifest still says it was converted for
    torch, with the NMS it exported, so the torch runtime is a candidate again and writing it back gives the
    configs as converted (the threads per instance carried both ways)."""
    nms = RuntimeSettings(runtime="torch", torch_threads=2, score_threshold=0.3, iou_threshold=0.55)
    torch_configs = model_configs(RepositorySettings(runtime=nms, **BRANCHES), LABELS)  # type: ignore[arg-type]
    for name, config in torch_configs.items():
        (tmp_path / name).mkdir()
        write_model_config(tmp_path / name / CONFIG_FILE, config)
    (tmp_path / contract.MANIFEST_FILE).write_text(json.dumps(
        {"runtime": "torch", "precision": "fp32", "export": {"nms": {"score_threshold": 0.3, "iou_threshold": 0.55}}}))

    write_back(tmp_path, START, runtime="onnxruntime/fp32")
    assert runtime_of(read_configs(tmp_path)) == "onnxruntime/fp32"
    assert json.loads((tmp_path / contract.MANIFEST_FILE).read_text())["converted_runtime"] == "torch/fp32"
    settings = torch_settings_of(tmp_path)
    assert settings is not None and (settings.score_threshold, settings.iou_threshold) == (0.3, 0.55)
    with pytest.raises(LoadTestConfigError, match="runs onnxruntime"):  # without the manifest's settings
        apply_runtime(read_configs(tmp_path), "torch/fp32")

    write_back(tmp_path, START, runtime="torch/fp32")
    assert read_configs(tmp_path) == torch_configs
    assert json.loads((tmp_path / contract.MANIFEST_FILE).read_text())["runtime"] == "torch"
    (tmp_path / contract.MANIFEST_FILE).write_text(json.dumps({"runtime": "onnxruntime"}))
    assert torch_settings_of(tmp_path) is None  # converted for ONNX Runtime: no torch settings to go back to


def test_the_threads_of_a_torch_network_are_its_torch_threads() -> None:
    torch_configs = model_configs(RepositorySettings(runtime=RuntimeSettings(runtime="torch", torch_threads=2)), LABELS)
    detector = torch_configs[contract.DETECTOR_MODEL]
    assert tuning_of(detector).threads == 2

    changed = configs_for(torch_configs, ((contract.DETECTOR_MODEL,
                                           dataclasses.replace(tuning_of(detector), threads=1)),))
    parameters = changed[contract.DETECTOR_MODEL].parameters
    assert parameters["torch_threads"].string_value == "1"
    assert "intra_op_threads" not in parameters, "the torch runtime reads torch_threads only"


def test_the_files_a_runtime_needs_are_named_where_the_repository_lacks_them(tmp_path: Path) -> None:
    torch_configs = model_configs(RepositorySettings(runtime=RuntimeSettings(runtime="torch"), **BRANCHES),
                                  LABELS)  # type: ignore[arg-type]
    for name in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.onnx").write_bytes(b"graph")
    (tmp_path / contract.DETECTOR_MODEL / "1" / "model.safetensors").write_bytes(b"weights")
    for name in (contract.CLASSIFIER_MODEL, contract.EMBEDDER_MODEL):
        (tmp_path / name / "1" / "transformers").mkdir(parents=True)

    assert missing_runtime_files(tmp_path, torch_configs, "torch/fp32") == ["attributes/1/model.safetensors"]
    assert missing_runtime_files(tmp_path, torch_configs, "openvino/fp32") == [
        "classifier/1/model.onnx", "embedder/1/model.onnx"]
    (tmp_path / contract.ATTRIBUTES_MODEL / "1" / "model.safetensors").write_bytes(b"weights")
    assert missing_runtime_files(tmp_path, torch_configs, "torch/fp32") == []


def test_unknown_runtimes_are_refused() -> None:
    with pytest.raises(LoadTestConfigError, match="unknown runtime"):
        apply_runtime(CPU_CONFIGS, "tvm/fp32")
    with pytest.raises(LoadTestConfigError, match="unknown runtimes"):
        TuneOptions(repository=Path("r"), images=(b"jpeg",), runtimes=("openvino/fp16",))


def _choose(throughput: dict[str, float], errors: frozenset[str] = frozenset(),
            current: str = "onnxruntime/fp32") -> tuple[list[Trial], str]:
    async def evaluate(runtime: str, change: str) -> Trial:
        error = "failed to load" if runtime in errors else ""
        return Trial(0, START, change, throughput[runtime], 50.0, 4, True, error=error, runtime=runtime)

    return asyncio.run(choose_runtime(evaluate, current, tuple(throughput), min_gain=0.03))


def test_the_runtime_search_measures_each_candidate_once_and_keeps_the_fastest() -> None:
    trials, chosen = _choose({"onnxruntime/fp32": 40.0, "openvino/fp32": 30.0, "openvino/bf16": 55.0,
                              "torch/fp32": 35.0})

    assert chosen == "openvino/bf16"
    assert [t.runtime for t in trials] == list(CPU_RUNTIMES)
    assert [t.change for t in trials] == ["baseline", "runtime onnxruntime/fp32 -> openvino/fp32",
                                          "runtime onnxruntime/fp32 -> openvino/bf16",
                                          "runtime onnxruntime/fp32 -> torch/fp32"]


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


def test_the_report_names_each_trials_runtime_and_the_recommended_one() -> None:
    from fashionbox.loadtest.printers import format_tune

    baseline = Trial(0, START, "baseline", 29.0, 260.0, 4, True, runtime="torch/fp32")
    switched = Trial(1, START, "runtime torch/fp32 -> onnxruntime/fp32", 49.0, 190.0, 4, True,
                     runtime="onnxruntime/fp32")
    again = Trial(2, START, "baseline", 51.0, 140.0, 4, True, runtime="onnxruntime/fp32")
    report = TuneReport(Path("r"), 300.0, (4,), TuneSpace(), (baseline, switched, again), again, baseline,
                        min_gain=0.03)

    lines = format_tune(report).splitlines()
    header = next(line for line in lines if line.startswith("#"))
    assert header.split()[:3] == ["#", "change", "runtime"]
    assert next(line for line in lines if line.startswith("2 ")).split()[:3] == ["2", "baseline", "onnxruntime/fp32"]
    assert "  runtime: onnxruntime/fp32   (was torch/fp32)" in lines
    plain = dataclasses.replace(report, trials=(dataclasses.replace(baseline, runtime=""),),
                                best=dataclasses.replace(baseline, runtime=""),
                                baseline=dataclasses.replace(baseline, runtime=""))
    assert "runtime" not in format_tune(plain), "no runtime column nor line where the runtime was not searched"


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
