"""Benchmark: where the CPU goes per image, served by Triton against the same steps in one process.

    .venv/bin/python tests/benchmarks/bench_cpu_per_request.py [--rounds 3] [--duration-s 10]

Triton's statistics give each step's time, but on a saturated machine that time includes waiting
for a core. CPU time does not: this reads the utime + stime of the server and of every
python-backend stub (grouped by model) from /proc over a closed-loop window at concurrency 8 (both
cores busy), plus the load generator's own, and divides by the requests answered. In the same run,
the same steps without Triton (``InProcessPipeline.from_repository``, one image at a time, best of
three passes) give what each step costs by itself, and the whole answer in process
(``InProcessPipeline.detections``: masks, vectors, verticals, the second stage and the serialized
result too, which the per-step figures leave out) what the served answer costs without serving;
the difference is what serving adds.

Writes ``tests/benchmarks/results/cpu_per_request.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report
from bench_serving import make_images
from perf_analyzer_peer import descendants, jiffies

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = 8  # both cores busy
WHOLE = "whole answer"
"""The in-process figure that does all the served answer's work (the per-step figures leave some out)."""


def in_process_ms(repository: Path, images: list[bytes]) -> dict[str, float]:
    """ms per image of each step run alone, one image at a time (best of three passes)."""
    import numpy as np

    from fashionbox.core.imaging import crop_garments, decode_image, letterbox
    from fashionbox.core.postprocessing import finish_detections
    from fashionbox.models.pipeline import InProcessPipeline

    pipe = InProcessPipeline.from_repository(repository)

    def best(step: Callable[[], Any]) -> tuple[float, Any]:
        times, out = [], None
        for _ in range(3):
            start = time.perf_counter()
            out = step()
            times.append(time.perf_counter() - start)
        return 1000 * min(times) / len(images), out

    decode_ms, decoded = best(lambda: [letterbox(decode_image(d, target_size=pipe.input_size, limits=pipe.limits),
                                                 pipe.input_size) for d in images])
    detect_ms, detections = best(lambda: [pipe.detect(pixels[None])[0] for pixels, _ in decoded])
    crop_ms, crops = best(lambda: [crop_garments(pixels, d.boxes, pipe.crop_size)
                                   for (pixels, _), d in zip(decoded, detections, strict=True)])
    classify_ms, probs = best(lambda: [pipe.classify(c) if len(c) else np.zeros((0, 1), np.float32) for c in crops])
    finish_ms, _ = best(lambda: [finish_detections(d, info, p, pipe.label_map)
                                 for (_, info), d, p in zip(decoded, detections, probs, strict=True)])
    steps = {"decode + letterbox": decode_ms, "detector": detect_ms, "crops + assembly": crop_ms + finish_ms,
             "attribute heads": classify_ms}
    # The steps above leave out what the served answer also carries (masks pasted and RLE-encoded, the
    # whole-photo crop for vectors and verticals, the second stage, the serialized result): the whole
    # answer in process, one image at a time, is the baseline serving is compared with.
    whole_ms, _ = best(lambda: [pipe.detections([data]) for data in images])
    return {**{name: round(ms, 2) for name, ms in steps.items()}, WHOLE: round(whole_ms, 2)}


