"""The typed client without a server: a fake transport answers with real tritonclient messages.

Answers are built the way tritonclient builds them from the wire (``ModelInferResponse`` with raw
output contents, ``ModelConfigResponse``), so parsing is tested against the real types, and
errors are tritonclient's own ``InferenceServerException`` with the status strings it produces.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from fashionbox import contract
from fashionbox.client import (
    AttributeScore,
    BoundingBox,
    ClientClosed,
    ClientConfig,
    ConfigError,
    ConnectError,
    DeadlineExceeded,
    Detection,
    FashionBoxError,
    FashionClient,
    ImageDetections,
    ImageEncoding,
    InvalidImage,
    InvalidInput,
    KeepAlive,
    ModelNotReady,
    Overloaded,
    ProtocolError,
    ServerError,
    Timeouts,
    TransportError,
    draw_detections,
)
from fashionbox.client._base import LABELS_PARAMETER, InferRequest, InferResultLike
from fashionbox.client._transport import channel_args
from fashionbox.labels import LabelMap, default_label_map
from fashionbox.results import build_image_detections

# -- fakes ------------------------------------------------------------------------------------------

Responder = Callable[[InferRequest], InferResultLike]


def infer_result(outputs: dict[str, tuple[str, npt.NDArray[Any]]]) -> InferResultLike:
    """A tritonclient ``InferResult`` holding ``outputs`` ({name: (datatype, array)}) as raw contents."""
    response = service_pb2.ModelInferResponse(model_name=contract.ENSEMBLE_MODEL)
    for name, (datatype, array) in outputs.items():
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        response.raw_output_contents.append(raw)
    result: InferResultLike = grpcclient.InferResult(response)
    return result


def detections_result(payloads: list[bytes]) -> InferResultLike:
    array = np.empty((len(payloads), 1), dtype=np.object_)
    for i, payload in enumerate(payloads):
        array[i, 0] = payload
    return infer_result({"DETECTIONS": ("BYTES", array)})


def labels_config(labels: LabelMap | None) -> service_pb2.ModelConfigResponse:
    config = model_config_pb2.ModelConfig(name=contract.ENSEMBLE_MODEL, platform="ensemble", max_batch_size=16)
    config.parameters["manifest_sha256"].string_value = "abc123"
    if labels is not None:
        config.parameters[LABELS_PARAMETER].string_value = labels.to_json()
    return service_pb2.ModelConfigResponse(config=config)


def ensemble_metadata() -> service_pb2.ModelMetadataResponse:
    metadata = service_pb2.ModelMetadataResponse(name=contract.ENSEMBLE_MODEL, versions=["1"], platform="ensemble")
    metadata.inputs.add(name="IMAGE", datatype="BYTES", shape=[-1, 1])
    metadata.outputs.add(name="DETECTIONS", datatype="BYTES", shape=[-1, 1])
    return metadata


class FakeTransport:
    """Records every request and answers from canned values, or raises a canned error."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        error: BaseException | None = None,
        live: bool = True,
        server_ready: bool = True,
        model_ready: bool = True,
        config: Any = None,
    ) -> None:
        self.responder = responder
        self.error = error
        self.live, self.server_ready, self.model_ready = live, server_ready, model_ready
        self.config = config
        self.requests: list[InferRequest] = []
        self.config_reads = 0
        self.closed = False

    def _raise_if_failing(self) -> None:
        if self.error is not None:
            raise self.error

    def infer(self, request: InferRequest) -> InferResultLike:
        self.requests.append(request)
        self._raise_if_failing()
        assert self.responder is not None, "this test sends no images"
        return self.responder(request)

    def is_server_live(self, *, timeout_s: float) -> bool:
        self._raise_if_failing()
        return self.live

    def is_server_ready(self, *, timeout_s: float) -> bool:
        self._raise_if_failing()
        return self.server_ready

    def is_model_ready(self, model_name: str, model_version: str, *, timeout_s: float) -> bool:
        self._raise_if_failing()
        return self.model_ready

    def get_model_metadata(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        self._raise_if_failing()
        return ensemble_metadata()

    def get_model_config(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        self._raise_if_failing()
        self.config_reads += 1
        return self.config

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def labels() -> LabelMap:
    return default_label_map()


def dress_and_shoe_payload(labels: LabelMap) -> bytes:
    """A serialized ImageDetections with a striped short-sleeved v-neck dress and a shoe."""
    row = np.zeros(labels.num_attribute_labels, np.float32)
    for group, start, _ in labels.group_offsets:
        best = {"sleeve length": 1, "neckline type": 1, "textile pattern": 1}[group]
        row[start + best] = 0.9
    message = build_image_detections(
        width=640,
        height=480,
        boxes=np.array([[100, 50, 300, 450], [400, 400, 480, 470]], np.float32),
        scores=np.array([0.9, 0.4], np.float32),
        categories=np.array([labels.category_index("dress"), labels.category_index("shoe")], np.int32),
        attribute_scores=np.stack([row, row]),
        label_map=labels,
        model_version="1",
        model_name="fashionbox-default",
    )
    payload: bytes = message.SerializeToString()
    return payload


@pytest.fixture
def answering(labels: LabelMap) -> FakeTransport:
    payload = dress_and_shoe_payload(labels)
    return FakeTransport(lambda request: detections_result([payload]), config=labels_config(labels))


def png_bytes(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def sent_image(transport: FakeTransport) -> bytes:
    tensor = transport.requests[-1].inputs[0].data
    payload: bytes = tensor.reshape(-1)[0]
    return payload


# -- requests: what goes on the wire --------------------------------------------------------------


def test_the_request_holds_one_image_as_a_bytes_tensor_and_asks_for_detections(answering: FakeTransport) -> None:
    with FashionClient(transport=answering) as client:
        client.detect(png_bytes())

    request = answering.requests[0]
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.data.shape) == ("IMAGE", "BYTES", (1, 1))
    assert request.outputs == ("DETECTIONS",)
    assert request.model_name == contract.ENSEMBLE_MODEL
    assert request.model_version == ""
    assert request.timeout_s == Timeouts().request_s


def test_the_request_tensor_is_accepted_by_tritonclient(answering: FakeTransport) -> None:
    with FashionClient(transport=answering) as client:
        client.detect(png_bytes())
    tensor = answering.requests[0].inputs[0]

    grpcclient.InferInput(tensor.name, list(tensor.data.shape), tensor.datatype).set_data_from_numpy(tensor.data)


def test_encoded_bytes_are_sent_exactly_as_given(answering: FakeTransport) -> None:
    image = png_bytes() + b"\x00\x00"  # trailing NULs would be lost in a numpy bytes_ array

    with FashionClient(transport=answering) as client:
        client.detect(image)

    assert sent_image(answering) == image


@pytest.mark.parametrize("as_path", [str, Path])
def test_a_file_is_sent_with_its_bytes_unchanged(answering: FakeTransport, tmp_path: Path, as_path: Any) -> None:
    file = tmp_path / "look.png"
    file.write_bytes(png_bytes())

    with FashionClient(transport=answering) as client:
        client.detect(as_path(file))

    assert sent_image(answering) == file.read_bytes()


def test_a_missing_file_fails_before_anything_is_sent(answering: FakeTransport, tmp_path: Path) -> None:
    with FashionClient(transport=answering) as client, pytest.raises(InvalidInput, match="cannot read image file"):
        client.detect(tmp_path / "missing.jpg")

    assert answering.requests == []


def test_a_pil_image_is_sent_as_full_chroma_jpeg_by_default(answering: FakeTransport) -> None:
    image = Image.new("RGB", (64, 48), (10, 120, 240))

    with FashionClient(transport=answering) as client:
        client.detect(image)

    sent = Image.open(io.BytesIO(sent_image(answering)))
    assert sent.format == "JPEG"
    assert sent.size == (64, 48)
    assert np.abs(np.asarray(sent, np.int16) - np.asarray(image, np.int16)).max() <= 3


def test_png_encoding_sends_a_numpy_array_losslessly(answering: FakeTransport) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    config = ClientConfig(encoding=ImageEncoding(format="PNG"))

    with FashionClient(config=config, transport=answering) as client:
        client.detect(pixels)

    sent = Image.open(io.BytesIO(sent_image(answering)))
    assert sent.format == "PNG"
    assert np.array_equal(np.asarray(sent), pixels)


def test_an_image_with_transparency_is_sent_as_png_even_when_jpeg_is_configured(answering: FakeTransport) -> None:
    with FashionClient(transport=answering) as client:
        client.detect(Image.new("RGBA", (8, 8), (255, 0, 0, 128)))

    sent = Image.open(io.BytesIO(sent_image(answering)))
    assert (sent.format, sent.mode) == ("PNG", "RGBA")


def test_a_pil_image_is_turned_upright_by_its_exif_orientation_before_it_is_sent(answering: FakeTransport) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 200, 0)).save(buffer, format="JPEG", exif=exif)
    stored_landscape = Image.open(io.BytesIO(buffer.getvalue()))

    with FashionClient(transport=answering) as client:
        client.detect(stored_landscape)

    assert Image.open(io.BytesIO(sent_image(answering))).size == (20, 40)


