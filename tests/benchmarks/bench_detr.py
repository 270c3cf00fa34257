"""Benchmark: a DETR-style model served by FashionBox against in-process transformers, in one run.

    .venv/bin/python tests/benchmarks/bench_detr.py [--family rt_detr|rt_detr_v2|d_fine|deformable_detr|dab_detr] \
        [--letterbox square|rect] [--rounds 2] [--images 3] [--out ...]

``--family rt_detr`` (the default): ``PekingU/rtdetr_r18vd``'s shape (ResNet-18-vd basic blocks,
hybrid encoder 256 wide, 3 decoder layers, 300 queries); ``--family rt_detr_v2`` the same shape as
RT-DETRv2 (``rtdetr_v2_r18vd``'s), ``--family d_fine`` D-FINE's decoder on it (D-FINE's own
checkpoints use HGNetV2 backbones); their processor is ``RTDetrImageProcessor``'s default (640 x 640,
rescale, no normalisation). ``--family deformable_detr``: ``SenseTime/deformable-detr``'s shape
(ResNet-50, four levels, 6 + 6 deformable layers 256 wide, 300 queries), processor
``DeformableDetrImageProcessor``'s default (shortest edge 800). ``--family dab_detr``:
``IDEA-Research/dab-detr-resnet-50``'s shape (ResNet-50's last stage, 6 + 6 layers 256 wide, 300
queries), processor ``ConditionalDetrImageProcessor``'s default (shortest edge 800). 46 Fashionpedia
labels and random weights: the same compute, no download.
On the same 1280x960 JPEGs (generated, fixed seeds) it measures:

- **served**: ``convert(detector="hf:FOLDER")`` into a repository (ONNX Runtime), the embedded
  Triton, the closed-loop load generator over gRPC: latency p50/p99 at concurrency 1, images/s at
  concurrency 2. The detector runs at a square letterbox (``--letterbox square``, the default here:
  640 x 640, 800 x 800 for Deformable and DAB-DETR), or with ``--letterbox rect`` at the CPU's default rect
  one, 640 x 480 (800 x 608) for these photos (the two are measured against each other by
  ``bench_detr_letterbox.py``; ``converter/detr.py``).
- **transformers, its own way**: the family's processor (RT-DETR's stretches to 640 x 640, Deformable
  and DAB-DETR's resize to a short side of 800), the model in PyTorch eager, ``post_process_object_detection``;
  torch on 2 threads; one image at a time.
- **transformers, same letterbox**: the same in-process path fed FashionBox's letterbox (square or rect).
- **detector graph alone**: the repository's ``detector/1/model.onnx`` in ONNX Runtime (2 threads)
  on pre-letterboxed pixels.

Rounds interleave them; the JSON keeps every run and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report
from bench_yolos import make_images, run_onnx_detector, run_served
from bench_yolos import run_transformers as run_yolos_way

ROOT = Path(__file__).resolve().parents[2]
BACKBONE = {"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2],
            "layer_type": "basic", "out_features": ["stage2", "stage3", "stage4"]}
R18_SHAPE = {"encoder_in_channels": [128, 256, 512], "encoder_hidden_dim": 256, "encoder_ffn_dim": 1024,
             "d_model": 256, "decoder_layers": 3, "decoder_ffn_dim": 1024, "num_queries": 300}


DEFORMABLE_R50_SHAPE = {"d_model": 256, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
                        "decoder_attention_heads": 8, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024,
                        "num_queries": 300, "num_feature_levels": 4, "encoder_n_points": 4, "decoder_n_points": 4}
DAB_R50_SHAPE = {"hidden_size": 256, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
                 "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "num_queries": 300}
R50_SHAPES = {"deformable_detr": (["stage2", "stage3", "stage4"], DEFORMABLE_R50_SHAPE),
              "dab_detr": (["stage4"], DAB_R50_SHAPE)}
"""The ResNet-50 families: the backbone's stages they take and their transformer's shape."""


@dataclass(frozen=True)
class BenchFamily:
    """A ``--family``: its transformers classes, what the random model's shape is, its processor and that
    processor's size (the served letterbox's side)."""

    config_class: str
    model_class: str
    shape: str
    processor_class: str = "RTDetrImageProcessorPil"
    size: int = 640


FAMILIES = {"rt_detr": BenchFamily("RTDetrConfig", "RTDetrForObjectDetection", "rtdetr_r18vd's shape"),
            "rt_detr_v2": BenchFamily("RTDetrV2Config", "RTDetrV2ForObjectDetection", "rtdetr_v2_r18vd's shape"),
            "d_fine": BenchFamily("DFineConfig", "DFineForObjectDetection",
                                  "D-FINE's decoder on rtdetr_r18vd's backbone and encoder shape"),
            "deformable_detr": BenchFamily("DeformableDetrConfig", "DeformableDetrForObjectDetection",
                                           "SenseTime/deformable-detr's shape", "DeformableDetrImageProcessorPil", 800),
            "dab_detr": BenchFamily("DabDetrConfig", "DabDetrForObjectDetection",
                                    "IDEA-Research/dab-detr-resnet-50's shape",
                                    "ConditionalDetrImageProcessorPil", 800)}
"""``--family`` -> its transformers classes, processor and size, and what the random model's shape is."""


