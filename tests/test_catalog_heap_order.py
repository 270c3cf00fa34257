"""The order a bulk load leaves ``garment_vectors`` in (``BulkLoad.finish``; issue 17, the 1,000,000-garment
regression): (model, run, category), the run being ``garment_id`` modulo ``HEAP_ORDER_RUNS``, in a real
embedded PostgreSQL.

Checked: after a bulk load the heap is in that order, so that a category's rows lie on at most
``HEAP_ORDER_RUNS`` stretches (what its exact scan reads stays small) while every run holds every category
(the HNSW builds, which read the heap in order, never see one category after another for long); the btree
made for the ``CLUSTER`` is gone, the table's own btrees and every expected vector index are there and
valid, and a similarity query still answers as an exact search does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from catalog_collection import copy_synthetic_images, scratch_catalog_folder

from fashionbox.catalog import Catalog, Database, SearchFilter
from fashionbox.catalog.vectors import (
    HEAP_ORDER_RUNS,
    BulkLoad,
    ensure_model,
    expected_vector_indexes,
    present_vector_indexes,
    vector_literal,
)

pytestmark = pytest.mark.integration

DIM = 16
CATEGORIES = ("dress", "skirt", "shoe", "top", "bag, wallet")
IMAGES = 400
PER_IMAGE = 4


@pytest.fixture
def loaded() -> Iterator[tuple[Database, np.ndarray[Any, np.dtype[np.float32]]]]:
    """A catalog loaded as a bulk indexing run loads (the indexes down, one COPY, ``finish``), each category's
    vectors near a centre of its own (garments of a category look alike), written in random category order."""
    rng = np.random.default_rng(17)
    centres = rng.normal(size=(len(CATEGORIES), DIM)).astype(np.float32)
    labels = rng.integers(len(CATEGORIES), size=IMAGES * PER_IMAGE)
    vectors = centres[labels] + 0.3 * rng.normal(size=(len(labels), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with scratch_catalog_folder("fashionbox-catalog-order-") as folder:
        db = Database.open(catalog=folder / "catalog")
        with db.connect() as conn:
            bulk = BulkLoad.begin(conn)
            assert bulk is not None
            with conn.transaction():
                model = ensure_model(conn, "order@1", "garment", DIM, index=False)
                first = copy_synthetic_images(conn, IMAGES, "order", width=64, height=48)
                with conn.cursor().copy("COPY garments (image_id, ordinal, category, score, x1, y1, x2, y2, "
                                        "attributes, embedding, embedding_model_id) FROM STDIN") as copy:
                    for row, label in enumerate(labels.tolist()):
                        copy.write_row((first + row // PER_IMAGE, row % PER_IMAGE, CATEGORIES[label], 0.9,
                                        1, 1, 9, 9, json.dumps({}), vector_literal(vectors[row]), model.id))
            assert bulk.finish() == len(expected_vector_indexes(conn))
        yield db, vectors
        db.close()


def test_a_bulk_load_leaves_garment_vectors_in_model_run_category_order(
        loaded: tuple[Database, np.ndarray[Any, np.dtype[np.float32]]]) -> None:
    db, _ = loaded
    with db.connect() as conn:
        rows = conn.execute("SELECT model_id, garment_id, category_id FROM garment_vectors ORDER BY ctid").fetchall()
    keys = [(int(m), int(g) % HEAP_ORDER_RUNS, int(c)) for m, g, c in rows]
    assert len(keys) == IMAGES * PER_IMAGE
    assert keys == sorted(keys), "the heap is not in (model, run, category) order"
    stretches: dict[int, int] = {}
    for k, key in enumerate(keys):
        if k == 0 or keys[k - 1][2] != key[2] or keys[k - 1][1] != key[1]:
            stretches[key[2]] = stretches.get(key[2], 0) + 1
    assert len(stretches) == len(CATEGORIES)
    assert max(stretches.values()) <= HEAP_ORDER_RUNS  # a category on a few stretches of pages, not all over
    # ... and not one category after another: each run (a sixteenth of the heap) holds every category
    for run in range(HEAP_ORDER_RUNS):
        assert {c for _, r, c in keys if r == run} == set(stretches), f"run {run} misses a category"


def test_after_the_order_the_btrees_and_every_vector_index_are_there_and_queries_answer_exactly(
        loaded: tuple[Database, np.ndarray[Any, np.dtype[np.float32]]]) -> None:
    db, vectors = loaded
    with db.connect() as conn:
        indexes = {str(n) for (n,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'garment_vectors'").fetchall()}
        expected = expected_vector_indexes(conn)
        valid = present_vector_indexes(conn, [i.name for i in expected])
    assert "garment_vectors_heap_order" not in indexes
    assert {"garment_vectors_pkey", "garment_vectors_model_category", "garment_vectors_image"} <= indexes
    assert len(expected) == 1 + len(CATEGORIES)
    assert valid == {i.name: True for i in expected}
    catalog = Catalog(db)
    for k in (0, 777, 1500):
        for query in (SearchFilter(), SearchFilter(category=CATEGORIES[1])):
            fast = catalog.similar(vectors[k], model="order@1", query=query, limit=5)
            exact = catalog.similar(vectors[k], model="order@1", query=query, limit=5, exact=True)
            assert [h.image_id for h in fast] == [h.image_id for h in exact]
