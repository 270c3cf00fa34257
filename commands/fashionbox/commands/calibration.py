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

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fashionbox.commands.evaluation import EvalSample, Prediction

__all__ = ["apply_platt", "detection_outcomes", "expected_calibration_error", "fit_platt", "reliability_table"]

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
