"""The YOLOS family: a local Hugging Face ``YolosForObjectDetection`` checkpoint -> the detector ONNX graph.

The seeds' model (``valentinafeve/yolos-fashionpedia``: YOLOS-small, 46 Fashionpedia classes) and
any checkpoint like it, served through the same ensemble as the default detector. Small typed
steps, as in :mod:`fashionbox.converter.export`::

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
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from fashionbox import contract
from fashionbox.contract.labels import LabelMap
from fashionbox.converter.export import MIN_OPSET, ComparisonReport, ExportError, _session, check_onnx
from fashionbox.converter.labels import family_label_map
from fashionbox.core.postprocessing import DetectorOutput, gather_detections
from fashionbox.models.nms import NmsSettings

__all__ = [
    "CONFIG_FILE",
    "WEIGHT_FILES",
    "YolosCheckpoint",
    "YolosError",
    "checkpoint_weights",
    "compare_yolos",
    "export_yolos_onnx",
    "load_yolos",
    "reference_detections",
    "yolos_input_size",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
"""Looked for in this order; the first present is the checkpoint's weights."""

INSTALL_HINT = ("YOLOS checkpoints need transformers: pip install 'fashionbox-converter[hf]' "
                "(or -c constraints.txt transformers)")


class YolosError(ValueError):
    """A checkpoint folder that is not a usable YOLOS checkpoint, or a label map that cannot be mapped."""


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return transformers


# -- loading ------------------------------------------------------------------------------------------


def checkpoint_weights(folder: Path) -> Path:
    """The weights file of a Hugging Face checkpoint folder (refusing folders without config.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise YolosError(f"{folder} is not a folder: expected a Hugging Face checkpoint folder")
    if not (folder / CONFIG_FILE).is_file():
        raise YolosError(f"{folder} has no {CONFIG_FILE}: not a Hugging Face checkpoint folder")
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise YolosError(f"{folder} has none of {list(WEIGHT_FILES)}")


def hf_model_type(folder: Path) -> str:
    """``model_type`` of ``folder/config.json`` (read as JSON: nothing is imported or executed)."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise YolosError(f"cannot read {Path(folder) / CONFIG_FILE}: {exc}") from exc
    return str(config.get("model_type", ""))


@dataclass(frozen=True)
class YolosPreprocessing:
    """The processor's normalisation, applied inside the graph: ``(pixel * rescale - mean) / std``."""

    rescale_factor: float
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    shortest_edge: int


@dataclass(frozen=True)
class YolosCheckpoint:
    folder: Path
    model: Any
    """``YolosForObjectDetection`` in eval mode, as transformers loaded it."""
    processor: Any
    """``YolosImageProcessorPil`` from the folder's preprocessor config."""
    preprocessing: YolosPreprocessing
    input_size: int
    """Side of the square letterbox the detector is served at (a multiple of the patch size)."""
    label_map: LabelMap

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)


def _processor(folder: Path) -> Any:
    transformers = _transformers()
    cls = transformers.YolosImageProcessorPil  # pure PIL/numpy: no torchvision needed
    if (folder / PREPROCESSOR_FILE).is_file():
        return cls.from_pretrained(str(folder), local_files_only=True)
    log.warning("%s has no %s: using YolosImageProcessor defaults", folder, PREPROCESSOR_FILE)
    return cls()


def _load_model(folder: Path, weights: Path) -> Any:
    transformers = _transformers()
    cls = transformers.YolosForObjectDetection
    if weights.name == "pytorch_model.bin":
        # transformers reads it with torch.load(weights_only=True): tensors only, no arbitrary
        # objects; said explicitly here so a future default cannot turn pickle back on.
        try:
            model = cls.from_pretrained(str(folder), use_safetensors=False, weights_only=True, local_files_only=True)
        except Exception as exc:
            raise YolosError(f"{weights} does not load with torch.load(weights_only=True): {exc}") from exc
    else:
        model = cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
    return model.eval()


