"""Render one generated fashion photo with its ground truth, deterministically from a seed.

A scene is planned in image units (:mod:`~fashionbox.synth.layout`), painted layer by layer
onto a background while an instance-id map records which garment owns each pixel, then given a
photo finish. Ground truth comes from that map, so a box covers exactly the *visible* pixels of
its garment; garments less than half visible or with a visible box under
``SceneConfig.min_box_px`` are not annotated.

Usage::

    scene = render_scene(42)                       # random photo size
    scene = render_scene(42, size=(640, 480))      # same picture, given size
    scene.garments[0].category, scene.garments[0].box, scene.garments[0].attributes
    jpeg = scene.encode(quality=90)

Randomness: ``random.Random(seed)`` draws everything that does not depend on the resolution,
``numpy.random.default_rng(seed)`` only the per-pixel sensor noise; no global state is used.
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from fashionbox.contract.labels import LabelMap, default_label_map

from .background import render_background
from .canvas import Affine, Layer, rasterise
from .config import SceneConfig
from .errors import SynthError
from .garments import garment_catalogue
from .layout import Placed, plan_scene
from .photo import finish_photo

__all__ = [
    "DROPPED_INSTANCE",
    "GarmentAnnotation",
    "Scene",
    "render_scene",
    "render_scene_with_instances",
]

DROPPED_INSTANCE = 255
"""Instance-map value of pixels of garments that are visible but too occluded to annotate."""


@dataclass(frozen=True)
class GarmentAnnotation:
    category: str
    """Category name from the label map."""
    box: tuple[float, float, float, float]
    """``x1, y1, x2, y2`` in pixels of the scene image (x2, y2 exclusive edges)."""
    attributes: Mapping[str, str]
    """``{group: label}`` for exactly the groups the label map applies to the category."""


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    """RGB."""
    garments: tuple[GarmentAnnotation, ...]
    seed: int

    def encode(self, format: str = "JPEG", quality: int = 90) -> bytes:
        """The image as file bytes (``quality`` applies to JPEG and WebP)."""
        buffer = io.BytesIO()
        if format.upper() in ("JPEG", "JPG", "WEBP"):
            self.image.save(buffer, format=format, quality=quality)
        else:
            self.image.save(buffer, format=format)
        return buffer.getvalue()


def render_scene(seed: int, *, label_map: LabelMap | None = None, size: tuple[int, int] | None = None,
                 config: SceneConfig | None = None) -> Scene:
    """The scene of ``seed``; ``size`` (width, height) overrides the random photo size."""
    scene, _ = render_scene_with_instances(seed, label_map=label_map, size=size, config=config)
    return scene


def render_scene_with_instances(seed: int, *, label_map: LabelMap | None = None,
                                size: tuple[int, int] | None = None,
                                config: SceneConfig | None = None) -> tuple[Scene, NDArray[np.uint8]]:
    """The scene and its instance map: uint8 ``[H, W]``, ``i + 1`` on the visible pixels of
    ``scene.garments[i]``, :data:`DROPPED_INSTANCE` on garments left unannotated, 0 elsewhere."""
    if seed < 0:
        raise SynthError(f"seeds are non-negative integers, got {seed}")
    label_map = label_map or default_label_map()
    config = config or SceneConfig()
    catalogue = garment_catalogue(label_map)
    rnd = random.Random(seed)
    chosen = _choose_size(rnd, config)
    width, height = size or chosen
    if width < 16 or height < 16:
        raise SynthError(f"scene size must be at least 16x16 pixels, got {width}x{height}")
    background = render_background((width, height), rnd)
    plan = plan_scene(rnd, label_map, catalogue, config, (width, height), background.colours)
    image = background.image
    ids, layers = _composite(image, plan)
    garments, instances = _annotate(plan, ids, layers, config)
    image = finish_photo(image, rnd, np.random.default_rng(seed), config)
    return Scene(image, garments, seed), instances


def _choose_size(rnd: random.Random, config: SceneConfig) -> tuple[int, int]:
    long_side = rnd.randint(*config.long_side_px)
    short_side = round(long_side / rnd.choice(config.aspect_ratios))
    portrait = rnd.random() < config.portrait_probability
    return (short_side, long_side) if portrait else (long_side, short_side)


@dataclass(frozen=True)
class _Painted:
    """Where a garment went: its layer rectangle and its full silhouette area."""

    rect: tuple[int, int, int, int]
    pixels: int


def _composite(image: Image.Image, plan: Sequence[Placed]) -> tuple[NDArray[np.uint8], dict[int, _Painted]]:
    """Paint ``plan`` onto ``image`` in place; instance ``k`` is the k-th annotated item (1-based)."""
    width, height = image.size
    to_pixels = Affine.place((0.0, 0.0), float(max(width, height)))
    ids = np.zeros((height, width), dtype=np.uint8)
    painted: dict[int, _Painted] = {}
    instance = 0
    for item in plan:
        layers = rasterise(item.drawing, to_pixels.then(item.transform), item.colours, item.pattern.fill,
                           (0, 0, width, height))
        if layers.under is not None:
            _paste(image, ids, layers.under, 0)
        if item.category is None:
            continue
        instance += 1
        if layers.garment is not None:
            _paste(image, ids, layers.garment, instance)
            g = layers.garment
            rect = (g.left, g.top, g.left + g.rgb.width, g.top + g.rgb.height)
            painted[instance] = _Painted(rect, layers.garment_pixels)
    return ids, painted


def _paste(image: Image.Image, ids: NDArray[np.uint8], layer: Layer, instance: int) -> None:
    image.paste(layer.rgb, (layer.left, layer.top), layer.mask)
    region = ids[layer.top:layer.top + layer.rgb.height, layer.left:layer.left + layer.rgb.width]
    region[np.asarray(layer.mask) > 0] = instance


def _annotate(plan: Sequence[Placed], ids: NDArray[np.uint8], painted: Mapping[int, _Painted], config: SceneConfig,
              ) -> tuple[tuple[GarmentAnnotation, ...], NDArray[np.uint8]]:
    garments: list[GarmentAnnotation] = []
    relabel = np.zeros(256, dtype=np.uint8)
    items = [item for item in plan if item.category is not None]
    for instance, item in enumerate(items, start=1):
        where = painted.get(instance)
        box = _visible_box(ids, instance, where, config) if where else None
        if box is None:
            relabel[instance] = DROPPED_INSTANCE
            continue
        assert item.category is not None
        garments.append(GarmentAnnotation(item.category, box, dict(item.attributes)))
        relabel[instance] = len(garments)
    return tuple(garments), relabel[ids]


def _visible_box(ids: NDArray[np.uint8], instance: int, where: _Painted, config: SceneConfig,
                 ) -> tuple[float, float, float, float] | None:
    left, top, right, bottom = where.rect
    mine = ids[top:bottom, left:right] == instance
    visible = int(np.count_nonzero(mine))
    if visible == 0 or visible < config.min_visible_fraction * where.pixels:
        return None
    rows = np.flatnonzero(mine.any(axis=1))
    cols = np.flatnonzero(mine.any(axis=0))
    x1, y1 = left + int(cols[0]), top + int(rows[0])
    x2, y2 = left + int(cols[-1]) + 1, top + int(rows[-1]) + 1
    if x2 - x1 < config.min_box_px or y2 - y1 < config.min_box_px:
        return None
    return (float(x1), float(y1), float(x2), float(y2))
