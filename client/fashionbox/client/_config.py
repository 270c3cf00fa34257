"""Client configuration: small frozen values with units in their names, defaults in one place.

Every default lives in a field default below (addresses come from ``fashionbox.contract``);
:meth:`ClientConfig.from_env` is the only reader of environment variables. Values check
themselves when built, so a bad timeout fails at start-up, not on the first request.

Usage::

    config = ClientConfig(timeouts=Timeouts(request_s=5.0), retry=RetryPolicy(max_attempts=6))
    config = ClientConfig(url="triton.internal:8001", tls=TlsConfig(root_certificates="ca.pem"),
                          headers={"triton-grpc-protocol-admin-key": secret})
    config = ClientConfig.from_env()                       # FASHIONBOX_* variables
    config = dataclasses.replace(config, model_version="2")

Environment variables (all optional; unset or empty means the default):

=============================================  =========================================================
``FASHIONBOX_URL``                             ``host:port`` of Triton's gRPC endpoint
``FASHIONBOX_MODEL_NAME``                      ensemble to call
``FASHIONBOX_MODEL_VERSION``                   version of it ("" lets the server choose)
``FASHIONBOX_CONNECT_TIMEOUT_S``               seconds, one connection attempt
``FASHIONBOX_REQUEST_TIMEOUT_S``               seconds, one call end to end, retries included
``FASHIONBOX_RETRY_MAX_ATTEMPTS``              attempts per call, first one included (1 = no retries)
``FASHIONBOX_RETRY_INITIAL_BACKOFF_S``         seconds before the first retry
``FASHIONBOX_RETRY_MAX_BACKOFF_S``             cap on one backoff, seconds
``FASHIONBOX_RETRY_MULTIPLIER``                growth of the backoff per retry
``FASHIONBOX_RETRY_JITTER``                    0-1: random share of each backoff
``FASHIONBOX_TLS``                             ``true``/``false``; implied by any ``FASHIONBOX_TLS_*``
``FASHIONBOX_TLS_ROOT_CERTIFICATES``           PEM file of the CAs to trust (default: system roots)
``FASHIONBOX_TLS_PRIVATE_KEY``                 PEM file of the client key (mutual TLS)
``FASHIONBOX_TLS_CERTIFICATE_CHAIN``           PEM file of the client certificate chain (mutual TLS)
``FASHIONBOX_TLS_SERVER_NAME_OVERRIDE``        name to expect in the server certificate
``FASHIONBOX_HEADERS``                         ``name=value`` pairs sent with every call, comma
                                               separated, values percent-decoded (``%2C`` is a comma),
                                               as in ``OTEL_EXPORTER_OTLP_HEADERS``
``FASHIONBOX_MAX_MESSAGE_BYTES``               largest gRPC message either way
``FASHIONBOX_COMPRESSION``                     ``gzip``, ``deflate`` or ``none``: request compression
``FASHIONBOX_KEEPALIVE_TIME_S``                seconds between keepalive pings ("" = no pings)
``FASHIONBOX_KEEPALIVE_TIMEOUT_S``             seconds to wait for a ping's answer
``FASHIONBOX_KEEPALIVE_WITHOUT_CALLS``         ``true``/``false``: ping while idle
``FASHIONBOX_KEEPALIVE_MAX_PINGS_WITHOUT_DATA``  pings allowed with no data in between (0 = unlimited)
``FASHIONBOX_IMAGE_FORMAT``                    ``JPEG`` or ``PNG``: how PIL/numpy images are encoded
``FASHIONBOX_JPEG_QUALITY``                    1-100
=============================================  =========================================================
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias, TypeVar

from fashionbox.contract import DEFAULT_GRPC_PORT, DEFAULT_HOST, ENSEMBLE_MODEL, ENV_PREFIX

from ._exceptions import ConfigError

__all__ = [
    "DEFAULT_URL",
    "ENV_PREFIX",
    "MAX_MESSAGE_BYTES",
    "ClientConfig",
    "Compression",
    "ImageEncoding",
    "KeepAlive",
    "PemSource",
    "RetryPolicy",
    "Timeouts",
    "TlsConfig",
]

DEFAULT_URL = f"{DEFAULT_HOST}:{DEFAULT_GRPC_PORT}"

_T = TypeVar("_T")

ImageFormat = Literal["JPEG", "PNG"]
_IMAGE_FORMATS: tuple[ImageFormat, ...] = ("JPEG", "PNG")

Compression = Literal["gzip", "deflate"]
"""The request compressions tritonclient can ask gRPC for."""
_COMPRESSIONS: tuple[Compression, ...] = ("gzip", "deflate")

MAX_MESSAGE_BYTES = 2**31 - 1
"""gRPC's cap on one message (int32). The default limit both ways: the server applies its own
image-size limit with a clear INVALID_ARGUMENT, a better error than gRPC's 4 MiB default."""

