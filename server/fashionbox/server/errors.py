"""The launcher's exceptions::

    ServerError
     ├── ConfigError (also a ValueError)   invalid ServerConfig, flag or FASHIONBOX_* variable
     └── ServerStartError                  the server did not come up; ``log_tail`` holds its last lines
          ├── RepositoryError              missing repository, or one without models
          └── PortInUseError               ``port`` is taken; the message says how to pick another
"""

from __future__ import annotations

from fashionbox.contract import ENV_PREFIX

__all__ = ["ConfigError", "PortInUseError", "RepositoryError", "ServerError", "ServerStartError"]


class ServerError(Exception):
    """Root of every error the launcher raises."""


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