def yolos_input_size(preprocessing: YolosPreprocessing, patch_size: int) -> int:
    size = preprocessing.shortest_edge - preprocessing.shortest_edge % patch_size
    if size < patch_size:
        raise YolosError(f"shortest_edge {preprocessing.shortest_edge} is smaller than the patch size {patch_size}")
    return size


def load_yolos(weights: Path, attribute_labels: LabelMap | None = None) -> YolosCheckpoint:
    """Load the checkpoint whose weights file is ``weights`` (see :func:`checkpoint_weights`)."""
    folder = Path(weights).parent
    transformers = _transformers()
    model = _load_model(folder, Path(weights))
    if not isinstance(model, transformers.YolosForObjectDetection):
        raise YolosError(f"{folder} holds a {type(model).__name__}, not a YolosForObjectDetection")
    processor = _processor(folder)
    size = {k: v for k, v in dict(processor.size).items() if v}
    sides = [size[k] for k in ("shortest_edge", "height", "width", "max_height", "max_width") if k in size]
    if not sides:
        raise YolosError(f"{folder}: cannot tell the input size from the processor's size {size}")
    shortest = size.get("shortest_edge", min(sides))
    preprocessing = YolosPreprocessing(
        rescale_factor=float(processor.rescale_factor) if processor.do_rescale else 1.0,
        image_mean=tuple(float(v) for v in processor.image_mean) if processor.do_normalize else (0.0, 0.0, 0.0),
        image_std=tuple(float(v) for v in processor.image_std) if processor.do_normalize else (1.0, 1.0, 1.0),
        shortest_edge=int(shortest),
    )
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    if len(id2label) != model.config.num_labels:
        raise YolosError(f"id2label has {len(id2label)} entries for {model.config.num_labels} labels")
    return YolosCheckpoint(
        folder=folder,
        model=model,
        processor=processor,
        preprocessing=preprocessing,
        input_size=yolos_input_size(preprocessing, int(model.config.patch_size)),
        label_map=family_label_map(id2label, attribute_labels, name="yolos"),
    )


def load_yolos_family(weights: Path) -> tuple[YolosCheckpoint, LabelMap]:
    """The family table's loader: the checkpoint and its label map."""
    checkpoint = load_yolos(weights)
    return checkpoint, checkpoint.label_map


# -- export -------------------------------------------------------------------------------------------


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


class _YolosGraph(nn.Module):
    """uint8 ``[B, S, S, 3]`` -> ``boxes [B, N, 4]`` (letterbox px), ``scores [B, C, N]``, ``selected [M, 3]``."""

    def __init__(self, model: Any, preprocessing: YolosPreprocessing, size: int, score_threshold: float) -> None:
        super().__init__()
        self.model = model
        self.size = float(size)
        self.rescale = float(preprocessing.rescale_factor)
        self.score_threshold = float(score_threshold)
        self.register_buffer("mean", torch.tensor(preprocessing.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.image_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32) * self.rescale
        x = (x - self.get_buffer("mean")) / self.get_buffer("std")
        out = self.model(pixel_values=x)
        probs = out.logits.softmax(-1)[..., :-1]  # drop the no-object class
        scores, classes = probs.max(-1)
        cx, cy, w, h = out.pred_boxes.unbind(-1)
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1) * self.size
        kept = torch.nonzero(scores > self.score_threshold)  # [M, 2]: (batch, token)
        best = classes[kept[:, 0], kept[:, 1]]
        selected = torch.stack([kept[:, 0], best, kept[:, 1]], dim=1)
        return boxes, probs.transpose(1, 2), selected


