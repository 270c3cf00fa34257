"""An open-vocabulary detector (OWL-ViT, OWLv2) with its queries baked in: what is exported and what
the torch runtime serves, one definition.

OWL-ViT and OWLv2 score every image patch against query embeddings: the classes are whatever the queries
name ("a photo of a dress", ...) or show (an example photo). The converter
(``fashionbox.converter.owl``) embeds the queries once with the checkpoint's own text and image towers;
:class:`OwlGraph` holds those embeddings as a constant ``[Q, D]`` and runs only the image side per
request, so a detector with a fixed class list is served like any other. It takes uint8 letterboxed
pixels ``[B, S, S, 3]`` (the square: the ViT's position embeddings and the box bias are laid out for the
checkpoint's own grid), applies the processor's ``(pixel * rescale - mean) / std`` and returns the
detector contract's ``boxes [B, N, 4]`` (corners in letterbox pixels, one box per patch) and ``scores
[B, C, N]``, each patch scoring only its best query, with the sigmoid of that query's logit: the
processor's ``post_process_object_detection`` (a max over the queries, a sigmoid, the boxes scaled by
the image's side). Class-wise NMS follows as for the default detector (ONNX ``NonMaxSuppression``
appended to the exported graph; ``nms_batched`` in the torch runtime): one object is matched by many
neighbouring patches.

The spec is a :class:`fashionbox.models.detr_graph.DetrSpec` with scoring :data:`OWL_SCORING`; the
embeddings are saved beside it (:data:`QUERIES_FILE`). No transformers import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fashionbox.models.detr_graph import DetrSpec

__all__ = ["OWL_SCORING", "QUERIES_FILE", "OwlGraph", "load_queries", "save_queries"]

OWL_SCORING = "owl"
""":attr:`DetrSpec.scoring` of an open-vocabulary detector: each patch's best query, NMS after the graph."""

QUERIES_FILE = "queries.safetensors"
"""Beside an OWL family's transformers files: the classes' query embeddings ``[Q, D]`` (tensor ``queries``)."""


def save_queries(folder: Path, embeddings: Tensor) -> Path:
    from safetensors.torch import save_file

    path = Path(folder) / QUERIES_FILE
    save_file({"queries": embeddings.detach().to(torch.float32).contiguous().cpu()}, str(path))
    return path


def load_queries(folder: Path) -> Tensor:
    from safetensors.torch import load_file

    path = Path(folder) / QUERIES_FILE
    try:
        embeddings = load_file(str(path))["queries"]
    except Exception as exc:  # OSError, KeyError, and safetensors' own SafetensorError for a damaged file
        raise ValueError(f"{path} does not hold the queries' embeddings: {exc}") from exc
    if embeddings.ndim != 2 or embeddings.shape[0] < 1:
        raise ValueError(f"{path}: the queries' embeddings must be [Q, D] with Q >= 1, got {list(embeddings.shape)}")
    return embeddings


class OwlGraph(nn.Module):
    """uint8 ``[B, S, S, 3]`` -> ``boxes [B, N, 4]`` (letterbox px), ``scores [B, C, N]`` (best query per patch)."""

    def __init__(self, model: Any, spec: DetrSpec, queries: Tensor) -> None:
        super().__init__()
        if spec.scoring != OWL_SCORING:
            raise ValueError(f"an OwlGraph serves scoring {OWL_SCORING!r}, not {spec.scoring!r}")
        self.model = model
        self.spec = spec
        self.rescale = float(spec.rescale_factor)
        self.register_buffer("mean", torch.tensor(spec.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.image_std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("queries", queries.detach().to(torch.float32).clone())
        self.register_buffer("classes", torch.arange(queries.shape[0]).view(1, 1, -1))

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32) * self.rescale
        x = (x - self.get_buffer("mean")) / self.get_buffer("std")
        # transformers' own steps of OwlViT/Owlv2ForObjectDetection.forward, the queries embedded once
        feature_map = self.model.image_embedder(pixel_values=x)[0]  # [B, h, w, D]
        batch, rows, cols, dim = feature_map.shape
        patches = feature_map.reshape(batch, rows * cols, dim)
        queries = self.get_buffer("queries").to(patches.dtype)
        logits = self.model.class_predictor(patches, queries.unsqueeze(0).expand(batch, -1, -1), None)[0]
        pred_boxes = self.model.box_predictor(patches, feature_map)
        # float32 from here on, as for the DETR-style graphs: the threshold compares what ONNX compares
        cx, cy, w, h = pred_boxes.float().unbind(-1)
        side = float(self.spec.input_size)  # the square letterbox: transformers scales by the image's longer side
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1) * side
        best, index = logits.float().max(-1)  # [B, N]
        score = best.sigmoid().unsqueeze(-1)
        scores = torch.where(index.unsqueeze(-1) == self.get_buffer("classes"), score, torch.zeros_like(score))
        return boxes, scores.transpose(1, 2)
