"""The torch runtime: PyTorch runners in the python backend (the GPU profile without TensorRT).

Runs here on the CPU: batched NMS against the ONNX operator's semantics, the runners against
ONNX Runtime, the configs both targets write, the refusals (FP16 on a CPU, a GPU that is not
there, a family the runtime cannot serve), and a real Triton serving a ``--runtime torch``
repository whose answers equal the PyTorch reference's. The ``cuda`` tests run the same runners
on a GPU wherever torch sees one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fashionbox import contract
from fashionbox.client import FashionClient
from fashionbox.commands.evaluation import (
    compare_fidelity,
    heldout_samples,
    predictions_from_detections,
    predictions_from_result,
)
from fashionbox.contract.labels import default_label_map
from fashionbox.converter import ConvertError, ConvertOptions, convert
from fashionbox.converter.repository import (
    ModelScheduling,
    RepositorySettings,
    gpu_scheduling,
    model_configs,
)
from fashionbox.core.serving import (
    ModelArgs,
    OnnxAttributes,
    OnnxDetector,
    OrtSettings,
    ParameterError,
    Parameters,
    RuntimeSettings,
)
from fashionbox.model_repository.runners import load_attributes_runner, load_detector_runner
from fashionbox.models import default_weights
from fashionbox.models.nms import NmsSettings, nms_batched, nms_onnx_semantics
from fashionbox.models.pipeline import InProcessPipeline
from fashionbox.models.torch_runtime import (
    TorchAttributes,
    TorchDetector,
    TorchRuntimeError,
    batch_buckets,
    resolve_device,
)
from fashionbox.server.model_config import backend_args
from fashionbox.training.data import render_sample

LABELS = default_label_map()
NMS = NmsSettings()
CUDA = torch.cuda.is_available()


def _random_boxes(generator: torch.Generator, batch: int, count: int) -> torch.Tensor:
    corner = torch.rand(batch, count, 2, generator=generator) * 100
    size = torch.rand(batch, count, 2, generator=generator) * 40
    return torch.cat([corner, corner + size], dim=2)


def _rows(selected: torch.Tensor) -> list[tuple[int, ...]]:
    return sorted(tuple(row) for row in selected.tolist())


# -- batched NMS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_batched_nms_keeps_what_onnx_nonmaxsuppression_keeps(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    count = int(torch.randint(1, 120, (1,), generator=generator))
    boxes = _random_boxes(generator, 3, count)
    scores = torch.rand(3, 4, count, generator=generator)
    settings = NmsSettings(score_threshold=0.2, iou_threshold=float(torch.rand(1, generator=generator)) * 0.8 + 0.1,
                           max_per_class=int(torch.randint(1, 30, (1,), generator=generator)), max_detections=50)

    assert _rows(nms_batched(boxes, scores, settings)) == _rows(nms_onnx_semantics(boxes, scores, settings))


def test_batched_nms_handles_chains_where_a_suppressed_box_no_longer_suppresses() -> None:
    # Box 1 overlaps 0 and 2; 0 and 2 do not overlap. Greedy keeps 0, drops 1, so 2 survives;
    # a single "fast NMS" pass would wrongly drop 2 as well.
    boxes = torch.tensor([[[0.0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]]])
    scores = torch.tensor([[[0.9, 0.8, 0.7]]])
    settings = NmsSettings(score_threshold=0.1, iou_threshold=0.3)

    assert _rows(nms_batched(boxes, scores, settings)) == [(0, 0, 0), (0, 0, 2)]


def test_batched_nms_returns_nothing_when_no_score_passes_and_refuses_a_zero_top_k() -> None:
    boxes = _random_boxes(torch.Generator().manual_seed(0), 2, 10)
    selected = nms_batched(boxes, torch.full((2, 3, 10), 0.1), NMS)
    assert selected.shape == (0, 3) and selected.dtype == torch.int64
    with pytest.raises(ValueError, match="pre_nms_top_k"):
        nms_batched(boxes, torch.rand(2, 3, 10), NMS, pre_nms_top_k=0)


def test_batched_nms_caps_each_class_at_max_per_class() -> None:
    boxes = torch.tensor([[[i * 20.0, 0, i * 20 + 10, 10] for i in range(6)]])  # disjoint: NMS keeps all
    scores = torch.linspace(0.9, 0.5, 6).view(1, 1, 6)
    settings = NmsSettings(score_threshold=0.1, max_per_class=4)

    assert _rows(nms_batched(boxes, scores, settings)) == [(0, 0, i) for i in range(4)]


# -- runners ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(ConvertOptions(out=tmp_path_factory.mktemp("torch") / "repository", runtime="torch")).repository


@pytest.fixture(scope="module")
def gpu_torch_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(ConvertOptions(out=tmp_path_factory.mktemp("gpu") / "repository", target="gpu",
                                  runtime="torch")).repository


@pytest.fixture(scope="module")
def scenes() -> np.ndarray:
    return np.stack([render_sample(70_000 + i, 320, LABELS).pixels for i in range(6)])


def test_the_torch_detector_answers_as_the_onnx_graph_does(torch_repository: Path, scenes: np.ndarray) -> None:
    # the threshold the converter served the checkpoint at (a calibrated detector's own)
    served = json.loads((torch_repository / contract.MANIFEST_FILE).read_text())["export"]["nms"]
    nms = replace(NMS, score_threshold=served["score_threshold"])
    torch_detector = TorchDetector(default_weights("detector"), device="cpu", precision="fp32", nms=nms,
                                   max_detections=NMS.max_detections)
    onnx_detector = OnnxDetector(torch_repository / "detector" / "1" / "model.onnx", OrtSettings(),
                                 max_detections=NMS.max_detections)

    found = 0
    for ours, theirs in zip(torch_detector.detect(scenes), onnx_detector.detect(scenes), strict=True):
        assert ours.classes.tolist() == theirs.classes.tolist()
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-4)
        np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=0.05)
        found += len(ours)
    assert found >= len(scenes), "the scenes should hold garments to compare"


def test_the_torch_heads_answer_as_the_onnx_graph_does(torch_repository: Path, scenes: np.ndarray) -> None:
    heads = TorchAttributes(default_weights("attributes"), device="cpu", precision="fp32",
                            num_attribute_labels=LABELS.num_attribute_labels)
    onnx_heads = OnnxAttributes(torch_repository / "attributes" / "1" / "model.onnx", OrtSettings(),
                                num_attribute_labels=LABELS.num_attribute_labels)
    crops = np.ascontiguousarray(scenes[:, 100:196, 100:196])

    np.testing.assert_allclose(heads.classify(crops), onnx_heads.classify(crops), atol=1e-4)


def test_batch_buckets_are_powers_of_two_up_to_the_largest_batch() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    with pytest.raises(ValueError, match="at least 1"):
        batch_buckets(0)


def test_bucketed_runners_pad_and_answer_only_the_rows_asked_for(scenes: np.ndarray) -> None:
    plain = TorchDetector(default_weights("detector"), device="cpu", precision="fp32", nms=NMS, max_detections=50)
    padded = TorchDetector(default_weights("detector"), device="cpu", precision="fp32", nms=NMS, max_detections=50,
                           max_batch_size=8, bucketed=True)
    assert plain.buckets == () and padded.buckets == (1, 2, 4, 8)
    assert padded._padded(scenes[:3]).shape[0] == 4 and padded._padded(scenes[:4]).shape[0] == 4
    assert padded._padded(np.concatenate([scenes, scenes])).shape[0] == 12, "past the largest bucket: as is"
    for rows in (1, 3, 5):
        ours, theirs = padded.detect(scenes[:rows]), plain.detect(scenes[:rows])
        assert len(ours) == rows
        for a, b in zip(ours, theirs, strict=True):
            assert a.classes.tolist() == b.classes.tolist()
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    heads = TorchAttributes(default_weights("attributes"), device="cpu", precision="fp32",
                            num_attribute_labels=LABELS.num_attribute_labels, max_batch_size=16, bucketed=True)
    plain_heads = TorchAttributes(default_weights("attributes"), device="cpu", precision="fp32",
                                  num_attribute_labels=LABELS.num_attribute_labels)
    crops = np.ascontiguousarray(scenes[:5, 100:196, 100:196])
    probs = heads.classify(crops)
    assert probs.shape == (5, LABELS.num_attribute_labels)
    np.testing.assert_allclose(probs, plain_heads.classify(crops), atol=1e-5)


def test_heads_whose_label_count_disagrees_fail_at_load() -> None:
    with pytest.raises(ValueError, match="expected"):
        TorchAttributes(default_weights("attributes"), device="cpu", precision="fp32", num_attribute_labels=3)


def test_fp16_on_the_cpu_is_refused_not_dropped() -> None:
    with pytest.raises(TorchRuntimeError, match="fp16 needs a CUDA device"):
        resolve_device("cpu", "fp16")
    with pytest.raises(TorchRuntimeError, match="cuda or cpu only"):
        resolve_device("meta", "fp32")


@pytest.mark.skipif(CUDA, reason="checks the refusal on a host without CUDA")
def test_a_gpu_instance_on_a_host_without_cuda_fails_load_naming_the_device() -> None:
    with pytest.raises(TorchRuntimeError, match=r"cuda:0 was asked for .* sees no CUDA device"):
        TorchDetector(default_weights("detector"), device="cuda:0", precision="fp16", nms=NMS, max_detections=5)


def _backend_args(repository: Path, model: str) -> dict[str, str]:
    """What Triton passes the model, from the repository's own config."""
    return backend_args(repository, model)


