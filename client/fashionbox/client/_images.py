"""Images as the client takes them in: the accepted kinds and the two conversions every caller shares.

The bottom of the package's import graph next to ``_exceptions``: ``_base`` (encoding requests),
``_types`` (the ``ImageInput`` alias in result signatures) and the drawing modules all import
from here, and this module imports none of them, so the package stays free of import cycles.
"""

from __future__ import annotations

import io
import os
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from ._exceptions import InvalidInput

__all__ = ["ImageInput", "array_to_image", "open_image"]

ImageInput: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image | npt.NDArray[Any]
"""What ``detect`` and ``draw`` accept: encoded bytes, a file path (``str`` is always a path),
a PIL image, or a numpy ``uint8`` array ``[height, width, 3]`` in RGB order."""


def array_to_image(array: npt.NDArray[Any]) -> Image.Image:
    """A PIL image from a ``uint8 [height, width, 3]`` RGB array; anything else is refused.

    Refused rather than converted, because the usual mistakes (float 0-1 pixels, BGR from
    OpenCV, a batch dimension) cannot be repaired by guessing and would give quietly wrong boxes.
    """
    if array.dtype != np.uint8:
        raise InvalidInput(f"image arrays must be uint8, got {array.dtype} (scale floats to 0-255 and cast)")
    if array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInput(f"image arrays must be [height, width, 3] RGB, got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInput(f"image array has no pixels: shape {tuple(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(array))


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
