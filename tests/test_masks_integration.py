"""Instance masks end to end: a served repository whose attribute model has a mask head.

The stand-in attribute graph (``tests/onnx_standins.py``) has a ``masks`` output, so
``write_repository`` must wire CROP_MASKS from ``attributes`` into ``postprocess`` on its own;
the real embedded Triton serves it over gRPC, and the typed client must return each detection's
mask equal to the same steps run in this process (decode, letterbox, detector, crops, mask head,
:func:`fashionbox.core.masks.paste_crop_masks`). A repository written from the plain stand-ins
(no mask head) serves no masks, and the client reads its results with ``mask`` None. A segmenting
stand-in detector (the same graph plus ``mask_coeffs`` and ``protos`` outputs) served with
``detector_masks`` gives masks equal to :func:`fashionbox.core.proto_masks.masks_from_protos` here.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_standins import DetectorStandIn, write_attributes, write_detector
from PIL import Image

from fashionbox import contract
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.repository import ModelScheduling, RepositorySettings, write_repository
from fashionbox.core.imaging import crop_garments, crop_regions, decode_image, letterbox
from fashionbox.core.masks import paste_crop_masks
from fashionbox.core.serving import OnnxAttributes, OnnxDetector, OrtSettings

PROTOS = 4  # prototypes of the segmenting stand-in, at a quarter of the letterbox's side

pytestmark = pytest.mark.integration
pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")

LABELS = default_label_map()
MASK_SIZE = 14
SETTINGS = RepositorySettings(
    input_size=64,
    crop_size=32,
    max_detections=20,
    attributes=ModelScheduling(max_batch_size=4),  # several BLS chunks per image: masks must follow their rows
    model_version="masks-integration",
    model_name="stand-ins",
)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mask-standins")
    group_sizes = [len(g.labels) for g in LABELS.attribute_groups]
    spec = DetectorStandIn.default(input_size=SETTINGS.input_size, num_categories=LABELS.num_categories)
    detector = write_detector(folder / "detector.onnx", spec)
    return {
        "detector": detector,
        "segmenting": _segmenting(detector, folder / "segmenting.onnx", boxes=spec.boxes.shape[0]),
        "masked": write_attributes(folder / "masked.onnx", crop_size=SETTINGS.crop_size, group_sizes=group_sizes,
                                   mask_size=MASK_SIZE),
        "plain": write_attributes(folder / "plain.onnx", crop_size=SETTINGS.crop_size, group_sizes=group_sizes),
    }


def _segmenting(detector: Path, path: Path, *, boxes: int) -> Path:
    """The stand-in detector plus fixed ``mask_coeffs [B, N, K]`` and smooth ``protos [B, K, h, w]``."""
    rng = np.random.default_rng(5)
    side = SETTINGS.input_size // 4
    grid = np.linspace(0.0, 1.0, side, dtype=np.float32)
    protos = np.stack([np.sin(grid[:, None] * rng.uniform(2, 9) + rng.uniform(0, 6))
                       * np.cos(grid[None, :] * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(PROTOS)])
    coeffs = rng.normal(0.0, 2.0, size=(1, boxes, PROTOS)).astype(np.float32)
    model = onnx.load(str(detector))
    graph = model.graph
    # The batch as a [B, 1, 1(, 1)] zero (from the brightness the graph computes) broadcasts the constants.
    graph.node.extend([
        helper.make_node("Constant", [], ["coeffs_const"], value=numpy_helper.from_array(coeffs, "coeffs_const")),
        helper.make_node("Constant", [], ["protos_const"],
                         value=numpy_helper.from_array(protos[None].astype(np.float32), "protos_const")),
        helper.make_node("Add", ["zeros_b11", "coeffs_const"], ["mask_coeffs"]),
        helper.make_node("Unsqueeze", ["zeros_b11", "axis_3"], ["zeros_b111"]),
        helper.make_node("Add", ["zeros_b111", "protos_const"], ["protos"]),
    ])
    graph.node.insert(0, helper.make_node("Constant", [], ["axis_3"],
                                          value=numpy_helper.from_array(np.array([3], np.int64), "axis_3")))
    graph.output.extend([
        helper.make_tensor_value_info("mask_coeffs", onnx.TensorProto.FLOAT, ["batch", boxes, PROTOS]),
        helper.make_tensor_value_info("protos", onnx.TensorProto.FLOAT, ["batch", PROTOS, side, side]),
    ])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def repositories(tmp_path_factory: pytest.TempPathFactory, graphs: dict[str, Path]) -> dict[str, Path]:
    """Written once for the module, so each is served by one shared server."""
    return {"masked": _repository(tmp_path_factory, graphs, "masked"),
            "plain": _repository(tmp_path_factory, graphs, "plain"),
            "segmenting": _repository(tmp_path_factory, graphs, "masked", detector="segmenting")}


def _repository(tmp_path_factory: pytest.TempPathFactory, graphs: dict[str, Path], attributes: str,
                detector: str = "detector") -> Path:
    settings = replace(SETTINGS, detector_masks=detector == "segmenting")
    return write_repository(tmp_path_factory.mktemp(f"served-{detector}-{attributes}") / "repository",
                            detector_onnx=graphs[detector], attributes_onnx=graphs[attributes], label_map=LABELS,
                            settings=settings,
                            manifest={"purpose": f"mask integration test ({detector}, {attributes})"})


def _client(triton_server: Any, repository: Path) -> Any:
    from fashionbox.client import FashionClient

    return FashionClient(triton_server(repository).endpoints.grpc)


def _photo(width: int, height: int, seed: int) -> bytes:
    """A dark, textured picture (the stand-in detector finds garments in dark images), as a PNG."""
    pixels = np.random.default_rng(seed).integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _reference_masks(data: bytes, graphs: dict[str, Path]) -> tuple[Any, list[np.ndarray[Any, Any]]]:
    """The detections' letterbox boxes and their masks, by the same steps in this process."""
    size = SETTINGS.input_size
    pixels, info = letterbox(decode_image(data, target_size=size), size)
    detector = OnnxDetector(graphs["detector"], OrtSettings(), max_detections=SETTINGS.max_detections)
    (row,) = detector.detect(pixels[None])
    heads = OnnxAttributes(graphs["masked"], OrtSettings(), num_attribute_labels=LABELS.num_attribute_labels)
    assert heads.mask_size == MASK_SIZE
    _, grids = heads.classify_with_masks(crop_garments(pixels, row.boxes, SETTINGS.crop_size))
    return row, [mask.to_array() for mask in paste_crop_masks(grids, row.boxes, info)]


