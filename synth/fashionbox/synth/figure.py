"""The standing figure that wears an outfit: its body, and where each garment goes on it.

Figure units are garment units (1 = shoulder width) with the origin at the centre of the neck
line. The body drawn here is what no garment brings along: legs, neck, head and hair (arms come
with the upper garment, so its sleeves always match them). The figure is about four units tall,
the proportions of an adult.
"""

from __future__ import annotations

import math

from .canvas import Drawing, Paint, Point, Sketch, ellipse_points
from .errors import UndrawableLabelError
from .garments import SHOE_SCALE, GarmentParams, Role

__all__ = ["FIGURE_FLOOR_Y", "FIGURE_TOP_Y", "HAT_TOP_Y", "draw_body", "figure_placement"]

WAIST_Y = 1.0
"""Where lower garments start, below the neck line."""
LEG_LENGTH = 2.05
"""Waist to ankle."""
FIGURE_FLOOR_Y = WAIST_Y + LEG_LENGTH + 0.12
_HEAD_Y, _HEAD_R = -0.5, 0.24
FIGURE_TOP_Y = _HEAD_Y - _HEAD_R - 0.04
"""Top of the hair."""
HAT_TOP_Y = -1.02
"""Top of the tallest hat on the head."""


def draw_body(params: GarmentParams, *, long_hair: bool) -> Drawing:
    """Legs, neck, head and hair in the pose of ``params`` (leg spread); all of it underlay."""
    sketch = Sketch()
    if long_hair:
        sketch.under([(-0.27, -0.55), (0.27, -0.55), (0.3, 0.15), (-0.3, 0.15)], Paint.HAIR)
    hip_y, ankle_y = WAIST_Y + 0.3, WAIST_Y + LEG_LENGTH
    spread = params.leg_spread
    for side in (-1, 1):
        sketch.under([(side * 0.03, hip_y), (side * 0.37, hip_y), (side * (spread + 0.07), ankle_y),
                      (side * (spread - 0.06), ankle_y)])
    sketch.under([(-0.11, -0.35), (0.11, -0.35), (0.11, 0.0), (-0.11, 0.0)])
    sketch.under_disc((0.0, _HEAD_Y), _HEAD_R)
    sketch.under(ellipse_points((0.0, _HEAD_Y - 0.03), _HEAD_R + 0.025, _HEAD_R + 0.02, start=math.pi,
                                stop=2 * math.pi, count=14), Paint.HAIR)
    return sketch.build()


def figure_placement(role: Role, params: GarmentParams) -> list[tuple[Point, bool]]:
    """Origins (figure units) and mirror flags of a garment of ``role``: two for a pair of shoes.

    Bags have no fixed place: they hang from a hand of the upper garment's drawing.
    """
    if role in (Role.UPPER, Role.FULL):
        return [((0.0, 0.0), False)]
    if role is Role.LOWER:
        return [((0.0, WAIST_Y), False)]
    if role is Role.HEAD:
        return [((0.0, _HEAD_Y), False)]
    if role is Role.FEET:
        # The heel sits under the ankle, the toes point outwards.
        x = params.leg_spread - 0.12 * SHOE_SCALE
        return [((-x, FIGURE_FLOOR_Y), True), ((x, FIGURE_FLOOR_Y), False)]
    raise UndrawableLabelError(f"no fixed place on a figure for role {role.value!r}")
