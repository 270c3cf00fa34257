"""PyTorch runners for the python backend: the detectors, the attribute heads and the image-level
networks on CUDA or the CPU.

The GPU profile without TensorRT (``fashionbox convert --target gpu --runtime torch``) serves the
networks with PyTorch on the model instance's GPU; the same classes run on the CPU, which is how
they are tested on a machine without CUDA and how the converter checks them against ONNX Runtime
before it writes a repository. They load safetensors only (no pickle, no code from a file): the
FashionBox checkpoint into the networks of :mod:`fashionbox.models`, or a transformers family's
saved model into the graph the converter exports (:class:`TorchDetrDetector`, :class:`TorchImageBranch`),
and answer exactly as :class:`fashionbox.core.serving.OnnxDetector` /
:class:`fashionbox.core.serving.OnnxAttributes` do::

    detector = TorchDetector(path, device="cuda:0", precision="fp16", nms=NmsSettings(), max_detections=100)
    detector.detect(pixels)          # uint8 [B, S, S, 3] -> list[DetectorOutput]
    detr = TorchDetrDetector(folder, device="cuda:0", precision="fp16", score_threshold=0.5, max_detections=100)
    detr.detect(pixels)              # the same, a DETR-style family's graph (its post-processing inside)
    heads = TorchAttributes(path, device="cuda:0", precision="fp16", num_attribute_labels=15)
    heads.classify(crops)            # uint8 [B, C, C, 3] -> float32 [B, A]
    heads.classify_with_masks(crops) # ... and float32 [B, m, m] mask probabilities (heads.mask_size > 0)

On CUDA each runner pads a batch to the next of a few fixed sizes (:func:`batch_buckets` of the
model's ``max_batch_size``) and runs every one at load: a shape's first sight costs seconds there.

FP16 is autocast (convolutions and matmuls in half precision, reductions and the box decode in
float32), and only on CUDA: asking for it on a CPU is refused, never silently dropped. A device
that is not there (``cuda:1`` on a one-GPU host, CUDA on a CPU build of torch) fails model load
with a message naming it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fashionbox.core.postprocessing import AnyArray, DetectorOutput, Float32Array, detections_from_kept

if TYPE_CHECKING:
    import torch

    from fashionbox.core.serving import RuntimeSettings
    from fashionbox.models.nms import NmsSettings

__all__ = ["BRANCH_FILE", "TorchAttributes", "TorchDetector", "TorchDetrDetector", "TorchImageBranch",
           "TorchRuntimeError", "batch_buckets", "resolve_device", "set_threads"]

BRANCH_FILE = "branch.json"
"""Beside an image-level family's transformers files (``config.json``, ``model.safetensors``): its kind,
model class, normalisation and input size, what :class:`TorchImageBranch` needs to rebuild the graph."""

log = logging.getLogger(__name__)


class TorchRuntimeError(RuntimeError):
    """The requested device or precision is not available here; fails model load."""


def set_threads(threads: int) -> None:
    """CPU threads of this process's torch pools (a python-backend stub runs one model instance)."""
    import torch

    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel region
        torch.set_num_interop_threads(threads)


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes a CUDA runner pads to: powers of two below ``max_batch_size``, and it.

    The first call at a new input shape is slow on CUDA (cuDNN plans each convolution per shape;
    inferred, not profiled): measured on an H200, 2-3 s per new batch size for the detector
    (tests/benchmarks/bench_torch_shapes.py), and a 4 s load window saw almost nothing but
    such first sights. Padding a batch up to the next bucket bounds the shapes to ``log2(max) + 1``,
    all run once at load, for at most twice the rows of compute on a device that has it to spare.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    buckets = [1]
    while buckets[-1] * 2 < max_batch_size:
        buckets.append(buckets[-1] * 2)
    if buckets[-1] != max_batch_size:
        buckets.append(max_batch_size)
    return tuple(buckets)


