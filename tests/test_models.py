"""fashionbox.models: detector and attribute networks, their configs, checkpoints and NMS."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from fashionbox.contract.labels import default_label_map
from fashionbox.models import (
    AttributeClassifier,
    AttributeConfig,
    CheckpointError,
    DetectorConfig,
    FashionDetector,
    load_attributes,
    load_detector,
    save_checkpoint,
)
from fashionbox.models.nms import NmsSettings, box_iou, nms_onnx_semantics

torch.set_num_threads(1)

LABELS = default_label_map()
SMALL = DetectorConfig(num_classes=12, input_size=64)
SMALL_ATTRIBUTES = AttributeConfig(group_sizes=(5, 3, 4), crop_size=32)


def _pixels(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)


def _calibrate(model: nn.Module, inputs: torch.Tensor) -> None:
    """Set every batch norm to the statistics of ``inputs``, then switch to evaluation.

    Freshly built, the batch norms are identities and the heads start nearly constant: such a
    network gives almost the same output for any image, so tests comparing outputs would pass
    whatever the code did. Calibrated buffers also differ from their defaults, so a checkpoint
    that lost them would load with different outputs.
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


def _detector(seed: int = 0) -> FashionDetector:
    torch.manual_seed(seed)
    model = FashionDetector(SMALL)
    for head in model.heads:
        for conv in (head.cls, head.reg, head.ctr):
            nn.init.normal_(conv.weight, std=0.03)
        nn.init.zeros_(head.cls.bias)
    _calibrate(model, _pixels(4, SMALL.input_size, seed=99))
    return model


def _classifier(seed: int = 0) -> AttributeClassifier:
    torch.manual_seed(seed)
    model = AttributeClassifier(SMALL_ATTRIBUTES)
    _calibrate(model, _pixels(4, SMALL_ATTRIBUTES.crop_size, seed=99))
    return model


def test_networks_under_test_give_different_outputs_for_different_images() -> None:
    pixels = _pixels(2, 64)
    with torch.no_grad():
        detections = _detector()(pixels)
        probs = _classifier()(pixels[:, :32, :32])

    assert float((detections.scores[0] - detections.scores[1]).abs().max()) > 0.1
    assert float((detections.boxes[0] - detections.boxes[1]).abs().max()) > 1.0
    assert float((probs[0] - probs[1]).abs().max()) > 0.01


# -- detector ---------------------------------------------------------------------------------


def test_small_config_has_one_location_per_cell_of_each_level() -> None:
    assert SMALL.num_locations == 8 * 8 + 4 * 4 + 2 * 2


def test_detector_outputs_have_the_documented_shapes_for_a_uint8_batch() -> None:
    with torch.no_grad():
        out = _detector()(_pixels(3, 64))

    n = SMALL.num_locations
    assert out.boxes.shape == (3, n, 4)
    assert out.scores.shape == (3, 12, n)
    assert out.cls_logits.shape == (3, n, 12)
    assert out.ltrb.shape == (3, n, 4)
    assert out.ctr_logits.shape == (3, n)
    assert all(t.dtype == torch.float32 for t in out)


def test_detector_scores_lie_in_0_1_laid_out_class_before_location() -> None:
    with torch.no_grad():
        out = _detector()(_pixels(2, 64))

    assert float(out.scores.min()) >= 0.0
    assert float(out.scores.max()) <= 1.0
    expected = torch.sqrt(torch.sigmoid(out.cls_logits).transpose(1, 2) * torch.sigmoid(out.ctr_logits)[:, None, :])
    torch.testing.assert_close(out.scores, expected, rtol=0, atol=1e-6)


def test_detector_boxes_have_x2_at_least_x1_and_y2_at_least_y1() -> None:
    with torch.no_grad():
        out = _detector()(_pixels(2, 64))

    assert bool((out.boxes[..., 2] >= out.boxes[..., 0]).all())
    assert bool((out.boxes[..., 3] >= out.boxes[..., 1]).all())


