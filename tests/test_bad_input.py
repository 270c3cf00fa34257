"""Bad input over real gRPC: a matrix of image kinds, alone and mixed into batches with good images.

Every row states its exact outcome: served (with the upright size the result must report) or
refused with a gRPC status and a message a person understands. One embedded Triton serves the
whole file (ONNX stand-ins, ``tests/onnx_standins.py``) with small decode limits written by
``RepositorySettings``, so the limits are checked end to end; the policy is documented in
``docs/RELIABILITY.md`` ("Bad input").
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fuzz_decode import png_bytes
from onnx_standins import write_standin_repository
from PIL import Image

from fashionbox import contract
from fashionbox.client import ClientConfig, FashionClient, ImageDetections, InvalidImage, InvalidInput
from fashionbox.converter.repository import ModelScheduling, RepositorySettings
from fashionbox.server import TritonServer
from fashionbox.v1 import detections_pb2

pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
grpcclient = pytest.importorskip("tritonclient.grpc")

MAX_IMAGE_BYTES = 1_000_000
MAX_PIXELS = 2_000_000
MAX_BATCH = 8
SETTINGS = RepositorySettings(
    input_size=64,
    crop_size=32,
    max_detections=10,
    # A short queue delay lets the batcher put good and bad requests into one execute().
    preprocess=ModelScheduling(max_batch_size=MAX_BATCH, max_queue_delay_us=5_000),
    detector=ModelScheduling(max_batch_size=MAX_BATCH),
    postprocess=ModelScheduling(max_batch_size=MAX_BATCH),
    attributes=ModelScheduling(max_batch_size=64),
    max_image_bytes=MAX_IMAGE_BYTES,
    max_pixels=MAX_PIXELS,
    model_version="bad-input",
)
RSS_GROWTH_LIMIT_MB = 100
"""Sending the matrix three more times after a warm-up may not grow the server by more than this."""


# -- the matrix -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    width: int
    height: int
    """The size the result must report: the upright image (after EXIF orientation)."""


@dataclass(frozen=True)
class Refused:
    message: str
    """A regular expression the whole server message must match (after the ensemble's prefix)."""
    status: str = "INVALID_ARGUMENT"
    by_triton: bool = False
    """Refused by Triton itself before any model ran: no "in ensemble 'fashion', " prefix."""

    def matches(self, message: str) -> bool:
        prefix = "" if self.by_triton else re.escape(f"in ensemble '{contract.ENSEMBLE_MODEL}', ")
        return re.fullmatch(prefix + self.message, message) is not None


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    outcome: Served | Refused


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _photo(width: int = 96, height: int = 72, seed: int = 0) -> Image.Image:
    """Dark texture: the stand-in detector finds garments in dark images, so results are not empty."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 90, (height, width, 3), dtype=np.uint8))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _rgba() -> Image.Image:
    image = _photo()
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(_photo(), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _corrupt_jpeg() -> bytes:
    data = bytearray(_encode(_photo(), "JPEG", quality=90))
    middle = len(data) // 2
    data[middle : middle + 40] = b"\xff" * 40
    return bytes(data)


def _png_with_bad_header_checksum() -> bytes:
    data = bytearray(_encode(_photo(), "PNG"))
    data[16:20] = (3000).to_bytes(4, "big")  # IHDR width changed, checksum not
    return bytes(data)


def _png_16_bit_rgb(width: int, height: int) -> bytes:
    samples = np.full((height, width, 3), 20000, dtype=">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)
    return png_bytes(width, height, rows, bit_depth=16)


def _png_over_the_byte_limit() -> bytes:
    """A valid PNG of noise a little larger than MAX_IMAGE_BYTES."""
    side = 600
    data = _encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)), "PNG")
    assert len(data) > MAX_IMAGE_BYTES
    return data


def _truncated(data: bytes, keep: int | None = None) -> bytes:
    return data[: len(data) // 2 if keep is None else keep]


JPEG = _encode(_photo(), "JPEG", quality=90)
PNG = _encode(_photo(), "PNG")
WEBP = _encode(_photo(), "WEBP", quality=80)


def _not_ours(what: str, where: str = "") -> Refused:
    """The refusal of bytes that are no JPEG, PNG or WebP; ``what`` says what they are instead."""
    return Refused(re.escape(f"{where}not a JPEG, PNG or WebP image ({what})"))


CASES = [
    # -- served: converted to RGB, EXIF applied, first frame of an animation -------------------
    Case("jpeg", JPEG, Served(96, 72)),
    Case("progressive jpeg", _encode(_photo(), "JPEG", progressive=True), Served(96, 72)),
    Case("grayscale jpeg", _encode(_photo().convert("L"), "JPEG"), Served(96, 72)),
    Case("cmyk jpeg", _encode(_photo().convert("CMYK"), "JPEG"), Served(96, 72)),
    Case("exif rotated 90 cw", _encode(_photo(), "JPEG", exif=_exif(6)), Served(72, 96)),
    Case("exif rotated 90 ccw", _encode(_photo(), "JPEG", exif=_exif(8)), Served(72, 96)),
    Case("exif rotated 180", _encode(_photo(), "JPEG", exif=_exif(3)), Served(96, 72)),
    Case("exif mirrored and turned", _encode(_photo(), "JPEG", exif=_exif(5)), Served(72, 96)),
    Case("broken exif block", _encode(_photo(), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\xff\xff"), Served(96, 72)),
    Case("png", PNG, Served(96, 72)),
    Case("grayscale png", _encode(_photo().convert("L"), "PNG"), Served(96, 72)),
    Case("16-bit grey png", _encode(Image.fromarray(np.full((72, 96), 9000, np.uint16)), "PNG"), Served(96, 72)),
    Case("16-bit rgb png", _png_16_bit_rgb(96, 72), Served(96, 72)),
    Case("palette png", _encode(_photo().convert("P"), "PNG"), Served(96, 72)),
    Case("palette png with transparency", _encode(_photo().convert("P"), "PNG", transparency=0), Served(96, 72)),
    Case("rgba png", _encode(_rgba(), "PNG"), Served(96, 72)),
    Case("grey + alpha png", _encode(_rgba().convert("LA"), "PNG"), Served(96, 72)),
    Case("1-bit png", _encode(_photo().convert("1"), "PNG"), Served(96, 72)),
    Case("animated png", _encode(_photo(), "PNG", save_all=True, append_images=[_photo(seed=1)]), Served(96, 72)),
    Case("webp", WEBP, Served(96, 72)),
    Case("lossless rgba webp", _encode(_rgba(), "WEBP", lossless=True), Served(96, 72)),
    Case("animated webp", _encode(_photo(), "WEBP", save_all=True, append_images=[_photo(seed=1)]), Served(96, 72)),
    Case("1x1 png", _encode(_photo(1, 1), "PNG"), Served(1, 1)),
    Case("1x1 jpeg", _encode(_photo(1, 1), "JPEG"), Served(1, 1)),
    Case("4000x1 png", _encode(_photo(4000, 1), "PNG"), Served(4000, 1)),
    Case("1x4000 jpeg", _encode(_photo(1, 4000), "JPEG"), Served(1, 4000)),
    Case("at the pixel limit", _encode(Image.new("RGB", (2000, 1000)), "PNG"), Served(2000, 1000)),
    # -- refused ---------------------------------------------------------------------------------
    Case("empty", b"", Refused(r"empty image: the request carried 0 bytes")),
    Case("truncated jpeg", _truncated(JPEG), Refused(r"corrupt or truncated JPEG data: image file is truncated.*")),
    Case("jpeg cut in its header", _truncated(JPEG, 200), Refused(r"cannot read image header: .+")),
    Case("corrupt jpeg", _corrupt_jpeg(), Refused(r"corrupt or truncated JPEG data: broken data stream.*")),
    Case("truncated png", _truncated(PNG), Refused(r"corrupt or truncated PNG data: image file is truncated.*")),
    Case("png with a corrupt header", _png_with_bad_header_checksum(),
         Refused(r"cannot read image header: the PNG header is corrupt")),
    Case("truncated webp", _truncated(WEBP), Refused(r"cannot read image header: could not create decoder object")),
    Case("random bytes", np.random.default_rng(3).bytes(3000), _not_ours("unrecognised header")),
    Case("text", b"shirt,red\nskirt,blue\n" * 10, _not_ours("it is text")),
    Case("svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', _not_ours("it is markup (SVG/HTML/XML)")),
    Case("pdf", _encode(_photo(), "PDF"), _not_ours("it is a PDF document")),
    Case("gif", _encode(_photo(), "GIF"), _not_ours("it is a GIF image")),
    Case("animated gif", _encode(_photo(), "GIF", save_all=True, append_images=[_photo(seed=1)]),
         _not_ours("it is a GIF image")),
    Case("bmp", _encode(_photo(), "BMP"), _not_ours("it is a BMP image")),
    Case("tiff", _encode(_photo(), "TIFF"), _not_ours("it is a TIFF image")),
    Case("heic", b"\x00\x00\x00\x18ftypheic" + bytes(200), _not_ours("it is a HEIC image")),
    Case("png bomb 30000x30000", png_bytes(30000, 30000),
         Refused(rf"image declares 900000000 pixels, over the limit of {MAX_PIXELS}")),
    Case("jpeg bomb 30000x30000", _jpeg_declaring(30000, 30000),
         Refused(rf"image declares 900000000 pixels, over the limit of {MAX_PIXELS}")),
    Case("one pixel row over the limit, no pixel data", png_bytes(2000, 1001),
         Refused(rf"image is 2000x1001 = 2002000 pixels, over the limit of {MAX_PIXELS}")),
    Case("over the byte limit", _png_over_the_byte_limit(),
         Refused(rf"image is \d+ bytes, over the limit of {MAX_IMAGE_BYTES} bytes")),
]
GOOD = [case for case in CASES if isinstance(case.outcome, Served)]
BAD = [case for case in CASES if isinstance(case.outcome, Refused)]


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(triton_server: Any, tmp_path_factory: pytest.TempPathFactory) -> TritonServer:
    repository = write_standin_repository(
        tmp_path_factory.mktemp("bad-input"), SETTINGS, purpose="bad-input matrix with ONNX stand-ins"
    )
    server: TritonServer = triton_server(repository)
    return server


@pytest.fixture(scope="module")
def raw(server: TritonServer) -> Iterator[Any]:
    with grpcclient.InferenceServerClient(server.endpoints.grpc) as connection:
        yield connection


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[FashionClient]:
    with FashionClient(server.endpoints.grpc) as connection:
        yield connection


@pytest.fixture(scope="module")
def alone(client: FashionClient) -> dict[str, ImageDetections]:
    """Each good image's result when it is the only request in flight."""
    return {case.name: client.detect(case.data) for case in GOOD}


def _image_input(images: list[bytes]) -> Any:
    tensor = grpcclient.InferInput(contract.IMAGE.name, [len(images), 1], contract.IMAGE.datatype)
    tensor.set_data_from_numpy(np.array([[data] for data in images], dtype=np.object_))
    return tensor


def _infer_raw(raw: Any, inputs: list[Any]) -> Any:
    return raw.infer(contract.ENSEMBLE_MODEL, inputs, outputs=[grpcclient.InferRequestedOutput("DETECTIONS")])


def _assert_raw_refused(raw: Any, inputs: list[Any], expected: Refused) -> None:
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        _infer_raw(raw, inputs)
    assert caught.value.status() == f"StatusCode.{expected.status}", caught.value
    assert expected.matches(caught.value.message() or ""), caught.value.message()


def _assert_outcome(case: Case, outcome: ImageDetections | Exception, alone: dict[str, ImageDetections]) -> None:
    if isinstance(case.outcome, Served):
        assert outcome == alone[case.name], f"{case.name}: {outcome}"
        assert isinstance(outcome, ImageDetections) and (outcome.width, outcome.height) == (
            case.outcome.width, case.outcome.height)
    elif not case.data:
        assert isinstance(outcome, InvalidInput), f"{case.name}: {outcome!r}"  # never sent
    else:
        assert isinstance(outcome, InvalidImage), f"{case.name}: {outcome!r}"
        assert outcome.status == case.outcome.status
        assert case.outcome.matches(outcome.message), f"{case.name}: {outcome.message}"


def _server_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (tritonserver and its python stubs)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    page_kb = os.sysconf("SC_PAGE_SIZE") / 1024
    total_kb = 0.0
    for member in tree:
        try:
            total_kb += int((Path("/proc") / str(member) / "statm").read_text().split()[1]) * page_kb
        except OSError:
            continue
    return total_kb / 1024


# -- tests --------------------------------------------------------------------------------------------


def test_the_matrix_covers_at_least_thirty_kinds_of_input() -> None:
    assert len(CASES) >= 30 and len({case.name for case in CASES}) == len(CASES)
    assert len(GOOD) >= 10 and len(BAD) >= 15


def test_the_convert_command_passes_the_limits_to_the_repository_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import fashionbox.converter
    from fashionbox.commands.cli import main

    given: list[Any] = []
    monkeypatch.setattr(fashionbox.converter, "convert",
                        lambda options: given.append(options) or SimpleNamespace(
                            repository=tmp_path, reports={}, manifest={"export": {"input_size": 320}}))

    assert main(["convert", "--out", str(tmp_path), "--max-image-bytes", "5000000", "--max-pixels", "1000000"]) == 0
    assert main(["convert", "--out", str(tmp_path)]) == 0

    assert given[0].repository_settings == {"max_image_bytes": 5_000_000, "max_pixels": 1_000_000}
    assert given[1].repository_settings == {}


def test_limits_pillow_would_overrule_are_refused_when_the_repository_is_configured() -> None:
    with pytest.raises(ValueError, match=r"^DecodeLimits.max_pixels must be at most 178956970: Pillow refuses"):
        RepositorySettings(max_pixels=200_000_000)


@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_kind_sent_alone_gets_its_exact_outcome(raw: Any, case: Case) -> None:
    if isinstance(case.outcome, Refused):
        _assert_raw_refused(raw, [_image_input([case.data])], case.outcome)
        return
    result = _infer_raw(raw, [_image_input([case.data])])
    message = detections_pb2.ImageDetections.FromString(result.as_numpy("DETECTIONS")[0, 0])
    assert (message.width, message.height) == (case.outcome.width, case.outcome.height)


@pytest.mark.integration
def test_bad_images_mixed_into_batches_fail_alone_and_good_ones_get_their_normal_result(
    client: FashionClient, alone: dict[str, ImageDetections]
) -> None:
    # Each bad image between two good ones, many in flight: the batcher mixes them in one execute().
    order = [case for i, bad in enumerate(BAD) for case in (GOOD[i % len(GOOD)], bad, GOOD[(i + 1) % len(GOOD)])]

    outcomes = client.detect_many([case.data for case in order], max_in_flight=MAX_BATCH)

    for case, outcome in zip(order, outcomes, strict=True):
        _assert_outcome(case, outcome, alone)


@pytest.mark.integration
def test_an_image_over_the_clients_message_limit_fails_alone_before_the_server_sees_it(
    server: TritonServer, alone: dict[str, ImageDetections]
) -> None:
    big = _png_over_the_byte_limit()
    config = ClientConfig(url=server.endpoints.grpc, max_message_bytes=len(big) // 2)

    with FashionClient(config=config) as client:
        first, refused, last = client.detect_many([JPEG, big, PNG], max_in_flight=3)

    assert (first, last) == (alone["jpeg"], alone["png"])
    assert isinstance(refused, InvalidImage) and refused.status == "RESOURCE_EXHAUSTED"
    assert re.fullmatch(rf"CLIENT: Sent message larger than max \(\d+ vs\. {len(big) // 2}\)", refused.message)


@pytest.mark.integration
def test_one_bad_image_fails_the_whole_multi_image_request_naming_which_one(raw: Any) -> None:
    _assert_raw_refused(
        raw,
        [_image_input([JPEG, b"GIF89a" + bytes(40), PNG])],
        _not_ours("it is a GIF image", where="image 1 of 3 in this request: "),
    )


REQUEST_ID = r"(?:\[request id: [^\]]*\] )?"
"""Triton puts the request id (if any) in front of the errors it raises itself."""


def _tensor(name: str, shape: list[int], datatype: str) -> Any:
    tensor = grpcclient.InferInput(name, shape, datatype)
    if datatype == "BYTES":
        tensor.set_data_from_numpy(np.full(shape, PNG, dtype=np.object_))
    else:
        tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
    return tensor


@pytest.mark.integration
@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        pytest.param([("IMAGE", [1, 1], "FP32")],
                     rf"{REQUEST_ID}inference input 'IMAGE' data-type is 'FP32', but model 'fashion' expects 'BYTES'",
                     id="wrong dtype"),
        pytest.param([("IMAGE", [1, 2], "BYTES")],
                     rf"{REQUEST_ID}unexpected shape for input 'IMAGE' for model 'fashion'\. "
                     r"Expected \[-1,1\], got \[1,2\]\. .*", id="wrong shape"),
        pytest.param([("IMAGE", [MAX_BATCH + 1, 1], "BYTES")],
                     rf"{REQUEST_ID}inference request batch-size must be <= {MAX_BATCH} for 'fashion'",
                     id="batch over the limit"),
        pytest.param([("PIXELS", [1, 1], "BYTES")], r"unexpected inference input 'PIXELS' for model 'fashion'",
                     id="unknown input"),
        pytest.param([], rf"{REQUEST_ID}expected 1 inputs but got 0 inputs for model 'fashion'\. "
                         r".*missing required input\(s\) \['IMAGE'\]\..*", id="no input"),
    ],
)
def test_tensors_that_break_the_contract_are_refused_by_triton(
    raw: Any, tensors: list[tuple[str, list[int], str]], message: str
) -> None:
    _assert_raw_refused(raw, [_tensor(*spec) for spec in tensors], Refused(message, by_triton=True))


@pytest.mark.integration
def test_the_server_stays_up_and_its_memory_bounded_after_the_matrix_is_sent_repeatedly(
    server: TritonServer, client: FashionClient, alone: dict[str, ImageDetections]
) -> None:
    assert server.pid is not None
    images = [case.data for case in CASES]
    client.detect_many(images, max_in_flight=MAX_BATCH)  # warm-up: allocators and pools settle
    before_mb = _server_rss_mb(server.pid)

    for _ in range(3):
        outcomes = client.detect_many(images, max_in_flight=MAX_BATCH)
        for case, outcome in zip(CASES, outcomes, strict=True):
            _assert_outcome(case, outcome, alone)
    after_mb = _server_rss_mb(server.pid)

    assert server.is_alive()
    assert client.detect(JPEG) == alone["jpeg"]
    assert after_mb - before_mb < RSS_GROWTH_LIMIT_MB, f"server grew from {before_mb:.0f} to {after_mb:.0f} MB"
