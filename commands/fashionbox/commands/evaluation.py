"""Quality and fidelity measurement: COCO bbox and segm mAP, attribute accuracy, served-vs-reference.

``fashionbox eval`` renders a held-out set of generated scenes (a seed the training never
used) or reads a COCO annotation file (``--coco-annotations FILE --images DIR``, e.g. real
Fashionpedia validation data), sends the images through the served pipeline (or the in-process
PyTorch reference with ``--reference``) and reports::

    {"images": 200, "bbox_map": 0.71, "bbox_map50": 0.95, "imaterialist_score": 0.52,
     "attribute_accuracy": {"sleeve length": 0.93, ...}, "attribute_f1": {"sleeve length": 0.91, ...},
     "detections": 612}

``imaterialist_score`` is the iMaterialist (Kaggle FGVC6) style figure: per image, the mean over
IoU thresholds 0.5:0.95 of TP/(TP+FP+FN), averaged over images. ``attribute_f1`` is the macro F1
over each group's labels, on garments matched at IoU >= 0.5.

When the predictions carry instance masks (a segmenting model) and the truth has them (generated
scenes always do: ``render_scene_with_instances``), the report adds ``segm_map`` and
``segm_map50`` (COCO segm mAP@[.5:.95] and @.5) and ``imaterialist_mask_score`` (the same
iMaterialist figure with mask IoU). Masks travel as COCO uncompressed RLE counts at the image's size.

``fashionbox eval`` also reports, under ``fashionpedia``, Fashionpedia's official measure
(:func:`fashionpedia_measure`: box AP where a match needs both an IoU and an attribute-F1 threshold,
as the ``fashionpedia`` package's FPEval computes it; ``tests/test_fashionpedia_measure.py`` checks it
against that package). With a Fashionpedia file the truth's attribute sets are the file's
``attribute_ids``, all of them; the served model names only its label map's groups, so attributes
outside them count against it, as they would for any entry to the benchmark.

Predictions from either path are reduced to :class:`Prediction` so the metrics code is one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.core.masks import FrameMask, InstanceMask, paste_crop_masks
from fashionbox.core.postprocessing import ImageResult

if TYPE_CHECKING:  # the client is only needed for its types here
    from fashionbox.client import ClientConfig, ImageDetections

__all__ = [
    "SCORE_TOLERANCE",
    "EvalSample",
    "FidelityReport",
    "Prediction",
    "attribute_accuracy",
    "attribute_f1",
    "coco_dataset",
    "coco_metrics",
    "compare_fidelity",
    "fashionpedia_measure",
    "fashionpedia_objects",
    "has_masks",
    "heldout_samples",
    "imaterialist_mask_score",
    "imaterialist_score",
    "predictions_from_detections",
    "predictions_from_result",
    "predictions_with_masks",
    "run_eval_cli",
    "segm_metrics",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    box: tuple[float, float, float, float]
    category: str
    score: float
    attributes: dict[str, str] = field(default_factory=dict)
    attribute_scores: dict[str, float] = field(default_factory=dict)
    mask: tuple[int, ...] | None = None
    """COCO uncompressed RLE counts at the image's size (``fashionbox.v1.Mask``); None without a mask."""


@dataclass(frozen=True)
class GroundTruth:
    box: tuple[float, float, float, float]
    category: str
    attributes: dict[str, str]
    mask: tuple[int, ...] | None = None
    """COCO uncompressed RLE counts of the garment's visible pixels; None where the source has none."""
    attribute_ids: tuple[int, ...] | None = None
    """The file's Fashionpedia ``attribute_ids`` (all of them, not only the label map's groups), for the
    Fashionpedia measure; None for generated scenes (their ids are the attributes' own)."""


@dataclass(frozen=True)
class EvalSample:
    name: str
    data: bytes
    width: int
    height: int
    truth: tuple[GroundTruth, ...]


def heldout_samples(count: int, seed: int, label_map: LabelMap | None = None) -> list[EvalSample]:
    """Generated scenes at photo sizes, JPEG-encoded; seeds disjoint from training (seed 1).

    Each garment's truth carries its mask: its visible pixels in the scene's instance map.
    """
    from fashionbox.synth import render_scene_with_instances
    from fashionbox.training.data import scene_seed

    label_map = label_map or default_label_map()
    samples = []
    for i in range(count):
        scene, instances = render_scene_with_instances(scene_seed(seed, i), label_map=label_map)
        truth = tuple(GroundTruth(tuple(g.box), g.category, dict(g.attributes),  # type: ignore[arg-type]
                                  tuple(InstanceMask.from_array(instances == k + 1).to_rle()))
                      for k, g in enumerate(scene.garments))
        samples.append(EvalSample(f"heldout-{seed}-{i:05d}", scene.encode(format="JPEG", quality=90),
                                  scene.image.width, scene.image.height, truth))
    return samples


