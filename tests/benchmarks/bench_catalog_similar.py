"""Benchmark: the catalog's visual search and transformed-copy duplicates, end to end through the database.

    .venv/bin/python tests/benchmarks/bench_catalog_similar.py [--identities 120] [--views 3] [--copies 40]
        [--garments 100000] [--queries 300] [--only retrieval|duplicates|speed] [--no-baseline]
        [--url HOST:PORT | --repository PATH] [--out tests/benchmarks/results/catalog_similar.json]

Starts the embedded Triton on a repository converted from the shipped weights (or ``--repository``
converted before, or ``--url`` of a running server) and an embedded PostgreSQL in a temporary
folder, then measures:

- **retrieval**: photos of held-out garment identities (``fashionbox.synth.render_identity_scenes``,
  seeds never trained on), ``--views`` each, are indexed through the server. Each identity's garment
  in view 0 (the stored garment that best covers the generator's box) is the query, asked through
  ``Catalog.similar`` (HNSW, the query photo left out). *Instance recall@k*: one of the k most
  similar garments is the same garment in another view (a stored garment covering the generator's
  box there, IoU >= 0.5). *S3's protocol* (issue 16): the gallery is view 1 of every other identity;
  a gallery garment is relevant when its label set (category and attribute labels) has IoU >= 0.5
  with the query's; precision / recall / F1 at k = 1, 5, 10, the catalog's ranking restricted to
  the gallery garments.
- **duplicates**: generated scenes with an exact copy, a re-encoded (JPEG q70), a resized (50 %),
  a flipped, a cropped (central 80 %) and a recoloured copy each are indexed; pairs found per kind
  and threshold (SHA-256; the stored pHash within ``DEFAULT_MAX_DISTANCE``; ``--kind transformed``,
  the photos' garment-match similarity, at thresholds 0.5-0.99) against the true pairs, with
  imagehash's pHash of the full decode alone as the baseline, and the whole-image vectors' cosines
  of each kind of pair and of the closest different scenes beside. The default threshold is the
  smallest at which no two different scenes pair, plus a margin.
- **speed**: ``--garments`` synthetic vectors (128-d, clustered: 5,000 centres plus noise, random
  categories and attribute labels of the label map; synthetic rows, not detections) loaded with
  COPY as a bulk indexing run loads (``BulkLoad``: the triggers fill ``garment_vectors``, then the
  table is put in (model, garment_id % 16, category) order and the model's and each category's HNSW
  index built);
  p50 / p99 of ``Catalog.similar`` with a category filter, with a category and an attribute filter,
  with a category and a label of each of its attribute groups (the selective filters: a fifth to a
  125th of the category passes), and with none, and recall@10 of each against exact search.
  The baseline (left out with ``--no-baseline``): the query shape before schema version 3 on the
  same rows (its HNSW index on ``garments`` built too), each query through both, interleaved. A
  size other than 100,000 is written as its own part (``speed_1000000``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import write_report
from catalog_collection import (
    copy_synthetic_garments,
    copy_synthetic_images,
    synthetic_garments,
    transform,
    write_identities,
)

from fashionbox.catalog import Catalog, Database, Indexer, SearchFilter
from fashionbox.catalog.database import stop_embedded
from fashionbox.catalog.hashing import bits_to_int64, hamming
from fashionbox.catalog.queries import DEFAULT_EF_SEARCH, DEFAULT_MAX_DISTANCE, DEFAULT_MIN_COSINE
from fashionbox.catalog.vectors import BulkLoad, ensure_model, vector_literal
from fashionbox.client import FashionClient
from fashionbox.contract.labels import default_label_map

ROOT = Path(__file__).resolve().parents[2]
RETRIEVAL_SEED = 9171
DUP_SEED = 9172
KS = (1, 5, 10)
COSINES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
COSINE_MARGIN = 0.01
COPY_KINDS = ("exact", "jpeg-q70", "resized-50", "flipped", "cropped", "recoloured")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _stored_garment(db: Database, path: str, box: tuple[float, ...]) -> int | None:
    """The id of the stored garment of ``path`` (one ``similar`` returns: not ``overlapped``) that best
    covers the generator's ``box`` (IoU >= 0.5), or ``None`` when the detector missed it."""
    with db.connect() as conn:
        rows = conn.execute("SELECT g.id, g.x1, g.y1, g.x2, g.y2 FROM garments g JOIN images i ON i.id = g.image_id "
                            "WHERE i.path = %s AND NOT g.overlapped", (path,)).fetchall()
    scored = [(_iou(tuple(float(c) for c in row[1:]), box), int(row[0])) for row in rows]
    best = max(scored, default=(0.0, -1))
    return best[1] if best[0] >= 0.5 else None


