"""LW-DETR (transformers' ``lw_detr``): a tiny random checkpoint converted, served, as transformers.

No network: a random ``LwDetrForObjectDetection`` (a ViT 32 wide, 8 px patches in 2 x 2 windows, position
embeddings for a 48 px pretraining size so every input interpolates them, a projector at scales 1 and 0.5,
the two-stage deformable decoder with 10 queries) saved with Deformable DETR's processor config, as
transformers' auto mapping names it for ``lw_detr``.

Parity: the exported graph (square and rect), the torch runtime and the served answer (embedded Triton,
gRPC) against the model plus Deformable DETR's ``post_process_object_detection`` on the same letterboxed
pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashionbox.converter import FAMILIES, ConvertOptions, family_nms, resolve_spec

transformers = pytest.importorskip("transformers", reason="LW-DETR needs fashionbox-converter[hf]")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from test_detr_families import (  # noqa: E402
    INPUT_SIZE,
    NAMES,
    THRESHOLD,
    assert_graph_equals_transformers,
    assert_served_as_transformers,
    assert_torch_runtime_answers_as_transformers,
    convert_hf,
    spread,
    square_batches,
)

from fashionbox.converter.detr import (  # noqa: E402
    DetrError,
    checkpoint_weights,
    export_detr_onnx,
    load_detr,
    reference_detections,
    resized_checkpoint,
)
from fashionbox.converter.export import ExportError  # noqa: E402
from fashionbox.converter.lw_detr import LW_DETR, baked_positions, lw_detr_tokens, rect_model  # noqa: E402
from fashionbox.models.nms import NmsSettings  # noqa: E402

QUERIES = 10
STEP = 16
"""The tiny model's side step: 8 px patches x 2 windows per side."""


def tiny_lw_detr(names: list[str] = NAMES, **fields: Any) -> Any:
    backbone = transformers.LwDetrViTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=INPUT_SIZE,
        pretrain_image_size=48, patch_size=8, num_windows=4, window_block_indices=[0, 2], out_indices=[1, 3])
    return transformers.LwDetrConfig(
        backbone_config=backbone, projector_scale_factors=[1.0, 0.5], d_model=32, decoder_layers=2,
        decoder_ffn_dim=64, decoder_self_attention_heads=2, decoder_cross_attention_heads=2, decoder_n_points=2,
        group_detr=2, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        **{"num_queries": QUERIES, **fields})


