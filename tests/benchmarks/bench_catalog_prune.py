"""Benchmark: pruning a catalog (``fashionbox catalog prune``) at scale, and the searches after it.

    .venv/bin/python tests/benchmarks/bench_catalog_prune.py [--images 25000] [--gone 0.1] [--rounds 5]
        [--queries 200] [--out tests/benchmarks/results/catalog_prune.json]

An embedded PostgreSQL in a temporary folder holds ``--images`` images of four synthetic garments each
(128-d clustered vectors, random categories and attribute labels: synthetic rows, not detections, loaded
as a bulk indexing run loads them), each image with a real (empty) file in one folder, its size and
modification time stored as the indexer stores them. Then:

- **walk**: ``prune --dry-run`` of the folder with every file there (each indexed image's file looked
  at, nothing removed) against the baseline of a second ``index`` run of the same folder that finds
  nothing new (it lists the folder and compares each file's size and time with its row: what a user
  runs every day), interleaved rounds in rotating order, medians;
- **removal**: ``--gone`` of the files deleted at random, then ``prune``: seconds and images per
  second (their garments, vectors and board places go by cascade);
- **searches**: ``Catalog.similar`` with a category filter and with none, p50 / p99 and recall@10 against
  exact search, before the files go, right after the prune (the removed rows are dead tuples in the
  HNSW graphs until a vacuum), and after ``VACUUM (ANALYZE)``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import write_report
from catalog_collection import copy_synthetic_garments, synthetic_garments

from fashionbox.catalog import Catalog, Database, Indexer, SearchFilter
from fashionbox.catalog.database import stop_embedded
from fashionbox.catalog.indexer import register_root
from fashionbox.catalog.prune import prune
from fashionbox.catalog.vectors import BulkLoad, ensure_model
from fashionbox.contract.labels import default_label_map

ROOT = Path(__file__).resolve().parents[2]
PER_IMAGE = 4
DIMENSION = 128


def load(db: Database, photos: Path, images: int) -> tuple[Any, Any, float]:
    """``images`` empty files under ``photos`` and their rows (four garments each, loaded as a bulk run); the
    garments' rows (:func:`synthetic_garments`), the model and the seconds the load took."""
    rows = synthetic_garments(images * PER_IMAGE, dimension=DIMENSION)
    photos.mkdir(parents=True)
    paths = [photos / f"{i:07d}.jpg" for i in range(images)]
    for path in paths:
        path.touch()
    started = time.perf_counter()
    with db.connect() as conn:
        root_id = register_root(conn, photos)
        loader = BulkLoad.begin(conn)
        assert loader is not None
        with conn.transaction():
            model = ensure_model(conn, "synthetic@128", "garment", DIMENSION, index=False)
            with conn.cursor().copy("COPY images (path, root_id, sha256, size_bytes, mtime_ns, status, width, height) "
                                    "FROM STDIN") as copy:
                for i, path in enumerate(paths):
                    stat = path.stat()
                    copy.write_row((str(path), root_id, f"{i:064x}", stat.st_size, stat.st_mtime_ns, "indexed",
                                    640, 480))
            first_row = conn.execute("SELECT min(id) FROM images").fetchone()
            assert first_row is not None
            first = int(first_row[0])
            copy_synthetic_garments(conn, rows, first, images, model.id, per_image=PER_IMAGE)
        loader.finish()
        conn.execute("ANALYZE images")
        conn.execute("ANALYZE garment_vectors")
    return rows, model, time.perf_counter() - started


def walk(db: Database, photos: Path, rounds: int) -> dict[str, Any]:
    """``prune --dry-run`` against an ``index`` run that finds nothing new, interleaved, medians."""
    indexer = Indexer(db, None, max_in_flight=1)  # type: ignore[arg-type]  # nothing new: no detection asked
    samples: dict[str, list[float]] = {"prune_dry_run": [], "index_nothing_new": []}
    for r in range(rounds):
        order = list(samples) if r % 2 == 0 else list(samples)[::-1]
        for name in order:
            started = time.perf_counter()
            if name == "prune_dry_run":
                report = prune(db, [photos], dry_run=True)
                assert report.missing == 0
            else:
                assert indexer.index_folder(photos).skipped > 0
            samples[name].append(time.perf_counter() - started)
    return {name: {"median_s": round(statistics.median(values), 3), "runs_s": [round(v, 3) for v in values]}
            for name, values in samples.items()}


