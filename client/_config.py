"""Client configuration: small frozen values with units in their names, defaults in one place.

Every default lives in a field default below (addresses come from ``fashionbox.contract``);
:meth:`ClientConfig.from_env` is the only reader of environment variables. Values check
themselves when built, so a bad timeout fails at start-up, not on the first request.

Usage::

    config = ClientConfig(timeouts=Timeouts(request_s=5.0))
    config = ClientConfig.from_env()                       # FASHIONBOX_* variables
    config = dataclasses.replace(config, model_version="2")

Environment variables (all optional; unset or empty means the default):

========================================  ====================================================
``FASHIONBOX_URL``                        ``host:port`` of Triton's gRPC endpoint
``FASHIONBOX_MODEL_NAME``                 ensemble to call
``FASHIONBOX_MODEL_VERSION``              version of it ("" lets the server choose)
``FASHIONBOX_CONNECT_TIMEOUT_S``          seconds, one connection attempt
``FASHIONBOX_REQUEST_TIMEOUT_S``          seconds, one call end to end
``FASHIONBOX_KEEPALIVE_TIME_S``           seconds between keepalive pings ("" = no pings)
``FASHIONBOX_KEEPALIVE_TIMEOUT_S``        seconds to wait for a ping's answer
``FASHIONBOX_KEEPALIVE_WITHOUT_CALLS``    ``true``/``false``: ping while idle
``FASHIONBOX_IMAGE_FORMAT``               ``JPEG`` or ``PNG``: how PIL/numpy images are encoded
``FASHIONBOX_JPEG_QUALITY``               1-100
========================================  ====================================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from fashionbox.contract import DEFAULT_GRPC_PORT, DEFAULT_HOST, ENSEMBLE_MODEL

from ._exceptions import ConfigError

__all__ = ["DEFAULT_URL", "ENV_PREFIX", "ClientConfig", "ImageEncoding", "KeepAlive", "Timeouts"]

DEFAULT_URL = f"{DEFAULT_HOST}:{DEFAULT_GRPC_PORT}"
ENV_PREFIX = "FASHIONBOX_"

_T = TypeVar("_T")

ImageFormat = Literal["JPEG", "PNG"]
_IMAGE_FORMATS: tuple[ImageFormat, ...] = ("JPEG", "PNG")


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


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
    ``request_s`` bounds each call end to end (queueing and inference on the server included)
    and is what ``detect(..., timeout_s=...)`` overrides per call. There is deliberately no
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
class ClientConfig:
    """Everything a :class:`FashionClient` needs besides the images."""

    url: str = DEFAULT_URL
    """``host:port`` of Triton's gRPC endpoint (no scheme)."""
    model_name: str = ENSEMBLE_MODEL
    model_version: str = ""
    """Empty lets the server pick by its version policy (normally the latest)."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    keepalive: KeepAlive = field(default_factory=KeepAlive)
    encoding: ImageEncoding = field(default_factory=ImageEncoding)

    def __post_init__(self) -> None:
        if not _is_url(self.url):
            raise ConfigError(f"ClientConfig.url must be 'host:port' without a scheme, got {self.url!r}")
        if not self.model_name:
            raise ConfigError("ClientConfig.model_name must not be empty")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientConfig:
        """A config from ``FASHIONBOX_*`` variables (see the module docstring), defaults elsewhere.

        ``environ`` defaults to ``os.environ``; tests pass a dict. A variable that cannot be
        parsed raises :class:`ConfigError` naming it, rather than being ignored.
        """
        env = os.environ if environ is None else environ
        defaults = cls()

        def read(name: str, parse: Callable[[str], _T], default: _T) -> _T:
            raw = env.get(ENV_PREFIX + name, "").strip()
            if not raw:
                return default
            try:
                return parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{ENV_PREFIX}{name}={raw!r}: {exc}") from exc

        # Each parser also applies the value's own rule, so even a range error names its variable.
        return cls(
            url=read("URL", _parse_url, defaults.url),
            model_name=read("MODEL_NAME", str, defaults.model_name),
            model_version=read("MODEL_VERSION", str, defaults.model_version),
            timeouts=Timeouts(
                connect_s=read("CONNECT_TIMEOUT_S", _parse_seconds, defaults.timeouts.connect_s),
                request_s=read("REQUEST_TIMEOUT_S", _parse_seconds, defaults.timeouts.request_s),
            ),
            keepalive=KeepAlive(
                time_s=read("KEEPALIVE_TIME_S", _parse_seconds, defaults.keepalive.time_s),
                timeout_s=read("KEEPALIVE_TIMEOUT_S", _parse_seconds, defaults.keepalive.timeout_s),
                permit_without_calls=read(
                    "KEEPALIVE_WITHOUT_CALLS", _parse_bool, defaults.keepalive.permit_without_calls
                ),
                max_pings_without_data=defaults.keepalive.max_pings_without_data,
            ),
            encoding=ImageEncoding(
                format=read("IMAGE_FORMAT", _parse_image_format, defaults.encoding.format),
                jpeg_quality=read("JPEG_QUALITY", _parse_quality, defaults.encoding.jpeg_quality),
            ),
        )


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
