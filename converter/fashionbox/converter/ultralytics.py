"""The Ultralytics YOLO family (YOLOv8 / YOLO11, detect and ``-seg``): an exported ONNX file -> the detector graph.

Spec ``--detector ultralytics:FILE.onnx``, where ``FILE.onnx`` is what Ultralytics' own exporter
writes (``yolo export model=best.pt format=onnx dynamic=True``). Nothing here imports ultralytics
or torch, and no pickle is read: the file's graph and its metadata (``names``, ``imgsz``,
``stride``, ``task``) are all there is. Small typed steps, as for the other families::

    model = load_ultralytics(Path("best.onnx"))            # validated; refuses what cannot be served
    export_ultralytics_onnx(model, Path("detector.onnx"), nms=NmsSettings(score_threshold=0.25))
    report = compare_ultralytics(model, Path("detector.onnx"), batches, nms)   # vs the user's graph + numpy

**The served graph is the user's graph with FashionBox's ends attached (ONNX graph surgery).**
In front: uint8 letterboxed pixels ``[B, S, S, 3]`` (a ``dynamic=True`` export: ``[B, H, W, 3]``, the
rect letterbox its predictor makes, ``RepositorySettings.letterbox_stride``) -> float ``/ 255`` -> NCHW,
which is what Ultralytics' predictor feeds (RGB, no mean or std). Ultralytics' ``LetterBox`` pads centred with
114 like :func:`fashionbox.core.imaging.letterbox` (the top/left padding is the floor of half);
its resize is OpenCV's bilinear where the house's is Pillow's, so parity is defined on the same
letterboxed pixels. Behind: ``output0 [B, 4 + nc (+ K), N]`` is decoded as its predictor's
``non_max_suppression`` does (``agnostic=False, multi_label=False``): centre-size boxes to corners,
each box's best class and score, class-aware ``NonMaxSuppression`` (IoU 0.7 by default) over
scores above the threshold (0.25), ending in the contract's ``boxes [B, N, 4]``, ``scores
[B, C, N]`` (each box scores only its best class), ``selected [M, 3]``, and for ``-seg`` graphs
``mask_coeffs [B, N, K]`` and ``protos [B, K, h, w]`` (``output1``). At most ``max_detections``
(300) per image are kept, the best by score, as Ultralytics' ``max_det``: NMS keeps that many
per class and :func:`fashionbox.core.postprocessing.gather_detections` the best of them.
Masks are assembled for the kept detections only, in ``postprocess``
(:func:`fashionbox.core.proto_masks.masks_from_protos`).
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from fashionbox import contract
from fashionbox.contract.labels import LabelMap
from fashionbox.converter.errors import ConvertError
from fashionbox.converter.labels import family_label_map
from fashionbox.core.postprocessing import DetectorOutput, detections_from_kept, gather_detections

if TYPE_CHECKING:
    import onnx

    from fashionbox.converter.export import ComparisonReport
    from fashionbox.models.nms import NmsSettings

__all__ = [
    "EXPORT_COMMAND",
    "UltralyticsError",
    "UltralyticsModel",
    "compare_ultralytics",
    "export_ultralytics_onnx",
    "load_ultralytics",
    "load_ultralytics_family",
    "reference_detections",
    "resized_ultralytics",
]

log = logging.getLogger(__name__)

EXPORT_COMMAND = "yolo export model=best.pt format=onnx dynamic=True"
"""How a user turns an Ultralytics checkpoint into the file this family reads (README)."""

TASKS = ("detect", "segment")
MIN_GRAPH_OPSET = 11
"""GatherElements and NonMaxSuppression with int64 Equal need opset 11 (Ultralytics exports 17-20)."""
_PREFIX = "fashionbox/"


class UltralyticsError(ConvertError):
    """An ONNX file that is not a servable Ultralytics YOLO detect/segment export."""


@dataclass(frozen=True)
class UltralyticsModel:
    """A validated Ultralytics ONNX export."""

    path: Path
    graph: onnx.ModelProto
    task: Literal["detect", "segment"]
    names: Mapping[int, str]
    input_size: int
    """Side ``S`` of the square letterbox (the export's ``imgsz``)."""
    stride: int
    mask_dim: int
    """``K``, prototypes per image (32 for ``-seg``; 0 for ``detect``)."""
    fixed_batch: int | None
    """1 for a default export (batch fixed at 1: served image by image), ``None`` for ``dynamic=True``."""
    label_map: LabelMap
    dynamic_shape: bool = False
    """The graph takes any height and width (``dynamic=True``): served with a rect letterbox of
    ``stride`` (``RepositorySettings.letterbox_stride``), as Ultralytics' predictor runs it."""

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def segments(self) -> bool:
        return self.mask_dim > 0


# -- loading and validation ---------------------------------------------------------------------------


def _literal(metadata: Mapping[str, str], key: str, path: Path) -> Any:
    try:
        return ast.literal_eval(metadata[key])  # Python literals only: nothing is executed
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise UltralyticsError(f"{path}: metadata {key!r} is not readable ({metadata[key][:80]!r})") from exc


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _names(raw: Any, path: Path) -> dict[int, str]:
    if isinstance(raw, list):
        raw = dict(enumerate(raw))
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, int) and isinstance(v, str)
                                                      for k, v in raw.items()):
        raise UltralyticsError(f"{path}: metadata 'names' must map class indices to names, got {str(raw)[:80]!r}")
    if sorted(raw) != list(range(len(raw))):
        raise UltralyticsError(f"{path}: metadata 'names' must number its classes 0..{len(raw) - 1}, "
                               f"got {sorted(raw)[:10]}")
    return {int(k): str(v) for k, v in raw.items()}


