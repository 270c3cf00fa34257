"""How FashionBox's command-line tools connect to a server, secure profile included.

Each tool takes the server's address as ``--url``; the rest of the connection comes from the
``FASHIONBOX_*`` variables the client reads (:meth:`ClientConfig.from_env`: TLS, headers, timeouts,
retries), with these flags over them, so ``fashionbox detect``, ``eval``, ``loadtest`` and the
catalog's commands reach a server started with ``fashionbox serve --secure`` (TLS or mutual TLS,
the admin APIs behind a key) as a program using the client does:

``--tls-ca PEM``
    the CA that signed the server's certificate (TLS; without it, the system's roots)
``--tls-cert PEM`` and ``--tls-key PEM``
    this client's certificate chain and key, for a server that checks them (mutual TLS)
``--tls-server-name NAME``
    the name to expect in the server's certificate, when it is not the host in ``--url``
``--admin-key-file FILE``
    the admin key, sent as ``triton-grpc-protocol-admin-key`` with every call: the secure profile
    restricts the label map, model information and statistics to it (``eval`` reads the labels)

Usage::

    add_connection_arguments(parser)
    args = parser.parse_args()
    connection = connection_from_arguments(args)       # a ClientConfig; its url is the default
    with FashionClient(args.url, config=connection) as client:
        ...

The files are read at once: a missing or unreadable one is a :class:`ConfigError` naming it before
any call, and the configuration carries the PEM bytes, so it can be sent to other processes (the
catalog's Ray workers) that do not see the files.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionbox.contract import ADMIN_GRPC_HEADER, ENV_PREFIX

from ._config import ClientConfig, TlsConfig
from ._exceptions import ConfigError

__all__ = ["GrpcSecurity", "add_connection_arguments", "connection_from_arguments", "grpc_security"]

_TLS_FLAGS = {"tls_ca": "root_certificates", "tls_cert": "certificate_chain", "tls_key": "private_key"}


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags above, in a group of their own."""
    group = parser.add_argument_group(
        "connection to a secure server",
        f"TLS and the admin key (fashionbox serve --secure); flags win over {ENV_PREFIX}TLS_* and {ENV_PREFIX}HEADERS")
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA certificates that signed the server's (TLS)")
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="this client's certificate chain (mutual TLS)")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="this client's private key (mutual TLS)")
    group.add_argument("--tls-server-name", metavar="NAME", help="the name to expect in the server's certificate")
    group.add_argument("--admin-key-file", type=Path, metavar="FILE",
                       help="the server's admin key (labels, model information, statistics in the secure profile)")


def connection_from_arguments(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ClientConfig:
    """:meth:`ClientConfig.from_env` with the flags of :func:`add_connection_arguments` over it, every
    file read now. Raises :class:`ConfigError` naming a flag, a file or a variable that is wrong."""
    config = ClientConfig.from_env(os.environ if environ is None else environ)
    given = {field: getattr(args, flag, None) for flag, field in _TLS_FLAGS.items()}
    server_name = getattr(args, "tls_server_name", None)
    tls = config.tls
    if any(value is not None for value in given.values()) or server_name is not None:
        base = tls or TlsConfig()
        tls = TlsConfig(**{field: _pem(flag, value) if value is not None else getattr(base, field)
                           for (flag, field), value in zip(_TLS_FLAGS.items(), given.values(), strict=True)},
                        server_name_override=server_name or base.server_name_override)
    if tls is not None:  # carry bytes, not paths
        root, key, chain = tls.load()
        tls = dataclasses.replace(tls, root_certificates=root, private_key=key, certificate_chain=chain)
    headers = dict(config.headers)
    key_file = getattr(args, "admin_key_file", None)
    if key_file is not None:
        headers[ADMIN_GRPC_HEADER] = _admin_key(key_file)
    return dataclasses.replace(config, tls=tls, headers=headers)


def _pem(flag: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--{flag.replace('_', '-')} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"--{flag.replace('_', '-')} {path}: not a PEM file (no -----BEGIN line)")
    return data


def _admin_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--admin-key-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not key:
        raise ConfigError(f"--admin-key-file {path}: the file is empty")
    return key


@dataclass(frozen=True)
class GrpcSecurity:
    """What a caller that opens its own gRPC channel (the load test's raw and tritonclient senders, its
    statistics probe) needs of a connection: :func:`grpc_security`."""

    credentials: Any
    """``grpc.ChannelCredentials`` for TLS, or ``None`` for plaintext."""
    options: tuple[tuple[str, str], ...]
    """Channel options: the name to expect in the server's certificate, where overridden."""
    metadata: tuple[tuple[str, str], ...]
    """Sent with every call: the headers (the admin key among them)."""

    @property
    def headers(self) -> dict[str, str]:
        """:attr:`metadata` as tritonclient's ``headers`` argument."""
        return dict(self.metadata)


def grpc_security(config: ClientConfig | None) -> GrpcSecurity:
    """``config``'s TLS and headers for a channel opened outside :class:`FashionClient` (``None``: plaintext,
    nothing sent)."""
    import grpc

    if config is None:
        return GrpcSecurity(None, (), ())
    options: tuple[tuple[str, str], ...] = ()
    credentials = None
    if config.tls is not None:
        root, key, chain = config.tls.load()
        credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
        if config.tls.server_name_override is not None:
            options = (("grpc.ssl_target_name_override", config.tls.server_name_override),)
    return GrpcSecurity(credentials, options, tuple((k.lower(), v) for k, v in config.headers.items()))

