"""DETR-style families (DETR, Conditional DETR, Deformable DETR, DAB-DETR, RT-DETR, RT-DETRv2, D-FINE,
DEIMv2): tiny random checkpoints converted, served, as transformers.

No network: each checkpoint is a random-initialised transformers config (transformers' own ResNet
backbone, ``use_pretrained_backbone=False``; docs/FIELD_NOTES.md) saved with ``save_pretrained``
into a temporary folder with its processor's ``preprocessor_config.json``. The weights are redrawn
wider than transformers' initialisation (``spread``) so that queries differ: with the default
initialisation every query gives the same score and box, and RT-DETR's query selection (a top-k
over encoder positions) meets exact ties that ONNX Runtime and PyTorch break differently.

Parity: the served detections (embedded Triton, gRPC, the typed client) against transformers'
model plus its processor's ``post_process_object_detection`` on the same letterboxed pixels:
category equal, score within 1e-3, box within 0.5 px.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashionbox.converter import FAMILIES, ConvertError, ConvertOptions, convert, family_nms, resolve_spec

transformers = pytest.importorskip("transformers", reason="DETR-style families need fashionbox-converter[hf]")
torch = pytest.importorskip("torch")

from image_model_fixtures import fill_hub_cache  # noqa: E402

from fashionbox.converter.detr import (  # noqa: E402
    STYLES,
    DetrCheckpoint,
    DetrError,
    checkpoint_weights,
    compare_detr,
    export_detr_onnx,
    load_detr,
    reference_detections,
)
from fashionbox.models.nms import NmsSettings  # noqa: E402

INPUT_SIZE = 64
THRESHOLD = 0.3
NAMES = ["shirt, blouse", "pants", "dress", "shoe", "sleeve", "neckline", "bag, wallet"]
FAMILY_NAMES = ("detr", "conditional_detr", "deformable_detr", "dab_detr", "rt_detr", "rt_detr_v2", "d_fine",
                "deimv2")
RT_DETR_LIKE = ("rt_detr", "rt_detr_v2", "d_fine", "deimv2")
"""RT-DETR and its successors: the same processor, query selection and post-processing."""
GAIN = {"detr": 1.5, "conditional_detr": 1.5, "deformable_detr": 1.5, "dab_detr": 1.5, "rt_detr": 4.0,
        "rt_detr_v2": 4.0, "d_fine": 1.5, "deimv2": 1.0}
"""Weight scale per family (``spread``): RT-DETR needs more for its encoder positions to differ; at that
scale D-FINE's boxes overflow to NaN; at D-FINE's, DEIMv2's HGNetV2 amplifies float noise to 6e-4 in
the scores."""


def _resnet(**kwargs: Any) -> Any:
    return transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], **kwargs)


def tiny_hgnet(out_features: list[str]) -> Any:
    """A tiny HGNetV2 (DEIMv2's CNN backbone): four stages 16 wide, one block of one layer each."""
    return transformers.HGNetV2Config(
        embedding_size=8, stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 16, 16], stage_mid_channels=[8, 8, 8, 8],
        stage_out_channels=[16, 16, 16, 16], stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[1, 1, 1, 1],
        stage_kernel_size=[3, 3, 3, 3], hidden_sizes=[16, 16, 16, 16], depths=[1, 1, 1, 1], out_features=out_features)


def tiny_config(model_type: str, names: list[str] = NAMES) -> Any:
    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    detr_like = {"use_timm_backbone": False, "use_pretrained_backbone": False, "d_model": 16, "encoder_layers": 1,
                 "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
                 "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 10, **labels}
    if model_type == "detr":
        return transformers.DetrConfig(backbone_config=_resnet(out_features=["stage4"]), **detr_like)
    if model_type == "conditional_detr":
        return transformers.ConditionalDetrConfig(backbone_config=_resnet(out_features=["stage4"]), **detr_like)
    if model_type == "deformable_detr":
        # three levels (strides 8, 16, 32): a fourth, at 64, would be one cell at 64 px. 32 wide for its
        # GroupNorms' 32 groups; two decoder layers, as its box heads tie across them (one fails to build)
        return transformers.DeformableDetrConfig(
            backbone_config=_resnet(out_features=["stage2", "stage3", "stage4"]), num_feature_levels=3,
            encoder_n_points=2, decoder_n_points=2, **{**detr_like, "d_model": 32, "decoder_layers": 2})
    if model_type == "dab_detr":  # its width is hidden_size
        detr_like = {k: v for k, v in detr_like.items() if k != "d_model"}
        return transformers.DabDetrConfig(backbone_config=_resnet(out_features=["stage4"]), hidden_size=16,
                                          **detr_like)
    if model_type in RT_DETR_LIKE:
        backbone = (tiny_hgnet(["stage2", "stage3", "stage4"]) if model_type == "deimv2" else  # its own backbone
                    transformers.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16],
                                                    depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"]))
        # v2, D-FINE and DEIMv2 tie their box heads across decoder layers: they need two of them
        config = {"rt_detr": transformers.RTDetrConfig, "rt_detr_v2": transformers.RTDetrV2Config,
                  "d_fine": transformers.DFineConfig, "deimv2": transformers.Deimv2Config}[model_type]
        return config(
            backbone_config=backbone, use_pretrained_backbone=False, encoder_hidden_dim=16, d_model=16,
            encoder_in_channels=[16, 16, 16], decoder_in_channels=[16, 16, 16], encoder_ffn_dim=32,
            decoder_ffn_dim=32, encoder_layers=1, decoder_layers=1 if model_type == "rt_detr" else 2,
            num_queries=10, **labels)
    raise AssertionError(model_type)


CONSTANTS = ("reg_scale", "up")
"""D-FINE's box-distribution constants, parameters set from its config: redrawn, boxes turn to NaN."""


def spread(model: Any, gain: float, seed: int) -> None:
    """Redraw every weight ``N(0, gain / sqrt(fan_in))`` and every bias ``N(0, 0.2)``; norms and constants
    stay as built."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            kept = "norm" in name.lower() or ".bn." in name or name.rsplit(".", 1)[-1] in CONSTANTS
            if kept or not parameter.numel():  # and empty ones (DINOv3 without register tokens)
                continue
            scale = gain / math.sqrt(parameter[0].numel()) if parameter.dim() > 1 else 0.2
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def processor_for(model_type: str) -> Any:
    if model_type in RT_DETR_LIKE:  # v2's and D-FINE's hub checkpoints name RTDetrImageProcessor too
        return transformers.RTDetrImageProcessorPil(size={"height": INPUT_SIZE, "width": INPUT_SIZE})
    cls = {"detr": transformers.DetrImageProcessorPil,
           "conditional_detr": transformers.ConditionalDetrImageProcessorPil,
           "deformable_detr": transformers.DeformableDetrImageProcessorPil,
           "dab_detr": transformers.ConditionalDetrImageProcessorPil}[model_type]
    return cls(size={"shortest_edge": INPUT_SIZE, "longest_edge": 112})


def save_tiny(folder: Path, model_type: str, *, seed: int = 0, names: list[str] = NAMES, **fields: Any) -> Path:
    """A tiny random checkpoint of ``model_type`` in ``folder`` (model.safetensors, config, processor config),
    with ``fields`` set in its config."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, names)
    for key, value in fields.items():
        setattr(config, key, value)
    model = transformers.AutoModelForObjectDetection.from_config(config).eval()
    spread(model, GAIN[model_type], seed)
    model.save_pretrained(folder)
    processor_for(model_type).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: save_tiny(tmp_path_factory.mktemp(f"tiny-{name}"), name) for name in FAMILY_NAMES}


