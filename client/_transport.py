"""The I/O seam: a transport performs calls, the client decides what to call and reads answers.

:class:`GrpcTransport` is the real one, a thin layer over ``tritonclient.grpc`` (Triton's own
implementation of the KServe v2 gRPC protocol; FashionBox does not re-implement it). Tests pass
a fake with the same methods, so the client is tested without a network. Transports raise
tritonclient's ``InferenceServerException`` unchanged; the client translates it, in one place.
"""

from __future__ import annotations

from typing import Any, Protocol

from ._base import InferRequest, InferResultLike
from ._config import ClientConfig

try:
    import tritonclient.grpc as grpcclient
except ImportError as exc:  # tritonclient is installed without its grpc extra
    raise ImportError(
        "fashionbox.client needs tritonclient's gRPC support: pip install 'tritonclient[grpc]==2.50.0'"
    ) from exc

__all__ = ["GrpcTransport", "Transport", "channel_args"]

_INT32_MAX = 2**31 - 1
_MAX_MESSAGE_BYTES = _INT32_MAX
"""gRPC's cap on one message either way; the server applies its own image-size limit with a
clear INVALID_ARGUMENT, which is a better error than gRPC's RESOURCE_EXHAUSTED at 4 MiB."""


class Transport(Protocol):
    """The calls a client makes. Timeouts are end to end, in seconds."""

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

    def close(self) -> None: ...


def channel_args(config: ClientConfig) -> list[tuple[str, int]]:
    """gRPC channel options for ``config``.

    Passing options to tritonclient replaces all of its defaults, so its message-size limits
    are restated here next to ours.
    """
    keepalive = config.keepalive
    return [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        # gRPC core names this "min reconnect backoff", but it is the minimum time one
        # connection attempt is given (MIN_CONNECT_TIMEOUT in gRPC's connection-backoff doc).
        ("grpc.min_reconnect_backoff_ms", round(config.timeouts.connect_s * 1000)),
        ("grpc.keepalive_time_ms", _INT32_MAX if keepalive.time_s is None else round(keepalive.time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(keepalive.timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", int(keepalive.permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.max_pings_without_data),
    ]


class GrpcTransport:
    """Calls Triton over gRPC through ``tritonclient.grpc.InferenceServerClient``.

    The channel connects lazily: creating a transport never blocks or fails on a dead server.
    """

    def __init__(self, config: ClientConfig) -> None:
        self._client = grpcclient.InferenceServerClient(url=config.url, channel_args=channel_args(config))

    def infer(self, request: InferRequest) -> InferResultLike:
        inputs = []
        for tensor in request.inputs:
            infer_input = grpcclient.InferInput(tensor.name, list(tensor.data.shape), tensor.datatype)
            infer_input.set_data_from_numpy(tensor.data)
            inputs.append(infer_input)
        outputs = [grpcclient.InferRequestedOutput(name) for name in request.outputs]
        result: InferResultLike = self._client.infer(
            model_name=request.model_name,
            inputs=inputs,
            model_version=request.model_version,
            outputs=outputs,
            client_timeout=request.timeout_s,
        )
        return result

    def is_server_live(self, *, timeout_s: float) -> bool:
        return bool(self._client.is_server_live(client_timeout=timeout_s))

    def is_server_ready(self, *, timeout_s: float) -> bool:
        return bool(self._client.is_server_ready(client_timeout=timeout_s))

    def is_model_ready(self, model_name: str, model_version: str, *, timeout_s: float) -> bool:
        return bool(self._client.is_model_ready(model_name, model_version, client_timeout=timeout_s))

    def get_model_metadata(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return self._client.get_model_metadata(model_name, model_version, client_timeout=timeout_s)

    def get_model_config(self, model_name: str, model_version: str, *, timeout_s: float) -> Any:
        return self._client.get_model_config(model_name, model_version, client_timeout=timeout_s)

    def close(self) -> None:
        self._client.close()
