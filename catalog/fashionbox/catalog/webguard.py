"""The web page's guard against other sites: DNS rebinding and cross-site form posts.

The policy is FashionBox's one for every HTTP way in (:mod:`fashionbox.core.cross_site`, which the
server's HTTP door applies too): only the names the page is served under are answered (the loopback
names, the address it binds, ``fashionbox catalog web --allowed-host NAME``), and a request that can
change something (boards, uploads, saving an upload) is refused when the browser marks it as coming
from another site. No token is needed, so the pages stay plain forms with no script.

Pure ASGI, so it wraps any app: :func:`fashionbox.catalog.web.create_app` puts it around the page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fashionbox.core.cross_site import (
    LOOPBACK_NAMES,
    RefusalLog,
    SitePolicy,
    allowed_hosts,
    host_name,
    same_authority,
)

__all__ = ["LOOPBACK_NAMES", "WebGuard", "allowed_hosts", "host_name", "same_authority"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class WebGuard:
    """ASGI middleware: refuses other names in ``Host`` (``hosts``; ``None``: any) and cross-site
    requests that can change something, with 403 and a line saying why."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts
        self.policy = SitePolicy(hosts, flag="fashionbox catalog web --allowed-host", subject="the catalog")
        self._refusals = RefusalLog(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                self._refusals.refused(str(scope.get("method")), str(scope.get("path")), refusal)
                await _forbidden(send, refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why the request is refused, or ``None``."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        return self.policy.refusal(str(scope.get("method", "GET")), headers, str(scope.get("scheme", "http")))


async def _forbidden(send: Send, message: str) -> None:
    body = f"forbidden: {message}\n".encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
