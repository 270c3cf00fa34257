"""The narrow vector table of schema version 3 (``garment_vectors``), in a real embedded PostgreSQL.

Checked: a catalog written by the previous schema (version 2: vectors in ``garments``, an HNSW index
per model there) is migrated forward: its rows are copied, the old index goes, the model's and each
category's index are built on the narrow table, and the old rows come back through ``similar``
(through the indexes and exactly, the same answer); afterwards the table follows every change of
``garments``: a re-index through the indexer (the photo's garments deleted and written again), an
update, a garment losing its vector, a deleted image; a category that first appears gets its
own index when its transaction commits, and one whose commit finds another writer busy is built
later without waiting for it; which way each query goes (exact for a filter estimated selective, else
the index, then exact search when the estimate was wrong).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalog_collection import PlantedServer, random_unit, scratch_catalog_folder, spy_on_plans
from PIL import Image
from psycopg.types.json import Jsonb

from fashionbox.catalog import Catalog, Database, Indexer, SearchFilter, schema
from fashionbox.catalog.vectors import models, vector_literal
from fashionbox.client import BoundingBox, Detection, ImageDetections, PackedEmbedding
from fashionbox.contract.embedding import pack_embedding

pytestmark = pytest.mark.integration

DIM = 16
MODEL = "old@1"


@pytest.fixture
def folder() -> Iterator[Path]:
    with scratch_catalog_folder("fashionbox-catalog-vector-table-") as path:
        yield path


def _unit(rng: np.random.Generator) -> np.ndarray[Any, np.dtype[np.float32]]:
    return random_unit(rng, DIM)


def _version_2(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    """A catalog at schema version 2, as the previous release made it."""
    with monkeypatch.context() as patch:
        patch.setattr(Database, "migrate", _migrate_without_vector_indexes)
        db = Database.open(catalog=folder / "catalog")
    assert db.schema_version() == 2
    return db


def _migrate_without_vector_indexes(self: Database) -> int:
    """Version 2's ``migrate``: the migrations only (the vector-index step came with version 3)."""
    with self.connect() as conn, conn.transaction():
        conn.execute("""CREATE TABLE IF NOT EXISTS catalog_schema (version integer PRIMARY KEY,
                        description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())""")
        for migration in (m for m in schema.MIGRATIONS if m.version <= 2):
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute("INSERT INTO catalog_schema (version, description) VALUES (%s, %s)",
                         (migration.version, migration.description))
    return 2


