"""The front door: FashionBox's own gRPC listener in front of ``tritonserver``, bounding message size.

(Its HTTP side, in the same event loop, is :mod:`fashionbox.server.http_door`, and another in front of
the metrics endpoint; on a loopback server the door runs those alone, HTTP being FashionBox's way into
Triton's HTTP in every profile.)

Triton 2.51 takes gRPC messages up to 2 GiB and has no flag lowering that; an oversized request
is received whole, copied into the ``preprocess`` stub's shared memory, and only then refused
(docs/RELIABILITY.md, "Oversized requests": 2.5 GB of RSS for one 400 MB request). The front door
listens where Triton would (``--host``/``--grpc-port``, with the same TLS or mutual TLS) and
forwards every call, as raw bytes, to a Triton bound to loopback on a private port (over mutual TLS
with certificates made at each start when the door has TLS: :class:`HopTls`). Its gRPC
``max_receive_message_length`` is the request bound (:func:`request_bound`: ``max_image_bytes`` x
the ensemble's max batch + 64 KiB, or ``--max-request-bytes``), so gRPC itself refuses a larger
message with ``RESOURCE_EXHAUSTED`` ``Received message larger than max (N vs. M)`` from its
length prefix, before the message is read into memory, and long before Triton sees it::

    door = FrontDoor(FrontDoorConfig(host="0.0.0.0", port=8001, upstream="127.0.0.1:40123",
                                     max_request_bytes=request_bound(repository).max_request_bytes),
                     http=None)   # or an HttpDoorConfig: the HTTP side in the same loop
    door.start()      # binds (PortInUseError if taken), serves on its own thread
    ...
    door.stop()

What is forwarded unchanged: every method of every service (generic handlers with identity
(de)serializers: unary calls, and the bidirectional ``ModelStreamInfer``), the caller's metadata
(the admin key header among it: Triton checks it as before), the deadline, cancellation, and the
status, details and trailing metadata of the answer. Transport headers (``user-agent``, ``:authority``,
``grpc-*``) are left to the new hop.

It runs ``grpc.aio`` on one daemon thread with its own event loop, in the process that owns the
``TritonServer`` (``fashionbox serve``): no thread per call, so thousands of calls in flight cost
no more than their buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from fashionbox.contract import ENSEMBLE_MODEL, ENV_PREFIX
from fashionbox.server.errors import PortInUseError, ServerStartError
from fashionbox.server.http_door import HttpDoor, HttpDoorConfig
from fashionbox.server.security import ServerTls

__all__ = ["HEADROOM_BYTES", "STREAM_METHODS", "FrontDoor", "FrontDoorConfig", "HopTls", "RequestBound",
           "make_hop_tls", "request_bound"]

logger = logging.getLogger(__name__)

HEADROOM_BYTES = 64 * 1024
"""Room in the bound for what a request carries besides its images: names, shapes, parameters."""
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024
"""``preprocess``'s own default (fashionbox.core.imaging.DecodeLimits), for a repository that names none."""
STREAM_METHODS = frozenset({"/inference.GRPCInferenceService/ModelStreamInfer"})
"""Triton's streaming methods (both directions); every other method is unary."""
_START_TIMEOUT_S = 10.0
_RECONNECT_MS = 100
# Metadata a hop sets itself; the caller's copy must not travel on to the next hop.
_TRANSPORT_KEYS = frozenset({"user-agent", "te", "content-type", "host"})


@dataclass(frozen=True)
class RequestBound:
    """The largest gRPC message the front door lets through, and where it came from."""

    max_request_bytes: int
    max_image_bytes: int | None
    max_batch: int | None
    source: str

    def describe(self) -> str:
        if self.max_image_bytes is None:
            return f"{self.max_request_bytes} bytes ({self.source})"
        return (f"{self.max_request_bytes} bytes = max_image_bytes {self.max_image_bytes} x max batch "
                f"{self.max_batch} + {HEADROOM_BYTES} ({self.source})")


def _parameter(config: Any, name: str) -> str | None:
    if name in config.parameters:
        return str(config.parameters[name].string_value)
    return None


def request_bound(
    repository: Path, environ: Mapping[str, str] | None = None, *, override: int | None = None
) -> RequestBound:
    """The request bound for ``repository``: ``override`` when given, else the entry model's
    ``max_image_bytes`` parameter (``preprocess``, or the fused layout's ``detector``;
    ``$FASHIONBOX_MAX_IMAGE_BYTES`` wins, as in the model itself) times the ensemble's
    ``max_batch_size`` (every image of a request may be at the limit), plus :data:`HEADROOM_BYTES`.
    A repository without those is bounded by the default image limit and its largest ``max_batch_size``."""
    if override is not None:
        return RequestBound(override, None, None, "--max-request-bytes")
    try:
        return _derived_bound(Path(repository), os.environ if environ is None else environ)
    except ValueError as exc:  # ModelConfigError, a parameter that is not a number
        raise ServerStartError(f"cannot derive the front door's request bound: {exc}") from exc


