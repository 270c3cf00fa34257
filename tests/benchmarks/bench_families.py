"""Benchmark: outside model families served by FashionBox against their library's own in-process predictor.

    .venv/bin/python tests/benchmarks/bench_families.py [--family ultralytics] [--rounds 2] [--images 5]
        [--duration-s 15] [--out tests/benchmarks/results/families.json]

One entry per family in ``results/families.json`` (a run rewrites its own family's entry and keeps
the others'). Random weights at a realistic size, the same generated 1280x960 JPEGs (fixed seeds)
on both sides, rounds interleaved (the VM is shared: compare within a round).

**ultralytics**: a YOLOv8s-seg-sized model (width 0.50, depth 0.33, 13 DeepFashion2 classes) at
640, built from Ultralytics' YAML and exported with ``dynamic=True`` by Ultralytics itself
(tests/ultralytics_models.py; its BatchNorm statistics and class logits are calibrated on other
generated scenes so that some boxes pass conf 0.25, as a trained model's would, not hundreds).
Measured:

- **served**: ``fashionbox convert --detector ultralytics:FILE.onnx`` (``--runtime auto``: the faster
  of ONNX Runtime and OpenVINO fp32 on this host, recorded as ``runtimes``), the embedded Triton, the
  closed-loop load generator over gRPC: p50 at concurrency 1, images/s at concurrency 2; three
  repositories: with the masks (COCO RLE at the original size in every detection) in the rect
  letterbox a dynamic export gets by default (640x480 for these 4:3 photos), the same with
  ``--letterbox square`` (640x640: what the served path ran before the rect letterbox), and boxes
  only (``detector_masks`` off, rect). Masks against boxes only is the mask output's cost.
- **in process**: Ultralytics' predictor (``YOLO("x.onnx").predict``) on each image decoded by
  OpenCV, one at a time, ONNX Runtime with its default threads (both cores): letterbox, network,
  NMS, masks at the letterbox size (``retina_masks=False``, its default). For a dynamic export it
  letterboxes to the smallest stride multiple (640x480 here, ``rect``); again with ``rect=False``,
  the square 640x640.
- **masks alone**: :func:`fashionbox.core.proto_masks.masks_from_protos` plus RLE for the served
  detections of each image, in process: the mask step's own CPU time per image.
- **detector graph alone**: the repository's ``detector/1/model.onnx`` (network, decode, NMS) in
  ONNX Runtime on 2 threads on pre-letterboxed pixels (the rect letterboxes served), gathering
  included: the floor of the served latency at that moment.

The served pipeline also runs the attribute heads on every detection (one 96x96 crop each, one
batched call), which Ultralytics' predictor does not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import write_report

ROOT = Path(__file__).resolve().parents[2]
SIZE = 640
YOLOV8S = {"width": 0.50, "depth": 0.33}
CLASS_LOGITS = (-7.0, 1.0)


def make_images(count: int, seed: int = 700_000) -> list[bytes]:
    from fashionbox.synth import render_scene

    return [render_scene(seed + i, size=(1280, 960)).encode(format="JPEG", quality=90) for i in range(count)]


def _letterboxed(images: list[bytes], *, stride: int = 0) -> list[Any]:
    """Each image letterboxed square, or (``stride``) in its own rect letterbox, as the served path does."""
    from fashionbox.core.imaging import decode_image, letterbox, rect_canvas

    boxed = []
    for data in images:
        image = decode_image(data, target_size=SIZE)
        boxed.append(letterbox(image, SIZE, canvas=rect_canvas(image.width, image.height, SIZE, stride)
                               if stride else None))
    return boxed


def run_ultralytics(onnx_path: Path, images: list[bytes], *, rect: bool = True) -> tuple[list[float], list[int]]:
    """Seconds per image (decode to ``Results``) and detections per image, Ultralytics in process.

    ``rect``: its default for a dynamic export, the smallest stride-multiple letterbox (640x480 for
    these 4:3 images, as the served path does since the rect letterbox); ``False`` letterboxes to the
    square 640x640 (``fashionbox convert --letterbox square``).
    """
    import cv2
    import numpy as np
    from ultralytics_models import load_predictor, predictor_class

    model = load_predictor(onnx_path, "segment")
    predictor = predictor_class("segment")
    decoded = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_COLOR)
    model.predict(decoded, imgsz=SIZE, rect=rect, verbose=False, predictor=predictor)  # set-up, not timed
    seconds, counts = [], []
    for data in images:
        started = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        (result,) = model.predict(image, imgsz=SIZE, rect=rect, verbose=False, predictor=predictor)
        seconds.append(time.perf_counter() - started)
        counts.append(len(result.boxes))
    return seconds, counts


def run_masks_alone(repository: Path, images: list[bytes], stride: int) -> tuple[list[float], list[float], list[int]]:
    """Seconds per image of the detector graph alone and of masks_from_protos + RLE, and the counts, on the
    letterboxes the repository serves (``stride``: its rect letterbox's)."""
    import numpy as np

    from fashionbox.core.proto_masks import masks_from_protos
    from fashionbox.core.serving import OnnxDetector, OrtSettings

    detector = OnnxDetector(repository / "detector" / "1" / "model.onnx", OrtSettings(intra_op_threads=2),
                            max_detections=300)
    graph_s, masks_s, counts = [], [], []
    letterboxed = _letterboxed(images, stride=stride)
    detector.detect(np.ascontiguousarray(letterboxed[0][0][None]))
    for pixels, info in letterboxed:
        started = time.perf_counter()
        (row,) = detector.detect(np.ascontiguousarray(pixels[None]))
        graph_s.append(time.perf_counter() - started)
        assert row.mask_coeffs is not None and row.protos is not None
        started = time.perf_counter()
        masks = masks_from_protos(row.mask_coeffs, row.protos, row.boxes, info, input_size=pixels.shape[:2])
        for mask in masks:
            mask.to_rle()
        masks_s.append(time.perf_counter() - started)
        counts.append(len(row))
    return graph_s, masks_s, counts


def run_served(url: str, images: list[bytes], concurrency: int, duration_s: float) -> dict[str, Any]:
    from fashionbox.loadtest import measure_concurrency

    point = measure_concurrency(url, images, concurrency=concurrency, duration_s=duration_s, warmup_s=2.0,
                                metrics="none")
    return dict(point.as_dict())


def bench_ultralytics(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import numpy as np
    from ultralytics_models import build_yolo

    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.core.serving import OrtSettings
    from fashionbox.server import ServerConfig, TritonServer, find_free_ports

    images = make_images(args.images)
    calibration = np.stack([pixels for pixels, _ in _letterboxed(make_images(4, seed=800_000))])
    started = time.perf_counter()
    onnx_path = build_yolo(tmp / "yolov8s-seg", task="segment", imgsz=SIZE, width=YOLOV8S["width"],
                           depth=YOLOV8S["depth"], class_logits=CLASS_LOGITS, calibration=calibration)
    build_s = time.perf_counter() - started
    repositories: dict[str, Path] = {}
    convert_s: dict[str, float] = {}
    for name, masks, box in VARIANTS:
        started = time.perf_counter()
        repositories[name] = convert(ConvertOptions(
            out=tmp / f"repo-{name}", detector=f"ultralytics:{onnx_path}", compare_samples=2, letterbox=box,
            repository_settings={"ort": OrtSettings(intra_op_threads=2), "detector_masks": masks})).repository
        convert_s[name] = round(time.perf_counter() - started, 1)
    stride = json.loads((repositories["masks"] / "manifest.json").read_text())["export"]["letterbox_stride"]
    runtimes = {}  # what --runtime auto chose for each repository on this host
    for name, repository in repositories.items():
        manifest = json.loads((repository / "manifest.json").read_text())
        runtimes[name] = manifest.get("cpu_runtime", {}).get("chosen", manifest["runtime"])
    print(f"built in {build_s:.0f} s, converted in {convert_s}", flush=True)

    runs: dict[str, list[Any]] = {"ultralytics_s": [], "ultralytics_detections": [], "masks_alone_s": [],
                                  "detector_graph_alone_s": [], "ultralytics_square_s": [],
                                  "detections": [],
                                  **{f"served_{name}_c{c}": [] for name, _, _ in VARIANTS for c in (1, 2)}}
    servers = []
    for name, _, _ in VARIANTS:
        grpc, http, metrics = find_free_ports(3)
        servers.append(TritonServer(ServerConfig(repository=repositories[name], grpc_port=grpc, http_port=http,
                                                 metrics_port=metrics, log_path=tmp / f"triton-{name}.log")))
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(server).endpoints.grpc
                for (name, _, _), server in zip(VARIANTS, servers, strict=True)}
        for url in urls.values():
            run_served(url, images, 1, 3.0)  # warm-up
        for round_index in range(args.rounds):
            seconds, counts = run_ultralytics(onnx_path, images)
            runs["ultralytics_s"].append(seconds)
            runs["ultralytics_detections"].append(counts)
            runs["ultralytics_square_s"].append(run_ultralytics(onnx_path, images, rect=False)[0])
            graph_s, seconds, counts = run_masks_alone(repositories["masks"], images, stride)
            runs["detector_graph_alone_s"].append(graph_s)
            runs["masks_alone_s"].append(seconds)
            runs["detections"].append(counts)
            for key, url in urls.items():
                runs[f"served_{key}_c1"].append(run_served(url, images, 1, args.duration_s))
                runs[f"served_{key}_c2"].append(run_served(url, images, 2, args.duration_s))
            print(f"round {round_index + 1}: ultralytics {statistics.median(runs['ultralytics_s'][-1]):.3f} s/image; "
                  f"served c=1 p50 masks {runs['served_masks_c1'][-1]['latency_ms']['p50']:.0f} ms, square "
                  f"{runs['served_masks_square_c1'][-1]['latency_ms']['p50']:.0f} ms, boxes only "
                  f"{runs['served_boxes_only_c1'][-1]['latency_ms']['p50']:.0f} ms; c=2 masks "
                  f"{runs['served_masks_c2'][-1]['throughput_rps']:.2f} images/s, square "
                  f"{runs['served_masks_square_c2'][-1]['throughput_rps']:.2f} images/s, boxes only "
                  f"{runs['served_boxes_only_c2'][-1]['throughput_rps']:.2f} images/s; masks alone "
                  f"{1000 * statistics.median(runs['masks_alone_s'][-1]):.1f} ms/image", flush=True)

    def median_of(key: str, field: str) -> float:
        values = [p["latency_ms"]["p50"] if field == "p50" else p["throughput_rps"] for p in runs[key]]
        return round(statistics.median(values), 3 if field == "rps" else 1)

    flat_ultra = [s for run in runs["ultralytics_s"] for s in run]
    ultra_p50_ms = round(1000 * statistics.median(flat_ultra), 1)
    served_p50 = median_of("served_masks_c1", "p50")
    per_round = [round(1000 * statistics.median(u) / m["latency_ms"]["p50"], 2)
                 for u, m in zip(runs["ultralytics_s"], runs["served_masks_c1"], strict=True)]
    summary = {
        "served_masks_c1_p50_ms": served_p50,
        "served_masks_c2_images_per_s": median_of("served_masks_c2", "rps"),
        "served_square_c1_p50_ms": median_of("served_masks_square_c1", "p50"),
        "served_square_c2_images_per_s": median_of("served_masks_square_c2", "rps"),
        "rect_over_square_c2_images_per_s": round(median_of("served_masks_c2", "rps")
                                                  / median_of("served_masks_square_c2", "rps"), 2),
        "served_boxes_only_c1_p50_ms": median_of("served_boxes_only_c1", "p50"),
        "served_boxes_only_c2_images_per_s": median_of("served_boxes_only_c2", "rps"),
        "letterbox_stride": stride,
        "ultralytics_in_process_p50_ms": ultra_p50_ms,
        "ultralytics_in_process_images_per_s": round(1 / statistics.mean(flat_ultra), 3),
        "ultralytics_square_640_p50_ms": round(
            1000 * statistics.median(s for r in runs["ultralytics_square_s"] for s in r), 1),
        "speedup_p50_served_vs_in_process": round(ultra_p50_ms / served_p50, 2),
        "speedup_p50_per_round": per_round,
        "mask_cost_p50_ms_served": round(served_p50 - median_of("served_boxes_only_c1", "p50"), 1),
        "detector_graph_alone_p50_ms": round(
            1000 * statistics.median(s for r in runs["detector_graph_alone_s"] for s in r), 1),
        "mask_step_alone_ms_per_image": round(1000 * statistics.median(s for r in runs["masks_alone_s"] for s in r),
                                              2),
        "detections_per_image_median": statistics.median(c for r in runs["detections"] for c in r),
        "ultralytics_detections_per_image_median": statistics.median(
            c for r in runs["ultralytics_detections"] for c in r),
        "goal_served_faster_than_in_process": served_p50 < ultra_p50_ms,
        "build_s": round(build_s, 1),
        "convert_s": convert_s,
        "runtimes": runtimes,
    }
    return {"model": {"architecture": "YOLOv8s-seg (yolov8-seg.yaml, scale width 0.50 depth 0.33)",
                      "classes": 13, "imgsz": SIZE, "class_logits_mean_std": CLASS_LOGITS,
                      "weights": "random, BatchNorm and class logits calibrated on generated scenes",
                      "onnx_bytes": onnx_path.stat().st_size},
            "rounds": args.rounds, "images": args.images, "duration_s": args.duration_s,
            "summary": summary, "runs": runs}


VARIANTS = (("masks", True, "auto"), ("masks_square", True, "square"), ("boxes_only", False, "auto"))
"""Served repositories: name, masks served, ``--letterbox`` (auto: the dynamic export's rect letterbox)."""

FAMILIES = {"ultralytics": bench_ultralytics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="ultralytics")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=15.0, help="served measurement window per level")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/families.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-families-") as tmp:
        entry = FAMILIES[args.family](args, Path(tmp))
    families = {}
    if args.out.is_file():  # keep the other families' entries
        families = dict(json.loads(args.out.read_text()).get("families", {}))
    families[args.family] = {**entry, "unix_time": int(time.time())}
    write_report(args.out, __file__, argv, {"families": families})
    print(json.dumps(entry["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
