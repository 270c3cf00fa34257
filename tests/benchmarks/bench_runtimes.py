"""Benchmark: the CPU runtimes (ONNX Runtime fp32, OpenVINO fp32 and bf16, PyTorch) in one run on this host.

    .venv/bin/python tests/benchmarks/bench_runtimes.py [--rounds 3] [--out tests/benchmarks/results/runtimes.json]

Which CPU runtime is faster depends on the CPU (docs/FIELD_NOTES.md, "CPU runtimes differ by
host"), so everything is measured in one run and written with the CPU's model and flags:

- **networks alone**: the default detector (batch 1 and 8, 320 px) and the attribute heads (batch 1
  and 8, 96 px crops), each runtime and precision, 1 and 2 threads; each round runs every
  combination once (``--calls`` calls, median), rounds interleaved, the median of rounds reported;
  each runner loaded as the repository's ``detector`` and ``attributes`` models load it
  (``fashionbox.model_repository.runners`` from their ``config.pbtxt``, only the threads set), so the
  torch runtime's (the network and its batched NMS in PyTorch eager) is what ``--runtime torch``
  serves on CPU instances;
- **served**: the default models converted with ``--runtime onnxruntime``, ``--runtime openvino``,
  ``--runtime torch`` and (where the CPU has AMX or AVX512-BF16) ``--runtime openvino --precision
  bf16``, each on its own
  embedded Triton, driven over gRPC by the closed-loop load generator: p50/p99 at concurrency 1 and
  images/s at saturation (the best of the higher concurrencies); servers interleaved per round;
- **cost**: the capacity planner's cost per million images per runtime (``fashionbox.loadtest.capacity``:
  the best point under ``--slo-p99-ms``, at ``--cost-per-hour``, S0's C5 CPU price by default);
- **quality**: box mAP and attribute accuracy of the in-process pipeline per runtime on
  ``--quality-scenes`` held-out scenes (``fashionbox eval``'s default seed 7);
- **auto**: what ``fashionbox convert --runtime auto --precision bf16`` (fp32 where bf16 is refused)
  chose here, with its timings: whether its quick timing picks the runtime that serves fastest.

The machine is a shared 2-core VM: figures move with the neighbours' load (recorded as the load
average), so only medians of interleaved rounds are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine, write_report

ROOT = Path(__file__).resolve().parents[2]
S0_C5_COST_PER_HOUR = 0.08
"""S0's CPU price (docs/SEEDS.md: a C5 CPU at $0.08/h)."""


def make_images(count: int) -> list[bytes]:
    from fashionbox.synth import render_scene

    return [render_scene(710_000 + i, size=(1280, 960)).encode(format="JPEG", quality=90) for i in range(count)]


def candidates() -> list[tuple[str, str]]:
    from fashionbox.core.openvino_runtime import host_cpu

    found = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("torch", "fp32")]
    if host_cpu().has_bf16:
        found.append(("openvino", "bf16"))
    return found


class _TorchThreads:
    """A torch runner whose calls run PyTorch's pool at ``threads`` (it is per process, not per runner)."""

    def __init__(self, runner: Any, threads: int) -> None:
        self.runner, self.threads = runner, threads

    def detect(self, pixels: Any) -> Any:
        import torch

        torch.set_num_threads(self.threads)
        return self.runner.detect(pixels)

    def classify(self, crops: Any) -> Any:
        import torch

        torch.set_num_threads(self.threads)
        return self.runner.classify(crops)


def runners(repository: Path, runtime: str, precision: str, threads: int) -> tuple[Any, Any]:
    """The detector's and the heads' runners as the repository's models load them
    (``fashionbox.model_repository.runners`` from each ``config.pbtxt``), at ``threads``."""
    from fashionbox.core.serving import ModelArgs, RuntimeSettings
    from fashionbox.model_repository.runners import load_attributes_runner, load_detector_runner
    from fashionbox.server.model_config import backend_args

    # the runtime's own threads parameter (OpenVINO takes ONNX Runtime's)
    override = {"torch_threads" if runtime == "torch" else "intra_op_threads": str(threads)}
    args = {model: ModelArgs.from_backend_args(backend_args(repository, model, parameters=override))
            for model in ("detector", "attributes")}
    for model_args in args.values():
        named = RuntimeSettings.from_parameters(model_args.parameters)
        assert (named.runtime, named.precision) == (runtime, precision), (repository, named)
    detector, _ = load_detector_runner(args["detector"])
    heads, _ = load_attributes_runner(args["attributes"])
    if runtime == "torch":  # PyTorch's pool is per process: set at each call, as each stub has its own
        return _TorchThreads(detector, threads), _TorchThreads(heads, threads)
    return detector, heads