def predictions_from_result(result: ImageResult, label_map: LabelMap) -> list[Prediction]:
    """Numeric pipeline output -> predictions (argmax per applicable attribute group)."""
    out = []
    for box, score, category, attrs in zip(result.boxes, result.scores, result.categories,
                                            result.attribute_scores, strict=True):
        labels: dict[str, str] = {}
        scores: dict[str, float] = {}
        for (group, start, stop), applies in zip(label_map.group_offsets, label_map.applicability[int(category)],
                                                 strict=True):
            if applies:
                k = int(np.argmax(attrs[start:stop]))
                labels[group] = label_map.group(group).labels[k]
                scores[group] = float(attrs[start + k])
        out.append(Prediction(tuple(float(v) for v in box), label_map.categories[int(category)].name,  # type: ignore[arg-type]
                              float(score), labels, scores))
    return out


def predictions_from_detections(result: ImageDetections) -> list[Prediction]:
    """The typed client's result -> predictions (the served side of every comparison)."""
    return [
        Prediction(
            (d.box.x1, d.box.y1, d.box.x2, d.box.y2), d.category, d.score,
            {g: a.label for g, a in d.attributes.items()}, {g: a.score for g, a in d.attributes.items()},
            d.mask_rle.counts if d.mask_rle is not None else None,
        )
        for d in result.detections
    ]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def coco_metrics(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]],
                 label_map: LabelMap) -> dict[str, float]:
    """COCO bbox mAP@[.5:.95] and mAP@.5 (faster-coco-eval, the COCO definition)."""
    return _coco_evaluate(*coco_dataset(samples, predictions, label_map, "bbox"), "bbox")


def segm_metrics(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]],
                 label_map: LabelMap) -> dict[str, float]:
    """COCO segm mAP@[.5:.95] and mAP@.5 on the masks (faster-coco-eval, the COCO definition)."""
    return _coco_evaluate(*coco_dataset(samples, predictions, label_map, "segm"), "segm")


def has_masks(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]]) -> bool:
    """Whether mask metrics apply: some prediction carries a mask and every truth has one."""
    return (any(p.mask is not None for preds in predictions for p in preds)
            and all(t.mask is not None for sample in samples for t in sample.truth))


def _compressed(counts: Sequence[int] | None, width: int, height: int) -> dict[str, Any]:
    """COCO compressed RLE of ``counts`` (an empty mask where there is none), as the evaluators read it."""
    from faster_coco_eval.core import mask as mask_utils

    values = [width * height] if counts is None else [int(c) for c in counts]
    rle: dict[str, Any] = mask_utils.frPyObjects({"size": [height, width], "counts": values}, height, width)
    return rle


def coco_dataset(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]],
                 label_map: LabelMap, iou_type: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO ground-truth dataset and result list for a ``bbox`` or ``segm`` evaluation (any COCO
    evaluator reads them). Truth the model cannot name still counts, as misses; for ``segm`` every
    truth needs its mask, and a prediction without one counts with an empty mask.
    """
    segm = iou_type == "segm"
    cat_id = {c.name: i + 1 for i, c in enumerate(label_map.categories)}
    for sample in samples:
        for truth in sample.truth:
            cat_id.setdefault(truth.category, len(cat_id) + 1)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for image_id, (sample, preds) in enumerate(zip(samples, predictions, strict=True), start=1):
        images.append({"id": image_id, "width": sample.width, "height": sample.height, "file_name": sample.name})
        for truth in sample.truth:
            x1, y1, x2, y2 = truth.box
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[truth.category],
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if segm:
                if truth.mask is None:
                    raise ValueError(f"{sample.name}: a garment of the truth has no mask; segm needs every one")
                annotation["area"] = int(np.sum(truth.mask[1::2]))
                annotation["segmentation"] = _compressed(truth.mask, sample.width, sample.height)
            annotations.append(annotation)
        for p in preds:
            detection: dict[str, Any] = {"image_id": image_id, "category_id": cat_id[p.category], "score": p.score}
            if segm:  # no "bbox": the evaluators then take each result's area and box from its mask
                detection["segmentation"] = _compressed(p.mask, sample.width, sample.height)
            else:
                x1, y1, x2, y2 = p.box
                detection["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            detections.append(detection)
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}
    return dataset, detections


def _coco_evaluate(dataset: dict[str, Any], detections: list[dict[str, Any]], iou_type: str) -> dict[str, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    if not detections:
        return {f"{iou_type}_map": 0.0, f"{iou_type}_map50": 0.0}
    gt = COCO()
    gt.dataset = dataset
    gt.createIndex()
    evaluator = COCOeval_faster(gt, gt.loadRes(detections), iou_type, print_function=log.debug)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {f"{iou_type}_map": float(evaluator.stats[0]), f"{iou_type}_map50": float(evaluator.stats[1])}


def attribute_accuracy(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]],
                       label_map: LabelMap, iou_threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Per group: accuracy over garments matched (same category, IoU >= 0.5, greedy by score)."""
    correct = dict.fromkeys(label_map.group_names, 0)
    total = dict.fromkeys(label_map.group_names, 0)
    for sample, preds in zip(samples, predictions, strict=True):
        used: set[int] = set()
        for p in sorted(preds, key=lambda q: -q.score):
            best, best_iou = -1, iou_threshold
            for k, truth in enumerate(sample.truth):
                if k in used or truth.category != p.category:
                    continue
                iou = _iou(p.box, truth.box)
                if iou >= best_iou:
                    best, best_iou = k, iou
            if best < 0:
                continue
            used.add(best)
            for group, label in sample.truth[best].attributes.items():
                total[group] += 1
                correct[group] += int(p.attributes.get(group) == label)
    return {g: {"accuracy": correct[g] / total[g] if total[g] else float("nan"), "matched": total[g]}
            for g in label_map.group_names}