def save_tiny_lw_detr(folder: Path, *, seed: int = 0, **fields: Any) -> Path:
    """The checkpoint and Deformable DETR's processor config at a square size, as the hub's LW-DETR ones."""
    torch.manual_seed(seed)
    model = transformers.LwDetrForObjectDetection(tiny_lw_detr(**fields)).eval()
    spread(model, 1.5, seed)
    model.save_pretrained(folder)
    transformers.DeformableDetrImageProcessorPil(size={"height": INPUT_SIZE, "width": INPUT_SIZE}).save_pretrained(
        folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lw_detr(tmp_path_factory.mktemp("tiny-lw_detr"))


@pytest.fixture(scope="module")
def checkpoint(folder: Path) -> Any:
    return load_detr(checkpoint_weights(folder), LW_DETR)


def _resize_modes(path: Path) -> set[str]:
    """The interpolation modes of the graph's ``Resize`` nodes (the pixel mask's nearest one is transformers')."""
    return {attribute.s.decode() for node in onnx.load(str(path)).graph.node if node.op_type == "Resize"
            for attribute in node.attribute if attribute.name == "mode"}


def test_an_lw_detr_checkpoint_is_its_own_family_with_deformable_detrs_post_processing(
        folder: Path, checkpoint: Any, tmp_path: Path) -> None:
    assert resolve_spec(f"hf:{folder}", "detector") == ("lw_detr", folder / "model.safetensors")
    nms = family_nms(FAMILIES["lw_detr"](), ConvertOptions(out=tmp_path), checkpoint)
    # Deformable DETR's processor: threshold 0.5, the 100 best (query, class) pairs; 10 queries x 7 classes here
    assert nms.score_threshold == 0.5 and nms.max_detections == QUERIES * len(NAMES)
    assert (LW_DETR.scoring, LW_DETR.top_k, LW_DETR.processor_class) == ("sigmoid_top_k", 100,
                                                                          "DeformableDetrImageProcessorPil")
    assert checkpoint.input_size == INPUT_SIZE and checkpoint.letterbox_stride == STEP
    assert checkpoint.preprocessing.image_mean == pytest.approx((0.485, 0.456, 0.406))
    assert checkpoint.label_map.category_names == tuple(NAMES)


def test_the_square_graph_bakes_the_position_embeddings_the_model_computes(checkpoint: Any, tmp_path: Path) -> None:
    model = checkpoint.model
    pixels = torch.randn((2, 3, INPUT_SIZE, INPUT_SIZE), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(pixel_values=pixels), baked_positions(model, INPUT_SIZE)(pixel_values=pixels)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=0, atol=0)
    path = export_detr_onnx(checkpoint, tmp_path / "square.onnx", nms=NmsSettings(score_threshold=THRESHOLD))
    assert_graph_equals_transformers(checkpoint, path, square_batches(40))
    assert "cubic" not in _resize_modes(path)  # traced, the original interpolates on every forward


def _rect_batches() -> list[Any]:
    # the square, a strip of one step each way, a 4:3 and a taller one
    shapes = [(INPUT_SIZE, INPUT_SIZE), (STEP, INPUT_SIZE), (INPUT_SIZE, STEP), (48, INPUT_SIZE), (96, INPUT_SIZE)]
    return [np.random.default_rng(i).integers(0, 256, (2, h, w, 3), dtype=np.uint8) for i, (h, w) in enumerate(shapes)]


def test_the_rect_graph_interpolates_the_embeddings_and_equals_transformers_at_every_shape(
        checkpoint: Any, tmp_path: Path) -> None:
    model = checkpoint.model
    pixels = torch.randn((2, 3, 48, 80), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = model(pixel_values=pixels), rect_model(model)(pixel_values=pixels)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4)
    path = export_detr_onnx(checkpoint, tmp_path / "rect.onnx", nms=NmsSettings(score_threshold=THRESHOLD),
                            letterbox_stride=STEP)
    assert_graph_equals_transformers(checkpoint, path, _rect_batches())
    assert "cubic" not in _resize_modes(path)  # matrix products instead
    with pytest.raises(ExportError, match="its stride is 16"):
        export_detr_onnx(checkpoint, tmp_path / "odd.onnx", nms=NmsSettings(score_threshold=THRESHOLD),
                         letterbox_stride=8)


def test_sides_are_multiples_of_patch_windows_with_tokens_for_every_query(checkpoint: Any, tmp_path: Path) -> None:
    config = checkpoint.model.config
    assert lw_detr_tokens(config, 64, 64) == 8 * 8 + 4 * 4  # scale 1: the patch grid; 0.5: half of it
    assert lw_detr_tokens(config, 16, 64) == 2 * 8 + 1 * 4
    with pytest.raises(DetrError, match=r"patch size times its windows per side \(8 x 2 = 16\) divides, not 40"):
        LW_DETR.check_size(config, 40)
    with pytest.raises(DetrError, match=r"--input-size 40: a lw_detr detector takes a multiple of 16$"):
        resized_checkpoint(checkpoint, 40)
    bigger = resized_checkpoint(checkpoint, 80)
    assert bigger.input_size == 80
    path = export_detr_onnx(bigger, tmp_path / "80.onnx", nms=NmsSettings(score_threshold=THRESHOLD))
    assert_graph_equals_transformers(bigger, path, [np.random.default_rng(3).integers(0, 256, (2, 80, 80, 3),
                                                                                      dtype=np.uint8)])
    # 30 queries: 80 tokens at the square serve them, a strip of one step (20 tokens) does not, of two (40) does
    crowded = load_detr(checkpoint_weights(save_tiny_lw_detr(tmp_path / "crowded", num_queries=30)), LW_DETR)
    assert crowded.input_size == INPUT_SIZE and crowded.letterbox_stride == STEP
    assert checkpoint.letterbox_min_side(STEP) == 0 and crowded.letterbox_min_side(STEP) == 2 * STEP
    with pytest.raises(DetrError, match="a 32x32 input leaves 20 encoder tokens, fewer than the 30 proposals"):
        resized_checkpoint(crowded, 32)
    # LW-DETR small's shape: 300 queries among one level of 16 px patches; a 640 letterbox's strip needs 128 px
    small = transformers.LwDetrConfig(projector_scale_factors=[1.0])
    assert lw_detr_tokens(small, 64, 640) == 160 and lw_detr_tokens(small, 128, 640) == 320
    assert LW_DETR.rect_stride(small, 640) == 64 and LW_DETR.rect_min_side(small, 640, 64) == 128


# -- converted: the torch runtime and the served repository --------------------------------------------------------


def test_the_torch_runtime_answers_as_transformers(folder: Path, checkpoint: Any, tmp_path: Path) -> None:
    assert_torch_runtime_answers_as_transformers(folder, checkpoint, tmp_path / "torch",
                                                 max_detections=QUERIES * len(NAMES))


@pytest.mark.integration
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_served_detections_equal_transformers_on_the_same_images(triton_server: Any, folder: Path, tmp_path: Path,
                                                                 runtime: str) -> None:
    """The CPU's rect letterbox by default (each photo's own shape, one dynamic graph), ONNX Runtime and OpenVINO."""
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the openvino runtime needs fashionbox-core[openvino]")
    repository = convert_hf(folder, tmp_path / runtime, runtime)
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["runtime"] == runtime and manifest["export"]["letterbox_stride"] == STEP
    assert manifest["comparison"]["detector"]["kept_mismatch"] == 0
    if runtime == "openvino":
        assert manifest["comparison"]["openvino fp32 detector"]["detections_count_mismatch"] == 0
    assert_served_as_transformers(triton_server(repository), repository, folder, LW_DETR)


@pytest.mark.integration
def test_a_model_whose_strips_lack_tokens_serves_them_at_its_min_side(triton_server: Any, tmp_path: Path) -> None:
    """30 queries: a 5:1 strip's own rect letterbox (one step, 16 x 64) would leave 20 tokens and fail the
    decoder's top-k; the repository's min side (32) pads it to 32 x 64, where transformers answers the same."""
    from fashionbox.client import FashionClient
    from fashionbox.core.imaging import decode_image, letterbox
    from fashionbox.synth import render_scene

    folder = save_tiny_lw_detr(tmp_path / "crowded", num_queries=30)
    repository = convert_hf(folder, tmp_path / "repository", "onnxruntime")
    export = json.loads((repository / "manifest.json").read_text())["export"]
    assert (export["letterbox_stride"], export["letterbox_min_side"]) == (STEP, 2 * STEP)
    server = triton_server(repository)
    assert_served_as_transformers(server, repository, folder, LW_DETR)
    checkpoint = load_detr(checkpoint_weights(folder), LW_DETR)
    data = render_scene(7, size=(640, 128)).encode(format="JPEG", quality=90)
    pixels, info = letterbox(decode_image(data, target_size=INPUT_SIZE), INPUT_SIZE, canvas=(2 * STEP, INPUT_SIZE))
    (expected,) = reference_detections(checkpoint, pixels[None], THRESHOLD)
    with FashionClient(str(server.endpoints.grpc)) as client:
        served = client.detect(data).detections
    assert len(served) == len(expected) > 0
    np.testing.assert_allclose([d.score for d in served], expected.scores, atol=1e-3)
    np.testing.assert_allclose([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in served],
                               info.to_original(expected.boxes), atol=0.5)
