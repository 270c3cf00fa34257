"""Textile patterns as vectorised numpy fills in garment units.

Each pattern is a function of the garment-unit coordinates of a pixel, so it scales and rotates
with the garment and looks the same at any resolution; periods are fractions of the shoulder
width, large enough that a garment 60 px wide in a 320 px image still shows several repeats.
The fill first computes a small integer *colour index* per pixel, then looks up a table that
holds every colour at several shading levels: one gather instead of per-channel float maths.

Usage::

    spec = sample_pattern(PatternKind.DOT, rnd, ground=(30, 40, 80), avoid=[skin])
    pixels = spec.fill(pixel_to_units, (x0, y0, x1, y1))      # uint8 [h, w, 3]
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.typing import NDArray

from .canvas import Affine, Rect
from .colours import RGB, distance, mix, pick_distinct, scaled

__all__ = ["PATTERN_GROUP", "PATTERN_LABELS", "PatternKind", "PatternSpec", "sample_pattern"]

PATTERN_GROUP = "textile pattern"
"""Label-map group whose labels select the fill."""


class PatternKind(Enum):
    PLAIN = "plain"
    STRIPE = "stripe"
    DOT = "dot"
    CHECK = "check"
    FLORAL = "floral"


PATTERN_LABELS: Mapping[str, PatternKind] = {
    "plain (pattern)": PatternKind.PLAIN,
    "stripe": PatternKind.STRIPE,
    "dot": PatternKind.DOT,
    "check": PatternKind.CHECK,
    "floral": PatternKind.FLORAL,
}
"""Drawing table: which fill draws each label of :data:`PATTERN_GROUP`."""

_SHADE_LEVELS = 24
_SHADE_RANGE = (0.72, 1.12)
_TABLE = 16
"""Size of the per-cell random tables of the floral fill (the layout repeats every 16 cells)."""
_MIN_PATTERN_CONTRAST = 110.0


@dataclass(frozen=True, eq=False)
class PatternSpec:
    kind: PatternKind
    colours: tuple[RGB, ...]
    """Index 0 is the ground colour."""
    period: float
    """Repeat length in garment units."""
    angle: float
    """Orientation relative to the garment, radians."""
    duty: float
    """Stripe: unused; dot: radius / period; check: band fraction; floral: flower radius / period."""
    sequence: tuple[int, ...] = (0,)
    """Stripe: colour index of consecutive bands."""
    tables: NDArray[np.float32] | None = None
    """Floral: per-cell jitter x, jitter y, rotation, presence, petal colour ``[5, 16, 16]``."""
    shade: tuple[float, float] = (0.0, 0.0)
    """Brightness gradient per garment unit along x and y (mild light falloff)."""

    def fill(self, to_units: Affine, rect: Rect) -> NDArray[np.uint8]:
        """The pattern over the pixel rectangle ``rect``; ``to_units`` maps pixels to garment units."""
        xs = np.arange(rect[0], rect[2], dtype=np.float32) + 0.5
        ys = np.arange(rect[1], rect[3], dtype=np.float32) + 0.5
        index = _INDEXERS[self.kind](self, to_units, xs, ys)
        level = _shade_level(self.shade, to_units, xs, ys)
        table = _colour_table(self.colours)
        flat: NDArray[np.int32] = index.astype(np.int32) * _SHADE_LEVELS + level
        result: NDArray[np.uint8] = table[flat]
        return result


def sample_pattern(kind: PatternKind, rnd: random.Random, ground: RGB, avoid: Sequence[RGB] = ()) -> PatternSpec:
    """Random colours, scale and angle for ``kind``, the ground colour given.

    Pattern colours differ clearly from the ground and from ``avoid`` (skin) so the pattern
    stays readable after blur and JPEG.
    """
    shade = (rnd.uniform(-0.12, 0.12), rnd.uniform(-0.1, 0.06))

    def accent() -> RGB:
        return pick_distinct(rnd, [ground, *avoid], _MIN_PATTERN_CONTRAST)

    if kind is PatternKind.PLAIN:
        return PatternSpec(kind, (ground,), 1.0, 0.0, 0.0, shade=shade)
    if kind is PatternKind.STRIPE:
        second = accent()
        colours: tuple[RGB, ...] = (ground, second)
        sequence = rnd.choice([(0, 1), (0, 0, 1), (0, 1, 1), (0, 1, 0, 2)])
        if 2 in sequence:
            colours = (*colours, pick_distinct(rnd, [ground, second], _MIN_PATTERN_CONTRAST))
        angle = rnd.choice([0.0, math.pi / 2, rnd.uniform(-math.pi / 4, math.pi / 4)])
        return PatternSpec(kind, colours, rnd.uniform(0.08, 0.14) * len(sequence), angle, 0.5, sequence,
                           shade=shade)
    if kind is PatternKind.DOT:
        angle = rnd.uniform(-0.3, 0.3)
        return PatternSpec(kind, (ground, accent()), rnd.uniform(0.13, 0.22), angle, rnd.uniform(0.24, 0.34),
                           shade=shade)
    if kind is PatternKind.CHECK:
        band = accent()
        dark = scaled(band, 0.55) if distance(scaled(band, 0.55), band) > 40 else scaled(band, 1.6)
        angle = rnd.choice([0.0, 0.0, math.pi / 4])
        return PatternSpec(kind, (ground, mix(ground, band, 0.6), dark), rnd.uniform(0.14, 0.26), angle,
                           rnd.uniform(0.4, 0.55), shade=shade)
    petal = accent()
    second_petal = pick_distinct(rnd, [ground, petal, *avoid], 60.0)
    centre = pick_distinct(rnd, [ground, petal], _MIN_PATTERN_CONTRAST)
    tables = _floral_tables(rnd)
    return PatternSpec(kind, (ground, petal, second_petal, centre), rnd.uniform(0.2, 0.3), rnd.uniform(-0.5, 0.5),
                       rnd.uniform(0.36, 0.44), tables=tables, shade=shade)


# -- fills ----------------------------------------------------------------------------------


def _plane(to_units: Affine, angle: float, period: float, xs: NDArray[np.float32], ys: NDArray[np.float32],
           ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Pattern coordinates (p along, q across, in periods) of every pixel: two broadcast sums."""
    cos_a, sin_a = math.cos(angle) / period, math.sin(angle) / period
    pa, pb = cos_a * to_units.a + sin_a * to_units.c, cos_a * to_units.b + sin_a * to_units.d
    pc = cos_a * to_units.tx + sin_a * to_units.ty
    qa, qb = -sin_a * to_units.a + cos_a * to_units.c, -sin_a * to_units.b + cos_a * to_units.d
    qc = -sin_a * to_units.tx + cos_a * to_units.ty
    p = (pa * xs + pc)[None, :] + (pb * ys)[:, None]
    q = (qa * xs + qc)[None, :] + (qb * ys)[:, None]
    return p.astype(np.float32, copy=False), q.astype(np.float32, copy=False)


