"""Benchmark: the catalog's quality and speed on held-out generated collections.

    .venv/bin/python tests/benchmarks/bench_catalog.py [--scenes 150] [--copies 40] [--throughput-images 160]
        [--garments 100000] [--out tests/benchmarks/results/catalog.json]

Starts the embedded Triton on a repository converted from the shipped weights (or ``--url`` of a
running one) and an embedded PostgreSQL in a temporary folder, then measures:

- **attribute search**: a held-out generated collection (seeds disjoint from training and from the
  tests) is indexed; for every category, and every (category, sleeve length / neckline type label)
  the generator drew, the images ``search`` returns at a minimum detection score are compared with
  the images the generator put such a garment in: micro-averaged precision and recall, per min score;
- **duplicates**: originals with exact copies, re-encoded copies (JPEG quality 70 and 50) and resized
  copies (75 % and 50 %) are indexed; pairs found by the catalog (SHA-256 for exact, the stored pHash
  within a Hamming distance for near) against the true pairs, per distance, with imagehash's pHash on
  the fully decoded image alone as the baseline; the default distance is the largest one at which no
  two different scenes are paired;
- **indexing throughput**: the same images through ``detect_many`` alone (the served detect
  throughput at saturation), through the indexer into the emptied database as a user runs it (a bulk
  run: the vector indexes built at its end, the build counted) and through the indexer keeping the
  indexes row by row (``bulk=False``), interleaved rounds in rotating order, medians, CPU per image of
  this process and of PostgreSQL, load averages;
- **query latency**: ``--garments`` synthetic garment rows (random categories and attribute labels
  of the label map, four per image: synthetic rows, not detections) loaded with COPY; p50 / p99 of
  filtered searches (category and one or two attributes, 50 images) and the time of ``duplicates``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imagehash
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import write_report
from catalog_collection import write_collection

from fashionbox.catalog import Catalog, Database, Indexer, SearchFilter
from fashionbox.catalog.database import stop_embedded
from fashionbox.catalog.hashing import bits_to_int64, hamming
from fashionbox.client import FashionClient
from fashionbox.contract.labels import default_label_map

ROOT = Path(__file__).resolve().parents[2]
SEARCH_SEED = 9041
DUP_SEED = 9042
SPEED_SEED = 9043
MIN_SCORES = (0.3, 0.5, 0.7)
DISTANCES = tuple(range(0, 17))
GROUPS = ("sleeve length", "neckline type")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _pr(hits: int, found: int, expected: int) -> dict[str, float]:
    return {"precision": round(hits / found, 4) if found else 1.0, "recall": round(hits / expected, 4) if expected
            else 1.0, "found": found, "expected": expected, "hits": hits}


def bench_search(db: Database, client: FashionClient, folder: Path, scenes: int) -> dict[str, Any]:
    truth = write_collection(folder, count=scenes, seed=SEARCH_SEED, exact=0, reencoded=0, resized=0)
    report = Indexer(db, client).index_folder(folder / "photos")
    catalog = Catalog(db)
    categories = sorted({c for garments in truth.garments.values() for c, _ in garments})
    pairs = sorted({(c, g, v) for garments in truth.garments.values() for c, attrs in garments
                    for g, v in attrs.items() if g in GROUPS})
    out: dict[str, Any] = {"images": scenes, "indexed": report.indexed, "categories": len(categories),
                           "attribute_queries": len(pairs), "by_min_score": {}}
    for min_score in MIN_SCORES:
        totals = {"category": [0, 0, 0], **{g: [0, 0, 0] for g in GROUPS}}
        for category in categories:
            found = {h.image for h in catalog.search(SearchFilter(category=category, min_score=min_score),
                                                     limit=100_000)}
            expected = truth.images_with(category)
            totals["category"][0] += len(found & expected)
            totals["category"][1] += len(found)
            totals["category"][2] += len(expected)
        for category, group, label in pairs:
            query = SearchFilter(category=category, attributes=((group, label),), min_score=min_score)
            found = {h.image for h in catalog.search(query, limit=100_000)}
            expected = truth.images_with(category, {group: label})
            totals[group][0] += len(found & expected)
            totals[group][1] += len(found)
            totals[group][2] += len(expected)
        out["by_min_score"][str(min_score)] = {k: _pr(*v) for k, v in totals.items()}
    return out


def bench_duplicates(db: Database, client: FashionClient, folder: Path, originals: int) -> dict[str, Any]:
    photos = folder / "photos"
    photos.mkdir(parents=True)
    from fashionbox.synth import render_scene

    kinds = ("exact", "jpeg-q70", "jpeg-q50", "resized-75", "resized-50")
    true_pairs: dict[str, set[tuple[str, str]]] = {k: set() for k in kinds}
    files: list[Path] = []
    for i in range(originals):
        scene = render_scene(DUP_SEED * 100_000 + i)
        data = _jpeg(scene.image, 90)
        original = photos / f"scene-{i:04d}.jpg"
        original.write_bytes(data)
        files.append(original)
        kind = kinds[i % len(kinds)]
        copy = photos / f"copy-{kind}-{i:04d}.jpg"
        if kind == "exact":
            copy.write_bytes(data)
        elif kind.startswith("jpeg"):
            copy.write_bytes(_jpeg(scene.image, int(kind[-2:])))
        else:
            factor = int(kind[-2:]) / 100
            size = (int(scene.image.width * factor), int(scene.image.height * factor))
            copy.write_bytes(_jpeg(scene.image.resize(size, Image.Resampling.LANCZOS), 90))
        files.append(copy)
        true_pairs[kind].add(tuple(sorted((str(original.resolve()), str(copy.resolve())))))  # type: ignore[arg-type]
    Indexer(db, client).index_folder(photos)
    catalog = Catalog(db)
    all_true = set().union(*true_pairs.values())

    def scores(found: set[tuple[str, str]]) -> dict[str, Any]:
        per_kind = {k: round(len(found & v) / len(v), 4) for k, v in true_pairs.items()}
        false = len(found - all_true)
        return {"precision": round(len(found & all_true) / len(found), 4) if found else 1.0,
                "recall": round(len(found & all_true) / len(all_true), 4), "false_pairs": false,
                "recall_by_kind": per_kind}

    def pairs_of(groups: list[list[str]]) -> set[tuple[str, str]]:
        return {(a, b) for g in groups for i, a in enumerate(g) for b in g[i + 1:]}

    exact = scores(pairs_of(catalog.duplicates(kind="exact")))
    by_distance = {}
    timings = []
    for distance in DISTANCES:
        start = time.perf_counter()
        groups = catalog.duplicates(kind="all", max_distance=distance)
        timings.append(time.perf_counter() - start)
        by_distance[str(distance)] = scores(pairs_of(groups))
    # the baseline: imagehash's pHash of each fully decoded file alone, pairs within the distance
    baseline_hashes = {}
    for path in files:
        with Image.open(path) as image:
            baseline_hashes[str(path.resolve())] = bits_to_int64(imagehash.phash(image).hash.flatten())
    names = sorted(baseline_hashes)
    baseline = {}
    for distance in DISTANCES:
        found = {(a, b) for i, a in enumerate(names) for b in names[i + 1:]
                 if hamming(baseline_hashes[a], baseline_hashes[b]) <= distance}
        baseline[str(distance)] = scores(found)
    clean = [d for d in DISTANCES if by_distance[str(d)]["false_pairs"] == 0]
    return {"originals": originals, "files": len(files), "true_pairs": {k: len(v) for k, v in true_pairs.items()},
            "exact_sha256": exact, "catalog_by_distance": by_distance, "phash_baseline_by_distance": baseline,
            "largest_distance_without_false_pairs": max(clean) if clean else None,
            "duplicates_query_s_median": round(statistics.median(timings), 4)}


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds of ``processes`` so far (those gone count 0)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def postgres_processes(folder: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL's postmaster and its backends (pooled connections live across rounds)."""
    postmaster = psutil.Process(int((folder / "postmaster.pid").read_text().split()[0]))
    return [postmaster, *postmaster.children(recursive=True)]


