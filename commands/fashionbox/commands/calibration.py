"""Calibration of detection scores: how far a detection's confidence is from its chance of being right.

A detection is *right* (a true positive) when it matches a ground-truth garment of the same category
at IoU >= 0.5, matching greedily by descending score within each image and category as COCO does
(each garment matched at most once). The expected calibration error (ECE) bins the detections by
confidence into equal-width bins over [0, 1] and averages ``|accuracy - mean confidence|`` over the
bins, weighted by how many detections each holds::

    scores, correct = detection_outcomes(samples, predictions)
    ece = expected_calibration_error(scores, correct, bins=15)
    table = reliability_table(scores, correct, bins=15)      # per bin: count, confidence, accuracy

A perfectly calibrated detector has ECE 0: of its detections scored about 0.7, 70 % are right.
Platt scaling (:func:`fit_platt`, :func:`apply_platt`) maps a score ``s`` to
``sigmoid(a * logit(s) + b)``, fitted by logistic regression on held-out outcomes: a monotone map,
so it keeps the ranking (hence AP) but moves scores across a fixed threshold.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fashionbox.commands.evaluation import EvalSample, Prediction

__all__ = ["CalibrationError", "DetectorCalibration", "apply_platt", "choose_threshold", "detection_outcomes",
           "expected_calibration_error", "fit_detector_calibration", "fit_platt", "reliability_table",
           "verifier_refit_command"]

F64 = npt.NDArray[np.float64]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_outcomes(samples: Sequence[EvalSample], predictions: Sequence[Sequence[Prediction]], *,
                       iou_threshold: float = 0.5) -> tuple[F64, F64]:
    """Every detection's score and whether it is a true positive (1.0) or not (0.0)."""
    if len(samples) != len(predictions):
        raise ValueError(f"{len(samples)} samples but {len(predictions)} prediction lists")
    scores: list[float] = []
    correct: list[float] = []
    for sample, preds in zip(samples, predictions, strict=True):
        taken = [False] * len(sample.truth)
        for pred in sorted(preds, key=lambda p: -p.score):
            best, best_iou = -1, iou_threshold
            for k, truth in enumerate(sample.truth):
                if taken[k] or truth.category != pred.category:
                    continue
                iou = _iou(pred.box, truth.box)
                if iou >= best_iou:
                    best, best_iou = k, iou
            if best >= 0:
                taken[best] = True
            scores.append(pred.score)
            correct.append(1.0 if best >= 0 else 0.0)
    return np.array(scores, dtype=np.float64), np.array(correct, dtype=np.float64)


def _binned(confidences: npt.ArrayLike, correct: npt.ArrayLike, bins: int) -> tuple[F64, F64, npt.NDArray[np.int64]]:
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    hit = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != hit.shape:
        raise ValueError(f"{conf.size} confidences but {hit.size} outcomes")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if conf.size and (not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must be finite and in [0, 1]")
    if hit.size and not np.all((hit == 0) | (hit == 1)):
        raise ValueError("outcomes must be 0 or 1")
    # Bin k holds (k / bins, (k + 1) / bins]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    return conf, hit, index


def expected_calibration_error(confidences: npt.ArrayLike, correct: npt.ArrayLike, *, bins: int = 15) -> float:
    """ECE over ``bins`` equal-width confidence bins; 0.0 when there is nothing to measure."""
    conf, hit, index = _binned(confidences, correct, bins)
    if conf.size == 0:
        return 0.0
    conf_sum = np.bincount(index, weights=conf, minlength=bins)
    hit_sum = np.bincount(index, weights=hit, minlength=bins)
    return float(np.abs(hit_sum - conf_sum).sum() / conf.size)


def reliability_table(confidences: npt.ArrayLike, correct: npt.ArrayLike, *, bins: int = 15,
                      ) -> list[dict[str, Any]]:
    """Per non-empty bin: its range, count, mean confidence and accuracy (a reliability diagram)."""
    conf, hit, index = _binned(confidences, correct, bins)
    rows = []
    for k in range(bins):
        chosen = index == k
        n = int(chosen.sum())
        if n:
            rows.append({"low": k / bins, "high": (k + 1) / bins, "count": n,
                         "confidence": round(float(conf[chosen].mean()), 4),
                         "accuracy": round(float(hit[chosen].mean()), 4)})
    return rows


def _logit(scores: F64) -> F64:
    clipped = np.clip(scores, 1e-6, 1 - 1e-6)
    out: F64 = np.log(clipped / (1 - clipped))
    return out


def fit_platt(confidences: npt.ArrayLike, correct: npt.ArrayLike, *, iterations: int = 50) -> tuple[float, float]:
    """``(a, b)`` minimising the log loss of ``sigmoid(a * logit(s) + b)`` against the outcomes (Newton's method)."""
    conf, hit, _ = _binned(confidences, correct, 1)
    if conf.size == 0:
        raise ValueError("no detections to fit a calibration on")
    x = np.stack([_logit(conf), np.ones_like(conf)], axis=1)
    w = np.array([1.0, 0.0])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ w)))
        gradient = x.T @ (p - hit)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w = w - step
        if np.abs(step).max() < 1e-9:
            break
    return float(w[0]), float(w[1])


