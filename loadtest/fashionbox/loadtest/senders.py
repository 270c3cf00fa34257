"""How one request is sent: the transport seam of the runner, with three interchangeable senders.

- :class:`RawGrpcSender` (the default): ``grpc.aio`` on Triton's ``ModelInfer`` method with each
  corpus image's ``ModelInferRequest`` serialised once, up front, so a send costs the gRPC call and
  nothing else. Measured the cheapest per request (``tests/benchmarks/bench_loadtest_clients.py``).
- :class:`TritonClientSender`: ``tritonclient.grpc.aio``, building ``InferInput`` tensors per call.
- :class:`TypedClientSender`: the blocking typed client ``FashionClient`` in a thread pool, parsing
  every answer into ``ImageDetections`` (what an application pays; retries turned off).

All three send the same request for the same corpus index and report failures by gRPC status name
(``"UNAVAILABLE"``, ``"INVALID_ARGUMENT"``...), never by raising::

    sender = make_sender("raw", RequestSpec.for_ensemble(), url, corpus.images, timeout_s=30)
    await sender.open()
    status = await sender.send(index)        # None: success
    await sender.close()
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fashionbox import contract
from fashionbox.loadtest.errors import LoadTestConfigError

if TYPE_CHECKING:
    from fashionbox.client import ClientConfig

__all__ = [
    "SENDER_KINDS",
    "RawGrpcSender",
    "RequestSpec",
    "Sender",
    "SenderKind",
    "TritonClientSender",
    "TypedClientSender",
    "make_sender",
    "serialise_request",
    "status_name",
]

logger = logging.getLogger(__name__)

SenderKind = Literal["raw", "tritonclient", "typed"]
SENDER_KINDS: tuple[SenderKind, ...] = ("raw", "tritonclient", "typed")
_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# The client side has no reason to cap message sizes: the server applies its own limits.
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
EMPTY_OUTPUT = "EMPTY_OUTPUT"
"""Status recorded when a response arrives without the requested output's data (docs/FIELD_NOTES.md: numpy 2)."""


@dataclass(frozen=True)
class RequestSpec:
    """What one request carries: one BYTES element in ``input_name`` of ``model``, asking for ``outputs``."""

    model: str
    input_name: str
    outputs: tuple[str, ...]
    model_version: str = ""

    def __post_init__(self) -> None:
        if not self.model or not self.input_name:
            raise LoadTestConfigError("a request needs a model name and an input name")

    @classmethod
    def for_ensemble(cls, model: str = contract.ENSEMBLE_MODEL) -> RequestSpec:
        return cls(model=model, input_name=contract.IMAGE.name, outputs=(contract.DETECTIONS.name,))


def status_name(status: object) -> str:
    """``StatusCode.UNAVAILABLE`` / ``'StatusCode.UNAVAILABLE'`` / ``None`` -> ``'UNAVAILABLE'`` / ``'UNKNOWN'``."""
    if status is None:
        return "UNKNOWN"
    name = getattr(status, "name", None)
    text = str(name if name is not None else status)
    return text.rsplit(".", 1)[-1] or "UNKNOWN"


