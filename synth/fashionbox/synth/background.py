"""Backgrounds: studio sweeps, walls with floors, wooden boards, textured and blurred surfaces.

Smooth content is computed on a small grid (its size fixed relative to the image) and resized,
and sharp content (board seams, the wall/floor edge) is drawn with relative coordinates, so a
background looks the same at any resolution and costs little. Each background also reports its
main colours, which garments must stand out from.

Usage::

    background = render_background((640, 480), rnd)
    background.image, background.colours
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

from .colours import RGB, mix, scaled

__all__ = ["Background", "render_background"]

_GRID = 48
"""Long side of the grid smooth backgrounds are computed on."""


@dataclass(frozen=True)
class Background:
    image: Image.Image
    colours: tuple[RGB, ...]
    """Dominant colours, for the contrast check of garments placed on it."""


def render_background(size: tuple[int, int], rnd: random.Random) -> Background:
    """A random background of ``size`` (width, height)."""
    kind = rnd.choice(_KINDS)
    return kind(size, rnd)


def _surface_colour(rnd: random.Random) -> RGB:
    """Walls, floors and tables: mostly muted, sometimes saturated."""
    if rnd.random() < 0.7:
        grey = rnd.uniform(60, 235)
        tint = [rnd.uniform(-18, 18) for _ in range(3)]
        return (_byte(grey + tint[0]), _byte(grey + tint[1]), _byte(grey + tint[2]))
    return (rnd.randint(30, 230), rnd.randint(30, 230), rnd.randint(30, 230))


def _byte(value: float) -> int:
    return max(0, min(255, round(value)))


def _grid_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    if width >= height:
        return _GRID, max(2, round(_GRID * height / width))
    return max(2, round(_GRID * width / height)), _GRID


def _noise_grid(rnd: random.Random, shape: tuple[int, int], amplitude: float) -> NDArray[np.float32]:
    """Smooth random field: coarse random values upsampled; drawn with ``rnd`` so it is size-independent."""
    coarse_h, coarse_w = max(2, shape[0] // 6), max(2, shape[1] // 6)
    values = np.array([rnd.uniform(-amplitude, amplitude) for _ in range(coarse_h * coarse_w)], dtype=np.float32)
    field = Image.fromarray(values.reshape(coarse_h, coarse_w), "F").resize((shape[1], shape[0]),
                                                                            Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32)


def _from_grid(grid: NDArray[np.float32], size: tuple[int, int]) -> Image.Image:
    small = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB")
    return small.resize(size, Image.Resampling.BILINEAR)


def _two_tone(colour_a: RGB, colour_b: RGB, t: NDArray[np.float32]) -> NDArray[np.float32]:
    a = np.asarray(colour_a, dtype=np.float32)
    b = np.asarray(colour_b, dtype=np.float32)
    result: NDArray[np.float32] = a + (b - a) * t[..., None]
    return result


def _gradient(size: tuple[int, int], rnd: random.Random) -> Background:
    grid_w, grid_h = _grid_size(size)
    first, second = _surface_colour(rnd), _surface_colour(rnd)
    angle = rnd.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:grid_h, 0:grid_w].astype(np.float32)
    t = (xs / grid_w - 0.5) * math.cos(angle) + (ys / grid_h - 0.5) * math.sin(angle) + 0.5
    t = np.clip(t + _noise_grid(rnd, (grid_h, grid_w), 0.12), 0, 1)
    return Background(_from_grid(_two_tone(first, second, t), size), (first, second, mix(first, second, 0.5)))


def _studio(size: tuple[int, int], rnd: random.Random) -> Background:
    grid_w, grid_h = _grid_size(size)
    colour = _surface_colour(rnd)
    edge = scaled(colour, rnd.uniform(0.55, 0.85))
    cx, cy = rnd.uniform(0.35, 0.65), rnd.uniform(0.3, 0.6)
    ys, xs = np.mgrid[0:grid_h, 0:grid_w].astype(np.float32)
    r = np.sqrt((xs / grid_w - cx) ** 2 + (ys / grid_h - cy) ** 2)
    t = np.clip(r / 0.8, 0, 1) ** 1.5
    return Background(_from_grid(_two_tone(colour, edge, t), size), (colour, edge))


def _plaster(size: tuple[int, int], rnd: random.Random) -> Background:
    grid_w, grid_h = _grid_size(size)
    colour = _surface_colour(rnd)
    other = scaled(colour, rnd.uniform(0.75, 1.2))
    t = np.clip(0.5 + _noise_grid(rnd, (grid_h * 2, grid_w * 2), 0.6), 0, 1)
    image = _from_grid(_two_tone(colour, other, t), size)
    return Background(image, (colour, other))


def _wall_floor(size: tuple[int, int], rnd: random.Random) -> Background:
    width, height = size
    wall, floor = _surface_colour(rnd), _surface_colour(rnd)
    skirting = scaled(wall, rnd.uniform(0.6, 1.25))
    horizon = rnd.uniform(0.55, 0.82)
    tilt = rnd.uniform(-0.03, 0.03)
    grid_w, grid_h = _grid_size(size)
    ys = (np.arange(grid_h, dtype=np.float32) + 0.5)[:, None] / grid_h
    wall_t = np.broadcast_to(ys * 0.3, (grid_h, grid_w))
    image = _from_grid(_two_tone(wall, scaled(wall, 0.75), wall_t), size)
    draw = ImageDraw.Draw(image)
    left, right = (horizon - tilt) * height, (horizon + tilt) * height
    draw.polygon([(0, left), (width, right), (width, height), (0, height)], fill=floor)
    band = 0.018 * height
    draw.polygon([(0, left - band), (width, right - band), (width, right), (0, left)], fill=skirting)
    lines = rnd.randint(0, 6)
    vanish = rnd.uniform(0.2, 0.8) * width
    line_colour = scaled(floor, 0.85)
    for k in range(lines):
        x = (k + 0.5) / lines * width * 2 - width / 2
        draw.line([(vanish + (x - vanish) * 0.3, (left + right) / 2), (x, height)], fill=line_colour,
                  width=max(1, round(0.003 * max(size))))
    return Background(image, (wall, floor))


def _wood(size: tuple[int, int], rnd: random.Random) -> Background:
    width, height = size
    base = rnd.choice(((150, 105, 65), (190, 150, 105), (110, 75, 50), (215, 190, 150), (90, 60, 40)))
    base = scaled(base, rnd.uniform(0.85, 1.15))
    vertical = rnd.random() < 0.5
    along, across = (height, width) if vertical else (width, height)
    plank = rnd.uniform(0.08, 0.18)
    fine = 160
    coarse = 24
    # Grain varies fast across the boards and slowly along them.
    rows = np.arange(fine, dtype=np.float32)[:, None] / fine
    cols = np.arange(coarse, dtype=np.float32)[None, :] / coarse
    phase = _noise_grid(rnd, (fine, coarse), 3.0)
    freq = rnd.uniform(40, 80)
    grain = 0.5 + 0.5 * np.sin(rows * freq + phase + cols * rnd.uniform(-2, 2))
    board = np.floor(rows * (across / max(size)) / plank)
    tone = np.array([rnd.uniform(0.85, 1.12) for _ in range(64)], dtype=np.float32)[board.astype(np.int32) % 64]
    shade = (0.82 + 0.18 * grain) * tone
    grid = np.asarray(base, dtype=np.float32)[None, None, :] * shade[..., None]
    if vertical:
        grid = grid.transpose(1, 0, 2)
    small = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB")
    image = small.resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    seam = scaled(base, 0.45)
    seam_px = max(1, round(0.002 * max(size)))
    step = plank * max(size)
    k = 1
    while k * step < across:
        pos = k * step
        draw.line([(pos, 0), (pos, along)] if vertical else [(0, pos), (along, pos)], fill=seam, width=seam_px)
        joint = rnd.uniform(0.1, 0.9) * along
        start, end = pos - step, pos
        draw.line([(start, joint), (end, joint)] if vertical else [(joint, start), (joint, end)], fill=seam,
                  width=seam_px)
        k += 1
    return Background(image, (base, scaled(base, 0.85)))


def _bokeh(size: tuple[int, int], rnd: random.Random) -> Background:
    grid_w, grid_h = _grid_size(size)
    base = _surface_colour(rnd)
    small = Image.new("RGB", (grid_w, grid_h), base)
    draw = ImageDraw.Draw(small)
    colours = [base]
    for _ in range(rnd.randint(4, 12)):
        colour = scaled(_surface_colour(rnd), rnd.uniform(0.8, 1.2))
        colours.append(colour)
        cx, cy = rnd.uniform(0, grid_w), rnd.uniform(0, grid_h)
        r = rnd.uniform(0.05, 0.25) * grid_w
        if rnd.random() < 0.5:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.rectangle((cx - r, cy - r * 0.6, cx + r, cy + r * 0.6), fill=colour)
    small = small.filter(ImageFilter.GaussianBlur(grid_w / 30))
    return Background(small.resize(size, Image.Resampling.BILINEAR), tuple(colours[:4]))


_KINDS: Sequence[Callable[[tuple[int, int], random.Random], Background]] = (
    _gradient, _studio, _plaster, _wall_floor, _wood, _bokeh,
)
