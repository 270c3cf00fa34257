"""Attribute heads: a small crop classifier with one softmax head per attribute group.

Input is what ``fashionbox.core.imaging.crop_garments`` makes: uint8 [B, C, C, 3] RGB crops of
detected garments. ``forward`` returns the per-group logits (a dict keyed by group index) and
``probabilities`` concatenates the per-group softmaxes in label-map order, which is the
served output (``ATTRIBUTE_PROBS``)::

    model = AttributeClassifier(AttributeConfig(group_sizes=(5, 5, 5)))
    probs = model.probabilities(crops)   # [B, 15]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from fashionbox.models.detector import PIXEL_MEAN, PIXEL_STD, InvertedResidual, _conv_bn

__all__ = ["AttributeClassifier", "AttributeConfig"]


@dataclass(frozen=True)
class AttributeConfig:
    group_sizes: tuple[int, ...]
    crop_size: int = 96
    stem_channels: int = 24
    stages: tuple[tuple[int, int, int, int], ...] = (
        (1, 24, 1, 1),
        (4, 32, 2, 2),
        (4, 64, 2, 2),
        (4, 96, 2, 2),
    )
    embedding: int = 192
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not self.group_sizes or min(self.group_sizes) < 2:
            raise ValueError("every attribute group needs at least two labels")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AttributeConfig:
        data = json.loads(text)
        data["group_sizes"] = tuple(data["group_sizes"])
        data["stages"] = tuple(tuple(s) for s in data["stages"])
        return cls(**data)


class AttributeClassifier(nn.Module):
    mean: Tensor
    std: Tensor

    def __init__(self, config: AttributeConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [_conv_bn(3, config.stem_channels, 3, 2)]
        channels = config.stem_channels
        for expansion, cout, blocks, stride in config.stages:
            for i in range(blocks):
                layers.append(InvertedResidual(channels, cout, stride if i == 0 else 1, expansion))
                channels = cout
        layers += [_conv_bn(channels, config.embedding), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Dropout(config.dropout)]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(config.embedding, n) for n in config.group_sizes)
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def logits(self, crops: Tensor) -> list[Tensor]:
        """Per-group logits for uint8 (or float 0..255) crops [B, C, C, 3]."""
        x = (crops.permute(0, 3, 1, 2).float() - self.mean) / self.std
        embedding = self.features(x)
        return [head(embedding) for head in self.heads]

    def forward(self, crops: Tensor) -> Tensor:
        """Concatenated per-group softmax [B, sum(group_sizes)]: the served output."""
        return torch.cat([torch.softmax(g, dim=1) for g in self.logits(crops)], dim=1)