def serialise_request(spec: RequestSpec, image: bytes) -> bytes:
    """The wire bytes of the ``ModelInferRequest`` for one image (shape ``[1, 1]``, BYTES)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=spec.model, model_version=spec.model_version)
    tensor = request.inputs.add()
    tensor.name = spec.input_name
    tensor.datatype = "BYTES"
    tensor.shape.extend([1, 1])
    for name in spec.outputs:
        request.outputs.add().name = name
    # A BYTES element is a 4-byte little-endian length, then the bytes.
    request.raw_input_contents.append(struct.pack("<I", len(image)) + image)
    return bytes(request.SerializeToString())


class Sender(Protocol):
    """Sends request ``index`` (into the corpus, modulo its size); returns None or a status name."""

    kind: SenderKind

    async def open(self) -> None: ...

    async def send(self, index: int) -> str | None: ...

    async def close(self) -> None: ...


class RawGrpcSender:
    """Pre-serialised requests over ``grpc.aio`` channels (round-robin over ``channels``)."""

    kind: SenderKind = "raw"

    def __init__(
        self, spec: RequestSpec, url: str, images: Sequence[bytes], *, timeout_s: float, channels: int = 1,
        connection: ClientConfig | None = None,
    ) -> None:
        if channels < 1:
            raise LoadTestConfigError(f"channels must be at least 1, got {channels}")
        self._spec = spec
        self._url = url
        self._security = _security(connection)
        self._requests = [serialise_request(spec, image) for image in images]
        self._timeout_s = timeout_s
        self._channel_count = channels
        self._channels: list[Any] = []
        self._calls: list[Any] = []
        self._verified = False

    @property
    def request_bytes(self) -> list[int]:
        return [len(r) for r in self._requests]

    async def open(self) -> None:
        import grpc

        security = self._security
        options = [*_CHANNEL_OPTIONS, *security.options]
        for _ in range(self._channel_count):
            channel = (grpc.aio.secure_channel(self._url, security.credentials, options=options)
                       if security.credentials is not None else grpc.aio.insecure_channel(self._url, options=options))
            self._channels.append(channel)
            # No serialiser: the request is already bytes, and the answer stays bytes until checked.
            self._calls.append(channel.unary_unary(_MODEL_INFER))

    async def send(self, index: int) -> str | None:
        import grpc

        call = self._calls[index % self._channel_count]
        try:
            response = await call(self._requests[index % len(self._requests)], timeout=self._timeout_s,
                                  metadata=self._security.metadata or None)
        except grpc.aio.AioRpcError as exc:
            return status_name(exc.code())
        if not self._verified:
            return self._verify(response)
        return None

    def _verify(self, response: bytes) -> str | None:
        """Check the first answer carries data for every requested output (then trust the rest)."""
        from tritonclient.grpc import service_pb2

        message = service_pb2.ModelInferResponse.FromString(response)
        names = [o.name for o in message.outputs]
        # An output may be legitimately empty (no detection); all of them empty is the silent failure.
        if len(message.raw_output_contents) < len(self._spec.outputs) or not any(message.raw_output_contents):
            logger.warning("response from %s has outputs %s but no data for them", self._url, names)
            return EMPTY_OUTPUT
        self._verified = True
        return None

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._calls.clear()


class TritonClientSender:
    """``tritonclient.grpc.aio``: a new ``InferInput`` per call, as most Triton users write it."""

    kind: SenderKind = "tritonclient"

    def __init__(self, spec: RequestSpec, url: str, images: Sequence[bytes], *, timeout_s: float,
                 connection: ClientConfig | None = None) -> None:
        import numpy as np

        self._spec = spec
        self._url = url
        self._security = _security(connection)
        self._arrays = [np.array([[image]], dtype=np.object_) for image in images]
        self._timeout_s = timeout_s
        self._client: Any = None
        self._outputs: list[Any] = []

    async def open(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        security = self._security
        self._client = grpcclient.InferenceServerClient(self._url, creds=security.credentials,
                                                        channel_args=[*_CHANNEL_OPTIONS, *security.options])
        self._outputs = [grpcclient.InferRequestedOutput(name) for name in self._spec.outputs]

    async def send(self, index: int) -> str | None:
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        tensor = grpcclient.InferInput(self._spec.input_name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(self._arrays[index % len(self._arrays)])
        try:
            await self._client.infer(
                self._spec.model,
                [tensor],
                model_version=self._spec.model_version,
                outputs=self._outputs,
                client_timeout=self._timeout_s,
                headers=self._security.headers or None,
            )
        except InferenceServerException as exc:
            return status_name(exc.status())
        return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class TypedClientSender:
    """The typed ``FashionClient`` (blocking) on ``threads`` threads; answers are parsed as an app would."""

    kind: SenderKind = "typed"

    def __init__(
        self, spec: RequestSpec, url: str, images: Sequence[bytes], *, timeout_s: float, threads: int = 8,
        connection: ClientConfig | None = None,
    ) -> None:
        if spec.model != contract.ENSEMBLE_MODEL and spec.input_name != contract.IMAGE.name:
            raise LoadTestConfigError("the typed client only speaks to the FashionBox ensemble")
        self._spec = spec
        self._url = url
        self._images = list(images)
        self._timeout_s = timeout_s
        self._threads = threads
        self._connection = connection
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        import dataclasses

        from fashionbox.client import ClientConfig, FashionClient

        config: Any = dataclasses.replace(self._connection or ClientConfig(), url=self._url,
                                          model_name=self._spec.model)
        retry = getattr(config, "retry", None)
        if retry is not None and dataclasses.is_dataclass(retry) and not isinstance(retry, type):
            # A load test counts failures; the client must not hide them behind retries.
            config = dataclasses.replace(config, retry=dataclasses.replace(retry, max_attempts=1))
        self._client = FashionClient(config=config)
        self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="fashionbox-loadtest")

    def _detect(self, index: int) -> str | None:
        from fashionbox.client import FashionBoxError

        try:
            self._client.detect(self._images[index % len(self._images)], timeout_s=self._timeout_s)
        except FashionBoxError as exc:
            return exc.status or type(exc).__name__
        return None

    async def send(self, index: int) -> str | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._detect, index)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None


def make_sender(
    kind: SenderKind,
    spec: RequestSpec,
    url: str,
    images: Sequence[bytes],
    *,
    timeout_s: float,
    channels: int = 1,
    threads: int = 8,
    connection: ClientConfig | None = None,
) -> Sender:
    """A sender of ``kind``; ``connection``: TLS and headers to the target (:mod:`fashionbox.client.connection`)."""
    if kind == "raw":
        return RawGrpcSender(spec, url, images, timeout_s=timeout_s, channels=channels, connection=connection)
    if kind == "tritonclient":
        return TritonClientSender(spec, url, images, timeout_s=timeout_s, connection=connection)
    if kind == "typed":
        return TypedClientSender(spec, url, images, timeout_s=timeout_s, threads=threads, connection=connection)
    raise LoadTestConfigError(f"sender must be one of {SENDER_KINDS}, got {kind!r}")


def _security(connection: ClientConfig | None) -> Any:
    """:func:`fashionbox.client.connection.grpc_security`, imported when a sender is made."""
    from fashionbox.client.connection import grpc_security

    return grpc_security(connection)

