"""Benchmark: a DETR-style model served by FashionBox against in-process transformers, in one run.

    .venv/bin/python tests/benchmarks/bench_detr.py \
        [--family rt_detr|rt_detr_v2|d_fine|deformable_detr|dab_detr|lw_detr|rf_detr|rf_detr_seg] \
        [--letterbox square|rect] [--rounds 2] [--images 3] [--out ...]

``--family rt_detr`` (the default): ``PekingU/rtdetr_r18vd``'s shape (ResNet-18-vd basic blocks,
hybrid encoder 256 wide, 3 decoder layers, 300 queries); ``--family rt_detr_v2`` the same shape as
RT-DETRv2 (``rtdetr_v2_r18vd``'s), ``--family d_fine`` D-FINE's decoder on it (D-FINE's own
checkpoints use HGNetV2 backbones); their processor is ``RTDetrImageProcessor``'s default (640 x 640,
rescale, no normalisation). ``--family deformable_detr``: ``SenseTime/deformable-detr``'s shape
(ResNet-50, four levels, 6 + 6 deformable layers 256 wide, 300 queries), processor
``DeformableDetrImageProcessor``'s default (shortest edge 800). ``--family dab_detr``:
``IDEA-Research/dab-detr-resnet-50``'s shape (ResNet-50's last stage, 6 + 6 layers 256 wide, 300
queries), processor ``ConditionalDetrImageProcessor``'s default (shortest edge 800). ``--family rf_detr``:
RF-DETR base's shape (transformers' ``RfDetrConfig`` defaults: a windowed DINOv2-S, 300 queries), a processor
config as transformers' RF-DETR test checkpoint has it (560 x 560, stretched; DETR's preprocessing, RF-DETR's
own post-processing); ``--family rf_detr_seg`` the same inside RF-DETR-Seg's mask head, its own way ending in
RF-DETR's ``post_process_instance_segmentation``. ``--family lw_detr``: LW-DETR small's shape (transformers'
``LwDetrConfig`` defaults: a ViT-T 192 wide, 10 layers in 4 x 4 windows at patch 16, 300 queries; its projector at
scale 1, as LW-DETR small's), Deformable DETR's processor at 640 x 640 (stretched), its post-processing (k = 100).
46 Fashionpedia labels and random weights: the same compute, no download.
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
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rounds import baseline_summary, served_rounds, served_summary, write_rounds
from bench_yolos import make_images, run_onnx_detector
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
                                    "ConditionalDetrImageProcessorPil", 800),
            "rf_detr": BenchFamily("RfDetrConfig", "RfDetrForObjectDetection",
                                   "RF-DETR base's shape (transformers' RfDetrConfig defaults)",
                                   "DetrImageProcessorPil", 560),
            "rf_detr_seg": BenchFamily("RfDetrConfig", "RfDetrForInstanceSegmentation",
                                       "RF-DETR-Seg on RF-DETR base's shape (transformers' RfDetrConfig defaults)",
                                       "DetrImageProcessorPil", 560),
            "lw_detr": BenchFamily("LwDetrConfig", "LwDetrForObjectDetection",
                                   "LW-DETR small's shape (transformers' LwDetrConfig defaults, projector at scale 1)",
                                   "DeformableDetrImageProcessorPil", 640)}
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


def save_rf_detr_base_sized(folder: Path, family: str = "rf_detr") -> Path:
    """RF-DETR base's shape (``RfDetrConfig()``: a windowed DINOv2-S at patch 14 in 4 x 4 windows, LW-DETR's
    decoder, 3 layers 256 wide, 300 queries) and a processor config as transformers' RF-DETR test checkpoint has it
    (560 x 560; the base model's own was not fetched)."""
    import json

    import torch
    import transformers

    torch.manual_seed(0)
    getattr(transformers, FAMILIES[family].model_class)(transformers.RfDetrConfig(**_labels())).save_pretrained(folder)
    transformers.DetrImageProcessorPil(size={"height": 560, "width": 560}).save_pretrained(folder)
    config = folder / "preprocessor_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "image_processor_type": "RfDetrImageProcessor"}))
    return folder


def save_lw_detr_small_sized(folder: Path) -> Path:
    """LW-DETR small's shape (``LwDetrConfig()``, which transformers documents as ``lwdetr_small_60e_coco``'s, with
    its single projector level at scale 1: the defaults leave the list empty) and Deformable DETR's processor at
    640 x 640 (the checkpoint's own was not fetched)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LwDetrConfig(projector_scale_factors=[1.0], **_labels())
    transformers.LwDetrForObjectDetection(config).save_pretrained(folder)
    transformers.DeformableDetrImageProcessorPil(size={"height": 640, "width": 640}).save_pretrained(folder)
    return folder


def _style(family: str) -> Any:
    from fashionbox.converter.detr import STYLES
    from fashionbox.converter.lw_detr import LW_DETR

    return LW_DETR if family == "lw_detr" else STYLES[family]


def save_sized(folder: Path, family: str) -> tuple[Path, dict[str, Any]]:
    """``family``'s random checkpoint in ``folder``, and its shape for the report."""
    if family in ("rf_detr", "rf_detr_seg"):
        return save_rf_detr_base_sized(folder, family), {"backbone": "windowed DINOv2-S, patch 14, 4 x 4 windows",
                                                  "d_model": 256, "decoder_layers": 3, "num_queries": 300}
    if family == "lw_detr":
        return save_lw_detr_small_sized(folder), {"backbone": "windowed ViT-T, patch 16, 4 x 4 windows, 10 layers",
                                                   "d_model": 256, "decoder_layers": 3, "num_queries": 300}
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
                     min_side: int = 0, family: str = "rt_detr") -> list[float]:
    """Seconds per image, decode to detections, in process (the processor's resize when ``letterbox_size`` is None;
    else FashionBox's square letterbox, or its rect one of ``stride``)."""
    from fashionbox.converter.detr import library_post_process

    bench = FAMILIES[family]
    style = _style(family)
    source = style.post_process_source  # RF-DETR's own post-processing, its processor being torchvision's
    method = "post_process_instance_segmentation" if style.masks else "post_process_object_detection"
    return run_yolos_way(folder, images, letterbox_size=letterbox_size, model_class=bench.model_class,
                         processor_class=bench.processor_class, threshold=0.5, stride=stride, min_side=min_side,
                         post_process=library_post_process(*source, method) if source else None)


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
    size = FAMILIES[args.family].size

    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.core.serving import OrtSettings

    images = make_images(args.images)
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-detr-") as tmp:
        folder, shape = save_sized(Path(tmp) / args.family, args.family)
        started = time.perf_counter()
        result = convert(ConvertOptions(
            out=Path(tmp) / "repo", detector=f"hf:{folder}", compare_samples=2, runtime="onnxruntime",
            letterbox=args.letterbox, tolerance=recorded_not_enforced(),  # type: ignore[arg-type]
            repository_settings={"ort": OrtSettings(intra_op_threads=2)}))
        repository = result.repository
        convert_s = time.perf_counter() - started
        export = json.loads((repository / "manifest.json").read_text())["export"]
        stride, min_side = int(export["letterbox_stride"]), int(export["letterbox_min_side"])  # rect: the graph's
        print(f"converted in {convert_s:.0f} s", flush=True)
        runs = served_rounds(repository, images, rounds=args.rounds, duration_s=args.duration_s, baselines={
            "own_way_s": lambda: run_transformers(folder, images, letterbox_size=None, family=args.family),
            "letterbox_s": lambda: run_transformers(folder, images, letterbox_size=size, stride=stride,
                                                    min_side=min_side, family=args.family),
            "onnx_alone_s": lambda: run_onnx_detector(repository, images, size, stride, min_side)})

    summary = {
        **served_summary(runs, against="own_way_s"),
        "transformers_own_way": baseline_summary(runs, "own_way_s"),
        "transformers_same_letterbox": baseline_summary(runs, "letterbox_s"),
        "detector_graph_alone": baseline_summary(runs, "onnx_alone_s"),
        "convert_s": round(convert_s, 1),
        "convert_comparison_not_enforced": result.reports["detector"],
    }
    model = {"family": args.family, **shape, "labels": 46, "served_letterbox": size, "letterbox": args.letterbox,
             "letterbox_stride": stride, "letterbox_min_side": min_side,
             "weights": f"random ({FAMILIES[args.family].shape}, same compute)"}
    write_rounds(out, __file__, argv, args, model, summary, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