def test_detector_boxes_are_the_side_distances_around_each_location_centre() -> None:
    model = _detector()
    with torch.no_grad():
        out = model(_pixels(1, 64))

    centres = model.centers
    torch.testing.assert_close(out.boxes[0, :, :2], centres - out.ltrb[0, :, :2], rtol=0, atol=1e-4)
    torch.testing.assert_close(out.boxes[0, :, 2:], centres + out.ltrb[0, :, 2:], rtol=0, atol=1e-4)


def test_locations_run_level_by_level_then_row_by_row() -> None:
    model = _detector()

    assert model.centers[:3].tolist() == [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]]
    assert model.centers[8].tolist() == [4.0, 12.0]
    assert model.centers[64].tolist() == [8.0, 8.0]
    assert model.centers[-1].tolist() == [48.0, 48.0]
    assert model.location_strides.tolist() == [8.0] * 64 + [16.0] * 16 + [32.0] * 4


def test_detector_gives_the_same_result_for_uint8_and_float_pixels() -> None:
    model = _detector()
    pixels = _pixels(2, 64)

    with torch.no_grad():
        from_uint8 = model(pixels)
        from_float = model(pixels.float())

    torch.testing.assert_close(from_uint8.boxes, from_float.boxes, rtol=0, atol=0)
    torch.testing.assert_close(from_uint8.scores, from_float.scores, rtol=0, atol=0)


def test_each_image_of_a_batch_is_detected_as_if_alone() -> None:
    model = _detector()
    pixels = _pixels(3, 64)

    with torch.no_grad():
        batched = model(pixels)
        alone = model(pixels[1:2])

    torch.testing.assert_close(batched.boxes[1:2], alone.boxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(batched.scores[1:2], alone.scores, rtol=0, atol=1e-6)


def test_detector_config_survives_a_json_round_trip() -> None:
    config = DetectorConfig(num_classes=3, input_size=96, neck_channels=32, head_convs=1,
                            level_ranges=(48.0, 96.0, 1e8), center_radius=1.5, extra={"trained_on": "synth"})

    assert DetectorConfig.from_json(config.to_json()) == config
    assert DetectorConfig.from_json(SMALL.to_json()) == SMALL


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_classes": 0}, "num_classes must be >= 1"),
        ({"input_size": 100}, "input_size 100 must be a multiple of 32"),
        ({"level_ranges": (64.0, 1e8)}, "level_ranges needs one entry per stride"),
    ],
)
def test_detector_config_refuses_inconsistent_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        dataclasses.replace(SMALL, **changes)


# -- attributes -------------------------------------------------------------------------------


def test_attribute_probabilities_sum_to_one_within_each_group() -> None:
    with torch.no_grad():
        probs = _classifier()(_pixels(4, 32))

    assert probs.shape == (4, 12)
    assert float(probs.min()) >= 0.0
    for start, stop in ((0, 5), (5, 8), (8, 12)):
        torch.testing.assert_close(probs[:, start:stop].sum(dim=1), torch.ones(4), rtol=0, atol=1e-6)


def test_attribute_probabilities_are_the_softmax_of_each_group_logits() -> None:
    model = _classifier()
    crops = _pixels(2, 32)

    with torch.no_grad():
        logits = model.logits(crops)
        probs = model(crops)

    assert [g.shape for g in logits] == [(2, 5), (2, 3), (2, 4)]
    torch.testing.assert_close(probs, torch.cat([torch.softmax(g, dim=1) for g in logits], dim=1))


def test_attribute_config_survives_a_json_round_trip() -> None:
    config = AttributeConfig(group_sizes=(2, 7), crop_size=48, embedding=64, dropout=0.0)

    assert AttributeConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("group_sizes", [(), (5, 1)])
def test_attribute_config_refuses_groups_with_fewer_than_two_labels(group_sizes: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"^every attribute group needs at least two labels$"):
        AttributeConfig(group_sizes=group_sizes)


# -- checkpoints ------------------------------------------------------------------------------


def test_detector_checkpoint_loads_back_with_identical_outputs(tmp_path: Path) -> None:
    model = _detector()
    path = tmp_path / "detector.safetensors"
    pixels = _pixels(2, 64)

    save_checkpoint(path, model, kind="detector", config_json=SMALL.to_json(), label_map=LABELS)
    loaded, labels = load_detector(path)

    assert not loaded.training
    assert loaded.config == SMALL
    assert labels == LABELS
    with torch.no_grad():
        expected, actual = model(pixels), loaded(pixels)
    assert torch.equal(actual.boxes, expected.boxes)
    assert torch.equal(actual.scores, expected.scores)


