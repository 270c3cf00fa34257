"""Held-out scenes with exact instance masks, and COCO segm/bbox evaluation of pasted masks.

Shared by tests/test_mask_head.py (a few scenes, a loose floor) and
tests/benchmarks/bench_mask_head.py (200 scenes of seed 7, the bar)::

    scenes = heldout_with_instances(200, seed=7)
    predictions = [predict_masks(pipeline, scene) for scene in scenes]
    coco_mask_metrics(scenes, predictions, pipeline.label_map)   # {"segm_map": ..., "bbox_map": ...}

The scenes are the same as ``fashionbox.commands.evaluation.heldout_samples`` (the same seeds and
JPEG quality 90); the truth masks are ``render_scene_with_instances``' instance maps at the
original resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.core.masks import InstanceMask, paste_crop_masks
from fashionbox.models.pipeline import InProcessPipeline, MaskedResult


@dataclass(frozen=True)
class MaskScene:
    data: bytes
    width: int
    height: int
    categories: tuple[str, ...]
    boxes: npt.NDArray[np.float32]  # [G, 4] original pixels
    instances: npt.NDArray[np.uint8]  # [H, W]: i + 1 on garment i


@dataclass(frozen=True)
class MaskPrediction:
    box: tuple[float, float, float, float]
    category: str
    score: float
    mask: InstanceMask


def heldout_with_instances(count: int, seed: int, label_map: LabelMap | None = None) -> list[MaskScene]:
    from fashionbox.synth import render_scene_with_instances
    from fashionbox.training.data import scene_seed

    label_map = label_map or default_label_map()
    scenes = []
    for i in range(count):
        scene, instances = render_scene_with_instances(scene_seed(seed, i), label_map=label_map)
        boxes = np.array([g.box for g in scene.garments], dtype=np.float32).reshape(-1, 4)
        scenes.append(MaskScene(scene.encode(format="JPEG", quality=90), scene.image.width, scene.image.height,
                                tuple(g.category for g in scene.garments), boxes, instances))
    return scenes


def predict_masks(pipeline: InProcessPipeline, scene: MaskScene) -> list[MaskPrediction]:
    (masked,) = pipeline.run_with_masks([scene.data])
    if not isinstance(masked, MaskedResult):
        raise masked
    masks = paste_crop_masks(masked.crop_masks, masked.boxes_letterbox, masked.info,
                             input_size=pipeline.input_size) if len(masked.result) else []
    result = masked.result
    return [MaskPrediction(tuple(float(v) for v in box), pipeline.label_map.categories[int(c)].name,  # type: ignore[arg-type]
                           float(s), m)
            for box, s, c, m in zip(result.boxes, result.scores, result.categories, masks, strict=True)]


def coco_mask_metrics(scenes: list[MaskScene], predictions: list[list[MaskPrediction]],
                      label_map: LabelMap) -> dict[str, float]:
    """COCO segm and bbox mAP@[.5:.95] and mAP@.5 (pycocotools), truth masks from the instance maps."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat_id = {c.name: i + 1 for i, c in enumerate(label_map.categories)}
    images: list[dict[str, Any]] = []
    truth: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []
    for image_id, (scene, preds) in enumerate(zip(scenes, predictions, strict=True), start=1):
        images.append({"id": image_id, "width": scene.width, "height": scene.height})
        for g, (category, box) in enumerate(zip(scene.categories, scene.boxes.tolist(), strict=True)):
            rle = mask_utils.encode(np.asfortranarray((scene.instances == g + 1).astype(np.uint8)))
            x1, y1, x2, y2 = box
            truth.append({"id": len(truth) + 1, "image_id": image_id, "category_id": cat_id[category],
                          "segmentation": rle, "area": float(mask_utils.area(rle)),
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
        for p in preds:
            rle = mask_utils.frPyObjects({"counts": p.mask.to_rle(), "size": [scene.height, scene.width]},
                                         scene.height, scene.width)
            x1, y1, x2, y2 = p.box
            found.append({"image_id": image_id, "category_id": cat_id[p.category], "segmentation": rle,
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "score": p.score})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": truth,
                  "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}
    gt.createIndex()
    metrics: dict[str, float] = {}
    for kind in ("segm", "bbox"):
        if not found:
            metrics.update({f"{kind}_map": 0.0, f"{kind}_map50": 0.0})
            continue
        dt = gt.loadRes([dict(d) for d in found])
        evaluator = COCOeval(gt, dt, kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        metrics.update({f"{kind}_map": float(evaluator.stats[0]), f"{kind}_map50": float(evaluator.stats[1])})
    return metrics


def matched_mask_iou(scenes: list[MaskScene], predictions: list[list[MaskPrediction]]) -> list[float]:
    """Mask IoU of each truth garment with the detection whose box overlaps it most (box IoU >= 0.5)."""
    ious = []
    for scene, preds in zip(scenes, predictions, strict=True):
        for g, box in enumerate(scene.boxes.tolist()):
            best, best_iou = None, 0.5
            for p in preds:
                iw = max(0.0, min(box[2], p.box[2]) - max(box[0], p.box[0]))
                ih = max(0.0, min(box[3], p.box[3]) - max(box[1], p.box[1]))
                union = ((box[2] - box[0]) * (box[3] - box[1]) + (p.box[2] - p.box[0]) * (p.box[3] - p.box[1])
                         - iw * ih)
                if union > 0 and iw * ih / union >= best_iou:
                    best, best_iou = p, iw * ih / union
            if best is not None:
                true = scene.instances == g + 1
                ours = best.mask.to_array()
                ious.append(float((true & ours).sum() / max(1, (true | ours).sum())))
    return ious
