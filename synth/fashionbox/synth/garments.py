"""Drawings of every garment category, in garment units, with visibly true attributes.

One unit is the shoulder width of the figure. Upper garments have their origin at the centre of
the neck line (y grows downwards), lower garments at the centre of the waist, hats at the centre
of the head, shoes at the bottom of the heel (toe towards +x), bags at the point a hand holds.

What tells the categories apart is drawn on purpose:

=========================  ============================================================
shirt, blouse              collar points, button placket, curved shirt-tail hem
top, t-shirt, sweatshirt   plain torso, nothing else
sweater                    ribbed hem band, cuffs and neck band (darker), fuller body
jacket                     padded shoulders, open front with lapels, hip length, pockets
coat                       knee length, open front, big lapels, two rows of buttons
dress                      fitted bodice, waist seam, flared skirt
pants / shorts             two legs, long / short, waistband and fly
skirt                      trapezoid with waistband
hat / shoe / bag           crown and brim / sole and upper / body and handle
=========================  ============================================================

Sleeves are drawn over a skin-coloured arm and cover 0, 30, 50, 75 or 100 % of it; necklines
cut the fabric to show the skin underneath (turtle necks instead add a band above the shoulder
line). The tables :data:`SLEEVE_COVER`, :data:`NECKLINES` and :data:`GARMENT_KINDS` are keyed
by label-map names; :func:`garment_catalogue` fails clearly on a name none of them can draw.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from fashionbox.contract.labels import LabelMap

from .canvas import Drawing, Paint, Point, Sketch, ellipse_points
from .errors import UndrawableLabelError
from .patterns import PATTERN_GROUP, PATTERN_LABELS

__all__ = [
    "ARM_LENGTH",
    "ATTRIBUTE_TABLES",
    "GARMENT_KINDS",
    "NECKLINES",
    "NECKLINE_GROUP",
    "SHOE_SCALE",
    "SLEEVE_COVER",
    "SLEEVE_GROUP",
    "GarmentKind",
    "GarmentParams",
    "Neckline",
    "Role",
    "garment_catalogue",
]

SLEEVE_GROUP = "sleeve length"
NECKLINE_GROUP = "neckline type"

SLEEVE_COVER: Mapping[str, float] = {
    "sleeveless": 0.0,
    "short (length)": 0.3,
    "elbow-length": 0.5,
    "three quarter (length)": 0.75,
    "wrist-length": 1.0,
}
"""Drawing table: fraction of the arm (shoulder to wrist) each sleeve-length label covers."""


class Neckline(Enum):
    CREW = "crew"
    V = "v"
    BOAT = "boat"
    SQUARE = "square"
    TURTLE = "turtle"


NECKLINES: Mapping[str, Neckline] = {
    "crew (neck)": Neckline.CREW,
    "v-neck": Neckline.V,
    "boat (neck)": Neckline.BOAT,
    "square (neckline)": Neckline.SQUARE,
    "turtle (neck)": Neckline.TURTLE,
}
"""Drawing table: the cut each neckline-type label draws."""

ATTRIBUTE_TABLES: Mapping[str, Mapping[str, object]] = {
    SLEEVE_GROUP: SLEEVE_COVER,
    NECKLINE_GROUP: NECKLINES,
    PATTERN_GROUP: PATTERN_LABELS,
}
"""The drawing table of every attribute group the generator can draw, keyed by group name."""

# -- the body the garments are drawn on (garment units, neck-line origin) ----------------------

ARM_LENGTH = 1.3
"""Shoulder pivot to wrist."""
_ARM_PIVOT_X, _ARM_PIVOT_Y = 0.5, 0.16
_ARM_HALF_TOP, _ARM_HALF_WRIST = 0.1, 0.065
_NECK_HALF, _NECK_TOP = 0.14, -0.05
"""Garment neck opening: half width and the y of the straight edge across the neck."""
SHOE_SCALE = 1.25
"""Shoes are drawn on a 0.47-unit last and scaled to a real foot, about 15 % of the figure's height."""


@dataclass(frozen=True)
class GarmentParams:
    """What the label says, turned into geometry, plus the figure's pose."""

    sleeve_cover: float = 0.3
    """Fraction of the arm covered by the sleeve (0 = sleeveless)."""
    neckline: Neckline = Neckline.CREW
    arm_angles: tuple[float, float] = (0.2, 0.2)
    """Outward angle of the left and right arm from vertical, radians."""
    leg_spread: float = 0.28
    """Half the distance between the ankles (hem centres of pants), garment units."""