def test_attribute_checkpoint_loads_back_with_identical_outputs(tmp_path: Path) -> None:
    model = _classifier()
    path = tmp_path / "attributes.safetensors"
    crops = _pixels(3, 32)

    save_checkpoint(path, model, kind="attributes", config_json=SMALL_ATTRIBUTES.to_json(), label_map=LABELS)
    loaded, labels = load_attributes(path)

    assert not loaded.training
    assert loaded.config == SMALL_ATTRIBUTES
    assert labels == LABELS
    with torch.no_grad():
        assert torch.equal(loaded(crops), model(crops))


def test_saving_leaves_only_the_checkpoint_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "sub" / "detector.safetensors", _detector(), kind="detector",
                    config_json=SMALL.to_json(), label_map=LABELS)

    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["detector.safetensors"]


def test_detector_checkpoint_loaded_as_attributes_names_both_kinds(tmp_path: Path) -> None:
    path = tmp_path / "detector.safetensors"
    save_checkpoint(path, _detector(), kind="detector", config_json=SMALL.to_json(), label_map=LABELS)

    with pytest.raises(CheckpointError, match=r"is not a FashionBox attributes checkpoint .*kind='detector'"):
        load_attributes(path)


def test_checkpoint_whose_weights_do_not_match_its_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "detector.safetensors"
    other = dataclasses.replace(SMALL, num_classes=5)
    save_checkpoint(path, _detector(), kind="detector", config_json=other.to_json(), label_map=LABELS)

    with pytest.raises(CheckpointError, match="does not match its declared architecture"):
        load_detector(path)


def test_missing_checkpoint_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"^checkpoint not found: .*nowhere\.safetensors$"):
        load_detector(tmp_path / "nowhere.safetensors")