def _median_ms(call: Callable[[], object], calls: int) -> float:
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return 1000 * statistics.median(seconds)


def networks(repositories: dict[str, Path], rounds: int, calls: int) -> dict[str, Any]:
    """Median-of-rounds ms per call for every runtime x precision x threads x network x batch."""
    from fashionbox.contract.labels import LabelMap
    from fashionbox.core.imaging import crop_garments
    from fashionbox.training.data import render_sample

    labels = LabelMap.load(repositories["onnxruntime/fp32"] / "labels.json")
    scenes = [render_sample(91_000 + i, 320, labels) for i in range(8)]
    pixels = np.stack([s.pixels for s in scenes])
    crops = np.concatenate([crop_garments(s.pixels, s.boxes, 96) for s in scenes])[:8]
    inputs = {1: (pixels[:1], crops[:1]), 8: (pixels, crops)}
    loaded = {(runtime, precision, threads):
              runners(repositories[f"{runtime}/{precision}"], runtime, precision, threads)
              for runtime, precision in candidates() for threads in (1, 2)}
    for detector, heads in loaded.values():  # warm-up: first calls allocate
        for batch_pixels, batch_crops in inputs.values():
            detector.detect(batch_pixels)
            heads.classify(batch_crops)
    samples: dict[str, list[float]] = {}
    keys = list(loaded)
    for round_index in range(rounds):
        for k in range(len(keys)):
            runtime, precision, threads = keys[(round_index + k) % len(keys)]
            detector, heads = loaded[(runtime, precision, threads)]
            for batch, (batch_pixels, batch_crops) in inputs.items():
                name = f"{runtime}/{precision}/{threads}t"
                samples.setdefault(f"{name}/detector/b{batch}", []).append(
                    _median_ms(lambda d=detector, p=batch_pixels: d.detect(p), calls))
                samples.setdefault(f"{name}/attributes/b{batch}", []).append(
                    _median_ms(lambda h=heads, c=batch_crops: h.classify(c), calls))
        print(f"networks round {round_index + 1}/{rounds} done", flush=True)
    return {"median_ms": {k: round(statistics.median(v), 3) for k, v in samples.items()},
            "rounds_ms": {k: [round(x, 3) for x in v] for k, v in samples.items()}}


def quality(repositories: dict[str, Path], scenes: int) -> dict[str, Any]:
    """Box mAP and pooled attribute accuracy of the whole in-process pipeline per runtime."""
    from fashionbox.commands.evaluation import (
        attribute_accuracy,
        coco_metrics,
        heldout_samples,
        predictions_from_result,
    )
    from fashionbox.models.pipeline import InProcessPipeline

    samples = heldout_samples(scenes, seed=7)
    reference = InProcessPipeline.from_repository(repositories["onnxruntime/fp32"])
    out: dict[str, Any] = {"scenes": scenes, "seed": 7}
    for runtime, precision in candidates():
        detector, heads = runners(repositories[f"{runtime}/{precision}"], runtime, precision, 1)
        pipeline = InProcessPipeline(detector.detect, heads.classify, reference.label_map, reference.input_size,
                                     reference.crop_size)
        predictions = []
        for sample in samples:
            (result,) = pipeline.run([sample.data])
            assert not isinstance(result, Exception)
            predictions.append(predictions_from_result(result, pipeline.label_map))
        groups = attribute_accuracy(samples, predictions, pipeline.label_map)
        matched = sum(int(g["matched"]) for g in groups.values())
        out[f"{runtime}/{precision}"] = {
            **coco_metrics(samples, predictions, pipeline.label_map),
            "attribute_accuracy": sum(g["accuracy"] * g["matched"] for g in groups.values() if g["matched"]) / matched,
            "attributes_matched": matched, "detections": sum(len(p) for p in predictions)}
    return out