def _plain(spec: PatternSpec, to_units: Affine, xs: NDArray[np.float32], ys: NDArray[np.float32]) -> NDArray[np.uint8]:
    return np.zeros((ys.size, xs.size), dtype=np.uint8)


def _stripe(spec: PatternSpec, to_units: Affine, xs: NDArray[np.float32], ys: NDArray[np.float32]) -> NDArray[np.uint8]:
    # One period holds the whole colour sequence, one band per entry.
    p, _ = _plane(to_units, spec.angle, spec.period / len(spec.sequence), xs, ys)
    band = np.floor(p).astype(np.int32) % len(spec.sequence)
    result: NDArray[np.uint8] = np.asarray(spec.sequence, dtype=np.uint8)[band]
    return result


def _dot(spec: PatternSpec, to_units: Affine, xs: NDArray[np.float32], ys: NDArray[np.float32]) -> NDArray[np.uint8]:
    # Hexagonal lattice: rows sqrt(3)/2 apart, odd rows shifted by half a period.
    p, q = _plane(to_units, spec.angle, spec.period, xs, ys)
    q /= 0.8660254
    row = np.floor(q + 0.5)
    dq = (q - row) * 0.8660254
    p += 0.5 * (row.astype(np.int32) & 1)
    dp = p - np.floor(p + 0.5)
    inside: NDArray[np.bool_] = (dp * dp + dq * dq) < spec.duty * spec.duty
    return inside.view(np.uint8)