def _torch_settings(target: str, **fields: Any) -> RepositorySettings:
    precision = "fp16" if target == "gpu" else "fp32"
    return RepositorySettings(target=target, runtime=RuntimeSettings(runtime="torch", precision=precision),  # type: ignore[arg-type]
                              **fields)


def test_the_model_files_load_the_runner_their_config_names(torch_repository: Path) -> None:
    detector, loaded = load_detector_runner(ModelArgs.from_backend_args(_backend_args(torch_repository, "detector")))
    heads, _ = load_attributes_runner(ModelArgs.from_backend_args(_backend_args(torch_repository, "attributes")))

    assert isinstance(detector, TorchDetector) and isinstance(heads, TorchAttributes)
    assert "model.safetensors on cpu (fp32)" in loaded


def test_instance_kind_and_device_id_choose_the_torch_device() -> None:
    args = ModelArgs.from_backend_args({"model_config": "{}", "model_version": "1", "model_repository": "/r/m",
                                        "model_instance_kind": "GPU", "model_instance_device_id": "3"})
    assert args.torch_device() == "cuda:3"
    assert ModelArgs.from_backend_args({"model_config": "{}", "model_version": "1",
                                        "model_repository": "/r/m"}).torch_device() == "cpu"


# -- settings and configs -----------------------------------------------------------------------------


