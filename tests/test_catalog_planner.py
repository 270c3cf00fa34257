"""How ``Catalog.similar`` chooses between the HNSW index and computing every distance, in a real embedded
PostgreSQL: the sampled statistics (:class:`~fashionbox.catalog.queries.VectorStats`) estimate what a
category and attribute filter passes; a selective filter goes exact, a common one through the index,
and both ways give the same nearest garments.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from catalog_collection import copy_synthetic_images, scratch_catalog_folder, spy_on_plans

from fashionbox.catalog import Catalog, Database, SearchFilter
from fashionbox.catalog.queries import VectorStats
from fashionbox.catalog.vectors import ensure_model, vector_literal

pytestmark = pytest.mark.integration

DIM = 16
MODEL = "planner@1"
GARMENTS = 2400
LABELS = ("long", "short", "rare")


def test_the_estimate_multiplies_a_category_by_the_share_of_each_label() -> None:
    stats = VectorStats(0.0, {(1, 1): 1000.0, (1, 2): 500.0, (2, 1): 70.0},
                        {(1, 1, "length", "long"): 0.5, (1, 1, "colour", "red"): 0.1, (1, 2, "length", "long"): 0.2})
    assert stats.count(1, None) == 1500.0 and stats.count(1, 2) == 500.0 and stats.count(3, None) == 0.0
    assert stats.passing(1, 1, ()) == 1000.0
    assert stats.passing(1, 1, (("length", "long"),)) == pytest.approx(500.0)
    assert stats.passing(1, 1, (("length", "long"), ("colour", "red"))) == pytest.approx(50.0)
    assert stats.passing(1, None, (("length", "long"),)) == pytest.approx(500.0 + 100.0)  # summed over categories
    assert stats.passing(1, 2, (("colour", "red"),)) == 0.0  # a label never seen there passes nothing


@pytest.fixture
def catalog() -> Iterator[Catalog]:
    """2,400 garments (dress and skirt) with random 16-d vectors; the dresses' length: rare 1 %, long about
    60 %, short the rest."""
    rng = np.random.default_rng(4)
    with scratch_catalog_folder("fashionbox-catalog-planner-") as folder:
        db = Database.open(catalog=folder / "catalog")
        vectors = rng.normal(size=(GARMENTS, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with db.connect() as conn:
            with conn.transaction():
                model = ensure_model(conn, MODEL, "garment", DIM)
                first = copy_synthetic_images(conn, GARMENTS // 4, "planner")
                with conn.cursor().copy("COPY garments (image_id, ordinal, category, score, x1, y1, x2, y2, "
                                        "attributes, embedding, embedding_model_id) FROM STDIN") as copy:
                    for k in range(GARMENTS):
                        category = ("dress", "skirt")[k % 2]
                        label = "rare" if k % 200 == 0 else "long" if rng.random() < 0.6 else "short"
                        copy.write_row((first + k // 4, k % 4, category, 0.9, 0, 0, 10, 10,
                                        json.dumps({"length": {"label": label, "score": 0.9}}),
                                        vector_literal(vectors[k]), model.id))
            conn.execute("ANALYZE garment_vectors")
        yield Catalog(db)


def test_a_selective_filter_goes_exact_a_common_one_through_the_index_and_both_find_the_same(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    search = catalog
    with search.db.connect() as conn:
        sampled = VectorStats.sample(conn, rows=1200)  # half the rows or so: counts scaled up
        whole = VectorStats.sample(conn)
        row = conn.execute("SELECT id FROM garment_categories WHERE name = 'dress'").fetchone()
    assert row is not None
    dress = int(row[0])
    model_id = next(m.id for m in search.embedding_models("garment"))
    assert whole.count(model_id, None) == GARMENTS  # the table is smaller than a sample: every row counted
    assert whole.passing(model_id, dress, (("length", "rare"),)) == GARMENTS / 2 / 100
    assert sampled.count(model_id, None) == pytest.approx(GARMENTS, rel=0.35)
    assert sampled.passing(model_id, dress, (("length", "long"),)) == pytest.approx(0.6 * GARMENTS / 2, rel=0.4)

    ways = spy_on_plans(monkeypatch)
    rng = np.random.default_rng(9)
    agree = []
    for label, expected in (("rare", [True]), ("long", [False]), ("short", [False])):
        for _ in range(5):
            vector = rng.normal(size=DIM).astype(np.float32)
            query = SearchFilter(category="dress", attributes=(("length", label),))
            ways.clear()
            chosen = search.similar(vector, model=MODEL, query=query, limit=10)
            assert ways == expected, label
            exact = search.similar(vector, model=MODEL, query=query, limit=10, exact=True)
            forced_index = search.similar(vector, model=MODEL, query=query, limit=10, exact=False)
            best = [[g.garment_id for g in h.garments] for h in exact]
            if label == "rare":  # 12 garments pass, each in its own photo: the nearest 10, the same either way
                assert [[g.garment_id for g in h.garments] for h in chosen] == best
                assert sum(len(h.garments) for h in chosen) == 10
                assert {g.garment_id for h in forced_index for g in h.garments} == {g for b in best for g in b}
            else:
                top = {g for b in best for g in b}
                agree.append(len(top & {g.garment_id for h in chosen for g in h.garments}) / len(top))
            assert all(g.attributes["length"]["label"] == label for h in chosen for g in h.garments)
    assert float(np.mean(agree)) >= 0.95  # the index's answers against exact search
