"""The front door's HTTP side (``fashionbox.server.http_door``): what it forwards and what it refuses.

Against a small recording HTTP server standing in for Triton's (every request's method, path,
headers and body are kept), so each property of the hop is checked alone: the request and the
answer unchanged end to end (the admin key and the binary extension's header among the headers),
hop-by-hop headers dropped, compressed answers left compressed, bodies over the bound refused by
their ``Content-Length`` or as they arrive (chunked) before the stand-in sees anything, compressed
bodies inflated in bounded steps (a gzip bomb refused), unknown encodings refused, an unreachable
Triton answered with 503, a taken port named. The door in front of a real Triton (inference over
HTTP, a soak of oversized bodies with flat memory) is held by tests/test_oversized.py.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fashionbox.contract import ADMIN_KEY_NAME
from fashionbox.server import ConfigError, PortInUseError, ServerConfig, build_command
from fashionbox.server.front_door import FrontDoor, FrontDoorConfig
from fashionbox.server.http_door import BodyTooLarge, HttpDoorConfig, inflate
from fashionbox.server.network import find_free_ports
from fashionbox.server.security import DOOR_KEY_NAME

BOUND = 200_000


@dataclass
class Seen:
    """What the stand-in for Triton's HTTP saw: (method, path, headers lower-cased, body) per request."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


