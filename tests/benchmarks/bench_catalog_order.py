"""Experiment (issue 17): does the heap order an HNSW index is built from change its recall and speed?

    nice -n 10 .venv/bin/python tests/benchmarks/bench_catalog_order.py [--garments 200000] [--queries 200]
        [--centres 5000] [--variants random,clustered,runs,correlated_random,correlated_clustered,correlated_runs]
        [--small-memory-mb 0] [--out tests/benchmarks/results/catalog_order.json]

After the bulk path (``BulkLoad.finish`` as it was: ``CLUSTER garment_vectors USING
garment_vectors_model_category``, then every HNSW index) the 1,000,000-garment measurement got slower
and its unfiltered recall@10 fell (BENCHMARKS.md, "Catalog: visual search"). pgvector builds an HNSW
index by reading the heap in physical order, so after the CLUSTER it inserts one category's vectors after
another. This script isolates that.

In one embedded PostgreSQL (``Database.open``, as the other catalog benchmarks start it) it writes
``--garments`` synthetic 128-d vectors made as ``bench_catalog_similar.py``'s speed part makes them
(the same seed and calls: ``--centres`` clustered centres plus noise, a random category per garment) into
tables shaped like ``garment_vectors`` (``LIKE``, its btrees), one per variant:

- ``random``: insertion order (categories independent of the vectors, as in the speed benchmark);
- ``clustered``: the same rows ``CLUSTER``-ed on (model, category), what ``BulkLoad.finish`` did;
- ``runs``: the same rows in ``BulkLoad.finish``'s order since this experiment, (model, run, category), the run
  being ``garment_id`` modulo ``vectors.HEAP_ORDER_RUNS`` (``CLUSTER`` on ``heap_order_index_ddl``'s btree);
- ``correlated_random`` / ``correlated_clustered`` / ``correlated_runs``: the category taken from the vector's
  cluster (each category a twelfth of the centres, as garments of one category look alike in a real catalog),
  in the three orders (``correlated_clustered``: the order the hypothesis says hurts);
- with ``--small-memory-mb M``, ``random_small_memory``: ``random`` built with ``maintenance_work_mem`` M,
  so that the graph outgrows it part-way (as a 1 GB cap may at 1,000,000 garments) and pgvector builds the
  rest on disk (its notice, with the tuple count where that began, is recorded).

Each gets the model's HNSW index as ``vectors.EmbeddingModel.index_ddl`` writes it (halfvec cosine,
``HNSW_M``, ``HNSW_EF_CONSTRUCTION``) under the bulk path's ``maintenance_work_mem`` rule; then
``--queries`` unfiltered k-NN queries (a stored vector each, as the speed benchmark asks) run the
statement ``Catalog.similar`` sends for an unfiltered search (the ``picked`` part of ``similar_sql``:
30 candidates for 10 images) at its settings (``hnsw.ef_search`` ``DEFAULT_EF_SEARCH``, iterative
scan ``relaxed_order``). Measured: build time (and the CLUSTER's), index size, the heap pages holding
category 1 (what its exact scan reads) against the fewest that could, recall@10 (the best 10
of the candidates against the exact top 10, both in half precision, as the catalog's benchmark scores
it) and recall@30, shared buffers touched per query (``EXPLAIN (ANALYZE, BUFFERS)``: the graph's work,
steady on a noisy machine) and p50/p99 wall time of the statement, the variants interleaved query by
query after a warm pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import write_report
from catalog_collection import synthetic_garments

from fashionbox.catalog import Database
from fashionbox.catalog.database import stop_embedded
from fashionbox.catalog.queries import CANDIDATES_PER_IMAGE, DEFAULT_EF_SEARCH
from fashionbox.catalog.vectors import (
    HEAP_ORDER_RUNS,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    EmbeddingModel,
    _maintenance_work_mem_mb,
    heap_order_index_ddl,
    vector_literal,
)
from fashionbox.contract.labels import default_label_map

ROOT = Path(__file__).resolve().parents[2]
DIMENSION = 128
MODEL = EmbeddingModel(1, "synthetic@128", "garment", DIMENSION)
LIMIT_IMAGES = 10
CANDIDATES = LIMIT_IMAGES * CANDIDATES_PER_IMAGE
VARIANTS = ("random", "clustered", "runs", "correlated_random", "correlated_clustered", "correlated_runs")


def generate(garments: int, centres: int) -> tuple[npt.NDArray[np.float32], list[int], list[int], list[str],
                                                       np.random.Generator]:
    """The speed benchmark's rows (bench_catalog_similar.bench_speed's: ``synthetic_garments``): unit vectors,
    each garment's category index drawn at random, the category index its cluster gives (``cluster %
    categories``), its attributes as JSON; and the generator, to draw the queries from."""
    rows = synthetic_garments(garments, dimension=DIMENSION, centres=centres)
    categories = len(default_label_map().category_names)
    return (rows.vectors, rows.categories, [c % categories for c in rows.clusters],
            [json.dumps(a) for a in rows.attributes], rows.rng)


def _index_ddl(table: str) -> str:
    """The model's HNSW index exactly as vectors.py writes it, on ``table`` instead of ``garment_vectors``."""
    ddl = MODEL.index_ddl()
    old = f"{MODEL.index_name} ON garment_vectors "
    assert old in ddl, ddl
    return ddl.replace(old, f"{table}_hnsw ON {table} ")


