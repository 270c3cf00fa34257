"""The catalog's exceptions: one root, a shallow tree (docs/STYLE.md rule 3).

::

    CatalogError
    ├── DatabaseError        the database cannot be reached, started or migrated (driver error chained)
    ├── QueryError           a malformed filter, threshold or board name (the caller's mistake)
    └── UploadRejected       an upload too large or of a type the catalog does not take (``status`` 413 / 415)
"""

from __future__ import annotations


class CatalogError(Exception):
    """Root of every error the catalog raises on purpose."""


class DatabaseError(CatalogError):
    """The database could not be started, reached or migrated; the driver's error is chained."""


class QueryError(CatalogError, ValueError):
    """A query's filters or options are malformed."""


class UploadRejected(CatalogError):
    """An uploaded file is refused: ``status`` is the HTTP status the web page answers with."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
