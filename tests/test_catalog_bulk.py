"""Bulk indexing runs (``index --bulk``, or many new images): the vector indexes are down while the rows
go in and built once at the end, in a real embedded PostgreSQL with a planted server (no Triton: the
answers are fixed per file, so that two runs store the same vectors).

Checked: a run of as many new images as the catalog holds drops every HNSW index, loads, and ends with
each expected index present and valid (``pg_index.indisvalid``) and listed; ``similar`` then answers
as after a row-by-row run of the same images; a small run into a filled catalog keeps the indexes
throughout; a bulk run killed half-way leaves them out, queries still answer (exactly), opening the
catalog or the next run builds them, and no image is lost or stored twice; while one bulk load runs,
a commit that brings a new category builds no index and a second bulk run keeps its rows row by row.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalog_collection import PlantedServer, scratch_catalog_folder
from PIL import Image

from fashionbox.catalog import Catalog, Database, Indexer, Progress, SearchFilter
from fashionbox.catalog.indexer import BULK_MIN_IMAGES, bulk_wanted
from fashionbox.catalog.vectors import BulkLoad, bulk_load_running, expected_vector_indexes, present_vector_indexes
from fashionbox.client import AttributeScore, BoundingBox, Detection, ImageDetections, PackedEmbedding
from fashionbox.commands.cli import main
from fashionbox.contract.embedding import pack_embedding

pytestmark = pytest.mark.integration

DIM = 16
GARMENT_MODEL = "bulk-garment@1"
IMAGE_MODEL = "bulk-image@1"
CATEGORIES = ("dress", "skirt", "shoe", "top")
LENGTHS = ("short", "long", "mini")
IMAGES = 120
CHUNK = 16


@pytest.fixture
def folder() -> Iterator[Path]:
    with scratch_catalog_folder("fashionbox-catalog-bulk-") as path:
        yield path


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _packed(model: str, rng: np.random.Generator) -> PackedEmbedding:
    vector = rng.normal(size=DIM).astype(np.float32)
    return PackedEmbedding(model, DIM, "float32", pack_embedding(vector / np.linalg.norm(vector), "float32"))



def _photos(folder: Path, server: PlantedServer, count: int, *, first: int = 0, category: str | None = None) -> Path:
    """``count`` photos, each with 2-4 garments of planted categories (or all of ``category``), lengths and
    vectors."""
    photos = folder / "photos"
    photos.mkdir(exist_ok=True)
    for i in range(first, first + count):
        rng = np.random.default_rng(1000 + i)
        data = _png(i)
        (photos / f"{i:04d}.png").write_bytes(data)
        detections = tuple(
            Detection(BoundingBox(k, k, 20 + k, 20 + k), category or CATEGORIES[int(rng.integers(len(CATEGORIES)))],
                      round(float(rng.uniform(0.5, 1.0)), 3),
                      {"length": AttributeScore(LENGTHS[int(rng.integers(len(LENGTHS)))], 0.9)},
                      packed_embedding=_packed(GARMENT_MODEL, rng))
            for k in range(2 + i % 3))
        server.answers[data] = ImageDetections(32, 32, detections, packed_embedding=_packed(IMAGE_MODEL, rng))
    return photos


def _vector_indexes(db: Database) -> tuple[set[str], dict[str, bool], int]:
    """(the names of the expected vector indexes, those present with indisvalid, HNSW indexes on garment_vectors)."""
    with db.connect() as conn:
        expected = {i.name for i in expected_vector_indexes(conn)}
        present = present_vector_indexes(conn, sorted(expected))
        row = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'garment_vectors' "
                           "AND indexdef LIKE '%USING hnsw%'").fetchone()
    return expected, present, int(row[0]) if row else -1


def _listed(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM garment_vector_indexes").fetchone()
    return int(row[0]) if row else -1


def _all_built(db: Database) -> bool:
    expected, present, _ = _vector_indexes(db)
    pairs = sum(1 for name in expected if name.count("_") == 4)  # garment_vectors_hnsw_<model>_<category>
    return bool(expected) and present == dict.fromkeys(expected, True) and _listed(db) == pairs


def _queries() -> list[SearchFilter]:
    return [SearchFilter(), SearchFilter(category="dress"), SearchFilter(category="skirt"),
            SearchFilter(category="top", attributes=(("length", "long"),)),
            SearchFilter(attributes=(("length", "mini"),))]


def _answers(db: Database, rng: np.random.Generator) -> list[list[tuple[str, float]]]:
    """``similar`` of a few query vectors under each filter: (photo name, similarity) of each garment."""
    catalog = Catalog(db)
    out = []
    for _ in range(3):
        vector = rng.normal(size=DIM).astype(np.float32)
        for query in _queries():
            hits = catalog.similar(vector, model=GARMENT_MODEL, query=query, limit=8)
            out.append([(Path(h.image).name, round(g.rank, 5)) for h in hits for g in h.garments])
    return out


class _Watch:
    """A progress callback that records the HNSW indexes on garment_vectors after each chunk (and can stop
    the run there, as a kill would)."""

    def __init__(self, db: Database, *, stop_after: int | None = None) -> None:
        self.db = db
        self.stop_after = stop_after
        self.seen: list[int] = []

    def __call__(self, progress: Progress) -> None:
        self.seen.append(_vector_indexes(self.db)[2])
        if self.stop_after is not None and len(self.seen) >= self.stop_after:
            raise KeyboardInterrupt("killed half-way")


def _stored(db: Database) -> tuple[list[str], int]:
    with db.connect() as conn:
        paths = [Path(str(p)).name for (p,) in conn.execute("SELECT path FROM images ORDER BY path").fetchall()]
        garments = conn.execute("SELECT count(*) FROM garments").fetchone()
    return paths, int(garments[0]) if garments else -1


def _expected_garments(count: int) -> int:
    return sum(2 + i % 3 for i in range(count))


def _as_planted(db: Database, server: PlantedServer, photos: Path) -> None:
    """Every stored photo's garments (order, category, box, length label, vector) and image vector are the
    planted answer to its file: each chunk's rows went in as one COPY, their image ids in order."""
    with db.connect() as conn:
        rows = conn.execute("SELECT i.path, i.embedding::real[], g.ordinal, g.category, g.x1, "
                            "g.attributes -> 'length' ->> 'label', g.embedding::real[] FROM images i "
                            "JOIN garments g ON g.image_id = i.id ORDER BY i.path, g.ordinal").fetchall()
    stored: dict[str, list[tuple[Any, ...]]] = {}
    image_vectors: dict[str, Any] = {}
    for path, image_vector, ordinal, category, x1, length, vector in rows:
        stored.setdefault(str(path), []).append((ordinal, category, x1, length, vector))
        image_vectors[str(path)] = image_vector
    assert stored
    for path, garments in stored.items():
        answer = server.answers[Path(path).read_bytes()]
        assert answer.embedding is not None
        np.testing.assert_allclose(image_vectors[path], answer.embedding, atol=1e-6)
        assert [(o, c, x1, length) for o, c, x1, length, _ in garments] == [
            (k, d.category, d.box.x1, d.attributes["length"].label) for k, d in enumerate(answer.detections)]
        for (*_, vector), detection in zip(garments, answer.detections, strict=True):
            assert detection.embedding is not None
            np.testing.assert_allclose(vector, detection.embedding, atol=1e-6)


