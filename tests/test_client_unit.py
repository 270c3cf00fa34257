"""Both typed clients without a server: a fake transport answers with real tritonclient messages.

Every test that makes calls takes the ``twin`` fixture and runs twice: through ``FashionClient``
and through ``AsyncFashionClient`` (behind the blocking methods of ``client_twins.py``), against
one ``FakeTransport`` (``client_fakes.py``). Pure parts (request building, result types,
configuration, drawing, the retry schedule) run once: both clients use the same code. What only
asyncio has is in ``test_client_async_unit.py``.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from client_fakes import (
    FakeTransport,
    TritonClientRecord,
    detections_payload,
    detections_result,
    dress_and_shoe_payload,
    grpc_error,
    infer_result,
    labels_config,
    png_bytes,
    sent_image_of,
)
from client_twins import TWINS, Client, Twin
from PIL import Image
from tritonclient.utils import InferenceServerException

from fashionbox import contract
from fashionbox.client import (
    AccessDenied,
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
    ModelStatistics,
    Overloaded,
    ProtocolError,
    RetryPolicy,
    ServerError,
    Timeouts,
    TlsConfig,
    TransportError,
    draw_detections,
)
from fashionbox.client._base import LABELS_PARAMETER, InferRequest, InferResultLike
from fashionbox.client._retry import Attempts, retry_delay_s
from fashionbox.client._transport import channel_args, channel_credentials
from fashionbox.contract.labels import LabelMap, default_label_map

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.001, max_backoff_s=0.004, jitter=0.0)
RESTRICTED = "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest) -> Iterator[Twin]:
    with Twin(request.param) as twin:
        yield twin


@pytest.fixture(scope="module")
def labels() -> LabelMap:
    return default_label_map()


@pytest.fixture
def answering(labels: LabelMap) -> FakeTransport:
    payload = dress_and_shoe_payload(labels)
    return FakeTransport(lambda request: detections_result([payload]), config=labels_config(labels))


def sent_image(transport: FakeTransport) -> bytes:
    return sent_image_of(transport.requests[-1])


# -- requests: what goes on the wire --------------------------------------------------------------


def test_the_request_holds_one_image_as_a_bytes_tensor_and_asks_for_detections(
    twin: Twin, answering: FakeTransport
) -> None:
    with twin.client(transport=answering) as client:
        client.detect(png_bytes())

    request = answering.requests[0]
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.data.shape) == ("IMAGE", "BYTES", (1, 1))
    assert request.outputs == ("DETECTIONS",)
    assert request.model_name == contract.ENSEMBLE_MODEL
    assert request.model_version == ""
    assert request.timeout_s == pytest.approx(Timeouts().request_s, abs=0.5)


def test_the_request_tensor_is_accepted_by_tritonclient(twin: Twin, answering: FakeTransport) -> None:
    with twin.client(transport=answering) as client:
        client.detect(png_bytes())
    tensor = answering.requests[0].inputs[0]

    grpcclient.InferInput(tensor.name, list(tensor.data.shape), tensor.datatype).set_data_from_numpy(tensor.data)


def test_encoded_bytes_are_sent_exactly_as_given(twin: Twin, answering: FakeTransport) -> None:
    image = png_bytes() + b"\x00\x00"  # trailing NULs would be lost in a numpy bytes_ array

    with twin.client(transport=answering) as client:
        client.detect(image)

    assert sent_image(answering) == image


@pytest.mark.parametrize("as_path", [str, Path])
def test_a_file_is_sent_with_its_bytes_unchanged(
    twin: Twin, answering: FakeTransport, tmp_path: Path, as_path: Any
) -> None:
    file = tmp_path / "look.png"
    file.write_bytes(png_bytes())

    with twin.client(transport=answering) as client:
        client.detect(as_path(file))

    assert sent_image(answering) == file.read_bytes()


def test_a_missing_file_fails_before_anything_is_sent(twin: Twin, answering: FakeTransport, tmp_path: Path) -> None:
    with twin.client(transport=answering) as client, pytest.raises(InvalidInput, match="cannot read image file"):
        client.detect(tmp_path / "missing.jpg")

    assert answering.requests == []


def test_a_pil_image_is_sent_as_full_chroma_jpeg_by_default(twin: Twin, answering: FakeTransport) -> None:
    image = Image.new("RGB", (64, 48), (10, 120, 240))

    with twin.client(transport=answering) as client:
        client.detect(image)

    sent = Image.open(io.BytesIO(sent_image(answering)))
    assert sent.format == "JPEG"
    assert sent.size == (64, 48)
    assert np.abs(np.asarray(sent, np.int16) - np.asarray(image, np.int16)).max() <= 3


def test_png_encoding_sends_a_numpy_array_losslessly(twin: Twin, answering: FakeTransport) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    config = ClientConfig(encoding=ImageEncoding(format="PNG"))

    with twin.client(config=config, transport=answering) as client:
        client.detect(pixels)

    sent = Image.open(io.BytesIO(sent_image(answering)))
    assert sent.format == "PNG"
    assert np.array_equal(np.asarray(sent), pixels)


def test_an_image_with_transparency_is_sent_as_png_even_when_jpeg_is_configured(
    twin: Twin, answering: FakeTransport
) -> None:
    with twin.client(transport=answering) as client:
        client.detect(Image.new("RGBA", (8, 8), (255, 0, 0, 128)))

    sent = Image.open(io.BytesIO(sent_image(answering)))
    assert (sent.format, sent.mode) == ("PNG", "RGBA")


def test_a_pil_image_is_turned_upright_by_its_exif_orientation_before_it_is_sent(
    twin: Twin, answering: FakeTransport
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 200, 0)).save(buffer, format="JPEG", exif=exif)
    stored_landscape = Image.open(io.BytesIO(buffer.getvalue()))

    with twin.client(transport=answering) as client:
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
    twin: Twin, answering: FakeTransport, array: npt.NDArray[Any], complaint: str
) -> None:
    with twin.client(transport=answering) as client, pytest.raises(InvalidInput, match=complaint):
        client.detect(array)
    assert answering.requests == []


@pytest.mark.parametrize("value", [42, ["look.jpg"], None, b""])
def test_values_that_are_not_images_are_refused_with_a_hint(twin: Twin, answering: FakeTransport, value: Any) -> None:
    with twin.client(transport=answering) as client, pytest.raises(InvalidInput):
        client.detect(value)
    assert answering.requests == []


def test_timeout_s_overrides_the_configured_request_timeout_for_one_call(twin: Twin, answering: FakeTransport) -> None:
    config = ClientConfig(timeouts=Timeouts(request_s=12.0))

    with twin.client(config=config, transport=answering) as client:
        client.detect(png_bytes(), timeout_s=0.5)
        client.detect(png_bytes())

    assert [r.timeout_s for r in answering.requests] == [pytest.approx(0.5, abs=0.1), pytest.approx(12.0, abs=0.5)]


@pytest.mark.parametrize("timeout_s", [0, -1.0, True])
def test_a_timeout_that_is_not_a_positive_number_is_refused(
    twin: Twin, answering: FakeTransport, timeout_s: Any
) -> None:
    with twin.client(transport=answering) as client, pytest.raises(ConfigError, match="timeout_s"):
        client.detect(png_bytes(), timeout_s=timeout_s)


def test_channel_args_carry_the_connect_timeout_and_keepalive_in_milliseconds() -> None:
    config = ClientConfig(timeouts=Timeouts(connect_s=2.5), keepalive=KeepAlive(time_s=30, permit_without_calls=True))

    args = dict(channel_args(config))

    assert args["grpc.min_reconnect_backoff_ms"] == 2500
    assert args["grpc.keepalive_time_ms"] == 30_000
    assert args["grpc.keepalive_permit_without_calls"] == 1
    assert args["grpc.max_receive_message_length"] == 2**31 - 1


# -- responses: what comes back ------------------------------------------------------------------------


def test_detect_returns_typed_detections_read_from_the_detections_output(twin: Twin, answering: FakeTransport) -> None:
    with twin.client(transport=answering) as client:
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


def test_an_image_without_detections_gives_an_empty_result_not_none(twin: Twin, labels: LabelMap) -> None:
    empty = detections_payload(labels, width=10, height=10)
    transport = FakeTransport(lambda request: detections_result([empty]))

    with twin.client(transport=transport) as client:
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
def test_an_answer_that_breaks_the_contract_raises_protocol_error(
    twin: Twin, result: InferResultLike, complaint: str
) -> None:
    transport = FakeTransport(lambda request: result)

    with twin.client(transport=transport) as client, pytest.raises(ProtocolError, match=complaint):
        client.detect(png_bytes())


# -- errors: one gRPC status, one exception ----------------------------------------------------------

IN_ENSEMBLE = "in ensemble 'fashion', [request id: <id_unknown>]"
"""How Triton 2.51 prefixes an error raised by one of the ensemble's steps."""


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.INVALID_ARGUMENT", "not a JPEG, PNG or WebP image (unrecognised header)", InvalidImage),
        ("StatusCode.INVALID_ARGUMENT", "Request for unknown model: 'fashion' is not found", ModelNotReady),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ConnectError),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", Overloaded),
        # Triton 2.51's exact words for the ensemble's first step refusing (docs/RELIABILITY.md).
        ("StatusCode.UNAVAILABLE", f"{IN_ENSEMBLE} Exceeds maximum queue size", Overloaded),
        ("StatusCode.UNAVAILABLE", f"{IN_ENSEMBLE} Request timeout expired", Overloaded),
        (
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'fashion' version 1 is not at ready state",
            ModelNotReady,
        ),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded),
        ("StatusCode.RESOURCE_EXHAUSTED", "out of memory", Overloaded),
        ("StatusCode.RESOURCE_EXHAUSTED", "Received message larger than max (9000 vs. 4096)", InvalidImage),
        ("StatusCode.UNAVAILABLE", RESTRICTED, AccessDenied),
        ("StatusCode.PERMISSION_DENIED", "admin key required", AccessDenied),
        ("StatusCode.UNAUTHENTICATED", "bad token", AccessDenied),
        ("StatusCode.NOT_FOUND", "model 'fashion' not found", ModelNotReady),
        ("StatusCode.CANCELLED", "Locally cancelled by application!", TransportError),
        ("StatusCode.CANCELLED", "CANCELLED", ConnectError),  # the server shut down with the call open
        ("StatusCode.INTERNAL", "python backend crashed", ServerError),
        ("StatusCode.INTERNAL", f"{IN_ENSEMBLE} Stub process 'preprocess_0_0' is not healthy.", ModelNotReady),
        ("StatusCode.UNIMPLEMENTED", "no such method", ServerError),
        (None, "model version must be a string", ProtocolError),
    ],
)
def test_each_grpc_status_becomes_its_own_fashionbox_error_chained_to_the_original(
    twin: Twin, status: str | None, message: str, expected: type[FashionBoxError]
) -> None:
    original = InferenceServerException(msg=message, status=status)
    transport = FakeTransport(error=original)

    with twin.client(transport=transport) as client, pytest.raises(FashionBoxError) as caught:
        client.detect(png_bytes())

    assert type(caught.value) is expected
    assert caught.value.__cause__ is original
    assert message in str(caught.value)
    if status is not None:
        assert caught.value.status == status.removeprefix("StatusCode.")


