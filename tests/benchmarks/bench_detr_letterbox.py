"""Benchmark: a DETR-style model served with the square letterbox against the rect one, in one run.

    .venv/bin/python tests/benchmarks/bench_detr_letterbox.py [--family detr|rt_detr|yolos|lw_detr] [--rounds 3] \
        [--images 4] [--out results/detr_letterbox.json]

``--family detr``: ``facebook/detr-resnet-50``'s shape (transformers' own ResNet-50, 6 + 6 transformer
layers 256 wide, 100 queries), processor ``DetrImageProcessor``'s default (shortest edge 800, stride
32). ``--family rt_detr``: ``PekingU/rtdetr_r18vd``'s shape (``bench_detr.py``'s), processor 640 x 640
(stride 32, the deepest feature map). ``--family yolos``: the seeds' ``yolos-fashionpedia`` shape
(YOLOS-small, ``bench_yolos.py``'s), processor shortest edge 512 (stride 16, the patch size). ``--family
lw_detr``: LW-DETR small's shape (``bench_detr.py``'s), processor 640 x 640 (stride 64, the patch size times
the windows per side; its min side 128 does not bite on these photos). 46
Fashionpedia labels and random weights:
the same compute, no download. Converted twice from the same folder, ONNX Runtime on the CPU, 2
threads per detector instance:

- **square**: ``--letterbox square``, every photo letterboxed to S x S (YOLOS: embeddings baked at it);
- **rect**: ``--letterbox rect`` (the default for these families on the CPU: their graphs take any
  height and width): the long side at S, the short side padded to a multiple of the stride, so a 4:3
  photo runs the network on 800 x 608 (DETR, 24 % fewer pixels), 640 x 480 (RT-DETR, 25 % fewer; its
  anchors and encoder position embeddings follow the feature maps) or 512 x 384 (YOLOS, 25 % fewer
  patch tokens; its position embeddings interpolated in the graph) or 640 x 512 (LW-DETR, 20 % fewer: 480
  padded to a multiple of 64).

On the same photos (generated, fixed seeds; half 1280x960 landscape, half 960x1280 portrait, as
catalogue shots come) each round measures, interleaved: the detector graph alone in ONNX Runtime on
each repository's own letterbox (batch 1) and the rect graph on the square letterbox (what a graph
that takes any shape costs on the same pixels), then each repository served by the embedded Triton
through the closed-loop load generator over gRPC at concurrency 1 (p50, p99, images/s) and 2
(images/s). Both servers stay up, one measured at a time. The detections differ between the two
(other pixels go in); that each equals transformers on its own pixels is the tests' job
(``tests/test_detr_families.py``, ``tests/test_yolos.py``). The JSON keeps every run and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detr import BACKBONE, R18_SHAPE, recorded_not_enforced, save_lw_detr_small_sized, save_r18_sized_rt_detr
from bench_detr import FAMILIES as RT_DETR_SHAPES
from bench_report import write_report
from bench_rounds import run_served
from bench_yolos import SEED_PROCESSOR_SIZE, SEED_SHAPE, run_onnx_detector, save_seed_sized_yolos

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("square", "rect")
R50_SHAPE = {"d_model": 256, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
             "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "num_queries": 100}


def save_r50_sized_detr(folder: Path) -> Path:
    import torch
    import transformers

    from fashionbox.contract.labels import fashionpedia_taxonomy

    names = [c["name"] for c in fashionpedia_taxonomy()["categories"]]
    torch.manual_seed(0)
    backbone = transformers.ResNetConfig(out_features=["stage4"])  # ResNet-50: bottleneck blocks [3, 4, 6, 3]
    config = transformers.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                                     **R50_SHAPE, id2label=dict(enumerate(names)),
                                     label2id={n: i for i, n in enumerate(names)})
    transformers.DetrForObjectDetection(config).save_pretrained(folder)
    transformers.DetrImageProcessorPil().save_pretrained(folder)  # shortest edge 800, its default
    return folder


FAMILIES = {"detr": save_r50_sized_detr, "rt_detr": save_r18_sized_rt_detr, "yolos": save_seed_sized_yolos,
            "lw_detr": save_lw_detr_small_sized}
"""``--family`` -> what saves its random checkpoint."""
MODELS = {"detr": {"family": "detr", "backbone": "transformers ResNet-50 (bottleneck [3, 4, 6, 3])", **R50_SHAPE,
                   "weights": "random (detr-resnet-50's shape, same compute)"},
          "rt_detr": {"family": "rt_detr", "backbone": BACKBONE, **R18_SHAPE,
                      "weights": f"random ({RT_DETR_SHAPES['rt_detr'].shape}, same compute)"},
          "yolos": {"family": "yolos", **SEED_SHAPE, "processor": SEED_PROCESSOR_SIZE,
                    "weights": "random (yolos-fashionpedia's shape, same compute)"},
          "lw_detr": {"family": "lw_detr", "backbone": "windowed ViT-T, patch 16, 4 x 4 windows, 10 layers",
                      "d_model": 256, "decoder_layers": 3, "num_queries": 300,
                      "weights": f"random ({RT_DETR_SHAPES['lw_detr'].shape}, same compute)"}}


def make_photos(count: int) -> list[bytes]:
    from fashionbox.synth import render_scene

    sizes = [(1280, 960), (960, 1280)]
    return [render_scene(710_000 + i, size=sizes[i % 2]).encode(format="JPEG", quality=90) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=4, help="distinct photos, half landscape, half portrait")
    parser.add_argument("--duration-s", type=float, default=20.0, help="served measurement window per level")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="detr")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: tests/benchmarks/results/FAMILY_letterbox.json")
    args = parser.parse_args(argv)
    out = args.out or ROOT / f"tests/benchmarks/results/{args.family}_letterbox.json"

    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.server import ServerConfig, TritonServer, find_free_ports

    photos = make_photos(args.images)
    loose: dict[str, Any] = {"tolerance": recorded_not_enforced()} if args.family == "rt_detr" else {}
    runs: dict[str, Any] = {v: {"alone_s": [], "served_c1": [], "served_c2": []} for v in VARIANTS}
    runs["rect"]["alone_on_square_s"] = []  # the rect graph fed the square letterbox: what taking any shape costs
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-detr-letterbox-") as tmp, ExitStack() as stack:
        folder = FAMILIES[args.family](Path(tmp) / args.family)
        repositories, strides, min_sides, convert_s, comparisons, urls = {}, {}, {}, {}, {}, {}
        for variant in VARIANTS:
            started = time.perf_counter()
            result = convert(ConvertOptions(out=Path(tmp) / variant, detector=f"hf:{folder}", compare_samples=2,
                                            runtime="onnxruntime", letterbox=variant,  # type: ignore[arg-type]
                                            **loose))
            convert_s[variant] = round(time.perf_counter() - started, 1)
            repositories[variant] = result.repository
            manifest = json.loads((result.repository / "manifest.json").read_text())
            strides[variant] = int(manifest["export"]["letterbox_stride"])
            min_sides[variant] = int(manifest["export"]["letterbox_min_side"])
            comparisons[variant] = result.reports["detector"]
            print(f"{variant}: converted in {convert_s[variant]:.0f} s, letterbox stride {strides[variant]}",
                  flush=True)
            grpc, http, metrics = find_free_ports(3)
            server = stack.enter_context(TritonServer(ServerConfig(
                repository=result.repository, grpc_port=grpc, http_port=http, metrics_port=metrics,
                log_path=Path(tmp) / f"tritonserver-{variant}.log")))
            urls[variant] = server.endpoints.grpc
            run_served(urls[variant], photos, 1, 3.0)  # warm-up
        size = int(json.loads((repositories["square"] / "manifest.json").read_text())["export"]["input_size"])
        for round_index in range(args.rounds):
            for variant in VARIANTS:
                alone = run_onnx_detector(repositories[variant], photos, size, strides[variant], min_sides[variant])
                runs[variant]["alone_s"].append(alone)
            runs["rect"]["alone_on_square_s"].append(run_onnx_detector(repositories["rect"], photos, size))
            for variant in VARIANTS:
                runs[variant]["served_c1"].append(run_served(urls[variant], photos, 1, args.duration_s))
                runs[variant]["served_c2"].append(run_served(urls[variant], photos, 2, args.duration_s))
            print(f"round {round_index + 1}: " + "; ".join(
                f"{v} alone {1000 * statistics.median(runs[v]['alone_s'][-1]):.0f} ms, served c=1 p50 "
                f"{runs[v]['served_c1'][-1]['latency_ms']['p50']:.0f} ms, c=2 "
                f"{runs[v]['served_c2'][-1]['throughput_rps']:.2f} images/s" for v in VARIANTS), flush=True)

    def figures(variant: str) -> dict[str, float]:
        run = runs[variant]
        return {
            "detector_alone_p50_ms": round(1000 * statistics.median(s for r in run["alone_s"] for s in r), 1),
            "served_c1_p50_ms": round(statistics.median(p["latency_ms"]["p50"] for p in run["served_c1"]), 1),
            "served_c1_p99_ms": round(statistics.median(p["latency_ms"]["p99"] for p in run["served_c1"]), 1),
            "served_c1_images_per_s": round(statistics.median(p["throughput_rps"] for p in run["served_c1"]), 3),
            "served_c2_images_per_s": round(statistics.median(p["throughput_rps"] for p in run["served_c2"]), 3),
            "served_errors": sum(p["errors"] for key in ("served_c1", "served_c2") for p in run[key]),
        }

    square, rect = figures("square"), figures("rect")
    per_round = [round(s["latency_ms"]["p50"] / r["latency_ms"]["p50"], 2)
                 for s, r in zip(runs["square"]["served_c1"], runs["rect"]["served_c1"], strict=True)]
    summary = {
        "square": square, "rect": rect,
        "rect_speedup_detector_alone": round(square["detector_alone_p50_ms"] / rect["detector_alone_p50_ms"], 2),
        "rect_graph_on_square_p50_ms": round(
            1000 * statistics.median(s for r in runs["rect"]["alone_on_square_s"] for s in r), 1),
        "rect_speedup_served_p50": round(square["served_c1_p50_ms"] / rect["served_c1_p50_ms"], 2),
        "rect_speedup_served_p50_per_round": per_round,
        "rect_gain_c2_images_per_s": round(rect["served_c2_images_per_s"] / square["served_c2_images_per_s"], 2),
        "convert_s": convert_s,
        "convert_comparison": comparisons,
    }
    write_report(out, __file__, argv, {
        "model": {**MODELS[args.family], "labels": 46, "input_size": size, "letterbox_stride": strides["rect"],
                  "letterbox_min_side": min_sides["rect"]},
        "photos": {"count": args.images, "sizes": ["1280x960", "960x1280"]},
        "rounds": args.rounds, "duration_s": args.duration_s, "summary": summary, "runs": runs,
    })
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
