"""A DETR-style detector with its processor's normalisation and post-processing: what is exported and
what the torch runtime serves, one definition.

:class:`DetrGraph` wraps a transformers object-detection model (DETR, Conditional, Deformable and
DAB-DETR, RT-DETR and its kin, YOLOS) so that it takes what ``preprocess`` makes, uint8 letterboxed pixels
``[B, H, W, 3]`` (the square ``S x S``, or a rect letterbox where the model takes any height and width:
all of them but a few configurations, YOLOS with its embeddings interpolated in the graph),
applies the processor's ``(pixel * rescale - mean) / std`` and returns the detector contract's three
tensors: ``boxes [B, N, 4]`` (corners in letterbox pixels: the normalised boxes times the input's own
width and height, as ``target_sizes`` does), ``scores [B, C, N]`` and ``selected [M, 3]`` rows of
(batch, class, query), with the processor's ``post_process_object_detection`` done inside:

- ``softmax`` (DETR, YOLOS): softmax over the classes, the no-object class dropped, the best class
  per query, every query above the threshold;
- ``sigmoid_top_k`` (Conditional, Deformable and DAB-DETR, the RT-DETR kin): a sigmoid per class, the
  ``top_k`` best (query, class) pairs over all queries x classes, those above the threshold (one query
  may be kept for two classes).

RF-DETR-Seg (``spec.masks``) adds each query's mask coefficients and the image's prototypes, the
contract's segmenting outputs (as YOLO-seg's), from the model's own query-mask head (:meth:`DetrGraph.segments`).

The converter (``fashionbox.converter.detr``) exports it to ONNX; the torch runtime
(:class:`fashionbox.models.torch_runtime.TorchDetrDetector`) runs it as it is, rebuilt from
:data:`SPEC_FILE` beside the transformers files. No transformers import here: the caller builds the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.onnx.operators import shape_as_tensor

__all__ = ["SCORINGS", "SPEC_FILE", "DetrGraph", "DetrSpec"]

SPEC_FILE = "detector.json"
"""Beside a DETR-style family's transformers files (``config.json``, ``model.safetensors``): its model
class, scoring, input size and normalisation (:class:`DetrSpec`)."""

SCORINGS = ("softmax", "sigmoid_top_k", "owl")
"""How the class head turns into scores: the two DETR-style post-processings of :class:`DetrGraph`, and
``owl`` (:class:`fashionbox.models.owl_graph.OwlGraph`: each patch's best text query, NMS after the graph)."""


@dataclass(frozen=True)
class DetrSpec:
    """What rebuilds a :class:`DetrGraph` around the saved transformers model (the threshold is the
    serving config's, not part of the spec)."""

    model_class: str
    """The ``transformers`` class the folder loads as (``DetrForObjectDetection``, ...)."""
    scoring: str
    top_k: int
    """``sigmoid_top_k``: the (query, class) pairs kept before the threshold; 0 for ``softmax``."""
    input_size: int
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    masks: bool = False
    """A query-mask head (RF-DETR-Seg's ``...ForInstanceSegmentation``): the graph also gives each query's mask
    coefficients and the image's prototypes (:meth:`DetrGraph.segments`)."""

    def __post_init__(self) -> None:
        suffix = "ForInstanceSegmentation" if self.masks else "ForObjectDetection"
        if not self.model_class.isidentifier() or not self.model_class.endswith(suffix):
            # the runner looks the name up in transformers: an object-detection model class and nothing else
            raise ValueError(f"model_class must name a transformers ...{suffix} class, got "
                             f"{self.model_class!r}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.scoring == "sigmoid_top_k" and self.top_k < 1:
            raise ValueError(f"sigmoid_top_k needs top_k >= 1, got {self.top_k}")
        if self.input_size < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean and image_std need 3 values each (std > 0), got {self.image_mean}, "
                             f"{self.image_std}")

    def write(self, folder: Path) -> Path:
        path = Path(folder) / SPEC_FILE
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> DetrSpec:
        path = Path(folder) / SPEC_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(model_class=str(raw["model_class"]), scoring=str(raw["scoring"]), top_k=int(raw["top_k"]),
                       input_size=int(raw["input_size"]), rescale_factor=float(raw["rescale_factor"]),
                       image_mean=_triple(raw["image_mean"]), image_std=_triple(raw["image_std"]),
                       masks=bool(raw.get("masks", False)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a DETR-style detector spec: {exc}") from exc


def _triple(values: Sequence[Any]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


class DetrGraph(nn.Module):
    """uint8 ``[B, H, W, 3]`` -> ``boxes [B, N, 4]`` (letterbox px), ``scores [B, C, N]``, ``selected [M, 3]``; with
    ``spec.masks`` also ``mask_coeffs [B, N, K]`` and ``protos [B, K, h, w]`` (:meth:`segments`)."""

    def __init__(self, model: Any, spec: DetrSpec, score_threshold: float) -> None:
        super().__init__()
        if spec.scoring not in ("softmax", "sigmoid_top_k"):
            raise ValueError(f"a DetrGraph serves the softmax and sigmoid_top_k scorings, not {spec.scoring!r}")
        self.model = model
        self.spec = spec
        self.rescale = float(spec.rescale_factor)
        self.score_threshold = float(score_threshold)
        self.register_buffer("mean", torch.tensor(spec.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.image_std, dtype=torch.float32).view(1, 3, 1, 1))

    def segments(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """RF-DETR-Seg's forward (``RfDetrForInstanceSegmentation``) for normalised ``x``, its mask logits kept
        factored: ``logits``, ``pred_boxes``, ``coeffs [B, Q, D + 1]`` and ``protos [B, D + 1, h, w]`` whose product
        is the model's ``pred_masks`` (each query's projected features over the last block's projected spatial
        features, plus the head's bias as a channel of ones), so that masks are assembled for the kept
        detections only, as for YOLO-seg. The steps are the model's own; the other decoder layers' masks,
        which only training reads, are not computed."""
        head = self.model
        outputs = head.model.model(x)
        logits, pred_boxes = head.model.predict_class_and_boxes(outputs.last_hidden_state,
                                                                outputs.intermediate_reference_points[-1])
        size = (x.shape[-2] // head.downsample_ratio, x.shape[-1] // head.downsample_ratio)
        spatial = nn.functional.interpolate(outputs.backbone_features, size=size, mode="bilinear", align_corners=False)
        for block in head.blocks:
            spatial = block(spatial)
        protos = head.spatial_features_proj(spatial)
        queries = head.query_features_proj(head.query_features_block(outputs.intermediate_hidden_states[-1]))
        ones = torch.ones_like(protos[:, :1])
        protos = torch.cat([protos, ones * head.segmentation_bias.to(protos.dtype)], dim=1)
        coeffs = torch.cat([queries, torch.ones_like(queries[..., :1])], dim=-1)
        return logits, pred_boxes, coeffs, protos

    def forward(self, pixels: Tensor) -> tuple[Tensor, ...]:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32) * self.rescale
        x = (x - self.get_buffer("mean")) / self.get_buffer("std")
        if self.spec.masks:
            out_logits, out_boxes, coeffs, protos = self.segments(x)
        else:
            out = self.model(pixel_values=x)
            out_logits, out_boxes = out.logits, out.pred_boxes
        # float32 from here on: under CUDA autocast the heads answer in half precision, and the
        # threshold and top-k must compare what the ONNX graph compares
        cx, cy, w, h = out_boxes.float().unbind(-1)
        # (W, H, W, H) of this input, a traced Shape in the ONNX graph: a rect letterbox scales as the square
        sides = shape_as_tensor(pixels)[torch.tensor([2, 1, 2, 1])].to(device=cx.device, dtype=torch.float32)
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1) * sides
        logits = out_logits.float()
        if self.spec.scoring == "softmax":
            probs = logits.softmax(-1)[..., :-1]  # drop the no-object class
            scores, classes = probs.max(-1)
            kept = torch.nonzero(scores > self.score_threshold)  # [M, 2]: (batch, query)
            best = classes[kept[:, 0], kept[:, 1]]
            selected = torch.stack([kept[:, 0], best, kept[:, 1]], dim=1)
        else:
            probs = logits.sigmoid()  # [B, N, C]
            num_classes = probs.shape[-1]
            values, index = torch.topk(probs.flatten(1), self.spec.top_k, dim=1)  # over queries x classes
            kept = torch.nonzero(values > self.score_threshold)  # [M, 2]: (batch, rank)
            flat = index[kept[:, 0], kept[:, 1]]
            selected = torch.stack([kept[:, 0], flat % num_classes, torch.div(flat, num_classes,
                                                                              rounding_mode="floor")], dim=1)
        if self.spec.masks:
            return boxes, probs.transpose(1, 2), selected, coeffs.float(), protos.float()
        return boxes, probs.transpose(1, 2), selected
