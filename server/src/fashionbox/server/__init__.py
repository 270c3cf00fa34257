"""The embedded Triton server: the ``tritonserver`` binary of the nvidia-pytriton wheel as a child process.

With ``$FASHIONBOX_TRITON_HOME`` set (the production image sets ``/opt/tritonserver``), the Triton
installed there is run instead, with its own backends: the same wrapper (draining on SIGTERM,
loopback by default, TLS and admin-key flags) in a container as on a laptop.

``fashionbox serve`` runs it on a model repository; tests start it through the fixtures in
``tests/conftest.py``. In code::

    config = ServerConfig(repository=Path("build/model_repository"))
    with TritonServer(config) as server:          # start() + wait_until_ready()
        client = tritonclient.grpc.InferenceServerClient(server.endpoints.grpc)
        ...
    # leaving the block stops the server (SIGTERM, then SIGKILL after the timeout)

How the child is wrapped, and why:

- it binds ``127.0.0.1`` unless another host is asked for: Triton itself binds every interface;
- its stdout and stderr go to a log file that outlives it, so a failed start can show the log tail;
- it runs in its own process group, so Ctrl-C in a terminal reaches only us and we stop it in order,
  and so stopping can also kill the python-backend stubs it forked;
- it gets ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``), so a crashed or killed parent
  never leaves a server holding the ports. The stubs notice their parent is gone and exit on their own
  a few seconds later.

The python-backend stub runs in isolated mode on the system's libpython, ignoring ``PYTHONPATH``.
The server therefore sets ``FASHIONBOX_SITE_PACKAGES`` for the child to where this interpreter
imports from (its ``PYTHONPATH`` entries, then its site-packages; ``os.pathsep``-separated), and
every ``model.py`` starts by adding those folders to the front of ``sys.path``. The folder holding
this interpreter's libpython joins ``LD_LIBRARY_PATH``, for a Python outside the system's library
path (a stub links ``libpython3.X.so.1.0``).

Exceptions::

    ServerError
     ├── ConfigError (also a ValueError)   invalid ServerConfig, flag or FASHIONBOX_* variable
     └── ServerStartError                  the server did not come up; ``log_tail`` holds its last lines
          ├── RepositoryError              missing repository, or one without models
          └── PortInUseError               ``port`` is taken; the message says how to pick another
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import importlib.metadata
import importlib.util
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar, cast

from fashionbox.contract import (
    ADMIN_KEY_NAME,
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    ENV_PREFIX,
    MANIFEST_FILE,
)
from fashionbox.core.admission import slots_path
from fashionbox.server.security import (
    SECURITY_FLAGS,
    SecurityError,
    ServerTls,
    new_repository_key,
    read_admin_key,
    redact,
    security_arguments,
)

__all__ = [
    "TRITON_HOME_ENV",
    "ConfigError",
    "Endpoints",
    "PortInUseError",
    "RepositoryError",
    "ServerConfig",
    "ServerError",
    "ServerStartError",
    "TritonServer",
    "add_serve_arguments",
    "build_command",
    "config_from_arguments",
    "find_free_port",
    "find_free_ports",
    "parse_bool",
    "prepare_backend_directory",
    "run_server_cli",
    "serve_main",
    "start_on_free_ports",
    "stub_import_paths",
]

logger = logging.getLogger(__name__)

ModelControlMode = Literal["none", "explicit"]
MODEL_CONTROL_MODES: tuple[ModelControlMode, ...] = ("none", "explicit")

# Read by every model.py (see the module docstring); set for the child, never read from our own env.
SITE_PACKAGES_ENV = "FASHIONBOX_SITE_PACKAGES"
# Where an installed Triton lives (NGC image: /opt/tritonserver); unset, the nvidia-pytriton wheel's is run.
TRITON_HOME_ENV = "FASHIONBOX_TRITON_HOME"

_STUB_NAME = "triton_python_backend_stub"
_LOG_NAME = "tritonserver.log"
# Triton waits up to --exit-timeout-secs for in-flight requests, then unloads the models; this is
# the extra time stop() allows for the unloading before it kills.
_STOP_GRACE_S = 5.0
_POLL_INTERVAL_S = 0.1
_LOG_TAIL_LINES = 40

# Flags that ServerConfig sets itself; passing them in extra_args as well would make the
# effective value depend on Triton's last-one-wins parsing, so that is refused.
_MANAGED_FLAGS = frozenset(
    {
        "--model-repository",
        "--model-store",
        "--backend-directory",
        "--model-control-mode",
        "--load-model",
        "--strict-readiness",
        "--exit-timeout-secs",
        "--log-verbose",
        "--log-file",
        "--allow-grpc",
        "--grpc-address",
        "--grpc-port",
        "--allow-http",
        "--http-address",
        "--http-port",
        "--allow-metrics",
        "--metrics-address",
        "--metrics-port",
    }
)


# -- exceptions ------------------------------------------------------------------------------------


class ServerError(Exception):
    """Root of every error raised by this module."""


class ConfigError(ServerError, ValueError):
    """An invalid server setting, whether from code, a command-line flag or a FASHIONBOX_* variable."""


class ServerStartError(ServerError):
    """The server did not start or did not become ready. ``log_tail`` holds the last lines of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        full = f"{message}\n--- last lines of the server log ---\n{log_tail}" if log_tail else message
        super().__init__(full)
        self.log_tail = log_tail


