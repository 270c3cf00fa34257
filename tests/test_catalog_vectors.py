"""Visual search in a real embedded PostgreSQL + pgvector, with answers of known vectors.

The server's answers are built here (``ImageDetections`` with ``PackedEmbedding``s of planted
vectors: garments of one identity near each other, an image and its transformed copy near each
other), so that every ranking has an exact expected answer; the real served model is exercised by
tests/test_catalog_integration.py. Checked: vectors, models, labels and the per-model HNSW index
are stored; ``similar`` ranks by cosine, filters in the same query, answers the same through the
index and exactly, and refuses vectors of another model; ``duplicates`` finds transformed copies
above the threshold only; ``search`` by image-level label and by a text vector.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalog_collection import PlantedServer, scratch_catalog_folder
from PIL import Image

from fashionbox.catalog import Catalog, Database, Indexer, QueryError, SearchFilter
from fashionbox.catalog.queries import QueryGarment, similar_sql
from fashionbox.catalog.schema import LATEST_VERSION
from fashionbox.catalog.vectors import models
from fashionbox.client import BoundingBox, Detection, ImageDetections, ImageLabel, PackedEmbedding
from fashionbox.contract.embedding import pack_embedding

pytestmark = pytest.mark.integration

DIM = 32
MODEL = "planted@1"
IDENTITIES = 8
VIEWS = 3
CATEGORIES = ("dress", "skirt")


def _unit(vector: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    out: np.ndarray[Any, np.dtype[np.float32]] = (vector / np.linalg.norm(vector)).astype(np.float32)
    return out


def _packed(vector: np.ndarray[Any, Any], model: str = MODEL) -> PackedEmbedding:
    return PackedEmbedding(model, int(vector.size), "float32", pack_embedding(vector, "float32"))



def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with scratch_catalog_folder("fashionbox-catalog-vectors-") as path:
        yield path


@pytest.fixture(scope="module")
def planted(folder: Path) -> dict[str, Any]:
    """IDENTITIES garments seen VIEWS times each (one photo per view, with a distractor garment), plus
    a photo and its transformed copy (image vectors at cosine ~0.99) and a look-alike (~0.85)."""
    rng = np.random.default_rng(5)
    server = PlantedServer()
    photos = folder / "photos"
    photos.mkdir()
    identity_of: dict[str, int] = {}
    bases = [_unit(rng.normal(size=DIM)) for _ in range(IDENTITIES)]
    seed = 0
    for identity, base in enumerate(bases):
        for view in range(VIEWS):
            seed += 1
            data = _png(seed)
            path = photos / f"id{identity}-view{view}.png"
            path.write_bytes(data)
            garment = _unit(base + 0.3 * rng.normal(size=DIM) / np.sqrt(DIM))
            distractor = _unit(rng.normal(size=DIM))
            label = "tops" if identity % 2 == 0 else "bottoms"
            server.answers[data] = ImageDetections(64, 64, (
                Detection(BoundingBox(1, 1, 40, 60), CATEGORIES[identity % 2], 0.9,
                          packed_embedding=_packed(garment)),
                Detection(BoundingBox(30, 2, 62, 30), "shoe", 0.6, packed_embedding=_packed(distractor)),
            ), labels=(ImageLabel(label, 0.5 + 0.05 * view, 0), ImageLabel("bags", 0.1, 1)),
                labels_model="planted verticals", packed_embedding=_packed(_unit(rng.normal(size=DIM))))
            identity_of[str(path.resolve())] = identity
            if identity == 0 and view == 0:  # a transformed copy: the same garments (slightly moved), mirrored
                seed += 1
                copy = _png(seed)
                (photos / "garment-copy.png").write_bytes(copy)
                moved = [_unit(v + 0.1 * rng.normal(size=DIM) / np.sqrt(DIM)) for v in (distractor, garment)]
                server.answers[copy] = ImageDetections(64, 64, (
                    Detection(BoundingBox(2, 2, 34, 30), "shoe", 0.6, packed_embedding=_packed(moved[0])),
                    Detection(BoundingBox(24, 1, 63, 60), "dress", 0.9, packed_embedding=_packed(moved[1])),
                ), packed_embedding=_packed(_unit(rng.normal(size=DIM))))
    original = _unit(rng.normal(size=DIM))
    copies = {"original": original, "transformed": _unit(original + 0.12 * rng.normal(size=DIM) / np.sqrt(DIM)),
              "lookalike": _unit(original + 0.6 * rng.normal(size=DIM) / np.sqrt(DIM))}
    for name, vector in copies.items():
        seed += 1
        data = _png(seed)
        (photos / f"{name}.png").write_bytes(data)
        server.answers[data] = ImageDetections(64, 64, (), packed_embedding=_packed(vector))
    db = Database.open(catalog=folder / "catalog")
    report = Indexer(db, server, max_in_flight=2).index_folder(photos)  # type: ignore[arg-type]
    assert report.indexed == IDENTITIES * VIEWS + 4 and report.failed == 0
    cosines = {name: float(copies["original"] @ v) for name, v in copies.items()}
    return {"db": db, "identity": identity_of, "server": server, "photos": photos, "cosines": cosines,
            "garment_copy": {str((photos / "garment-copy.png").resolve()): 0}}


def _garment_of(db: Database, path: Path, ordinal: int = 0) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT g.id FROM garments g JOIN images i ON i.id = g.image_id WHERE i.path = %s "
                           "AND g.ordinal = %s", (str(path.resolve()), ordinal)).fetchone()
    assert row is not None
    return int(row[0])


def test_vectors_labels_models_and_one_hnsw_index_per_model_are_stored(planted: dict[str, Any]) -> None:
    db: Database = planted["db"]
    assert db.schema_version() == LATEST_VERSION >= 2
    with db.connect() as conn:
        known = {(m.name, m.kind, m.dimension) for m in models(conn)}
        assert known == {(MODEL, "garment", DIM), (MODEL, "image", DIM)}
        missing = conn.execute("SELECT count(*) FROM garments WHERE embedding IS NULL OR embedding_model_id IS NULL"
                               ).fetchone()
        assert missing == (0,)
        indexes = {name: definition for name, definition in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'").fetchall()}
        garment_model = next(m for m in models(conn, "garment"))
        image_model = next(m for m in models(conn, "image"))
        categories = dict(conn.execute("SELECT name, id FROM garment_categories").fetchall())
        assert set(categories) == {*CATEGORIES, "shoe"}
        # one index per model (image vectors in images, garment vectors in the narrow table), one per category
        assert set(indexes) == {image_model.index_name, garment_model.index_name,
                                *(garment_model.category_index_name(c) for c in categories.values())}
        for definition in indexes.values():
            assert f"halfvec({DIM})" in definition
        assert "ON public.images" in indexes[image_model.index_name]
        assert indexes[garment_model.index_name].endswith(f"WHERE (model_id = {garment_model.id})")
        for category_id in categories.values():
            assert indexes[garment_model.category_index_name(category_id)].endswith(
                f"WHERE ((model_id = {garment_model.id}) AND (category_id = {category_id}))")
        listed = conn.execute("SELECT count(*) FROM garment_vector_indexes").fetchone()
        assert listed == (len(categories),)
        # every garment with a vector has its narrow row, with the same facts
        narrow = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE v.image_id = g.image_id AND c.name = g.category AND "
            "v.overlapped = g.overlapped AND v.score = g.score AND v.model_id = g.embedding_model_id) "
            "FROM garments g JOIN garment_vectors v ON v.garment_id = g.id "
            "JOIN garment_categories c ON c.id = v.category_id").fetchone()
        total = conn.execute("SELECT count(*) FROM garments").fetchone()
        assert total is not None and narrow == (total[0], total[0])
        label = conn.execute("SELECT labels, label, label_score, labels_model FROM images WHERE path LIKE %s",
                             ("%id0-view1.png",)).fetchone()
    assert label is not None
    assert label[1] == "tops" and label[2] == pytest.approx(0.55) and label[3] == "planted verticals"
    assert [entry["label"] for entry in label[0]] == ["tops", "bags"]


def test_similar_finds_the_same_garments_other_photos_first(planted: dict[str, Any]) -> None:
    db: Database = planted["db"]
    catalog = Catalog(db)
    photos: Path = planted["photos"]
    for identity in range(IDENTITIES):
        query = photos / f"id{identity}-view0.png"
        start, hits = catalog.similar_to(query, query=SearchFilter(), limit=5)
        assert start.image_id is not None and start.number == 1
        shown = {**planted["identity"], **planted["garment_copy"]}  # the copy shows identity 0's garment too
        first = [shown.get(hit.image) for hit in hits[:VIEWS - 1]]
        assert first == [identity] * (VIEWS - 1), (identity, [h.image for h in hits])
        assert all(hit.image != str(query.resolve()) for hit in hits)
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
        # the similarity is the cosine of the stored vectors
        best = hits[0].garments[0]
        vector = catalog.garment_embedding(best.garment_id).vector
        assert best.rank == pytest.approx(float(start.vector @ vector), abs=1e-5)


def test_a_category_filter_runs_in_the_same_query_and_the_index_agrees_with_exact_search(
        planted: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from fashionbox.catalog import queries

    catalog = Catalog(planted["db"])
    start = catalog.query_garment(planted["photos"] / "id0-view0.png")
    for category in ("skirt", "shoe"):
        query = SearchFilter(category=category)
        exact = catalog.similar(start.vector, model=start.model, query=query, limit=10, exact=True)
        indexed = catalog.similar(start.vector, model=start.model, query=query, limit=10, exact=False)
        assert exact and all(g.category == category for hit in exact for g in hit.garments)
        assert [h.image for h in indexed] == [h.image for h in exact]
        ranks = [g.rank for h in exact for g in h.garments]
        assert [g.rank for h in indexed for g in h.garments] == pytest.approx(ranks)
        # chosen by the filter's estimated size against the garments asked for: through the index when the
        # factor makes every filter common, exact when it makes every filter selective (the same answer here)
        for factor in (0, 10**6):
            monkeypatch.setattr(queries, "SELECTIVE_FACTOR", factor)
            chosen = catalog.similar(start.vector, model=start.model, query=query, limit=10)
            assert [h.image for h in chosen] == [h.image for h in exact]


def test_the_model_or_category_hnsw_index_answers_the_query_and_the_exact_form_never_uses_one(
        planted: dict[str, Any]) -> None:
    db: Database = planted["db"]
    with db.connect() as conn:
        model = next(m for m in models(conn, "garment"))
        skirt = conn.execute("SELECT id FROM garment_categories WHERE name = 'skirt'").fetchone()
    assert skirt is not None
    literal = "[" + ",".join(["0.1"] * DIM) + "]"
    plans = {}
    for exact, category in ((False, None), (True, None), (False, int(skirt[0])), (True, int(skirt[0]))):
        with db.connect() as conn, conn.transaction():
            # a tiny table: make the planner show what it can use
            conn.execute("SET LOCAL enable_seqscan = off")
            conn.execute("SET LOCAL enable_bitmapscan = off")
            sql = similar_sql(model, "NOT v.overlapped", exact=exact, category_id=category)
            params = [literal, [], None, 10, literal, 5] if exact else [[], literal, 10, literal, 5]
            rows = conn.execute("EXPLAIN " + sql, params).fetchall()
        plans[exact, category] = "\n".join(str(r[0]) for r in rows)
    assert f"Index Scan using {model.index_name} on garment_vectors" in plans[False, None], plans[False, None]
    by_category = model.category_index_name(int(skirt[0]))
    assert f"Index Scan using {by_category} on garment_vectors" in plans[False, int(skirt[0])]
    for category in (None, int(skirt[0])):
        assert "hnsw" not in plans[True, category], plans[True, category]


def test_vectors_of_another_model_or_dimension_are_refused(planted: dict[str, Any]) -> None:
    catalog = Catalog(planted["db"])
    with pytest.raises(QueryError, match="not comparable"):
        catalog.similar(np.ones(DIM, dtype=np.float32), model="someone-else@2")
    with pytest.raises(QueryError, match="dimensions"):
        catalog.similar(np.ones(DIM + 1, dtype=np.float32), model=MODEL)
    with pytest.raises(QueryError, match="dimensions"):
        catalog.search_text(np.ones(DIM * 2, dtype=np.float32))


def test_a_photo_that_is_not_indexed_needs_the_server_and_is_found_by_content(planted: dict[str, Any],
                                                                             folder: Path) -> None:
    catalog = Catalog(planted["db"])
    photos: Path = planted["photos"]
    moved = folder / "elsewhere.png"
    shutil.copy(photos / "id3-view1.png", moved)  # same bytes, a path the catalog never saw
    start = catalog.query_garment(moved, garment=2)
    assert start.garment_id == _garment_of(planted["db"], photos / "id3-view1.png", 1)
    with pytest.raises(QueryError, match="garment 3 does not exist"):
        catalog.query_garment(moved, garment=3)
    new = _png(10_000)
    with pytest.raises(QueryError, match="--url"):
        catalog.query_garment(new)
    server: PlantedServer = planted["server"]
    vector = catalog.garment_embedding(_garment_of(planted["db"], photos / "id5-view2.png")).vector
    server.answers[new] = ImageDetections(64, 64, (
        Detection(BoundingBox(0, 0, 10, 10), "shoe", 0.3, packed_embedding=_packed(_unit(np.ones(DIM)))),
        Detection(BoundingBox(0, 0, 50, 50), "skirt", 0.8, packed_embedding=_packed(vector)),
    ))
    start, hits = catalog.similar_to(new, client=server, limit=3)  # type: ignore[arg-type]
    assert isinstance(start, QueryGarment) and start.number == 2 and start.image_id is None
    assert planted["identity"][hits[0].image] == 5 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    server.answers[new] = ImageDetections(64, 64, (Detection(BoundingBox(0, 0, 50, 50), "skirt", 0.8),))
    with pytest.raises(QueryError, match="sends no garment vectors"):
        catalog.similar_to(new, client=server)  # type: ignore[arg-type]


def test_duplicates_finds_the_transformed_copy_above_the_threshold_only(planted: dict[str, Any]) -> None:
    catalog = Catalog(planted["db"])
    photos: Path = planted["photos"]
    cosines = planted["cosines"]
    assert cosines["transformed"] > 0.97 and cosines["lookalike"] < 0.9
    pair = sorted(str((photos / f"{n}.png").resolve()) for n in ("original", "transformed"))
    # photos with garments: by their garments (the same garment in another photo, beside others, is no copy)
    garments = sorted(str((photos / n).resolve()) for n in ("id0-view0.png", "garment-copy.png"))
    assert sorted(catalog.duplicates(kind="transformed", min_cosine=0.95)) == sorted([pair, garments])
    assert pair in catalog.duplicates(kind="all", min_cosine=0.95)
    assert catalog.duplicates(kind="near") == []
    three = catalog.duplicates(kind="transformed", min_cosine=cosines["lookalike"] - 0.01)
    assert sorted(len(g) for g in three) == [2, 3]
    with pytest.raises(QueryError, match="cosine"):
        catalog.duplicates(min_cosine=1.5)


def test_search_by_image_level_label_ranks_by_its_score(planted: dict[str, Any]) -> None:
    catalog = Catalog(planted["db"])
    hits = catalog.search(SearchFilter(label="tops"), limit=100)
    expected = {p for p, identity in planted["identity"].items() if identity % 2 == 0}
    assert {h.image for h in hits} == expected
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score == pytest.approx(0.6)
    both = catalog.search(SearchFilter(label="bottoms", category="skirt"), limit=100)
    assert {h.image for h in both} == {p for p, i in planted["identity"].items() if i % 2 == 1}
    assert catalog.search(SearchFilter(label="bags")) == []  # only the top label counts
    with pytest.raises(QueryError):
        SearchFilter(label=" ")


def test_search_by_a_text_vector_ranks_garments_of_the_same_model(planted: dict[str, Any]) -> None:
    catalog = Catalog(planted["db"])
    vector = catalog.garment_embedding(_garment_of(planted["db"], planted["photos"] / "id6-view1.png")).vector
    hits = catalog.search_text(vector, limit=3)
    assert [planted["identity"][h.image] for h in hits] == [6, 6, 6]
    rows = [row for hit in hits for row in hit.rows(rank_key="similarity")]
    assert set(rows[0]) >= {"image", "category", "box", "attributes", "similarity"}