def _match(truth: Sequence[GroundTruth], preds: Sequence[Prediction], iou_threshold: float) -> list[tuple[int, int]]:
    """Greedy by score: each prediction takes the unused same-category truth of highest IoU >= threshold."""
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for i in sorted(range(len(preds)), key=lambda k: -preds[k].score):
        best, best_iou = -1, iou_threshold
        for k, t in enumerate(truth):
            if k in used or t.category != preds[i].category:
                continue
            iou = _iou(preds[i].box, t.box)
            if iou >= best_iou:
                best, best_iou = k, iou
        if best >= 0:
            used.add(best)
            pairs.append((i, best))
    return pairs


IMATERIALIST_IOUS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def imaterialist_score(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]],
                       iou_thresholds: Sequence[float] = IMATERIALIST_IOUS) -> float:
    """Mean over images of the mean over IoU thresholds of TP / (TP + FP + FN).

    The iMaterialist (FGVC6) style score, on boxes: a prediction is a TP when it matches an unused
    truth of the same category at IoU >= the threshold (greedy by score). The served detections are
    scored as returned (the server's threshold is the operating point); images with neither truth
    nor predictions are skipped.
    """
    per_image = []
    for sample, preds in zip(samples, predictions, strict=True):
        if not sample.truth and not preds:
            continue
        scores = []
        for threshold in iou_thresholds:
            tp = len(_match(sample.truth, preds, threshold))
            scores.append(tp / (len(preds) + len(sample.truth) - tp))
        per_image.append(float(np.mean(scores)))
    return float(np.mean(per_image)) if per_image else float("nan")


def _match_ious(truth: Sequence[GroundTruth], preds: Sequence[Prediction], ious: np.ndarray[Any, Any],
                threshold: float) -> int:
    """True positives of :func:`_match` (greedy by score, same category) with IoUs ``[preds, truth]`` given."""
    used: set[int] = set()
    for i in sorted(range(len(preds)), key=lambda k: -preds[k].score):
        best, best_iou = -1, threshold
        for k, t in enumerate(truth):
            if k in used or t.category != preds[i].category:
                continue
            if ious[i, k] >= best_iou:
                best, best_iou = k, float(ious[i, k])
        if best >= 0:
            used.add(best)
    return len(used)


def imaterialist_mask_score(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]],
                            iou_thresholds: Sequence[float] = IMATERIALIST_IOUS) -> float:
    """:func:`imaterialist_score` with mask IoU: the iMaterialist (FGVC6) metric as its competition defined it.

    A prediction without a mask counts with an empty one (it can only be a false positive).
    """
    from faster_coco_eval.core import mask as mask_utils

    per_image = []
    for sample, preds in zip(samples, predictions, strict=True):
        if not sample.truth and not preds:
            continue
        ious = np.zeros((len(preds), len(sample.truth)))
        if preds and sample.truth:
            dt = [_compressed(p.mask, sample.width, sample.height) for p in preds]
            gt = [_compressed(t.mask, sample.width, sample.height) for t in sample.truth]
            ious = np.asarray(mask_utils.iou(dt, gt, [0] * len(gt)), dtype=np.float64).reshape(len(dt), len(gt))
        scores = []
        for threshold in iou_thresholds:
            tp = _match_ious(sample.truth, preds, ious, threshold)
            scores.append(tp / (len(preds) + len(sample.truth) - tp))
        per_image.append(float(np.mean(scores)))
    return float(np.mean(per_image)) if per_image else float("nan")


def attribute_f1(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]],
                 label_map: LabelMap, iou_threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Per group: macro F1 over the group's labels on matched garments whose truth has the group."""
    pairs: dict[str, list[tuple[str, str | None]]] = {g: [] for g in label_map.group_names}
    for sample, preds in zip(samples, predictions, strict=True):
        for i, k in _match(sample.truth, preds, iou_threshold):
            for group, label in sample.truth[k].attributes.items():
                if group in pairs:
                    pairs[group].append((label, preds[i].attributes.get(group)))
    out: dict[str, dict[str, float]] = {}
    for group, rows in pairs.items():
        f1s = []
        for label in label_map.group(group).labels:
            tp = sum(1 for t, p in rows if t == label and p == label)
            fp = sum(1 for t, p in rows if t != label and p == label)
            fn = sum(1 for t, p in rows if t == label and p != label)
            if tp + fp + fn:
                f1s.append(2 * tp / (2 * tp + fp + fn))
        out[group] = {"f1": float(np.mean(f1s)) if f1s else float("nan"), "matched": len(rows)}
    return out


