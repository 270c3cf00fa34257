"""Which exceptions the CLI reports as one line instead of a traceback.

Library code raises typed errors from each part's own tree; this is the one place that
decides which of them are a user's mistake (bad flag, missing file, server down) and so
deserve a plain message rather than a traceback.
"""

from __future__ import annotations

__all__ = ["user_facing"]

# Matched by qualified name through the MRO, so nothing heavy (torch) is imported to check.
_USER_ERRORS = frozenset({
    "fashionbox.commands.calibration.CalibrationError",
    "fashionbox.contract.labels.LabelMapError",
    "fashionbox.core.imaging.InvalidImageError",
    "fashionbox.converter.errors.ConvertError",
    "fashionbox.converter.export.ExportError",
    "fashionbox.models.CheckpointError",
    "fashionbox.server.errors.ServerError",
    "fashionbox.client._exceptions.FashionBoxError",
})


_ACCESS_DENIED = "fashionbox.client._exceptions.AccessDenied"
_ADMIN_KEY_HINT = ("the server keeps this behind its admin key (the secure profile): give it with "
                  "--admin-key-file FILE")


def user_facing(exc: BaseException) -> str | None:
    """A one-line message for errors a user can act on; ``None`` for bugs (show the traceback)."""
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return str(exc)
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}
    if names & _USER_ERRORS:
        hint = f" ({_ADMIN_KEY_HINT})" if _ACCESS_DENIED in names else ""
        return f"{type(exc).__name__}: {exc}{hint}"
    return None
