"""Questions to the catalog: attribute search, duplicates, boards, one image's garments.

Usage::

    from fashionbox.catalog.queries import Catalog, SearchFilter

    catalog = Catalog(db)
    hits = catalog.search(SearchFilter(category="dress",
                                       attributes=(("sleeve length", "wrist-length"), ("neckline type", "v-neck"))))
    for hit in hits:                                   # ImageHit: one image, its matching garments, best first
        print(hit.image, hit.score, [g.category for g in hit.garments])
    groups = catalog.duplicates(max_distance=4)        # [[path, path, ...], ...]

Every statement is parameterised (psycopg 3); filters are values, never SQL text. A garment's
rank is its detection score times the score of each attribute the filter names, so a dress the
model is sure is a dress *and* sure has wrist-length sleeves ranks first; an image ranks by its
best matching garment. A board restricts any search to the images gathered in it.

Visual search (the vectors the server sends, issue 16): :meth:`Catalog.similar` ranks garments by
cosine similarity to a query vector, with the same ``SearchFilter`` as ``search`` in the same
SQL query (``_where`` on the narrow ``garment_vectors`` rows, schema version 3), grouped by image.
It orders by ``embedding::halfvec(d) <=> q`` under the model's id (and the category's id), which
the model's (or the model and category's) HNSW index answers (``SET LOCAL hnsw.ef_search``, with
pgvector's iterative scan so that a filter cannot starve it). Where a category and attribute filter
passes few garments against those asked for (:data:`SELECTIVE_FACTOR`; estimated from a sample of the
narrow table kept by the ``Catalog``, :class:`VectorStats`) it computes every distance instead, exactly;
other filters (a minimum score, a board, an image label) are first read exactly up to
:data:`EXACT_SEARCH_MAX_ROWS` garments, a scan that tells which case it is. :meth:`Catalog.similar_to`
finds the query garment in an indexed photo (by path or content) or sends a new photo through
the server; :meth:`Catalog.search_text` ranks by a text vector (``FashionClient.embed_text``).
Transformed-copy duplicates are a third kind of edge in :meth:`Catalog.duplicates` (photos whose
garments' vectors match, :func:`~fashionbox.catalog.vectors.matching_photos`), in the same union-find.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fashionbox.client import ClientConfig, FashionClient, ImageDetections

from .database import Database
from .errors import QueryError
from .hashing import hamming_many, sha256_hex
from .indexer import overlapped_flags
from .vectors import EmbeddingModel, cosine_pairs, matching_photos, models, normalised, vector_literal
from .vectors import Kind as EmbeddingKind

DEFAULT_MAX_DISTANCE = 6
"""Default pHash Hamming distance for near copies. Measured (tests/benchmarks/bench_catalog.py,
BENCHMARKS.md "Catalog"): re-encoded (JPEG q50-q70) and resized (50-75 %) copies of generated
scenes lie within 4 bits of their original (the hash of a reduced grey decode, ``hashing.py``;
2 bits for imagehash on the full decode), different scenes 16 bits and more apart; on real photos
imagededup's UKBench figures put the safe limit near 10 (docs/FIELD_NOTES.md). 6 keeps a margin on both sides, and the
search for pairs (:func:`near_pairs`) slows as the distance grows: 1-2 s at 6 bits, 18 s at 8 for
25,000 images."""

DEFAULT_LIMIT = 50

DEFAULT_MIN_COSINE = 0.75
"""Default garment-match similarity (each garment's best cosine in the other photo, averaged, the
smaller way: :func:`~fashionbox.catalog.vectors.garment_set_similarity`) from which two photos are
transformed copies (crop, flip, colour). Measured on generated scenes and copies
(tests/benchmarks/bench_catalog_similar.py, BENCHMARKS.md "Catalog: visual search"): different
scenes paired from 0.6 down, none at 0.7 and up; 0.75 keeps a margin and finds 0.9 of flipped,
all recoloured and half the cropped (central 80 %) copies. Whole-image vectors could not do this
here: flipped copies at cosine 0.37-0.79 of their original, different scenes up to 0.87."""

DEFAULT_EF_SEARCH = 100
"""HNSW candidate list size (``hnsw.ef_search``; pgvector's default is 40); raised to the number
of garments a query asks for when that is larger. Recall@10 against exact search measured in
tests/benchmarks/bench_catalog_similar.py."""

EXACT_SEARCH_MAX_ROWS = 2000
"""A filter that leaves at most this many garments of the model is answered by computing every
distance (exact, and about as fast as the index at that size); above it, by the HNSW index."""

CATEGORY_EF_SEARCH = 200
"""``hnsw.ef_search`` in a category's own HNSW index: recall@10 against exact search 0.967 at 100,
0.993 at 200, 1.0 at 400, at p50 3.0 / 3.9 / 5.1 ms (100,000 garments; BENCHMARKS.md, "Catalog:
visual search")."""

FILTERED_EF_SEARCH = 400
"""``hnsw.ef_search`` where more filters than the index holds apply (attributes inside a category, with
pgvector's iterative scan going on past it when too few pass). At 100,000 garments (a category of 8,400,
an attribute label passing a fifth of it; 150-300 queries each, load average 2-3.5): recall@10 0.967-0.980
/ 0.969-0.981 / 0.995-0.998 at 100 / 200 / 400, p50 3.0-3.3 / 2.7-3.3 / 3.7-4.3 ms, p99 4.4-4.9 / 3.6-4.8
/ 4.8-5.4 ms: 400 keeps recall well clear of 0.95 for about a millisecond (BENCHMARKS.md, "Catalog:
visual search")."""

CANDIDATES_PER_IMAGE = 3
"""A similarity query fetches this many nearest garments per image asked for, then groups them."""

SELECTIVE_FACTOR = 5
"""A filter is selective, and answered by computing every distance, when the garments it passes (estimated:
:class:`VectorStats`) are at most this many times the garments asked for, scaled by how many rows the exact
scan reads against the rows in the index searched (a category's own index: the same rows). An HNSW scan
with a filter visits about (garments asked for) / (fraction passing) entries, each dearer than a row of the
exact scan, whose cost is the rows it reads whatever the filter. Measured at 100,000 garments (a category of
8,400): the category's exact scan 7-8 ms at p50 (3.6-3.9 ms once a bulk run has put the table in category
order), the filtered HNSW scan 3.3-4.8 ms with 57 or 11 times the garments asked for passing, 5-5.3 ms at
p50 and 12-14 ms at p90 with about 2 times (BENCHMARKS.md, "Catalog: visual search")."""

STATS_SAMPLE_ROWS = 10_000
"""Rows of ``garment_vectors`` sampled (``TABLESAMPLE SYSTEM``) for :class:`VectorStats`: 13 ms at 100,000."""

STATS_MAX_AGE_S = 60.0
"""A :class:`Catalog` samples again when its :class:`VectorStats` are older than this."""

_MAX_LIMIT = 1000
_MAX_EF_SEARCH = 1000


def parse_attribute(text: str) -> tuple[str, str]:
    """``"sleeve length=wrist-length"`` -> ``("sleeve length", "wrist-length")``."""
    group, sep, label = text.partition("=")
    if not sep or not group.strip() or not label.strip():
        raise QueryError(f"an attribute filter is GROUP=LABEL (e.g. \"sleeve length=wrist-length\"), got {text!r}")
    return group.strip(), label.strip()


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """What a garment must be. Empty fields match everything."""

    category: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    """(group, label) pairs; a garment matches when its predicted label of each group is that label."""
    min_score: float = 0.0
    board: str | None = None
    """Only images on this board."""
    include_overlapped: bool = False
    """Also garments whose box a higher-scoring garment of another category covers (``overlapped``):
    the same thing seen as a second category, left out by default."""
    label: str | None = None
    """Only images whose top image-level label (a product vertical, say) is this one."""

    def __post_init__(self) -> None:
        if self.label is not None and not self.label.strip():
            raise QueryError("an image-level label filter must not be empty")
        if not 0.0 <= self.min_score <= 1.0:
            raise QueryError(f"min_score is a probability in [0, 1], got {self.min_score}")
        groups = [group for group, _ in self.attributes]
        if len(set(groups)) != len(groups):
            raise QueryError(f"each attribute group may be filtered once, got {groups}")


@dataclass(frozen=True, slots=True)
class GarmentHit:
    garment_id: int
    category: str
    box: tuple[float, float, float, float]
    score: float
    """Detection score."""
    attributes: dict[str, dict[str, Any]]
    """``{group: {"label", "score"}}`` as stored."""
    rank: float
    """Detection score times the score of each filtered attribute."""
    has_mask: bool = False


@dataclass(frozen=True, slots=True)
class ImageHit:
    image_id: int
    image: str
    """The path as indexed."""
    score: float
    """The best rank among its garments."""
    width: int | None
    height: int | None
    garments: tuple[GarmentHit, ...] = field(default_factory=tuple)

    def rows(self, *, rank_key: str = "score") -> list[dict[str, Any]]:
        """One JSON row per garment: ``image``, ``category``, ``box``, ``attributes``, ``score`` (the rank;
        ``rank_key`` renames it: ``similarity`` for visual search), ``detection_score``, ``garment_id``."""
        return [{"image": self.image, "image_id": self.image_id, "garment_id": g.garment_id, "category": g.category,
                 "box": list(g.box), "attributes": g.attributes, rank_key: g.rank, "detection_score": g.score}
                for g in self.garments]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    image_id: int
    image: str
    status: str
    error: str | None
    width: int | None
    height: int | None
    sha256: str
    phash: int | None
    garments: tuple[GarmentHit, ...]
    masks: tuple[dict[str, Any] | None, ...]
    boards: tuple[str, ...]
    labels: tuple[tuple[str, float], ...] = ()
    """Image-level labels (label, score), best first, as stored; empty without a classifier."""


@dataclass(frozen=True, slots=True)
class Facets:
    """What the catalog holds, for the filters of a form: categories and each group's labels."""

    categories: tuple[str, ...]
    attributes: dict[str, tuple[str, ...]]
    images: int
    garments: int
    failed: int


Kind = Literal["all", "exact", "near", "transformed"]


@dataclass(frozen=True, slots=True)
class QueryGarment:
    """The garment a ``similar`` query starts from: its vector and where it came from."""

    model: str
    """The embedding model's name: only vectors of this model are compared with it."""
    vector: np.ndarray[Any, np.dtype[np.float32]]
    category: str
    box: tuple[float, float, float, float]
    number: int
    """Its number in its photo (1 = the first detection, as the image page lists them)."""
    image_id: int | None = None
    """The indexed image it is in (left out of the answer with its exact copies), or ``None`` for a new photo."""
    garment_id: int | None = None


@dataclass(frozen=True, slots=True)
class VectorStats:
    """How many garments of each (model, category) the narrow table holds, and the share of each
    attribute label among them, estimated from a sample: what a query's plan is chosen by.

    PostgreSQL's own statistics cannot tell how many rows an attribute filter (``attributes @> ...``
    on ``jsonb``) passes; these can, assuming the groups independent, cheaply and a little stale (a
    wrong guess costs time, never a wrong answer: an index scan that comes up short is followed by the
    exact one)."""

    taken_at: float
    garments: dict[tuple[int, int], float]
    """(model id, category id) -> garments (estimated)."""
    shares: dict[tuple[int, int, str, str], float]
    """(model id, category id, group, label) -> the share of that (model, category)'s garments with the label."""

    @classmethod
    def sample(cls, conn: Any, *, rows: int = STATS_SAMPLE_ROWS) -> VectorStats:
        row = conn.execute("SELECT reltuples, pg_relation_size(oid) FROM pg_class "
                           "WHERE oid = 'garment_vectors'::regclass").fetchone()
        # The rows, roughly: the last ANALYZE's count (-1 if none; autovacuum's can lag) or the table's size at
        # about 400 bytes a row (128-d), whichever is larger. Only the sample's size depends on it.
        rough = max(float(row[0]), float(row[1]) / 400) if row else 0.0
        percent = 100.0 if rough <= rows else 100.0 * rows / rough
        counted = conn.execute(
            """WITH s AS MATERIALIZED (SELECT model_id, category_id, attributes FROM garment_vectors
                                       TABLESAMPLE SYSTEM (%s) REPEATABLE (0))
               SELECT model_id, category_id, NULL, NULL, count(*) FROM s GROUP BY 1, 2
               UNION ALL
               SELECT s.model_id, s.category_id, a.key, a.value ->> 'label', count(*)
               FROM s, jsonb_each(s.attributes) a GROUP BY 1, 2, 3, 4""", (percent,)).fetchall()
        # SYSTEM sampling reads about that share of the pages (the same ones while the table stays the same:
        # a query's plan does not change from one sample to the next)
        scale = 100.0 / percent
        garments = {(int(m), int(c)): int(n) * scale for m, c, group, _, n in counted if group is None}
        shares = {(int(m), int(c), str(group), str(label)): int(n) * scale / garments[int(m), int(c)]
                  for m, c, group, label, n in counted if group is not None and garments.get((int(m), int(c)))}
        return cls(time.monotonic(), garments, shares)

    def count(self, model_id: int, category_id: int | None) -> float:
        """Garments of the model (of the category)."""
        return sum(n for (m, c), n in self.garments.items()
                   if m == model_id and (category_id is None or c == category_id))

    def passing(self, model_id: int, category_id: int | None, attributes: Sequence[tuple[str, str]]) -> float:
        """Garments of the model (of the category) with every (group, label) of ``attributes``."""
        total = 0.0
        for (m, c), n in self.garments.items():
            if m == model_id and (category_id is None or c == category_id):
                for group, label in attributes:
                    n *= self.shares.get((m, c, group, label), 0.0)
                total += n
        return total


class Catalog:
    """The query API over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._models: dict[tuple[str, EmbeddingKind], EmbeddingModel] = {}
        self._categories: dict[tuple[int, str], tuple[int, bool]] = {}
        """(model id, category) -> (category id, has its own index), kept once the index exists."""
        self._stats: VectorStats | None = None

    # -- search ------------------------------------------------------------------------------------

    def search(self, query: SearchFilter, *, limit: int = DEFAULT_LIMIT, offset: int = 0) -> list[ImageHit]:
        """Images with garments matching ``query``, best first, each with its matching garments (best first)."""
        if limit < 1 or offset < 0:
            raise QueryError(f"limit must be >= 1 and offset >= 0, got {limit} and {offset}")
        if query.label is not None and not (query.category or query.attributes or query.min_score > 0):
            return self._by_label(query, limit=limit, offset=offset)
        where, params = _where(query)
        rank, rank_params = _rank(query)
        sql = f"""
            WITH matched AS (
                SELECT g.id, g.image_id, g.category, g.score, g.x1, g.y1, g.x2, g.y2, g.attributes,
                       g.mask_rle IS NOT NULL AS has_mask, {rank} AS rank
                FROM garments g
                WHERE {where}
            ), ranked AS (
                SELECT image_id, max(rank) AS best FROM matched GROUP BY image_id
                ORDER BY best DESC, image_id LIMIT %s OFFSET %s
            )
            SELECT r.image_id, i.path, r.best, i.width, i.height, m.id, m.category, m.score, m.x1, m.y1, m.x2, m.y2,
                   m.attributes, m.has_mask, m.rank
            FROM ranked r JOIN images i ON i.id = r.image_id JOIN matched m ON m.image_id = r.image_id
            ORDER BY r.best DESC, r.image_id, m.rank DESC, m.id
        """  # the interpolated parts are fixed SQL fragments; every value is a parameter
        with self.db.connect() as conn:
            rows = conn.execute(sql, [*rank_params, *params, limit, offset]).fetchall()
        return _group(rows)

    def search_rows(self, query: SearchFilter, *, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
        """:meth:`search` flattened to JSON rows, grouped by image in rank order."""
        return [row for hit in self.search(query, limit=limit) for row in hit.rows()]

    def _by_label(self, query: SearchFilter, *, limit: int, offset: int) -> list[ImageHit]:
        """Images whose top image-level label is ``query.label``, by its score, with their garments
        (a label is a fact about the whole photo: an image with no garment is found too)."""
        board_join, board_params = _board_join(query.board)
        overlapped = "" if query.include_overlapped else "AND NOT g.overlapped"
        with self.db.connect() as conn:
            rows = conn.execute(
                f"""WITH page AS (SELECT i.id, i.label_score FROM images i {board_join}
                                 WHERE i.label = %s AND i.status = 'indexed'
                                 ORDER BY i.label_score DESC, i.id LIMIT %s OFFSET %s)
                    SELECT i.id, i.path, p.label_score, i.width, i.height, g.id, g.category, g.score, g.x1, g.y1,
                           g.x2, g.y2, g.attributes, g.mask_rle IS NOT NULL, p.label_score * g.score
                    FROM page p JOIN images i ON i.id = p.id
                    LEFT JOIN garments g ON g.image_id = i.id {overlapped}
                    ORDER BY p.label_score DESC, i.id, g.score DESC, g.id""",
                [*board_params, query.label, limit, offset]).fetchall()
        return _group(rows, keep_image_score=True)

    # -- visual search -------------------------------------------------------------------------------

    def embedding_models(self, kind: EmbeddingKind | None = None) -> list[EmbeddingModel]:
        """The embedding models whose vectors the catalog holds (of ``kind``), oldest first."""
        with self.db.connect() as conn:
            return models(conn, kind)

    def _model(self, name: str, kind: EmbeddingKind, dimension: int) -> EmbeddingModel:
        # a model's row never changes once stored: kept per Catalog, a round trip less per query
        cached = self._models.get((name, kind))
        known = [cached] if cached is not None else self.embedding_models(kind)
        for model in known:
            if model.name == name:
                self._models[name, kind] = model
                if model.dimension != dimension:
                    raise QueryError(f"the query vector has {dimension} dimensions; {kind} vectors of model "
                                     f"{name!r} in this catalog have {model.dimension}")
                return model
        held = ", ".join(f"{m.name!r} ({m.dimension}-d)" for m in known) or "none"
        raise QueryError(f"this catalog holds no {kind} vectors of model {name!r} (it holds: {held}); vectors of "
                         f"different models are not comparable: index the photos with that model's server")

    def similar(self, vector: np.ndarray[Any, np.dtype[np.float32]], *, model: str,
                query: SearchFilter | None = None, limit: int = DEFAULT_LIMIT,
                exclude_images: Sequence[int] = (), ef_search: int | None = None,
                exact: bool | None = None) -> list[ImageHit]:
        """Images with garments like ``vector`` (a vector of embedding model ``model``) that match
        ``query``, most similar first, each with its nearest garments; ``GarmentHit.rank`` and
        ``ImageHit.score`` are cosine similarities.

        ``exact``: ``None`` chooses: a filter of a category and attributes is estimated (:class:`VectorStats`)
        and answered exactly when selective (:data:`SELECTIVE_FACTOR`), else through the HNSW index with
        pgvector's iterative scan (and exactly after all when the scan comes up short); other filters (a
        minimum score, a board, an image label) read at most :data:`EXACT_SEARCH_MAX_ROWS` filtered garments
        exactly first. ``True``/``False`` force it (the benchmark's recall against exact search).
        """
        query = query or SearchFilter()
        if not 1 <= limit <= _MAX_LIMIT:
            raise QueryError(f"limit must be in [1, {_MAX_LIMIT}], got {limit}")
        target = normalised(vector)
        chosen = self._model(model, "garment", int(target.size))
        candidates = limit * CANDIDATES_PER_IMAGE
        if ef_search is not None and not 1 <= ef_search <= _MAX_EF_SEARCH:
            raise QueryError(f"ef_search must be in [1, {_MAX_EF_SEARCH}] (pgvector's limit), got {ef_search}")

        def ef(default: int) -> int:  # past 1,000 candidates pgvector's iterative scan goes on beyond ef_search
            return max(ef_search or default, min(candidates, _MAX_EF_SEARCH))

        narrow, params = _where(replace(query, category=None), alias="v")
        excluded = [int(i) for i in exclude_images]
        literal = vector_literal(target)
        # No transaction and few round trips: each one waits for the server's turn on a busy machine, and
        # that wait, not the search, is what a p99 measures here (BENCHMARKS.md, "Catalog: visual search").
        with self.db.connect() as conn:
            category_id, category_indexed = None, False
            if query.category:
                known = self._categories.get((chosen.id, query.category))
                if known is None:
                    row = conn.execute(
                        "SELECT c.id, EXISTS (SELECT 1 FROM garment_vector_indexes x WHERE x.model_id = %s "
                        "AND x.category_id = c.id) FROM garment_categories c WHERE c.name = %s",
                        (chosen.id, query.category)).fetchone()
                    if row is None:
                        return []  # no garment of this category has a vector
                    known = (int(row[0]), bool(row[1]))
                    if known[1]:  # a category's id never changes; its index goes only during a bulk load, when the
                        self._categories[chosen.id, query.category] = known  # same SQL sorts the rows: exact
                category_id, category_indexed = known
            plain = not (query.attributes or query.min_score > 0 or query.board is not None or query.label is not None)
            estimable = query.min_score <= 0 and query.board is None and query.label is None
            if exact is None and chosen.indexed and estimable:
                exact = self._selective(conn, chosen.id, category_id, category_indexed, query.attributes, candidates)
                if not exact:
                    whole = plain and (category_id is None or category_indexed)  # the index holds what passes
                    rows = self._through_index(conn, chosen, narrow, params, excluded, literal, candidates, limit,
                                               category_id, ef(FILTERED_EF_SEARCH if not whole else DEFAULT_EF_SEARCH
                                                               if category_id is None else CATEGORY_EF_SEARCH))
                    if whole or (rows and int(rows[0][-1]) >= candidates):
                        return _group(rows, keep_image_score=True)
                    exact = True  # fewer passed than asked for: more selective than estimated
            elif exact is None and chosen.indexed and category_indexed:
                # Filters the statistics cannot estimate (a minimum score, a board, an image label) inside a category
                # with its own index: that index with a longer candidate list; when the scan comes up short of
                # garments, the filter is selective: every distance instead.
                rows = self._through_index(conn, chosen, narrow, params, excluded, literal, candidates, limit,
                                           category_id, ef(FILTERED_EF_SEARCH))
                if rows and int(rows[0][-1]) >= candidates:
                    return _group(rows, keep_image_score=True)
                exact = True
            if exact is not False:
                # Exact first, reading at most EXACT_SEARCH_MAX_ROWS + 1 filtered garments: a selective filter
                # is answered by this one scan; past that, the scan stopped early and the index answers.
                scan = None if exact or not chosen.indexed else EXACT_SEARCH_MAX_ROWS + 1
                rows = conn.execute(similar_sql(chosen, narrow, exact=True, category_id=category_id),
                                    [literal, *params, excluded, scan, candidates, literal, limit]).fetchall()
                if scan is None or not rows or int(rows[0][-1]) < scan:
                    return _group(rows, keep_image_score=True)
            filtered = not plain or (category_id is not None and not category_indexed)
            rows = self._through_index(conn, chosen, narrow, params, excluded, literal, candidates, limit,
                                       category_id, ef(FILTERED_EF_SEARCH if filtered else CATEGORY_EF_SEARCH
                                                       if category_id is not None else DEFAULT_EF_SEARCH))
        return _group(rows, keep_image_score=True)

    def vector_stats(self, conn: Any) -> VectorStats:
        """The :class:`VectorStats` this catalog plans with, sampled again past :data:`STATS_MAX_AGE_S`."""
        stats = self._stats
        if stats is None or time.monotonic() - stats.taken_at > STATS_MAX_AGE_S:
            stats = self._stats = VectorStats.sample(conn)
        return stats

    def _selective(self, conn: Any, model_id: int, category_id: int | None, category_indexed: bool,
                   attributes: Sequence[tuple[str, str]], candidates: int) -> bool:
        """Is computing every distance cheaper than the HNSW scan for this filter (:data:`SELECTIVE_FACTOR`)?"""
        stats = self.vector_stats(conn)
        passing = stats.passing(model_id, category_id, attributes)
        read = stats.count(model_id, category_id)  # the rows the exact scan reads (by the (model, category) btree)
        searched = read if category_id is None or category_indexed else stats.count(model_id, None)
        return passing * read <= SELECTIVE_FACTOR * candidates * max(searched, 1.0)

    @staticmethod
    def _through_index(conn: Any, model: EmbeddingModel, narrow: str, params: list[Any], excluded: list[int],
                       literal: str, candidates: int, limit: int, category_id: int | None,
                       ef: int) -> list[tuple[Any, ...]]:
        # The scan's settings for the connection's session (every index search sets both first: no other
        # statement depends on them), sent with the search in one pipeline: one round trip.
        with conn.pipeline():
            conn.execute("SELECT set_config('hnsw.ef_search', %s, false), "
                         "set_config('hnsw.iterative_scan', 'relaxed_order', false)", (str(min(ef, _MAX_EF_SEARCH)),))
            cursor = conn.execute(similar_sql(model, narrow, exact=False, category_id=category_id),
                                  [*params, excluded, literal, candidates, literal, limit])
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows

    def garment_embedding(self, garment_id: int) -> QueryGarment:
        """An indexed garment as a query: its vector, model, category and photo."""
        with self.db.connect() as conn:
            row = conn.execute(
                """SELECT g.embedding::real[], m.name, g.category, g.x1, g.y1, g.x2, g.y2, g.ordinal, g.image_id
                   FROM garments g LEFT JOIN embedding_models m ON m.id = g.embedding_model_id
                   WHERE g.id = %s""", (garment_id,)).fetchone()
        if row is None:
            raise QueryError(f"no garment {garment_id} in this catalog")
        if row[0] is None:
            raise QueryError(f"garment {garment_id} has no vector: it was indexed by a server that sends no "
                             f"embeddings (re-index it with one that does)")
        return QueryGarment(str(row[1]), np.asarray(row[0], dtype=np.float32), str(row[2]),
                            (float(row[3]), float(row[4]), float(row[5]), float(row[6])), int(row[7]) + 1,
                            int(row[8]), int(garment_id))

    def similar_to_garment(self, garment_id: int, *, query: SearchFilter | None = None,
                           limit: int = DEFAULT_LIMIT) -> list[ImageHit]:
        """Garments like indexed garment ``garment_id``, in other photos (its own photo and exact copies
        of it left out), grouped by image."""
        start = self.garment_embedding(garment_id)
        return self.similar(start.vector, model=start.model, query=query, limit=limit,
                            exclude_images=self.same_photo(start.image_id))

    def same_photo(self, image_id: int | None) -> list[int]:
        """Image ``image_id`` and its exact copies (same content): what a similarity answer leaves out."""
        if image_id is None:
            return []
        with self.db.connect() as conn:
            return [int(i) for (i,) in conn.execute(
                "SELECT id FROM images WHERE sha256 = (SELECT sha256 FROM images WHERE id = %s)",
                (image_id,)).fetchall()]

    def query_garment(self, photo: Path | bytes, *, garment: int | None = None,
                      client: FashionClient | None = None) -> QueryGarment:
        """The query garment ``garment`` (numbered from 1 as the image page lists them; default: the
        best-scoring garment no other garment covers) of ``photo``: looked up in the catalog by its path
        or its content (SHA-256) when it is indexed, else sent through the server with ``client``."""
        data = photo if isinstance(photo, bytes) else _read(photo)
        image_id = self.image_id_of(str(photo.resolve())) if isinstance(photo, Path) else None
        if image_id is None:
            with self.db.connect() as conn:
                row = conn.execute("SELECT id FROM images WHERE sha256 = %s AND status = 'indexed' ORDER BY id "
                                   "LIMIT 1", (sha256_hex(data),)).fetchone()
            image_id = None if row is None else int(row[0])
        if image_id is not None:
            with self.db.connect() as conn:
                rows = conn.execute("SELECT id, overlapped, score FROM garments WHERE image_id = %s ORDER BY ordinal",
                                    (image_id,)).fetchall()
            if rows:
                number = garment if garment is not None else _best(
                    [(bool(o), float(s)) for _, o, s in rows])
                _check_number(number, len(rows))
                return self.garment_embedding(int(rows[number - 1][0]))
            if client is None:
                raise QueryError("the photo is indexed but no garment was found in it")
        if client is None:
            raise QueryError("the photo is not in the catalog: give the server's address (--url) to send it "
                             "through the server")
        return query_from_result(client.detect(data), garment)

    def similar_to(self, photo: Path | bytes, *, garment: int | None = None, client: FashionClient | None = None,
                   query: SearchFilter | None = None,
                   limit: int = DEFAULT_LIMIT) -> tuple[QueryGarment, list[ImageHit]]:
        """:meth:`query_garment`, then garments like it in other photos (:meth:`similar`)."""
        start = self.query_garment(photo, garment=garment, client=client)
        hits = self.similar(start.vector, model=start.model, query=query, limit=limit,
                            exclude_images=self.same_photo(start.image_id))
        return start, hits

    def search_text(self, vector: np.ndarray[Any, np.dtype[np.float32]], *, model: str | None = None,
                    query: SearchFilter | None = None, limit: int = DEFAULT_LIMIT) -> list[ImageHit]:
        """Garments ranked by cosine similarity to a text's vector (``FashionClient.embed_text``), grouped
        by image. ``model``: the text tower's model (its garment vectors are searched); ``None``: the one
        garment model of the vector's dimension, an error when there is none or several."""
        target = np.asarray(vector, dtype=np.float32).reshape(-1)
        if model is None:
            fitting = [m for m in self.embedding_models("garment") if m.dimension == target.size]
            if len(fitting) != 1:
                held = ", ".join(f"{m.name!r} ({m.dimension}-d)" for m in self.embedding_models("garment")) or "none"
                raise QueryError(f"the text vector has {target.size} dimensions and this catalog's garment vectors "
                                 f"are of models {held}: " + ("no" if not fitting else "more than one") +
                                 " model fits; the words must be embedded by the model that indexed the photos")
            model = fitting[0].name
        return self.similar(target, model=model, query=query, limit=limit)

    def facets(self, board: str | None = None) -> Facets:
        board_join, board_params = _board_join(board)
        with self.db.connect() as conn:
            categories = tuple(str(c) for (c,) in conn.execute(
                f"SELECT DISTINCT g.category FROM garments g JOIN images i ON i.id = g.image_id {board_join} "
                "ORDER BY 1", board_params).fetchall())
            pairs = conn.execute(
                f"SELECT DISTINCT a.key, a.value ->> 'label' FROM garments g JOIN images i ON i.id = g.image_id "
                f"{board_join} CROSS JOIN LATERAL jsonb_each(g.attributes) a ORDER BY 1, 2",
                board_params).fetchall()
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM images WHERE status = 'indexed'), (SELECT count(*) FROM garments), "
                "(SELECT count(*) FROM images WHERE status = 'failed')").fetchone()
        attributes: dict[str, list[str]] = {}
        for group, label in pairs:
            attributes.setdefault(str(group), []).append(str(label))
        assert counts is not None
        return Facets(categories, {g: tuple(v) for g, v in attributes.items()}, int(counts[0]), int(counts[1]),
                      int(counts[2]))

    # -- duplicates --------------------------------------------------------------------------------

    def duplicates(self, *, kind: Kind = "all", max_distance: int = DEFAULT_MAX_DISTANCE,
                   board: str | None = None, min_cosine: float = DEFAULT_MIN_COSINE) -> list[list[str]]:
        """Groups of two or more images that are copies of each other, each a sorted list of paths.

        ``exact``: the same bytes (SHA-256). ``near``: pHash within ``max_distance`` bits.
        ``transformed``: crops, flips, colour changes that move a pHash far: photos whose garments
        match, each garment's best cosine similarity in the other photo averaged (both ways, the
        smaller) at least ``min_cosine`` (photos without garments: their whole-image vectors' cosine);
        only vectors of one model are compared. Every kind includes the exact copies, and edges are
        joined transitively (single linkage); ``all`` joins all three.
        Groups are sorted by size, then by first path.
        """
        if kind not in ("all", "exact", "near", "transformed"):
            raise QueryError(f"duplicates kind is all, exact, near or transformed, got {kind!r}")
        if not 0 <= max_distance <= 64:
            raise QueryError(f"max_distance is a number of bits in [0, 64], got {max_distance}")
        if not -1.0 <= min_cosine <= 1.0:
            raise QueryError(f"min_cosine is a cosine similarity in [-1, 1], got {min_cosine}")
        board_join, board_params = _board_join(board)
        vectors = "i.embedding::real[]" if kind in ("all", "transformed") else "NULL::real[]"
        with self.db.connect() as conn:
            rows = conn.execute(
                f"SELECT i.id, i.path, i.sha256, i.phash, i.embedding_model_id, {vectors} FROM images i {board_join} "
                "ORDER BY i.id", board_params).fetchall()
        paths = [str(r[1]) for r in rows]
        parent = list(range(len(rows)))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        def union(a: int, b: int) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

        first_of: dict[str, int] = {}
        for index, row in enumerate(rows):
            sha = str(row[2])
            if sha in first_of:
                union(first_of[sha], index)
            else:
                first_of[sha] = index
        if kind in ("all", "near"):
            hashed = [index for index, row in enumerate(rows) if row[3] is not None]
            for a, b in near_pairs(np.array([int(rows[i][3]) for i in hashed], dtype=np.int64), max_distance):
                union(hashed[a], hashed[b])
        if kind in ("all", "transformed"):
            for a, b in self._transformed_pairs(rows, board_join, board_params, min_cosine):
                union(a, b)
        groups: dict[int, list[str]] = {}
        for index in range(len(rows)):
            groups.setdefault(find(index), []).append(paths[index])
        found = [sorted(g) for g in groups.values() if len(g) > 1]
        return sorted(found, key=lambda g: (-len(g), g[0]))

    def _transformed_pairs(self, rows: Sequence[tuple[Any, ...]], board_join: str, board_params: list[Any],
                           min_cosine: float) -> list[tuple[int, int]]:
        """Row index pairs of transformed copies: photos whose garments match (the garments' vectors,
        :func:`~fashionbox.catalog.vectors.matching_photos`); photos without garments by their whole-image
        vectors. Only vectors of one model are compared."""
        row_of = {int(row[0]): index for index, row in enumerate(rows)}
        with self.db.connect() as conn:
            garments = conn.execute(  # the narrow rows (half precision: a threshold's margin is far wider)
                f"SELECT v.image_id, v.model_id, v.embedding::real[] FROM garment_vectors v JOIN images i "
                f"ON i.id = v.image_id {board_join} WHERE NOT v.overlapped ORDER BY v.image_id, v.garment_id",
                board_params).fetchall()
        pairs: list[tuple[int, int]] = []
        by_model: dict[int, tuple[list[int], list[Any]]] = {}
        for image_id, model_id, vector in garments:
            owners, vectors = by_model.setdefault(int(model_id), ([], []))
            owners.append(row_of[int(image_id)])
            vectors.append(vector)
        for owners, vectors in by_model.values():
            matrix = _unit_rows(np.asarray(vectors, dtype=np.float32))
            pairs += matching_photos(np.asarray(owners, dtype=np.int64), matrix, min_cosine)
        with_garments = {owner for owners, _ in by_model.values() for owner in owners}
        by_image_model: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            if row[4] is not None and row[5] is not None and index not in with_garments:
                by_image_model.setdefault(int(row[4]), []).append(index)
        for members in by_image_model.values():
            matrix = _unit_rows(np.asarray([rows[i][5] for i in members], dtype=np.float32))
            pairs += [(members[a], members[b]) for a, b in cosine_pairs(matrix, min_cosine)]
        return pairs

    # -- images and boards ---------------------------------------------------------------------------

    def image(self, image_id: int) -> ImageRecord | None:
        with self.db.connect() as conn:
            row = conn.execute("SELECT id, path, status, error, width, height, sha256, phash, labels FROM images "
                               "WHERE id = %s", (image_id,)).fetchone()
            if row is None:
                return None
            garments = conn.execute(
                "SELECT id, category, score, x1, y1, x2, y2, attributes, mask_rle FROM garments WHERE image_id = %s "
                "ORDER BY ordinal", (image_id,)).fetchall()
            boards = conn.execute("SELECT b.name FROM boards b JOIN board_images bi ON bi.board_id = b.id "
                                  "WHERE bi.image_id = %s ORDER BY b.name", (image_id,)).fetchall()
        hits = tuple(GarmentHit(int(g[0]), str(g[1]), (float(g[3]), float(g[4]), float(g[5]), float(g[6])),
                                float(g[2]), dict(g[7]), float(g[2]), g[8] is not None) for g in garments)
        labels = tuple((str(entry["label"]), float(entry["score"])) for entry in row[8] or ())
        return ImageRecord(int(row[0]), str(row[1]), str(row[2]), row[3], row[4], row[5], str(row[6]), row[7], hits,
                           tuple(g[8] for g in garments), tuple(str(b) for (b,) in boards), labels)

    def labels(self) -> list[str]:
        """The top image-level labels the catalog holds (for a filter's choices), sorted."""
        with self.db.connect() as conn:
            return [str(label) for (label,) in conn.execute(
                "SELECT DISTINCT label FROM images WHERE label IS NOT NULL ORDER BY 1").fetchall()]

    def image_id_of(self, path: str) -> int | None:
        with self.db.connect() as conn:
            row = conn.execute("SELECT id FROM images WHERE path = %s", (path,)).fetchone()
        return None if row is None else int(row[0])

    def failed(self) -> list[tuple[str, str]]:
        with self.db.connect() as conn:
            rows = conn.execute("SELECT path, coalesce(error, '') FROM images WHERE status = 'failed' ORDER BY path")
            return [(str(p), str(e)) for p, e in rows.fetchall()]

    def roots(self) -> list[str]:
        with self.db.connect() as conn:
            return [str(p) for (p,) in conn.execute("SELECT path FROM roots ORDER BY path").fetchall()]

    def boards(self) -> list[tuple[str, int]]:
        """(name, number of images) of every board, by name."""
        with self.db.connect() as conn:
            rows = conn.execute("SELECT b.name, count(bi.image_id) FROM boards b LEFT JOIN board_images bi "
                                "ON bi.board_id = b.id GROUP BY b.name ORDER BY b.name").fetchall()
        return [(str(n), int(c)) for n, c in rows]

    def create_board(self, name: str) -> None:
        name = _board_name(name)
        with self.db.connect() as conn:
            conn.execute("INSERT INTO boards (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (name,))

    def add_to_board(self, name: str, image_ids: Iterable[int]) -> int:
        """Add images to board ``name`` (created if new); how many were not on it yet."""
        name = _board_name(name)
        ids = list(image_ids)
        with self.db.connect() as conn, conn.transaction():
            row = conn.execute("INSERT INTO boards (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET name = "
                               "EXCLUDED.name RETURNING id", (name,)).fetchone()
            assert row is not None
            cursor = conn.execute(
                "INSERT INTO board_images (board_id, image_id) SELECT %s, id FROM images WHERE id = ANY(%s) "
                "ON CONFLICT DO NOTHING", (int(row[0]), ids))
            return cursor.rowcount

    def board_images(self, name: str) -> list[tuple[int, str]]:
        """(image id, path) of every image on board ``name``, in the order they were added; a board that
        does not exist is a :class:`QueryError`."""
        name = _board_name(name)
        with self.db.connect() as conn:
            if conn.execute("SELECT 1 FROM boards WHERE name = %s", (name,)).fetchone() is None:
                raise QueryError(f"no board named {name!r}")
            rows = conn.execute("SELECT i.id, i.path FROM board_images bi JOIN boards b ON b.id = bi.board_id "
                                "JOIN images i ON i.id = bi.image_id WHERE b.name = %s "
                                "ORDER BY bi.added_at, i.id", (name,)).fetchall()
        return [(int(i), str(p)) for i, p in rows]

    def remove_from_board(self, name: str, image_ids: Iterable[int]) -> int:
        """Take images off board ``name`` (the images stay in the catalog); how many were on it."""
        with self.db.connect() as conn:
            return conn.execute("DELETE FROM board_images bi USING boards b WHERE bi.board_id = b.id AND b.name = %s "
                                "AND bi.image_id = ANY(%s)", (_board_name(name), list(image_ids))).rowcount

    def delete_board(self, name: str) -> bool:
        """Delete board ``name`` (its images stay in the catalog); whether it existed."""
        with self.db.connect() as conn:
            return conn.execute("DELETE FROM boards WHERE name = %s", (_board_name(name),)).rowcount > 0

    def browse(self, query: SearchFilter, *, limit: int = DEFAULT_LIMIT, offset: int = 0) -> list[ImageHit]:
        """Like :meth:`search`, but an empty filter lists every indexed image (with its garments)."""
        if query.category or query.attributes or query.min_score > 0 or query.label is not None:
            return self.search(query, limit=limit, offset=offset)
        board_join, board_params = _board_join(query.board)
        with self.db.connect() as conn:
            rows = conn.execute(
                f"""WITH page AS (SELECT i.id FROM images i {board_join} WHERE i.status = 'indexed'
                                 ORDER BY i.id DESC LIMIT %s OFFSET %s)
                    SELECT i.id, i.path, 0.0, i.width, i.height, g.id, g.category, g.score, g.x1, g.y1, g.x2, g.y2,
                           g.attributes, g.mask_rle IS NOT NULL, g.score
                    FROM page p JOIN images i ON i.id = p.id
                    LEFT JOIN garments g ON g.image_id = i.id AND NOT g.overlapped
                    ORDER BY i.id DESC, g.ordinal""",
                [*board_params, limit, offset]).fetchall()
        return _group(rows)


# -- SQL fragments (fixed text; values go in as parameters) -------------------------------------------

def _where(query: SearchFilter, alias: str = "g") -> tuple[str, list[Any]]:
    """``query`` as a SQL condition on ``garments`` (``alias`` ``g``) or ``garment_vectors`` (``v``: the same
    columns, attribute labels only) and its values."""
    g = {"g": "g", "v": "v"}[alias]  # a fixed alias, never text from outside
    # only indexed images have garments: no join with images to filter them
    clauses = ["TRUE" if query.include_overlapped else f"NOT {g}.overlapped"]
    params: list[Any] = []
    if query.category:
        clauses.append(f"{g}.category = %s")
        params.append(query.category)
    if query.attributes:
        from psycopg.types.json import Jsonb

        clauses.append(f"{g}.attributes @> %s")
        params.append(Jsonb({group: {"label": label} for group, label in query.attributes}))
    if query.min_score > 0:
        clauses.append(f"{g}.score >= %s")
        params.append(query.min_score)
    if query.board is not None:
        clauses.append(f"{g}.image_id IN (SELECT bi.image_id FROM board_images bi JOIN boards b "
                       "ON b.id = bi.board_id WHERE b.name = %s)")
        params.append(query.board)
    if query.label is not None:
        clauses.append(f"{g}.image_id IN (SELECT li.id FROM images li WHERE li.label = %s)")
        params.append(query.label)
    return " AND ".join(clauses), params


def _rank(query: SearchFilter) -> tuple[str, list[Any]]:
    factors = ["g.score"]
    params: list[Any] = []
    for group, _ in query.attributes:
        factors.append("(g.attributes -> %s ->> 'score')::real")
        params.append(group)
    if query.label is not None:
        factors.append("(SELECT li.label_score FROM images li WHERE li.id = g.image_id)")
    return " * ".join(factors), params


def similar_sql(model: EmbeddingModel, where: str, *, exact: bool, category_id: int | None = None) -> str:
    """The one statement of a similarity query: the nearest garments of ``model`` (of category
    ``category_id`` when given) in ``garment_vectors`` that pass ``where`` (``_where``'s fragment on
    alias ``v``), then their rows in ``garments``, grouped by image.

    The candidates are chosen in half precision, the type of the stored narrow vectors and of the
    HNSW indexes; the similarities returned, and the final order, are computed from the float32
    vectors in ``garments`` (only for the chosen few). The model id and the category id are written
    in as integers of ours, so that a generic prepared plan still matches the partial indexes
    (``WHERE model_id = m`` and ``WHERE model_id = m AND category_id = c``).

    Through an index (``exact`` false), parameters: ``where``'s values, the image ids left out, the
    query vector, the number of garments, the query vector again, the number of images. Exact: the
    filtered garments (at most the scan limit's count; ``NULL``: all) with their distances, no index
    order at all, then the nearest of them; parameters: the query vector, ``where``'s values, the
    image ids left out, the scan limit, the number of garments, the query vector again, the number of
    images. Each row ends with the number of garments the scan found (exact: filtered garments read),
    so that a caller learns whether the scan limit cut the answer short, or the index scan came up
    short of the number asked for (a filter too selective for it)."""
    half = f"(v.embedding::{model.index_cast} <=> %s::{model.index_cast})"
    category = "" if category_id is None else f" AND v.category_id = {int(category_id)}"
    condition = f"v.model_id = {int(model.id)}{category} AND {where} AND NOT (v.image_id = ANY(%s))"
    if exact:
        # the narrow rows only: the garments' other columns are read for the nearest few
        picked = f"""filtered AS MATERIALIZED (
            SELECT v.garment_id, {half} AS near FROM garment_vectors v WHERE {condition} LIMIT %s
        ), picked AS MATERIALIZED (
            SELECT garment_id FROM filtered ORDER BY near, garment_id LIMIT %s"""
        read = ", (SELECT count(*) FROM filtered)"
    else:
        picked = f"""picked AS MATERIALIZED (
            SELECT v.garment_id FROM garment_vectors v WHERE {condition}
            ORDER BY {half}
            LIMIT %s"""
        read = ", (SELECT count(*) FROM picked)"
    return f"""
        WITH {picked}
        ), nearest AS MATERIALIZED (
            SELECT g.id, g.image_id, g.category, g.score, g.x1, g.y1, g.x2, g.y2, g.attributes,
                   g.mask_rle IS NOT NULL AS has_mask, (g.embedding::{model.cast} <=> %s::{model.cast}) AS distance
            FROM picked p JOIN garments g ON g.id = p.garment_id
        ), ranked AS (
            SELECT image_id, min(distance) AS best FROM nearest GROUP BY image_id ORDER BY best, image_id LIMIT %s
        )
        SELECT r.image_id, i.path, 1 - r.best, i.width, i.height, n.id, n.category, n.score, n.x1, n.y1, n.x2, n.y2,
               n.attributes, n.has_mask, 1 - n.distance{read}
        FROM ranked r JOIN images i ON i.id = r.image_id JOIN nearest n ON n.image_id = r.image_id
        ORDER BY r.best, r.image_id, n.distance, n.id
    """  # every interpolated part is fixed SQL or an integer of ours; values are parameters


def _best(garments: Sequence[tuple[bool, float]]) -> int:
    """The number (from 1) of the best-scoring garment that no other covers (or of the best one)."""
    if not garments:
        raise QueryError("no garment was found in the photo")
    order = sorted(range(len(garments)), key=lambda k: (garments[k][0], -garments[k][1], k))
    return order[0] + 1


def _check_number(number: int, count: int) -> None:
    if not 1 <= number <= count:
        raise QueryError(f"garment {number} does not exist: the photo has {count} garment"
                         f"{'' if count == 1 else 's'}, numbered from 1")


def query_from_result(result: ImageDetections, garment: int | None = None) -> QueryGarment:
    """Garment ``garment`` (from 1; default: the best one no other covers) of a new photo's result."""
    detections = result.detections
    covered = overlapped_flags(result)
    number = garment if garment is not None else _best([(c, d.score) for c, d in zip(covered, detections,
                                                                                      strict=True)])
    _check_number(number, len(detections))
    chosen = detections[number - 1]
    if chosen.packed_embedding is None:
        raise QueryError("the server sends no garment vectors: serve a model with an embedding (the default "
                         "model's embedding head, or --embedder) to find similar garments")
    box = chosen.box
    return QueryGarment(chosen.packed_embedding.model, chosen.packed_embedding.to_array(), chosen.category,
                        (box.x1, box.y1, box.x2, box.y2), number)


def embed_words(url: str, text: str, *, client: FashionClient | None = None,
                connection: ClientConfig | None = None) -> tuple[np.ndarray[Any, np.dtype[np.float32]], str]:
    """The vector of ``text`` from the server at ``url`` (through ``client`` where given, else a client of
    its own with ``connection``'s TLS and headers) and the name of the model whose space it is in
    (``FashionClient.text_model``), so that the catalog compares the words only with vectors of that
    model. A clear error when the server has no text tower."""
    from fashionbox.client import FashionBoxError, FashionClient

    if not text.strip():
        raise QueryError("the words to search for are empty")
    with contextlib.nullcontext(client) if client is not None else FashionClient(url, config=connection) as sender:
        try:
            vector = sender.embed_text([text])[0]
            model = sender.text_model()
        except FashionBoxError as exc:
            if "text_embedder" in str(exc):
                raise QueryError(f"the server at {url} has no text tower, so it cannot search by words: serve a "
                                 f"repository converted with --embedder hf:... of a CLIP or SigLIP model "
                                 f"({exc})") from exc
            raise QueryError(f"the server at {url} could not embed the words: {exc}") from exc
    return np.asarray(vector, dtype=np.float32), model


def _unit_rows(matrix: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, np.dtype[np.float32]]:
    out: np.ndarray[Any, np.dtype[np.float32]] = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True),
                                                                     1e-12)
    return out


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise QueryError(f"cannot read the query photo {path}: {exc.strerror or exc}") from exc


