"""Transport security and admin restriction for the embedded server: TLS files and the admin key.

Two independent settings, both turned into Triton's own flags by :func:`security_arguments`:

- :class:`ServerTls`: gRPC over TLS (``--grpc-use-ssl``), or mutual TLS when a client CA is given
  (``--grpc-use-ssl-mutual``: only clients holding a certificate signed by that CA get in).
- an admin key: the admin APIs (:data:`ADMIN_APIS`: model repository, model config, shared memory,
  statistics, trace, logging) are restricted on gRPC (``--grpc-restricted-protocol``) and HTTP
  (``--http-restricted-api``) to callers sending the key; health, metadata and inference stay open
  (on HTTP, in the secure profile, inference too needs the key: HTTP has no TLS). gRPC callers send
  it as the ``triton-grpc-protocol-admin-key`` metadata entry (Triton adds the prefix), HTTP callers
  as the ``admin-key`` header::

      ClientConfig(url=..., headers={contract.ADMIN_GRPC_HEADER: key})

- without an admin key, the launcher's own key (:func:`new_launcher_key`, random, made at each start
  and never shown) closes what no client needs (:data:`CLOSED_APIS`: shared memory, trace, logging,
  and the model repository unless the user runs explicit model control): nobody can call them.

Triton only takes the key on its command line, so it is visible to local users who can read the
server's ``/proc/<pid>/cmdline``; FashionBox reads it from a file or the environment (never from its
own flags, which end up in shell history) and redacts it from its logs. Triton serves HTTP without
TLS: the secure profile serves it on loopback only (or not at all), for probes and the drain. A key file
that other users may read is refused, as ssh refuses such a private key.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fashionbox.contract import ADMIN_KEY_NAME, ENV_PREFIX

__all__ = [
    "ADMIN_APIS",
    "CLOSED_APIS",
    "DOOR_KEY_NAME",
    "HTTP_APIS",
    "MIN_ADMIN_KEY_CHARS",
    "RESTRICTION_FLAGS",
    "SECURITY_FLAGS",
    "SecurityError",
    "ServerTls",
    "check_admin_key",
    "new_launcher_key",
    "read_admin_key",
    "redact",
    "restricted_apis",
    "security_arguments",
]

ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
"""Triton API groups only an admin may call: loading models, reading configs, shared memory, stats, trace, logs."""

HTTP_APIS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
             "trace", "logging")
"""Every API group of Triton's HTTP (2.51), as ``--http-restricted-api`` names them."""

DOOR_KEY_NAME = "fashionbox-door-key"
"""The header the front door's HTTP side sends Triton with every request (:func:`security_arguments`'
``door_key``): behind the door, Triton's HTTP answers no group that is not restricted otherwise without it."""

CLOSED_APIS = ("shared-memory", "trace", "logging")
"""Closed in every profile: with the admin key, else with the launcher's key that nobody else knows.

Registering shared memory lets a client make Triton read or write any file it may open (the
admission slots in /dev/shm, say); trace and logging switch on tracing or verbose logs for everyone.
"""

MIN_ADMIN_KEY_CHARS = 16
# Triton parses "<apis>:<key>=<value>", so the value must not carry ':', ',' or '='; header values
# must not carry whitespace or control characters either.
_ADMIN_KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]+")

RESTRICTION_FLAGS = frozenset({"--grpc-restricted-protocol", "--http-restricted-api"})

SECURITY_FLAGS = frozenset(
    {
        "--grpc-use-ssl",
        "--grpc-use-ssl-mutual",
        "--grpc-server-cert",
        "--grpc-server-key",
        "--grpc-root-cert",
        *RESTRICTION_FLAGS,
    }
)
"""Flags :func:`security_arguments` sets; extra arguments may not set them too once TLS or a key is configured."""

_REDACTED = "<redacted>"


class SecurityError(ValueError):
    """Unusable TLS files or admin key; the message names the file or the rule."""


