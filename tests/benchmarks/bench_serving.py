"""Benchmark: the served pipeline at saturation against the best in-process baseline, in one run.

    .venv/bin/python tests/benchmarks/bench_serving.py [--rounds 3] [--out tests/benchmarks/results/serving.json]

What it measures, on the same 1280x960 JPEGs with 2-4 garments (generated, fixed seeds):

- **baseline**: the same ONNX graphs and the same Python pre/post-processing in ONNX Runtime,
  without Triton (``InProcessPipeline.from_repository``), in several configurations (worker
  processes x ORT threads x batch); the best one is the baseline.
- **served**: the embedded Triton on a repository converted from the shipped weights, driven by
  the closed-loop load generator over gRPC at several concurrencies; the best is "saturation".
  The load generator shares the machine's cores with the server, as a client on the same host would.
- **latency** at concurrency 1, and Triton's per-model statistics (queue, compute, batch size)
  to show where the time goes.

Rounds interleave baseline and served runs; the JSON keeps every run and the medians.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BaselineConfig:
    processes: int
    threads: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.processes} proc x {self.threads} thread, batch {self.batch}"


BASELINE_CONFIGS = (BaselineConfig(1, 2, 1), BaselineConfig(2, 1, 1), BaselineConfig(2, 1, 4))


def make_images(count: int) -> list[bytes]:
    """1280x960 JPEGs (quality 90) with 2 to 4 annotated garments."""
    from fashionbox.synth import render_scene

    images: list[bytes] = []
    seed = 500_000
    while len(images) < count:
        scene = render_scene(seed, size=(1280, 960))
        seed += 1
        if 2 <= len(scene.garments) <= 4:
            images.append(scene.encode(format="JPEG", quality=90))
    return images


def _baseline_worker(
    repository: str, images: list[bytes], config: BaselineConfig, start: Any, duration_s: float, results: Any
) -> None:
    from fashionbox.models.pipeline import InProcessPipeline

    pipeline = InProcessPipeline.from_repository(Path(repository), intra_op_threads=config.threads)
    for i in range(0, 8, config.batch):  # warm-up: sessions, allocator, caches
        pipeline.detections(images[i : i + config.batch])
    start.wait()
    done = 0
    i = 0
    t_end = time.perf_counter() + duration_s
    while time.perf_counter() < t_end:
        batch = [images[(i + k) % len(images)] for k in range(config.batch)]
        pipeline.detections(batch)  # the served answer's work: results, masks, the serialized proto
        done += len(batch)
        i += config.batch
    results.put(done)


def run_baseline(repository: Path, images: list[bytes], config: BaselineConfig, duration_s: float) -> float:
    context = mp.get_context("spawn")
    start = context.Barrier(config.processes + 1)
    results = context.Queue()
    workers = [
        context.Process(target=_baseline_worker, args=(str(repository), images, config, start, duration_s, results))
        for _ in range(config.processes)
    ]
    for w in workers:
        w.start()
    start.wait()
    total = sum(results.get(timeout=duration_s + 120) for _ in workers)
    for w in workers:
        w.join()
    return total / duration_s


def triton_statistics(url: str) -> dict[str, dict[str, float]]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    stats = client.get_inference_statistics(as_json=True)
    out: dict[str, dict[str, float]] = {}
    for model in stats.get("model_stats", []):
        s = model["inference_stats"]
        requests = int(s.get("success", {}).get("count", 0))
        executions = int(model.get("execution_count", 0))
        if not requests:
            continue

        def ms(key: str, s: dict[str, Any] = s, requests: int = requests) -> float:
            return int(s.get(key, {}).get("ns", 0)) / requests / 1e6

        out[model["name"]] = {
            "requests": requests,
            "executions": executions,
            "avg_batch": float(model.get("inference_count", requests)) / max(executions, 1),
            "queue_ms": ms("queue"),
            "compute_input_ms": ms("compute_input"),
            "compute_infer_ms": ms("compute_infer"),
            "compute_output_ms": ms("compute_output"),
            "total_ms": ms("success"),
        }
    client.close()
    return out


def run_served(url: str, images: list[bytes], concurrency: int, duration_s: float) -> dict[str, Any]:
    from fashionbox.loadtest import measure_concurrency

    # The load generator shares the cores with the server; its CPU per request is part of
    # where the time goes. Process CPU time covers warm-up too, so it is prorated to the window.
    warmup_s = 1.5
    cpu_before = time.process_time()
    point = measure_concurrency(
        url, images, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s, metrics="none"
    )
    cpu_ms = (time.process_time() - cpu_before) * 1000.0 * duration_s / (duration_s + warmup_s)
    result = point.as_dict()
    result["client_cpu_ms_per_request"] = round(cpu_ms / max(1, int(result.get("requests", 0))), 2)
    return result


def _schedulings(spec: str) -> dict[str, Any]:
    from fashionbox.converter.repository import ModelScheduling

    instances = {k: int(v) for k, v in (item.split("=") for item in spec.split(","))}
    return {name: ModelScheduling(instances=count, max_batch_size=64 if name == "attributes" else 8)
            for name, count in instances.items()}


def _summary(runs: dict[str, Any], baseline: float, concurrencies: list[int]) -> dict[str, Any]:
    best = max(concurrencies, key=lambda c: statistics.median(
        p["throughput_rps"] for p in runs["served"].get(str(c), [{"throughput_rps": 0}])))
    served = statistics.median(p["throughput_rps"] for p in runs["served"][str(best)])
    return {
        "served_concurrency": best,
        "served_images_per_s": round(served, 1),
        "ratio_served_to_baseline": round(served / baseline, 3),
        "latency_c1_p50_ms": round(statistics.median(p["latency_ms"]["p50"] for p in runs["latency_c1"]), 1),
        "latency_c1_p99_ms": round(statistics.median(p["latency_ms"]["p99"] for p in runs["latency_c1"]), 1),
        "client_cpu_ms_per_request": statistics.median(
            p["client_cpu_ms_per_request"] for p in runs["served"][str(best)]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--layouts", default="steps,fused",
                        help="repository layouts served, each in every round (RepositorySettings.layout); the first "
                             "is the summary's")
    parser.add_argument(
        "--instances",
        default="preprocess=2,detector=2,attributes=1,postprocess=2",
        help="instance count per composing model, steps layout",
    )
    parser.add_argument("--fused-instances", default="detector=2,postprocess=2",
                        help="instance count per composing model, fused layout (detector decodes too; postprocess "
                             "runs the attribute network)")
    parser.add_argument("--detector", default="default", help="detector checkpoint (fashionbox convert --detector)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/serving.json")
    args = parser.parse_args(argv)

    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.server import ServerConfig, TritonServer, find_free_ports

    layouts = args.layouts.split(",")
    specs = {"steps": args.instances, "fused": args.fused_instances}
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    images = make_images(args.images)
    runs: dict[str, Any] = {"baseline": {c.label: [] for c in BASELINE_CONFIGS}}
    served_runs: dict[str, dict[str, Any]] = {layout: {"served": {}, "latency_c1": []} for layout in layouts}
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-") as tmp:
        configs = {}
        for layout in layouts:  # the same weights, converted once per layout; ONNX Runtime in every one
            repository = convert(ConvertOptions(
                out=Path(tmp) / f"repo-{layout}", runtime="onnxruntime", detector=args.detector,
                repository_settings={"layout": layout, **_schedulings(specs[layout])})).repository
            grpc, http, metrics = find_free_ports(3)
            configs[layout] = ServerConfig(repository=repository, grpc_port=grpc, http_port=http,
                                           metrics_port=metrics, log_path=Path(tmp) / f"tritonserver-{layout}.log")
        best_config = BASELINE_CONFIGS[0]
        best_concurrency = {layout: concurrencies[0] for layout in layouts}
        for round_index in range(args.rounds):
            # Round 1 explores every configuration; later rounds repeat only the best of each side.
            baselines = BASELINE_CONFIGS if round_index == 0 else (best_config,)
            for c in baselines:
                rate = run_baseline(configs[layouts[0]].repository, images, c, args.duration_s)
                runs["baseline"][c.label].append(rate)
                print(f"round {round_index + 1} baseline {c.label}: {rate:.1f} images/s", flush=True)
            best_config = max(BASELINE_CONFIGS, key=lambda c: statistics.median(runs["baseline"][c.label] or [0]))
            for layout in layouts:
                layout_runs = served_runs[layout]
                with TritonServer(configs[layout]) as server:
                    url = server.endpoints.grpc
                    run_served(url, images, 4, 2.0)  # warm every instance
                    levels = concurrencies if round_index == 0 else [best_concurrency[layout]]
                    for c in levels:
                        point = run_served(url, images, c, args.duration_s)
                        layout_runs["served"].setdefault(str(c), []).append(point)
                        lat = point["latency_ms"]
                        print(f"round {round_index + 1} {layout} served c={c}: {point['throughput_rps']:.1f} "
                              f"images/s p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms", flush=True)
                    best_concurrency[layout] = max(concurrencies, key=lambda c, r=layout_runs: statistics.median(
                        p["throughput_rps"] for p in r["served"].get(str(c), [{"throughput_rps": 0}])))
                    layout_runs["latency_c1"].append(run_served(url, images, 1, args.duration_s))
                    if round_index == args.rounds - 1:
                        layout_runs["triton_statistics"] = triton_statistics(url)

    baseline = statistics.median(runs["baseline"][best_config.label])
    layouts_summary = {layout: _summary(served_runs[layout], baseline, concurrencies) for layout in layouts}
    summary = {"baseline_config": best_config.label, "baseline_images_per_s": round(baseline, 1),
               "layout": layouts[0], **layouts_summary[layouts[0]], "layouts": layouts_summary}
    runs["layouts"] = served_runs
    write_report(args.out, __file__, argv, {"instances": {layout: specs[layout] for layout in layouts},
                                            "rounds": args.rounds, "duration_s": args.duration_s,
                                            "summary": summary, "runs": runs})
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
