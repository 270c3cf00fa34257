"""Draw detections on their image: boxes, category, score and attributes, readable at any size.

For people looking at results (notebooks, debugging, reports), not for the pipeline. Each
category keeps one colour across images; labels sit on a filled background in that colour, with
black or white text, whichever reads better on it. Line width and font size follow the image
size, so a 4000-pixel photo and a 320-pixel thumbnail are equally legible.

Usage::

    image = draw_detections("look.jpg", result)      # or result.draw("look.jpg")
    image.save("look.boxes.png")
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ._base import array_to_image
from ._exceptions import InvalidInput
from ._types import BoundingBox, Detection, ImageDetections, ImageInput

__all__ = ["category_colour", "draw_detections", "open_image"]

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


def category_colour(detection: Detection) -> tuple[int, int, int]:
    """The category's colour: by label-map index when known, else by a stable hash of the name."""
    if detection.category_index is not None and detection.category_index >= 0:
        key = detection.category_index
    else:
        key = zlib.crc32(detection.category.encode("utf-8"))
    return _PALETTE[key % len(_PALETTE)]


def open_image(image: ImageInput) -> Image.Image:
    """``image`` as an upright RGB PIL image, in the frame the server's boxes refer to.

    Encoded bytes, files and PIL images are turned by their EXIF orientation, as the server
    does before it detects; numpy arrays are taken as they are.
    """
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image).convert("RGB")
    if isinstance(image, np.ndarray):
        return array_to_image(image)
    if isinstance(image, bytes | bytearray | memoryview):
        source: io.BytesIO | str | os.PathLike[str] = io.BytesIO(bytes(image))
    elif isinstance(image, str | os.PathLike):
        source = image
    else:
        raise InvalidInput(f"cannot draw on a {type(image).__name__}; give bytes, a path, a PIL image or an array")
    try:
        with Image.open(source) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except OSError as exc:  # UnidentifiedImageError is an OSError
        raise InvalidInput(f"cannot open the image to draw on: {exc}") from exc


def _font(size_px: int) -> _Font:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = background
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _scaled(box: BoundingBox, scale_x: float, scale_y: float) -> tuple[float, float, float, float]:
    # Pillow refuses a rectangle whose corners are swapped, so a degenerate box stays a point.
    x1, y1 = box.x1 * scale_x, box.y1 * scale_y
    return x1, y1, max(x1, box.x2 * scale_x), max(y1, box.y2 * scale_y)


def _label_lines(detection: Detection, show_attributes: bool) -> list[str]:
    lines = [f"{detection.category} {detection.score:.2f}"]
    if show_attributes:
        lines.extend(f"{group}: {p.label} {p.score:.2f}" for group, p in detection.attributes.items())
    return lines


def draw_detections(
    image: ImageInput,
    result: ImageDetections | Sequence[Detection],
    *,
    show_attributes: bool = True,
) -> Image.Image:
    """A new RGB image: ``image`` with ``result``'s boxes and labels drawn; ``image`` is not changed.

    When the image is not the size the result was computed on (a thumbnail of the original),
    the boxes are scaled to it. Higher-scoring labels are drawn last, so they stay readable
    where labels overlap.
    """
    # A copy: an image made from a numpy array may share the caller's memory.
    canvas = open_image(image).copy()
    width, height = canvas.size
    if isinstance(result, ImageDetections):
        detections: Sequence[Detection] = result.detections
        scale_x = width / result.width if result.width else 1.0
        scale_y = height / result.height if result.height else 1.0
    else:
        detections = result
        scale_x = scale_y = 1.0

    line_px = max(2, round(max(width, height) / 400))
    font = _font(max(11, round(min(width, height) / 40)))
    pad_px = max(2, line_px)
    draw = ImageDraw.Draw(canvas)
    ordered = sorted(detections, key=lambda d: d.score)
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