def _labels() -> dict[str, Any]:
    from fashionbox.contract.labels import fashionpedia_taxonomy

    names = [c["name"] for c in fashionpedia_taxonomy()["categories"]]
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def save_r18_sized_rt_detr(folder: Path, family: str = "rt_detr") -> Path:
    import torch
    import transformers

    bench = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, bench.config_class)(
        backbone_config=transformers.RTDetrResNetConfig(**BACKBONE), use_pretrained_backbone=False, **R18_SHAPE,
        **_labels())
    getattr(transformers, bench.model_class)(config).save_pretrained(folder)
    transformers.RTDetrImageProcessorPil().save_pretrained(folder)  # 640 x 640, its default (v2's, D-FINE's too)
    return folder


def save_r50_sized(folder: Path, family: str) -> Path:
    import torch
    import transformers

    bench = FAMILIES[family]
    stages, shape = R50_SHAPES[family]
    torch.manual_seed(0)
    backbone = transformers.ResNetConfig(out_features=stages)  # ResNet-50: bottleneck blocks [3, 4, 6, 3]
    config = getattr(transformers, bench.config_class)(use_timm_backbone=False, use_pretrained_backbone=False,
                                                       backbone_config=backbone, **shape, **_labels())
    getattr(transformers, bench.model_class)(config).save_pretrained(folder)
    getattr(transformers, bench.processor_class)().save_pretrained(folder)  # shortest edge 800, its default
    return folder


def save_sized(folder: Path, family: str) -> tuple[Path, dict[str, Any]]:
    """``family``'s random checkpoint in ``folder``, and its shape for the report."""
    if family in R50_SHAPES:
        stages, shape = R50_SHAPES[family]
        return save_r50_sized(folder, family), {"backbone": f"transformers ResNet-50, {', '.join(stages)}", **shape}
    return save_r18_sized_rt_detr(folder, family), {"backbone": BACKBONE, **R18_SHAPE}


def recorded_not_enforced() -> dict[str, float]:
    """The converter's tolerances with the detector's comparison unbounded. Random weights leave RT-DETR's
    encoder positions nearly tied, so its query selection (a top-k over them) may pick other positions in
    ONNX Runtime than in PyTorch: parity is the tiny models' job (tests/test_detr_families.py); a
    benchmark records the comparison, it does not enforce it."""
    from fashionbox.converter import ConvertOptions

    unbounded = ("kept_mismatch", "boxes", "scores", "detections_count_mismatch")  # the last: OpenVINO's check
    return {**ConvertOptions(out=ROOT).tolerance, **dict.fromkeys(unbounded, float("inf"))}