@dataclass(frozen=True)
class FidelityReport:
    images: int
    detections: int
    matched: int
    category_mismatches: int
    attribute_mismatches: int
    max_box_diff_px: float
    threshold_ties: int
    """Detections present on one side only, whose score lies within 1e-3 of the threshold."""
    unexplained_differences: int
    attribute_ties: int
    """Attribute labels that differ where the top two probabilities are within 1e-3."""
    max_score_diff: float = 0.0
    """Largest score difference between a served detection and the reference one it was paired with."""
    score_mismatches: int = 0
    """Paired detections whose scores differ by more than the score tolerance (each also unexplained)."""

    @property
    def identical(self) -> bool:
        return self.unexplained_differences == 0 and self.max_box_diff_px <= 0.5


SCORE_TOLERANCE = 1e-3
"""Default largest score difference of a paired detection: the converter holds ONNX Runtime to 1e-4
of PyTorch; the rest is room for the served path's other runtime (torch, TensorRT FP32)."""


def compare_fidelity(served: Sequence[Sequence[Prediction]], reference: Sequence[Sequence[Prediction]],
                     score_threshold: float, tolerance: float = 1e-3,
                     score_tolerance: float = SCORE_TOLERANCE) -> FidelityReport:
    """Pair each served detection with the reference one (same category, best IoU) and compare.

    ``tolerance`` is how near the threshold an unpaired detection's score (or how near each other
    two differing attribute labels' scores) must be to count as a tie; ``score_tolerance`` is how
    far a paired detection's score may lie from the reference's before it counts as a mismatch.
    """
    detections = matched = cat_mis = attr_mis = ties = unexplained = attr_ties = score_mis = 0
    max_diff = max_score_diff = 0.0
    for served_preds, ref_preds in zip(served, reference, strict=True):
        detections += len(ref_preds)
        used: set[int] = set()
        for p in served_preds:
            best, best_iou = -1, 0.5
            for k, r in enumerate(ref_preds):
                if k not in used and r.category == p.category and _iou(p.box, r.box) > best_iou:
                    best, best_iou = k, _iou(p.box, r.box)
            if best < 0:
                if abs(p.score - score_threshold) <= tolerance:
                    ties += 1
                else:
                    unexplained += 1
                    cat_mis += 1
                continue
            used.add(best)
            matched += 1
            r = ref_preds[best]
            max_diff = max(max_diff, max(abs(a - b) for a, b in zip(p.box, r.box, strict=True)))
            score_diff = abs(p.score - r.score)
            max_score_diff = max(max_score_diff, score_diff)
            if score_diff > score_tolerance:
                score_mis += 1
                unexplained += 1
            for group, label in r.attributes.items():
                if p.attributes.get(group) != label:
                    # Probabilities agree to ~1e-6 across runtimes, so differing labels mean the top
                    # two were tied: equal top scores on both sides show it.
                    if abs(r.attribute_scores.get(group, 0.0) - p.attribute_scores.get(group, 1.0)) <= tolerance:
                        attr_ties += 1
                    else:
                        attr_mis += 1
                        unexplained += 1
        for k, r in enumerate(ref_preds):
            if k not in used:
                if abs(r.score - score_threshold) <= tolerance:
                    ties += 1
                else:
                    unexplained += 1
    return FidelityReport(len(reference), detections, matched, cat_mis, attr_mis, max_diff, ties, unexplained,
                          attr_ties, max_score_diff, score_mis)


# -- the CLI -------------------------------------------------------------------------------------------


def _served_predictions(url: str, samples: Sequence[EvalSample], concurrency: int,
                        connection: ClientConfig | None = None) -> tuple[list[list[Prediction]], LabelMap]:
    from fashionbox.client import FashionClient

    with FashionClient(url, config=connection) as client:
        label_map = client.labels()

        def one(sample: EvalSample) -> list[Prediction]:
            return predictions_from_detections(client.detect(sample.data))

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, samples)), label_map


def _reference_predictions(samples: Sequence[EvalSample]) -> tuple[list[list[Prediction]], LabelMap]:
    from fashionbox.models.pipeline import InProcessPipeline

    pipeline = InProcessPipeline.torch_reference()
    out: list[list[Prediction]] = []
    for sample in samples:
        if pipeline.classify_masks is not None:  # attribute heads with a mask head: masks as served
            (masked,) = pipeline.run_with_masks([sample.data])
            if isinstance(masked, Exception):
                raise masked
            out.append(predictions_with_masks(predictions_from_result(masked.result, pipeline.label_map),
                                              paste_crop_masks(masked.crop_masks, masked.boxes_letterbox,
                                                               masked.info)))
            continue
        (result,) = pipeline.run([sample.data])
        if isinstance(result, Exception):
            raise result
        out.append(predictions_from_result(result, pipeline.label_map))
    return out, pipeline.label_map


def predictions_with_masks(predictions: Sequence[Prediction], masks: Sequence[FrameMask]) -> list[Prediction]:
    """``predictions`` with ``masks`` (one each, in order) attached as RLE counts."""
    if len(predictions) != len(masks):
        raise ValueError(f"{len(masks)} masks for {len(predictions)} predictions")
    return [replace(p, mask=tuple(m.to_rle())) for p, m in zip(predictions, masks, strict=True)]


