"""``ServerConfig``: every setting of the embedded server, each declared once with its flag and variable.

The flags of ``fashionbox serve`` (:func:`fashionbox.server.cli.add_serve_arguments`) and the
``FASHIONBOX_*`` variables (:meth:`ServerConfig.from_env`) are derived from the field declarations
(:mod:`fashionbox.server.settings`); a flag wins over its variable, which wins over the default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fashionbox.contract import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from fashionbox.server import settings
from fashionbox.server.errors import ConfigError
from fashionbox.server.security import (
    RESTRICTION_FLAGS,
    SECURITY_FLAGS,
    SecurityError,
    ServerTls,
    check_admin_key,
    read_admin_key,
    restricted_apis,
    security_arguments,
)
from fashionbox.server.settings import BOOLEAN, INTEGER, NUMBER, PATH, TEXT, Input, Setting, declare, one_of

__all__ = [
    "DEFAULT_REPOSITORY",
    "MANAGED_FLAGS",
    "MODEL_CONTROL_MODES",
    "ModelControlMode",
    "ServerConfig",
    "environment_variables",
    "is_loopback",
    "parse_bool",
]

DEFAULT_REPOSITORY = Path("artifacts/model_repository")
"""Where ``fashionbox convert`` writes the repository and what ``fashionbox serve`` serves, by default."""

ModelControlMode = Literal["none", "explicit"]
MODEL_CONTROL_MODES: tuple[ModelControlMode, ...] = ("none", "explicit")

# Flags that ServerConfig sets itself; passing them in extra_args as well would make the
# effective value depend on Triton's last-one-wins parsing, so that is refused.
MANAGED_FLAGS = frozenset(
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

_SECURITY = "security"


def parse_bool(name: str, value: str) -> bool:
    """Parse a boolean setting explicitly: ``bool("false")`` is True, which is never what anyone meant."""
    return bool(BOOLEAN(name, value))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_tls(cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None) -> ServerTls:
    if cert is None or key is None:
        raise ConfigError("TLS needs both a certificate and a private key")
    try:
        return ServerTls(Path(cert), Path(key), Path(client_ca) if client_ca is not None else None)
    except SecurityError as exc:
        raise ConfigError(str(exc)) from exc


def _tls(given: Mapping[str, Any]) -> ServerTls:
    return _server_tls(given.get("tls_cert"), given.get("tls_key"), given.get("tls_client_ca"))


def _admin_key(given: Mapping[str, Any]) -> str:
    """The key file's key when one is named, else the key itself (never a flag: it would land in shell history)."""
    try:
        if "admin_key_file" in given:
            key = read_admin_key(given["admin_key_file"], environ={})
            assert key is not None  # a named file yields a key or an error
            return key
        return check_admin_key(given["admin_key"])
    except SecurityError as exc:
        raise ConfigError(str(exc)) from exc


_TLS = Setting(
    "gRPC TLS",
    (
        Input("--tls-cert", "TLS_CERT", PATH, name="tls_cert", metavar="FILE",
              help="PEM server certificate: gRPC over TLS"),
        Input("--tls-key", "TLS_KEY", PATH, name="tls_key", metavar="FILE", help="PEM private key of --tls-cert"),
        Input("--tls-client-ca", "TLS_CLIENT_CA", PATH, name="tls_client_ca", metavar="FILE",
              help="PEM CA: mutual TLS, only clients it signed get in"),
    ),
    combine=_tls,
    group=_SECURITY,
)

