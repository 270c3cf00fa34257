"""Indexing: every image of a folder through the server, into the catalog's database.

Usage::

    from fashionbox.catalog.indexer import Indexer

    with FashionClient("127.0.0.1:8001") as client:
        report = Indexer(db, client).index_folder(Path("photos"))   # IndexReport(indexed, skipped, ...)

A file is read once: its SHA-256 decides whether it is new (a path already indexed with the same
content is skipped; a path already indexed with the same size and modification time is skipped
without reading it); a new file whose content is already indexed under another path gets that
image's garments copied instead of a second trip through the server. The rest go to the server with
``max_in_flight`` requests in flight all the time (the client's ``detect`` on a bounded pool, as
``FashionClient.detect_many`` does, but handing over each answer as it comes: ``detect_many``
returns only when all its images are done, so chunks of it drain the server's queue at every
chunk's end, measured at 0.83x the served throughput). Answers are written a chunk at a time, each
chunk in one transaction: a kill loses at most the chunks not yet committed, which the next run
picks up, and the unique ``images.path`` means nothing is stored twice. An image the server (or
Pillow) cannot read is stored as ``failed`` with its message; a server that is down or overloaded
stops nothing either, but its images are left for the next run (``IndexReport.deferred``).

A run of many new images (:func:`bulk_wanted`: at least :data:`BULK_MIN_IMAGES`, and as many as the
catalog holds; ``bulk=True``/``False`` decide instead) drops the vector indexes, loads, and builds them
at its end (:class:`~fashionbox.catalog.vectors.BulkLoad`): an HNSW index kept row by row costs
PostgreSQL far more CPU, on the cores the server needs. A killed bulk run leaves them out; the next
run, or opening the catalog, builds them. :meth:`Indexer.watch` keeps them row by row.

Where the server sends them, each garment's and the image's vectors are stored with the id of
their model (``embedding_models``, keyed by ``PackedEmbedding.model``, its HNSW index created with
its row: :mod:`fashionbox.catalog.vectors`), and the image-level labels (``images.labels``; the top
one in ``label``/``label_score``, indexed for ``search --label``).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from fashionbox.client import (
    DEFAULT_MAX_IN_FLIGHT,
    BoundingBox,
    FashionBoxError,
    FashionClient,
    ImageDetections,
    InvalidImage,
    InvalidInput,
    PackedEmbedding,
)

from .database import Database
from .hashing import phash64, sha256_hex, warm_up
from .prune import PruneReport
from .prune import prune as prune_missing
from .vectors import BulkLoad, EmbeddingModel, Kind, ensure_model, repair_vector_indexes, vector_literal

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""Files the indexer picks up (by suffix, case-insensitive); hidden files and folders are skipped."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where an indexing run is: passed to the progress callback after each chunk."""

    done: int
    total: int
    elapsed_s: float
    failed: int

    @property
    def images_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.images_per_s
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        eta = "?" if self.eta_s is None else f"{self.eta_s:.0f} s"
        return (f"indexed {self.done}/{self.total} images, {self.images_per_s:.1f} images/s, ETA {eta}"
                + (f", {self.failed} failed" if self.failed else ""))


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What one run did. ``indexed`` went through the server; ``copied`` were exact copies of an
    indexed image; ``skipped`` were already indexed; ``failed`` are stored with their message;
    ``deferred`` could not be sent (server down or overloaded) and are left for the next run."""

    indexed: int = 0
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    deferred: int = 0
    elapsed_s: float = 0.0
    errors: tuple[tuple[str, str], ...] = ()
    """(path, message) of each failed or deferred image."""
    bulk: bool = False
    """The run built the vector indexes at its end (:class:`~fashionbox.catalog.vectors.BulkLoad`)."""
    index_build_s: float = 0.0
    """Seconds of ``elapsed_s`` spent building them."""

    @property
    def sent(self) -> int:
        return self.indexed + self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"indexed": self.indexed, "copied": self.copied, "skipped": self.skipped, "failed": self.failed,
                "deferred": self.deferred, "elapsed_s": round(self.elapsed_s, 3), "bulk": self.bulk,
                "index_build_s": round(self.index_build_s, 3),
                "errors": [{"image": p, "error": m} for p, m in self.errors]}


@dataclass
class _Loaded:
    path: Path
    data: bytes | None
    sha256: str
    size_bytes: int
    mtime_ns: int
    read_error: str | None = None
    phash: int | None = None
    phash_error: str | None = None


@dataclass
class _Tally:
    indexed: int = 0
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    deferred: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    bulk: bool = False
    index_build_s: float = 0.0

    def report(self, elapsed_s: float) -> IndexReport:
        return IndexReport(indexed=self.indexed, copied=self.copied, skipped=self.skipped, failed=self.failed,
                           deferred=self.deferred, elapsed_s=elapsed_s, errors=tuple(self.errors), bulk=self.bulk,
                           index_build_s=self.index_build_s)


def find_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively, sorted, resolved), hidden files and folders skipped."""
    if root.is_file():
        return [root.resolve()]
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    found = []
    for path in sorted(root.resolve().rglob("*")):
        relative = path.relative_to(root.resolve())
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(path)
    return found