THROUGHPUT_ARMS = ("detect", "index", "index_row_by_row")
"""``detect_many`` alone; the indexer as a user runs it (into an empty catalog: a bulk run, the vector
indexes built at its end, their build counted); the indexer with ``bulk=False`` (the indexes kept row by row)."""


def bench_throughput(client: FashionClient, folder: Path, images: int, rounds: int, max_in_flight: int,
                     catalog_root: Path) -> dict[str, Any]:
    truth = write_collection(folder, count=images, seed=SPEED_SEED, exact=0, reencoded=0, resized=0)
    paths = sorted(Path(p) for p in truth.garments)
    client.detect_many([p.read_bytes() for p in paths[: max_in_flight * 2]], max_in_flight=max_in_flight)  # warm up
    rates: dict[str, list[float]] = {arm: [] for arm in THROUGHPUT_ARMS}
    # CPU per image: this process with its threads, and PostgreSQL's processes (the server's is the rest)
    cpu_ms: dict[str, dict[str, list[float]]] = {arm: {"process": [], "postgres": []} for arm in THROUGHPUT_ARMS}
    build_s: list[float] = []
    loads: list[float] = []
    db = Database.open(catalog=catalog_root / "speed")
    me = psutil.Process()
    for round_ in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        shift = round_ % len(THROUGHPUT_ARMS)  # each arm first, second and third in turn
        for arm in THROUGHPUT_ARMS[shift:] + THROUGHPUT_ARMS[:shift]:
            postgres = postgres_processes(catalog_root / "speed" / "postgres")
            if arm != "detect":
                with db.connect() as conn:  # the same database, emptied: every image is new again
                    conn.execute("TRUNCATE images, garments, roots, board_images, boards CASCADE")
                    conn.execute("VACUUM ANALYZE")
            before = (cpu_seconds([me]), cpu_seconds(postgres))
            start = time.perf_counter()
            if arm == "detect":
                results = client.detect_many([p.read_bytes() for p in paths], max_in_flight=max_in_flight)
                assert not any(isinstance(r, Exception) for r in results)
            else:
                indexer = Indexer(db, client, max_in_flight=max_in_flight)
                report = indexer.index_folder(folder / "photos", bulk=None if arm == "index" else False)
                assert report.indexed == len(paths), report
                assert report.bulk == (arm == "index"), report
                if report.bulk:
                    build_s.append(round(report.index_build_s, 3))
            seconds = time.perf_counter() - start
            after = (cpu_seconds([me]), cpu_seconds(postgres))
            rates[arm].append(len(paths) / seconds)
            cpu_ms[arm]["process"].append(round((after[0] - before[0]) * 1000 / len(paths), 2))
            cpu_ms[arm]["postgres"].append(round((after[1] - before[1]) * 1000 / len(paths), 2))
    loads.append(round(os.getloadavg()[0], 2))
    with db.connect() as conn:
        garments = conn.execute("SELECT count(*) FROM garments").fetchone()
    db.close()
    detect = statistics.median(rates["detect"])

    def ratios(arm: str) -> list[float]:
        return [i / d for i, d in zip(rates[arm], rates["detect"], strict=True)]

    return {"images": images, "garments_per_run": int(garments[0]) if garments else None, "rounds": rounds,
            "max_in_flight": max_in_flight,
            "arms": {"detect": "detect_many alone", "index": "the indexer's default here (a bulk run: vector indexes "
                     "built at its end, counted)", "index_row_by_row": "the indexer with bulk=False (every "
                     "vector index kept row by row, as before)"},
            "images_per_s": {arm: [round(r, 2) for r in rates[arm]] for arm in THROUGHPUT_ARMS},
            "median_images_per_s": {arm: round(statistics.median(rates[arm]), 2) for arm in THROUGHPUT_ARMS},
            "ratio": {arm: round(statistics.median(rates[arm]) / detect, 3) for arm in THROUGHPUT_ARMS[1:]},
            "ratio_per_round": {arm: [round(r, 3) for r in ratios(arm)] for arm in THROUGHPUT_ARMS[1:]},
            "ratio_per_round_median": {arm: round(statistics.median(ratios(arm)), 3) for arm in THROUGHPUT_ARMS[1:]},
            "cpu_ms_per_image_median": {arm: {k: round(statistics.median(v), 2) for k, v in cpu_ms[arm].items()}
                                        for arm in THROUGHPUT_ARMS},
            "cpu_ms_per_image": cpu_ms, "index_build_s": build_s, "load_average_1m_per_round": loads,
            "goal_ratio": 0.9}


