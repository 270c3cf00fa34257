"""fashionbox.training: FCOS target assignment, the detection loss, and the trainer's helpers."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fashionbox.models import DetectorConfig, FashionDetector
from fashionbox.training.data import SceneCache
from fashionbox.training.detection import DetectionTargets, assign_targets, detection_loss
from fashionbox.training.schedule import lr_at
from fashionbox.training.trainer import _batch, _jitter

torch.set_num_threads(1)

# Levels at strides 8, 16 and 32 on a 64-pixel input: 8x8, 4x4 and 2x2 locations.
CONFIG = DetectorConfig(num_classes=4, input_size=64, strides=(8, 16, 32), level_ranges=(64.0, 128.0, 1e8))
CENTRES, STRIDES = FashionDetector._locations(CONFIG)


def _index(x: float, y: float, stride: int) -> int:
    """Location index of the cell whose centre is ``(x, y)`` at ``stride``."""
    offset = {8: 0, 16: 64, 32: 80}[stride]
    cells = 64 // stride
    return offset + int(y // stride) * cells + int(x // stride)


def _assign(*boxes: tuple[list[float], int], config: DetectorConfig = CONFIG) -> DetectionTargets:
    """Targets for one image with ``(box, class)`` pairs."""
    gt_boxes = torch.tensor([b for b, _ in boxes], dtype=torch.float32).reshape(-1, 4)
    gt_classes = torch.tensor([c for _, c in boxes], dtype=torch.int64)
    return assign_targets(config, CENTRES, STRIDES, [gt_boxes], [gt_classes])


# -- target assignment ------------------------------------------------------------------------


def test_location_index_helper_matches_the_detector_layout() -> None:
    assert CENTRES[_index(12, 28, 8)].tolist() == [12.0, 28.0]
    assert CENTRES[_index(24, 40, 16)].tolist() == [24.0, 40.0]
    assert CENTRES[_index(48, 16, 32)].tolist() == [16.0 + 32.0, 16.0]


def test_locations_inside_a_small_box_near_its_centre_are_positive_at_stride_8() -> None:
    targets = _assign(([8, 8, 40, 40], 3))

    positives = torch.nonzero(targets.labels[0] >= 0).flatten().tolist()
    expected = sorted(_index(x, y, 8) for x in (12, 20, 28, 36) for y in (12, 20, 28, 36))
    assert positives == expected
    assert set(targets.labels[0, expected].tolist()) == {3}


def test_positive_location_gets_its_distances_to_the_box_sides_and_centerness() -> None:
    targets = _assign(([8, 8, 40, 40], 3))

    corner = _index(12, 12, 8)
    assert targets.ltrb[0, corner].tolist() == [4.0, 4.0, 28.0, 28.0]
    assert float(targets.centerness[0, corner]) == pytest.approx(4 / 28)
    off_centre = _index(20, 28, 8)
    assert targets.ltrb[0, off_centre].tolist() == [12.0, 20.0, 20.0, 12.0]
    assert float(targets.centerness[0, off_centre]) == pytest.approx(0.6)


def test_location_outside_the_box_is_background_with_zero_targets() -> None:
    targets = _assign(([8, 8, 40, 40], 3))

    outside = _index(4, 4, 8)
    assert int(targets.labels[0, outside]) == -1
    assert targets.ltrb[0, outside].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert float(targets.centerness[0, outside]) == 0.0


def test_small_box_is_background_at_the_coarser_levels() -> None:
    targets = _assign(([8, 8, 40, 40], 3))

    # (24, 24) is the box centre, but a 32-pixel box belongs to the stride-8 level.
    assert int(targets.labels[0, _index(24, 24, 16)]) == -1
    assert int(targets.labels[0, _index(16, 16, 32)]) == -1
    assert int((targets.labels[0, 64:] >= 0).sum()) == 0


def test_box_goes_to_the_level_whose_range_holds_its_largest_side_distance() -> None:
    # With ranges (16, 48]: near its centre a 56-pixel box is 28-36 px from its far sides, too far
    # for stride 8 (<= 16) and too near for stride 32 (>= 48), so only stride 16 regresses it.
    config = dataclasses.replace(CONFIG, level_ranges=(16.0, 48.0, 1e8))

    targets = _assign(([4, 4, 60, 60], 1), config=config)

    positives = torch.nonzero(targets.labels[0] >= 0).flatten().tolist()
    assert positives == sorted(_index(x, y, 16) for x in (24, 40) for y in (24, 40))
    assert targets.ltrb[0, _index(24, 24, 16)].tolist() == [20.0, 20.0, 36.0, 36.0]


def test_location_inside_a_box_but_far_from_its_centre_is_background() -> None:
    targets = _assign(([0, 0, 64, 64], 1))

    # (4, 4) is 28 px from the centre (32, 32), past 2.5 strides (20 px) at stride 8.
    assert int(targets.labels[0, _index(4, 4, 8)]) == -1
    assert int(targets.labels[0, _index(28, 28, 8)]) == 1


@pytest.mark.parametrize("big_first", [True, False])
def test_location_in_two_boxes_goes_to_the_smaller_box(big_first: bool) -> None:
    big, small = ([0, 0, 64, 64], 1), ([16, 16, 40, 40], 2)

    targets = _assign(big, small) if big_first else _assign(small, big)

    shared = _index(28, 28, 8)
    assert int(targets.labels[0, shared]) == 2
    assert targets.ltrb[0, shared].tolist() == [12.0, 12.0, 12.0, 12.0]
    assert float(targets.centerness[0, shared]) == pytest.approx(1.0)
    # Outside the small box the big one still owns its centre region.
    assert int(targets.labels[0, _index(44, 28, 8)]) == 1


def test_image_without_boxes_is_all_background() -> None:
    targets = assign_targets(CONFIG, CENTRES, STRIDES, [torch.zeros((0, 4)), torch.tensor([[8.0, 8, 40, 40]])],
                             [torch.zeros(0, dtype=torch.int64), torch.tensor([0])])

    n = CONFIG.num_locations
    assert targets.labels.shape == (2, n)
    assert targets.ltrb.shape == (2, n, 4)
    assert targets.centerness.shape == (2, n)
    assert bool((targets.labels[0] == -1).all())
    assert int((targets.labels[1] >= 0).sum()) == 16


# -- loss -------------------------------------------------------------------------------------


def _tiny_batch() -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=generator)
    boxes = [torch.tensor([[8.0, 8, 40, 40], [30, 20, 62, 60]]), torch.tensor([[4.0, 10, 60, 50]])]
    classes = [torch.tensor([0, 2]), torch.tensor([3])]
    return pixels, boxes, classes


def test_detection_loss_is_finite_positive_and_counts_the_positives() -> None:
    torch.manual_seed(0)
    model = FashionDetector(CONFIG)
    pixels, boxes, classes = _tiny_batch()
    targets = assign_targets(CONFIG, model.centers, model.location_strides, boxes, classes)

    loss = detection_loss(model(pixels), targets, CONFIG.num_classes)

    assert loss.positives == int((targets.labels >= 0).sum())
    assert loss.positives > 0
    total = float(loss.total.detach())
    for part in (total, float(loss.classification), float(loss.box), float(loss.centerness)):
        assert math.isfinite(part) and part > 0
    assert total == pytest.approx(float(loss.classification + 2 * loss.box + loss.centerness), rel=1e-5)


def test_detection_loss_without_positives_is_finite_and_only_classification() -> None:
    torch.manual_seed(0)
    model = FashionDetector(CONFIG)
    pixels, _, _ = _tiny_batch()
    empty = [torch.zeros((0, 4)), torch.zeros((0, 4))]
    targets = assign_targets(CONFIG, model.centers, model.location_strides, empty,
                             [torch.zeros(0, dtype=torch.int64)] * 2)

    loss = detection_loss(model(pixels), targets, CONFIG.num_classes)
    loss.total.backward()

    assert loss.positives == 0
    assert float(loss.box) == 0.0 and float(loss.centerness) == 0.0
    total = float(loss.total.detach())
    assert math.isfinite(total) and total > 0


def test_a_few_optimizer_steps_on_one_batch_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = FashionDetector(CONFIG).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pixels, boxes, classes = _tiny_batch()
    targets = assign_targets(CONFIG, model.centers, model.location_strides, boxes, classes)

    losses = []
    for _ in range(10):
        loss = detection_loss(model(pixels), targets, CONFIG.num_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        losses.append(float(loss.total.detach()))

    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


# -- trainer helpers --------------------------------------------------------------------------


def test_learning_rate_warms_up_linearly_to_the_base_rate() -> None:
    assert lr_at(0, 1000, 3e-3) == pytest.approx(3e-5)
    assert lr_at(49, 1000, 3e-3) == pytest.approx(1.5e-3)
    assert lr_at(99, 1000, 3e-3) == pytest.approx(3e-3)
    assert lr_at(9, 1000, 3e-3, warmup=10) == pytest.approx(3e-3)


def test_learning_rate_follows_a_cosine_from_the_base_rate_to_two_percent_of_it() -> None:
    assert lr_at(100, 1000, 3e-3) == pytest.approx(3e-3)
    assert lr_at(550, 1000, 3e-3) == pytest.approx(3e-3 * 0.51)
    assert lr_at(1000, 1000, 3e-3) == pytest.approx(3e-3 * 0.02)
    rates = [lr_at(step, 1000, 3e-3) for step in range(100, 1001)]
    assert all(a >= b for a, b in itertools.pairwise(rates))


def _write_cache(folder: Path) -> SceneCache:
    """Two 8x8 scenes; scene 0 has one box over a white patch, scene 1 two boxes."""
    pixels = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    pixels[0, 2:6, 0:3] = 255
    folder.mkdir()
    np.save(folder / "pixels.npy", pixels)
    np.save(folder / "boxes.npy", np.array([[0, 2, 3, 6], [1, 1, 2, 2], [4, 4, 8, 8]], dtype=np.float32))
    np.save(folder / "classes.npy", np.array([5, 6, 7], dtype=np.int64))
    np.save(folder / "attributes.npy", np.full((3, 3), -1, dtype=np.int64))
    np.save(folder / "offsets.npy", np.array([0, 1, 3], dtype=np.int64))
    return SceneCache(folder)


def test_batch_mirrors_the_pixels_and_the_boxes_together(tmp_path: Path) -> None:
    cache = _write_cache(tmp_path / "cache")
    flipped_once = unflipped_once = False
    rng = np.random.default_rng(0)

    for _ in range(6):
        pixels, boxes, classes = _batch(cache, np.array([0, 1]), rng, 8)
        assert pixels.shape == (2, 8, 8, 3) and pixels.dtype == torch.uint8
        assert [c.tolist() for c in classes] == [[5], [6, 7]]
        box = boxes[0][0].tolist()
        if box == [5.0, 2.0, 8.0, 6.0]:
            flipped_once = True
        else:
            assert box == [0.0, 2.0, 3.0, 6.0]
            unflipped_once = True
        x1, y1, x2, y2 = (int(v) for v in box)
        # The white patch is exactly where the (possibly mirrored) box says.
        assert bool((pixels[0, y1:y2, x1:x2] == 255).all())
        assert int((pixels[0] == 255).sum()) == 4 * 3 * 3

    assert flipped_once and unflipped_once
    assert cache.boxes_of(0).tolist() == [[0.0, 2.0, 3.0, 6.0]]  # the cache itself is untouched


def test_jittered_boxes_move_each_side_by_at_most_the_fraction_and_stay_in_the_image() -> None:
    boxes = np.array([[10, 10, 30, 50], [0, 0, 64, 64]], dtype=np.float32)

    out = _jitter(boxes, np.random.default_rng(0), 0.1, 64)

    assert out.dtype == np.float32
    assert out.shape == (2, 4)
    limits = np.array([[2, 4, 2, 4], [6.4, 6.4, 6.4, 6.4]], dtype=np.float32)
    assert bool((np.abs(out - boxes) <= limits + 1e-5).all())
    assert float(out.min()) >= 0.0 and float(out.max()) <= 64.0
    assert not np.array_equal(out[0], boxes[0])