def _input_size(raw: Any, stride: int, path: Path) -> int:
    sides = [raw, raw] if isinstance(raw, int) else raw
    if not isinstance(sides, (list, tuple)) or len(sides) != 2 or not all(isinstance(s, int) for s in sides):
        raise UltralyticsError(f"{path}: metadata 'imgsz' must be [height, width], got {raw!r}")
    height, width = sides
    if height != width:
        raise UltralyticsError(f"{path}: imgsz {height}x{width} is not square; FashionBox letterboxes to a square: "
                               f"export with imgsz={max(height, width)}")
    if height < stride or height % stride:
        raise UltralyticsError(f"{path}: imgsz {height} is not a multiple of the model's stride {stride}")
    return int(height)


def check_path(path: Path) -> Path:
    """``path`` if it names an existing ``.onnx`` file; a ``.pt`` (a pickle) or anything else is refused."""
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        raise UltralyticsError(f"{path}: PyTorch checkpoints are pickles and are refused; export it to ONNX "
                               f"first: {EXPORT_COMMAND}")
    if path.suffix != ".onnx":
        raise UltralyticsError(f"{path}: expected the .onnx file that `{EXPORT_COMMAND}` writes")
    if not path.is_file():
        raise UltralyticsError(f"checkpoint not found: {path}")
    return path


