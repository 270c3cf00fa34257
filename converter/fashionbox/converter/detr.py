"""The DETR-style transformers families: a Hugging Face object-detection checkpoint -> the detector ONNX graph.

One room for what every transformers DETR-style detector shares (DETR, Conditional DETR, Deformable
DETR, DAB-DETR, RT-DETR, RT-DETRv2, D-FINE, DEIMv2, RF-DETR here; YOLOS adds its position-embedding baking in
:mod:`fashionbox.converter.yolos`, LW-DETR its windowed ViT's in :mod:`fashionbox.converter.lw_detr`).
What differs per ``model_type`` is one :class:`DetrStyle` row of :data:`STYLES`: the model and processor
classes, how the class head turns into scores (the processor's ``post_process_object_detection``,
read from the installed transformers), and the predictor's defaults::

    checkpoint = load_detr(Path("detr-fashion/model.safetensors"), STYLES["detr"])   # no pickle
    export_detr_onnx(checkpoint, Path("detector.onnx"), nms=NmsSettings(score_threshold=0.5))
    report = compare_detr(checkpoint, Path("detector.onnx"), batches, nms)           # vs transformers

**Post-processing is the processor's, inside the graph.** The graph takes the same uint8
letterboxed pixels as the default detector and ends in the contract's three tensors
(``contract.ONNX_DETECTOR_*``: ``boxes [B, N, 4]`` in letterbox pixels, ``scores [B, C, N]``,
``selected [M, 3]`` rows of (batch, class, query)), so the ``detector`` and ``postprocess`` models
serve it unchanged. Two scorings, as transformers' processors do it:

- ``softmax`` (DETR, YOLOS: ``DetrImageProcessor.post_process_object_detection``): softmax over
  the classes, the last (no-object) class dropped, the best class per query, every query above
  the threshold.
- ``sigmoid_top_k`` (Conditional, Deformable and DAB-DETR; RT-DETR, v2, D-FINE and DEIMv2 with
  ``use_focal_loss``): a sigmoid per class, the ``k`` best (query, class) pairs over all queries x
  classes, then those above the threshold; one query may be reported for two classes. ``k`` is 100
  for Conditional, Deformable and DAB-DETR (the processor's ``top_k``) and the number of queries for
  the RT-DETR kin (its ``num_top_queries``) and RF-DETR (its processor's ``top_k`` default). RF-DETR's
  processor module needs torchvision: its ``post_process_object_detection`` is compiled from the
  installed transformers' source (:func:`library_post_process`), and DETR's PIL processor reads its
  normalisation (RF-DETR's processor is DETR's preprocessing in transformers' own definition).
  RF-DETR-Seg (``rf_detr_seg``, told by ``architectures``) adds each query's mask coefficients and the
  image's prototypes (:attr:`DetrStyle.masks`), checked against the model's ``pred_masks``.

No NMS in either (DETR-style models need none); ``postprocess`` maps the boxes to original pixels
with the letterbox geometry, as for every family. The graph itself is
:class:`fashionbox.models.detr_graph.DetrGraph`, which the torch runtime also serves from the files
:func:`write_torch_files` writes (the model saved by transformers, and the graph's spec).

**The served letterbox, and how parity is defined.** The processors resize each image their own way:
DETR, Conditional, Deformable and DAB-DETR and YOLOS to a short side of ``size["shortest_edge"]`` (long
side at most ``longest_edge``) and pad the batch bottom-right with zeros plus a ``pixel_mask``;
RT-DETR's processor (RT-DETRv2's, D-FINE's and DEIMv2's too) stretches every image to ``size["height"] x
size["width"]`` (640 x 640) ignoring its aspect ratio.
The pipeline batches equal-shaped ``PIXELS`` across requests, so FashionBox letterboxes every image with
its long side at ``S`` (the processor's ``shortest_edge``, or the smaller of ``height``/``width``), the
aspect ratio kept: to the square ``S x S`` on the GPU. DETR, Conditional and DAB-DETR (whose sine
position embeddings follow the input), RT-DETR, RT-DETRv2, D-FINE and DEIMv2 (whose anchors and encoder
position embeddings transformers computes from the feature maps' traced shapes, unless the config
precomputes them for one size, ``anchor_image_size``, or samples "discrete"ly at a traced-in size; a
DINOv3 backbone's levels sized from the input, :func:`deimv2_rect_model`), Deformable DETR (its levels'
shapes rebuilt from the input for the tracer, :func:`deformable_rect_model`, and the exporter's
``linspace`` mended for a level one cell high) and YOLOS (whose position embeddings the exported graph
interpolates to the input, :mod:`fashionbox.converter.yolos`) are exported with a dynamic height and
width (:attr:`DetrStyle.rect_stride`) and served on the CPU with the rect letterbox
(``RepositorySettings.letterbox_stride``: the short side padded only to the next multiple of the stride,
so a 4:3 photo at 800 runs DETR on 800 x 608; no shorter than ``letterbox_min_side`` where the model selects
a fixed number of queries among its encoder tokens, :attr:`DetrStyle.rect_min_side`), unless
``--letterbox square``. The processor's rescale
factor, mean and std are read from the checkpoint's ``preprocessor_config.json`` and applied in the
graph; the boxes are scaled by the input's own width and height, as ``target_sizes`` does. Parity
(:func:`reference_detections`) is measured on the *same letterboxed pixels*, square or rect:
transformers' processor normalises them (``do_resize=False, do_pad=False``), the PyTorch model runs, the
processor's ``post_process_object_detection`` (its defaults but the threshold) turns its output into
boxes in letterbox pixels. What is compared is the exported graph and serving path against transformers'
own model and post-processing; the resize (and the letterbox's grey padding where the processor pads
with zeros and a mask) is a documented difference from the processors', not a hidden one.

**Checked before anything is loaded or written** (:func:`check_checkpoint`): ``config.json``'s
``model_type`` is this style's, it names its classes (``id2label``, numbered ``0..n-1``), the
class head's shape in the weights' header matches that label count (plus the no-object class for
``softmax`` styles), the weights file is a whole safetensors file, and
``preprocessor_config.json`` is there (transformers' own ``AutoImageProcessor`` needs it too:
without it the input size and normalisation would be guesses). Weights load without pickle:
safetensors (or a sharded safetensors index) through ``from_pretrained(use_safetensors=True)``; a
``pytorch_model.bin`` only through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import logging
import re
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from fashionbox import contract
from fashionbox.contract.labels import LabelMap
from fashionbox.converter.errors import ConvertError
from fashionbox.converter.export import MIN_OPSET, ComparisonReport, ExportError, _session, check_onnx
from fashionbox.converter.labels import family_label_map
from fashionbox.core.postprocessing import DetectorOutput, gather_detections
from fashionbox.models.detr_graph import DetrGraph, DetrSpec
from fashionbox.models.nms import NmsSettings

__all__ = [
    "CONFIG_FILE",
    "PREPROCESSOR_FILE",
    "STYLES",
    "WEIGHT_FILES",
    "DetrCheckpoint",
    "DetrError",
    "DetrPreprocessing",
    "DetrStyle",
    "check_checkpoint",
    "checkpoint_weights",
    "compare_detections",
    "compare_detr",
    "deformable_rect_model",
    "deformable_tokens",
    "deimv2_rect_model",
    "detr_graph",
    "detr_spec",
    "export_detr_onnx",
    "family_loader",
    "fixed_position_embeddings",
    "graph_max_detections",
    "graph_top_k",
    "hf_architectures",
    "hf_model_type",
    "library_post_process",
    "load_detr",
    "preprocessing_of",
    "reference_detections",
    "reference_mask_logits",
    "reference_segments",
    "resized_checkpoint",
    "rt_detr_tokens",
    "token_floor",
    "traced_level_shapes",
    "write_torch_files",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
"""Looked for in this order; the first present is the checkpoint's weights."""