@pytest.mark.parametrize("call", ["health", "ready", "labels", "model_info", "statistics"])
def test_errors_from_every_call_are_translated_not_only_from_detect(twin: Twin, call: str) -> None:
    transport = FakeTransport(error=InferenceServerException(msg="connection refused", status="StatusCode.UNAVAILABLE"))

    with twin.client(transport=transport) as client, pytest.raises(ConnectError):
        getattr(client, call)()


def test_every_client_error_is_a_fashionbox_error_and_input_errors_are_also_value_errors() -> None:
    for error in (
        ConnectError,
        DeadlineExceeded,
        InvalidImage,
        Overloaded,
        ModelNotReady,
        AccessDenied,
        ProtocolError,
        ClientClosed,
    ):
        assert issubclass(error, FashionBoxError)
    assert issubclass(ConnectError, TransportError)
    assert issubclass(InvalidImage, ServerError)
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("status", "message", "retryable"),
    [
        ("UNAVAILABLE", "failed to connect to all addresses", True),
        ("UNAVAILABLE", "Exceeds maximum queue size", True),
        ("UNAVAILABLE", f"{IN_ENSEMBLE} Request timeout expired", True),
        ("RESOURCE_EXHAUSTED", "out of memory", True),
        ("UNAVAILABLE", "Request for unknown model: 'fashion' version 1 is not at ready state", True),
        ("NOT_FOUND", "Request for unknown model: 'fashion' is not found", False),
        ("NOT_FOUND", "Request for unknown model: 'fashion' has no available versions", True),
        ("INTERNAL", "in ensemble 'fashion', model 'attributes' failed: Server not ready", True),
        ("INTERNAL", "python backend crashed", False),
        ("INTERNAL", "in ensemble 'fashion', Stub process 'preprocess_0_0' is not healthy.", True),
        ("RESOURCE_EXHAUSTED", "Sent message larger than max (9000 vs. 4096)", False),
        ("UNAVAILABLE", RESTRICTED, False),
        ("INVALID_ARGUMENT", "corrupt JPEG", False),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", False),
        ("CANCELLED", "Locally cancelled", False),
    ],
)
def test_only_errors_that_may_pass_by_waiting_are_marked_retryable(status: str, message: str, retryable: bool) -> None:
    from fashionbox.client._exceptions import error_from_triton

    assert error_from_triton(grpc_error(status, message)).retryable is retryable


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
        lambda c: c.statistics(),
    ],
    ids=["detect", "detect_many", "health", "ready", "labels", "model_info", "statistics"],
)
def test_a_closed_client_refuses_every_call(
    twin: Twin, answering: FakeTransport, call: Callable[[Client], Any]
) -> None:
    client = twin.client(transport=answering)
    client.close()

    with pytest.raises(ClientClosed):
        call(client)
    assert answering.requests == []


