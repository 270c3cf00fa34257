"""The default garment detector: a compact anchor-free single-stage detector (FCOS-style).

Assembled from injected parts (docs/STYLE.md: torchvision detection): a MobileNetV2-style
backbone, an FPN-lite neck and one head per pyramid level. ``forward`` takes the uint8
letterboxed images the ``preprocess`` model makes and returns named tensors, the same in
training and evaluation (the losses live in ``fashionbox.training``)::

    detector = FashionDetector(DetectorConfig(num_classes=12))
    out = detector(pixels_uint8_nhwc)   # DetectorOutputs(boxes [B,N,4], scores [B,C,N], ...)

Boxes are x1, y1, x2, y2 in letterbox pixels; scores are ``sqrt(sigmoid(cls) * sigmoid(ctr))``,
the FCOS ranking score, laid out [B, C, N] as ONNX NonMaxSuppression wants them. A calibrated
detector (``DetectorConfig.score_calibration``, fitted by ``fashionbox calibrate``) maps that score
``s`` to ``sigmoid(a * logit(s) + b)`` inside the graph, so every runtime serves the same calibrated
score and the served threshold is in its units; the map is monotone, so the ranking (and AP) stays.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["IDENTITY_CALIBRATION", "DetectorConfig", "DetectorOutputs", "FashionDetector", "calibrate_scores"]

IDENTITY_CALIBRATION = (1.0, 0.0)

# ImageNet statistics in 0..255 units; normalisation happens inside the graph so the
# served model takes the uint8 pixels straight from ``preprocess``.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class DetectorConfig:
    num_classes: int
    input_size: int = 320
    stem_channels: int = 16
    # (expansion, out_channels, blocks, stride) per backbone stage, MobileNetV2-style.
    stages: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (4, 24, 2, 2),  # stride 4
        (4, 40, 2, 2),  # stride 8  -> P3
        (4, 80, 3, 2),  # stride 16 -> P4
        (4, 128, 2, 2),  # stride 32 -> P5
    )
    neck_channels: int = 64
    head_convs: int = 2
    strides: tuple[int, ...] = (8, 16, 32)
    # Largest box side regressed at each level (FCOS size ranges), in letterbox pixels.
    level_ranges: tuple[float, ...] = (64.0, 128.0, 1e8)
    center_radius: float = 2.5
    extra: dict[str, str] = field(default_factory=dict)
    score_calibration: tuple[float, float] = IDENTITY_CALIBRATION
    """``(a, b)`` of the Platt map the served score goes through; ``(1, 0)`` leaves it as trained."""
    score_threshold: float | None = None
    """The served threshold chosen with the calibration, in its units (the converter's and the reference's
    default for this checkpoint); None: the contract's default (``DEFAULT_SCORE_THRESHOLD``)."""

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        a, b = self.score_calibration
        if not (math.isfinite(a) and math.isfinite(b) and a > 0):
            raise ValueError(f"score_calibration (a, b) needs a finite a > 0 (a monotone map) and a finite b, "
                             f"got {self.score_calibration}")
        if self.score_threshold is not None and not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1), got {self.score_threshold}")
        if self.input_size % max(self.strides):
            raise ValueError(f"input_size {self.input_size} must be a multiple of {max(self.strides)}")
        if len(self.level_ranges) != len(self.strides):
            raise ValueError("level_ranges needs one entry per stride")
        produced, stride = [], 2  # the stem halves the input
        for _, _, _, stage_stride in self.stages:
            stride *= stage_stride
            produced.append(stride)
        if tuple(produced[-len(self.strides):]) != self.strides:
            raise ValueError(f"strides {self.strides} do not match the backbone's last stages {produced}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DetectorConfig:
        data = json.loads(text)
        data["stages"] = tuple(tuple(s) for s in data["stages"])
        for key in ("strides", "level_ranges", "score_calibration"):
            if key in data:  # checkpoints from before calibration have none: the identity
                data[key] = tuple(data[key])
        return cls(**data)

    @property
    def calibrated(self) -> bool:
        return tuple(self.score_calibration) != IDENTITY_CALIBRATION

    @property
    def served_score_threshold(self) -> float:
        """The threshold this detector is served at by default: its own (a calibrated one's), else the contract's."""
        from fashionbox import contract

        return contract.DEFAULT_SCORE_THRESHOLD if self.score_threshold is None else self.score_threshold

    @property
    def num_locations(self) -> int:
        return sum((self.input_size // s) ** 2 for s in self.strides)


class DetectorOutputs(NamedTuple):
    boxes: Tensor
    """[B, N, 4] decoded x1, y1, x2, y2 in letterbox pixels."""
    scores: Tensor
    """[B, C, N] ranking scores in [0, 1]."""
    cls_logits: Tensor
    """[B, N, C] raw classification logits (training)."""
    ltrb: Tensor
    """[B, N, 4] distances to the box sides in pixels (training)."""
    ctr_logits: Tensor
    """[B, N] raw centerness logits (training)."""


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn(cin, hidden))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.block(x)
        return x + out if self.residual else out


class Backbone(nn.Module):
    """MobileNetV2-style; returns the feature maps at strides 8, 16 and 32."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.stem = _conv_bn(3, config.stem_channels, 3, 2)
        channels = config.stem_channels
        self.stages = nn.ModuleList()
        for expansion, cout, blocks, stride in config.stages:
            layers = [InvertedResidual(channels if i == 0 else cout, cout, stride if i == 0 else 1, expansion)
                      for i in range(blocks)]
            self.stages.append(nn.Sequential(*layers))
            channels = cout
        self.out_channels = tuple(s[1] for s in config.stages[-3:])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[-3:]


class FPNLite(nn.Module):
    """Top-down FPN with depthwise-separable smoothing: cheap multi-scale features."""

    def __init__(self, in_channels: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_conv_bn(c, channels) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(_conv_bn(channels, channels, 3, groups=channels), _conv_bn(channels, channels))
            for _ in in_channels
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [lat(f) for lat, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], scale_factor=2.0, mode="nearest")
        return [smooth(x) for smooth, x in zip(self.smooth, laterals, strict=True)]


class LevelHead(nn.Module):
    """Classification and box towers for one pyramid level."""

    def __init__(self, channels: int, num_classes: int, convs: int) -> None:
        super().__init__()

        def tower() -> nn.Sequential:
            return nn.Sequential(*[
                nn.Sequential(_conv_bn(channels, channels, 3, groups=channels), _conv_bn(channels, channels))
                for _ in range(convs)
            ])

        self.cls_tower = tower()
        self.reg_tower = tower()
        self.cls = nn.Conv2d(channels, num_classes, 1)
        self.reg = nn.Conv2d(channels, 4, 1)
        self.ctr = nn.Conv2d(channels, 1, 1)
        # Focal-loss prior: start with ~1 % foreground so early training is not swamped.
        assert self.cls.bias is not None and self.reg.bias is not None
        nn.init.constant_(self.cls.bias, -4.6)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.01)
        nn.init.constant_(self.reg.bias, 1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.cls_tower(x)
        r = self.reg_tower(x)
        return self.cls(c), self.reg(r), self.ctr(r)


class FashionDetector(nn.Module):
    mean: Tensor
    std: Tensor
    centers: Tensor
    location_strides: Tensor

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.neck = FPNLite(self.backbone.out_channels, config.neck_channels)
        self.heads = nn.ModuleList(
            LevelHead(config.neck_channels, config.num_classes, config.head_convs) for _ in config.strides
        )
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        centers, strides = self._locations(config)
        self.register_buffer("centers", centers, persistent=False)
        self.register_buffer("location_strides", strides, persistent=False)

    @staticmethod
    def _locations(config: DetectorConfig) -> tuple[Tensor, Tensor]:
        centers, strides = [], []
        for stride in config.strides:
            n = config.input_size // stride
            coords = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
            yy, xx = torch.meshgrid(coords, coords, indexing="ij")
            centers.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
            strides.append(torch.full((n * n,), float(stride)))
        return torch.cat(centers), torch.cat(strides)

    def forward(self, pixels: Tensor) -> DetectorOutputs:
        """``pixels``: uint8 (or float 0..255) [B, S, S, 3] RGB letterboxed images."""
        x = pixels.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        features = self.neck(self.backbone(x))
        cls_parts, reg_parts, ctr_parts = [], [], []
        for head, feature in zip(self.heads, features, strict=True):
            cls, reg, ctr = head(feature)
            cls_parts.append(cls.flatten(2))
            reg_parts.append(reg.flatten(2))
            ctr_parts.append(ctr.flatten(2))
        cls_logits = torch.cat(cls_parts, dim=2)  # [B, C, N]
        reg = torch.cat(reg_parts, dim=2).transpose(1, 2)  # [B, N, 4]
        ctr_logits = torch.cat(ctr_parts, dim=2)[:, 0, :]  # [B, N]
        ltrb = F.softplus(reg) * self.location_strides[None, :, None]
        centers = self.centers[None]
        boxes = torch.cat([centers - ltrb[..., :2], centers + ltrb[..., 2:]], dim=2)
        scores = torch.sqrt(torch.sigmoid(cls_logits) * torch.sigmoid(ctr_logits)[:, None, :])
        if self.config.calibrated:
            scores = calibrate_scores(scores, *self.config.score_calibration)
        return DetectorOutputs(boxes, scores, cls_logits.transpose(1, 2), ltrb, ctr_logits)

    def with_calibration(self, calibration: tuple[float, float] = IDENTITY_CALIBRATION,
                         score_threshold: float | None = None) -> FashionDetector:
        """This detector (the same module, its weights unchanged) serving scores through ``calibration``
        with ``score_threshold`` as its served threshold; with neither, the raw ranking score and the
        contract's threshold, as training needs it (a calibration fitted to other weights is wrong
        after any step)."""
        self.config = replace(self.config, score_calibration=(float(calibration[0]), float(calibration[1])),
                              score_threshold=score_threshold)
        return self


def calibrate_scores(scores: Tensor, a: float, b: float) -> Tensor:
    """``sigmoid(a * logit(s) + b)``; a score of 0 stays 0 and 1 stays 1 (``logit`` is then infinite)."""
    logit = torch.log(scores) - torch.log1p(-scores)
    return torch.sigmoid(a * logit + b)