def test_runtime_settings_round_trip_through_config_parameters_with_floats() -> None:
    settings = RuntimeSettings(runtime="torch", precision="fp16", score_threshold=0.25, iou_threshold=0.5)
    assert RuntimeSettings.from_parameters(Parameters(settings.to_parameters())) == settings
    with pytest.raises(ParameterError, match="'score_threshold' must be a number"):
        RuntimeSettings.from_parameters(Parameters({"score_threshold": "high"}))
    with pytest.raises(ParameterError, match="finite"):
        RuntimeSettings.from_parameters(Parameters({"iou_threshold": "nan"}))
    with pytest.raises(ValueError, match="runtime must be one of"):
        RuntimeSettings(runtime="tvm")


def test_the_cpu_torch_profile_runs_python_models_on_cpu_instances_with_the_runtime_parameters() -> None:
    configs = model_configs(_torch_settings("cpu"), LABELS)
    for name in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
        config = configs[name]
        assert config.backend == "python"
        assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_CPU]
        assert config.parameters["runtime"].string_value == "torch"
        assert config.parameters["weights_file"].string_value == "model.safetensors"
        assert "intra_op_threads" not in config.parameters
    assert "decode_device" not in configs[contract.PREPROCESS_MODEL].parameters
    # NMS runs in the detector alone; the heads' config does not carry its thresholds.
    for key in ("pre_nms_top_k", "score_threshold", "iou_threshold"):
        assert key in configs[contract.DETECTOR_MODEL].parameters
        assert key not in configs[contract.ATTRIBUTES_MODEL].parameters


def test_the_gpu_torch_profile_puts_networks_and_decoding_on_gpu_instances() -> None:
    configs = model_configs(_torch_settings("gpu", **gpu_scheduling()), LABELS)
    gpu = configs[contract.DETECTOR_MODEL].instance_group[0].KIND_GPU
    for name in (contract.PREPROCESS_MODEL, contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
        assert [g.kind for g in configs[name].instance_group] == [gpu], name
    assert configs[contract.POSTPROCESS_MODEL].instance_group[0].kind != gpu
    assert configs[contract.DETECTOR_MODEL].parameters["precision"].string_value == "fp16"
    assert configs[contract.PREPROCESS_MODEL].parameters["decode_device"].string_value == "auto"
    assert configs[contract.DETECTOR_MODEL].max_batch_size == 64
    assert configs[contract.ENSEMBLE_MODEL].max_batch_size == 32


def test_fp16_is_refused_where_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="fp16 applies to the torch runtime on target gpu only"):
        RepositorySettings(runtime=RuntimeSettings(runtime="torch", precision="fp16"))
    with pytest.raises(ValueError, match="fp16"):
        RepositorySettings(target="gpu", runtime=RuntimeSettings(precision="fp16"))


