"""One policy against other sites for every HTTP way into FashionBox: DNS rebinding and cross-site requests.

A page of another site, open in a browser on a machine that reaches one of FashionBox's HTTP
listeners (the server's HTTP, :mod:`fashionbox.server.http_door`; the catalog's web page,
:mod:`fashionbox.catalog.webguard`), can make that browser talk to it without its user meaning it
to, in two ways. Both are refused (403) by :meth:`SitePolicy.refusal`, before anything else runs:

- **DNS rebinding**: the other site's own name, made to resolve to ``127.0.0.1``, lets its script
  read the listener's answers as same-origin (photos, searches, model metadata, inference results).
  The browser still sends that name in ``Host``, so only the names the listener is served under are
  answered: the loopback names, the address it binds, and those given on its command line. Bound to
  every interface (``0.0.0.0``, ``::``) with no name given, any name is answered: the machine's names
  on its networks cannot be known here (the listener warns). A request with no ``Host`` at all
  (HTTP/1.0, as some load balancers' health checks) passes: browsers always send one.
- **Cross-site requests** (CSRF): a form on another site posts to the listener and the browser sends
  it (a board created, a photo uploaded, an inference run, a model unloaded). A request that can
  change something (any method but GET, HEAD and OPTIONS) is refused where the browser says it comes
  from elsewhere: its ``Sec-Fetch-Site`` is ``cross-site`` or ``same-site``, or its ``Origin`` is not
  the listener's own (``null`` included). A request with neither header is not a browser acting for
  a visitor (curl, a script, ``tritonclient``) and passes, so no token is needed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_NAMES", "SAFE_METHODS", "WILDCARD_BINDS", "RefusalLog", "SitePolicy", "allowed_hosts",
           "host_name", "same_authority"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Names a listener bound to loopback is reached by."""

WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
"""Bind addresses meaning every interface."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing (RFC 9110 section 9.2.1), so a cross-site one is harmless."""


def allowed_hosts(bind: str, names: Iterable[str] = ()) -> frozenset[str] | None:
    """The ``Host`` names a listener bound to ``bind`` answers: loopback's, ``bind`` itself and ``names``
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


@dataclass(frozen=True)
class SitePolicy:
    """Which ``Host`` names a listener answers (``hosts``; ``None``: any), and how its refusals read.

    ``flag`` names the command-line option that adds names (said when a name is refused); ``subject``
    is what a cross-site request may not change ("the catalog", "this server")."""

    hosts: frozenset[str] | None
    flag: str
    subject: str

    def refusal(self, method: str, headers: Mapping[str, str], scheme: str = "http") -> str | None:
        """Why a request is refused, or ``None``. ``headers``: the request's, names lower-cased."""
        host = headers.get("host", "")
        # No Host at all (HTTP/1.0: a load balancer's health check) is no browser's: browsers always send one.
        if self.hosts is not None and host.strip() and host_name(host) not in self.hosts:
            return f"not served under the name {host!r} ({self.flag} names more)"
        if method.upper() in SAFE_METHODS:
            return None
        site = headers.get("sec-fetch-site", "").strip().lower()
        if site in ("cross-site", "same-site"):
            return f"a request from another site ({site}) cannot change {self.subject}"
        origin = headers.get("origin")
        if origin is not None and not same_authority(origin, host, scheme):
            return f"a request from another origin ({origin}) cannot change {self.subject}"
        return None


class RefusalLog:
    """Refusals written to ``logger`` at most once per ``interval_s``; those in between are counted into
    the next line. A page's script can send thousands of refused requests a second: each would
    otherwise be a line of the listener's log."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._quiet = 0
        self._lock = threading.Lock()

    def refused(self, method: str, path: str, reason: str) -> None:
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self._interval_s:
                self._quiet += 1
                return
            quiet, self._quiet, self._last = self._quiet, 0, now
        more = f" ({quiet} more refused since the last line)" if quiet else ""
        self._logger.warning("%s %s refused: %s%s", method, path, reason, more)

