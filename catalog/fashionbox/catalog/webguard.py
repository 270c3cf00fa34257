"""The web page's guard against other sites: DNS rebinding and cross-site form posts.

A page of another site, open in the same browser as the catalog's web page, can reach the catalog
without its user meaning it to, in two ways, both refused here (403, before any handler runs):

- **DNS rebinding**: the other site's own name, made to resolve to ``127.0.0.1``, lets its script
  read the catalog's answers (the photos, the searches) as same-origin. The browser still sends that
  name in ``Host``, so only the names the page is served under are answered: the loopback names,
  the address it binds, and those given (``fashionbox catalog web --allowed-host NAME``). Bound to
  every interface (``0.0.0.0``, ``::``) with no name given, any name is answered: the machine's
  names on its networks cannot be known here (a warning says so).
- **Cross-site requests** (CSRF): a form on another site posts to ``/boards``, ``/upload`` or
  ``/upload/save`` and the browser sends it. A request that can change something (any method but
  GET, HEAD and OPTIONS) is refused where the browser says it comes from elsewhere: its
  ``Sec-Fetch-Site`` is ``cross-site`` or ``same-site``, or its ``Origin`` is not the page's own
  (``null`` included). A request with neither header is not a browser acting for a visitor (curl, a
  script) and passes. No token is needed, so the pages stay plain forms with no script.

Pure ASGI, so it wraps any app: :func:`fashionbox.catalog.web.create_app` puts it around the page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Names a page bound to loopback is reached by."""

WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
"""Bind addresses meaning every interface."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def allowed_hosts(bind: str, names: Iterable[str] = ()) -> frozenset[str] | None:
    """The ``Host`` names a page bound to ``bind`` answers: loopback's, ``bind`` itself and ``names``
    (lower-cased; ``*`` among them: any). ``None``: any name (a wildcard bind and no names given)."""
    given = frozenset(_bare(n) for n in names if n.strip())
    if "*" in given or (bind.strip() in WILDCARD_BINDS and not given):
        return None
    return LOOPBACK_NAMES | given | ({_bare(bind)} - {""} - WILDCARD_BINDS)


def host_name(host: str) -> str:
    """The name of a ``Host`` header or an origin's authority, without its port: ``[::1]:8080`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _bare(name: str) -> str:
    return host_name(name.strip())


def same_authority(origin: str, host: str, scheme: str) -> bool:
    """Whether the ``Origin`` header names the ``Host`` the request came in on (default ports ignored:
    ``http://localhost`` is ``localhost:80``)."""
    parts = urlsplit(origin.strip().lower())
    if not parts.scheme or not parts.netloc:
        return False  # "null" (a sandboxed or file page), or garbage
    return _authority(parts.netloc, parts.scheme) == _authority(host.strip().lower(), scheme)


def _authority(netloc: str, scheme: str) -> str:
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


class WebGuard:
    """ASGI middleware: refuses other names in ``Host`` (``hosts``; ``None``: any) and cross-site
    requests that can change something, with 403 and a line saying why."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                logger.warning("%s %s refused: %s", scope.get("method"), scope.get("path"), refusal)
                await _forbidden(send, refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why the request is refused, or ``None``."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return (f"this page is not served under the name {host!r} (fashionbox catalog web --allowed-host "
                    "names more)")
        if scope.get("method", "GET") in SAFE_METHODS:
            return None
        site = headers.get("sec-fetch-site", "").strip().lower()
        if site in ("cross-site", "same-site"):
            return f"a request from another site ({site}) cannot change the catalog"
        origin = headers.get("origin")
        if origin is not None and not same_authority(origin, host, str(scope.get("scheme", "http"))):
            return f"a request from another origin ({origin}) cannot change the catalog"
        return None


async def _forbidden(send: Send, message: str) -> None:
    body = f"forbidden: {message}\n".encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