def resolve_device(device: str, precision: str) -> torch.device:
    """``device`` checked against this host and ``precision`` against the device."""
    import torch

    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise TorchRuntimeError(f"unknown torch device {device!r}: {exc}") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise TorchRuntimeError(
                f"device {device} was asked for (a KIND_GPU instance) but this torch ({torch.__version__}) sees no "
                "CUDA device: install a CUDA build of torch on the GPU host, or serve the cpu profile")
        index = 0 if resolved.index is None else resolved.index
        if index >= torch.cuda.device_count():
            raise TorchRuntimeError(f"device {device} does not exist: this host has {torch.cuda.device_count()} GPU(s)")
        resolved = torch.device("cuda", index)
    elif resolved.type != "cpu":
        raise TorchRuntimeError(f"device {device!r}: FashionBox runs PyTorch on cuda or cpu only")
    if precision == "fp16" and resolved.type != "cuda":
        raise TorchRuntimeError("fp16 needs a CUDA device; on the CPU serve fp32 (it is not dropped silently)")
    if precision not in ("fp16", "fp32"):
        raise TorchRuntimeError(f"precision must be fp16 or fp32, got {precision!r}")
    return resolved


def _from_pretrained(folder: Path, model_class: str) -> Any:
    """transformers' ``model_class`` from ``folder``'s config and safetensors, in eval mode; no progress bars
    (a model instance's log is no terminal)."""
    import transformers

    cls = getattr(transformers, model_class, None)
    if cls is None:
        raise TorchRuntimeError(f"{folder}: this transformers ({transformers.__version__}) has no {model_class}")
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    return cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True).eval()


class _Runner:
    """Shared device, precision and input handling of the runners."""

    def __init__(self, model: Any, *, device: str, precision: str, max_batch_size: int,
                 bucketed: bool | None) -> None:
        import torch

        self.device = resolve_device(device, precision)
        self.precision = precision
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            # NHWC input permuted to NCHW is channels-last in memory already. No cudnn.benchmark: it
            # would time every algorithm per shape; the buckets bound the shapes, warm_up runs each.
            self.model = self.model.to(memory_format=torch.channels_last)
        # On the CPU a new shape costs nothing and padding would cost compute: buckets by default on CUDA.
        use_buckets = self.device.type == "cuda" if bucketed is None else bucketed
        self.buckets: tuple[int, ...] = batch_buckets(max_batch_size) if use_buckets else ()

    def warm_up(self, sample_shape: tuple[int, ...]) -> None:
        """Run every batch shape this runner will see (one on the CPU, each bucket on CUDA) before serving."""
        for size in self.buckets or (1,):
            self._run(np.zeros((size, *sample_shape), dtype=np.uint8))

    def _run(self, array: AnyArray) -> Any:
        raise NotImplementedError

    def _padded(self, array: AnyArray) -> AnyArray:
        """``array`` with zero rows appended up to its bucket (as is on the CPU, or past the largest)."""
        rows = array.shape[0]
        bucket = next((b for b in self.buckets if b >= rows), rows)
        if bucket == rows:
            return array
        padded = np.zeros((bucket, *array.shape[1:]), dtype=array.dtype)
        padded[:rows] = array
        return padded

    def _forward(self, array: AnyArray) -> Any:
        """The model on ``array`` padded to its bucket, in inference mode (autocast for fp16)."""
        import torch

        with torch.inference_mode(), self._context():
            return self.model(self._tensor(self._padded(array)))

    def _context(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.precision == "fp16":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _tensor(self, array: AnyArray) -> torch.Tensor:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor


def _nms_detections(boxes: torch.Tensor, scores: torch.Tensor, nms: NmsSettings, pre_nms_top_k: int,
                    max_detections: int) -> list[DetectorOutput]:
    """Batched NMS on the device, then only the kept rows cross to the host (not ``[B, N, 4]`` and ``[B, C, N]``)."""
    import torch

    from fashionbox.models.nms import nms_batched

    with torch.inference_mode():
        selected = nms_batched(boxes, scores, nms, pre_nms_top_k=pre_nms_top_k)
        b, c, n = selected.unbind(1)
        return detections_from_kept(selected.cpu().numpy(), boxes[b, n].cpu().numpy(), scores[b, c, n].cpu().numpy(),
                                    batch=int(boxes.shape[0]), max_detections=max_detections)


class TorchDetector(_Runner):
    """The FashionBox detector network plus batched NMS (:func:`fashionbox.models.nms.nms_batched`)."""

    def __init__(self, weights: Path, *, device: str, precision: str, nms: NmsSettings, max_detections: int,
                 pre_nms_top_k: int = 512, max_batch_size: int = 1, bucketed: bool | None = None) -> None:
        from fashionbox.models import load_detector

        if max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}")
        detector, _labels = load_detector(weights)
        super().__init__(detector, device=device, precision=precision, max_batch_size=max_batch_size,
                         bucketed=bucketed)
        self.weights = weights
        self.nms = nms
        self.max_detections = max_detections
        self.pre_nms_top_k = pre_nms_top_k
        self.input_size = int(detector.config.input_size)
        self.warm_up((self.input_size, self.input_size, 3))
        log.info("torch detector %s on %s (%s)", weights, self.device, precision)

    @classmethod
    def from_settings(cls, weights: Path, runtime: RuntimeSettings, *, device: str,
                      max_detections: int, max_batch_size: int = 1) -> TorchDetector:
        from fashionbox.models.nms import NmsSettings

        nms = NmsSettings(score_threshold=runtime.score_threshold, iou_threshold=runtime.iou_threshold,
                          max_per_class=max_detections, max_detections=max_detections)
        return cls(weights, device=device, precision=runtime.precision, nms=nms, max_detections=max_detections,
                   pre_nms_top_k=runtime.pre_nms_top_k, max_batch_size=max_batch_size)

    def _run(self, array: AnyArray) -> list[DetectorOutput]:
        return self.detect(array)

    def detect(self, pixels: AnyArray) -> list[DetectorOutput]:
        """uint8 ``[B, S, S, 3]`` letterboxed images -> one :class:`DetectorOutput` per image."""
        import torch

        rows = pixels.shape[0]
        with torch.inference_mode():
            with self._context():
                out = self.model(self._tensor(self._padded(pixels)))
            return _nms_detections(out.boxes[:rows].float(), out.scores[:rows].float(), self.nms,
                                   self.pre_nms_top_k, self.max_detections)


