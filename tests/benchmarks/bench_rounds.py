"""The loop the "served against the library in process" benchmarks share (``bench_detr.py``, ``bench_owl.py``).

    runs = served_rounds(repository, images, rounds=3, duration_s=20.0, baselines={
        "own_way_s": lambda: run_library(images), "onnx_alone_s": lambda: run_graph(images)})
    summary = {**served_summary(runs), "own_way": baseline_summary(runs, "own_way_s")}

One embedded Triton serves the repository; each round runs every in-process baseline once over the
images (seconds per image), then the closed-loop load generator over gRPC at concurrency 1 and 2, so
the two sides meet the machine's load in the same minutes. The runs keep every figure.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report


def run_served(url: str, images: list[bytes], concurrency: int, duration_s: float) -> dict[str, Any]:
    """The closed-loop load generator over gRPC at ``concurrency`` for ``duration_s`` (after 2 s of warm-up)."""
    from fashionbox.loadtest import measure_concurrency

    point = measure_concurrency(url, images, concurrency=concurrency, duration_s=duration_s, warmup_s=2.0,
                                metrics="none")
    return dict(point.as_dict())


def served_rounds(repository: Path, images: list[bytes], *, rounds: int, duration_s: float,
                  baselines: dict[str, Callable[[], list[float]]]) -> dict[str, list[Any]]:
    """``{baseline: [seconds per image, a list a round], "served_c1": [...], "served_c2": [...]}``."""
    from fashionbox.server import ServerConfig, TritonServer, find_free_ports

    runs: dict[str, list[Any]] = {key: [] for key in baselines} | {"served_c1": [], "served_c2": []}
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-served-") as tmp:
        grpc, http, metrics = find_free_ports(3)
        config = ServerConfig(repository=repository, grpc_port=grpc, http_port=http, metrics_port=metrics,
                              log_path=Path(tmp) / "tritonserver.log")
        with TritonServer(config) as server:
            url = server.endpoints.grpc
            run_served(url, images, 1, 3.0)  # warm-up
            for round_index in range(rounds):
                for key, run in baselines.items():
                    runs[key].append(run())
                runs["served_c1"].append(run_served(url, images, 1, duration_s))
                runs["served_c2"].append(run_served(url, images, 2, duration_s))
                line = ", ".join(f"{key} {statistics.median(runs[key][-1]):.3f}" for key in baselines)
                print(f"round {round_index + 1}: {line}; served c=1 p50 "
                      f"{runs['served_c1'][-1]['latency_ms']['p50']:.0f} ms, c=2 "
                      f"{runs['served_c2'][-1]['throughput_rps']:.2f} images/s", flush=True)
    return runs


def baseline_summary(runs: dict[str, list[Any]], key: str) -> dict[str, float]:
    """A baseline's median seconds per image over every round, as p50 ms, and its mean rate."""
    flat = [s for run in runs[key] for s in run]
    return {"p50_ms": round(1000 * statistics.median(flat), 1), "images_per_s": round(1 / statistics.mean(flat), 3)}


def served_summary(runs: dict[str, list[Any]], *, against: str) -> dict[str, Any]:
    """The served figures (medians over rounds) and the p50 speed-up over baseline ``against``, overall
    and per round (each round's ratio compares the two sides under the same load)."""
    served_p50 = statistics.median(p["latency_ms"]["p50"] for p in runs["served_c1"])
    return {
        "served_c1_p50_ms": round(served_p50, 1),
        "served_c1_p99_ms": round(statistics.median(p["latency_ms"]["p99"] for p in runs["served_c1"]), 1),
        "served_c1_images_per_s": round(statistics.median(p["throughput_rps"] for p in runs["served_c1"]), 3),
        "served_c2_images_per_s": round(statistics.median(p["throughput_rps"] for p in runs["served_c2"]), 3),
        f"speedup_p50_vs_{against.removesuffix('_s')}": round(
            baseline_summary(runs, against)["p50_ms"] / served_p50, 2),
        f"speedup_p50_vs_{against.removesuffix('_s')}_per_round": [
            round(1000 * statistics.median(s) / c1["latency_ms"]["p50"], 2)
            for s, c1 in zip(runs[against], runs["served_c1"], strict=True)],
    }


def write_rounds(out: Path, script: str, argv: Sequence[str] | None, args: Any, model: dict[str, Any],
                 summary: dict[str, Any], runs: dict[str, list[Any]]) -> None:
    """The report (:func:`bench_report.write_report`: the command, the machine) with the model's shape, the
    rounds' settings, the summary and every run; the summary printed."""
    write_report(out, script, argv, {"model": model, "rounds": args.rounds, "images": args.images,
                                     "duration_s": args.duration_s, "summary": summary, "runs": runs})
    print(json.dumps(summary, indent=2))