def test_a_version_2_catalog_is_migrated_and_its_rows_come_back_through_similar(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(17)
    db = _version_2(folder, monkeypatch)
    vectors: dict[int, np.ndarray[Any, np.dtype[np.float32]]] = {}
    categories: dict[int, str] = {}
    lengths: dict[int, str] = {}
    with db.connect() as conn, conn.transaction():
        # the previous release's writes: the model with its HNSW index on garments, images, garments
        row = conn.execute("INSERT INTO embedding_models (name, kind, dimension) VALUES (%s, 'garment', %s) "
                           "RETURNING id", (MODEL, DIM)).fetchone()
        assert row is not None
        model_id = int(row[0])
        conn.execute(f"CREATE INDEX IF NOT EXISTS garments_embedding_hnsw_{model_id} ON garments USING hnsw "
                     f"((embedding::halfvec({DIM})) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64) "
                     f"WHERE embedding_model_id = {model_id}")
        for i in range(40):
            image = conn.execute("INSERT INTO images (path, sha256, size_bytes, status) VALUES (%s, %s, 1, "
                                 "'indexed') RETURNING id", (f"/old/{i}.jpg", f"{i:064x}")).fetchone()
            assert image is not None
            for k in range(3):
                category = ("dress", "skirt", "shoe")[(i + k) % 3]
                vector = _unit(rng)
                garment = conn.execute(
                    "INSERT INTO garments (image_id, ordinal, category, score, x1, y1, x2, y2, attributes, overlapped, "
                    "embedding, embedding_model_id) VALUES (%s, %s, %s, 0.9, 0, 0, 10, 10, %s, %s, %s::vector, %s) "
                    "RETURNING id",
                    (int(image[0]), k, category, Jsonb({"length": {"label": ("short", "long")[i % 2], "score": 0.8}}),
                     i == 0 and k == 2, vector_literal(vector), model_id)).fetchone()
                assert garment is not None
                vectors[int(garment[0])] = vector
                categories[int(garment[0])] = category
                lengths[int(garment[0])] = ("short", "long")[i % 2]
        # a garment stored without a vector (a server that sent none)
        conn.execute("INSERT INTO garments (image_id, ordinal, category, score, x1, y1, x2, y2) "
                     "SELECT id, 9, 'dress', 0.5, 0, 0, 1, 1 FROM images WHERE path = '/old/1.jpg'")

    assert db.migrate() == schema.LATEST_VERSION == db.schema_version() >= 3
    with db.connect() as conn:
        model = next(m for m in models(conn, "garment"))
        narrow = conn.execute("SELECT count(*) FROM garment_vectors").fetchone()
        indexes = {str(n) for (n,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'").fetchall()}
        ids = dict(conn.execute("SELECT name, id FROM garment_categories").fetchall())
        labels = conn.execute("SELECT attributes FROM garment_vectors LIMIT 1").fetchone()
    assert narrow == (len(vectors),)  # every garment with a vector, not the one without
    assert indexes == {model.index_name, *(model.category_index_name(c) for c in ids.values())}
    assert f"garments_embedding_hnsw_{model.id}" not in indexes  # the old index on the wide rows is gone
    assert labels is not None and set(labels[0]["length"]) == {"label"}  # labels only: scores stay in garments

    catalog = Catalog(db)
    target = vectors[next(iter(vectors))]
    matrix = np.stack(list(vectors.values()))
    order = [list(vectors)[i] for i in np.argsort(-(matrix @ target), kind="stable")]
    for query in (SearchFilter(include_overlapped=True), SearchFilter(category="skirt"),
                  SearchFilter(category="dress", attributes=(("length", "long"),))):
        answers = [catalog.similar(target, model=MODEL, query=query, limit=5, exact=exact)
                   for exact in (None, True, False)]
        ranked = [[g.garment_id for h in hits for g in h.garments] for hits in answers]
        assert ranked[0] == ranked[1] == ranked[2], query
        expected = [g for g in order if (query.category is None or categories[g] == query.category)
                    and all(lengths[g] == label for _, label in query.attributes)]
        best = answers[1][0].garments[0]
        assert best.garment_id == expected[0]
        assert best.rank == pytest.approx(float(vectors[expected[0]] @ target), abs=1e-5)  # float32 similarities
    overlapped = next(g for g in vectors if categories[g] == "shoe")  # image 0's third garment
    assert overlapped not in {g.garment_id for h in catalog.similar(vectors[overlapped], model=MODEL, limit=40)
                              for g in h.garments}
    assert catalog.similar(target, model=MODEL, query=SearchFilter(category="hat")) == []

    # which way each query goes (queries.SELECTIVE_FACTOR): a filter that passes few garments against those asked
    # for is answered exactly; others through the index (the category's own, with a category), and exactly after
    # all when the index scan comes up short (fewer garments pass than the estimate said)
    from fashionbox.catalog import queries

    ways = spy_on_plans(monkeypatch)
    long_dresses = SearchFilter(category="dress", attributes=(("length", "long"),))
    passing = sum(categories[g] == "dress" and lengths[g] == "long" for g in vectors)
    assert queries.SELECTIVE_FACTOR * 3 < passing <= queries.SELECTIVE_FACTOR * 6
    for query, limit, expected_ways in ((SearchFilter(category="skirt"), 10, [True]),  # 40 pass, 30 asked: exact
                                        (SearchFilter(category="skirt"), 1, [False]),  # 40 pass, 3 asked: the index
                                        (long_dresses, 1, [False]),  # 3 asked, about 20 pass: the index
                                        (long_dresses, 2, [True]),  # 6 asked: exact
                                        (SearchFilter(attributes=(("length", "long"),)), 10, [True]),
                                        (SearchFilter(attributes=(("length", "long"),)), 1, [False])):
        ways.clear()
        hits = catalog.similar(target, model=MODEL, query=query, limit=limit)
        assert ways == expected_ways, (query, limit)
        exact_hits = catalog.similar(target, model=MODEL, query=query, limit=limit, exact=True)
        assert [[g.garment_id for g in h.garments] for h in hits] == \
            [[g.garment_id for g in h.garments] for h in exact_hits]
    # the estimate is a sample kept for a while: when it is wrong (all but two long dresses made short since),
    # the index scan comes up short and the exact scan answers
    with db.connect() as conn:
        conn.execute("""UPDATE garments SET attributes = jsonb_set(attributes, '{length,label}', '"short"')
                        WHERE category = 'dress' AND attributes -> 'length' ->> 'label' = 'long' AND id NOT IN
                        (SELECT id FROM garments WHERE category = 'dress'
                         AND attributes -> 'length' ->> 'label' = 'long' ORDER BY id LIMIT 2)""")
    ways.clear()
    hits = catalog.similar(target, model=MODEL, query=long_dresses, limit=1)
    assert ways == [False, True]
    assert len([g for h in catalog.similar(target, model=MODEL, query=long_dresses, limit=5, exact=True)
                for g in h.garments]) == 2
    assert [g.garment_id for h in hits for g in h.garments] == \
        [g.garment_id for h in catalog.similar(target, model=MODEL, query=long_dresses, limit=1, exact=True)
         for g in h.garments]


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()



def _answer(category: str, vector: np.ndarray[Any, np.dtype[np.float32]]) -> ImageDetections:
    packed = PackedEmbedding(MODEL, DIM, "float32", pack_embedding(vector, "float32"))
    return ImageDetections(32, 32, (Detection(BoundingBox(1, 1, 20, 20), category, 0.9, packed_embedding=packed),))


def test_the_narrow_table_follows_reindexing_updates_and_deletes(folder: Path) -> None:
    rng = np.random.default_rng(3)
    server = PlantedServer()
    photos = folder / "photos"
    photos.mkdir()
    first = {name: _unit(rng) for name in ("a", "b", "c")}
    for seed, (name, vector) in enumerate(first.items()):
        data = _png(seed)
        (photos / f"{name}.png").write_bytes(data)
        server.answers[data] = _answer("dress", vector)
    db = Database.open(catalog=folder / "catalog")
    indexer = Indexer(db, server, max_in_flight=1)  # type: ignore[arg-type]
    assert indexer.index_folder(photos).indexed == 3
    catalog = Catalog(db)

    def found(vector: np.ndarray[Any, np.dtype[np.float32]], category: str | None = None) -> list[tuple[str, float]]:
        hits = catalog.similar(vector, model=MODEL, query=SearchFilter(category=category), limit=10)
        return [(Path(h.image).name, round(h.score, 4)) for h in hits]

    def narrow_rows() -> list[tuple[Any, ...]]:
        with db.connect() as conn:
            return conn.execute("SELECT g.id, c.name, v.score FROM garment_vectors v JOIN garments g "
                                "ON g.id = v.garment_id JOIN garment_categories c ON c.id = v.category_id "
                                "ORDER BY g.id").fetchall()

    assert found(first["a"])[0] == ("a.png", 1.0)
    # re-index: a.png's content changes to a skirt with another vector; its old garment is gone everywhere
    replaced = _unit(rng)
    data = _png(100)
    (photos / "a.png").write_bytes(data)
    server.answers[data] = _answer("skirt", replaced)
    assert indexer.index_folder(photos).indexed == 1
    assert "a.png" not in [name for name, _ in found(first["a"], "dress")]
    assert found(replaced, "skirt") == [("a.png", 1.0)]
    with db.connect() as conn:
        garments = conn.execute("SELECT count(*) FROM garments").fetchone()
        skirt = conn.execute("SELECT id FROM garment_categories WHERE name = 'skirt'").fetchone()
        listed = conn.execute("SELECT count(*) FROM garment_vector_indexes").fetchone()
        model = next(m for m in models(conn, "garment"))
        built = conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s",
                             (model.category_index_name(int(skirt[0])) if skirt else "",)).fetchone()
    assert garments == (3,) and len(narrow_rows()) == 3
    assert skirt is not None and listed == (2,) and built == (1,)  # the new category got its index at commit
    # an update of garments moves the narrow row with it; losing the vector removes it
    with db.connect() as conn:
        conn.execute("UPDATE garments SET category = 'skirt', score = 0.5 WHERE image_id = "
                     "(SELECT id FROM images WHERE path LIKE '%/b.png')")
    assert ("b.png", 1.0) in found(first["b"], "skirt") and found(first["b"], "dress")[0][0] != "b.png"
    assert sorted(r[1:] for r in narrow_rows()) == [("dress", 0.9), ("skirt", 0.5), ("skirt", 0.9)]
    with db.connect() as conn:
        conn.execute("UPDATE garments SET embedding = NULL, embedding_model_id = NULL WHERE image_id = "
                     "(SELECT id FROM images WHERE path LIKE '%/c.png')")
    assert "c.png" not in [name for name, _ in found(first["c"])] and len(narrow_rows()) == 2
    # deleting an image deletes its garments and their narrow rows
    with db.connect() as conn:
        conn.execute("DELETE FROM images WHERE path LIKE '%/b.png'")
    assert [r[1] for r in narrow_rows()] == ["skirt"]
    assert [name for name, _ in found(first["b"])] == ["a.png"]


def test_a_category_index_skipped_while_another_writer_is_busy_is_built_later(folder: Path) -> None:
    """The build at commit never waits for another writer's transaction (NOWAIT): the pair is left out,
    queries use the model's index meanwhile, and opening the catalog builds it."""
    rng = np.random.default_rng(8)
    db = Database.open(catalog=folder / "catalog")

    def insert(conn: Any, path: str, category: str, vector: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        image = conn.execute("INSERT INTO images (path, sha256, size_bytes, status) VALUES (%s, %s, 1, 'indexed') "
                             "RETURNING id", (path, path.encode().hex())).fetchone()
        conn.execute("INSERT INTO garments (image_id, ordinal, category, score, x1, y1, x2, y2, embedding, "
                     "embedding_model_id) VALUES (%s, 0, %s, 0.9, 0, 0, 1, 1, %s::vector, "
                     "(SELECT id FROM embedding_models WHERE name = %s))",
                     (int(image[0]), category, vector_literal(vector), MODEL))

    with db.connect() as conn:
        conn.execute("INSERT INTO embedding_models (name, kind, dimension) VALUES (%s, 'garment', %s)", (MODEL, DIM))
        insert(conn, "/first.jpg", "dress", _unit(rng))
    hat = _unit(rng)
    with db.connect() as busy, db.connect() as other:
        other.execute("SET lock_timeout = '10s'")  # were it to wait, this thread would wait on itself: fail instead
        with busy.transaction():
            insert(busy, "/busy.jpg", "dress", _unit(rng))  # holds its write lock on garment_vectors until commit
            with other.transaction():
                insert(other, "/hat.jpg", "hat", hat)  # a new category: its index would need that lock
            listed = other.execute("SELECT count(*) FROM garment_vector_indexes x JOIN garment_categories c "
                                   "ON c.id = x.category_id WHERE c.name = 'hat'").fetchone()
            assert listed == (0,)  # committed without waiting, its index left for later
        other.execute("RESET lock_timeout")
    hits = Catalog(db).similar(hat, model=MODEL, query=SearchFilter(category="hat"))
    assert [Path(h.image).name for h in hits] == ["hat.jpg"]  # the model's index (or exact) meanwhile
    db.migrate()  # what opening the catalog does
    with db.connect() as conn:
        model = next(m for m in models(conn, "garment"))
        hat_id = conn.execute("SELECT id FROM garment_categories WHERE name = 'hat'").fetchone()
        assert hat_id is not None
        built = conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s",
                             (model.category_index_name(int(hat_id[0])),)).fetchone()
        listed = conn.execute("SELECT count(*) FROM garment_vector_indexes").fetchone()
    assert built == (1,) and listed == (2,)
    assert [Path(h.image).name for h in Catalog(db).similar(hat, model=MODEL, query=SearchFilter(category="hat"))] \
        == ["hat.jpg"]