def served(repositories: dict[str, Path], images: list[bytes], rounds: int, duration_s: float,
           levels: tuple[int, ...], slo_p99_ms: float, cost_per_hour: float, log_dir: Path) -> dict[str, Any]:
    from fashionbox.loadtest import measure_concurrency
    from fashionbox.loadtest.capacity import best_point
    from fashionbox.loadtest.report import CapacityRow
    from fashionbox.server import start_on_free_ports

    servers: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in repositories}
    costs: dict[str, list[float]] = {name: [] for name in repositories}
    try:
        for name, path in repositories.items():
            folder = log_dir / name.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            servers[name] = start_on_free_ports(path, folder)
        for server in servers.values():
            measure_concurrency(server.endpoints.grpc, images, concurrency=2, duration_s=3.0, metrics="none")
        names = list(servers)
        for round_index in range(rounds):
            for k in range(len(names)):
                name = names[(round_index + k) % len(names)]
                url = servers[name].endpoints.grpc
                points = [measure_concurrency(url, images, concurrency=c, duration_s=duration_s, warmup_s=1.0,
                                              metrics="none") for c in levels]
                best, note = best_point(points, slo_p99_ms)
                row = CapacityRow(name, best, None, cost_per_hour, note)
                if row.cost_per_million is not None:
                    costs[name].append(row.cost_per_million)
                runs[name].append({
                    "c1_p50_ms": points[0].latency.p50_ms, "c1_p99_ms": points[0].latency.p99_ms,
                    "c1_images_per_s": points[0].throughput_rps,
                    "saturation_images_per_s": max(p.throughput_rps for p in points[1:]),
                    "errors": sum(p.error_count for p in points),
                    "levels": {c: round(p.throughput_rps, 2) for c, p in zip(levels, points, strict=True)},
                    "cost_per_million_usd": row.cost_per_million, "capacity_note": note})
                print(f"served round {round_index + 1}/{rounds} {name}: {json.dumps(runs[name][-1])}", flush=True)
    finally:
        for server in servers.values():
            server.stop(timeout_s=10)

    def med(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[name]), 2)

    summary = {name: {"c1_p50_ms": med(name, "c1_p50_ms"), "c1_p99_ms": med(name, "c1_p99_ms"),
                      "saturation_images_per_s": med(name, "saturation_images_per_s"),
                      "cost_per_million_usd": round(statistics.median(costs[name]), 4) if costs[name] else None,
                      "errors": sum(r["errors"] for r in runs[name])}
               for name in runs}
    return {"summary": summary, "runs": runs, "levels": list(levels), "duration_s": duration_s,
            "slo_p99_ms": slo_p99_ms, "cost_per_hour_usd": cost_per_hour}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15, help="calls per network measurement (median)")
    parser.add_argument("--images", type=int, default=8, help="distinct 1280x960 JPEGs for the served runs")
    parser.add_argument("--duration-s", type=float, default=10.0, help="served window per concurrency level")
    parser.add_argument("--levels", default="1,4,8", help="concurrencies; the first is the latency level")
    parser.add_argument("--slo-p99-ms", type=float, default=1000.0)
    parser.add_argument("--cost-per-hour", type=float, default=S0_C5_COST_PER_HOUR)
    parser.add_argument("--quality-scenes", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/runtimes.json")
    args = parser.parse_args(argv)

    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.core.openvino_runtime import host_cpu

    load_before = os.getloadavg()
    started = time.time()
    levels = tuple(int(c) for c in args.levels.split(","))
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-runtimes-") as tmp:
        repositories: dict[str, Path] = {}
        convert_s: dict[str, float] = {}
        for runtime, precision in candidates():
            name = f"{runtime}/{precision}"
            began = time.perf_counter()
            repositories[name] = convert(ConvertOptions(
                out=Path(tmp) / name.replace("/", "-"), runtime=runtime,  # type: ignore[arg-type]
                precision=precision if runtime == "openvino" else None)).repository  # type: ignore[arg-type]
            convert_s[name] = round(time.perf_counter() - began, 1)
        auto = convert(ConvertOptions(out=Path(tmp) / "auto", runtime="auto",
                                      precision="bf16" if host_cpu().has_bf16 else None))
        print(f"auto chose {auto.manifest['cpu_runtime']['chosen']}", flush=True)
        network_figures = networks(repositories, args.rounds, args.calls)
        quality_figures = quality(repositories, args.quality_scenes)
        served_figures = served(repositories, make_images(args.images), args.rounds, args.duration_s, levels,
                                args.slo_p99_ms, args.cost_per_hour, Path(tmp) / "logs")
    write_report(args.out, __file__, argv, {
        "rounds": args.rounds,
        "cpu": host_cpu().as_dict(),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "networks": network_figures,
        "served": served_figures,
        "quality": quality_figures,
        "auto": auto.manifest["cpu_runtime"],
        "convert_s": convert_s,
        "wall_s": round(time.time() - started, 1),
    }, machine_info=machine(openvino=_version("openvino"), onnxruntime=_version("onnxruntime"),
                            torch=_version("torch")))
    print(json.dumps({"served": served_figures["summary"], "quality": quality_figures,
                      "networks": network_figures["median_ms"]}, indent=2))
    return 0


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


if __name__ == "__main__":
    sys.exit(main())