def load(conn: Any, vectors: npt.NDArray[np.float32], drawn: list[int], correlated: list[int],
         attributes: list[str]) -> float:
    """The rows once, in a staging table (insertion order = garment id order, the vectors' clusters at random)."""
    start = time.perf_counter()
    conn.execute("CREATE TABLE order_source (garment_id bigint, image_id bigint, category_drawn integer, "
                 "category_correlated integer, attributes jsonb, embedding halfvec)")
    with conn.cursor().copy("COPY order_source FROM STDIN") as copy:
        for row in range(len(vectors)):
            copy.write_row((row + 1, row // 4 + 1, drawn[row] + 1, correlated[row] + 1, attributes[row],
                            vector_literal(vectors[row])))
    return time.perf_counter() - start


def build(conn: Any, variant: str, memory_mb: int | None) -> dict[str, Any]:
    """The variant's table (shaped like garment_vectors, with its btrees), CLUSTER-ed when the variant says so,
    then the model's HNSW index under the bulk path's maintenance_work_mem rule (or ``memory_mb``)."""
    table = f"order_{variant}"
    category = "category_correlated" if variant.startswith("correlated") else "category_drawn"
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    conn.execute(f"CREATE TABLE {table} (LIKE garment_vectors INCLUDING DEFAULTS)")
    conn.execute(f"INSERT INTO {table} (garment_id, image_id, model_id, category_id, overlapped, score, attributes, "
                 f"embedding) SELECT garment_id, image_id, {MODEL.id}, {category}, false, 0.9, attributes, embedding "
                 "FROM order_source ORDER BY garment_id")
    conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (garment_id)")
    conn.execute(f"CREATE INDEX {table}_model_category ON {table} (model_id, category_id)")
    conn.execute(f"CREATE INDEX {table}_image ON {table} (image_id)")
    out: dict[str, Any] = {}
    if variant.endswith("clustered"):
        start = time.perf_counter()
        conn.execute(f"CLUSTER {table} USING {table}_model_category")
        out["cluster_s"] = round(time.perf_counter() - start, 2)
    elif variant.endswith("runs"):  # what BulkLoad.finish does now
        start = time.perf_counter()
        conn.execute(heap_order_index_ddl(table, f"{table}_heap_order"))
        conn.execute(f"CLUSTER {table} USING {table}_heap_order")
        conn.execute(f"DROP INDEX {table}_heap_order")
        out["cluster_s"] = round(time.perf_counter() - start, 2)
    conn.execute(f"VACUUM ANALYZE {table}")
    # how sorted the heap is by category: PostgreSQL's correlation of category_id with the physical order
    row = conn.execute("SELECT correlation FROM pg_stats WHERE tablename = %s AND attname = 'category_id'",
                       (table,)).fetchone()
    out["category_heap_correlation"] = round(float(row[0]), 3) if row and row[0] is not None else None
    # what an exact scan of a category reads: the heap pages holding its rows, against the fewest that could
    pages = conn.execute(f"SELECT count(DISTINCT (ctid::text::point)[0]), count(*) FROM {table} WHERE category_id = 1"
                         ).fetchone()
    total = conn.execute(f"SELECT pg_relation_size('{table}') / 8192, count(*) FROM {table}").fetchone()
    assert pages is not None and total is not None
    out["category_1_heap_pages"] = int(pages[0])
    out["category_1_heap_pages_fewest"] = int(np.ceil(int(pages[1]) * int(total[0]) / int(total[1])))
    rule_mb = _maintenance_work_mem_mb(conn, table)
    used_mb = memory_mb if memory_mb is not None else rule_mb
    workers = conn.execute("SHOW max_parallel_maintenance_workers").fetchone()
    start = time.perf_counter()
    with conn.transaction():
        conn.execute(f"SET LOCAL maintenance_work_mem = '{int(used_mb)}MB'")
        conn.execute(_index_ddl(table))
    out["hnsw_build_s"] = round(time.perf_counter() - start, 2)
    size = conn.execute("SELECT pg_relation_size(%s::regclass), pg_table_size(%s::regclass)",
                        (f"{table}_hnsw", table)).fetchone()
    assert size is not None
    out.update({"maintenance_work_mem_mb": used_mb, "rule_maintenance_work_mem_mb": rule_mb,
                "max_parallel_maintenance_workers": int(workers[0]) if workers else None,
                "hnsw_mb": round(int(size[0]) / 2**20, 1), "table_mb": round(int(size[1]) / 2**20, 1),
                "build_notices": [n for n in notices if "hnsw" in n.lower() or "maintenance_work_mem" in n]})
    return out


