"""The LW-DETR family: a transformers ``LwDetrForObjectDetection`` checkpoint -> the detector ONNX graph.

LW-DETR (``model_type`` ``lw_detr``) is a plain ViT in windows (interleaved window and global attention)
feeding a C2f projector at one or more scales, and the two-stage deformable decoder RF-DETR took from
it. It is one row (:data:`LW_DETR`) of the DETR-style families (:mod:`fashionbox.converter.detr`
holds the loading, checks, graph, reference and comparison); what is LW-DETR's own is here:

- **Its processor and post-processing are Deformable DETR's** (``DeformableDetrImageProcessor``, the
  one transformers' auto mapping names for ``lw_detr``; its PIL twin reads the checkpoint's rescale,
  mean and std): a sigmoid per class, the 100 best (query, class) pairs, threshold 0.5.
- **Sides.** The ViT cuts its patch grid into ``num_windows_side`` x ``num_windows_side`` windows, so a
  side is a multiple of the patch size times that (16 x 4 = 64 for the hub's models: 640 serves, 600
  is refused), and the decoder selects its ``num_queries`` proposals among the projector's tokens, so a
  side that leaves fewer tokens than queries is refused too.
- **Position embeddings.** The ViT interpolates its pretraining-size table bicubically (plain,
  ``align_corners=False``) to the input's patch grid on every forward. The square graph adds the
  values the model computes eagerly at the served side as a constant (:func:`baked_positions`);
  the rect graph (a dynamic height and width: the CPU's default letterbox) interpolates in the graph
  with YOLOS's bicubic matrices (:func:`rect_model`, :func:`fashionbox.converter.yolos.bicubic_matrix`:
  two matrix products where ``Resize`` would be) and takes its deformable attention's level shapes
  from the input (:func:`fashionbox.converter.detr.traced_level_shapes`, as Deformable DETR's).
  The rect stride is the square's step; where a strip of one step would leave fewer tokens than queries,
  the rect letterbox's short side is at least the step that leaves enough (``letterbox_min_side``: 128 for
  LW-DETR small at 640, so every photo but a 5:1 strip runs on its own shape).

Parity, as for every DETR-style family, is against the model plus Deformable DETR's
``post_process_object_detection`` on the same letterboxed pixels (tests/test_lw_detr.py).
"""

from __future__ import annotations

import copy
import math
import types
from typing import Any

import torch
from torch import Tensor

from fashionbox.converter.detr import DetrError, DetrStyle, token_floor, traced_level_shapes
from fashionbox.converter.yolos import bicubic_matrix

__all__ = ["EMBEDDINGS_CLASS", "LW_DETR", "baked_positions", "lw_detr_tokens", "rect_model"]

EMBEDDINGS_CLASS = "LwDetrViTEmbeddings"
"""The ViT's patch-and-position embeddings module (``get_absolute_positions`` interpolates the table)."""


def _patch(config: Any) -> int:
    patch = config.backbone_config.patch_size
    return int(patch if isinstance(patch, int) else patch[0])


def _step(config: Any) -> int:
    """A side's step: the patch size times the windows along it."""
    return _patch(config) * int(config.backbone_config.num_windows_side)


def _level(cells: int, scale: float) -> int:
    # the projector's sampling: a stride-2 transposed convolution (2.0), none (1.0), a 3x3 stride-2 convolution
    # padded by 1 (0.5)
    return 2 * cells if scale == 2.0 else cells if scale == 1.0 else (cells + 1) // 2


def lw_detr_tokens(config: Any, height: int, width: int) -> int:
    """The encoder tokens of an LW-DETR input (every projector scale's cells): the decoder selects its
    ``num_queries`` proposals among them."""
    rows, columns = height // _patch(config), width // _patch(config)
    return sum(_level(rows, float(s)) * _level(columns, float(s)) for s in config.projector_scale_factors)