def apply_platt(confidences: npt.ArrayLike, a: float, b: float) -> F64:
    """Scores mapped through a fitted Platt scaling."""
    conf = np.asarray(confidences, dtype=np.float64)
    out: F64 = 1 / (1 + np.exp(-(a * _logit(conf) + b)))
    return out


# -- calibrating a detector (`fashionbox calibrate`) ---------------------------------------------------

CALIBRATION_FLOOR = 0.05
"""Raw scores fitted on start here: low enough that the map is fitted where the served threshold can
fall, high enough to leave out the thousands of near-zero candidates every image has."""
THRESHOLD_CANDIDATES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
"""Calibrated served thresholds :func:`choose_threshold` considers."""
THRESHOLD_TOLERANCE = 0.005


class CalibrationError(ValueError):
    """A calibration that cannot be fitted as asked (seeds that measure the model, too few detections,
    scores that do not rank right detections first): the command says so in one line."""


@dataclass(frozen=True)
class DetectorCalibration:
    """A fitted Platt map for one detector's scores and what it does, measured on the fitting samples."""

    a: float
    b: float
    detections: int
    """Detections fitted on (raw score above ``floor``)."""
    true_positive_share: float
    ece_before: float
    """ECE (15 bins) of the raw scores of the detections the served threshold keeps."""
    ece_after: float
    """ECE of the same detections' calibrated scores, each half of the images mapped by the fit on the other
    half (an estimate for images the fit has not seen)."""
    score_threshold: float
    """The served threshold chosen in calibrated units (:func:`choose_threshold`)."""
    map50_by_threshold: dict[float, float]
    floor: float = CALIBRATION_FLOOR

    def as_dict(self) -> dict[str, Any]:
        return {"a": round(self.a, 6), "b": round(self.b, 6), "detections": self.detections,
                "true_positive_share": round(self.true_positive_share, 4), "floor": self.floor,
                "ece_before": round(self.ece_before, 4), "ece_after": round(self.ece_after, 4),
                "score_threshold": self.score_threshold,
                "map50_by_threshold": {str(t): round(v, 4) for t, v in self.map50_by_threshold.items()}}


def choose_threshold(map50_by_threshold: dict[float, float], tolerance: float = THRESHOLD_TOLERANCE) -> float:
    """The highest threshold whose mAP@.5 is within ``tolerance`` of the best: among thresholds that
    detect equally well the one sending the fewest detections on to the attribute heads."""
    best = max(map50_by_threshold.values())
    return max(t for t, value in map50_by_threshold.items() if value >= best - tolerance)