class TorchDetrDetector(_Runner):
    """A DETR-style family's detector (DETR, Conditional DETR, RT-DETR, YOLOS) in PyTorch: the transformers
    model saved in ``folder`` (safetensors) inside :class:`fashionbox.models.detr_graph.DetrGraph`, the
    graph the converter exports, so it answers as the ONNX graph does (its post-processing included:
    no NMS; a segmenting graph's mask coefficients and prototypes, RF-DETR-Seg's, with each detection).
    uint8 ``[B, S, S, 3]`` letterboxed images -> one :class:`DetectorOutput` per image. Needs
    transformers in the serving environment (it builds the model from its config)."""

    def __init__(self, folder: Path, *, device: str, precision: str, score_threshold: float, max_detections: int,
                 max_batch_size: int = 1, bucketed: bool | None = None, iou_threshold: float = 1.0,
                 pre_nms_top_k: int = 512) -> None:
        from fashionbox.models.detr_graph import DetrGraph, DetrSpec
        from fashionbox.models.nms import NmsSettings
        from fashionbox.models.owl_graph import OWL_SCORING, OwlGraph, load_queries

        if max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}")
        spec = DetrSpec.read(folder)
        self.segments = spec.masks
        """Whether the graph segments (RF-DETR-Seg): each detection then carries ``mask_coeffs`` and ``protos``."""
        network = _from_pretrained(folder, spec.model_class)
        # an open-vocabulary (OWL) graph gives every patch's box and best query's score: NMS follows, as for
        # the default detector; the DETR-style graphs end in their processor's own selection
        self.nms = (NmsSettings(score_threshold=score_threshold, iou_threshold=iou_threshold,
                                max_per_class=max_detections, max_detections=max_detections)
                    if spec.scoring == OWL_SCORING else None)
        graph = (OwlGraph(network, spec, load_queries(folder)) if self.nms is not None
                 else DetrGraph(network, spec, score_threshold))
        super().__init__(graph, device=device, precision=precision, max_batch_size=max_batch_size, bucketed=bucketed)
        self.folder = folder
        self.max_detections = max_detections
        self.pre_nms_top_k = pre_nms_top_k
        self.input_size = spec.input_size
        self.warm_up((self.input_size, self.input_size, 3))
        log.info("torch %s detector %s on %s (%s)", spec.model_class, folder, self.device, precision)

    @classmethod
    def from_settings(cls, folder: Path, runtime: RuntimeSettings, *, device: str, max_detections: int,
                      max_batch_size: int = 1) -> TorchDetrDetector:
        return cls(folder, device=device, precision=runtime.precision, score_threshold=runtime.score_threshold,
                   max_detections=max_detections, max_batch_size=max_batch_size, iou_threshold=runtime.iou_threshold,
                   pre_nms_top_k=runtime.pre_nms_top_k)

    def _run(self, array: AnyArray) -> list[DetectorOutput]:
        return self.detect(array)

    def detect(self, pixels: AnyArray) -> list[DetectorOutput]:
        """uint8 ``[B, S, S, 3]`` letterboxed images -> one :class:`DetectorOutput` per image."""
        from fashionbox.core.postprocessing import gather_detections

        rows = pixels.shape[0]
        if self.nms is not None:
            boxes, scores = self._forward(pixels)
            return _nms_detections(boxes[:rows].float(), scores[:rows].float(), self.nms, self.pre_nms_top_k,
                                   self.max_detections)
        boxes, scores, selected, *masks = self._forward(pixels)
        selected = selected[selected[:, 0] < rows]  # the bucket's padding rows are not answered
        # a segmenting graph's coefficients [B, Q, K] and prototypes [B, K, h, w], in fp32 as ONNX Runtime's
        coeffs, protos = (t[:rows].float().cpu().numpy() for t in masks) if self.segments else (None, None)
        return gather_detections(boxes[:rows].float().cpu().numpy(), scores[:rows].float().cpu().numpy(),
                                 selected.cpu().numpy(), max_detections=self.max_detections, mask_coeffs=coeffs,
                                 protos=protos)


