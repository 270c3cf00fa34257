"""fashionbox.converter.export: PyTorch -> ONNX with NMS in the graph, checked and compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from fashionbox import contract
from fashionbox.converter.export import (
    ComparisonReport,
    ExportError,
    check_onnx,
    compare_attributes,
    compare_detector,
    export_attributes_onnx,
    export_detector_onnx,
)
from fashionbox.models import AttributeClassifier, AttributeConfig, DetectorConfig, FashionDetector
from fashionbox.models.nms import NmsSettings

torch.set_num_threads(1)

DETECTOR_CONFIG = DetectorConfig(num_classes=12, input_size=64)
ATTRIBUTE_CONFIG = AttributeConfig(group_sizes=(5, 5, 5), crop_size=32)
NMS = NmsSettings(score_threshold=0.3, iou_threshold=0.5, max_per_class=7)
TOLERANCE = 1e-4
"""For scores and probabilities, which lie in [0, 1]."""
BOX_TOLERANCE_PX = 1e-3
"""Boxes reach ~100 px, where float32 steps are ~1e-5 px and the two runtimes sum convolutions
in different orders; 1e-3 px is still 50x tighter than the converter's own tolerance (0.05 px)."""


def _calibrate(model: nn.Module, inputs: torch.Tensor) -> None:
    """Set every batch norm to the statistics of ``inputs``, then switch to evaluation.

    Freshly built, the batch norms are identities and the heads start nearly constant (small
    weights, fixed biases): such a network gives almost the same output for any image, and
    agreeing with it would prove little.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(inputs)
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def _detector(seed: int) -> FashionDetector:
    torch.manual_seed(seed)
    model = FashionDetector(DETECTOR_CONFIG)
    for head in model.heads:
        for conv in (head.cls, head.reg, head.ctr):
            nn.init.normal_(conv.weight, std=0.03)
        nn.init.zeros_(head.cls.bias)
    _calibrate(model, torch.from_numpy(_uint8((4, 64, 64, 3), seed=100 + seed)))
    return model


def _uint8(shape: tuple[int, ...], seed: int) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def detector() -> FashionDetector:
    return _detector(seed=0)


@pytest.fixture(scope="module")
def classifier() -> AttributeClassifier:
    torch.manual_seed(0)
    model = AttributeClassifier(ATTRIBUTE_CONFIG)
    _calibrate(model, torch.from_numpy(_uint8((4, 32, 32, 3), seed=100)))
    return model


@pytest.fixture(scope="module")
def detector_onnx(detector: FashionDetector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "detector.onnx"
    assert export_detector_onnx(detector, path, nms=NMS) == path
    return path


@pytest.fixture(scope="module")
def attributes_onnx(classifier: AttributeClassifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "attributes.onnx"
    assert export_attributes_onnx(classifier, path) == path
    return path


# -- the exported graphs ----------------------------------------------------------------------


def test_exported_graphs_pass_the_full_onnx_check(detector_onnx: Path, attributes_onnx: Path) -> None:
    check_onnx(detector_onnx)
    check_onnx(attributes_onnx)


def test_detector_graph_has_the_contract_names_and_a_dynamic_batch(detector_onnx: Path) -> None:
    graph = onnx.load(str(detector_onnx)).graph

    assert [i.name for i in graph.input] == [contract.ONNX_DETECTOR_INPUT]
    assert [o.name for o in graph.output] == [
        contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES, contract.ONNX_DETECTOR_SELECTED,
    ]
    pixels = graph.input[0].type.tensor_type
    assert pixels.elem_type == TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in pixels.shape.dim] == ["batch", 64, 64, 3]
    selected = graph.output[2].type.tensor_type
    assert selected.elem_type == TensorProto.INT64
    assert [d.dim_param or d.dim_value for d in selected.shape.dim] == ["selected", 3]


def test_detector_graph_ends_in_non_max_suppression_with_the_given_settings(detector_onnx: Path) -> None:
    graph = onnx.load(str(detector_onnx)).graph
    (nms,) = [n for n in graph.node if n.op_type == "NonMaxSuppression"]
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}

    assert list(nms.input[:2]) == [contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES]
    assert list(nms.output) == [contract.ONNX_DETECTOR_SELECTED]
    assert {a.name: helper.get_attribute_value(a) for a in nms.attribute} == {"center_point_box": 0}
    max_per_class, iou, score = (constants[name] for name in nms.input[2:])
    assert max_per_class.tolist() == [7]
    assert iou.tolist() == [pytest.approx(0.5)]
    assert score.tolist() == [pytest.approx(0.3)]


def test_attribute_graph_has_the_contract_names_and_a_dynamic_batch(attributes_onnx: Path) -> None:
    graph = onnx.load(str(attributes_onnx)).graph

    assert [i.name for i in graph.input] == [contract.ONNX_ATTRIBUTES_INPUT]
    assert [o.name for o in graph.output] == [contract.ONNX_ATTRIBUTES_OUTPUT]
    crops = graph.input[0].type.tensor_type
    assert crops.elem_type == TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in crops.shape.dim] == ["batch", 32, 32, 3]


# -- ONNX Runtime -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_runs_the_detector_at_any_batch_size(detector_onnx: Path, batch: int) -> None:
    boxes, scores, selected = _session(detector_onnx).run(None, {"pixels": _uint8((batch, 64, 64, 3), seed=batch)})

    n = DETECTOR_CONFIG.num_locations
    assert boxes.shape == (batch, n, 4) and boxes.dtype == np.float32
    assert scores.shape == (batch, 12, n) and scores.dtype == np.float32
    assert selected.dtype == np.int64 and selected.shape[1] == 3
    assert set(selected[:, 0].tolist()) == set(range(batch))
    _, per_class = np.unique(selected[:, :2], axis=0, return_counts=True)
    assert int(per_class.max()) <= NMS.max_per_class


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_runs_the_attribute_classifier_at_any_batch_size(attributes_onnx: Path, batch: int) -> None:
    (probs,) = _session(attributes_onnx).run(None, {"crops": _uint8((batch, 32, 32, 3), seed=batch)})

    assert probs.shape == (batch, 15) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.reshape(batch, 3, 5).sum(axis=2), np.ones((batch, 3)), rtol=0, atol=1e-5)


def test_exported_detector_agrees_with_pytorch(detector: FashionDetector, detector_onnx: Path) -> None:
    batches = [_uint8((1, 64, 64, 3), seed=10), _uint8((3, 64, 64, 3), seed=11)]

    report = compare_detector(detector, detector_onnx, batches, NMS)

    assert report.model == "detector"
    assert report.samples == 4
    assert report.max_abs_error["nms_count_mismatch"] == 0.0
    assert report.max_abs_error["scores"] < TOLERANCE, report
    assert report.max_abs_error["nms_scores"] < TOLERANCE, report
    assert report.max_abs_error["boxes"] < BOX_TOLERANCE_PX, report
    report.raise_if_over({"boxes": BOX_TOLERANCE_PX, "scores": TOLERANCE, "nms_scores": TOLERANCE,
                          "nms_count_mismatch": 0.0})


def test_detector_comparison_inputs_give_different_outputs_and_kept_boxes(detector: FashionDetector,
                                                                          detector_onnx: Path) -> None:
    # The agreement above only means something if the outputs follow the image and NMS keeps boxes.
    pixels = _uint8((3, 64, 64, 3), seed=11)
    with torch.no_grad():
        out = detector(torch.from_numpy(pixels))
    (_, _, selected) = _session(detector_onnx).run(None, {"pixels": pixels})

    assert float((out.scores[0] - out.scores[1]).abs().max()) > 0.1
    assert float((out.boxes[0] - out.boxes[1]).abs().max()) > 1.0
    assert len(selected) > 3


def test_exported_attributes_agree_with_pytorch_within_1e_4(classifier: AttributeClassifier,
                                                            attributes_onnx: Path) -> None:
    batches = [_uint8((1, 32, 32, 3), seed=20), _uint8((3, 32, 32, 3), seed=21)]
    with torch.no_grad():
        probs = classifier(torch.from_numpy(batches[1]))
    assert float((probs[0] - probs[1]).abs().max()) > 0.01  # the outputs follow the crop

    report = compare_attributes(classifier, attributes_onnx, batches)

    assert report.model == "attributes"
    assert report.samples == 4
    assert report.max_abs_error["probs"] < TOLERANCE
    report.raise_if_over({"probs": TOLERANCE})


def test_comparison_against_another_networks_export_is_over_tolerance(detector_onnx: Path) -> None:
    report = compare_detector(_detector(seed=1), detector_onnx, [_uint8((2, 64, 64, 3), seed=30)], NMS)

    assert report.max_abs_error["boxes"] > 1.0
    assert report.max_abs_error["scores"] > 0.1
    with pytest.raises(ExportError, match=r"^detector: ONNX Runtime differs from PyTorch beyond tolerance"):
        report.raise_if_over(dict.fromkeys(report.max_abs_error, TOLERANCE))


# -- reports and refusals ---------------------------------------------------------------------


def test_report_over_tolerance_names_the_outputs_over_it() -> None:
    report = ComparisonReport("detector", {"boxes": 0.5, "scores": 1e-6}, samples=2)

    with pytest.raises(ExportError, match=r"^detector: .* beyond tolerance: \{'boxes': 0\.5\} \(tolerance"):
        report.raise_if_over({"boxes": 1e-3, "scores": 1e-3})


def test_report_within_or_at_tolerance_does_not_raise() -> None:
    report = ComparisonReport("attributes", {"probs": 1e-3}, samples=2)

    report.raise_if_over({"probs": 1e-3})


def test_report_output_without_a_tolerance_must_be_exact() -> None:
    report = ComparisonReport("detector", {"boxes": 0.0, "nms_count_mismatch": 1.0}, samples=2)

    report.raise_if_over({"nms_count_mismatch": 1.0})
    with pytest.raises(ExportError, match=r"\{'nms_count_mismatch': 1\.0\}"):
        report.raise_if_over({})


@pytest.mark.parametrize("opset", [11, 16])
def test_opset_below_17_is_refused_before_anything_is_written(tmp_path: Path, opset: int,
                                                              detector: FashionDetector,
                                                              classifier: AttributeClassifier) -> None:
    with pytest.raises(ExportError, match=f"^opset {opset} is below the supported minimum 17$"):
        export_detector_onnx(detector, tmp_path / "detector.onnx", nms=NMS, opset=opset)
    with pytest.raises(ExportError, match=f"^opset {opset} is below the supported minimum 17$"):
        export_attributes_onnx(classifier, tmp_path / "attributes.onnx", opset=opset)

    assert list(tmp_path.iterdir()) == []


def test_the_default_detector_is_exported_for_the_square_letterbox_only(tmp_path: Path,
                                                                        detector: FashionDetector) -> None:
    with pytest.raises(ExportError, match="takes only the square letterbox"):
        export_detector_onnx(detector, tmp_path / "detector.onnx", nms=NMS, letterbox_stride=32)
    assert list(tmp_path.iterdir()) == []


def test_invalid_onnx_file_fails_the_check_with_its_path(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "broken", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model: Any = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))

    with pytest.raises(ExportError, match=r"broken\.onnx fails onnx\.checker: .*input 'x' of node"):
        check_onnx(path)


def test_file_that_is_not_onnx_fails_the_check(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("not a model\n", encoding="utf-8")

    with pytest.raises(ExportError, match=r"notes\.onnx fails onnx\.checker"):
        check_onnx(path)


def test_the_score_comparison_leaves_out_scores_no_threshold_comes_near() -> None:
    from fashionbox.converter.export import SCORE_FLOOR, score_error

    # ONNX Runtime's sigmoid underflows to exactly 0 where PyTorch's gives 5e-8: sqrt(5e-8 * 0.3) = 1.2e-4
    ours = np.array([0.0, 0.5, 0.0009], dtype=np.float32)
    theirs = np.array([1.2e-4, 0.50002, 0.0], dtype=np.float32)
    assert score_error(ours, theirs) == pytest.approx(2e-5, abs=1e-7)
    # at the floor and above, every difference counts, however small the other side is
    assert score_error(np.array([SCORE_FLOOR], np.float32), np.array([0.0], np.float32)) == pytest.approx(SCORE_FLOOR)
    assert score_error(np.zeros(3, np.float32), np.zeros(3, np.float32)) == 0.0
