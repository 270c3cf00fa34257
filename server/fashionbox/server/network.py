"""Where a server is reached (``Endpoints``) and which ports are free."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from fashionbox.contract import DEFAULT_HOST
from fashionbox.server.config import ServerConfig
from fashionbox.server.errors import ConfigError

__all__ = ["Endpoints", "connect_host", "find_free_port", "find_free_ports", "port_is_free"]


@dataclass(frozen=True)
class Endpoints:
    """Where clients reach a server. ``grpc`` is ``host:port``, the form ``tritonclient.grpc`` takes."""

    grpc: str
    http: str  # base URL, e.g. http://127.0.0.1:8000 (where it would be, when HTTP is off)
    metrics: str  # Prometheus scrape URL

    @classmethod
    def for_config(cls, config: ServerConfig) -> Endpoints:
        host = connect_host(config.host)
        return cls(
            grpc=f"{host}:{config.grpc_port}",
            http=f"http://{connect_host(config.http_host)}:{config.http_port}",
            metrics=f"http://{host}:{config.metrics_port}/metrics",
        )


def connect_host(bind_host: str) -> str:
    """The address to connect to for a bind address: a wildcard bind is reached over loopback."""
    if bind_host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind_host == "::":
        return "[::1]"
    return f"[{bind_host}]" if ":" in bind_host else bind_host


def port_is_free(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` can be bound now, as Triton binds it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # SO_REUSEADDR as Triton uses it: a port left in TIME_WAIT by a server that just stopped is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


def find_free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """``count`` distinct ports that were free a moment ago (another process may still take one)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            # Keep every probe bound until all are chosen, so the kernel cannot hand one out twice.
            probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind((host, 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def find_free_port(host: str = DEFAULT_HOST) -> int:
    """A port that was free a moment ago; for tests."""
    return find_free_ports(1, host)[0]