@pytest.mark.parametrize(
    ("array", "complaint"),
    [
        (np.zeros((4, 4, 3), np.float32), "must be uint8"),
        (np.zeros((4, 4), np.uint8), r"\[height, width, 3\]"),
        (np.zeros((4, 4, 4), np.uint8), r"\[height, width, 3\]"),
        (np.zeros((1, 4, 4, 3), np.uint8), r"\[height, width, 3\]"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
    ],
)
def test_arrays_that_are_not_uint8_rgb_are_refused(
    answering: FakeTransport, array: npt.NDArray[Any], complaint: str
) -> None:
    with FashionClient(transport=answering) as client, pytest.raises(InvalidInput, match=complaint):
        client.detect(array)
    assert answering.requests == []


@pytest.mark.parametrize("value", [42, ["look.jpg"], None, b""])
def test_values_that_are_not_images_are_refused_with_a_hint(answering: FakeTransport, value: Any) -> None:
    with FashionClient(transport=answering) as client, pytest.raises(InvalidInput):
        client.detect(value)
    assert answering.requests == []


def test_timeout_s_overrides_the_configured_request_timeout_for_one_call(answering: FakeTransport) -> None:
    config = ClientConfig(timeouts=Timeouts(request_s=12.0))

    with FashionClient(config=config, transport=answering) as client:
        client.detect(png_bytes(), timeout_s=0.5)
        client.detect(png_bytes())

    assert [r.timeout_s for r in answering.requests] == [0.5, 12.0]


@pytest.mark.parametrize("timeout_s", [0, -1.0, True])
def test_a_timeout_that_is_not_a_positive_number_is_refused(answering: FakeTransport, timeout_s: Any) -> None:
    with FashionClient(transport=answering) as client, pytest.raises(ConfigError, match="timeout_s"):
        client.detect(png_bytes(), timeout_s=timeout_s)


def test_channel_args_carry_the_connect_timeout_and_keepalive_in_milliseconds() -> None:
    config = ClientConfig(timeouts=Timeouts(connect_s=2.5), keepalive=KeepAlive(time_s=30, permit_without_calls=True))

    args = dict(channel_args(config))

    assert args["grpc.min_reconnect_backoff_ms"] == 2500
    assert args["grpc.keepalive_time_ms"] == 30_000
    assert args["grpc.keepalive_permit_without_calls"] == 1
    assert args["grpc.max_receive_message_length"] == 2**31 - 1


# -- responses: what comes back ------------------------------------------------------------------------


def test_detect_returns_typed_detections_read_from_the_detections_output(answering: FakeTransport) -> None:
    with FashionClient(transport=answering) as client:
        result = client.detect(png_bytes())

    assert (result.width, result.height, len(result)) == (640, 480, 2)
    dress, shoe = result
    assert dress.category == "dress"
    assert dress.score == 0.9
    assert dress.box == BoundingBox(100, 50, 300, 450)
    assert dress.attribute("sleeve length") == "short (length)"
    assert dress.attribute("neckline type") == "v-neck"
    assert dress.attributes["textile pattern"] == AttributeScore("stripe", 0.9, fashionpedia_id=328)
    assert shoe.attributes == {}
    assert (result.model_name, result.model_version, result.label_map) == (
        "fashionbox-default",
        "1",
        "fashionbox-default",
    )


def test_an_image_without_detections_gives_an_empty_result_not_none(labels: LabelMap) -> None:
    empty = build_image_detections(
        width=10,
        height=10,
        boxes=np.zeros((0, 4)),
        scores=np.zeros(0),
        categories=np.zeros(0, np.int32),
        attribute_scores=np.zeros(0),
        label_map=labels,
        model_version="1",
    ).SerializeToString()
    transport = FakeTransport(lambda request: detections_result([empty]))

    with FashionClient(transport=transport) as client:
        result = client.detect(png_bytes())

    assert result == ImageDetections(width=10, height=10, model_version="1", label_map=labels.name)


@pytest.mark.parametrize(
    ("result", "complaint"),
    [
        (infer_result({"SCORES": ("FP32", np.zeros((1, 0), np.float32))}), "no DETECTIONS output"),
        (detections_result([b"\xff\xff\xff"]), "not a serialized fashionbox.v1.ImageDetections"),
        (detections_result([b"", b""]), "one serialized ImageDetections per image, got 2"),
        (infer_result({"DETECTIONS": ("FP32", np.zeros((1, 1), np.float32))}), "must be BYTES"),
    ],
    ids=["missing", "corrupt", "two-payloads", "wrong-dtype"],
)
def test_an_answer_that_breaks_the_contract_raises_protocol_error(result: InferResultLike, complaint: str) -> None:
    transport = FakeTransport(lambda request: result)

    with FashionClient(transport=transport) as client, pytest.raises(ProtocolError, match=complaint):
        client.detect(png_bytes())


# -- errors: one gRPC status, one exception ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.INVALID_ARGUMENT", "not a JPEG, PNG or WebP image (unrecognised header)", InvalidImage),
        ("StatusCode.INVALID_ARGUMENT", "Request for unknown model: 'fashion' is not found", ModelNotReady),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ConnectError),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", Overloaded),
        (
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'fashion' version 1 is not at ready state",
            ModelNotReady,
        ),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded),
        ("StatusCode.RESOURCE_EXHAUSTED", "out of memory", Overloaded),
        ("StatusCode.NOT_FOUND", "model 'fashion' not found", ModelNotReady),
        ("StatusCode.CANCELLED", "Locally cancelled by application!", TransportError),
        ("StatusCode.INTERNAL", "python backend crashed", ServerError),
        ("StatusCode.UNIMPLEMENTED", "no such method", ServerError),
        (None, "model version must be a string", ProtocolError),
    ],
)
def test_each_grpc_status_becomes_its_own_fashionbox_error_chained_to_the_original(
    status: str | None, message: str, expected: type[FashionBoxError]
) -> None:
    original = InferenceServerException(msg=message, status=status)
    transport = FakeTransport(error=original)

    with FashionClient(transport=transport) as client, pytest.raises(FashionBoxError) as caught:
        client.detect(png_bytes())

    assert type(caught.value) is expected
    assert caught.value.__cause__ is original
    assert message in str(caught.value)
    if status is not None:
        assert caught.value.status == status.removeprefix("StatusCode.")