def run_transformers(folder: Path, images: list[bytes], *, letterbox_size: int | None, stride: int = 0,
                     family: str = "rt_detr") -> list[float]:
    """Seconds per image, decode to detections, in process (the processor's resize when ``letterbox_size`` is None;
    else FashionBox's square letterbox, or its rect one of ``stride``)."""
    bench = FAMILIES[family]
    return run_yolos_way(folder, images, letterbox_size=letterbox_size, model_class=bench.model_class,
                         processor_class=bench.processor_class, threshold=0.5, stride=stride)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=3, help="distinct images; each baseline runs each once a round")
    parser.add_argument("--duration-s", type=float, default=10.0, help="served measurement window per level")
    parser.add_argument("--letterbox", choices=["square", "rect"], default="square",
                        help="what is served, and what the same-letterbox baseline is fed (rect: the CPU's default)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="rt_detr")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: results/detr.json (rt_detr), results/FAMILY.json; _rect before .json for rect")
    args = parser.parse_args(argv)
    name = "detr" if args.family == "rt_detr" else args.family
    out = args.out or ROOT / f"tests/benchmarks/results/{name}{'' if args.letterbox == 'square' else '_rect'}.json"
    stride = 32 if args.letterbox == "rect" else 0  # the backbone's deepest feature stride
    size = FAMILIES[args.family].size

    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.core.serving import OrtSettings
    from fashionbox.server import ServerConfig, TritonServer, find_free_ports

    images = make_images(args.images)
    runs: dict[str, Any] = {"own_way_s": [], "letterbox_s": [], "onnx_alone_s": [], "served_c1": [], "served_c2": []}
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-detr-") as tmp:
        folder, shape = save_sized(Path(tmp) / args.family, args.family)
        started = time.perf_counter()
        result = convert(ConvertOptions(
            out=Path(tmp) / "repo", detector=f"hf:{folder}", compare_samples=2, runtime="onnxruntime",
            letterbox=args.letterbox, tolerance=recorded_not_enforced(),  # type: ignore[arg-type]
            repository_settings={"ort": OrtSettings(intra_op_threads=2)}))
        repository = result.repository
        convert_s = time.perf_counter() - started
        print(f"converted in {convert_s:.0f} s", flush=True)
        grpc, http, metrics = find_free_ports(3)
        config = ServerConfig(repository=repository, grpc_port=grpc, http_port=http, metrics_port=metrics,
                              log_path=Path(tmp) / "tritonserver.log")
        with TritonServer(config) as server:
            url = server.endpoints.grpc
            run_served(url, images, 1, 3.0)  # warm-up
            for round_index in range(args.rounds):
                own = run_transformers(folder, images, letterbox_size=None, family=args.family)
                runs["own_way_s"].append(own)
                same = run_transformers(folder, images, letterbox_size=size, stride=stride, family=args.family)
                runs["letterbox_s"].append(same)
                alone = run_onnx_detector(repository, images, size, stride)
                runs["onnx_alone_s"].append(alone)
                c1 = run_served(url, images, 1, args.duration_s)
                runs["served_c1"].append(c1)
                c2 = run_served(url, images, 2, args.duration_s)
                runs["served_c2"].append(c2)
                print(f"round {round_index + 1}: transformers own way {statistics.median(own):.3f} s/image, "
                      f"same letterbox {statistics.median(same):.3f} s/image, detector graph alone "
                      f"{statistics.median(alone):.3f} s/image; served c=1 p50 "
                      f"{c1['latency_ms']['p50']:.0f} ms, c=2 {c2['throughput_rps']:.2f} images/s", flush=True)

    def baseline(key: str) -> dict[str, float]:
        flat = [s for run in runs[key] for s in run]
        return {"p50_ms": round(1000 * statistics.median(flat), 1), "images_per_s": round(1 / statistics.mean(flat), 3)}

    served_p50 = statistics.median(p["latency_ms"]["p50"] for p in runs["served_c1"])
    own_way = baseline("own_way_s")
    per_round = [1000 * statistics.median(s) / c1["latency_ms"]["p50"]
                 for s, c1 in zip(runs["own_way_s"], runs["served_c1"], strict=True)]
    summary = {
        "served_c1_p50_ms": round(served_p50, 1),
        "served_c1_p99_ms": round(statistics.median(p["latency_ms"]["p99"] for p in runs["served_c1"]), 1),
        "served_c1_images_per_s": round(statistics.median(p["throughput_rps"] for p in runs["served_c1"]), 3),
        "served_c2_images_per_s": round(statistics.median(p["throughput_rps"] for p in runs["served_c2"]), 3),
        "transformers_own_way": own_way,
        "transformers_same_letterbox": baseline("letterbox_s"),
        "detector_graph_alone": baseline("onnx_alone_s"),
        "speedup_p50_vs_own_way": round(own_way["p50_ms"] / served_p50, 2),
        "speedup_p50_vs_own_way_per_round": [round(r, 2) for r in per_round],
        "convert_s": round(convert_s, 1),
        "convert_comparison_not_enforced": result.reports["detector"],
    }
    write_report(out, __file__, argv, {
        "model": {"family": args.family, **shape, "labels": 46, "served_letterbox": size,
                  "letterbox": args.letterbox, "letterbox_stride": stride,
                  "weights": f"random ({FAMILIES[args.family].shape}, same compute)"},
        "rounds": args.rounds, "images": args.images, "duration_s": args.duration_s, "summary": summary, "runs": runs,
    })
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
