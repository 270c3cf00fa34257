"""Benchmark: what ``fashionbox convert --runtime auto`` costs a conversion, and what its probe measured.

    .venv/bin/python tests/benchmarks/bench_auto_cost.py [--family default|owlvit|clip|rt_detr|yolos] [--rounds 2]
        [--out tests/benchmarks/results/auto_cost_FAMILY.json]

``auto`` (the default runtime on target cpu) checks every candidate against ONNX Runtime on the
converter's comparison inputs and times them (a detector batch of 1 and an attribute batch of 8,
interleaved rounds: ``fashionbox.converter.cpu_runtimes``), so it costs conversion time that
``--runtime onnxruntime`` does not. Three conversions of the same checkpoints, interleaved per round
(rotating order), the wall time of each:

- ``onnxruntime``: ``--runtime onnxruntime``, nothing measured;
- ``auto``: ONNX Runtime, OpenVINO and, where it could serve the repository, the torch runtime;
- ``auto-without-torch``: the same with the torch runtime left out (what ``auto`` was before it
  weighed torch), for the torch candidate's own share.

Families: the shipped default models; ``owlvit``: an OWL-ViT B/32-sized random model (768 px,
``bench_owl.save_base_sized``), the square letterbox where the torch runtime is a candidate, its
comparison recorded, not enforced (random weights), two comparison scenes (as ``bench_owl``); or
``clip``: the default models with a ViT-B/32-sized random CLIP embedder (``--embedder``,
``bench_image_level.vit_b32_clip``), which every candidate runs in the probe on 8 garments and the
photo (batch 9); ``rt_detr``: an RT-DETR R18-sized random model (640 px, ``bench_detr.save_sized``);
``yolos``: a YOLOS-small-sized random model at the seed's 512-864 px processor
(``bench_yolos.save_seed_sized_yolos``). These two are converted with ``--letterbox square``, so that
the torch runtime is weighed (the rect letterbox they are served with by default is not a torch
candidate); their comparison is recorded, not enforced, as OWL-ViT's. Each family's record is also its
detector's and attribute heads' time per runtime on this host (the probe's interleaved medians:
``auto``'s ``timings_ms``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import machine, write_report

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("onnxruntime", "auto", "auto-without-torch")


def _options(family: str, folder: Path | None) -> dict[str, Any]:
    if family == "default":
        return {}
    if family == "clip":
        return {"embedder": f"hf:{folder}"}
    from bench_detr import recorded_not_enforced

    square = {"letterbox": "square"} if family in ("rt_detr", "yolos") else {}
    return {"detector": f"hf:{folder}", "compare_samples": 2, "tolerance": recorded_not_enforced(), **square}


def _convert(variant: str, out: Path, options: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Seconds of one conversion, and auto's record (``{}`` for ``onnxruntime``)."""
    from fashionbox.converter import ConvertOptions, convert

    runtime = "onnxruntime" if variant == "onnxruntime" else "auto"
    without = mock.patch("fashionbox.converter._torch_not_candidate",
                         return_value={"torch/fp32": "left out by the benchmark"})
    started = time.perf_counter()
    if variant == "auto-without-torch":
        with without:
            result = convert(ConvertOptions(out=out, runtime=runtime, **options))
    else:
        result = convert(ConvertOptions(out=out, runtime=runtime, **options))
    return time.perf_counter() - started, result.manifest.get("cpu_runtime", {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["default", "owlvit", "clip", "rt_detr", "yolos"], default="default")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or ROOT / f"tests/benchmarks/results/auto_cost_{args.family}.json"

    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    records: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS if v != "onnxruntime"}
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-auto-") as tmp:
        folder = None
        if args.family == "owlvit":
            from bench_owl import save_base_sized

            folder = save_base_sized(Path(tmp) / "owlvit", "owlvit")
        elif args.family == "clip":
            from bench_image_level import vit_b32_clip

            folder = vit_b32_clip(Path(tmp) / "clip")
        elif args.family == "rt_detr":
            from bench_detr import save_sized

            folder, _ = save_sized(Path(tmp) / "rt_detr", "rt_detr")
        elif args.family == "yolos":
            from bench_yolos import save_seed_sized_yolos

            folder = save_seed_sized_yolos(Path(tmp) / "yolos")
        options = _options(args.family, folder)
        for round_index in range(args.rounds):
            for k in range(len(VARIANTS)):
                variant = VARIANTS[(round_index + k) % len(VARIANTS)]
                took, record = _convert(variant, Path(tmp) / f"{variant}-{round_index}", options)
                seconds[variant].append(round(took, 1))
                if variant in records:
                    records[variant].append({key: record[key] for key in ("chosen", "timings_ms", "rounds",
                                                                          "excluded")})
                print(f"round {round_index + 1}/{args.rounds} {variant}: {took:.1f} s "
                      f"{record.get('chosen', '')}", flush=True)
    summary = {variant: round(statistics.median(values), 1) for variant, values in seconds.items()}
    summary["auto_over_onnxruntime_s"] = round(summary["auto"] - summary["onnxruntime"], 1)
    summary["torch_candidate_s"] = round(summary["auto"] - summary["auto-without-torch"], 1)
    write_report(out, __file__, argv, {
        "family": args.family, "rounds": args.rounds, "convert_s": seconds, "summary_median_s": summary,
        "auto": records,
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
    }, machine_info=machine())
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