@pytest.mark.parametrize("call", ["health", "ready", "labels", "model_info"])
def test_errors_from_every_call_are_translated_not_only_from_detect(call: str) -> None:
    transport = FakeTransport(error=InferenceServerException(msg="connection refused", status="StatusCode.UNAVAILABLE"))

    with FashionClient(transport=transport) as client, pytest.raises(ConnectError):
        getattr(client, call)()


def test_every_client_error_is_a_fashionbox_error_and_input_errors_are_also_value_errors() -> None:
    for error in (ConnectError, DeadlineExceeded, InvalidImage, Overloaded, ModelNotReady, ProtocolError, ClientClosed):
        assert issubclass(error, FashionBoxError)
    assert issubclass(ConnectError, TransportError)
    assert issubclass(InvalidImage, ServerError)
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(ConfigError, ValueError)


# -- lifecycle ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.detect(png_bytes()),
        lambda c: c.detect_many([png_bytes()]),
        lambda c: c.health(),
        lambda c: c.ready(),
        lambda c: c.labels(),
        lambda c: c.model_info(),
    ],
    ids=["detect", "detect_many", "health", "ready", "labels", "model_info"],
)
def test_a_closed_client_refuses_every_call(answering: FakeTransport, call: Callable[[FashionClient], Any]) -> None:
    client = FashionClient(transport=answering)
    client.close()

    with pytest.raises(ClientClosed):
        call(client)
    assert answering.requests == []


