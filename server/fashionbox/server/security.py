"""Transport security and admin restriction for the embedded server: TLS files and the admin key.

Two independent settings, both turned into Triton's own flags by :func:`security_arguments`:

- :class:`ServerTls`: gRPC over TLS (``--grpc-use-ssl``), or mutual TLS when a client CA is given
  (``--grpc-use-ssl-mutual``: only clients holding a certificate signed by that CA get in).
- an admin key: the admin APIs (:data:`ADMIN_APIS`: model repository, model config, shared memory,
  statistics, trace, logging) are restricted on gRPC (``--grpc-restricted-protocol``) and HTTP
  (``--http-restricted-api``) to callers sending the key; health, metadata and inference stay open.
  gRPC callers send it as the ``triton-grpc-protocol-admin-key`` metadata entry (Triton adds the
  prefix), HTTP callers as the ``admin-key`` header::

      ClientConfig(url=..., headers={contract.ADMIN_GRPC_HEADER: key})

Triton only takes the key on its command line, so it is visible to local users who can read the
server's ``/proc/<pid>/cmdline``; FashionBox reads it from a file or the environment (never from its
own flags, which end up in shell history) and redacts it from its logs. Triton serves HTTP without
TLS: in the secure profile bind HTTP where only probes reach it, or keep the host on loopback.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fashionbox.contract import ADMIN_KEY_NAME, ENV_PREFIX

__all__ = [
    "ADMIN_APIS",
    "MIN_ADMIN_KEY_CHARS",
    "SECURITY_FLAGS",
    "SecurityError",
    "ServerTls",
    "check_admin_key",
    "new_repository_key",
    "read_admin_key",
    "redact",
    "security_arguments",
]

ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
"""Triton API groups only an admin may call: loading models, reading configs, shared memory, stats, trace, logs."""

MIN_ADMIN_KEY_CHARS = 16
# Triton parses "<apis>:<key>=<value>", so the value must not carry ':', ',' or '='; header values
# must not carry whitespace or control characters either.
_ADMIN_KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]+")

SECURITY_FLAGS = frozenset(
    {
        "--grpc-use-ssl",
        "--grpc-use-ssl-mutual",
        "--grpc-server-cert",
        "--grpc-server-key",
        "--grpc-root-cert",
        "--grpc-restricted-protocol",
        "--http-restricted-api",
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


def read_admin_key(path: Path | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The admin key from ``path``, else ``$FASHIONBOX_ADMIN_KEY_FILE``, else ``$FASHIONBOX_ADMIN_KEY``; or None.

    A key file holds the key on its first line (a trailing newline is fine).
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(f"{ENV_PREFIX}ADMIN_KEY_FILE", "").strip():
        path = Path(env[f"{ENV_PREFIX}ADMIN_KEY_FILE"].strip())
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityError(f"admin key file {os.fspath(path)!r} cannot be read: {exc}") from exc
        lines = text.splitlines()
        return check_admin_key(lines[0].strip() if lines else "")
    value = env.get(f"{ENV_PREFIX}ADMIN_KEY", "").strip()
    return check_admin_key(value) if value else None


def security_arguments(
    tls: ServerTls | None, admin_key: str | None, *, repository_key: str | None = None
) -> list[str]:
    """Triton flags for TLS and the admin restriction (empty when nothing is set).

    ``repository_key`` locks only the model-repository API, for a server whose owner needs it
    (to drain before stopping) but whose user set no admin key; an admin key locks it anyway.
    """
    arguments = tls.arguments() if tls is not None else []
    if admin_key is not None:
        restriction = f"{','.join(ADMIN_APIS)}:{ADMIN_KEY_NAME}={check_admin_key(admin_key)}"
    elif repository_key is not None:
        restriction = f"model-repository:{ADMIN_KEY_NAME}={check_admin_key(repository_key)}"
    else:
        return arguments
    return [*arguments, f"--grpc-restricted-protocol={restriction}", f"--http-restricted-api={restriction}"]


def new_repository_key() -> str:
    """A random key for :func:`security_arguments`' ``repository_key``: known only to this process."""
    return secrets.token_urlsafe(24)


def redact(command: Sequence[str], *secrets_: str | None) -> list[str]:
    """``command`` with every occurrence of each secret replaced, for logs."""
    words = list(command)
    for secret in secrets_:
        if secret:
            words = [word.replace(secret, _REDACTED) for word in words]
    return words
