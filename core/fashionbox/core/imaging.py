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
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from fashionbox.contract import ENV_PREFIX

__all__ = [
    "PAD_VALUE",
    "DecodeLimits",
    "DecodedImage",
    "InvalidImageError",
    "LetterboxInfo",
    "crop_garments",
    "crop_regions",
    "decode_image",
    "fitted_size",
    "letterbox",
    "pillow_pixel_ceiling",
    "rect_canvas",
    "whole_image_crop",
]

PAD_VALUE = 114
"""Grey used to pad the letterbox (and the crop of a box with no area inside the image)."""

CROP_MARGIN = 0.08
"""Context kept around a garment box on each side, as a fraction of the box size."""

_FORMATS = ("JPEG", "PNG", "WEBP")

# What people send by mistake, recognised by its first bytes so the refusal can say what it was.
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"8BPS", "a Photoshop document"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
)
_HEIF_BRANDS = {b"heic": "a HEIC image", b"heix": "a HEIC image", b"mif1": "a HEIF image",
                b"avif": "an AVIF image"}

FloatArray = npt.NDArray[np.float32]
Pixels = npt.NDArray[np.uint8]
ArrayLike = npt.NDArray[Any] | Sequence[Sequence[float]]


class InvalidImageError(ValueError):
    """The bytes are not an image this server accepts; the message says why, for a person."""