PemSource: TypeAlias = "bytes | str | os.PathLike[str]"
"""PEM data as ``bytes``, or the path of a file holding it (a ``str`` is always a path)."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_seconds(value: object) -> bool:
    return _is_number(value) and value > 0  # type: ignore[operator]


def _check_seconds(owner: str, name: str, value: float) -> None:
    if not _is_seconds(value):
        raise ConfigError(f"{owner}.{name} must be a positive number of seconds, got {value!r}")


def _is_quality(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100


@dataclass(frozen=True)
class Timeouts:
    """How long the client waits, in seconds.

    ``connect_s`` bounds one attempt to open the connection (gRPC's minimum connect timeout),
    so a wrong address fails with :class:`ConnectError` instead of using up ``request_s``.
    ``request_s`` bounds each call end to end (queueing and inference on the server, and every
    retry with its backoff, included) and is what ``detect(..., timeout_s=...)`` overrides per
    call. There is deliberately no
    server-side queue timeout here: Triton takes that one in microseconds, and one call should
    not carry two timeouts in two units.
    """

    connect_s: float = 5.0
    request_s: float = 30.0

    def __post_init__(self) -> None:
        _check_seconds("Timeouts", "connect_s", self.connect_s)
        _check_seconds("Timeouts", "request_s", self.request_s)


@dataclass(frozen=True)
class KeepAlive:
    """HTTP/2 keepalive pings, as one object (gRPC takes them as four loose channel arguments).

    Off by default, like gRPC's own default; turn on (``time_s=30``) when a load balancer or NAT
    between client and server drops idle connections silently.
    """

    time_s: float | None = None
    """Seconds between pings; ``None`` sends none."""
    timeout_s: float = 20.0
    """Seconds to wait for a ping's answer before the connection is considered dead."""
    permit_without_calls: bool = False
    """Whether to ping while no call is in flight."""
    max_pings_without_data: int = 2
    """Pings allowed with no data frame in between; 0 is unlimited."""

    def __post_init__(self) -> None:
        if self.time_s is not None:
            _check_seconds("KeepAlive", "time_s", self.time_s)
        _check_seconds("KeepAlive", "timeout_s", self.timeout_s)
        if self.max_pings_without_data < 0:
            raise ConfigError(f"KeepAlive.max_pings_without_data must be >= 0, got {self.max_pings_without_data}")


@dataclass(frozen=True)
class ImageEncoding:
    """How in-memory images (PIL, numpy) are encoded before they go on the wire.

    Encoded bytes and files are always sent exactly as given. JPEG at quality 95 with full
    chroma resolution (4:4:4) is the default: 5-10x smaller than PNG and several times faster to
    encode for photos, with differences far below what changes a detection, and the server
    decodes JPEG cheapest (DCT scaling). Choose ``PNG`` when the server must see exactly the
    caller's pixels, e.g. to compare with an offline run. Images with transparency are always
    sent as PNG, so the server alone decides how transparent pixels look.
    """

    format: ImageFormat = "JPEG"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.format not in _IMAGE_FORMATS:
            raise ConfigError(f"ImageEncoding.format must be one of {list(_IMAGE_FORMATS)}, got {self.format!r}")
        if not _is_quality(self.jpeg_quality):
            raise ConfigError(f"ImageEncoding.jpeg_quality must be an integer in 1..100, got {self.jpeg_quality!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff and jitter, for errors that may pass (``error.retryable``).

    Those are :class:`ConnectError` (server down, stopping, restarting, unreachable; gRPC
    UNAVAILABLE), :class:`Overloaded` (RESOURCE_EXHAUSTED, full queue) and :class:`ModelNotReady`
    for a model that exists but is loading or unloading. Detection is a pure function of the image, so sending a request
    again is always safe. Before retry ``n`` (1-based) the client sleeps::

        ceiling = min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))
        sleep   = ceiling * (1 - jitter * U),   U uniform in [0, 1)

    so ``jitter=0`` sleeps exactly the ceiling and ``jitter=1`` is "full jitter" (uniform in
    ``[0, ceiling]``), which spreads the retries of many clients after an outage. A call never
    sleeps past its deadline (``timeout_s``): when the next backoff would end after it, the last
    error is raised at once. ``health()`` and ``ready()`` are never retried: they report now.
    """

    max_attempts: int = 4
    """Attempts per call, the first included; 1 turns retries off."""
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    """Share of each backoff that is random, 0-1."""

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        _check_seconds("RetryPolicy", "initial_backoff_s", self.initial_backoff_s)
        _check_seconds("RetryPolicy", "max_backoff_s", self.max_backoff_s)
        if self.max_backoff_s < self.initial_backoff_s:
            raise ConfigError(
                f"RetryPolicy.max_backoff_s ({self.max_backoff_s}) must be >= initial_backoff_s "
                f"({self.initial_backoff_s})"
            )
        if not _is_number(self.multiplier) or not self.multiplier >= 1:
            raise ConfigError(f"RetryPolicy.multiplier must be a number >= 1, got {self.multiplier!r}")
        if not _is_number(self.jitter) or not 0 <= self.jitter <= 1:
            raise ConfigError(f"RetryPolicy.jitter must be a number in 0..1, got {self.jitter!r}")

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """One attempt per call: every error is raised as it comes."""
        return cls(max_attempts=1)

    def backoff_s(self, retry: int, random_fraction: float) -> float:
        """Seconds to sleep before retry number ``retry`` (1 = the first retry).

        Pure: ``random_fraction`` in ``[0, 1)`` is the only randomness, given by the caller.
        """
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        # Compare exponents rather than computing multiplier ** n, which overflows for large n.
        limit = self.max_backoff_s / self.initial_backoff_s
        if self.multiplier == 1 or (retry - 1) * math.log(self.multiplier) < math.log(limit):
            ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        else:
            ceiling = self.max_backoff_s
        return ceiling * (1.0 - self.jitter * random_fraction)


@dataclass(frozen=True)
class TlsConfig:
    """TLS, or mutual TLS, for the gRPC channel. Each value is PEM ``bytes`` or a file path.

    ``TlsConfig()`` alone is TLS against the system's root certificates. Give
    ``root_certificates`` for a private CA, and ``private_key`` with ``certificate_chain`` when the
    server checks client certificates (Triton's ``--grpc-use-ssl-mutual=true``).
    ``server_name_override`` makes the client expect that name in the server's certificate instead
    of the host in the url (for a certificate issued to a service name reached through an IP).
    Files are read when the client is created; an unreadable one raises :class:`ConfigError` then.
    """

    root_certificates: PemSource | None = None
    private_key: PemSource | None = field(default=None, repr=False)
    certificate_chain: PemSource | None = None
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        for name in ("root_certificates", "private_key", "certificate_chain"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bytes | str | os.PathLike):
                raise ConfigError(f"TlsConfig.{name} must be PEM bytes or a file path, got {type(value).__name__}")
            if value is not None and not value:
                raise ConfigError(f"TlsConfig.{name} is empty")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ConfigError("TlsConfig: mutual TLS needs both private_key and certificate_chain, or neither")
        if self.server_name_override is not None and not self.server_name_override:
            raise ConfigError("TlsConfig.server_name_override must not be empty (None for no override)")

    def load(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """``(root_certificates, private_key, certificate_chain)`` as PEM bytes, files read now."""
        return (
            _read_pem("root_certificates", self.root_certificates),
            _read_pem("private_key", self.private_key),
            _read_pem("certificate_chain", self.certificate_chain),
        )


def _read_pem(name: str, source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"TlsConfig.{name}: cannot read {os.fspath(source)!r}: {exc.strerror or exc}") from exc


# gRPC metadata keys: lowercase ASCII letters, digits, "-", "_", "."; "-bin" keys carry bytes.
_HEADER_NAME = re.compile(r"[0-9a-z_.-]+")
_RESERVED_HEADERS = frozenset({"content-type", "te", "user-agent", "authority", "host"})


def _check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for raw_name, value in headers.items():
        if not isinstance(raw_name, str) or not isinstance(value, str):
            raise ConfigError(f"ClientConfig.headers must map str to str, got {raw_name!r}: {value!r}")
        # HTTP/2 header names are lowercase on the wire; gRPC refuses others outright.
        name = raw_name.lower()
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"header name {raw_name!r} may hold only letters, digits, '-', '_' and '.'")
        if name.startswith(("grpc-", ":")) or name in _RESERVED_HEADERS or name.endswith("-bin"):
            raise ConfigError(f"header {raw_name!r} is reserved by gRPC or carries binary values")
        if not all(" " <= ch <= "~" for ch in value):
            raise ConfigError(f"header {raw_name!r} must have a printable ASCII value")
        if name in checked:
            raise ConfigError(f"header {raw_name!r} is given twice (header names ignore case)")
        checked[name] = value
    return checked


@dataclass(frozen=True)
class ClientConfig:
    """Everything a :class:`FashionClient` or :class:`AsyncFashionClient` needs besides the images."""

    url: str = DEFAULT_URL
    """``host:port`` of Triton's gRPC endpoint (no scheme)."""
    model_name: str = ENSEMBLE_MODEL
    model_version: str = ""
    """Empty lets the server pick by its version policy (normally the latest)."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    tls: TlsConfig | None = None
    """``None`` is a plaintext channel (Triton's default)."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    """gRPC metadata sent with every call. For APIs Triton restricts with
    ``--grpc-restricted-protocol=<apis>:<key>=<value>`` send ``{"triton-grpc-protocol-<key>": value}``
    (Triton prefixes the key). Names are lowercased; left out of ``repr`` (secrets)."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest gRPC message sent or received; a larger image fails alone with :class:`InvalidImage`."""
    compression: Compression | None = None
    """Compress requests (``"gzip"``/``"deflate"``). Off by default: JPEG and PNG do not shrink."""
    keepalive: KeepAlive = field(default_factory=KeepAlive)
    encoding: ImageEncoding = field(default_factory=ImageEncoding)

    def __post_init__(self) -> None:
        if not _is_url(self.url):
            raise ConfigError(f"ClientConfig.url must be 'host:port' without a scheme, got {self.url!r}")
        if not self.model_name:
            raise ConfigError("ClientConfig.model_name must not be empty")
        # A private copy: the caller's dict cannot change a frozen config afterwards.
        object.__setattr__(self, "headers", _check_headers(self.headers))
        if (
            isinstance(self.max_message_bytes, bool)
            or not isinstance(self.max_message_bytes, int)
            or not 1 <= self.max_message_bytes <= MAX_MESSAGE_BYTES
        ):
            raise ConfigError(
                f"ClientConfig.max_message_bytes must be an integer in 1..{MAX_MESSAGE_BYTES}, "
                f"got {self.max_message_bytes!r}"
            )
        if self.compression is not None and self.compression not in _COMPRESSIONS:
            raise ConfigError(
                f"ClientConfig.compression must be one of {list(_COMPRESSIONS)} or None, got {self.compression!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientConfig:
        """A config from ``FASHIONBOX_*`` variables (see the module docstring), defaults elsewhere.

        ``environ`` defaults to ``os.environ``; tests pass a dict. A variable that cannot be
        parsed raises :class:`ConfigError` naming it, rather than being ignored.
        """
        env = _Env(os.environ if environ is None else environ)
        defaults = cls()
        retry, keepalive = defaults.retry, defaults.keepalive
        # Each parser also applies the value's own rule, so even a range error names its variable.
        max_attempts = env.read("RETRY_MAX_ATTEMPTS", _parse_attempts, retry.max_attempts)
        backoff_s = {
            "initial_backoff_s": env.read("RETRY_INITIAL_BACKOFF_S", _parse_seconds, retry.initial_backoff_s),
            "max_backoff_s": env.read("RETRY_MAX_BACKOFF_S", _parse_seconds, retry.max_backoff_s),
            "multiplier": env.read("RETRY_MULTIPLIER", _parse_multiplier, retry.multiplier),
            "jitter": env.read("RETRY_JITTER", _parse_fraction, retry.jitter),
        }
        return cls(
            url=env.read("URL", _parse_url, defaults.url),
            model_name=env.read("MODEL_NAME", str, defaults.model_name),
            model_version=env.read("MODEL_VERSION", str, defaults.model_version),
            timeouts=Timeouts(
                connect_s=env.read("CONNECT_TIMEOUT_S", _parse_seconds, defaults.timeouts.connect_s),
                request_s=env.read("REQUEST_TIMEOUT_S", _parse_seconds, defaults.timeouts.request_s),
            ),
            # Values that pass alone can still break a rule between them (max < initial backoff).
            retry=env.build("RETRY_*", lambda: RetryPolicy(max_attempts, **backoff_s)),
            tls=_tls_from_env(env),
            headers=env.read("HEADERS", _parse_headers, defaults.headers),
            max_message_bytes=env.read("MAX_MESSAGE_BYTES", _parse_message_bytes, defaults.max_message_bytes),
            compression=env.read("COMPRESSION", _parse_compression, defaults.compression),
            keepalive=KeepAlive(
                time_s=env.read("KEEPALIVE_TIME_S", _parse_seconds, keepalive.time_s),
                timeout_s=env.read("KEEPALIVE_TIMEOUT_S", _parse_seconds, keepalive.timeout_s),
                permit_without_calls=env.read("KEEPALIVE_WITHOUT_CALLS", _parse_bool, keepalive.permit_without_calls),
                max_pings_without_data=env.read(
                    "KEEPALIVE_MAX_PINGS_WITHOUT_DATA", _parse_count, keepalive.max_pings_without_data
                ),
            ),
            encoding=ImageEncoding(
                format=env.read("IMAGE_FORMAT", _parse_image_format, defaults.encoding.format),
                jpeg_quality=env.read("JPEG_QUALITY", _parse_quality, defaults.encoding.jpeg_quality),
            ),
        )


class _Env:
    """Reads ``FASHIONBOX_*`` variables; every error names the variable it came from."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def read(self, name: str, parse: Callable[[str], _T], default: _T) -> _T:
        raw = self._environ.get(ENV_PREFIX + name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError as exc:  # ConfigError is a ValueError too
            message = exc.message if isinstance(exc, ConfigError) else str(exc)
            raise ConfigError(f"{ENV_PREFIX}{name}={raw!r}: {message}") from exc

    def build(self, names: str, build: Callable[[], _T]) -> _T:
        try:
            return build()
        except ConfigError as exc:
            raise ConfigError(f"{ENV_PREFIX}{names}: {exc.message}") from exc


def _tls_from_env(env: _Env) -> TlsConfig | None:
    values: dict[str, str | None] = {
        name: env.read(f"TLS_{name.upper()}", str, None)
        for name in ("root_certificates", "private_key", "certificate_chain", "server_name_override")
    }
    any_set = any(value is not None for value in values.values())
    enabled: bool = env.read("TLS", _parse_bool, any_set)
    if not enabled:
        if any_set:
            raise ConfigError(f"{ENV_PREFIX}TLS is false, but {ENV_PREFIX}TLS_* variables are set")
        return None
    return env.build("TLS_*", lambda: TlsConfig(**values))


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_bool(raw: str) -> bool:
    """Explicit: ``bool("false")`` is True, which is how a disabled option ends up enabled."""
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")


def _parse_image_format(raw: str) -> ImageFormat:
    upper = raw.upper()
    for candidate in _IMAGE_FORMATS:
        if upper == candidate:
            return candidate
    raise ValueError(f"expected one of {list(_IMAGE_FORMATS)}")


def _is_url(value: str) -> bool:
    return bool(value) and "://" not in value


def _parse_url(raw: str) -> str:
    if not _is_url(raw):
        raise ValueError("expected host:port without a scheme")
    return raw


def _parse_seconds(raw: str) -> float:
    value = float(raw)
    if not _is_seconds(value):
        raise ValueError("expected a positive number of seconds")
    return value


def _parse_quality(raw: str) -> int:
    value = int(raw)
    if not _is_quality(value):
        raise ValueError("expected an integer in 1..100")
    return value


def _parse_attempts(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def _parse_count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def _parse_multiplier(raw: str) -> float:
    value = float(raw)
    if not (math.isfinite(value) and value >= 1):
        raise ValueError("expected a number >= 1")
    return value


def _parse_fraction(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise ValueError("expected a number in 0..1")
    return value


def _parse_message_bytes(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= MAX_MESSAGE_BYTES:
        raise ValueError(f"expected an integer in 1..{MAX_MESSAGE_BYTES}")
    return value


def _parse_compression(raw: str) -> Compression | None:
    lowered = raw.lower()
    if lowered == "none":
        return None
    for candidate in _COMPRESSIONS:
        if lowered == candidate:
            return candidate
    raise ValueError(f"expected one of {[*_COMPRESSIONS, 'none']}")


def _parse_headers(raw: str) -> dict[str, str]:
    """``name=value,name2=value2`` with percent-encoded values, as ``OTEL_EXPORTER_OTLP_HEADERS``."""
    headers: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected name=value pairs separated by commas, got {item.strip()!r}")
        headers[name.strip()] = urllib.parse.unquote(value.strip())
    return _check_headers(headers)
