"""The catalog: a photo collection indexed through the server into PostgreSQL, searched by attributes.

Usage::

    from fashionbox.catalog import Catalog, Database, Indexer, SearchFilter
    from fashionbox.client import FashionClient

    db = Database.open(catalog=Path("artifacts/catalog"))     # embedded PostgreSQL + pgvector
    with FashionClient("127.0.0.1:8001") as client:
        Indexer(db, client).index_folder(Path("photos"))      # incremental, resumable
    catalog = Catalog(db)
    hits = catalog.search(SearchFilter(category="dress", attributes=(("sleeve length", "wrist-length"),)))
    groups = catalog.duplicates()                             # [[path, ...], ...]

The command line is ``fashionbox catalog index|search|duplicates|web`` (:mod:`fashionbox.catalog.cli`);
the web page is :func:`fashionbox.catalog.web.create_app`. Modules: ``database`` (connections,
the embedded server, migrations), ``schema`` (the migrations), ``hashing`` (SHA-256, pHash),
``indexer``, ``queries``, ``web``, ``errors`` (the exception tree).
"""

from .database import DEFAULT_CATALOG, Database, redact_url
from .errors import CatalogError, DatabaseError, QueryError, UploadRejected
from .indexer import Indexer, IndexReport, Progress, find_images
from .queries import DEFAULT_MAX_DISTANCE, Catalog, GarmentHit, ImageHit, SearchFilter, parse_attribute

__all__ = [
    "DEFAULT_CATALOG",
    "DEFAULT_MAX_DISTANCE",
    "Catalog",
    "CatalogError",
    "Database",
    "DatabaseError",
    "GarmentHit",
    "ImageHit",
    "IndexReport",
    "Indexer",
    "Progress",
    "QueryError",
    "SearchFilter",
    "UploadRejected",
    "find_images",
    "parse_attribute",
    "redact_url",
]