def bench_queries(db: Database, garments: int, queries: int) -> dict[str, Any]:
    labels = default_label_map()
    rng = random.Random(5)
    categories = list(labels.category_names)
    per_image = 4
    images = garments // per_image
    start = time.perf_counter()
    with db.connect() as conn:
        with conn.transaction():
            with conn.cursor().copy("COPY images (path, sha256, size_bytes, status, width, height, phash) "
                                    "FROM STDIN") as copy:
                for i in range(images):
                    copy.write_row((f"/synthetic/{i:07d}.jpg", f"{i:064x}", 1000, "indexed", 640, 480,
                                    rng.getrandbits(64) - (1 << 63)))
            first = conn.execute("SELECT min(id) FROM images WHERE path LIKE '/synthetic/%'").fetchone()
            assert first is not None
            with conn.cursor().copy("COPY garments (image_id, ordinal, category, score, x1, y1, x2, y2, attributes) "
                                    "FROM STDIN") as copy:
                for i in range(images):
                    for k in range(per_image):
                        category = rng.choice(categories)
                        attributes = {}
                        for group in labels.groups_for(category):
                            choices = labels.group(group).labels
                            attributes[group] = {"label": rng.choice(choices), "score": round(rng.random(), 3)}
                        copy.write_row((int(first[0]) + i, k, category, round(rng.random(), 3), 10, 10, 100, 100,
                                        json.dumps(attributes)))
        conn.execute("ANALYZE images")
        conn.execute("ANALYZE garments")
    load_s = time.perf_counter() - start
    catalog = Catalog(db)
    with_groups = [c for c in categories if labels.groups_for(c)]
    latencies = []
    for i in range(queries):
        category = rng.choice(with_groups)
        chosen = rng.sample(list(labels.groups_for(category)), k=min(len(labels.groups_for(category)), 1 + i % 2))
        query = SearchFilter(category=category,
                             attributes=tuple((g, rng.choice(labels.group(g).labels)) for g in chosen))
        start = time.perf_counter()
        catalog.search(query, limit=50)
        latencies.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    groups_found = catalog.duplicates()
    dup_s = time.perf_counter() - start
    latencies.sort()
    return {"garments": images * per_image, "images": images, "synthetic_rows": True, "load_s": round(load_s, 2),
            "queries": queries, "p50_ms": round(latencies[len(latencies) // 2], 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
            "max_ms": round(latencies[-1], 2), "goal_p99_ms": 20,
            "duplicates_s": round(dup_s, 2), "duplicate_groups": len(groups_found),
            "note": "synthetic rows; each query through Catalog.search (a pooled connection), wall time"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's gRPC HOST:PORT (default: start the shipped model)")
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--copies", type=int, default=40, help="originals for the duplicates part")
    parser.add_argument("--throughput-images", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--garments", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--only", action="append", choices=("search", "duplicates", "throughput", "queries"))
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/catalog.json")
    args = parser.parse_args(argv)
    parts = set(args.only or ("search", "duplicates", "throughput", "queries"))

    work = Path(tempfile.mkdtemp(prefix="fashionbox-bench-catalog-"))
    work.chmod(0o755)  # the embedded PostgreSQL runs as its own user when this runs as root
    server = None
    results: dict[str, Any] = {}
    try:
        url = args.url
        if url is None and parts != {"queries"}:
            from fashionbox.converter import ConvertOptions, convert
            from fashionbox.server import start_on_free_ports

            repository = convert(ConvertOptions(out=work / "repository")).repository
            (work / "logs").mkdir()
            server = start_on_free_ports(repository, work / "logs")
            url = server.endpoints.grpc
        with FashionClient(url or "127.0.0.1:1") as client:
            if "search" in parts:
                db = Database.open(catalog=work / "search-catalog")
                results["attribute_search"] = bench_search(db, client, work / "search", args.scenes)
                print(json.dumps(results["attribute_search"]["by_min_score"]), file=sys.stderr)
                db.close()
            if "duplicates" in parts:
                db = Database.open(catalog=work / "dup-catalog")
                results["duplicates"] = bench_duplicates(db, client, work / "dups", args.copies)
                print(json.dumps({k: v for k, v in results["duplicates"].items() if "by_distance" not in k}),
                      file=sys.stderr)
                db.close()
            if "throughput" in parts:
                # the default size keeps its key; another is a part of its own (indexing_throughput_480)
                key = "indexing_throughput" + ("" if args.throughput_images == 160 else f"_{args.throughput_images}")
                results[key] = bench_throughput(client, work / "speed", args.throughput_images, args.rounds,
                                                args.max_in_flight, work)
                print(json.dumps(results[key]), file=sys.stderr)
        if "queries" in parts:
            db = Database.open(catalog=work / "query-catalog")
            results["query_latency"] = bench_queries(db, args.garments, args.queries)
            print(json.dumps(results["query_latency"]), file=sys.stderr)
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
                    if k in ("attribute_search", "duplicates", "query_latency") or k.startswith("indexing_throughput")}
    write_report(args.out, __file__, argv, {**previous, **results})
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