def convert_hf(folder: Path, out: Path, runtime: Any) -> Path:
    """The checkpoint in ``folder`` converted at the tests' threshold, checked on two samples."""
    return convert(ConvertOptions(out=out, detector=f"hf:{folder}", score_threshold=THRESHOLD, compare_samples=2,
                                  runtime=runtime)).repository


def _convert_each(checkpoints: dict[str, Path], out: Path, runtime: Any) -> dict[str, Path]:
    return {name: convert_hf(folder, out / name, runtime) for name, folder in checkpoints.items()}


def assert_torch_runtime_answers_as_transformers(folder: Path, checkpoint: DetrCheckpoint, out: Path,
                                                 max_detections: int) -> None:
    """Converted with ``--runtime torch``: the converter's check passed, and the runner the repository holds
    detects as transformers on the same pixels."""
    from fashionbox.model_repository.runners import TORCH_FOLDER
    from fashionbox.models.torch_runtime import TorchDetrDetector

    repository = convert_hf(folder, out, "torch")
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["family"] == checkpoint.style.family
    assert manifest["comparison"]["torch detector"]["detections_count_mismatch"] == 0
    runner = TorchDetrDetector(repository / "detector" / "1" / TORCH_FOLDER, device="cpu", precision="fp32",
                               score_threshold=THRESHOLD, max_detections=max_detections)
    assert_detects_as(runner, lambda pixels: reference_detections(checkpoint, pixels, THRESHOLD),
                      size=checkpoint.input_size)


@pytest.fixture(scope="module")
def repositories(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _convert_each(checkpoints, tmp_path_factory.mktemp("detr-repos"), "onnxruntime")


def assert_detects_as(runner: Any, reference: Any, *, size: int, seeds: int = 3) -> None:
    """``runner.detect`` equals ``reference(pixels)`` (transformers' detections) on random uint8 batches."""
    found = 0
    for seed in range(seeds):
        pixels = np.random.default_rng(seed).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        for ours, theirs in zip(runner.detect(pixels), reference(pixels), strict=True):
            assert ours.classes.tolist() == theirs.classes.tolist()
            np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)
            # relative too: a random model's boxes run far past the image (here +-31 px), where batching's
            # float noise, through a sigmoid near saturation, moves them by up to 1e-3 of their size
            np.testing.assert_allclose(ours.boxes, theirs.boxes, rtol=1e-3, atol=1e-3)
            found += len(ours)
    assert found > 0, "the threshold must keep something for the comparison to mean anything"