def load_ultralytics(path: Path, attribute_labels: LabelMap | None = None) -> UltralyticsModel:
    """Read and validate ``path``; every refusal says what is wrong before anything is written."""
    import onnx

    path = check_path(path)
    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
    except Exception as exc:  # protobuf's DecodeError, onnx's ValidationError, a missing external file
        raise UltralyticsError(f"{path} is not a readable ONNX model (truncated or not ONNX?): {exc}") from exc
    metadata = {p.key: p.value for p in graph.metadata_props}
    missing = [k for k in ("names", "imgsz", "task", "stride") if k not in metadata]
    if missing:
        raise UltralyticsError(f"{path} has no Ultralytics metadata {missing}: not a file written by "
                               f"`{EXPORT_COMMAND}`")
    task = metadata["task"]
    if task not in TASKS:
        raise UltralyticsError(f"{path}: task {task!r} is not served; the ultralytics family serves {TASKS}")
    if metadata.get("end2end", "False") == "True" or metadata.get("nms", "False") == "True":
        raise UltralyticsError(f"{path}: an end-to-end (NMS-inside) export is not served; export the raw head "
                               "(YOLOv8/YOLO11, without nms=True)")
    names = _names(_literal(metadata, "names", path), path)
    stride_raw = _literal(metadata, "stride", path)
    stride = int(max(stride_raw)) if isinstance(stride_raw, (list, tuple)) else int(stride_raw)
    size = _input_size(_literal(metadata, "imgsz", path), stride, path)
    opset = max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_GRAPH_OPSET:
        raise UltralyticsError(f"{path}: opset {opset} is older than {MIN_GRAPH_OPSET}; export with a newer opset")

    inputs = [i for i in graph.graph.input if i.name not in {t.name for t in graph.graph.initializer}]
    if len(inputs) != 1:
        raise UltralyticsError(f"{path}: expected one image input, got {[i.name for i in inputs]}")
    (image,) = inputs
    shape = _dims(image)
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise UltralyticsError(f"{path}: input {image.name!r} must be float32 (an fp16 or int8 export is not served)")
    if len(shape) != 4 or shape[1] != 3 or any(isinstance(s, int) and s != size for s in shape[2:]):
        raise UltralyticsError(f"{path}: input {image.name!r} must be [batch, 3, {size}, {size}], got {shape}")
    fixed_batch = shape[0] if isinstance(shape[0], int) else None
    dynamic_shape = not any(isinstance(side, int) for side in shape[2:])

    expected_outputs = 2 if task == "segment" else 1
    outputs = list(graph.graph.output)
    if len(outputs) != expected_outputs:
        raise UltralyticsError(f"{path}: a {task} export has {expected_outputs} output(s), this one has "
                               f"{[o.name for o in outputs]}")
    # A dynamic export names its channel counts symbolically: one run on a blank image gives them
    probed = _probe(graph, size, path)
    head = list(probed[0].shape)
    mask_dim = 0
    if task == "segment":
        protos = list(probed[1].shape)
        if len(protos) != 4 or protos[1] < 1:
            raise UltralyticsError(f"{path}: the mask prototypes {outputs[1].name!r} must be [batch, K, h, w], "
                                   f"got {protos}")
        mask_dim = int(protos[1])
    channels = 4 + len(names) + mask_dim
    if len(head) != 3:
        raise UltralyticsError(f"{path}: output {outputs[0].name!r} must be [batch, 4 + classes"
                               f"{' + K' if mask_dim else ''}, anchors], got {head}")
    if head[1] != channels:
        raise UltralyticsError(
            f"{path}: output {outputs[0].name!r} has {head[1]} channels per anchor, but 4 box + {len(names)} classes "
            f"(metadata 'names'){f' + {mask_dim} mask' if mask_dim else ''} = {channels}: the names do not "
            "match the model, or the file is another layout")
    clashes = {contract.ONNX_DETECTOR_INPUT, contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES,
               contract.ONNX_DETECTOR_SELECTED, contract.ONNX_DETECTOR_MASK_COEFFS, contract.ONNX_DETECTOR_PROTOS}
    used = {t for node in graph.graph.node for t in (*node.input, *node.output)} | {i.name for i in graph.graph.input}
    if used & clashes:
        raise UltralyticsError(f"{path}: the graph already names tensors {sorted(used & clashes)}, which the served "
                               "graph's contract uses")
    return UltralyticsModel(path=path, graph=graph, task="segment" if mask_dim else "detect", names=names,
                            input_size=size, stride=stride, mask_dim=mask_dim, fixed_batch=fixed_batch,
                            dynamic_shape=dynamic_shape,
                            label_map=family_label_map(names, attribute_labels, name="ultralytics"))


def _probe(graph: onnx.ModelProto, size: int, path: Path) -> list[npt.NDArray[np.float32]]:
    """The graph's outputs for one blank ``size`` image (ONNX Runtime)."""
    try:
        session = _session_for(graph)
        return [np.asarray(o) for o in session.run(None, {session.get_inputs()[0].name:
                                                           np.zeros((1, 3, size, size), dtype=np.float32)})]
    except Exception as exc:  # onnxruntime's own errors: a graph that does not run
        raise UltralyticsError(f"{path}: ONNX Runtime cannot run the graph on a {size}x{size} image: {exc}") from exc


