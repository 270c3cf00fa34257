"""Embeddings in the catalog: which model made a vector, its HNSW index, and vectors as SQL values.

Vectors of different models are never compared: each stored vector carries the id of its row in
``embedding_models`` (name as the server sends it in ``PackedEmbedding.model``, kind ``garment``
or ``image``, dimension). The embedding columns are pgvector ``vector`` without a fixed dimension,
so each model gets its own HNSW index on ``(embedding::halfvec(d))`` restricted to its model id
(pgvector's documented way to index a column of mixed dimensions), created when the model is first
stored (:func:`ensure_model`); a query uses it by ordering by ``embedding::halfvec(d) <=> q`` under
``embedding_model_id = <id>``, the id written into the SQL as an integer (a parameter would let a
generic prepared plan miss the partial index).

Garment vectors are searched in the narrow table ``garment_vectors`` (schema version 3: the
garment's id, image, model, category, flags, attribute labels and the vector as ``halfvec``, kept
by triggers on ``garments``): the model's index is built there (``WHERE model_id = <id>``), and
each (model, category) has a partial index of its own (:meth:`EmbeddingModel.category_index_name`),
so that a category filter is an unfiltered search inside its category. Image vectors stay in
``images``.

Why ``halfvec``: the server sends float16 vectors by default (``fashionbox.contract.embedding``),
so half precision loses nothing it had, and the index is 30 % smaller: at 100,000 garments it then
fits beside the table in the embedded PostgreSQL's 128 MB of shared buffers, and filtered queries
ran 2-2.5x faster than on a ``vector`` index (BENCHMARKS.md, "Catalog: visual search"). Similarities
are still computed from the stored float32 values (``vector(d)``), and it indexes up to 4,000
dimensions (``vector``: 2,000).

The indexes as a whole: :func:`expected_vector_indexes` lists those the stored vectors call for,
:func:`repair_vector_indexes` builds the missing ones (opening a catalog does), and :class:`BulkLoad`
takes them all down while an indexing run writes many vectors and builds them once at its end.

Usage::

    model = ensure_model(conn, "fashionbox@1", "garment", 128)    # EmbeddingModel(id, ...)
    conn.execute(f"... ORDER BY g.embedding::{model.cast} <=> %s::{model.cast}", (vector_literal(v),))
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import psycopg

from .errors import CatalogError
from .schema import BULK_LOAD_LOCK

logger = logging.getLogger(__name__)

Kind = Literal["garment", "image"]

HNSW_MAX_HALFVEC_DIMENSION = 4000
"""pgvector's HNSW indexes ``halfvec`` up to 4,000 dimensions; a wider model is searched exactly."""
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
"""pgvector's defaults; ``tests/benchmarks/bench_catalog_similar.py`` measures recall@10 against exact search."""

_TABLES: dict[str, str] = {"garment": "garment_vectors", "image": "images"}
_MODEL_COLUMNS: dict[str, str] = {"garment": "model_id", "image": "embedding_model_id"}


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """One row of ``embedding_models``."""

    id: int
    name: str
    kind: Kind
    dimension: int

    @property
    def cast(self) -> str:
        """The SQL type of the model's vectors as stored: similarities are computed on it."""
        return f"vector({int(self.dimension)})"

    @property
    def index_cast(self) -> str:
        """The SQL type the model's HNSW index is built on (and a query orders by to use it)."""
        return f"halfvec({int(self.dimension)})"

    @property
    def indexed(self) -> bool:
        return self.dimension <= HNSW_MAX_HALFVEC_DIMENSION

    @property
    def table(self) -> str:
        return _TABLES[self.kind]

    @property
    def model_column(self) -> str:
        """The column of :attr:`table` that holds the model id."""
        return _MODEL_COLUMNS[self.kind]

    @property
    def index_name(self) -> str:
        if self.kind == "garment":
            return f"garment_vectors_hnsw_{int(self.id)}"
        return f"{self.table}_embedding_hnsw_{int(self.id)}"

    def category_index_name(self, category_id: int) -> str:
        """The partial HNSW index of this (garment) model's vectors of one category (schema version 3's
        ``garment_vector_index`` builds it under this name)."""
        return f"garment_vectors_hnsw_{int(self.id)}_{int(category_id)}"

    def category_index_ddl(self, category_id: int) -> str:
        """``CREATE INDEX`` of the partial HNSW index of this (garment) model's vectors of one category (the
        statement schema version 3's ``garment_vector_index`` runs)."""
        return (f"CREATE INDEX IF NOT EXISTS {self.category_index_name(category_id)} ON garment_vectors USING hnsw "
                f"((embedding::{self.index_cast}) halfvec_cosine_ops) "
                f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
                f"WHERE model_id = {int(self.id)} AND category_id = {int(category_id)}")

    def index_ddl(self) -> str:
        """``CREATE INDEX`` of this model's HNSW index (cosine distance), restricted to its rows: garment
        vectors in ``garment_vectors``, image vectors in ``images``."""
        return (f"CREATE INDEX IF NOT EXISTS {self.index_name} ON {self.table} USING hnsw "
                f"((embedding::{self.index_cast}) halfvec_cosine_ops) "
                f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
                f"WHERE {self.model_column} = {int(self.id)}")