def test_leaving_the_with_block_closes_the_transport_and_closing_twice_is_harmless(answering: FakeTransport) -> None:
    with FashionClient(transport=answering) as client:
        assert not client.is_closed

    assert client.is_closed and answering.closed
    client.close()


def test_a_closed_client_cannot_be_entered_again(answering: FakeTransport) -> None:
    client = FashionClient(transport=answering)
    client.close()

    with pytest.raises(ClientClosed), client:
        pass


def test_detect_many_returns_a_result_or_an_error_per_image_in_order(labels: LabelMap) -> None:
    good = dress_and_shoe_payload(labels)

    def respond(request: InferRequest) -> InferResultLike:
        if sent_image_of(request) == b"broken":
            raise InferenceServerException(msg="corrupt or truncated JPEG", status="StatusCode.INVALID_ARGUMENT")
        return detections_result([good])

    with FashionClient(transport=FakeTransport(respond)) as client:
        outcomes = client.detect_many([png_bytes(), b"broken", 42, png_bytes()])  # type: ignore[list-item]

    assert [type(o) for o in outcomes] == [ImageDetections, InvalidImage, InvalidInput, ImageDetections]


def test_detect_many_refuses_a_bad_timeout_at_once_instead_of_failing_every_image(answering: FakeTransport) -> None:
    with FashionClient(transport=answering) as client, pytest.raises(ConfigError):
        client.detect_many([png_bytes(), png_bytes()], timeout_s=-1)
    assert answering.requests == []