def resized_ultralytics(model: UltralyticsModel, size: int) -> UltralyticsModel:
    """``model`` served at letterbox side ``size`` instead of its ``imgsz``: a ``dynamic=True`` export at
    a multiple of its stride, as Ultralytics' predictor runs one at another ``imgsz``."""
    if not model.dynamic_shape:
        raise UltralyticsError(f"--input-size {size}: {model.path} was exported at a fixed {model.input_size}x"
                               f"{model.input_size}; export it with dynamic=True to serve it at another size")
    if size < model.stride or size % model.stride:
        raise UltralyticsError(f"--input-size {size}: this export takes a multiple of its stride {model.stride}")
    return replace(model, input_size=size)


def load_ultralytics_family(path: Path) -> tuple[UltralyticsModel, LabelMap]:
    """The family table's loader: the validated model and its label map (from the file's ``names``)."""
    model = load_ultralytics(path)
    return model, model.label_map


# -- the served graph ------------------------------------------------------------------------------------


def served_graph(model: UltralyticsModel, nms: NmsSettings) -> onnx.ModelProto:
    """The user's graph between FashionBox's pre-processing and Ultralytics' decode + NMS (module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    source = model.graph
    graph = onnx.GraphProto()
    graph.CopyFrom(source.graph)
    image_name = next(i.name for i in graph.input if i.name not in {t.name for t in graph.initializer})
    head_name = graph.output[0].name
    protos_name = graph.output[1].name if model.segments else None
    nc, k = model.num_classes, model.mask_dim
    batch: int | str = model.fixed_batch if model.fixed_batch is not None else "batch"

    def name(short: str) -> str:
        return _PREFIX + short

    def const(short: str, value: npt.NDArray[Any]) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name(short)))
        return name(short)

    pre = [
        helper.make_node("Cast", [contract.ONNX_DETECTOR_INPUT], [name("pixels_f")], to=TensorProto.FLOAT),
        helper.make_node("Div", [name("pixels_f"), const("255", np.array(255.0, dtype=np.float32))],
                         [name("pixels_01")]),
        helper.make_node("Transpose", [name("pixels_01")], [image_name], perm=[0, 3, 1, 2]),
    ]

    def sliced(short: str, start: int, stop: int) -> onnx.NodeProto:
        return helper.make_node(
            "Slice", [name("pred"), const(f"{short}_start", np.array([start], dtype=np.int64)),
                      const(f"{short}_stop", np.array([stop], dtype=np.int64)),
                      const(f"{short}_axis", np.array([2], dtype=np.int64))], [name(short)])

    post = [
        helper.make_node("Transpose", [head_name], [name("pred")], perm=[0, 2, 1]),  # [B, N, 4 + nc + K]
        sliced("xy", 0, 2), sliced("wh", 2, 4), sliced("cls", 4, 4 + nc),
        # ultralytics.utils.ops.xywh2xyxy: half = wh / 2; (xy - half, xy + half)
        helper.make_node("Div", [name("wh"), const("2", np.array(2.0, dtype=np.float32))], [name("half")]),
        helper.make_node("Sub", [name("xy"), name("half")], [name("xy1")]),
        helper.make_node("Add", [name("xy"), name("half")], [name("xy2")]),
        helper.make_node("Concat", [name("xy1"), name("xy2")], [contract.ONNX_DETECTOR_BOXES], axis=2),
        # multi_label=False: each box competes only for its best class, with that class's score
        helper.make_node("ArgMax", [name("cls")], [name("best_class")], axis=2, keepdims=1),
        helper.make_node("GatherElements", [name("cls"), name("best_class")], [name("best_score")], axis=2),
        helper.make_node("Equal", [const("classes", np.arange(nc, dtype=np.int64)), name("best_class")],
                         [name("is_best")]),
        helper.make_node("Where", [name("is_best"), name("best_score"), const("zero", np.array(0.0, np.float32))],
                         [name("scores_bnc")]),
        helper.make_node("Transpose", [name("scores_bnc")], [contract.ONNX_DETECTOR_SCORES], perm=[0, 2, 1]),
        helper.make_node(
            "NonMaxSuppression",
            [contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES,
             const("max_per_class", np.array([nms.max_detections], dtype=np.int64)),
             const("iou_threshold", np.array([nms.iou_threshold], dtype=np.float32)),
             const("score_threshold", np.array([nms.score_threshold], dtype=np.float32))],
            [contract.ONNX_DETECTOR_SELECTED], center_point_box=0),
    ]
    outputs = [
        helper.make_tensor_value_info(contract.ONNX_DETECTOR_BOXES, TensorProto.FLOAT, [batch, "anchors", 4]),
        helper.make_tensor_value_info(contract.ONNX_DETECTOR_SCORES, TensorProto.FLOAT, [batch, nc, "anchors"]),
        helper.make_tensor_value_info(contract.ONNX_DETECTOR_SELECTED, TensorProto.INT64, ["selected", 3]),
    ]
    if protos_name is not None:
        post += [sliced("coeffs", 4 + nc, 4 + nc + k),
                 helper.make_node("Identity", [name("coeffs")], [contract.ONNX_DETECTOR_MASK_COEFFS]),
                 helper.make_node("Identity", [protos_name], [contract.ONNX_DETECTOR_PROTOS])]
        outputs += [
            helper.make_tensor_value_info(contract.ONNX_DETECTOR_MASK_COEFFS, TensorProto.FLOAT,
                                          [batch, "anchors", k]),
            helper.make_tensor_value_info(contract.ONNX_DETECTOR_PROTOS, TensorProto.FLOAT,
                                          [batch, k, "proto_h", "proto_w"]),
        ]
    nodes = [*pre, *graph.node, *post]
    del graph.node[:]
    graph.node.extend(nodes)
    kept_inputs = [i for i in graph.input if i.name != image_name]
    del graph.input[:]
    height, width = ("height", "width") if model.dynamic_shape else (model.input_size, model.input_size)
    graph.input.extend([helper.make_tensor_value_info(contract.ONNX_DETECTOR_INPUT, TensorProto.UINT8,
                                                      [batch, height, width, 3]), *kept_inputs])
    del graph.output[:]
    graph.output.extend(outputs)
    graph.name = "fashionbox_ultralytics_detector"
    served = helper.make_model(graph, opset_imports=list(source.opset_import), ir_version=source.ir_version,
                               producer_name="fashionbox-converter")
    for key, value in {p.key: p.value for p in source.metadata_props}.items():
        served.metadata_props.add(key=f"ultralytics.{key}", value=value)
    return served


def export_ultralytics_onnx(model: UltralyticsModel, path: Path, *, nms: NmsSettings, opset: int | None = None,
                            letterbox_stride: int = 0) -> Path:
    """Write the served graph to ``path`` (the graph keeps the export's own opset; ``opset`` is not used).
    A rect letterbox (``letterbox_stride``) is served from a ``dynamic=True`` export as it is, at a
    multiple of its stride; a fixed-shape export takes only the square."""
    import onnx

    if letterbox_stride and (not model.dynamic_shape or letterbox_stride % model.stride):
        raise UltralyticsError(f"{model.path}: a rect letterbox of stride {letterbox_stride} needs a dynamic=True "
                               f"export and a multiple of its stride {model.stride}")
    served = served_graph(model, nms)
    try:
        onnx.checker.check_model(served, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UltralyticsError(f"the served graph built from {model.path} fails onnx.checker: {exc}") from exc
    onnx.save(served, str(path))
    return path


# -- the reference: the user's own graph and Ultralytics' decode in numpy --------------------------------


def _nms_numpy(boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], iou_threshold: float) -> list[int]:
    """Greedy NMS as torchvision's ``nms`` (and Ultralytics' ``TorchNMS``): best first, drop IoU > threshold."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), dtype=bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        w = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
        inter = w * h
        suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
    return keep