class _Trap:
    """Unpickling this creates a folder: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_pickle_checkpoint_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "detector.safetensors"
    marker = tmp_path / "unpickled"
    torch.save({"state": _detector().state_dict(), "trap": _Trap(marker)}, path)

    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        load_detector(path)
    assert not marker.exists()

    # The trap is armed: an unpickling loader would have sprung it.
    same_bytes = tmp_path / "detector.pt"
    same_bytes.write_bytes(path.read_bytes())
    torch.load(same_bytes, weights_only=False)
    assert marker.is_dir()


# -- NMS --------------------------------------------------------------------------------------


def _nms(boxes: list[list[float]], scores: list[list[float]], **settings: float) -> list[list[int]]:
    """NMS on one image: ``boxes [N, 4]``, ``scores [C, N]``; returns the selected rows as lists."""
    selected = nms_onnx_semantics(torch.tensor([boxes]), torch.tensor([scores]), NmsSettings(**settings))  # type: ignore[arg-type]
    assert selected.dtype == torch.int64
    assert selected.shape[1] == 3
    return selected.tolist()


def test_two_overlapping_boxes_of_one_class_keep_the_higher_scored() -> None:
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11]]

    assert _nms(boxes, [[0.6, 0.9]], iou_threshold=0.5) == [[0, 0, 1]]


def test_overlapping_boxes_of_different_classes_are_both_kept() -> None:
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11]]

    assert _nms(boxes, [[0.9, 0.0], [0.0, 0.8]], iou_threshold=0.5) == [[0, 0, 0], [0, 1, 1]]


def test_one_box_may_be_kept_for_several_classes() -> None:
    assert _nms([[0, 0, 10, 10]], [[0.9], [0.8]]) == [[0, 0, 0], [0, 1, 0]]


def test_boxes_at_or_below_the_score_threshold_give_no_rows() -> None:
    selected = nms_onnx_semantics(torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30]]]),
                                  torch.tensor([[[0.25, 0.1]]]), NmsSettings(score_threshold=0.25))

    assert selected.shape == (0, 3)
    assert selected.dtype == torch.int64


def test_overlap_exactly_at_the_iou_threshold_does_not_suppress() -> None:
    boxes = [[0, 0, 10, 10], [0, 0, 10, 20]]  # IoU = 100 / 200
    assert float(box_iou(torch.tensor(boxes[:1]), torch.tensor(boxes[1:]))) == 0.5

    assert _nms(boxes, [[0.9, 0.8]], iou_threshold=0.5) == [[0, 0, 0], [0, 0, 1]]
    assert _nms(boxes, [[0.9, 0.8]], iou_threshold=0.49) == [[0, 0, 0]]


def test_at_most_max_per_class_boxes_are_kept_best_first() -> None:
    boxes = [[20.0 * i, 0, 20.0 * i + 10, 10] for i in range(5)]

    assert _nms(boxes, [[0.3, 0.9, 0.5, 0.7, 0.4]], max_per_class=3) == [[0, 0, 1], [0, 0, 3], [0, 0, 2]]


def test_suppressed_box_does_not_suppress_others() -> None:
    # b overlaps a (kept) and c; c overlaps only b. b is suppressed, so c survives.
    boxes = [[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]]

    assert _nms(boxes, [[0.9, 0.8, 0.7]], iou_threshold=0.3) == [[0, 0, 0], [0, 0, 2]]


def test_rows_are_batch_then_class_then_score_order() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30]]] * 2)
    scores = torch.tensor([
        [[0.5, 0.9], [0.0, 0.7]],
        [[0.8, 0.0], [0.3, 0.6]],
    ])

    selected = nms_onnx_semantics(boxes, scores, NmsSettings(score_threshold=0.2))

    assert selected.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0]]


def test_box_iou_of_identical_disjoint_and_empty_boxes() -> None:
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 5, 5], [5, 0, 15, 10]])

    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1.0, 0.0, 0.0, 1 / 3]]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"score_threshold": 1.0}, "score_threshold must lie in \\[0, 1\\)"),
        ({"iou_threshold": 0.0}, "iou_threshold in \\(0, 1\\]"),
        ({"max_per_class": 0}, "max_per_class and max_detections must be >= 1"),
        ({"max_detections": 0}, "max_per_class and max_detections must be >= 1"),
    ],
)
def test_nms_settings_refuse_values_out_of_range(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NmsSettings(**changes)  # type: ignore[arg-type]


def _onnx_nms(boxes: np.ndarray, scores: np.ndarray, settings: NmsSettings) -> np.ndarray:
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_per_class", "iou", "score"], ["selected"],
                            center_point_box=0)
    graph = helper.make_graph(
        [node],
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, list(boxes.shape)),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(scores.shape)),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["m", 3])],
        initializer=[
            helper.make_tensor("max_per_class", TensorProto.INT64, [1], [settings.max_per_class]),
            helper.make_tensor("iou", TensorProto.FLOAT, [1], [settings.iou_threshold]),
            helper.make_tensor("score", TensorProto.FLOAT, [1], [settings.score_threshold]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (selected,) = session.run(None, {"boxes": boxes, "scores": scores})
    return np.asarray(selected)


def test_nms_keeps_the_same_boxes_as_onnx_runtime_on_a_random_case() -> None:
    rng = np.random.default_rng(11)
    corners = rng.uniform(0, 60, (2, 80, 2))
    sides = rng.uniform(5, 30, (2, 80, 2))
    boxes = np.concatenate([corners, corners + sides], axis=2).astype(np.float32)
    scores = rng.uniform(0, 1, (2, 3, 80)).astype(np.float32)
    settings = NmsSettings(score_threshold=0.3, iou_threshold=0.4, max_per_class=12)

    ours = nms_onnx_semantics(torch.from_numpy(boxes), torch.from_numpy(scores), settings).numpy()
    theirs = _onnx_nms(boxes, scores, settings)

    assert {tuple(r) for r in ours.tolist()} == {tuple(r) for r in theirs.tolist()}
    assert len(ours) == len(theirs)
    # The case exercises suppression and the cap, not just the score threshold.
    candidates = int((scores > settings.score_threshold).sum())
    assert 0 < len(ours) < candidates
    _, counts = np.unique(ours[:, :2], axis=0, return_counts=True)
    assert counts.max() == settings.max_per_class