def _board_join(board: str | None) -> tuple[str, list[Any]]:
    if board is None:
        return "", []
    return ("JOIN board_images bi ON bi.image_id = i.id JOIN boards b ON b.id = bi.board_id AND b.name = %s",
            [board])


def _board_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise QueryError("a board name has 1 to 200 characters")
    return name


def _group(rows: Sequence[tuple[Any, ...]], *, keep_image_score: bool = False) -> list[ImageHit]:
    hits: list[ImageHit] = []
    current: list[GarmentHit] = []
    head: tuple[Any, ...] | None = None

    def flush() -> None:
        if head is not None:
            best = float(head[2]) if keep_image_score else max((g.rank for g in current), default=float(head[2]))
            hits.append(ImageHit(int(head[0]), str(head[1]), best, head[3], head[4], tuple(current)))

    for row in rows:
        if head is None or row[0] != head[0]:
            flush()
            head, current = row, []
        if row[5] is not None:
            current.append(GarmentHit(int(row[5]), str(row[6]), (float(row[8]), float(row[9]), float(row[10]),
                                                                 float(row[11])),
                                      float(row[7]), dict(row[12]), float(row[14]), bool(row[13])))
    flush()
    return hits


def near_pairs(hashes: np.ndarray[Any, np.dtype[np.int64]], max_distance: int) -> list[tuple[int, int]]:
    """Index pairs ``(a, b)``, ``a < b``, whose 64-bit hashes differ in at most ``max_distance`` bits.

    Multi-index hashing: cut the 64 bits into ``max_distance + 1`` pieces; two hashes within
    ``max_distance`` bits agree exactly on at least one piece (pigeonhole), so only hashes sharing a
    piece are compared. Far fewer comparisons than all pairs for collections of any size
    (BENCHMARKS.md, "Catalog"); past 15 bits the pieces get too short to help and all pairs are compared.
    """
    n = len(hashes)
    if n < 2:
        return []
    values = hashes.astype(np.int64).view(np.uint64)
    pieces = max_distance + 1
    candidates: list[np.ndarray[Any, np.dtype[np.int64]]] = []
    if pieces > 16:
        a, b = np.triu_indices(n, k=1)
        candidates.append(np.stack([a, b], axis=1).astype(np.int64))
    else:
        edges = np.linspace(0, 64, pieces + 1).astype(int)
        for low, high in itertools.pairwise(edges.tolist()):
            keys = (values >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            # every pair within a run of equal keys: the k-th neighbours in sorted order, k = 1, 2, ...
            for k in range(1, n):
                same = sorted_keys[k:] == sorted_keys[:-k]
                if not same.any():
                    break
                first, second = order[:-k][same], order[k:][same]
                candidates.append(np.stack([np.minimum(first, second), np.maximum(first, second)],
                                           axis=1).astype(np.int64))
    if not candidates:
        return []
    stacked = np.concatenate(candidates)
    codes = np.unique(stacked[:, 0] * n + stacked[:, 1])
    pairs = np.stack([codes // n, codes % n], axis=1)
    signed = values.view(np.int64)
    close = pairs[hamming_many(signed[pairs[:, 0]], signed[pairs[:, 1]]) <= max_distance]
    return [(int(a), int(b)) for a, b in close.tolist()]
