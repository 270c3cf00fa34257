"""The policy against other sites (:mod:`fashionbox.core.cross_site`) and the web page's guard around it
(:mod:`fashionbox.catalog.webguard`) on their own: which ``Host`` names are answered, and which
requests from another site are refused. ``tests/test_catalog_integration.py`` sends the same requests
to the real page (uvicorn) and drives it in Chromium, whose own same-origin forms must pass; the
server's HTTP side applies the same policy (``tests/test_http_door.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fashionbox.catalog.webguard import WebGuard
from fashionbox.core.cross_site import LOOPBACK_NAMES, RefusalLog, allowed_hosts, host_name, same_authority


@pytest.mark.parametrize(("host", "name"), [
    ("127.0.0.1:8080", "127.0.0.1"), ("LocalHost:8080", "localhost"), ("localhost", "localhost"),
    ("[::1]:8080", "::1"), ("[::1]", "::1"), ("::1", "::1"), ("catalog.example.com", "catalog.example.com"),
    ("", ""),
])
def test_host_name_drops_the_port_and_the_brackets(host: str, name: str) -> None:
    assert host_name(host) == name


def test_allowed_hosts_are_loopback_the_bind_address_and_the_names_given() -> None:
    assert allowed_hosts("127.0.0.1") == LOOPBACK_NAMES
    assert allowed_hosts("192.168.1.5") == LOOPBACK_NAMES | {"192.168.1.5"}
    assert allowed_hosts("127.0.0.1", ["Catalog.Example:8080", " "]) == LOOPBACK_NAMES | {"catalog.example"}
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("::") is None  # every interface: any name
    assert allowed_hosts("0.0.0.0", ["catalog.lan"]) == LOOPBACK_NAMES | {"catalog.lan"}
    assert allowed_hosts("127.0.0.1", ["*"]) is None


@pytest.mark.parametrize(("origin", "host", "scheme", "same"), [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", "http", True),
    ("http://localhost", "localhost:80", "http", True),
    ("https://catalog.example", "catalog.example", "http", True),  # TLS ended by a proxy that keeps Host
    ("http://127.0.0.1:8081", "127.0.0.1:8080", "http", False),
    ("http://evil.example", "127.0.0.1:8080", "http", False),
    ("null", "127.0.0.1:8080", "http", False),
    ("", "127.0.0.1:8080", "http", False),
])
def test_same_authority(origin: str, host: str, scheme: str, same: bool) -> None:
    assert same_authority(origin, host, scheme) is same


def _scope(method: str = "GET", host: str = "127.0.0.1:8080", **headers: str) -> dict[str, Any]:
    pairs = [(b"host", host.encode())] + [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": method, "path": "/boards", "scheme": "http", "headers": pairs}


GUARD = WebGuard(lambda *_: None, hosts=LOOPBACK_NAMES)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(("scope", "refused"), [
    (_scope(), None),
    (_scope(host="localhost:8080"), None),
    (_scope(host="evil.example:8080"), "not served under the name 'evil.example:8080'"),
    (_scope(host="evil.example:8080", method="POST"), "not served under the name"),
    (_scope("POST"), None),  # no Origin, no Sec-Fetch-Site: curl or a script
    (_scope("POST", origin="http://127.0.0.1:8080", sec_fetch_site="same-origin"), None),
    (_scope("POST", origin="http://evil.example"), "another origin (http://evil.example)"),
    (_scope("POST", origin="null"), "another origin (null)"),
    (_scope("POST", sec_fetch_site="cross-site"), "another site (cross-site)"),
    (_scope("POST", origin="http://127.0.0.1:8080", sec_fetch_site="same-site"), "another site (same-site)"),
    (_scope("DELETE", origin="http://evil.example"), "another origin"),
    (_scope("GET", origin="http://evil.example", sec_fetch_site="cross-site"), None),  # a link or an <img>: reads
    (_scope(host=""), None),  # no Host (HTTP/1.0, a health check): no browser's, which always sends one
    (_scope("POST", host="", origin="http://evil.example"), "another origin (http://evil.example)"),
])
def test_the_guard_refuses_other_names_and_cross_site_changes(scope: dict[str, Any], refused: str | None) -> None:
    found = GUARD.refusal(scope)
    assert (found is None) if refused is None else (found is not None and refused in found), found


def test_a_refused_request_never_reaches_the_app_and_gets_403() -> None:
    called: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    guard = WebGuard(app, hosts=LOOPBACK_NAMES)
    asyncio.run(guard(_scope("POST", origin="http://evil.example"), receive, send))
    assert called == [] and sent[0]["status"] == 403 and b"cannot change the catalog" in sent[1]["body"]
    asyncio.run(guard(_scope("POST", origin="http://127.0.0.1:8080"), receive, send))
    asyncio.run(guard({"type": "lifespan"}, receive, send))  # not HTTP: passed through
    assert called == ["http", "lifespan"] and len(sent) == 2


def test_refusals_are_logged_at_most_once_an_interval_and_the_rest_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A page's script can send thousands of refused requests a second; the log gets a line per interval."""
    import logging

    now = [0.0]
    log = RefusalLog(logging.getLogger("fashionbox.test.refusals"), interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="fashionbox.test.refusals"):
        for _ in range(100):
            log.refused("POST", "/boards", "a request from another origin (null) cannot change the catalog")
        now[0] = 9.9
        log.refused("POST", "/boards", "still")
        now[0] = 10.0
        log.refused("GET", "/", "not served under the name 'evil.example'")
    assert [r.getMessage() for r in caplog.records] == [
        "POST /boards refused: a request from another origin (null) cannot change the catalog",
        "GET / refused: not served under the name 'evil.example' (100 more refused since the last line)",
    ]

