"""The drawing itself, written against the shape of a detection rather than the result types.

``ImageDetections.draw`` (in ``_types``) and :func:`fashionbox.client.draw.draw_detections` both
end here. This module names no class of ``_types``: it reads the few fields it draws through the
protocols below, which the frozen result dataclasses satisfy, so ``_types`` can import it (lazily:
fonts load only when something is drawn) without an import cycle.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from ._images import ImageInput, open_image

__all__ = ["DrawableDetection", "category_colour", "render"]

_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)
"""Twenty colours that stay distinguishable next to each other (after Sasha Trubetskoy's list)."""

_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


class _Box(Protocol):
    @property
    def x1(self) -> float: ...
    @property
    def y1(self) -> float: ...
    @property
    def x2(self) -> float: ...
    @property
    def y2(self) -> float: ...


class _Score(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...


class DrawableDetection(Protocol):
    """What drawing reads of a detection; ``fashionbox.client.Detection`` is one."""

    @property
    def box(self) -> _Box: ...
    @property
    def category(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def category_index(self) -> int | None: ...
    @property
    def attributes(self) -> Mapping[str, _Score]: ...
    @property
    def mask(self) -> npt.NDArray[np.bool_] | None: ...


def category_colour(detection: DrawableDetection) -> tuple[int, int, int]:
    """The category's colour: by label-map index when known, else by a stable hash of the name."""
    if detection.category_index is not None and detection.category_index >= 0:
        key = detection.category_index
    else:
        key = zlib.crc32(detection.category.encode("utf-8"))
    return _PALETTE[key % len(_PALETTE)]


def _font(size_px: int) -> _Font:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = background
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _scaled(box: _Box, scale_x: float, scale_y: float) -> tuple[float, float, float, float]:
    # Pillow refuses a rectangle whose corners are swapped, so a degenerate box stays a point.
    x1, y1 = box.x1 * scale_x, box.y1 * scale_y
    return x1, y1, max(x1, box.x2 * scale_x), max(y1, box.y2 * scale_y)


MASK_OPACITY = 0.45
"""How much of a mask's fill colour covers the image under it."""


def _overlay_masks(canvas: Image.Image, detections: Sequence[DrawableDetection]) -> Image.Image:
    """``canvas`` with each detection's mask filled semi-transparently in its box colour (in the
    order given: later ones on top). Masks at another size than the canvas are scaled to it."""
    alpha = round(255 * MASK_OPACITY)
    overlay: Image.Image | None = None
    for detection in detections:
        mask = detection.mask
        if mask is None or not mask.any():
            continue
        if overlay is None:
            overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
        stencil = Image.fromarray(np.where(mask, np.uint8(alpha), np.uint8(0)))
        if stencil.size != canvas.size:
            stencil = stencil.resize(canvas.size, Image.Resampling.NEAREST)
        overlay.paste((*category_colour(detection), alpha), (0, 0, *canvas.size), stencil)
    if overlay is None:
        return canvas
    return Image.alpha_composite(canvas.convert("RGBA"), overlay).convert("RGB")


def _label_lines(detection: DrawableDetection, show_attributes: bool) -> list[str]:
    lines = [f"{detection.category} {detection.score:.2f}"]
    if show_attributes:
        lines.extend(f"{group}: {p.label} {p.score:.2f}" for group, p in detection.attributes.items())
    return lines


def render(
    image: ImageInput,
    detections: Sequence[DrawableDetection],
    *,
    source_size: tuple[int, int] | None,
    show_attributes: bool,
    show_masks: bool = True,
) -> Image.Image:
    """A new RGB image: ``image`` with the boxes and labels of ``detections`` drawn on it.

    Detections with a mask (and ``show_masks``) get it filled semi-transparently in their box
    colour under the boxes and labels.

    ``source_size`` is the (width, height) the boxes were computed on; when the image has
    another size (a thumbnail of the original) the boxes are scaled to it. ``None`` draws the
    boxes as they are. Higher-scoring labels are drawn last, so they stay readable where
    labels overlap.
    """
    # A copy: an image made from a numpy array may share the caller's memory.
    canvas = open_image(image).copy()
    width, height = canvas.size
    source_width, source_height = source_size or (0, 0)
    scale_x = width / source_width if source_width else 1.0
    scale_y = height / source_height if source_height else 1.0

    line_px = max(2, round(max(width, height) / 400))
    font = _font(max(11, round(min(width, height) / 40)))
    pad_px = max(2, line_px)
    ordered = sorted(detections, key=lambda d: d.score)
    if show_masks:
        canvas = _overlay_masks(canvas, ordered)
    draw = ImageDraw.Draw(canvas)
    boxes = [_scaled(d.box, scale_x, scale_y) for d in ordered]

    # Every box first, then every label, so no box line crosses a label.
    for detection, box in zip(ordered, boxes, strict=True):
        draw.rectangle(box, outline=category_colour(detection), width=line_px)
    for detection, (x1, y1, _, _) in zip(ordered, boxes, strict=True):
        colour = category_colour(detection)
        lines = _label_lines(detection, show_attributes)
        sizes = [draw.textbbox((0, 0), line, font=font) for line in lines]
        line_height = max(bottom for _, _, _, bottom in sizes) + pad_px
        block_w = max(right for _, _, right, _ in sizes) + 2 * pad_px
        block_h = line_height * len(lines) + pad_px
        # Above the box when there is room, else inside its top edge; always inside the image.
        left = min(max(0.0, x1), max(0.0, width - block_w))
        top = y1 - block_h if y1 - block_h >= 0 else y1
        top = min(max(0.0, top), max(0.0, height - block_h))
        draw.rectangle((left, top, left + block_w, top + block_h), fill=colour)
        for index, line in enumerate(lines):
            draw.text((left + pad_px, top + pad_px + index * line_height), line, fill=_text_colour(colour), font=font)
    return canvas