def vector_literal(vector: npt.ArrayLike) -> str:
    """A vector as pgvector's text form ``[x1,x2,...]`` (exact: the shortest text that reads back the float32)."""
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    if array.size == 0 or not np.isfinite(array).all():
        raise CatalogError("a vector must be non-empty and finite")
    return "[" + ",".join(str(x) for x in array.tolist()) + "]"


def ensure_model(conn: psycopg.Connection[Any], name: str, kind: Kind, dimension: int, *,
                 index: bool = True) -> EmbeddingModel:
    """The ``embedding_models`` row of (``name``, ``kind``), inserted with its HNSW index when new
    (``index`` false: without it, during a :class:`BulkLoad`, whose end builds it).

    Call it inside the transaction that stores the model's first vectors: the row and its index
    commit with them (a second indexer waits on the row's insert and then finds both).
    """
    if not name:
        raise CatalogError("an embedding without a model name cannot be stored: vectors of unknown models "
                           "cannot be compared")
    if dimension < 1:
        raise CatalogError(f"an embedding's dimension must be positive, got {dimension}")
    inserted = conn.execute(
        "INSERT INTO embedding_models (name, kind, dimension) VALUES (%s, %s, %s) ON CONFLICT (name, kind) "
        "DO NOTHING RETURNING id", (name, kind, dimension)).fetchone()
    if inserted is not None:
        model = EmbeddingModel(int(inserted[0]), name, kind, dimension)
        if model.indexed and index:
            conn.execute(model.index_ddl())
        return model
    row = conn.execute("SELECT id, dimension FROM embedding_models WHERE name = %s AND kind = %s",
                       (name, kind)).fetchone()
    assert row is not None
    model = EmbeddingModel(int(row[0]), name, kind, int(row[1]))
    if model.dimension != dimension:
        raise CatalogError(f"the server sent {dimension}-d {kind} vectors of model {name!r}, whose vectors in "
                           f"this catalog have {model.dimension} dimensions: a model name must name one model")
    return model


def models(conn: psycopg.Connection[Any], kind: Kind | None = None) -> list[EmbeddingModel]:
    """The catalog's embedding models (of ``kind``), oldest first."""
    rows = conn.execute("SELECT id, name, kind, dimension FROM embedding_models WHERE %s::text IS NULL "
                        "OR kind = %s ORDER BY id", (kind, kind)).fetchall()
    return [EmbeddingModel(int(i), str(n), k, int(d)) for i, n, k, d in rows]


# -- the vector indexes as a whole: which should exist, which do, bulk loads -------------------------------

@dataclass(frozen=True, slots=True)
class VectorIndex:
    """One HNSW index the catalog's vectors should have."""

    name: str
    table: str
    ddl: str
    model_id: int
    category_id: int | None = None
    """Set for a (garment model, category) pair's partial index, listed in ``garment_vector_indexes`` once built."""


def expected_vector_indexes(conn: psycopg.Connection[Any]) -> list[VectorIndex]:
    """Every HNSW index the stored vectors call for: each model's (up to 4,000 dimensions), and each
    (garment model, category) pair's that has vectors (one btree probe per pair)."""
    indexed = [model for model in models(conn) if model.indexed]
    expected = [VectorIndex(model.index_name, model.table, model.index_ddl(), model.id) for model in indexed]
    by_id = {m.id: m for m in indexed if m.kind == "garment"}
    pairs = conn.execute(
        "SELECT m.id, c.id FROM embedding_models m CROSS JOIN garment_categories c WHERE m.kind = 'garment' "
        "AND EXISTS (SELECT 1 FROM garment_vectors v WHERE v.model_id = m.id AND v.category_id = c.id) "
        "ORDER BY m.id, c.id").fetchall()
    for model_id, category_id in pairs:
        garment_model = by_id.get(int(model_id))
        if garment_model is not None:
            expected.append(VectorIndex(garment_model.category_index_name(int(category_id)), "garment_vectors",
                                        garment_model.category_index_ddl(int(category_id)), garment_model.id,
                                        int(category_id)))
    return expected


