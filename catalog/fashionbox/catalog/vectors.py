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

Usage::

    model = ensure_model(conn, "fashionbox@1", "garment", 128)    # EmbeddingModel(id, ...)
    conn.execute(f"... ORDER BY g.embedding::{model.cast} <=> %s::{model.cast}", (vector_literal(v),))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import psycopg

from .errors import CatalogError

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


def ensure_model(conn: psycopg.Connection[Any], name: str, kind: Kind, dimension: int) -> EmbeddingModel:
    """The ``embedding_models`` row of (``name``, ``kind``), inserted with its HNSW index when new.

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
        if model.indexed:
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