def _derived_bound(repository: Path, env: Mapping[str, str]) -> RequestBound:
    from fashionbox.server.model_config import read_config

    configs = {path.parent.name: read_config(path) for path in sorted(repository.glob("*/config.pbtxt"))}
    # The entry model holds the decode limits: `preprocess` in the steps layout, `detector` in the fused one.
    written = {name: _parameter(config, "max_image_bytes") for name, config in configs.items()}
    limits = {name: int(value) for name, value in written.items() if value is not None and value.strip()}
    max_image_bytes = max(limits.values(), default=DEFAULT_MAX_IMAGE_BYTES)
    source = [f"{name}/config.pbtxt" for name, value in limits.items() if value == max_image_bytes]
    variable = f"{ENV_PREFIX}MAX_IMAGE_BYTES"
    if env.get(variable, "").strip():
        try:
            max_image_bytes = int(env[variable].strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"{variable} must be a positive integer, got {env[variable]!r}") from None
        source = [f"${variable}"]
    if ENSEMBLE_MODEL in configs:
        max_batch = int(configs[ENSEMBLE_MODEL].max_batch_size)
    else:
        max_batch = max((int(config.max_batch_size) for config in configs.values()), default=1)
    max_batch = max(max_batch, 1)  # max_batch_size 0: no batching, one image per request
    if max_image_bytes < 1:
        raise ValueError(f"max_image_bytes must be positive, got {max_image_bytes}")
    return RequestBound(max_image_bytes * max_batch + HEADROOM_BYTES, max_image_bytes, max_batch,
                        " and ".join(source) or "defaults")


@dataclass(frozen=True)
class HopTls:
    """Mutual TLS between the door and Triton, made afresh at each start (:func:`make_hop_tls`).

    Behind a door that holds the operator's TLS, Triton's private loopback port would otherwise be a
    plaintext way past the client certificates for local users. ``server`` is what Triton gets
    (its certificate, key, and the CA its one client must hold a certificate of); the door connects
    with ``client_key``/``client_cert``. Files are 0600 in a 0700 folder, removed on stop.
    """

    server: ServerTls
    client_key: Path
    client_cert: Path

    def channel_credentials(self) -> grpc.ChannelCredentials:
        assert self.server.client_ca is not None
        return grpc.ssl_channel_credentials(root_certificates=self.server.client_ca.read_bytes(),
                                            private_key=self.client_key.read_bytes(),
                                            certificate_chain=self.client_cert.read_bytes())


def make_hop_tls(folder: Path) -> HopTls:
    """A one-day CA, a server certificate for 127.0.0.1 and a client certificate, written to ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
                    extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    def write(file: str, data: bytes) -> Path:
        path = folder / file
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        return path

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_name = "fashionbox front door hop CA"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate(ca_name, ca_key, ca_name, ca_key, [(x509.BasicConstraints(ca=True, path_length=0), True)])
    leaves = {}
    for role, usage in (("triton", ExtendedKeyUsageOID.SERVER_AUTH), ("door", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([usage]), False),
        ]
        if role == "triton":
            extensions.append((x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), False))
        leaves[role] = (write(f"{role}.key", key_pem(key)),
                        write(f"{role}.pem", cert_pem(certificate(role, key, ca_name, ca_key, extensions))))
    ca_file = write("ca.pem", cert_pem(ca))
    return HopTls(ServerTls(leaves["triton"][1], leaves["triton"][0], ca_file), *leaves["door"])


@dataclass(frozen=True)
class FrontDoorConfig:
    """Where the front door listens, where it forwards, and the largest message it takes."""

    host: str
    port: int
    upstream: str
    """``host:port`` of Triton's gRPC on loopback."""
    max_request_bytes: int
    tls: ServerTls | None = None
    upstream_tls: HopTls | None = None
    """Mutual TLS to Triton (:class:`HopTls`); None: plaintext on loopback."""

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be positive, got {self.max_request_bytes}")