def present_vector_indexes(conn: psycopg.Connection[Any], names: Sequence[str]) -> dict[str, bool]:
    """Which of the indexes ``names`` exist, each with ``pg_index.indisvalid``."""
    rows = conn.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE c.relname = ANY(%s) AND c.relnamespace = current_schema()::regnamespace",
                        (list(names),)).fetchall()
    return {str(name): bool(valid) for name, valid in rows}


def missing_vector_indexes(conn: psycopg.Connection[Any]) -> list[VectorIndex]:
    """The expected indexes that do not exist or are not valid (a killed bulk run's, say)."""
    expected = expected_vector_indexes(conn)
    present = present_vector_indexes(conn, [i.name for i in expected])
    return [i for i in expected if not present.get(i.name, False)]


def bulk_load_running(conn: psycopg.Connection[Any]) -> bool:
    """Is a bulk load (:class:`BulkLoad`) running in any session, this one included?"""
    row = conn.execute("SELECT garment_vector_bulk_load_running()").fetchone()
    return bool(row and row[0])


HEAP_ORDER_RUNS = 16
"""A bulk load puts ``garment_vectors`` in (model, run, category) order, the run being ``garment_id`` modulo
this: a category's rows then lie on this many stretches of pages (an exact scan of it reads about as many
pages as in plain (model, category) order: at most two more a stretch), while every sixteenth of the heap
holds every category. pgvector builds an HNSW index by reading the heap in order; built over a heap sorted
by category, the model's index was inserted one category after another, and where a category's vectors
lie together (as garments of one category do) its unfiltered recall@10 fell to 0.94 at 200,000 and 0.89
at 400,000 synthetic garments, against 0.98-0.99 from the heap in insertion order or in this one
(``tests/benchmarks/bench_catalog_order.py``, ``results/catalog_order.json``; vectors whose category is
unrelated to them, as in ``bench_catalog_similar.py``, lost nothing to either order)."""


def heap_order_index_ddl(table: str, name: str) -> str:
    """``CREATE INDEX`` of the btree that :class:`BulkLoad` ``CLUSTER``-s ``table`` (``garment_vectors``, or a
    benchmark's copy of it) on, then drops: (model, ``garment_id`` modulo :data:`HEAP_ORDER_RUNS`, category)."""
    return (f"CREATE INDEX {name} ON {table} (model_id, (garment_id % {int(HEAP_ORDER_RUNS)}), category_id)")


MAINTENANCE_WORK_MEM_MB = (64, 1024)
"""The bounds of ``maintenance_work_mem`` for an index build: twice the table's size (its other indexes
included) within them (an HNSW build is fastest while its graph fits; PostgreSQL's default is 64 MB)."""


