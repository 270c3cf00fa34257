"""Vector drawings in garment units and their rasterisation into pixel layers.

Garments are described as shapes in *garment units* (1 unit = the shoulder width of the figure
wearing them), never in pixels, so a scene rendered at 640 px and at 1280 px is the same picture.
An :class:`Affine` maps units to pixels (scale, rotation, mirror, position) and
:func:`rasterise` turns a :class:`Drawing` into two layers:

* the *underlay* (skin of arms and neck, hair): composited first, never annotated;
* the *garment*: its silhouette mask, filled with the textile pattern and then the solid details
  (seams, ribbing, buttons, soles) in drawing order.

Usage::

    sketch = Sketch()
    sketch.under([(-0.1, 0), (0.1, 0), (0.1, 1), (-0.1, 1)])      # skin
    sketch.fabric([(-0.5, 0), (0.5, 0), (0.4, 1.3), (-0.4, 1.3)])  # patterned body, outlined
    drawing = sketch.build()
    layers = rasterise(drawing, Affine.place((320, 40), scale=120), colours, pattern.fill, clip=(0, 0, 640, 480))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from .colours import RGB

__all__ = [
    "Affine",
    "Disc",
    "Drawing",
    "Layer",
    "Paint",
    "PatternFill",
    "Point",
    "Polygon",
    "Rasterised",
    "Rect",
    "Sketch",
    "Stroke",
    "ellipse_points",
    "rasterise",
]

Point = tuple[float, float]
Rect = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` in pixels, right and bottom exclusive."""

OUTLINE_UNITS = 0.016
"""Width of seams and silhouette outlines in garment units: thin but visible at 60 px."""


class Paint(Enum):
    """What a shape is filled with; colours are chosen per garment, not per shape."""

    PATTERN = auto()  # the garment's textile pattern
    SHADE = auto()  # darker fabric: ribbing, waistbands, flaps, lapel facings
    OUTLINE = auto()  # seams and edges
    ACCENT = auto()  # buttons, soles, clasps, handles
    INNER = auto()  # what shows inside an open front
    SKIN = auto()
    HAIR = auto()
    CUT = auto()  # removes fabric: necklines, gaps between legs


@dataclass(frozen=True)
class Polygon:
    points: tuple[Point, ...]
    paint: Paint
    outline: bool = False
    under: bool = False


@dataclass(frozen=True)
class Stroke:
    points: tuple[Point, ...]
    width: float
    paint: Paint
    solid: bool = False
    """Whether the stroke is part of the silhouette (a bag handle) or only drawn on the fabric."""
    closed: bool = False


@dataclass(frozen=True)
class Disc:
    centre: Point
    radius: float
    paint: Paint
    solid: bool = True
    under: bool = False


Shape = Polygon | Stroke | Disc


@dataclass(frozen=True)
class Drawing:
    shapes: tuple[Shape, ...]
    anchors: Mapping[str, Point] = field(default_factory=dict)
    """Named points a layout needs (where a hand is, so a bag can hang from it)."""

    def scaled(self, factor: float) -> Drawing:
        """The same drawing ``factor`` times larger about the origin."""
        shapes: list[Shape] = []
        for shape in self.shapes:
            if isinstance(shape, Disc):
                shapes.append(Disc(_times(shape.centre, factor), shape.radius * factor, shape.paint, shape.solid,
                                   shape.under))
            elif isinstance(shape, Stroke):
                shapes.append(Stroke(tuple(_times(p, factor) for p in shape.points), shape.width * factor,
                                     shape.paint, shape.solid, shape.closed))
            else:
                shapes.append(Polygon(tuple(_times(p, factor) for p in shape.points), shape.paint, shape.outline,
                                      shape.under))
        return Drawing(tuple(shapes), {name: _times(p, factor) for name, p in self.anchors.items()})

    def bounds(self, *, garment_only: bool = False) -> tuple[float, float, float, float]:
        """Extent in garment units; ``garment_only`` leaves out the skin underlay."""
        xs: list[float] = []
        ys: list[float] = []
        for shape in self.shapes:
            if garment_only and (_is_under(shape) or not _adds_to_silhouette(shape)):
                continue
            if isinstance(shape, Disc):
                xs += [shape.centre[0] - shape.radius, shape.centre[0] + shape.radius]
                ys += [shape.centre[1] - shape.radius, shape.centre[1] + shape.radius]
            else:
                pad = shape.width / 2 if isinstance(shape, Stroke) else 0.0
                xs += [p[0] - pad for p in shape.points] + [p[0] + pad for p in shape.points]
                ys += [p[1] - pad for p in shape.points] + [p[1] + pad for p in shape.points]
        if not xs:
            return (0.0, 0.0, 0.0, 0.0)
        return (min(xs), min(ys), max(xs), max(ys))