def reference_detections(model: UltralyticsModel, pixels: npt.NDArray[np.uint8],
                         nms: NmsSettings, session: Any = None) -> list[DetectorOutput]:
    """The user's graph on ``pixels / 255`` (ONNX Runtime), decoded in numpy as Ultralytics' NMS does.

    Boxes in letterbox pixels, sorted as :func:`fashionbox.core.postprocessing.gather_detections`
    sorts the served ones.
    """
    session = session or _session_for(model.graph)
    images = (pixels.astype(np.float32) / np.float32(255.0)).transpose(0, 3, 1, 2)
    input_name = session.get_inputs()[0].name
    step = 1 if model.fixed_batch == 1 else len(images)
    results: list[DetectorOutput] = []
    for start in range(0, len(images), step):
        outputs = session.run(None, {input_name: np.ascontiguousarray(images[start:start + step])})
        for b, pred in enumerate(outputs[0]):
            pred = pred.T  # [N, 4 + nc + K]
            nc = model.num_classes
            cls = pred[:, 4:4 + nc]
            best, score = cls.argmax(1), cls.max(1)
            keep = np.flatnonzero(score > np.float32(nms.score_threshold))
            half = pred[keep, 2:4] / np.float32(2.0)
            boxes = np.concatenate([pred[keep, 0:2] - half, pred[keep, 0:2] + half], axis=1)
            kept: list[int] = []
            for c in np.unique(best[keep]):
                members = np.flatnonzero(best[keep] == c)
                kept += [int(keep[members[i]]) for i in _nms_numpy(boxes[members], score[keep][members],
                                                                     nms.iou_threshold)]
            rows = np.array(kept, dtype=np.int64)
            selected = np.stack([np.zeros_like(rows), best[rows], rows], axis=1) if len(rows) else np.zeros((0, 3))
            half_all = pred[rows, 2:4] / np.float32(2.0)
            kept_boxes = np.concatenate([pred[rows, 0:2] - half_all, pred[rows, 0:2] + half_all], axis=1)
            (row,) = detections_from_kept(
                selected, kept_boxes, score[rows], batch=1, max_detections=nms.max_detections,
                kept_mask_coeffs=pred[rows, 4 + nc:] if model.segments else None,
                protos=outputs[1][b:b + 1] if model.segments else None)
            results.append(row)
    return results