def bench_retrieval(db: Database, client: FashionClient, folder: Path, identities: int,
                    views: int) -> dict[str, Any]:
    truth = write_identities(folder, identities=identities, views=views, seed=RETRIEVAL_SEED)
    start = time.perf_counter()
    report = Indexer(db, client).index_folder(folder)
    index_s = time.perf_counter() - start
    catalog = Catalog(db)
    ids = sorted({v[0] for v in truth.views.values()})
    view_of = {path: int(Path(path).stem.rsplit("view", 1)[1]) for path in truth.views}
    labels = {identity: label_set for identity, _, _, label_set in truth.views.values()}

    def shown(image: str, box: tuple[float, ...]) -> tuple[int, int] | None:
        """(identity, view) when a returned garment is a generator's identity garment (IoU >= 0.5)."""
        if image not in truth.views:
            return None
        identity, _, true_box, _ = truth.views[image]
        return (identity, view_of[image]) if _iou(box, true_box) >= 0.5 else None

    query_of = {identity: _stored_garment(db, path, box) for path, (identity, _, box, _) in truth.views.items()
                if view_of[path] == 0}
    detected = sum(_stored_garment(db, path, v[2]) is not None for path, v in truth.views.items())
    gallery = {v[0] for path, v in truth.views.items() if view_of[path] == 1 and _stored_garment(db, path, v[2])}
    hits = {k: 0 for k in KS}
    queries = 0
    s3: dict[int, dict[str, list[float]]] = {k: {"precision": [], "recall": []} for k in KS}
    for identity in ids:
        query_id = query_of.get(identity)
        if query_id is None:
            continue
        queries += 1
        start_garment = catalog.garment_embedding(query_id)
        exclude = catalog.same_photo(start_garment.image_id)
        results = catalog.similar(start_garment.vector, model=start_garment.model, limit=max(KS),
                                  exclude_images=exclude)
        ranked = sorted(((hit.image, g) for hit in results for g in hit.garments), key=lambda item: -item[1].rank)
        found_at = [shown(image, g.box) for image, g in ranked]
        for k in KS:
            hits[k] += any(f is not None and f[0] == identity for f in found_at[:k])
        # S3: the catalog's ranking restricted to the gallery (view 1 of every other identity)
        wide = catalog.similar(start_garment.vector, model=start_garment.model, limit=1000, exclude_images=exclude)
        order: list[int] = []
        for image, g in sorted(((h.image, g) for h in wide for g in h.garments), key=lambda item: -item[1].rank):
            f = shown(image, g.box)
            if f is not None and f[1] == 1 and f[0] != identity and f[0] in gallery and f[0] not in order:
                order.append(f[0])
        relevant = {j for j in gallery if j != identity and _label_iou(labels[identity], labels[j]) >= 0.5}
        if not relevant:
            continue
        for k in KS:
            found = sum(j in relevant for j in order[:k])
            s3[k]["precision"].append(found / k)
            s3[k]["recall"].append(found / len(relevant))
    s3_out: dict[str, float] = {}
    for k in KS:
        precision = float(np.mean(s3[k]["precision"])) if s3[k]["precision"] else 0.0
        recall = float(np.mean(s3[k]["recall"])) if s3[k]["recall"] else 0.0
        s3_out[f"precision@{k}"] = round(precision, 4)
        s3_out[f"recall@{k}"] = round(recall, 4)
        s3_out[f"f1@{k}"] = round(2 * precision * recall / max(precision + recall, 1e-12), 4)
    s3_out["queries"] = len(s3[1]["precision"])
    garments = catalog.facets().garments
    return {"embedding_model": [m.name for m in catalog.embedding_models("garment")],
            "identities": identities, "views": views, "photos": len(truth.views), "indexed": report.indexed,
            "garments_stored": garments, "index_s": round(index_s, 1), "identity_garments_detected": detected,
            "queries": queries, "instance": {f"recall@{k}": round(hits[k] / max(queries, 1), 4) for k in KS},
            "s3_protocol": s3_out,
            "note": "the gallery is every garment stored (the identities' and their scenes' other garments); "
                    "queries whose garment the detector missed (no stored box with IoU >= 0.5) are left out; "
                    "a hit is a returned garment covering the same identity's box in another view (IoU >= 0.5)"}


