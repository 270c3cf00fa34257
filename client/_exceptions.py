"""Every error the FashionBox client raises, in one tree, and the one place gRPC errors are mapped.

Catch :class:`FashionBoxError` to handle everything; catch a branch to handle one kind of
failure. Retry policy falls out of the tree: a :class:`TransportError` or :class:`Overloaded`
is worth retrying with backoff, an :class:`InvalidImage` never is.

::

    FashionBoxError                  root: everything below, nothing else
    ├── TransportError               the request did not complete; the server may not have seen it
    │   ├── ConnectError             no connection (server down, wrong address, network)   UNAVAILABLE
    │   └── DeadlineExceeded         no answer within the timeout                           DEADLINE_EXCEEDED
    ├── ServerError                  the server answered with an error status
    │   ├── InvalidImage             this image cannot be read: not an image, corrupt,      INVALID_ARGUMENT
    │   │                            too large (only this request fails)
    │   ├── Overloaded               queue full or out of resources: back off and retry     RESOURCE_EXHAUSTED,
    │   │                                                                                   UNAVAILABLE + "queue"
    │   └── ModelNotReady            the ensemble is unknown, loading or unloaded           NOT_FOUND,
    │                                                                                       "unknown model"
    ├── ProtocolError                the answer does not follow the contract (missing output, bad proto,
    │                                label map missing from the model config): a server/client mismatch
    ├── InvalidInput                 the client cannot turn the given value into an image request
    │                                (also a ValueError)
    ├── ConfigError                  a configuration value, timeout argument or FASHIONBOX_* variable
    │                                is invalid (also a ValueError)
    └── ClientClosed                 the client was used after close()

Errors from tritonclient (``InferenceServerException``, whose ``status()`` is a string such as
``'StatusCode.UNAVAILABLE'``) are translated by :func:`error_from_triton` only, and always
raised ``from`` the original so its debug details stay in the traceback. Everything the server
said is kept: ``str(error)`` is the server's message, ``error.status`` the gRPC code name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tritonclient.utils import InferenceServerException

__all__ = [
    "ClientClosed",
    "ConfigError",
    "ConnectError",
    "DeadlineExceeded",
    "FashionBoxError",
    "InvalidImage",
    "InvalidInput",
    "ModelNotReady",
    "Overloaded",
    "ProtocolError",
    "ServerError",
    "TransportError",
    "error_from_triton",
    "translate_triton_errors",
]


class FashionBoxError(Exception):
    """Root of every error the client raises.

    Attributes:
        message: what went wrong, for a person (the server's own words where it said any).
        status: the gRPC status code name (``"INVALID_ARGUMENT"``) when the error came from a
            status, else ``None``.
    """

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}" if self.status else self.message


class TransportError(FashionBoxError):
    """The request did not complete; the server may or may not have processed it."""


class ConnectError(TransportError):
    """No connection to the server: it is down, the address is wrong, or the network is."""


class DeadlineExceeded(TransportError):
    """No answer within the timeout; the server may still finish the work."""


class ServerError(FashionBoxError):
    """The server answered with an error status that has no more specific class."""


class InvalidImage(ServerError):
    """The server cannot read this image (not an image, corrupt, too large); only it failed."""


class Overloaded(ServerError):
    """The server is shedding load (request queue full, out of resources): back off and retry."""


class ModelNotReady(ServerError):
    """The server is up but the model is unknown, still loading, or unloaded."""


class ProtocolError(FashionBoxError):
    """The server's answer does not follow the FashionBox contract (client and server disagree)."""


class InvalidInput(FashionBoxError, ValueError):
    """The value given as an image cannot be sent (wrong type, shape, dtype, unreadable file)."""


class ConfigError(FashionBoxError, ValueError):
    """A configuration value, a ``timeout_s`` argument, or the environment variable it came from is invalid."""


class ClientClosed(FashionBoxError):
    """The client was used after ``close()`` (or after its ``with`` block ended)."""


# Triton has answered "model unavailable" with several codes over its versions (UNAVAILABLE,
# NOT_FOUND, and INVALID_ARGUMENT for "Request for unknown model"), so the message decides.
_MODEL_UNAVAILABLE_MARKERS = ("unknown model", "not at ready state", "no available versions", "is not ready")
_QUEUE_FULL_MARKERS = ("queue",)


def _mentions(message: str, markers: tuple[str, ...]) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in markers)


def error_from_triton(exc: InferenceServerException) -> FashionBoxError:
    """The :class:`FashionBoxError` for a tritonclient ``InferenceServerException``.

    The only place a gRPC status becomes a client exception. The caller raises the result
    ``from exc`` (see :func:`translate_triton_errors`). An exception without a status was raised
    by tritonclient itself before anything was sent, which means it refused a request this
    client built: a :class:`ProtocolError`.
    """
    raw_status = exc.status()
    raw_message = exc.message()
    message = str(raw_message) if raw_message else str(exc)
    if raw_status is None:
        return ProtocolError(f"tritonclient refused the request: {message}")
    # tritonclient writes str(grpc.StatusCode.X), i.e. "StatusCode.X".
    status = str(raw_status).removeprefix("StatusCode.")

    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(message, status=status)
    if status == "INVALID_ARGUMENT":
        if _mentions(message, _MODEL_UNAVAILABLE_MARKERS):
            return ModelNotReady(message, status=status)
        return InvalidImage(message, status=status)
    if status == "RESOURCE_EXHAUSTED":
        return Overloaded(message, status=status)
    if status == "NOT_FOUND":
        return ModelNotReady(message, status=status)
    if status == "UNAVAILABLE":
        # One code for three situations: Triton's full queue, Triton's unready model, and gRPC's
        # own "failed to connect"; only the message tells them apart.
        if _mentions(message, _QUEUE_FULL_MARKERS):
            return Overloaded(message, status=status)
        if _mentions(message, _MODEL_UNAVAILABLE_MARKERS):
            return ModelNotReady(message, status=status)
        return ConnectError(message, status=status)
    if status == "CANCELLED":
        return TransportError(message, status=status)
    return ServerError(message, status=status)


@contextmanager
def translate_triton_errors() -> Iterator[None]:
    """Re-raise tritonclient's exceptions inside the block as :class:`FashionBoxError`, chained.

    Works around ``await`` as well, so the async client uses the same translation.
    """
    try:
        yield
    except InferenceServerException as exc:
        raise error_from_triton(exc) from exc
