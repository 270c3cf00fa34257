"""The converter's error: a bad spec, a bad combination of options, or a model that fails its checks."""

from __future__ import annotations

__all__ = ["ConvertError"]


class ConvertError(ValueError):
    """A bad spec, a bad combination of options, or a model that fails its checks."""