def test_leaving_the_with_block_closes_the_transport_and_closing_twice_is_harmless(
    twin: Twin, answering: FakeTransport
) -> None:
    with twin.client(transport=answering) as client:
        assert not client.is_closed

    assert client.is_closed and answering.closed
    client.close()


def test_a_closed_client_cannot_be_entered_again(twin: Twin, answering: FakeTransport) -> None:
    client = twin.client(transport=answering)
    client.close()

    with pytest.raises(ClientClosed), client:
        pass


def test_detect_many_returns_a_result_or_an_error_per_image_in_order(twin: Twin, labels: LabelMap) -> None:
    good = dress_and_shoe_payload(labels)

    def respond(request: InferRequest) -> InferResultLike:
        if sent_image_of(request) == b"broken":
            raise InferenceServerException(msg="corrupt or truncated JPEG", status="StatusCode.INVALID_ARGUMENT")
        return detections_result([good])

    with twin.client(transport=FakeTransport(respond)) as client:
        outcomes = client.detect_many([png_bytes(), b"broken", 42, png_bytes()])  # type: ignore[list-item]

    assert [type(o) for o in outcomes] == [ImageDetections, InvalidImage, InvalidInput, ImageDetections]


def test_detect_many_refuses_a_bad_timeout_at_once_instead_of_failing_every_image(
    twin: Twin, answering: FakeTransport
) -> None:
    with twin.client(transport=answering) as client, pytest.raises(ConfigError):
        client.detect_many([png_bytes(), png_bytes()], timeout_s=-1)
    assert answering.requests == []


# -- server and model ------------------------------------------------------------------------------------


def test_labels_are_read_from_the_ensemble_config_parameters(
    twin: Twin, answering: FakeTransport, labels: LabelMap
) -> None:
    with twin.client(transport=answering) as client:
        assert client.labels() == labels