def test_the_repository_wires_crop_masks_only_for_an_attribute_graph_with_a_mask_head(
    repositories: dict[str, Path],
) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    def config(repository: Path, model: str) -> Any:
        return text_format.Parse((repository / model / "config.pbtxt").read_text(), mc.ModelConfig())

    masked = repositories["masked"]
    outputs = {o.name: list(o.dims) for o in config(masked, contract.ATTRIBUTES_MODEL).output}
    assert outputs[contract.CROP_MASKS.name] == [MASK_SIZE, MASK_SIZE]
    assert config(masked, contract.POSTPROCESS_MODEL).parameters["crop_masks"].string_value == "true"
    plain = repositories["plain"]
    assert contract.CROP_MASKS.name not in {o.name for o in config(plain, contract.ATTRIBUTES_MODEL).output}
    assert config(plain, contract.POSTPROCESS_MODEL).parameters["crop_masks"].string_value == "false"


def test_served_masks_reach_the_typed_client_equal_to_the_in_process_steps(
    triton_server: Any, repositories: dict[str, Path], graphs: dict[str, Path]
) -> None:
    with _client(triton_server, repositories["masked"]) as client:
        for width, height, seed in ((400, 300, 1), (240, 420, 2), (1280, 960, 3)):
            data = _photo(width, height, seed)
            result = client.detect(data)
            row, expected = _reference_masks(data, graphs)
            assert len(result) == len(row) >= 3  # several garments, so several BLS chunks of 4 crops
            for detection, reference in zip(result.detections, expected, strict=True):
                mask = detection.mask
                assert mask is not None and mask.shape == (height, width) and mask.dtype == np.bool_
                assert reference.any()
                # Same code on both sides; allow a pixel sitting exactly on the threshold to flip.
                assert (mask != reference).sum() <= max(2, reference.sum() // 1000)
                # The mask stays inside the crop region around its box, mapped to the original image.
                region = crop_regions(np.array([[detection.box.x1, detection.box.y1, detection.box.x2,
                                                 detection.box.y2]], np.float32), width, height,
                                      margin=0.1)[0]
                ys, xs = np.nonzero(mask)
                assert xs.min() >= region[0] - 1 and xs.max() <= region[2] + 1
                assert ys.min() >= region[1] - 1 and ys.max() <= region[3] + 1
            drawn = result.draw(data)
            assert drawn.size == (width, height)


def test_a_repository_without_a_mask_head_serves_results_whose_masks_are_none(
    triton_server: Any, repositories: dict[str, Path]
) -> None:
    with _client(triton_server, repositories["plain"]) as client:
        result = client.detect(_photo(400, 300, 1))
    assert len(result) >= 3
    assert all(d.mask is None and d.mask_rle is None for d in result.detections)
    assert all("mask" not in d for d in result.to_dict()["detections"])


def test_a_segmenting_detector_s_masks_reach_the_typed_client_equal_to_masks_from_protos(
    triton_server: Any, repositories: dict[str, Path], graphs: dict[str, Path]
) -> None:
    from fashionbox.core.proto_masks import masks_from_protos

    # Its attribute model has a mask head too: the detector's masks win, as postprocess documents.
    repository = repositories["segmenting"]
    with _client(triton_server, repository) as client:
        for width, height, seed in ((400, 300, 4), (240, 420, 5)):
            data = _photo(width, height, seed)
            result = client.detect(data)
            size = SETTINGS.input_size
            pixels, info = letterbox(decode_image(data, target_size=size), size)
            detector = OnnxDetector(graphs["segmenting"], OrtSettings(), max_detections=SETTINGS.max_detections)
            assert detector.segments
            (row,) = detector.detect(pixels[None])
            expected = masks_from_protos(row.mask_coeffs, row.protos, row.boxes, info)
            assert len(result) == len(expected) >= 3
            assert any(mask.area for mask in expected)
            for detection, reference in zip(result.detections, expected, strict=True):
                assert detection.mask_rle is not None
                assert list(detection.mask_rle.counts) == reference.to_rle()


def test_fashionbox_eval_reports_mask_metrics_for_a_server_that_sends_masks(
    triton_server: Any, repositories: dict[str, Path]
) -> None:
    from fashionbox.commands.evaluation import _served_predictions, evaluate, heldout_samples

    samples = heldout_samples(2, seed=11)
    for name, segments in (("masked", True), ("plain", False)):
        url = triton_server(repositories[name]).endpoints.grpc
        predictions, labels = _served_predictions(url, samples, concurrency=2)
        assert sum(len(p) for p in predictions)  # the stand-ins detect something in these scenes
        assert all((p.mask is not None) == segments for preds in predictions for p in preds)
        report = evaluate(samples, predictions, labels)
        assert ("segm_map" in report) == segments and ("imaterialist_mask_score" in report) == segments
        if segments:
            assert 0.0 <= report["segm_map"] <= report["segm_map50"] <= 1.0