class Role(Enum):
    """Where a category goes on a figure."""

    UPPER = "upper"
    FULL = "full"
    LOWER = "lower"
    HEAD = "head"
    FEET = "feet"
    HAND = "hand"


DrawFn = Callable[[GarmentParams, random.Random], Drawing]


@dataclass(frozen=True)
class GarmentKind:
    draw: DrawFn
    role: Role
    size_range: tuple[float, float]
    """Flat-lay: long side of the garment box as a fraction of the image's long side."""


# -- geometry helpers ---------------------------------------------------------------------------


def _mirror(points: Sequence[Point]) -> list[Point]:
    return [(-x, y) for x, y in points]


def _symmetric(right_half: Sequence[Point]) -> list[Point]:
    """A left-right symmetric polygon from its right half, listed top to bottom."""
    return [*right_half, *reversed(_mirror(right_half))]


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _add(p: Point, q: Point, k: float = 1.0) -> Point:
    return (p[0] + q[0] * k, p[1] + q[1] * k)


def _arm_frame(side: int, angle: float) -> tuple[Point, Point, Point]:
    """Pivot, direction down the arm and outward normal of the arm on ``side`` (-1 left, +1 right)."""
    pivot = (side * _ARM_PIVOT_X, _ARM_PIVOT_Y)
    down = (side * math.sin(angle), math.cos(angle))
    out = (side * math.cos(angle), -math.sin(angle))
    return pivot, down, out


def _rib_strokes(sketch: Sketch, x0: float, x1: float, y0: float, y1: float, spacing: float = 0.035) -> None:
    count = max(2, int((x1 - x0) / spacing))
    for k in range(1, count):
        x = _lerp(x0, x1, k / count)
        sketch.stroke([(x, y0), (x, y1)], 0.008)


# -- the skin underneath -------------------------------------------------------------------------


def _skin_under(sketch: Sketch, params: GarmentParams) -> None:
    """Neck, chest and both arms with hands; the garment covers most of it."""
    sketch.under([(-0.11, -0.3), (0.11, -0.3), (0.11, -0.055), (0.48, 0.05), (0.42, 0.6), (-0.42, 0.6),
                  (-0.48, 0.05), (-0.11, -0.055)])
    for side, angle in ((-1, params.arm_angles[0]), (1, params.arm_angles[1])):
        pivot, down, out = _arm_frame(side, angle)
        wrist = _add(pivot, down, ARM_LENGTH)
        sketch.under([_add(pivot, out, _ARM_HALF_TOP), _add(wrist, out, _ARM_HALF_WRIST),
                      _add(wrist, out, -_ARM_HALF_WRIST), _add(pivot, out, -_ARM_HALF_TOP)])
        sketch.under_disc(pivot, _ARM_HALF_TOP)
        hand = _add(pivot, down, ARM_LENGTH + 0.08)
        sketch.under(ellipse_points(hand, 0.075, 0.115, count=14, angle=-side * angle))
        sketch.anchor("left_hand" if side < 0 else "right_hand", hand)


# -- sleeves, torsos, necklines ---------------------------------------------------------------


@dataclass(frozen=True)
class _Torso:
    """Right half of a torso below the armpit, and the garment's sleeve and shoulder style."""

    sides: tuple[Point, ...]
    shoulder: Point = (0.52, 0.05)
    sleeve_width: float = 0.0
    """Extra half width of the sleeves (padded, knitted)."""


_STRAP_END = 0.38
"""Sleeveless garments: where the shoulder strap ends and the armhole starts."""
_ARMHOLE: tuple[Point, ...] = ((_STRAP_END, 0.01), (0.34, 0.14), (0.35, 0.3), (0.46, 0.42))


def _sleeve_half_width(cover: float, extra: float) -> float:
    """Half width of a sleeve at its hem: a little wider than the arm there, so the arm never shows through."""
    return _lerp(0.14, 0.105, cover) + extra


