"""The YOLOS family: a Hugging Face ``YolosForObjectDetection`` checkpoint -> the detector ONNX graph.

The seeds' model (``valentinafeve/yolos-fashionpedia``: YOLOS-small, 46 Fashionpedia classes) and
any checkpoint like it, served through the same ensemble as the default detector. YOLOS is one
row (:data:`YOLOS`) of the DETR-style families (:mod:`fashionbox.converter.detr`, which holds the
loading, checks, graph, reference and comparison they share); what is YOLOS's own is here: its
input size (a multiple of the patch size) and its baked position embeddings. Small typed steps,
as in :mod:`fashionbox.converter.export`::

    checkpoint = load_yolos(Path("yolos-fashionpedia/model.safetensors"))   # no network, no pickle
    label_map = checkpoint.label_map                                      # from the checkpoint's id2label
    export_yolos_onnx(checkpoint, Path("detector.onnx"), nms=NmsSettings(score_threshold=0.5))
    report = compare_yolos(checkpoint, Path("detector.onnx"), batches, nms)  # vs transformers, in process

**Post-processing is YOLOS's, inside the graph.** The exported graph takes the same uint8
letterboxed pixels as the default detector and ends in the same three tensors
(``contract.ONNX_DETECTOR_*``), so the ``detector`` and ``postprocess`` models serve it unchanged:
softmax over the classes, the no-object class dropped, the best class per detection token,
centre-size boxes to corners in letterbox pixels, and ``selected`` holds every token whose score is
above the threshold (``NonZero``, not ``NonMaxSuppression``: YOLOS needs no NMS). ``postprocess``
maps the boxes to original pixels with the letterbox geometry, as for every family.

**Why the served path feeds YOLOS a square letterbox, and how parity is defined.** Transformers'
``YolosImageProcessor`` resizes each image so its short side is ``size["shortest_edge"]`` (long
side at most ``longest_edge``, both floored to a multiple of 16) and pads the batch at the
bottom-right with zeros, so every image gets a different tensor shape. The pipeline batches
fixed-size ``PIXELS`` across requests, so FashionBox letterboxes every image to one square side
``S`` (the processor's ``shortest_edge``, floored to a multiple of the patch size: the image's long
side becomes ``S``, which costs less than the seed's resize and keeps one ONNX shape). The
processor's rescale factor, mean and std are read from the checkpoint and applied in the graph.
Parity (:func:`reference_detections`) is therefore measured on the *same letterboxed pixels*:
transformers' processor normalises them (``do_resize=False, do_pad=False``), the PyTorch model
runs, ``post_process_object_detection`` turns its output into boxes in letterbox pixels, and the
letterbox geometry maps them to original pixels exactly as the served ``postprocess`` does. What
is compared is the whole exported graph and serving path against transformers' own model and
post-processing; the resize choice is a documented difference from the seed's web app, not a
hidden one.

**Position embeddings: baked for the square, interpolated in the graph for the rect letterbox.**
YOLOS interpolates its (initial and mid-layer) position embeddings bicubically from
``config.image_size`` to the input size on every forward. For the square letterbox (the GPU, the
torch runtime, ``--letterbox square``) the graph is exported from a copy of the model whose
``image_size`` is ``[S, S]`` and whose embeddings are the interpolated ones, computed once here with
transformers' own code (docs/FIELD_NOTES.md: ``interpolate`` exported as ONNX ``Resize`` made the
graph 3.6x slower). For the rect letterbox (the CPU's default: the long side at ``S``, the short side
a multiple of the patch size, so a 4:3 photo at 512 runs 512 x 384 patches' worth of tokens instead
of 512 x 512) the graph takes any height and width and interpolates in it, as two matrix products:
:func:`bicubic_matrix` builds PyTorch's bicubic kernel (``align_corners=False``, a = -0.75, edges
clamped) for the input's own patch grid from the traced shape, and ``A_h @ table @ A_w^T`` replaces
``Resize`` (:class:`RectPositionEmbeddings`, :class:`RectMidPositionEmbeddings`, swapped into a copy
of the model by :func:`rect_model`); a few megaflops beside the network's tens of gigaflops.

Checkpoints are read without pickle: ``model.safetensors`` (or a sharded safetensors index)
through ``from_pretrained(use_safetensors=True, local_files_only=True)``; a ``pytorch_model.bin``
only through ``torch.load(weights_only=True)``, which refuses arbitrary objects.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from fashionbox.contract.labels import LabelMap
from fashionbox.converter.detr import (
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    WEIGHT_FILES,
    DetrCheckpoint,
    DetrError,
    DetrPreprocessing,
    DetrStyle,
    checkpoint_weights,
    compare_detr,
    export_detr_onnx,
    family_loader,
    hf_model_type,
    load_detr,
)
from fashionbox.converter.detr import reference_detections as _reference_detections
from fashionbox.converter.export import MIN_OPSET, ComparisonReport
from fashionbox.core.postprocessing import DetectorOutput
from fashionbox.models.nms import NmsSettings

__all__ = [
    "CONFIG_FILE",
    "PREPROCESSOR_FILE",
    "WEIGHT_FILES",
    "YOLOS",
    "YolosCheckpoint",
    "YolosError",
    "YolosPreprocessing",
    "bicubic_matrix",
    "checkpoint_weights",
    "compare_yolos",
    "export_yolos_onnx",
    "hf_model_type",
    "load_yolos",
    "rect_model",
    "reference_detections",
    "yolos_input_size",
]

YolosError = DetrError
YolosPreprocessing = DetrPreprocessing
YolosCheckpoint = DetrCheckpoint


def yolos_input_size(preprocessing: DetrPreprocessing, patch_size: int) -> int:
    """The processor's ``shortest_edge`` floored to a multiple of the patch size."""
    size = preprocessing.shortest_edge - preprocessing.shortest_edge % patch_size
    if size < patch_size:
        raise YolosError(f"shortest_edge {preprocessing.shortest_edge} is smaller than the patch size {patch_size}")
    return size


