"""The catalog: a photo collection indexed through the server into PostgreSQL, searched by attributes.

Usage::

    from fashionbox.catalog import Catalog, Database, Indexer, SearchFilter
    from fashionbox.client import FashionClient

    db = Database.open(catalog=Path("artifacts/catalog"))     # embedded PostgreSQL + pgvector
    with FashionClient("127.0.0.1:8001") as client:
        Indexer(db, client).index_folder(Path("photos"))      # incremental, resumable
    catalog = Catalog(db)
    hits = catalog.search(SearchFilter(category="dress", attributes=(("sleeve length", "wrist-length"),)))
    start, similar = catalog.similar_to(Path("query.jpg"), garment=1)   # garments like garment 1 of a photo
    groups = catalog.duplicates()                             # [[path, ...], ...]: exact, near, transformed

The command line is ``fashionbox catalog index|prune|info|export|search|similar|duplicates|web``
(:mod:`fashionbox.catalog.cli`); the web page is :func:`fashionbox.catalog.web.create_app`. Modules:
``database`` (connections, the embedded server, migrations), ``schema`` (the migrations), ``hashing``
(SHA-256, pHash), ``vectors`` (embedding models, their HNSW indexes, vectors as SQL values), ``indexer``,
``prune`` (images whose files are gone leave the catalog), ``summary`` (what it holds), ``export`` (a
board's photos into a folder or a zip), ``ray_indexer`` (``index --ray``: the same indexer on Ray Data,
the ``ray`` extra), ``queries``, ``web``, ``webguard`` (the page's guard against other sites),
``errors`` (the exception tree).
"""

from .database import DEFAULT_CATALOG, Database, redact_url
from .errors import CatalogError, DatabaseError, QueryError, UploadRejected
from .indexer import Indexer, IndexReport, Progress, find_images
from .queries import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_COSINE,
    Catalog,
    GarmentHit,
    ImageHit,
    QueryGarment,
    SearchFilter,
    parse_attribute,
)
from .vectors import EmbeddingModel

__all__ = [
    "DEFAULT_CATALOG",
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MIN_COSINE",
    "Catalog",
    "CatalogError",
    "Database",
    "DatabaseError",
    "EmbeddingModel",
    "GarmentHit",
    "ImageHit",
    "IndexReport",
    "Indexer",
    "Progress",
    "QueryError",
    "QueryGarment",
    "SearchFilter",
    "UploadRejected",
    "find_images",
    "parse_attribute",
    "redact_url",
]
