"""Benchmark: the GPU profile against the CPU fallback, served by Triton, in one run.

    .venv/bin/python tests/benchmarks/bench_gpu.py [--rounds 3] [--duration-s 10] [--concurrency 8,32,128]
                                                   [--load-processes N]

Each profile is a repository converted from the shipped weights and served by the embedded
Triton; the load-test harness drives it closed loop over gRPC with the same 1280x960 JPEGs:

- ``cpu``: the CPU fallback (``--target cpu``, ONNX Runtime), instances scaled to the cores;
- ``cpu-best``: the same with ``--runtime auto`` (and ``--precision bf16`` where the CPU has it and
  OpenVINO is installed): the fastest CPU runtime this host measures, the fair CPU fallback;
- ``cpu-torch``: the same with ``--runtime torch`` (PyTorch on the CPU), to separate the runtime
  from the device;
- ``gpu``: ``--target gpu --runtime torch`` (PyTorch on CUDA, FP16, nvJPEG where torchvision has it);
- ``gpu-unbatched``: the gpu profile with every step's ``max_batch_size`` 1, so the dynamic
  batching gain is measured, not assumed;
- ``gpu-same-shape``: the gpu profile with ``postprocess``'s inputs not ragged (as converted before
  6 December 2026): requests reach it together only when they have as many detections, so what
  ragged batches bring to the CPU-side step that bounded the first GPU run is measured too.

``--detector rt-detr-r18`` serves an RT-DETR-R18-sized transformers detector (random weights,
``bench_detr.save_r18_sized_rt_detr``) in every profile instead of the shipped one: a family's
detector on the GPU through the torch runtime (``TorchDetrDetector``) against the CPU fallback,
with the shipped attribute heads on its detections.

The gpu profiles run only where torch sees CUDA; elsewhere the JSON says they were not measured.
Per profile: the best throughput over the concurrencies, its p50/p99, latency at concurrency 1,
and Triton's per-model statistics (where the time goes). One client process offers about 1,000
requests/s at most, so each level is sent by ``--load-processes`` processes (a quarter of the cores
by default; one on this VM) whose latency histograms are merged exactly. Besides the served figures, the
networks alone (``TorchDetector`` on a batch of 64 letterboxes, no decode, no gRPC) give each
device's ceiling. Each profile's server starts once and serves every round; rounds alternate
the profiles; the summary holds medians over rounds (Triton's statistics are cumulative since the
server started). The last round also runs ``perf_analyzer`` at each profile's best level.

Writes ``tests/benchmarks/results/gpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine, write_report
from bench_serving import run_served, triton_statistics

ROOT = Path(__file__).resolve().parents[2]
GPU_PROFILES = ("gpu", "gpu-unbatched", "gpu-same-shape")
PROFILES = ("cpu", "cpu-best", "cpu-torch", *GPU_PROFILES)


def cpu_instances(cores: int) -> dict[str, int]:
    """Instances for the CPU profiles: what ``fashionbox convert --cores`` writes (one single-thread
    instance per core, most for the detector)."""
    from fashionbox.converter.repository import cpu_scheduling

    return {name: value.instances for name, value in cpu_scheduling(cores).items() if name != "max_in_flight"}


DETECTORS = ("default", "rt-detr-r18")
"""What every profile serves: the shipped detector, or an RT-DETR-R18-sized one (random weights)."""


def detector_spec(detector: str, folder: Path) -> str:
    """``fashionbox convert --detector``'s spec for ``detector``, built into ``folder`` when it is not shipped."""
    if detector == "default":
        return "default"
    from bench_detr import save_r18_sized_rt_detr

    return f"hf:{save_r18_sized_rt_detr(folder)}"


def _convert(spec: str, out: Path, **options: Any) -> Path:
    from fashionbox.converter import ConvertOptions, convert

    if spec != "default":
        from bench_detr import recorded_not_enforced

        # RT-DETR with random weights: the comparison recorded, not enforced (bench_detr.py says why).
        # Two samples: seconds each on a CPU.
        options["tolerance"] = recorded_not_enforced()
        options["compare_samples"] = 2
    return convert(ConvertOptions(out=out, detector=spec, **options)).repository