def test_labels_are_read_once_until_a_refresh_is_asked_for(twin: Twin, answering: FakeTransport) -> None:
    with twin.client(transport=answering) as client:
        client.labels()
        client.labels()
        client.labels(refresh=True)

    assert answering.config_reads == 2


@pytest.mark.parametrize("stored", [None, "{not json", json.dumps({"name": "x"})])
def test_a_config_without_a_readable_label_map_raises_protocol_error(twin: Twin, stored: str | None) -> None:
    config = labels_config(None)
    if stored is not None:
        config.config.parameters[LABELS_PARAMETER].string_value = stored

    with twin.client(transport=FakeTransport(config=config)) as client, pytest.raises(ProtocolError):
        client.labels()


def test_model_info_describes_the_ensemble_without_repeating_the_label_map(
    twin: Twin, answering: FakeTransport
) -> None:
    with twin.client(transport=answering) as client:
        info = client.model_info()

    assert (info.name, info.versions, info.platform, info.max_batch_size) == ("fashion", ("1",), "ensemble", 16)
    assert [(t.name, t.datatype, t.shape) for t in info.inputs] == [("IMAGE", "BYTES", (-1, 1))]
    assert info.parameters == {"manifest_sha256": "abc123"}


@pytest.mark.parametrize(
    ("server_ready", "model_ready", "expected"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_ready_needs_both_the_server_and_the_model(
    twin: Twin, server_ready: bool, model_ready: bool, expected: bool
) -> None:
    transport = FakeTransport(server_ready=server_ready, model_ready=model_ready)

    with twin.client(transport=transport) as client:
        assert client.ready() is expected
        assert client.health() is True


def test_statistics_are_a_typed_summary_per_model_sorted_by_name(twin: Twin, answering: FakeTransport) -> None:
    with twin.client(transport=answering) as client:
        detector, ensemble = client.statistics()

    assert detector == ModelStatistics(
        model_name="detector",
        model_version="1",
        request_count=7,
        failure_count=0,
        inference_count=7,
        execution_count=3,
        avg_request_ms=10.0,
        avg_queue_ms=2.0,
        avg_compute_ms=6.0,
        avg_batch_size=7 / 3,
    )
    assert (ensemble.request_count, ensemble.failure_count, ensemble.success_count) == (8, 1, 7)
    assert (ensemble.avg_request_ms, ensemble.avg_queue_ms, ensemble.avg_batch_size) == (20.0, 0.0, 0.0)
    assert answering.statistics_asked == [""], "no name asks Triton for every model"


def test_statistics_for_one_model_ask_the_server_for_that_model(twin: Twin, answering: FakeTransport) -> None:
    with twin.client(transport=answering) as client:
        client.statistics("detector")

    assert answering.statistics_asked == ["detector"]


# -- retries ------------------------------------------------------------------------------------------------


def retrying_client(
    twin: Twin, transport: FakeTransport, policy: RetryPolicy = FAST_RETRY, **timeouts: float
) -> Client:
    return twin.client(config=ClientConfig(retry=policy, timeouts=Timeouts(**timeouts)), transport=transport)


@pytest.mark.parametrize(
    "failure",
    [
        grpc_error("UNAVAILABLE", "failed to connect to all addresses; last error: Connection refused"),
        grpc_error("UNAVAILABLE", "Server is stopping to serve requests."),
        grpc_error("UNAVAILABLE", "Exceeds maximum queue size"),
        grpc_error("RESOURCE_EXHAUSTED", "out of memory"),
        grpc_error("UNAVAILABLE", "Request for unknown model: 'fashion' version 1 is not at ready state"),
        grpc_error("NOT_FOUND", "Request for unknown model: 'fashion' has no available versions"),
        grpc_error("INTERNAL", "in ensemble 'fashion', model 'attributes' failed: Server not ready"),
    ],
    ids=["refused", "stopping", "queue-full", "exhausted", "loading", "unloaded", "step-stopping"],
)
def test_unavailable_and_resource_exhausted_are_retried_until_an_attempt_succeeds(
    twin: Twin, labels: LabelMap, failure: InferenceServerException
) -> None:
    payload = dress_and_shoe_payload(labels)
    transport = FakeTransport(lambda request: detections_result([payload]), failures=[failure, failure])

    with retrying_client(twin, transport) as client:
        result = client.detect(png_bytes())

    assert len(result) == 2
    assert len(transport.requests) == 3


def test_retries_stop_after_max_attempts_and_raise_the_last_error_chained(twin: Twin) -> None:
    failures = [grpc_error("UNAVAILABLE", f"connection refused {n}") for n in range(1, 10)]
    transport = FakeTransport(lambda request: detections_result([]), failures=failures)

    with retrying_client(twin, transport) as client, pytest.raises(ConnectError, match="refused 4") as caught:
        client.detect(png_bytes())

    assert len(transport.requests) == FAST_RETRY.max_attempts
    assert caught.value.__cause__ is failures[3]


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (grpc_error("INVALID_ARGUMENT", "not a JPEG, PNG or WebP image"), InvalidImage),
        (grpc_error("RESOURCE_EXHAUSTED", "Sent message larger than max (9000 vs. 4096)"), InvalidImage),
        (grpc_error("NOT_FOUND", "Request for unknown model: 'fashoin' is not found"), ModelNotReady),
        (grpc_error("DEADLINE_EXCEEDED", "Deadline Exceeded"), DeadlineExceeded),
        (grpc_error("UNAVAILABLE", RESTRICTED), AccessDenied),
        (grpc_error("INTERNAL", "python backend crashed"), ServerError),
    ],
    ids=["bad-image", "too-large", "unknown-model", "deadline", "restricted", "internal"],
)
def test_errors_that_cannot_pass_by_waiting_are_raised_at_once(
    twin: Twin, failure: InferenceServerException, expected: type[FashionBoxError]
) -> None:
    transport = FakeTransport(lambda request: detections_result([]), error=failure)

    with retrying_client(twin, transport) as client, pytest.raises(expected):
        client.detect(png_bytes())

    assert len(transport.requests) == 1


