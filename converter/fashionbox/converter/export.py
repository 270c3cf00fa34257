"""Export steps: PyTorch -> ONNX (dynamic batch, NMS in the graph), checked and compared.

Small typed steps (docs/STYLE.md rule 6), each testable alone::

    export_detector_onnx(detector, path, nms=NmsSettings(), opset=17)
    export_attributes_onnx(classifier, path, opset=17)       # + "masks", "embeddings", "verticals" with those heads
    check_onnx(path)                                         # onnx.checker, full check
    report = compare_detector(detector, path, batches)       # max abs error vs PyTorch
    report.raise_if_over(tolerance)

The detector graph ends in ONNX ``NonMaxSuppression`` (supported by ONNX Runtime and by
TensorRT since 8.5), so the served pipeline has no python NMS step. The TorchScript-based
exporter is used because it keeps the batch dimension dynamic with a batch-1 example
(docs/FIELD_NOTES.md: the dynamo exporter silently fixes it at 1).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from fashionbox import contract
from fashionbox.models import AttributeClassifier, FashionDetector
from fashionbox.models.nms import NmsSettings

if TYPE_CHECKING:
    from fashionbox.core.postprocessing import DetectorOutput
    from fashionbox.core.serving import DetectorRunner
    from fashionbox.models.torch_runtime import TorchAttributes

__all__ = [
    "ComparisonReport",
    "ExportError",
    "attribute_output_names",
    "check_onnx",
    "compare_attributes",
    "compare_detector",
    "compare_torch_runners",
    "export_attributes_onnx",
    "export_detector_onnx",
    "mask_logits_error",
]

log = logging.getLogger(__name__)

MIN_OPSET = 17


class ExportError(RuntimeError):
    """An exported model is invalid or disagrees with PyTorch beyond the tolerance."""


class _DetectorGraph(nn.Module):
    def __init__(self, detector: FashionDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        out = self.detector(pixels)
        return out.boxes, out.scores


def _torch_export(module: nn.Module, example: Tensor, path: Path, input_name: str,
                  output_names: list[str], opset: int) -> None:
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below the supported minimum {MIN_OPSET}")
    dynamic = {input_name: {0: "batch"}}
    for name in output_names:
        dynamic[name] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _append_nms(path: Path, nms: NmsSettings) -> None:
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    graph.initializer.extend([
        helper.make_tensor("nms_max_per_class", TensorProto.INT64, [1], [nms.max_per_class]),
        helper.make_tensor("nms_iou_threshold", TensorProto.FLOAT, [1], [nms.iou_threshold]),
        helper.make_tensor("nms_score_threshold", TensorProto.FLOAT, [1], [nms.score_threshold]),
    ])
    graph.node.append(helper.make_node(
        "NonMaxSuppression",
        [contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES, "nms_max_per_class", "nms_iou_threshold",
         "nms_score_threshold"],
        [contract.ONNX_DETECTOR_SELECTED],
        name="nms",
        center_point_box=0,  # corner boxes; IoU is symmetric in x/y so x1,y1,x2,y2 order is fine
    ))
    graph.output.append(helper.make_tensor_value_info(contract.ONNX_DETECTOR_SELECTED, TensorProto.INT64,
                                                      ["selected", 3]))
    onnx.save(model, str(path))


def export_detector_onnx(detector: FashionDetector, path: Path, *, nms: NmsSettings, opset: int = MIN_OPSET,
                         letterbox_stride: int = 0) -> Path:
    """The detector graph with NMS appended, for the square letterbox (the only one its graph takes)."""
    if letterbox_stride:
        raise ExportError("the FashionBox detector's graph takes only the square letterbox")
    size = detector.config.input_size
    example = torch.zeros((1, size, size, 3), dtype=torch.uint8)
    _torch_export(_DetectorGraph(detector), example, path, contract.ONNX_DETECTOR_INPUT,
                  [contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES], opset)
    _append_nms(path, nms)
    check_onnx(path)
    return path


def attribute_output_names(classifier: AttributeClassifier) -> list[str]:
    """The attribute graph's outputs, in order: ``probs`` [, ``masks``] [, ``embeddings``] [, ``verticals``]
    (``AttributeClassifier.output_names``: the contract's ONNX names)."""
    return list(classifier.output_names)


class _AttributesGraph(nn.Module):
    """Every output of the classifier from one pass over the trunk, as a tuple in ``output_names`` order."""

    def __init__(self, classifier: AttributeClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, crops: Tensor) -> tuple[Tensor, ...]:
        outputs = self.classifier.outputs(crops)
        return tuple(outputs[name] for name in self.classifier.output_names)


def export_attributes_onnx(classifier: AttributeClassifier, path: Path, *, opset: int = MIN_OPSET) -> Path:
    """``crops`` -> ``probs`` and, with those heads, ``masks`` float32 [B, m, m], ``embeddings``
    float32 [B, D] (unit length) and ``verticals`` float32 [B, V] (softmax)."""
    size = classifier.config.crop_size
    example = torch.zeros((1, size, size, 3), dtype=torch.uint8)
    names = attribute_output_names(classifier)
    if len(names) == 1:
        _torch_export(classifier, example, path, contract.ONNX_ATTRIBUTES_INPUT, names, opset)
    else:
        _torch_export(_AttributesGraph(classifier), example, path, contract.ONNX_ATTRIBUTES_INPUT, names, opset)
        with torch.no_grad():
            shapes = {name: tuple(value.shape[1:])
                      for name, value in zip(names, classifier.eval().outputs(example).values(), strict=True)}
        _fix_output_dims(path, shapes)
    check_onnx(path)
    return path


def _fix_output_dims(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Write the fixed sizes after the batch into the graph's outputs (the TorchScript exporter leaves
    the embedding's width unknown: F.normalize's shape is not inferred), so the repository step
    reads ``D`` and ``V`` from the graph."""
    import onnx

    model = onnx.load(str(path))
    for output in model.graph.output:
        if output.name not in shapes:
            continue
        dims = output.type.tensor_type.shape.dim
        if len(dims) != 1 + len(shapes[output.name]):
            raise ExportError(f"{path}: output {output.name!r} has rank {len(dims)}, PyTorch gives "
                              f"{1 + len(shapes[output.name])}")
        for dim, size in zip(list(dims)[1:], shapes[output.name], strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = size
    onnx.save(model, str(path))


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path} fails onnx.checker: {exc}") from exc


@dataclass(frozen=True)
class ComparisonReport:
    """Largest absolute difference between ONNX Runtime and PyTorch, per output."""

    model: str
    max_abs_error: dict[str, float]
    samples: int

    def over(self, tolerance: dict[str, float]) -> dict[str, float]:
        """The outputs whose difference exceeds ``tolerance`` (a key it lacks allows none)."""
        return {k: v for k, v in self.max_abs_error.items() if v > tolerance.get(k, 0.0)}

    def raise_if_over(self, tolerance: dict[str, float]) -> None:
        over = self.over(tolerance)
        if over:
            raise ExportError(f"{self.model}: ONNX Runtime differs from PyTorch beyond tolerance: {over} "
                              f"(tolerance {tolerance})")


def _session(path: Path) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


SCORE_FLOOR = 1e-3
"""Scores below this in both runtimes are left out of the ``scores`` comparison. The served score is
``sqrt(sigmoid(class) * sigmoid(centerness))``: where a class logit is near -17, ONNX Runtime's
sigmoid underflows to exactly 0 and PyTorch's gives 5e-8, and the square root turns that into a
1e-4 difference between two scores no threshold comes near (the NMS comparison covers the scores
that are kept)."""


def score_error(ours: npt.NDArray[np.float32], theirs: npt.NDArray[np.float32], floor: float = SCORE_FLOOR) -> float:
    """Largest absolute difference of two score arrays where either is at least ``floor``."""
    compared = np.maximum(ours, theirs) >= floor
    return float(np.abs(ours - theirs)[compared].max(initial=0.0))


def compare_detector(detector: FashionDetector, path: Path, batches: Sequence[npt.NDArray[np.uint8]],
                     nms: NmsSettings) -> ComparisonReport:
    """Run both on each uint8 batch [B, S, S, 3]; compare boxes, scores and the NMS selection."""
    from fashionbox.models.nms import nms_onnx_semantics

    session = _session(path)
    errors = {"boxes": 0.0, "scores": 0.0, "nms_count_mismatch": 0.0, "nms_scores": 0.0}
    samples = 0
    for batch in batches:
        with torch.no_grad():
            reference = detector.eval()(torch.from_numpy(batch))
        boxes, scores, selected = session.run(None, {contract.ONNX_DETECTOR_INPUT: batch})  # type: ignore[attr-defined]
        errors["boxes"] = max(errors["boxes"], float(np.abs(boxes - reference.boxes.numpy()).max()))
        errors["scores"] = max(errors["scores"], score_error(scores, reference.scores.numpy()))
        expected = nms_onnx_semantics(reference.boxes, reference.scores, nms).numpy()
        # Compare what NMS kept by score, per (image, class): among exactly tied scores either
        # runtime may keep a different box, which is not an error.
        reference_scores = reference.scores.numpy()
        for b, c in {(int(b), int(c)) for b, c, _ in np.concatenate([expected, selected]).tolist()}:
            ours = np.sort(scores[b, c, selected[(selected[:, 0] == b) & (selected[:, 1] == c), 2]])
            theirs = np.sort(reference_scores[b, c, expected[(expected[:, 0] == b) & (expected[:, 1] == c), 2]])
            if len(ours) != len(theirs):
                errors["nms_count_mismatch"] += 1.0
            else:
                errors["nms_scores"] = max(errors["nms_scores"], float(np.abs(ours - theirs).max(initial=0.0)))
        samples += len(batch)
    return ComparisonReport("detector", errors, samples)


def compare_attributes(classifier: AttributeClassifier, path: Path,
                       batches: Sequence[npt.NDArray[np.uint8]]) -> ComparisonReport:
    """Largest difference of ``probs`` and, with those heads, of the ``masks`` probabilities, the
    ``verticals`` softmax and the ``embeddings`` (max abs difference, and ``embeddings_cosine``:
    the largest ``1 - cosine`` between a crop's two embeddings)."""
    session = _session(path)
    keys = list(classifier.output_names)
    names = attribute_output_names(classifier)
    errors = dict.fromkeys(keys, 0.0)
    if "embeddings" in keys:
        errors["embeddings_cosine"] = 0.0
    samples = 0
    for batch in batches:
        with torch.no_grad():
            reference = classifier.eval().outputs(torch.from_numpy(batch))
        outputs = session.run(names, {contract.ONNX_ATTRIBUTES_INPUT: batch})  # type: ignore[attr-defined]
        for key, ours in zip(keys, outputs, strict=True):
            theirs = reference[key].numpy()
            if ours.shape != theirs.shape:
                raise ExportError(f"{path}: {key} has shape {ours.shape}, PyTorch gives {theirs.shape}")
            errors[key] = max(errors[key], float(np.abs(ours - theirs).max(initial=0.0)))
            if key == "embeddings":
                cosine = (ours * theirs).sum(axis=1) / np.maximum(
                    np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1), 1e-12)
                errors["embeddings_cosine"] = max(errors["embeddings_cosine"], float((1 - cosine).max(initial=0.0)))
        samples += len(batch)
    return ComparisonReport("attributes", errors, samples)



def mask_logits_error(ours: DetectorOutput, theirs: DetectorOutput, pairs: Sequence[tuple[int, int]]) -> float:
    """The largest difference between twin detections' mask logits (coefficients times the image's prototypes);
    ``pairs``: (our row, their row) of each twin pair. 0 where either side does not segment."""
    coeffs, twin_coeffs, protos, twin_protos = ours.mask_coeffs, theirs.mask_coeffs, ours.protos, theirs.protos
    if not pairs or coeffs is None or twin_coeffs is None or protos is None or twin_protos is None:
        return 0.0
    rows, twins = (list(side) for side in zip(*pairs, strict=True))
    mine = coeffs[rows] @ protos.reshape(protos.shape[0], -1)
    other = twin_coeffs[twins] @ twin_protos.reshape(twin_protos.shape[0], -1)
    return float(np.abs(mine - other).max())


def compare_torch_runners(torch_detector: DetectorRunner, detector_onnx: Path, attributes_weights: Path,
                          attributes_onnx: Path, detector_batches: Sequence[npt.NDArray[np.uint8]],
                          attribute_batches: Sequence[npt.NDArray[np.uint8]], *,
                          max_detections: int, num_attribute_labels: int,
                          torch_heads: TorchAttributes | None = None) -> list[ComparisonReport]:
    """The torch runtime's runners (on the CPU, FP32) against the ONNX graphs, answer for answer.

    ``torch_detector`` is the runtime's detector runner (:class:`fashionbox.models.torch_runtime.TorchDetector`
    or a family's :class:`fashionbox.models.torch_runtime.TorchDetrDetector`). Checks what the torch
    runtime adds to the networks the ONNX comparison already covered: batched NMS (or the family's
    graph rebuilt from its saved files) and the gathering of detections. Per image the same number of
    detections (``detections_count_mismatch`` counts images where they differ), then the largest
    difference of boxes and scores in the served order (a segmenting graph's mask logits too), and of the
    attribute probabilities.
    """
    from fashionbox.core.serving import OnnxAttributes, OnnxDetector, OrtSettings
    from fashionbox.models.torch_runtime import TorchAttributes

    onnx_detector = OnnxDetector(detector_onnx, OrtSettings(), max_detections=max_detections)
    errors = {"boxes": 0.0, "scores": 0.0, "detections_count_mismatch": 0.0,
              **({"mask_logits": 0.0} if onnx_detector.segments else {})}
    samples = 0
    for batch in detector_batches:
        for ours, theirs in zip(torch_detector.detect(batch), onnx_detector.detect(batch), strict=True):
            if len(ours) != len(theirs):
                errors["detections_count_mismatch"] += 1.0
            elif len(ours):
                errors["boxes"] = max(errors["boxes"], float(np.abs(ours.boxes - theirs.boxes).max()))
                errors["scores"] = max(errors["scores"], float(np.abs(ours.scores - theirs.scores).max()))
                if onnx_detector.segments:  # a segmenting graph (RF-DETR-Seg): the mask logits, in served order
                    if ours.protos is None:
                        raise ExportError("the ONNX graph segments but the torch runtime's detections carry no masks")
                    errors["mask_logits"] = max(errors["mask_logits"],
                                                mask_logits_error(ours, theirs, [(i, i) for i in range(len(ours))]))
        samples += len(batch)
    if torch_heads is None:  # else the caller's runner of ``attributes_weights``
        torch_heads = TorchAttributes(attributes_weights, device="cpu", precision="fp32",
                                      num_attribute_labels=num_attribute_labels)
    onnx_heads = OnnxAttributes(attributes_onnx, OrtSettings(), num_attribute_labels=num_attribute_labels)
    worst = max(float(np.abs(torch_heads.classify(b) - onnx_heads.classify(b)).max()) for b in attribute_batches)
    head_errors = {"probs": worst}
    if torch_heads.mask_size:
        session = _session(attributes_onnx)
        head_errors["masks"] = max(
            float(np.abs(torch_heads.classify_with_masks(b)[1] - session.run(  # type: ignore[attr-defined]
                [contract.ONNX_ATTRIBUTES_MASKS], {contract.ONNX_ATTRIBUTES_INPUT: b})[0]).max(initial=0.0))
            for b in attribute_batches)
    return [ComparisonReport("torch detector", errors, samples),
            ComparisonReport("torch attributes", head_errors, sum(len(b) for b in attribute_batches))]
