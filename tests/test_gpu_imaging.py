"""fashionbox.core.gpu_imaging: where JPEGs are decoded, and the fallbacks to the CPU.

The GPU path runs here on torch's CPU device with Pillow standing in for nvJPEG, so orientation,
letterbox geometry and the fallbacks are tested without a GPU; the nvJPEG test carries the
``cuda`` marker.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fashionbox.core.gpu_imaging import (
    CpuDecoder,
    DecodeSettings,
    GpuDecoder,
    TorchImageOps,
    letterbox_geometry,
    select_decoder,
    torchvision_ops,
)
from fashionbox.core.imaging import DecodedImage, DecodeLimits, InvalidImageError, letterbox
from fashionbox.core.serving import Parameters

torch = pytest.importorskip("torch")

SIZE = 96
LIMITS = DecodeLimits()


def _picture(width: int = 200, height: int = 120) -> Image.Image:
    """Asymmetric on purpose: a wrong rotation or flip shows as a large pixel difference."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    rgb[: height // 3, : width // 4] = (250, 20, 20)
    return Image.fromarray(rgb)


def _encode(image: Image.Image, fmt: str = "JPEG", orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buffer, fmt, quality=95, exif=exif) if fmt == "JPEG" else image.save(buffer, fmt)
    return buffer.getvalue()


class PillowAsNvjpeg:
    """Decodes as nvJPEG does: RGB ``[3, H, W]`` as stored, EXIF orientation not applied."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, data: bytes, device: str) -> Any:
        self.calls += 1
        if self.fail:
            raise RuntimeError("nvjpeg: unsupported JPEG")
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(device)


def _gpu(fail: bool = False) -> tuple[GpuDecoder, PillowAsNvjpeg]:
    decode = PillowAsNvjpeg(fail)
    return GpuDecoder(TorchImageOps("cpu", decode)), decode


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_decodes_on_the_device_with_the_cpu_geometry_in_every_exif_orientation(orientation: int) -> None:
    data = _encode(_picture(), orientation=orientation)
    decoder, decode = _gpu()
    pixels, info = decoder.decode_letterbox(data, SIZE, LIMITS)
    want_pixels, want_info = CpuDecoder().decode_letterbox(data, SIZE, LIMITS)

    assert decode.calls == 1
    assert info == want_info
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - want_pixels.astype(int)).mean() < 3.0  # resampling differs, not the picture


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_formats_nvjpeg_cannot_decode_go_to_the_cpu(fmt: str) -> None:
    data = _encode(_picture(), fmt)
    decoder, decode = _gpu()
    pixels, info = decoder.decode_letterbox(data, SIZE, LIMITS)
    want_pixels, want_info = CpuDecoder().decode_letterbox(data, SIZE, LIMITS)
    assert decode.calls == 0
    assert info == want_info and np.array_equal(pixels, want_pixels)


def test_a_jpeg_nvjpeg_refuses_is_decoded_on_the_cpu() -> None:
    data = _encode(_picture())
    decoder, decode = _gpu(fail=True)
    pixels, info = decoder.decode_letterbox(data, SIZE, LIMITS)
    want_pixels, want_info = CpuDecoder().decode_letterbox(data, SIZE, LIMITS)
    assert decode.calls == 1
    assert info == want_info and np.array_equal(pixels, want_pixels)


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (_encode(_picture())[:40], LIMITS, "corrupt or truncated|cannot read"),
        (b"", LIMITS, "empty image"),
        (_encode(_picture()), DecodeLimits(max_image_bytes=100), "over the limit"),
        (_encode(_picture()), DecodeLimits(max_pixels=1000), "over the limit"),
    ],
)
def test_bad_or_oversized_jpegs_fail_with_the_cpu_messages(data: bytes, limits: DecodeLimits, message: str) -> None:
    decoder, _ = _gpu()
    with pytest.raises(InvalidImageError, match=message):
        decoder.decode_letterbox(data, SIZE, limits)


@pytest.mark.parametrize(("width", "height"), [(200, 120), (120, 200), (96, 96), (1, 500), (4000, 3)])
def test_the_letterbox_geometry_is_the_cpu_letterbox_geometry(width: int, height: int) -> None:
    _, info = letterbox(DecodedImage(Image.new("RGB", (width, height)), width, height), SIZE)
    geometry = letterbox_geometry(width, height, SIZE)
    assert (geometry.scale, float(geometry.pad_x), float(geometry.pad_y)) == (info.scale, info.pad_x, info.pad_y)


def test_the_decode_device_parameter_defaults_to_the_cpu_and_is_checked() -> None:
    assert DecodeSettings.from_parameters(Parameters({})).decode_device == "cpu"
    assert DecodeSettings.from_parameters(Parameters({"decode_device": "auto"})).decode_device == "auto"
    with pytest.raises(ValueError, match="decode_device"):
        DecodeSettings(decode_device="tpu")


def _unavailable(device: str) -> TorchImageOps:
    raise ImportError("GPU JPEG decoding needs torch and torchvision with CUDA (pip install torchvision)")


def test_auto_falls_back_to_the_cpu_with_a_warning_when_nvjpeg_cannot_run(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fashionbox.core.gpu_imaging"):
        decoder = select_decoder("auto", load_ops=_unavailable)
    assert isinstance(decoder, CpuDecoder)
    assert "decoding images on the CPU" in caplog.text and "torchvision" in caplog.text


def test_cuda_refuses_to_start_without_nvjpeg_and_cpu_never_tries_it() -> None:
    with pytest.raises(RuntimeError, match=r"decode_device=cuda, but .*torchvision"):
        select_decoder("cuda", load_ops=_unavailable)
    assert isinstance(select_decoder("cpu", load_ops=_unavailable), CpuDecoder)
    placed: list[str] = []

    def load(device: str) -> TorchImageOps:
        placed.append(device)
        return TorchImageOps("cpu", PillowAsNvjpeg())

    assert isinstance(select_decoder("auto", gpu_index=3, load_ops=load), GpuDecoder)
    assert placed == ["cuda:3"]  # the GPU Triton placed the instance on
    with pytest.raises(ValueError, match="decode_device"):
        select_decoder("gpu")


def _nvjpeg_missing() -> str | None:
    try:
        torchvision_ops("cuda")
    except (ImportError, RuntimeError) as exc:
        return str(exc)
    return None


@pytest.mark.cuda
@pytest.mark.skipif(_nvjpeg_missing() is not None, reason=str(_nvjpeg_missing()))
@pytest.mark.parametrize("orientation", [1, 6])
def test_nvjpeg_on_the_gpu_matches_the_cpu_decode(orientation: int) -> None:
    data = _encode(_picture(1280, 960), orientation=orientation)
    pixels, info = GpuDecoder(torchvision_ops("cuda")).decode_letterbox(data, 320, LIMITS)
    want_pixels, want_info = CpuDecoder().decode_letterbox(data, 320, LIMITS)
    assert info == want_info
    assert np.abs(pixels.astype(int) - want_pixels.astype(int)).mean() < 3.0