def _label_iou(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def bench_duplicates(db: Database, client: FashionClient, folder: Path, originals: int) -> dict[str, Any]:
    from fashionbox.synth import render_scene

    folder.mkdir(parents=True)
    true_pairs: dict[str, set[tuple[str, str]]] = {k: set() for k in COPY_KINDS}
    files: list[Path] = []
    for i in range(originals):
        scene = render_scene(DUP_SEED * 100_000 + i)
        data = _jpeg(scene.image, 90)
        original = folder / f"scene-{i:04d}.jpg"
        original.write_bytes(data)
        files.append(original)
        kind = COPY_KINDS[i % len(COPY_KINDS)]
        copy = folder / f"copy-{kind}-{i:04d}.jpg"
        if kind == "exact":
            copy.write_bytes(data)
        elif kind == "jpeg-q70":
            copy.write_bytes(_jpeg(scene.image, 70))
        elif kind == "resized-50":
            copy.write_bytes(_jpeg(scene.image.resize((scene.image.width // 2, scene.image.height // 2),
                                                      Image.Resampling.LANCZOS), 90))
        else:
            copy.write_bytes(_jpeg(transform(scene.image, kind), 90))
        files.append(copy)
        pair = sorted((str(original.resolve()), str(copy.resolve())))
        true_pairs[kind].add((pair[0], pair[1]))
    Indexer(db, client).index_folder(folder)
    catalog = Catalog(db)
    all_true = set().union(*true_pairs.values())

    def scores(found: set[tuple[str, str]]) -> dict[str, Any]:
        return {"precision": round(len(found & all_true) / len(found), 4) if found else 1.0,
                "recall": round(len(found & all_true) / len(all_true), 4), "false_pairs": len(found - all_true),
                "recall_by_kind": {k: round(len(found & v) / len(v), 4) for k, v in true_pairs.items() if v}}

    def pairs_of(groups: list[list[str]]) -> set[tuple[str, str]]:
        return {(a, b) for g in groups for i, a in enumerate(g) for b in g[i + 1:]}

    # the image vectors' cosines: each kind of true pair, and the closest two different scenes
    with db.connect() as conn:
        stored = {str(p): np.asarray(v, dtype=np.float32) for p, v in conn.execute(
            "SELECT path, embedding::real[] FROM images WHERE embedding IS NOT NULL").fetchall()}
    pair_cosines = {k: sorted(float(stored[a] @ stored[b]) for a, b in v if a in stored and b in stored)
                    for k, v in true_pairs.items()}
    names = sorted(stored)
    matrix = np.stack([stored[n] for n in names]) if names else np.zeros((0, 1), dtype=np.float32)
    similarity = matrix @ matrix.T
    truly = {(names.index(a), names.index(b)) for a, b in all_true if a in stored and b in stored}
    different = [float(similarity[i, j]) for i in range(len(names)) for j in range(i + 1, len(names))
                 if (i, j) not in truly and (j, i) not in truly]
    by_cosine = {}
    for cosine in COSINES:
        by_cosine[str(cosine)] = scores(pairs_of(catalog.duplicates(kind="transformed", min_cosine=cosine)))
    clean = [c for c in COSINES if by_cosine[str(c)]["false_pairs"] == 0]
    start = time.perf_counter()
    everything = catalog.duplicates(kind="all")
    all_s = time.perf_counter() - start
    baseline_hashes = {}
    for path in files:
        with Image.open(path) as image:
            baseline_hashes[str(path.resolve())] = bits_to_int64(imagehash.phash(image).hash.flatten())
    hashed = sorted(baseline_hashes)
    baseline = {}
    for distance in (DEFAULT_MAX_DISTANCE, 10, 16):
        found = {(a, b) for i, a in enumerate(hashed) for b in hashed[i + 1:]
                 if hamming(baseline_hashes[a], baseline_hashes[b]) <= distance}
        baseline[str(distance)] = scores(found)
    return {"embedding_model": [m.name for m in catalog.embedding_models("garment")],
            "originals": originals, "files": len(files), "true_pairs": {k: len(v) for k, v in true_pairs.items()},
            "exact_sha256": scores(pairs_of(catalog.duplicates(kind="exact"))),
            f"near_phash_{DEFAULT_MAX_DISTANCE}": scores(pairs_of(catalog.duplicates(kind="near"))),
            "transformed_by_cosine": by_cosine,
            "smallest_cosine_without_false_pairs": min(clean) if clean else None,
            "suggested_default_cosine": round(min(clean) + COSINE_MARGIN, 3) if clean else None,
            "default_min_cosine": DEFAULT_MIN_COSINE,
            "true_pair_cosine_min_median": {k: [round(v[0], 4), round(float(np.median(v)), 4)]
                                            for k, v in pair_cosines.items() if v},
            "different_scenes_cosine_max_p999": [round(max(different), 4),
                                                 round(float(np.quantile(different, 0.999)), 4)] if different else None,
            "all_at_defaults": scores(pairs_of(everything)), "all_query_s": round(all_s, 3),
            "phash_baseline_by_distance": baseline}


def _old_similar(db: Database, model: Any, target: np.ndarray[Any, Any], query: SearchFilter, limit: int,
                 *, exact: bool | None = None) -> list[Any]:
    """The baseline: ``Catalog.similar``'s query shape before schema version 3 (the vector search on the
    wide ``garments`` rows, one HNSW index per model there, iterative scan for every filter; the exact
    path's scan of at most 2,001 filtered rows first), on the same rows, for before/after in one run."""
    from fashionbox.catalog.queries import CANDIDATES_PER_IMAGE, EXACT_SEARCH_MAX_ROWS, _group, _where

    where, params = _where(query)
    candidates = limit * CANDIDATES_PER_IMAGE
    literal = vector_literal(target / np.linalg.norm(target))
    cast, half = f"vector({model.dimension})", f"halfvec({model.dimension})"
    distance = f"(g.embedding::{cast} <=> %s::{cast})"
    columns = f"""g.id, g.image_id, g.category, g.score, g.x1, g.y1, g.x2, g.y2, g.attributes,
                   g.mask_rle IS NOT NULL AS has_mask, {distance} AS distance"""
    condition = f"g.embedding_model_id = {int(model.id)} AND {where} AND NOT (g.image_id = ANY(%s))"
    tail = """), ranked AS (
            SELECT image_id, min(distance) AS best FROM nearest GROUP BY image_id ORDER BY best, image_id LIMIT %s
        )
        SELECT r.image_id, i.path, 1 - r.best, i.width, i.height, n.id, n.category, n.score, n.x1, n.y1, n.x2, n.y2,
               n.attributes, n.has_mask, 1 - n.distance{read}
        FROM ranked r JOIN images i ON i.id = r.image_id JOIN nearest n ON n.image_id = r.image_id
        ORDER BY r.best, r.image_id, n.distance, n.id"""
    exact_sql = f"""WITH filtered AS MATERIALIZED (
            SELECT g.id, {distance} AS distance FROM garments g WHERE {condition} LIMIT %s
        ), nearest AS MATERIALIZED (
            SELECT {columns.replace(distance, "f.distance")}
            FROM (SELECT * FROM filtered ORDER BY distance, id LIMIT %s) f JOIN garments g ON g.id = f.id
        {tail.format(read=", (SELECT count(*) FROM filtered)")}"""
    index_sql = f"""WITH nearest AS MATERIALIZED (
            SELECT {columns} FROM garments g WHERE {condition}
            ORDER BY (g.embedding::{half} <=> %s::{half}) LIMIT %s
        {tail.format(read="")}"""
    with db.connect() as conn, conn.transaction():
        if exact is not False:
            scan = None if exact else EXACT_SEARCH_MAX_ROWS + 1
            rows = conn.execute(exact_sql, [literal, *params, [], scan, candidates, limit]).fetchall()
            if scan is None or not rows or int(rows[0][-1]) < scan:
                return _group(rows, keep_image_score=True)
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true), "
                     "set_config('hnsw.iterative_scan', 'relaxed_order', true)",
                     (str(max(DEFAULT_EF_SEARCH, candidates)),))
        rows = conn.execute(index_sql, [literal, *params, [], literal, candidates, limit]).fetchall()
    return _group(rows, keep_image_score=True)


