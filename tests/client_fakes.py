"""Fake transports and canned answers for the client's unit tests, shared by the sync and async files.

Answers are built the way tritonclient builds them from the wire (``ModelInferResponse`` with raw
output contents, ``ModelConfigResponse``, ``ModelStatisticsResponse``), so parsing is tested against
the real types, and errors are tritonclient's own ``InferenceServerException`` with the status
strings it produces. :class:`AsyncFakeTransport` wraps a :class:`FakeTransport`, so both clients
are tested against one fake with one behaviour.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from fashionbox import contract
from fashionbox.client._base import LABELS_PARAMETER, InferRequest, InferResultLike
from fashionbox.contract.labels import LabelMap
from fashionbox.v1 import detections_pb2

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


def statistics_response() -> service_pb2.ModelStatisticsResponse:
    """Two models: the ensemble (8 requests, one failed) and a detector that ran 3 batches of 7 images."""
    response = service_pb2.ModelStatisticsResponse()
    detector = response.model_stats.add(name="detector", version="1", inference_count=7, execution_count=3)
    stats = detector.inference_stats
    stats.success.count, stats.success.ns = 7, 70_000_000
    stats.queue.count, stats.queue.ns = 7, 14_000_000
    for part, ns in ((stats.compute_input, 7_000_000), (stats.compute_infer, 35_000_000), (stats.compute_output, 0)):
        part.count, part.ns = 7, ns
    ensemble = response.model_stats.add(name="fashion", version="1", inference_count=7, execution_count=0)
    ensemble.inference_stats.success.count, ensemble.inference_stats.success.ns = 7, 140_000_000
    ensemble.inference_stats.fail.count, ensemble.inference_stats.fail.ns = 1, 1_000_000
    return response


def grpc_error(status: str, message: str) -> InferenceServerException:
    """The exception tritonclient raises for a gRPC status, e.g. ``grpc_error("UNAVAILABLE", "...")``."""
    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


def detections_payload(
    labels: LabelMap,
    *,
    width: int,
    height: int,
    detections: Sequence[tuple[str, tuple[float, float, float, float], float]] = (),
    attribute_index: int = 1,
    attribute_score: float = 0.9,
    model_version: str = "1",
    model_name: str = "",
) -> bytes:
    """A serialized ImageDetections as the server sends it, written here from the label map.

    ``detections`` are (category, box, score); each gets every attribute group that applies to
    its category (``labels.applicability``), with the group's label number ``attribute_index``.
    Built with the schema alone (the server builds it in ``fashionbox.core``), so the unit tests
    run where only the client is installed.
    """
    message = detections_pb2.ImageDetections(
        width=width, height=height, model_name=model_name, model_version=model_version, label_map=labels.name
    )
    for category_name, (x1, y1, x2, y2), score in detections:
        index = labels.category_index(category_name)
        category = labels.categories[index]
        detection = message.detections.add(
            category=category.name, category_index=index, fashionpedia_id=category.fashionpedia_id, score=score
        )
        detection.box.x1, detection.box.y1, detection.box.x2, detection.box.y2 = x1, y1, x2, y2
        for group, applies in zip(labels.attribute_groups, labels.applicability[index], strict=True):
            if applies:
                detection.attributes.add(
                    group=group.name,
                    label=group.labels[attribute_index],
                    score=attribute_score,
                    fashionpedia_id=group.fashionpedia_ids[attribute_index],
                )
    payload: bytes = message.SerializeToString()
    return payload


def dress_and_shoe_payload(labels: LabelMap) -> bytes:
    """A serialized ImageDetections with a striped short-sleeved v-neck dress and a shoe."""
    return detections_payload(
        labels,
        width=640,
        height=480,
        detections=[("dress", (100, 50, 300, 450), 0.9), ("shoe", (400, 400, 480, 470), 0.4)],
        model_name="fashionbox-default",
    )


def png_bytes(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def sent_image_of(request: InferRequest) -> bytes:
    payload: bytes = request.inputs[0].data.reshape(-1)[0]
    return payload


class FakeTransport:
    """Records every call and answers from canned values, or raises canned errors.

    ``error`` fails every call; ``failures`` fail the next calls in turn, one each, then the
    canned answers come (for retries). ``delay_s`` holds each ``infer`` that long (or as long as
    it returns for the request, when it is a function), and
    ``peak_in_flight`` tells how many were held at once.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        error: BaseException | None = None,
        failures: list[BaseException] | None = None,
        live: bool = True,
        server_ready: bool = True,
        model_ready: bool = True,
        config: Any = None,
        delay_s: float | Callable[[InferRequest], float] = 0.0,
    ) -> None:
        self.responder = responder
        self.error = error
        self.failures = list(failures or [])
        self.live, self.server_ready, self.model_ready = live, server_ready, model_ready
        self.config = config
        self.delay_s = delay_s
        self.requests: list[InferRequest] = []
        self.timeouts_s: list[float] = []
        self.statistics_asked: list[str] = []
        self.config_reads = 0
        self.closed = False
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()

    def _answer(self, timeout_s: float) -> None:
        with self._lock:
            self.timeouts_s.append(timeout_s)
            if self.failures:
                raise self.failures.pop(0)
        if self.error is not None:
            raise self.error

    @contextmanager
    def holding(self) -> Iterator[None]:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def delay_for(self, request: InferRequest) -> float:
        return self.delay_s(request) if callable(self.delay_s) else self.delay_s

    def infer_now(self, request: InferRequest) -> InferResultLike:
        with self._lock:
            self.requests.append(request)
        self._answer(request.timeout_s)
        assert self.responder is not None, "this test sends no images"
        return self.responder(request)

    def infer(self, request: InferRequest) -> InferResultLike:
        with self.holding():
            time.sleep(self.delay_for(request))
            return self.infer_now(request)

    def is_server_live(self, *, timeout_s: float) -> bool:
        self._answer(timeout_s)
        return self.live

    def is_server_ready(self, *, timeout_s: float) -> bool:
        self._answer(timeout_s)
        return self.server_ready

    def is_model_ready(self, model_name: str, model_version: str, *, timeout_s: float) -> bool:
        self._answer(timeout_s)
        return self.model_ready

    def get_model_metadata(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        self._answer(timeout_s)
        return ensemble_metadata()

    def get_model_config(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        self._answer(timeout_s)
        self.config_reads += 1
        return self.config

    def get_inference_statistics(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        self._answer(timeout_s)
        self.statistics_asked.append(model_name)
        return statistics_response()

    def close(self) -> None:
        self.closed = True


class AsyncFakeTransport:
    """The asyncio face of a :class:`FakeTransport`: same answers, awaitable, ``delay_s`` awaited."""

    def __init__(self, fake: FakeTransport) -> None:
        self.fake = fake

    async def infer(self, request: InferRequest) -> InferResultLike:
        with self.fake.holding():
            await asyncio.sleep(self.fake.delay_for(request))
            return self.fake.infer_now(request)

    async def is_server_live(self, *, timeout_s: float) -> bool:
        return self.fake.is_server_live(timeout_s=timeout_s)

    async def is_server_ready(self, *, timeout_s: float) -> bool:
        return self.fake.is_server_ready(timeout_s=timeout_s)

    async def is_model_ready(self, model_name: str, model_version: str, *, timeout_s: float) -> bool:
        return self.fake.is_model_ready(model_name, model_version, timeout_s=timeout_s)

    async def get_model_metadata(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return self.fake.get_model_metadata(model_name, model_version, timeout_s=timeout_s)

    async def get_model_config(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return self.fake.get_model_config(model_name, model_version, timeout_s=timeout_s)

    async def get_inference_statistics(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return self.fake.get_inference_statistics(model_name, model_version, timeout_s=timeout_s)

    async def aclose(self) -> None:
        self.fake.close()


class TritonClientRecord:
    """Stand-ins for tritonclient's ``InferenceServerClient`` (sync and aio) that record how they are used.

    ``built`` holds the constructor's keyword arguments, ``calls`` each call's name and keywords.
    """

    def __init__(self) -> None:
        self.built: dict[str, Any] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    def _answer(self, name: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append((name, kwargs))
        if name == "infer":
            return detections_result([b""])
        if name == "get_inference_statistics":
            return statistics_response()
        return True

    def sync_client(self, **kwargs: Any) -> Any:
        record = self
        record.built = kwargs

        class Client:
            def infer(self, **kwargs: Any) -> Any:
                return record._answer("infer", kwargs)

            def is_server_live(self, **kwargs: Any) -> Any:
                return record._answer("is_server_live", kwargs)

            def get_inference_statistics(self, *args: Any, **kwargs: Any) -> Any:
                return record._answer("get_inference_statistics", kwargs)

            def close(self) -> None:
                record.closed = True

        return Client()

    def async_client(self, **kwargs: Any) -> Any:
        record = self
        record.built = kwargs

        class Client:
            async def infer(self, **kwargs: Any) -> Any:
                return record._answer("infer", kwargs)

            async def is_server_live(self, **kwargs: Any) -> Any:
                return record._answer("is_server_live", kwargs)

            async def get_inference_statistics(self, *args: Any, **kwargs: Any) -> Any:
                return record._answer("get_inference_statistics", kwargs)

            async def close(self) -> None:
                record.closed = True

        return Client()