def fit_detector_calibration(samples: Sequence[EvalSample], raw: Sequence[Sequence[Prediction]],
                             map50: Callable[[Sequence[Sequence[Prediction]]], float], *,
                             floor: float = CALIBRATION_FLOOR,
                             candidates: Sequence[float] = THRESHOLD_CANDIDATES) -> DetectorCalibration:
    """Fit ``sigmoid(a * logit(s) + b)`` to the outcomes of ``raw`` (uncalibrated predictions above
    ``floor``) and choose the served threshold in calibrated units by mAP@.5 (``map50`` of a
    prediction set). Raises ``ValueError`` with too few detections or no right one to fit on."""
    kept = [[p for p in preds if p.score > floor] for preds in raw]
    scores, correct = detection_outcomes(samples, kept)
    if scores.size < 20 or not 0 < correct.sum() < scores.size:
        raise CalibrationError(f"{scores.size} detections above {floor}, {int(correct.sum())} of them right: too few "
                               f"to fit a calibration on (give more validation images)")
    a, b = fit_platt(scores, correct)
    if not a > 0:
        raise CalibrationError(f"the fitted calibration is not increasing (a = {a:.3g}): the scores do not rank "
                               f"right detections above wrong ones on these samples")
    mapped = iter(apply_platt([p.score for preds in kept for p in preds], a, b).tolist())
    calibrated = [[replace(p, score=next(mapped)) for p in preds] for preds in kept]
    by_threshold = {t: map50([[p for p in preds if p.score > t] for preds in calibrated]) for t in candidates}
    threshold = choose_threshold(by_threshold)
    # The error before and after, on the detections the served threshold keeps: their raw scores, and
    # their calibrated ones with each half of the images mapped by the fit on the other half.
    raw_threshold = float(apply_platt([threshold], 1.0 / a, -b / a)[0])  # the inverse map
    halves = [detection_outcomes(samples[k::2], kept[k::2]) for k in (0, 1)]
    fits = [fit_platt(*half) if 0 < half[1].sum() < half[1].size else (a, b) for half in halves]
    raw_scores = np.concatenate([half[0] for half in halves])
    hits = np.concatenate([half[1] for half in halves])
    crossed = np.concatenate([apply_platt(halves[k][0], *fits[1 - k]) for k in (0, 1)])
    served = raw_scores > raw_threshold
    return DetectorCalibration(a, b, int(scores.size), float(correct.mean()),
                               expected_calibration_error(raw_scores[served], hits[served]),
                               expected_calibration_error(crossed[served], hits[served]),
                               threshold, by_threshold, floor)


VALIDATION_SEEDS = (11, 13)
"""Generated scenes ``fashionbox calibrate`` fits on by default: neither the training seed (1), the
quality bar's test seed (7) nor the false-positive scenes' (9)."""
_FORBIDDEN_SEEDS = {1: "the training seed", 7: "the quality bar's test seed", 9: "the false-positive scenes' seed"}


def _seeds(text: str) -> tuple[int, ...]:
    seeds = tuple(int(part) for part in text.split(",") if part.strip())
    for seed in seeds:
        if seed in _FORBIDDEN_SEEDS:
            raise CalibrationError(f"--seeds {seed} is {_FORBIDDEN_SEEDS[seed]}: calibrating on it would tune to "
                                   f"what measures the model; use validation seeds such as "
                                   f"{','.join(map(str, VALIDATION_SEEDS))}")
    if not seeds:
        raise CalibrationError("--seeds needs at least one seed")
    return seeds