class TorchAttributes(_Runner):
    """The attribute heads: uint8 crops ``[B, C, C, 3]`` -> float32 probs ``[B, A]``.

    With a checkpoint that has a mask head (``mask_size > 0``), :meth:`classify_with_masks` also
    returns each crop's mask probabilities ``[B, m, m]``, from the same pass over the trunk.
    """

    def __init__(self, weights: Path, *, device: str, precision: str, num_attribute_labels: int,
                 max_batch_size: int = 1, bucketed: bool | None = None) -> None:
        from fashionbox.models import load_attributes

        classifier, _labels = load_attributes(weights)
        super().__init__(classifier, device=device, precision=precision, max_batch_size=max_batch_size,
                         bucketed=bucketed)
        self.weights = weights
        self.num_attribute_labels = num_attribute_labels
        self.mask_size: int = int(classifier.mask_size)
        """Side of the mask grid; 0 when the checkpoint has no mask head."""
        size = int(classifier.config.crop_size)
        self.warm_up((size, size, 3))  # also checks the label count
        log.info("torch attribute heads %s on %s (%s)", weights, self.device, precision)

    def _run(self, array: AnyArray) -> Float32Array:
        if self.mask_size:
            return self.classify_with_masks(array)[0]
        return self.classify(array)

    def classify(self, crops: AnyArray) -> Float32Array:
        import torch

        with torch.inference_mode():
            with self._context():
                probs = self.model(self._tensor(self._padded(crops)))
            result: Float32Array = probs[:crops.shape[0]].float().cpu().numpy()
        return self._checked(result, crops.shape[0])

    def classify_with_masks(self, crops: AnyArray) -> tuple[Float32Array, Float32Array]:
        """Probs ``[B, A]`` and mask probabilities ``[B, m, m]`` (over each crop's region)."""
        import torch

        if not self.mask_size:
            raise ValueError(f"{self.weights} has no mask head: serve masks from a checkpoint trained with one")
        rows = crops.shape[0]
        with torch.inference_mode():
            with self._context():
                probs, masks = self.model.predict(self._tensor(self._padded(crops)))
            result: Float32Array = probs[:rows].float().cpu().numpy()
            mask_result: Float32Array = masks[:rows].float().cpu().numpy()
        return self._checked(result, rows), mask_result

    @property
    def output_names(self) -> tuple[str, ...]:
        """What :meth:`run_all` returns: ``probs`` and, with those heads, ``masks``, ``embeddings``,
        ``verticals`` (the attribute graph's ONNX output names)."""
        names: tuple[str, ...] = self.model.output_names
        return names

    @property
    def verticals(self) -> tuple[str, ...]:
        """The vertical head's class names, in output order; empty without one."""
        names: tuple[str, ...] = self.model.config.verticals if self.model.vertical_head is not None else ()
        return names

    @property
    def outputs(self) -> tuple[str, ...]:
        """The optional heads' outputs (``masks``, ``embeddings``, ``verticals``), as the ONNX runner names them."""
        return tuple(name for name in self.output_names if name != "probs")

    def run(self, crops: AnyArray, names: Sequence[str]) -> dict[str, Float32Array]:
        """``probs`` and the optional outputs ``names``, keyed by ONNX output name (the ONNX runner's call)."""
        missing = [name for name in names if name not in self.outputs]
        if missing:
            raise ValueError(f"{self.weights} has no output {missing} (it has {list(self.outputs)})")
        results = self.run_all(crops)
        return {name: results[name] for name in ("probs", *names)}

    def run_all(self, crops: AnyArray) -> dict[str, Float32Array]:
        """Every output of the checkpoint for uint8 crops ``[B, C, C, 3]``, from one pass over the trunk:
        ``probs`` [B, A], ``masks`` [B, m, m], ``embeddings`` [B, D] (unit length), ``verticals`` [B, V]."""
        import torch

        rows = crops.shape[0]
        with torch.inference_mode():
            with self._context():
                outputs = self.model.outputs(self._tensor(self._padded(crops)))
            result: dict[str, Float32Array] = {name: value[:rows].float().cpu().numpy()
                                               for name, value in outputs.items()}
        self._checked(result["probs"], rows)
        return result

    def _checked(self, probs: Float32Array, rows: int) -> Float32Array:
        expected = (rows, self.num_attribute_labels)
        if probs.shape != expected:
            # A label map that does not match the heads would mislabel every attribute: refuse.
            raise ValueError(f"{self.weights} returned probs of shape {probs.shape}, expected {expected}")
        return probs