def sent_image_of(request: InferRequest) -> bytes:
    payload: bytes = request.inputs[0].data.reshape(-1)[0]
    return payload


# -- server and model ------------------------------------------------------------------------------------


def test_labels_are_read_from_the_ensemble_config_parameters(answering: FakeTransport, labels: LabelMap) -> None:
    with FashionClient(transport=answering) as client:
        assert client.labels() == labels


def test_labels_are_read_once_until_a_refresh_is_asked_for(answering: FakeTransport) -> None:
    with FashionClient(transport=answering) as client:
        client.labels()
        client.labels()
        client.labels(refresh=True)

    assert answering.config_reads == 2


@pytest.mark.parametrize("stored", [None, "{not json", json.dumps({"name": "x"})])
def test_a_config_without_a_readable_label_map_raises_protocol_error(stored: str | None) -> None:
    config = labels_config(None)
    if stored is not None:
        config.config.parameters[LABELS_PARAMETER].string_value = stored

    with FashionClient(transport=FakeTransport(config=config)) as client, pytest.raises(ProtocolError):
        client.labels()


def test_model_info_describes_the_ensemble_without_repeating_the_label_map(answering: FakeTransport) -> None:
    with FashionClient(transport=answering) as client:
        info = client.model_info()

    assert (info.name, info.versions, info.platform, info.max_batch_size) == ("fashion", ("1",), "ensemble", 16)
    assert [(t.name, t.datatype, t.shape) for t in info.inputs] == [("IMAGE", "BYTES", (-1, 1))]
    assert info.parameters == {"manifest_sha256": "abc123"}