def _recording_handler(seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Recording(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers: dict[str, str] = {}
            for key, value in self.headers.items():  # a header sent twice reads "first, second"
                headers[key.lower()] = f"{headers[key.lower()]}, {value}" if key.lower() in headers else value
            seen.requests.append((self.command, self.path, headers, body))
            if self.path.startswith("/compressed"):
                payload, extra = gzip.compress(b'{"compressed": true}'), [("Content-Encoding", "gzip")]
            elif self.path.startswith("/missing"):
                payload, extra = b'{"error": "Request for unknown model: \'nope\' is not found"}', []
            else:
                payload, extra = json.dumps({"echo": len(body)}).encode(), []
            self.send_response(400 if self.path.startswith("/missing") else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Inference-Header-Content-Length", "17")
            self.send_header("Keep-Alive", "timeout=5")
            for key, value in extra:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer  # http.server's naming

    return Recording


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _recording_handler(seen))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def _door(upstream_http: str, names: tuple[str, ...] = (), upstream_key: str | None = None) -> FrontDoor:
    (http_port,) = find_free_ports(1)
    # The HTTP side alone, as on a loopback server (gRPC straight to Triton).
    return FrontDoor(None, HttpDoorConfig(host="127.0.0.1", port=http_port, upstream=upstream_http,
                                          max_request_bytes=BOUND, names=names, upstream_key=upstream_key))


@pytest.fixture(scope="module")
def door(upstream: tuple[str, Seen]) -> Iterator[FrontDoor]:
    opened = _door(upstream[0])
    opened.start()
    yield opened
    opened.stop()


def _connection(door: FrontDoor) -> http.client.HTTPConnection:
    assert door.http is not None
    return http.client.HTTPConnection("127.0.0.1", door.http.port, timeout=30)


def _request(door: FrontDoor, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = _connection(door)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {key.lower(): value for key, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_a_request_and_its_answer_cross_the_door_unchanged(door: FrontDoor, upstream: tuple[str, Seen]) -> None:
    seen = upstream[1]
    before = len(seen.requests)
    body = b'{"inputs": []}' + bytes(range(256)) * 10
    status, headers, answer = _request(door, "POST", "/v2/models/fashion/infer?x=1&y=%2F", body, {
        ADMIN_KEY_NAME: "the-operators-key", "Inference-Header-Content-Length": "14",
        "Content-Type": "application/octet-stream", "X-Custom": "kept", "Connection": "keep-alive, X-Hop",
        "X-Hop": "dropped", "Keep-Alive": "timeout=5"})

    assert status == 200 and json.loads(answer) == {"echo": len(body)}
    assert headers["inference-header-content-length"] == "17" and headers["content-type"] == "application/json"
    assert "keep-alive" not in headers  # the stand-in's hop-by-hop header stays on its hop
    method, path, sent, received = seen.requests[before]
    assert (method, path, received) == ("POST", "/v2/models/fashion/infer?x=1&y=%2F", body)
    assert sent[ADMIN_KEY_NAME] == "the-operators-key" and sent["inference-header-content-length"] == "14"
    assert sent["content-type"] == "application/octet-stream" and sent["x-custom"] == "kept"
    assert "x-hop" not in sent and "keep-alive" not in sent  # named by Connection, or hop-by-hop


def test_closing_the_http_side_waits_for_a_slow_body_no_longer_than_its_grace(upstream: tuple[str, Seen]) -> None:
    # stop() closes the HTTP side before SIGTERM (once drained): a client sending its body slowly must not hold
    # the stop longer than the side's grace (aiohttp's own default: 60 s).
    (http_port,) = find_free_ports(1)
    side = FrontDoor(None, HttpDoorConfig(host="127.0.0.1", port=http_port, upstream=upstream[0],
                                          max_request_bytes=BOUND, stop_grace_s=0.5))
    side.start()
    try:
        with socket.create_connection(("127.0.0.1", http_port), timeout=30) as slow:
            slow.sendall(b"POST /v2/models/fashion/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"inputs\"")  # and the rest never comes
            time.sleep(0.3)
            started = time.monotonic()
            side.close_http()
            took_s = time.monotonic() - started
            assert took_s < 5, took_s
            assert slow.recv(4096) == b""  # its connection closed
        assert not side.running
    finally:
        side.stop()


def test_the_door_sends_triton_its_own_key_and_never_a_callers(upstream: tuple[str, Seen]) -> None:
    # Triton's HTTP behind the door answers only requests with the door's key (tests/test_server.py); a caller
    # that sends the header itself neither adds a value nor replaces the door's.
    key = "door-key-" + "k" * 24
    seen = upstream[1]
    for upstream_key, sent_key in ((key, key), (None, None)):
        keyed = _door(upstream[0], upstream_key=upstream_key)
        keyed.start()
        try:
            assert "door-key-" not in repr(keyed.http)  # not in a config's repr, which may be logged
            for headers in ({}, {DOOR_KEY_NAME: "forged"}, {DOOR_KEY_NAME.upper(): "forged"}):
                before = len(seen.requests)
                assert _request(keyed, "GET", "/v2/health/ready", headers=headers)[0] == 200
                assert seen.requests[before][2].get(DOOR_KEY_NAME) == sent_key, headers
        finally:
            keyed.stop()


def test_a_get_an_error_status_and_a_compressed_answer_pass_through(door: FrontDoor) -> None:
    status, _, answer = _request(door, "GET", "/v2/health/ready")
    assert status == 200 and json.loads(answer) == {"echo": 0}
    status, _, answer = _request(door, "POST", "/missing", b"{}")
    assert status == 400 and "is not found" in json.loads(answer)["error"]
    status, headers, answer = _request(door, "GET", "/compressed", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(answer)) == {"compressed": True}  # left as Triton wrote it


def test_a_body_over_the_bound_is_refused_by_its_length_before_anything_is_read(
    door: FrontDoor, upstream: tuple[str, Seen]
) -> None:
    seen = upstream[1]
    before = len(seen.requests)
    assert door.http is not None
    with socket.create_connection(("127.0.0.1", door.http.port), timeout=30) as raw:
        started = time.monotonic()
        # 10 GB announced, a few bytes sent: the answer may not wait for the rest.
        raw.sendall(f"POST /v2/models/fashion/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {10**10}\r\n"
                    "\r\n".encode() + b"\xff" * 1000)
        answer = raw.recv(65536).decode()
        took_s = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 413"), answer
    error = json.loads(answer.split("\r\n\r\n", 1)[1])["error"]
    assert f"request body of {10**10} bytes is larger than this server takes ({BOUND} bytes" in error
    assert took_s < 5 and len(seen.requests) == before


def test_a_proxy_style_target_is_refused_not_forwarded(door: FrontDoor, upstream: tuple[str, Seen]) -> None:
    seen = upstream[1]
    before = len(seen.requests)
    assert door.http is not None
    with socket.create_connection(("127.0.0.1", door.http.port), timeout=30) as raw:
        raw.sendall(b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                    b"Connection: close\r\n\r\n")
        answer = raw.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 400") and "must be a path" in answer, answer
    assert len(seen.requests) == before


def test_a_body_at_the_bound_passes_and_one_byte_more_is_refused(door: FrontDoor, upstream: tuple[str, Seen]) -> None:
    status, _, answer = _request(door, "POST", "/v2/models/fashion/infer", b"a" * BOUND)
    assert status == 200 and json.loads(answer) == {"echo": BOUND}
    status, _, answer = _request(door, "POST", "/v2/models/fashion/infer", b"a" * (BOUND + 1))
    assert status == 413 and f"({BOUND} bytes" in json.loads(answer)["error"]


def test_a_chunked_body_is_refused_once_it_passes_the_bound(door: FrontDoor, upstream: tuple[str, Seen]) -> None:
    seen = upstream[1]
    before = len(seen.requests)

    def chunks(total: int) -> Iterator[bytes]:
        for _ in range(total // 10_000):
            yield b"c" * 10_000

    connection = _connection(door)
    try:
        connection.request("POST", "/v2/models/fashion/infer", body=chunks(BOUND * 3), encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413 and "larger than this server takes" in json.loads(response.read())["error"]
    finally:
        connection.close()
    status, _, answer = _request(door, "POST", "/ok", b"small")  # the door goes on
    assert status == 200 and json.loads(answer) == {"echo": 5}
    assert [path for _, path, _, _ in seen.requests[before:]] == ["/ok"]


def test_compressed_bodies_are_inflated_within_the_bound_and_a_bomb_is_refused(
    door: FrontDoor, upstream: tuple[str, Seen]
) -> None:
    seen = upstream[1]
    body = json.dumps({"inputs": [{"name": "IMAGE", "data": ["x" * 5000]}]}).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                             ("deflate", _raw_deflate(body))):
        before = len(seen.requests)
        status, _, _ = _request(door, "POST", "/v2/models/fashion/infer", packed, {"Content-Encoding": encoding})
        assert status == 200
        _, _, sent, received = seen.requests[before]
        assert received == body and "content-encoding" not in sent  # forwarded plain

    before = len(seen.requests)
    bomb = gzip.compress(b"\0" * (BOUND * 50))  # a few kB that inflate to 10 MB
    assert len(bomb) < BOUND
    status, _, answer = _request(door, "POST", "/v2/models/fashion/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and f"inflates to more than {BOUND} bytes" in json.loads(answer)["error"]
    status, _, answer = _request(door, "POST", "/v2/models/fashion/infer", b"not gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and "not valid gzip data" in json.loads(answer)["error"]
    status, _, answer = _request(door, "POST", "/v2/models/fashion/infer", body, {"Content-Encoding": "br"})
    assert status == 415 and "unsupported Content-Encoding 'br'" in json.loads(answer)["error"]
    assert len(seen.requests) == before


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_inflate_holds_no_more_than_the_bound_and_refuses_a_cut_body() -> None:
    data = b"fashion" * 10_000
    assert inflate(gzip.compress(data), "gzip", len(data)) == data
    with pytest.raises(BodyTooLarge, match=f"more than {len(data) - 1} bytes"):
        inflate(gzip.compress(data), "gzip", len(data) - 1)
    with pytest.raises(ValueError, match="cut short"):
        inflate(gzip.compress(data)[:-20], "gzip", len(data))


def test_other_names_in_host_are_refused_before_triton_sees_them(door: FrontDoor, upstream: tuple[str, Seen]) -> None:
    """DNS rebinding: another site's name resolving to 127.0.0.1 reaches the door with that name in Host."""
    seen = upstream[1]
    before = len(seen.requests)
    assert door.http is not None
    port = door.http.port
    for method, path, body in (("GET", "/v2/models/fashion", None), ("POST", "/v2/models/fashion/infer", b"{}")):
        status, _, answer = _request(door, method, path, body, {"Host": f"rebound.example:{port}"})
        assert status == 403, (method, path)
        assert json.loads(answer)["error"] == (f"forbidden: not served under the name 'rebound.example:{port}' "
                                               "(--http-allowed-host names more)")
    assert len(seen.requests) == before
    for name in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert _request(door, "GET", "/v2/health/ready", headers={"Host": name})[0] == 200, name
    assert len(seen.requests) == before + 4
    # No Host at all (HTTP/1.0, as some load balancers' health checks send): no browser's, answered.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"GET /v2/health/ready HTTP/1.0\r\n\r\n")
        answer = raw.recv(65536).decode()
    assert answer.startswith("HTTP/1.0 200") or answer.startswith("HTTP/1.1 200"), answer
    assert len(seen.requests) == before + 5


def test_a_request_from_another_site_that_changes_something_is_refused(
    door: FrontDoor, upstream: tuple[str, Seen]
) -> None:
    """A form on another site posting to the server (inference, the repository API): the browser marks it."""
    seen = upstream[1]
    assert door.http is not None
    own = f"http://127.0.0.1:{door.http.port}"
    before = len(seen.requests)
    for marks in ({"Origin": "http://elsewhere.example"}, {"Origin": "null"}, {"Origin": f"{own}0"},
                  {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site", "Origin": own}):
        for path in ("/v2/models/fashion/infer", "/v2/repository/models/fashion/unload"):
            status, _, answer = _request(door, "POST", path, b"{}", {"Content-Type": "text/plain", **marks})
            assert status == 403 and "cannot change this server" in json.loads(answer)["error"], (marks, path)
    assert len(seen.requests) == before
    # Its own origin, a same-origin fetch, a client that is not a browser, and reads from anywhere pass.
    for method, marks in (("POST", {"Origin": own}), ("POST", {"Sec-Fetch-Site": "same-origin"}), ("POST", {}),
                          ("GET", {"Origin": "http://elsewhere.example", "Sec-Fetch-Site": "cross-site"})):
        assert _request(door, method, "/v2/models/fashion/infer", b"{}" if method == "POST" else None,
                        marks)[0] == 200, (method, marks)
    assert len(seen.requests) == before + 4


def test_names_given_are_answered_and_a_wildcard_bind_answers_any(upstream: tuple[str, Seen]) -> None:
    named = _door(upstream[0], names=("Models.Internal", "10.0.0.7"))
    named.start()
    try:
        assert named.http is not None
        for name, status in (("models.internal", 200), (f"10.0.0.7:{named.http.port}", 200), ("other.internal", 403)):
            assert _request(named, "GET", "/v2/health/ready", headers={"Host": name})[0] == status, name
    finally:
        named.stop()
    anywhere = HttpDoorConfig(host="0.0.0.0", port=1, upstream="127.0.0.1:2", max_request_bytes=BOUND)
    assert anywhere.sites.hosts is None  # the machine's names on its networks cannot be known: any (and a warning)
    assert HttpDoorConfig(host="10.0.0.7", port=1, upstream="127.0.0.1:2", max_request_bytes=BOUND,
                          names=("*",)).sites.hosts is None
    bound_there = HttpDoorConfig(host="10.0.0.7", port=1, upstream="127.0.0.1:2", max_request_bytes=BOUND).sites
    assert bound_there.hosts is not None and "10.0.0.7" in bound_there.hosts and "localhost" in bound_there.hosts
    assert bound_there.refusal("GET", {"host": "10.0.0.7:8000"}) is None
    assert bound_there.refusal("GET", {"host": "fashionbox.example"}) is not None


def test_http_goes_through_the_door_wherever_it_is_served_unless_the_door_is_refused(tmp_path: Path) -> None:
    loopback = ServerConfig(repository=tmp_path)
    assert loopback.uses_http_door and not loopback.uses_front_door  # gRPC direct, HTTP guarded
    assert not ServerConfig(repository=tmp_path, front_door=False).uses_http_door
    assert not ServerConfig(repository=tmp_path, http=False).uses_http_door
    assert ServerConfig(repository=tmp_path, http_allowed_hosts=("models.internal",)).uses_http_door
    with pytest.raises(ConfigError, match="http_allowed_hosts is enforced by the front door's HTTP side"):
        ServerConfig(repository=tmp_path, http_allowed_hosts=("models.internal",), front_door=False)
    assert loopback.uses_metrics_door and ServerConfig(repository=tmp_path, http=False).uses_metrics_door
    assert not ServerConfig(repository=tmp_path, front_door=False).uses_metrics_door
    with pytest.raises(ConfigError, match="metrics_allowed_hosts is enforced by the front door"):
        ServerConfig(repository=tmp_path, metrics_allowed_hosts=("prometheus.internal",), front_door=False)
    command = build_command(loopback, binary=Path("t"), backend_directory=Path("b"), launcher_key="k" * 20,
                            upstream_http_port=45679, upstream_metrics_port=45680)
    assert "--metrics-address=127.0.0.1" in command and "--metrics-port=45680" in command


def test_an_unreachable_triton_is_answered_with_503_and_readiness_reads_not_ready() -> None:
    (closed_port,) = find_free_ports(1)
    opened = _door(f"127.0.0.1:{closed_port}")
    opened.start()
    try:
        status, _, answer = _request(opened, "GET", "/v2/health/ready")
        assert status == 503 and "not reachable right now" in json.loads(answer)["error"]
    finally:
        opened.stop()


def test_a_taken_http_port_is_refused_naming_it_and_the_grpc_side_is_closed_again(upstream: tuple[str, Seen]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        (grpc_port,) = find_free_ports(1)
        # The gRPC side points nowhere (its channel connects lazily): it only has to bind and let go.
        blocked = FrontDoor(
            FrontDoorConfig(host="127.0.0.1", port=grpc_port, upstream="127.0.0.1:9", max_request_bytes=BOUND),
            HttpDoorConfig(host="127.0.0.1", port=taken, upstream=upstream[0], max_request_bytes=BOUND))
        with pytest.raises(PortInUseError, match=str(taken)):
            blocked.start()
    assert not blocked.running
    with socket.socket() as probe:  # the gRPC side let go of its port
        probe.bind(("127.0.0.1", grpc_port))


def test_behind_the_door_tritons_http_listens_on_loopback_and_a_public_http_host_opens_the_door(
    tmp_path: Path
) -> None:
    config = ServerConfig(repository=tmp_path, host="0.0.0.0", grpc_port=9001, http_port=9000, metrics_port=9002)
    command = build_command(config, binary=Path("t"), backend_directory=Path("b"), launcher_key="k" * 20,
                            upstream_grpc_port=45678, upstream_http_port=45679)
    assert "--http-address=127.0.0.1" in command and "--http-port=45679" in command
    assert "--http-port=9000" not in command
    no_http = ServerConfig(repository=tmp_path, host="0.0.0.0", http=False)
    assert "--allow-http=false" in build_command(no_http, binary=Path("t"), backend_directory=Path("b"),
                                                 launcher_key="k" * 20, upstream_grpc_port=45678)
    assert ServerConfig(repository=tmp_path, http_host="0.0.0.0").uses_front_door
    assert not ServerConfig(repository=tmp_path, http_host="0.0.0.0", front_door=False).uses_front_door
