"""Benchmark: what a new batch shape costs the PyTorch runners, and what bucketing saves.

    python tests/benchmarks/bench_torch_shapes.py [--device cuda:0] [--precision fp16] [--out FILE]

Dynamic batching hands the detector every batch size from 1 to ``max_batch_size``. For each size
in a fixed list, the detector's ``detect`` is timed on its first sight of that size and again
right after, once with no buckets (every size its own shape) and once bucketed as served
(:func:`fashionbox.models.torch_runtime.batch_buckets`: every bucket run at load, whose time is reported).
Writes ``tests/benchmarks/results/torch_shapes.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine, write_report

ROOT = Path(__file__).resolve().parents[2]
SIZES = (1, 3, 5, 7, 11, 13, 24, 37, 64)


def timed(call: Any) -> float:
    import torch

    start = time.perf_counter()
    call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return round(1000 * (time.perf_counter() - start), 2)


def measure(device: str, precision: str, max_batch_size: int) -> dict[str, Any]:
    import numpy as np

    from fashionbox.contract.labels import default_label_map
    from fashionbox.models import default_weights, served_score_threshold
    from fashionbox.models.nms import NmsSettings
    from fashionbox.models.torch_runtime import TorchDetector
    from fashionbox.training.data import render_sample

    labels = default_label_map()
    scenes = np.stack([render_sample(90_000 + i, 320, labels).pixels for i in range(max(SIZES))])
    start = time.perf_counter()
    weights = default_weights("detector")
    detector = TorchDetector(weights, device=device, precision=precision,
                             nms=NmsSettings(score_threshold=served_score_threshold(weights)),
                             max_detections=100, max_batch_size=max_batch_size)
    load_ms = round(1000 * (time.perf_counter() - start), 1)
    sizes = {}
    for size in SIZES:
        batch = scenes[:size]
        first, again = timed(lambda: detector.detect(batch)), timed(lambda: detector.detect(batch))  # noqa: B023
        sizes[str(size)] = {"first_ms": first, "again_ms": again}
    return {"buckets": list(detector.buckets), "load_ms": load_ms, "sizes": sizes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results" / "torch_shapes.json")
    args = parser.parse_args(argv)
    import torch

    fields: dict[str, Any] = {
        "device": args.device, "precision": args.precision,
        # Unbucketed first: a process's first runs also pay CUDA's lazy module loading.
        "unbucketed": measure(args.device, args.precision, 1),
        "bucketed": measure(args.device, args.precision, max(SIZES)),
    }
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report = write_report(args.out, __file__, argv, fields, machine_info=machine(torch=torch.__version__, gpu=gpu))
    for name in ("unbucketed", "bucketed"):
        part = report[name]
        print(name, "load", part["load_ms"], "ms;",
              " ".join(f"{k}:{v['first_ms']}/{v['again_ms']}" for k, v in part["sizes"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