class Indexer:
    """Sends images through ``client`` and writes what comes back into ``db``."""

    def __init__(self, db: Database, client: FashionClient, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 chunk_size: int | None = None, progress: Callable[[Progress], None] | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._db = db
        self._client = client
        self._max_in_flight = max_in_flight
        self._chunk_size = chunk_size or max(8, 2 * max_in_flight)
        self._progress = progress
        self._models = _Models()
        warm_up()

    # -- public ------------------------------------------------------------------------------------

    def index_folder(self, root: Path, *, min_age_s: float = 0.0, bulk: bool | None = None) -> IndexReport:
        """Index every image under ``root`` that is new or changed since the last run (and, with
        ``min_age_s``, unmodified for that long: a file still being written waits for the next run).
        ``bulk``: :meth:`index_files`."""
        root = root.resolve()
        paths = find_images(root)
        if min_age_s > 0:
            now = time.time()
            paths = [p for p in paths if _age_s(p, now) >= min_age_s]
        return self.index_files(paths, root=root, bulk=bulk)

    def index_files(self, paths: Sequence[Path], *, root: Path, bulk: bool | None = None) -> IndexReport:
        """Index ``paths`` (files under ``root``, which is recorded as an indexed root).

        ``bulk``: build the vector indexes once at the end instead of keeping them row by row
        (:class:`~fashionbox.catalog.vectors.BulkLoad`); ``None`` decides by :func:`bulk_wanted` (as
        many new files as the catalog holds images, and at least :data:`BULK_MIN_IMAGES`). The build is
        part of the run (and of ``IndexReport.elapsed_s``); a run that does not bulk-load first builds
        any index a killed bulk run left out.
        """
        start = time.perf_counter()
        tally = _Tally()
        with self._db.connect() as conn:
            root_id = register_root(conn, root)
            todo = changed_files(conn, paths, tally)
            total = len(todo)
            loader = start_bulk_load(conn, len(todo), bulk)
            self._models.build_indexes = loader is None
            chunk = self._chunk_size
            written = 0
            sent: set[str] = set()
            later: list[_Loaded] = []  # same content as a file sent earlier in this run: copied once it is stored
            window: deque[tuple[_Loaded, Future[ImageDetections | FashionBoxError] | None]] = deque()
            slots = threading.BoundedSemaphore(self._max_in_flight)
            pool = ThreadPoolExecutor(max_workers=self._max_in_flight, thread_name_prefix="fashionbox-catalog")
            try:
                for chunk_paths in _chunks(todo, chunk):
                    loaded = []
                    for item in map(_load, chunk_paths):
                        if item.read_error is None and item.sha256 in sent:
                            later.append(item)
                        else:
                            loaded.append(item)
                            sent.add(item.sha256)
                    for item in fresh_items(conn, root_id, loaded, tally):
                        future = None
                        if item.read_error is None:
                            slots.acquire()  # at most max_in_flight requests at the server
                            future = pool.submit(self._detect_one, item.data or b"")
                            future.add_done_callback(lambda _: slots.release())
                            _add_phash(item)  # hashed here while the server works
                        window.append((item, future))
                        # Write each chunk once all its answers are in (waiting only when two are pending).
                        while len(window) >= 2 * chunk or (len(window) >= chunk and _all_done(window, chunk)):
                            written += self._write(conn, root_id, [window.popleft() for _ in range(chunk)], tally)
                            self._report(written + tally.copied + tally.deferred, total, start, tally)
                while window:
                    entries = [window.popleft() for _ in range(min(chunk, len(window)))]
                    written += self._write(conn, root_id, entries, tally)
                    self._report(written + tally.copied + tally.deferred, total, start, tally)
            except BaseException:
                if loader is not None:
                    loader.abandon()  # the indexes stay out: the next run, or opening the catalog, builds them
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            copy_later(conn, root_id, later, tally)
            if loader is not None:
                loader.finish()
                tally.bulk, tally.index_build_s = True, loader.build_s
            if later:
                self._report(written + tally.copied + tally.deferred, total, start, tally)
        return tally.report(time.perf_counter() - start)

    def watch(self, roots: Sequence[Path], *, poll_s: float = 2.0, stop: Callable[[], bool] = lambda: False,
              on_report: Callable[[IndexReport], None] | None = None, settle_s: float = 1.0,
              prune: bool = False, on_prune: Callable[[PruneReport], None] | None = None) -> None:
        """Index ``roots`` now, then again every ``poll_s`` seconds until ``stop()`` is true; a file is
        picked up once it has not changed for ``settle_s`` (so that a copy in progress is not read half-way).
        ``prune``: after each scan, remove the images of ``roots`` whose files are gone
        (:func:`~fashionbox.catalog.prune.prune`, refusing as it does); ``on_prune`` hears of each removal,
        and of a refusal when it first happens."""
        refusals: dict[str, str | None] = {}
        while True:
            for root in roots:
                report = self.index_folder(root, min_age_s=settle_s, bulk=False)  # new files trickle in: row by row
                if on_report is not None and (report.sent or report.copied or report.deferred):
                    on_report(report)
                if prune:
                    pruned = prune_missing(self._db, [root])
                    refused = pruned.folders[0].refused
                    news = pruned.removed > 0 or (refused is not None and refusals.get(str(root)) != refused)
                    refusals[str(root)] = refused
                    if on_prune is not None and news:
                        on_prune(pruned)
            deadline = time.monotonic() + poll_s
            while time.monotonic() < deadline:
                if stop():
                    return
                time.sleep(min(0.2, poll_s))

    # -- steps ---------------------------------------------------------------------------------

    def _detect_one(self, data: bytes) -> ImageDetections | FashionBoxError:
        try:
            return self._client.detect(data)
        except FashionBoxError as exc:  # the image's own outcome; write_outcomes decides failed or deferred
            return exc

    def _write(self, conn: psycopg.Connection[Any], root_id: int,
               entries: list[tuple[_Loaded, Future[ImageDetections | FashionBoxError] | None]], tally: _Tally) -> int:
        return write_outcomes(conn, root_id, [(item, None if future is None else future.result())
                                              for item, future in entries], tally, self._models)

    def _report(self, done: int, total: int, start: float, tally: _Tally) -> None:
        if self._progress is not None:
            self._progress(Progress(done, total, time.perf_counter() - start, tally.failed))


# -- reading files --------------------------------------------------------------------------------

def _all_done(window: deque[tuple[_Loaded, Future[Any] | None]], count: int) -> bool:
    return all(future is None or future.done() for _, future in itertools.islice(window, count))


def _chunks(items: Sequence[Path], size: int) -> Iterable[list[Path]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _age_s(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return float("inf")  # vanished: index_files records it as unreadable


def _load(path: Path) -> _Loaded:
    try:
        stat = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        return _Loaded(path, None, "", 0, 0, read_error=f"cannot read the file: {exc.strerror or exc}")
    return _Loaded(path, data, sha256_hex(data), len(data), stat.st_mtime_ns)


def _add_phash(item: _Loaded) -> None:
    try:
        item.phash = phash64(item.data or b"")
    except Exception as exc:  # Pillow raises several types for bad files; the server's verdict decides failure
        item.phash_error = str(exc)


# -- writing rows ---------------------------------------------------------------------------------

# The steps below are shared by Indexer and fashionbox.catalog.ray_indexer.RayIndexer: whatever runs the
# detection, the same rules decide what is new and the same code writes the rows.

BULK_MIN_IMAGES = 100
"""A run bulk-loads (:func:`bulk_wanted`) only from this many new files: below it the row-by-row upkeep
costs under a second (about 5 ms of PostgreSQL's CPU an image with 14 indexes, BENCHMARKS.md "Catalog"),
and the indexes stay usable throughout."""


def bulk_wanted(conn: psycopg.Connection[Any], new: int, bulk: bool | None) -> bool:
    """Should a run of ``new`` files build the vector indexes at its end? ``bulk`` true or false decides;
    ``None``: when the new files are at least :data:`BULK_MIN_IMAGES` and as many as the images stored,
    so the build (over all the rows, old and new) costs about what keeping the new rows row by row
    would, and queries run exact (slower) for a run's length at most as long as the catalog took to fill."""
    if bulk is not None or new < BULK_MIN_IMAGES:
        return bool(bulk) and new > 0
    row = conn.execute("SELECT count(*) FROM images WHERE status = 'indexed'").fetchone()
    return new >= (int(row[0]) if row else 0)


def start_bulk_load(conn: psycopg.Connection[Any], new: int, bulk: bool | None) -> BulkLoad | None:
    """A :class:`BulkLoad` when the run should be one (:func:`bulk_wanted`) and no other holds it; otherwise
    ``None``, after building any vector index a killed bulk run left out (the rows are kept row by row)."""
    if bulk_wanted(conn, new, bulk):
        loader = BulkLoad.begin(conn)
        if loader is not None:
            return loader
    if new:
        repair_vector_indexes(conn, wait=True)
    return None


def register_root(conn: psycopg.Connection[Any], root: Path) -> int:
    row = conn.execute("INSERT INTO roots (path) VALUES (%s) ON CONFLICT (path) DO UPDATE SET path = EXCLUDED.path "
                       "RETURNING id", (str(root),)).fetchone()
    assert row is not None
    return int(row[0])


def _known_files(conn: psycopg.Connection[Any], paths: list[str]) -> dict[str, tuple[int, int]]:
    rows = conn.execute("SELECT path, size_bytes, mtime_ns FROM images WHERE path = ANY(%s)", (paths,)).fetchall()
    return {str(p): (int(size), int(mtime or -1)) for p, size, mtime in rows}


def changed_files(conn: psycopg.Connection[Any], paths: Sequence[Path], tally: _Tally) -> list[Path]:
    """``paths`` less those already indexed with the same size and modification time (counted as skipped)."""
    known = _known_files(conn, [str(p) for p in paths])
    todo = []
    for path in paths:
        row = known.get(str(path))
        try:
            stat = path.stat()
        except OSError:
            stat = None
        if row is not None and stat is not None and row == (stat.st_size, stat.st_mtime_ns):
            tally.skipped += 1
        else:
            todo.append(path)
    return todo


def fresh_items(conn: psycopg.Connection[Any], root_id: int, loaded: list[_Loaded], tally: _Tally) -> list[_Loaded]:
    """Drop files whose content is already indexed (at this path: touch it; elsewhere: copy it)."""
    shas = [item.sha256 for item in loaded if item.read_error is None]
    rows = conn.execute("SELECT DISTINCT ON (sha256) sha256, id FROM images WHERE sha256 = ANY(%s) "
                        "AND status = 'indexed' ORDER BY sha256, id", (shas,)).fetchall()
    indexed = {str(sha): int(image_id) for sha, image_id in rows}
    same_path = {str(p) for (p,) in conn.execute(
        "SELECT path FROM images WHERE path = ANY(%s) AND sha256 = ANY(%s)",
        ([str(i.path) for i in loaded], shas)).fetchall()}
    fresh = []
    for item in loaded:
        if item.read_error is None and str(item.path) in same_path:
            conn.execute("UPDATE images SET mtime_ns = %s WHERE path = %s AND sha256 = %s",
                         (item.mtime_ns, str(item.path), item.sha256))
            tally.skipped += 1
        elif item.read_error is None and item.sha256 in indexed:
            with conn.transaction():
                _copy_image(conn, indexed[item.sha256], root_id, item)
            tally.copied += 1
        else:
            fresh.append(item)
    return fresh


def write_outcomes(conn: psycopg.Connection[Any], root_id: int,
                   outcomes: Sequence[tuple[_Loaded, ImageDetections | FashionBoxError | None]], tally: _Tally,
                   models: _Models) -> int:
    """Store one chunk's outcomes (``None``: the file could not be read) in one transaction; how many
    images were stored (a deferred one is not)."""
    # The chunk's rows go in as few statements as it takes (the image rows in one pipeline, the garments in one
    # COPY, so that garment_vectors' statement trigger runs once a chunk, not once a garment): each statement
    # costs the server's CPU, shared with the detection on a small machine (BENCHMARKS.md, "Catalog").
    images: list[dict[str, Any]] = []
    garments: list[list[tuple[Any, ...]]] = []
    with conn.transaction():
        for item, outcome in outcomes:
            if outcome is None:
                message = item.read_error or "unreadable"
                images.append(_failed_values(root_id, item, message))
                garments.append([])
                tally.failed += 1
                tally.errors.append((str(item.path), message))
            elif isinstance(outcome, (InvalidImage, InvalidInput)):
                images.append(_failed_values(root_id, item, str(outcome)))
                garments.append([])
                tally.failed += 1
                tally.errors.append((str(item.path), str(outcome)))
            elif isinstance(outcome, FashionBoxError):
                tally.deferred += 1
                tally.errors.append((str(item.path), f"deferred: {outcome}"))
                logger.warning("%s: %s (left for the next run)", item.path, outcome)
            else:
                values, rows = _result_rows(conn, root_id, item, outcome, models)
                images.append(values)
                garments.append(rows)
                tally.indexed += 1
        if images:
            image_ids = _upsert_images(conn, images)
            conn.execute("DELETE FROM garments WHERE image_id = ANY(%s)", (image_ids,))
            if any(garments):
                with conn.cursor().copy(_COPY_GARMENTS) as copy:
                    for image_id, rows in zip(image_ids, garments, strict=True):
                        for row in rows:
                            copy.write_row((image_id, *row))
    return len(images)


def copy_later(conn: psycopg.Connection[Any], root_id: int, later: Sequence[_Loaded], tally: _Tally) -> None:
    """Files with the content of a file sent earlier in the same run: copied from its stored row."""
    for item in later:
        row = conn.execute("SELECT id FROM images WHERE sha256 = %s ORDER BY status = 'indexed' DESC, id "
                           "LIMIT 1", (item.sha256,)).fetchone()
        if row is None:  # its twin was deferred: both go next run
            tally.deferred += 1
            continue
        with conn.transaction():
            _copy_image(conn, int(row[0]), root_id, item)
        tally.copied += 1


_UPSERT_IMAGE = """
INSERT INTO images (path, root_id, sha256, size_bytes, mtime_ns, status, error, width, height, phash,
                    model_name, model_version, label_map, embedding, embedding_model_id, labels, label,
                    label_score, labels_model, indexed_at)
VALUES (%(path)s, %(root_id)s, %(sha256)s, %(size_bytes)s, %(mtime_ns)s, %(status)s, %(error)s, %(width)s,
        %(height)s, %(phash)s, %(model_name)s, %(model_version)s, %(label_map)s, %(embedding)s::vector,
        %(embedding_model_id)s, %(labels)s, %(label)s, %(label_score)s, %(labels_model)s, now())
ON CONFLICT (path) DO UPDATE SET
    root_id = EXCLUDED.root_id, sha256 = EXCLUDED.sha256, size_bytes = EXCLUDED.size_bytes,
    mtime_ns = EXCLUDED.mtime_ns, status = EXCLUDED.status, error = EXCLUDED.error, width = EXCLUDED.width,
    height = EXCLUDED.height, phash = EXCLUDED.phash, model_name = EXCLUDED.model_name,
    model_version = EXCLUDED.model_version, label_map = EXCLUDED.label_map, indexed_at = now(),
    embedding = EXCLUDED.embedding, embedding_model_id = EXCLUDED.embedding_model_id, labels = EXCLUDED.labels,
    label = EXCLUDED.label, label_score = EXCLUDED.label_score, labels_model = EXCLUDED.labels_model
RETURNING id
"""

_COPY_GARMENTS = """COPY garments (image_id, ordinal, category, score, x1, y1, x2, y2, attributes, overlapped, mask_rle,
                      embedding, embedding_model_id) FROM STDIN"""

OVERLAP_IOU = 0.7
"""A garment whose box overlaps a higher-scoring garment's this much (IoU) is the same thing seen as
another category (the server's NMS is per category); search leaves such ``overlapped`` garments out."""


def overlapped_flags(result: ImageDetections, iou: float = OVERLAP_IOU) -> list[bool]:
    """For each detection: does a higher-scoring detection of any category cover the same box?"""
    boxes = [d.box for d in result.detections]
    flags = []
    for i, (detection, box) in enumerate(zip(result.detections, boxes, strict=True)):
        flags.append(any(other.score > detection.score and _iou(box, boxes[j]) >= iou
                         for j, other in enumerate(result.detections) if j != i))
    return flags


def _iou(a: BoundingBox, b: BoundingBox) -> float:
    w = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    h = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = w * h
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def _upsert_images(conn: psycopg.Connection[Any], values: list[dict[str, Any]]) -> list[int]:
    """Insert or update the image rows (one pipeline: one round trip); their ids, in order."""
    ids = []
    with conn.cursor() as cursor:
        cursor.executemany(_UPSERT_IMAGE, values, returning=True)
        while True:
            row = cursor.fetchone()
            assert row is not None
            ids.append(int(row[0]))
            if not cursor.nextset():
                break
    return ids


def _image_values(root_id: int, item: _Loaded) -> dict[str, Any]:
    return {"path": str(item.path), "root_id": root_id, "sha256": item.sha256, "size_bytes": item.size_bytes,
            "mtime_ns": item.mtime_ns, "status": "indexed", "error": None, "width": None, "height": None,
            "phash": item.phash, "model_name": None, "model_version": None, "label_map": None, "embedding": None,
            "embedding_model_id": None, "labels": None, "label": None, "label_score": None, "labels_model": None}


class _Models:
    """The ``embedding_models`` rows an indexer has stored vectors of, by (name, kind, dimension)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, Kind, int], EmbeddingModel] = {}
        self.build_indexes = True
        """False during a bulk load: a new model's index is built at its end."""

    def id_of(self, conn: psycopg.Connection[Any], packed: PackedEmbedding | None, kind: Kind) -> int | None:
        if packed is None:
            return None
        key = (packed.model, kind, packed.dimension)
        model = self._known.get(key)
        if model is None:
            model = ensure_model(conn, packed.model, kind, packed.dimension, index=self.build_indexes)
            self._known[key] = model
        return model.id


def _literal(packed: PackedEmbedding | None) -> str | None:
    return None if packed is None else vector_literal(packed.to_array())


def _failed_values(root_id: int, item: _Loaded, message: str) -> dict[str, Any]:
    values = _image_values(root_id, item)
    values.update(status="failed", error=message)
    return values


def _result_rows(conn: psycopg.Connection[Any], root_id: int, item: _Loaded, result: ImageDetections,
                 models: _Models) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """The image's row and its garments' rows (without the image id, which the insert gives)."""
    values = _image_values(root_id, item)
    values.update(width=result.width, height=result.height, model_name=result.model_name,
                  model_version=result.model_version, label_map=result.label_map,
                  embedding=_literal(result.packed_embedding),
                  embedding_model_id=models.id_of(conn, result.packed_embedding, "image"))
    if result.labels:
        values.update(labels=Jsonb([{"label": lab.label, "score": lab.score, "index": lab.index}
                                    for lab in result.labels]),
                      label=result.labels[0].label, label_score=result.labels[0].score,
                      labels_model=result.labels_model or None)
    rows = []
    covered = overlapped_flags(result)
    for ordinal, detection in enumerate(result.detections):
        box = detection.box
        attributes = {group: {"label": a.label, "score": a.score} for group, a in detection.attributes.items()}
        mask = None if detection.mask_rle is None else detection.mask_rle.to_coco()
        packed = detection.packed_embedding
        rows.append((ordinal, detection.category, detection.score, box.x1, box.y1, box.x2, box.y2,
                     Jsonb(attributes), covered[ordinal], None if mask is None else Jsonb(mask), _literal(packed),
                     models.id_of(conn, packed, "garment")))
    return values, rows


def _copy_image(conn: psycopg.Connection[Any], source_id: int, root_id: int, item: _Loaded) -> None:
    """A new path with the content of image ``source_id``: same facts and garments, its own row."""
    row = conn.execute(
        """INSERT INTO images (path, root_id, sha256, size_bytes, mtime_ns, status, error, width, height, phash,
                               model_name, model_version, label_map, embedding, embedding_model_id, labels, label,
                               label_score, labels_model)
           SELECT %s, %s, sha256, size_bytes, %s, status, error, width, height, phash,
                  model_name, model_version, label_map, embedding, embedding_model_id, labels, label, label_score,
                  labels_model
           FROM images WHERE id = %s
           ON CONFLICT (path) DO UPDATE SET root_id = EXCLUDED.root_id, sha256 = EXCLUDED.sha256,
               size_bytes = EXCLUDED.size_bytes,
               mtime_ns = EXCLUDED.mtime_ns, status = EXCLUDED.status, error = EXCLUDED.error,
               width = EXCLUDED.width, height = EXCLUDED.height, phash = EXCLUDED.phash,
               model_name = EXCLUDED.model_name, model_version = EXCLUDED.model_version,
               label_map = EXCLUDED.label_map, embedding = EXCLUDED.embedding,
               embedding_model_id = EXCLUDED.embedding_model_id, labels = EXCLUDED.labels, label = EXCLUDED.label,
               label_score = EXCLUDED.label_score, labels_model = EXCLUDED.labels_model, indexed_at = now()
           RETURNING id""",
        (str(item.path), root_id, item.mtime_ns, source_id)).fetchone()
    assert row is not None
    image_id = int(row[0])
    conn.execute("DELETE FROM garments WHERE image_id = %s", (image_id,))
    conn.execute(
        """INSERT INTO garments (image_id, ordinal, category, score, x1, y1, x2, y2, attributes, overlapped,
                                 mask_rle, embedding, embedding_model_id)
           SELECT %s, ordinal, category, score, x1, y1, x2, y2, attributes, overlapped, mask_rle, embedding,
                  embedding_model_id
           FROM garments WHERE image_id = %s""",
        (image_id, source_id))


def report_json(report: IndexReport) -> str:
    return json.dumps(report.to_dict())
