"""Draw detections on their image: boxes, category, score, attributes and masks, readable at any size.

For people looking at results (notebooks, debugging, reports), not for the pipeline. Each
category keeps one colour across images; labels sit on a filled background in that colour, with
black or white text, whichever reads better on it; a detection's mask, when the server sent one,
is filled semi-transparently in the same colour. Line width and font size follow the image size,
so a 4000-pixel photo and a 320-pixel thumbnail are equally legible.

Usage::

    image = draw_detections("look.jpg", result)      # or result.draw("look.jpg")
    image.save("look.boxes.png")
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from ._drawing import category_colour as _category_colour
from ._drawing import render
from ._images import ImageInput, open_image
from ._types import Detection, ImageDetections

__all__ = ["category_colour", "draw_detections", "open_image"]


def category_colour(detection: Detection) -> tuple[int, int, int]:
    """The category's colour: by label-map index when known, else by a stable hash of the name."""
    return _category_colour(detection)


def draw_detections(
    image: ImageInput,
    result: ImageDetections | Sequence[Detection],
    *,
    show_attributes: bool = True,
    show_masks: bool = True,
) -> Image.Image:
    """A new RGB image: ``image`` with ``result``'s boxes, labels and masks drawn; ``image`` is not changed.

    When the image is not the size the result was computed on (a thumbnail of the original),
    the boxes are scaled to it. Higher-scoring labels are drawn last, so they stay readable
    where labels overlap.
    """
    if isinstance(result, ImageDetections):
        return render(image, result.detections, source_size=(result.width, result.height),
                      show_attributes=show_attributes, show_masks=show_masks)
    return render(image, result, source_size=None, show_attributes=show_attributes, show_masks=show_masks)