def process_group(pid: int) -> str:
    """``tritonserver``, or the model a python-backend stub serves (from its model.py path)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 1:
        return Path(argv[1].decode()).parts[-3]
    return Path(argv[0].decode()).name


def served_ms(url: str, server_pid: int, images: list[bytes], duration_s: float) -> dict[str, Any]:
    """CPU ms per request of each process group over one closed-loop window at ``CONCURRENCY``."""
    from fashionbox.loadtest import measure_concurrency

    hz = os.sysconf("SC_CLK_TCK")
    pids = [server_pid, *descendants(server_pid)]
    before = {pid: jiffies(pid) for pid in pids}
    client_before = time.process_time()
    point = measure_concurrency(url, images, concurrency=CONCURRENCY, duration_s=duration_s, warmup_s=0.0,
                                metrics="none")
    client_s = time.process_time() - client_before
    # CPU is read over the whole call: no warm-up, so nothing is in flight when the window opens,
    # and the requests in flight when it closes (one per worker) finish before the call returns.
    requests = point.requests + CONCURRENCY
    groups: dict[str, float] = {}
    for pid in pids:
        name = process_group(pid)
        groups[name] = groups.get(name, 0.0) + (jiffies(pid) - before[pid]) / hz
    per_request = {name: round(1000 * s / requests, 2) for name, s in sorted(groups.items())}
    per_request["load generator"] = round(1000 * client_s / requests, 2)
    return {"images_per_s": round(point.throughput_rps, 1), "errors": point.error_count,
            "cpu_ms_per_request": per_request, "total_ms": round(sum(per_request.values()), 2)}


def main(argv: list[str] | None = None) -> int:
    import contextlib

    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.server import running_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--layouts", default="steps,fused",
                        help="repository layouts served (RepositorySettings.layout), each measured in every round; "
                             "the first is the summary's")
    parser.add_argument("--detector", default="default", help="detector checkpoint (fashionbox convert --detector)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/cpu_per_request.json")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    layouts = args.layouts.split(",")
    images = make_images(args.images)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-cpu-") as tmp, contextlib.ExitStack() as stack:
        servers = {}
        for layout in layouts:  # the shipped settings, ONNX Runtime in each (the graphs are the same)
            repository = convert(ConvertOptions(out=Path(tmp) / f"repo-{layout}", runtime="onnxruntime",
                                                detector=args.detector,
                                                repository_settings={"layout": layout})).repository
            server = stack.enter_context(running_server(repository, Path(tmp) / f"logs-{layout}"))
            assert server.pid is not None
            served_ms(str(server.endpoints.grpc), server.pid, images, 3.0)  # warm every instance
            servers[layout] = (repository, server)
        for index in range(args.rounds):
            alone = in_process_ms(servers[layouts[0]][0], images)
            measured: dict[str, Any] = {"in_process_ms_per_image": alone}
            for layout, (_, server) in servers.items():  # the idle one's stubs and server cost ~nothing meanwhile
                served = served_ms(str(server.endpoints.grpc), server.pid, images, args.duration_s)
                measured[layout if layout != layouts[0] else "served"] = served
                print(f"round {index + 1}: in process {alone[WHOLE]:.2f} ms/image, served ({layout}) "
                      f"{served['total_ms']:.2f} ms/request at {served['images_per_s']} images/s", flush=True)
            rounds.append(measured)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    def summarise(key: str) -> dict[str, Any]:
        groups = sorted({g for r in rounds for g in r[key]["cpu_ms_per_request"]})
        return {
            "served_cpu_ms_per_request": {g: median([r[key]["cpu_ms_per_request"].get(g, 0.0) for r in rounds])
                                          for g in groups},
            "served_total_ms": median([r[key]["total_ms"] for r in rounds]),
            "served_images_per_s": median([r[key]["images_per_s"] for r in rounds]),
            "errors": sum(r[key]["errors"] for r in rounds),
        }

    steps = rounds[0]["in_process_ms_per_image"]
    summary = {
        "layout": layouts[0],
        "in_process_ms_per_image": {k: median([r["in_process_ms_per_image"][k] for r in rounds]) for k in steps},
        "in_process_total_ms": median([r["in_process_ms_per_image"][WHOLE] for r in rounds]),
        "in_process_steps_sum_ms": median([sum(v for k, v in r["in_process_ms_per_image"].items() if k != WHOLE)
                                           for r in rounds]),
        **summarise("served"),
        "layouts": {layout: summarise(layout if layout != layouts[0] else "served") for layout in layouts},
    }
    write_report(args.out, __file__, argv, {"concurrency": CONCURRENCY, "summary": summary, "rounds": rounds})
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