def test_each_attempt_gets_the_time_left_until_the_calls_deadline(twin: Twin) -> None:
    failure = grpc_error("UNAVAILABLE", "connection refused")
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.05, jitter=0.0)
    transport = FakeTransport(lambda request: detections_result([]), failures=[failure] * 3)

    with retrying_client(twin, transport, policy) as client, pytest.raises(ConnectError):
        client.detect(png_bytes(), timeout_s=2.0)

    first, second, third = transport.timeouts_s
    assert first == pytest.approx(2.0, abs=0.02)
    assert second == pytest.approx(first - 0.05, abs=0.03)
    assert third == pytest.approx(second - 0.05, abs=0.03)


def test_a_backoff_that_would_end_after_the_deadline_is_not_slept(twin: Twin) -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=1.0, max_backoff_s=1.0, jitter=0.0)
    transport = FakeTransport(error=grpc_error("UNAVAILABLE", "connection refused"))

    started = time.monotonic()
    with retrying_client(twin, transport, policy) as client, pytest.raises(ConnectError):
        client.detect(png_bytes(), timeout_s=0.3)

    assert time.monotonic() - started < 0.2
    assert len(transport.requests) == 1


@pytest.mark.parametrize("call", ["labels", "model_info", "statistics"])
def test_reads_of_the_server_are_retried_like_detections(twin: Twin, labels: LabelMap, call: str) -> None:
    transport = FakeTransport(config=labels_config(labels), failures=[grpc_error("UNAVAILABLE", "connection refused")])

    with retrying_client(twin, transport) as client:
        getattr(client, call)()

    assert len(transport.timeouts_s) >= 2


@pytest.mark.parametrize("call", ["health", "ready"])
def test_health_and_ready_are_never_retried_they_report_now(twin: Twin, call: str) -> None:
    transport = FakeTransport(failures=[grpc_error("UNAVAILABLE", "connection refused")])

    with retrying_client(twin, transport) as client, pytest.raises(ConnectError):
        getattr(client, call)()

    assert len(transport.timeouts_s) == 1


def test_a_disabled_retry_policy_makes_one_attempt(twin: Twin) -> None:
    transport = FakeTransport(error=grpc_error("UNAVAILABLE", "connection refused"))

    with retrying_client(twin, transport, RetryPolicy.disabled()) as client, pytest.raises(ConnectError):
        client.detect(png_bytes())

    assert len(transport.requests) == 1


def test_the_backoff_grows_by_the_multiplier_up_to_its_cap() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=3.0, jitter=0.0)

    assert [policy.backoff_s(n, 0.5) for n in range(1, 6)] == pytest.approx([0.1, 0.3, 0.9, 1.0, 1.0])
    assert policy.backoff_s(10_000, 0.5) == 1.0, "no overflow for a long outage"


@pytest.mark.parametrize("jitter", [0.0, 0.25, 1.0])
def test_jitter_takes_a_random_share_off_the_backoff_never_adds_to_it(jitter: float) -> None:
    policy = RetryPolicy(initial_backoff_s=0.4, max_backoff_s=0.4, jitter=jitter)

    assert policy.backoff_s(1, 0.0) == 0.4
    assert policy.backoff_s(1, 0.999999) == pytest.approx(0.4 * (1 - jitter), abs=1e-6)


def test_the_retry_schedule_never_sleeps_into_the_deadline_or_past_the_last_attempt() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.5, max_backoff_s=0.5, jitter=0.0)
    refused = ConnectError("connection refused", status="UNAVAILABLE")

    assert retry_delay_s(policy, attempt=1, error=refused, remaining_s=10.0, random_fraction=0.0) == 0.5
    assert retry_delay_s(policy, attempt=1, error=refused, remaining_s=0.5, random_fraction=0.0) is None
    assert retry_delay_s(policy, attempt=3, error=refused, remaining_s=10.0, random_fraction=0.0) is None
    bad = InvalidImage("corrupt", status="INVALID_ARGUMENT")
    assert retry_delay_s(policy, attempt=1, error=bad, remaining_s=10.0, random_fraction=0.0) is None


def test_attempts_count_down_one_deadline_on_the_given_clock() -> None:
    now = [100.0]
    attempts = Attempts(FAST_RETRY, 5.0, clock=lambda: now[0], random_fraction=lambda: 0.0)

    assert attempts.start() == 5.0
    now[0] += 2.0
    assert attempts.delay_after(ConnectError("refused", status="UNAVAILABLE")) == FAST_RETRY.initial_backoff_s
    assert attempts.start() == 3.0
    assert attempts.attempt == 2
    now[0] += 3.0
    with pytest.raises(DeadlineExceeded):
        attempts.start()


# -- detect_many: pipelined ------------------------------------------------------------------------------


