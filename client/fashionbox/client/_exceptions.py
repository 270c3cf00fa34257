"""Every error the FashionBox client raises, in one tree, and the one place gRPC errors are mapped.

Catch :class:`FashionBoxError` to handle everything; catch a branch to handle one kind of
failure. Whether an error is worth retrying is decided here too, once: ``error.retryable`` is
true for the errors the client's :class:`~fashionbox.client.RetryPolicy` retries (marked ↻).

::

    FashionBoxError                  root: everything below, nothing else
    ├── TransportError               the request did not complete; the server may not have seen it
    │   ├── ConnectError           ↻ no connection (server down or stopping, wrong address,   UNAVAILABLE,
    │   │                            TLS handshake refused, network)                          INTERNAL + "server not
    │   │                                                                                     ready"/"is stopping",
    │   │                                                                                     CANCELLED by the server
    │   └── DeadlineExceeded         no answer within the call's timeout_s                    DEADLINE_EXCEEDED
    ├── ServerError                  the server answered with an error status
    │   ├── InvalidImage             this image cannot be read: not an image, corrupt,        INVALID_ARGUMENT,
    │   │                            larger than the message limit (only this request fails)  RESOURCE_EXHAUSTED +
    │   │                                                                                     "larger than max"
    │   ├── Overloaded             ↻ queue full or out of resources: back off and retry       RESOURCE_EXHAUSTED,
    │   │                                                                                     UNAVAILABLE + "queue"
    │   │                                                                                     or "timeout expired"
    │   ├── ModelNotReady          ↻ the ensemble is loading or unloading (↻); a model name   UNAVAILABLE,
    │   │                            the server does not know is not retried; a model          NOT_FOUND,
    │   │                            process that died until the server is restarted (↻)       "unknown model",
    │   │                                                                                     INTERNAL + "is not
    │   │                                                                                     healthy"
    │   └── AccessDenied             a restricted API without the right header (e.g. an       PERMISSION_DENIED,
    │                                admin key in ClientConfig.headers), or bad credentials    UNAUTHENTICATED,
    │                                                                                         "is restricted"
    ├── ProtocolError                the answer does not follow the contract (missing output, bad proto,
    │                                label map missing from the model config): a server/client mismatch
    ├── InvalidInput                 the client cannot turn the given value into an image request
    │                                (also a ValueError)
    ├── ConfigError                  a configuration value, timeout argument or FASHIONBOX_* variable
    │                                is invalid (also a ValueError)
    └── ClientClosed                 the client was used after close() / aclose()

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
    "AccessDenied",
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

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed if sent again after a backoff (↻ in the tree)."""
        return False


class TransportError(FashionBoxError):
    """The request did not complete; the server may or may not have processed it."""


class ConnectError(TransportError):
    """No connection to the server: it is down or stopping, the address is wrong, TLS failed, or the network."""

    @property
    def retryable(self) -> bool:
        return True


class DeadlineExceeded(TransportError):
    """No answer within the timeout; the server may still finish the work."""


class ServerError(FashionBoxError):
    """The server answered with an error status that has no more specific class."""


class InvalidImage(ServerError):
    """The server cannot read this image (not an image, corrupt, too large); only it failed."""


class Overloaded(ServerError):
    """The server is shedding load (request queue full, out of resources): back off and retry."""

    @property
    def retryable(self) -> bool:
        return True


class ModelNotReady(ServerError):
    """The server is up but the model is unknown, still loading, or unloaded."""

    @property
    def retryable(self) -> bool:
        # A model that exists but is not ready (loading, or unloading while the server restarts)
        # may be back in a moment; a name the server does not know never will.
        return self.status == "UNAVAILABLE" or _mentions(self.message, _MODEL_NOT_LOADED_MARKERS + _STUB_DEAD_MARKERS)


class AccessDenied(ServerError):
    """The server refused the call: a restricted API was called without its header, or bad credentials.

    Triton restricts API groups with ``--grpc-restricted-protocol=<apis>:<key>=<value>``; send
    ``triton-grpc-protocol-<key>: <value>`` through ``ClientConfig.headers`` (Triton adds the prefix).
    """