def _maintenance_work_mem_mb(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()
    size_mb = int(row[0]) // (1 << 20) if row else 0
    low, high = MAINTENANCE_WORK_MEM_MB
    return max(low, min(high, 2 * size_mb))


def build_vector_indexes(conn: psycopg.Connection[Any], indexes: Sequence[VectorIndex], *, wait: bool) -> int:
    """Build ``indexes``, each in its own transaction (a kill keeps those done); how many were built.

    ``wait`` false: an index whose table another transaction is writing now is left for later
    (``NOWAIT``, as schema version 3's builds at commit); true: wait for that transaction (an
    indexer's own end of a bulk load). An invalid index of that name is dropped first.
    """
    built = 0
    memory: dict[str, int] = {}
    for index in indexes:
        if index.table not in memory:
            memory[index.table] = _maintenance_work_mem_mb(conn, index.table)
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL maintenance_work_mem = '{int(memory[index.table])}MB'")
                conn.execute(f"LOCK TABLE {index.table} IN SHARE MODE{'' if wait else ' NOWAIT'}")
                if present_vector_indexes(conn, [index.name]).get(index.name) is False:
                    conn.execute(f"DROP INDEX IF EXISTS {index.name}")
                conn.execute(index.ddl)
                if index.category_id is not None:
                    conn.execute("INSERT INTO garment_vector_indexes (model_id, category_id) VALUES (%s, %s) "
                                 "ON CONFLICT DO NOTHING", (index.model_id, index.category_id))
        except psycopg.errors.LockNotAvailable:
            continue
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            continue  # another session built it at the same moment
        built += 1
    return built


def repair_vector_indexes(conn: psycopg.Connection[Any], *, wait: bool = False) -> int:
    """Build the vector indexes that should exist and do not (a killed bulk run left them out, or a
    commit found another writer busy), unless a bulk load is running (its end builds them); how many."""
    if bulk_load_running(conn):
        return 0
    missing = missing_vector_indexes(conn)
    if not missing:
        return 0
    logger.info("building %d missing vector index%s", len(missing), "" if len(missing) == 1 else "es")
    return build_vector_indexes(conn, missing, wait=wait)


class BulkLoad:
    """The vector indexes down while many vectors are written, built once at the end.

    An HNSW index updated row by row costs far more than one built over the rows afterwards (each
    insert searches the graph); an indexer writing as many images as the catalog holds, or more,
    spends most of PostgreSQL's CPU there (BENCHMARKS.md, "Catalog"). :meth:`begin` takes a session
    advisory lock (``schema.BULK_LOAD_LOCK``), drops every vector index and empties
    ``garment_vector_indexes``; while the lock is held no commit and no opening of the catalog builds
    one. Queries stay correct meanwhile: without an index they compute every distance (exact,
    slower). :meth:`finish` builds them all and lets go of the lock. A run that stops half-way
    (:meth:`abandon`, or a killed process, whose connection takes the lock with it) leaves them out:
    the next indexing run or the next opening of the catalog builds them (:func:`repair_vector_indexes`).

    Usage::

        bulk = BulkLoad.begin(conn)           # None when another bulk load holds the lock
        ...                                    # write the rows
        bulk.finish()                          # CREATE INDEX for each, then ANALYZE
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self.build_s = 0.0
        """Seconds :meth:`finish` took to build the indexes."""

    @classmethod
    def begin(cls, conn: psycopg.Connection[Any]) -> BulkLoad | None:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (BULK_LOAD_LOCK,)).fetchone()
        if not (row and row[0]):
            logger.info("another bulk load is running: this run keeps the vector indexes row by row")
            return None
        try:
            with conn.transaction():
                # every HNSW index of the two tables, those of pairs with no vectors left (a TRUNCATE) included
                dropped = [str(name) for (name,) in conn.execute(
                    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'hnsw' "
                    "AND i.indrelid IN ('garment_vectors'::regclass, 'images'::regclass) ORDER BY 1").fetchall()]
                for name in dropped:
                    conn.execute(f'DROP INDEX IF EXISTS "{name}"')
                conn.execute("DELETE FROM garment_vector_indexes")
        except BaseException:
            conn.execute("SELECT pg_advisory_unlock(%s)", (BULK_LOAD_LOCK,))
            raise
        logger.info("bulk load: %d vector indexes dropped, built again at the end", len(dropped))
        return cls(conn)

    def finish(self) -> int:
        """Put ``garment_vectors`` in (model, run, category) order, build every vector index the rows call for
        (waiting for other writers), ``ANALYZE``, release.

        The order (``CLUSTER`` on a btree made for it and dropped after, a rewrite of the narrow table and its
        btrees, cheap beside the HNSW builds; queries wait for it) puts a category's rows on a few stretches of
        pages instead of spread over all: what an exact scan of a category reads (its filter then costs pages
        in proportion to the category, not to the table). Not plain (model, category) order: the HNSW builds
        that follow read the heap in order, and an index built one category after another is a worse graph
        (:data:`HEAP_ORDER_RUNS`)."""
        start = time.perf_counter()
        conn = self._conn
        try:
            # One transaction, its statements in one pipeline: on a small run the fixed costs (a round trip and a
            # commit per statement) were most of the build, and the server idles meanwhile. Not waiting for the
            # commit's WAL flush risks nothing: indexes lost in a crash are built by the next run or opening.
            memory = _maintenance_work_mem_mb(conn, "garment_vectors")
            with conn.transaction():
                missing = missing_vector_indexes(conn)
                with conn.pipeline():
                    conn.execute(f"SET LOCAL maintenance_work_mem = '{int(memory)}MB'")
                    conn.execute("SET LOCAL synchronous_commit = off")
                    # in the writers' order (images, then garment_vectors by trigger): waits, never a deadlock
                    conn.execute("LOCK TABLE images IN SHARE MODE")
                    conn.execute("LOCK TABLE garment_vectors IN ACCESS EXCLUSIVE MODE")  # what CLUSTER takes
                    conn.execute(heap_order_index_ddl("garment_vectors", "garment_vectors_heap_order"))
                    conn.execute("CLUSTER garment_vectors USING garment_vectors_heap_order")
                    conn.execute("DROP INDEX garment_vectors_heap_order")
                    for index in missing:
                        conn.execute(index.ddl)
                        if index.category_id is not None:
                            conn.execute("INSERT INTO garment_vector_indexes (model_id, category_id) VALUES (%s, %s) "
                                         "ON CONFLICT DO NOTHING", (index.model_id, index.category_id))
                    conn.execute("ANALYZE garment_vectors")
            built = len(missing)
        finally:
            self.abandon()
            self.build_s = time.perf_counter() - start
        logger.info("bulk load: %d vector indexes built in %.1f s", built, self.build_s)
        return built

    def abandon(self) -> None:
        """Let go of the lock and leave the indexes out (built by the next run or opening of the catalog)."""
        if not self._conn.closed and self._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):  # a broken connection has let go of it already
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (BULK_LOAD_LOCK,))


def normalised(vector: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``vector`` at unit length (a query that is not, a float16 round trip: cosine needs no more)."""
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(array))
    if not np.isfinite(norm) or norm == 0.0:
        raise CatalogError("a query vector must be finite and not zero")
    out: npt.NDArray[np.float32] = array / norm
    return out


