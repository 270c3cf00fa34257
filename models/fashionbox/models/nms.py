"""Non-maximum suppression in PyTorch with the semantics of ONNX ``NonMaxSuppression``.

The served detector runs NMS inside its ONNX graph (``NonMaxSuppression``, opset 11+, which
TensorRT also implements); the in-process reference pipeline uses :func:`nms_onnx_semantics`
so the two can be compared detection for detection, and the PyTorch runner (CUDA or CPU) uses
:func:`nms_batched`, which gives the same selection without a Python loop over images and
classes. Semantics copied from the ONNX operator spec:
per batch and class, candidates with ``score > score_threshold`` in descending score order,
a candidate is dropped when its IoU with a kept box is ``> iou_threshold``, at most
``max_per_class`` kept; output rows are ``(batch, class, box)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NmsSettings", "box_iou", "nms_batched", "nms_onnx_semantics"]

from dataclasses import dataclass

from fashionbox import contract


@dataclass(frozen=True)
class NmsSettings:
    score_threshold: float = contract.DEFAULT_SCORE_THRESHOLD
    iou_threshold: float = contract.DEFAULT_IOU_THRESHOLD
    max_per_class: int = contract.DEFAULT_MAX_DETECTIONS
    max_detections: int = contract.DEFAULT_MAX_DETECTIONS

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold < 1.0 or not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError("score_threshold must lie in [0, 1) and iou_threshold in (0, 1]")
        if self.max_per_class < 1 or self.max_detections < 1:
            raise ValueError("max_per_class and max_detections must be >= 1")


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a [..., n, 4]`` and ``b [..., m, 4]`` (x1, y1, x2, y2) -> ``[..., n, m]``."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def nms_onnx_semantics(boxes: Tensor, scores: Tensor, settings: NmsSettings) -> Tensor:
    """``boxes [B, N, 4]``, ``scores [B, C, N]`` -> selected ``[M, 3]`` int64 (batch, class, box)."""
    rows: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            candidates = torch.nonzero(scores[b, c] > settings.score_threshold).flatten()
            if candidates.numel() == 0:
                continue
            order = candidates[torch.argsort(scores[b, c, candidates], descending=True, stable=True)]
            ious = box_iou(boxes[b, order], boxes[b, order])
            kept: list[int] = []
            suppressed = torch.zeros(len(order), dtype=torch.bool)
            for i in range(len(order)):
                if suppressed[i]:
                    continue
                kept.append(i)
                if len(kept) == settings.max_per_class:
                    break
                suppressed |= ious[i] > settings.iou_threshold
            rows.extend((b, c, int(order[i])) for i in kept)
    if not rows:
        return torch.zeros((0, 3), dtype=torch.int64)
    return torch.tensor(rows, dtype=torch.int64)


def nms_batched(boxes: Tensor, scores: Tensor, settings: NmsSettings, *, pre_nms_top_k: int = 512) -> Tensor:
    """:func:`nms_onnx_semantics` for every image and class at once, on the tensors' device.

    Per (image, class) the ``pre_nms_top_k`` best candidates are sorted by score, and greedy NMS is
    found as the fixed point of "a candidate is kept when above the threshold and no kept,
    better-scored candidate overlaps it by more than ``iou_threshold``" (Cluster-NMS): the first
    ``t`` ranks are final after ``t`` rounds, and a trained detector's few candidates settle in a
    handful, each round one batched tensor operation instead of a loop per box. The kept set equals
    ONNX ``NonMaxSuppression``'s unless more than ``pre_nms_top_k`` candidates of one class in one
    image pass ``score_threshold``; among exactly tied scores either may keep a different box.

    ``boxes [B, N, 4]``, ``scores [B, C, N]`` -> selected ``[M, 3]`` int64 (batch, class, box), on
    the input's device.
    """
    if pre_nms_top_k < 1:
        raise ValueError(f"pre_nms_top_k must be at least 1, got {pre_nms_top_k}")
    batch, num_classes, num_boxes = scores.shape
    boxes, scores = boxes.float(), scores.float()
    k = min(pre_nms_top_k, num_boxes)
    top_scores, order = scores.topk(k, dim=2, sorted=True)  # [B, C, k]
    valid = top_scores > settings.score_threshold
    # Only as many ranks as the busiest (image, class) has candidates: one host sync, small matrices.
    k = int(valid.sum(dim=2).max().item()) if valid.numel() else 0
    if k == 0:
        return torch.zeros((0, 3), dtype=torch.int64, device=scores.device)
    order, valid = order[..., :k], valid[..., :k]
    candidates = torch.gather(boxes[:, None].expand(batch, num_classes, num_boxes, 4), 2,
                              order[..., None].expand(batch, num_classes, k, 4))  # [B, C, k, 4]
    # suppresses[i, j]: candidate i, ranked before j, overlaps j too much.
    suppresses = (box_iou(candidates, candidates) > settings.iou_threshold).triu(diagonal=1)  # [B, C, k, k]
    keep = valid
    for _ in range(k):
        blocked = (suppresses & keep[..., :, None]).any(dim=-2)
        updated = valid & ~blocked
        if torch.equal(updated, keep):
            break
        keep = updated
    keep &= keep.cumsum(dim=2) <= settings.max_per_class
    b, c, rank = torch.nonzero(keep, as_tuple=True)
    return torch.stack([b, c, order[b, c, rank]], dim=1).to(torch.int64)
