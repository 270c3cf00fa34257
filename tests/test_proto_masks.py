"""A segmenting detector's tensors through gathering, padding and mask assembly (pure numpy, no model).

The parity of :func:`masks_from_protos` with Ultralytics' predictor is in tests/test_ultralytics.py;
here: each detection keeps its own box's coefficients whatever order NMS lists them in, padding
rows are zeros, and bad shapes are refused with what is wrong.
"""

from __future__ import annotations

import numpy as np
import pytest

from fashionbox.core.imaging import LetterboxInfo
from fashionbox.core.postprocessing import gather_detections, stack_padded_masks
from fashionbox.core.proto_masks import masks_from_protos


def _segmenting_outputs() -> tuple[np.ndarray, ...]:
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 30, 30]],
                      [[1, 1, 8, 8], [0, 0, 0, 0], [10, 10, 60, 60]]], dtype=np.float32)
    scores = np.zeros((2, 2, 3), dtype=np.float32)
    scores[0, 0, 0], scores[0, 1, 1], scores[0, 1, 2] = 0.5, 0.9, 0.7
    scores[1, 0, 2] = 0.8
    selected = np.array([[0, 1, 2], [1, 0, 2], [0, 0, 0], [0, 1, 1]], dtype=np.int64)  # not in score order
    coeffs = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # row (b, n) is unique
    protos = np.random.default_rng(0).normal(size=(2, 4, 16, 16)).astype(np.float32)
    return boxes, scores, selected, coeffs, protos


def test_each_detection_keeps_its_own_boxes_coefficients_and_its_images_protos() -> None:
    boxes, scores, selected, coeffs, protos = _segmenting_outputs()
    rows = gather_detections(boxes, scores, selected, max_detections=10, mask_coeffs=coeffs, protos=protos)
    assert rows[0].scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert rows[0].mask_coeffs is not None and rows[1].mask_coeffs is not None
    np.testing.assert_array_equal(rows[0].mask_coeffs, coeffs[0, [1, 2, 0]])
    np.testing.assert_array_equal(rows[1].mask_coeffs, coeffs[1, [2]])
    np.testing.assert_array_equal(rows[1].protos, protos[1])
    coeff_rows, proto_stack = stack_padded_masks(rows)
    assert coeff_rows.shape == (2, 3, 4) and proto_stack.shape == (2, 4, 16, 16)
    assert not coeff_rows[1, 1:].any()  # padding rows of the shorter image


def test_an_image_without_detections_still_carries_its_prototypes() -> None:
    boxes, scores, _, coeffs, protos = _segmenting_outputs()
    rows = gather_detections(boxes, scores, np.zeros((0, 3), dtype=np.int64), max_detections=10,
                             mask_coeffs=coeffs, protos=protos)
    coeff_rows, proto_stack = stack_padded_masks(rows)
    assert coeff_rows.shape == (2, 0, 4)
    np.testing.assert_array_equal(proto_stack, protos)


def test_mask_tensors_that_do_not_match_the_boxes_are_refused() -> None:
    boxes, scores, selected, coeffs, protos = _segmenting_outputs()
    with pytest.raises(ValueError, match="come together"):
        gather_detections(boxes, scores, selected, max_detections=10, mask_coeffs=coeffs)
    with pytest.raises(ValueError, match=r"mask_coeffs must be \[B=2, N=3, K\]"):
        gather_detections(boxes, scores, selected, max_detections=10, mask_coeffs=coeffs[:, :2], protos=protos)
    with pytest.raises(ValueError, match=r"protos must be \[B=2, K=4, h, w\]"):
        gather_detections(boxes, scores, selected, max_detections=10, mask_coeffs=coeffs, protos=protos[:, :3])
    rows = gather_detections(boxes, scores, selected, max_detections=10)
    with pytest.raises(ValueError, match="does not segment"):
        stack_padded_masks(rows)


def test_a_mask_lies_inside_its_box_and_follows_the_sign_of_its_logits() -> None:
    protos = np.zeros((1, 8, 8), dtype=np.float32)
    protos[0, :, :4] = 1.0  # positive on the left half of the image, negative on the right
    protos[0, :, 4:] = -1.0
    info = LetterboxInfo(64, 64, 1.0, 0.0, 0.0)
    (mask,) = masks_from_protos(np.ones((1, 1), np.float32), protos, np.array([[8, 8, 56, 40]], np.float32), info)
    full = mask.to_array()
    assert full.shape == (64, 64)
    assert full[8:40, 8:32].all() and not full[:, 32:].any()  # left half of the box, nothing right of centre
    assert not full[:8].any() and not full[40:].any() and not full[:, :8].any()  # nothing outside the box
    (flipped,) = masks_from_protos(-np.ones((1, 1), np.float32), protos, np.array([[8, 8, 56, 40]], np.float32),
                                   info)
    assert flipped.to_array()[8:40, 32:56].all() and not flipped.to_array()[:, :32].any()


