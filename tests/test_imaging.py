"""fashionbox.core.imaging: decoding (formats, EXIF, modes, limits, errors), letterboxing and garment crops."""

from __future__ import annotations

import io
import re
import struct
from typing import Any

import numpy as np
import pytest
from fuzz_decode import png_bytes
from numpy.typing import NDArray
from PIL import Image

from fashionbox.core.imaging import (
    PAD_VALUE,
    DecodedImage,
    DecodeLimits,
    InvalidImageError,
    LetterboxInfo,
    crop_garments,
    decode_image,
    letterbox,
    rect_canvas,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
JPEG_TOLERANCE = 12


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _red_over_blue(width: int = 60, height: int = 40) -> Image.Image:
    """An RGB picture whose top half is red and bottom half blue: which way is up is visible."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[: height // 2] = RED
    array[height // 2 :] = BLUE
    return Image.fromarray(array)


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _pixels(decoded: DecodedImage) -> NDArray[np.uint8]:
    return np.asarray(decoded.image, dtype=np.uint8)


def _assert_close_to(pixels: NDArray[np.uint8], colour: tuple[int, int, int], tolerance: int) -> None:
    difference = np.abs(pixels.astype(np.int16) - np.array(colour, dtype=np.int16))
    assert int(difference.max()) <= tolerance, f"pixels differ from {colour} by up to {int(difference.max())}"


# -- formats ------------------------------------------------------------------------------


def test_png_decodes_to_the_exact_rgb_pixels() -> None:
    image = _noise(30, 20)

    decoded = decode_image(_encode(image, "PNG"), target_size=64)

    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (30, 20)
    np.testing.assert_array_equal(_pixels(decoded), np.asarray(image))


def test_lossless_webp_decodes_to_the_exact_rgb_pixels() -> None:
    image = _noise(30, 20)

    decoded = decode_image(_encode(image, "WEBP", lossless=True), target_size=64)

    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (30, 20)
    np.testing.assert_array_equal(_pixels(decoded), np.asarray(image))


def test_jpeg_decodes_to_rgb_close_to_the_original() -> None:
    decoded = decode_image(_encode(_red_over_blue(), "JPEG", quality=95), target_size=64)

    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (60, 40)
    _assert_close_to(_pixels(decoded)[:16], RED, JPEG_TOLERANCE)
    _assert_close_to(_pixels(decoded)[24:], BLUE, JPEG_TOLERANCE)


# -- EXIF orientation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "stored_as"),
    [
        # What a camera writes: the sensor's pixels plus the rotation that makes them upright.
        (6, Image.Transpose.ROTATE_90),  # shown after a 90° clockwise turn
        (8, Image.Transpose.ROTATE_270),  # shown after a 90° counter-clockwise turn
    ],
)
def test_exif_orientation_turns_the_picture_upright_and_swaps_the_size(
    orientation: int, stored_as: Image.Transpose
) -> None:
    upright = _red_over_blue(60, 40)
    stored = upright.transpose(stored_as)
    assert stored.size == (40, 60)
    exif = Image.Exif()
    exif[0x0112] = orientation

    decoded = decode_image(_encode(stored, "JPEG", quality=95, exif=exif.tobytes()), target_size=64)

    assert (decoded.width, decoded.height) == (60, 40)
    assert decoded.image.size == (60, 40)
    _assert_close_to(_pixels(decoded)[:16], RED, JPEG_TOLERANCE)
    _assert_close_to(_pixels(decoded)[24:], BLUE, JPEG_TOLERANCE)


# -- JPEG draft -----------------------------------------------------------------------------


def test_large_jpeg_is_decoded_at_reduced_scale_but_reports_its_full_size() -> None:
    data = _encode(_noise(1280, 960), "JPEG", quality=80)

    decoded = decode_image(data, target_size=320)

    assert (decoded.width, decoded.height) == (1280, 960)
    assert decoded.image.size == (320, 240)


def test_rotated_large_jpeg_reports_its_upright_full_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_noise(1280, 960), "JPEG", quality=80, exif=exif.tobytes())

    decoded = decode_image(data, target_size=320)

    assert (decoded.width, decoded.height) == (960, 1280)
    assert decoded.image.size == (240, 320)


def test_jpeg_smaller_than_the_target_is_decoded_at_full_size() -> None:
    decoded = decode_image(_encode(_noise(200, 100), "JPEG"), target_size=320)

    assert decoded.image.size == (200, 100)


def test_large_png_is_decoded_at_full_size() -> None:
    decoded = decode_image(_encode(_noise(640, 480), "PNG"), target_size=320)

    assert decoded.image.size == (640, 480)
    assert (decoded.width, decoded.height) == (640, 480)


# -- colour modes -----------------------------------------------------------------------------


def test_grayscale_png_decodes_to_rgb_with_equal_channels() -> None:
    grey = np.arange(20 * 30, dtype=np.uint32).reshape(20, 30).astype(np.uint8)

    decoded = decode_image(_encode(Image.fromarray(grey), "PNG"), target_size=64)

    np.testing.assert_array_equal(_pixels(decoded), np.repeat(grey[..., None], 3, axis=2))


def test_palette_png_decodes_to_its_rgb_colours() -> None:
    image = _red_over_blue().convert("P")

    decoded = decode_image(_encode(image, "PNG"), target_size=64)

    np.testing.assert_array_equal(_pixels(decoded), np.asarray(_red_over_blue()))


def test_transparent_palette_entry_becomes_white() -> None:
    indices = np.zeros((4, 4), dtype=np.uint8)
    indices[2:] = 1
    image = Image.frombytes("P", (4, 4), indices.tobytes())
    image.putpalette([*RED, *BLUE] + [0] * 762)

    decoded = decode_image(_encode(image, "PNG", transparency=1), target_size=64)

    _assert_close_to(_pixels(decoded)[:2], RED, 0)
    _assert_close_to(_pixels(decoded)[2:], (255, 255, 255), 0)


def test_rgba_transparent_pixels_become_white_and_opaque_ones_keep_their_colour() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255

    decoded = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), target_size=64)

    assert decoded.image.mode == "RGB"
    _assert_close_to(_pixels(decoded)[:2], (200, 0, 0), 0)
    _assert_close_to(_pixels(decoded)[2:], (255, 255, 255), 0)


@pytest.mark.parametrize(("sample", "expected"), [(0, 0), (32896, 128), (65535, 255), (1000, 4)])
def test_16_bit_grey_png_decodes_on_the_full_16_bit_scale(sample: int, expected: int) -> None:
    image = Image.fromarray(np.full((4, 6), sample, dtype=np.uint16))
    data = _encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")

    decoded = decode_image(data, target_size=64)

    assert decoded.image.mode == "RGB"
    np.testing.assert_array_equal(_pixels(decoded), np.full((4, 6, 3), expected, dtype=np.uint8))


def test_16_bit_png_keeps_the_order_of_its_grey_levels() -> None:
    ramp = (np.arange(24, dtype=np.uint32).reshape(4, 6) * 2800).astype(np.uint16)

    decoded = decode_image(_encode(Image.fromarray(ramp), "PNG"), target_size=64)

    np.testing.assert_array_equal(_pixels(decoded)[..., 0], np.rint(ramp / 257).astype(np.uint8))


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    data = _encode(_red_over_blue().convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    decoded = decode_image(data, target_size=64)

    assert decoded.image.mode == "RGB"
    _assert_close_to(_pixels(decoded)[:16], RED, JPEG_TOLERANCE)
    _assert_close_to(_pixels(decoded)[24:], BLUE, JPEG_TOLERANCE)


# -- refusals ---------------------------------------------------------------------------------


def test_empty_bytes_are_refused_as_empty() -> None:
    with pytest.raises(InvalidImageError, match=r"^empty image: the request carried 0 bytes$"):
        decode_image(b"", target_size=64)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        pytest.param(np.random.default_rng(7).bytes(2000), "unrecognised header", id="random bytes"),
        pytest.param(b"name,colour\nshirt,red\n" * 20, "it is text", id="text file"),
        pytest.param(("a\u00e9" * 200).encode(), "it is text", id="utf-8 text"),
        pytest.param(b"<?xml version='1.0'?><svg/>", "it is markup (SVG/HTML/XML)", id="svg"),
        pytest.param(_encode(_red_over_blue(), "GIF"), "it is a GIF image", id="gif"),
        pytest.param(_encode(_red_over_blue(), "BMP"), "it is a BMP image", id="bmp"),
        pytest.param(_encode(_red_over_blue(), "TIFF"), "it is a TIFF image", id="tiff"),
        pytest.param(_encode(_red_over_blue(), "PDF"), "it is a PDF document", id="pdf"),
        pytest.param(b"\x00\x00\x00\x18ftypheic" + bytes(100), "it is a HEIC image", id="heic"),
    ],
)
def test_bytes_that_are_not_jpeg_png_or_webp_are_refused_naming_what_they_are(data: bytes, what: str) -> None:
    with pytest.raises(InvalidImageError, match=rf"^not a JPEG, PNG or WebP image \({re.escape(what)}\)$"):
        decode_image(data, target_size=64)


def test_png_with_a_corrupt_header_is_refused_as_a_corrupt_png() -> None:
    data = bytearray(_encode(_noise(20, 10), "PNG"))
    data[16:20] = struct.pack(">I", 3000)  # IHDR width changed: its checksum no longer matches

    with pytest.raises(InvalidImageError, match=r"^cannot read image header: the PNG header is corrupt$"):
        decode_image(bytes(data), target_size=64)


def test_jpeg_cut_in_its_pixel_data_is_refused_as_truncated() -> None:
    data = _encode(_noise(200, 150), "JPEG", quality=90)

    with pytest.raises(InvalidImageError, match=r"^corrupt or truncated JPEG data: image file is truncated"):
        decode_image(data[: len(data) // 2], target_size=320)


def test_png_cut_in_its_pixel_data_is_refused_as_truncated() -> None:
    data = _encode(_noise(200, 150), "PNG")

    with pytest.raises(InvalidImageError, match=r"^corrupt or truncated PNG data: image file is truncated"):
        decode_image(data[: len(data) // 2], target_size=320)


def test_jpeg_cut_in_its_header_is_refused_as_unreadable() -> None:
    data = _encode(_noise(200, 150), "JPEG", quality=90)

    with pytest.raises(InvalidImageError, match=r"^cannot read image header: "):
        decode_image(data[:200], target_size=320)


def test_image_over_the_pixel_limit_is_refused_before_its_pixels_are_decoded() -> None:
    # Truncated pixel data: a decode would fail as corrupt, so the size check must come first.
    data = _encode(_noise(10, 10), "PNG")[:-20]

    with pytest.raises(InvalidImageError, match=r"^image is 10x10 = 100 pixels, over the limit of 99$"):
        decode_image(data, target_size=64, limits=DecodeLimits(max_pixels=99))


def test_image_at_the_pixel_limit_is_accepted() -> None:
    decoded = decode_image(_encode(_noise(10, 10), "PNG"), target_size=64, limits=DecodeLimits(max_pixels=100))

    assert decoded.image.size == (10, 10)


def test_header_declaring_30000_by_30000_pixels_is_refused_without_pixel_data() -> None:
    with pytest.raises(InvalidImageError, match=r"^image declares 900000000 pixels, over the limit of 64000000$"):
        decode_image(png_bytes(30000, 30000), target_size=320)


def test_header_between_pillows_warning_and_error_limits_gets_the_same_refusal_as_any_other() -> None:
    # 100 M pixels: Pillow only warns (over MAX_IMAGE_PIXELS, under twice that); max_pixels refuses.
    with pytest.raises(InvalidImageError,
                       match=r"^image is 10000x10000 = 100000000 pixels, over the limit of 64000000$"):
        decode_image(png_bytes(10000, 10000), target_size=320)


def test_limits_come_from_the_environment_over_the_defaults_given() -> None:
    defaults = DecodeLimits(max_image_bytes=1000, max_pixels=2000)

    assert DecodeLimits.from_env({}, defaults) == defaults
    assert DecodeLimits.from_env({"FASHIONBOX_MAX_PIXELS": " 5_000 ", "FASHIONBOX_MAX_IMAGE_BYTES": ""}, defaults) == (
        DecodeLimits(max_image_bytes=1000, max_pixels=5000)
    )
    with pytest.raises(ValueError, match=r"^FASHIONBOX_MAX_IMAGE_BYTES must be a positive integer, got '1e6'$"):
        DecodeLimits.from_env({"FASHIONBOX_MAX_IMAGE_BYTES": "1e6"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_pixels": 0}, r"^DecodeLimits.max_pixels must be a positive integer, got 0$"),
        ({"max_image_bytes": True}, r"^DecodeLimits.max_image_bytes must be a positive integer, got True$"),
        ({"max_pixels": 200_000_000}, r"^DecodeLimits.max_pixels must be at most 178956970: Pillow refuses"),
    ],
)
def test_limits_that_cannot_work_are_refused_when_made(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecodeLimits(**fields)


def test_header_declaring_more_than_max_pixels_is_refused_by_the_default_limit() -> None:
    # 81 M pixels: under Pillow's own bomb limits, over DecodeLimits.max_pixels (64 M).
    with pytest.raises(InvalidImageError,
                       match=r"^image is 9000x9000 = 81000000 pixels, over the limit of 64000000$"):
        decode_image(png_bytes(9000, 9000), target_size=320)


def test_bytes_over_the_size_limit_are_refused_with_both_numbers() -> None:
    data = _encode(_noise(10, 10), "PNG")
    limit = len(data) - 1

    with pytest.raises(InvalidImageError,
                       match=rf"^image is {len(data)} bytes, over the limit of {limit} bytes$"):
        decode_image(data, target_size=64, limits=DecodeLimits(max_image_bytes=limit))


# -- letterbox --------------------------------------------------------------------------------


def _decoded(width: int, height: int) -> DecodedImage:
    image = Image.new("RGB", (width, height), RED)
    return DecodedImage(image=image, width=width, height=height)


def test_wide_image_is_scaled_to_the_full_width_and_padded_top_and_bottom() -> None:
    pixels, info = letterbox(_decoded(60, 40), 64)

    assert pixels.shape == (64, 64, 3)
    assert pixels.dtype == np.uint8
    assert info == LetterboxInfo(width=60, height=40, scale=64 / 60, pad_x=0.0, pad_y=10.0)
    assert (pixels[:10] == PAD_VALUE).all()
    assert (pixels[53:] == PAD_VALUE).all()
    _assert_close_to(pixels[10:53], RED, 0)


def test_tall_image_is_padded_left_and_right() -> None:
    pixels, info = letterbox(_decoded(32, 64), 64)

    assert (info.scale, info.pad_x, info.pad_y) == (1.0, 16.0, 0.0)
    assert (pixels[:, :16] == PAD_VALUE).all()
    assert (pixels[:, 48:] == PAD_VALUE).all()
    _assert_close_to(pixels[:, 16:48], RED, 0)


@pytest.mark.parametrize(("width", "height", "canvas"), [
    (1280, 960, (480, 640)),  # 4:3: 640x480, already a multiple of 32 of padding away from 640
    (960, 1280, (640, 480)),
    (1000, 700, (448, 640)),  # resized 640x448: 192 of padding is a multiple of 32
    (1000, 710, (480, 640)),  # 640x454: 186 -> 26 of padding, 480
    (640, 640, (640, 640)),
    (4000, 10, (32, 640)),  # a thin strip: 2 rows, padded to 32
])
def test_a_rect_letterbox_pads_the_short_side_only_to_the_stride(width: int, height: int,
                                                                 canvas: tuple[int, int]) -> None:
    assert rect_canvas(width, height, 640, 32) == canvas
    pixels, info = letterbox(_decoded(width, height), 640, canvas=canvas)
    assert pixels.shape == (*canvas, 3)
    # centred, the top and left padding the floor of half, as in the square letterbox
    content_h, content_w = round(height * info.scale), round(width * info.scale)
    assert (info.pad_x, info.pad_y) == ((canvas[1] - content_w) // 2, (canvas[0] - content_h) // 2)
    back = info.to_original(info.to_letterbox(np.array([[0, 0, width, height]], np.float32)))
    np.testing.assert_allclose(back, [[0, 0, width, height]], atol=1e-3)


def test_a_rect_letterbox_keeps_its_short_side_at_least_its_min_side() -> None:
    """A detector that selects a fixed number of queries among its tokens: a thin strip is padded up to the min
    side, a photo already past it is untouched; the min side is a multiple of the stride, at most the size."""
    assert rect_canvas(4000, 10, 640, 32, 128) == (128, 640)
    assert rect_canvas(10, 4000, 640, 32, 128) == (640, 128)
    assert rect_canvas(1280, 960, 640, 32, 128) == rect_canvas(1280, 960, 640, 32) == (480, 640)
    assert rect_canvas(4000, 10, 640, 32, 640) == (640, 640)  # as high as the size: the square
    pixels, info = letterbox(_decoded(4000, 10), 640, canvas=(128, 640))
    assert pixels.shape == (128, 640, 3) and info.pad_y == (128 - 2) // 2
    for bad in (48, 672, -32):
        with pytest.raises(ValueError, match=f"min side {bad} must be a multiple of its stride 32 up to its size 640"):
            rect_canvas(1280, 960, 640, 32, bad)


def test_a_rect_letterbox_refuses_a_stride_that_does_not_divide_its_size_and_a_canvas_too_small() -> None:
    with pytest.raises(ValueError, match="stride 48 must divide its size 640"):
        rect_canvas(1280, 960, 640, 48)
    with pytest.raises(ValueError, match="cannot hold the image resized to 640x480"):
        letterbox(_decoded(1280, 960), 640, canvas=(448, 640))


def test_draft_decoded_jpeg_is_letterboxed_by_its_full_size() -> None:
    decoded = decode_image(_encode(_noise(1280, 960), "JPEG", quality=80), target_size=320)

    pixels, info = letterbox(decoded, 320)

    assert info == LetterboxInfo(width=1280, height=960, scale=0.25, pad_x=0.0, pad_y=40.0)
    assert (pixels[:40] == PAD_VALUE).all()
    assert (pixels[280:] == PAD_VALUE).all()


@pytest.mark.parametrize(("width", "height", "size"), [(60, 40, 64), (1000, 700, 320), (333, 1999, 320)])
def test_boxes_survive_a_round_trip_through_the_letterbox(width: int, height: int, size: int) -> None:
    _, info = letterbox(_decoded(width, height), size)
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 1, (20, 4)) * np.array([width, height, width, height])
    boxes = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])],
                           axis=1).astype(np.float32)

    back = info.to_original(info.to_letterbox(boxes))

    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-3)


def test_boxes_reaching_into_the_padding_are_clipped_to_the_image() -> None:
    _, info = letterbox(_decoded(60, 40), 64)

    boxes = info.to_original(np.array([[0, 0, 64, 64], [-50, 20, 30, 200]], dtype=np.float32))

    np.testing.assert_allclose(boxes, [[0, 0, 60, 40], [0, 9.375, 28.125, 40]], rtol=0, atol=1e-4)


def test_letterbox_info_survives_a_round_trip_through_its_array() -> None:
    info = LetterboxInfo(width=1280, height=960, scale=0.25, pad_x=0.0, pad_y=40.0)

    values = info.as_array()

    assert values.dtype == np.float32
    assert LetterboxInfo.from_array(values) == info


# -- crops ------------------------------------------------------------------------------------


def _left_red_right_blue(size: int = 64) -> NDArray[np.uint8]:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:, : size // 2] = RED
    pixels[:, size // 2 :] = BLUE
    return pixels


def test_one_crop_per_box_at_the_requested_size() -> None:
    boxes = np.array([[4, 4, 20, 40], [30, 10, 60, 30], [0, 0, 64, 64]], dtype=np.float32)

    crops = crop_garments(_left_red_right_blue(), boxes, 32)

    assert crops.shape == (3, 32, 32, 3)
    assert crops.dtype == np.uint8


def test_crop_shows_the_pixels_inside_its_box() -> None:
    boxes = np.array([[4, 4, 20, 40], [40, 10, 60, 30]], dtype=np.float32)

    crops = crop_garments(_left_red_right_blue(), boxes, 16)

    _assert_close_to(crops[0], RED, 0)
    _assert_close_to(crops[1], BLUE, 0)


def test_no_boxes_give_no_crops() -> None:
    crops = crop_garments(_left_red_right_blue(), np.zeros((0, 4), dtype=np.float32), 16)

    assert crops.shape == (0, 16, 16, 3)
    assert crops.dtype == np.uint8


def test_box_past_the_image_edge_is_cut_at_the_edge() -> None:
    boxes = np.array([[-20, -20, 16, 16], [48, 48, 90, 90]], dtype=np.float32)

    crops = crop_garments(_left_red_right_blue(), boxes, 16)

    _assert_close_to(crops[0], RED, 0)
    _assert_close_to(crops[1], BLUE, 0)


@pytest.mark.parametrize(
    "box",
    [
        pytest.param([20, 20, 20, 20], id="zero size"),
        pytest.param([30, 10, 30, 50], id="zero width"),
        pytest.param([100, 100, 120, 120], id="outside the image"),
    ],
)
def test_box_with_no_area_in_the_image_gives_a_grey_crop(box: list[float]) -> None:
    crops = crop_garments(_left_red_right_blue(), np.array([box], dtype=np.float32), 16)

    assert crops.shape == (1, 16, 16, 3)
    assert (crops == PAD_VALUE).all()