@dataclass(frozen=True)
class DecodeLimits:
    """What one image may cost the server; larger ones are refused before decoding.

    ``max_pixels`` bounds the memory and time one image can take, whatever its byte size: a
    PNG needs 4-5 bytes per pixel (RGB) to about 20 (RGBA, converted over white), so a 250 kB
    RGBA PNG at the default limit costs about 1.2 GB and 1.5 s (docs/RELIABILITY.md). JPEGs are
    decoded DCT-scaled and cost far less.
    """

    max_image_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 64_000_000
    """Checked against the size declared in the header, before any pixel is decoded."""

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DecodeLimits.{name} must be a positive integer, got {value!r}")
        ceiling = pillow_pixel_ceiling()
        if ceiling is not None and self.max_pixels > ceiling:
            raise ValueError(
                f"DecodeLimits.max_pixels must be at most {ceiling}: Pillow refuses larger images "
                f"as decompression bombs; got {self.max_pixels}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], defaults: DecodeLimits | None = None) -> DecodeLimits:
        """``defaults`` with ``FASHIONBOX_MAX_IMAGE_BYTES`` / ``FASHIONBOX_MAX_PIXELS`` applied.

        The serve-time override of the limits the converter wrote into the ``preprocess``
        model's config; an unset or empty variable keeps the default.
        """
        base = defaults or cls()
        values = {"max_image_bytes": base.max_image_bytes, "max_pixels": base.max_pixels}
        for name in values:
            variable = f"{ENV_PREFIX}{name.upper()}"
            text = environ.get(variable, "").strip()
            if not text:
                continue
            try:
                values[name] = int(text.replace("_", ""))
            except ValueError:
                raise ValueError(f"{variable} must be a positive integer, got {text!r}") from None
        return cls(**values)


def pillow_pixel_ceiling() -> int | None:
    """Pixels above which Pillow itself refuses to open an image (``None``: no ceiling set)."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


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

    @property
    def content_box(self) -> FloatArray:
        """``[4]``: where the photo lies in the letterbox (x1, y1, x2, y2 in letterbox pixels), padding excluded."""
        box: FloatArray = self.to_letterbox(np.array([[0.0, 0.0, self.width, self.height]], dtype=np.float32))[0]
        return box

    def to_letterbox(self, boxes: ArrayLike) -> FloatArray:
        """Original-image boxes ``[n, 4]`` to letterbox pixels (for training targets)."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = boxes[:, 0::2] * np.float32(self.scale) + np.float32(self.pad_x)
        out[:, 1::2] = boxes[:, 1::2] * np.float32(self.scale) + np.float32(self.pad_y)
        return out


# EXIF orientation -> the transpose that makes the stored pixels upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not fail an otherwise good image
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _describe_refused_format(data: bytes) -> str:
    """Why Pillow found no JPEG, PNG or WebP in ``data``, in words a person understands."""
    head = data[:16]
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        kind = "JPEG" if head.startswith(b"\xff") else "PNG" if head.startswith(b"\x89") else "WebP"
        return f"cannot read image header: the {kind} header is corrupt"
    for signature, what in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return f"not a JPEG, PNG or WebP image (it is {what})"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return f"not a JPEG, PNG or WebP image (it is {_HEIF_BRANDS[head[8:12]]})"
    sample = data[:512]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:  # text cut inside its last character is still text
        text = sample[: exc.start].decode("utf-8") if exc.start >= len(sample) - 3 else ""
    if text and all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        markup = text.lstrip().lower().startswith(("<?xml", "<svg", "<!doctype", "<html"))
        return f"not a JPEG, PNG or WebP image (it is {'markup (SVG/HTML/XML)' if markup else 'text'})"
    return "not a JPEG, PNG or WebP image (unrecognised header)"


def _declared_pixels(exc: Exception) -> str:
    # Pillow's message: "Image size (900000000 pixels) exceeds limit of ... pixels, ...".
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return found.group(1) if found else "too many"


def decode_image(data: bytes, *, target_size: int, limits: DecodeLimits | None = None,
                 min_short_side: int = 0) -> DecodedImage:
    """Decode JPEG/PNG/WebP bytes to an RGB image, checking limits before decoding pixels.

    JPEGs are decoded at the smallest DCT scale that still covers ``target_size`` on the long
    side (Pillow ``draft``), which is 2-3x cheaper than a full decode for photos; ``min_short_side``
    keeps at least that many pixels on the short side too (what an image-level view needs). Any bytes give
    either a :class:`DecodedImage` or :class:`InvalidImageError` (``tests/fuzz_decode.py``).
    """
    with warnings.catch_warnings():
        # Pillow warns about what it skips in damaged files (EXIF tags, APNG chunks) and about
        # large images (max_pixels decides those). The image is served or refused either way;
        # a warning per hostile request would flood the server log, and an "error" filter
        # would turn a servable image into a refusal.
        warnings.simplefilter("ignore")
        return _decode(data, target_size, limits or DecodeLimits(), min_short_side)


def _decode(data: bytes, target_size: int, limits: DecodeLimits, min_short_side: int = 0) -> DecodedImage:
    if not data:
        raise InvalidImageError("empty image: the request carried 0 bytes")
    if len(data) > limits.max_image_bytes:
        raise InvalidImageError(
            f"image is {len(data)} bytes, over the limit of {limits.max_image_bytes} bytes"
        )
    try:
        image = Image.open(io.BytesIO(data), formats=_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImageError(_describe_refused_format(data)) from None
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(
            f"image declares {_declared_pixels(exc)} pixels, over the limit of {limits.max_pixels}"
        ) from None
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

    orientation = _orientation(image)
    oriented_w, oriented_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    try:
        if image.format == "JPEG":
            long_side, short_side = max(width, height), min(width, height)
            if short_side and min_short_side * long_side > target_size * short_side:
                target_size = -(-min_short_side * long_side // short_side)  # the short side needs more
            if long_side > target_size:
                requested = (max(1, width * target_size // long_side), max(1, height * target_size // long_side))
                image.draft("RGB", requested)
        image.load()
        upright: Image.Image = image.transpose(_UPRIGHT[orientation]) if orientation != 1 else image
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


def fitted_size(width: int, height: int, size: int) -> tuple[float, int, int]:
    """The scale that puts the long side of a ``width x height`` image at ``size``, and the resized
    width and height: where every letterbox (square, rect, the GPU decoder's) puts the image."""
    scale = size / max(width, height)
    return scale, max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))


def rect_canvas(width: int, height: int, size: int, stride: int, min_side: int = 0) -> tuple[int, int]:
    """``(height, width)`` of the smallest letterbox around a ``width x height`` image resized to ``size``
    on its long side, padded on the short side to the nearest size that leaves a multiple of ``stride``
    of padding, as Ultralytics' ``LetterBox(auto=True)`` pads (its predictor's ``rect`` inference):
    a 1280x960 photo at 640 gets 640x480 instead of 640x640. ``stride`` must divide ``size``.
    ``min_side`` (a multiple of ``stride`` up to ``size``; 0: none): no side shorter than it, for a detector
    that selects a fixed number of queries among its encoder tokens (a 10:1 strip at 640 gets 640x128
    rather than 640x64 where its min side is 128)."""
    if stride < 1 or size % stride:
        raise ValueError(f"the letterbox stride {stride} must divide its size {size}")
    if min_side < 0 or min_side % stride or min_side > size:
        raise ValueError(f"the letterbox's min side {min_side} must be a multiple of its stride {stride} up to its "
                         f"size {size}")
    _, new_w, new_h = fitted_size(width, height, size)
    return max(min_side, new_h + (size - new_h) % stride), max(min_side, new_w + (size - new_w) % stride)


def letterbox(decoded: DecodedImage, size: int, *,
              canvas: tuple[int, int] | None = None) -> tuple[Pixels, LetterboxInfo]:
    """Resize (keeping aspect, long side ``size``) and pad, centred, to ``size x size`` or to ``canvas``
    (``(height, width)``, at least the resized image: :func:`rect_canvas`); uint8 HWC and the mapping."""
    scale, new_w, new_h = fitted_size(decoded.width, decoded.height, size)
    canvas_h, canvas_w = canvas if canvas is not None else (size, size)
    if canvas_h < new_h or canvas_w < new_w:
        raise ValueError(f"a {canvas_w}x{canvas_h} letterbox cannot hold the image resized to {new_w}x{new_h}")
    resized = decoded.image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    pixels = np.full((canvas_h, canvas_w, 3), PAD_VALUE, dtype=np.uint8)
    pad_x = (canvas_w - new_w) // 2
    pad_y = (canvas_h - new_h) // 2
    pixels[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = np.asarray(resized, dtype=np.uint8)
    info = LetterboxInfo(decoded.width, decoded.height, scale, float(pad_x), float(pad_y))
    return pixels, info


def crop_regions(boxes: ArrayLike, width: int, height: int, *, margin: float = CROP_MARGIN) -> npt.NDArray[np.float32]:
    """The region ``[n, 4]`` (``x1, y1, x2, y2``) each garment crop covers, in the frame of ``boxes``.

    Each box widened by ``margin`` of its size on every side and clipped to the ``width`` x
    ``height`` frame. One definition for :func:`crop_garments` (the attribute heads' crops), the
    mask head's targets and pasting its masks back, so the three agree on the geometry.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    bw = np.maximum(boxes[:, 2] - boxes[:, 0], 1.0)
    bh = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    regions: npt.NDArray[np.float32] = np.stack([
        np.maximum(0.0, boxes[:, 0] - margin * bw),
        np.maximum(0.0, boxes[:, 1] - margin * bh),
        np.minimum(float(width), boxes[:, 2] + margin * bw),
        np.minimum(float(height), boxes[:, 3] + margin * bh),
    ], axis=1).astype(np.float32)
    return regions


def crop_garments(pixels: Pixels, boxes: ArrayLike, size: int, *, margin: float = CROP_MARGIN) -> Pixels:
    """Square crops ``[n, size, size, 3]`` of letterbox ``pixels`` around ``boxes`` (letterbox px).

    Each box is widened by ``margin`` on every side (:func:`crop_regions`) and resized (not
    aspect-preserving) to ``size``; the attribute heads are trained on crops made by this same
    function.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    if len(boxes) == 0:
        return out
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    regions = crop_regions(boxes, image.size[0], image.size[1], margin=margin)
    for i, region in enumerate(regions.tolist()):
        x1, y1, x2, y2 = region
        if x2 - x1 < 1.0 or y2 - y1 < 1.0:
            out[i] = PAD_VALUE
            continue
        out[i] = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=(x1, y1, x2, y2)),
                            dtype=np.uint8)
    return out


def whole_image_crop(pixels: Pixels, info: LetterboxInfo, size: int) -> Pixels:
    """``[1, size, size, 3]``: the whole photo inside letterbox ``pixels`` (its padding left out) as one
    crop, resized like a garment crop (:func:`crop_garments`, no margin). What the default model's
    image-level heads (product vertical, image embedding) read, in training and in serving alike."""
    return crop_garments(pixels, info.content_box[None, :], size, margin=0.0)