def run_calibrate_cli(args: Any) -> int:
    """``fashionbox calibrate``: fit the detector's score calibration and served threshold on validation
    images; write the calibrated checkpoint (same weights) to ``--out``."""
    import sys

    from fashionbox.commands.evaluation import _coco_samples, coco_metrics, heldout_samples, predictions_from_result
    from fashionbox.models import (
        checkpoint_metadata,
        default_weights,
        file_sha256,
        load_attributes,
        load_detector,
        save_checkpoint,
        verifier_serves,
    )
    from fashionbox.models.pipeline import InProcessPipeline

    detector_path = default_weights("detector") if args.detector == "default" else Path(args.detector)
    attributes_path = default_weights("attributes") if args.attributes == "default" else Path(args.attributes)
    if args.coco and args.images is None:
        raise FileNotFoundError("--coco needs the image folder: --images DIR")
    seeds = () if args.coco else _seeds(args.seeds)  # refused seeds before anything loads
    pipeline = InProcessPipeline.torch_reference(detector_path, attributes_path, score_threshold=args.floor,
                                                 raw_scores=True, threads=args.threads)
    if args.coco:
        # categories and attribute ids decode through the detector's own label map (a --labels subset)
        samples = _coco_samples(args.coco, args.images, pipeline.label_map)
        source = {"coco": Path(args.coco).name, "images": len(samples)}
    else:
        samples = [s for seed in seeds for s in heldout_samples(args.scenes, seed)]
        source = {"generated_seeds": list(seeds), "images": len(samples)}
    raw = []
    for sample in samples:
        (result,) = pipeline.run([sample.data])
        if isinstance(result, Exception):
            raise ValueError(f"{sample.name}: {result}")
        raw.append(predictions_from_result(result, pipeline.label_map))

    def map50(predictions: Sequence[Sequence[Prediction]]) -> float:
        return float(coco_metrics(samples, predictions, pipeline.label_map)["bbox_map50"])

    fit = fit_detector_calibration(samples, raw, map50, floor=args.floor)
    detector, label_map = load_detector(detector_path)
    detector.with_calibration((fit.a, fit.b), fit.score_threshold)
    kept = {k: v for k, v in checkpoint_metadata(detector_path).items()
            if k not in ("format", "kind", "config", "label_map", "calibration")}
    report = {**fit.as_dict(), "fitted_on": source, "uncalibrated_sha256": file_sha256(detector_path)}
    save_checkpoint(args.out, detector, kind="detector", config_json=detector.config.to_json(), label_map=label_map,
                    extra={**kept, "calibration": json.dumps(report, sort_keys=True)})
    report["out"] = str(args.out)
    # The second stage corrects one detector file's scores: a verifier head fitted to the input is not
    # served with the calibrated output (another file) until it is refitted for it.
    classifier, _ = load_attributes(attributes_path)
    report["verifier_refit_needed"] = verifier_serves(classifier, report["uncalibrated_sha256"],
                                                      label_map.num_categories)
    if report["verifier_refit_needed"]:
        print(f"note: {attributes_path.name}'s verifier head (the second stage) was fitted to the input detector; "
              f"it is not served with {args.out} until refitted: "
              f"{verifier_refit_command(args.out, attributes_path, kept.get('train_settings', ''))}", file=sys.stderr)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"calibration sigmoid({fit.a:.4f} * logit(s) + {fit.b:.4f}) fitted on {fit.detections} detections "
              f"({fit.true_positive_share:.1%} right) of {len(samples)} images")
        print(f"expected calibration error {fit.ece_before:.4f} -> {fit.ece_after:.4f} (cross-fitted halves)")
        print(f"served threshold {fit.score_threshold} (calibrated; mAP@.5 there "
              f"{fit.map50_by_threshold[fit.score_threshold]:.4f}, best {max(fit.map50_by_threshold.values()):.4f})")
        print(f"wrote {args.out}")
    return 0


def verifier_refit_command(detector: Path, attributes: Path, train_settings: str) -> str:
    """The command that fits a verifier head for ``detector``, on the distractors its recipe
    (``train_settings``, the checkpoint's metadata) was trained with: kinds and close-ups."""
    from fashionbox.synth.distractors import DEFAULT_DISTRACTOR_KINDS, DISTRACTOR_KINDS

    command = f"fashionbox train --stage verifier --verifier-detector {detector} --attributes-base {attributes}"
    try:
        recipe = json.loads(train_settings)
        kinds = tuple(recipe.get("distractor_kinds", DEFAULT_DISTRACTOR_KINDS))
        closeups = float(recipe.get("closeups", 0.0))
    except (ValueError, AttributeError, TypeError):  # a recipe that is not a JSON object: nothing to add
        return command
    if kinds != DEFAULT_DISTRACTOR_KINDS:
        command += " --distractor-kinds " + ("all" if kinds == DISTRACTOR_KINDS else ",".join(kinds))
    return command + (f" --closeups {closeups:g}" if closeups else "")
