"""fashionbox.converter.repository: generated configs, ensemble wiring, atomic repository writes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from onnx_standins import DetectorStandIn, write_attributes, write_detector
from tritonclient.grpc import model_config_pb2 as mc

from fashionbox import contract
from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.converter import repository
from fashionbox.converter.repository import (
    LABELS_JSON_PARAMETER,
    ModelScheduling,
    RepositorySettings,
    model_configs,
    write_model_config,
    write_repository,
)
from fashionbox.core.serving import (
    AttributesParameters,
    DetectorParameters,
    OrtSettings,
    Parameters,
    PostprocessParameters,
    PreprocessParameters,
    RuntimeSettings,
)

LABELS = default_label_map()

SETTINGS = RepositorySettings(
    input_size=64,
    crop_size=32,
    max_detections=10,
    preprocess=ModelScheduling(
        instances=2,
        max_batch_size=4,
        preferred_batch_sizes=(2, 4),
        max_queue_delay_us=500,
        max_queue_size=16,
        queue_timeout_us=250_000,
    ),
    detector=ModelScheduling(instances=1, max_batch_size=8),
    attributes=ModelScheduling(instances=1, max_batch_size=32, max_queue_delay_us=100),
    postprocess=ModelScheduling(instances=3, max_batch_size=8),
    ort=OrtSettings(intra_op_threads=2),
    max_image_bytes=1_000_000,
    max_pixels=4_000_000,
    max_in_flight=12,
    admission_ttl_ms=5_000,
    model_version="test-1",
    model_name="standin",
)

EXPECTED = {
    "preprocess": """
        name: "preprocess"  backend: "python"  max_batch_size: 4
        input { name: "IMAGE" data_type: TYPE_STRING dims: [1] }
        output { name: "PIXELS" data_type: TYPE_UINT8 dims: [64, 64, 3] }
        output { name: "IMAGE_INFO" data_type: TYPE_FP32 dims: [5] }
        output { name: "TOKEN" data_type: TYPE_UINT8 dims: [32] }
        instance_group { count: 2 kind: KIND_CPU }
        dynamic_batching {
          preferred_batch_size: [2, 4] max_queue_delay_microseconds: 500
          default_queue_policy { default_timeout_microseconds: 250000 max_queue_size: 16 }
        }
        parameters { key: "input_size" value { string_value: "64" } }
        parameters { key: "max_image_bytes" value { string_value: "1000000" } }
        parameters { key: "max_pixels" value { string_value: "4000000" } }
        parameters { key: "max_in_flight" value { string_value: "12" } }
        parameters { key: "admission_ttl_ms" value { string_value: "5000" } }
        parameters { key: "admission_pending_ms" value { string_value: "1000" } }
    """,
    "detector": """
        name: "detector"  backend: "python"  max_batch_size: 8
        input { name: "PIXELS" data_type: TYPE_UINT8 dims: [64, 64, 3] }
        input { name: "TOKEN" data_type: TYPE_UINT8 dims: [32] }
        output { name: "DET_BOXES" data_type: TYPE_FP32 dims: [-1, 4] }
        output { name: "DET_SCORES" data_type: TYPE_FP32 dims: [-1] }
        output { name: "DET_CLASSES" data_type: TYPE_INT32 dims: [-1] }
        instance_group { count: 1 kind: KIND_CPU }
        dynamic_batching { }
        parameters { key: "input_size" value { string_value: "64" } }
        parameters { key: "max_detections" value { string_value: "10" } }
        parameters { key: "onnx_file" value { string_value: "model.onnx" } }
        parameters { key: "intra_op_threads" value { string_value: "2" } }
        parameters { key: "inter_op_threads" value { string_value: "1" } }
        parameters { key: "allow_spinning" value { string_value: "false" } }
        parameters { key: "max_in_flight" value { string_value: "12" } }
        parameters { key: "admission_ttl_ms" value { string_value: "5000" } }
        parameters { key: "admission_pending_ms" value { string_value: "1000" } }
    """,
    "attributes": """
        name: "attributes"  backend: "python"  max_batch_size: 32
        input { name: "CROPS" data_type: TYPE_UINT8 dims: [32, 32, 3] }
        input { name: "TOKEN" data_type: TYPE_UINT8 dims: [32] }
        output { name: "ATTRIBUTE_PROBS" data_type: TYPE_FP32 dims: [15] }
        instance_group { count: 1 kind: KIND_CPU }
        dynamic_batching { max_queue_delay_microseconds: 100 }
        parameters { key: "crop_size" value { string_value: "32" } }
        parameters { key: "num_attribute_labels" value { string_value: "15" } }
        parameters { key: "onnx_file" value { string_value: "model.onnx" } }
        parameters { key: "intra_op_threads" value { string_value: "2" } }
        parameters { key: "inter_op_threads" value { string_value: "1" } }
        parameters { key: "allow_spinning" value { string_value: "false" } }
    """,
    "postprocess": """
        name: "postprocess"  backend: "python"  max_batch_size: 8
        input { name: "PIXELS" data_type: TYPE_UINT8 dims: [64, 64, 3] }
        input { name: "IMAGE_INFO" data_type: TYPE_FP32 dims: [5] }
        input { name: "DET_BOXES" data_type: TYPE_FP32 dims: [-1, 4] allow_ragged_batch: true }
        input { name: "DET_SCORES" data_type: TYPE_FP32 dims: [-1] allow_ragged_batch: true }
        input { name: "DET_CLASSES" data_type: TYPE_INT32 dims: [-1] allow_ragged_batch: true }
        input { name: "TOKEN" data_type: TYPE_UINT8 dims: [32] }
        output { name: "BOXES" data_type: TYPE_FP32 dims: [-1, 4] }
        output { name: "SCORES" data_type: TYPE_FP32 dims: [-1] }
        output { name: "CATEGORIES" data_type: TYPE_INT32 dims: [-1] }
        output { name: "ATTRIBUTE_SCORES" data_type: TYPE_FP32 dims: [-1, 15] }
        output { name: "DETECTIONS" data_type: TYPE_STRING dims: [1] }
        instance_group { count: 3 kind: KIND_CPU }
        dynamic_batching { }
        parameters { key: "input_size" value { string_value: "64" } }
        parameters { key: "crop_size" value { string_value: "32" } }
        parameters { key: "attributes_max_batch_size" value { string_value: "32" } }
        parameters { key: "attributes_model" value { string_value: "attributes" } }
        parameters { key: "model_version" value { string_value: "test-1" } }
        parameters { key: "model_name" value { string_value: "standin" } }
        parameters { key: "attributes_token" value { string_value: "true" } }
        parameters { key: "crop_masks" value { string_value: "false" } }
        parameters { key: "detector_masks" value { string_value: "false" } }
        parameters { key: "detector_mask_crop" value { string_value: "true" } }
        parameters { key: "attributes_inline" value { string_value: "false" } }
        parameters { key: "score_offsets" value { string_value: "false" } }
        parameters { key: "score_threshold" value { string_value: "0.0" } }
        parameters { key: "max_in_flight" value { string_value: "12" } }
        parameters { key: "admission_ttl_ms" value { string_value: "5000" } }
        parameters { key: "admission_pending_ms" value { string_value: "1000" } }
    """,
    "fashion": """
        name: "fashion"  platform: "ensemble"  max_batch_size: 4
        input { name: "IMAGE" data_type: TYPE_STRING dims: [1] }
        output { name: "BOXES" data_type: TYPE_FP32 dims: [-1, 4] }
        output { name: "SCORES" data_type: TYPE_FP32 dims: [-1] }
        output { name: "CATEGORIES" data_type: TYPE_INT32 dims: [-1] }
        output { name: "ATTRIBUTE_SCORES" data_type: TYPE_FP32 dims: [-1, 15] }
        output { name: "DETECTIONS" data_type: TYPE_STRING dims: [1] }
        ensemble_scheduling {
          step {
            model_name: "preprocess" model_version: -1
            input_map { key: "IMAGE" value: "IMAGE" }
            output_map { key: "PIXELS" value: "PIXELS" }
            output_map { key: "IMAGE_INFO" value: "IMAGE_INFO" }
            output_map { key: "TOKEN" value: "TOKEN" }
          }
          step {
            model_name: "detector" model_version: -1
            input_map { key: "PIXELS" value: "PIXELS" }
            input_map { key: "TOKEN" value: "TOKEN" }
            output_map { key: "DET_BOXES" value: "DET_BOXES" }
            output_map { key: "DET_SCORES" value: "DET_SCORES" }
            output_map { key: "DET_CLASSES" value: "DET_CLASSES" }
          }
          step {
            model_name: "postprocess" model_version: -1
            input_map { key: "PIXELS" value: "PIXELS" }
            input_map { key: "IMAGE_INFO" value: "IMAGE_INFO" }
            input_map { key: "DET_BOXES" value: "DET_BOXES" }
            input_map { key: "DET_SCORES" value: "DET_SCORES" }
            input_map { key: "DET_CLASSES" value: "DET_CLASSES" }
            input_map { key: "TOKEN" value: "TOKEN" }
            output_map { key: "BOXES" value: "BOXES" }
            output_map { key: "SCORES" value: "SCORES" }
            output_map { key: "CATEGORIES" value: "CATEGORIES" }
            output_map { key: "ATTRIBUTE_SCORES" value: "ATTRIBUTE_SCORES" }
            output_map { key: "DETECTIONS" value: "DETECTIONS" }
          }
        }
        parameters { key: "model_version" value { string_value: "test-1" } }
    """,
}


def _expected(name: str) -> Any:
    config = text_format.Parse(EXPECTED[name], mc.ModelConfig())
    if name == contract.ENSEMBLE_MODEL:
        config.parameters[LABELS_JSON_PARAMETER].string_value = LABELS.to_json()
    return config


# -- configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED))
def test_generated_config_equals_the_expected_config_exactly(name: str, tmp_path: Path) -> None:
    configs = model_configs(SETTINGS, LABELS)
    path = tmp_path / "config.pbtxt"

    write_model_config(path, configs[name])
    parsed = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())

    assert parsed == _expected(name)
    assert configs[name] == parsed


def test_configs_cover_every_model_in_pipeline_order_with_the_ensemble_last() -> None:
    assert list(model_configs(SETTINGS, LABELS)) == ["preprocess", "detector", "attributes", "postprocess", "fashion"]


def test_ensemble_wiring_feeds_every_input_of_every_step_from_an_earlier_tensor() -> None:
    configs = model_configs(SETTINGS, LABELS)
    ensemble = configs[contract.ENSEMBLE_MODEL]
    available = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}

    for step in ensemble.ensemble_scheduling.step:
        step_config = configs[step.model_name]
        assert set(step.input_map) == {t.name for t in step_config.input}, step.model_name
        for tensor in step_config.input:
            source = step.input_map[tensor.name]
            assert source in available, f"{step.model_name}.{tensor.name} reads {source}, produced by no earlier step"
            assert available[source] == (tensor.data_type, list(tensor.dims))
        assert set(step.output_map) == {t.name for t in step_config.output}, step.model_name
        for tensor in step_config.output:
            available[step.output_map[tensor.name]] = (tensor.data_type, list(tensor.dims))

    for output in ensemble.output:
        assert available[output.name] == (output.data_type, list(output.dims))


def test_ensemble_tensors_are_those_of_the_contract() -> None:
    ensemble = model_configs(SETTINGS, LABELS)[contract.ENSEMBLE_MODEL]

    assert [t.name for t in ensemble.input] == [s.name for s in contract.ENSEMBLE_INPUTS]
    assert [t.name for t in ensemble.output] == [s.name for s in contract.ENSEMBLE_OUTPUTS]


def test_the_ensemble_publishes_the_label_map_for_clients() -> None:
    ensemble = model_configs(SETTINGS, LABELS)[contract.ENSEMBLE_MODEL]

    published = LabelMap.from_dict(json.loads(ensemble.parameters[LABELS_JSON_PARAMETER].string_value))

    assert published == LABELS


def test_each_model_reads_back_exactly_the_parameters_the_converter_wrote() -> None:
    configs = model_configs(SETTINGS, LABELS)

    def params(name: str) -> Parameters:
        return Parameters({k: v.string_value for k, v in configs[name].parameters.items()}, model_name=name)

    assert PreprocessParameters.from_parameters(params("preprocess")) == PreprocessParameters(64, 1_000_000, 4_000_000)
    assert DetectorParameters.from_parameters(params("detector")) == DetectorParameters(64, 10, "model.onnx")
    assert OrtSettings.from_parameters(params("detector")) == SETTINGS.ort
    assert AttributesParameters.from_parameters(params("attributes")) == AttributesParameters(32, 15, "model.onnx")
    assert PostprocessParameters.from_parameters(params("postprocess")) == PostprocessParameters(
        64, 32, 32, "attributes", "test-1", "standin"
    )


def test_the_ensemble_allows_no_larger_batch_than_its_smallest_step() -> None:
    assert model_configs(SETTINGS, LABELS)[contract.ENSEMBLE_MODEL].max_batch_size == 4


def test_by_default_admission_bounds_the_pipeline_and_the_entry_refuses_past_a_short_queue() -> None:
    configs = model_configs(RepositorySettings(), LABELS)

    policies = {name: config.dynamic_batching.default_queue_policy for name, config in configs.items()}

    assert policies[contract.PREPROCESS_MODEL] == mc.ModelQueuePolicy(
        max_queue_size=repository.DEFAULT_ENTRY_QUEUE_SIZE
    )
    # Admission control bounds what can wait in the later steps: a timeout there would only lose slots.
    for step in (contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL):
        assert not configs[step].dynamic_batching.HasField("default_queue_policy")
        assert configs[step].parameters["max_in_flight" if step == contract.POSTPROCESS_MODEL else "input_size"]


def test_without_admission_the_converter_bounds_the_later_steps_by_a_queue_timeout() -> None:
    configs = model_configs(RepositorySettings(**repository.step_timeouts({"max_in_flight": 0})), LABELS)

    policies = {name: config.dynamic_batching.default_queue_policy for name, config in configs.items()}

    for step in (contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL):
        assert policies[step] == mc.ModelQueuePolicy(
            default_timeout_microseconds=repository.DEFAULT_STEP_QUEUE_TIMEOUT_US
        )
    assert {policy.timeout_action for policy in policies.values()} == {mc.ModelQueuePolicy.REJECT}
    assert "max_in_flight" not in configs[contract.PREPROCESS_MODEL].parameters
    # Given explicitly, the later steps' scheduling is kept as given.
    kept = repository.step_timeouts({"max_in_flight": 0, "detector": ModelScheduling(instances=3)})
    assert kept["detector"] == ModelScheduling(instances=3)
    # Called synchronously by postprocess (BLS): bounded by postprocess's instances already.
    assert not configs[contract.ATTRIBUTES_MODEL].dynamic_batching.HasField("default_queue_policy")
    assert not configs[contract.ENSEMBLE_MODEL].HasField("dynamic_batching")


def test_model_configs_refuses_the_gpu_target_and_names_the_gpu_profile_builder() -> None:
    settings = RepositorySettings(target="gpu")

    with pytest.raises(ValueError, match=r"target 'gpu' with runtime 'onnxruntime' is not written .*gpu_model_configs"):
        model_configs(settings, LABELS)


def test_cpu_scheduling_gives_2_cores_the_shipped_defaults_and_more_cores_more_instances_of_their_threads() -> None:
    from fashionbox.converter.repository import cpu_scheduling

    assert RepositorySettings(**cpu_scheduling(2)) == RepositorySettings()
    assert RepositorySettings(**cpu_scheduling(1)) == RepositorySettings()
    for cores, counts, in_flight in ((4, (2, 2, 2, 2), 32), (16, (4, 8, 2, 4), 128), (64, (16, 32, 8, 16), 512)):
        scheduling = cpu_scheduling(cores)
        assert tuple(scheduling[name].instances for name in ("preprocess", "detector", "attributes",
                                                             "postprocess")) == counts
        assert scheduling["max_in_flight"] == in_flight
        # only the instances change: batching and queue bounds stay the measured ones
        assert scheduling["preprocess"].max_queue_size == RepositorySettings().preprocess.max_queue_size
    # two threads per network instance (a heavy family): half the network instances, the same cores
    two = cpu_scheduling(16, threads=2)
    assert tuple(two[name].instances for name in ("preprocess", "detector", "attributes", "postprocess")) == (
        4, 4, 2, 4)
    assert RepositorySettings(**cpu_scheduling(2, threads=2)) == RepositorySettings()
    assert cpu_scheduling(64, threads=4)["detector"].instances == 8 and cpu_scheduling(3, threads=2)[
        "detector"].instances == 1
    with pytest.raises(ValueError, match="cores must be a positive integer"):
        cpu_scheduling(0)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        cpu_scheduling(16, threads=0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ModelScheduling(max_batch_size=4, preferred_batch_sizes=(8,)), "preferred_batch_sizes"),
        (lambda: ModelScheduling(preferred_batch_sizes=(4, 2)), "strictly increasing"),
        (lambda: ModelScheduling(instances=0), "instances"),
        (lambda: ModelScheduling(max_queue_delay_us=-1), "max_queue_delay_us"),
        (lambda: ModelScheduling(max_queue_size=-1), "max_queue_size"),
        (lambda: ModelScheduling(queue_timeout_us=-1), "queue_timeout_us"),
        (lambda: RepositorySettings(input_size=0), "input_size"),
        (lambda: RepositorySettings(target="tpu"), "target"),  # type: ignore[arg-type]
        (lambda: RepositorySettings(input_size=320, letterbox_stride=48), "letterbox_stride must be 0"),
        (lambda: RepositorySettings(letterbox_stride=-32), "letterbox_stride must be 0"),
        (lambda: RepositorySettings(letterbox_min_side=64), "letterbox_min_side must be 0 or, with a rect letterbox"),
        (lambda: RepositorySettings(letterbox_stride=32, letterbox_min_side=48), "a multiple of letterbox_stride 32"),
        (lambda: RepositorySettings(letterbox_stride=32, letterbox_min_side=352), "up to input_size 320"),
        (lambda: RepositorySettings(letterbox_stride=32, target="gpu"), "rect letterbox .* target cpu"),
        (lambda: RepositorySettings(letterbox_stride=32, runtime=RuntimeSettings(runtime="torch")),
         "rect letterbox .* target cpu"),
        # A 0.5 s batching delay before a step that refuses after 0.5 s in the queue: batched requests would fail.
        (lambda: RepositorySettings(preprocess=ModelScheduling(max_queue_delay_us=500_000),
                                    detector=ModelScheduling(queue_timeout_us=500_000)),
         r"detector\.queue_timeout_us \(500000\) must be more than twice the batching delays up to it \(500000 us\)"),
        (lambda: RepositorySettings(postprocess=ModelScheduling(max_queue_delay_us=400_000, queue_timeout_us=800_000)),
         "postprocess.queue_timeout_us"),
    ],
)
def test_invalid_settings_are_refused_when_made(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# -- writing --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    detector = write_detector(
        folder / "detector.onnx", DetectorStandIn.default(input_size=64, num_categories=LABELS.num_categories)
    )
    group_sizes = [len(g.labels) for g in LABELS.attribute_groups]
    attributes = write_attributes(folder / "attributes.onnx", crop_size=32, group_sizes=group_sizes)
    return detector, attributes


def _write(out: Path, onnx_models: tuple[Path, Path], manifest: dict[str, Any] | None = None, **overrides: Any) -> Path:
    detector, attributes = onnx_models
    return write_repository(
        out,
        detector_onnx=overrides.pop("detector_onnx", detector),
        attributes_onnx=overrides.pop("attributes_onnx", attributes),
        label_map=LABELS,
        settings=overrides.pop("settings", SETTINGS),
        manifest=manifest if manifest is not None else {"run": 1},
    )


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir())


def test_a_written_repository_has_every_file_triton_loads(tmp_path: Path, onnx_models: tuple[Path, Path]) -> None:
    out = _write(tmp_path / "repo", onnx_models, manifest={"weights": "abc", "n": 1})

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "attributes/1/model.onnx",
        "attributes/1/model.py",
        "attributes/config.pbtxt",
        "detector/1/model.onnx",
        "detector/1/model.py",
        "detector/config.pbtxt",
        "fashion/config.pbtxt",
        "labels.json",
        "manifest.json",
        "postprocess/1/model.py",
        "postprocess/config.pbtxt",
        "preprocess/1/model.py",
        "preprocess/config.pbtxt",
    ]
    assert (out / "fashion" / "1").is_dir()
    source_root = Path(__file__).resolve().parents[1] / "model_repository" / "fashionbox" / "model_repository"
    for name in ("preprocess", "detector", "attributes", "postprocess"):
        assert (out / name / "1" / "model.py").read_bytes() == (source_root / name / "model.py").read_bytes()
        parsed = text_format.Parse((out / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert parsed == _expected(name)
    assert (out / "detector" / "1" / "model.onnx").read_bytes() == onnx_models[0].read_bytes()
    assert LabelMap.load(out / contract.LABELS_FILE) == LABELS
    assert json.loads((out / contract.MANIFEST_FILE).read_text()) == {"weights": "abc", "n": 1}
    assert _siblings(out) == ["repo"]


def test_an_existing_repository_is_replaced_by_the_new_one(tmp_path: Path, onnx_models: tuple[Path, Path]) -> None:
    out = _write(tmp_path / "repo", onnx_models, manifest={"run": 1})

    _write(out, onnx_models, manifest={"run": 2})

    assert json.loads((out / contract.MANIFEST_FILE).read_text()) == {"run": 2}
    assert _siblings(out) == ["repo"]


def test_an_interrupted_write_leaves_the_previous_repository_intact_and_no_temp_folder(
    tmp_path: Path, onnx_models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _write(tmp_path / "repo", onnx_models, manifest={"run": 1})
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = 0
    real = repository.write_model_config

    def fail_on_third(path: Path, config: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # the harshest interruption Python code sees
        real(path, config)

    monkeypatch.setattr(repository, "write_model_config", fail_on_third)

    with pytest.raises(KeyboardInterrupt):
        _write(out, onnx_models, manifest={"run": 2})

    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _siblings(out) == ["repo"]


def test_a_failed_swap_puts_the_previous_repository_back(
    tmp_path: Path, onnx_models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _write(tmp_path / "repo", onnx_models, manifest={"run": 1})
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if ".incomplete-" in str(src):
            raise OSError("disk full")
        real_rename(src, dst)

    monkeypatch.setattr(repository.os, "rename", rename)
    monkeypatch.setattr(repository, "_exchange", lambda a, b: False)  # the path where renameat2 is missing

    with pytest.raises(OSError, match="disk full"):
        _write(out, onnx_models, manifest={"run": 2})

    assert json.loads((out / contract.MANIFEST_FILE).read_text()) == {"run": 1}
    assert _siblings(out) == ["repo"]


# A process killed outright runs no cleanup: the repository must be whole at every instant. The
# writer runs in a child that SIGKILLs itself at one point of the write.
_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from fashionbox.converter import repository
from fashionbox.contract.labels import default_label_map

point, out, detector, attributes = sys.argv[1:5]
die = lambda *_, **__: os.kill(os.getpid(), signal.SIGKILL)
if point == "while_building":
    real_write, written = repository.write_model_config, []
    def write(path, config):
        written.append(path)
        if len(written) == 3:
            die()
        real_write(path, config)
    repository.write_model_config = write
elif point == "before_the_swap":
    repository._swap_into_place = die
elif point == "inside_the_swap":  # between the exchange and removing the previous repository
    repository.shutil.rmtree = die
elif point == "after_the_swap":
    real_swap = repository._swap_into_place
    repository._swap_into_place = lambda staging, out: (real_swap(staging, out), die())
settings = repository.RepositorySettings(input_size=64, crop_size=32, max_detections=10)
repository.write_repository(Path(out), detector_onnx=Path(detector), attributes_onnx=Path(attributes),
                            label_map=default_label_map(), settings=settings, manifest={"run": 2})
"""