def convert_profile(profile: str, out: Path, cores: int, concurrency: int, spec: str = "default") -> Path:
    from fashionbox.converter.repository import ModelScheduling, RepositorySettings, gpu_scheduling

    if profile.startswith("cpu"):
        # The shipped scheduling and queue policy with more instances; the entry holds as many
        # requests as the highest concurrency, as the GPU profiles' does, so it queues, not refuses.
        shipped = RepositorySettings()
        # a family's detector: what `convert --cores` writes for its threads per instance (2), not the
        # shipped model's single-thread instances
        overrides: dict[str, Any] = {
            name: replace(shipped.scheduling(name), instances=count,
                          **({"max_queue_size": 512} if name == "preprocess" else {}))
            for name, count in cpu_instances(cores).items()} if spec == "default" else {}
        # The admission bound grows with the detector instances it has to keep busy, and holds the
        # highest concurrency measured, so a closed loop queues there rather than floods refusals.
        overrides["max_in_flight"] = max(shipped.max_in_flight * max(1, cores // 2), concurrency)
        if profile == "cpu-best":  # the runtime `auto` measures fastest on this host, bf16 where the CPU has it
            import importlib.util

            from fashionbox.core.openvino_runtime import host_cpu

            openvino = importlib.util.find_spec("openvino") is not None  # auto leaves out what is not installed
            precision = "bf16" if openvino and host_cpu().has_bf16 else None
            return _convert(spec, out, runtime="auto", precision=precision, cores=cores,
                            repository_settings=overrides)
        runtime = "torch" if profile == "cpu-torch" else "onnxruntime"
        return _convert(spec, out, runtime=runtime, cores=cores, repository_settings=overrides)
    overrides: dict[str, Any] = {}
    if profile == "gpu-unbatched":
        overrides = {name: replace(s, max_batch_size=1, preferred_batch_sizes=())
                     for name, s in gpu_scheduling().items() if isinstance(s, ModelScheduling)}
    repository = _convert(spec, out, target="gpu", runtime="torch", repository_settings=overrides)
    if profile == "gpu-same-shape":
        from bench_ragged import set_ragged_batches

        set_ragged_batches(repository, False)
    return repository


def network_ceiling(device: str, precision: str, *, batch: int, seconds: float,
                    torch_folder: Path | None = None) -> dict[str, float]:
    """Letterboxes per second through the torch runtime's detector alone (network + NMS + gathering): the
    shipped ``TorchDetector``, or a family's ``TorchDetrDetector`` from ``torch_folder``."""
    import numpy as np

    from fashionbox.contract.labels import default_label_map
    from fashionbox.models import default_weights, served_score_threshold
    from fashionbox.models.nms import NmsSettings
    from fashionbox.models.torch_runtime import TorchDetector, TorchDetrDetector
    from fashionbox.training.data import render_sample

    detector: Any
    if torch_folder is None:
        weights, size = default_weights("detector"), 320
        detector = TorchDetector(weights, device=device, precision=precision,
                                 nms=NmsSettings(score_threshold=served_score_threshold(weights)),
                                 max_detections=100)
    else:
        # one batch size here: no buckets to warm (each first sight costs seconds on CUDA)
        detector = TorchDetrDetector(torch_folder, device=device, precision=precision, score_threshold=0.5,
                                     max_detections=300, bucketed=False)
        size = detector.input_size
    labels = default_label_map()
    scenes = np.stack([render_sample(80_000 + i, size, labels).pixels for i in range(batch)])
    for _ in range(3):
        detector.detect(scenes)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        detector.detect(scenes)
        done += batch
    elapsed = time.perf_counter() - start
    return {"images_per_s": round(done / elapsed, 1), "ms_per_batch": round(1000 * elapsed / (done / batch), 2),
            "batch": batch}


def family_torch_folder(spec: str, folder: Path) -> Path:
    """The files the torch runtime serves ``spec``'s detector from (``detector/1/transformers``)."""
    from fashionbox.converter import FAMILIES, resolve_spec
    from fashionbox.converter.detr import write_torch_files

    family_name, weights = resolve_spec(spec, "detector")
    checkpoint, _labels = FAMILIES[family_name]().load_detector(weights)
    return write_torch_files(checkpoint, folder)


def gpu_machine() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return machine(torch=torch.__version__, gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return machine(torch=torch.__version__)


def max_in_flight(repository: Path) -> int:
    """The repository's admission bound (0: none), from the entry's config."""
    from fashionbox.loadtest.tune import read_config

    parameters = read_config(repository / "preprocess" / "config.pbtxt").parameters
    return int(parameters["max_in_flight"].string_value) if "max_in_flight" in parameters else 0


def run_level(url: str, images: list[bytes], concurrency: int, duration_s: float, processes: int) -> dict[str, Any]:
    """One closed-loop level; over several load processes where one client process would cap it."""
    processes = min(processes, concurrency)
    if processes <= 1:
        return run_served(url, images, concurrency, duration_s)
    from fashionbox.loadtest import measure_concurrency

    point = measure_concurrency(url, images, concurrency=concurrency, duration_s=duration_s, warmup_s=1.5,
                                metrics="none", processes=processes)
    result = point.as_dict()
    cpu_s = point.harness.cpu_fraction * duration_s if point.harness else math.nan
    result["client_cpu_ms_per_request"] = round(1000 * cpu_s / max(1, point.requests), 2)
    result["load_processes"] = processes
    return result


def cross_check(url: str, images: list[bytes], concurrency: int, duration_s: float) -> dict[str, Any]:
    """``perf_analyzer`` (C++, the tritonclient wheel's) at one level: the server's rate whatever the harness's."""
    import perf_analyzer_peer

    from fashionbox import contract

    try:
        peer = perf_analyzer_peer.run(url, contract.ENSEMBLE_MODEL, contract.IMAGE.name, images,
                                      concurrency=concurrency, measurement_interval_ms=int(duration_s * 1000),
                                      stability_percent=50, max_trials=3)
    except (FileNotFoundError, RuntimeError, OSError) as exc:  # a missing binary or library is a note, not a stop
        return {"error": str(exc)[-500:]}
    return dict(peer.__dict__)


def measure_profile(url: str, warm: int, images: list[bytes], concurrencies: list[int], duration_s: float,
                    processes: int, *, with_perf_analyzer: bool = False) -> dict[str, Any]:
    """One round of one profile on its running server: warm-up, the levels, concurrency 1, statistics."""
    run_level(url, images, warm, 3.0, processes)
    points = {str(c): run_level(url, images, c, duration_s, processes) for c in sorted(concurrencies)}
    best = max(points.values(), key=lambda p: p["throughput_rps"])
    result = {"points": points, "best": best, "latency_c1": run_served(url, images, 1, duration_s),
              "triton_statistics": triton_statistics(url)}
    if with_perf_analyzer:
        result["perf_analyzer"] = cross_check(url, images, int(best["concurrency"]), duration_s)
    return result


def _median_ms(values: Any) -> float | None:
    """The median of the latencies that were measured (a level where no request finished has none)."""
    measured = [v for v in values if v is not None]
    return round(statistics.median(measured), 1) if measured else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds if name in r]
        best = [run["best"] for run in runs]
        out[name] = {
            "images_per_s": round(statistics.median(p["throughput_rps"] for p in best), 1),
            "at_concurrency": statistics.median_low(p["concurrency"] for p in best),
            "p50_ms": _median_ms(p["latency_ms"]["p50"] for p in best),
            "p99_ms": _median_ms(p["latency_ms"]["p99"] for p in best),
            "c1_p50_ms": _median_ms(run["latency_c1"]["latency_ms"]["p50"] for run in runs),
            "c1_p99_ms": _median_ms(run["latency_c1"]["latency_ms"]["p99"] for run in runs),
            "errors_all_levels": sum(int(q["errors"]) for run in runs for q in run["points"].values()),
        }
    return out


def summary_with_ratios(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per profile, with the GPU/CPU ratio and the dynamic batching gain where both sides ran."""
    summary = summarize(rounds)
    for name, figures in summary.items():
        # a round still under way has only the profiles measured so far
        checked = [r[name]["perf_analyzer"] for r in rounds
                   if "throughput_rps" in r.get(name, {}).get("perf_analyzer", {})]
        if checked:
            figures["perf_analyzer_images_per_s"] = round(checked[-1]["throughput_rps"], 1)

    def ratio(numerator: str, denominator: str, digits: int) -> float | None:
        if numerator not in summary or denominator not in summary or not summary[denominator]["images_per_s"]:
            return None
        return round(summary[numerator]["images_per_s"] / summary[denominator]["images_per_s"], digits)

    for key, (numerator, denominator, digits) in {
            "gpu_over_cpu": ("gpu", "cpu", 1),
            "gpu_over_best_cpu": ("gpu", "cpu-best", 1),  # against the best CPU runtime, not only ONNX Runtime
            "dynamic_batching_gain": ("gpu", "gpu-unbatched", 2),
            "ragged_batches_gain": ("gpu", "gpu-same-shape", 2),  # postprocess batching requests of any count
    }.items():
        if (value := ratio(numerator, denominator, digits)) is not None:
            summary[key] = value
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--concurrency", default="8,32,128", help="closed-loop levels, comma-separated")
    parser.add_argument("--profiles", default="cpu,cpu-torch,gpu,gpu-unbatched", help=f"of {', '.join(PROFILES)}")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores the CPU profiles scale to")
    parser.add_argument("--ceiling-s", type=float, default=5.0,
                        help="seconds per network-only measurement (0: none)")
    parser.add_argument("--detector", choices=DETECTORS, default="default",
                        help="what every profile serves: the shipped detector or an RT-DETR-R18-sized one")
    parser.add_argument("--perf-analyzer", action=argparse.BooleanOptionalAction, default=True,
                        help="last round: perf_analyzer at each profile's best level, as a cross-check")
    parser.add_argument("--load-processes", type=int, default=max(1, (os.cpu_count() or 1) // 4),
                        help="client processes per level (one offers about 1,000 requests/s at most)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/gpu.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch

    from fashionbox.loadtest.corpus import generated_corpus, parse_size_mix
    from fashionbox.server import running_server

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if unknown := {p for p in args.profiles.split(",") if p} - set(PROFILES):
        parser.error(f"unknown profiles {sorted(unknown)}: choose from {', '.join(PROFILES)}")

    cuda = torch.cuda.is_available()
    wanted = [p for p in args.profiles.split(",") if p]
    profiles = [p for p in wanted if cuda or p not in GPU_PROFILES]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    images = list(generated_corpus(args.images, parse_size_mix("1280x960")).images)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-gpu-") as tmp, contextlib.ExitStack() as servers:
        spec = detector_spec(args.detector, Path(tmp) / "checkpoint")
        ceilings: dict[str, Any] = {}
        if args.ceiling_s > 0:
            # the shipped detector: a CPU batch of 8 (one core); a family's, hundreds of ms per image: 1
            folder = None if spec == "default" else family_torch_folder(spec, Path(tmp) / "torch-detector")
            ceilings["cpu fp32"] = network_ceiling("cpu", "fp32", batch=8 if folder is None else 1,
                                                   seconds=args.ceiling_s, torch_folder=folder)
            for precision in ("fp32", "fp16") if cuda else ():
                ceilings[f"cuda {precision}"] = network_ceiling("cuda:0", precision, batch=64,
                                                                seconds=args.ceiling_s, torch_folder=folder)
        urls: dict[str, str] = {}
        warm: dict[str, int] = {}
        for profile in profiles:
            repository = convert_profile(profile, Path(tmp) / profile, args.cores, max(concurrencies), spec)
            # Every server stays up for all rounds (an idle one costs no CPU): started once, not per round.
            server = servers.enter_context(running_server(repository, Path(tmp) / f"log-{profile}",
                                                           exit_timeout_s=30, startup_timeout_s=600))
            urls[profile] = str(server.endpoints.grpc)
            # Warm at the admission bound, not past it: a closed loop past it turns into a flood of
            # refusals (docs/RELIABILITY.md, admission control). Levels run in increasing order.
            warm[profile] = min(max(concurrencies), max_in_flight(repository) or max(concurrencies))
        for index in range(args.rounds):
            results: dict[str, Any] = {}
            for profile in profiles:
                results[profile] = measure_profile(urls[profile], warm[profile], images, concurrencies,
                                                   args.duration_s, args.load_processes,
                                                   with_perf_analyzer=args.perf_analyzer and index == args.rounds - 1)
                best = results[profile]["best"]
                print(f"round {index + 1} {profile}: {best['throughput_rps']:.1f} images/s at c={best['concurrency']}"
                      f" p50 {_ms(best['latency_ms']['p50'])} ms p99 {_ms(best['latency_ms']['p99'])} ms", flush=True)
                # After every profile, so a run stopped at a time limit keeps what it finished.
                report = write_report(args.out, __file__, argv, {
                    "not_measured": {p: "torch sees no CUDA device on this machine"
                                     for p in wanted if p not in profiles},
                    "rounds_done": index + (len(results) == len(profiles)),
                    "detector": args.detector,
                    "cpu_instances": cpu_instances(args.cores),
                    "load_processes": args.load_processes,
                    "network_ceiling": ceilings,
                    "summary": summary_with_ratios([*rounds, results]),
                    "rounds": [*rounds, results],
                }, machine_info=gpu_machine())
            rounds.append(results)
    print(json.dumps({key: report[key] for key in ("summary", "network_ceiling", "not_measured")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
