"""The ``tritonserver`` command line for a ``ServerConfig``: pure, so tests check it without a server."""

from __future__ import annotations

from pathlib import Path

from fashionbox.server.config import ServerConfig
from fashionbox.server.errors import ConfigError
from fashionbox.server.security import security_arguments

__all__ = ["build_command", "locks_repository"]


def locks_repository(config: ServerConfig) -> bool:
    """Whether the server runs Triton's explicit mode only to drain (see ``ServerConfig.drain_on_stop``);
    the drain goes over HTTP, so not without it."""
    return config.model_control_mode == "none" and config.drain_on_stop and config.http


def build_command(
    config: ServerConfig, *, binary: Path, backend_directory: Path, launcher_key: str | None = None
) -> list[str]:
    """The tritonserver command line for ``config``.

    ``launcher_key`` (:func:`fashionbox.server.security.new_launcher_key`) closes the APIs no client
    needs (shared memory, trace, logging, the model repository) on a server without an admin key;
    such a server needs one.
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
        f"--grpc-address={config.host}",
        f"--grpc-port={config.grpc_port}",
        *((f"--http-address={config.http_host}", f"--http-port={config.http_port}") if config.http
          else ("--allow-http=false",)),
        "--allow-metrics=true",
        f"--metrics-address={config.host}",
        f"--metrics-port={config.metrics_port}",
    ]
    # Triton 2.51 has no flag lowering its gRPC (2 GiB) or HTTP message ceilings, and the python
    # backend no option capping its shared memory: what bounds an oversized request, and what not,
    # is in docs/RELIABILITY.md ("Oversized requests"). The backend commits each stub's default
    # region at start, so sizing it for a batch at the byte limit would cost that much per instance.
    if config.python_shm_default_bytes is not None:
        command.append(f"--backend-config=python,shm-default-byte-size={config.python_shm_default_bytes}")
    if config.python_shm_growth_bytes is not None:
        command.append(f"--backend-config=python,shm-growth-byte-size={config.python_shm_growth_bytes}")
    command.extend(
        security_arguments(
            config.tls,
            config.admin_key,
            launcher_key=launcher_key,
            repository_open=config.model_control_mode == "explicit",
            secure=config.secure,
        )
    )
    command.extend(config.extra_args)
    return command
