"""The front door's HTTP side: FashionBox's own HTTP/1.1 listener in front of Triton's, bounding bodies.

Triton 2.51's HTTP server reads a request body whole, whatever its size (no flag bounds it), and
inflates a ``Content-Encoding: gzip`` or ``deflate`` body whole too: a few hundred kilobytes of gzip
can expand to gigabytes. Behind the front door (:mod:`fashionbox.server.front_door`) Triton's HTTP
listens on a private loopback port and this listener takes the public HTTP address (``--http-host``
/ ``--http-port``). It refuses, with ``413`` and Triton's own error body (``{"error": "..."}``):

- a ``Content-Length`` over the bound, before reading a byte of the body (the body that follows is
  read and thrown away for up to 10 s, so a client that sends before it reads still gets the
  answer, then the connection is closed);
- a chunked body, as soon as what arrived passes the bound;
- a compressed body whose inflated size passes the bound: it is inflated here, in bounded steps,
  and forwarded plain (``415`` for an encoding other than gzip, deflate or identity).

Before any of that, it applies FashionBox's policy against other sites
(:mod:`fashionbox.core.cross_site`, the same as the catalog's web page): ``403`` for a ``Host`` that
is not a name the server is served under (loopback's, ``--http-host``, ``--http-allowed-host``:
DNS rebinding), and for a request that can change something (inference, the repository API) that a
browser marks as sent from another site (``Sec-Fetch-Site``, a foreign ``Origin``: a form on another
site posting to the server). Clients that are not browsers send neither mark and pass. This is why
the HTTP side runs in every profile, also where gRPC goes to Triton directly.

The bound is the gRPC side's (:func:`fashionbox.server.front_door.request_bound`): ``max_image_bytes``
x the ensemble's max batch + 64 KiB. JSON inference requests carry their images in the binary data
extension (what ``tritonclient.http`` sends by default), so an image costs its own bytes here too.

Everything else is forwarded unchanged: the method, the path and query as sent, every end-to-end
header (the admin key among them: Triton checks it as before, and the binary extension's
``Inference-Header-Content-Length``), the status, headers and body of the answer (compressed answers
stay compressed). Hop-by-hop headers are each hop's own. When Triton cannot be reached (starting,
restarting under the supervisor) the answer is ``503`` with a JSON error, and readiness probes
through the door read not-ready, as they should.

It runs in the front door's event loop (one thread, no thread per request).
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from fashionbox.core.cross_site import RefusalLog, SitePolicy, allowed_hosts
from fashionbox.server.errors import PortInUseError
from fashionbox.server.security import DOOR_KEY_NAME

__all__ = ["HOP_BY_HOP_HEADERS", "BodyTooLarge", "HttpDoor", "HttpDoorConfig", "inflate"]

logger = logging.getLogger(__name__)

HOP_BY_HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect",
})
"""Headers that belong to one connection (RFC 9110 section 7.6.1, plus the framing ones each hop sets)."""
_CONNECT_TIMEOUT_S = 5.0
_IDLE_UPSTREAM_S = 0.5
"""How long a connection to Triton's HTTP may stay idle in the door's pool."""
_INFLATE_STEP = 1 << 20


class BodyTooLarge(ValueError):
    """A request body (as sent or inflated) over the door's bound."""


@dataclass(frozen=True)
class HttpDoorConfig:
    """Where the HTTP side listens, where Triton's HTTP is, and the largest body it takes."""

    host: str
    port: int
    upstream: str
    """``host:port`` of Triton's HTTP on loopback."""
    max_request_bytes: int
    names: tuple[str, ...] = ()
    """``Host`` names answered besides loopback's and ``host`` (``--http-allowed-host``; ``*``: any)."""
    flag: str = "--http-allowed-host"
    """The option that gives :attr:`names`, said where a name is refused."""
    label: str = "HTTP"
    """What this listener is, in the log: ``HTTP``, or ``metrics`` for the metrics endpoint's side."""
    upstream_key: str | None = field(default=None, repr=False)
    """Sent to Triton with every request as :data:`~fashionbox.server.security.DOOR_KEY_NAME` (and never taken
    from a caller): Triton's HTTP behind the door answers nothing without it."""
    stop_grace_s: float = 5.0
    """How long requests in flight get to finish when the side stops (then their connections are closed). The
    server stops it before SIGTERM only once the ensemble is drained, so nothing long is left in flight; a
    client that sends its body slowly holds the stop this long at most."""

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be positive, got {self.max_request_bytes}")
        if self.stop_grace_s < 0:
            raise ValueError(f"stop_grace_s must not be negative, got {self.stop_grace_s}")

    @property
    def sites(self) -> SitePolicy:
        """The policy against other sites (:mod:`fashionbox.core.cross_site`) for this address and names."""
        return SitePolicy(allowed_hosts(self.host, self.names), flag=self.flag, subject="this server")


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded from ``encoding`` (``gzip`` or ``deflate``: zlib-wrapped, or raw as some clients
    send it), never holding more than ``limit`` + one step of output. Raises :class:`BodyTooLarge`
    past ``limit``, ``ValueError`` for a body that is not valid in that encoding."""
    attempts: tuple[int, ...]
    if encoding == "gzip":
        attempts = (16 + zlib.MAX_WBITS,)
    elif encoding == "deflate":
        attempts = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    for wbits in attempts:
        try:
            return _inflate(body, wbits, limit)
        except zlib.error as exc:
            error = exc
    raise ValueError(f"the body is not valid {encoding} data ({error})")


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    out = bytearray()
    pending = body
    while pending:
        out += decoder.decompress(pending, _INFLATE_STEP)
        if len(out) > limit:
            raise BodyTooLarge(f"the body inflates to more than {limit} bytes")
        pending = decoder.unconsumed_tail
        if decoder.eof:
            break
    out += decoder.flush()
    if len(out) > limit:
        raise BodyTooLarge(f"the body inflates to more than {limit} bytes")
    if not decoder.eof:
        raise zlib.error("the compressed body is cut short")
    return bytes(out)


def _end_to_end(headers: CIMultiDictProxy[str], drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``headers`` without the hop-by-hop ones, those ``Connection`` names, and ``drop``."""
    named = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    skip = HOP_BY_HOP_HEADERS | named | {name.lower() for name in drop}
    return [(name, value) for name, value in headers.items() if name.lower() not in skip]


