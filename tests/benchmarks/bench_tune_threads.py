"""Benchmark: ``fashionbox tune`` searching the detector's instances and threads per instance.

    .venv/bin/python tests/benchmarks/bench_tune_threads.py [--workload yolo|default|torch] [--duration-s 8]
        [--out tests/benchmarks/results/tune_threads.json]

What the search finds, trial by trial, when it may move the detector's instances (1, 2), its runtime
threads per instance (1, 2) and both together along the cores they use (``instances x threads``,
:data:`fashionbox.loadtest.tune.SPLIT`): throughput at concurrency 1, 2 and 4 under a p99 SLO, every
other scheduling parameter fixed as converted, the winner and the baseline measured again back to
back. One entry per workload (a run rewrites its own and keeps the others'):

- **yolo**: the YOLOv8s-seg-sized detector of ``bench_families.py`` (random weights, 13 classes, 640
  rect letterbox, masks), converted as ``fashionbox convert --detector ultralytics:FILE.onnx`` does
  (its family's two threads per instance); 1280x960 generated photos; SLO p99 1,000 ms.
- **default**: the embedded default model (one thread per instance); 640x480 generated photos; SLO
  p99 150 ms (the command's default).
- **torch**: the default model converted with ``--runtime torch``, the runtime searched first
  (``torch/fp32``, ``onnxruntime/fp32``, ``openvino/fp32``: such a repository ships the graphs beside
  the checkpoints), then the threads and instances on the winner; the default workload's photos; SLO
  p99 300 ms (the torch runtime's p99 at c=4 is above 150 ms here).

The tuning server runs here, on this host's cores (the search leaves out thread counts above them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import machine, write_report

ROOT = Path(__file__).resolve().parents[2]


def _yolo_repository(tmp: Path) -> tuple[Path, list[bytes], float]:
    import numpy as np
    from bench_families import CLASS_LOGITS, SIZE, YOLOV8S, _letterboxed, make_images
    from ultralytics_models import build_yolo

    from fashionbox.converter import ConvertOptions, convert

    calibration = np.stack([pixels for pixels, _ in _letterboxed(make_images(4, seed=800_000))])
    onnx_path = build_yolo(tmp / "yolov8s-seg", task="segment", imgsz=SIZE, width=YOLOV8S["width"],
                           depth=YOLOV8S["depth"], class_logits=CLASS_LOGITS, calibration=calibration)
    repository = convert(ConvertOptions(out=tmp / "repository", detector=f"ultralytics:{onnx_path}",
                                        compare_samples=2, runtime="onnxruntime")).repository
    return repository, make_images(5), 1000.0


def _default_repository(tmp: Path) -> tuple[Path, list[bytes], float]:
    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.synth import render_scene

    repository = convert(ConvertOptions(out=tmp / "repository", compare_samples=1, runtime="onnxruntime")).repository
    images = [render_scene(900_000 + i, size=(640, 480)).encode(format="JPEG", quality=90) for i in range(16)]
    return repository, images, 150.0


def _torch_repository(tmp: Path) -> tuple[Path, list[bytes], float]:
    from fashionbox.converter import ConvertOptions, convert

    _, images, _ = _default_repository(tmp / "default")
    repository = convert(ConvertOptions(out=tmp / "repository", compare_samples=1, runtime="torch")).repository
    return repository, images, 300.0


WORKLOADS = {"yolo": _yolo_repository, "default": _default_repository, "torch": _torch_repository}
RUNTIMES = {"torch": ("torch/fp32", "onnxruntime/fp32", "openvino/fp32")}
"""The workloads whose search includes the runtime (``fashionbox tune --runtime ...``), the converted one first."""


def run(workload: str, duration_s: float, tmp: Path) -> dict[str, Any]:
    from fashionbox import contract
    from fashionbox.loadtest.tune import TuneOptions, TuneSpace, read_configs, scheduling_of, tune
    from fashionbox.loadtest.windows import StabilityRule
    from fashionbox.server import serve_for_tuning

    repository, images, slo = WORKLOADS[workload](tmp)
    converted = scheduling_of(read_configs(repository)[contract.DETECTOR_MODEL])
    space = TuneSpace(models=(contract.DETECTOR_MODEL,), instances=(1, 2), threads=(1, 2),
                      max_batch_sizes=(converted.max_batch_size,), queue_delays_us=(converted.max_queue_delay_us,))
    started = time.perf_counter()
    report = tune(TuneOptions(repository=repository, images=tuple(images), space=space, slo_p99_ms=slo,
                              concurrency=(1, 2, 4), max_trials=8, window_s=2.0, warmup_s=2.0,
                              max_duration_s=duration_s, stability=StabilityRule(tolerance=0.25),
                              runtimes=RUNTIMES.get(workload, ())),
                  launch=serve_for_tuning,
                  on_trial=lambda t: print(f"{t.change}: {t.throughput_rps:.2f} images/s at c={t.concurrency}, "
                                           f"p99 {t.p99_ms:.0f} ms", flush=True))
    doc = report.to_dict()
    doc.pop("repository")
    doc["written"] = []

    def split(index: int) -> str:
        detector = doc["trials"][index]["config"][contract.DETECTOR_MODEL]
        return f"{detector['instances']}x{detector['threads']}"

    summary = {"slo_p99_ms": slo, "baseline": split(doc["baseline"]), "best": split(doc["best"]),
               "confirmed": doc["confirmed"], "gain": doc["gain"], "trials": len(doc["trials"]),
               "tune_s": round(time.perf_counter() - started, 1)}
    if workload in RUNTIMES:
        summary.update(baseline_runtime=doc["trials"][doc["baseline"]]["runtime"], best_runtime=doc["runtime"],
                       runtimes={t["runtime"]: t["throughput_rps"] for t in doc["trials"][:len(RUNTIMES[workload])]})
    return {"summary": summary, "tune": doc}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="yolo")
    parser.add_argument("--duration-s", type=float, default=8.0, help="longest measurement per concurrency level")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/tune_threads.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-tune-threads-") as tmp:
        entry = run(args.workload, args.duration_s, Path(tmp))
    workloads = dict(json.loads(args.out.read_text()).get("workloads", {})) if args.out.is_file() else {}
    # Each entry keeps the machine it was measured on: the file gathers runs of several sessions and hosts.
    workloads[args.workload] = {"machine": machine(), **entry}
    write_report(args.out, __file__, argv, {"workloads": workloads})
    print(json.dumps(entry["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
