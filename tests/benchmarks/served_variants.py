"""Shared harness of the benchmarks that serve a few variants of one repository side by side.

Each variant is a converted repository on its own embedded Triton; closed-loop levels over gRPC,
variants interleaved per round (rotating order), medians of rounds (``bench_ragged.py``,
``bench_scheduling.py``). Every level also records the share of the machine's CPU left idle
during it (``/proc/stat``; 100 % is one core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def variant_parser(description: str, out: Path, *, duration_s: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=8, help="distinct 1280x960 JPEGs")
    parser.add_argument("--duration-s", type=float, default=duration_s, help="seconds per level")
    parser.add_argument("--levels", default="1,8,16", help="closed-loop concurrencies")
    parser.add_argument("--layouts", default="steps,fused")
    parser.add_argument("--out", type=Path, default=out)
    return parser


def cpu_ticks() -> list[int]:
    with open("/proc/stat", encoding="ascii") as stat:
        return [int(field) for field in stat.readline().split()[1:]]


def idle_percent(before: list[int], after: list[int]) -> float:
    """Idle share of the machine between two ``cpu_ticks``, in percent of one core."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    busy_and_idle = sum(delta[:8])  # user nice system idle iowait irq softirq steal
    return 100.0 * (os.cpu_count() or 1) * (delta[3] + delta[4]) / busy_and_idle if busy_and_idle else 0.0


def level_figures(point: Any) -> dict[str, Any]:
    """What every variant benchmark records of a level."""
    return {"images_per_s": round(point.throughput_rps, 2), "p50_ms": round(point.latency.p50_ms, 1),
            "p99_ms": round(point.latency.p99_ms, 1), "errors": point.error_count}


def serve_interleaved(repositories: dict[str, Path], log_root: Path, images: list[bytes], *, levels: tuple[int, ...],
                      rounds: int, duration_s: float,
                      extra: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per variant, one ``{level: figures}`` per round; ``extra`` adds figures from each level's point."""
    from fashionbox.loadtest import measure_concurrency
    from fashionbox.server import start_on_free_ports

    runs: dict[str, list[dict[str, Any]]] = {}
    servers = {}
    try:
        for name, repository in repositories.items():
            logs = log_root / name.replace("/", "-")
            logs.mkdir(parents=True)
            servers[name] = start_on_free_ports(repository, logs)
        for server in servers.values():  # warm-up: first calls allocate
            measure_concurrency(server.endpoints.grpc, images, concurrency=4, duration_s=3.0, metrics="none")
        names = list(servers)
        for round_index in range(rounds):
            for k in range(len(names)):
                name = names[(round_index + k) % len(names)]
                run = {}
                for c in levels:
                    ticks = cpu_ticks()
                    point = measure_concurrency(servers[name].endpoints.grpc, images, concurrency=c,
                                                duration_s=duration_s, warmup_s=1.0, metrics="none")
                    run[str(c)] = {**level_figures(point), **(extra(point) if extra else {}),
                                   "idle_percent_of_a_core": round(idle_percent(ticks, cpu_ticks()), 1)}
                runs.setdefault(name, []).append(run)
                print(f"round {round_index + 1}/{rounds} {name}: {json.dumps(run)}", flush=True)
    finally:
        for server in servers.values():
            server.stop(timeout_s=10)
    return runs


def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per variant and level, the median of each figure over the rounds (None where no round had it)."""
    def median(name: str, level: str, key: str) -> float | None:
        values = [run[level][key] for run in runs[name] if run[level][key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {name: {level: {key: median(name, level, key) for key in runs[name][0][level]}
                   for level in runs[name][0]} for name in runs}


def measure_variants(args: argparse.Namespace, prefix: str,
                     build: Callable[[Path, list[str]], dict[str, Path]],
                     extra: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build the variants (``build(folder, layouts)``: name -> repository) and measure them.

    Returns the report's common fields (rounds, levels, load average, wall time, ``summary`` of
    medians, ``runs``), with ``layouts`` and ``top`` (the highest level) for the caller's ratios.
    """
    from bench_runtimes import make_images

    levels = tuple(int(c) for c in args.levels.split(","))
    layouts = args.layouts.split(",")
    load_before = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        repositories = build(Path(tmp), layouts)
        runs = serve_interleaved(repositories, Path(tmp) / "logs", make_images(args.images), levels=levels,
                                 rounds=args.rounds, duration_s=args.duration_s, extra=extra)
    return {"rounds": args.rounds, "levels": list(levels), "duration_s": args.duration_s,
            "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
            "summary": medians(runs), "runs": runs, "wall_s": round(time.time() - started, 1),
            "layouts": layouts, "top": str(max(levels))}


def ratios(measured: dict[str, Any], better: str, worse: str) -> dict[str, float]:
    """Per layout, images/s of ``LAYOUT/better`` over ``LAYOUT/worse`` at the highest level."""
    summary, top = measured["summary"], measured["top"]
    return {layout: round(summary[f"{layout}/{better}"][top]["images_per_s"]
                          / summary[f"{layout}/{worse}"][top]["images_per_s"], 3) for layout in measured["layouts"]}