def _forwarded(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[tuple[str, str | bytes], ...]:
    """The caller's metadata without what each hop sets for itself."""
    if not metadata:
        return ()
    return tuple((key, value) for key, value in metadata
                 if not key.startswith((":", "grpc-")) and key not in _TRANSPORT_KEYS)


def _timeout(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    # No deadline reads as a huge number (or None); pass none on.
    if remaining is None or remaining > 1e8:
        return None
    return max(float(remaining), 0.0)


class _Proxy(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpcio ships no types here
    """Every method, forwarded as bytes over one channel to Triton."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = str(handler_call_details.method)
        handler = self._handlers.get(method)
        if handler is None:
            if method in STREAM_METHODS:
                handler = grpc.stream_stream_rpc_method_handler(self._stream(method))
            else:
                handler = grpc.unary_unary_rpc_method_handler(self._unary(method))
            self._handlers[method] = handler
        return handler

    def _unary(self, method: str) -> Any:
        upstream = self._channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            call = upstream(request, metadata=_forwarded(context.invocation_metadata()), timeout=_timeout(context))
            try:
                response: bytes = await call
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "", _forwarded(exc.trailing_metadata()))
                raise  # abort raises; this keeps type checkers sure of it
            except asyncio.CancelledError:
                call.cancel()
                raise
            trailing = _forwarded(await call.trailing_metadata())
            if trailing:
                context.set_trailing_metadata(trailing)
            return response

        return forward

    def _stream(self, method: str) -> Any:
        upstream = self._channel.stream_stream(method)

        async def forward(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            call = upstream(requests, metadata=_forwarded(context.invocation_metadata()), timeout=_timeout(context))
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "", _forwarded(exc.trailing_metadata()))
            finally:
                call.cancel()  # the caller went away, or the stream ended: a no-op then
            trailing = _forwarded(await call.trailing_metadata())
            if trailing:
                context.set_trailing_metadata(trailing)

        return forward


def _credentials(tls: ServerTls) -> grpc.ServerCredentials:
    ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())], root_certificates=ca, require_client_auth=ca is not None
    )


class FrontDoor:
    """A running front door (:mod:`fashionbox.server.front_door`): ``start()``, then ``stop()``.

    ``config``: the gRPC side (None: HTTP only); ``http``: the HTTP side (:mod:`fashionbox.server.http_door`),
    served in the same event loop (None: no HTTP); ``metrics``: the same in front of the metrics endpoint."""

    def __init__(self, config: FrontDoorConfig | None, http: HttpDoorConfig | None = None,
                 metrics: HttpDoorConfig | None = None) -> None:
        if config is None and http is None and metrics is None:
            raise ValueError("a front door needs a side: gRPC, HTTP or metrics")
        self.config = config
        self.http = http
        self.metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._http: list[HttpDoor] = []

    @property
    def running(self) -> bool:
        return self._server is not None or bool(self._http)

    def start(self) -> None:
        """Bind and serve on a thread of its own; raises :class:`PortInUseError` when the port is taken."""
        if self._loop is not None:
            raise RuntimeError("the front door is already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fashionbox-front-door", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(_START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    async def _start(self) -> None:
        if self.config is not None:
            await self._start_grpc(self.config)
        for side in (self.http, self.metrics):
            if side is not None:
                http = HttpDoor(side)
                await http.start()
                self._http.append(http)

    async def _start_grpc(self, config: FrontDoorConfig) -> None:
        upstream_options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            # The front door opens before Triton listens, and stays while the supervisor restarts it:
            # reconnect to loopback within a fraction of a second, not gRPC's default 1 s growing to 120 s.
            ("grpc.initial_reconnect_backoff_ms", _RECONNECT_MS),
            ("grpc.min_reconnect_backoff_ms", _RECONNECT_MS),
            ("grpc.max_reconnect_backoff_ms", 4 * _RECONNECT_MS),
        ]
        if config.upstream_tls is not None:
            self._channel = grpc.aio.secure_channel(config.upstream, config.upstream_tls.channel_credentials(),
                                                    options=upstream_options)
        else:
            self._channel = grpc.aio.insecure_channel(config.upstream, options=upstream_options)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", config.max_request_bytes),
                ("grpc.max_send_message_length", -1),
                # Without this a second listener could share the port and take half the calls.
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers([_Proxy(self._channel)])
        address = f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
        try:
            if config.tls is not None:
                bound = server.add_secure_port(address, _credentials(config.tls))
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises "Failed to bind to address ..."
            raise PortInUseError(config.port, "grpc", config.host) from exc
        if bound == 0:
            raise PortInUseError(config.port, "grpc", config.host)
        await server.start()
        self._server = server
        logger.info("front door on %s: at most %d bytes a message, forwarded to %s", address,
                    config.max_request_bytes, config.upstream)

    def close_http(self) -> None:
        """Stop the HTTP and metrics sides (requests in flight get their ``stop_grace_s``), the gRPC side
        going on; what to do right before Triton gets SIGTERM. Triton's exit waits for every HTTP
        connection still open, checking once a second, and the sides keep idle ones to it for a while.
        Calling it again, or after :meth:`stop`, is harmless."""
        loop = self._loop
        if loop is None or not self._http:
            return

        grace_s = max(side.config.stop_grace_s for side in self._http)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop_http(), loop).result(grace_s + _START_TIMEOUT_S)

    async def _stop_http(self) -> None:
        sides, self._http = self._http, []
        await asyncio.gather(*(side.stop() for side in sides))

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop listening (calls still open get ``grace_s`` to finish), close the channel, end the thread.
        Calling it again is harmless."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return

        async def close() -> None:
            await self._stop_http()
            if self._server is not None:
                await self._server.stop(grace_s)
            if self._channel is not None:
                await self._channel.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), loop).result(grace_s + _START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(_START_TIMEOUT_S)
        if not loop.is_running():
            loop.close()
        self._server = self._channel = None
        self._http = []
        self._loop = self._thread = None