def _error(status: int, message: str) -> web.Response:
    # Triton's own error body, so tritonclient.http raises InferenceServerException(message).
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")


class HttpDoor:
    """The HTTP listener (:mod:`fashionbox.server.http_door`): ``await start()`` and ``await stop()`` in
    one running event loop (the front door's)."""

    def __init__(self, config: HttpDoorConfig) -> None:
        self.config = config
        self._sites = config.sites
        self._refusals = RefusalLog(logger)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Bind (:class:`PortInUseError` when the port is taken) and serve."""
        config = self.config
        # auto_decompress off: a compressed answer travels on as Triton wrote it, Content-Encoding and all.
        # Idle connections to Triton closed after half a second (aiohttp's default: 15 s): Triton's HTTP
        # waits on exit, up to its exit timeout, for every connection still open, so idle kept-alive ones
        # held stop() that long. Kept alive while busy: a connection per request would leave a socket in
        # TIME_WAIT per request for a minute, more than the ephemeral ports at a GPU's rates.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_IDLE_UPSTREAM_S),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT_S),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        app = web.Application(client_max_size=config.max_request_bytes)
        app.router.add_route("*", "/{path:.*}", self._forward)
        # auto_decompress off here too: aiohttp would inflate a compressed body itself; inflate() does it in
        # bounded steps and says which bound was passed.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                               shutdown_timeout=config.stop_grace_s)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            await self._session.close()
            raise PortInUseError(config.port, "http", config.host) from exc
        self._runner = runner
        hosts = self._sites.hosts
        logger.info("%s front door on %s:%d: bodies over %d bytes refused, Host names %s, forwarded to %s",
                    config.label, config.host, config.port, config.max_request_bytes,
                    "any" if hosts is None else ", ".join(sorted(hosts)), config.upstream)
        if hosts is None and "*" not in config.names:
            logger.warning("%s bound to every interface (%s) with no %s: any name in Host is answered, so DNS "
                           "rebinding is not refused; %s NAME lists the names the server is reached by",
                           config.label, config.host, config.flag, config.flag)

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to ``stop_grace_s``), close every connection,
        Triton's included. Calling it again is harmless."""
        runner, self._runner = self._runner, None
        session, self._session = self._session, None
        if runner is not None:
            await runner.cleanup()
        if session is not None:
            await session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if not request.raw_path.startswith("/"):  # absolute-form or authority-form targets: this is no proxy
            return _error(400, "the request target must be a path (origin form), as Triton's HTTP API takes")
        refusal = self._sites.refusal(request.method, request.headers)
        if refusal is not None:
            self._refusals.refused(f"{self.config.label} {request.method}", request.path, refusal)
            return _error(403, f"forbidden: {refusal}")
        limit = self.config.max_request_bytes
        length = request.content_length
        if length is not None and length > limit:
            return _error(413, f"request body of {length} bytes is larger than this server takes ({limit} bytes: "
                               "max_image_bytes x the ensemble's max batch + headroom)")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body is larger than this server takes ({limit} bytes)")
        drop: list[str] = []
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding and encoding != "identity":
            try:
                body = inflate(body, encoding, limit)
            except BodyTooLarge as exc:
                return _error(413, f"{exc}: larger than this server takes")
            except ValueError as exc:
                status = 415 if encoding not in ("gzip", "deflate") else 400
                return _error(status, f"{exc}; send gzip, deflate or an uncompressed body")
            drop.append("Content-Encoding")
        assert self._session is not None
        # encoded=True: the path and query go on byte for byte, not normalised by yarl.
        url = URL(f"http://{self.config.upstream}{request.raw_path}", encoded=True)
        try:
            headers = _end_to_end(request.headers, [*drop, DOOR_KEY_NAME])
            if self.config.upstream_key is not None:
                headers.append((DOOR_KEY_NAME, self.config.upstream_key))
            async with self._session.request(request.method, url, headers=headers,
                                             data=body if body or request.can_read_body else None,
                                             allow_redirects=False) as upstream:
                payload = await upstream.read()
                return web.Response(status=upstream.status, body=payload, headers=_end_to_end(upstream.headers))
        except aiohttp.ClientConnectionError as exc:
            return _error(503, f"the inference server is not reachable right now (starting or restarting): {exc}")
