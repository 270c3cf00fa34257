"""Benchmark: ``postprocess`` with ragged batches (the converter's default) against without, in one run.

    .venv/bin/python tests/benchmarks/bench_ragged.py [--rounds 3] [--out tests/benchmarks/results/ragged.json]

``postprocess`` takes one row per detection (``DET_BOXES [-1, 4]`` ...). Triton's dynamic batcher
puts requests into one batch only when their inputs have the same shape, unless the input allows
ragged batches, so without ``allow_ragged_batch`` two images batch together only when they have
as many detections, and ``postprocess`` calls ``attributes`` once per request. This measures what
allowing it changes.

The shipped default converted once per layout (``steps`` and ``fused``), then two copies of each:
``postprocess``'s variable-length inputs ragged, and not (what the converter chose per layout is
recorded as ``converter_default``: ragged for steps, same-shape for fused, from this measurement). Every
repository gets its own embedded Triton; closed-loop levels over gRPC with generated 1280x960
JPEGs, servers interleaved per round (rotating order), medians of rounds. Recorded per level:
images/s, p50/p99, ``postprocess``'s average batch and ``attributes`` executions per image, from
Triton's statistics over the level.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report
from bench_runtimes import make_images

ROOT = Path(__file__).resolve().parents[2]


def set_ragged_batches(repository: Path, ragged: bool) -> Path:
    """Allow ragged batches on ``postprocess``'s variable-length inputs of ``repository``, or not."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = repository / "postprocess" / "config.pbtxt"
    config = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    for tensor in config.input:
        if -1 in tensor.dims:
            tensor.allow_ragged_batch = ragged
        else:
            tensor.ClearField("allow_ragged_batch")
    path.write_text(text_format.MessageToString(config), encoding="utf-8")
    return repository


def converted_default(repository: Path) -> str:
    """``ragged`` or ``same-shape``: what the converter wrote into ``repository``'s postprocess."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    text = (repository / "postprocess" / "config.pbtxt").read_text(encoding="utf-8")
    config = text_format.Parse(text, mc.ModelConfig())
    return "ragged" if any(tensor.allow_ragged_batch for tensor in config.input) else "same-shape"


def level_figures(point: Any) -> dict[str, Any]:
    models = {m.model: m for m in point.server}
    postprocess, attributes = models.get("postprocess"), models.get("attributes")
    requests = postprocess.requests if postprocess else 0
    return {
        "images_per_s": round(point.throughput_rps, 2),
        "p50_ms": round(point.latency.p50_ms, 1),
        "p99_ms": round(point.latency.p99_ms, 1),
        "errors": point.error_count,
        "postprocess_avg_batch": round(postprocess.avg_batch_size, 2) if postprocess else None,
        # the fused layout runs the attribute network inside postprocess: no model of its own
        "attributes_calls_per_image": (round(attributes.executions / requests, 3)
                                       if attributes and requests else None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=8, help="distinct 1280x960 JPEGs")
    parser.add_argument("--duration-s", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--levels", default="1,8,16", help="closed-loop concurrencies")
    parser.add_argument("--layouts", default="steps,fused")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/ragged.json")
    args = parser.parse_args(argv)

    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.loadtest import measure_concurrency
    from fashionbox.server import start_on_free_ports

    levels = tuple(int(c) for c in args.levels.split(","))
    images = make_images(args.images)
    load_before = os.getloadavg()
    started = time.time()
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-ragged-") as tmp:
        repositories: dict[str, Path] = {}
        defaults: dict[str, str] = {}
        for layout in args.layouts.split(","):
            converted = convert(ConvertOptions(out=Path(tmp) / layout, runtime="onnxruntime",
                                               repository_settings={"layout": layout})).repository
            defaults[layout] = converted_default(converted)
            for ragged, variant in ((True, "ragged"), (False, "same-shape")):
                copy = shutil.copytree(converted, Path(tmp) / f"{layout}-{variant}")
                repositories[f"{layout}/{variant}"] = set_ragged_batches(copy, ragged)
        servers = {}
        try:
            for name, path in repositories.items():
                logs = Path(tmp) / "logs" / name.replace("/", "-")
                logs.mkdir(parents=True)
                servers[name] = start_on_free_ports(path, logs)
            for server in servers.values():  # warm-up: first calls allocate
                measure_concurrency(server.endpoints.grpc, images, concurrency=2, duration_s=3.0, metrics="none")
            names = list(servers)
            for round_index in range(args.rounds):
                for k in range(len(names)):
                    name = names[(round_index + k) % len(names)]
                    run = {str(c): level_figures(measure_concurrency(
                        servers[name].endpoints.grpc, images, concurrency=c, duration_s=args.duration_s,
                        warmup_s=1.0, metrics="none")) for c in levels}
                    runs.setdefault(name, []).append(run)
                    print(f"round {round_index + 1}/{args.rounds} {name}: {json.dumps(run)}", flush=True)
        finally:
            for server in servers.values():
                server.stop(timeout_s=10)

    def median(name: str, level: str, key: str) -> float | None:
        values = [run[level][key] for run in runs[name] if run[level][key] is not None]
        return round(statistics.median(values), 3) if values else None

    summary = {name: {level: {key: median(name, level, key) for key in runs[name][0][level]}
                      for level in runs[name][0]} for name in runs}
    top = str(max(levels))
    ratios = {layout: round(summary[f"{layout}/ragged"][top]["images_per_s"]
                            / summary[f"{layout}/same-shape"][top]["images_per_s"], 3)
              for layout in args.layouts.split(",")}
    write_report(args.out, __file__, argv, {
        "rounds": args.rounds, "levels": list(levels), "duration_s": args.duration_s,
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "converter_default": defaults, "summary": summary,
        f"ragged_over_same_shape_images_per_s_c{top}": ratios, "runs": runs,
        "wall_s": round(time.time() - started, 1),
    })
    print(json.dumps({"summary": summary, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