def _readable_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SecurityError(f"{what} {os.fspath(path)!r} is not a file")
    try:
        with path.open("rb") as handle:
            head = handle.read(64 * 1024)
    except OSError as exc:
        raise SecurityError(f"{what} {os.fspath(path)!r} cannot be read: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in head:
        raise SecurityError(f"{what} {os.fspath(path)!r} is not PEM (no '-----BEGIN' line)")
    return path.resolve()


@dataclass(frozen=True)
class ServerTls:
    """PEM files for gRPC TLS; ``client_ca`` turns on mutual TLS. Checked on construction."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cert", _readable_file(self.cert, "TLS certificate"))
        object.__setattr__(self, "key", _readable_file(self.key, "TLS private key"))
        if self.client_ca is not None:
            object.__setattr__(self, "client_ca", _readable_file(self.client_ca, "TLS client CA"))

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def arguments(self) -> list[str]:
        arguments = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.client_ca is not None:
            arguments += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca}"]
        return arguments


def check_admin_key(key: str) -> str:
    """Return ``key`` when Triton can take it and it is long enough to guess hard; raise otherwise."""
    if len(key) < MIN_ADMIN_KEY_CHARS:
        raise SecurityError(f"the admin key must be at least {MIN_ADMIN_KEY_CHARS} characters, got {len(key)}")
    if not _ADMIN_KEY_PATTERN.fullmatch(key):
        raise SecurityError("the admin key may only use letters, digits and . _ ~ + / - (Triton splits on : , =)")
    return key


def _check_private(path: Path) -> None:
    """Refuse a key file other users may read or write (as ssh refuses such a private key)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SecurityError(f"admin key file {os.fspath(path)!r} cannot be read: {exc.strerror or exc}") from exc
    if mode & stat.S_IRWXO:
        raise SecurityError(
            f"admin key file {os.fspath(path)!r} is open to other users (mode {stat.S_IMODE(mode):04o}): "
            f"run chmod 600 {shlex.quote(os.fspath(path))} (640 for a group the server runs in)"
        )


def read_admin_key(path: Path | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The admin key from ``path``, else ``$FASHIONBOX_ADMIN_KEY_FILE``, else ``$FASHIONBOX_ADMIN_KEY``; or None.

    A key file holds the key on its first line (a trailing newline is fine); one that other users may
    read is refused.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(f"{ENV_PREFIX}ADMIN_KEY_FILE", "").strip():
        path = Path(env[f"{ENV_PREFIX}ADMIN_KEY_FILE"].strip())
    if path is not None:
        _check_private(Path(path))
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityError(f"admin key file {os.fspath(path)!r} cannot be read: {exc}") from exc
        lines = text.splitlines()
        return check_admin_key(lines[0].strip() if lines else "")
    value = env.get(f"{ENV_PREFIX}ADMIN_KEY", "").strip()
    return check_admin_key(value) if value else None


def restricted_apis(*, admin_key: bool, repository_open: bool = False) -> tuple[str, ...]:
    """The API groups a server restricts: every admin API to the holders of an admin key, else
    :data:`CLOSED_APIS` and the model repository (unless ``repository_open``) to nobody."""
    if admin_key:
        return ADMIN_APIS
    return CLOSED_APIS if repository_open else ("model-repository", *CLOSED_APIS)


def security_arguments(
    tls: ServerTls | None,
    admin_key: str | None,
    *,
    launcher_key: str | None = None,
    repository_open: bool = False,
    secure: bool = False,
    door_key: str | None = None,
) -> list[str]:
    """Triton flags for TLS and the API restrictions (only the TLS ones when no key is given).

    With ``admin_key`` every admin API (:data:`ADMIN_APIS`) needs it; ``secure`` adds HTTP inference
    (HTTP has no TLS: plaintext inference would pass the gRPC certificates by). Without it,
    ``launcher_key`` (:func:`new_launcher_key`) closes :data:`CLOSED_APIS` and the model-repository
    API, unless ``repository_open`` (explicit model control without an admin key, loopback only).
    ``door_key`` (Triton's HTTP behind the front door's HTTP side, on a private loopback port): every
    other HTTP group (health and metadata included) needs the :data:`DOOR_KEY_NAME` header, which only
    the door sends, so a web page that finds the private port (DNS rebinding) is answered nothing.
    """
    arguments = tls.arguments() if tls is not None else []
    key = admin_key if admin_key is not None else launcher_key
    apis: tuple[str, ...] = ()
    http_apis: tuple[str, ...] = ()
    if key is not None:
        check_admin_key(key)
        apis = restricted_apis(admin_key=admin_key is not None, repository_open=repository_open)
        http_apis = (*apis, "inference") if secure else apis
        arguments += [f"--grpc-restricted-protocol={','.join(apis)}:{ADMIN_KEY_NAME}={key}",
                      f"--http-restricted-api={','.join(http_apis)}:{ADMIN_KEY_NAME}={key}"]
    if door_key is not None:
        check_admin_key(door_key)
        rest = [api for api in HTTP_APIS if api not in http_apis]  # Triton takes each group in one restriction
        arguments.append(f"--http-restricted-api={','.join(rest)}:{DOOR_KEY_NAME}={door_key}")
    return arguments


def new_launcher_key() -> str:
    """A random key for :func:`security_arguments`' ``launcher_key``: known only to this process."""
    return secrets.token_urlsafe(24)


def redact(command: Sequence[str], *secrets_: str | None) -> list[str]:
    """``command`` with every occurrence of each secret replaced, for logs."""
    words = list(command)
    for secret in secrets_:
        if secret:
            words = [word.replace(secret, _REDACTED) for word in words]
    return words