INSTALL_HINT = ("Hugging Face checkpoints need transformers: pip install 'fashionbox-converter[hf]' "
                "(or -c constraints.txt transformers)")

Scoring = Literal["softmax", "sigmoid_top_k"]


class DetrError(ConvertError):
    """A checkpoint folder that is not a usable checkpoint of its DETR-style family."""


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return transformers


@dataclass(frozen=True)
class DetrPreprocessing:
    """The processor's normalisation, applied inside the graph: ``(pixel * rescale - mean) / std``."""

    rescale_factor: float
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    shortest_edge: int
    """The processor's ``size["shortest_edge"]``, or the smaller side of a fixed ``height`` x ``width``."""


def _identity(model: Any, size: int) -> Any:
    return model


def _plain_input_size(preprocessing: DetrPreprocessing, config: Any) -> int:
    # the CNN backbones take any size; below one stride-32 cell there is nothing left to detect
    if preprocessing.shortest_edge < 32:
        raise DetrError(f"the processor's size {preprocessing.shortest_edge} is below 32 pixels")
    return preprocessing.shortest_edge


def _no_check(config: dict[str, Any]) -> None:
    return None


def _any_size(config: Any, size: int) -> None:
    return None


def _square_only(config: Any, size: int) -> int:
    return 0


def _backbone_stride(config: Any, size: int) -> int:
    # the CNN backbone's output stride: the feature map (and the position embeddings computed on its
    # mask) covers the input exactly
    return 32


def _rt_detr_strides(config: Any) -> list[int]:
    # the encoder's levels: the backbone's feature strides, then one stride-2 convolution per extra level
    strides = [int(s) for s in config.feat_strides]
    while len(strides) < int(config.num_feature_levels):
        strides.append(strides[-1] * 2)
    return strides


