"""Attribute heads: a small crop classifier with one softmax head per attribute group.

Input is what ``fashionbox.core.imaging.crop_garments`` makes: uint8 [B, C, C, 3] RGB crops of
detected garments. ``forward`` returns the per-group logits (a dict keyed by group index) and
``probabilities`` concatenates the per-group softmaxes in label-map order, which is the
served output (``ATTRIBUTE_PROBS``)::

    model = AttributeClassifier(AttributeConfig(group_sizes=(5, 5, 5)))
    probs = model(crops)                 # [B, 15]

With ``mask_size > 0`` the classifier also carries a mask head (:class:`MaskHead`): a small
decoder on the trunk's spatial features, Mask R-CNN style, that predicts for each crop the
garment's mask probability on an ``m x m`` grid covering exactly the crop's region
(``fashionbox.core.imaging.crop_regions``), class-agnostic::

    model = AttributeClassifier(AttributeConfig(group_sizes=(5, 5, 5), mask_size=48))
    probs, masks = model.predict(crops)  # [B, 15], [B, 48, 48] after a sigmoid

The head reads the trunk and changes nothing in it, so ``probs`` are the same with or without
it; a checkpoint written before the head existed (no ``mask_size`` in its config) loads as a
classifier without one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashionbox.models.detector import PIXEL_MEAN, PIXEL_STD, InvertedResidual, _conv_bn

__all__ = ["AttributeClassifier", "AttributeConfig", "MaskHead"]


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
    mask_size: int = 0
    """Side of the mask head's square grid; 0: no mask head (checkpoints from before it)."""
    mask_channels: tuple[int, int, int, int] = (64, 64, 48, 24)
    """Decoder width at the trunk's last four stages' strides (16, 8, 4 and 2 of the crop here)."""

    def __post_init__(self) -> None:
        if not self.group_sizes or min(self.group_sizes) < 2:
            raise ValueError("every attribute group needs at least two labels")
        if self.mask_size < 0:
            raise ValueError(f"mask_size must be 0 (no mask head) or positive, got {self.mask_size}")
        if self.mask_size and len(self.stages) < 4:
            raise ValueError("the mask head needs a trunk of at least four stages")
        if self.mask_size and self.crop_size % 16:
            raise ValueError(f"the mask head needs crop_size divisible by 16, got {self.crop_size}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AttributeConfig:
        data = json.loads(text)
        data["group_sizes"] = tuple(data["group_sizes"])
        data["stages"] = tuple(tuple(s) for s in data["stages"])
        if "mask_channels" in data:
            data["mask_channels"] = tuple(data["mask_channels"])
        return cls(**data)


def _conv(cin: int, cout: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    # No BatchNorm in the decoder: it is trained alone on a frozen trunk, and on the CPU batch
    # statistics at the fine levels cost more than the convolutions.
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups), nn.ReLU(inplace=True))