def _check_size(config: Any, size: int) -> None:
    step = _step(config)
    if size % step:
        raise DetrError(f"an lw_detr backbone takes a side that its patch size times its windows per side "
                        f"({_patch(config)} x {config.backbone_config.num_windows_side} = {step}) divides, not {size}")
    tokens = lw_detr_tokens(config, size, size)
    if tokens < int(config.num_queries):
        raise DetrError(f"a {size}x{size} input leaves {tokens} encoder tokens, fewer than the {config.num_queries} "
                        "proposals LW-DETR selects among them: serve it at a larger size")


def _queries(config: Any) -> int:
    return int(config.num_queries)


def _embeddings(model: Any) -> Any:
    found = [m for m in model.modules() if type(m).__name__ == EMBEDDINGS_CLASS]
    if len(found) != 1:
        raise DetrError(f"{type(model).__name__}: expected one {EMBEDDINGS_CLASS} module, found {len(found)}")
    return found[0]


def baked_positions(model: Any, size: int) -> Any:
    """A copy of ``model`` whose ViT adds the position embeddings it computes for ``size`` x ``size`` as a
    constant (traced, the original always interpolates: an ONNX ``Resize`` per forward). The values are the
    eager model's at that size, so parity holds exactly; the checkpoint's weights are unchanged."""
    baked = copy.deepcopy(model).eval()
    embeddings = _embeddings(baked)
    cells = size // _patch(model.config)
    with torch.no_grad():
        fixed: Tensor = embeddings.get_absolute_positions(embeddings.position_embeddings, True, cells, cells).clone()

    def constant(self: Any, table: Tensor, has_cls_token: bool, height: int, width: int) -> Tensor:
        return fixed.to(table.dtype)

    embeddings.get_absolute_positions = types.MethodType(constant, embeddings)
    return baked


def _matrix_positions(self: Any, table: Tensor, has_cls_token: bool, height: Any, width: Any) -> Tensor:
    """``get_absolute_positions`` as two matrix products: the same values for any (traced) patch grid."""
    if has_cls_token:
        table = table[:, 1:]
    side = math.isqrt(int(table.shape[1]))
    if side * side != int(table.shape[1]):
        raise DetrError(f"{EMBEDDINGS_CLASS}: {table.shape[1]} position embeddings are not a square grid")
    dim = table.shape[-1]
    # two-dimensional products only: OpenVINO's CPU plugin turns a batched MatMul over the constant table into a
    # FullyConnected node that refuses the dynamic grid at run time
    rows = torch.matmul(bicubic_matrix(height, side), table.reshape(side, side * dim))  # [h, s * D]
    columns = rows.reshape(-1, side, dim).transpose(0, 1).reshape(side, -1)  # [s, h * D]
    grid = torch.matmul(bicubic_matrix(width, side), columns)  # [w, h * D]
    return grid.reshape(grid.shape[0], -1, dim).transpose(0, 1)[None]  # [1, h, w, D]


def rect_model(model: Any) -> Any:
    """A copy of ``model`` for the rect graph: its position embeddings interpolated to each input's patch grid
    in the graph, its deformable attention's level shapes taken from the input."""
    rect = copy.deepcopy(model).eval()
    embeddings = _embeddings(rect)
    embeddings.get_absolute_positions = types.MethodType(_matrix_positions, embeddings)
    return traced_level_shapes(rect, "LwDetrMultiscaleDeformableAttention")


LW_DETR = DetrStyle("lw_detr", "LwDetrForObjectDetection", "DeformableDetrImageProcessorPil", "sigmoid_top_k",
                    class_head=r"class_embed\.weight", top_k=100, check_size=_check_size, size_step=_step,
                    prepare_export=baked_positions, rect_stride=lambda config, size: _step(config),
                    prepare_rect=rect_model, rect_min_side=token_floor(lw_detr_tokens, _queries))
"""LW-DETR: Deformable DETR's post-processing (k = 100, threshold 0.5); sides a multiple of patch x windows;
position embeddings baked for the square letterbox or interpolated in the graph for the rect one."""