def test_masks_map_through_the_letterbox_to_the_original_image() -> None:
    # a 200x100 image letterboxed to 64: scale 0.32, content 64x32 at rows 16..48
    info = LetterboxInfo(200, 100, 0.32, 0.0, 16.0)
    protos = np.ones((1, 16, 16), dtype=np.float32)
    (mask,) = masks_from_protos(np.ones((1, 1), np.float32), protos, np.array([[0, 16, 32, 48]], np.float32), info)
    full = mask.to_array()
    assert full.shape == (100, 200)
    assert full[:, :95].all() and not full[:, 105:].any()  # the box's left half of the letterbox, in original px


def test_bad_mask_inputs_are_refused() -> None:
    info = LetterboxInfo(64, 64, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"protos must be \[K, h, w\]"):
        masks_from_protos(np.ones((1, 2)), np.ones((2, 8)), np.zeros((1, 4)), info)
    with pytest.raises(ValueError, match=r"must be \[N, K=2\]"):
        masks_from_protos(np.ones((1, 3)), np.ones((2, 8, 8)), np.zeros((1, 4)), info)
    with pytest.raises(ValueError, match="1 mask coefficient rows for 2 boxes"):
        masks_from_protos(np.ones((1, 2)), np.ones((2, 8, 8)), np.zeros((2, 4)), info)
    assert masks_from_protos(np.ones((0, 2)), np.ones((2, 8, 8)), np.zeros((0, 4)), info) == []


def _smooth_prototypes(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """Low-frequency random fields, so that coefficients over them give blob-shaped masks."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([np.sin(xx / width * rng.uniform(2, 9) + rng.uniform(0, 6))
                     * np.cos(yy / height * rng.uniform(2, 9) + rng.uniform(0, 6))
                     for _ in range(count)]).astype(np.float32)


@pytest.mark.parametrize(("width", "height", "canvas"), [
    (100, 75, (128, 128)),  # smaller than the letterbox: step 2 shrinks (the content is 128x96, padded)
    (50, 120, (128, 64)),  # smaller, portrait, in a rect letterbox
    (1000, 750, (96, 128)),  # larger by a non-integer factor (7.8x), rect letterbox, no padding
    (333, 500, (128, 128)),  # odd sizes, padded left and right
])
def test_masks_equal_ultralytics_process_mask_then_scale_masks(width: int, height: int,
                                                               canvas: tuple[int, int]) -> None:
    """The two steps against Ultralytics' own ``process_mask(upsample=True)`` and ``scale_masks`` (torch)
    on the same coefficients and prototypes: original images smaller than the letterbox (which the
    Pillow resize this replaced refused: "box offset can't be negative"), larger by any factor, padded."""
    import torch
    from ultralytics_models import import_ultralytics

    from fashionbox.core.imaging import fitted_size

    import_ultralytics()
    from ultralytics.utils import ops
    rng = np.random.default_rng(width * height)
    canvas_h, canvas_w = canvas
    scale, new_w, new_h = fitted_size(width, height, max(canvas))
    info = LetterboxInfo(width, height, scale, float((canvas_w - new_w) // 2), float((canvas_h - new_h) // 2))
    protos = _smooth_prototypes(rng, 8, canvas_h // 4, canvas_w // 4)
    coeffs = rng.normal(0, 1, size=(12, 8)).astype(np.float32)
    corner = rng.uniform(0, 1, size=(12, 2)) * [canvas_w * 0.6, canvas_h * 0.6]
    sizes = rng.uniform([8, 8], [canvas_w * 0.5, canvas_h * 0.5], size=(12, 2))
    boxes = np.concatenate([corner, corner + sizes], axis=1).astype(np.float32)
    boxes[0] = [0.3, 0.0, canvas_w - 0.7, canvas_h]  # the whole letterbox: runs continue from column to column
    ours = masks_from_protos(coeffs, protos, boxes, info, input_size=canvas)
    at_letterbox = ops.process_mask(torch.from_numpy(protos), torch.from_numpy(coeffs), torch.from_numpy(boxes),
                                    canvas, upsample=True)
    resampled = ops.scale_masks(at_letterbox[:, None].float(), (height, width))[:, 0].numpy()
    expected = resampled > 0.5
    assert expected.any(axis=(1, 2)).sum() >= 8  # most boxes hold a mask
    for mask, theirs, values in zip(ours, expected, resampled, strict=True):
        differing = mask.to_array() != theirs
        # only ties: pixels that sample exactly 0.5, which float32 rounding puts on either side
        assert np.all(np.abs(values[differing] - 0.5) < 1e-4), values[differing]
        assert differing.sum() <= max(16, 0.02 * theirs.sum())
