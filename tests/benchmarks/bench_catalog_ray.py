"""Benchmark: indexing throughput of the plain indexer and of ``--ray`` against ``detect_many`` alone.

    .venv/bin/python tests/benchmarks/bench_catalog_ray.py [--images 160] [--rounds 5] [--max-in-flight 16]
        [--url HOST:PORT] [--out tests/benchmarks/results/catalog_ray.json]

Starts the embedded Triton on a repository converted from the shipped weights (or uses ``--url``),
writes ``--images`` held-out generated scenes (new content each: every image goes to the server) and
an embedded PostgreSQL in a temporary folder. Each round runs, in an order that rotates from round
to round, the same images through:

- ``detect_many`` alone (the served detect throughput at saturation, ``max_in_flight`` in flight);
- the plain indexer (:class:`fashionbox.catalog.Indexer`) into the database, emptied first;
- the Ray indexer (:class:`fashionbox.catalog.ray_indexer.RayIndexer`, ``--ray``), into the same
  database emptied first, one detect actor, in a local Ray started for the round as the command
  starts one (its start timed apart, ``ray_start_s``, and shut down after the round, so that Ray's
  processes do not take CPU from the other rounds).

It reports images/s per round and their medians, the ratios to ``detect_many`` (median of the rates
and median of the per-round ratios), the rate after the first chunk is written (without the fixed
costs before the first answer), the CPU per image of this process, PostgreSQL and Ray's processes,
and the load average before and after. Goal (issue 17): the indexer at 0.9x or more of ``detect_many``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_catalog import cpu_seconds, postgres_processes
from bench_report import write_report
from catalog_collection import write_collection

from fashionbox.catalog import Database, Indexer, Progress
from fashionbox.catalog.database import stop_embedded
from fashionbox.catalog.ray_indexer import RayIndexer, RayOptions, ray_session
from fashionbox.client import FashionClient

ROOT = Path(__file__).resolve().parents[2]
SEED = 9044
GOAL_RATIO = 0.9


def _empty(db: Database) -> None:
    with db.connect() as conn:  # the same database, emptied: every image is new again
        conn.execute("TRUNCATE images, garments, roots, board_images, boards CASCADE")
        conn.execute("VACUUM ANALYZE")


def bench(url: str, work: Path, images: int, rounds: int, max_in_flight: int, cpus: int) -> dict[str, Any]:
    truth = write_collection(work / "photos", count=images, seed=SEED, exact=0, reencoded=0, resized=0)
    paths = sorted(Path(p) for p in truth.garments)
    root = work / "photos" / "photos"
    db = Database.open(catalog=work / "catalog")
    rates: dict[str, list[float]] = {"detect_many": [], "index": [], "ray": []}
    # CPU per image: this process with its threads, the PostgreSQL processes and (for --ray) Ray's own
    # (raylet, GCS, agents, the hash workers and the detect actor): all share the two cores with the server.
    cpu_ms: dict[str, dict[str, list[float]]] = {k: {"process": [], "postgres": [], "ray_processes": []}
                                                  for k in rates}
    me = psutil.Process()
    # Between the first chunk written and the last: the rate once running, without the fixed costs
    # before the first answer is in (for --ray: Ray Data's planning, the hash tasks, the actor's start).
    steady: dict[str, list[float]] = {"index": [], "ray": []}
    seen: list[Progress] = []

    def progress(p: Progress) -> None:
        seen.append(p)


    def ray_processes() -> list[psutil.Process]:
        return [p for p in me.children(recursive=True) if p.name() != "postgres"
                and any(m in " ".join(p.cmdline()[:2]) for m in ("ray::", "raylet", "gcs_server", "ray/_private",
                                                                 "ray/dashboard"))]

    ray_start_s: list[float] = []
    load_before = os.getloadavg()
    with FashionClient(url) as client:
        client.detect_many([p.read_bytes() for p in paths[: 2 * max_in_flight]], max_in_flight=max_in_flight)

        def detect() -> int:
            results = client.detect_many([p.read_bytes() for p in paths], max_in_flight=max_in_flight)
            assert not any(isinstance(r, Exception) for r in results)
            return len(results)

        def index() -> int:
            report = Indexer(db, client, max_in_flight=max_in_flight, progress=progress).index_folder(root)
            assert report.indexed == len(paths), report
            return report.indexed

        def ray() -> int:
            report = RayIndexer(db, [url], max_in_flight=max_in_flight, progress=progress,
                                options=RayOptions(num_cpus=cpus)).index_folder(root)
            assert report.indexed == len(paths), report
            return report.indexed

        runs: dict[str, Callable[[], int]] = {"detect_many": detect, "index": index, "ray": ray}
        names = list(runs)
        for round_ in range(rounds):
            order = names[round_ % 3:] + names[:round_ % 3]
            for name in order:
                if name != "detect_many":
                    _empty(db)
                with contextlib.ExitStack() as stack:
                    if name == "ray":  # a Ray of its own, as the command starts one: its start timed apart
                        began = time.perf_counter()
                        stack.enter_context(ray_session(RayOptions(num_cpus=cpus)))
                        ray_start_s.append(time.perf_counter() - began)
                    postgres = postgres_processes(work / "catalog" / "postgres")
                    cpu_before = (cpu_seconds([me]), cpu_seconds(postgres), cpu_seconds(ray_processes()))
                    seen.clear()
                    began = time.perf_counter()
                    count = runs[name]()
                    rates[name].append(count / (time.perf_counter() - began))
                    if name in steady and len(seen) > 2 and seen[-1].elapsed_s > seen[0].elapsed_s:
                        steady[name].append((seen[-1].done - seen[0].done) / (seen[-1].elapsed_s - seen[0].elapsed_s))
                    cpu_after = (cpu_seconds([me]), cpu_seconds(postgres), cpu_seconds(ray_processes()))
                    for key, a, b in zip(("process", "postgres", "ray_processes"), cpu_before, cpu_after, strict=True):
                        cpu_ms[name][key].append(1000 * (b - a) / count)
            print(json.dumps({k: round(v[-1], 2) for k, v in rates.items()}), file=sys.stderr, flush=True)
    db.close()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    per_round = {k: [i / d for i, d in zip(rates[k], rates["detect_many"], strict=True)] for k in ("index", "ray")}
    return {
        "images": images, "rounds": rounds, "max_in_flight": max_in_flight, "ray_cpus": cpus, "ray_actors": 1,
        "images_per_s": {k: [round(r, 2) for r in v] for k, v in rates.items()},
        "median_images_per_s": {k: round(v, 2) for k, v in medians.items()},
        "ratio": {k: round(medians[k] / medians["detect_many"], 3) for k in ("index", "ray")},
        "ratio_per_round": {k: [round(r, 3) for r in v] for k, v in per_round.items()},
        "ratio_per_round_median": {k: round(statistics.median(v), 3) for k, v in per_round.items()},
        "cpu_ms_per_image_median": {k: {p: round(statistics.median(v), 2) for p, v in parts.items()}
                                    for k, parts in cpu_ms.items()},
        "after_first_chunk_images_per_s": {k: [round(r, 2) for r in v] for k, v in steady.items()},
        "after_first_chunk_median": {k: round(statistics.median(v), 2) for k, v in steady.items() if v},
        "ray_start_s": [round(x, 2) for x in ray_start_s],
        "ray_with_start_images_per_s": [round(images / (images / r + t), 2) for r, t in zip(rates["ray"], ray_start_s,
                                                                                            strict=True)],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "goal_ratio": GOAL_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's gRPC HOST:PORT (default: start the shipped model)")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/catalog_ray.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fashionbox-bench-catalog-ray-"))
    work.chmod(0o755)  # the embedded PostgreSQL runs as its own user when this runs as root
    server = None
    try:
        url = args.url
        if url is None:
            from fashionbox.converter import ConvertOptions, convert
            from fashionbox.server import start_on_free_ports

            repository = convert(ConvertOptions(out=work / "repository")).repository
            (work / "logs").mkdir()
            server = start_on_free_ports(repository, work / "logs")
            url = server.endpoints.grpc
        results = bench(url, work, args.images, args.rounds, args.max_in_flight, args.ray_cpus)
    finally:
        if server is not None:
            server.stop(timeout_s=10)
        stop_embedded(work / "catalog" / "postgres")
        shutil.rmtree(work, ignore_errors=True)
    write_report(args.out, __file__, argv, {"indexing_throughput": results})
    print(json.dumps(results), file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
