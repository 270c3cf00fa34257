"""The ``tritonserver`` command line for a ``ServerConfig``: pure, so tests check it without a server."""

from __future__ import annotations

from pathlib import Path

from fashionbox.server.config import ServerConfig
from fashionbox.server.errors import ConfigError
from fashionbox.server.security import ServerTls, security_arguments

__all__ = ["LOOPBACK", "build_command", "locks_repository"]

LOOPBACK = "127.0.0.1"
"""Where Triton's gRPC listens behind the front door."""


def locks_repository(config: ServerConfig) -> bool:
    """Whether the server runs Triton's explicit mode only to drain (see ``ServerConfig.drain_on_stop``;
    the drain goes over HTTP, or gRPC where HTTP is off)."""
    return config.model_control_mode == "none" and config.drain_on_stop


def build_command(
    config: ServerConfig,
    *,
    binary: Path,
    backend_directory: Path,
    launcher_key: str | None = None,
    upstream_grpc_port: int | None = None,
    upstream_tls: ServerTls | None = None,
    upstream_http_port: int | None = None,
    upstream_metrics_port: int | None = None,
    door_key: str | None = None,
) -> list[str]:
    """The tritonserver command line for ``config``.

    ``launcher_key`` (:func:`fashionbox.server.security.new_launcher_key`) closes the APIs no client
    needs (shared memory, trace, logging, the model repository) on a server without an admin key;
    such a server needs one. ``upstream_grpc_port``: Triton's gRPC sits behind the front door
    (:mod:`fashionbox.server.front_door`) on that loopback port, with ``upstream_tls`` (the hop's own
    mutual TLS) or plaintext; the front door holds the operator's TLS settings and listens on
    ``config.host``/``config.grpc_port``. ``upstream_http_port``: Triton's HTTP sits behind the door's
    HTTP side (:mod:`fashionbox.server.http_door`) on that loopback port, answering only requests that
    carry ``door_key``, which the door adds (:func:`fashionbox.server.security.security_arguments`);
    ``upstream_metrics_port``: its metrics endpoint behind another such side.
    """
    locked = locks_repository(config)
    if config.admin_key is None and launcher_key is None:
        raise ConfigError(
            "a server without an admin key needs a launcher key: it closes the shared-memory, trace, logging "
            "and model-repository APIs"
        )
    command = [
        str(binary),
        f"--model-repository={config.repository.resolve()}",
        f"--backend-directory={backend_directory}",
        f"--model-control-mode={'explicit' if locked else config.model_control_mode}",
        *(f"--load-model={name}" for name in (("*",) if locked else config.load_models)),
        f"--strict-readiness={str(config.strict_readiness).lower()}",
        f"--exit-timeout-secs={config.exit_timeout_s}",
        f"--log-verbose={config.log_verbose}",
        # Explicit addresses: without them Triton listens on every interface.
        f"--grpc-address={LOOPBACK if upstream_grpc_port is not None else config.host}",
        f"--grpc-port={upstream_grpc_port if upstream_grpc_port is not None else config.grpc_port}",
        *(("--allow-http=false",) if not config.http
          else (f"--http-address={LOOPBACK}", f"--http-port={upstream_http_port}") if upstream_http_port is not None
          else (f"--http-address={config.http_host}", f"--http-port={config.http_port}")),
        "--allow-metrics=true",
        f"--metrics-address={LOOPBACK if upstream_metrics_port is not None else config.host}",
        f"--metrics-port={upstream_metrics_port if upstream_metrics_port is not None else config.metrics_port}",
    ]
    # Triton 2.51 has no flag lowering its gRPC (2 GiB) or HTTP message ceilings, and the python
    # backend no option capping its shared memory: the front door bounds gRPC messages, and with them
    # what a stub's region can grow to (docs/RELIABILITY.md, "Oversized requests"). The backend's 1 MiB
    # defaults stay: it grows a region by what an allocation needs rounded up to whole steps, and
    # commits each stub's default region at start, so sizing it for a batch at the byte limit would
    # cost that much per instance whether used or not.
    if config.python_shm_default_bytes is not None:
        command.append(f"--backend-config=python,shm-default-byte-size={config.python_shm_default_bytes}")
    if config.python_shm_growth_bytes is not None:
        command.append(f"--backend-config=python,shm-growth-byte-size={config.python_shm_growth_bytes}")
    command.extend(
        security_arguments(
            config.tls if upstream_grpc_port is None else upstream_tls,
            config.admin_key,
            launcher_key=launcher_key,
            repository_open=config.model_control_mode == "explicit",
            secure=config.secure,
            door_key=door_key if upstream_http_port is not None and config.http else None,
        )
    )
    command.extend(config.extra_args)
    return command