def _separable(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise: the decoder's block, cheap at the fine levels."""
    return nn.Sequential(_conv(cin, cin, 3, groups=cin), _conv(cin, cout))


class MaskHead(nn.Module):
    """Decoder from the trunk's deepest map up to stride 2, with a skip at each stride (U-Net-like).

    Inputs: the embedding conv's map and the last block of the last stage (deepest, stride 16 of
    a 96-px crop), of the two stages before it (strides 8 and 4), of the first stage (stride 2),
    and the normalised crop, whose 2x2 average joins at stride 2 so the boundary can follow the
    pixels. Returns logits ``[B, mask_size, mask_size]`` (resized when ``mask_size`` is not the
    stride-2 grid).
    """

    def __init__(self, embedding: int, skips: tuple[int, int, int, int], channels: tuple[int, int, int, int],
                 mask_size: int) -> None:
        super().__init__()
        deep, mid, shallow, fine = skips
        c_deep, c_mid, c_shallow, c_fine = channels
        self.mask_size = mask_size
        self.deep = _conv(embedding + deep, c_deep)
        self.mid = _separable(c_deep + mid, c_mid)
        self.shallow = _separable(c_mid + shallow, c_shallow)
        self.fine = nn.Sequential(_separable(c_shallow + fine + 3, c_fine), _separable(c_fine, c_fine))
        self.logit = nn.Conv2d(c_fine, 1, 1)

    def forward(self, embedding: Tensor, deep: Tensor, mid: Tensor, shallow: Tensor, fine: Tensor,
                image: Tensor) -> Tensor:
        x = self.deep(torch.cat([embedding, deep], dim=1))
        x = self.mid(torch.cat([_up(x, mid), mid], dim=1))
        x = self.shallow(torch.cat([_up(x, shallow), shallow], dim=1))
        pooled = F.avg_pool2d(image, 2)
        x = self.fine(torch.cat([_up(x, fine), fine, pooled], dim=1))
        logits: Tensor = self.logit(x)
        if logits.shape[-1] != self.mask_size:
            logits = F.interpolate(logits, size=(self.mask_size, self.mask_size), mode="bilinear",
                                   align_corners=False)
        return logits[:, 0]


def _up(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class AttributeClassifier(nn.Module):
    mean: Tensor
    std: Tensor

    def __init__(self, config: AttributeConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [_conv_bn(3, config.stem_channels, 3, 2)]
        channels = config.stem_channels
        stage_ends: list[int] = []
        stage_channels: list[int] = []
        for expansion, cout, blocks, stride in config.stages:
            for i in range(blocks):
                layers.append(InvertedResidual(channels, cout, stride if i == 0 else 1, expansion))
                channels = cout
            stage_ends.append(len(layers) - 1)
            stage_channels.append(cout)
        self._embedding_index = len(layers)
        layers += [_conv_bn(channels, config.embedding), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Dropout(config.dropout)]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(config.embedding, n) for n in config.group_sizes)
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        # The last block of the first and of the last three stages feed the mask head.
        self._skip_indices = (stage_ends[-1], stage_ends[-2], stage_ends[-3], stage_ends[0])
        self.mask_head: MaskHead | None = None
        if config.mask_size:
            skips = (stage_channels[-1], stage_channels[-2], stage_channels[-3], stage_channels[0])
            self.mask_head = MaskHead(config.embedding, skips, config.mask_channels, config.mask_size)

    @property
    def mask_size(self) -> int:
        """Side of the mask grid; 0 when this classifier has no mask head."""
        return self.config.mask_size if self.mask_head is not None else 0

    def _normalise(self, crops: Tensor) -> Tensor:
        return (crops.permute(0, 3, 1, 2).float() - self.mean) / self.std

    def _trunk(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The pooled embedding and, when the mask head exists, the maps it reads."""
        maps: list[Tensor] = []
        wanted = (*self._skip_indices, self._embedding_index) if self.mask_head is not None else ()
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                maps.append(x)
        return x, maps

    def logits(self, crops: Tensor) -> list[Tensor]:
        """Per-group logits for uint8 (or float 0..255) crops [B, C, C, 3]."""
        embedding = self.features(self._normalise(crops))
        return [head(embedding) for head in self.heads]

    def forward(self, crops: Tensor) -> Tensor:
        """Concatenated per-group softmax [B, sum(group_sizes)]: the served output."""
        return torch.cat([torch.softmax(g, dim=1) for g in self.logits(crops)], dim=1)

    def mask_logits(self, crops: Tensor) -> Tensor:
        """Mask logits ``[B, m, m]`` over each crop's region (the head's training output)."""
        return self._with_masks(crops)[1]

    def predict(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        """Probs ``[B, A]`` and mask probabilities ``[B, m, m]`` in one pass over the trunk."""
        probs, logits = self._with_masks(crops)
        return probs, torch.sigmoid(logits)

    def _with_masks(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask_head is None:
            raise ValueError("this attribute classifier has no mask head (its config has mask_size=0)")
        image = self._normalise(crops)
        embedding, maps = self._trunk(image)
        # maps in _trunk's order: layers by index; pick them back by role.
        by_index = dict(zip(sorted((*self._skip_indices, self._embedding_index)), maps, strict=True))
        deep, mid, shallow, fine = (by_index[i] for i in self._skip_indices)
        logits = self.mask_head(by_index[self._embedding_index], deep, mid, shallow, fine, image)
        probs = torch.cat([torch.softmax(head(embedding), dim=1) for head in self.heads], dim=1)
        return probs, logits
