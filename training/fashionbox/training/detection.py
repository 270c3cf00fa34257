"""FCOS target assignment and losses for ``FashionDetector``.

Each location of each pyramid level is assigned to at most one ground-truth box: the
location lies inside the box and within ``center_radius * stride`` of its centre, the box's
largest side distance falls in the level's size range, and among several candidates the
smallest box wins. Losses: sigmoid focal loss for classes, GIoU for boxes (weighted by the
centerness target), binary cross-entropy for centerness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from fashionbox.models.detector import DetectorConfig, DetectorOutputs

__all__ = ["DetectionLoss", "DetectionTargets", "assign_targets", "detection_loss"]


@dataclass(frozen=True)
class DetectionTargets:
    labels: Tensor  # int64 [B, N], -1 for background
    ltrb: Tensor  # float [B, N, 4] distances to the assigned box's sides
    centerness: Tensor  # float [B, N]


@dataclass(frozen=True)
class DetectionLoss:
    total: Tensor
    classification: Tensor
    box: Tensor
    centerness: Tensor
    positives: int


def _level_bounds(config: DetectorConfig, strides: Tensor) -> tuple[Tensor, Tensor]:
    lower = torch.zeros_like(strides)
    upper = torch.zeros_like(strides)
    previous = 0.0
    for stride, bound in zip(config.strides, config.level_ranges, strict=True):
        mask = strides == float(stride)
        lower[mask] = previous
        upper[mask] = bound
        previous = bound
    return lower, upper


def assign_targets(config: DetectorConfig, centers: Tensor, strides: Tensor,
                   boxes: list[Tensor], classes: list[Tensor]) -> DetectionTargets:
    """``centers [N, 2]``, ``strides [N]``; per image ``boxes [G, 4]`` and ``classes [G]``."""
    lower, upper = _level_bounds(config, strides)
    n = centers.shape[0]
    labels, ltrbs, ctrs = [], [], []
    for gt_boxes, gt_classes in zip(boxes, classes, strict=True):
        if gt_boxes.numel() == 0:
            labels.append(torch.full((n,), -1, dtype=torch.int64))
            ltrbs.append(torch.zeros((n, 4)))
            ctrs.append(torch.zeros(n))
            continue
        cx, cy = centers[:, 0:1], centers[:, 1:2]  # [N, 1]
        ltrb = torch.stack(
            [cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], dim=2
        )  # [N, G, 4]
        inside = ltrb.min(dim=2).values > 0
        gcx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
        gcy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
        radius = config.center_radius * strides[:, None]
        near_center = ((cx - gcx).abs() < radius) & ((cy - gcy).abs() < radius)
        extent = ltrb.max(dim=2).values
        in_level = (extent >= lower[:, None]) & (extent <= upper[:, None])
        valid = inside & near_center & in_level
        area = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None, :].expand(n, -1)
        area = torch.where(valid, area, torch.full_like(area, float("inf")))
        best_area, best = area.min(dim=1)
        positive = torch.isfinite(best_area)
        chosen = ltrb[torch.arange(n), best]  # [N, 4]
        label = torch.where(positive, gt_classes[best], torch.full_like(best, -1))
        lr = chosen[:, [0, 2]].clamp(min=1e-6)
        tb = chosen[:, [1, 3]].clamp(min=1e-6)
        ctr = torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values))
        labels.append(label)
        ltrbs.append(torch.where(positive[:, None], chosen, torch.zeros_like(chosen)))
        ctrs.append(torch.where(positive, ctr, torch.zeros_like(ctr)))
    return DetectionTargets(torch.stack(labels), torch.stack(ltrbs), torch.stack(ctrs))


def _giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """GIoU loss between boxes given as side distances from the same location ``[n, 4]``."""
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inter_w = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 2], target[:, 2])
    inter_h = torch.minimum(pred[:, 1], target[:, 1]) + torch.minimum(pred[:, 3], target[:, 3])
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    union = pred_area + target_area - inter
    iou = inter / union.clamp(min=1e-6)
    enclose_w = torch.maximum(pred[:, 0], target[:, 0]) + torch.maximum(pred[:, 2], target[:, 2])
    enclose_h = torch.maximum(pred[:, 1], target[:, 1]) + torch.maximum(pred[:, 3], target[:, 3])
    enclose = (enclose_w * enclose_h).clamp(min=1e-6)
    return 1 - (iou - (enclose - union) / enclose)


def _focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** gamma).sum()


def detection_loss(outputs: DetectorOutputs, targets: DetectionTargets, num_classes: int) -> DetectionLoss:
    positive = targets.labels >= 0
    num_pos = int(positive.sum())
    normaliser = max(float(num_pos), 1.0)
    one_hot = torch.zeros_like(outputs.cls_logits)
    pos_idx = positive.nonzero(as_tuple=True)
    one_hot[pos_idx[0], pos_idx[1], targets.labels[positive]] = 1.0
    cls_loss = _focal_loss(outputs.cls_logits, one_hot) / normaliser
    if num_pos:
        ctr_target = targets.centerness[positive]
        giou = _giou_loss(outputs.ltrb[positive], targets.ltrb[positive])
        box_loss = (giou * ctr_target).sum() / ctr_target.sum().clamp(min=1e-6)
        ctr_loss = F.binary_cross_entropy_with_logits(outputs.ctr_logits[positive], ctr_target,
                                                      reduction="sum") / normaliser
    else:
        box_loss = outputs.ltrb.sum() * 0.0
        ctr_loss = outputs.ctr_logits.sum() * 0.0
    total = cls_loss + 2.0 * box_loss + ctr_loss
    return DetectionLoss(total, cls_loss.detach(), box_loss.detach(), ctr_loss.detach(), num_pos)