def searches(db: Database, rows: Any, model: Any, queries: int, seed: int) -> dict[str, Any]:
    """p50 / p99 and recall@10 against exact search of ``Catalog.similar``, with a category filter and without."""
    labels = default_label_map()
    categories = [c for c in labels.category_names if labels.groups_for(c)]
    rng = np.random.default_rng(seed)
    catalog = Catalog(db)
    out: dict[str, Any] = {}
    for name in ("category", "none"):
        latencies: list[float] = []
        recalls: list[float] = []
        for k in range(queries):
            query = SearchFilter(category=categories[int(rng.integers(len(categories)))]) if name == "category" \
                else SearchFilter()
            target = rows.vectors[int(rng.integers(len(rows.vectors)))]
            started = time.perf_counter()
            hits = catalog.similar(target, model=model.name, query=query, limit=10)
            latencies.append((time.perf_counter() - started) * 1000)
            if k % 4 == 0:  # exact search is slow unfiltered: every fourth query is checked
                exact = catalog.similar(target, model=model.name, query=query, limit=10, exact=True)
                found = {g.garment_id for h in hits for g in h.garments}
                truth = {g.garment_id for h in exact for g in h.garments}
                recalls.append(len(found & truth) / max(1, len(truth)))
        ordered = sorted(latencies)
        out[name] = {"queries": queries, "p50_ms": round(ordered[len(ordered) // 2], 2),
                     "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
                     "recall@10_vs_exact": round(float(np.mean(recalls)), 4), "recall_checked_queries": len(recalls)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=25_000)
    parser.add_argument("--gone", type=float, default=0.1, help="share of the files deleted before the prune")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/catalog_prune.json")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="fashionbox-bench-prune-"))
    folder.chmod(0o755)  # the embedded PostgreSQL may run as its own user
    try:
        db = Database.open(catalog=folder / "catalog")
        photos = folder / "photos"
        rows, model, load_s = load(db, photos, args.images)
        print(f"loaded {args.images} images in {load_s:.1f} s", file=sys.stderr)
        figures: dict[str, Any] = {"images": args.images, "garments": args.images * PER_IMAGE,
                                   "load_s": round(load_s, 1), "load_average_before": list(os.getloadavg())}
        figures["walk"] = walk(db, photos, args.rounds)
        print(json.dumps(figures["walk"]), file=sys.stderr)
        figures["searches_before"] = searches(db, rows, model, args.queries, seed=1)
        gone = np.random.default_rng(3).choice(args.images, size=int(args.images * args.gone), replace=False)
        for i in gone:
            (photos / f"{int(i):07d}.jpg").unlink()
        started = time.perf_counter()
        report = prune(db, [photos])
        removal_s = time.perf_counter() - started
        assert report.removed == len(gone), report.removed
        figures["removal"] = {"removed_images": report.removed, "removed_garments": report.removed * PER_IMAGE,
                              "s": round(removal_s, 2), "images_per_s": round(report.removed / removal_s, 1)}
        print(json.dumps(figures["removal"]), file=sys.stderr)
        figures["searches_after_prune"] = searches(db, rows, model, args.queries, seed=1)
        started = time.perf_counter()
        with db.connect() as conn:
            conn.execute("VACUUM (ANALYZE) images, garments, garment_vectors")
        figures["vacuum_s"] = round(time.perf_counter() - started, 2)
        figures["searches_after_vacuum"] = searches(db, rows, model, args.queries, seed=1)
        figures["load_average_after"] = list(os.getloadavg())
        figures["note"] = ("synthetic rows with empty files; searches: the same query vectors and filters in the "
                           "three states (vectors of removed garments may be asked for: their neighbours remain)")
        write_report(args.out, __file__, argv, figures)
        print(json.dumps({k: v for k, v in figures.items() if k.startswith("searches")}), file=sys.stderr)
    finally:
        stop_embedded(folder / "catalog" / "postgres")
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