@pytest.mark.parametrize(
    ("server_ready", "model_ready", "expected"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_ready_needs_both_the_server_and_the_model(server_ready: bool, model_ready: bool, expected: bool) -> None:
    transport = FakeTransport(server_ready=server_ready, model_ready=model_ready)

    with FashionClient(transport=transport) as client:
        assert client.ready() is expected
        assert client.health() is True


# -- configuration ------------------------------------------------------------------------------------------


def test_config_from_env_reads_the_prefixed_variables() -> None:
    config = ClientConfig.from_env(
        {
            "FASHIONBOX_URL": "triton:9001",
            "FASHIONBOX_REQUEST_TIMEOUT_S": "2.5",
            "FASHIONBOX_CONNECT_TIMEOUT_S": "1",
            "FASHIONBOX_KEEPALIVE_WITHOUT_CALLS": "false",
            "FASHIONBOX_IMAGE_FORMAT": "png",
            "FASHIONBOX_MODEL_VERSION": "",
            "UNRELATED": "ignored",
        }
    )

    assert config == ClientConfig(
        url="triton:9001",
        timeouts=Timeouts(connect_s=1.0, request_s=2.5),
        keepalive=KeepAlive(permit_without_calls=False),
        encoding=ImageEncoding(format="PNG"),
    )


def test_config_from_env_with_nothing_set_is_the_default() -> None:
    assert ClientConfig.from_env({}) == ClientConfig()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FASHIONBOX_REQUEST_TIMEOUT_S", "soon"),
        ("FASHIONBOX_CONNECT_TIMEOUT_S", "-1"),
        ("FASHIONBOX_JPEG_QUALITY", "0"),
        ("FASHIONBOX_URL", "http://triton:8001"),
        ("FASHIONBOX_KEEPALIVE_WITHOUT_CALLS", "maybe"),
        ("FASHIONBOX_IMAGE_FORMAT", "gif"),
    ],
)
def test_config_from_env_names_the_variable_it_cannot_parse(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ClientConfig.from_env({variable: value})


@pytest.mark.parametrize(
    "build",
    [
        lambda: Timeouts(request_s=0),
        lambda: Timeouts(connect_s=float("nan")),
        lambda: ImageEncoding(jpeg_quality=101),
        lambda: ClientConfig(url="grpc://host:8001"),
        lambda: KeepAlive(timeout_s=-1),
    ],
    ids=["zero-timeout", "nan-timeout", "quality", "url-scheme", "keepalive"],
)
def test_invalid_settings_are_refused_when_built(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


def test_the_url_argument_wins_over_the_configured_url(answering: FakeTransport) -> None:
    client = FashionClient("elsewhere:8001", config=ClientConfig(url="triton:8001"), transport=answering)

    assert client.url == "elsewhere:8001"
    assert client.config.url == "elsewhere:8001"


# -- result types --------------------------------------------------------------------------------------------


def sample_result() -> ImageDetections:
    return ImageDetections(
        width=200,
        height=100,
        detections=(
            Detection(
                BoundingBox(10, 10, 90, 90),
                "dress",
                0.9,
                {"sleeve length": AttributeScore("short (length)", 0.8)},
                category_index=5,
            ),
            Detection(
                BoundingBox(120, 20, 190, 60),
                "shirt, blouse",
                0.6,
                {"sleeve length": AttributeScore("wrist-length", 0.7)},
                category_index=0,
            ),
            Detection(BoundingBox(100, 70, 130, 95), "shoe", 0.3, category_index=10),
        ),
        model_version="2",
    )


def test_to_dict_has_the_documented_json_shape() -> None:
    result = sample_result().above(0.5)

    assert result.to_dict() == {
        "width": 200,
        "height": 100,
        "detections": [
            {
                "box": [10, 10, 90, 90],
                "category": "dress",
                "score": 0.9,
                "attributes": {"sleeve length": {"label": "short (length)", "score": 0.8}},
            },
            {
                "box": [120, 20, 190, 60],
                "category": "shirt, blouse",
                "score": 0.6,
                "attributes": {"sleeve length": {"label": "wrist-length", "score": 0.7}},
            },
        ],
    }
    assert json.loads(result.to_json()) == result.to_dict()


def test_filters_return_new_results_that_keep_the_image_and_provenance() -> None:
    result = sample_result()

    assert [d.category for d in result.above(0.6)] == ["dress", "shirt, blouse"]
    assert [d.category for d in result.with_category("shoe", "dress")] == ["dress", "shoe"]
    assert [d.category for d in result.with_attribute("sleeve length", "wrist-length")] == ["shirt, blouse"]
    filtered = result.above(0.99)
    assert (filtered.width, filtered.height, filtered.model_version, len(filtered)) == (200, 100, "2", 0)
    assert len(result) == 3


def test_an_attribute_filter_never_matches_a_category_the_group_does_not_apply_to() -> None:
    assert [d.category for d in sample_result().with_attribute("sleeve length", "sleeveless")] == []
    assert sample_result().detections[2].attribute("sleeve length") is None


def test_results_are_frozen_and_pickle() -> None:
    result = sample_result()

    with pytest.raises(AttributeError):
        result.width = 5  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(result)) == result


def test_a_bounding_box_knows_its_size() -> None:
    box = BoundingBox(10, 20, 40, 60)

    assert (box.width, box.height, box.area, box.as_list()) == (30, 40, 1200, [10, 20, 40, 60])


def test_float32_values_from_the_wire_read_as_their_shortest_decimal(answering: FakeTransport) -> None:
    with FashionClient(transport=answering) as client:
        dress = client.detect(png_bytes()).detections[0]

    assert repr(dress.score) == "0.9"
    assert dress.to_dict()["attributes"]["sleeve length"]["score"] == 0.9


# -- drawing -------------------------------------------------------------------------------------------------


def test_draw_returns_an_image_of_the_same_size_with_changed_pixels() -> None:
    image = Image.new("RGB", (200, 100), (255, 255, 255))

    drawn = sample_result().draw(image)

    assert drawn.size == image.size
    assert drawn.mode == "RGB"
    assert np.any(np.asarray(drawn) != np.asarray(image))
    assert np.all(np.asarray(image) == 255), "the caller's image must not be drawn on"


def test_draw_leaves_the_callers_numpy_array_untouched() -> None:
    pixels = np.full((100, 200, 3), 255, np.uint8)

    drawn = sample_result().draw(pixels)

    assert np.all(pixels == 255)
    assert np.any(np.asarray(drawn) != 255)


def test_draw_accepts_encoded_bytes_and_scales_boxes_to_a_thumbnail() -> None:
    thumbnail = png_bytes(size=(100, 50), colour=(255, 255, 255))
    only_box = ImageDetections(
        width=200, height=100, detections=(Detection(BoundingBox(100, 60, 180, 96), "hat", 0.5),)
    )

    drawn = np.asarray(draw_detections(thumbnail, only_box, show_attributes=False))

    assert drawn.shape == (50, 100, 3)
    assert np.any(drawn[47, 55:85] != 255), "the box's bottom edge belongs at half the original coordinates"


def test_each_category_keeps_one_colour() -> None:
    from fashionbox.client.draw import category_colour

    first, second, _ = sample_result().detections
    assert category_colour(first) == category_colour(Detection(BoundingBox(0, 0, 1, 1), "dress", 0.1, category_index=5))
    assert category_colour(first) != category_colour(second)


# -- packaging -----------------------------------------------------------------------------------------------


def test_importing_the_client_does_not_import_torch() -> None:
    code = "import sys, fashionbox.client; assert 'torch' not in sys.modules, 'torch was imported'"

    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert completed.returncode == 0, completed.stderr


def test_the_client_package_is_marked_as_typed() -> None:
    import fashionbox.client

    assert (Path(fashionbox.client.__file__).parent / "py.typed").is_file()