def _times(point: Point, factor: float) -> Point:
    return (point[0] * factor, point[1] * factor)


def ellipse_points(centre: Point, rx: float, ry: float, *, start: float = 0.0, stop: float = 2 * math.pi,
                   count: int = 24, angle: float = 0.0) -> list[Point]:
    """Points on an (optionally rotated) ellipse arc; polygons rotate with the garment, PIL ellipses cannot."""
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    points = []
    for i in range(count + 1 if stop - start < 2 * math.pi else count):
        t = start + (stop - start) * i / count
        x, y = rx * math.cos(t), ry * math.sin(t)
        points.append((centre[0] + x * cos_a - y * sin_a, centre[1] + x * sin_a + y * cos_a))
    return points


class Sketch:
    """Collects shapes in drawing order; later shapes cover earlier ones."""

    def __init__(self) -> None:
        self._shapes: list[Shape] = []
        self._anchors: dict[str, Point] = {}

    def fabric(self, points: Iterable[Point], paint: Paint = Paint.PATTERN, *, outline: bool = True) -> None:
        self._shapes.append(Polygon(tuple(points), paint, outline=outline))

    def cut(self, points: Iterable[Point]) -> None:
        self._shapes.append(Polygon(tuple(points), Paint.CUT))

    def under(self, points: Iterable[Point], paint: Paint = Paint.SKIN) -> None:
        self._shapes.append(Polygon(tuple(points), paint, under=True))

    def under_disc(self, centre: Point, radius: float, paint: Paint = Paint.SKIN) -> None:
        self._shapes.append(Disc(centre, radius, paint, under=True))

    def stroke(self, points: Iterable[Point], width: float, paint: Paint = Paint.OUTLINE, *,
               solid: bool = False, closed: bool = False) -> None:
        self._shapes.append(Stroke(tuple(points), width, paint, solid=solid, closed=closed))

    def disc(self, centre: Point, radius: float, paint: Paint = Paint.ACCENT, *, solid: bool = True) -> None:
        self._shapes.append(Disc(centre, radius, paint, solid=solid))

    def anchor(self, name: str, point: Point) -> None:
        self._anchors[name] = point

    def build(self) -> Drawing:
        return Drawing(tuple(self._shapes), dict(self._anchors))


@dataclass(frozen=True)
class Affine:
    """``pixel = [[a, b], [c, d]] @ unit + (tx, ty)``."""

    a: float
    b: float
    c: float
    d: float
    tx: float
    ty: float

    @classmethod
    def place(cls, origin: Point, scale: float, rotation: float = 0.0, *, mirror: bool = False) -> Affine:
        """Units scaled by ``scale``, mirrored left-right, rotated by ``rotation`` radians, moved to ``origin``."""
        cos_r, sin_r = math.cos(rotation) * scale, math.sin(rotation) * scale
        m = -1.0 if mirror else 1.0
        return cls(cos_r * m, -sin_r, sin_r * m, cos_r, origin[0], origin[1])

    @classmethod
    def translation(cls, dx: float, dy: float) -> Affine:
        return cls(1.0, 0.0, 0.0, 1.0, dx, dy)

    def then(self, inner: Affine) -> Affine:
        """The map ``p -> self(inner(p))``: place a garment (inner) on a figure (self)."""
        return Affine(
            self.a * inner.a + self.b * inner.c, self.a * inner.b + self.b * inner.d,
            self.c * inner.a + self.d * inner.c, self.c * inner.b + self.d * inner.d,
            self.a * inner.tx + self.b * inner.ty + self.tx, self.c * inner.tx + self.d * inner.ty + self.ty,
        )

    def inverse(self) -> Affine:
        det = self.a * self.d - self.b * self.c
        a, b, c, d = self.d / det, -self.b / det, -self.c / det, self.a / det
        return Affine(a, b, c, d, -(a * self.tx + b * self.ty), -(c * self.tx + d * self.ty))

    @property
    def scale(self) -> float:
        return math.sqrt(abs(self.a * self.d - self.b * self.c))

    def point(self, p: Point) -> Point:
        return (self.a * p[0] + self.b * p[1] + self.tx, self.c * p[0] + self.d * p[1] + self.ty)

    def points(self, points: Sequence[Point]) -> list[Point]:
        return [self.point(p) for p in points]


