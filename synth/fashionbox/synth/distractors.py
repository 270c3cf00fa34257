"""Distractors: things in a photo that are not garments, painted into scenes and never annotated.

The default detector learned from scenes that held nothing but garments, so on a real photo of a
cat or a cup every textured blob looked like clothing to it. Distractors teach it what is *not* a
garment: bare figures (skin, hair, no labelled garment), hands, faces, furniture, household
objects, animal-like shapes, text, textures (wood grain, foliage, fabric-like noise on a rug or a
curtain), clutter, and photographic-looking backgrounds (gradients, bokeh, blur, noise, JPEG
artefacts). Scenes with no garment at all ("empty" scenes) come from :func:`render_distractor_scene`.

Usage::

    scene, instances = render_scene_with_distractors(42)   # render_scene(42)'s garments and boxes, plus clutter
    empty = render_distractor_scene(42)                    # Scene with garments == ()

Determinism: distractors draw from their own ``random.Random(f"distractors-{seed}")``, never from
the scene's generator, so a scene's garments (plan, colours, boxes, attributes) are the same with
and without distractors, and a scene rendered without them is exactly what it was before this
module existed. Distractors are painted onto the background before the garments (the scene's
``underlay`` seam), so garments occlude them and the instance map (hence every annotation) is
unchanged.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fashionbox.contract.labels import LabelMap

from .background import render_background
from .canvas import Affine
from .colours import RGB, hair_colour, scaled, skin_tone
from .config import SceneConfig
from .errors import SynthConfigError, SynthError
from .patterns import PatternKind, sample_pattern
from .photo import finish_photo
from .scene import Scene, render_scene_with_instances

__all__ = [
    "CLOSEUP_SIZE",
    "DEFAULT_DISTRACTOR_KINDS",
    "DISTRACTOR_KINDS",
    "DistractorConfig",
    "distractor_rng",
    "paint_closeup",
    "paint_distractors",
    "photographic_background",
    "render_distractor_scene",
    "render_scene_with_distractors",
]

DEFAULT_DISTRACTOR_KINDS = ("person", "hand", "face", "furniture", "object", "animal", "text", "texture",
                            "clutter")
"""The kinds :class:`DistractorConfig` draws from by default: the shipped detector's hard negatives and
the held-out scenes the benchmarks measure on (bench_false_positives.py), unchanged since they were
made."""

CLOSEUP_SIZE = (0.7, 1.3)
"""Size of a close-up's distractors, as a fraction of the image's long side."""

DISTRACTOR_KINDS = (*DEFAULT_DISTRACTOR_KINDS, "shapes")
"""Every kind of distractor. ``shapes`` (a dead-leaves collage: overlapping ellipses, rounded boxes and
blobs, flat, shaded or in the garments' own textile patterns) came later and is opt-in
(``DistractorConfig(kinds=DISTRACTOR_KINDS)``), so scenes rendered with the defaults stay as they were."""


@dataclass(frozen=True)
class DistractorConfig:
    min_items: int = 1
    max_items: int = 6
    """Distractors per scene (drawn uniformly in this range)."""
    kinds: tuple[str, ...] = DEFAULT_DISTRACTOR_KINDS
    photographic_background_probability: float = 0.5
    """Empty scenes: chance of a gradient/bokeh background instead of a studio/wall/board one."""
    jpeg_artefact_probability: float = 0.3
    """Empty scenes: chance of a low-quality JPEG round trip (blocking, ringing)."""
    min_size_fraction: float = 0.08
    max_size_fraction: float = 0.7
    """Size of a distractor, as a fraction of the image's long side."""
    closeup_probability: float = 0.0
    """Empty scenes: chance of a close-up instead of a scatter: one or two distractors filling the frame
    (:data:`CLOSEUP_SIZE` of the long side, centred), as a pet, a chair or a face photographed up close.
    Opt-in (0 by default, so scenes rendered before it stay the same)."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_items <= self.max_items <= 64:
            raise SynthConfigError("DistractorConfig.min_items must be 0 <= min_items <= max_items <= 64")
        unknown = set(self.kinds) - set(DISTRACTOR_KINDS)
        if not self.kinds or unknown:
            raise SynthConfigError(f"DistractorConfig.kinds must be a non-empty subset of {DISTRACTOR_KINDS}, "
                                   f"got unknown {sorted(unknown)}")
        for name in ("photographic_background_probability", "jpeg_artefact_probability", "closeup_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SynthConfigError(f"DistractorConfig.{name} must be in [0, 1]")
        if not 0.0 < self.min_size_fraction <= self.max_size_fraction <= 1.5:
            raise SynthConfigError("DistractorConfig.min_size_fraction must be 0 < min <= max <= 1.5")


def distractor_rng(seed: int) -> random.Random:
    """The generator distractors of scene ``seed`` draw from (apart from the scene's own)."""
    return random.Random(f"distractors-{seed}")


def paint_distractors(image: Image.Image, rnd: random.Random, config: DistractorConfig | None = None,
                      ) -> list[str]:
    """Paint distractors onto ``image`` (RGB) in place; returns the kinds painted, in order."""
    config = config or DistractorConfig()
    if image.mode != "RGB":
        raise SynthError(f"distractors are painted on RGB images, got mode {image.mode}")
    painted = []
    for _ in range(rnd.randint(config.min_items, config.max_items)):
        kind = rnd.choice(config.kinds)
        size = rnd.uniform(config.min_size_fraction, config.max_size_fraction) * max(image.size)
        # The centre may lie near the border: real clutter is cut by the frame too.
        cx = rnd.uniform(-0.1, 1.1) * image.width
        cy = rnd.uniform(-0.1, 1.1) * image.height
        _PAINTERS[kind](image, rnd, (cx, cy), size)
        painted.append(kind)
    return painted


def paint_closeup(image: Image.Image, rnd: random.Random, config: DistractorConfig | None = None) -> list[str]:
    """Paint one or two distractors of ``config.kinds`` that fill the frame (:data:`CLOSEUP_SIZE` of the
    long side, centred in the middle half); returns the kinds painted."""
    config = config or DistractorConfig()
    if image.mode != "RGB":
        raise SynthError(f"distractors are painted on RGB images, got mode {image.mode}")
    painted = []
    for _ in range(rnd.randint(1, 2)):
        kind = rnd.choice(config.kinds)
        size = rnd.uniform(*CLOSEUP_SIZE) * max(image.size)
        centre = (rnd.uniform(0.25, 0.75) * image.width, rnd.uniform(0.25, 0.75) * image.height)
        _PAINTERS[kind](image, rnd, centre, size)
        painted.append(kind)
    return painted


def render_scene_with_distractors(seed: int, *, label_map: LabelMap | None = None,
                                  size: tuple[int, int] | None = None, config: SceneConfig | None = None,
                                  distractors: DistractorConfig | None = None,
                                  ) -> tuple[Scene, NDArray[np.uint8]]:
    """``render_scene_with_instances(seed)`` with distractors under its garments: same annotations."""
    chosen = distractors or DistractorConfig()
    rnd = distractor_rng(seed)
    return render_scene_with_instances(seed, label_map=label_map, size=size, config=config,
                                       underlay=lambda image: paint_distractors(image, rnd, chosen))


def render_distractor_scene(seed: int, *, size: tuple[int, int] | None = None,
                            config: DistractorConfig | None = None,
                            scene_config: SceneConfig | None = None) -> Scene:
    """A photo of ``seed`` with distractors and no garment at all: ``garments`` is empty."""
    if seed < 0:
        raise SynthError(f"seeds are non-negative integers, got {seed}")
    config = config or DistractorConfig()
    scene_config = scene_config or SceneConfig()
    rnd = random.Random(f"empty-{seed}")
    long_side = rnd.randint(*scene_config.long_side_px)
    short_side = round(long_side / rnd.choice(scene_config.aspect_ratios))
    portrait = rnd.random() < scene_config.portrait_probability
    width, height = size or ((short_side, long_side) if portrait else (long_side, short_side))
    if width < 16 or height < 16:
        raise SynthError(f"scene size must be at least 16x16 pixels, got {width}x{height}")
    if rnd.random() < config.photographic_background_probability:
        image = photographic_background((width, height), rnd)
    else:
        image = render_background((width, height), rnd).image
    # The close-up draw has its own generator: with closeup_probability 0 nothing else changes.
    closeup = config.closeup_probability > 0 and random.Random(f"closeup-{seed}").random() < config.closeup_probability
    if closeup:
        paint_closeup(image, random.Random(f"closeup-distractors-{seed}"), config)
    else:
        paint_distractors(image, random.Random(f"empty-distractors-{seed}"), config)
    image = finish_photo(image, rnd, np.random.default_rng([seed, 77]), scene_config)
    if rnd.random() < config.jpeg_artefact_probability:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=rnd.randint(8, 40))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return Scene(image, (), seed)


# -- backgrounds -------------------------------------------------------------------------------------


def photographic_background(size: tuple[int, int], rnd: random.Random) -> Image.Image:
    """A smooth two- or three-colour gradient with out-of-focus blobs (bokeh), blur and grain."""
    width, height = size
    grid_w, grid_h = (24, max(2, round(24 * height / width))) if width >= height else \
        (max(2, round(24 * width / height)), 24)
    ys, xs = np.mgrid[0:grid_h, 0:grid_w].astype(np.float32)
    u, v = xs / (grid_w - 1), ys / (grid_h - 1)
    angle = rnd.uniform(0, 2 * math.pi)
    t = np.clip(0.5 + (u - 0.5) * math.cos(angle) + (v - 0.5) * math.sin(angle), 0, 1)[..., None]
    a, b = np.array(_any_colour(rnd), np.float32), np.array(_any_colour(rnd), np.float32)
    grid = a * (1 - t) + b * t
    if rnd.random() < 0.5:  # a third colour pooled somewhere, like light through a window
        c = np.array(_any_colour(rnd), np.float32)
        px, py = rnd.random(), rnd.random()
        w = np.exp(-((u - px) ** 2 + (v - py) ** 2) / rnd.uniform(0.02, 0.2))[..., None]
        grid = grid * (1 - w) + c * w
    image = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB").resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(rnd.randint(0, 25)):
        r = rnd.uniform(0.01, 0.08) * max(size)
        x, y = rnd.uniform(0, width), rnd.uniform(0, height)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=scaled(_any_colour(rnd), rnd.uniform(0.8, 1.3)))
    image = image.filter(ImageFilter.GaussianBlur(rnd.uniform(0.005, 0.03) * max(size)))
    return _grain(image, rnd, rnd.uniform(2, 12))