def _coco_samples(annotation_file: Path, image_dir: Path, label_map: LabelMap | None = None) -> list[EvalSample]:
    """COCO annotations (Fashionpedia style: ``attribute_ids`` decoded with ``label_map``) and their images."""
    from fashionbox.synth import read_coco_dataset

    raw_ids = _raw_attribute_ids(annotation_file)
    samples = []
    for record in read_coco_dataset(annotation_file, label_map=label_map):
        path = image_dir / record.file_name
        ids = raw_ids.get(record.image_id, [])
        truth = tuple(GroundTruth(tuple(g.box), g.category, dict(g.attributes),  # type: ignore[arg-type]
                                  attribute_ids=ids[k] if k < len(ids) else None)
                      for k, g in enumerate(record.garments))
        samples.append(EvalSample(record.file_name, path.read_bytes(), record.width, record.height, truth))
    return samples


def _raw_attribute_ids(annotation_file: Path) -> dict[int, list[tuple[int, ...] | None]]:
    """Per image id, each annotation's ``attribute_ids`` in file order (None where it has none), as
    ``read_coco_dataset`` orders the garments; that reader has already checked the file."""
    document = json.loads(Path(annotation_file).read_text(encoding="utf-8"))
    out: dict[int, list[tuple[int, ...] | None]] = {}
    for a in document.get("annotations", []):
        ids = a.get("attribute_ids")
        out.setdefault(int(a["image_id"]), []).append(None if ids is None else tuple(int(i) for i in ids))
    return out


def evaluate(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]],
             label_map: LabelMap, *, fashionpedia: bool = False) -> dict[str, Any]:
    """The report; with ``fashionpedia`` also Fashionpedia's official measure (:func:`fashionpedia_measure`)
    under ``"fashionpedia"``, when every truth category is a Fashionpedia one."""
    report: dict[str, Any] = {"images": len(samples), "detections": sum(len(p) for p in predictions)}
    if fashionpedia:
        try:
            truth, detections = fashionpedia_objects(samples, predictions, label_map)
        except ValueError as exc:
            log.warning("no Fashionpedia measure: %s", exc)
        else:
            report["fashionpedia"] = fashionpedia_measure(truth, detections, vocabulary=fashionpedia_vocabulary())
    report.update(coco_metrics(samples, predictions, label_map))
    report["imaterialist_score"] = imaterialist_score(samples, predictions)
    if has_masks(samples, predictions):
        report.update(segm_metrics(samples, predictions, label_map))
        report["imaterialist_mask_score"] = imaterialist_mask_score(samples, predictions)
    accuracy = attribute_accuracy(samples, predictions, label_map)
    report["attribute_accuracy"] = {g: v["accuracy"] for g, v in accuracy.items()}
    report["attribute_matched"] = {g: v["matched"] for g, v in accuracy.items()}
    report["attribute_f1"] = {g: v["f1"] for g, v in attribute_f1(samples, predictions, label_map).items()}
    return report


def _served_label_map(url: str, connection: ClientConfig | None = None) -> LabelMap:
    from fashionbox.client import FashionClient

    with FashionClient(url, config=connection) as client:
        return client.labels()


def run_eval_cli(args: argparse.Namespace) -> int:
    from fashionbox.client.connection import connection_from_arguments

    connection = None if args.reference else connection_from_arguments(args)
    if args.coco:
        image_dir = args.image_dir or (args.images if isinstance(args.images, Path) else None)
        if image_dir is None:
            raise FileNotFoundError("--coco-annotations needs the image folder: --images DIR")
        # Attribute ids decode through the served label map (its categories say which groups apply).
        labels = default_label_map() if args.reference else _served_label_map(args.url, connection)
        samples = _coco_samples(args.coco, Path(image_dir), labels)
    elif isinstance(args.images, Path):
        raise FileNotFoundError("--images DIR needs --coco-annotations FILE")
    else:
        samples = heldout_samples(args.images, args.seed)
    if args.reference:
        predictions, label_map = _reference_predictions(samples)
    else:
        predictions, label_map = _served_predictions(args.url, samples, args.concurrency, connection)
    report = evaluate(samples, predictions, label_map, fashionpedia=True)
    report["source"] = "reference (in-process PyTorch)" if args.reference else f"served at {args.url}"
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value}")
    return 0



# -- the Fashionpedia measure --------------------------------------------------------------------------
#
# The official measure of Fashionpedia (Jia et al., 2020; the `fashionpedia` package's FPEval, read for
# these facts): COCO-style AP where a detection matches a truth of its category only when the box IoU
# reaches the IoU threshold AND the F1 of their attribute sets reaches the F1 threshold. Facts taken
# from FPEval 1.1:
# * categories are Fashionpedia's 46 (ids 0-45); only 18 of them ("catsWithAttributes") use the F1
#   condition, the others are matched on IoU alone;
# * the F1 is sklearn's `f1_score(average="macro")` of the two multi-hot vectors over the whole
#   attribute vocabulary (the file's `attributes`, 294 for Fashionpedia): the mean of the F1 of the
#   "present" and of the "absent" label, over the labels that occur;
# * thresholds: IoU 0.50:0.95 and F1 0.50:0.95 (step 0.05), each with an extra -1 (no condition);
#   recall points, area ranges and max detections are COCO's;
# * "AP" averages precision over IoU 0.50:0.95, and over F1 0.50:0.95 for categories with attributes
#   (one slice per F1 threshold, so each such category weighs ten times a category without), and
#   over categories with truth.