def _tokens(strides: Sequence[int], height: int, width: int) -> int:
    return sum(-(-height // s) * -(-width // s) for s in strides)


def rt_detr_tokens(config: Any, height: int, width: int) -> int:
    """The encoder tokens of an RT-DETR input: the query selection takes its ``num_queries`` among them."""
    return _tokens(_rt_detr_strides(config), height, width)


def _rt_detr_size(config: Any, size: int) -> None:
    tokens = rt_detr_tokens(config, size, size)
    if tokens < int(config.num_queries):
        raise DetrError(f"a {size}x{size} input leaves {tokens} encoder tokens, fewer than the {config.num_queries} "
                        "queries RT-DETR selects among them: serve it at a larger size")


def _rt_detr_rect_stride(config: Any, size: int) -> int:
    # the deepest feature stride: the hybrid encoder upsamples each level onto the one above it, so the
    # sides must divide by it. Square only where the anchors are precomputed for one size (a strip too thin
    # for the queries selected is the letterbox's min side's business: token_floor)
    return 0 if getattr(config, "anchor_image_size", None) else max(int(s) for s in config.feat_strides)


def token_floor(tokens: Callable[[Any, int, int], int], selected: Callable[[Any], int]
                ) -> Callable[[Any, int, int], int]:
    """A :attr:`DetrStyle.rect_min_side`: the shortest multiple of the stride whose strip (that short side, the
    letterbox's long one) leaves ``tokens(config, height, width)`` at least the ``selected(config)`` queries or
    proposals the model selects among them (transformers' top-k fails on fewer); 0 where one stride does."""
    def floor(config: Any, size: int, stride: int) -> int:
        wanted = selected(config)
        side = next((side for side in range(stride, size, stride) if tokens(config, side, size) >= wanted), size)
        return 0 if side == stride else side

    return floor


def _no_floor(config: Any, size: int, stride: int) -> int:
    return 0


def _rt_detr_v2_rect_stride(config: Any, size: int) -> int:
    # "discrete" sampling scales its sampling grid by torch.tensor([[width, height]]), which the tracer
    # bakes in at the export size: square only (the default "bilinear" method follows the input)
    return 0 if getattr(config, "decoder_method", "default") == "discrete" else _rt_detr_rect_stride(config, size)


def _dinov3_levels(encoder: Any, pixel_values: torch.Tensor, **kwargs: Any) -> list[torch.Tensor]:
    # DEIMv2's DINOv3 encoder: the ViT's feature maps resized to the patch grid times 2, 1 and 1/2 and fused
    # with the spatial tuning adapter's. transformers computes those sizes as int(rows * 2 ** k), a
    # constant to the tracer; here the same integers (rows * 2 ** k, or rows // 2 ** -k) follow the
    # input's traced sides
    feature_maps = encoder.backbone(pixel_values, **kwargs).feature_maps
    patch = encoder.backbone.config.patch_size
    rows, cols = pixel_values.shape[2] // patch, pixel_values.shape[3] // patch
    fused = []
    for i, (feature, detail) in enumerate(zip(feature_maps, encoder.spatial_tuning_adapter(pixel_values),
                                              strict=False)):
        up = len(feature_maps) - 2 - i
        size = [rows * 2**up, cols * 2**up] if up >= 0 else [rows // 2**-up, cols // 2**-up]
        semantic = torch.nn.functional.interpolate(feature, size=size, mode="bilinear", align_corners=False)
        fused.append(encoder.fusion_proj[i](torch.cat([semantic.to(detail.device), detail], dim=1)))
    return fused


def _is_dinov3(config: Any) -> bool:
    return getattr(getattr(config, "backbone_config", None), "model_type", None) == "dinov3_vit"


def deimv2_rect_model(model: Any) -> Any:
    """DEIMv2 for the rect export: the model itself (HGNetV2 backbones follow the input), or a copy whose
    DINOv3 encoder sizes its levels from the traced input (:func:`_dinov3_levels`)."""
    if not _is_dinov3(model.config):
        return model
    rect = copy.deepcopy(model).eval()
    encoder = rect.model.conv_encoder
    encoder.forward = types.MethodType(_dinov3_levels, encoder)
    return rect


def _deformable_strides(config: Any) -> list[int]:
    # the levels: the backbone's outputs (its last, stride 32, and each earlier one half of it: ResNet,
    # Swin; transformers takes three of them from a timm backbone when there are several levels), then
    # one stride-2 convolution per extra level
    levels = int(config.num_feature_levels)
    backbone = getattr(config, "backbone_config", None)
    outputs = 1 if levels == 1 else min(levels, len(getattr(backbone, "out_features", None) or ()) or 3)
    return [32 >> (outputs - 1 - i) for i in range(outputs)] + [32 << (i + 1) for i in range(levels - outputs)]


def deformable_tokens(config: Any, height: int, width: int) -> int:
    """The encoder tokens of a Deformable DETR input: a two-stage model's proposals are its
    ``two_stage_num_proposals`` best among them."""
    return _tokens(_deformable_strides(config), height, width)


def _proposals(config: Any) -> int:
    # the encoder tokens a two-stage model keeps as its queries' proposals; none for one stage
    return int(config.two_stage_num_proposals) if config.two_stage else 0


def _deformable_size(config: Any, size: int) -> None:
    deepest = _deformable_strides(config)[-1]
    if size <= deepest:
        # one cell on the deepest level: its GroupNorm has a single value per group and refuses a batch of one
        raise DetrError(f"a {size}x{size} input leaves one cell on Deformable DETR's stride-{deepest} level: serve "
                        "it at a larger size")
    tokens = deformable_tokens(config, size, size)
    if _proposals(config) > tokens:
        raise DetrError(f"a {size}x{size} input leaves {tokens} encoder tokens, fewer than the {_proposals(config)} "
                        "proposals two-stage Deformable DETR selects among them: serve it at a larger size")


def _deformable_rect_stride(config: Any, size: int) -> int:
    # the backbone's stride (a two-stage model's strip too thin for its proposals: the min side's business)
    return 32


def _traced_level_shapes(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    # the levels' (height, width) table, rebuilt from the feature maps' sizes with stack, which the
    # tracer records as operations on the input's shape
    levels = kwargs["spatial_shapes_list"]
    kwargs["spatial_shapes"] = torch.stack([torch.stack([torch.as_tensor(h), torch.as_tensor(w)]) for h, w in levels])
    return args, kwargs


def deformable_rect_model(model: Any) -> Any:
    """A copy of a Deformable DETR ``model`` whose attention layers take the levels' shapes from the input.

    transformers builds the ``spatial_shapes`` table that scales the sampling offsets with
    ``torch.as_tensor`` over the feature maps' sizes: the tracer records it as a constant, so a graph
    exported at one size would scale offsets wrongly at every other (silently: the shapes still fit).
    Each multi-scale attention layer here rebuilds it from ``spatial_shapes_list``, the same sizes."""
    return traced_level_shapes(copy.deepcopy(model).eval(), "DeformableDetrMultiscaleDeformableAttention")


def traced_level_shapes(model: Any, layer_class: str) -> Any:
    """``model`` (changed in place) with each multi-scale deformable attention layer of class ``layer_class``
    rebuilding its ``spatial_shapes`` table from ``spatial_shapes_list`` (see :func:`deformable_rect_model`)."""
    layers = [m for m in model.modules() if type(m).__name__ == layer_class]
    if not layers:
        raise DetrError(f"{type(model).__name__} has no {layer_class} layer to trace the level shapes through")
    for layer in layers:
        layer.register_forward_pre_hook(_traced_level_shapes, with_kwargs=True)
    return model


def _windowed_vit_step(config: Any) -> int:
    """RF-DETR's side step: its DINOv2's patch size times its windows (14 x 4 = 56 for the base model)."""
    backbone = config.backbone_config
    return int(backbone.patch_size) * int(getattr(backbone, "num_windows", 1))


def _windowed_vit_size(config: Any, size: int) -> None:
    backbone = config.backbone_config
    step = _windowed_vit_step(config)
    if size % step:
        raise DetrError(f"a {config.model_type} backbone takes a side that its patch size times its windows "
                        f"({backbone.patch_size} x {getattr(backbone, 'num_windows', 1)} = {step}) divides, not {size}")


def fixed_position_embeddings(model: Any, size: int) -> Any:
    """A copy of ``model`` whose ViT backbone adds the position embeddings it computes for ``size`` x ``size`` as a
    constant: RF-DETR's DINOv2 always interpolates them while traced, with an antialiased bicubic resize that
    ONNX cannot express. The values are the ones the model computes eagerly at that size (parity holds exactly);
    the weights saved from the copy are the checkpoint's."""
    exported = copy.deepcopy(model)
    found = [m for m in exported.modules() if hasattr(m, "interpolate_pos_encoding") and hasattr(m, "patch_size")]
    if len(found) != 1:
        raise DetrError(f"{type(model).__name__}: expected one ViT embeddings module, found {len(found)}")
    embeddings = found[0]
    patches = (size // int(embeddings.patch_size)) ** 2
    tokens = torch.zeros((1, patches + 1, embeddings.position_embeddings.shape[-1]))
    with torch.no_grad():
        fixed: torch.Tensor = embeddings.interpolate_pos_encoding(tokens, size, size).detach().clone()

    def constant(self: Any, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return fixed.to(tokens.dtype)

    embeddings.interpolate_pos_encoding = types.MethodType(constant, embeddings)
    return exported


def _same_model(model: Any) -> Any:
    return model


@dataclass(frozen=True)
class DetrStyle:
    """What one ``model_type`` needs beyond the shared code: classes, scoring, defaults."""

    model_type: str
    model_class: str
    """The ``transformers`` class loaded (never ``AutoModel``: the ``model_type`` is checked first)."""
    processor_class: str
    """The pure PIL/numpy processor (no torchvision needed: docs/FIELD_NOTES.md)."""
    scoring: Scoring
    class_head: str
    """Regex of the class head's weight names in the checkpoint; the last match (the last decoder
    layer's) must have one row per class (plus the no-object class for ``softmax``)."""
    top_k: int | None = None
    """``sigmoid_top_k``: the processor's ``top_k`` (``None``: the number of queries)."""
    score_threshold: float = 0.5
    """``post_process_object_detection``'s default threshold."""
    max_detections: int = 100
    """At most this many per image: the model's queries (DETR's default 100), or ``top_k``."""
    input_size: Callable[[DetrPreprocessing, Any], int] = _plain_input_size
    """Side of the served square letterbox, from the processor's size and the model's config."""
    prepare_export: Callable[[Any, int], Any] = _identity
    """The model the graph is exported from, at square side ``S`` (YOLOS bakes its embeddings)."""
    check_config: Callable[[dict[str, Any]], None] = _no_check
    """Refuses configurations the processor's post-processing does not describe."""
    check_size: Callable[[Any, int], None] = _any_size
    """From the model's config: refuses a letterbox side the model cannot run (RT-DETR: fewer encoder
    tokens than queries)."""
    rect_stride: Callable[[Any, int], int] = _square_only
    """From the model's config and the letterbox side: the stride of the rect letterbox the graph can be
    exported for (any height and width that are multiples of it; ``RepositorySettings.letterbox_stride``):
    the CNN backbones' deepest stride (DETR's and Conditional DETR's sine position embeddings, RT-DETR's
    anchors and encoder position embeddings follow the input), YOLOS's patch size; 0 where the graph
    takes only the square (an RT-DETR whose ``anchor_image_size`` fixes its anchors, an RT-DETRv2 or
    D-FINE with ``decoder_method`` "discrete")."""
    prepare_rect: Callable[[Any], Any] = _same_model
    """The model the rect graph is exported from (YOLOS: its position embeddings interpolated in the graph)."""
    rect_min_side: Callable[[Any, int, int], int] = _no_floor
    """From the model's config, the letterbox side and the rect stride: the rect letterbox's shortest side
    (``RepositorySettings.letterbox_min_side``; 0: none), where the model selects a fixed number of queries
    among its encoder tokens (RT-DETR's queries, a two-stage Deformable DETR's proposals, LW-DETR's): a thin
    strip must leave that many (:func:`token_floor`)."""
    masks: bool = False
    """A query-mask head (RF-DETR-Seg): the graph also gives mask coefficients and prototypes
    (:meth:`fashionbox.models.detr_graph.DetrGraph.segments`), served as YOLO-seg's but not cut to the box."""
    name: str = ""
    """The converter's family name where it is not the ``model_type``'s (a segmenting model of a detection
    ``model_type``: ``rf_detr_seg``)."""
    size_step: Callable[[Any], int] = lambda config: 32
    """From the model's config: what ``--input-size`` must be a multiple of where the graph takes the square only
    (a rect-capable graph's is its :attr:`rect_stride`): the CNN backbones' deepest stride, RF-DETR's patch
    size times its windows."""
    post_process_source: tuple[str, str] | None = None
    """``(module, Class)`` of the family's own image processor when that needs torchvision (RF-DETR's):
    the reference runs that class's ``post_process_object_detection`` read from the installed
    transformers' source (:func:`library_post_process`), ``processor_class`` normalising the pixels. None:
    ``processor_class``'s own post-processing."""

    @property
    def no_object_class(self) -> bool:
        return self.scoring == "softmax"

    @property
    def family(self) -> str:
        """The converter's family name: :attr:`name`, or the ``model_type`` with ``-`` written ``_`` (DAB-DETR's
        is ``dab-detr``)."""
        return self.name or self.model_type.replace("-", "_")


def _rt_detr_check(config: dict[str, Any]) -> None:
    if not config.get("use_focal_loss", True):
        raise DetrError("RT-DETR checkpoints trained without focal loss (use_focal_loss false) are not supported: "
                        "their post-processing drops a real class as if it were 'no object'")


def _queries(config: Any) -> int:
    return int(config.num_queries)


_RT_DETR_FLOOR = token_floor(rt_detr_tokens, _queries)
"""The RT-DETR kin select ``num_queries`` among their encoder tokens."""

STYLES: dict[str, DetrStyle] = {
    "detr": DetrStyle("detr", "DetrForObjectDetection", "DetrImageProcessorPil", "softmax",
                      class_head=r"class_labels_classifier\.weight", rect_stride=_backbone_stride),
    "conditional_detr": DetrStyle("conditional_detr", "ConditionalDetrForObjectDetection",
                                  "ConditionalDetrImageProcessorPil", "sigmoid_top_k",
                                  class_head=r"class_labels_classifier\.weight", top_k=100,
                                  rect_stride=_backbone_stride),
    "rt_detr": DetrStyle("rt_detr", "RTDetrForObjectDetection", "RTDetrImageProcessorPil", "sigmoid_top_k",
                         class_head=r"model\.decoder\.class_embed\.\d+\.weight", max_detections=300,
                         check_config=_rt_detr_check, check_size=_rt_detr_size, rect_stride=_rt_detr_rect_stride,
                         rect_min_side=_RT_DETR_FLOOR),
    "rt_detr_v2": DetrStyle("rt_detr_v2", "RTDetrV2ForObjectDetection", "RTDetrImageProcessorPil", "sigmoid_top_k",
                            class_head=r"model\.decoder\.class_embed\.\d+\.weight", max_detections=300,
                            check_config=_rt_detr_check, check_size=_rt_detr_size,
                            rect_stride=_rt_detr_v2_rect_stride, rect_min_side=_RT_DETR_FLOOR),
    # D-FINE: RT-DETRv2's encoder, query selection and sampling with a box-distribution decoder
    "d_fine": DetrStyle("d_fine", "DFineForObjectDetection", "RTDetrImageProcessorPil", "sigmoid_top_k",
                        class_head=r"model\.decoder\.class_embed\.\d+\.weight", max_detections=300,
                        check_config=_rt_detr_check, check_size=_rt_detr_size, rect_stride=_rt_detr_v2_rect_stride,
                        rect_min_side=_RT_DETR_FLOOR),
    # DEIMv2: D-FINE's decoder on HGNetV2 (hybrid or lite encoder) or DINOv3 backbones
    "deimv2": DetrStyle("deimv2", "Deimv2ForObjectDetection", "RTDetrImageProcessorPil", "sigmoid_top_k",
                        class_head=r"model\.decoder\.class_embed\.\d+\.weight", max_detections=300,
                        check_config=_rt_detr_check, check_size=_rt_detr_size, rect_stride=_rt_detr_v2_rect_stride,
                        prepare_rect=deimv2_rect_model, rect_min_side=_RT_DETR_FLOOR),
    # Deformable DETR: Conditional DETR's post-processing (k = 100); two-stage and box refinement alike
    "deformable_detr": DetrStyle("deformable_detr", "DeformableDetrForObjectDetection",
                                 "DeformableDetrImageProcessorPil", "sigmoid_top_k",
                                 class_head=r"(model\.decoder\.)?class_embed\.\d+\.weight", top_k=100,
                                 check_size=_deformable_size, rect_stride=_deformable_rect_stride,
                                 prepare_rect=deformable_rect_model,
                                 rect_min_side=token_floor(deformable_tokens, _proposals)),
    # DAB-DETR: anchor boxes as queries; its checkpoints name Conditional DETR's processor and post-processing
    "dab_detr": DetrStyle("dab-detr", "DabDetrForObjectDetection", "ConditionalDetrImageProcessorPil",
                          "sigmoid_top_k", class_head=r"class_embed\.weight", top_k=100, rect_stride=_backbone_stride),
    # RF-DETR: a windowed DINOv2 backbone, LW-DETR's two-stage deformable decoder (k = the queries). Its processor
    # is DETR's preprocessing on torchvision; its own post-processing is read from transformers' source
    "rf_detr": DetrStyle("rf_detr", "RfDetrForObjectDetection", "DetrImageProcessorPil", "sigmoid_top_k",
                         class_head=r"class_embed\.weight", max_detections=300, check_size=_windowed_vit_size,
                         size_step=_windowed_vit_step, prepare_export=fixed_position_embeddings,
                         post_process_source=("transformers.models.rf_detr.image_processing_rf_detr",
                                              "RfDetrImageProcessor")),
    # RF-DETR-Seg: the same detector inside a query-mask head (config.json's architectures names it)
    "rf_detr_seg": DetrStyle("rf_detr", "RfDetrForInstanceSegmentation", "DetrImageProcessorPil", "sigmoid_top_k",
                             class_head=r"class_embed\.weight", max_detections=300,
                             check_size=_windowed_vit_size, size_step=_windowed_vit_step,
                             prepare_export=fixed_position_embeddings, masks=True,
                             name="rf_detr_seg",
                             post_process_source=("transformers.models.rf_detr.image_processing_rf_detr",
                                                  "RfDetrImageProcessor")),
}
"""Family name (:attr:`DetrStyle.family`) -> its style (YOLOS's row lives in :mod:`fashionbox.converter.yolos`)."""


# -- checking the folder (JSON and the safetensors header only: nothing imported or executed) ----------------


def checkpoint_weights(folder: Path) -> Path:
    """The weights file of a Hugging Face checkpoint folder (refusing folders without config.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DetrError(f"{folder} is not a folder: expected a Hugging Face checkpoint folder")
    if not (folder / CONFIG_FILE).is_file():
        raise DetrError(f"{folder} has no {CONFIG_FILE}: not a Hugging Face checkpoint folder")
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DetrError(f"{folder} has none of {list(WEIGHT_FILES)}")


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DetrError(f"cannot read {Path(folder) / CONFIG_FILE}: {exc}") from exc
    if not isinstance(config, dict):
        raise DetrError(f"{Path(folder) / CONFIG_FILE} is not a JSON object")
    return config


def hf_architectures(folder: Path) -> list[str]:
    """``architectures`` of ``folder/config.json`` (read as JSON), or none."""
    names = _read_config(folder).get("architectures") or []
    return [str(name) for name in names] if isinstance(names, list) else []


def hf_model_type(folder: Path) -> str:
    """``model_type`` of ``folder/config.json`` (read as JSON: nothing is imported or executed)."""
    return str(_read_config(folder).get("model_type", ""))


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _tensor_shapes(weights: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor, from the safetensors header(s); a truncated file is refused."""
    from safetensors import safe_open

    files = [weights]
    if weights.name.endswith(".index.json"):
        try:
            weight_map = json.loads(weights.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DetrError(f"cannot read the shard index {weights}: {exc}") from exc
        files = [weights.parent / name for name in sorted(set(weight_map.values()))]
    shapes: dict[str, list[int]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    shapes[key] = list(handle.get_slice(key).get_shape())
        except Exception as exc:  # safetensors raises its own SafetensorError for truncated or foreign files
            raise DetrError(f"{file} is not a whole safetensors file (truncated or damaged?): {exc}") from exc
    return shapes


def check_checkpoint(weights: Path, style: DetrStyle) -> dict[str, Any]:
    """Refuse a folder that is not a usable ``style`` checkpoint before any weights load; its config."""
    folder = Path(weights).parent
    config = _read_config(folder)
    model_type = str(config.get("model_type", ""))
    if model_type != style.model_type:
        raise DetrError(f"{folder}: model_type {model_type!r} is not a {style.model_type} checkpoint")
    style.check_config(config)
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise DetrError(f"{folder / CONFIG_FILE} has no id2label: the class names must come from the checkpoint")
    num_labels = len(id2label)
    if not (folder / PREPROCESSOR_FILE).is_file():
        raise DetrError(f"{folder} has no {PREPROCESSOR_FILE}: the input size and normalisation must come from the "
                        "checkpoint (transformers' AutoImageProcessor needs it too)")
    if Path(weights).suffix == ".bin":
        return config  # shapes are checked by from_pretrained after the weights_only load
    shapes = _tensor_shapes(Path(weights))
    heads = sorted((k for k in shapes if re.fullmatch(style.class_head, k)), key=_natural_key)
    if not heads:
        raise DetrError(f"{weights} has no class head ({style.class_head}): not a {style.model_class} checkpoint")
    rows = shapes[heads[-1]][0]
    expected = num_labels + int(style.no_object_class)
    if rows != expected:
        extra = " plus the no-object class" if style.no_object_class else ""
        raise DetrError(f"{weights}: the class head {heads[-1]} has {rows} rows but id2label names {num_labels} "
                        f"classes{extra} ({expected})")
    return config


# -- loading -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetrCheckpoint:
    folder: Path
    style: DetrStyle
    model: Any
    """The ``style.model_class`` model in eval mode, as transformers loaded it."""
    processor: Any
    """The ``style.processor_class`` processor from the folder's preprocessor config."""
    preprocessing: DetrPreprocessing
    input_size: int
    """Side of the square letterbox the detector is served at."""
    label_map: LabelMap
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    @property
    def letterbox_stride(self) -> int:
        """The rect letterbox's stride the graph can be exported for; 0: the square only."""
        return int(self.style.rect_stride(self.model.config, self.input_size))

    def letterbox_min_side(self, stride: int) -> int:
        """The shortest side of its rect letterbox of ``stride`` (0: none; :attr:`DetrStyle.rect_min_side`)."""
        return int(self.style.rect_min_side(self.model.config, self.input_size, stride)) if stride else 0


def _load_model(cls: Any, folder: Path, weights: Path) -> Any:
    try:
        if weights.name == "pytorch_model.bin":
            # transformers reads it with torch.load(weights_only=True): tensors only, no arbitrary
            # objects; said explicitly here so a future default cannot turn pickle back on.
            try:
                model = cls.from_pretrained(str(folder), use_safetensors=False, weights_only=True,
                                            local_files_only=True)
            except Exception as exc:
                raise DetrError(f"{weights} does not load as a {cls.__name__} through torch.load(weights_only=True): "
                                f"{exc}") from exc
        else:
            model = cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
    except DetrError:
        raise
    except Exception as exc:  # transformers' own errors: missing or mismatched tensors
        raise DetrError(f"{weights} does not load as a {cls.__name__}: {exc}") from exc
    return model.eval()


def preprocessing_of(processor: Any, folder: Path) -> DetrPreprocessing:
    """The processor's size and normalisation, as its ``preprocess`` would apply them."""
    size = {k: v for k, v in dict(processor.size).items() if v}
    sides = [size[k] for k in ("shortest_edge", "height", "width", "max_height", "max_width") if k in size]
    if not sides:
        raise DetrError(f"{folder}: cannot tell the input size from the processor's size {size}")
    return DetrPreprocessing(
        rescale_factor=float(processor.rescale_factor) if processor.do_rescale else 1.0,
        image_mean=tuple(float(v) for v in processor.image_mean) if processor.do_normalize else (0.0, 0.0, 0.0),
        image_std=tuple(float(v) for v in processor.image_std) if processor.do_normalize else (1.0, 1.0, 1.0),
        shortest_edge=int(size.get("shortest_edge", min(sides))),
    )


def load_detr(weights: Path, style: DetrStyle, attribute_labels: LabelMap | None = None) -> DetrCheckpoint:
    """Check, then load the checkpoint whose weights file is ``weights`` (see :func:`checkpoint_weights`)."""
    weights = Path(weights)
    folder = weights.parent
    check_checkpoint(weights, style)
    transformers = _transformers()
    cls = getattr(transformers, style.model_class)
    model = _load_model(cls, folder, weights)
    if not isinstance(model, cls):
        raise DetrError(f"{folder} holds a {type(model).__name__}, not a {style.model_class}")
    processor = getattr(transformers, style.processor_class).from_pretrained(str(folder), local_files_only=True)
    preprocessing = preprocessing_of(processor, folder)
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    if len(id2label) != model.config.num_labels:
        raise DetrError(f"id2label has {len(id2label)} entries for {model.config.num_labels} labels")
    input_size = style.input_size(preprocessing, model.config)
    style.check_size(model.config, input_size)
    return DetrCheckpoint(
        folder=folder,
        style=style,
        model=model,
        processor=processor,
        preprocessing=preprocessing,
        input_size=input_size,
        label_map=family_label_map(id2label, attribute_labels, name=style.model_type),
    )


def resized_checkpoint(checkpoint: DetrCheckpoint, size: int) -> DetrCheckpoint:
    """``checkpoint`` served at letterbox side ``size`` instead of its processor's: a multiple of the graph's stride
    (YOLOS: the patch size; the CNN backbones: 32; RF-DETR: patch size x windows). Refused for an RT-DETR whose
    anchors are precomputed for one size (``anchor_image_size``) or that would have fewer encoder tokens than
    queries at that size."""
    step = checkpoint.letterbox_stride or checkpoint.style.size_step(checkpoint.model.config)
    name = checkpoint.style.model_type
    if size < step or size % step:
        raise DetrError(f"--input-size {size}: a {name} detector takes a multiple of {step}")
    anchors = getattr(checkpoint.model.config, "anchor_image_size", None)
    if anchors:
        raise DetrError(f"--input-size {size}: this {name} checkpoint's anchors are precomputed for {list(anchors)} "
                        "(anchor_image_size in config.json): it is served at its own size only")
    try:
        checkpoint.style.check_size(checkpoint.model.config, size)
    except DetrError as exc:
        raise DetrError(f"--input-size {size}: {exc}") from None
    return replace(checkpoint, input_size=size)


def family_loader(style: DetrStyle) -> Callable[[Path], tuple[DetrCheckpoint, LabelMap]]:
    """The family table's loader for ``style``: the checkpoint and its label map."""

    def load(weights: Path) -> tuple[DetrCheckpoint, LabelMap]:
        checkpoint = load_detr(weights, style)
        return checkpoint, checkpoint.label_map

    return load


# -- export ------------------------------------------------------------------------------------------------


def graph_top_k(checkpoint: DetrCheckpoint) -> int:
    """``sigmoid_top_k``: the ``k`` the processor keeps (at most queries x classes, as ``min`` there)."""
    queries = int(checkpoint.model.config.num_queries)
    pairs = queries * checkpoint.num_labels
    return min(checkpoint.style.top_k or queries, pairs)


def graph_max_detections(checkpoint: DetrCheckpoint) -> int:
    """The most detections the graph gives an image: the queries (YOLOS: its detection tokens), each
    at most once (``softmax``), or the top-k (query, class) pairs (``sigmoid_top_k``)."""
    if checkpoint.style.scoring == "sigmoid_top_k":
        return graph_top_k(checkpoint)
    config = checkpoint.model.config
    return int(getattr(config, "num_queries", None) or config.num_detection_tokens)


def detr_spec(checkpoint: DetrCheckpoint) -> DetrSpec:
    """What the graph is built from besides the model: the style's scoring, the input size, the
    processor's normalisation (written beside the transformers files for the torch runtime)."""
    style, preprocessing = checkpoint.style, checkpoint.preprocessing
    mean, std = preprocessing.image_mean, preprocessing.image_std
    return DetrSpec(model_class=style.model_class, scoring=style.scoring,
                    top_k=graph_top_k(checkpoint) if style.scoring == "sigmoid_top_k" else 0,
                    input_size=checkpoint.input_size, rescale_factor=preprocessing.rescale_factor,
                    image_mean=(mean[0], mean[1], mean[2]), image_std=(std[0], std[1], std[2]), masks=style.masks)


def detr_graph(checkpoint: DetrCheckpoint, score_threshold: float) -> DetrGraph:
    """The graph that is exported (YOLOS: its position embeddings baked at the served size)."""
    spec = detr_spec(checkpoint)
    return DetrGraph(checkpoint.style.prepare_export(checkpoint.model, spec.input_size), spec,
                     score_threshold).eval()


def _linspace_symbolic(g: Any, start: Any, end: Any, steps: Any, dtype: Any, layout: Any, device: Any,
                       pin_memory: Any) -> Any:
    # the TorchScript exporter's own linspace divides by steps - 1: NaN for one step, where torch gives
    # [start] (a level one cell high on a strip's letterbox: Deformable DETR's reference points)
    from torch.onnx import symbolic_helper
    from torch.onnx import symbolic_opset9 as ops

    one = g.op("Constant", value_t=torch.tensor(1, dtype=torch.int64))
    intervals = g.op("Max", ops.sub(g, steps, one), one)
    step = ops.div(g, ops.sub(g, end, start), intervals)
    return ops.add(g, ops.mul(g, symbolic_helper._arange_helper(g, steps, None), step), start)


@contextmanager
def _exporter_fixes(opset: int) -> Iterator[None]:
    # the TorchScript exporter's registry (deprecated with that exporter, which these graphs need)
    from torch.onnx.utils import register_custom_op_symbolic, unregister_custom_op_symbolic

    register_custom_op_symbolic("aten::linspace", _linspace_symbolic, opset)
    try:
        yield
    finally:
        unregister_custom_op_symbolic("aten::linspace", opset)


def export_detr_onnx(checkpoint: DetrCheckpoint, path: Path, *, nms: NmsSettings, opset: int = MIN_OPSET,
                     letterbox_stride: int = 0) -> Path:
    """Export the graph (TorchScript exporter; dynamic batch) for the square letterbox, or with
    ``letterbox_stride`` for the rect one (a dynamic height and width too: a multiple of the style's
    :attr:`DetrCheckpoint.letterbox_stride`); ``nms.score_threshold`` is the threshold."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below the supported minimum {MIN_OPSET}")
    size = checkpoint.input_size
    if letterbox_stride:
        own = checkpoint.letterbox_stride
        if not own or letterbox_stride % own or size % letterbox_stride:
            raise ExportError(f"a {checkpoint.style.model_type} graph cannot be exported for a rect letterbox of "
                              f"stride {letterbox_stride} at {size}: " + (
                                  f"its stride is {own}" if own else "it takes only the square letterbox"))
        graph = DetrGraph(checkpoint.style.prepare_rect(checkpoint.model), detr_spec(checkpoint),
                          nms.score_threshold).eval()
    else:
        graph = detr_graph(checkpoint, nms.score_threshold)
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    names = [contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES, contract.ONNX_DETECTOR_SELECTED]
    sides = {1: "height", 2: "width"} if letterbox_stride else {}
    dynamic = {contract.ONNX_DETECTOR_INPUT: {0: "batch", **sides}, contract.ONNX_DETECTOR_BOXES: {0: "batch"},
               contract.ONNX_DETECTOR_SCORES: {0: "batch"}, contract.ONNX_DETECTOR_SELECTED: {0: "selected"}}
    if checkpoint.style.masks:  # RF-DETR-Seg: each query's mask coefficients and the image's prototypes
        names += [contract.ONNX_DETECTOR_MASK_COEFFS, contract.ONNX_DETECTOR_PROTOS]
        dynamic.update({contract.ONNX_DETECTOR_MASK_COEFFS: {0: "batch"}, contract.ONNX_DETECTOR_PROTOS: {0: "batch"}})
    with warnings.catch_warnings(), _exporter_fixes(opset):
        warnings.simplefilter("ignore")  # tracer and deprecation warnings from torch and transformers
        torch.onnx.export(graph, (example,), str(path), input_names=[contract.ONNX_DETECTOR_INPUT],
                          output_names=names, dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    checkpoint.model.eval()  # the exporter restores the graph's mode on every submodule: keep eval certain
    check_onnx(path)
    return path


def write_torch_files(checkpoint: DetrCheckpoint, folder: Path) -> Path:
    """``folder`` with what :class:`fashionbox.models.torch_runtime.TorchDetrDetector` loads: the exported
    graph's transformers model (YOLOS: with its baked embeddings) as config and safetensors, and
    :data:`fashionbox.models.detr_graph.SPEC_FILE`. The weights are the checkpoint's, saved again by
    transformers: no pickle, whatever the checkpoint's own format."""
    spec = detr_spec(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.style.prepare_export(checkpoint.model, spec.input_size).save_pretrained(folder, safe_serialization=True)
    spec.write(folder)
    return folder


# -- the transformers reference and the comparison -------------------------------------------------------


@functools.cache
def library_post_process(module: str, cls: str, method: str = "post_process_object_detection") -> Callable[..., Any]:
    """``cls.method`` (``post_process_object_detection``, or ``post_process_instance_segmentation``) of the installed
    transformers' ``module``, without importing the module: RF-DETR's processor module imports torchvision at its
    top (its preprocessing runs on torchvision), which a CPU-only torch may lack, while its post-processing is
    plain torch. The method's own source is compiled alone, with the names it uses (``torch``, ``F``,
    ``center_to_corners_format``, ``TensorType``); it is transformers' code as installed, not a copy. A
    :class:`DetrError` if the installed file has no such method."""
    import importlib.util

    from transformers.image_transforms import center_to_corners_format
    from transformers.utils.generic import TensorType

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise DetrError(f"the installed transformers has no {module}: update transformers")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), filename=spec.origin)
    found = [node for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls for node in c.body
             if isinstance(node, ast.FunctionDef) and node.name == method]
    if not found:
        raise DetrError(f"{spec.origin} has no {cls}.{method}: this transformers is not supported for this family")
    function = found[0]
    function.decorator_list = []
    namespace: dict[str, Any] = {"torch": torch, "F": torch.nn.functional, "Any": Any,
                                 "center_to_corners_format": center_to_corners_format, "TensorType": TensorType}
    exec(compile(ast.Module(body=[function], type_ignores=[]), spec.origin, "exec"), namespace)
    return functools.partial(namespace[method], None)  # an unbound method: its ``self`` is not used


def reference_detections(checkpoint: DetrCheckpoint, pixels: npt.NDArray[np.uint8],
                         score_threshold: float) -> list[DetectorOutput]:
    """Transformers' own result on letterboxed ``pixels`` ``[B, H, W, 3]``: boxes in letterbox pixels.

    The processor normalises the pixels (no resize, no pad), the PyTorch model runs and the
    processor's ``post_process_object_detection`` (its defaults, but ``threshold``) keeps the
    detections; they are sorted by score descending, ties by query then class, as
    :func:`fashionbox.core.postprocessing.gather_detections` sorts the served ones.
    """
    processor = checkpoint.processor
    inputs = processor(images=list(pixels), do_resize=False, do_pad=False, return_tensors="pt")
    with torch.no_grad():
        outputs = checkpoint.model(pixel_values=inputs["pixel_values"])
    height, width = pixels.shape[1:3]
    post_process = (library_post_process(*checkpoint.style.post_process_source)
                    if checkpoint.style.post_process_source else processor.post_process_object_detection)
    results = post_process(outputs, threshold=score_threshold, target_sizes=[(height, width)] * len(pixels))
    rows = []
    for result in results:
        scores = result["scores"].numpy().astype(np.float32)
        labels = result["labels"].numpy().astype(np.int32)
        boxes = result["boxes"].numpy().astype(np.float32).reshape(-1, 4)
        order = np.lexsort((labels, np.arange(len(scores)), -scores))
        rows.append(DetectorOutput(boxes=boxes[order], scores=scores[order], classes=labels[order]))
    return rows


PAIR_WINDOW = 1e-3
"""Scores closer than this may pair: which of two near-tied detections comes first is float noise (ONNX
Runtime and PyTorch differ by about 1e-6), not a different answer."""


def _pairs(ours: DetectorOutput, theirs: DetectorOutput) -> list[tuple[int, int]] | None:
    # each of ours, best first, with the unpaired one of theirs of its class within PAIR_WINDOW of its score
    # whose box is nearest; None where one finds no partner (the kept sets differ)
    if len(ours) != len(theirs):
        return None
    free = np.ones(len(theirs), dtype=bool)
    pairs = []
    for i in range(len(ours)):
        partners = np.nonzero(free & (theirs.classes == ours.classes[i])
                              & (np.abs(theirs.scores - ours.scores[i]) <= PAIR_WINDOW))[0]
        if not len(partners):
            return None
        j = int(partners[np.abs(theirs.boxes[partners] - ours.boxes[i]).max(axis=1).argmin()])
        free[j] = False
        pairs.append((i, j))
    return pairs


def compare_detections(ours: Sequence[DetectorOutput], theirs: Sequence[DetectorOutput],
                       errors: dict[str, float]) -> None:
    """Accumulate into ``errors``: ``kept_mismatch`` (images whose kept set differs), ``boxes``, ``scores``.

    Detections pair by class and score (within :data:`PAIR_WINDOW`), the nearest box among near ties: two
    detections whose scores differ by 1e-7 may come in either order from two runtimes."""
    for a, b in zip(ours, theirs, strict=True):
        pairs = _pairs(a, b)
        if pairs is None:
            errors["kept_mismatch"] = errors.get("kept_mismatch", 0.0) + 1.0
            continue
        if pairs:
            i, j = (np.array(side) for side in zip(*pairs, strict=True))
            errors["boxes"] = max(errors.get("boxes", 0.0), float(np.abs(a.boxes[i] - b.boxes[j]).max()))
            errors["scores"] = max(errors.get("scores", 0.0), float(np.abs(a.scores[i] - b.scores[j]).max()))


def compare_detr(checkpoint: DetrCheckpoint, path: Path, batches: Sequence[npt.NDArray[np.uint8]],
                 nms: NmsSettings) -> ComparisonReport:
    """ONNX Runtime (through the served gathering) against transformers, on each uint8 batch."""
    session = _session(path)
    errors = {"kept_mismatch": 0.0, "boxes": 0.0, "scores": 0.0, **({"mask_logits": 0.0} if checkpoint.style.masks
                                                                    else {})}
    samples = 0
    for batch in batches:
        outputs = session.run(None, {contract.ONNX_DETECTOR_INPUT: batch})  # type: ignore[attr-defined]
        boxes, scores, selected = outputs[:3]
        limit = max(1, int(boxes.shape[1]) * int(scores.shape[1]))
        ours = gather_detections(boxes, scores, selected, max_detections=limit)
        compare_detections(ours, reference_detections(checkpoint, batch, nms.score_threshold), errors)
        if checkpoint.style.masks:  # the queries' mask logits: coefficients times prototypes, against pred_masks
            logits = np.einsum("bqk,bkhw->bqhw", outputs[3], outputs[4])
            expected, their_boxes = reference_segments(checkpoint, batch)
            # a two-stage model selects its queries among encoder tokens by a top-k: where two proposals tie at
            # its edge, either runtime may take the other one into a slot (random weights tie often). Such a
            # slot's box differs too; its mask is not compared (a kept detection's is, the kept comparison
            # above holding its box to the reference's)
            same = np.abs(boxes - their_boxes).max(-1) <= RESELECTED_PX  # [B, Q]
            if same.any():
                errors["mask_logits"] = max(errors["mask_logits"], float(np.abs(logits - expected)[same].max()))
            if not same.all():
                log.info("%s: %d of %d query slots took another proposal than transformers' (a top-k tie); their "
                         "masks are not compared", checkpoint.folder.name, int((~same).sum()), same.size)
        samples += len(batch)
    return ComparisonReport("detector", errors, samples)


RESELECTED_PX = 1.0
"""A query slot whose box differs from the reference's by more than this (letterbox pixels) holds another proposal
than transformers' (a tie at the query selection's top-k): its mask logits are not compared."""


def reference_segments(checkpoint: DetrCheckpoint, pixels: npt.NDArray[np.uint8]
                       ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A segmenting checkpoint's ``pred_masks`` ``[B, Q, h, w]`` (transformers' forward) on letterboxed ``pixels``,
    normalised by the processor as :func:`reference_detections` does, and each query's box ``[B, Q, 4]`` (corners in
    letterbox pixels, as the graph gives them)."""
    inputs = checkpoint.processor(images=list(pixels), do_resize=False, do_pad=False, return_tensors="pt")
    with torch.no_grad():
        outputs = checkpoint.model(pixel_values=inputs["pixel_values"])
    cx, cy, w, h = outputs.pred_boxes.unbind(-1)
    sides = torch.tensor([pixels.shape[2], pixels.shape[1]] * 2, dtype=torch.float32)
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1) * sides
    return outputs.pred_masks.numpy(), boxes.numpy()


def reference_mask_logits(checkpoint: DetrCheckpoint, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """:func:`reference_segments`' mask logits alone."""
    return reference_segments(checkpoint, pixels)[0]
