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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops

from fashionbox.contract.labels import LabelMap, default_label_map

from .background import render_background
from .canvas import Affine, Layer, rasterise
from .config import SceneConfig
from .errors import SynthError
from .garments import garment_catalogue
from .identity import GarmentIdentity, sample_identity
from .layout import Placed, plan_product, plan_scene
from .photo import finish_photo

__all__ = [
    "DROPPED_INSTANCE",
    "GarmentAnnotation",
    "ProductPhoto",
    "Scene",
    "identity_view_seed",
    "render_identity_scenes",
    "render_product_photo",
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
    identity: int | None = None
    """The garment identity (``fashionbox.synth.identity``) this is, in scenes asked to place one."""


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
                                config: SceneConfig | None = None,
                                identities: Sequence[GarmentIdentity] = (),
                                underlay: Callable[[Image.Image], object] | None = None,
                                ) -> tuple[Scene, NDArray[np.uint8]]:
    """The scene and its instance map: uint8 ``[H, W]``, ``i + 1`` on the visible pixels of
    ``scene.garments[i]``, :data:`DROPPED_INSTANCE` on garments left unannotated, 0 elsewhere.

    ``identities`` are placed in the scene as themselves (their annotations carry ``identity``);
    one may still end up unannotated, too occluded, like any garment.

    ``underlay`` paints on the background (in place) after the plan is drawn and before the
    garments: never annotated, it leaves the garments and their boxes as they are
    (``fashionbox.synth.distractors`` uses it)."""
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
    plan = plan_scene(rnd, label_map, catalogue, config, (width, height), background.colours, identities)
    image = background.image
    if underlay is not None:
        underlay(image)
    ids, layers = _composite(image, plan)
    garments, instances = _annotate(plan, ids, layers, config)
    image = finish_photo(image, rnd, np.random.default_rng(seed), config)
    return Scene(image, garments, seed), instances


def identity_view_seed(identity: int, view: int, attempt: int = 0) -> int:
    """Scene seed of view ``view`` of garment ``identity`` (``attempt`` > 0: a retry)."""
    return int(np.random.SeedSequence([identity, view, attempt, 16]).generate_state(1, np.uint32)[0])


def render_identity_scenes(identity: GarmentIdentity | int, views: int, *, label_map: LabelMap | None = None,
                           config: SceneConfig | None = None, max_attempts: int = 8) -> list[Scene]:
    """``views`` scenes, each showing garment ``identity`` annotated (``GarmentAnnotation.identity``).

    Every view is a scene of its own seed (:func:`identity_view_seed`): its own background,
    light, pose, scale, rotation and neighbours; only the garment stays itself. A view in which
    the garment ends up too occluded to annotate is drawn again with the next attempt's seed.
    """
    label_map = label_map or default_label_map()
    garment = identity if isinstance(identity, GarmentIdentity) else sample_identity(identity, label_map=label_map)
    if views < 1:
        raise SynthError(f"views must be at least 1, got {views}")
    scenes: list[Scene] = []
    for view in range(views):
        for attempt in range(max_attempts):
            seed = identity_view_seed(garment.identity, view, attempt)
            scene, _ = render_scene_with_instances(seed, label_map=label_map, config=config, identities=(garment,))
            if any(g.identity == garment.identity for g in scene.garments):
                scenes.append(scene)
                break
        else:
            raise SynthError(f"identity {garment.identity} stayed hidden in {max_attempts} attempts of view {view}")
    return scenes


@dataclass(frozen=True)
class ProductPhoto:
    """A single-product photo: one garment, centred, on a plain or lightly textured ground."""

    image: Image.Image
    garment: GarmentAnnotation
    vertical: str
    """The product vertical (``fashionbox.synth.verticals``) of the garment's category."""
    seed: int

    def encode(self, format: str = "JPEG", quality: int = 90) -> bytes:
        return Scene(self.image, (self.garment,), self.seed).encode(format, quality)


_PRODUCT_ASPECTS = (1.0, 1.0, 4 / 5, 3 / 4, 2 / 3, 5 / 4, 4 / 3, 3 / 2)
"""Width / height of product photos: square shop tiles, portrait and landscape."""


def render_product_photo(seed: int, *, label_map: LabelMap | None = None, category: str | None = None,
                         ) -> ProductPhoto:
    """The product photo of ``seed``: one garment (of ``category`` when given) filling 45-90 % of the frame."""
    from .verticals import vertical_of

    if seed < 0:
        raise SynthError(f"seeds are non-negative integers, got {seed}")
    label_map = label_map or default_label_map()
    catalogue = garment_catalogue(label_map)
    rnd = random.Random(f"product-{seed}")
    garment = sample_identity(rnd.getrandbits(48), label_map=label_map, category=category)
    long_side = rnd.randint(320, 1000)
    aspect = rnd.choice(_PRODUCT_ASPECTS)
    width, height = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    image = _product_ground((width, height), rnd)
    item = plan_product(rnd, catalogue, (width, height), garment, rnd.uniform(0.45, 0.9), rnd.uniform(-6.0, 6.0))
    ids, layers = _composite(image, [item])
    config = SceneConfig(min_visible_fraction=0.05, min_box_px=2.0, blur_probability=0.2, max_noise_level=3)
    annotated, _ = _annotate([item], ids, layers, config)
    if not annotated:
        raise SynthError(f"product photo {seed} drew no visible garment")
    image = finish_photo(image, rnd, np.random.default_rng(seed), config)
    return ProductPhoto(image, annotated[0], vertical_of(garment.category), seed)


def _product_ground(size: tuple[int, int], rnd: random.Random) -> Image.Image:
    """White, light grey or a pale tint; sometimes a soft gradient or a faint texture."""
    if rnd.random() < 0.5:
        grey = rnd.uniform(225, 255)
        base = np.array([grey, grey, grey])
    else:
        base = np.array([rnd.uniform(170, 250) for _ in range(3)])
    width, height = size
    grid = np.ones((8, 8, 1), dtype=np.float32)
    if rnd.random() < 0.5:
        ys = np.linspace(-0.5, 0.5, 8, dtype=np.float32)[:, None, None]
        grid = grid * (1 - rnd.uniform(0.0, 0.15) * ys)
    small = np.clip(grid * base[None, None, :], 0, 255).astype(np.uint8)
    image = Image.fromarray(small, "RGB").resize(size, Image.Resampling.BILINEAR)
    if rnd.random() < 0.3:
        shape = (height // 4 + 1, width // 4 + 1)
        noise = np.random.default_rng(rnd.getrandbits(32)).normal(0, rnd.uniform(2, 6), shape)
        texture = Image.fromarray(np.clip(128 + noise, 0, 255).astype(np.uint8), "L").resize(size)
        image = ImageChops.add(image, Image.merge("RGB", (texture,) * 3), scale=1.0, offset=-128)
    return image


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
        garments.append(GarmentAnnotation(item.category, box, dict(item.attributes), item.identity))
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