def square_batches(first_scene: int) -> list[Any]:
    """Two random uint8 batches and one of three generated scenes (seeds from ``first_scene``), each
    letterboxed to the square."""
    from fashionbox.core.imaging import decode_image, letterbox
    from fashionbox.synth import render_scene

    scenes = [letterbox(decode_image(render_scene(first_scene + i, size=size).encode(format="PNG"),
                                     target_size=INPUT_SIZE), INPUT_SIZE)[0]
              for i, size in enumerate([(640, 480), (300, 640), (500, 500)])]
    return [np.random.default_rng(i).integers(0, 256, (3, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
            for i in range(2)] + [np.stack(scenes)]


def assert_graph_equals_transformers(checkpoint: DetrCheckpoint, path: Path, batches: list[Any]) -> None:
    """The ONNX graph at ``path`` keeps what transformers keeps on each batch (scores within 1e-4, boxes within
    0.05 letterbox px), and each batch keeps something, or its comparison proves nothing."""
    report = compare_detr(checkpoint, path, batches, NmsSettings(score_threshold=THRESHOLD))
    assert report.max_abs_error["kept_mismatch"] == 0
    assert report.max_abs_error["scores"] < 1e-4
    assert report.max_abs_error["boxes"] < 0.05
    for batch in batches:
        assert sum(len(r) for r in reference_detections(checkpoint, batch, THRESHOLD)), f"nothing kept at {batch.shape}"


# -- the family table -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_hf_spec_resolves_each_model_type_to_its_family(checkpoints: dict[str, Path], name: str) -> None:
    assert resolve_spec(f"hf:{checkpoints[name]}", "detector") == (name, checkpoints[name] / "model.safetensors")


@pytest.mark.parametrize(("name", "scoring", "max_detections"),
                         [("detr", "softmax", 100), ("conditional_detr", "sigmoid_top_k", 100),
                          ("deformable_detr", "sigmoid_top_k", 100), ("dab_detr", "sigmoid_top_k", 100),
                          ("rt_detr", "sigmoid_top_k", 300),
                          ("yolos", "softmax", 100)])
def test_each_family_defaults_to_its_processors_post_processing(tmp_path: Path, name: str, scoring: str,
                                                                max_detections: int) -> None:
    family = FAMILIES[name]()
    nms = family_nms(family, ConvertOptions(out=tmp_path))
    assert (nms.score_threshold, nms.max_detections) == (0.5, max_detections)  # threshold=0.5 in each processor
    assert family_nms(family, ConvertOptions(out=tmp_path, score_threshold=0.2)).score_threshold == 0.2
    if name != "yolos":
        assert STYLES[name].scoring == scoring


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_checkpoint_serves_at_most_what_its_graph_gives(checkpoints: dict[str, Path], tmp_path: Path,
                                                          name: str) -> None:
    """The pipeline's most detections per image is the loaded graph's own (10 queries here; Conditional,
    Deformable and DAB-DETR's top 100 (query, class) pairs of 10 x 7; RT-DETR's top-k of its queries), not
    the family's default for its hub checkpoints, unless --max-detections says otherwise."""
    family = FAMILIES[name]()
    checkpoint, _ = family.load_detector(checkpoint_weights(checkpoints[name]))
    expected = {"detr": 10, "conditional_detr": 70, "deformable_detr": 70, "dab_detr": 70, "rt_detr": 10,
                "rt_detr_v2": 10, "d_fine": 10, "deimv2": 10}[name]
    assert family_nms(family, ConvertOptions(out=tmp_path), checkpoint).max_detections == expected
    assert family_nms(family, ConvertOptions(out=tmp_path, max_detections=5), checkpoint).max_detections == 5


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_processors_size_and_normalisation_come_from_the_checkpoint(checkpoints: dict[str, Path],
                                                                       name: str) -> None:
    checkpoint = load_detr(checkpoint_weights(checkpoints[name]), STYLES[name])
    assert checkpoint.input_size == INPUT_SIZE
    pre = checkpoint.preprocessing
    assert pre.rescale_factor == pytest.approx(1 / 255)
    if name in RT_DETR_LIKE:  # RTDetrImageProcessor does not normalise
        assert (pre.image_mean, pre.image_std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    else:
        assert pre.image_mean == pytest.approx((0.485, 0.456, 0.406))
    assert checkpoint.label_map.category_names == tuple(NAMES)
    assert checkpoint.label_map.groups_for("sleeve") == ()


# -- export and in-process parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_exported_graph_equals_transformers_post_processing(checkpoints: dict[str, Path], tmp_path: Path,
                                                            name: str) -> None:
    checkpoint = load_detr(checkpoint_weights(checkpoints[name]), STYLES[name])
    nms = NmsSettings(score_threshold=THRESHOLD)
    stride = checkpoint.letterbox_stride
    path = export_detr_onnx(checkpoint, tmp_path / "detector.onnx", nms=nms, letterbox_stride=stride)
    if stride:  # a dynamic height and width, for any multiple of the stride that divides the size
        from fashionbox import contract
        from fashionbox.converter.repository import _onnx_io

        assert list(_onnx_io(path)[0][contract.ONNX_DETECTOR_INPUT][1][1:3]) == [None, None]
    # the square letterbox; where the style takes a rect one (every family here), landscape and portrait
    # inputs too, each scaled by its own width and height
    shapes = [(INPUT_SIZE, INPUT_SIZE)] * 2
    if stride:
        shapes += [(INPUT_SIZE // 2, INPUT_SIZE), (INPUT_SIZE, INPUT_SIZE // 2), (3 * INPUT_SIZE // 2, INPUT_SIZE)]
    batches = [np.random.default_rng(i).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
               for i, (h, w) in enumerate(shapes)]
    assert_graph_equals_transformers(checkpoint, path, batches)
    for batch in batches:
        kept = reference_detections(checkpoint, batch, THRESHOLD)
        # boxes in the input's own pixels: x scaled by its width, whatever the shape. No post-processing here
        # clips: a centre and a size each in [0, 1] reach up to 1.5 widths (DAB-DETR's random boxes do)
        assert max(float(r.boxes[:, 2].max(initial=0)) for r in kept) <= 1.5 * batch.shape[2]


def test_each_family_exports_for_a_rect_letterbox_an_anchored_rt_detr_only_for_the_square(
        checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from fashionbox import contract
    from fashionbox.converter.export import ExportError
    from fashionbox.converter.repository import _onnx_io

    nms = NmsSettings(score_threshold=THRESHOLD)
    for name in FAMILY_NAMES:
        checkpoint = load_detr(checkpoint_weights(checkpoints[name]), STYLES[name])
        assert FAMILIES[name]().letterbox_stride(checkpoint) == 32
        square = export_detr_onnx(checkpoint, tmp_path / f"{name}.onnx", nms=nms)
        assert list(_onnx_io(square)[0][contract.ONNX_DETECTOR_INPUT][1][1:3]) == [INPUT_SIZE, INPUT_SIZE]
        # the rect export (a dynamic height and width) is checked with its parity, per family, above
        with pytest.raises(ExportError, match="its stride is 32"):
            export_detr_onnx(checkpoint, tmp_path / "odd.onnx", nms=nms, letterbox_stride=16)
    # an RT-DETR whose config precomputes its anchors for one size takes only the square
    anchored = _anchored_rt_detr(checkpoints, tmp_path)
    assert anchored.letterbox_stride == 0
    with pytest.raises(ExportError, match="takes only the square letterbox"):
        export_detr_onnx(anchored, tmp_path / "rect.onnx", nms=nms, letterbox_stride=32)


@pytest.mark.parametrize("name", ["rt_detr_v2", "d_fine", "deimv2"])
def test_discrete_sampling_takes_the_square_only_and_equals_transformers_there(
        checkpoints: dict[str, Path], tmp_path: Path, name: str) -> None:
    """RT-DETRv2's and D-FINE's discrete sampling scales its grid by a tensor the tracer bakes at the
    export size (a rect graph traced anyway put boxes 32 px off at other shapes: measured, not kept)."""
    from fashionbox.converter.export import ExportError

    checkpoint = _configured(checkpoints, name, tmp_path, decoder_method="discrete")
    assert checkpoint.letterbox_stride == 0 and checkpoint.model.config.decoder_method == "discrete"
    nms = NmsSettings(score_threshold=THRESHOLD)
    with pytest.raises(ExportError, match="takes only the square letterbox"):
        export_detr_onnx(checkpoint, tmp_path / "rect.onnx", nms=nms, letterbox_stride=32)
    path = export_detr_onnx(checkpoint, tmp_path / "discrete.onnx", nms=nms)
    batches = [np.random.default_rng(i).integers(0, 256, (3, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
               for i in range(2)]
    assert_graph_equals_transformers(checkpoint, path, batches)


def assert_counts_tokens(model: Any, encoder: Any, tokens_in: Any, count: Any) -> None:
    """``count(config, height, width)`` equals the sequence ``encoder`` is called with (``tokens_in(args,
    kwargs)``: ``[B, tokens, C]``) at square, strip and odd shapes."""
    seen: list[int] = []
    hook = encoder.register_forward_pre_hook(lambda module, args, kwargs: seen.append(tokens_in(args, kwargs).shape[1]),
                                             with_kwargs=True)
    try:
        for height, width in [(64, 64), (32, 64), (96, 32), (160, 128)]:
            with torch.no_grad():
                model(pixel_values=torch.zeros(1, 3, height, width))
            assert seen[-1] == count(model.config, height, width), (height, width)
    finally:
        hook.remove()


def _deimv2_variant(variant: str) -> dict[str, Any]:
    """Config fields of DEIMv2's smallest sizes (the lite encoder on two levels) or its DINOv3 ones."""
    if variant == "lite":
        return {"backbone_config": tiny_hgnet(["stage3", "stage4"]), "encoder_type": "lite",
                "encoder_in_channels": [16, 16], "feat_strides": [16, 32], "num_feature_levels": 2,
                "decoder_in_channels": [16, 16]}
    vit = transformers.DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                       patch_size=16, out_indices=[1, 2, 3], num_register_tokens=0)
    return {"backbone_config": vit, "spatial_tuning_adapter_inplanes": 4}


@pytest.mark.parametrize("variant", ["lite", "dinov3"])
def test_deimv2_variants_take_the_rect_letterbox_equal_to_transformers(tmp_path: Path, variant: str) -> None:
    """The lite encoder (DEIMv2's smallest sizes) follows the input as it is. A DINOv3 backbone's levels are
    resized to sizes transformers computes with int(), which the tracer fixes at the export size: exported
    as it is, the graph fails at any other shape; with its levels sized from the input it equals
    transformers at every shape."""
    folder = save_tiny(tmp_path / variant, "deimv2", **_deimv2_variant(variant))
    checkpoint = load_detr(checkpoint_weights(folder), STYLES["deimv2"])
    assert checkpoint.letterbox_stride == 32
    nms = NmsSettings(score_threshold=THRESHOLD)
    path = export_detr_onnx(checkpoint, tmp_path / "rect.onnx", nms=nms, letterbox_stride=32)
    assert_graph_equals_transformers(checkpoint, path, _rect_batches())
    if variant == "dinov3":
        frozen = replace(checkpoint, style=replace(checkpoint.style, prepare_rect=lambda model: model))
        path = export_detr_onnx(frozen, tmp_path / "frozen.onnx", nms=nms, letterbox_stride=32)
        with pytest.raises(Exception, match="Concat"):  # ONNX Runtime: the levels' sides no longer match
            compare_detr(checkpoint, path, _rect_batches()[1:2], nms)


def test_rt_detr_needs_as_many_encoder_tokens_as_it_selects_queries(checkpoints: dict[str, Path]) -> None:
    """RT-DETR's query selection takes ``num_queries`` of its encoder tokens: a strip's rect letterbox (one
    stride on the short side) or a small input size must leave that many, or transformers' top-k fails."""
    from fashionbox.converter.detr import resized_checkpoint, rt_detr_tokens

    checkpoint = load_detr(checkpoint_weights(checkpoints["rt_detr"]), STYLES["rt_detr"])
    config = checkpoint.model.config
    assert_counts_tokens(checkpoint.model, checkpoint.model.model.enc_output, lambda args, kwargs: args[0],
                         rt_detr_tokens)
    # a real RT-DETR's 300 queries: a 640 letterbox leaves enough on a strip (420), a 448 one does not (294):
    # its rect letterbox's short side is at least 64 there (588 tokens)
    real = transformers.RTDetrConfig(num_queries=300)
    assert rt_detr_tokens(real, 32, 640) == 420 and rt_detr_tokens(real, 32, 448) == 294
    assert STYLES["rt_detr"].rect_stride(real, 640) == STYLES["rt_detr"].rect_stride(real, 448) == 32
    assert STYLES["rt_detr"].rect_min_side(real, 640, 32) == 0 and STYLES["rt_detr"].rect_min_side(real, 448, 32) == 64
    STYLES["rt_detr"].check_size(real, 128)  # 336 tokens on the square
    with pytest.raises(DetrError, match="a 96x96 input leaves 189 encoder tokens, fewer than the 300 queries"):
        STYLES["rt_detr"].check_size(real, 96)
    # the tiny model selects 10 queries: 21 tokens at 32 x 32 are enough, not for 30
    crowded = replace(checkpoint, model=transformers.RTDetrForObjectDetection(
        transformers.RTDetrConfig.from_dict({**config.to_dict(), "num_queries": 30})).eval())
    assert resized_checkpoint(checkpoint, 32).input_size == 32
    with pytest.raises(DetrError, match="--input-size 32: a 32x32 input leaves 21 encoder tokens, fewer than the 30"):
        resized_checkpoint(crowded, 32)


def _rect_batches() -> list[Any]:
    # the square, a strip each way (its deepest level one cell high: linspace over one step) and a taller one
    shapes = [(INPUT_SIZE, INPUT_SIZE), (INPUT_SIZE // 2, INPUT_SIZE), (INPUT_SIZE, INPUT_SIZE // 2),
              (3 * INPUT_SIZE // 2, INPUT_SIZE)]
    return [np.random.default_rng(i).integers(0, 256, (2, h, w, 3), dtype=np.uint8) for i, (h, w) in enumerate(shapes)]


@pytest.mark.parametrize("fields", [{"with_box_refine": True},
                                    {"with_box_refine": True, "two_stage": True, "two_stage_num_proposals": 10}],
                         ids=["box-refine", "two-stage"])
def test_deformable_detr_variants_export_rect_and_equal_transformers(tmp_path: Path, fields: dict[str, Any]) -> None:
    """Box refinement and the two-stage proposals (the encoder's top tokens become the queries) take the
    rect letterbox too, equal to transformers at every shape."""
    folder = save_tiny(tmp_path / "variant", "deformable_detr", **fields)
    checkpoint = load_detr(checkpoint_weights(folder), STYLES["deformable_detr"])
    assert all(getattr(checkpoint.model.config, k) == v for k, v in fields.items())
    assert checkpoint.letterbox_stride == 32
    nms = NmsSettings(score_threshold=THRESHOLD)
    path = export_detr_onnx(checkpoint, tmp_path / "detector.onnx", nms=nms, letterbox_stride=32)
    assert_graph_equals_transformers(checkpoint, path, _rect_batches())


def test_deformable_detr_needs_both_trace_fixes_for_the_rect_letterbox(checkpoints: dict[str, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its levels' shapes rebuilt from the input, a rect graph scales the sampling offsets by the
    export size's levels at every shape; without the exporter's linspace mended, a level one cell high
    (a strip) gives NaN reference points. Each alone breaks the shapes it is there for."""
    from fashionbox.converter import detr

    checkpoint = load_detr(checkpoint_weights(checkpoints["deformable_detr"]), STYLES["deformable_detr"])
    nms = NmsSettings(score_threshold=THRESHOLD)
    square, strip, _, taller = _rect_batches()

    def mismatches(name: str, batch: Any) -> float:
        path = export_detr_onnx(checkpoint, tmp_path / f"{name}.onnx", nms=nms, letterbox_stride=32)
        return compare_detr(checkpoint, path, [batch], nms).max_abs_error["kept_mismatch"]

    assert mismatches("fixed", strip) == 0 and mismatches("fixed-taller", taller) == 0
    # the export size's level shapes baked in: right on the square only
    unshaped = replace(checkpoint, style=replace(checkpoint.style, prepare_rect=lambda model: model))
    path = export_detr_onnx(unshaped, tmp_path / "unshaped.onnx", nms=nms, letterbox_stride=32)
    assert compare_detr(checkpoint, path, [square], nms).max_abs_error["kept_mismatch"] == 0
    assert compare_detr(checkpoint, path, [taller], nms).max_abs_error["kept_mismatch"] > 0
    # the exporter's own linspace: right wherever each level has more than one row and column
    monkeypatch.setattr(detr, "_exporter_fixes", lambda opset: contextlib.nullcontext())
    assert mismatches("nan", taller) == 0 and mismatches("nan-strip", strip) > 0


def test_deformable_detr_sizes_its_levels_and_tokens_from_the_config(checkpoints: dict[str, Path]) -> None:
    """The levels' strides give the encoder's token count (a two-stage model's proposals are chosen among
    them) and the deepest level's cells (one cell: its GroupNorm refuses a batch of one)."""
    from fashionbox.converter.detr import deformable_tokens

    checkpoint = load_detr(checkpoint_weights(checkpoints["deformable_detr"]), STYLES["deformable_detr"])
    assert_counts_tokens(checkpoint.model, checkpoint.model.model.encoder,
                         lambda args, kwargs: kwargs["inputs_embeds"], deformable_tokens)
    # a real one: a timm ResNet-50's strides 8, 16, 32 and an extra level at 64; 300 queries
    real = transformers.DeformableDetrConfig()
    assert deformable_tokens(real, 800, 800) == 100 * 100 + 50 * 50 + 25 * 25 + 13 * 13
    style = STYLES["deformable_detr"]
    style.check_size(real, 96)
    with pytest.raises(DetrError, match="a 64x64 input leaves one cell on Deformable DETR's stride-64 level"):
        style.check_size(real, 64)
    two_stage = transformers.DeformableDetrConfig(two_stage=True, with_box_refine=True)
    assert deformable_tokens(two_stage, 32, 800) == 538 and style.rect_min_side(two_stage, 800, 32) == 0
    # at 416 a strip of 32 leaves 280 tokens for 300 proposals: the rect letterbox's short side is 64 at least
    assert deformable_tokens(two_stage, 32, 416) == 280 and deformable_tokens(two_stage, 64, 416) == 553
    assert style.rect_stride(two_stage, 416) == 32 and style.rect_min_side(two_stage, 416, 32) == 64
    assert style.rect_min_side(real, 416, 32) == 0  # one stage: the queries are learned, not chosen among tokens
    with pytest.raises(DetrError, match="a 96x96 input leaves 193 encoder tokens, fewer than the 300 proposals"):
        style.check_size(two_stage, 96)


def test_the_comparison_takes_near_ties_in_either_order_and_nothing_else() -> None:
    """Two runtimes may order two detections whose scores differ by 1e-7 either way (a DAB-DETR comparison
    did); a kept set that really differs is still a mismatch."""
    from fashionbox.converter.detr import compare_detections
    from fashionbox.core.postprocessing import DetectorOutput

    def detections(scores: list[float], classes: list[int]) -> DetectorOutput:
        boxes = np.array([[10.0 * c, 0.0, 10.0 * c + 5, 5.0] for c in classes], np.float32).reshape(-1, 4)
        return DetectorOutput(boxes=boxes, scores=np.array(scores, np.float32), classes=np.array(classes, np.int32))

    ours = detections([0.9, 0.8808927, 0.88089263, 0.5], [1, 6, 5, 2])
    errors: dict[str, float] = {}
    compare_detections([ours], [detections([0.9, 0.88089323, 0.8808929, 0.5], [1, 5, 6, 2])], errors)
    assert errors.get("kept_mismatch", 0.0) == 0 and errors["scores"] < 1e-6 and errors["boxes"] == 0
    for scores, classes in [([0.9, 0.88, 0.87, 0.5], [1, 5, 6, 2]),  # 0.01 apart: not a tie, another order
                            ([0.9, 0.8808927, 0.88089263, 0.5], [1, 6, 6, 2]),  # another class
                            ([0.9, 0.8808927, 0.88089263], [1, 6, 5])]:  # one fewer
        errors = {}
        compare_detections([ours], [detections(scores, classes)], errors)
        assert errors["kept_mismatch"] == 1, (scores, classes)


def test_top_k_families_may_report_one_query_for_two_classes(checkpoints: dict[str, Path]) -> None:
    """Conditional DETR's post-processing ranks (query, class) pairs, not queries: the graph must too."""
    checkpoint = load_detr(checkpoint_weights(checkpoints["conditional_detr"]), STYLES["conditional_detr"])
    pixels = np.random.default_rng(0).integers(0, 256, (3, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    inputs = checkpoint.processor(images=list(pixels), do_resize=False, do_pad=False, return_tensors="pt")
    with torch.no_grad():
        probs = checkpoint.model(pixel_values=inputs["pixel_values"]).logits.sigmoid()
    assert int((probs > THRESHOLD).sum(-1).max()) > 1, "the tiny model should score some query above it twice"


# -- bad checkpoints: refused before anything is written ----------------------------------------------------


def _copy(folder: Path, into: Path, *, skip: tuple[str, ...] = ()) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        if file.name not in skip:
            (into / file.name).write_bytes(file.read_bytes())
    return into


def _configured(checkpoints: dict[str, Path], name: str, tmp_path: Path, **fields: Any) -> DetrCheckpoint:
    """The tiny ``name`` checkpoint loaded with ``fields`` changed in its config.json."""
    folder = _copy(checkpoints[name], tmp_path / f"{name}-configured")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return load_detr(checkpoint_weights(folder), STYLES[name])


def _anchored_rt_detr(checkpoints: dict[str, Path], tmp_path: Path) -> DetrCheckpoint:
    """The tiny RT-DETR with ``anchor_image_size`` in its config: anchors precomputed for the square."""
    return _configured(checkpoints, "rt_detr", tmp_path, anchor_image_size=[INPUT_SIZE, INPUT_SIZE])


def _refused(spec_folder: Path, tmp_path: Path, match: str) -> None:
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "repo"
    with pytest.raises(ConvertError, match=match):
        convert(ConvertOptions(out=out, detector=f"hf:{spec_folder}", compare_samples=1))
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_a_checkpoint_of_a_family_that_is_not_detr_style_is_refused(checkpoints: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    folder = _copy(checkpoints["detr"], tmp_path / "vit")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    _refused(folder, tmp_path, r"model_type 'vit' is not supported; known: \['conditional_detr', 'd_fine', "
                               r"'dab-detr', 'deformable_detr', 'deimv2', 'detr', 'lw_detr', 'owlv2', 'owlvit', "
                               r"'rf_detr', 'rt_detr', 'rt_detr_v2', 'yolos'\]$")


def test_loading_a_checkpoint_as_another_family_is_refused(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(DetrError, match=r"model_type 'detr' is not a rt_detr checkpoint$"):
        load_detr(checkpoint_weights(checkpoints["detr"]), STYLES["rt_detr"])


def test_a_config_without_id2label_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(checkpoints["conditional_detr"], tmp_path / "unnamed")
    config = json.loads((folder / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (folder / "config.json").write_text(json.dumps(config))
    _refused(folder, tmp_path, r"config\.json has no id2label: the class names must come from the checkpoint$")


@pytest.mark.parametrize(("name", "rows"), [("detr", "8 rows but id2label names 6 classes plus the no-object class "
                                                      r"\(7\)$"),
                                            ("rt_detr", r"7 rows but id2label names 6 classes \(6\)$")])
def test_a_label_count_that_does_not_match_the_class_head_is_refused(checkpoints: dict[str, Path], tmp_path: Path,
                                                                     name: str, rows: str) -> None:
    folder = _copy(checkpoints[name], tmp_path / "fewer")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): n for i, n in enumerate(NAMES[:-1])}
    config["label2id"] = {n: i for i, n in enumerate(NAMES[:-1])}
    (folder / "config.json").write_text(json.dumps(config))
    _refused(folder, tmp_path, rf"the class head \S+ has {rows}")


def test_a_truncated_safetensors_file_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(checkpoints["detr"], tmp_path / "truncated")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _refused(folder, tmp_path, r"model\.safetensors is not a whole safetensors file \(truncated or damaged\?\)")


def test_an_input_size_serves_the_checkpoint_at_another_letterbox_side(checkpoints: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    from fashionbox.converter.detr import resized_checkpoint

    repository = convert(ConvertOptions(out=tmp_path / "detr-96", detector=f"hf:{checkpoints['detr']}",
                                        score_threshold=THRESHOLD, compare_samples=2, runtime="onnxruntime",
                                        input_size=96)).repository
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["export"]["input_size"] == 96 and manifest["export"]["input_size_from"] == "--input-size"
    assert manifest["export"]["letterbox_stride"] == 32  # still the rect letterbox: 96 on the long side
    assert re.search(r'key: "input_size"\s+value \{\s+string_value: "96"', (repository / "preprocess" /
                                                                           "config.pbtxt").read_text())
    # the served graph at 96 (square and rect) equals transformers fed the same pixels
    checkpoint = resized_checkpoint(load_detr(checkpoint_weights(checkpoints["detr"]), STYLES["detr"]), 96)
    batches = [np.random.default_rng(2).integers(0, 256, (3, h, w, 3), dtype=np.uint8)  # each shape keeps some
               for h, w in [(96, 96), (64, 96), (96, 32)]]
    assert_graph_equals_transformers(checkpoint, repository / "detector" / "1" / "model.onnx", batches)
    # sizes the graph's stride does not divide, and anchors fixed in the checkpoint, are refused
    with pytest.raises(ConvertError, match="--input-size 100: a detr detector takes a multiple of 32"):
        convert(ConvertOptions(out=tmp_path / "odd", detector=f"hf:{checkpoints['detr']}", input_size=100))
    anchored = _anchored_rt_detr(checkpoints, tmp_path)
    with pytest.raises(ConvertError, match=r"anchors are precomputed for \[64, 64\]"):
        resized_checkpoint(anchored, 96)
    with pytest.raises(ConvertError, match="input_size must be a positive integer"):
        ConvertOptions(out=tmp_path / "zero", input_size=0)
    with pytest.raises(ConvertError, match="a fashionbox detector is served at its own 320 only"):
        convert(ConvertOptions(out=tmp_path / "default", input_size=640))


def test_a_checkpoint_without_its_preprocessor_config_is_refused(checkpoints: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    folder = _copy(checkpoints["rt_detr"], tmp_path / "no-processor", skip=("preprocessor_config.json",))
    _refused(folder, tmp_path, r"has no preprocessor_config\.json: the input size and normalisation must come from "
                               r"the checkpoint")


def test_an_rt_detr_trained_without_focal_loss_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(checkpoints["rt_detr"], tmp_path / "softmax")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "use_focal_loss": False}))
    _refused(folder, tmp_path, r"use_focal_loss false\) are not supported")


# -- Hub ids ---------------------------------------------------------------------------------------------------


def test_an_offline_hub_id_missing_from_the_cache_stops_naming_the_cache(tmp_path: Path) -> None:
    """For real: a fresh process, HF_HUB_OFFLINE=1 and an empty HF_HOME; the CLI's one-line error."""
    home = tmp_path / "hf-home"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "fashionbox.commands.cli", "convert", "--detector",
                           "hf:valentinafeve/yolos-fashionpedia", "--out", str(tmp_path / "repo")],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert (f"hf:valentinafeve/yolos-fashionpedia: HF_HUB_OFFLINE is set and the Hugging Face cache {home / 'hub'} "
            "has no copy of valentinafeve/yolos-fashionpedia") in done.stderr
    assert f"HF_HUB_CACHE={home / 'hub'} hf download valentinafeve/yolos-fashionpedia" in done.stderr
    assert not (tmp_path / "repo").exists()


def test_a_hub_id_is_served_from_a_filled_cache_offline(checkpoints: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import scan_cache_dir

    cache = tmp_path / "hf-home" / "hub"
    snapshot = fill_hub_cache(cache, "fashion-org/tiny-rt-detr", checkpoints["rt_detr"])
    (repo,) = scan_cache_dir(cache).repos  # huggingface_hub reads it as its own cache
    assert repo.repo_id == "fashion-org/tiny-rt-detr"
    assert {f.file_name for r in repo.revisions for f in r.files} >= {"config.json", "model.safetensors"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    family, weights = resolve_spec("hf:fashion-org/tiny-rt-detr", "detector")
    assert (family, weights) == ("rt_detr", snapshot / "model.safetensors")
    assert load_detr(weights, STYLES["rt_detr"]).label_map.category_names == tuple(NAMES)


def test_an_absent_local_path_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"is not a folder: expected a Hugging Face checkpoint folder$"):
        resolve_spec(f"hf:{tmp_path / 'org' / 'name'}", "detector")


# -- served through a real Triton ---------------------------------------------------------------------------------


def scenes() -> list[bytes]:
    from fashionbox.synth import render_scene

    # a rect letterbox of the tiny models' stride (32 at 64 px) serves the 2:1 ones on half the square
    sizes = [(640, 480), (360, 640), (500, 500), (640, 300), (280, 640)]
    return [render_scene(70 + i, size=size).encode(format="JPEG", quality=90) for i, size in enumerate(sizes)]


def assert_served_as_transformers(server: Any, repository: Path, folder: Path, style: Any) -> None:
    """The served answers (gRPC, the typed client) equal transformers' on the same letterboxed pixels, one by one
    and in flight together; ``style``: the family's :class:`DetrStyle`."""
    from fashionbox.client import FashionClient
    from fashionbox.core.imaging import decode_image, letterbox, rect_canvas

    checkpoint = load_detr(checkpoint_weights(folder), style)
    labels = checkpoint.label_map
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["family"] == style.family
    assert [c["name"] for c in json.loads((repository / "labels.json").read_text())["categories"]] == NAMES
    # ONNX Runtime on the CPU serves each family with a rect letterbox by default
    stride, min_side = manifest["export"]["letterbox_stride"], manifest["export"]["letterbox_min_side"]
    assert stride == (checkpoint.letterbox_stride if manifest["runtime"] != "torch" else 0)
    assert min_side == checkpoint.letterbox_min_side(stride)
    total, canvases = 0, set()
    with FashionClient(str(server.endpoints.grpc)) as client:
        for data in scenes():
            served = client.detect(data).detections
            decoded = decode_image(data, target_size=INPUT_SIZE)
            canvas = rect_canvas(decoded.width, decoded.height, INPUT_SIZE, stride, min_side) if stride else None
            pixels, info = letterbox(decoded, INPUT_SIZE, canvas=canvas)
            canvases.add(pixels.shape[:2])
            (expected,) = reference_detections(checkpoint, pixels[None], THRESHOLD)
            assert [d.category for d in served] == [labels.category_names[c] for c in expected.classes]
            np.testing.assert_allclose([d.score for d in served], expected.scores, atol=1e-3)
            boxes = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in served]).reshape(-1, 4)
            np.testing.assert_allclose(boxes, info.to_original(expected.boxes), atol=0.5)
            for d in served:
                assert set(d.attributes) == set(labels.groups_for(d.category))
            total += len(served)
        if stride:  # the 2:1 scenes ran on half the square, each way round
            assert {(INPUT_SIZE, INPUT_SIZE), (INPUT_SIZE // 2, INPUT_SIZE), (INPUT_SIZE, INPUT_SIZE // 2)} <= canvases
        # in flight at once, as the dynamic batcher meets them (shapes mixed): each answer as when sent alone
        sequential = [client.detect(data).detections for data in scenes()]
        for together, alone in zip(client.detect_many(scenes() * 3, max_in_flight=9), sequential * 3, strict=True):
            assert not isinstance(together, Exception), together
            assert [d.category for d in together.detections] == [d.category for d in alone]
            np.testing.assert_allclose([d.score for d in together.detections], [d.score for d in alone], atol=1e-4)
    assert total > 0


@pytest.mark.integration
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_served_detections_equal_transformers_on_the_same_images(
        triton_server: Any, repositories: dict[str, Path], checkpoints: dict[str, Path], name: str) -> None:
    assert_served_as_transformers(triton_server(repositories[name]), repositories[name], checkpoints[name],
                                  STYLES[name])


@pytest.mark.integration
@pytest.mark.parametrize("name", ["detr", "deformable_detr", "rt_detr"])
def test_a_served_openvino_repository_takes_the_rect_letterbox_as_onnx_runtime(
        triton_server: Any, checkpoints: dict[str, Path], tmp_path: Path, name: str) -> None:
    """OpenVINO compiles the graph with a dynamic height and width once and serves every shape of it. The
    converter's check pairs the tiny RT-DETR's degenerate boxes (no height) with their twins."""
    pytest.importorskip("openvino", reason="the openvino runtime needs fashionbox-core[openvino]")
    repository = convert(ConvertOptions(out=tmp_path / f"{name}-openvino", detector=f"hf:{checkpoints[name]}",
                                        score_threshold=THRESHOLD, compare_samples=2, runtime="openvino")).repository
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["runtime"] == "openvino"
    assert manifest["comparison"]["openvino fp32 detector"]["detections_count_mismatch"] == 0
    assert_served_as_transformers(triton_server(repository), repository, checkpoints[name], STYLES[name])


# -- the torch runtime: the transformers model in PyTorch (the GPU profile without TensorRT) ----------------------


@pytest.fixture(scope="module")
def torch_repositories(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _convert_each(checkpoints, tmp_path_factory.mktemp("detr-torch-repos"), "torch")


def _torch_folder(repository: Path) -> Path:
    from fashionbox.model_repository.runners import TORCH_FOLDER

    return repository / "detector" / "1" / TORCH_FOLDER


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_torch_runtime_detector_answers_as_transformers_on_the_same_pixels(
        torch_repositories: dict[str, Path], checkpoints: dict[str, Path], name: str) -> None:
    from fashionbox.models.torch_runtime import TorchDetrDetector

    repository = torch_repositories[name]
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["runtime"] == "torch" and manifest["precision"] == "fp32"
    assert manifest["comparison"]["torch detector"]["detections_count_mismatch"] == 0
    # CPU instances of the family's threads, as its ONNX Runtime instances would have (2, at most the cores)
    config = (repository / "detector" / "config.pbtxt").read_text()
    assert re.search(r'key: "torch_threads"\s+value \{\s+string_value: "(\d+)"', config).group(1) == str(
        min(2, os.cpu_count() or 2))
    # safetensors and JSON only: nothing a loader would unpickle
    assert sorted(p.name for p in _torch_folder(repository).iterdir()) == ["config.json", "detector.json",
                                                                            "model.safetensors"]
    checkpoint = load_detr(checkpoint_weights(checkpoints[name]), STYLES[name])
    runner = TorchDetrDetector(_torch_folder(repository), device="cpu", precision="fp32", score_threshold=THRESHOLD,
                               max_detections=STYLES[name].max_detections)
    assert_detects_as(runner, lambda pixels: reference_detections(checkpoint, pixels, THRESHOLD), size=INPUT_SIZE)


def test_the_torch_runtime_detector_pads_to_its_buckets_and_answers_only_the_rows_asked_for(
        torch_repositories: dict[str, Path]) -> None:
    from fashionbox.models.torch_runtime import TorchDetrDetector

    folder = _torch_folder(torch_repositories["rt_detr"])
    plain = TorchDetrDetector(folder, device="cpu", precision="fp32", score_threshold=THRESHOLD, max_detections=300)
    padded = TorchDetrDetector(folder, device="cpu", precision="fp32", score_threshold=THRESHOLD, max_detections=300,
                               max_batch_size=8, bucketed=True)
    assert padded.buckets == (1, 2, 4, 8)
    pixels = np.random.default_rng(5).integers(0, 256, (5, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    for rows in (1, 3, 5):  # padded to 1, 4 and 8 rows: the padding's detections are not answered
        ours, theirs = padded.detect(pixels[:rows]), plain.detect(pixels[:rows])
        assert len(ours) == rows
        for a, b in zip(ours, theirs, strict=True):
            assert a.classes.tolist() == b.classes.tolist()
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert sum(len(d) for d in plain.detect(np.zeros((2, INPUT_SIZE, INPUT_SIZE, 3), np.uint8))) > 0, (
        "zero rows must detect something here, or the padding test proves nothing")


def test_the_graph_spec_round_trips_and_refuses_what_the_graph_cannot_run(tmp_path: Path) -> None:
    from fashionbox.models.detr_graph import DetrSpec

    spec = DetrSpec(model_class="RTDetrForObjectDetection", scoring="sigmoid_top_k", top_k=300, input_size=640,
                    rescale_factor=1 / 255, image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))
    spec.write(tmp_path)
    assert DetrSpec.read(tmp_path) == spec
    good = {"model_class": "DetrForObjectDetection", "scoring": "softmax", "top_k": 0, "input_size": 800,
            "rescale_factor": 1 / 255, "image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)}
    DetrSpec(**good)  # type: ignore[arg-type]
    for change, message in [({"scoring": "argmax"}, "scoring must be one of"),
                            ({"scoring": "sigmoid_top_k", "top_k": 0}, "sigmoid_top_k needs top_k >= 1"),
                            ({"input_size": 0}, "input_size must be positive"),
                            ({"image_std": (0.2, 0.0, 0.2)}, "std > 0"),
                            ({"image_mean": (0.5, 0.5)}, "3 values each"),
                            ({"model_class": "AutoModel"}, "ForObjectDetection class"),
                            ({"model_class": "os.system; DetrForObjectDetection"}, "ForObjectDetection class")]:
        with pytest.raises(ValueError, match=message):
            DetrSpec(**{**good, **change})  # type: ignore[arg-type]


def test_a_torch_runtime_folder_without_its_spec_fails_load_naming_it(torch_repositories: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    from fashionbox.models.torch_runtime import TorchDetrDetector, TorchRuntimeError

    folder = _copy(_torch_folder(torch_repositories["detr"]), tmp_path / "no-spec", skip=("detector.json",))
    with pytest.raises(ValueError, match=r"detector\.json is not a DETR-style detector spec"):
        TorchDetrDetector(folder, device="cpu", precision="fp32", score_threshold=THRESHOLD, max_detections=10)
    spec = json.loads((_torch_folder(torch_repositories["detr"]) / "detector.json").read_text())
    _copy(_torch_folder(torch_repositories["detr"]), tmp_path / "renamed")
    (tmp_path / "renamed" / "detector.json").write_text(json.dumps({**spec, "model_class": "NoSuchForObjectDetection"}))
    with pytest.raises(TorchRuntimeError, match="has no NoSuchForObjectDetection"):
        TorchDetrDetector(tmp_path / "renamed", device="cpu", precision="fp32", score_threshold=THRESHOLD,
                          max_detections=10)
    # only an object-detection class is looked up in transformers, nothing else the module holds
    (tmp_path / "renamed" / "detector.json").write_text(json.dumps({**spec, "model_class": "pipeline"}))
    with pytest.raises(ValueError, match=r"must name a transformers \.\.\.ForObjectDetection class, got 'pipeline'"):
        TorchDetrDetector(tmp_path / "renamed", device="cpu", precision="fp32", score_threshold=THRESHOLD,
                          max_detections=10)
    with pytest.raises(TorchRuntimeError, match="fp16 needs a CUDA device"):
        TorchDetrDetector(_torch_folder(torch_repositories["detr"]), device="cpu", precision="fp16",
                          score_threshold=THRESHOLD, max_detections=10)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["detr", "rt_detr"])  # the two scorings: softmax, sigmoid top-k
def test_a_served_torch_runtime_repository_equals_transformers_on_the_same_images(
        triton_server: Any, torch_repositories: dict[str, Path], checkpoints: dict[str, Path], name: str) -> None:
    server = triton_server(torch_repositories[name])
    assert_served_as_transformers(server, torch_repositories[name], checkpoints[name], STYLES[name])
    assert server.log_path is not None
    assert f"{_torch_folder(torch_repositories[name])} on cpu (fp32)" in server.log_path.read_text()