@pytest.mark.parametrize(("target", "runtime", "message"), [
    ("cpu", "tensorrt", "runtime 'tensorrt' does not run on target cpu"),
    ("gpu", "onnxruntime", "runtime 'onnxruntime' does not run on target gpu"),
])
def test_the_converter_refuses_a_runtime_its_target_cannot_run(target: str, runtime: str, message: str,
                                                               tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=message):
        ConvertOptions(out=tmp_path, target=target, runtime=runtime)  # type: ignore[arg-type]


def test_the_converter_refuses_the_torch_runtime_for_a_family_it_cannot_serve(tmp_path: Path) -> None:
    # an Ultralytics export is an ONNX graph only, no network the torch runtime could rebuild: refused
    # before the file is read (it is not even ONNX here)
    export = tmp_path / "yolo.onnx"
    export.write_bytes(b"not read")
    with pytest.raises(ConvertError, match="the torch runtime serves FashionBox checkpoints and transformers "
                                           r"\(hf:\) detectors; a ultralytics detector runs through ONNX Runtime"):
        convert(ConvertOptions(out=tmp_path / "repository", detector=f"ultralytics:{export}", runtime="torch"))
    assert not (tmp_path / "repository").exists()


def test_the_torch_repository_records_the_runtime_and_ships_the_checkpoints(torch_repository: Path) -> None:
    manifest = json.loads((torch_repository / contract.MANIFEST_FILE).read_text())
    assert manifest["runtime"] == "torch" and manifest["precision"] == "fp32"
    assert manifest["comparison"]["torch detector"]["detections_count_mismatch"] == 0
    for model, kind in (("detector", "detector"), ("attributes", "attributes")):
        shipped = torch_repository / model / "1" / "model.safetensors"
        assert shipped.read_bytes() == default_weights(kind).read_bytes()  # type: ignore[arg-type]


# -- served -------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_served_torch_repository_answers_as_the_pytorch_reference(triton_server: Any,
                                                                   torch_repository: Path) -> None:
    server = triton_server(torch_repository)
    samples = heldout_samples(24, seed=11)
    with FashionClient(str(server.endpoints.grpc)) as client:
        served = [predictions_from_detections(d) for d in client.detect_many([s.data for s in samples])]
    reference = InProcessPipeline.torch_reference()
    expected = []
    for sample in samples:
        (result,) = reference.run([sample.data])
        assert not isinstance(result, Exception)
        expected.append(predictions_from_result(result, reference.label_map))

    # differences of a score within 1e-3 of the served threshold are explained, not errors
    manifest = json.loads((torch_repository / contract.MANIFEST_FILE).read_text())
    threshold = manifest["export"]["nms"]["score_threshold"]
    report = compare_fidelity(served, expected, score_threshold=threshold)
    assert report.detections >= len(samples)
    assert report.unexplained_differences == 0, report
    assert report.max_box_diff_px <= 0.5, report


# -- on a GPU -----------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs torch with CUDA and an NVIDIA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_on_the_gpu_the_runners_agree_with_the_cpu(precision: str, scenes: np.ndarray) -> None:
    cpu = TorchDetector(default_weights("detector"), device="cpu", precision="fp32", nms=NMS, max_detections=50)
    gpu = TorchDetector(default_weights("detector"), device="cuda:0", precision=precision, nms=NMS, max_detections=50)
    tolerance = 1e-3 if precision == "fp32" else 0.03
    for ours, theirs in zip(gpu.detect(scenes), cpu.detect(scenes), strict=True):
        # In FP16 a detection scored right at the threshold may fall either side; compare the clear ones.
        clear = theirs.scores > NMS.score_threshold + tolerance
        assert ours.classes[: clear.sum()].tolist() == theirs.classes[clear].tolist()
        np.testing.assert_allclose(ours.scores[: clear.sum()], theirs.scores[clear], atol=tolerance)
    heads = TorchAttributes(default_weights("attributes"), device="cuda:0", precision=precision,
                            num_attribute_labels=LABELS.num_attribute_labels)
    crops = np.ascontiguousarray(scenes[:, 100:196, 100:196])
    cpu_heads = TorchAttributes(default_weights("attributes"), device="cpu", precision="fp32",
                                num_attribute_labels=LABELS.num_attribute_labels)
    np.testing.assert_allclose(heads.classify(crops), cpu_heads.classify(crops), atol=tolerance)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs torch with CUDA and an NVIDIA GPU")
