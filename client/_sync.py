"""``FashionClient``: the blocking client. Requests and parsing come from ``_base``; only I/O is here."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType

from fashionbox.labels import LabelMap

from ._base import BaseClient, parse_detections, parse_label_map, parse_model_info
from ._config import ClientConfig
from ._exceptions import ClientClosed, FashionBoxError, translate_triton_errors
from ._transport import GrpcTransport, Transport
from ._types import ImageDetections, ImageInput, ModelInfo

__all__ = ["FashionClient"]

_log = logging.getLogger("fashionbox.client")


class FashionClient(BaseClient):
    """Blocking client for a FashionBox server (Triton serving the ``fashion`` ensemble).

    Args:
        url: ``host:port`` of Triton's gRPC endpoint; defaults to ``config.url``
            (``127.0.0.1:8001`` unless configured otherwise).
        config: timeouts, keepalive, image encoding, model name and version.
        transport: performs the calls; the default speaks gRPC through tritonclient. Tests and
            tools pass their own.

    Creating a client does not connect; the first call does. One client holds one gRPC channel
    and is safe to share between threads. Close it (or use ``with``) to release the channel;
    any call after that raises :class:`ClientClosed`.
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
        """Release the connection. Idempotent."""
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

    # -- detection ---------------------------------------------------------------------------------

    def detect(self, image: ImageInput, *, timeout_s: float | None = None) -> ImageDetections:
        """Detect garments and accessories in one image.

        Args:
            image: encoded bytes, a file path, a PIL image or a ``uint8 [h, w, 3]`` RGB array
                (see ``fashionbox.client._base`` for exactly what is sent for each).
            timeout_s: end-to-end limit for this call; defaults to ``config.timeouts.request_s``.

        Raises:
            InvalidInput: the value cannot be sent as an image (nothing was sent).
            InvalidImage: the server cannot read the image.
            TransportError, ServerError, ProtocolError, ClientClosed: see ``_exceptions``.
        """
        self._ensure_open()
        request = self._build_detect_request(image, timeout_s=timeout_s)
        with translate_triton_errors():
            result = self._transport.infer(request)
        return parse_detections(result)

    def detect_many(
        self, images: Iterable[ImageInput], *, timeout_s: float | None = None
    ) -> list[ImageDetections | FashionBoxError]:
        """Detect in each image; one failure does not stop the others.

        Returns one entry per image, in order: its result, or the :class:`FashionBoxError` it
        failed with (check with ``isinstance``). The server batches requests from many callers
        itself, so calls are made one after another here; ``timeout_s`` applies to each call.
        Closing the client is not a per-image failure: it raises :class:`ClientClosed`.
        """
        self._ensure_open()
        self._timeout_s(timeout_s)  # a bad timeout is the caller's bug, not a failure of each image
        results: list[ImageDetections | FashionBoxError] = []
        for index, image in enumerate(images):
            try:
                results.append(self.detect(image, timeout_s=timeout_s))
            except ClientClosed:
                raise
            except FashionBoxError as error:
                _log.debug("detect_many: image %d failed: %s", index, error)
                results.append(error)
        return results

    # -- server and model ----------------------------------------------------------------------------

    def health(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server process is live (it answers and is not shutting down).

        A server that cannot be reached raises :class:`ConnectError` rather than returning
        ``False``: "down" and "wrong address" need different fixes.
        """
        self._ensure_open()
        with translate_triton_errors():
            return self._transport.is_server_live(timeout_s=self._timeout_s(timeout_s))

    def ready(self, *, timeout_s: float | None = None) -> bool:
        """Whether the server is ready and the configured model can take requests now."""
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
            with translate_triton_errors():
                config = self._transport.get_model_config(
                    self._config.model_name, self._config.model_version, timeout_s=self._timeout_s(timeout_s)
                )
            self._label_map = parse_label_map(config)
        return self._label_map

    def model_info(self, *, timeout_s: float | None = None) -> ModelInfo:
        """Name, versions, platform, tensors and config parameters of the served ensemble."""
        self._ensure_open()
        timeout = self._timeout_s(timeout_s)
        name, version = self._config.model_name, self._config.model_version
        with translate_triton_errors():
            metadata = self._transport.get_model_metadata(name, version, timeout_s=timeout)
            config = self._transport.get_model_config(name, version, timeout_s=timeout)
        return parse_model_info(metadata, config)
