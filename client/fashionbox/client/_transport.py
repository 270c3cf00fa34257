"""The I/O seam: a transport performs calls, the client decides what to call and reads answers.

:class:`GrpcTransport` and :class:`AsyncGrpcTransport` are the real ones, thin layers over
``tritonclient.grpc`` and ``tritonclient.grpc.aio`` (Triton's own implementation of the KServe v2
gRPC protocol; FashionBox does not re-implement it). Both are built from the same
:class:`ClientConfig` by the same two functions, :func:`channel_args` and :func:`channel_credentials`,
and send the configured headers with every call. Tests pass fakes with the same methods, so the
clients are tested without a network. Transports raise tritonclient's ``InferenceServerException``
unchanged; the clients translate it, in one place.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from ._base import InferRequest, InferResultLike
from ._config import ClientConfig

try:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aio_grpcclient
except ImportError as exc:  # tritonclient is installed without its grpc extra
    raise ImportError(
        "fashionbox.client needs tritonclient's gRPC support: pip install 'tritonclient[grpc]>=2.50'"
    ) from exc

__all__ = ["AsyncGrpcTransport", "AsyncTransport", "GrpcTransport", "Transport", "channel_args", "channel_credentials"]

_INT32_MAX = 2**31 - 1


class Transport(Protocol):
    """The calls a blocking client makes. Timeouts are end to end, in seconds."""

    def infer(self, request: InferRequest) -> InferResultLike: ...

    def is_server_live(self, *, timeout_s: float) -> bool: ...

    def is_server_ready(self, *, timeout_s: float) -> bool: ...

    def is_model_ready(self, model_name: str, model_version: str, *, timeout_s: float) -> bool: ...

    def get_model_metadata(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        """tritonclient's ``ModelMetadataResponse`` message."""
        ...

    def get_model_config(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        """tritonclient's ``ModelConfigResponse`` message."""
        ...

    def get_inference_statistics(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        """tritonclient's ``ModelStatisticsResponse`` message; ``model_name=""`` is every model."""
        ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """The calls an asyncio client makes: :class:`Transport`'s, awaitable, and ``aclose``."""

    async def infer(self, request: InferRequest) -> InferResultLike: ...

    async def is_server_live(self, *, timeout_s: float) -> bool: ...

    async def is_server_ready(self, *, timeout_s: float) -> bool: ...

    async def is_model_ready(self, model_name: str, model_version: str, *, timeout_s: float) -> bool: ...

    async def get_model_metadata(self, model_name: str, model_version: str, *, timeout_s: float) -> Any: ...

    async def get_model_config(self, model_name: str, model_version: str, *, timeout_s: float) -> Any: ...

    async def get_inference_statistics(self, model_name: str, model_version: str, *, timeout_s: float) -> Any: ...

    async def aclose(self) -> None: ...


def channel_args(config: ClientConfig) -> list[tuple[str, int | str]]:
    """gRPC channel options for ``config``.

    Passing options to tritonclient replaces all of its defaults, so its message-size limits
    are restated here next to ours.
    """
    keepalive = config.keepalive
    args: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # gRPC core names this "min reconnect backoff", but it is the minimum time one
        # connection attempt is given (MIN_CONNECT_TIMEOUT in gRPC's connection-backoff doc).
        ("grpc.min_reconnect_backoff_ms", round(config.timeouts.connect_s * 1000)),
        # The channel's own reconnection backoff (1 s doubling to 120 s by default) would leave a
        # restarted server unused for minutes while every call fails fast; pace it like our retries.
        ("grpc.initial_reconnect_backoff_ms", round(config.retry.initial_backoff_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", round(config.retry.max_backoff_s * 1000)),
        ("grpc.keepalive_time_ms", _INT32_MAX if keepalive.time_s is None else round(keepalive.time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(keepalive.timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", int(keepalive.permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.max_pings_without_data),
    ]
    if config.tls is not None and config.tls.server_name_override is not None:
        args.append(("grpc.ssl_target_name_override", config.tls.server_name_override))
    return args


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials for ``config`` (its PEM files read now), or ``None`` for plaintext."""
    if config.tls is None:
        return None
    root_certificates, private_key, certificate_chain = config.tls.load()
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
    )


def _infer_inputs(request: InferRequest) -> list[Any]:
    inputs = []
    for tensor in request.inputs:
        infer_input = grpcclient.InferInput(tensor.name, list(tensor.data.shape), tensor.datatype)
        infer_input.set_data_from_numpy(tensor.data)
        inputs.append(infer_input)
    return inputs


class GrpcTransport:
    """Calls Triton over gRPC through ``tritonclient.grpc.InferenceServerClient``.

    The channel connects lazily: creating a transport never blocks or fails on a dead server.
    One transport serves many threads at once (gRPC channels and stubs are thread-safe).
    """

    def __init__(self, config: ClientConfig) -> None:
        self._headers = dict(config.headers) or None
        self._compression = config.compression
        self._client = grpcclient.InferenceServerClient(
            url=config.url, creds=channel_credentials(config), channel_args=channel_args(config)
        )

    def infer(self, request: InferRequest) -> InferResultLike:
        result: InferResultLike = self._client.infer(
            model_name=request.model_name,
            inputs=_infer_inputs(request),
            model_version=request.model_version,
            outputs=[grpcclient.InferRequestedOutput(name) for name in request.outputs],
            client_timeout=request.timeout_s,
            headers=self._headers,
            compression_algorithm=self._compression,
        )
        return result

    def is_server_live(self, *, timeout_s: float) -> bool:
        return bool(self._client.is_server_live(headers=self._headers, client_timeout=timeout_s))

    def is_server_ready(self, *, timeout_s: float) -> bool:
        return bool(self._client.is_server_ready(headers=self._headers, client_timeout=timeout_s))

    def is_model_ready(self, model_name: str, model_version: str, *, timeout_s: float) -> bool:
        return bool(
            self._client.is_model_ready(model_name, model_version, headers=self._headers, client_timeout=timeout_s)
        )

    def get_model_metadata(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return self._client.get_model_metadata(
            model_name, model_version, headers=self._headers, client_timeout=timeout_s
        )

    def get_model_config(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return self._client.get_model_config(model_name, model_version, headers=self._headers, client_timeout=timeout_s)

    def get_inference_statistics(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return self._client.get_inference_statistics(
            model_name, model_version, headers=self._headers, client_timeout=timeout_s
        )

    def close(self) -> None:
        self._client.close()


class AsyncGrpcTransport:
    """Calls Triton over gRPC through ``tritonclient.grpc.aio.InferenceServerClient``.

    The channel is made on the first call, inside the running event loop (a ``grpc.aio``
    channel belongs to the loop it was made in), so a client can be created anywhere; it must
    then be used from that one loop. TLS files are read at once, so a bad path fails early.
    """

    def __init__(self, config: ClientConfig) -> None:
        self._url = config.url
        self._headers = dict(config.headers) or None
        self._compression = config.compression
        self._credentials = channel_credentials(config)
        self._channel_args = channel_args(config)
        self._connection: Any = None

    def _client(self) -> Any:
        if self._connection is None:
            self._connection = aio_grpcclient.InferenceServerClient(
                url=self._url, creds=self._credentials, channel_args=self._channel_args
            )
        return self._connection

    async def infer(self, request: InferRequest) -> InferResultLike:
        result: InferResultLike = await self._client().infer(
            model_name=request.model_name,
            inputs=_infer_inputs(request),
            model_version=request.model_version,
            outputs=[grpcclient.InferRequestedOutput(name) for name in request.outputs],
            client_timeout=request.timeout_s,
            headers=self._headers,
            compression_algorithm=self._compression,
        )
        return result

    async def is_server_live(self, *, timeout_s: float) -> bool:
        return bool(await self._client().is_server_live(headers=self._headers, client_timeout=timeout_s))

    async def is_server_ready(self, *, timeout_s: float) -> bool:
        return bool(await self._client().is_server_ready(headers=self._headers, client_timeout=timeout_s))

    async def is_model_ready(self, model_name: str, model_version: str, *, timeout_s: float) -> bool:
        return bool(
            await self._client().is_model_ready(
                model_name, model_version, headers=self._headers, client_timeout=timeout_s
            )
        )

    async def get_model_metadata(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return await self._client().get_model_metadata(
            model_name, model_version, headers=self._headers, client_timeout=timeout_s
        )

    async def get_model_config(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return await self._client().get_model_config(
            model_name, model_version, headers=self._headers, client_timeout=timeout_s
        )

    async def get_inference_statistics(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return await self._client().get_inference_statistics(
            model_name, model_version, headers=self._headers, client_timeout=timeout_s
        )

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
