"""Photo finish: uneven light, colour cast, exposure, lens blur and sensor noise.

Applied to the whole composited scene so garments and background share the same light, as in a
photograph. Every step is a Pillow C operation (lookup tables, multiply, add, blur) over the
image: no per-pixel Python and little numpy.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from .config import SceneConfig

__all__ = ["finish_photo"]

_LIGHT_GRID = 16


def finish_photo(image: Image.Image, rnd: random.Random, noise: np.random.Generator, config: SceneConfig,
                 ) -> Image.Image:
    """The scene as a camera would have taken it; ``noise`` is only used for per-pixel sensor noise."""
    image = ImageChops.multiply(image, _light_map(image.size, rnd))
    image = image.point(_tone_curve(rnd))
    blur = rnd.random() < config.blur_probability
    radius = rnd.uniform(0.25, 1.0) * config.max_blur_fraction * max(image.size)
    if blur and radius >= 0.3:
        # One box pass: a third of the cost of Pillow's Gaussian, indistinguishable at a pixel or two.
        image = image.filter(ImageFilter.BoxBlur(radius))
    level = rnd.randint(0, config.max_noise_level)
    if level > 0:
        image = _add_noise(image, noise, level)
    return image


def _light_map(size: tuple[int, int], rnd: random.Random) -> Image.Image:
    """Directional light falloff and vignetting, as a multiply layer (255 = unchanged)."""
    width, height = size
    grid_w = _LIGHT_GRID if width >= height else max(2, round(_LIGHT_GRID * width / height))
    grid_h = _LIGHT_GRID if height >= width else max(2, round(_LIGHT_GRID * height / width))
    ys, xs = np.mgrid[0:grid_h, 0:grid_w].astype(np.float32)
    u, v = xs / max(grid_w - 1, 1) - 0.5, ys / max(grid_h - 1, 1) - 0.5
    angle = rnd.uniform(0, 2 * math.pi)
    strength = rnd.uniform(0.0, 0.25)
    vignette = rnd.uniform(0.0, 0.35)
    light = 1.0 - strength * (0.5 + u * math.cos(angle) + v * math.sin(angle)) - vignette * (u * u + v * v)
    grid = np.clip(light * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(grid, "L").resize(size, Image.Resampling.BILINEAR).convert("RGB")


def _tone_curve(rnd: random.Random) -> list[int]:
    """Per-channel lookup table: exposure, contrast, gamma and a white-balance cast."""
    exposure = rnd.uniform(0.9, 1.25)
    contrast = rnd.uniform(0.85, 1.15)
    gamma = rnd.uniform(0.85, 1.15)
    cast = np.array([rnd.uniform(0.93, 1.07) for _ in range(3)])[:, None]
    x = (np.arange(256) / 255.0)[None, :] ** gamma * exposure * cast
    x = (x - 0.5) * contrast + 0.5
    table: list[int] = np.clip(np.rint(x * 255), 0, 255).astype(int).ravel().tolist()
    return table


def _add_noise(image: Image.Image, noise: np.random.Generator, level: int) -> Image.Image:
    """Uniform luminance noise of +-``level`` 8-bit steps."""
    width, height = image.size
    values = noise.integers(0, 2 * level + 1, size=(height, width), dtype=np.uint8)
    layer = Image.fromarray(values, "L")
    return ImageChops.add(image, Image.merge("RGB", (layer, layer, layer)), scale=1.0, offset=-level)
