"""JPEG decode and letterbox on the GPU (nvJPEG through torchvision) for the GPU profile's ``preprocess``.

CPU decoding caps a GPU pipeline, so the GPU repository's ``preprocess`` model decodes JPEGs on
its GPU with ``torchvision.io.decode_jpeg(device="cuda")`` and resizes them there. Everything
nvJPEG cannot do falls back to :mod:`fashionbox.core.imaging` on the CPU: PNG and WebP, JPEGs it
refuses (CMYK, corrupt: the CPU path then raises the usual :class:`InvalidImageError`), and
machines without torchvision or CUDA when the device is ``auto``. The letterbox geometry
(:class:`LetterboxInfo`) is exactly the CPU one; pixels differ slightly (full-resolution decode
and an antialiased resize instead of DCT-domain downscaling).

Usage (the ``decode_device`` config parameter: ``cpu``, ``cuda`` or ``auto``)::

    decoder = select_decoder(DecodeSettings.from_parameters(params).decode_device, gpu_index=0)
    pixels, info = decoder.decode_letterbox(data, 320, DecodeLimits())
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from fashionbox.core.imaging import (
    PAD_VALUE,
    DecodedImage,
    DecodeLimits,
    LetterboxInfo,
    Pixels,
    decode_image,
    fitted_size,
    letterbox,
)
from fashionbox.core.serving import ParameterSet

__all__ = [
    "DECODE_DEVICES",
    "CpuDecoder",
    "DecodeSettings",
    "GpuDecoder",
    "ImageDecoder",
    "LetterboxGeometry",
    "TorchImageOps",
    "letterbox_geometry",
    "select_decoder",
    "torchvision_ops",
]

logger = logging.getLogger(__name__)

DECODE_DEVICES = ("cpu", "cuda", "auto")
_JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class DecodeSettings(ParameterSet):
    """The ``preprocess`` parameter choosing where JPEGs are decoded (absent: ``cpu``)."""

    decode_device: str = "cpu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decode_device not in DECODE_DEVICES:
            raise ValueError(f"decode_device must be one of {DECODE_DEVICES}, got {self.decode_device!r}")


class View(Protocol):
    """How an image-level network's processor makes its input (:class:`fashionbox.core.views.ViewRecipe`)."""

    @property
    def min_source_short_side(self) -> int: ...

    def apply(self, image: Image.Image) -> Pixels: ...


class ImageDecoder(Protocol):
    device: str

    def decode_letterbox(self, data: bytes, size: int, limits: DecodeLimits) -> tuple[Pixels, LetterboxInfo]: ...

    def decode_views(self, data: bytes, size: int, limits: DecodeLimits,
                     views: Sequence[View]) -> tuple[Pixels, LetterboxInfo, list[Pixels]]: ...


class CpuDecoder:
    """:func:`fashionbox.core.imaging.decode_image` then :func:`fashionbox.core.imaging.letterbox`."""

    device = "cpu"

    def decode_letterbox(self, data: bytes, size: int, limits: DecodeLimits) -> tuple[Pixels, LetterboxInfo]:
        return letterbox(decode_image(data, target_size=size, limits=limits), size)

    def decode_views(self, data: bytes, size: int, limits: DecodeLimits,
                     views: Sequence[View]) -> tuple[Pixels, LetterboxInfo, list[Pixels]]:
        """The letterbox and each view from one decode (at the resolution the largest view needs)."""
        decoded, made = self.decode(data, size, limits, views)
        pixels, info = letterbox(decoded, size)
        return pixels, info, made

    @staticmethod
    def decode(data: bytes, size: int, limits: DecodeLimits,
               views: Sequence[View] = ()) -> tuple[DecodedImage, list[Pixels]]:
        """The decoded image, not yet letterboxed (a rect letterbox's shape depends on the request's
        other images), and each view made from it."""
        decoded = decode_image(data, target_size=size, limits=limits,
                               min_short_side=max((view.min_source_short_side for view in views), default=0))
        return decoded, [view.apply(decoded.image) for view in views]


@dataclass(frozen=True)
class LetterboxGeometry:
    scale: float
    new_width: int
    new_height: int
    pad_x: int
    pad_y: int


def letterbox_geometry(width: int, height: int, size: int) -> LetterboxGeometry:
    """Where an upright ``width x height`` image lands in the square letterbox (as ``imaging.letterbox``)."""
    scale, new_w, new_h = fitted_size(width, height, size)
    return LetterboxGeometry(scale, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2)


@dataclass(frozen=True)
class _Header:
    width: int
    """After EXIF orientation."""
    height: int
    orientation: int


def _jpeg_header(data: bytes, limits: DecodeLimits) -> _Header | None:
    """The header of a JPEG within limits, or None: then the CPU path decides (and words any error)."""
    if not data.startswith(_JPEG_MAGIC) or len(data) > limits.max_image_bytes:
        return None
    try:
        image = Image.open(io.BytesIO(data), formats=("JPEG",))  # reads the header only
        width, height = image.size
        orientation = int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:
        return None
    if width < 1 or height < 1 or width * height > limits.max_pixels or orientation not in range(1, 9):
        return None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return _Header(width, height, orientation)


