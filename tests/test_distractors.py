"""Distractors (fashionbox.synth.distractors) and the hard-negative scene mix (fashionbox.training.negatives)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from fashionbox.contract.labels import default_label_map
from fashionbox.synth import SynthConfigError, SynthError, render_scene, render_scene_with_instances
from fashionbox.synth.distractors import (
    DEFAULT_DISTRACTOR_KINDS,
    DISTRACTOR_KINDS,
    DistractorConfig,
    paint_closeup,
    paint_distractors,
    render_distractor_scene,
    render_scene_with_distractors,
)
from fashionbox.training.data import render_sample
from fashionbox.training.negatives import render_kind_sample, scene_kind

SMALL = (320, 240)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_a_distractor_scene_has_no_annotations(seed: int) -> None:
    scene = render_distractor_scene(seed, size=SMALL)

    assert scene.garments == ()
    assert scene.image.size == SMALL and scene.image.mode == "RGB"
    assert np.asarray(scene.image).std() > 1.0  # something was drawn


def test_a_distractor_scene_is_the_same_for_the_same_seed_and_differs_between_seeds() -> None:
    first = np.asarray(render_distractor_scene(11, size=SMALL).image)
    again = np.asarray(render_distractor_scene(11, size=SMALL).image)
    other = np.asarray(render_distractor_scene(12, size=SMALL).image)

    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("seed", [3, 8, 21])
def test_garments_over_distractors_keep_their_annotations_and_instance_map(seed: int) -> None:
    plain, plain_ids = render_scene_with_instances(seed, size=SMALL)
    busy, busy_ids = render_scene_with_distractors(seed, size=SMALL,
                                                   distractors=DistractorConfig(min_items=4, max_items=6))

    assert busy.garments == plain.garments
    assert len(busy.garments) > 0
    assert np.array_equal(busy_ids, plain_ids)
    pixels_plain, pixels_busy = np.asarray(plain.image), np.asarray(busy.image)
    assert not np.array_equal(pixels_plain, pixels_busy)
    # Garments are painted over the distractors: inside them (away from their soft, blurred edges)
    # the pixels are untouched, the photo finish being the same for both.
    garment = _eroded(plain_ids > 0, 2)
    assert garment.sum() > 100
    assert np.abs(pixels_plain[garment].astype(int) - pixels_busy[garment].astype(int)).max() <= 1


def _eroded(mask: NDArray[np.bool_], pixels: int) -> NDArray[np.bool_]:
    out = mask.copy()
    for _ in range(pixels):
        inner = out.copy()
        inner[1:] &= out[:-1]
        inner[:-1] &= out[1:]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        out = inner
    return out


def test_scenes_without_distractors_render_as_before() -> None:
    # The seam draws nothing from the scene's generator: with no underlay the scene is what it was.
    scene = render_scene(5, size=SMALL)
    again, _ = render_scene_with_instances(5, size=SMALL, underlay=None)

    assert again.garments == scene.garments
    assert np.array_equal(np.asarray(again.image), np.asarray(scene.image))


@pytest.mark.parametrize("kind", DISTRACTOR_KINDS)
def test_every_kind_of_distractor_paints_deterministically(kind: str) -> None:
    config = DistractorConfig(min_items=2, max_items=2, kinds=(kind,), min_size_fraction=0.3)
    images = []
    for _ in range(2):
        image = Image.new("RGB", SMALL, (128, 128, 128))
        painted = paint_distractors(image, random.Random(7), config)
        assert painted == [kind, kind]
        images.append(np.asarray(image))
    assert np.array_equal(images[0], images[1])
    assert (images[0] != 128).any()


def test_shapes_are_opt_in_so_default_scenes_render_as_they_did() -> None:
    assert DistractorConfig().kinds == DEFAULT_DISTRACTOR_KINDS
    assert "shapes" in DISTRACTOR_KINDS and "shapes" not in DEFAULT_DISTRACTOR_KINDS
    assert DISTRACTOR_KINDS[:len(DEFAULT_DISTRACTOR_KINDS)] == DEFAULT_DISTRACTOR_KINDS
    default = [np.asarray(render_distractor_scene(seed, size=SMALL).image) for seed in range(8)]
    explicit = [np.asarray(render_distractor_scene(seed, size=SMALL, config=DistractorConfig(
        kinds=DEFAULT_DISTRACTOR_KINDS)).image) for seed in range(8)]
    every = [np.asarray(render_distractor_scene(seed, size=SMALL, config=DistractorConfig(
        kinds=DISTRACTOR_KINDS)).image) for seed in range(8)]
    assert all(np.array_equal(a, b) for a, b in zip(default, explicit, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(default, every, strict=True))


@pytest.mark.parametrize("seed", range(12))
def test_shapes_stay_around_their_centre(seed: int) -> None:
    from fashionbox.synth.distractors import _PAINTERS

    image = Image.new("RGB", (400, 400), (128, 128, 128))
    size, centre = 80.0, (200.0, 200.0)
    _PAINTERS["shapes"](image, random.Random(seed), centre, size)

    ys, xs = np.nonzero((np.asarray(image) != 128).any(axis=2))
    assert len(xs) > 0
    # Offsets up to half the size, radii up to half the size (a blob's wobble adds up to 45 %).
    reach = 0.5 * size + 0.5 * 1.45 * size + 2
    assert centre[0] - reach <= xs.min() and xs.max() <= centre[0] + reach
    assert centre[1] - reach <= ys.min() and ys.max() <= centre[1] + reach


def test_shapes_wear_the_garments_textile_patterns() -> None:
    # Over many collages, some shapes are filled with patterns: several colours inside one outline.
    image = Image.new("RGB", (320, 320), (128, 128, 128))
    config = DistractorConfig(min_items=30, max_items=30, kinds=("shapes",), min_size_fraction=0.5)
    paint_distractors(image, random.Random(3), config)
    colours = np.unique(np.asarray(image).reshape(-1, 3), axis=0)
    assert len(colours) > 200  # flat fills alone would give a few dozen


@pytest.mark.parametrize("kind", ["face", "animal", "hand", "texture"])
def test_a_closeup_fills_the_frame(kind: str) -> None:
    config = DistractorConfig(kinds=(kind,))
    covered = []
    for seed in range(6):
        closeup, scatter = (Image.new("RGB", SMALL, (128, 128, 128)) for _ in range(2))
        assert paint_closeup(closeup, random.Random(seed), config) in ([kind], [kind, kind])
        paint_distractors(scatter, random.Random(seed), replace(config, min_items=1, max_items=1))
        covered.append([float((np.asarray(image) != 128).any(axis=2).mean()) for image in (closeup, scatter)])
    closeups, scatters = np.array(covered).T
    assert closeups.min() > 0.15 and np.median(closeups) > 2 * np.median(scatters), covered


def test_closeup_scenes_are_opt_in_and_drawn_from_their_own_generator() -> None:
    share = [render_distractor_scene(seed, size=SMALL, config=DistractorConfig(closeup_probability=0.5))
             for seed in range(12)]
    default = [render_distractor_scene(seed, size=SMALL) for seed in range(12)]
    same = [np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(share, default, strict=True)]
    # The scenes that are not close-ups are exactly the default ones (same background, same scatter).
    assert 0 < sum(same) < 12
    assert all(a.garments == () for a in share)


def test_empty_scenes_can_have_no_distractor_at_all() -> None:
    scene = render_distractor_scene(4, size=SMALL, config=DistractorConfig(min_items=0, max_items=0))
    assert scene.garments == ()


@pytest.mark.parametrize("bad", [
    {"min_items": 3, "max_items": 2},
    {"kinds": ("person", "spaceship")},
    {"kinds": ()},
    {"jpeg_artefact_probability": 1.5},
    {"closeup_probability": -0.1},
    {"min_size_fraction": 0.0},
])
def test_bad_distractor_settings_are_refused_with_the_field_named(bad: dict[str, object]) -> None:
    with pytest.raises(SynthConfigError, match="DistractorConfig"):
        DistractorConfig(**bad)  # type: ignore[arg-type]


def test_negative_seeds_and_grey_images_are_refused() -> None:
    with pytest.raises(SynthError, match="non-negative"):
        render_distractor_scene(-1)
    with pytest.raises(SynthError, match="RGB"):
        paint_distractors(Image.new("L", SMALL), random.Random(0))


def test_scene_kinds_follow_the_rates_and_depend_only_on_seed_and_index() -> None:
    kinds = Counter(scene_kind(1, i, 0.35, 0.25) for i in range(4000))

    assert abs(kinds["empty"] / 4000 - 0.25) < 0.03
    assert abs(kinds["distractors"] / 4000 - 0.35) < 0.03
    assert [scene_kind(1, i, 0.35, 0.25) for i in range(50)] == [scene_kind(1, i, 0.35, 0.25) for i in range(50)]
    assert {scene_kind(1, i, 0.0, 0.0) for i in range(200)} == {"normal"}


def test_cached_samples_of_each_kind() -> None:
    label_map = default_label_map()
    normal = render_kind_sample(1_000_003, "normal", 96, label_map)
    reference = render_sample(1_000_003, 96, label_map)
    empty = render_kind_sample(1_000_004, "empty", 96, label_map)
    busy = render_kind_sample(1_000_003, "distractors", 96, label_map)

    assert np.array_equal(normal.pixels, reference.pixels)  # normal scenes are the plain stage's
    assert np.array_equal(normal.boxes, reference.boxes)
    assert empty.boxes.shape == (0, 4) and empty.classes.shape == (0,)
    # The distractors' kinds can be chosen; garments and boxes stay the scene's own.
    with_shapes = render_kind_sample(1_000_004, "empty", 96, label_map, distractor_kinds=("shapes",))
    assert not np.array_equal(with_shapes.pixels, empty.pixels)
    assert np.array_equal(with_shapes.pixels,
                          render_kind_sample(1_000_004, "empty", 96, label_map, distractor_kinds=("shapes",)).pixels)
    busy_shapes = render_kind_sample(1_000_003, "distractors", 96, label_map, distractor_kinds=("shapes",))
    assert np.array_equal(busy_shapes.boxes, busy.boxes) and not np.array_equal(busy_shapes.pixels, busy.pixels)
    assert empty.attributes.shape == (0, len(label_map.attribute_groups))
    assert np.array_equal(busy.boxes, normal.boxes) and np.array_equal(busy.classes, normal.classes)
    with pytest.raises(ValueError, match="unknown scene kind"):
        render_kind_sample(1, "fog", 96, label_map)