def _statement(table: str) -> str:
    """The ``picked`` part of ``similar_sql`` for an unfiltered search (``_where`` of an empty filter:
    ``NOT v.overlapped``; no image left out), on ``table``."""
    half = f"(v.embedding::{MODEL.index_cast} <=> %s::{MODEL.index_cast})"
    return (f"SELECT v.garment_id FROM {table} v WHERE v.model_id = {MODEL.id} AND NOT v.overlapped "
            f"AND NOT (v.image_id = ANY(%s)) ORDER BY {half} LIMIT %s")


def _settings(conn: Any) -> None:
    conn.execute("SELECT set_config('hnsw.ef_search', %s, false), set_config('hnsw.iterative_scan', 'relaxed_order', "
                 "false)", (str(max(DEFAULT_EF_SEARCH, CANDIDATES)),))


def _buffers(plan: dict[str, Any]) -> int:
    top = plan["Plan"]
    return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))


def measure(db: Database, variants: list[str], half: npt.NDArray[np.float32], targets: list[int]) -> dict[str, Any]:
    """Recall and buffers per variant (a warm pass, variant by variant), then wall times interleaved."""
    exact = [set(np.argsort(1.0 - half @ half[t], kind="stable")[:CANDIDATES].tolist()) for t in targets]
    exact10 = [np.argsort(1.0 - half @ half[t], kind="stable")[:10] for t in targets]
    out: dict[str, Any] = {}
    with db.connect() as conn:
        _settings(conn)
        for variant in variants:
            sql = _statement(f"order_{variant}")
            recall10: list[float] = []
            recall30: list[float] = []
            buffers: list[int] = []
            server_ms: list[float] = []
            for k, t in enumerate(targets):
                literal = vector_literal(half[t])
                ids = [int(r[0]) - 1 for r in conn.execute(sql, ([], literal, CANDIDATES)).fetchall()]
                best = sorted(ids, key=lambda i: (float(1.0 - half[i] @ half[t]), i))[:10]
                recall10.append(len(set(best) & set(exact10[k].tolist())) / 10)
                recall30.append(len(set(ids) & exact[k]) / CANDIDATES)
                plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}",
                                    ([], literal, CANDIDATES)).fetchone()
                assert plan is not None
                body = plan[0][0] if isinstance(plan[0], list) else json.loads(plan[0])[0]
                buffers.append(_buffers(body))
                server_ms.append(float(body["Execution Time"]))
            out[variant] = {"recall@10": round(float(np.mean(recall10)), 4),
                            "recall@10_queries_below_0.8": int(sum(r < 0.8 for r in recall10)),
                            "recall@30": round(float(np.mean(recall30)), 4),
                            "buffers_per_query_p50": int(np.median(buffers)),
                            "buffers_per_query_mean": round(float(np.mean(buffers)), 1),
                            "server_ms_p50_explain": round(float(np.median(server_ms)), 2)}
            print(json.dumps({variant: out[variant]}), file=sys.stderr)
        latencies: dict[str, list[float]] = {v: [] for v in variants}
        for k, t in enumerate(targets):
            literal = vector_literal(half[t])
            shift = k % len(variants)
            for variant in variants[shift:] + variants[:shift]:  # the order rotates: load hits each alike
                start = time.perf_counter()
                conn.execute(_statement(f"order_{variant}"), ([], literal, CANDIDATES)).fetchall()
                latencies[variant].append((time.perf_counter() - start) * 1000)
        for variant in variants:
            ordered = sorted(latencies[variant])
            out[variant].update({"p50_ms": round(ordered[len(ordered) // 2], 2),
                                 "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--garments", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--centres", type=int, default=5000, help="cluster centres (the speed benchmark: 5,000)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--small-memory-mb", type=int, default=0, help="also build 'random' with this "
                        "maintenance_work_mem (0: not)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/catalog_order.json")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or args.garments < 1000 or args.queries < 1 or args.centres < 1:
        parser.error(f"variants are {', '.join(VARIANTS)}; garments >= 1000, queries and centres >= 1")
    memory: dict[str, int | None] = {v: None for v in variants}
    if args.small_memory_mb:
        variants.append("random_small_memory")
        memory["random_small_memory"] = args.small_memory_mb

    vectors, drawn, correlated, attributes, rng = generate(args.garments, args.centres)
    # the vectors as the index and the exact search see them: half precision
    half = vectors.astype(np.float16).astype(np.float32)
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    targets = [int(rng.integers(len(vectors))) for _ in range(args.queries)]
    work = Path(tempfile.mkdtemp(prefix="fashionbox-bench-order-"))
    work.chmod(0o755)  # the embedded PostgreSQL runs as its own user when this runs as root
    load_average = [round(x, 2) for x in os.getloadavg()]
    builds: dict[str, Any] = {}
    try:
        db = Database.open(catalog=work / "order-catalog")
        with db.connect() as conn:
            load_s = load(conn, vectors, drawn, correlated, attributes)
            for variant in variants:  # random_small_memory: the random rows in their order, less memory
                builds[variant] = build(conn, variant, memory[variant])
                print(json.dumps({variant: builds[variant]}), file=sys.stderr)
        results = measure(db, variants, half, targets)
        db.close()
    finally:
        stop_embedded(work / "order-catalog" / "postgres")
        shutil.rmtree(work, ignore_errors=True)
    part = {"garments": args.garments, "centres": args.centres, "queries": args.queries, "dimension": DIMENSION,
            "hnsw": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "opclass": "halfvec_cosine_ops"},
            "ef_search": max(DEFAULT_EF_SEARCH, CANDIDATES), "iterative_scan": "relaxed_order",
            "candidates": CANDIDATES, "heap_order_runs": HEAP_ORDER_RUNS, "load_s": round(load_s, 1),
            "variants": {v: {**builds[v], **results[v]} for v in variants},
            "load_average_before": load_average, "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "note": "synthetic clustered vectors (bench_catalog_similar's speed generator); one table per variant "
                    "shaped like garment_vectors; recall against exact search in half precision; buffers: shared "
                    "blocks hit + read by the statement (EXPLAIN ANALYZE BUFFERS), after a warm pass"}
    key = f"n_{args.garments}_centres_{args.centres}"
    previous: dict[str, Any] = {}
    if args.out.exists():
        previous = {k: v for k, v in json.loads(args.out.read_text()).items() if k.startswith("n_")}
    write_report(args.out, __file__, argv, {**previous, key: {"command": " ".join(
        ["tests/benchmarks/bench_catalog_order.py", *(argv if argv is not None else sys.argv[1:])]), **part}})
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