def _sleeve(sketch: Sketch, side: int, angle: float, cover: float, torso: _Torso) -> None:
    """One sleeve along the arm, from above the shoulder to ``cover`` of the arm's length.

    Its inner corner starts well inside the torso (drawn afterwards, on top) so no skin shows
    in the armpit whatever the arm's angle.
    """
    pivot, down, out = _arm_frame(side, angle)
    end = _add(pivot, down, cover * ARM_LENGTH)
    half = _sleeve_half_width(cover, torso.sleeve_width)
    top_outer = _add(_add(pivot, out, 0.14 + torso.sleeve_width), down, -0.1)
    shoulder = (side * torso.shoulder[0], torso.shoulder[1])
    sketch.fabric([shoulder, top_outer, _add(end, out, half), _add(end, out, -half), (side * 0.36, 0.5)])


def _cuff(sketch: Sketch, side: int, angle: float, cover: float, depth: float, paint: Paint,
          extra_width: float, ribbed: bool) -> None:
    pivot, down, out = _arm_frame(side, angle)
    end = _add(pivot, down, cover * ARM_LENGTH)
    start = _add(end, down, -depth)
    half = _sleeve_half_width(cover, extra_width)
    sketch.fabric([_add(start, out, half), _add(end, out, half), _add(end, out, -half), _add(start, out, -half)],
                  paint)
    if ribbed:
        for k in range(1, 6):
            t = -half + 2 * half * k / 6
            sketch.stroke([_add(start, out, t), _add(end, out, t)], 0.008)


def _upper_body(sketch: Sketch, params: GarmentParams, torso: _Torso) -> None:
    """Skin, sleeves and torso, in that order so the torso edge hides the sleeve seam."""
    _skin_under(sketch, params)
    sleeved = params.sleeve_cover > 0
    if sleeved:
        for side, angle in ((-1, params.arm_angles[0]), (1, params.arm_angles[1])):
            _sleeve(sketch, side, angle, params.sleeve_cover, torso)
        top: tuple[Point, ...] = ((_NECK_HALF, _NECK_TOP), torso.shoulder)
    else:
        top = ((_NECK_HALF, _NECK_TOP), *_ARMHOLE)
    sketch.fabric(_symmetric([*top, *torso.sides]))


def _strap_end(params: GarmentParams) -> float:
    return _STRAP_END if params.sleeve_cover <= 0 else 0.52


def _neckline(sketch: Sketch, params: GarmentParams, rim: float, rim_paint: Paint = Paint.SHADE) -> float:
    """Cut (or add) the neckline; return the y where the front below it starts."""
    kind = params.neckline
    high = -0.4  # cuts start above the fabric so they open the top edge
    if kind is Neckline.CREW:
        arc = ellipse_points((0.0, _NECK_TOP), 0.17, 0.16, start=0.0, stop=math.pi, count=16)
        sketch.cut([(0.17, high), *arc, (-0.17, high)])
        sketch.stroke(arc, rim, rim_paint)
        return 0.11 + rim / 2
    if kind is Neckline.V:
        v = [(0.16, _NECK_TOP + 0.01), (0.0, 0.46), (-0.16, _NECK_TOP + 0.01)]
        sketch.cut([(0.16, high), *v, (-0.16, high)])
        sketch.stroke(v, rim, rim_paint)
        return 0.46 + rim / 2
    if kind is Neckline.SQUARE:
        square = [(0.22, -0.02), (0.22, 0.27), (-0.22, 0.27), (-0.22, -0.02)]
        sketch.cut([(0.22, high), *square[1:3], (-0.22, high)])
        sketch.stroke(square, rim, rim_paint)
        return 0.27 + rim / 2
    if kind is Neckline.BOAT:
        half = min(0.42, _strap_end(params) - 0.05)
        curve = [(half * x, 0.05 + 0.05 * (1 - x * x)) for x in (1.0 - 2.0 * k / 12 for k in range(13))]
        sketch.cut([(half, high), *curve, (-half, high)])
        sketch.stroke(curve, rim, rim_paint)
        return 0.1 + rim / 2
    band = [(-0.15, -0.31), (0.15, -0.31), (0.16, 0.0), (-0.16, 0.0)]
    sketch.fabric(band)
    for y in (-0.22, -0.13):
        sketch.stroke([(-0.15, y), (0.15, y)], 0.012)
    return 0.0


# -- upper garments -------------------------------------------------------------------------------