def test_detect_many_keeps_max_in_flight_requests_going_at_once(twin: Twin, answering: FakeTransport) -> None:
    answering.delay_s = 0.02

    with twin.client(transport=answering) as client:
        outcomes = client.detect_many([png_bytes()] * 40, max_in_flight=8)

    assert all(isinstance(o, ImageDetections) for o in outcomes)
    assert answering.peak_in_flight == 8


def test_detect_many_returns_results_in_the_order_of_the_images_not_of_completion(twin: Twin, labels: LabelMap) -> None:
    def width(request: InferRequest) -> int:
        return Image.open(io.BytesIO(sent_image_of(request))).size[0]

    def respond(request: InferRequest) -> InferResultLike:
        return detections_result([empty_payload(labels, width(request))])

    transport = FakeTransport(respond, delay_s=lambda request: 0.002 * (50 - width(request)))  # the first answer last
    with twin.client(transport=transport) as client:
        outcomes = client.detect_many([png_bytes(size=(w, 8)) for w in range(10, 50)], max_in_flight=16)

    assert [o.width for o in outcomes if isinstance(o, ImageDetections)] == list(range(10, 50))


def empty_payload(labels: LabelMap, width: int) -> bytes:
    return detections_payload(labels, width=width, height=8)


def test_detect_many_reads_the_images_lazily_no_further_ahead_than_max_in_flight(
    twin: Twin, answering: FakeTransport
) -> None:
    answering.delay_s = 0.01
    produced = 0
    most_ahead = 0

    def images() -> Any:
        nonlocal produced, most_ahead
        for _ in range(30):
            produced += 1
            most_ahead = max(most_ahead, produced - len(answering.requests))
            yield png_bytes()

    with twin.client(transport=answering) as client:
        assert len(client.detect_many(images(), max_in_flight=4)) == 30

    assert most_ahead <= 4 + 1


def test_detect_many_with_one_in_flight_sends_one_after_another(twin: Twin, answering: FakeTransport) -> None:
    with twin.client(transport=answering) as client:
        client.detect_many([png_bytes()] * 5, max_in_flight=1)

    assert answering.peak_in_flight == 1


@pytest.mark.parametrize("max_in_flight", [0, -3, 2.5, True])
def test_detect_many_refuses_a_max_in_flight_that_is_not_a_positive_integer(
    twin: Twin, answering: FakeTransport, max_in_flight: Any
) -> None:
    with twin.client(transport=answering) as client, pytest.raises(ConfigError, match="max_in_flight"):
        client.detect_many([png_bytes()], max_in_flight=max_in_flight)
    assert answering.requests == []


def test_closing_the_client_from_another_thread_during_detect_many_raises_client_closed(
    twin: Twin, answering: FakeTransport
) -> None:
    answering.delay_s = 0.01
    client = twin.client(transport=answering)
    closer = threading.Timer(0.05, client.close)
    closer.start()

    with pytest.raises(ClientClosed):
        client.detect_many([png_bytes()] * 500, max_in_flight=4)
    closer.join()
    assert len(answering.requests) < 500


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


def _connection(tmp_path: Path, argv: list[str], environ: dict[str, str] | None = None) -> ClientConfig:
    import argparse

    from fashionbox.client.connection import add_connection_arguments, connection_from_arguments

    parser = argparse.ArgumentParser()
    add_connection_arguments(parser)
    return connection_from_arguments(parser.parse_args(argv), environ or {})


def test_the_tools_connection_flags_go_over_the_variables_and_carry_the_files_bytes(tmp_path: Path) -> None:
    pem = {name: tmp_path / f"{name}.pem" for name in ("ca", "env_ca", "cert", "key")}
    for name, path in pem.items():
        path.write_text(f"-----BEGIN {name}-----\n")
    (tmp_path / "admin.key").write_text("  the-operators-admin-key \n")

    assert _connection(tmp_path, []) == ClientConfig()  # nothing given: the defaults, plaintext
    mutual = _connection(tmp_path, ["--tls-ca", str(pem["ca"]), "--tls-cert", str(pem["cert"]),
                                    "--tls-key", str(pem["key"]), "--tls-server-name", "fashionbox.internal",
                                    "--admin-key-file", str(tmp_path / "admin.key")],
                         {"FASHIONBOX_TLS_ROOT_CERTIFICATES": str(pem["env_ca"]),
                          "FASHIONBOX_HEADERS": "x-team=catalog"})
    assert mutual.tls == TlsConfig(root_certificates=b"-----BEGIN ca-----\n", private_key=b"-----BEGIN key-----\n",
                                   certificate_chain=b"-----BEGIN cert-----\n",
                                   server_name_override="fashionbox.internal")
    assert mutual.headers == {"x-team": "catalog", contract.ADMIN_GRPC_HEADER: "the-operators-admin-key"}
    assert pickle.loads(pickle.dumps(mutual)) == mutual  # sent to other processes as it is
    # a flag left out keeps the variable's value; the files' bytes, not their paths
    from_env = _connection(tmp_path, ["--tls-cert", str(pem["cert"]), "--tls-key", str(pem["key"])],
                           {"FASHIONBOX_TLS_ROOT_CERTIFICATES": str(pem["env_ca"])})
    assert from_env.tls is not None and from_env.tls.root_certificates == b"-----BEGIN env_ca-----\n"
    # a server name alone is TLS against the system's roots
    named = _connection(tmp_path, ["--tls-server-name", "fashionbox.internal"])
    assert named.tls == TlsConfig(server_name_override="fashionbox.internal")


