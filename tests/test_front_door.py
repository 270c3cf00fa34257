"""The gRPC front door (``fashionbox.server.front_door``): what it forwards and what it refuses.

Against a small recording gRPC server standing in for Triton (every call's bytes, metadata and
deadline are kept), so each property of the hop is checked alone: bytes, metadata (the admin key
header), transport headers dropped, deadlines, cancellation, status codes, details and trailers,
the bidirectional stream, the message bound and a taken port. The same door in front of a real
Triton (``fashionbox serve``, oversized soak, streaming, the secure profile) is held by
tests/test_oversized.py, tests/test_security_integration.py and tests/test_client_tls_integration.py.
Also here: the bound derived from a repository, the command line behind the door, the config rules.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from fashionbox.contract import ADMIN_GRPC_HEADER
from fashionbox.server import ConfigError, PortInUseError, ServerConfig, ServerStartError, build_command
from fashionbox.server.front_door import HEADROOM_BYTES, FrontDoor, FrontDoorConfig, make_hop_tls, request_bound
from fashionbox.server.network import find_free_ports
from fashionbox.server.security import ServerTls

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
BOUND = 100_000


@dataclass
class Upstream:
    """What the stand-in for Triton saw."""

    address: str = ""
    calls: list[tuple[str, bytes, dict[str, str], float | None]] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)


class _Recording(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpcio ships no types here
    def __init__(self, seen: Upstream) -> None:
        self.seen = seen

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = str(details.method)
        if method == STREAM:
            return grpc.stream_stream_rpc_method_handler(self._stream)

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = {key: str(value) for key, value in context.invocation_metadata()}
            self.seen.calls.append((method, request, metadata, context.time_remaining()))
            context.set_trailing_metadata((("x-upstream", "answered"),))
            if request == b"refuse":
                context.abort(grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope' is not found")
            return b"echo:" + request

        return grpc.unary_unary_rpc_method_handler(unary)

    def _stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            if request == b"hold":  # wait for the caller to go away
                while context.is_active():
                    time.sleep(0.01)
                self.seen.cancelled.set()
                return
            yield b"streamed:" + request


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    seen = Upstream()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", -1)])
    server.add_generic_rpc_handlers([_Recording(seen)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    seen.address = f"127.0.0.1:{port}"
    yield seen
    server.stop(0)


@pytest.fixture(scope="module")
def door(upstream: Upstream) -> Iterator[FrontDoor]:
    (port,) = find_free_ports(1)
    opened = FrontDoor(FrontDoorConfig(host="127.0.0.1", port=port, upstream=upstream.address,
                                       max_request_bytes=BOUND))
    opened.start()
    yield opened
    opened.stop()


@pytest.fixture(scope="module")
def channel(door: FrontDoor) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{door.config.port}",
                               options=[("grpc.max_send_message_length", -1)]) as opened:
        yield opened


def test_bytes_metadata_and_the_admin_key_reach_triton_unchanged(upstream: Upstream, channel: grpc.Channel) -> None:
    payload = bytes(range(256)) * 300
    answer = channel.unary_unary(INFER)(payload, metadata=((ADMIN_GRPC_HEADER, "the-admin-key-0123"),
                                                           ("x-request-tag", "a1")), timeout=10)

    assert answer == b"echo:" + payload
    method, received, metadata, _ = upstream.calls[-1]
    assert (method, received) == (INFER, payload)
    assert metadata[ADMIN_GRPC_HEADER] == "the-admin-key-0123" and metadata["x-request-tag"] == "a1"
    # The hop sets its own user agent; the caller's does not travel twice.
    assert sum(key == "user-agent" for key in metadata) == 1


def test_the_deadline_goes_on_to_triton(upstream: Upstream, channel: grpc.Channel) -> None:
    channel.unary_unary(INFER)(b"timed", timeout=7)
    _, _, _, remaining = upstream.calls[-1]
    assert remaining is not None and 5 < remaining < 7.5  # gRPC rounds a deadline up on the wire

    channel.unary_unary(INFER)(b"untimed")
    _, _, _, remaining = upstream.calls[-1]
    assert remaining is None or remaining > 1e6, "no deadline became one"


def test_a_refusal_keeps_its_status_details_and_trailers(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(INFER)(b"refuse", timeout=10)

    error: Any = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Request for unknown model: 'nope' is not found"
    assert ("x-upstream", "answered") in tuple(error.trailing_metadata())


def test_an_answer_keeps_its_trailers(channel: grpc.Channel) -> None:
    _, call = channel.unary_unary(INFER).with_call(b"ok", timeout=10)
    assert ("x-upstream", "answered") in tuple(call.trailing_metadata())


def test_a_message_over_the_bound_is_refused_before_triton_sees_it(
    upstream: Upstream, channel: grpc.Channel
) -> None:
    calls = len(upstream.calls)
    at_bound = b"a" * BOUND
    assert channel.unary_unary(INFER)(at_bound, timeout=10) == b"echo:" + at_bound

    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(INFER)(at_bound + b"a", timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"({BOUND + 1} vs. {BOUND})" in error.details()
    assert len(upstream.calls) == calls + 1  # only the one at the bound got through
    assert channel.unary_unary(INFER)(b"after", timeout=10) == b"echo:after"  # others go on


def test_the_stream_is_forwarded_both_ways(channel: grpc.Channel) -> None:
    answers = list(channel.stream_stream(STREAM)(iter([b"one", b"two", b"three"]), timeout=10))
    assert answers == [b"streamed:one", b"streamed:two", b"streamed:three"]


def test_a_cancelled_stream_is_cancelled_at_triton_too(upstream: Upstream, channel: grpc.Channel) -> None:
    upstream.cancelled.clear()
    call: Any = channel.stream_stream(STREAM)(iter([b"hold"]))
    time.sleep(0.3)
    call.cancel()
    assert upstream.cancelled.wait(5), "Triton's side of the stream was not cancelled"


def test_a_taken_port_is_refused_naming_it(upstream: Upstream) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        door = FrontDoor(FrontDoorConfig(host="127.0.0.1", port=port, upstream=upstream.address,
                                         max_request_bytes=BOUND))
        with pytest.raises(PortInUseError, match=f"port {port} \\(grpc\\)"):
            door.start()
        assert not door.running


# -- the bound, the command line, the config ----------------------------------------------------------


def _model(repository: Path, name: str, text: str) -> None:
    (repository / name).mkdir(parents=True, exist_ok=True)
    (repository / name / "config.pbtxt").write_text(f'name: "{name}"\n{text}\n')


def _repository(tmp_path: Path) -> Path:
    repository = tmp_path / "repository"
    _model(repository, "preprocess", 'max_batch_size: 4\nparameters { key: "max_image_bytes" '
                                     'value { string_value: "1000000" } }')
    _model(repository, "fashion", 'platform: "ensemble"\nmax_batch_size: 8')
    return repository


def test_the_bound_is_the_image_limit_times_the_ensembles_batch_plus_headroom(tmp_path: Path) -> None:
    bound = request_bound(_repository(tmp_path), environ={})
    assert bound.max_request_bytes == 1_000_000 * 8 + HEADROOM_BYTES == 8_065_536
    assert (bound.max_image_bytes, bound.max_batch) == (1_000_000, 8)


def test_the_image_limit_of_the_environment_wins_as_in_preprocess(tmp_path: Path) -> None:
    bound = request_bound(_repository(tmp_path), environ={"FASHIONBOX_MAX_IMAGE_BYTES": "2_000_000"})
    assert bound.max_request_bytes == 16_000_000 + HEADROOM_BYTES
    with pytest.raises(ServerStartError, match="FASHIONBOX_MAX_IMAGE_BYTES must be a positive integer"):
        request_bound(_repository(tmp_path), environ={"FASHIONBOX_MAX_IMAGE_BYTES": "lots"})


def test_an_explicit_bound_wins_the_fused_layout_is_read_a_foreign_repository_gets_the_default(
    tmp_path: Path,
) -> None:
    assert request_bound(_repository(tmp_path), environ={}, override=123_456).max_request_bytes == 123_456
    fused = tmp_path / "fused"  # the fused CPU layout: the entry is `detector`, which decodes
    _model(fused, "detector", 'max_batch_size: 4\nparameters { key: "max_image_bytes" '
                              'value { string_value: "3000" } }')
    _model(fused, "fashion", 'platform: "ensemble"\nmax_batch_size: 4')
    assert request_bound(fused, environ={}).max_request_bytes == 12_000 + HEADROOM_BYTES
    foreign = tmp_path / "foreign"
    _model(foreign, "echo", "max_batch_size: 2")
    assert request_bound(foreign, environ={}).max_request_bytes == 2 * 32 * 2**20 + HEADROOM_BYTES


def _tls(folder: Path) -> ServerTls:
    for name in ("cert.pem", "key.pem"):
        (folder / name).write_text("-----BEGIN X-----\n")
    return ServerTls(folder / "cert.pem", folder / "key.pem")


def test_behind_the_door_triton_listens_on_loopback_in_plaintext(tmp_path: Path) -> None:
    config = ServerConfig(repository=tmp_path, host="0.0.0.0", grpc_port=9001, http_port=9000, metrics_port=9002,
                          tls=_tls(tmp_path))
    command = build_command(config, binary=Path("t"), backend_directory=Path("b"), launcher_key="k" * 20,
                            upstream_grpc_port=45678)

    assert "--grpc-address=127.0.0.1" in command and "--grpc-port=45678" in command
    assert not [word for word in command if word.startswith("--grpc-use-ssl")]  # TLS ends at the door
    assert "--metrics-address=0.0.0.0" in command


def test_the_door_opens_where_the_network_or_a_bound_asks_and_the_secure_profile_keeps_it(tmp_path: Path) -> None:
    assert not ServerConfig(repository=tmp_path).uses_front_door  # loopback: the hop's cost is the user's choice
    assert ServerConfig(repository=tmp_path, front_door=True).uses_front_door
    assert ServerConfig(repository=tmp_path, host="0.0.0.0").uses_front_door
    assert not ServerConfig(repository=tmp_path, host="0.0.0.0", front_door=False).uses_front_door
    assert ServerConfig(repository=tmp_path, max_request_bytes=5_000_000).uses_front_door
    secure = ServerConfig(repository=tmp_path, secure=True, tls=_tls(tmp_path), admin_key="admin-key-of-the-operator")
    assert secure.uses_front_door
    with pytest.raises(ConfigError, match="max_request_bytes is enforced by the front door"):
        ServerConfig(repository=tmp_path, front_door=False, max_request_bytes=1000)
    with pytest.raises(ConfigError, match="max_request_bytes must be > 0"):
        ServerConfig(repository=tmp_path, max_request_bytes=0)
    with pytest.raises(ConfigError, match="the secure profile needs the front door"):
        ServerConfig(repository=tmp_path, secure=True, tls=_tls(tmp_path), admin_key="admin-key-of-the-operator",
                     front_door=False)


def test_with_tls_at_the_door_the_hop_to_triton_gets_its_own_mutual_tls(tmp_path: Path) -> None:
    hop_folder, operator = tmp_path / "hop", tmp_path / "operator"
    hop_folder.mkdir()
    operator.mkdir()
    hop = make_hop_tls(hop_folder)
    config = ServerConfig(repository=tmp_path, host="0.0.0.0", tls=_tls(operator))
    command = build_command(config, binary=Path("t"), backend_directory=Path("b"), launcher_key="k" * 20,
                            upstream_grpc_port=45678, upstream_tls=hop.server)

    assert "--grpc-use-ssl-mutual=true" in command
    assert f"--grpc-root-cert={hop.server.client_ca}" in command and f"--grpc-server-cert={hop.server.cert}" in command
    assert config.tls is not None and f"--grpc-server-cert={config.tls.cert}" not in command
    assert sorted(path.name for path in hop_folder.iterdir()) == [
        "ca.pem", "door.key", "door.pem", "triton.key", "triton.pem"]
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in hop_folder.iterdir())


@pytest.mark.integration
def test_a_server_restarted_on_its_ports_answers_again_through_the_door(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    # What the supervisor does after a stub died: stop, start on the same ports; the door goes and
    # comes back with Triton (on a new private port), and a client's channel finds it again.
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    from client_images import dark_jpeg
    from client_servers import restart, standin_repository

    from fashionbox.client import ClientConfig, FashionClient, RetryPolicy
    from fashionbox.server import start_on_free_ports

    server = start_on_free_ports(standin_repository(tmp_path_factory), tmp_path, exit_timeout_s=5, front_door=True)
    try:
        assert server.request_bound is not None and server.upstream_grpc != server.endpoints.grpc
        image = dark_jpeg(3)
        # Retries for the moment the new Triton takes to accept the door's connection on a busy machine.
        retry = RetryPolicy(max_attempts=10, max_backoff_s=1.0)
        with FashionClient(config=ClientConfig(url=server.endpoints.grpc, retry=retry)) as client:
            before = client.detect(image)
            restart(server)
            started = time.monotonic()
            assert client.detect(image) == before
            assert time.monotonic() - started < 10
    finally:
        server.stop()
