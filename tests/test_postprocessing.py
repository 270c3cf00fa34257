"""fashionbox.core.postprocessing: gathering NMS output, masking attributes, padding, final assembly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from onnx_standins import DetectorStandIn, write_detector

from fashionbox.contract.labels import default_label_map
from fashionbox.core.imaging import LetterboxInfo
from fashionbox.core.postprocessing import (
    PAD_CLASS,
    DetectorOutput,
    attribute_mask,
    detections_from_kept,
    finish_detections,
    gather_detections,
    mask_attribute_scores,
    stack_image_results,
    stack_padded,
    unpad,
)

LABELS = default_label_map()


def _boxes(batch: int, n: int) -> NDArray[Any]:
    base = np.arange(n, dtype=np.float32)[:, None] * 10 + np.array([0, 0, 5, 5], dtype=np.float32)
    return np.broadcast_to(base, (batch, n, 4)).copy()


def test_detections_are_gathered_per_image_and_sorted_by_score() -> None:
    boxes = _boxes(2, 3)
    scores = np.zeros((2, 2, 3), dtype=np.float32)
    scores[0, 0] = [0.2, 0.9, 0.5]
    scores[1, 1] = [0.7, 0.1, 0.3]
    selected = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2], [1, 1, 2], [1, 1, 0]], dtype=np.int64)

    rows = gather_detections(boxes, scores, selected, max_detections=10)

    assert len(rows) == 2
    np.testing.assert_array_equal(rows[0].scores, np.array([0.9, 0.5, 0.2], dtype=np.float32))
    np.testing.assert_array_equal(rows[0].boxes, boxes[0, [1, 2, 0]])
    np.testing.assert_array_equal(rows[0].classes, [0, 0, 0])
    np.testing.assert_array_equal(rows[1].scores, np.array([0.7, 0.3], dtype=np.float32))
    np.testing.assert_array_equal(rows[1].classes, [1, 1])
    assert rows[0].boxes.dtype == np.float32 and rows[0].scores.dtype == np.float32
    assert rows[0].classes.dtype == np.int32


def test_gathering_from_the_kept_rows_alone_equals_gathering_from_the_whole_tensors() -> None:
    rng = np.random.default_rng(3)
    boxes = rng.uniform(0, 300, (3, 20, 4)).astype(np.float32)
    scores = rng.uniform(0, 1, (3, 5, 20)).astype(np.float32)
    selected = np.unique(np.stack([rng.integers(0, 3, 40), rng.integers(0, 5, 40), rng.integers(0, 20, 40)], 1), axis=0)
    b, c, n = selected.T

    whole = gather_detections(boxes, scores, selected, max_detections=6)
    kept = detections_from_kept(selected, boxes[b, n], scores[b, c, n], batch=3, max_detections=6)

    for ours, theirs in zip(kept, whole, strict=True):
        for field in ("boxes", "scores", "classes"):
            np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
            assert getattr(ours, field).dtype == getattr(theirs, field).dtype
    with pytest.raises(ValueError, match="3 kept rows but 2 boxes"):
        detections_from_kept(selected[:3], boxes[0, :2], scores[0, 0, :3], batch=1, max_detections=6)


def test_equal_scores_are_ordered_by_box_then_class_whatever_the_nms_order() -> None:
    boxes = _boxes(1, 3)
    scores = np.full((1, 2, 3), 0.5, dtype=np.float32)
    selected = np.array([[0, 1, 2], [0, 0, 2], [0, 1, 0], [0, 0, 1]], dtype=np.int64)

    forward = gather_detections(boxes, scores, selected, max_detections=10)[0]
    backward = gather_detections(boxes, scores, selected[::-1], max_detections=10)[0]

    np.testing.assert_array_equal(forward.boxes[:, 0], [0, 10, 20, 20])
    np.testing.assert_array_equal(forward.classes, [1, 0, 0, 1])
    np.testing.assert_array_equal(forward.boxes, backward.boxes)
    np.testing.assert_array_equal(forward.classes, backward.classes)


def test_at_most_max_detections_are_kept_per_image_best_first() -> None:
    boxes = _boxes(2, 4)
    scores = np.tile(np.array([0.1, 0.4, 0.3, 0.2], dtype=np.float32), (2, 1, 1))
    selected = np.array([[b, 0, i] for b in range(2) for i in range(4)], dtype=np.int64)

    rows = gather_detections(boxes, scores, selected, max_detections=2)

    for row in rows:
        np.testing.assert_array_equal(row.scores, np.array([0.4, 0.3], dtype=np.float32))


def test_one_box_kept_for_two_classes_is_two_detections() -> None:
    scores = np.array([[[0.8], [0.6]]], dtype=np.float32)
    selected = np.array([[0, 0, 0], [0, 1, 0]], dtype=np.int64)

    (row,) = gather_detections(_boxes(1, 1), scores, selected, max_detections=5)

    np.testing.assert_array_equal(row.classes, [0, 1])
    np.testing.assert_array_equal(row.boxes, np.repeat(_boxes(1, 1)[0], 2, axis=0))


def test_nothing_selected_gives_an_empty_result_per_image() -> None:
    rows = gather_detections(
        _boxes(3, 2), np.zeros((3, 4, 2), np.float32), np.zeros((0, 3), np.int64), max_detections=5
    )

    assert [len(r) for r in rows] == [0, 0, 0]
    assert rows[0].boxes.shape == (0, 4)


@pytest.mark.parametrize(
    ("selected", "message"),
    [
        (np.array([[2, 0, 0]]), "batch index"),
        (np.array([[0, 4, 0]]), "class index"),
        (np.array([[0, 0, -1]]), "box index"),
        (np.array([[0, 0]]), r"\[M, 3\]"),
    ],
)
def test_selected_rows_outside_the_tensors_are_refused(selected: NDArray[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gather_detections(_boxes(2, 2), np.zeros((2, 4, 2), np.float32), selected.astype(np.int64), max_detections=5)


def test_mismatched_boxes_and_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="scores must be"):
        gather_detections(_boxes(2, 3), np.zeros((2, 4, 2), np.float32), np.zeros((0, 3), np.int64), max_detections=5)
    with pytest.raises(ValueError, match="max_detections"):
        gather_detections(_boxes(1, 1), np.zeros((1, 1, 1), np.float32), np.zeros((0, 3), np.int64), max_detections=0)


def test_gathering_real_onnx_nms_output_keeps_the_best_of_overlapping_boxes(tmp_path: Path) -> None:
    import onnxruntime as ort

    spec = DetectorStandIn.default(input_size=64, num_categories=LABELS.num_categories)
    session = ort.InferenceSession(str(write_detector(tmp_path / "d.onnx", spec)), providers=["CPUExecutionProvider"])
    pixels = np.stack([np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)])
    boxes, scores, selected = session.run(["boxes", "scores", "selected"], {"pixels": pixels})

    dark, bright = gather_detections(boxes, scores, selected, max_detections=100)

    # box 1 overlaps box 0 for class 0 and scores lower: NMS dropped it
    assert not any(c == 0 and np.array_equal(b, spec.boxes[1]) for b, c in zip(dark.boxes, dark.classes, strict=True))
    assert list(dark.classes) == [0, 10, 5, 2, 6]
    kept_boxes = [0, 3, 2, 2, 4]
    np.testing.assert_allclose(dark.scores, spec.scores(pixels[:1])[0][dark.classes, kept_boxes], rtol=1e-6)
    np.testing.assert_array_equal(dark.boxes, spec.boxes[kept_boxes])
    assert len(bright) == 0  # below the score threshold everywhere


def test_attribute_groups_that_do_not_apply_are_zeroed() -> None:
    probs = np.full((3, LABELS.num_attribute_labels), 0.2, dtype=np.float32)
    classes = np.array(
        [LABELS.category_index("dress"), LABELS.category_index("shoe"), LABELS.category_index("pants")], np.int32
    )

    masked = mask_attribute_scores(probs, classes, LABELS)

    offsets = {name: (start, stop) for name, start, stop in LABELS.group_offsets}
    assert np.all(masked[0] == np.float32(0.2))
    assert np.all(masked[1] == 0)
    start, stop = offsets["textile pattern"]
    assert np.all(masked[2, start:stop] == np.float32(0.2))
    assert np.all(np.delete(masked[2], np.arange(start, stop)) == 0)
    assert masked.dtype == np.float32
    assert probs[1, 0] == np.float32(0.2)  # the input is not modified


def test_attribute_mask_follows_the_label_map_applicability() -> None:
    mask = attribute_mask(LABELS)

    assert mask.shape == (LABELS.num_categories, LABELS.num_attribute_labels)
    for category, applies in enumerate(LABELS.applicability):
        for (_, start, stop), group_applies in zip(LABELS.group_offsets, applies, strict=True):
            assert bool(mask[category, start:stop].all()) is group_applies
            assert bool(mask[category, start:stop].any()) is group_applies


def test_attribute_scores_of_the_wrong_width_or_class_are_refused() -> None:
    with pytest.raises(ValueError, match="attribute probs must be"):
        mask_attribute_scores(np.zeros((1, 3), np.float32), np.array([0]), LABELS)
    with pytest.raises(ValueError, match="class index"):
        mask_attribute_scores(np.zeros((1, LABELS.num_attribute_labels), np.float32), np.array([99]), LABELS)


def _row(n: int, offset: float = 0.0) -> DetectorOutput:
    return DetectorOutput(
        boxes=np.arange(n * 4, dtype=np.float32).reshape(n, 4) + np.float32(offset),
        scores=np.linspace(0.9, 0.5, n, dtype=np.float32),
        classes=np.arange(n, dtype=np.int32),
    )


def test_rows_of_different_lengths_are_padded_and_unpadded_losslessly() -> None:
    rows = [_row(3), _row(0), _row(1, 100.0)]

    boxes, scores, classes = stack_padded(rows)

    assert boxes.shape == (3, 3, 4) and scores.shape == (3, 3) and classes.shape == (3, 3)
    assert list(classes[1]) == [PAD_CLASS] * 3
    for i, row in enumerate(rows):
        back = unpad(boxes[i], scores[i], classes[i])
        np.testing.assert_array_equal(back.boxes, row.boxes)
        np.testing.assert_array_equal(back.scores, row.scores)
        np.testing.assert_array_equal(back.classes, row.classes)


def test_a_single_row_is_not_padded() -> None:
    boxes, _, classes = stack_padded([_row(2)])

    assert boxes.shape == (1, 2, 4)
    assert PAD_CLASS not in classes


def test_finished_detections_are_in_original_pixels_with_masked_attributes() -> None:
    # a 200x100 image letterboxed to 100: scale 0.5, padded 25 px top and bottom
    info = LetterboxInfo(width=200, height=100, scale=0.5, pad_x=0.0, pad_y=25.0)
    shoe = LABELS.category_index("shoe")
    detections = DetectorOutput(
        boxes=np.array([[10, 25, 50, 75], [0, 0, 100, 100]], dtype=np.float32),
        scores=np.array([0.9, 0.4], dtype=np.float32),
        classes=np.array([0, shoe], dtype=np.int32),
    )
    probs = np.full((2, LABELS.num_attribute_labels), 0.5, dtype=np.float32)

    result = finish_detections(detections, info, probs, LABELS)

    np.testing.assert_allclose(result.boxes, [[20, 0, 100, 100], [0, 0, 200, 100]])
    assert np.all(result.attribute_scores[1] == 0)
    assert np.all(result.attribute_scores[0] == np.float32(0.5))
    np.testing.assert_array_equal(result.categories, [0, shoe])


def test_image_results_stack_with_attribute_rows_padded() -> None:
    info = LetterboxInfo(width=10, height=10, scale=1.0, pad_x=0.0, pad_y=0.0)
    a = LABELS.num_attribute_labels
    results = [
        finish_detections(_row(2), info, np.ones((2, a), np.float32), LABELS),
        finish_detections(_row(0), info, np.zeros((0, a), np.float32), LABELS),
    ]

    boxes, _, categories, attributes = stack_image_results(results, num_attribute_labels=a)

    assert boxes.shape == (2, 2, 4) and attributes.shape == (2, 2, a)
    assert list(categories[1]) == [PAD_CLASS, PAD_CLASS]
    assert np.all(attributes[1] == 0)