@pytest.mark.parametrize(
    ("point", "run_after"),
    [("while_building", 1), ("before_the_swap", 1), ("inside_the_swap", 2), ("after_the_swap", 2)],
)
def test_a_write_killed_at_any_point_leaves_a_whole_repository_the_old_or_the_new(
    point: str, run_after: int, tmp_path: Path, onnx_models: tuple[Path, Path]
) -> None:
    if not repository._exchange(tmp_path, tmp_path):  # swapping a folder with itself: a no-op probe
        pytest.skip("no renameat2(RENAME_EXCHANGE) here: the rename-aside fallback is used")
    out = _write(tmp_path / "repo", onnx_models, manifest={"run": 1})
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    child = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, point, str(out), *map(str, onnx_models)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert json.loads(after[Path(contract.MANIFEST_FILE)]) == {"run": run_after}
    if run_after == 1:
        assert after == before
    assert sorted(after) == sorted(before), "every file of a repository, none missing"
    # Only hidden leftovers (the unfinished or the replaced repository) may remain beside it.
    assert [name for name in _siblings(out) if not name.startswith(".")] == ["repo"]


def test_convert_interrupted_before_writing_leaves_the_previous_repository_untouched(
    tmp_path: Path, onnx_models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fashionbox import converter

    out = _write(tmp_path / "repo", onnx_models, manifest={"run": 1})
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = converter.FAMILIES["fashionbox"]

    def interrupted_during_comparison() -> converter.Family:
        family = real()

        def compare(*args: Any, **kwargs: Any) -> Any:
            raise KeyboardInterrupt  # Ctrl-C while ONNX Runtime is compared with PyTorch

        return converter.Family(family.name, family.load_detector, family.export_detector, compare)

    monkeypatch.setitem(converter.FAMILIES, "fashionbox", interrupted_during_comparison)

    with pytest.raises(KeyboardInterrupt):
        converter.convert(converter.ConvertOptions(out=out, compare_samples=1))

    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _siblings(out) == ["repo"]


def test_a_folder_that_is_not_a_repository_is_never_replaced(tmp_path: Path, onnx_models: tuple[Path, Path]) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")

    with pytest.raises(FileExistsError, match="does not look like a repository"):
        _write(out, onnx_models)

    assert (out / "thesis.tex").read_text() == "precious"
    assert _siblings(out) == ["home"]


def test_model_names_that_would_escape_the_repository_are_refused(
    tmp_path: Path, onnx_models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = repository.model_configs

    def with_evil_name(settings: RepositorySettings, label_map: LabelMap) -> dict[str, Any]:
        configs = real(settings, label_map)
        evil = mc.ModelConfig()
        evil.CopyFrom(configs["preprocess"])
        evil.name = "../evil"
        return {**configs, "../evil": evil}

    monkeypatch.setattr(repository, "model_configs", with_evil_name)

    with pytest.raises(ValueError, match=re.escape("refusing path component '../evil'")):
        _write(tmp_path / "repo", onnx_models)

    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_onnx_graphs_that_disagree_with_the_settings_are_refused_before_writing(
    tmp_path: Path, onnx_models: tuple[Path, Path]
) -> None:
    other = RepositorySettings(input_size=128, crop_size=32)

    with pytest.raises(ValueError, match="tensor 'pixels' has shape"):
        _write(tmp_path / "repo", onnx_models, settings=other)

    wrong_heads = write_attributes(tmp_path / "a.onnx", crop_size=32, group_sizes=(2, 2))
    with pytest.raises(ValueError, match="tensor 'probs' has shape"):
        _write(tmp_path / "repo", onnx_models, attributes_onnx=wrong_heads)

    assert not (tmp_path / "repo").exists()


def test_a_manifest_that_is_not_json_is_refused(tmp_path: Path, onnx_models: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="JSON"):
        _write(tmp_path / "repo", onnx_models, manifest={"when": object()})
    assert not (tmp_path / "repo").exists()