FASHIONPEDIA_CATEGORIES_WITH_ATTRIBUTES = frozenset({10, 7, 0, 6, 5, 4, 9, 31, 33, 3, 12, 11, 1, 2, 8, 32, 29, 28})
"""Fashionpedia category ids whose matches need the attribute F1 (FPEval's ``catsWithAttributes``)."""
FASHIONPEDIA_SUPERCATEGORIES = {"o": range(0, 13), "a": range(13, 27), "p": range(27, 46)}
"""FPEval's super-classes by category id: outerwear (garments), accessories, garment parts."""

_FP_IOUS = np.append(np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True), -1.0)
_FP_F1S = np.append(np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True), -1.0)
_FP_RECALLS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
_FP_MAX_DETS = (1, 10, 100)
_FP_AREAS = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
             "large": (96.0 ** 2, 1e5 ** 2)}


@dataclass(frozen=True)
class FashionpediaObject:
    """One box of the Fashionpedia measure: a truth (``score`` None) or a detection."""

    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in image pixels."""
    category_id: int
    """Fashionpedia category id (0-45)."""
    attribute_ids: frozenset[int]
    score: float | None = None
    area: float | None = None
    """A truth's area (Fashionpedia's is its mask's); the box's area when None."""
    iscrowd: bool = False


def _binary_macro_f1(truth: frozenset[int], predicted: frozenset[int], vocabulary: int) -> float:
    """sklearn ``f1_score(t, p, average="macro")`` of two multi-hot vectors of length ``vocabulary``."""
    both = len(truth & predicted)
    union = len(truth | predicted)
    f1s = []
    if union:  # label 1 occurs
        f1s.append(2 * both / (2 * both + len(predicted - truth) + len(truth - predicted)))
    if len(truth) < vocabulary or len(predicted) < vocabulary:  # label 0 occurs
        absent = vocabulary - union
        f1s.append(2 * absent / (2 * absent + len(truth - predicted) + len(predicted - truth)))
    return float(np.mean(f1s))


def _box_ious(dt: Sequence[FashionpediaObject], gt: Sequence[FashionpediaObject]) -> np.ndarray[Any, Any]:
    """pycocotools' bbox IoU ``[D, G]`` (a crowd truth: intersection over the detection's area)."""
    out = np.zeros((len(dt), len(gt)))
    for i, d in enumerate(dt):
        dw, dh = d.box[2] - d.box[0], d.box[3] - d.box[1]
        for j, g in enumerate(gt):
            gw, gh = g.box[2] - g.box[0], g.box[3] - g.box[1]
            iw = min(d.box[0] + dw, g.box[0] + gw) - max(d.box[0], g.box[0])
            ih = min(d.box[1] + dh, g.box[1] + gh) - max(d.box[1], g.box[1])
            if iw <= 0 or ih <= 0:
                continue
            inter = iw * ih
            union = dw * dh if g.iscrowd else dw * dh + gw * gh - inter
            out[i, j] = inter / union
    return out


def _fp_match(dt: Sequence[FashionpediaObject], gt: Sequence[FashionpediaObject], ious: np.ndarray[Any, Any],
              f1s: np.ndarray[Any, Any] | None, area: tuple[float, float]
              ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """FPEval's ``evaluateImg`` for one image and category: matched ``[T, F, D]``, ignored ``[T, F, D]``,
    truth ignored ``[G]`` (F is 11 with attributes, else 1; ``dt`` sorted by score, ``gt`` by ``gt_ignore``)."""
    gt_ignore = np.array([int(g.iscrowd or not area[0] <= _fp_area(g) <= area[1]) for g in gt])
    order = np.argsort(gt_ignore, kind="mergesort")
    gt = [gt[i] for i in order]
    gt_ignore = gt_ignore[order]
    ious = ious[:, order] if ious.size else ious
    with_f1 = f1s is not None
    f1s = f1s[:, order] if f1s is not None and f1s.size else f1s
    thresholds_f1 = _FP_F1S if with_f1 else np.array([-1.0])
    shape = (len(_FP_IOUS), len(thresholds_f1))
    gt_matched = np.zeros((*shape, len(gt)), dtype=bool)
    dt_matched = np.zeros((*shape, len(dt)), dtype=bool)
    dt_ignore = np.zeros((*shape, len(dt)), dtype=bool)
    if len(dt) and len(gt):
        for t, iou_threshold in enumerate(_FP_IOUS):
            for f, f1_threshold in enumerate(thresholds_f1):
                for d in range(len(dt)):
                    best_iou, best_f1, m = min(iou_threshold, 1 - 1e-10), min(f1_threshold, 1 - 1e-10), -1
                    for g in range(len(gt)):
                        # FPEval skips a matched crowd truth too; COCOeval (no attributes) lets crowds match again
                        if gt_matched[t, f, g] and (with_f1 or not gt[g].iscrowd):
                            continue
                        if m > -1 and gt_ignore[m] == 0 and gt_ignore[g] == 1:
                            break
                        if ious[d, g] < best_iou or (f1s is not None and f1s[d, g] < best_f1):
                            continue
                        best_iou, m = ious[d, g], g
                        if f1s is not None:
                            best_f1 = f1s[d, g]
                    if m == -1:
                        continue
                    dt_ignore[t, f, d] = bool(gt_ignore[m])
                    dt_matched[t, f, d] = True
                    gt_matched[t, f, m] = True
    outside = np.array([not area[0] <= _fp_area(d) <= area[1] for d in dt], dtype=bool)
    dt_ignore |= ~dt_matched & outside[None, None, :]
    return dt_matched, dt_ignore, gt_ignore


def _fp_area(o: FashionpediaObject) -> float:
    if o.area is not None:
        return o.area
    return (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])


def fashionpedia_measure(truth: Sequence[Sequence[FashionpediaObject]],
                         detections: Sequence[Sequence[FashionpediaObject]], *,
                         vocabulary: int) -> dict[str, float]:
    """Fashionpedia's official box AP (FPEval with ``iouType="bbox"``) of ``detections`` against ``truth``
    (one list per image), ``vocabulary`` the attribute count of the multi-hot vectors (294).

    Returns FPEval's ``results`` (IoU and F1), with ``AP``, ``AP_IOU50``, ``AP_IOU75``, ``AP_F150``,
    ``AP_F175``, ``AP_IOU50_F150`` ... ``AP_IOU75_F175``, ``APo``, ``APp``, ``APs``/``m``/``l``,
    ``AR@1/10/100``, ``ARs@100``...; plus ``box_only_AP`` (its ``resultDet["AP"]``: IoU only).
    -1 where nothing could be measured, as FPEval.
    """
    if len(truth) != len(detections):
        raise ValueError(f"{len(detections)} detection lists for {len(truth)} images")
    num_f1, num_iou, num_rec = len(_FP_F1S), len(_FP_IOUS), len(_FP_RECALLS)
    areas = list(_FP_AREAS.values())
    precision = -np.ones((num_iou, num_f1, num_rec, 46, len(areas), len(_FP_MAX_DETS)))
    recall = -np.ones((num_iou, num_f1, 46, len(areas), len(_FP_MAX_DETS)))
    for objects in (*truth, *detections):
        for o in objects:
            if not 0 <= o.category_id < 46:
                raise ValueError(f"category id {o.category_id} is not a Fashionpedia category (0-45)")
    for category in range(46):
        with_f1 = category in FASHIONPEDIA_CATEGORIES_WITH_ATTRIBUTES
        per_image = []
        for gts, dts in zip(truth, detections, strict=True):
            gt = [g for g in gts if g.category_id == category]
            dt = [d for d in dts if d.category_id == category]
            if not gt and not dt:
                continue
            order = np.argsort([-(d.score or 0.0) for d in dt], kind="mergesort")
            dt = [dt[i] for i in order][: _FP_MAX_DETS[-1]]
            ious = _box_ious(dt, gt)
            f1s = (np.array([[_binary_macro_f1(g.attribute_ids, d.attribute_ids, vocabulary) for g in gt]
                             for d in dt]).reshape(len(dt), len(gt)) if with_f1 else None)
            per_image.append((dt, [_fp_match(dt, gt, ious, f1s, a) for a in areas]))
        if not per_image:
            continue
        for a in range(len(areas)):
            for k, max_det in enumerate(_FP_MAX_DETS):
                scores = np.concatenate([[d.score or 0.0 for d in dt[:max_det]] for dt, _ in per_image])
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([m[a][0][:, :, :max_det] for _, m in per_image], axis=2)[:, :, order]
                ignored = np.concatenate([m[a][1][:, :, :max_det] for _, m in per_image], axis=2)[:, :, order]
                gt_ignore = np.concatenate([m[a][2] for _, m in per_image])
                num_gt = int(np.count_nonzero(gt_ignore == 0))
                if num_gt == 0:
                    continue
                tp_sum = np.cumsum(matched & ~ignored, axis=2).astype(float)
                fp_sum = np.cumsum(~matched & ~ignored, axis=2).astype(float)
                for t in range(num_iou):
                    for f in (range(num_f1) if with_f1 else (-1,)):
                        tp, fp = tp_sum[t, f if with_f1 else 0], fp_sum[t, f if with_f1 else 0]
                        rc = tp / num_gt
                        recall[t, f, category, a, k] = rc[-1] if len(tp) else 0
                        pr = (tp / (fp + tp + np.spacing(1))).tolist()
                        for i in range(len(tp) - 1, 0, -1):
                            if pr[i] > pr[i - 1]:
                                pr[i - 1] = pr[i]
                        at_recall = [0.0] * num_rec
                        for r, index in enumerate(np.searchsorted(rc, _FP_RECALLS, side="left")):
                            if index >= len(pr):
                                break
                            at_recall[r] = pr[index]
                        precision[t, f, :, category, a, k] = at_recall
    return _fp_summaries(precision, recall)


def _fp_select(values: np.ndarray[Any, Any], *, ap: bool, iou_threshold: float | None, f1_threshold: float | None,
               f1: bool, iou: bool, area: str, max_dets: int, supercategory: str | None) -> float:
    """FPEval's ``_summarize``: the mean of the measured entries of one slice of ``precision`` / ``recall``."""
    s = values
    if iou and iou_threshold is not None:
        s = s[np.where(iou_threshold == _FP_IOUS)[0]]
    elif iou:
        s = s[:-1]
    else:
        s = s[[-1]]
    cat_axis = 3 if ap else 2
    categories = list(FASHIONPEDIA_SUPERCATEGORIES[supercategory]) if supercategory else list(range(46))
    parts = []
    for c in categories:
        take = [c]
        if not f1 or c not in FASHIONPEDIA_CATEGORIES_WITH_ATTRIBUTES:
            parts.append(np.take(np.take(s, [-1], axis=1), take, axis=cat_axis))
        elif f1_threshold is not None:
            parts.append(np.take(np.take(s, np.where(f1_threshold == _FP_F1S)[0], axis=1), take, axis=cat_axis))
        else:
            parts.extend(np.take(np.take(s, [f], axis=1), take, axis=cat_axis) for f in range(len(_FP_F1S) - 1))
    s = np.concatenate(parts, axis=cat_axis)
    s = s[..., list(_FP_AREAS).index(area), _FP_MAX_DETS.index(max_dets)]
    measured = s[s > -1]
    return float(np.mean(measured)) if measured.size else -1.0


