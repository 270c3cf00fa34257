"""RF-DETR (transformers' ``rf_detr``): a tiny random checkpoint converted, served, as transformers.

No network: a random ``RfDetrForObjectDetection`` (a windowed DINOv2 backbone 32 wide, 8 px patches in 2 x 2
windows, LW-DETR's two-stage deformable decoder with 10 queries) saved with a ``preprocessor_config.json``
laid out as the hub's RF-DETR checkpoints have it (``RfDetrImageProcessor``, a square ``size``). RF-DETR's
processor runs on torchvision, which this CPU torch cannot load: its preprocessing is DETR's (rescale,
normalise), read from the same file by ``DetrImageProcessorPil``, and its ``post_process_object_detection``
is read from the installed transformers' own source (``library_post_process``).

Parity: the exported graph, the torch runtime and the served answer (embedded Triton, gRPC) against the
model plus RF-DETR's post-processing on the same letterboxed pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fashionbox.converter import FAMILIES, ConvertOptions, convert, family_nms, resolve_spec

transformers = pytest.importorskip("transformers", reason="RF-DETR needs fashionbox-converter[hf]")
torch = pytest.importorskip("torch")

from test_detr_families import (  # noqa: E402
    INPUT_SIZE,
    NAMES,
    THRESHOLD,
    _assert_served_as_transformers,
    assert_detects_as,
    assert_graph_equals_transformers,
    spread,
)

from fashionbox.converter.detr import (  # noqa: E402
    STYLES,
    DetrError,
    checkpoint_weights,
    export_detr_onnx,
    fixed_position_embeddings,
    library_post_process,
    load_detr,
    reference_detections,
    resized_checkpoint,
)
from fashionbox.converter.export import ExportError  # noqa: E402
from fashionbox.models.nms import NmsSettings  # noqa: E402

QUERIES = 10


def tiny_rf_detr(names: list[str] = NAMES) -> Any:
    backbone = {"model_type": "rf_detr_dinov2", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
                "mlp_ratio": 2, "image_size": 48, "patch_size": 8, "num_windows": 2, "window_block_indexes": [0, 2],
                "out_features": ["stage1", "stage2", "stage3", "stage4"], "num_register_tokens": 0}
    return transformers.RfDetrConfig(
        backbone_config=backbone, d_model=32, decoder_layers=2, decoder_ffn_dim=64, decoder_self_attention_heads=2,
        decoder_cross_attention_heads=2, decoder_n_points=2, num_queries=QUERIES, group_detr=2, c2f_num_blocks=1,
        intermediate_size=64, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})


def save_tiny_rf_detr(folder: Path, *, seed: int = 0) -> Path:
    """The checkpoint and a preprocessor config as the hub's RF-DETR ones: ``RfDetrImageProcessor``, a square size
    (the backbone's ``image_size`` is 48, so the 64 px letterbox interpolates its position embeddings)."""
    torch.manual_seed(seed)
    model = transformers.RfDetrForObjectDetection(tiny_rf_detr()).eval()
    spread(model, 1.5, seed)
    model.save_pretrained(folder)
    transformers.DetrImageProcessorPil(size={"height": INPUT_SIZE, "width": INPUT_SIZE}).save_pretrained(folder)
    config = folder / "preprocessor_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "image_processor_type": "RfDetrImageProcessor"}))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_rf_detr(tmp_path_factory.mktemp("tiny-rf_detr"))


@pytest.fixture(scope="module")
def checkpoint(folder: Path) -> Any:
    return load_detr(checkpoint_weights(folder), STYLES["rf_detr"])


def _batches() -> list[Any]:
    from fashionbox.core.imaging import decode_image, letterbox
    from fashionbox.synth import render_scene

    scenes = [letterbox(decode_image(render_scene(90 + i, size=size).encode(format="PNG"), target_size=INPUT_SIZE),
                        INPUT_SIZE)[0] for i, size in enumerate([(640, 480), (300, 640), (500, 500)])]
    return [np.random.default_rng(i).integers(0, 256, (3, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
            for i in range(2)] + [np.stack(scenes)]


def test_an_rf_detr_checkpoint_is_its_own_family_with_its_processors_defaults(folder: Path, checkpoint: Any,
                                                                            tmp_path: Path) -> None:
    assert resolve_spec(f"hf:{folder}", "detector") == ("rf_detr", folder / "model.safetensors")
    family = FAMILIES["rf_detr"]()
    nms = family_nms(family, ConvertOptions(out=tmp_path), checkpoint)
    # the processor's threshold 0.5; its top-k is the queries (10 here, 300 for the hub's)
    assert (nms.score_threshold, nms.max_detections) == (0.5, QUERIES)
    assert STYLES["rf_detr"].scoring == "sigmoid_top_k" and STYLES["rf_detr"].max_detections == 300
    assert checkpoint.input_size == INPUT_SIZE and checkpoint.letterbox_stride == 0  # the square only
    assert checkpoint.preprocessing.image_mean == pytest.approx((0.485, 0.456, 0.406))
    assert checkpoint.label_map.category_names == tuple(NAMES)


def test_the_reference_post_processing_is_rf_detrs_own_from_the_installed_source() -> None:
    post_process = library_post_process("transformers.models.rf_detr.image_processing_rf_detr", "RfDetrImageProcessor")
    assert Path(post_process.func.__code__.co_filename).name == "image_processing_rf_detr.py"
    # a sigmoid top-k over queries x classes, k = the queries: as Deformable DETR's processor with that k
    generator = torch.Generator().manual_seed(0)
    outputs = SimpleNamespace(logits=torch.randn((2, QUERIES, 7), generator=generator),
                              pred_boxes=torch.rand((2, QUERIES, 4), generator=generator))
    ours = post_process(outputs, threshold=0.3, target_sizes=[(64, 48)] * 2)
    theirs = transformers.DeformableDetrImageProcessorPil().post_process_object_detection(
        outputs, threshold=0.3, target_sizes=[(64, 48)] * 2, top_k=QUERIES)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a["scores"]) > 0
        for key in ("scores", "labels", "boxes"):
            torch.testing.assert_close(a[key], b[key])
    with pytest.raises(DetrError, match=r"has no NoSuchProcessor\.post_process_object_detection"):
        library_post_process("transformers.models.rf_detr.image_processing_rf_detr", "NoSuchProcessor")


def test_the_exported_graph_equals_transformers_with_rf_detrs_post_processing(checkpoint: Any,
                                                                              tmp_path: Path) -> None:
    path = export_detr_onnx(checkpoint, tmp_path / "detector.onnx", nms=NmsSettings(score_threshold=THRESHOLD))
    assert_graph_equals_transformers(checkpoint, path, _batches())
    # square only: the windows and the interpolated position embeddings are laid out for the traced side
    with pytest.raises(ExportError, match="takes only the square letterbox"):
        export_detr_onnx(checkpoint, tmp_path / "rect.onnx", nms=NmsSettings(score_threshold=THRESHOLD),
                         letterbox_stride=16)


def test_the_position_embeddings_are_fixed_for_the_export_as_the_model_computes_them(checkpoint: Any,
                                                                                    tmp_path: Path) -> None:
    import warnings

    model = checkpoint.model
    fixed = fixed_position_embeddings(model, INPUT_SIZE)
    pixels = torch.randn((2, 3, INPUT_SIZE, INPUT_SIZE), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(pixel_values=pixels), fixed(pixel_values=pixels)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, rtol=0, atol=0)
    # traced, the original interpolates with an antialiased bicubic resize that ONNX cannot express; the copy
    # adds a constant. Its embeddings module alone shows it
    original, copy = (next(m for m in network.modules() if hasattr(m, "interpolate_pos_encoding"))
                      for network in (model, fixed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(torch.onnx.errors.UnsupportedOperatorError, match="upsample_bicubic2d_aa"):
            torch.onnx.export(original, (pixels,), str(tmp_path / "original.onnx"), dynamo=False)
        torch.onnx.export(copy, (pixels,), str(tmp_path / "fixed.onnx"), dynamo=False)
    assert (tmp_path / "fixed.onnx").stat().st_size > 0


def test_another_input_size_must_be_a_multiple_of_the_patch_windows(checkpoint: Any, tmp_path: Path) -> None:
    with pytest.raises(DetrError, match=r"patch size times its windows \(8 x 2 = 16\) divides, not 40"):
        STYLES["rf_detr"].check_size(checkpoint.model.config, 40)
    bigger = resized_checkpoint(checkpoint, 96)
    assert bigger.input_size == 96
    path = export_detr_onnx(bigger, tmp_path / "96.onnx", nms=NmsSettings(score_threshold=THRESHOLD))
    assert_graph_equals_transformers(bigger, path, [np.random.default_rng(3).integers(0, 256, (2, 96, 96, 3),
                                                                                      dtype=np.uint8)])


# -- converted: the torch runtime and the served repository --------------------------------------------------------


def _convert(folder: Path, out: Path, runtime: Any) -> Path:
    return convert(ConvertOptions(out=out, detector=f"hf:{folder}", score_threshold=THRESHOLD, compare_samples=2,
                                  runtime=runtime)).repository


def test_the_torch_runtime_answers_as_transformers(folder: Path, checkpoint: Any, tmp_path: Path) -> None:
    from fashionbox.model_repository.runners import TORCH_FOLDER
    from fashionbox.models.torch_runtime import TorchDetrDetector

    repository = _convert(folder, tmp_path / "torch", "torch")
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["family"] == "rf_detr"
    assert manifest["comparison"]["torch detector"]["detections_count_mismatch"] == 0
    runner = TorchDetrDetector(repository / "detector" / "1" / TORCH_FOLDER, device="cpu", precision="fp32",
                               score_threshold=THRESHOLD, max_detections=QUERIES)
    assert_detects_as(runner, lambda pixels: reference_detections(checkpoint, pixels, THRESHOLD), size=INPUT_SIZE)


@pytest.mark.integration
def test_served_detections_equal_transformers_on_the_same_images(triton_server: Any, folder: Path,
                                                                 tmp_path: Path) -> None:
    repository = _convert(folder, tmp_path / "onnx", "onnxruntime")
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["comparison"]["detector"]["kept_mismatch"] == 0
    assert manifest["export"]["letterbox_stride"] == 0  # the square, whatever --letterbox auto prefers on the CPU
    _assert_served_as_transformers(triton_server(repository), repository, folder, "rf_detr")