def test_a_bulk_run_builds_every_vector_index_at_its_end_and_answers_as_a_row_by_row_run(folder: Path) -> None:
    server = PlantedServer()
    photos = _photos(folder, server, IMAGES)
    db = Database.open(catalog=folder / "catalog")
    with db.connect() as conn:
        assert bulk_wanted(conn, IMAGES, None) and not bulk_wanted(conn, BULK_MIN_IMAGES - 1, None)
    watch = _Watch(db)
    indexer = Indexer(db, server, max_in_flight=2, chunk_size=CHUNK, progress=watch)  # type: ignore[arg-type]
    report = indexer.index_folder(photos)  # 120 new images, none stored: a bulk run by default
    assert report.indexed == IMAGES
    assert watch.seen and set(watch.seen) == {0}  # no HNSW index on garment_vectors while the rows went in
    expected, present, hnsw = _vector_indexes(db)
    # the garment model's index, the image model's, and one per category
    assert len(expected) == 2 + len(CATEGORIES) and hnsw == 1 + len(CATEGORIES)
    assert present == dict.fromkeys(expected, True) and _all_built(db)
    assert _stored(db) == (sorted(p.name for p in photos.iterdir()), _expected_garments(IMAGES))
    _as_planted(db, server, photos)
    bulk = _answers(db, np.random.default_rng(5))

    # the same photos again, row by row, into the emptied catalog (whose indexes stay): the same answers
    with db.connect() as conn:
        conn.execute("TRUNCATE images, garments, roots CASCADE")
    watch.seen.clear()
    assert indexer.index_folder(photos, bulk=False).indexed == IMAGES
    assert set(watch.seen) == {1 + len(CATEGORIES)}  # every index kept row by row throughout
    assert _all_built(db)
    assert _answers(db, np.random.default_rng(5)) == bulk
    assert any(len(answer) > 3 for answer in bulk)

    # emptied again (the indexes stay, empty), then a bulk run: every HNSW index down while the rows go in
    with db.connect() as conn:
        conn.execute("TRUNCATE images, garments, roots CASCADE")
    watch.seen.clear()
    report = indexer.index_folder(photos, bulk=True)
    assert report.bulk and report.index_build_s > 0 and set(watch.seen) == {0} and _all_built(db)
    assert _answers(db, np.random.default_rng(5)) == bulk

    # a small run into the filled catalog: row by row, the indexes there throughout
    _photos(folder, server, 12, first=IMAGES)
    with db.connect() as conn:
        assert not bulk_wanted(conn, 12, None)
    watch.seen.clear()
    assert indexer.index_folder(photos).indexed == 12
    assert watch.seen and set(watch.seen) == {1 + len(CATEGORIES)}
    assert _all_built(db)


