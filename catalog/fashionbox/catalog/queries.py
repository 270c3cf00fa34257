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

Where the embeddings slot in (issue 16): ``SearchFilter`` is the WHERE clause that ``similar``
will share (``_where``), and ranking is one SQL expression (``_rank``) that a vector search
replaces with ``1 - (embedding <=> query)`` ordered by the HNSW index; transformed-copy
duplicates join :meth:`Catalog.duplicates` as a third kind of edge (embedding cosine above a
threshold) in the same union-find.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .database import Database
from .errors import QueryError
from .hashing import hamming_many

DEFAULT_MAX_DISTANCE = 6
"""Default pHash Hamming distance for near copies. Measured (tests/benchmarks/bench_catalog.py,
BENCHMARKS.md "Catalog"): re-encoded (JPEG q50-q70) and resized (50-75 %) copies of generated
scenes lie within 4 bits of their original (the hash of a reduced grey decode, ``hashing.py``;
2 bits for imagehash on the full decode), different scenes 16 bits and more apart; on real photos
imagededup's UKBench figures put the safe limit near 10 (docs/FIELD_NOTES.md). 6 keeps a margin on both sides, and the
search for pairs (:func:`near_pairs`) slows as the distance grows: 1-2 s at 6 bits, 18 s at 8 for
25,000 images."""

DEFAULT_LIMIT = 50


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

    def __post_init__(self) -> None:
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

    def rows(self) -> list[dict[str, Any]]:
        """One JSON row per garment: ``image``, ``category``, ``box``, ``attributes``, ``score`` (the rank),
        ``detection_score``."""
        return [{"image": self.image, "image_id": self.image_id, "category": g.category, "box": list(g.box),
                 "attributes": g.attributes, "score": g.rank, "detection_score": g.score} for g in self.garments]


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


@dataclass(frozen=True, slots=True)
class Facets:
    """What the catalog holds, for the filters of a form: categories and each group's labels."""

    categories: tuple[str, ...]
    attributes: dict[str, tuple[str, ...]]
    images: int
    garments: int
    failed: int


Kind = Literal["all", "exact", "near"]


class Catalog:
    """The query API over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- search ------------------------------------------------------------------------------------

    def search(self, query: SearchFilter, *, limit: int = DEFAULT_LIMIT, offset: int = 0) -> list[ImageHit]:
        """Images with garments matching ``query``, best first, each with its matching garments (best first)."""
        if limit < 1 or offset < 0:
            raise QueryError(f"limit must be >= 1 and offset >= 0, got {limit} and {offset}")
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
                   board: str | None = None) -> list[list[str]]:
        """Groups of two or more images that are copies of each other, each a sorted list of paths.

        ``exact``: the same bytes (SHA-256). ``near``: pHash within ``max_distance`` bits, joined
        transitively (single linkage), exact copies included. ``all`` is ``near``: every exact copy is
        also a near copy. Groups are sorted by size, then by first path.
        """
        if kind not in ("all", "exact", "near"):
            raise QueryError(f"duplicates kind is all, exact or near, got {kind!r}")
        if not 0 <= max_distance <= 64:
            raise QueryError(f"max_distance is a number of bits in [0, 64], got {max_distance}")
        board_join, board_params = _board_join(board)
        with self.db.connect() as conn:
            rows = conn.execute(
                f"SELECT i.id, i.path, i.sha256, i.phash FROM images i {board_join} ORDER BY i.id",
                board_params).fetchall()
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
        if kind != "exact":
            hashed = [index for index, row in enumerate(rows) if row[3] is not None]
            for a, b in near_pairs(np.array([int(rows[i][3]) for i in hashed], dtype=np.int64), max_distance):
                union(hashed[a], hashed[b])
        groups: dict[int, list[str]] = {}
        for index in range(len(rows)):
            groups.setdefault(find(index), []).append(paths[index])
        found = [sorted(g) for g in groups.values() if len(g) > 1]
        return sorted(found, key=lambda g: (-len(g), g[0]))

    # -- images and boards ---------------------------------------------------------------------------

    def image(self, image_id: int) -> ImageRecord | None:
        with self.db.connect() as conn:
            row = conn.execute("SELECT id, path, status, error, width, height, sha256, phash FROM images WHERE id = %s",
                               (image_id,)).fetchone()
            if row is None:
                return None
            garments = conn.execute(
                "SELECT id, category, score, x1, y1, x2, y2, attributes, mask_rle FROM garments WHERE image_id = %s "
                "ORDER BY ordinal", (image_id,)).fetchall()
            boards = conn.execute("SELECT b.name FROM boards b JOIN board_images bi ON bi.board_id = b.id "
                                  "WHERE bi.image_id = %s ORDER BY b.name", (image_id,)).fetchall()
        hits = tuple(GarmentHit(int(g[0]), str(g[1]), (float(g[3]), float(g[4]), float(g[5]), float(g[6])),
                                float(g[2]), dict(g[7]), float(g[2]), g[8] is not None) for g in garments)
        return ImageRecord(int(row[0]), str(row[1]), str(row[2]), row[3], row[4], row[5], str(row[6]), row[7], hits,
                           tuple(g[8] for g in garments), tuple(str(b) for (b,) in boards))

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

    def browse(self, query: SearchFilter, *, limit: int = DEFAULT_LIMIT, offset: int = 0) -> list[ImageHit]:
        """Like :meth:`search`, but an empty filter lists every indexed image (with its garments)."""
        if query.category or query.attributes or query.min_score > 0:
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

def _where(query: SearchFilter) -> tuple[str, list[Any]]:
    # only indexed images have garments: no join with images to filter them
    clauses = ["TRUE" if query.include_overlapped else "NOT g.overlapped"]
    params: list[Any] = []
    if query.category:
        clauses.append("g.category = %s")
        params.append(query.category)
    if query.attributes:
        from psycopg.types.json import Jsonb

        clauses.append("g.attributes @> %s")
        params.append(Jsonb({group: {"label": label} for group, label in query.attributes}))
    if query.min_score > 0:
        clauses.append("g.score >= %s")
        params.append(query.min_score)
    if query.board is not None:
        clauses.append("g.image_id IN (SELECT bi.image_id FROM board_images bi JOIN boards b ON b.id = bi.board_id "
                       "WHERE b.name = %s)")
        params.append(query.board)
    return " AND ".join(clauses), params


def _rank(query: SearchFilter) -> tuple[str, list[Any]]:
    factors = ["g.score"]
    params: list[Any] = []
    for group, _ in query.attributes:
        factors.append("(g.attributes -> %s ->> 'score')::real")
        params.append(group)
    return " * ".join(factors), params


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


def _group(rows: Sequence[tuple[Any, ...]]) -> list[ImageHit]:
    hits: list[ImageHit] = []
    current: list[GarmentHit] = []
    head: tuple[Any, ...] | None = None

    def flush() -> None:
        if head is not None:
            best = max((g.rank for g in current), default=float(head[2]))
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