_BLOCK_ENTRIES = 1 << 25


def cosine_pairs(vectors: npt.NDArray[np.float32], min_cosine: float, *, block: int = 2048) -> list[tuple[int, int]]:
    """Index pairs ``(a, b)``, ``a < b``, of unit vectors whose cosine similarity is at least ``min_cosine``.

    Exact (every pair is looked at), in blocks of at most ``block`` rows and 32 M similarities
    (128 MB) at a time.
    """
    n = len(vectors)
    pairs: list[tuple[int, int]] = []
    if n < 2:
        return pairs
    block = max(1, min(block, _BLOCK_ENTRIES // n))
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        similarity = data[start:stop] @ data[start:].T  # rows against themselves and everything after
        rows, cols = np.nonzero(similarity >= min_cosine)
        a = rows + start
        b = cols + start
        keep = a < b
        pairs.extend(zip(a[keep].tolist(), b[keep].tolist(), strict=True))
    return sorted(pairs)


CANDIDATE_COSINE = 0.5
"""Two photos are compared garment by garment only when some garment of one has a garment of the
other at least this similar (found for all garments at once by :func:`cosine_pairs`)."""


def garment_set_similarity(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """How alike two photos' garments are: each garment's best cosine in the other photo, averaged,
    the smaller of the two directions (so a photo is not a copy of a larger one it is part of, and a
    garment missing from one side counts against it). ``a``, ``b``: unit vectors ``[n, d]``, ``[m, d]``."""
    if len(a) == 0 or len(b) == 0:
        return -1.0
    similarity = a @ b.T
    return float(min(similarity.max(axis=1).mean(), similarity.max(axis=0).mean()))


def matching_photos(owners: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32],
                    min_similarity: float) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of photos (``owners[k]`` is the photo of garment ``k``) whose garments
    match: :func:`garment_set_similarity` at least ``min_similarity``.

    A transformed copy (mirrored, cropped, recoloured) keeps its garments, each of which the garment
    embedding, trained across poses, scales, light and crops, still recognises; two different photos
    share few garments, so their average best match stays low even when their whole-image vectors are
    close (generated scenes: BENCHMARKS.md, "Catalog: visual search")."""
    candidates = {(int(owners[i]), int(owners[j])) for i, j in cosine_pairs(vectors, min(min_similarity,
                                                                                           CANDIDATE_COSINE))}
    by_photo: dict[int, list[int]] = {}
    for k, owner in enumerate(owners.tolist()):
        by_photo.setdefault(int(owner), []).append(k)
    pairs = []
    for a, b in sorted({(min(x, y), max(x, y)) for x, y in candidates if x != y}):
        if garment_set_similarity(vectors[by_photo[a]], vectors[by_photo[b]]) >= min_similarity:
            pairs.append((a, b))
    return pairs