def _session_for(graph: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


def compare_ultralytics(model: UltralyticsModel, path: Path, batches: Sequence[npt.NDArray[np.uint8]],
                        nms: NmsSettings) -> ComparisonReport:
    """The served graph (ONNX Runtime, through the served gathering) against :func:`reference_detections`."""
    import onnx

    from fashionbox.converter.export import ComparisonReport

    served = _session_for(onnx.load(str(path)))
    reference = _session_for(model.graph)
    errors = {"detections_count_mismatch": 0.0, "boxes": 0.0, "scores": 0.0}
    if model.segments:
        errors["mask_coeffs"] = 0.0
    names = [o.name for o in served.get_outputs()]
    samples = 0
    for batch in batches:
        step = 1 if model.fixed_batch == 1 else len(batch)
        for start in range(0, len(batch), step):
            pixels = batch[start:start + step]
            out = dict(zip(names, served.run(None, {contract.ONNX_DETECTOR_INPUT: pixels}), strict=True))
            ours = gather_detections(
                out[contract.ONNX_DETECTOR_BOXES], out[contract.ONNX_DETECTOR_SCORES],
                out[contract.ONNX_DETECTOR_SELECTED], max_detections=nms.max_detections,
                mask_coeffs=out.get(contract.ONNX_DETECTOR_MASK_COEFFS), protos=out.get(contract.ONNX_DETECTOR_PROTOS))
            theirs = reference_detections(model, pixels, nms, reference)
            for a, b in zip(ours, theirs, strict=True):
                if len(a) != len(b) or not np.array_equal(a.classes, b.classes):
                    errors["detections_count_mismatch"] += 1.0
                    continue
                if len(a):
                    errors["boxes"] = max(errors["boxes"], float(np.abs(a.boxes - b.boxes).max()))
                    errors["scores"] = max(errors["scores"], float(np.abs(a.scores - b.scores).max()))
                    if a.mask_coeffs is not None and b.mask_coeffs is not None:
                        errors["mask_coeffs"] = max(errors["mask_coeffs"],
                                                    float(np.abs(a.mask_coeffs - b.mask_coeffs).max()))
            samples += len(pixels)
    return ComparisonReport("detector", errors, samples)