def _sizes(conn: Any, model: Any) -> dict[str, float]:
    def mb(sql: str, *params: Any) -> float:
        row = conn.execute(sql, params).fetchone()
        return round(int(row[0] or 0) / 2**20, 1)

    return {"garments_table_mb": mb("SELECT pg_table_size('garments')"),
            "garment_vectors_table_mb": mb("SELECT pg_table_size('garment_vectors')"),
            "hnsw_per_model_mb": mb("SELECT pg_relation_size(%s::regclass)", model.index_name),
            "hnsw_per_category_total_mb": mb(
                "SELECT sum(pg_relation_size(indexrelid)) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
                "WHERE c.relname LIKE %s", f"garment_vectors_hnsw_{int(model.id)}_%")}


def bench_speed(db: Database, garments: int, queries: int, dimension: int = 128, *,
                baseline: bool = True) -> dict[str, Any]:
    labels = default_label_map()
    categories = list(labels.category_names)
    with_groups = [c for c in categories if labels.groups_for(c)]
    per_image = 4
    images = garments // per_image
    rows = synthetic_garments(garments, dimension=dimension)
    vectors, rng = rows.vectors, rows.rng
    load_average = [round(x, 2) for x in os.getloadavg()]
    timings: dict[str, float] = {}
    with db.connect() as conn:
        # loaded as a bulk indexing run loads: the vector indexes down, the rows in, then the table put in
        # the bulk load's heap order and every index built (BulkLoad.finish, its own maintenance_work_mem)
        start = time.perf_counter()
        loader = BulkLoad.begin(conn)
        assert loader is not None
        with conn.transaction():
            model = ensure_model(conn, "synthetic@128", "garment", dimension, index=False)
            first = copy_synthetic_images(conn, images, "synthetic")
            # one COPY: the insert trigger then fills garment_vectors and builds each category's HNSW index
            copy_synthetic_garments(conn, rows, first, images, model.id, per_image=per_image)
        timings["load_s_copy_with_trigger"] = time.perf_counter() - start
        loader.finish()
        timings["bulk_finish_s_cluster_and_every_hnsw_index"] = loader.build_s
        if baseline:  # the index the old query shape reads: per model, on the wide rows
            conn.execute("SET maintenance_work_mem = '256MB'")
            start = time.perf_counter()
            conn.execute(f"CREATE INDEX garments_embedding_hnsw_{int(model.id)} ON garments USING hnsw "
                         f"((embedding::halfvec({dimension})) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64) "
                         f"WHERE embedding_model_id = {int(model.id)}")
            timings["baseline_hnsw_on_garments_build_s"] = time.perf_counter() - start
        conn.execute("RESET maintenance_work_mem")
        conn.execute("ANALYZE images")
        conn.execute("ANALYZE garments")
        conn.execute("ANALYZE garment_vectors")
        sizes = _sizes(conn, model)
        if baseline:
            sizes["baseline_hnsw_on_garments_mb"] = _sizes_one(conn, f"garments_embedding_hnsw_{int(model.id)}")
    catalog = Catalog(db)
    kinds: dict[str, list[SearchFilter]] = {"none": [], "category": [], "category+attribute": [],
                                            "category+every_attribute": []}
    for _ in range(queries):
        category = with_groups[int(rng.integers(len(with_groups)))]
        group = next(iter(labels.groups_for(category)))
        label = labels.group(group).labels[int(rng.integers(len(labels.group(group).labels)))]
        kinds["none"].append(SearchFilter())
        kinds["category"].append(SearchFilter(category=category))
        kinds["category+attribute"].append(SearchFilter(category=category, attributes=((group, label),)))
        # a label of every group the category has (1-3 groups of 5 labels): a fifth of the category passes, or a
        # 25th, or a 125th (about 70 garments of 8,400): the selective filters exact search is for
        kinds["category+every_attribute"].append(SearchFilter(category=category, attributes=tuple(
            (g, labels.group(g).labels[int(rng.integers(len(labels.group(g).labels)))])
            for g in labels.groups_for(category))))
    shapes = ("narrow", "baseline_wide") if baseline else ("narrow",)
    out: dict[str, Any] = {shape: {} for shape in shapes}
    for name, filters in kinds.items():
        latencies: dict[str, list[float]] = {shape: [] for shape in shapes}
        recalls: dict[str, list[float]] = {shape: [] for shape in shapes}
        for k, query in enumerate(filters):
            target = vectors[int(rng.integers(len(vectors)))]
            # interleaved: each query through both shapes, the order alternating, so that load hits both alike
            order = shapes if k % 2 == 0 else shapes[::-1]
            answers: dict[str, list[Any]] = {}
            for shape in order:
                start = time.perf_counter()
                if shape == "narrow":
                    answers[shape] = catalog.similar(target, model=model.name, query=query, limit=10)
                else:
                    answers[shape] = _old_similar(db, model, target, query, 10)
                latencies[shape].append((time.perf_counter() - start) * 1000)
            if k % 3 == 0:  # exact search is slow unfiltered: every third query is checked
                exact = _top_garments(catalog.similar(target, model=model.name, query=query, limit=10, exact=True),
                                      10)
                for shape in shapes:
                    recalls[shape].append(len(_top_garments(answers[shape], 10) & exact) / max(1, len(exact)))
        for shape in shapes:
            ordered = sorted(latencies[shape])
            out[shape][name] = {
                "queries": len(filters), "p50_ms": round(ordered[len(ordered) // 2], 2),
                "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
                "max_ms": round(ordered[-1], 2), "recall@10_vs_exact": round(float(np.mean(recalls[shape])), 4),
                "recall_checked_queries": len(recalls[shape])}
        print(json.dumps({name: {shape: out[shape][name] for shape in shapes}}), file=sys.stderr)
    with db.connect() as conn:
        categories_indexed = conn.execute("SELECT count(*) FROM garment_vector_indexes").fetchone()
    return {"garments": images * per_image, "images": images, "dimension": dimension, "synthetic_vectors": True,
            **{k: round(v, 2) for k, v in timings.items()}, "sizes": sizes,
            "category_indexes": int(categories_indexed[0]) if categories_indexed else 0,
            "ef_search": DEFAULT_EF_SEARCH, "limit_images": 10, "by_filter": out["narrow"],
            **({"baseline_by_filter": out["baseline_wide"]} if baseline else {}),
            "load_average_before": load_average, "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "goal_p99_ms": 20, "goal_recall@10": 0.95,
            "note": "synthetic clustered vectors and rows loaded with COPY; each query through Catalog.similar "
                    "(a pooled connection), wall time; recall: the top-10 garments against exact search (half "
                    "precision, the narrow table's); baseline_by_filter: the query shape before schema version 3 "
                    "(garments' wide rows, one HNSW index per model) on the same rows, interleaved with the new one"}


def _sizes_one(conn: Any, index: str) -> float:
    row = conn.execute("SELECT pg_relation_size(%s::regclass)", (index,)).fetchone()
    return round(int(row[0]) / 2**20, 1) if row else 0.0


def _top_garments(hits: list[Any], k: int) -> set[int]:
    ranked = sorted((g for hit in hits for g in hit.garments), key=lambda g: -g.rank)
    return {g.garment_id for g in ranked[:k]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's gRPC HOST:PORT (default: start the shipped model)")
    parser.add_argument("--repository", type=Path, help="a converted repository to serve (default: convert the "
                        "shipped model)")
    parser.add_argument("--identities", type=int, default=120)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--copies", type=int, default=60, help="originals for the duplicates part")
    parser.add_argument("--garments", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--only", action="append", choices=("retrieval", "duplicates", "speed"))
    parser.add_argument("--no-baseline", action="store_true", help="speed: leave out the query shape before "
                        "schema version 3 (its index on the wide rows is built too, which takes long at 1,000,000)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/catalog_similar.json")
    args = parser.parse_args(argv)
    parts = set(args.only or ("retrieval", "duplicates", "speed"))

    work = Path(tempfile.mkdtemp(prefix="fashionbox-bench-similar-"))
    work.chmod(0o755)  # the embedded PostgreSQL runs as its own user when this runs as root
    server = None
    results: dict[str, Any] = {}
    try:
        url = args.url
        if url is None and parts != {"speed"}:
            from fashionbox.server import start_on_free_ports

            repository = args.repository
            if repository is None:
                from fashionbox.converter import ConvertOptions, convert

                repository = convert(ConvertOptions(out=work / "repository")).repository
            (work / "logs").mkdir()
            server = start_on_free_ports(repository, work / "logs")
            url = server.endpoints.grpc
        with FashionClient(url or "127.0.0.1:1") as client:
            if "retrieval" in parts:
                db = Database.open(catalog=work / "retrieval-catalog")
                results["retrieval"] = bench_retrieval(db, client, work / "identities", args.identities, args.views)
                print(json.dumps(results["retrieval"]), file=sys.stderr)
                db.close()
            if "duplicates" in parts:
                db = Database.open(catalog=work / "dup-catalog")
                results["duplicates"] = bench_duplicates(db, client, work / "dups", args.copies)
                print(json.dumps({k: v for k, v in results["duplicates"].items() if k != "transformed_by_cosine"}),
                      file=sys.stderr)
                db.close()
        if "speed" in parts:
            db = Database.open(catalog=work / "speed-catalog")
            # the default size keeps its key; another size is a part of its own (speed_1000000), and so is the
            # default size without the baseline (its wide index and queries share the server's buffers)
            key = "speed" if args.garments == 100_000 else f"speed_{args.garments}"
            key += "_without_baseline" if args.no_baseline and args.garments == 100_000 else ""
            results[key] = {"command": " ".join(["tests/benchmarks/bench_catalog_similar.py", *(argv or sys.argv[1:])]),
                            **bench_speed(db, args.garments, args.queries, baseline=not args.no_baseline)}
            print(json.dumps(results[key]), file=sys.stderr)
            db.close()
    finally:
        if server is not None:
            server.stop(timeout_s=10)
        for folder in work.glob("*catalog*"):
            stop_embedded(folder / "postgres")
        shutil.rmtree(work, ignore_errors=True)
    previous: dict[str, Any] = {}
    if args.only and args.out.exists():  # a partial run keeps the other parts' figures
        previous = {k: v for k, v in json.loads(args.out.read_text()).items()
                    if k in ("retrieval", "duplicates") or k.startswith("speed")}
    if args.repository is not None:  # converted elsewhere: the embedding model's name says which weights
        results["repository"] = "given (--repository)"
    write_report(args.out, __file__, argv, {**previous, **results})
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