def _fp_summaries(precision: np.ndarray[Any, Any], recall: np.ndarray[Any, Any]) -> dict[str, float]:
    def ap(**kw: Any) -> float:
        args: dict[str, Any] = {"iou_threshold": None, "f1_threshold": None, "f1": True, "iou": True, "area": "all",
                                "max_dets": 100, "supercategory": None}
        args.update(kw)
        return _fp_select(precision, ap=True, **args)

    def ar(**kw: Any) -> float:
        args: dict[str, Any] = {"iou_threshold": None, "f1_threshold": None, "f1": True, "iou": True, "area": "all",
                                "max_dets": 100, "supercategory": None}
        args.update(kw)
        return _fp_select(recall, ap=False, **args)

    out = {"APo": ap(supercategory="o"), "APp": ap(supercategory="p"), "AP": ap(),
           "AP_IOU50": ap(iou_threshold=.5), "AP_IOU75": ap(iou_threshold=.75),
           "AP_F150": ap(f1_threshold=.5), "AP_F175": ap(f1_threshold=.75)}
    for iou_threshold in (.5, .75):
        for f1_threshold in (.5, .75):
            out[f"AP_IOU{int(iou_threshold * 100)}_F1{int(f1_threshold * 100)}"] = ap(
                iou_threshold=iou_threshold, f1_threshold=f1_threshold)
    out.update({"APs": ap(area="small"), "APm": ap(area="medium"), "APl": ap(area="large")})
    for max_dets in _FP_MAX_DETS:
        out[f"AR@{max_dets}"] = ar(max_dets=max_dets)
    for area in ("small", "medium", "large"):
        out[f"AR{area[0]}@100"] = ar(area=area)
    out["box_only_AP"] = ap(f1=False)
    return out


