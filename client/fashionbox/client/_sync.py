"""``FashionClient``: the blocking client. Requests, parsing and retry decisions come from ``_base``
and ``_retry``; only I/O (and sleeping, and threads for ``detect_many``) is here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
from ._transport import GrpcTransport, Transport
from ._types import ImageDetections, ImageInput, ModelInfo, ModelStatistics

__all__ = ["FashionClient"]

_log = logging.getLogger("fashionbox.client")
_T = TypeVar("_T")


class FashionClient(BaseClient):
    """Blocking client for a FashionBox server (Triton serving the ``fashion`` ensemble).

    Args:
        url: ``host:port`` of Triton's gRPC endpoint; defaults to ``config.url``
            (``127.0.0.1:8001`` unless configured otherwise).
        config: timeouts, retries, TLS, headers, keepalive, image encoding, model name and version.
        transport: performs the calls; the default speaks gRPC through tritonclient. Tests and
            tools pass their own.

    Creating a client does not connect; the first call does. One client holds one gRPC channel
    and is safe to share between threads. Close it (or use ``with``) to release the channel;
    any call after that raises :class:`ClientClosed`. :class:`AsyncFashionClient` has the same
    methods for asyncio.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        config: ClientConfig | None = None,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(url, config=config)
        self._transport: Transport = transport if transport is not None else GrpcTransport(self._config)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the connection. Idempotent. Calls still in flight fail with :class:`TransportError`."""
        if self._closed:
            return
        self._closed = True
        self._transport.close()

    def __enter__(self) -> FashionClient:
        self._ensure_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, call: Callable[[float], _T], timeout_s: float | None) -> _T:
        """``call(attempt_timeout_s)`` under the retry policy, within one deadline of ``timeout_s``."""
        attempts = self._attempts(self._timeout_s(timeout_s))
        while True:
            try:
                with translate_triton_errors():
                    return call(attempts.start())
            except FashionBoxError as error:
                delay_s = attempts.delay_after(error)
                if delay_s is None:
                    raise
            time.sleep(delay_s)
            self._ensure_open()  # closed by another thread during the backoff

    # -- detection ---------------------------------------------------------------------------------

    def detect(self, image: ImageInput, *, timeout_s: float | None = None) -> ImageDetections:
        """Detect garments and accessories in one image.

        Args:
            image: encoded bytes, a file path, a PIL image or a ``uint8 [h, w, 3]`` RGB array
                (see ``fashionbox.client._base`` for exactly what is sent for each).
            timeout_s: end-to-end limit for this call, retries included; defaults to
                ``config.timeouts.request_s``.

        Raises:
            InvalidInput: the value cannot be sent as an image (nothing was sent).
            InvalidImage: the server cannot read the image.
            TransportError, ServerError, ProtocolError, ClientClosed: see ``_exceptions``.
        """
        self._ensure_open()
        request = self._build_detect_request(image, timeout_s=timeout_s)

        def infer(attempt_timeout_s: float) -> InferResultLike:
            return self._transport.infer(replace(request, timeout_s=attempt_timeout_s))

        return parse_detections(self._call(infer, request.timeout_s))

    def embed_text(self, texts: Sequence[str], *, timeout_s: float | None = None) -> npt.NDArray[np.float32]:
        """Vectors for ``texts`` in the served embedder's space: float32 ``[len(texts), D]``, L2-normalised,
        so ``embed_text(["red dress"]) @ result.embedding`` is a cosine similarity (search by words).

        Needs a repository converted with an embedder family that has a text tower (``--embedder
        hf:...`` with CLIP or SigLIP); otherwise the server answers that ``text_embedder`` is unknown
        (:class:`ServerError`). ``timeout_s`` applies to each request of up to 16 texts.

        Raises:
            InvalidInput: ``texts`` is one string, or holds an empty or non-string text (nothing was sent).
        """
        self._ensure_open()
        rows = []
        for batch in text_batches(texts):
            request = self._build_text_request(batch, timeout_s=timeout_s)

            def infer(attempt_timeout_s: float, request: InferRequest = request) -> InferResultLike:
                return self._transport.infer(replace(request, timeout_s=attempt_timeout_s))

            rows.append(parse_text_embeddings(self._call(infer, request.timeout_s), len(batch)))
        return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    def text_model(self, *, timeout_s: float | None = None) -> str:
        """The embedder ``embed_text``'s vectors belong to: compare them with vectors whose
        ``packed_embedding.model`` is this name, and no others."""
        self._ensure_open()
        config = self._call(lambda attempt_s: self._transport.get_model_config(
            contract.TEXT_EMBEDDER_MODEL, "", timeout_s=attempt_s), timeout_s)
        return parse_text_model(config)

    def detect_many(
        self,
        images: Iterable[ImageInput],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout_s: float | None = None,
    ) -> list[ImageDetections | FashionBoxError]:
        """Detect in each image, up to ``max_in_flight`` requests at a time; one failure stops nothing.

        Returns one entry per image, in the order given: its result, or the
        :class:`FashionBoxError` it failed with (check with ``isinstance``). Requests run on a
        pool of ``max_in_flight`` threads, so the server's dynamic batcher sees many at once;
        ``images`` is read lazily, at most ``max_in_flight`` ahead (a generator of large images is
        fine). ``timeout_s`` and retries apply to each image on its own. Closing the client is not
        a per-image failure: it raises :class:`ClientClosed`.
        """
        self._ensure_open()
        timeout = self._timeout_s(timeout_s)  # a bad timeout is the caller's bug, not each image's failure
        workers = self._max_in_flight(max_in_flight)
        if workers == 1:
            return [self._detect_or_error(index, image, timeout) for index, image in enumerate(images)]

        slots = threading.BoundedSemaphore(workers)
        futures: list[Future[ImageDetections | FashionBoxError]] = []
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fashionbox-detect")
        try:
            for index, image in enumerate(images):
                slots.acquire()
                self._ensure_open()
                future = pool.submit(self._detect_or_error, index, image, timeout)
                future.add_done_callback(lambda _: slots.release())
                futures.append(future)
            return [future.result() for future in futures]
        finally:
            # On an error or Ctrl-C, drop what has not started; what runs ends within its timeout.
            pool.shutdown(wait=True, cancel_futures=True)

    def _detect_or_error(self, index: int, image: ImageInput, timeout_s: float) -> ImageDetections | FashionBoxError:
        try:
            return self.detect(image, timeout_s=timeout_s)
        except ClientClosed:
            raise
        except FashionBoxError as error:
            _log.debug("detect_many: image %d failed: %s", index, error)
            return error

    # -- server and model ----------------------------------------------------------------------------

    def health(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server process is live (it answers and is not shutting down).

        A server that cannot be reached raises :class:`ConnectError` rather than returning
        ``False``: "down" and "wrong address" need different fixes. Never retried: it reports now.
        """
        self._ensure_open()
        with translate_triton_errors():
            return self._transport.is_server_live(timeout_s=self._timeout_s(timeout_s))

    def ready(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server is ready and the configured model can take requests now (never retried)."""
        self._ensure_open()
        timeout = self._timeout_s(timeout_s)
        with translate_triton_errors():
            if not self._transport.is_server_ready(timeout_s=timeout):
                return False
            return self._transport.is_model_ready(
                self._config.model_name, self._config.model_version, timeout_s=timeout
            )

    def labels(self, *, refresh: bool = False, timeout_s: float | None = None) -> LabelMap:
        """The label map the served model was converted with, read from the server.

        Read once from the ensemble's config and kept; pass ``refresh=True`` after the server
        has loaded another model version.
        """
        self._ensure_open()
        if self._label_map is None or refresh:
            name, version = self._config.model_name, self._config.model_version
            config = self._call(
                lambda attempt_s: self._transport.get_model_config(name, version, timeout_s=attempt_s), timeout_s
            )
            self._label_map = parse_label_map(config)
        return self._label_map

    def model_info(self, *, timeout_s: float | None = None) -> ModelInfo:
        """Name, versions, platform, tensors and config parameters of the served ensemble."""
        self._ensure_open()
        name, version = self._config.model_name, self._config.model_version

        def read(attempt_s: float) -> ModelInfo:
            metadata = self._transport.get_model_metadata(name, version, timeout_s=attempt_s)
            config = self._transport.get_model_config(name, version, timeout_s=attempt_s)
            return parse_model_info(metadata, config)

        return self._call(read, timeout_s)

    def statistics(
        self, model_name: str | None = None, *, timeout_s: float | None = None
    ) -> tuple[ModelStatistics, ...]:
        """Triton's inference statistics, per model version, sorted by model name.

        ``model_name=None`` gives every loaded model: the ensemble and each of its steps, which
        shows where the time goes. Triton may restrict this API to callers with an admin header
        (``ClientConfig.headers``); without it the call raises :class:`AccessDenied`.
        """
        self._ensure_open()
        response = self._call(
            lambda attempt_s: self._transport.get_inference_statistics(model_name or "", "", timeout_s=attempt_s),
            timeout_s,
        )
        return parse_statistics(response)
