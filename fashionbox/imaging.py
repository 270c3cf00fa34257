"""Image decoding, letterboxing and garment crops: the pixels every model sees.

The same functions run in the ``preprocess`` and ``postprocess`` Triton models, in the
in-process reference pipeline and in training, so what the networks learn on is exactly what
they are served. Pure numpy + Pillow; no torch.

Usage::

    decoded = decode_image(jpeg_bytes, target_size=320)      # raises InvalidImageError
    pixels, info = letterbox(decoded, 320)                    # uint8 [320, 320, 3], LetterboxInfo
    crops = crop_garments(pixels, boxes_in_letterbox_px, 96)  # uint8 [n, 96, 96, 3]
    boxes_original = info.to_original(boxes_in_letterbox_px)
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "PAD_VALUE",
    "DecodeLimits",
    "DecodedImage",
    "InvalidImageError",
    "LetterboxInfo",
    "crop_garments",
    "decode_image",
    "letterbox",
]

PAD_VALUE = 114
"""Grey used to pad the letterbox (and the crop of a box with no area inside the image)."""

CROP_MARGIN = 0.08
"""Context kept around a garment box on each side, as a fraction of the box size."""

_FORMATS = ("JPEG", "PNG", "WEBP")

FloatArray = npt.NDArray[np.float32]
Pixels = npt.NDArray[np.uint8]
ArrayLike = npt.NDArray[Any] | Sequence[Sequence[float]]


class InvalidImageError(ValueError):
    """The bytes are not an image this server accepts; the message says why, for a person."""


@dataclass(frozen=True)
class DecodeLimits:
    max_image_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 64_000_000
    """Checked against the size declared in the header, before any pixel is decoded."""


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    """RGB, EXIF-oriented, possibly decoded at a reduced scale (JPEG DCT scaling)."""
    width: int
    """Width of the full-resolution image after EXIF orientation, in pixels."""
    height: int


@dataclass(frozen=True)
class LetterboxInfo:
    width: int
    height: int
    scale: float
    """Letterbox pixels per original pixel."""
    pad_x: float
    pad_y: float

    def as_array(self) -> FloatArray:
        return np.array([self.width, self.height, self.scale, self.pad_x, self.pad_y], dtype=np.float32)

    @classmethod
    def from_array(cls, values: npt.NDArray[Any]) -> LetterboxInfo:
        w, h, scale, pad_x, pad_y = (float(v) for v in np.asarray(values, dtype=np.float32).reshape(5))
        return cls(round(w), round(h), scale, pad_x, pad_y)

    def to_original(self, boxes: ArrayLike) -> FloatArray:
        """Letterbox-pixel boxes ``[n, 4]`` to original-image pixels, clipped to the image."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] - np.float32(self.pad_x)) / np.float32(self.scale)
        out[:, 1::2] = (boxes[:, 1::2] - np.float32(self.pad_y)) / np.float32(self.scale)
        np.clip(out[:, 0::2], 0, self.width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.height, out=out[:, 1::2])
        return out

    def to_letterbox(self, boxes: ArrayLike) -> FloatArray:
        """Original-image boxes ``[n, 4]`` to letterbox pixels (for training targets)."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = boxes[:, 0::2] * np.float32(self.scale) + np.float32(self.pad_x)
        out[:, 1::2] = boxes[:, 1::2] * np.float32(self.scale) + np.float32(self.pad_y)
        return out


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not fail an otherwise good image
        orientation = 1
    if orientation in (5, 6, 7, 8):
        return height, width
    return width, height


def decode_image(data: bytes, *, target_size: int, limits: DecodeLimits | None = None) -> DecodedImage:
    """Decode JPEG/PNG/WebP bytes to an RGB image, checking limits before decoding pixels.

    JPEGs are decoded at the smallest DCT scale that still covers ``target_size`` on the long
    side (Pillow ``draft``), which is 2-3x cheaper than a full decode for photos.
    """
    limits = limits or DecodeLimits()
    if not data:
        raise InvalidImageError("empty image: the request carried 0 bytes")
    if len(data) > limits.max_image_bytes:
        raise InvalidImageError(
            f"image is {len(data)} bytes, over the limit of {limits.max_image_bytes} bytes"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImageError(
            "not a JPEG, PNG or WebP image (unrecognised header)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"image declares too many pixels: {exc}") from None
    except Exception as exc:
        raise InvalidImageError(f"cannot read image header: {exc}") from None

    width, height = image.size
    if width * height > limits.max_pixels:
        raise InvalidImageError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}"
        )
    if width < 1 or height < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated WebP/PNG: the first frame is the picture

    oriented_w, oriented_h = _oriented_size(image)
    try:
        if image.format == "JPEG":
            long_side = max(width, height)
            if long_side > target_size:
                requested = (max(1, width * target_size // long_side), max(1, height * target_size // long_side))
                image.draft("RGB", requested)
        image.load()
        upright: Image.Image = ImageOps.exif_transpose(image)
        if upright.mode != "RGB":
            upright = _to_rgb(upright)
    except InvalidImageError:
        raise
    except Exception as exc:
        raise InvalidImageError(f"corrupt or truncated {image.format or 'image'} data: {exc}") from None
    return DecodedImage(image=upright, width=oriented_w, height=oriented_h)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as a product photo on a white page would show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey (PNG): 65535 is white, as every viewer shows it. Not stretched to the
        # image's own peak, which would turn a dark or uniform grey picture white.
        array = np.asarray(image, dtype=np.float32)
        scaled = np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    return image.convert("RGB")


def letterbox(decoded: DecodedImage, size: int) -> tuple[Pixels, LetterboxInfo]:
    """Resize (keeping aspect) and pad to ``size x size``; returns uint8 HWC and the mapping."""
    scale = size / max(decoded.width, decoded.height)
    new_w = max(1, min(size, round(decoded.width * scale)))
    new_h = max(1, min(size, round(decoded.height * scale)))
    resized = decoded.image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    pad_x = (size - new_w) // 2
    pad_y = (size - new_h) // 2
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = np.asarray(resized, dtype=np.uint8)
    info = LetterboxInfo(decoded.width, decoded.height, scale, float(pad_x), float(pad_y))
    return canvas, info


def crop_garments(pixels: Pixels, boxes: ArrayLike, size: int, *, margin: float = CROP_MARGIN) -> Pixels:
    """Square crops ``[n, size, size, 3]`` of letterbox ``pixels`` around ``boxes`` (letterbox px).

    Each box is widened by ``margin`` on every side and resized (not aspect-preserving) to
    ``size``; the attribute heads are trained on crops made by this same function.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    if len(boxes) == 0:
        return out
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    limit_w, limit_h = image.size
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        box = (
            max(0.0, x1 - margin * bw),
            max(0.0, y1 - margin * bh),
            min(float(limit_w), x2 + margin * bw),
            min(float(limit_h), y2 + margin * bh),
        )
        if box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0:
            out[i] = PAD_VALUE
            continue
        out[i] = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
    return out