def fashionpedia_objects(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]],
                         label_map: LabelMap) -> tuple[list[list[FashionpediaObject]], list[list[FashionpediaObject]]]:
    """Truth and detections as Fashionpedia objects: category names to Fashionpedia ids (the taxonomy's),
    attributes ``{group: label}`` to Fashionpedia attribute ids (``label_map``'s groups). A truth's
    ``attribute_ids`` from the file are used when the sample carries them (all of Fashionpedia's)."""
    from fashionbox.contract.labels import fashionpedia_taxonomy

    ids = {c["name"]: int(c["id"]) for c in fashionpedia_taxonomy()["categories"]}
    unknown = sorted({t.category for s in samples for t in s.truth} - set(ids))
    if unknown:
        raise ValueError(f"the Fashionpedia measure needs Fashionpedia categories; these are not: {unknown}")

    def attribute_ids(attributes: dict[str, str]) -> frozenset[int]:
        out = set()
        for group, label in attributes.items():
            if group in label_map.group_names:
                g = label_map.group(group)
                if label in g.labels:
                    out.add(g.fashionpedia_ids[g.labels.index(label)])
        return frozenset(out)

    truth = [[FashionpediaObject(t.box, ids[t.category],
                                 frozenset(t.attribute_ids) if t.attribute_ids is not None
                                 else attribute_ids(t.attributes)) for t in s.truth] for s in samples]
    detections = [[FashionpediaObject(p.box, ids[p.category], attribute_ids(p.attributes), p.score) for p in preds]
                  for preds in predictions]
    return truth, detections


def fashionpedia_vocabulary() -> int:
    """The attribute count of Fashionpedia's multi-hot vectors (its ``attributes`` list: 294)."""
    from fashionbox.contract.labels import fashionpedia_taxonomy

    return len(fashionpedia_taxonomy()["attributes"])