@pytest.mark.parametrize("name", ["detr", "rt_detr", "deformable_detr", "yolos", "owlv2", "rf_detr", "lw_detr"])
def test_on_the_gpu_a_transformers_family_in_fp16_agrees_with_the_cpu(name: str, tmp_path: Path) -> None:
    """softmax, top-k, deformable sampling, a ViT, an open-vocabulary detector (its text queries baked), and
    RF-DETR's windowed DINOv2, LW-DETR's windowed ViT."""
    pytest.importorskip("transformers", reason="the DETR-style families need transformers")
    from image_model_fixtures import build_tiny_owl
    from test_detr_families import save_tiny
    from test_lw_detr import save_tiny_lw_detr
    from test_rf_detr import save_tiny_rf_detr
    from test_yolos import save_tiny_yolos

    from fashionbox.converter.owl import DEFAULT_QUERIES
    from fashionbox.model_repository.runners import TORCH_FOLDER
    from fashionbox.models.torch_runtime import TorchDetrDetector

    folder = (save_tiny_yolos(tmp_path / name) if name == "yolos"
              else build_tiny_owl(tmp_path / name, phrases=DEFAULT_QUERIES.texts) if name == "owlv2"
              else save_tiny_rf_detr(tmp_path / name) if name == "rf_detr"
              else save_tiny_lw_detr(tmp_path / name) if name == "lw_detr"
              else save_tiny(tmp_path / name, name))
    repository = convert(ConvertOptions(out=tmp_path / "repository", detector=f"hf:{folder}", score_threshold=0.3,
                                        compare_samples=2, target="gpu", runtime="torch")).repository
    folder = repository / "detector" / "1" / TORCH_FOLDER
    cpu = TorchDetrDetector(folder, device="cpu", precision="fp32", score_threshold=0.3, max_detections=100)
    gpu = TorchDetrDetector(folder, device="cuda:0", precision="fp16", score_threshold=0.3, max_detections=100,
                            max_batch_size=8)
    assert gpu.buckets == (1, 2, 4, 8)
    pixels = np.random.default_rng(0).integers(0, 256, (5, cpu.input_size, cpu.input_size, 3), dtype=np.uint8)
    found = 0
    for ours, theirs in zip(gpu.detect(pixels), cpu.detect(pixels), strict=True):
        clear = theirs.scores > 0.3 + 0.03  # in FP16 a score at the threshold may fall either side
        assert ours.classes[: clear.sum()].tolist() == theirs.classes[clear].tolist()
        np.testing.assert_allclose(ours.scores[: clear.sum()], theirs.scores[clear], atol=0.03)
        np.testing.assert_allclose(ours.boxes[: clear.sum()], theirs.boxes[clear], atol=0.5)
        found += int(clear.sum())
    assert found > 0


@pytest.mark.cuda
@pytest.mark.integration
@pytest.mark.skipif(not CUDA, reason="needs torch with CUDA and an NVIDIA GPU")
def test_a_served_gpu_torch_repository_detects_on_the_gpu(triton_server: Any, tmp_path: Path) -> None:
    scheduling = {"preprocess": ModelScheduling(instances=2, max_batch_size=8, max_queue_size=64)}
    repository = convert(ConvertOptions(out=tmp_path / "gpu", target="gpu", runtime="torch",
                                        repository_settings=scheduling)).repository
    server = triton_server(repository)
    samples = heldout_samples(8, seed=11)
    with FashionClient(str(server.endpoints.grpc)) as client:
        results = client.detect_many([s.data for s in samples])
    assert sum(len(r.detections) for r in results) >= len(samples)
    assert server.log_path is not None and "on cuda:0 (fp16)" in server.log_path.read_text()


@pytest.mark.skipif(CUDA, reason="checks the refusal on a host without a GPU")
def test_serving_the_gpu_torch_profile_without_a_gpu_is_refused_before_triton_starts(
        gpu_torch_repository: Path) -> None:
    from fashionbox.server import RepositoryError, ServerConfig, TritonServer

    with pytest.raises(RepositoryError, match=r"GPU profile \(--target gpu --runtime torch\), but no NVIDIA GPU"):
        TritonServer(ServerConfig(repository=gpu_torch_repository)).start()


def test_a_torch_gpu_repository_has_no_engines_to_check(gpu_torch_repository: Path) -> None:
    from fashionbox.converter.tensorrt import check_engine_compatibility, repository_runtime

    manifest = json.loads((gpu_torch_repository / contract.MANIFEST_FILE).read_text())

    assert repository_runtime(manifest) == "torch" and manifest["precision"] == "fp16"
    assert check_engine_compatibility(gpu_torch_repository, gpus=[]) is None
    assert repository_runtime({"target": "gpu"}) == "tensorrt"  # manifests written before --runtime existed