def test_a_killed_bulk_run_leaves_the_indexes_out_and_the_next_run_or_opening_builds_them(folder: Path) -> None:
    server = PlantedServer()
    photos = _photos(folder, server, IMAGES)
    db = Database.open(catalog=folder / "catalog")
    killed = _Watch(db, stop_after=2)
    indexer = Indexer(db, server, max_in_flight=2, chunk_size=CHUNK, progress=killed)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        indexer.index_folder(photos)
    paths, garments = _stored(db)
    assert len(paths) == 2 * CHUNK and garments == _expected_garments(2 * CHUNK)  # the chunks committed
    _, present, hnsw = _vector_indexes(db)
    assert hnsw == 0 and present == {} and _listed(db) == 0
    with db.connect() as conn:
        assert not bulk_load_running(conn)  # the lock went with the run
    # queries answer meanwhile, exactly: the same as the forced exact search
    catalog = Catalog(db)
    vector = np.random.default_rng(2).normal(size=DIM).astype(np.float32)
    for query in _queries():
        assert [[g.garment_id for g in h.garments] for h in catalog.similar(vector, model=GARMENT_MODEL,
                                                                            query=query, limit=5)] == \
            [[g.garment_id for g in h.garments] for h in catalog.similar(vector, model=GARMENT_MODEL, query=query,
                                                                        limit=5, exact=True)]
    db.migrate()  # what opening the catalog does: the missing indexes are built
    assert _all_built(db)

    # killed again (an explicit bulk run), then resumed by a row-by-row run: it builds them before its first chunk
    again = Indexer(db, server, max_in_flight=2, chunk_size=CHUNK,  # type: ignore[arg-type]
                    progress=_Watch(db, stop_after=1))
    with pytest.raises(KeyboardInterrupt):
        again.index_folder(photos, bulk=True)
    assert _vector_indexes(db)[2] == 0 and len(_stored(db)[0]) == 3 * CHUNK
    resumed = _Watch(db)
    report = Indexer(db, server, max_in_flight=2, chunk_size=CHUNK,  # type: ignore[arg-type]
                     progress=resumed).index_folder(photos, bulk=False)
    assert report.indexed == IMAGES - 3 * CHUNK and report.skipped == 3 * CHUNK
    assert resumed.seen[0] == 1 + len(CATEGORIES) and _all_built(db)
    # no image lost or stored twice, each with its garments once
    assert _stored(db) == (sorted(p.name for p in photos.iterdir()), _expected_garments(IMAGES))
    _as_planted(db, server, photos)


def test_while_a_bulk_load_runs_no_commit_or_opening_builds_an_index_and_a_second_one_goes_row_by_row(
        folder: Path) -> None:
    server = PlantedServer()
    photos = _photos(folder, server, 40)
    db = Database.open(catalog=folder / "catalog")
    Indexer(db, server, max_in_flight=2, chunk_size=CHUNK).index_folder(photos, bulk=False)  # type: ignore[arg-type]
    assert _all_built(db)
    with db.connect() as holder:
        loader = BulkLoad.begin(holder)
        assert loader is not None and _vector_indexes(db)[2] == 0
        with db.connect() as conn:
            assert bulk_load_running(conn) and BulkLoad.begin(conn) is None  # one at a time
        # another writer brings a new category: its commit builds no index; nor does opening the catalog
        (folder / "more").mkdir()
        more = _photos(folder / "more", server, 3, first=500, category="hat")
        assert Indexer(db, server, max_in_flight=2).index_folder(more).indexed == 3  # type: ignore[arg-type]
        db.migrate()
        assert _vector_indexes(db)[2] == 0 and _listed(db) == 0
        assert loader.finish() == 2 + len(CATEGORIES) + 1  # the hat's index too
    assert _all_built(db)
    with db.connect() as conn:
        assert not bulk_load_running(conn)
    hits = Catalog(db).similar(np.ones(DIM, dtype=np.float32), model=GARMENT_MODEL, query=SearchFilter(category="hat"),
                               limit=5)
    assert {Path(h.image).name for h in hits} == {"0500.png", "0501.png", "0502.png"}


def test_the_command_refuses_bulk_with_watch_before_it_starts_a_database(tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["catalog", "index", str(tmp_path), "--bulk", "--watch", "--catalog", str(tmp_path / "catalog")])
    assert code == 2 and "--watch keeps the vector indexes row by row" in err.getvalue()
    assert not (tmp_path / "catalog").exists()
