"""Benchmark: ONNX Runtime's thread spinning and intra-op threads per network model, served, in one run.

    .venv/bin/python tests/benchmarks/bench_spinning.py [--workload default|yolo] [--rounds 3]
        [--out tests/benchmarks/results/spinning.json]

ONNX Runtime's intra-op worker threads spin while they wait for work (``allow_spinning``). A model
instance with one thread has no workers, so the setting cannot matter there; with two threads per
instance the spinning workers hold cores that the pipeline's other processes (``preprocess``,
``postprocess``, the other networks) need on the same machine. Measured per workload, each variant
a repository converted with ONNX Runtime and served by its own embedded Triton, closed-loop levels
over gRPC with generated 1280x960 JPEGs, variants interleaved per round (rotating order), medians of
rounds, the idle share of the machine per level (``tests/benchmarks/served_variants.py``):

- ``default``: the shipped model (steps layout). One thread per instance with spinning on and off
  (the converter's instances), and the networks at two threads with spinning on and off.
- ``yolo``: the YOLOv8s-seg-sized Ultralytics export of ``bench_families.py`` (a network of about
  170 ms per 640x480 image on two threads here): one thread (the converter's default), two threads
  with spinning on and off, two detector instances of one thread each.

Writes ``tests/benchmarks/results/spinning.json`` (one entry per workload; a run keeps the other's).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import write_report
from served_variants import measure_variants, variant_parser

ROOT = Path(__file__).resolve().parents[2]
LEVELS = {"default": "1,8,16", "yolo": "1,2,4"}


def variants(workload: str) -> dict[str, dict[str, Any]]:
    """``repository_settings`` per variant (names ``steps/...`` for the harness's layout key)."""
    from fashionbox.converter.repository import ModelScheduling
    from fashionbox.core.serving import OrtSettings

    def ort(threads: int, spinning: bool) -> dict[str, Any]:
        return {"ort": OrtSettings(intra_op_threads=threads, allow_spinning=spinning)}

    if workload == "default":
        return {"steps/1-thread-spinning": ort(1, True), "steps/1-thread-no-spinning": ort(1, False),
                "steps/2-threads-spinning": ort(2, True), "steps/2-threads-no-spinning": ort(2, False)}
    return {"steps/1-thread-spinning": ort(1, True), "steps/2-threads-spinning": ort(2, True),
            "steps/2-threads-no-spinning": ort(2, False),
            "steps/2-detectors-1-thread": {**ort(1, True), "detector": ModelScheduling(instances=2)}}


def yolo_detector(folder: Path) -> str:
    """The ``bench_families.py`` model, built here: the ``--detector`` spec."""
    import numpy as np
    from bench_families import CLASS_LOGITS, SIZE, YOLOV8S, _letterboxed
    from bench_families import make_images as family_images
    from ultralytics_models import build_yolo

    calibration = np.stack([pixels for pixels, _ in _letterboxed(family_images(4, seed=800_000))])
    path = build_yolo(folder / "yolov8s-seg", task="segment", imgsz=SIZE, width=YOLOV8S["width"],
                      depth=YOLOV8S["depth"], class_logits=CLASS_LOGITS, calibration=calibration)
    return f"ultralytics:{path}"


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.splitlines()[0], ROOT / "tests/benchmarks/results/spinning.json",
                            duration_s=8.0)
    parser.add_argument("--workload", choices=sorted(LEVELS), default="default")
    parser.set_defaults(layouts="steps", levels=None)
    args = parser.parse_args(argv)
    args.levels = args.levels or LEVELS[args.workload]
    args.layouts = "steps"
    if args.workload == "yolo":
        args.images = min(args.images, 5)

    def build(folder: Path, layouts: list[str]) -> dict[str, Path]:
        from fashionbox.converter import ConvertOptions, convert

        detector = yolo_detector(folder) if args.workload == "yolo" else "default"
        return {name: convert(ConvertOptions(out=folder / name.replace("/", "-"), detector=detector,
                                             runtime="onnxruntime", compare_samples=2,
                                             repository_settings=settings)).repository
                for name, settings in variants(args.workload).items()}

    measured = measure_variants(args, "fashionbox-bench-spinning-", build)
    top = measured.pop("top")
    measured.pop("layouts")
    summary = measured["summary"]
    base = summary["steps/1-thread-spinning"]
    against_shipped = {name: {"images_per_s_top": round(values[top]["images_per_s"] / base[top]["images_per_s"], 3),
                              "p50_c1": round(values["1"]["p50_ms"] / base["1"]["p50_ms"], 3)}
                       for name, values in summary.items()}
    workloads: dict[str, Any] = {}
    if args.out.is_file():  # keep the other workload's entry
        workloads = dict(json.loads(args.out.read_text()).get("workloads", {}))
    workloads[args.workload] = {**measured, f"against_1_thread_spinning_c{top}": against_shipped,
                                "unix_time": int(time.time())}
    write_report(args.out, __file__, argv, {"workloads": workloads})
    print(json.dumps({"summary": summary, "against_1_thread_spinning": against_shipped}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