class TorchImageOps:
    """Decode, EXIF orientation and letterbox on torch tensors on ``device``.

    ``decode_jpeg(data, device)`` returns an RGB uint8 ``[3, H, W]`` tensor as stored in the file
    (before EXIF orientation); :func:`torchvision_ops` gives nvJPEG's.
    """

    def __init__(self, device: str, decode_jpeg: Callable[[bytes, str], Any]) -> None:
        import torch

        self.torch = torch
        self.device = device
        self._decode_jpeg = decode_jpeg

    def decode(self, data: bytes) -> Any:
        return self._decode_jpeg(data, self.device)

    def orient(self, image: Any, orientation: int) -> Any:
        """Apply EXIF orientation to ``[3, H, W]``, as ``PIL.ImageOps.exif_transpose`` does."""
        rot90 = self.torch.rot90
        steps: dict[int, Callable[[Any], Any]] = {
            1: lambda t: t,
            2: lambda t: t.flip(2),
            3: lambda t: t.flip(1).flip(2),
            4: lambda t: t.flip(1),
            5: lambda t: t.transpose(1, 2),
            6: lambda t: rot90(t, -1, (1, 2)),
            7: lambda t: t.transpose(1, 2).flip(1).flip(2),
            8: lambda t: rot90(t, 1, (1, 2)),
        }
        return steps[orientation](image)

    def letterbox(self, image: Any, geometry: LetterboxGeometry, size: int) -> Pixels:
        """Resize ``[3, H, W]`` uint8 (bilinear, antialiased) into a padded ``size`` square; HWC on the host."""
        torch = self.torch
        resized = torch.nn.functional.interpolate(
            image[None].float(), size=(geometry.new_height, geometry.new_width), mode="bilinear",
            align_corners=False, antialias=True)[0]
        canvas = torch.full((3, size, size), PAD_VALUE, dtype=torch.uint8, device=image.device)
        canvas[:, geometry.pad_y:geometry.pad_y + geometry.new_height,
               geometry.pad_x:geometry.pad_x + geometry.new_width] = resized.round().clamp(0, 255).to(torch.uint8)
        pixels: Pixels = np.ascontiguousarray(canvas.permute(1, 2, 0).cpu().numpy())
        return pixels


def torchvision_ops(device: str = "cuda") -> TorchImageOps:
    """nvJPEG through ``torchvision.io.decode_jpeg``; ImportError/RuntimeError when it cannot run here."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as exc:
        raise ImportError("GPU JPEG decoding needs torch and torchvision with CUDA (pip install torchvision)") from exc
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("GPU JPEG decoding needs CUDA, and torch sees no CUDA device")

    def decode(data: bytes, on: str) -> Any:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=on)

    return TorchImageOps(device, decode)


class GpuDecoder:
    """JPEGs through ``ops`` (nvJPEG on the GPU); everything else, and every failure, through the CPU."""

    device = "cuda"

    def __init__(self, ops: TorchImageOps, cpu: ImageDecoder | None = None) -> None:
        self.ops = ops
        self.cpu = cpu or CpuDecoder()

    def decode_views(self, data: bytes, size: int, limits: DecodeLimits,
                     views: Sequence[View]) -> tuple[Pixels, LetterboxInfo, list[Pixels]]:
        """On the CPU: the views must be the family processor's own (PIL) resize, bit for bit."""
        return self.cpu.decode_views(data, size, limits, views)

    def decode_letterbox(self, data: bytes, size: int, limits: DecodeLimits) -> tuple[Pixels, LetterboxInfo]:
        header = _jpeg_header(data, limits)
        if header is None:
            return self.cpu.decode_letterbox(data, size, limits)
        try:
            image = self.ops.orient(self.ops.decode(data), header.orientation)
        except Exception as exc:  # CMYK, arithmetic coding, corrupt data: the CPU decides
            logger.debug("GPU JPEG decode failed (%s); decoding on the CPU", exc)
            return self.cpu.decode_letterbox(data, size, limits)
        if tuple(image.shape) != (3, header.height, header.width):
            return self.cpu.decode_letterbox(data, size, limits)
        geometry = letterbox_geometry(header.width, header.height, size)
        pixels = self.ops.letterbox(image, geometry, size)
        info = LetterboxInfo(header.width, header.height, geometry.scale, float(geometry.pad_x), float(geometry.pad_y))
        return pixels, info


def select_decoder(device: str, *, gpu_index: int = 0,
                   load_ops: Callable[[str], TorchImageOps] = torchvision_ops) -> ImageDecoder:
    """``cpu``: the CPU decoder; ``cuda``: nvJPEG or an error; ``auto``: nvJPEG where it runs, else the CPU.

    ``gpu_index`` is the GPU Triton placed the model instance on (``model_instance_device_id``).
    """
    if device not in DECODE_DEVICES:
        raise ValueError(f"decode_device must be one of {DECODE_DEVICES}, got {device!r}")
    if device == "cpu":
        return CpuDecoder()
    try:
        return GpuDecoder(load_ops(f"cuda:{gpu_index}"))
    except (ImportError, RuntimeError) as exc:
        if device == "cuda":
            raise RuntimeError(f"decode_device=cuda, but {exc}") from exc
        logger.warning("decoding images on the CPU: %s", exc)
        return CpuDecoder()