def export_yolos_onnx(checkpoint: YolosCheckpoint, path: Path, *, nms: NmsSettings, opset: int = MIN_OPSET) -> Path:
    """Export the graph (dynamic batch, TorchScript exporter); ``nms.score_threshold`` is the threshold."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below the supported minimum {MIN_OPSET}")
    size = checkpoint.input_size
    graph = _YolosGraph(_baked(checkpoint.model, size), checkpoint.preprocessing, size, nms.score_threshold).eval()
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    names = [contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES, contract.ONNX_DETECTOR_SELECTED]
    dynamic = {contract.ONNX_DETECTOR_INPUT: {0: "batch"}, contract.ONNX_DETECTOR_BOXES: {0: "batch"},
               contract.ONNX_DETECTOR_SCORES: {0: "batch"}, contract.ONNX_DETECTOR_SELECTED: {0: "selected"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings from torch and transformers
        torch.onnx.export(graph, (example,), str(path), input_names=[contract.ONNX_DETECTOR_INPUT],
                          output_names=names, dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    check_onnx(path)
    return path


# -- the transformers reference and the comparison -------------------------------------------------------


def reference_detections(checkpoint: YolosCheckpoint, pixels: npt.NDArray[np.uint8],
                         score_threshold: float) -> list[DetectorOutput]:
    """Transformers' own result on letterboxed ``pixels`` ``[B, S, S, 3]``: boxes in letterbox pixels.

    The processor normalises the pixels (no resize, no pad), the PyTorch model runs and
    ``post_process_object_detection`` thresholds; detections are sorted by score descending, ties
    by token, as :func:`fashionbox.core.postprocessing.gather_detections` sorts the served ones.
    """
    processor = checkpoint.processor
    inputs = processor(images=list(pixels), do_resize=False, do_pad=False, return_tensors="pt")
    with torch.no_grad():
        outputs = checkpoint.model(pixel_values=inputs["pixel_values"])
    size = checkpoint.input_size
    results = processor.post_process_object_detection(outputs, threshold=score_threshold,
                                                      target_sizes=[(size, size)] * len(pixels))
    rows = []
    for result in results:
        scores = result["scores"].numpy().astype(np.float32)
        order = np.lexsort((np.arange(len(scores)), -scores))
        rows.append(DetectorOutput(boxes=result["boxes"].numpy().astype(np.float32)[order].reshape(-1, 4),
                                   scores=scores[order], classes=result["labels"].numpy().astype(np.int32)[order]))
    return rows


def compare_detections(ours: Sequence[DetectorOutput], theirs: Sequence[DetectorOutput],
                       errors: dict[str, float]) -> None:
    """Accumulate into ``errors``: ``kept_mismatch`` (images whose kept set differs), ``boxes``, ``scores``."""
    for a, b in zip(ours, theirs, strict=True):
        if len(a) != len(b) or not np.array_equal(a.classes, b.classes):
            errors["kept_mismatch"] = errors.get("kept_mismatch", 0.0) + 1.0
            continue
        if len(a):
            errors["boxes"] = max(errors.get("boxes", 0.0), float(np.abs(a.boxes - b.boxes).max()))
            errors["scores"] = max(errors.get("scores", 0.0), float(np.abs(a.scores - b.scores).max()))


def compare_yolos(checkpoint: YolosCheckpoint, path: Path, batches: Sequence[npt.NDArray[np.uint8]],
                  nms: NmsSettings) -> ComparisonReport:
    """ONNX Runtime (through the served gathering) against transformers, on each uint8 batch."""
    session = _session(path)
    errors = {"kept_mismatch": 0.0, "boxes": 0.0, "scores": 0.0}
    samples = 0
    for batch in batches:
        boxes, scores, selected = session.run(None, {contract.ONNX_DETECTOR_INPUT: batch})  # type: ignore[attr-defined]
        ours = gather_detections(boxes, scores, selected, max_detections=int(boxes.shape[1]))
        compare_detections(ours, reference_detections(checkpoint, batch, nms.score_threshold), errors)
        samples += len(batch)
    return ComparisonReport("detector", errors, samples)