def _input_size(preprocessing: DetrPreprocessing, config: Any) -> int:
    return yolos_input_size(preprocessing, int(config.patch_size))


def _baked(model: Any, size: int) -> Any:
    """A copy of ``model`` whose position embeddings are interpolated to ``size`` x ``size`` once."""
    config = copy.deepcopy(model.config)
    config.image_size = [size, size]
    baked = type(model)(config).eval()
    state = dict(model.state_dict())
    with torch.no_grad():
        embeddings = model.vit.embeddings
        state["vit.embeddings.position_embeddings"] = embeddings.interpolation(
            embeddings.position_embeddings, (size, size))
        if model.config.use_mid_position_embeddings:
            state["vit.encoder.interpolation.mid_position_embeddings"] = model.vit.encoder.interpolation((size, size))
    baked.load_state_dict(state)
    return baked


CUBIC_A = -0.75
"""PyTorch's bicubic kernel coefficient (``upsample_bicubic2d``)."""


def bicubic_matrix(out_size: int | Tensor, in_size: int) -> Tensor:
    """``[out_size, in_size]``: the weights ``interpolate(mode="bicubic", align_corners=False)`` gives
    each output position over the input ones along one axis (its source ``(i + 0.5) * in / out - 0.5``,
    four taps, indices clamped to the edge). ``out_size`` may be a traced size: the ONNX graph builds
    the matrix for each input's own shape."""
    out = torch.as_tensor(out_size)
    position = torch.arange(out).to(torch.float32)  # type: ignore[call-overload]  # a traced size: a tensor
    source = (position + 0.5) * (in_size / out.to(torch.float32)) - 0.5
    floor = torch.floor(source)
    t = source - floor

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:  # 1 < |x| < 2
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A

    weights = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=1)  # [out, 4]
    taps = (floor.to(torch.int64)[:, None] + torch.arange(-1, 3)[None]).clamp(0, in_size - 1)  # [out, 4]
    hits = (taps[..., None] == torch.arange(in_size)[None, None]).to(torch.float32)  # [out, 4, in]
    return (weights[..., None] * hits).sum(dim=1)


