"""Tiny ONNX graphs that honour the FashionBox ONNX contract, for tests that need no trained model.

They have the exact tensor names, dtypes and shapes of ``fashionbox/contract.py``:

- detector: ``pixels`` uint8 ``[B, S, S, 3]`` -> ``boxes`` float32 ``[B, N, 4]`` (fixed letterbox
  boxes), ``scores`` float32 ``[B, C, N]`` (a sigmoid of fixed logits plus a term in the image's
  mean brightness, so different images give different scores) and ``selected`` int64 ``[M, 3]``
  from a real ``NonMaxSuppression`` node;
- attributes: ``crops`` uint8 ``[B, K, K, 3]`` -> ``probs`` float32 ``[B, A]``: the mean colour of
  the crop through a fixed linear layer, then a softmax per attribute group; with ``mask_size``
  also ``masks`` float32 ``[B, m, m]`` (a mask head's output: :func:`standin_mask_probs`).

Replace them with the real exported models by pointing the fixtures at other files; nothing else
in the tests depends on how these graphs compute.

Usage::

    spec = DetectorStandIn.default(input_size=64, num_categories=12)
    write_detector(path, spec)
    write_attributes(path, crop_size=32, group_sizes=(5, 5, 5))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
_BATCH = "batch"


@dataclass(frozen=True)
class DetectorStandIn:
    """What the stand-in detector computes: ``sigmoid(logits + brightness_weight * mean(pixels)/255)``."""

    input_size: int
    boxes: NDArray[Any]
    """float32 ``[N, 4]``: x1, y1, x2, y2 in letterbox pixels, the same for every image."""
    logits: NDArray[Any]
    """float32 ``[C, N]``."""
    brightness_weight: NDArray[Any]
    """float32 ``[C, N]``."""
    iou_threshold: float = 0.5
    score_threshold: float = 0.3
    max_per_class: int = 10

    @property
    def num_categories(self) -> int:
        return int(self.logits.shape[0])

    def scores(self, pixels: NDArray[Any]) -> NDArray[Any]:
        """The ``scores`` output for ``pixels`` (reference for tests), float32 ``[B, C, N]``."""
        brightness = pixels.reshape(pixels.shape[0], -1).astype(np.float32).mean(axis=1) / np.float32(255)
        z = self.logits[None] + self.brightness_weight[None] * brightness[:, None, None]
        scores: NDArray[Any] = (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
        return scores

    @classmethod
    def default(cls, *, input_size: int, num_categories: int) -> DetectorStandIn:
        """Five boxes: 0 and 1 overlap (NMS keeps 0), 2 is kept for two classes.

        Every score falls with the image's brightness: a black image gives five detections
        (classes 0, 10, 5, 2, 6 in score order), a white one none at all.
        """
        s = float(input_size)
        boxes = np.array(
            [
                [0.10 * s, 0.10 * s, 0.50 * s, 0.80 * s],
                [0.11 * s, 0.12 * s, 0.51 * s, 0.79 * s],  # IoU with box 0 > 0.8: suppressed
                [0.55 * s, 0.20 * s, 0.95 * s, 0.60 * s],
                [0.30 * s, 0.70 * s, 0.45 * s, 0.90 * s],
                [0.00 * s, 0.00 * s, 1.00 * s, 1.00 * s],  # the whole letterbox, padding included
            ],
            dtype=np.float32,
        )
        n = boxes.shape[0]
        last = num_categories - 1
        logits = np.full((num_categories, n), -6.0, dtype=np.float32)
        logits[0, 0], logits[0, 1] = 2.0, 1.5
        logits[min(10, last), 3] = 1.2
        logits[min(5, last), 2] = 1.0
        logits[min(2, last), 2] = 0.5
        logits[min(6, last), 4] = 0.2
        weight = np.full((num_categories, n), -4.0, dtype=np.float32)
        return cls(input_size=input_size, boxes=boxes, logits=logits, brightness_weight=weight)


def _const(name: str, value: NDArray[Any]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name=name))


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fashionbox-tests")
    model.ir_version = 8  # readable by every ONNX Runtime the project supports
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_detector(path: Path, spec: DetectorStandIn) -> Path:
    """Write the stand-in detector for ``spec`` to ``path``."""
    s, c, n = spec.input_size, spec.num_categories, spec.boxes.shape[0]
    nodes = [
        helper.make_node("Cast", ["pixels"], ["pixels_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels_f"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        _const("shape_b11", np.array([-1, 1, 1], dtype=np.int64)),
        helper.make_node("Reshape", ["mean4", "shape_b11"], ["mean"]),
        _const("inv255", np.array(1.0 / 255.0, dtype=np.float32)),
        helper.make_node("Mul", ["mean", "inv255"], ["brightness"]),  # [B, 1, 1]
        _const("weight", spec.brightness_weight.reshape(1, c, n).astype(np.float32)),
        _const("logits", spec.logits.reshape(1, c, n).astype(np.float32)),
        helper.make_node("Mul", ["brightness", "weight"], ["weighted"]),
        helper.make_node("Add", ["weighted", "logits"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["scores"]),  # [B, C, N]
        _const("zero", np.array(0.0, dtype=np.float32)),
        helper.make_node("Mul", ["brightness", "zero"], ["zeros_b11"]),
        _const("fixed_boxes", spec.boxes.reshape(1, n, 4).astype(np.float32)),
        helper.make_node("Add", ["zeros_b11", "fixed_boxes"], ["boxes"]),  # broadcast to [B, N, 4]
        _const("max_per_class", np.array([spec.max_per_class], dtype=np.int64)),
        _const("iou_threshold", np.array([spec.iou_threshold], dtype=np.float32)),
        _const("score_threshold", np.array([spec.score_threshold], dtype=np.float32)),
        # center_point_box=0 reads [y1, x1, y2, x2]; IoU is the same with x and y swapped for all boxes.
        helper.make_node(
            "NonMaxSuppression",
            ["boxes", "scores", "max_per_class", "iou_threshold", "score_threshold"],
            ["selected"],
            center_point_box=0,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "fashionbox_detector_standin",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [_BATCH, s, s, 3])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [_BATCH, n, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [_BATCH, c, n]),
            helper.make_tensor_value_info("selected", TensorProto.INT64, ["selected_count", 3]),
        ],
    )
    return _save(graph, path)


def standin_mask_logits(mask_size: int) -> NDArray[Any]:
    """float32 ``[m, m]``: an ellipse a little narrower than the grid, +4 inside and -4 outside."""
    centres = (np.arange(mask_size, dtype=np.float32) + 0.5) / mask_size - 0.5
    inside = (centres[:, None] / 0.45) ** 2 + (centres[None, :] / 0.3) ** 2 <= 1.0
    return np.where(inside, np.float32(4.0), np.float32(-4.0)).astype(np.float32)


def standin_mask_probs(crops: NDArray[Any], mask_size: int) -> NDArray[Any]:
    """The stand-in's ``masks`` for ``crops`` (reference for tests): ``sigmoid(ellipse - 6 * mean / 255)``,
    so every crop gets the ellipse, a little smaller the brighter the crop is."""
    brightness = crops.reshape(crops.shape[0], -1).astype(np.float32).mean(axis=1) / np.float32(255)
    z = standin_mask_logits(mask_size)[None] - np.float32(6.0) * brightness[:, None, None]
    probs: NDArray[Any] = (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    return probs


def write_attributes(path: Path, *, crop_size: int, group_sizes: Sequence[int], seed: int = 0,
                     mask_size: int = 0) -> Path:
    """Write the stand-in attribute heads: ``softmax per group(mean_rgb(crops) / 255 @ W + b)``, and
    with ``mask_size`` a mask head's ``masks`` output (:func:`standin_mask_probs`)."""
    a = int(sum(group_sizes))
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 3.0, size=(3, a)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, size=(a,)).astype(np.float32)
    group_names = [f"group{i}" for i in range(len(group_sizes))]
    soft_names = [f"soft{i}" for i in range(len(group_sizes))]
    nodes = [
        helper.make_node("Cast", ["crops"], ["crops_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["crops_f"], ["mean_rgb"], axes=[1, 2], keepdims=0),  # [B, 3]
        _const("inv255", np.array(1.0 / 255.0, dtype=np.float32)),
        helper.make_node("Mul", ["mean_rgb", "inv255"], ["rgb"]),
        _const("weight", weight),
        _const("bias", bias),
        helper.make_node("MatMul", ["rgb", "weight"], ["linear"]),
        helper.make_node("Add", ["linear", "bias"], ["logits"]),  # [B, A]
        _const("split_sizes", np.array(list(group_sizes), dtype=np.int64)),
        helper.make_node("Split", ["logits", "split_sizes"], group_names, axis=1),
        *(helper.make_node("Softmax", [g], [o], axis=1) for g, o in zip(group_names, soft_names, strict=True)),
        helper.make_node("Concat", soft_names, ["probs"], axis=1),
    ]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [_BATCH, a])]
    if mask_size:
        nodes += [
            helper.make_node("ReduceMean", ["rgb"], ["brightness"], axes=[1], keepdims=1),  # [B, 1]
            _const("shape_b11", np.array([-1, 1, 1], dtype=np.int64)),
            helper.make_node("Reshape", ["brightness", "shape_b11"], ["brightness_b11"]),
            _const("minus6", np.array(-6.0, dtype=np.float32)),
            helper.make_node("Mul", ["brightness_b11", "minus6"], ["shift"]),
            _const("ellipse", standin_mask_logits(mask_size)[None]),
            helper.make_node("Add", ["shift", "ellipse"], ["mask_logits"]),  # [B, m, m]
            helper.make_node("Sigmoid", ["mask_logits"], ["masks"]),
        ]
        outputs.append(helper.make_tensor_value_info("masks", TensorProto.FLOAT, [_BATCH, mask_size, mask_size]))
    graph = helper.make_graph(
        nodes,
        "fashionbox_attributes_standin",
        [helper.make_tensor_value_info("crops", TensorProto.UINT8, [_BATCH, crop_size, crop_size, 3])],
        outputs,
    )
    return _save(graph, path)


def write_standin_repository(folder: Path, settings: Any, *, purpose: str, label_map: Any = None) -> Path:
    """A complete model repository in ``folder / "repository"`` with stand-in graphs sized for ``settings``
    (a ``RepositorySettings``) and ``label_map`` (default: the shipped one)."""
    from fashionbox.contract.labels import default_label_map
    from fashionbox.converter.repository import write_repository

    labels = label_map if label_map is not None else default_label_map()
    spec = DetectorStandIn.default(input_size=settings.input_size, num_categories=labels.num_categories)
    group_sizes = [len(group.labels) for group in labels.attribute_groups]
    return write_repository(
        folder / "repository",
        detector_onnx=write_detector(folder / "detector.onnx", spec),
        attributes_onnx=write_attributes(folder / "attributes.onnx", crop_size=settings.crop_size,
                                         group_sizes=group_sizes),
        label_map=labels,
        settings=settings,
        manifest={"purpose": purpose},
    )
