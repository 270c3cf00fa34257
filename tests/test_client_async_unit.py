"""The asyncio client without a server: the mirror of ``test_client_unit.py`` for ``AsyncFashionClient``.

Every test here has a namesake in the blocking client's file and checks the same behaviour
through ``await``; the fake is the same ``FakeTransport``, behind ``AsyncFakeTransport``. Pure parts
(request encoding details, result types, configuration, drawing, the retry schedule) are shared
code and tested in the blocking file only. The async-only tests at the end cover what only
asyncio has: the channel made inside the running loop, encoding off the loop, cancellation.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from client_fakes import (
    AsyncFakeTransport,
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
from PIL import Image
from tritonclient.utils import InferenceServerException

from fashionbox import contract
from fashionbox.client import (
    AccessDenied,
    AsyncFashionClient,
    AttributeScore,
    BoundingBox,
    ClientClosed,
    ClientConfig,
    ConfigError,
    ConnectError,
    DeadlineExceeded,
    FashionBoxError,
    ImageDetections,
    ImageEncoding,
    InvalidImage,
    InvalidInput,
    ModelNotReady,
    ModelStatistics,
    Overloaded,
    ProtocolError,
    RetryPolicy,
    ServerError,
    Timeouts,
    TransportError,
)
from fashionbox.client._base import LABELS_PARAMETER, InferRequest, InferResultLike
from fashionbox.client._transport import channel_args
from fashionbox.contract.labels import LabelMap, default_label_map

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.001, max_backoff_s=0.004, jitter=0.0)
RESTRICTED = "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


def client_for(fake: FakeTransport, config: ClientConfig | None = None) -> AsyncFashionClient:
    return AsyncFashionClient(config=config, transport=AsyncFakeTransport(fake))


async def detect_once(fake: FakeTransport, image: Any, config: ClientConfig | None = None, **kwargs: Any) -> Any:
    async with client_for(fake, config) as client:
        return await client.detect(image, **kwargs)


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


def test_the_request_holds_one_image_as_a_bytes_tensor_and_asks_for_detections(answering: FakeTransport) -> None:
    run(detect_once(answering, png_bytes()))

    request = answering.requests[0]
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.data.shape) == ("IMAGE", "BYTES", (1, 1))
    assert request.outputs == ("DETECTIONS",)
    assert request.model_name == contract.ENSEMBLE_MODEL
    assert request.model_version == ""
    assert request.timeout_s == pytest.approx(Timeouts().request_s, abs=0.5)


def test_encoded_bytes_are_sent_exactly_as_given(answering: FakeTransport) -> None:
    image = png_bytes() + b"\x00\x00"

    run(detect_once(answering, image))

    assert sent_image(answering) == image


@pytest.mark.parametrize("as_path", [str, Path])
def test_a_file_is_sent_with_its_bytes_unchanged(answering: FakeTransport, tmp_path: Path, as_path: Any) -> None:
    file = tmp_path / "look.png"
    file.write_bytes(png_bytes())

    run(detect_once(answering, as_path(file)))

    assert sent_image(answering) == file.read_bytes()


def test_a_missing_file_fails_before_anything_is_sent(answering: FakeTransport, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read image file"):
        run(detect_once(answering, tmp_path / "missing.jpg"))

    assert answering.requests == []


def test_a_pil_image_is_sent_as_full_chroma_jpeg_by_default(answering: FakeTransport) -> None:
    image = Image.new("RGB", (64, 48), (10, 120, 240))

    run(detect_once(answering, image))

    sent = Image.open(io.BytesIO(sent_image(answering)))
    assert sent.format == "JPEG"
    assert np.abs(np.asarray(sent, np.int16) - np.asarray(image, np.int16)).max() <= 3


def test_png_encoding_sends_a_numpy_array_losslessly(answering: FakeTransport) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)

    run(detect_once(answering, pixels, ClientConfig(encoding=ImageEncoding(format="PNG"))))

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(sent_image(answering)))), pixels)


@pytest.mark.parametrize(
    ("array", "complaint"),
    [
        (np.zeros((4, 4, 3), np.float32), "must be uint8"),
        (np.zeros((1, 4, 4, 3), np.uint8), r"\[height, width, 3\]"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
    ],
)
def test_arrays_that_are_not_uint8_rgb_are_refused(
    answering: FakeTransport, array: npt.NDArray[Any], complaint: str
) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        run(detect_once(answering, array))
    assert answering.requests == []


@pytest.mark.parametrize("value", [42, ["look.jpg"], None, b""])
def test_values_that_are_not_images_are_refused_with_a_hint(answering: FakeTransport, value: Any) -> None:
    with pytest.raises(InvalidInput):
        run(detect_once(answering, value))
    assert answering.requests == []


def test_timeout_s_overrides_the_configured_request_timeout_for_one_call(answering: FakeTransport) -> None:
    async def scenario() -> None:
        async with client_for(answering, ClientConfig(timeouts=Timeouts(request_s=12.0))) as client:
            await client.detect(png_bytes(), timeout_s=0.5)
            await client.detect(png_bytes())

    run(scenario())

    assert [r.timeout_s for r in answering.requests] == [pytest.approx(0.5, abs=0.1), pytest.approx(12.0, abs=0.5)]


@pytest.mark.parametrize("timeout_s", [0, -1.0, True])
def test_a_timeout_that_is_not_a_positive_number_is_refused(answering: FakeTransport, timeout_s: Any) -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        run(detect_once(answering, png_bytes(), timeout_s=timeout_s))


# -- responses: what comes back ------------------------------------------------------------------------


def test_detect_returns_typed_detections_read_from_the_detections_output(answering: FakeTransport) -> None:
    result = run(detect_once(answering, png_bytes()))

    assert (result.width, result.height, len(result)) == (640, 480, 2)
    dress, shoe = result
    assert dress.category == "dress"
    assert dress.box == BoundingBox(100, 50, 300, 450)
    assert dress.attributes["textile pattern"] == AttributeScore("stripe", 0.9, fashionpedia_id=328)
    assert shoe.attributes == {}


@pytest.mark.parametrize(
    ("result", "complaint"),
    [
        (infer_result({"SCORES": ("FP32", np.zeros((1, 0), np.float32))}), "no DETECTIONS output"),
        (detections_result([b"\xff\xff\xff"]), "not a serialized fashionbox.v1.ImageDetections"),
    ],
    ids=["missing", "corrupt"],
)
def test_an_answer_that_breaks_the_contract_raises_protocol_error(result: InferResultLike, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        run(detect_once(FakeTransport(lambda request: result), png_bytes()))


# -- errors: one gRPC status, one exception ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.INVALID_ARGUMENT", "not a JPEG, PNG or WebP image (unrecognised header)", InvalidImage),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ConnectError),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", Overloaded),
        ("StatusCode.UNAVAILABLE", RESTRICTED, AccessDenied),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded),
        ("StatusCode.NOT_FOUND", "model 'fashion' not found", ModelNotReady),
        ("StatusCode.CANCELLED", "Locally cancelled by application!", TransportError),
        ("StatusCode.INTERNAL", "python backend crashed", ServerError),
        (None, "model version must be a string", ProtocolError),
    ],
)
def test_each_grpc_status_becomes_its_own_fashionbox_error_chained_to_the_original(
    status: str | None, message: str, expected: type[FashionBoxError]
) -> None:
    original = InferenceServerException(msg=message, status=status)
    config = ClientConfig(retry=RetryPolicy.disabled())

    with pytest.raises(FashionBoxError) as caught:
        run(detect_once(FakeTransport(error=original), png_bytes(), config))

    assert type(caught.value) is expected
    assert caught.value.__cause__ is original
    assert message in str(caught.value)


@pytest.mark.parametrize("call", ["health", "ready", "labels", "model_info", "statistics"])
def test_errors_from_every_call_are_translated_not_only_from_detect(call: str) -> None:
    transport = FakeTransport(error=grpc_error("UNAVAILABLE", "connection refused"))

    async def scenario() -> None:
        async with client_for(transport, ClientConfig(retry=FAST_RETRY)) as client:
            await getattr(client, call)()

    with pytest.raises(ConnectError):
        run(scenario())


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
    answering: FakeTransport, call: Callable[[AsyncFashionClient], Awaitable[Any]]
) -> None:
    async def scenario() -> None:
        client = client_for(answering)
        await client.aclose()
        await call(client)

    with pytest.raises(ClientClosed):
        run(scenario())
    assert answering.requests == []


def test_leaving_the_with_block_closes_the_transport_and_closing_twice_is_harmless(answering: FakeTransport) -> None:
    async def scenario() -> AsyncFashionClient:
        async with client_for(answering) as client:
            assert not client.is_closed
        return client

    client = run(scenario())

    assert client.is_closed and answering.closed
    run(client.aclose())


def test_a_closed_client_cannot_be_entered_again(answering: FakeTransport) -> None:
    async def scenario() -> None:
        client = client_for(answering)
        await client.aclose()
        async with client:
            pass

    with pytest.raises(ClientClosed):
        run(scenario())


def test_detect_many_returns_a_result_or_an_error_per_image_in_order(labels: LabelMap) -> None:
    good = dress_and_shoe_payload(labels)

    def respond(request: InferRequest) -> InferResultLike:
        if sent_image_of(request) == b"broken":
            raise grpc_error("INVALID_ARGUMENT", "corrupt or truncated JPEG")
        return detections_result([good])

    async def scenario() -> list[ImageDetections | FashionBoxError]:
        async with client_for(FakeTransport(respond)) as client:
            return await client.detect_many([png_bytes(), b"broken", 42, png_bytes()])  # type: ignore[list-item]

    outcomes = run(scenario())

    assert [type(o) for o in outcomes] == [ImageDetections, InvalidImage, InvalidInput, ImageDetections]


def test_detect_many_refuses_a_bad_timeout_at_once_instead_of_failing_every_image(answering: FakeTransport) -> None:
    async def scenario() -> None:
        async with client_for(answering) as client:
            await client.detect_many([png_bytes(), png_bytes()], timeout_s=-1)

    with pytest.raises(ConfigError):
        run(scenario())
    assert answering.requests == []


# -- server and model ------------------------------------------------------------------------------------


def test_labels_are_read_from_the_ensemble_config_parameters(answering: FakeTransport, labels: LabelMap) -> None:
    async def scenario() -> LabelMap:
        async with client_for(answering) as client:
            return await client.labels()

    assert run(scenario()) == labels


def test_labels_are_read_once_until_a_refresh_is_asked_for(answering: FakeTransport) -> None:
    async def scenario() -> None:
        async with client_for(answering) as client:
            await client.labels()
            await client.labels()
            await client.labels(refresh=True)

    run(scenario())

    assert answering.config_reads == 2


@pytest.mark.parametrize("stored", [None, "{not json"])
def test_a_config_without_a_readable_label_map_raises_protocol_error(stored: str | None) -> None:
    config = labels_config(None)
    if stored is not None:
        config.config.parameters[LABELS_PARAMETER].string_value = stored

    async def scenario() -> None:
        async with client_for(FakeTransport(config=config)) as client:
            await client.labels()

    with pytest.raises(ProtocolError):
        run(scenario())


def test_model_info_describes_the_ensemble_without_repeating_the_label_map(answering: FakeTransport) -> None:
    async def scenario() -> Any:
        async with client_for(answering) as client:
            return await client.model_info()

    info = run(scenario())

    assert (info.name, info.versions, info.platform, info.max_batch_size) == ("fashion", ("1",), "ensemble", 16)
    assert info.parameters == {"manifest_sha256": "abc123"}


@pytest.mark.parametrize(
    ("server_ready", "model_ready", "expected"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_ready_needs_both_the_server_and_the_model(server_ready: bool, model_ready: bool, expected: bool) -> None:
    transport = FakeTransport(server_ready=server_ready, model_ready=model_ready)

    async def scenario() -> tuple[bool, bool]:
        async with client_for(transport) as client:
            return await client.ready(), await client.health()

    assert run(scenario()) == (expected, True)


def test_statistics_are_a_typed_summary_per_model_sorted_by_name(answering: FakeTransport) -> None:
    async def scenario() -> tuple[ModelStatistics, ...]:
        async with client_for(answering) as client:
            return await client.statistics()

    detector, ensemble = run(scenario())

    assert (detector.model_name, detector.avg_queue_ms, detector.avg_compute_ms) == ("detector", 2.0, 6.0)
    assert detector.avg_batch_size == 7 / 3
    assert (ensemble.request_count, ensemble.failure_count) == (8, 1)
    assert answering.statistics_asked == [""]


def test_statistics_for_one_model_ask_the_server_for_that_model(answering: FakeTransport) -> None:
    async def scenario() -> None:
        async with client_for(answering) as client:
            await client.statistics("detector")

    run(scenario())

    assert answering.statistics_asked == ["detector"]


# -- retries ------------------------------------------------------------------------------------------------


def retrying_client(transport: FakeTransport, policy: RetryPolicy = FAST_RETRY) -> AsyncFashionClient:
    return client_for(transport, ClientConfig(retry=policy))


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
    labels: LabelMap, failure: InferenceServerException
) -> None:
    payload = dress_and_shoe_payload(labels)
    transport = FakeTransport(lambda request: detections_result([payload]), failures=[failure, failure])

    async def scenario() -> ImageDetections:
        async with retrying_client(transport) as client:
            return await client.detect(png_bytes())

    assert len(run(scenario())) == 2
    assert len(transport.requests) == 3


def test_retries_stop_after_max_attempts_and_raise_the_last_error_chained() -> None:
    failures = [grpc_error("UNAVAILABLE", f"connection refused {n}") for n in range(1, 10)]
    transport = FakeTransport(lambda request: detections_result([]), failures=failures)

    async def scenario() -> None:
        async with retrying_client(transport) as client:
            await client.detect(png_bytes())

    with pytest.raises(ConnectError, match="refused 4") as caught:
        run(scenario())

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
    failure: InferenceServerException, expected: type[FashionBoxError]
) -> None:
    transport = FakeTransport(lambda request: detections_result([]), error=failure)

    async def scenario() -> None:
        async with retrying_client(transport) as client:
            await client.detect(png_bytes())

    with pytest.raises(expected):
        run(scenario())
    assert len(transport.requests) == 1


def test_each_attempt_gets_the_time_left_until_the_calls_deadline() -> None:
    failure = grpc_error("UNAVAILABLE", "connection refused")
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.05, jitter=0.0)
    transport = FakeTransport(lambda request: detections_result([]), failures=[failure] * 3)

    async def scenario() -> None:
        async with retrying_client(transport, policy) as client:
            await client.detect(png_bytes(), timeout_s=2.0)

    with pytest.raises(ConnectError):
        run(scenario())

    first, second, third = transport.timeouts_s
    assert first == pytest.approx(2.0, abs=0.02)
    assert second == pytest.approx(first - 0.05, abs=0.03)
    assert third == pytest.approx(second - 0.05, abs=0.03)


def test_a_backoff_that_would_end_after_the_deadline_is_not_slept() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=1.0, max_backoff_s=1.0, jitter=0.0)
    transport = FakeTransport(error=grpc_error("UNAVAILABLE", "connection refused"))

    async def scenario() -> None:
        async with retrying_client(transport, policy) as client:
            await client.detect(png_bytes(), timeout_s=0.3)

    started = time.monotonic()
    with pytest.raises(ConnectError):
        run(scenario())

    assert time.monotonic() - started < 0.2
    assert len(transport.requests) == 1


@pytest.mark.parametrize("call", ["labels", "model_info", "statistics"])
def test_reads_of_the_server_are_retried_like_detections(labels: LabelMap, call: str) -> None:
    transport = FakeTransport(config=labels_config(labels), failures=[grpc_error("UNAVAILABLE", "connection refused")])

    async def scenario() -> None:
        async with retrying_client(transport) as client:
            await getattr(client, call)()

    run(scenario())

    assert len(transport.timeouts_s) >= 2


@pytest.mark.parametrize("call", ["health", "ready"])
def test_health_and_ready_are_never_retried_they_report_now(call: str) -> None:
    transport = FakeTransport(failures=[grpc_error("UNAVAILABLE", "connection refused")])

    async def scenario() -> None:
        async with retrying_client(transport) as client:
            await getattr(client, call)()

    with pytest.raises(ConnectError):
        run(scenario())
    assert len(transport.timeouts_s) == 1


def test_a_disabled_retry_policy_makes_one_attempt() -> None:
    transport = FakeTransport(error=grpc_error("UNAVAILABLE", "connection refused"))

    async def scenario() -> None:
        async with retrying_client(transport, RetryPolicy.disabled()) as client:
            await client.detect(png_bytes())

    with pytest.raises(ConnectError):
        run(scenario())
    assert len(transport.requests) == 1


# -- detect_many: pipelined ------------------------------------------------------------------------------


def detect_many(fake: FakeTransport, images: Any, **kwargs: Any) -> list[ImageDetections | FashionBoxError]:
    async def scenario() -> list[ImageDetections | FashionBoxError]:
        async with client_for(fake) as client:
            return await client.detect_many(images, **kwargs)

    return run(scenario())


def test_detect_many_keeps_max_in_flight_requests_going_at_once(answering: FakeTransport) -> None:
    answering.delay_s = 0.02

    outcomes = detect_many(answering, [png_bytes()] * 40, max_in_flight=8)

    assert all(isinstance(o, ImageDetections) for o in outcomes)
    assert answering.peak_in_flight == 8


def test_detect_many_returns_results_in_the_order_of_the_images_not_of_completion(labels: LabelMap) -> None:
    class Reversed(AsyncFakeTransport):
        async def infer(self, request: InferRequest) -> InferResultLike:
            width = Image.open(io.BytesIO(sent_image_of(request))).size[0]
            await asyncio.sleep(0.002 * (50 - width))  # the first images answer last
            return detections_result([empty_payload(labels, width)])

    async def scenario() -> list[ImageDetections | FashionBoxError]:
        async with AsyncFashionClient(transport=Reversed(FakeTransport())) as client:
            return await client.detect_many([png_bytes(size=(w, 8)) for w in range(10, 50)], max_in_flight=16)

    outcomes = run(scenario())

    assert [o.width for o in outcomes if isinstance(o, ImageDetections)] == list(range(10, 50))


def empty_payload(labels: LabelMap, width: int) -> bytes:
    return detections_payload(labels, width=width, height=8)


def test_detect_many_reads_the_images_lazily_no_further_ahead_than_max_in_flight(answering: FakeTransport) -> None:
    answering.delay_s = 0.01
    produced = 0
    most_ahead = 0

    def images() -> Any:
        nonlocal produced, most_ahead
        for _ in range(30):
            produced += 1
            most_ahead = max(most_ahead, produced - len(answering.requests))
            yield png_bytes()

    assert len(detect_many(answering, images(), max_in_flight=4)) == 30
    assert most_ahead <= 4 + 1


def test_detect_many_with_one_in_flight_sends_one_after_another(answering: FakeTransport) -> None:
    detect_many(answering, [png_bytes()] * 5, max_in_flight=1)

    assert answering.peak_in_flight == 1


@pytest.mark.parametrize("max_in_flight", [0, -3, 2.5, True])
def test_detect_many_refuses_a_max_in_flight_that_is_not_a_positive_integer(
    answering: FakeTransport, max_in_flight: Any
) -> None:
    with pytest.raises(ConfigError, match="max_in_flight"):
        detect_many(answering, [png_bytes()], max_in_flight=max_in_flight)
    assert answering.requests == []


def test_closing_the_client_during_detect_many_raises_client_closed(answering: FakeTransport) -> None:
    answering.delay_s = 0.01

    async def scenario() -> None:
        client = client_for(answering)

        async def close_soon() -> None:
            await asyncio.sleep(0.05)
            await client.aclose()

        closer = asyncio.ensure_future(close_soon())
        try:
            await client.detect_many([png_bytes()] * 500, max_in_flight=4)
        finally:
            await closer

    with pytest.raises(ClientClosed):
        run(scenario())
    assert len(answering.requests) < 500


# -- asyncio only ------------------------------------------------------------------------------------------


def test_cancelling_detect_many_cancels_every_request_it_started(answering: FakeTransport) -> None:
    answering.delay_s = 10.0

    async def scenario() -> None:
        async with client_for(answering) as client:
            task = asyncio.ensure_future(client.detect_many([png_bytes()] * 20, max_in_flight=8))
            await asyncio.sleep(0.05)
            assert answering.in_flight == 8
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert answering.in_flight == 0

    run(scenario())


def test_files_and_in_memory_images_are_encoded_off_the_event_loop(
    answering: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fashionbox.client import _base

    threads: list[threading.Thread] = []
    original = _base.encode_image

    def recording(image: Any, encoding: ImageEncoding) -> bytes:
        threads.append(threading.current_thread())
        return original(image, encoding)

    monkeypatch.setattr(_base, "encode_image", recording)

    run(detect_once(answering, Image.new("RGB", (32, 32))))
    run(detect_once(answering, png_bytes()))

    pil_thread, bytes_thread = threads
    assert pil_thread is not threading.main_thread()
    assert bytes_thread is threading.main_thread(), "bytes need no work, so no thread hop"


def test_the_channel_is_made_inside_the_running_loop_on_the_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from fashionbox.client import _transport

    record = TritonClientRecord()
    monkeypatch.setattr(_transport.aio_grpcclient, "InferenceServerClient", record.async_client)
    config = ClientConfig(url="triton:9001", headers={"admin-key": "k"}, compression="gzip")
    client = AsyncFashionClient(config=config)  # outside any event loop
    assert record.built == {}

    async def scenario() -> None:
        async with client:
            await client.detect(png_bytes())
            await client.health()
            await client.statistics()

    run(scenario())

    assert record.built["url"] == "triton:9001"
    assert record.built["channel_args"] == channel_args(config)
    assert [name for name, _ in record.calls] == ["infer", "is_server_live", "get_inference_statistics"]
    assert all(kwargs["headers"] == {"admin-key": "k"} for _, kwargs in record.calls)
    assert record.calls[0][1]["compression_algorithm"] == "gzip"
    assert record.closed


def test_a_client_that_never_called_closes_without_making_a_channel() -> None:
    client = AsyncFashionClient("127.0.0.1:1")

    run(client.aclose())

    assert client.is_closed
