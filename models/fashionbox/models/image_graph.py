"""An image-level family's network with its processor's normalisation: what is exported and what the
torch runtime serves, one definition.

:class:`ImageGraph` wraps a transformers model (an ``AutoModelForImageClassification``, or a CLIP /
SigLIP model's image tower) so that it takes what ``preprocess`` makes, uint8 ``[B, H, W, 3]`` images
at the processor's size, applies the processor's rescale and normalisation as ``pixel * scale + bias``
per channel, and returns ``probs [B, L]`` (softmax, or a sigmoid per label for multi-label
classifiers) or L2-normalised ``embeddings [B, D]``. The converter exports it to ONNX
(``fashionbox.converter.image_models``); the torch runtime (:mod:`fashionbox.models.torch_runtime`)
runs it as it is. No transformers import here: the caller builds the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ImageGraph", "TextGraph", "features"]


def features(output: Any) -> Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose ``pooler_output`` is it (5)."""
    if isinstance(output, Tensor):
        return output
    pooled: Tensor = output.pooler_output
    return pooled


class ImageGraph(nn.Module):
    """uint8 ``[B, H, W, 3]`` -> ``probs [B, L]`` (``kind`` classifier) or L2-normalised ``embeddings [B, D]``."""

    def __init__(self, model: Any, *, kind: str, scale: Sequence[float], bias: Sequence[float],
                 multi_label: bool = False) -> None:
        super().__init__()
        if kind not in ("classifier", "embedder"):
            raise ValueError(f"kind must be classifier or embedder, got {kind!r}")
        self.model = model
        self.kind = kind
        self.multi_label = multi_label
        self.register_buffer("scale", torch.tensor(list(scale), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("bias", torch.tensor(list(bias), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) * self.get_buffer("scale") + self.get_buffer("bias")
        if self.kind == "classifier":
            logits: Tensor = self.model(pixel_values=x).logits
            return logits.float().sigmoid() if self.multi_label else logits.float().softmax(-1)
        return nn.functional.normalize(features(self.model.get_image_features(pixel_values=x)).float(), dim=-1)


class TextGraph(nn.Module):
    """int64 ``input_ids [B, T]`` (, ``attention_mask [B, T]``) -> L2-normalised ``embeddings [B, D]``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return nn.functional.normalize(features(out), dim=-1)