class ProtocolError(FashionBoxError):
    """The server's answer does not follow the FashionBox contract (client and server disagree)."""


class InvalidInput(FashionBoxError, ValueError):
    """The value given as an image cannot be sent (wrong type, shape, dtype, unreadable file)."""


class ConfigError(FashionBoxError, ValueError):
    """A configuration value, a ``timeout_s`` argument, or the environment variable it came from is invalid."""


class ClientClosed(FashionBoxError):
    """The client was used after ``close()`` / ``aclose()`` (or after its ``with`` block ended)."""


# Triton has answered "model unavailable" with several codes over its versions (UNAVAILABLE,
# NOT_FOUND, and INVALID_ARGUMENT for "Request for unknown model"), so the message decides.
_MODEL_UNAVAILABLE_MARKERS = ("unknown model", "not at ready state", "no available versions", "is not ready")
_MODEL_NOT_LOADED_MARKERS = ("no available versions", "not at ready state", "is not ready")
# Triton's queue policy refuses with UNAVAILABLE: "Exceeds maximum queue size" past max_queue_size,
# "Request timeout expired" past a queue timeout (both prefixed "in ensemble 'fashion', ..."); the
# ensemble's admission control (fashionbox.core.admission) with "the server is at capacity (...)".
_QUEUE_FULL_MARKERS = ("queue", "request timeout expired", "at capacity")
# A python-backend process that died: INTERNAL "Stub process 'preprocess_0_0' is not healthy."
# Triton 2.51 does not bring it back, `fashionbox serve` restarts the server (fashionbox.server.stubs).
_STUB_DEAD_MARKERS = ("is not healthy",)
_LOCAL_CANCEL_MARKERS = ("locally cancelled",)
# A server that is shutting down fails what it cannot finish with these words, under UNAVAILABLE
# ("Server is stopping, scheduler ... stopped accepting") or INTERNAL (a step's "Server not ready").
_SERVER_STOPPING_MARKERS = ("server is stopping", "server not ready")
# gRPC's own size check ("Received message larger than max (5000 vs. 4194304)") shares
# RESOURCE_EXHAUSTED with real overload, but retrying the same message can never help.
_TOO_LARGE_MARKERS = ("larger than max",)
# Triton answers a restricted API without its header with UNAVAILABLE ("This protocol is
# restricted, expecting header 'triton-grpc-protocol-admin-key'"): not a connection error to retry.
_RESTRICTED_MARKERS = ("is restricted",)


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
    if status in ("UNAVAILABLE", "INTERNAL") and _mentions(message, _SERVER_STOPPING_MARKERS):
        return ConnectError(message, status=status)
    if status == "INVALID_ARGUMENT":
        if _mentions(message, _MODEL_UNAVAILABLE_MARKERS):
            return ModelNotReady(message, status=status)
        return InvalidImage(message, status=status)
    if status == "RESOURCE_EXHAUSTED":
        if _mentions(message, _TOO_LARGE_MARKERS):
            return InvalidImage(message, status=status)
        return Overloaded(message, status=status)
    if status == "NOT_FOUND":
        return ModelNotReady(message, status=status)
    if status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return AccessDenied(message, status=status)
    if status == "UNAVAILABLE":
        # One code for four situations: Triton's full queue, Triton's unready model, Triton's
        # restricted APIs, and gRPC's own "failed to connect"; only the message tells them apart.
        if _mentions(message, _RESTRICTED_MARKERS):
            return AccessDenied(message, status=status)
        if _mentions(message, _QUEUE_FULL_MARKERS):
            return Overloaded(message, status=status)
        if _mentions(message, _MODEL_UNAVAILABLE_MARKERS):
            return ModelNotReady(message, status=status)
        return ConnectError(message, status=status)
    if status == "CANCELLED":
        # gRPC cancels the calls still open when a server shuts down: that one may be sent again.
        # A cancel of our own says "Locally cancelled" and is final.
        if _mentions(message, _LOCAL_CANCEL_MARKERS):
            return TransportError(message, status=status)
        return ConnectError(message, status=status)
    if status == "INTERNAL" and _mentions(message, _STUB_DEAD_MARKERS):
        return ModelNotReady(message, status=status)
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