@pytest.mark.parametrize(("argv", "message"), [
    (["--tls-ca", "{tmp}/missing.pem"], r"--tls-ca .*missing\.pem: No such file"),
    (["--tls-ca", "{tmp}/plain.txt"], r"--tls-ca .*plain\.txt: not a PEM file"),
    (["--tls-cert", "{tmp}/cert.pem"], "mutual TLS needs both private_key and certificate_chain"),
    (["--admin-key-file", "{tmp}/empty.key"], r"--admin-key-file .*empty\.key: the file is empty"),
    (["--admin-key-file", "{tmp}/missing.key"], r"--admin-key-file .*missing\.key: No such file"),
])
def test_the_tools_connection_flags_name_what_is_wrong(tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "plain.txt").write_text("not a certificate")
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "empty.key").write_text("\n")
    with pytest.raises(ConfigError, match=message):
        _connection(tmp_path, [arg.format(tmp=tmp_path) for arg in argv])


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


def test_the_url_argument_wins_over_the_configured_url(twin: Twin, answering: FakeTransport) -> None:
    client = twin.client("elsewhere:8001", config=ClientConfig(url="triton:8001"), transport=answering)

    assert client.url == "elsewhere:8001"
    assert client.config.url == "elsewhere:8001"


def test_config_from_env_reads_retry_tls_headers_size_and_compression(tmp_path: Path) -> None:
    config = ClientConfig.from_env(
        {
            "FASHIONBOX_RETRY_MAX_ATTEMPTS": "6",
            "FASHIONBOX_RETRY_INITIAL_BACKOFF_S": "0.2",
            "FASHIONBOX_RETRY_MAX_BACKOFF_S": "3",
            "FASHIONBOX_RETRY_MULTIPLIER": "1.5",
            "FASHIONBOX_RETRY_JITTER": "1",
            "FASHIONBOX_TLS_ROOT_CERTIFICATES": "/etc/fashionbox/ca.pem",
            "FASHIONBOX_TLS_PRIVATE_KEY": "/etc/fashionbox/client.key",
            "FASHIONBOX_TLS_CERTIFICATE_CHAIN": "/etc/fashionbox/client.pem",
            "FASHIONBOX_TLS_SERVER_NAME_OVERRIDE": "fashionbox.internal",
            "FASHIONBOX_HEADERS": "Admin-Key=s3cr%2Ct, x-team = search ",
            "FASHIONBOX_MAX_MESSAGE_BYTES": "16777216",
            "FASHIONBOX_COMPRESSION": "GZIP",
            "FASHIONBOX_KEEPALIVE_MAX_PINGS_WITHOUT_DATA": "0",
        }
    )

    assert config.retry == RetryPolicy(
        max_attempts=6, initial_backoff_s=0.2, max_backoff_s=3.0, multiplier=1.5, jitter=1.0
    )
    assert config.tls == TlsConfig(
        root_certificates="/etc/fashionbox/ca.pem",
        private_key="/etc/fashionbox/client.key",
        certificate_chain="/etc/fashionbox/client.pem",
        server_name_override="fashionbox.internal",
    )
    assert config.headers == {"admin-key": "s3cr,t", "x-team": "search"}
    assert (config.max_message_bytes, config.compression) == (16 * 2**20, "gzip")
    assert config.keepalive.max_pings_without_data == 0


