"""Colour sampling with contrast guarantees.

Labels must stay visibly true, so colours are not fully random: a garment differs from the
skin of the arm its sleeve covers (else sleeve length is invisible), from the background
behind it, and the colours of a pattern differ from each other.
"""

from __future__ import annotations

import colorsys
import random
from collections.abc import Sequence

__all__ = [
    "RGB",
    "distance",
    "garment_colour",
    "hair_colour",
    "mix",
    "pick_distinct",
    "scaled",
    "skin_tone",
]

RGB = tuple[int, int, int]

_SKIN_TONES: tuple[RGB, ...] = (
    (255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 99),
    (161, 102, 70), (124, 78, 52), (92, 57, 38), (234, 189, 157),
)
_HAIR: tuple[RGB, ...] = ((30, 24, 20), (70, 45, 30), (120, 80, 45), (200, 160, 90), (150, 60, 30), (90, 90, 90))
_NEUTRALS: tuple[RGB, ...] = (
    (20, 20, 24), (245, 245, 240), (128, 128, 130), (30, 40, 80), (200, 185, 160), (90, 60, 40),
    (60, 70, 50), (180, 30, 40),
)


def distance(a: RGB, b: RGB) -> float:
    """Perceptually weighted RGB distance ("redmean"), 0..~765."""
    rm = (a[0] + b[0]) / 2.0
    dr, dg, db = a[0] - b[0], a[1] - b[1], a[2] - b[2]
    return float(((2 + rm / 256) * dr * dr + 4 * dg * dg + (2 + (255 - rm) / 256) * db * db) ** 0.5)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def scaled(colour: RGB, factor: float) -> RGB:
    """Darker (factor < 1) or lighter (> 1) version of a colour, clipped to 8 bits."""
    return (min(255, round(colour[0] * factor)), min(255, round(colour[1] * factor)),
            min(255, round(colour[2] * factor)))


def skin_tone(rnd: random.Random) -> RGB:
    base = rnd.choice(_SKIN_TONES)
    return scaled(base, rnd.uniform(0.93, 1.05))


def hair_colour(rnd: random.Random) -> RGB:
    return rnd.choice(_HAIR)


def garment_colour(rnd: random.Random) -> RGB:
    """A fabric colour: a third neutrals, the rest any hue with moderate saturation."""
    if rnd.random() < 0.3:
        return scaled(rnd.choice(_NEUTRALS), rnd.uniform(0.9, 1.08))
    hue = rnd.random()
    saturation = rnd.uniform(0.25, 0.9)
    value = rnd.uniform(0.3, 0.95)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


def pick_distinct(rnd: random.Random, avoid: Sequence[RGB], min_distance: float, *, tries: int = 24) -> RGB:
    """A garment colour at least ``min_distance`` from every colour in ``avoid``.

    Falls back to the best of the tries, so it always returns a colour.
    """
    best: RGB = (0, 0, 0)
    best_score = -1.0
    for _ in range(tries):
        candidate = garment_colour(rnd)
        score = min((distance(candidate, c) for c in avoid), default=float("inf"))
        if score >= min_distance:
            return candidate
        if score > best_score:
            best, best_score = candidate, score
    return best
