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

**Position embeddings are baked at the serving size.** YOLOS interpolates its (initial and
mid-layer) position embeddings bicubically from ``config.image_size`` to the input size on every
forward. The graph is exported from a copy of the model whose ``image_size`` is ``[S, S]`` and
whose embeddings are the interpolated ones, computed once here with transformers' own code
(docs/FIELD_NOTES.md: interpolating at run time made the TorchScript-exported graph 3.6x slower).

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
    "checkpoint_weights",
    "compare_yolos",
    "export_yolos_onnx",
    "hf_model_type",
    "load_yolos",
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


YOLOS = DetrStyle("yolos", "YolosForObjectDetection", "YolosImageProcessorPil", "softmax",
                  class_head=r"class_labels_classifier\.layers\.\d+\.weight",
                  input_size=_input_size, prepare_export=_baked)
"""YOLOS: DETR's softmax post-processing (threshold 0.5), a patch-size input and baked embeddings."""


def load_yolos(weights: Path, attribute_labels: LabelMap | None = None) -> DetrCheckpoint:
    """Load the checkpoint whose weights file is ``weights`` (see :func:`checkpoint_weights`)."""
    return load_detr(weights, YOLOS, attribute_labels)


load_yolos_family = family_loader(YOLOS)
"""The family table's loader: the checkpoint and its label map."""


def export_yolos_onnx(checkpoint: DetrCheckpoint, path: Path, *, nms: NmsSettings, opset: int = MIN_OPSET) -> Path:
    """Export the graph (dynamic batch, TorchScript exporter); ``nms.score_threshold`` is the threshold."""
    return export_detr_onnx(checkpoint, path, nms=nms, opset=opset)


def reference_detections(checkpoint: DetrCheckpoint, pixels: npt.NDArray[np.uint8],
                         score_threshold: float) -> list[DetectorOutput]:
    """Transformers' own result on letterboxed ``pixels`` (:func:`fashionbox.converter.detr.reference_detections`)."""
    return _reference_detections(checkpoint, pixels, score_threshold)


def compare_yolos(checkpoint: DetrCheckpoint, path: Path, batches: list[npt.NDArray[np.uint8]],
                  nms: NmsSettings) -> ComparisonReport:
    """ONNX Runtime (through the served gathering) against transformers, on each uint8 batch."""
    return compare_detr(checkpoint, path, batches, nms)
