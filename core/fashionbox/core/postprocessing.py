"""Turning raw network outputs into detections: the numpy steps after the ONNX graphs.

The Triton ``detector`` and ``postprocess`` models and the in-process reference pipeline call
these same functions, so served results and reference results cannot drift apart. Pure numpy:
no Triton, no ONNX Runtime, no torch.

Usage::

    rows = gather_detections(boxes, scores, selected, max_detections=100)   # one per image
    rows[0].boxes, rows[0].scores, rows[0].classes                           # letterbox px, sorted
    boxes, scores, classes = stack_padded(rows)                              # one tensor per field
    result = finish_detections(rows[0], letterbox_info, probs, label_map)    # original px, masked

With an attribute network that has a verifier head, each image's detections are re-scored by its
``score_offsets`` before they are finished; ``keep`` indexes every per-detection array that came
with them (attribute probabilities, crop masks, vectors)::

    row, keep = rescore_detections(rows[0], offsets, score_threshold=0.02)
    result = finish_detections(row, letterbox_info, probs[keep], label_map)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fashionbox import contract
from fashionbox.contract.labels import LabelMap

if TYPE_CHECKING:  # imaging pulls in Pillow; this module needs only the type
    from fashionbox.core.imaging import LetterboxInfo

__all__ = [
    "PAD_CLASS",
    "DetectorOutput",
    "ImageResult",
    "attribute_mask",
    "detections_from_kept",
    "detector_outputs",
    "finish_detections",
    "gather_detections",
    "mask_attribute_scores",
    "rescore_detections",
    "stack_image_results",
    "stack_padded",
    "stack_padded_masks",
    "unpad",
]

Float32Array = npt.NDArray[np.float32]
Int32Array = npt.NDArray[np.int32]
AnyArray = npt.NDArray[Any]

PAD_CLASS = -1
"""Class index of padding rows in :func:`stack_padded` (scores and boxes there are 0)."""


@dataclass(frozen=True)
class DetectorOutput:
    """The detections of one image, best first."""

    boxes: Float32Array
    """float32 ``[n, 4]``: x1, y1, x2, y2 in letterbox pixels."""
    scores: Float32Array
    """float32 ``[n]``, sorted descending."""
    classes: Int32Array
    """int32 ``[n]``: category indices into the label map."""
    mask_coeffs: Float32Array | None = None
    """Segmenting families only: float32 ``[n, K]``, each detection's coefficients over ``protos``."""
    protos: Float32Array | None = None
    """Segmenting families only: float32 ``[K, h, w]``, the image's mask prototypes."""

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def subset(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> DetectorOutput:
        """The detections ``keep`` selects (a boolean mask, or indices in the order wanted)."""
        return DetectorOutput(
            boxes=np.ascontiguousarray(self.boxes[keep]),
            scores=np.ascontiguousarray(self.scores[keep]),
            classes=np.ascontiguousarray(self.classes[keep]),
            mask_coeffs=None if self.mask_coeffs is None else np.ascontiguousarray(self.mask_coeffs[keep]),
            protos=self.protos,
        )

    @classmethod
    def empty(cls, protos: Float32Array | None = None) -> DetectorOutput:
        """No detections (of a segmenting graph when ``protos`` ``[K, h, w]`` is given)."""
        return cls(
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros((0,), dtype=np.float32),
            classes=np.zeros((0,), dtype=np.int32),
            mask_coeffs=None if protos is None else np.zeros((0, protos.shape[0]), dtype=np.float32),
            protos=protos,
        )


def gather_detections(
    boxes: AnyArray,
    scores: AnyArray,
    selected: AnyArray,
    *,
    max_detections: int,
    mask_coeffs: AnyArray | None = None,
    protos: AnyArray | None = None,
) -> list[DetectorOutput]:
    """Collect the boxes ONNX ``NonMaxSuppression`` kept, per image, sorted by score.

    ``boxes`` is float32 ``[B, N, 4]``, ``scores`` float32 ``[B, C, N]`` and ``selected`` int64
    ``[M, 3]`` rows of ``(batch, class, box)``. NMS runs per class, so one box may be kept for
    several classes; each kept (class, box) pair is one detection. The order is by score
    descending, ties by box index then class, so the result does not depend on the order in which
    a runtime happens to list ``selected``. At most ``max_detections`` are kept per image.

    A segmenting graph also gives ``mask_coeffs`` float32 ``[B, N, K]`` and ``protos`` float32
    ``[B, K, h, w]`` (both or neither): each detection then carries its box's coefficients (rows as
    ``boxes``) and its image's prototypes.

    Raises ``ValueError`` when the shapes disagree or ``selected`` points outside the tensors:
    that means the ONNX graph breaks the contract, and silently dropping rows would hide it.
    """
    if max_detections < 1:
        raise ValueError(f"max_detections must be at least 1, got {max_detections}")
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    selected = np.asarray(selected)
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be [B, N, 4], got shape {boxes.shape}")
    batch, num_boxes = boxes.shape[0], boxes.shape[1]
    if scores.ndim != 3 or scores.shape[0] != batch or scores.shape[2] != num_boxes:
        raise ValueError(f"scores must be [B={batch}, C, N={num_boxes}], got shape {scores.shape}")
    num_classes = scores.shape[1]
    if (mask_coeffs is None) != (protos is None):
        raise ValueError("mask_coeffs and protos come together (a segmenting graph gives both)")
    if mask_coeffs is not None and protos is not None:
        mask_coeffs = np.asarray(mask_coeffs, dtype=np.float32)
        protos = np.asarray(protos, dtype=np.float32)
        if mask_coeffs.ndim != 3 or mask_coeffs.shape[:2] != (batch, num_boxes):
            raise ValueError(f"mask_coeffs must be [B={batch}, N={num_boxes}, K], got shape {mask_coeffs.shape}")
        if protos.ndim != 4 or protos.shape[:2] != (batch, mask_coeffs.shape[2]):
            raise ValueError(f"protos must be [B={batch}, K={mask_coeffs.shape[2]}, h, w], got shape {protos.shape}")
    if selected.size == 0:
        return [DetectorOutput.empty(None if protos is None else protos[b]) for b in range(batch)]
    if selected.ndim != 2 or selected.shape[1] != 3:
        raise ValueError(f"selected must be [M, 3], got shape {selected.shape}")
    if not np.issubdtype(selected.dtype, np.integer):
        raise ValueError(f"selected must hold integers, got {selected.dtype}")

    b_idx = selected[:, 0].astype(np.int64)
    c_idx = selected[:, 1].astype(np.int64)
    n_idx = selected[:, 2].astype(np.int64)
    for name, values, limit in (("batch", b_idx, batch), ("class", c_idx, num_classes), ("box", n_idx, num_boxes)):
        if values.min() < 0 or values.max() >= limit:
            raise ValueError(f"selected holds a {name} index outside [0, {limit}): {values.min()}..{values.max()}")

    return detections_from_kept(selected, boxes[b_idx, n_idx], scores[b_idx, c_idx, n_idx],
                                batch=batch, max_detections=max_detections,
                                kept_mask_coeffs=None if mask_coeffs is None else mask_coeffs[b_idx, n_idx],
                                protos=protos)


def detections_from_kept(
    selected: AnyArray, kept_boxes: AnyArray, kept_scores: AnyArray, *, batch: int, max_detections: int,
    kept_mask_coeffs: AnyArray | None = None, protos: AnyArray | None = None,
) -> list[DetectorOutput]:
    """:func:`gather_detections` from the kept rows alone: ``selected [M, 3]``, boxes ``[M, 4]``, scores ``[M]``.

    For a runtime that gathers on its device and copies only what NMS kept (``TorchDetector``).
    A segmenting graph's ``kept_mask_coeffs [M, K]`` and ``protos [B, K, h, w]`` go with them.
    """
    selected = np.asarray(selected).reshape(-1, 3)
    b_idx, c_idx, n_idx = (selected[:, k].astype(np.int64) for k in range(3))
    kept_boxes = np.asarray(kept_boxes, dtype=np.float32).reshape(-1, 4)
    kept_scores = np.asarray(kept_scores, dtype=np.float32).reshape(-1)
    if not len(kept_boxes) == len(kept_scores) == len(selected):
        raise ValueError(f"{len(selected)} kept rows but {len(kept_boxes)} boxes and {len(kept_scores)} scores")
    # np.lexsort sorts by the last key first: batch, then score descending, then box, then class.
    coeffs = None if kept_mask_coeffs is None else np.asarray(kept_mask_coeffs, dtype=np.float32)
    if coeffs is not None and (coeffs.ndim != 2 or len(coeffs) != len(selected)):
        raise ValueError(f"{len(selected)} kept rows but mask coefficients of shape {coeffs.shape}")
    if (coeffs is None) != (protos is None):
        raise ValueError("kept_mask_coeffs and protos come together (a segmenting graph gives both)")
    order = np.lexsort((c_idx, n_idx, -kept_scores, b_idx))
    results: list[DetectorOutput] = []
    sorted_batch = b_idx[order]
    for image in range(batch):
        rows = order[sorted_batch == image][:max_detections]
        results.append(
            DetectorOutput(
                boxes=np.ascontiguousarray(kept_boxes[rows]),
                scores=np.ascontiguousarray(kept_scores[rows]),
                classes=np.ascontiguousarray(c_idx[rows], dtype=np.int32),
                mask_coeffs=None if coeffs is None else np.ascontiguousarray(coeffs[rows]),
                protos=None if protos is None else np.asarray(protos[image], dtype=np.float32),
            )
        )
    return results


def attribute_mask(label_map: LabelMap) -> npt.NDArray[np.bool_]:
    """bool ``[num_categories, num_attribute_labels]``: which attribute scores each category reports.

    Sleeve length means nothing for a shoe; the heads still produce a score for it, and masking
    here keeps those meaningless numbers out of every result.
    """
    mask = np.zeros((label_map.num_categories, label_map.num_attribute_labels), dtype=bool)
    for category, applies in enumerate(label_map.applicability):
        for (_, start, stop), group_applies in zip(label_map.group_offsets, applies, strict=True):
            if group_applies:
                mask[category, start:stop] = True
    return mask


def mask_attribute_scores(probs: AnyArray, classes: AnyArray, label_map: LabelMap) -> Float32Array:
    """float32 ``[n, A]``: ``probs`` with the groups that do not apply to each row's class set to 0."""
    probs = np.asarray(probs, dtype=np.float32)
    classes = np.asarray(classes).reshape(-1)
    expected = label_map.num_attribute_labels
    if probs.ndim != 2 or probs.shape[1] != expected or probs.shape[0] != classes.shape[0]:
        raise ValueError(
            f"attribute probs must be [n={classes.shape[0]}, A={expected}] for label map "
            f"{label_map.name!r}, got shape {probs.shape}"
        )
    if classes.size and (classes.min() < 0 or classes.max() >= label_map.num_categories):
        raise ValueError(f"class index outside [0, {label_map.num_categories}): {classes.min()}..{classes.max()}")
    mask = attribute_mask(label_map)[classes.astype(np.int64)]
    return np.where(mask, probs, np.float32(0.0)).astype(np.float32)


def stack_padded(rows: Sequence[DetectorOutput]) -> tuple[Float32Array, Float32Array, Int32Array]:
    """Stack per-image detections into ``[k, n_max, 4]``, ``[k, n_max]``, ``[k, n_max]`` tensors.

    A Triton request may carry several images, and a tensor must be rectangular, so shorter rows
    are padded with zero boxes, zero scores and class :data:`PAD_CLASS`. With one image per
    request (the common case) nothing is padded.
    """
    count = len(rows)
    width = max((len(r) for r in rows), default=0)
    boxes = np.zeros((count, width, 4), dtype=np.float32)
    scores = np.zeros((count, width), dtype=np.float32)
    classes = np.full((count, width), PAD_CLASS, dtype=np.int32)
    for i, row in enumerate(rows):
        n = len(row)
        boxes[i, :n] = row.boxes
        scores[i, :n] = row.scores
        classes[i, :n] = row.classes
    return boxes, scores, classes


def stack_padded_masks(rows: Sequence[DetectorOutput]) -> tuple[Float32Array, Float32Array]:
    """A segmenting graph's ``DET_MASK_COEFFS [k, n_max, K]`` and ``DET_PROTOS [k, K, h, w]``.

    Rows as :func:`stack_padded`'s (padding rows are zeros). Raises ``ValueError`` for rows
    without masks: the graph does not segment.
    """
    if not rows:
        raise ValueError("no images to stack")
    if any(r.mask_coeffs is None or r.protos is None for r in rows):
        raise ValueError("these detections carry no mask coefficients: the detector graph does not segment")
    protos = np.stack([np.asarray(r.protos, dtype=np.float32) for r in rows])
    width = max(len(r) for r in rows)
    coeffs = np.zeros((len(rows), width, protos.shape[1]), dtype=np.float32)
    for i, row in enumerate(rows):
        coeffs[i, :len(row)] = row.mask_coeffs
    return coeffs, protos


def detector_outputs(rows: Sequence[DetectorOutput], *, segments: bool) -> dict[str, AnyArray]:
    """The ``detector`` step's outputs for ``rows`` (one request's images): DET_BOXES, DET_SCORES,
    DET_CLASSES padded by :func:`stack_padded`, and with ``segments`` DET_MASK_COEFFS and DET_PROTOS."""
    boxes, scores, classes = stack_padded(rows)
    outputs: dict[str, AnyArray] = {contract.DET_BOXES.name: boxes, contract.DET_SCORES.name: scores,
                                    contract.DET_CLASSES.name: classes}
    if segments:
        outputs[contract.DET_MASK_COEFFS.name], outputs[contract.DET_PROTOS.name] = stack_padded_masks(rows)
    return outputs


def unpad(boxes: AnyArray, scores: AnyArray, classes: AnyArray) -> DetectorOutput:
    """One row of :func:`stack_padded` tensors back to a :class:`DetectorOutput` (padding dropped)."""
    classes = np.asarray(classes).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if not boxes.shape[0] == scores.shape[0] == classes.shape[0]:
        raise ValueError(
            f"detection tensors disagree in length: boxes {boxes.shape}, scores {scores.shape}, classes {classes.shape}"
        )
    keep = classes != PAD_CLASS
    return DetectorOutput(
        boxes=np.ascontiguousarray(boxes[keep]),
        scores=np.ascontiguousarray(scores[keep]),
        classes=np.ascontiguousarray(classes[keep], dtype=np.int32),
    )


def rescore_detections(detections: DetectorOutput, offsets: AnyArray, *,
                       score_threshold: float) -> tuple[DetectorOutput, npt.NDArray[np.int64]]:
    """The second stage: ``detections`` re-scored by the verifier head's ``offsets`` (float32 ``[n, C]``,
    logit offsets <= 0 per category, rows as the detections), those not above ``score_threshold`` dropped
    (as NMS drops them), best first.

    Each score becomes ``sigmoid(logit(score) + offsets[i, class_i])`` (in float64, clipped away from 0 and
    1 so a score of exactly 1 stays finite); ties keep the detector's order. Returns the re-scored
    detections and ``keep``, the indices of the rows kept in their new order, to index every other
    per-detection array with (a segmenting detection's ``mask_coeffs`` are indexed here).
    """
    n = len(detections)
    offsets = np.asarray(offsets, dtype=np.float32)
    if offsets.ndim != 2 or offsets.shape[0] != n:
        raise ValueError(f"score offsets must be [{n}, C] for {n} detections, got shape {offsets.shape}")
    if n and (detections.classes.min() < 0 or detections.classes.max() >= offsets.shape[1]):
        raise ValueError(f"a detection's category is outside the verifier's {offsets.shape[1]} categories")
    p = np.clip(detections.scores.astype(np.float64), 1e-7, 1.0 - 1e-7)
    logits = np.log(p / (1.0 - p)) + offsets[np.arange(n), detections.classes].astype(np.float64)
    scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    keep = np.flatnonzero(scores > score_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")].astype(np.int64)
    return replace(detections.subset(keep), scores=np.ascontiguousarray(scores[keep])), keep


@dataclass(frozen=True)
class ImageResult:
    """The final numeric result for one image, as the ensemble returns it."""

    boxes: Float32Array
    """float32 ``[n, 4]``: x1, y1, x2, y2 in original image pixels, clipped to the image."""
    scores: Float32Array
    """float32 ``[n]``, sorted descending."""
    categories: Int32Array
    """int32 ``[n]``."""
    attribute_scores: Float32Array
    """float32 ``[n, A]``: per-group softmax, groups that do not apply to the category are 0."""

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def finish_detections(
    detections: DetectorOutput,
    info: LetterboxInfo,
    attribute_probs: AnyArray,
    label_map: LabelMap,
) -> ImageResult:
    """Map one image's detections back to original pixels and attach its masked attribute scores."""
    probs = np.asarray(attribute_probs, dtype=np.float32).reshape(len(detections), label_map.num_attribute_labels)
    return ImageResult(
        boxes=np.ascontiguousarray(info.to_original(detections.boxes), dtype=np.float32),
        scores=detections.scores,
        categories=detections.classes,
        attribute_scores=mask_attribute_scores(probs, detections.classes, label_map),
    )


def stack_image_results(
    results: Sequence[ImageResult], *, num_attribute_labels: int
) -> tuple[Float32Array, Float32Array, Int32Array, Float32Array]:
    """``BOXES [k, n, 4]``, ``SCORES [k, n]``, ``CATEGORIES [k, n]``, ``ATTRIBUTE_SCORES [k, n, A]``.

    Padded like :func:`stack_padded`: rows past an image's own detections have category
    :data:`PAD_CLASS` and zeros elsewhere.
    """
    count = len(results)
    width = max((len(r) for r in results), default=0)
    boxes = np.zeros((count, width, 4), dtype=np.float32)
    scores = np.zeros((count, width), dtype=np.float32)
    categories = np.full((count, width), PAD_CLASS, dtype=np.int32)
    attributes = np.zeros((count, width, num_attribute_labels), dtype=np.float32)
    for i, result in enumerate(results):
        n = len(result)
        boxes[i, :n] = result.boxes
        scores[i, :n] = result.scores
        categories[i, :n] = result.categories
        attributes[i, :n] = result.attribute_scores
    return boxes, scores, categories, attributes