def _check(spec: PatternSpec, to_units: Affine, xs: NDArray[np.float32], ys: NDArray[np.float32]) -> NDArray[np.uint8]:
    # Gingham: ground, one band (mid colour), both bands crossing (dark colour).
    p, q = _plane(to_units, spec.angle, spec.period, xs, ys)
    in_p = (p - np.floor(p)) < spec.duty
    in_q = (q - np.floor(q)) < spec.duty
    result: NDArray[np.uint8] = in_p.view(np.uint8) + in_q.view(np.uint8)
    return result


def _floral(spec: PatternSpec, to_units: Affine, xs: NDArray[np.float32], ys: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Five-petal flowers, one per lattice cell, jittered and rotated by per-cell tables."""
    assert spec.tables is not None
    p, q = _plane(to_units, spec.angle, spec.period, xs, ys)
    i = np.floor(p).astype(np.int32)
    j = np.floor(q).astype(np.int32)
    cell = (i & (_TABLE - 1)) * _TABLE + (j & (_TABLE - 1))
    jitter_x, jitter_y, rotation, present, colour = (t.reshape(-1)[cell] for t in spec.tables)
    dx = p - i - 0.5 - jitter_x
    dy = q - j - 0.5 - jitter_y
    r2 = dx * dx + dy * dy
    cos_r, sin_r = np.cos(rotation), np.sin(rotation)
    c = (dx * cos_r + dy * sin_r) / np.sqrt(r2 + 1e-9)
    cos5 = ((16.0 * c * c - 20.0) * c * c + 5.0) * c  # cos(5 theta) from cos(theta)
    petal_r = spec.duty * (0.62 + 0.38 * cos5)
    petal = (r2 < petal_r * petal_r) & (present > 0.5)
    centre = (r2 < (0.28 * spec.duty) ** 2) & (present > 0.5)
    index = np.where(petal, 1 + colour.astype(np.uint8), 0).astype(np.uint8)
    index[centre] = 3
    return index


_Indexer = Callable[[PatternSpec, Affine, NDArray[np.float32], NDArray[np.float32]], NDArray[np.uint8]]

_INDEXERS: Mapping[PatternKind, _Indexer] = {
    PatternKind.PLAIN: _plain,
    PatternKind.STRIPE: _stripe,
    PatternKind.DOT: _dot,
    PatternKind.CHECK: _check,
    PatternKind.FLORAL: _floral,
}


def _floral_tables(rnd: random.Random) -> NDArray[np.float32]:
    n = _TABLE * _TABLE
    jitter_x = [rnd.uniform(-0.12, 0.12) for _ in range(n)]
    jitter_y = [rnd.uniform(-0.12, 0.12) for _ in range(n)]
    rotation = [rnd.uniform(0, 2 * math.pi) for _ in range(n)]
    present = [1.0 if rnd.random() < 0.85 else 0.0 for _ in range(n)]
    colour = [1.0 if rnd.random() < 0.3 else 0.0 for _ in range(n)]
    return np.array([jitter_x, jitter_y, rotation, present, colour], dtype=np.float32).reshape(5, _TABLE, _TABLE)


def _shade_level(shade: tuple[float, float], to_units: Affine, xs: NDArray[np.float32], ys: NDArray[np.float32],
                 ) -> NDArray[np.int32]:
    gx, gy = shade
    low, high = _SHADE_RANGE
    k = (_SHADE_LEVELS - 1) / (high - low)
    # level = (1 + gx*u + gy*v - low) * k, with u, v the garment units of the pixel
    row = (gx * to_units.a + gy * to_units.c) * k * xs + ((1.0 - low) + gx * to_units.tx + gy * to_units.ty) * k
    col = (gx * to_units.b + gy * to_units.d) * k * ys
    level = row[None, :] + col[:, None]
    result: NDArray[np.int32] = np.clip(level, 0, _SHADE_LEVELS - 1).astype(np.int32)
    return result


def _colour_table(colours: Sequence[RGB]) -> NDArray[np.uint8]:
    low, high = _SHADE_RANGE
    factors = np.linspace(low, high, _SHADE_LEVELS, dtype=np.float32)
    base = np.asarray(colours, dtype=np.float32)
    table = np.clip(base[:, None, :] * factors[None, :, None], 0, 255).astype(np.uint8)
    result: NDArray[np.uint8] = table.reshape(-1, 3)
    return result