def draw_shirt(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    length = rnd.uniform(1.35, 1.5)
    torso = _Torso(((0.47, 0.42), (0.45, 0.85), (0.48, length - 0.08), (0.3, length - 0.02), (0.0, length)))
    _upper_body(sketch, params, torso)
    if params.sleeve_cover >= 0.99:
        for side, angle in ((-1, params.arm_angles[0]), (1, params.arm_angles[1])):
            _cuff(sketch, side, angle, params.sleeve_cover, 0.1, Paint.PATTERN, 0.0, ribbed=False)
    front = _neckline(sketch, params, 0.02, Paint.OUTLINE)
    _collar(sketch, params)
    placket = [(0.035, front), (0.035, length), (-0.035, length), (-0.035, front)]
    sketch.fabric(placket)
    y = front + 0.1
    while y < length - 0.08:
        sketch.disc((0.0, y), 0.024)
        y += 0.19
    return sketch.build()


def _collar(sketch: Sketch, params: GarmentParams) -> None:
    """Collar points lie on the fabric beside the opening, never inside it, so the neckline reads."""
    widths = {Neckline.CREW: 0.17, Neckline.V: 0.16, Neckline.SQUARE: 0.22}
    half = widths.get(params.neckline)
    if half is None:
        return
    for side in (-1, 1):
        sketch.fabric([(side * (half + 0.01), -0.04), (side * (half + 0.15), -0.0),
                       (side * (half + 0.08), 0.2), (side * (half + 0.01), 0.07)])


def draw_top(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    length = rnd.uniform(1.22, 1.38)
    torso = _Torso(((0.46, 0.42), (0.44, 0.85), (0.46, length)))
    _upper_body(sketch, params, torso)
    sketch.stroke([(-0.45, length - 0.05), (0.45, length - 0.05)], 0.01)
    _neckline(sketch, params, 0.03, Paint.PATTERN)
    return sketch.build()


def draw_sweater(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    body_end = rnd.uniform(1.12, 1.22)
    band = 0.15
    torso = _Torso(((0.5, 0.42), (0.52, 0.8), (0.52, body_end), (0.44, body_end + 0.02), (0.44, body_end + band)),
                   sleeve_width=0.025)
    _upper_body(sketch, params, torso)
    sketch.fabric([(-0.44, body_end), (0.44, body_end), (0.44, body_end + band), (-0.44, body_end + band)],
                  Paint.SHADE)
    _rib_strokes(sketch, -0.44, 0.44, body_end, body_end + band)
    if params.sleeve_cover > 0:
        for side, angle in ((-1, params.arm_angles[0]), (1, params.arm_angles[1])):
            _cuff(sketch, side, angle, params.sleeve_cover, 0.13, Paint.SHADE, 0.025, ribbed=True)
    else:
        for armhole in (_ARMHOLE, _mirror(_ARMHOLE)):
            sketch.stroke(armhole, 0.07, Paint.SHADE)
    _neckline(sketch, params, 0.07, Paint.SHADE)
    return sketch.build()


def _open_front(sketch: Sketch, length: float, v_bottom: float, gap: float, lapel: float) -> None:
    """Inner layer in the V and the gap of an open front, with lapels over the V's edges."""
    sketch.fabric([(-_NECK_HALF, _NECK_TOP), (_NECK_HALF, _NECK_TOP), (0.02, v_bottom), (gap, length),
                   (-gap, length), (-0.02, v_bottom)], Paint.INNER, outline=False)
    sketch.stroke([(-0.09, _NECK_TOP + 0.02), (0.0, 0.12), (0.09, _NECK_TOP + 0.02)], 0.02)
    for side in (-1, 1):
        sketch.fabric([(side * _NECK_HALF, _NECK_TOP), (side * 0.3 * lapel, 0.17), (side * 0.24 * lapel, 0.22),
                       (side * 0.3 * lapel, 0.28), (side * 0.02, v_bottom)])
        sketch.stroke([(side * 0.02, v_bottom), (side * gap, length)], 0.02)


def _front_x(y: float, length: float, v_bottom: float, gap: float) -> float:
    return 0.02 + (gap - 0.02) * max(0.0, (y - v_bottom) / (length - v_bottom))


def draw_jacket(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    length = rnd.uniform(1.4, 1.52)
    torso = _Torso(((0.5, 0.42), (0.47, 0.85), (0.51, length)), shoulder=(0.57, 0.03), sleeve_width=0.02)
    _upper_body(sketch, params, torso)
    v_bottom, gap = rnd.uniform(0.55, 0.7), rnd.uniform(0.06, 0.1)
    _open_front(sketch, length, v_bottom, gap, 1.0)
    for y in (v_bottom + 0.08, v_bottom + 0.36):
        sketch.disc((-(_front_x(y, length, v_bottom, gap) + 0.06), y), 0.03)
    for side in (-1, 1):
        y = length - 0.35
        sketch.fabric([(side * 0.2, y), (side * 0.42, y), (side * 0.42, y + 0.07), (side * 0.2, y + 0.07)],
                      Paint.SHADE)
    return sketch.build()


def draw_coat(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    length = rnd.uniform(2.05, 2.35)
    hem = rnd.uniform(0.62, 0.72)
    torso = _Torso(((0.5, 0.42), (0.5, 0.9), (hem, length)), shoulder=(0.58, 0.03), sleeve_width=0.03)
    _upper_body(sketch, params, torso)
    v_bottom, gap = rnd.uniform(0.6, 0.75), rnd.uniform(0.1, 0.16)
    _open_front(sketch, length, v_bottom, gap, 1.25)
    for y in (v_bottom + 0.12, v_bottom + 0.42, v_bottom + 0.72):
        x = _front_x(y, length, v_bottom, gap)
        for side in (-1, 1):
            sketch.disc((side * (x + 0.07), y), 0.032)
            sketch.disc((side * (x + 0.24), y), 0.032)
    if rnd.random() < 0.4:
        y = v_bottom + 0.25
        sketch.fabric([(-0.5, y), (0.5, y), (0.5, y + 0.09), (-0.5, y + 0.09)], Paint.SHADE)
        sketch.fabric([(-0.06, y - 0.01), (0.06, y - 0.01), (0.06, y + 0.1), (-0.06, y + 0.1)], Paint.ACCENT)
    for side in (-1, 1):
        y = length * 0.62
        sketch.stroke([(side * 0.28, y), (side * 0.5, y + 0.02)], 0.03)
    return sketch.build()


def draw_dress(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    length = rnd.uniform(1.75, 2.25)
    hem = rnd.uniform(0.62, 0.85)
    waist = 0.85
    torso = _Torso(((0.46, 0.42), (0.37, waist), (0.5, waist + 0.3), (hem, length), (0.0, length + 0.04)))
    _upper_body(sketch, params, torso)
    _neckline(sketch, params, 0.03, Paint.PATTERN)
    if rnd.random() < 0.5:
        sketch.fabric([(-0.37, waist - 0.04), (0.37, waist - 0.04), (0.38, waist + 0.05), (-0.38, waist + 0.05)],
                      Paint.SHADE)
    else:
        sketch.stroke([(-0.37, waist), (0.37, waist)], 0.016)
    for x in (-0.5, -0.2, 0.2, 0.5):
        sketch.stroke([(x * 0.6, waist + 0.12), (x * hem * 1.6, length - 0.05)], 0.008)
    return sketch.build()


# -- lower garments -------------------------------------------------------------------------------


def _waistband(sketch: Sketch, half: float, loops: bool) -> None:
    sketch.fabric([(-half, 0.0), (half, 0.0), (half + 0.005, 0.07), (-half - 0.005, 0.07)], Paint.SHADE)
    if loops:
        for x in (-0.3, -0.1, 0.1, 0.3):
            sketch.stroke([(x * half / 0.42, 0.0), (x * half / 0.42, 0.07)], 0.018)


def _legs_outline(length: float, crotch: float, spread: float, hem_half: float, hip: float) -> list[Point]:
    inner = max(0.04, spread - hem_half)
    outer = max(spread + hem_half, inner + 0.12)
    return [(-0.42, 0.0), (0.42, 0.0), (hip, 0.38), (outer, length), (inner, length), (0.0, crotch),
            (-inner, length), (-outer, length), (-hip, 0.38)]


def draw_pants(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    length = rnd.uniform(1.95, 2.08)
    hem_half = rnd.uniform(0.15, 0.2)
    spread = max(params.leg_spread, hem_half + 0.06)
    sketch.fabric(_legs_outline(length, 0.56, spread, hem_half, 0.46))
    _waistband(sketch, 0.42, loops=True)
    sketch.stroke([(0.0, 0.07), (0.0, 0.36), (0.07, 0.32), (0.07, 0.07)], 0.012)
    for side in (-1, 1):
        sketch.stroke([(side * 0.26, 0.07), (side * 0.4, 0.24)], 0.012)
        sketch.stroke([(side * 0.23, 0.5), (side * spread, length - 0.02)], 0.01)
    return sketch.build()


def draw_shorts(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    length = rnd.uniform(0.62, 0.8)
    spread = max(params.leg_spread, 0.3)
    sketch.fabric(_legs_outline(length, 0.45, spread, rnd.uniform(0.2, 0.24), 0.48))
    _waistband(sketch, 0.42, loops=rnd.random() < 0.6)
    sketch.stroke([(0.0, 0.07), (0.0, 0.3)], 0.012)
    if rnd.random() < 0.5:
        for side in (-1, 1):
            outer, inner = side * (spread + 0.2), side * max(0.04, spread - 0.2)
            sketch.stroke([(inner, length - 0.05), (outer, length - 0.05)], 0.02)
    return sketch.build()


def draw_skirt(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    length = rnd.uniform(0.65, 1.3)
    hem = 0.42 + length * rnd.uniform(0.22, 0.45)
    sketch.fabric([(-0.41, 0.0), (0.41, 0.0), (hem, length), (hem * 0.5, length + 0.03), (0.0, length + 0.04),
                   (-hem * 0.5, length + 0.03), (-hem, length)])
    _waistband(sketch, 0.41, loops=False)
    if rnd.random() < 0.5:
        for k in range(1, 6):
            t = -0.8 + 1.6 * k / 6
            sketch.stroke([(t * 0.41, 0.07), (t * hem, length)], 0.01)
    return sketch.build()


# -- accessories ----------------------------------------------------------------------------------


def draw_hat(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    style = rnd.choice(("fedora", "sunhat", "beanie"))
    if style == "fedora":
        sketch.fabric(ellipse_points((0.0, -0.14), 0.46, 0.065))
        sketch.fabric([(-0.27, -0.15), (-0.24, -0.46), (-0.1, -0.5), (0.0, -0.45), (0.1, -0.5), (0.24, -0.46),
                       (0.27, -0.15)])
        sketch.fabric([(-0.27, -0.15), (0.27, -0.15), (0.265, -0.23), (-0.265, -0.23)], Paint.SHADE)
    elif style == "sunhat":
        sketch.fabric(ellipse_points((0.0, -0.12), 0.64, 0.1))
        sketch.fabric(ellipse_points((0.0, -0.13), 0.28, 0.32, start=math.pi, stop=2 * math.pi, count=16))
        sketch.fabric([(-0.28, -0.13), (0.28, -0.13), (0.275, -0.21), (-0.275, -0.21)], Paint.SHADE)
    else:
        sketch.fabric(ellipse_points((0.0, -0.12), 0.27, 0.38, start=math.pi, stop=2 * math.pi, count=16))
        sketch.fabric([(-0.28, -0.14), (0.28, -0.14), (0.28, 0.0), (-0.28, 0.0)], Paint.SHADE)
        _rib_strokes(sketch, -0.28, 0.28, -0.14, 0.0)
        if rnd.random() < 0.5:
            sketch.disc((0.0, -0.52), 0.08, Paint.SHADE)
    return sketch.build()


def draw_shoe(params: GarmentParams, rnd: random.Random) -> Drawing:
    """Side view, toe towards +x, heel bottom at the origin."""
    sketch = Sketch()
    style = rnd.choice(("sneaker", "boot", "pump"))
    if style == "sneaker":
        sketch.fabric([(0.0, -0.05), (0.01, -0.21), (0.09, -0.23), (0.16, -0.17), (0.3, -0.13), (0.42, -0.08),
                       (0.47, -0.04), (0.0, -0.04)])
        sketch.fabric([(-0.01, -0.06), (0.47, -0.06), (0.49, -0.03), (0.47, 0.0), (0.01, 0.0), (-0.01, -0.03)],
                      Paint.ACCENT)
        for k in range(3):
            x = 0.17 + 0.05 * k
            sketch.stroke([(x, -0.17 + 0.012 * k), (x + 0.03, -0.14 + 0.012 * k)], 0.014, Paint.ACCENT)
    elif style == "boot":
        sketch.fabric([(0.0, -0.04), (0.02, -0.42), (0.18, -0.42), (0.19, -0.19), (0.33, -0.13), (0.45, -0.07),
                       (0.47, -0.03), (0.0, -0.03)])
        sketch.fabric([(0.0, -0.04), (0.48, -0.04), (0.48, 0.0), (0.0, 0.0)], Paint.ACCENT)
        sketch.stroke([(0.02, -0.36), (0.18, -0.36)], 0.015)
    else:
        sketch.fabric([(0.0, -0.13), (0.03, -0.21), (0.12, -0.17), (0.3, -0.1), (0.43, -0.05), (0.46, -0.015),
                       (0.3, -0.02), (0.12, -0.09), (0.0, -0.1)])
        sketch.fabric([(0.01, -0.12), (0.07, -0.11), (0.06, 0.0), (0.03, 0.0)], Paint.ACCENT)
    return sketch.build().scaled(SHOE_SCALE)


def draw_bag(params: GarmentParams, rnd: random.Random) -> Drawing:
    sketch = Sketch()
    style = rnd.choice(("handbag", "tote", "clutch"))
    if style == "handbag":
        handle = ellipse_points((0.0, 0.24), 0.17, 0.22, start=math.pi, stop=2 * math.pi, count=14)
        sketch.stroke(handle, 0.045, Paint.SHADE, solid=True)
        sketch.fabric([(-0.3, 0.22), (0.3, 0.22), (0.37, 0.62), (0.33, 0.68), (-0.33, 0.68), (-0.37, 0.62)])
        sketch.fabric([(-0.3, 0.22), (0.3, 0.22), (0.315, 0.38), (0.0, 0.45), (-0.315, 0.38)], Paint.SHADE)
        sketch.disc((0.0, 0.42), 0.03)
    elif style == "tote":
        for x in (-0.14, 0.14):
            handle = ellipse_points((x, 0.3), 0.1, 0.28, start=math.pi, stop=2 * math.pi, count=12)
            sketch.stroke(handle, 0.035, Paint.SHADE, solid=True)
        sketch.fabric([(-0.34, 0.28), (0.34, 0.28), (0.3, 0.82), (-0.3, 0.82)])
        sketch.stroke([(-0.33, 0.36), (0.33, 0.36)], 0.012)
    else:
        sketch.fabric([(-0.3, 0.02), (-0.27, 0.0), (0.27, 0.0), (0.3, 0.02), (0.3, 0.3), (-0.3, 0.3)])
        sketch.fabric([(-0.3, 0.02), (0.3, 0.02), (0.0, 0.18)], Paint.SHADE)
        sketch.disc((0.0, 0.17), 0.025)
    return sketch.build()


# -- the table of what can be drawn ------------------------------------------------------------------

GARMENT_KINDS: Mapping[str, GarmentKind] = {
    "shirt, blouse": GarmentKind(draw_shirt, Role.UPPER, (0.2, 0.75)),
    "top, t-shirt, sweatshirt": GarmentKind(draw_top, Role.UPPER, (0.2, 0.75)),
    "sweater": GarmentKind(draw_sweater, Role.UPPER, (0.2, 0.75)),
    "jacket": GarmentKind(draw_jacket, Role.UPPER, (0.22, 0.8)),
    "coat": GarmentKind(draw_coat, Role.UPPER, (0.3, 0.8)),
    "dress": GarmentKind(draw_dress, Role.FULL, (0.3, 0.8)),
    "pants": GarmentKind(draw_pants, Role.LOWER, (0.3, 0.8)),
    "shorts": GarmentKind(draw_shorts, Role.LOWER, (0.15, 0.5)),
    "skirt": GarmentKind(draw_skirt, Role.LOWER, (0.15, 0.55)),
    "hat": GarmentKind(draw_hat, Role.HEAD, (0.1, 0.35)),
    "shoe": GarmentKind(draw_shoe, Role.FEET, (0.08, 0.3)),
    "bag, wallet": GarmentKind(draw_bag, Role.HAND, (0.1, 0.4)),
}
"""Drawing table keyed by label-map category name (not a label list: the label map is that)."""


def garment_catalogue(label_map: LabelMap) -> dict[str, GarmentKind]:
    """The drawing of every category of ``label_map``; raises if any category or label has none."""
    problems = [f"category {name!r}" for name in label_map.category_names if name not in GARMENT_KINDS]
    for group in label_map.attribute_groups:
        table = ATTRIBUTE_TABLES.get(group.name)
        if table is None:
            problems.append(f"attribute group {group.name!r}")
            continue
        problems += [f"{group.name!r} label {label!r}" for label in group.labels if label not in table]
    if problems:
        raise UndrawableLabelError(
            f"label map {label_map.name!r} names what the scene generator cannot draw: {', '.join(problems)}; "
            f"drawable categories: {sorted(GARMENT_KINDS)}"
        )
    return {name: GARMENT_KINDS[name] for name in label_map.category_names}