PatternFill = Callable[[Affine, Rect], NDArray[np.uint8]]
"""``fill(pixel_to_units, rect) -> uint8 [h, w, 3]``: the textile pattern over a pixel rectangle."""


@dataclass(frozen=True)
class Layer:
    left: int
    top: int
    rgb: Image.Image
    mask: Image.Image
    """Mode ``L``; 255 where the layer covers the picture."""


@dataclass(frozen=True)
class Rasterised:
    under: Layer | None
    garment: Layer | None
    garment_pixels: int
    """Silhouette area in pixels, including any part outside the clip rectangle."""


def rasterise(drawing: Drawing, transform: Affine, colours: Mapping[Paint, RGB], fill: PatternFill,
              clip: Rect) -> Rasterised:
    """Draw ``drawing`` placed by ``transform``, cropped to ``clip`` (the image)."""
    scale = transform.scale
    outline_px = max(1, round(OUTLINE_UNITS * scale))
    shapes = [_to_pixels(shape, transform) for shape in drawing.shapes]
    full = _pixel_rect(shapes, outline_px)
    rect = (max(full[0], clip[0]), max(full[1], clip[1]), min(full[2], clip[2]), min(full[3], clip[3]))
    under_shapes = [s for s in shapes if _is_under(s)]
    garment_shapes = [s for s in shapes if not _is_under(s)]
    under = _draw_under(under_shapes, rect, colours) if under_shapes and _nonempty(rect) else None
    mask_full = _draw_silhouette(garment_shapes, full)
    garment_pixels = int(np.count_nonzero(np.asarray(mask_full)))
    garment = None
    if garment_pixels and _nonempty(rect):
        mask = mask_full.crop((rect[0] - full[0], rect[1] - full[1], rect[2] - full[0], rect[3] - full[1]))
        rgb = _draw_fabric(garment_shapes, rect, colours, fill, transform.inverse(), outline_px)
        garment = Layer(rect[0], rect[1], rgb, mask)
    return Rasterised(under, garment, garment_pixels)


# -- internals ------------------------------------------------------------------------------


def _is_under(shape: Shape) -> bool:
    return isinstance(shape, Polygon | Disc) and shape.under


def _adds_to_silhouette(shape: Shape) -> bool:
    if isinstance(shape, Polygon):
        return shape.paint is not Paint.CUT
    return shape.solid


def _nonempty(rect: Rect) -> bool:
    return rect[2] > rect[0] and rect[3] > rect[1]


def _to_pixels(shape: Shape, transform: Affine) -> Shape:
    scale = transform.scale
    if isinstance(shape, Polygon):
        return Polygon(tuple(transform.points(shape.points)), shape.paint, shape.outline, shape.under)
    if isinstance(shape, Stroke):
        return Stroke(tuple(transform.points(shape.points)), max(1.0, shape.width * scale), shape.paint,
                      shape.solid, shape.closed)
    return Disc(transform.point(shape.centre), shape.radius * scale, shape.paint, shape.solid, shape.under)


def _pixel_rect(shapes: Sequence[Shape], outline_px: int) -> Rect:
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for shape in shapes:
        if isinstance(shape, Disc):
            pad = shape.radius
            pts: Sequence[Point] = (shape.centre,)
        else:
            pad = shape.width / 2 if isinstance(shape, Stroke) else outline_px / 2
            pts = shape.points
        for x, y in pts:
            x0, y0, x1, y1 = min(x0, x - pad), min(y0, y - pad), max(x1, x + pad), max(y1, y + pad)
    if x0 == math.inf:
        return (0, 0, 0, 0)
    return (math.floor(x0) - 1, math.floor(y0) - 1, math.ceil(x1) + 2, math.ceil(y1) + 2)


