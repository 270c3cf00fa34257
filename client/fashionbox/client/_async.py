"""``AsyncFashionClient``: the asyncio twin of ``FashionClient``, same methods, same behaviour.

Requests, parsing and retry decisions come from ``_base`` and ``_retry``, exactly as for the
blocking client; only I/O is here: awaiting the transport, ``asyncio.sleep`` for backoffs, tasks
under a semaphore for ``detect_many``, and a worker thread for the blocking part of turning a file,
PIL image or array into bytes, so the event loop never stalls on encoding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from fashionbox import contract
from fashionbox.contract.labels import LabelMap

from ._base import (
    DEFAULT_MAX_IN_FLIGHT,
    BaseClient,
    InferRequest,
    InferResultLike,
    is_encoded,
    parse_detections,
    parse_label_map,
    parse_model_info,
    parse_statistics,
    parse_text_embeddings,
    parse_text_model,
    text_batches,
)
from ._config import ClientConfig
from ._exceptions import ClientClosed, FashionBoxError, translate_triton_errors
from ._transport import AsyncGrpcTransport, AsyncTransport
from ._types import ImageDetections, ImageInput, ModelInfo, ModelStatistics

__all__ = ["AsyncFashionClient"]

_log = logging.getLogger("fashionbox.client")
_T = TypeVar("_T")


class AsyncFashionClient(BaseClient):
    """Asyncio client for a FashionBox server; the twin of :class:`FashionClient`.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint; defaults to ``config.url``.
        config: timeouts, retries, TLS, headers, keepalive, image encoding, model name and version.
        transport: performs the calls; the default speaks gRPC through ``tritonclient.grpc.aio``.

    Create it anywhere; the channel is opened by the first call, in the running event loop, and
    the client must be used from that loop only. Close it with ``await client.aclose()`` or
    ``async with``; any call after that raises :class:`ClientClosed`.

    Usage::

        async with AsyncFashionClient("127.0.0.1:8001") as client:
            result = await client.detect("look.jpg")
            outcomes = await client.detect_many(paths, max_in_flight=64)
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        config: ClientConfig | None = None,
        transport: AsyncTransport | None = None,
    ) -> None:
        super().__init__(url, config=config)
        self._transport: AsyncTransport = transport if transport is not None else AsyncGrpcTransport(self._config)

    # -- lifecycle -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Release the connection. Idempotent. Calls still in flight fail with :class:`TransportError`."""
        if self._closed:
            return
        self._closed = True
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncFashionClient:
        self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, call: Callable[[float], Awaitable[_T]], timeout_s: float | None) -> _T:
        """``await call(attempt_timeout_s)`` under the retry policy, within one deadline of ``timeout_s``."""
        attempts = self._attempts(self._timeout_s(timeout_s))
        while True:
            try:
                with translate_triton_errors():
                    return await call(attempts.start())
            except FashionBoxError as error:
                delay_s = attempts.delay_after(error)
                if delay_s is None:
                    raise
            await asyncio.sleep(delay_s)
            self._ensure_open()  # closed by another task during the backoff

    # -- detection ---------------------------------------------------------------------------------

    async def detect(self, image: ImageInput, *, timeout_s: float | None = None) -> ImageDetections:
        """Detect garments and accessories in one image; see :meth:`FashionClient.detect`."""
        self._ensure_open()
        request: InferRequest
        if is_encoded(image):
            request = self._build_detect_request(image, timeout_s=timeout_s)
        else:
            # Reading a file or encoding a large picture takes milliseconds to a second of CPU.
            request = await asyncio.to_thread(self._build_detect_request, image, timeout_s=timeout_s)
            self._ensure_open()

        async def infer(attempt_timeout_s: float) -> InferResultLike:
            return await self._transport.infer(replace(request, timeout_s=attempt_timeout_s))

        return parse_detections(await self._call(infer, request.timeout_s))

    async def embed_text(self, texts: Sequence[str], *, timeout_s: float | None = None) -> npt.NDArray[np.float32]:
        """Vectors for ``texts`` in the served embedder's space; see :meth:`FashionClient.embed_text`."""
        self._ensure_open()
        rows = []
        for batch in text_batches(texts):
            request = self._build_text_request(batch, timeout_s=timeout_s)

            async def infer(attempt_timeout_s: float, request: InferRequest = request) -> InferResultLike:
                return await self._transport.infer(replace(request, timeout_s=attempt_timeout_s))

            rows.append(parse_text_embeddings(await self._call(infer, request.timeout_s), len(batch)))
        return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    async def text_model(self, *, timeout_s: float | None = None) -> str:
        """The embedder ``embed_text``'s vectors belong to; see :meth:`FashionClient.text_model`."""
        self._ensure_open()
        config = await self._call(lambda attempt_s: self._transport.get_model_config(
            contract.TEXT_EMBEDDER_MODEL, "", timeout_s=attempt_s), timeout_s)
        return parse_text_model(config)

    async def detect_many(
        self,
        images: Iterable[ImageInput],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout_s: float | None = None,
    ) -> list[ImageDetections | FashionBoxError]:
        """Detect in each image, up to ``max_in_flight`` requests at a time; one failure stops nothing.

        Returns one entry per image, in the order given: its result, or the
        :class:`FashionBoxError` it failed with. Each request is a task; a semaphore keeps at most
        ``max_in_flight`` of them alive, and ``images`` is read lazily, no further ahead.
        ``timeout_s`` and retries apply to each image on its own. Closing the client is not a
        per-image failure: it raises :class:`ClientClosed`. Cancelling the call cancels every
        request it started.
        """
        self._ensure_open()
        timeout = self._timeout_s(timeout_s)  # a bad timeout is the caller's bug, not each image's failure
        slots = asyncio.Semaphore(self._max_in_flight(max_in_flight))

        async def one(index: int, image: ImageInput) -> ImageDetections | FashionBoxError:
            try:
                return await self._detect_or_error(index, image, timeout)
            finally:
                slots.release()

        tasks: list[asyncio.Task[ImageDetections | FashionBoxError]] = []
        try:
            for index, image in enumerate(images):
                await slots.acquire()
                self._ensure_open()
                tasks.append(asyncio.ensure_future(one(index, image)))
            return list(await asyncio.gather(*tasks))
        finally:
            # On an error or cancellation, stop the rest; gather() does not cancel on its own.
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _detect_or_error(
        self, index: int, image: ImageInput, timeout_s: float
    ) -> ImageDetections | FashionBoxError:
        try:
            return await self.detect(image, timeout_s=timeout_s)
        except ClientClosed:
            raise
        except FashionBoxError as error:
            _log.debug("detect_many: image %d failed: %s", index, error)
            return error

    # -- server and model ----------------------------------------------------------------------------

    async def health(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server process is live; see :meth:`FashionClient.health` (never retried)."""
        self._ensure_open()
        with translate_triton_errors():
            return await self._transport.is_server_live(timeout_s=self._timeout_s(timeout_s))

    async def ready(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server is ready and the configured model can take requests now (never retried)."""
        self._ensure_open()
        timeout = self._timeout_s(timeout_s)
        with translate_triton_errors():
            if not await self._transport.is_server_ready(timeout_s=timeout):
                return False
            return await self._transport.is_model_ready(
                self._config.model_name, self._config.model_version, timeout_s=timeout
            )

    async def labels(self, *, refresh: bool = False, timeout_s: float | None = None) -> LabelMap:
        """The label map the served model was converted with, read from the server once and kept."""
        self._ensure_open()
        if self._label_map is None or refresh:
            name, version = self._config.model_name, self._config.model_version
            config = await self._call(
                lambda attempt_s: self._transport.get_model_config(name, version, timeout_s=attempt_s), timeout_s
            )
            self._label_map = parse_label_map(config)
        return self._label_map

    async def model_info(self, *, timeout_s: float | None = None) -> ModelInfo:
        """Name, versions, platform, tensors and config parameters of the served ensemble."""
        self._ensure_open()
        name, version = self._config.model_name, self._config.model_version

        async def read(attempt_s: float) -> ModelInfo:
            metadata = await self._transport.get_model_metadata(name, version, timeout_s=attempt_s)
            config = await self._transport.get_model_config(name, version, timeout_s=attempt_s)
            return parse_model_info(metadata, config)

        return await self._call(read, timeout_s)

    async def statistics(
        self, model_name: str | None = None, *, timeout_s: float | None = None
    ) -> tuple[ModelStatistics, ...]:
        """Triton's inference statistics per model version; see :meth:`FashionClient.statistics`."""
        self._ensure_open()
        response = await self._call(
            lambda attempt_s: self._transport.get_inference_statistics(model_name or "", "", timeout_s=attempt_s),
            timeout_s,
        )
        return parse_statistics(response)
