"""Quality of the default family's mask head on held-out generated scenes, written to a file.

    .venv/bin/python tests/benchmarks/bench_mask_head.py [--images 200] [--seed 7] [--attributes FILE]

Runs the held-out scenes (seed 7; training used seed 1) through the in-process reference
pipeline (the PyTorch networks, the served pre- and post-processing) with the default detector's
detections at its default thresholds, pastes each detection's crop mask into the original image
with ``fashionbox.core.masks.paste_crop_masks``, and scores them against the generator's exact
silhouettes with pycocotools: segm mAP@[.5:.95] and mAP@.5, box mAP for reference, and the
median mask IoU of the detections matched to a garment (box IoU >= 0.5). The bar is segm mAP
>= 0.6 (issue 15); the script exits 1 below it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the held-out scenes and the scoring

from bench_report import write_report
from mask_eval import coco_mask_metrics, heldout_with_instances, matched_mask_iou, predict_masks

ROOT = Path(__file__).resolve().parents[2]
BAR = 0.6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--attributes", type=Path, default=None, help="attribute checkpoint (default: shipped)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/mask_head.json")
    args = parser.parse_args(argv)

    from safetensors import safe_open

    from fashionbox.models import default_weights, file_sha256
    from fashionbox.models.pipeline import InProcessPipeline

    attributes = args.attributes or default_weights("attributes")
    pipeline = InProcessPipeline.torch_reference(attributes_path=attributes, threads=args.threads)
    with safe_open(str(attributes), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    scenes = heldout_with_instances(args.images, args.seed, pipeline.label_map)
    t0 = time.perf_counter()
    predictions = [predict_masks(pipeline, scene) for scene in scenes]
    seconds = time.perf_counter() - t0
    metrics = coco_mask_metrics(scenes, predictions, pipeline.label_map)
    ious = matched_mask_iou(scenes, predictions)
    report = write_report(args.out, __file__, argv, {
        "images": args.images,
        "seed": args.seed,
        "pipeline": "in-process torch reference, default detector at its default thresholds",
        "paste": "fashionbox.core.masks.paste_crop_masks (threshold 0.5)",
        "attributes_sha256": file_sha256(attributes),
        "mask_size": json.loads(metadata["config"]).get("mask_size", 0),
        "mask_train_settings": json.loads(metadata.get("mask_train_settings", "{}")),
        "mask_train_seconds": metadata.get("mask_train_seconds"),
        "detections": sum(len(p) for p in predictions),
        **metrics,
        "matched_garments": len(ious),
        "matched_mask_iou_median": statistics.median(ious) if ious else 0.0,
        "matched_mask_iou_mean": statistics.fmean(ious) if ious else 0.0,
        "pipeline_seconds": round(seconds, 1),
        "bar_segm_map": BAR,
    })
    print(json.dumps({k: report[k] for k in ("segm_map", "segm_map50", "bbox_map", "bbox_map50",
                                             "matched_mask_iou_median")}, indent=2))
    return 0 if metrics["segm_map"] >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