class TorchImageBranch(_Runner):
    """An image-level family's network (``classifier`` or ``embedder``) in PyTorch: the transformers model
    saved in ``folder`` (safetensors) inside :class:`fashionbox.models.image_graph.ImageGraph`, the graph the
    converter exports, so it answers as the ONNX graph does. uint8 ``[B, H, W, 3]`` -> float32 ``[B, size]``.
    Needs transformers in the serving environment (it builds the model from its config)."""

    def __init__(self, folder: Path, *, device: str, precision: str, size: int, max_batch_size: int = 1,
                 bucketed: bool | None = None) -> None:
        import json

        from fashionbox.models.image_graph import ImageGraph

        spec = json.loads((folder / BRANCH_FILE).read_text(encoding="utf-8"))
        network = _from_pretrained(folder, str(spec["model_class"]))
        graph = ImageGraph(network, kind=str(spec["kind"]), scale=spec["scale"], bias=spec["bias"],
                           multi_label=bool(spec.get("multi_label", False)))
        super().__init__(graph, device=device, precision=precision, max_batch_size=max_batch_size, bucketed=bucketed)
        self.folder, self.size = folder, size
        self.warm_up((int(spec["height"]), int(spec["width"]), 3))
        log.info("torch %s %s on %s (%s)", spec["kind"], folder, self.device, precision)

    def _run(self, array: AnyArray) -> Float32Array:
        return self.run(array)

    def run(self, images: AnyArray) -> Float32Array:
        rows = images.shape[0]
        result: Float32Array = self._forward(images)[:rows].float().cpu().numpy()
        if result.shape != (rows, self.size):
            raise ValueError(f"{self.folder} returned {result.shape}, expected {(rows, self.size)}")
        return result