_ADMIN_KEY = Setting(
    "admin key",
    (
        Input("--admin-key-file", "ADMIN_KEY_FILE", PATH, name="admin_key_file", metavar="FILE",
              help="file holding the admin key: model repository/config, shared memory, statistics, trace and "
                   "logging APIs then need it (or the key itself in $FASHIONBOX_ADMIN_KEY)"),
        Input(None, "ADMIN_KEY", TEXT, name="admin_key"),
    ),
    combine=_admin_key,
    group=_SECURITY,
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything needed to run the embedded server; validates itself on construction."""

    repository: Path = dataclasses.field(
        metadata=declare("model repository", flag="--repository", env="REPOSITORY", parser=PATH, metavar="FOLDER",
                         fallback=DEFAULT_REPOSITORY)
    )
    host: str = dataclasses.field(
        default=DEFAULT_HOST,
        metadata=declare("address to bind; 0.0.0.0 exposes the server", flag="--host", env="HOST"),
    )
    grpc_port: int = dataclasses.field(
        default=DEFAULT_GRPC_PORT, metadata=declare("gRPC port", flag="--grpc-port", env="GRPC_PORT", parser=INTEGER)
    )
    http_port: int = dataclasses.field(
        default=DEFAULT_HTTP_PORT, metadata=declare("HTTP port", flag="--http-port", env="HTTP_PORT", parser=INTEGER)
    )
    # Triton's HTTP has no TLS, so it binds apart from gRPC, on loopback unless asked otherwise.
    http: bool = dataclasses.field(
        default=True,
        metadata=declare("serve HTTP (plaintext: health probes, the drain on stop); --no-http turns it off",
                         flag="--http", env="HTTP", parser=BOOLEAN, form="switch"),
    )
    http_host: str = dataclasses.field(
        default=DEFAULT_HOST,
        metadata=declare("address HTTP binds, apart from --host; HTTP has no TLS", flag="--http-host",
                         env="HTTP_HOST"),
    )
    # Browsers: only these names in Host are answered over HTTP (DNS rebinding), fashionbox.core.cross_site.
    http_allowed_hosts: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata=declare("a name HTTP is reached by, besides loopback's and --http-host (other names in Host get "
                         "403: DNS rebinding); '*' for any; repeatable, or comma-separated",
                         flag="--http-allowed-host", env="HTTP_ALLOWED_HOSTS", many="comma", metavar="NAME",
                         shown_default="none; with --http-host 0.0.0.0 any name is answered (a warning says so)"),
    )
    metrics_port: int = dataclasses.field(
        default=DEFAULT_METRICS_PORT,
        metadata=declare("Prometheus metrics port", flag="--metrics-port", env="METRICS_PORT", parser=INTEGER),
    )
    metrics_allowed_hosts: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata=declare("a name the metrics endpoint is reached by, besides loopback's and --host (other names in "
                         "Host get 403: DNS rebinding); '*' for any; repeatable, or comma-separated",
                         flag="--metrics-allowed-host", env="METRICS_ALLOWED_HOSTS", many="comma", metavar="NAME",
                         shown_default="none; with --host 0.0.0.0 any name is answered (a warning says so)"),
    )
    model_control_mode: ModelControlMode = dataclasses.field(
        default="none",
        metadata=declare("none: load every model at start; explicit: load and unload through the repository API",
                         flag="--model-control-mode", env="MODEL_CONTROL_MODE", parser=one_of(MODEL_CONTROL_MODES)),
    )
    # "explicit" mode only; "none" mode always loads all.
    load_models: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata=declare("in explicit mode, a model to load at start ('*' for all); repeatable, or comma-separated",
                         flag="--load-model", env="LOAD_MODELS", many="comma", metavar="NAME"),
    )
    # Ready only once every loaded model is ready, so a readiness probe never admits traffic early.
    strict_readiness: bool = dataclasses.field(
        default=True,
        metadata=declare("ready only when every model is ready", flag="--strict-readiness", env="STRICT_READINESS",
                         parser=BOOLEAN, form="switch"),
    )
    exit_timeout_s: int = dataclasses.field(  # Triton takes whole seconds
        default=30,
        metadata=declare("seconds Triton waits for in-flight requests on exit", flag="--exit-timeout-s",
                         env="EXIT_TIMEOUT_S", parser=INTEGER),
    )
    startup_timeout_s: float = dataclasses.field(
        default=120.0,
        metadata=declare("seconds to wait for readiness", flag="--startup-timeout-s", env="STARTUP_TIMEOUT_S",
                         parser=NUMBER),
    )
    log_path: Path | None = dataclasses.field(
        default=None,
        metadata=declare("server log", flag="--log-file", env="LOG_FILE", parser=PATH, metavar="FILE",
                         shown_default="a file in a fresh temporary folder"),
    )
    log_verbose: int = dataclasses.field(
        default=0,
        metadata=declare("Triton verbose logging level, 1 if bare", flag="--log-verbose", env="LOG_VERBOSE",
                         parser=INTEGER, bare=1, metavar="LEVEL"),
    )
    # gRPC and HTTP through FashionBox's own listeners (fashionbox.server.front_door, .http_door), which refuse a
    # message or body over max_request_bytes before anything is allocated for it; Triton then listens on
    # private loopback ports.
    front_door: bool | None = dataclasses.field(
        default=None,
        metadata=declare("gRPC and HTTP through FashionBox's front door, which refuses messages and bodies over "
                         "--max-request-bytes before Triton sees them (Triton's own: 2 GiB for gRPC, none for HTTP); "
                         "--no-front-door also takes HTTP's guard against other sites away",
                         flag="--front-door",
                         env="FRONT_DOOR", parser=BOOLEAN, form="switch",
                         shown_default="on with --secure (always), a non-loopback --host or --http-host, or "
                                       "--max-request-bytes; on loopback HTTP only"),
    )
    max_request_bytes: int | None = dataclasses.field(
        default=None,
        metadata=declare("largest gRPC message or HTTP body the front door takes", flag="--max-request-bytes",
                         env="MAX_REQUEST_BYTES", parser=INTEGER, metavar="BYTES",
                         shown_default="the repository's max_image_bytes x the ensemble's max batch + 64 KiB"),
    )
    python_shm_default_bytes: int | None = dataclasses.field(
        default=None,
        metadata=declare("python backend shared memory per model instance", flag="--python-shm-default-bytes",
                         env="PYTHON_SHM_DEFAULT_BYTES", parser=INTEGER, shown_default="the backend's, 1 MiB"),
    )
    python_shm_growth_bytes: int | None = dataclasses.field(
        default=None,
        metadata=declare("python backend shared memory growth step", flag="--python-shm-growth-bytes",
                         env="PYTHON_SHM_GROWTH_BYTES", parser=INTEGER, shown_default="the backend's"),
    )
    extra_args: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata=declare("extra tritonserver argument, e.g. --triton-arg=--grpc-keepalive-time=10000; repeatable "
                         "(the variable holds shell words)", flag="--triton-arg", env="TRITON_ARGS", many="shell",
                         metavar="ARG"),
    )
    cache_dir: Path | None = dataclasses.field(
        default=None,
        metadata=declare("where the prepared Triton backends folder is kept", flag="--cache-dir", env="CACHE_DIR",
                         parser=PATH, metavar="FOLDER", shown_default="$XDG_CACHE_HOME/fashionbox"),
    )
    tls: ServerTls | None = dataclasses.field(default=None, metadata={settings.SETTING: _TLS})
    # Restricts the admin APIs (fashionbox.server.security.ADMIN_APIS) to callers sending this key.
    admin_key: str | None = dataclasses.field(default=None, repr=False, metadata={settings.SETTING: _ADMIN_KEY})
    secure: bool = dataclasses.field(
        default=False,
        metadata=declare("secure profile: refuse to start without TLS and an admin key, or with HTTP off loopback; "
                         "HTTP inference then needs the key too", flag="--secure",
                         env="SECURE", parser=BOOLEAN, form="on", group=_SECURITY),
    )
    # Let stop() drain in-flight requests (fashionbox.server.drain). In mode "none" Triton then runs in explicit
    # mode with every model loaded and its repository API locked behind a key only this process knows
    # (the admin key, when set): from outside it is mode "none", nothing can be loaded or unloaded.
    drain_on_stop: bool = dataclasses.field(
        default=True,
        metadata=declare("on stop, unload the ensemble first so requests inside it finish (over HTTP, or gRPC "
                         "with --no-http)", flag="--drain-on-stop",
                         env="DRAIN_ON_STOP", parser=BOOLEAN, form="switch"),
    )
    # Written by `fashionbox serve` while every model of the pipeline is READY and no stub died; probes read it.
    ready_file: Path | None = dataclasses.field(
        default=None,
        metadata=declare("file that exists while the pipeline answers (every model READY, no stub dead): for "
                         "readiness probes, e.g. test -f FILE", flag="--ready-file", env="READY_FILE", parser=PATH,
                         metavar="FILE", shown_default="none"),
    )

    def __post_init__(self) -> None:
        # Accept str paths from callers but store Paths, so equality and hashing are predictable.
        object.__setattr__(self, "repository", Path(self.repository))
        if self.log_path is not None:
            object.__setattr__(self, "log_path", Path(self.log_path))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if self.ready_file is not None:
            object.__setattr__(self, "ready_file", Path(self.ready_file))
        object.__setattr__(self, "load_models", tuple(self.load_models))
        object.__setattr__(self, "extra_args", tuple(self.extra_args))

        if not self.host or not self.http_host:
            raise ConfigError("host and http_host must not be empty")
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
        for name in ("python_shm_default_bytes", "python_shm_growth_bytes", "max_request_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        for arg in self.extra_args:
            flag = arg.split("=", 1)[0]
            if flag in MANAGED_FLAGS:
                raise ConfigError(f"extra argument {arg!r} sets {flag}, which ServerConfig manages; use its field")
            if flag in SECURITY_FLAGS and (self.tls is not None or self.admin_key is not None):
                raise ConfigError(f"extra argument {flag} conflicts with the tls/admin_key settings; use those only")
            # Without an admin key the launcher closes these itself; Triton refuses a group restricted twice.
            twice = set(arg.partition("=")[2].partition(":")[0].split(",")) & set(self.closed_apis())
            if flag in RESTRICTION_FLAGS and twice:
                raise ConfigError(f"extra argument {arg!r} restricts {', '.join(sorted(twice))}, which the server "
                                  "closes itself (set an admin key to open them to its holders)")
        self._check_security()

    @property
    def uses_front_door(self) -> bool:
        """Whether gRPC and HTTP go through the front door: as ``front_door`` says, else where the network or
        an explicit bound asks for it (the secure profile, a non-loopback ``host`` or ``http_host``,
        ``max_request_bytes``).
        Loopback-only servers go without by default: the hop costs about 5 % of the server's CPU per
        request (BENCHMARKS.md, "The gRPC front door")."""
        if self.front_door is not None:
            return self.front_door
        return (self.secure or not is_loopback(self.host) or (self.http and not is_loopback(self.http_host))
                or self.max_request_bytes is not None)

    @property
    def uses_http_door(self) -> bool:
        """Whether HTTP goes through the front door's HTTP side (:mod:`fashionbox.server.http_door`): wherever
        HTTP is served, unless ``front_door`` is False. A loopback server's HTTP needs it too: a web page in
        a browser on the same host reaches loopback, and Triton's HTTP checks neither ``Host`` nor
        ``Origin`` (:mod:`fashionbox.core.cross_site`). Its cost is about 0.8 ms of CPU per HTTP request
        (BENCHMARKS.md, "The door's HTTP side"); FashionBox's client speaks gRPC."""
        return self.http and self.front_door is not False

    @property
    def uses_metrics_door(self) -> bool:
        """Whether the metrics endpoint goes through the front door too (an HTTP side of its own, GET only
        in practice): unless ``front_door`` is False. Triton's metrics check no ``Host`` either, so a page
        rebinding its name to the server's address could read them; a scrape every few seconds costs the
        door nothing measurable."""
        return self.front_door is not False

    def closed_apis(self) -> tuple[str, ...]:
        """The API groups no caller may use without the admin key (without one: nobody)."""
        return restricted_apis(admin_key=self.admin_key is not None,
                               repository_open=self.model_control_mode == "explicit")

    def _check_security(self) -> None:
        try:
            security_arguments(self.tls, self.admin_key)  # validates the key
        except SecurityError as exc:
            raise ConfigError(str(exc)) from exc
        if self.secure and (self.tls is None or self.admin_key is None):
            missing = [name for name, value in (("TLS (--tls-cert/--tls-key)", self.tls),
                                                ("an admin key (--admin-key-file)", self.admin_key)) if value is None]
            raise ConfigError(f"the secure profile needs {' and '.join(missing)}")
        if self.secure and not self.uses_front_door:
            raise ConfigError("the secure profile needs the front door: without it Triton takes gRPC messages up to "
                              "2 GiB and HTTP bodies of any size, whatever the image limit; drop --no-front-door")
        if self.max_request_bytes is not None and not self.uses_front_door:
            raise ConfigError("max_request_bytes is enforced by the front door; it cannot be set with --no-front-door")
        if self.http_allowed_hosts and self.http and not self.uses_http_door:
            raise ConfigError("http_allowed_hosts is enforced by the front door's HTTP side; it cannot be set with "
                              "--no-front-door")
        if self.metrics_allowed_hosts and not self.uses_metrics_door:
            raise ConfigError("metrics_allowed_hosts is enforced by the front door; it cannot be set with "
                              "--no-front-door")
        # HTTP has no TLS: in the secure profile it would be a plaintext side door past the certificates.
        if self.secure and self.http and not is_loopback(self.http_host):
            raise ConfigError(
                f"the secure profile serves HTTP on loopback only: HTTP has no TLS, so --http-host {self.http_host} "
                "would let the network past the gRPC certificates; keep the default (127.0.0.1) or pass --no-http"
            )
        # Explicit mode lets a caller load and unload models at run time: never open to the network.
        exposed = [h for h in (self.host, *((self.http_host,) if self.http else ())) if not is_loopback(h)]
        if self.model_control_mode == "explicit" and self.admin_key is None and exposed:
            raise ConfigError(
                f"model_control_mode='explicit' on {exposed[0]} would let anyone on the network load and unload "
                "models: bind loopback, or set an admin key to restrict the model-repository API"
            )

    @classmethod
    def from_env(cls, repository: str | Path | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Build a config from the ``FASHIONBOX_*`` variables (:func:`environment_variables`); unset ones
        keep the defaults. ``repository`` wins over ``FASHIONBOX_REPOSITORY``; one of them is required."""
        return cls.from_inputs({"repository": repository}, environ)

    @classmethod
    def from_inputs(
        cls, given: Mapping[str, Any], environ: Mapping[str, str] | None = None, *, fallbacks: bool = False
    ) -> ServerConfig:
        """Build a config from parsed flag values (by input name; None: not given) over the variables.

        ``fallbacks``: a field given neither way takes its declared fallback (the command line's
        default repository) instead of being required.
        """
        env = os.environ if environ is None else environ
        return settings.build(cls, settings.values(cls, env, given, fallbacks=fallbacks))


def environment_variables() -> list[str]:
    """Every ``FASHIONBOX_*`` variable a :class:`ServerConfig` is read from, in field order."""
    return [s.variable for _, setting in settings.declared(ServerConfig) for s in setting.inputs
            if s.variable is not None]