def test_tls_is_on_with_system_roots_when_only_fashionbox_tls_is_set() -> None:
    assert ClientConfig.from_env({"FASHIONBOX_TLS": "true"}).tls == TlsConfig()
    assert ClientConfig.from_env({"FASHIONBOX_TLS": "false"}).tls is None
    assert ClientConfig.from_env({"FASHIONBOX_COMPRESSION": "none"}).compression is None


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"FASHIONBOX_RETRY_MAX_ATTEMPTS": "0"}, "FASHIONBOX_RETRY_MAX_ATTEMPTS"),
        ({"FASHIONBOX_RETRY_JITTER": "2"}, "FASHIONBOX_RETRY_JITTER"),
        ({"FASHIONBOX_RETRY_MAX_BACKOFF_S": "0.01"}, "FASHIONBOX_RETRY_"),
        ({"FASHIONBOX_TLS": "false", "FASHIONBOX_TLS_ROOT_CERTIFICATES": "ca.pem"}, "FASHIONBOX_TLS"),
        ({"FASHIONBOX_TLS_PRIVATE_KEY": "client.key"}, "FASHIONBOX_TLS_"),
        ({"FASHIONBOX_HEADERS": "no-equals-sign"}, "FASHIONBOX_HEADERS"),
        ({"FASHIONBOX_HEADERS": "grpc-timeout=1"}, "FASHIONBOX_HEADERS"),
        ({"FASHIONBOX_MAX_MESSAGE_BYTES": "0"}, "FASHIONBOX_MAX_MESSAGE_BYTES"),
        ({"FASHIONBOX_COMPRESSION": "zstd"}, "FASHIONBOX_COMPRESSION"),
    ],
)
def test_config_from_env_names_the_variables_behind_a_bad_retry_tls_or_header_setting(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        ClientConfig.from_env(environ)


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetryPolicy(max_attempts=0),
        lambda: RetryPolicy(initial_backoff_s=2.0, max_backoff_s=1.0),
        lambda: RetryPolicy(multiplier=0.5),
        lambda: RetryPolicy(jitter=1.5),
        lambda: TlsConfig(private_key=b"key"),
        lambda: TlsConfig(root_certificates=b""),
        lambda: TlsConfig(server_name_override=""),
        lambda: ClientConfig(headers={"bad name": "x"}),
        lambda: ClientConfig(headers={"x-key": "line\nbreak"}),
        lambda: ClientConfig(headers={"X-Key": "a", "x-key": "b"}),
        lambda: ClientConfig(headers={"trace-bin": "x"}),
        lambda: ClientConfig(max_message_bytes=0),
        lambda: ClientConfig(compression="brotli"),  # type: ignore[arg-type]
    ],
    ids=[
        "no-attempts",
        "max-below-initial",
        "shrinking-backoff",
        "jitter-above-one",
        "key-without-chain",
        "empty-pem",
        "empty-override",
        "header-name",
        "header-value",
        "header-twice",
        "binary-header",
        "message-size",
        "compression",
    ],
)
def test_invalid_retry_tls_and_channel_settings_are_refused_when_built(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


def test_header_names_are_lowercased_as_http2_sends_them_and_values_stay_out_of_repr() -> None:
    config = ClientConfig(headers={"Admin-Key": "s3cret"}, tls=TlsConfig(private_key=b"KEY", certificate_chain=b"C"))

    assert config.headers == {"admin-key": "s3cret"}
    assert "s3cret" not in repr(config)
    assert "KEY" not in repr(config)


def test_channel_args_carry_the_message_limit_reconnect_pacing_and_tls_name() -> None:
    config = ClientConfig(
        max_message_bytes=1024,
        retry=RetryPolicy(initial_backoff_s=0.25, max_backoff_s=4.0),
        tls=TlsConfig(server_name_override="fashionbox.test"),
    )

    args = dict(channel_args(config))

    assert args["grpc.max_send_message_length"] == args["grpc.max_receive_message_length"] == 1024
    assert (args["grpc.initial_reconnect_backoff_ms"], args["grpc.max_reconnect_backoff_ms"]) == (250, 4000)
    assert args["grpc.ssl_target_name_override"] == "fashionbox.test"
    assert "grpc.ssl_target_name_override" not in dict(channel_args(ClientConfig()))


def test_tls_credentials_come_from_pem_bytes_or_files_and_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    import grpc

    (tmp_path / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    from_file = ClientConfig(tls=TlsConfig(root_certificates=str(tmp_path / "ca.pem")))
    from_bytes = ClientConfig(tls=TlsConfig(root_certificates=b"-----BEGIN CERTIFICATE-----\n"))

    assert channel_credentials(ClientConfig()) is None
    assert isinstance(channel_credentials(from_file), grpc.ChannelCredentials)
    assert isinstance(channel_credentials(from_bytes), grpc.ChannelCredentials)
    assert from_file.tls is not None and from_file.tls.load()[0] == b"-----BEGIN CERTIFICATE-----\n"
    missing = ClientConfig(tls=TlsConfig(root_certificates=tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"root_certificates.*missing\.pem"):
        FashionClient(config=missing)


def test_the_grpc_transport_sends_headers_and_compression_with_its_calls(
    twin: Twin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fashionbox.client import _transport

    record = TritonClientRecord()
    monkeypatch.setattr(_transport.grpcclient, "InferenceServerClient", record.sync_client)
    monkeypatch.setattr(_transport.aio_grpcclient, "InferenceServerClient", record.async_client)
    config = ClientConfig(url="triton:9001", headers={"admin-key": "k"}, compression="deflate")
    client = twin.client(config=config)  # asyncio: outside any event loop
    if twin.is_async:
        assert record.built == {}, "the asyncio channel is made inside the running loop, on the first call"

    with client:
        client.detect(png_bytes())
        client.health()
        client.statistics()

    assert record.built["url"] == "triton:9001"
    assert record.built["channel_args"] == channel_args(config)
    assert record.built["creds"] is None
    assert [name for name, _ in record.calls] == ["infer", "is_server_live", "get_inference_statistics"]
    assert all(kwargs["headers"] == {"admin-key": "k"} for _, kwargs in record.calls)
    assert record.calls[0][1]["compression_algorithm"] == "deflate"
    assert record.closed


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


def test_float32_values_from_the_wire_read_as_their_shortest_decimal(twin: Twin, answering: FakeTransport) -> None:
    with twin.client(transport=answering) as client:
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


def _client_import_graph() -> dict[str, set[str]]:
    """Module -> the client modules it imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    import ast

    import fashionbox.client

    folder = Path(fashionbox.client.__file__).parent
    names = {path.stem for path in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 or node.module == "fashionbox.client":
                    targets = [node.module] if node.level == 1 and node.module else [a.name for a in node.names]
                elif node.module and node.module.startswith("fashionbox.client."):
                    targets = [node.module.split(".")[2]]
                else:
                    targets = []
                imported.update(t.split(".")[0] for t in targets)
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[2] for a in node.names if a.name.startswith("fashionbox.client."))
        graph[path.stem] = (imported & names) - {path.stem}
    return graph


def test_the_client_modules_import_each_other_without_cycles() -> None:
    graph = _client_import_graph()
    assert graph["_drawing"] == {"_images"}, "drawing reads detections through protocols, not _types"

    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError(" -> ".join((*path[path.index(module) :], module)))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