def _shifted(points: Sequence[Point], rect: Rect) -> list[Point]:
    return [(x - rect[0], y - rect[1]) for x, y in points]


def _disc_box(shape: Disc, rect: Rect) -> tuple[float, float, float, float]:
    cx, cy = shape.centre[0] - rect[0], shape.centre[1] - rect[1]
    r = max(shape.radius, 0.5)
    return (cx - r, cy - r, cx + r, cy + r)


def _stroke(draw: ImageDraw.ImageDraw, shape: Stroke, rect: Rect, fill: int | RGB) -> None:
    points = _shifted(shape.points, rect)
    if shape.closed:
        points.append(points[0])
    draw.line(points, fill=fill, width=round(shape.width), joint="curve")


def _draw_under(shapes: Sequence[Shape], rect: Rect, colours: Mapping[Paint, RGB]) -> Layer:
    size = (rect[2] - rect[0], rect[3] - rect[1])
    rgb = Image.new("RGB", size)
    mask = Image.new("L", size, 0)
    draw_rgb, draw_mask = ImageDraw.Draw(rgb), ImageDraw.Draw(mask)
    for shape in shapes:
        colour = colours[shape.paint]
        if isinstance(shape, Polygon):
            points = _shifted(shape.points, rect)
            draw_rgb.polygon(points, fill=colour)
            draw_mask.polygon(points, fill=255)
        elif isinstance(shape, Disc):
            box = _disc_box(shape, rect)
            draw_rgb.ellipse(box, fill=colour)
            draw_mask.ellipse(box, fill=255)
    return Layer(rect[0], rect[1], rgb, mask)


def _draw_silhouette(shapes: Sequence[Shape], rect: Rect) -> Image.Image:
    mask = Image.new("L", (rect[2] - rect[0], rect[3] - rect[1]), 0)
    draw = ImageDraw.Draw(mask)
    for shape in shapes:
        if isinstance(shape, Polygon):
            draw.polygon(_shifted(shape.points, rect), fill=0 if shape.paint is Paint.CUT else 255)
        elif isinstance(shape, Stroke) and shape.solid:
            _stroke(draw, shape, rect, 255)
        elif isinstance(shape, Disc) and shape.solid:
            draw.ellipse(_disc_box(shape, rect), fill=255)
    return mask


def _draw_fabric(shapes: Sequence[Shape], rect: Rect, colours: Mapping[Paint, RGB], fill: PatternFill,
                 to_units: Affine, outline_px: int) -> Image.Image:
    """Pattern everywhere, then solid paints on top in drawing order.

    A patterned polygon drawn after a solid one must show the pattern again, so solid paint is
    kept on its own layer with a mask that patterned polygons clear.
    """
    size = (rect[2] - rect[0], rect[3] - rect[1])
    solid = Image.new("RGB", size)
    solid_mask = Image.new("L", size, 0)
    draw_solid, draw_mask = ImageDraw.Draw(solid), ImageDraw.Draw(solid_mask)
    for shape in shapes:
        if shape.paint is Paint.CUT:
            continue
        colour = colours[shape.paint]
        if isinstance(shape, Polygon):
            points = _shifted(shape.points, rect)
            if shape.paint is Paint.PATTERN:
                draw_mask.polygon(points, fill=0)
            else:
                draw_solid.polygon(points, fill=colour)
                draw_mask.polygon(points, fill=255)
            if shape.outline:
                outline = [*points, points[0]]
                draw_solid.line(outline, fill=colours[Paint.OUTLINE], width=outline_px, joint="curve")
                draw_mask.line(outline, fill=255, width=outline_px, joint="curve")
        elif isinstance(shape, Stroke):
            _stroke(draw_solid, shape, rect, colour)
            _stroke(draw_mask, shape, rect, 255)
        else:
            box = _disc_box(shape, rect)
            draw_solid.ellipse(box, fill=colour)
            draw_mask.ellipse(box, fill=255)
    fabric = Image.fromarray(fill(to_units, rect), "RGB")
    fabric.paste(solid, (0, 0), solid_mask)
    return fabric