class RepositoryError(ServerStartError):
    """The model repository is missing or holds no model."""


class PortInUseError(ServerStartError):
    """A port the server needs is taken by another process."""

    def __init__(self, port: int, protocol: str, host: str, log_tail: str = "") -> None:
        message = (
            f"port {port} ({protocol}) on {host} is already in use; choose another with "
            f"--{protocol}-port or {ENV_PREFIX}{protocol.upper()}_PORT"
        )
        super().__init__(message, log_tail)
        self.port = port
        self.protocol = protocol
        self.host = host


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """Everything needed to run the embedded server; validates itself on construction."""

    repository: Path
    host: str = DEFAULT_HOST
    grpc_port: int = DEFAULT_GRPC_PORT
    http_port: int = DEFAULT_HTTP_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    model_control_mode: ModelControlMode = "none"
    # Models to load at start in "explicit" mode ("*" loads all); "none" mode always loads all.
    load_models: tuple[str, ...] = ()
    # Ready only once every loaded model is ready, so a readiness probe never admits traffic early.
    strict_readiness: bool = True
    exit_timeout_s: int = 30  # Triton takes whole seconds
    startup_timeout_s: float = 120.0
    log_path: Path | None = None  # None: a file in a fresh temporary folder
    log_verbose: int = 0
    python_shm_default_bytes: int | None = None  # None: the python backend's own default (1 MiB)
    python_shm_growth_bytes: int | None = None
    extra_args: tuple[str, ...] = ()
    cache_dir: Path | None = None  # where the prepared backends folder is kept; None: the user cache
    tls: ServerTls | None = None  # gRPC TLS; mutual when it names a client CA
    # Restricts the admin APIs (fashionbox.server.security.ADMIN_APIS) to callers sending this key.
    admin_key: str | None = dataclasses.field(default=None, repr=False)
    secure: bool = False  # the secure profile: refuse to start without TLS and an admin key
    # Let stop() drain in-flight requests (fashionbox.server.drain). In mode "none" Triton then runs in explicit
    # mode with every model loaded and its repository API locked behind a key only this process knows
    # (the admin key, when set): from outside it is mode "none", nothing can be loaded or unloaded.
    drain_on_stop: bool = True

    def __post_init__(self) -> None:
        # Accept str paths from callers but store Paths, so equality and hashing are predictable.
        object.__setattr__(self, "repository", Path(self.repository))
        if self.log_path is not None:
            object.__setattr__(self, "log_path", Path(self.log_path))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        object.__setattr__(self, "load_models", tuple(self.load_models))
        object.__setattr__(self, "extra_args", tuple(self.extra_args))

        if not self.host:
            raise ConfigError("host must not be empty")
        ports = {"grpc_port": self.grpc_port, "http_port": self.http_port, "metrics_port": self.metrics_port}
        for name, port in ports.items():
            # Port 0 would let Triton pick, but then nobody could tell the clients where it is.
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ConfigError(f"{name} must be an integer in 1..65535, got {port!r}")
        if len(set(ports.values())) != len(ports):
            raise ConfigError(f"grpc_port, http_port and metrics_port must differ, got {ports}")
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise ConfigError(
                f"model_control_mode must be one of {MODEL_CONTROL_MODES}, got {self.model_control_mode!r}"
            )
        if self.load_models and self.model_control_mode != "explicit":
            raise ConfigError("load_models needs model_control_mode='explicit' ('none' loads every model)")
        if not isinstance(self.exit_timeout_s, int) or self.exit_timeout_s < 0:
            raise ConfigError(f"exit_timeout_s must be a whole number of seconds >= 0, got {self.exit_timeout_s!r}")
        if not self.startup_timeout_s > 0:
            raise ConfigError(f"startup_timeout_s must be > 0, got {self.startup_timeout_s!r}")
        if self.log_verbose < 0:
            raise ConfigError(f"log_verbose must be >= 0, got {self.log_verbose!r}")
        for name in ("python_shm_default_bytes", "python_shm_growth_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        for arg in self.extra_args:
            flag = arg.split("=", 1)[0]
            if flag in _MANAGED_FLAGS:
                raise ConfigError(f"extra argument {arg!r} sets {flag}, which ServerConfig manages; use its field")
            if flag in SECURITY_FLAGS and (self.tls is not None or self.admin_key is not None):
                raise ConfigError(f"extra argument {flag} conflicts with the tls/admin_key settings; use those only")
        self._check_security()

    def _check_security(self) -> None:
        try:
            security_arguments(self.tls, self.admin_key)  # validates the key
        except SecurityError as exc:
            raise ConfigError(str(exc)) from exc
        if self.secure and (self.tls is None or self.admin_key is None):
            missing = [name for name, value in (("TLS (--tls-cert/--tls-key)", self.tls),
                                                ("an admin key (--admin-key-file)", self.admin_key)) if value is None]
            raise ConfigError(f"the secure profile needs {' and '.join(missing)}")
        # Explicit mode lets a caller load and unload models at run time: never open to the network.
        if self.model_control_mode == "explicit" and self.admin_key is None and not _is_loopback(self.host):
            raise ConfigError(
                f"model_control_mode='explicit' on {self.host} would let anyone on the network load and unload "
                "models: bind loopback, or set an admin key to restrict the model-repository API"
            )

    @classmethod
    def from_env(cls, repository: str | Path | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Build a config from ``FASHIONBOX_*`` variables; unset ones keep the defaults.

        ``repository`` wins over ``FASHIONBOX_REPOSITORY``; one of them is required.

        Variables: REPOSITORY, HOST, GRPC_PORT, HTTP_PORT, METRICS_PORT, MODEL_CONTROL_MODE,
        LOAD_MODELS (comma-separated), STRICT_READINESS (true/false), EXIT_TIMEOUT_S, STARTUP_TIMEOUT_S,
        LOG_FILE, LOG_VERBOSE, PYTHON_SHM_DEFAULT_BYTES, PYTHON_SHM_GROWTH_BYTES, TRITON_ARGS (shell
        words), CACHE_DIR, TLS_CERT, TLS_KEY, TLS_CLIENT_CA, SECURE, ADMIN_KEY_FILE, ADMIN_KEY; each with
        the ``FASHIONBOX_`` prefix.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value.strip() if value is not None and value.strip() else None

        repo = repository if repository is not None else get("REPOSITORY")
        if repo is None:
            raise ConfigError(f"no model repository: pass one or set {ENV_PREFIX}REPOSITORY")
        changes: dict[str, Any] = {}  # each value is checked by __post_init__ via replace()
        if (value := get("HOST")) is not None:
            changes["host"] = value
        for field in ("grpc_port", "http_port", "metrics_port", "exit_timeout_s", "log_verbose"):
            if (value := get(field.upper())) is not None:
                changes[field] = _parse_int(ENV_PREFIX + field.upper(), value)
        for field in ("python_shm_default_bytes", "python_shm_growth_bytes"):
            if (value := get(field.upper())) is not None:
                changes[field] = _parse_int(ENV_PREFIX + field.upper(), value)
        if (value := get("STARTUP_TIMEOUT_S")) is not None:
            changes["startup_timeout_s"] = _parse_float(ENV_PREFIX + "STARTUP_TIMEOUT_S", value)
        if (value := get("MODEL_CONTROL_MODE")) is not None:
            changes["model_control_mode"] = value
        if (value := get("LOAD_MODELS")) is not None:
            changes["load_models"] = tuple(name.strip() for name in value.split(",") if name.strip())
        if (value := get("STRICT_READINESS")) is not None:
            changes["strict_readiness"] = parse_bool(ENV_PREFIX + "STRICT_READINESS", value)
        if (value := get("LOG_FILE")) is not None:
            changes["log_path"] = Path(value)
        if (value := get("TRITON_ARGS")) is not None:
            changes["extra_args"] = tuple(shlex.split(value))
        if (value := get("CACHE_DIR")) is not None:
            changes["cache_dir"] = Path(value)
        if (value := get("TLS_CERT")) is not None or get("TLS_KEY") is not None:
            ca = get("TLS_CLIENT_CA")
            changes["tls"] = _server_tls(value, get("TLS_KEY"), ca)
        if (value := get("SECURE")) is not None:
            changes["secure"] = parse_bool(ENV_PREFIX + "SECURE", value)
        try:
            changes["admin_key"] = read_admin_key(environ=env)
        except SecurityError as exc:
            raise ConfigError(str(exc)) from exc
        # replace() runs __post_init__ again, which checks the types and values read above.
        return dataclasses.replace(cls(repository=Path(repo)), **changes)


def _server_tls(cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None) -> ServerTls:
    if cert is None or key is None:
        raise ConfigError("TLS needs both a certificate and a private key")
    try:
        return ServerTls(Path(cert), Path(key), Path(client_ca) if client_ca is not None else None)
    except SecurityError as exc:
        raise ConfigError(str(exc)) from exc


def parse_bool(name: str, value: str) -> bool:
    """Parse a boolean setting explicitly: ``bool("false")`` is True, which is never what anyone meant."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be one of true/false/1/0/yes/no/on/off, got {value!r}")


def _parse_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _parse_float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class Endpoints:
    """Where clients reach a server. ``grpc`` is ``host:port``, the form ``tritonclient.grpc`` takes."""

    grpc: str
    http: str  # base URL, e.g. http://127.0.0.1:8000
    metrics: str  # Prometheus scrape URL

    @classmethod
    def for_config(cls, config: ServerConfig) -> Endpoints:
        host = _connect_host(config.host)
        return cls(
            grpc=f"{host}:{config.grpc_port}",
            http=f"http://{host}:{config.http_port}",
            metrics=f"http://{host}:{config.metrics_port}/metrics",
        )


def _connect_host(bind_host: str) -> str:
    """The address to connect to for a bind address: a wildcard bind is reached over loopback."""
    if bind_host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind_host == "::":
        return "[::1]"
    return f"[{bind_host}]" if ":" in bind_host else bind_host


# -- the pytriton wheel ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _TritonDistribution:
    root: Path  # <site-packages>/pytriton/tritonserver, or an installed Triton's home (/opt/tritonserver)
    libs: Path  # <site-packages>/nvidia_pytriton.libs, or <home>/lib
    version: str
    installed: bool = False  # a Triton installation: its backends folder is used as it is

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"


def _find_triton_distribution() -> _TritonDistribution:
    home = os.environ.get(TRITON_HOME_ENV)
    if home:
        # An installed Triton, as in NGC's tritonserver image: its own binary, libraries and
        # backends (the python backend with the stub built for that image's Python).
        root = Path(home)
        version_file = root / "TRITON_VERSION"
        dist = _TritonDistribution(root=root, libs=root / "lib", installed=True,
                                   version=version_file.read_text().strip() if version_file.is_file() else "unknown")
        if not dist.binary.is_file():
            raise ServerStartError(f"${TRITON_HOME_ENV} is {home}, which has no bin/tritonserver")
        return dist
    # find_spec on a top-level name locates the package without importing it (pytriton's own
    # import pulls in much more than we need).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("the embedded server needs nvidia-pytriton: pip install 'fashionbox[server]'")
    package = Path(next(iter(spec.submodule_search_locations)))
    dist = _TritonDistribution(
        root=package / "tritonserver",
        libs=package.parent / "nvidia_pytriton.libs",
        version=importlib.metadata.version("nvidia-pytriton"),
    )
    if not dist.binary.is_file():
        raise ServerStartError(f"nvidia-pytriton {dist.version} has no tritonserver binary at {dist.binary}")
    return dist


def stub_import_paths() -> list[str]:
    """Folders the python-backend stubs import from: this interpreter's ``PYTHONPATH``, then its site-packages.

    The stub ignores ``PYTHONPATH`` (module docstring), so a package installed beside the
    interpreter (``pip install --target DIR`` with ``PYTHONPATH=DIR``: numpy 1.x over an image's
    numpy 2, say) would reach this process but not the models without this.
    """
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    installed = sysconfig.get_paths()
    paths += [installed["purelib"], installed["platlib"]]
    return list(dict.fromkeys(os.path.abspath(p) for p in paths))


def _libpython_dir() -> str | None:
    """The folder holding this interpreter's shared libpython, where the system's loader cannot find one."""
    import ctypes.util

    if ctypes.util.find_library(f"python{sys.version_info.major}.{sys.version_info.minor}"):
        return None  # the system's own libpython: the stub finds it as it always has
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return str(libdir)
    return None


def _default_cache_dir() -> Path:
    # XDG_CACHE_HOME is the platform's convention rather than one of our settings, hence read here.
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fashionbox"


def prepare_backend_directory(cache_dir: Path | None = None) -> Path:
    """Return a Triton backends folder whose python backend has the stub for this Python version.

    An installed Triton (``$FASHIONBOX_TRITON_HOME``) has one: its own ``backends``. The wheel
    ships the backend and one stub per Python version in separate folders; Triton wants the stub
    next to the backend. The folder is made once per wheel version and Python version, atomically,
    so servers started in parallel never see a half-copied backend.
    """
    dist = _find_triton_distribution()
    if dist.installed:
        backends = dist.root / "backends"
        if not (backends / "python" / _STUB_NAME).is_file():
            raise ServerStartError(f"the Triton installed at {dist.root} has no python backend in {backends}")
        return backends
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist.root / "python_backend_stubs" / python_version / _STUB_NAME
    if not stub.is_file():
        available = sorted(p.name for p in (dist.root / "python_backend_stubs").iterdir())
        raise ServerStartError(
            f"nvidia-pytriton {dist.version} has no python backend stub for Python {python_version} "
            f"(it has {', '.join(available)})"
        )
    root = (cache_dir or _default_cache_dir()) / "triton-backends"
    target = root / f"pytriton-{dist.version}-py{python_version}"
    if (target / "python" / _STUB_NAME).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        shutil.copytree(
            dist.root / "backends", staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy2(stub, staging / "python" / _STUB_NAME)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process renamed its copy first; theirs is as good as ours.
            if not (target / "python" / _STUB_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.debug("prepared Triton backends in %s", target)
    return target


def _locks_repository(config: ServerConfig) -> bool:
    """Whether the server runs Triton's explicit mode only to drain (see ``ServerConfig.drain_on_stop``)."""
    return config.model_control_mode == "none" and config.drain_on_stop


def build_command(
    config: ServerConfig, *, binary: Path, backend_directory: Path, repository_key: str | None = None
) -> list[str]:
    """The tritonserver command line for ``config``. Pure, so tests can check it without a server.

    ``repository_key`` locks the model-repository API of a draining server in mode "none" that has
    no admin key; such a server needs one.
    """
    locked = _locks_repository(config)
    if locked and config.admin_key is None and repository_key is None:
        raise ConfigError("a draining server in model control mode 'none' needs a repository key or an admin key")
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
        f"--http-address={config.host}",
        f"--http-port={config.http_port}",
        "--allow-metrics=true",
        f"--metrics-address={config.host}",
        f"--metrics-port={config.metrics_port}",
    ]
    if config.python_shm_default_bytes is not None:
        command.append(f"--backend-config=python,shm-default-byte-size={config.python_shm_default_bytes}")
    if config.python_shm_growth_bytes is not None:
        command.append(f"--backend-config=python,shm-growth-byte-size={config.python_shm_growth_bytes}")
    command.extend(security_arguments(config.tls, config.admin_key, repository_key=repository_key if locked else None))
    command.extend(config.extra_args)
    return command


# -- ports -----------------------------------------------------------------------------------------


def _port_is_free(host: str, port: int) -> bool:
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


# -- the process -----------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_T = TypeVar("_T", bound="TritonServer")


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGKILL when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    # Load libc here, before the fork: dlopen in the forked child is not async-signal-safe. The hook
    # itself only makes three system calls, which keeps preexec_fn's deadlock risk with threads small.
    libc = ctypes.CDLL(None, use_errno=True)
    parent_pid = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then no signal would ever come.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _exit_status(process: subprocess.Popen[bytes]) -> int | None:
    """Exit code (negative signal number if killed) of an exited child, without reaping it.

    Leaving the child a zombie keeps its pid, and so its process-group id, from being reused
    until we have killed the rest of its group.
    """
    if process.returncode is not None:
        return process.returncode
    try:
        result = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        # Reaped behind our back (a SIGCHLD handler, say): let Popen record what it can.
        return process.poll()
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return -result.si_status


class TritonServer:
    """One tritonserver child process on one model repository.

    ``start()`` must run on a thread that lives as long as the server: Linux delivers the
    parent-death signal when the *thread* that started the child exits, not only the process.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_path: Path | None = config.log_path
        self._command: list[str] = []
        self._returncode: int | None = None
        self._repository_key: str | None = None  # locks the repository API of a draining server

    # -- state ----------------------------------------------------------------------------------

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints.for_config(self.config)

    @property
    def log_path(self) -> Path | None:
        """The server log; known once start() has run (or from the config)."""
        return self._log_path

    @property
    def command(self) -> list[str]:
        """The command line of the running (or last) server; empty before start()."""
        return list(self._command)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit code of the stopped server (negative: killed by that signal)."""
        return self._returncode

    def is_alive(self) -> bool:
        return self._process is not None and _exit_status(self._process) is None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the repository and ports, then start the child. Returns without waiting for readiness."""
        if self._process is not None:
            raise ServerError("the server is already started")
        config = self.config
        _check_repository(config.repository)
        for protocol, port in (
            ("grpc", config.grpc_port),
            ("http", config.http_port),
            ("metrics", config.metrics_port),
        ):
            if not _port_is_free(config.host, port):
                raise PortInUseError(port, protocol, config.host)
        if not _is_loopback(config.host):
            logger.warning(
                "binding %s: the server is reachable from the network%s",
                config.host,
                "" if config.tls is not None else " over plaintext gRPC (no --tls-cert)",
            )

        dist = _find_triton_distribution()
        backend_directory = prepare_backend_directory(config.cache_dir)
        self._repository_key = new_repository_key() if _locks_repository(config) and config.admin_key is None else None
        self._command = build_command(
            config, binary=dist.binary, backend_directory=backend_directory, repository_key=self._repository_key
        )

        if self._log_path is None:
            self._log_path = Path(tempfile.mkdtemp(prefix="fashionbox-triton-")) / _LOG_NAME
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append: a log file the user named may hold the story of an earlier run worth keeping.
        self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()

        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            dict.fromkeys(filter(None, [str(dist.libs), env.get("LD_LIBRARY_PATH"), _libpython_dir()]))
        )
        env[SITE_PACKAGES_ENV] = os.pathsep.join(stub_import_paths())
        logger.info(
            "starting tritonserver: %s", shlex.join(redact(self._command, config.admin_key, self._repository_key))
        )
        try:
            self._process = subprocess.Popen(
                self._command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )
        except OSError as exc:
            self._close_log()
            raise ServerStartError(f"could not run {dist.binary}: {exc}") from exc
        self._returncode = None
        logger.info("tritonserver pid %d, log %s", self._process.pid, self._log_path)

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Poll HTTP ``/v2/health/ready`` until it answers 200; fail fast if the server exits."""
        process = self._require_process()
        timeout_s = self.config.startup_timeout_s if timeout_s is None else timeout_s
        url = f"{self.endpoints.http}/v2/health/ready"
        # No proxies: an http_proxy variable must not send a loopback health check elsewhere.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_s
        while True:
            code = _exit_status(process)
            if code is not None:
                raise self._exited_error(code)
            try:
                with opener.open(url, timeout=1.0) as response:
                    if response.status == 200:
                        logger.info("tritonserver ready: gRPC %s, HTTP %s", self.endpoints.grpc, self.endpoints.http)
                        return
            except urllib.error.HTTPError as exc:
                exc.close()  # 503 while models load; the error holds the open response
            except OSError:
                pass  # not listening yet (URLError is an OSError)
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"the server was not ready after {timeout_s:g} s (full log: {self._log_path})", self.log_tail()
                )
            time.sleep(_POLL_INTERVAL_S)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the server to exit on its own; its exit code, or None if still running at the timeout."""
        process = self._require_process()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (code := _exit_status(process)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_INTERVAL_S)
        return code

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the server: SIGTERM, then SIGKILL to its whole process group after ``timeout_s``.

        The default timeout is the config's exit timeout plus a grace for unloading models.
        Returns the exit code (None if never started); calling it again is harmless.
        """
        process = self._process
        if process is None:
            return self._returncode
        timeout_s = self.config.exit_timeout_s + _STOP_GRACE_S if timeout_s is None else timeout_s
        if _exit_status(process) is None:
            if timeout_s > 0 and (self.config.model_control_mode == "explicit" or _locks_repository(self.config)):
                # SIGTERM alone fails ensemble requests between two steps; unloading the ensemble
                # first lets them finish (fashionbox/drain.py). Needs the repository API.
                from fashionbox.server.drain import drain

                key = self.config.admin_key or self._repository_key
                drain(
                    self.endpoints.http,
                    timeout_s=min(timeout_s, float(self.config.exit_timeout_s)),
                    headers={ADMIN_KEY_NAME: key} if key else None,
                )
            # Only the server gets SIGTERM: it unloads the models, which ends the stubs in order.
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            if self.wait(timeout_s) is None:
                logger.warning("tritonserver did not stop within %g s; killing it", timeout_s)
        # The server is a zombie or still running, so its group id is still ours: kill whatever is left
        # in the group (the server if it hung, stubs orphaned by a crash) before reaping.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self._returncode = process.wait()
        self._process = None
        self._close_log()
        with contextlib.suppress(OSError):  # the admission slots its stubs shared (fashionbox.core.admission)
            slots_path(Path(self.config.repository), process.pid).unlink(missing_ok=True)
        logger.info("tritonserver stopped with code %d", self._returncode)
        return self._returncode

    def __enter__(self: _T) -> _T:
        self.start()
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop(timeout_s=0)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers --------------------------------------------------------------------------------

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log, without Triton's start-up tables ("" if no log yet).

        The tables (backends, models, options) are 200 characters wide and would push the error
        lines that explain a failed start out of the tail; the full log stays in the file.
        """
        if self._log_path is None or not self._log_path.is_file():
            return ""
        with open(self._log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 256 * 1024))
            text = log.read().decode("utf-8", errors="replace")
        kept = [line for line in text.splitlines() if line.strip() and not line.startswith(("+", "|"))]
        return "\n".join(kept[-lines:])

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise ServerError("the server is not started")
        return self._process

    def _exited_error(self, code: int) -> ServerStartError:
        tail = self.log_tail()
        # A port can be taken between our check and Triton's bind; Triton then names it in the log.
        match = re.search(r"Socket '(?P<address>[^']*):(?P<port>\d+)' already in use", tail)
        if match:
            port = int(match["port"])
            protocols = {
                self.config.grpc_port: "grpc",
                self.config.http_port: "http",
                self.config.metrics_port: "metrics",
            }
            return PortInUseError(port, protocols.get(port, "grpc"), self.config.host, tail)
        return ServerStartError(
            f"tritonserver exited with code {code} before it was ready (full log: {self._log_path})", tail
        )

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _check_repository(repository: Path) -> None:
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist or is not a folder")
    folders = [entry for entry in sorted(repository.iterdir()) if entry.is_dir() and not entry.name.startswith(".")]
    models = [folder for folder in folders if (folder / "config.pbtxt").is_file()]
    if not models:
        raise RepositoryError(
            f"model repository {repository} holds no model (no <name>/config.pbtxt); "
            "build one with `fashionbox convert`"
        )
    for folder in folders:
        if folder not in models:
            # In mode "none" Triton tries every folder, and one without a config may fail the start.
            logger.warning("%s has no config.pbtxt; Triton may fail to load it as a model", folder)
    _check_engines(repository)


def _check_engines(repository: Path) -> None:
    """A GPU repository: refuse engines built elsewhere, then say why the embedded server cannot serve it;
    refuse the torch GPU profile where no GPU is visible (Triton would fail its KIND_GPU instances)."""
    from fashionbox.converter.tensorrt import EngineError, check_engine_compatibility, local_gpus, repository_runtime

    manifest_path = repository / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    if manifest.get("target") == "gpu" and repository_runtime(manifest) == "torch" and not local_gpus():
        raise RepositoryError(
            f"{repository} is the GPU profile (--target gpu --runtime torch), but no NVIDIA GPU is visible here "
            "(nvidia-smi lists none): convert with --target cpu for this machine, or serve it on a GPU host"
        )

    try:
        record = check_engine_compatibility(repository)
    except EngineError as exc:
        raise RepositoryError(str(exc)) from exc
    if record is not None:
        raise RepositoryError(
            f"{repository} holds TensorRT engines (tensorrt_plan models), which the embedded server (python "
            "backend only) cannot load: serve it with the NGC tritonserver image (docker compose up, README "
            "'GPU deployment')"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_on_free_ports(
    repository: Path, log_dir: Path, *, wait: bool = True, attempts: int = 3, **fields: Any
) -> TritonServer:
    """A server on fresh loopback ports (more ``ServerConfig`` fields in ``fields``), started and,
    unless ``wait=False``, ready. For tests, scripts and tools that run a private server.

    Ports are found free, then bound by Triton a moment later; another process may take one in
    between, so the start is tried ``attempts`` times on new ports. Call from the thread that will
    stop it: the server dies with the thread that started it (``PR_SET_PDEATHSIG``).
    """
    for attempt in range(1, attempts + 1):
        grpc_port, http_port, metrics_port = find_free_ports(3)
        server = TritonServer(
            ServerConfig(
                repository=repository,
                grpc_port=grpc_port,
                http_port=http_port,
                metrics_port=metrics_port,
                log_path=Path(log_dir) / f"tritonserver-{grpc_port}.log",
                **fields,
            )
        )
        try:
            server.start()
            if wait:
                server.wait_until_ready()
        except PortInUseError:
            server.stop(timeout_s=0)
            if attempt == attempts:
                raise
            continue
        except BaseException:
            server.stop(timeout_s=0)
            raise
        return server
    raise AssertionError("unreachable")


# -- command line ------------------------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fashionbox serve`` flags. Unset flags fall back to FASHIONBOX_* variables, then defaults."""
    parser.add_argument("--repository", type=Path, help="model repository (default: $FASHIONBOX_REPOSITORY)")
    parser.add_argument("--host", help=f"address to bind (default {DEFAULT_HOST}; 0.0.0.0 exposes the server)")
    parser.add_argument("--grpc-port", type=int, help=f"gRPC port (default {DEFAULT_GRPC_PORT})")
    parser.add_argument("--http-port", type=int, help=f"HTTP port (default {DEFAULT_HTTP_PORT})")
    parser.add_argument("--metrics-port", type=int, help=f"Prometheus metrics port (default {DEFAULT_METRICS_PORT})")
    parser.add_argument(
        "--model-control-mode", choices=MODEL_CONTROL_MODES, help="none: load every model at start (default)"
    )
    parser.add_argument(
        "--load-model",
        action="append",
        dest="load_models",
        metavar="NAME",
        help="in explicit mode, a model to load at start ('*' for all); repeatable",
    )
    parser.add_argument(
        "--strict-readiness",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ready only when every model is ready (default on)",
    )
    parser.add_argument("--log-file", type=Path, dest="log_path", help="server log (default: a temporary file)")
    parser.add_argument(
        "--log-verbose", type=int, nargs="?", const=1, metavar="LEVEL", help="Triton verbose logging level (1 if bare)"
    )
    parser.add_argument("--startup-timeout-s", type=float, help="seconds to wait for readiness (default 120)")
    parser.add_argument("--exit-timeout-s", type=int, help="seconds Triton waits for in-flight requests on exit")
    parser.add_argument("--python-shm-default-bytes", type=int, help="python backend shared memory per model")
    security = parser.add_argument_group("security")
    security.add_argument("--tls-cert", type=Path, help="PEM server certificate: gRPC over TLS")
    security.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    security.add_argument("--tls-client-ca", type=Path, help="PEM CA: mutual TLS, only clients it signed get in")
    security.add_argument(
        "--admin-key-file",
        type=Path,
        help="file holding the admin key: model repository/config, shared memory, statistics, trace and "
        "logging APIs then need it (default: $FASHIONBOX_ADMIN_KEY_FILE or $FASHIONBOX_ADMIN_KEY)",
    )
    security.add_argument(
        "--secure", action="store_true", default=None, help="secure profile: refuse to start without TLS and a key"
    )
    parser.add_argument(
        "--triton-arg",
        action="append",
        dest="extra_args",
        metavar="ARG",
        help="extra tritonserver argument, e.g. --triton-arg=--grpc-keepalive-time=10000; repeatable",
    )