def _resize_grid(patches: Tensor, grid: tuple[int, int], height: Any, width: Any, patch: int) -> Tensor:
    """``[..., h0 * w0, D]`` position embeddings on the checkpoint's patch grid -> ``[..., h * w, D]`` on the
    input's (``height // patch`` x ``width // patch``), bicubic as transformers interpolates them."""
    table = patches.reshape(*patches.shape[:-2], grid[0], grid[1], patches.shape[-1])  # [..., h0, w0, D]
    table = table.transpose(-1, -2).transpose(-2, -3)  # [..., D, h0, w0] (movedim exports a bad perm)
    table = torch.matmul(bicubic_matrix(height // patch, grid[0]), table)  # [..., D, h, w0]
    table = torch.matmul(table, bicubic_matrix(width // patch, grid[1]).t())  # [..., D, h, w]
    return table.flatten(-2).transpose(-1, -2)  # [..., h * w, D]


def _interpolated(table: Tensor, config: Any, img_size: tuple[Any, Any]) -> Tensor:
    """``[..., 1 + h0 * w0 + detection tokens, D]`` -> the same with the patches on the input's grid: what
    transformers' YOLOS interpolation modules return, without ``interpolate``."""
    patch, n = int(config.patch_size), int(config.num_detection_tokens)
    grid = (int(config.image_size[0]) // patch, int(config.image_size[1]) // patch)
    patches = _resize_grid(table[..., 1:-n, :], grid, img_size[0], img_size[1], patch)
    return torch.cat((table[..., :1, :], patches, table[..., -n:, :]), dim=-2)


class RectPositionEmbeddings(nn.Module):
    """Stands in for YOLOS's ``InterpolateInitialPositionEmbeddings``: the same output for any input
    size, without ``interpolate`` (so the ONNX graph has matrix products, not ``Resize``)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def forward(self, pos_embed: Tensor, img_size: tuple[Any, Any]) -> Tensor:
        return _interpolated(pos_embed, self.config, img_size)


class RectMidPositionEmbeddings(nn.Module):
    """Stands in for ``InterpolateMidPositionEmbeddings`` (which holds the mid-layer table itself)."""

    def __init__(self, config: Any, table: Tensor) -> None:
        super().__init__()
        self.config = config
        self.mid_position_embeddings = nn.Parameter(table.detach().clone(), requires_grad=False)

    def forward(self, img_size: tuple[Any, Any]) -> Tensor:
        return _interpolated(self.mid_position_embeddings, self.config, img_size)  # [layers - 1, 1, seq, D]


def rect_model(model: Any) -> Any:
    """A copy of ``model`` whose position embeddings are interpolated to each input's size in the graph."""
    rect = copy.deepcopy(model).eval()
    rect.vit.embeddings.interpolation = RectPositionEmbeddings(model.config)
    if model.config.use_mid_position_embeddings:
        rect.vit.encoder.interpolation = RectMidPositionEmbeddings(
            model.config, model.vit.encoder.interpolation.mid_position_embeddings)
    return rect


def _patch_stride(config: Any, size: int) -> int:
    return int(config.patch_size)


YOLOS = DetrStyle("yolos", "YolosForObjectDetection", "YolosImageProcessorPil", "softmax",
                  class_head=r"class_labels_classifier\.layers\.\d+\.weight",
                  input_size=_input_size, prepare_export=_baked, rect_stride=_patch_stride, prepare_rect=rect_model)
"""YOLOS: DETR's softmax post-processing (threshold 0.5), a patch-size input, embeddings baked for the
square letterbox or interpolated in the graph for the rect one."""


def load_yolos(weights: Path, attribute_labels: LabelMap | None = None) -> DetrCheckpoint:
    """Load the checkpoint whose weights file is ``weights`` (see :func:`checkpoint_weights`)."""
    return load_detr(weights, YOLOS, attribute_labels)


load_yolos_family = family_loader(YOLOS)
"""The family table's loader: the checkpoint and its label map."""


def export_yolos_onnx(checkpoint: DetrCheckpoint, path: Path, *, nms: NmsSettings, opset: int = MIN_OPSET,
                      letterbox_stride: int = 0) -> Path:
    """Export the graph (:func:`fashionbox.converter.detr.export_detr_onnx`: the square letterbox, or the
    rect one of ``letterbox_stride``, a multiple of the patch size); ``nms.score_threshold`` is the threshold."""
    return export_detr_onnx(checkpoint, path, nms=nms, opset=opset, letterbox_stride=letterbox_stride)


def reference_detections(checkpoint: DetrCheckpoint, pixels: npt.NDArray[np.uint8],
                         score_threshold: float) -> list[DetectorOutput]:
    """Transformers' own result on letterboxed ``pixels`` (:func:`fashionbox.converter.detr.reference_detections`)."""
    return _reference_detections(checkpoint, pixels, score_threshold)


def compare_yolos(checkpoint: DetrCheckpoint, path: Path, batches: list[npt.NDArray[np.uint8]],
                  nms: NmsSettings) -> ComparisonReport:
    """ONNX Runtime (through the served gathering) against transformers, on each uint8 batch."""
    return compare_detr(checkpoint, path, batches, nms)