# -- painters ----------------------------------------------------------------------------------------

Point = tuple[float, float]
Painter = Callable[[Image.Image, random.Random, Point, float], None]


def _any_colour(rnd: random.Random) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(rnd.random(), rnd.uniform(0.0, 0.8), rnd.uniform(0.15, 0.98))
    return (round(r * 255), round(g * 255), round(b * 255))


def _wood_colour(rnd: random.Random) -> RGB:
    return scaled(rnd.choice(((150, 100, 60), (110, 70, 40), (190, 150, 100), (80, 50, 30), (60, 60, 62),
                              (230, 228, 220))), rnd.uniform(0.8, 1.15))


def _limb(draw: ImageDraw.ImageDraw, a: Point, b: Point, width: float, colour: RGB | int) -> None:
    """A thick segment with round ends (arms, legs, fingers, table legs)."""
    w = max(1, round(width))
    draw.line([a, b], fill=colour, width=w)
    r = width / 2
    for x, y in (a, b):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _at(centre: Point, size: float, x: float, y: float) -> Point:
    return (centre[0] + x * size, centre[1] + y * size)


def _paint_person(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    """A standing figure, ``size`` tall, in skin and hair only: none of the labelled garments."""
    draw = ImageDraw.Draw(image)
    skin, hair = skin_tone(rnd), hair_colour(rnd)
    shade = scaled(skin, 0.85)
    s = size
    head_r = 0.065
    head = _at(centre, s, 0, -0.42)
    if rnd.random() < 0.5:  # long hair behind the head and shoulders
        draw.rectangle((*_at(centre, s, -0.08, -0.45), *_at(centre, s, 0.08, -0.25)), fill=hair)
    spread = rnd.uniform(0.02, 0.12)
    for side in (-1, 1):  # legs, then arms hanging or raised
        _limb(draw, _at(centre, s, side * 0.05, 0.05), _at(centre, s, side * spread, 0.48), 0.06 * s, shade)
        lift = rnd.uniform(-0.25, 0.35)
        _limb(draw, _at(centre, s, side * 0.11, -0.3), _at(centre, s, side * (0.16 + abs(lift) * 0.4), -0.3 + lift),
              0.045 * s, skin)
    torso = [_at(centre, s, -0.12, -0.32), _at(centre, s, 0.12, -0.32), _at(centre, s, 0.1, 0.08),
             _at(centre, s, -0.1, 0.08)]
    draw.polygon(torso, fill=skin)
    _limb(draw, _at(centre, s, 0, -0.36), _at(centre, s, 0, -0.31), 0.05 * s, skin)
    draw.ellipse((head[0] - head_r * s, head[1] - head_r * s, head[0] + head_r * s, head[1] + head_r * s), fill=skin)
    draw.pieslice((head[0] - head_r * s, head[1] - head_r * s * 1.1, head[0] + head_r * s,
                   head[1] + head_r * s * 0.6), 180, 360, fill=hair)


def _paint_hand(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    draw = ImageDraw.Draw(image)
    skin = skin_tone(rnd)
    angle = rnd.uniform(0, 2 * math.pi)
    c, s_ = math.cos(angle), math.sin(angle)

    def rot(x: float, y: float) -> Point:
        return (centre[0] + (x * c - y * s_) * size, centre[1] + (x * s_ + y * c) * size)

    _limb(draw, rot(0, 0.2), rot(0, 0.6), 0.22 * size, scaled(skin, 0.95))  # wrist and forearm
    palm = [rot(x, y) for x, y in ((-0.16, -0.1), (0.16, -0.1), (0.14, 0.2), (-0.14, 0.2))]
    draw.polygon(palm, fill=skin)
    for k, x in enumerate((-0.12, -0.04, 0.04, 0.12)):
        length = (0.28, 0.34, 0.32, 0.24)[k] * rnd.uniform(0.8, 1.1)
        _limb(draw, rot(x, -0.1), rot(x * 1.3, -0.1 - length), 0.07 * size, skin)
    _limb(draw, rot(-0.16, 0.08), rot(-0.34, -0.08), 0.08 * size, skin)


def _paint_face(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    draw = ImageDraw.Draw(image)
    skin, hair = skin_tone(rnd), hair_colour(rnd)
    cx, cy = centre
    w, h = 0.32 * size, 0.42 * size
    if rnd.random() < 0.7:
        draw.ellipse((cx - w * 1.15, cy - h * 1.1, cx + w * 1.15, cy + h * (0.2 if rnd.random() < 0.5 else 1.1)),
                     fill=hair)
    _limb(draw, (cx, cy + h * 0.8), (cx, cy + h * 1.5), w * 0.9, scaled(skin, 0.9))  # neck
    draw.ellipse((cx - w, cy - h, cx + w, cy + h), fill=skin)
    eye = max(1.0, 0.06 * size)
    for side in (-1, 1):
        ex, ey = cx + side * 0.4 * w, cy - 0.15 * h
        draw.ellipse((ex - eye, ey - eye * 0.6, ex + eye, ey + eye * 0.6), fill=(245, 245, 240))
        draw.ellipse((ex - eye * 0.5, ey - eye * 0.5, ex + eye * 0.5, ey + eye * 0.5), fill=(40, 30, 25))
        draw.line([(ex - eye * 1.2, ey - eye * 1.6), (ex + eye * 1.2, ey - eye * 1.8)], fill=hair,
                  width=max(1, round(eye * 0.4)))
    draw.line([(cx, cy - 0.05 * h), (cx - 0.06 * w, cy + 0.3 * h)], fill=scaled(skin, 0.75),
              width=max(1, round(eye * 0.3)))
    draw.arc((cx - 0.35 * w, cy + 0.2 * h, cx + 0.35 * w, cy + 0.6 * h), 20, 160,
             fill=(150, 60, 60), width=max(1, round(eye * 0.4)))


def _paint_furniture(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    draw = ImageDraw.Draw(image)
    colour = _wood_colour(rnd) if rnd.random() < 0.7 else _any_colour(rnd)
    dark = scaled(colour, 0.7)
    x, y, s = centre[0], centre[1], size
    kind = rnd.choice(("chair", "table", "sofa", "shelf", "lamp"))
    if kind == "chair":
        draw.rectangle((x - 0.2 * s, y - 0.5 * s, x - 0.15 * s, y + 0.5 * s), fill=dark)  # back leg and post
        draw.rectangle((x - 0.2 * s, y - 0.5 * s, x + 0.2 * s, y - 0.1 * s), fill=colour)
        draw.rectangle((x - 0.22 * s, y, x + 0.22 * s, y + 0.06 * s), fill=colour)
        for lx in (-0.2, 0.15):
            draw.rectangle((x + lx * s, y, x + (lx + 0.04) * s, y + 0.5 * s), fill=dark)
    elif kind == "table":
        draw.rectangle((x - 0.5 * s, y - 0.2 * s, x + 0.5 * s, y - 0.14 * s), fill=colour)
        for lx in (-0.46, 0.42):
            draw.rectangle((x + lx * s, y - 0.14 * s, x + (lx + 0.04) * s, y + 0.3 * s), fill=dark)
    elif kind == "sofa":
        draw.rounded_rectangle((x - 0.5 * s, y - 0.25 * s, x + 0.5 * s, y + 0.05 * s), radius=0.06 * s, fill=dark)
        draw.rounded_rectangle((x - 0.5 * s, y, x + 0.5 * s, y + 0.22 * s), radius=0.05 * s, fill=colour)
        for side in (-1, 1):
            draw.rounded_rectangle((x + side * 0.5 * s - 0.08 * s, y - 0.1 * s, x + side * 0.5 * s + 0.08 * s,
                                    y + 0.25 * s), radius=0.04 * s, fill=colour)
    elif kind == "shelf":
        draw.rectangle((x - 0.3 * s, y - 0.5 * s, x + 0.3 * s, y + 0.5 * s), outline=dark,
                       width=max(1, round(0.03 * s)))
        for k in range(1, 4):
            yy = y - 0.5 * s + k * 0.25 * s
            draw.line([(x - 0.3 * s, yy), (x + 0.3 * s, yy)], fill=dark, width=max(1, round(0.03 * s)))
            bx = x - 0.27 * s
            while bx < x + 0.22 * s:  # books
                bw = rnd.uniform(0.02, 0.06) * s
                draw.rectangle((bx, yy - rnd.uniform(0.12, 0.22) * s, bx + bw, yy), fill=_any_colour(rnd))
                bx += bw + 0.005 * s
    else:
        draw.line([(x, y - 0.2 * s), (x, y + 0.45 * s)], fill=dark, width=max(1, round(0.03 * s)))
        draw.ellipse((x - 0.15 * s, y + 0.42 * s, x + 0.15 * s, y + 0.5 * s), fill=dark)
        draw.polygon([(x - 0.1 * s, y - 0.45 * s), (x + 0.1 * s, y - 0.45 * s), (x + 0.2 * s, y - 0.2 * s),
                      (x - 0.2 * s, y - 0.2 * s)], fill=_any_colour(rnd))


def _paint_object(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    draw = ImageDraw.Draw(image)
    colour = _any_colour(rnd)
    dark, light = scaled(colour, 0.7), scaled(colour, 1.25)
    x, y, s = centre[0], centre[1], size * 0.6
    kind = rnd.choice(("cup", "bottle", "plate", "books", "vase", "laptop", "phone", "ball"))
    if kind == "cup":
        draw.arc((x + 0.1 * s, y - 0.15 * s, x + 0.4 * s, y + 0.2 * s), 270, 90, fill=dark,
                 width=max(1, round(0.05 * s)))
        draw.rectangle((x - 0.25 * s, y - 0.3 * s, x + 0.25 * s, y + 0.3 * s), fill=colour)
        draw.ellipse((x - 0.25 * s, y - 0.36 * s, x + 0.25 * s, y - 0.24 * s), fill=light)
        draw.ellipse((x - 0.2 * s, y - 0.34 * s, x + 0.2 * s, y - 0.26 * s), fill=(70, 40, 20))
        draw.ellipse((x - 0.25 * s, y + 0.24 * s, x + 0.25 * s, y + 0.36 * s), fill=colour)
    elif kind == "bottle":
        draw.rounded_rectangle((x - 0.15 * s, y - 0.2 * s, x + 0.15 * s, y + 0.5 * s), radius=0.05 * s, fill=colour)
        draw.rectangle((x - 0.05 * s, y - 0.5 * s, x + 0.05 * s, y - 0.18 * s), fill=colour)
        draw.rectangle((x - 0.15 * s, y + 0.05 * s, x + 0.15 * s, y + 0.25 * s), fill=_any_colour(rnd))
    elif kind == "plate":
        draw.ellipse((x - 0.5 * s, y - 0.2 * s, x + 0.5 * s, y + 0.2 * s), fill=light, outline=dark)
        draw.ellipse((x - 0.35 * s, y - 0.13 * s, x + 0.35 * s, y + 0.13 * s), fill=colour)
    elif kind == "books":
        yy = y + 0.4 * s
        for _ in range(rnd.randint(2, 6)):
            h = rnd.uniform(0.06, 0.15) * s
            off = rnd.uniform(-0.05, 0.05) * s
            draw.rectangle((x - 0.4 * s + off, yy - h, x + 0.4 * s + off, yy), fill=_any_colour(rnd),
                           outline=(240, 238, 230))
            yy -= h
    elif kind == "vase":
        draw.ellipse((x - 0.25 * s, y - 0.1 * s, x + 0.25 * s, y + 0.45 * s), fill=colour)
        draw.rectangle((x - 0.08 * s, y - 0.35 * s, x + 0.08 * s, y), fill=colour)
        for _ in range(rnd.randint(0, 5)):  # stems and flowers
            tx, ty = x + rnd.uniform(-0.3, 0.3) * s, y - rnd.uniform(0.5, 0.8) * s
            draw.line([(x, y - 0.3 * s), (tx, ty)], fill=(60, 120, 50), width=max(1, round(0.02 * s)))
            r = 0.06 * s
            draw.ellipse((tx - r, ty - r, tx + r, ty + r), fill=_any_colour(rnd))
    elif kind == "laptop":
        draw.rectangle((x - 0.45 * s, y - 0.35 * s, x + 0.45 * s, y + 0.2 * s), fill=(40, 40, 45))
        draw.rectangle((x - 0.4 * s, y - 0.3 * s, x + 0.4 * s, y + 0.15 * s), fill=_any_colour(rnd))
        draw.polygon([(x - 0.45 * s, y + 0.2 * s), (x + 0.45 * s, y + 0.2 * s), (x + 0.55 * s, y + 0.3 * s),
                      (x - 0.55 * s, y + 0.3 * s)], fill=(170, 170, 175))
    elif kind == "phone":
        draw.rounded_rectangle((x - 0.15 * s, y - 0.3 * s, x + 0.15 * s, y + 0.3 * s), radius=0.04 * s,
                               fill=(25, 25, 30))
        draw.rectangle((x - 0.12 * s, y - 0.25 * s, x + 0.12 * s, y + 0.25 * s), fill=_any_colour(rnd))
    else:
        draw.ellipse((x - 0.3 * s, y - 0.3 * s, x + 0.3 * s, y + 0.3 * s), fill=colour)
        draw.arc((x - 0.3 * s, y - 0.1 * s, x + 0.3 * s, y + 0.1 * s), 0, 180, fill=dark, width=max(1, round(0.02 * s)))


def _paint_animal(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    """A four-legged, furry shape: body, head, ears, legs and tail, with a fur texture."""
    fur = scaled(rnd.choice(((120, 90, 60), (200, 160, 110), (60, 55, 50), (230, 225, 215), (150, 150, 150),
                             (190, 110, 50))), rnd.uniform(0.8, 1.15))
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    x, y, s = centre[0], centre[1], size
    facing = rnd.choice((-1, 1))
    body_h = rnd.uniform(0.15, 0.25)
    draw.ellipse((x - 0.35 * s, y - body_h * s, x + 0.3 * s, y + body_h * s), fill=255)
    hx, hy = x + facing * 0.38 * s, y - (body_h + 0.05) * s
    draw.ellipse((hx - 0.14 * s, hy - 0.12 * s, hx + 0.14 * s, hy + 0.12 * s), fill=255)
    for side in (-1, 1):
        ex = hx + side * 0.08 * s
        draw.polygon([(ex - 0.05 * s, hy - 0.06 * s), (ex + 0.05 * s, hy - 0.06 * s), (ex, hy - 0.22 * s)], fill=255)
    for lx in (-0.25, -0.12, 0.1, 0.22):
        _limb(draw, (x + lx * s, y), (x + lx * s + rnd.uniform(-0.04, 0.04) * s, y + (body_h + 0.22) * s),
              0.06 * s, 255)
    _limb(draw, (x - facing * 0.3 * s, y - 0.05 * s),
          (x - facing * 0.55 * s, y - rnd.uniform(-0.1, 0.3) * s), 0.04 * s, 255)
    patch = _fur(image.size, rnd, fur)
    image.paste(patch, (0, 0), mask)
    eye = ImageDraw.Draw(image)
    r = max(1.0, 0.02 * s)
    for side in (-1, 1):
        ex, ey = hx + side * 0.05 * s, hy - 0.02 * s
        eye.ellipse((ex - r, ey - r, ex + r, ey + r), fill=(20, 20, 15))


def _fur(size: tuple[int, int], rnd: random.Random, colour: RGB) -> Image.Image:
    width, height = size
    noise = np.random.default_rng(rnd.getrandbits(32)).normal(0, 1, (height // 3 + 1, width // 3 + 1))
    small = Image.fromarray(np.clip(128 + noise * rnd.uniform(10, 30), 0, 255).astype(np.uint8), "L")
    texture = np.asarray(small.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)[..., None] / 128.0
    rgb = np.clip(texture * np.array(colour, np.float32), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


_WORDS = ("SALE", "OPEN", "coffee", "Menu", "EXIT", "hello", "Welcome", "News", "2026", "Street", "Cafe",
          "Books", "Garden", "PARKING", "Daily", "fresh", "Station", "Market")


def _paint_text(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    """A sign or a page: words in the default TrueType font, sometimes on a panel."""
    draw = ImageDraw.Draw(image)
    px = max(6, round(size * rnd.uniform(0.06, 0.2)))
    font = ImageFont.load_default(size=px)
    lines = []
    for _ in range(rnd.randint(1, 4)):
        words = [rnd.choice(_WORDS) if rnd.random() < 0.6 else
                 "".join(rnd.choice(string.ascii_letters) for _ in range(rnd.randint(2, 9)))
                 for _ in range(rnd.randint(1, 4))]
        lines.append(" ".join(words))
    text = "\n".join(lines)
    box = draw.multiline_textbbox(centre, text, font=font)
    ink = _any_colour(rnd)
    if rnd.random() < 0.6:
        pad = px * 0.4
        draw.rectangle((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad), fill=_any_colour(rnd))
        ink = (20, 20, 20) if rnd.random() < 0.5 else (245, 245, 245)
    draw.multiline_text(centre, text, fill=ink, font=font)


def _paint_texture(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    """A rectangle or blob of wood grain, foliage or fabric-like noise (a rug, a curtain, a wall)."""
    w = max(4, round(size * rnd.uniform(0.5, 1.2)))
    h = max(4, round(size * rnd.uniform(0.5, 1.2)))
    kind = rnd.choice(("wood", "foliage", "noise", "tiles", "stripes"))
    gen = np.random.default_rng(rnd.getrandbits(32))
    if kind == "wood":
        base = np.array(_wood_colour(rnd), np.float32)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        warp = np.cumsum(gen.normal(0, 0.3, h))[:, None]
        grain = np.sin((xs + warp * 3 + 5 * np.sin(ys / max(h, 1) * 3)) / rnd.uniform(2, 8))
        rgb = base * (0.85 + 0.15 * grain[..., None])
    elif kind == "foliage":
        rgb = np.zeros((h, w, 3), np.float32) + np.array((40, 70, 35), np.float32)
        patch = Image.fromarray(rgb.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(patch)
        for _ in range(min(400, max(20, w * h // 400))):
            lx, ly = rnd.uniform(0, w), rnd.uniform(0, h)
            r = rnd.uniform(0.01, 0.05) * size
            green = (rnd.randint(30, 110), rnd.randint(80, 190), rnd.randint(20, 90))
            draw.ellipse((lx - r, ly - r * 0.5, lx + r, ly + r * 0.5), fill=green)
        rgb = np.asarray(patch, np.float32)
    elif kind == "noise":
        small = gen.normal(0, 1, (h // 4 + 1, w // 4 + 1, 3)) * rnd.uniform(10, 40)
        base = np.array(_any_colour(rnd), np.float32)
        layer = Image.fromarray(np.clip(128 + small, 0, 255).astype(np.uint8), "RGB").resize((w, h))
        rgb = base + np.asarray(layer, np.float32) - 128
    elif kind == "tiles":
        ys, xs = np.mgrid[0:h, 0:w]
        step = max(3, round(size * rnd.uniform(0.05, 0.2)))
        lines = ((xs % step) < max(1, step // 12)) | ((ys % step) < max(1, step // 12))
        rgb = np.where(lines[..., None], np.array(_any_colour(rnd), np.float32),
                       np.array(_any_colour(rnd), np.float32))
    else:
        xs = np.arange(w)[None, :].repeat(h, 0)
        step = max(2, round(size * rnd.uniform(0.02, 0.1)))
        band = (xs // step) % 2 == 0
        rgb = np.where(band[..., None], np.array(_any_colour(rnd), np.float32),
                       np.array(_any_colour(rnd), np.float32))
        rgb = rgb * (0.9 + 0.1 * gen.random((h, w, 1)))
    patch = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    if rnd.random() < 0.6:
        mdraw.rectangle((0, 0, w, h), fill=255)
    else:
        mdraw.ellipse((0, 0, w - 1, h - 1), fill=255)
    image.paste(patch, (round(centre[0] - w / 2), round(centre[1] - h / 2)), mask)


def _paint_clutter(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    """Many small shapes: a desk, a shelf, a street: circles, boxes, lines of any colour."""
    draw = ImageDraw.Draw(image)
    for _ in range(rnd.randint(5, 30)):
        x = centre[0] + rnd.uniform(-0.5, 0.5) * size
        y = centre[1] + rnd.uniform(-0.5, 0.5) * size
        r = rnd.uniform(0.01, 0.08) * size
        colour = _any_colour(rnd)
        shape = rnd.random()
        if shape < 0.35:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif shape < 0.7:
            draw.rectangle((x - r, y - r * rnd.uniform(0.3, 2), x + r, y + r), fill=colour)
        else:
            angle = rnd.uniform(0, math.pi)
            draw.line([(x, y), (x + 4 * r * math.cos(angle), y + 4 * r * math.sin(angle))], fill=colour,
                      width=max(1, round(r * 0.3)))


def _paint_shapes(image: Image.Image, rnd: random.Random, centre: Point, size: float) -> None:
    """A dead-leaves collage: overlapping ellipses, rounded boxes, rings and irregular blobs of every
    size, flat, shaded or filled with the garments' own textile patterns (stripes, dots, checks,
    florals), sometimes outlined as garments are. A patterned oval is not a hat and a dark ellipse
    is not a shoe: what makes a garment is its shape in context, not its fabric or its outline."""
    few = rnd.random() < 0.35  # one to three large shapes, or a heap of many
    count = rnd.randint(1, 3) if few else rnd.randint(4, 24)
    for _ in range(count):
        # A heap's radii follow a power law (many small, few large), as the leaves of natural images do.
        r = size * (rnd.uniform(0.15, 0.5) if few else min(0.5, 0.07 * rnd.random() ** -0.5))
        x = centre[0] + rnd.uniform(-0.5, 0.5) * size
        y = centre[1] + rnd.uniform(-0.5, 0.5) * size
        aspect, angle = rnd.uniform(0.25, 1.0), rnd.uniform(0, math.pi)
        outline = _shape_outline(rnd, (x, y), r, aspect, angle)
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
        x1, y1 = min(image.width, math.ceil(max(xs)) + 1), min(image.height, math.ceil(max(ys)) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        local = [(px - x0, py - y0) for px, py in outline]
        ImageDraw.Draw(mask).polygon(local, fill=255)
        if rnd.random() < 0.15:  # a ring: a plate's rim, a tyre, a bracelet
            inner = [(x + (px - x) * 0.6 - x0, y + (py - y) * 0.6 - y0) for px, py in outline]
            ImageDraw.Draw(mask).polygon(inner, fill=0)
        patch = Image.fromarray(_shape_fill(rnd, (x0, y0, x1, y1), (x, y), r, angle), "RGB")
        if rnd.random() < 0.3:
            ImageDraw.Draw(patch).polygon(local, outline=scaled(_any_colour(rnd), 0.4),
                                          width=max(1, round(r * rnd.uniform(0.02, 0.06))))
        image.paste(patch, (x0, y0), mask)


def _shape_outline(rnd: random.Random, centre: Point, r: float, aspect: float, angle: float) -> list[Point]:
    """An ellipse, a rounded box or a wobbly blob of radius ``r``, squashed by ``aspect``, turned by ``angle``."""
    form = rnd.choice(("ellipse", "ellipse", "box", "blob"))
    steps = 48
    if form == "blob":
        harmonics = [(k, rnd.uniform(0, 0.25) / k, rnd.uniform(0, 2 * math.pi)) for k in range(2, 6)]
    points = []
    for i in range(steps):
        t = 2 * math.pi * i / steps
        if form == "box":  # a superellipse: a box with rounded corners
            u = math.copysign(abs(math.cos(t)) ** 0.25, math.cos(t))
            v = math.copysign(abs(math.sin(t)) ** 0.25, math.sin(t))
        elif form == "blob":
            rho = 1 + sum(a * math.sin(k * t + p) for k, a, p in harmonics)
            u, v = rho * math.cos(t), rho * math.sin(t)
        else:
            u, v = math.cos(t), math.sin(t)
        u, v = u * r, v * r * aspect
        points.append((centre[0] + u * math.cos(angle) - v * math.sin(angle),
                       centre[1] + u * math.sin(angle) + v * math.cos(angle)))
    return points


def _shape_fill(rnd: random.Random, rect: tuple[int, int, int, int], centre: Point, r: float,
                angle: float) -> NDArray[np.uint8]:
    """The pixels of ``rect``: a flat colour, a linear shade, or a textile pattern scaled to the shape."""
    x0, y0, x1, y1 = rect
    ground = _any_colour(rnd)
    style = rnd.random()
    if style < 0.45:  # the same fills garments wear, at a garment's scale (units ~ the shape's width)
        kind = rnd.choice((PatternKind.STRIPE, PatternKind.DOT, PatternKind.CHECK, PatternKind.FLORAL,
                           PatternKind.PLAIN))
        to_units = Affine.place(centre, max(2.0, 2 * r * rnd.uniform(0.5, 1.5)), angle).inverse()
        fill: NDArray[np.uint8] = sample_pattern(kind, rnd, ground).fill(to_units, rect)
        return fill
    base = np.empty((y1 - y0, x1 - x0, 3), np.float32)
    base[:] = np.array(ground, np.float32)
    if style < 0.75:  # lit from one side
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        light = rnd.uniform(0, 2 * math.pi)
        t = ((xs - centre[0]) * math.cos(light) + (ys - centre[1]) * math.sin(light)) / max(r, 1.0)
        base *= (1 + rnd.uniform(0.1, 0.4) * np.clip(t, -1, 1))[..., None]
    return np.clip(base, 0, 255).astype(np.uint8)


_PAINTERS: dict[str, Painter] = {
    "person": _paint_person, "hand": _paint_hand, "face": _paint_face, "furniture": _paint_furniture,
    "object": _paint_object, "animal": _paint_animal, "text": _paint_text, "texture": _paint_texture,
    "clutter": _paint_clutter, "shapes": _paint_shapes,
}


def _grain(image: Image.Image, rnd: random.Random, sigma: float) -> Image.Image:
    width, height = image.size
    noise = np.random.default_rng(rnd.getrandbits(32)).normal(0, sigma, (height, width, 1))
    out = np.asarray(image, np.float32) + noise
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")