def config_from_arguments(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The config for parsed serve flags: flags win over FASHIONBOX_* variables, which win over defaults."""
    config = ServerConfig.from_env(repository=args.repository, environ=environ)
    names = (
        "host",
        "grpc_port",
        "http_port",
        "metrics_port",
        "model_control_mode",
        "load_models",
        "strict_readiness",
        "log_path",
        "log_verbose",
        "startup_timeout_s",
        "exit_timeout_s",
        "python_shm_default_bytes",
        "extra_args",
    )
    changes = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    tls_flags = (getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_client_ca", None))
    if any(flag is not None for flag in tls_flags):
        changes["tls"] = _server_tls(*tls_flags)
    if getattr(args, "admin_key_file", None) is not None:
        try:
            changes["admin_key"] = read_admin_key(args.admin_key_file)
        except SecurityError as exc:
            raise ConfigError(str(exc)) from exc
    if getattr(args, "secure", None):
        changes["secure"] = True
    if "load_models" in changes:
        changes["load_models"] = tuple(cast("Sequence[str]", changes["load_models"]))
    if "extra_args" in changes:
        changes["extra_args"] = tuple(cast("Sequence[str]", changes["extra_args"]))
    return dataclasses.replace(config, **changes)


def serve_main(args: argparse.Namespace) -> int:
    """Entry point for ``fashionbox serve`` after argument parsing; returns the process exit code."""
    try:
        config = config_from_arguments(args)
    except ConfigError as exc:
        print(f"fashionbox serve: {exc}", file=sys.stderr)
        return 2
    return run_server_cli(config)


def run_server_cli(config: ServerConfig) -> int:
    """Run the server in the foreground until Ctrl-C or SIGTERM; 0 on a clean stop, 1 on failure."""
    # SIGTERM (docker stop, systemd) should stop us as cleanly as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = TritonServer(config)
    try:
        try:
            server.start()
            server.wait_until_ready()
        except ServerStartError as exc:
            print(f"fashionbox serve: {exc}", file=sys.stderr)
            return 1
        endpoints = server.endpoints
        transport = "plaintext" if config.tls is None else ("mutual TLS" if config.tls.mutual else "TLS")
        admin = "restricted to the admin key" if config.admin_key is not None else "open"
        print(
            f"FashionBox Triton server ready (pid {server.pid})\n"
            f"  gRPC     {endpoints.grpc} ({transport}; admin APIs {admin})\n"
            f"  HTTP     {endpoints.http}\n"
            f"  metrics  {endpoints.metrics}\n"
            f"  log      {server.log_path}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        # Triton 2.51 neither restarts a python-backend stub that dies nor stops reporting ready:
        # supervise() restarts the server then (fashionbox/stubs.py, docs/RELIABILITY.md).
        from fashionbox.server.stubs import supervise

        try:
            code = supervise(server)
        except ServerStartError as exc:
            print(f"fashionbox serve: the restart after a python backend stub died failed: {exc}", file=sys.stderr)
            return 1
        print(
            f"fashionbox serve: tritonserver exited unexpectedly with code {code}; see {server.log_path}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("stopping the server ...", flush=True)
        return 0
    finally:
        try:
            server.stop()
        except KeyboardInterrupt:
            # A second Ctrl-C while stopping means: do not wait.
            server.stop(timeout_s=0)
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fashionbox.server", description="Run the embedded Triton server.")
    add_serve_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_main())
