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
    assert_graph_equals_transformers,
    assert_served_as_transformers,
    assert_torch_runtime_answers_as_transformers,
    convert_hf,
    spread,
    square_batches,
)

from fashionbox.converter.detr import (  # noqa: E402
    STYLES,
    DetrError,
    checkpoint_weights,
    export_detr_onnx,
    fixed_position_embeddings,
    library_post_process,
    load_detr,
    reference_mask_logits,
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


def save_tiny_rf_detr(folder: Path, *, seed: int = 0, segmentation: bool = False) -> Path:
    """The checkpoint and a preprocessor config as the hub's RF-DETR ones: ``RfDetrImageProcessor``, a square size
    (the backbone's ``image_size`` is 48, so the 64 px letterbox interpolates its position embeddings).
    ``segmentation``: RF-DETR-Seg (``RfDetrForInstanceSegmentation``, its config's ``architectures`` says so)."""
    torch.manual_seed(seed)
    cls = transformers.RfDetrForInstanceSegmentation if segmentation else transformers.RfDetrForObjectDetection
    model = cls(tiny_rf_detr()).eval()
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


def test_an_rf_detr_checkpoint_is_its_own_family_with_its_processors_defaults(folder: Path, checkpoint: Any,
                                                                            tmp_path: Path) -> None:
    assert resolve_spec(f"hf:{folder}", "detector") == ("rf_detr", folder / "model.safetensors")
    family = FAMILIES["rf_detr"]()
    nms = family_nms(family, ConvertOptions(out=tmp_path), checkpoint)
    # the processor's threshold 0.5; its top-k is the queries (10 here, 300 in RfDetrConfig's defaults)
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
    assert_graph_equals_transformers(checkpoint, path, square_batches(90))
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
    with pytest.raises(DetrError, match=r"--input-size 40: a rf_detr detector takes a multiple of 16$"):
        resized_checkpoint(checkpoint, 40)
    bigger = resized_checkpoint(checkpoint, 80)  # not a multiple of the CNN families' 32: RF-DETR's own step
    assert bigger.input_size == 80
    path = export_detr_onnx(bigger, tmp_path / "80.onnx", nms=NmsSettings(score_threshold=THRESHOLD))
    assert_graph_equals_transformers(bigger, path, [np.random.default_rng(3).integers(0, 256, (2, 80, 80, 3),
                                                                                      dtype=np.uint8)])


def test_a_rect_letterbox_is_refused_naming_the_square(folder: Path, tmp_path: Path) -> None:
    from fashionbox.converter import ConvertError

    with pytest.raises(ConvertError, match=r"--letterbox rect: this rf_detr detector's graph takes only the square "
                                           r"64 letterbox .*RF-DETR and RF-DETR-Seg their own square only"):
        convert(ConvertOptions(out=tmp_path / "repo", detector=f"hf:{folder}", letterbox="rect"))
    assert not (tmp_path / "repo").exists()


# -- converted: the torch runtime and the served repository --------------------------------------------------------


def test_the_torch_runtime_answers_as_transformers(folder: Path, checkpoint: Any, tmp_path: Path) -> None:
    assert_torch_runtime_answers_as_transformers(folder, checkpoint, tmp_path / "torch", max_detections=QUERIES)


@pytest.mark.integration
def test_served_detections_equal_transformers_on_the_same_images(triton_server: Any, folder: Path,
                                                                 tmp_path: Path) -> None:
    repository = convert_hf(folder, tmp_path / "onnx", "onnxruntime")
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["comparison"]["detector"]["kept_mismatch"] == 0
    assert manifest["export"]["letterbox_stride"] == 0  # the square, whatever --letterbox auto prefers on the CPU
    assert_served_as_transformers(triton_server(repository), repository, folder, STYLES["rf_detr"])


# -- RF-DETR-Seg: the same detector with a query-mask head -------------------------------------------------------


@pytest.fixture(scope="module")
def seg_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_rf_detr(tmp_path_factory.mktemp("tiny-rf_detr_seg"), seed=1, segmentation=True)


@pytest.fixture(scope="module")
def seg_checkpoint(seg_folder: Path) -> Any:
    return load_detr(checkpoint_weights(seg_folder), STYLES["rf_detr_seg"])


def _instance_masks(checkpoint: Any, pixels: Any) -> list[dict[str, Any]]:
    """RF-DETR's own ``post_process_instance_segmentation`` (from the installed source) on the model's forward,
    per-instance binary maps at the letterbox's size."""
    post_process = library_post_process("transformers.models.rf_detr.image_processing_rf_detr",
                                        "RfDetrImageProcessor", "post_process_instance_segmentation")
    inputs = checkpoint.processor(images=list(pixels), do_resize=False, do_pad=False, return_tensors="pt")
    with torch.no_grad():
        outputs = checkpoint.model(pixel_values=inputs["pixel_values"])
    return post_process(outputs, threshold=THRESHOLD, target_sizes=[pixels.shape[1:3]] * len(pixels),
                        return_binary_maps=True)


def test_an_rf_detr_seg_checkpoint_is_told_by_its_architecture_and_serves_masks(seg_folder: Path,
                                                                                 seg_checkpoint: Any) -> None:
    assert resolve_spec(f"hf:{seg_folder}", "detector") == ("rf_detr_seg", seg_folder / "model.safetensors")
    family = FAMILIES["rf_detr_seg"]()
    assert family.segments(seg_checkpoint) and not family.mask_crop and family.torch_runtime


def test_the_torch_runtime_gives_each_detection_the_graphs_mask_coefficients(seg_folder: Path, seg_checkpoint: Any,
                                                                            tmp_path: Path) -> None:
    """Converted with ``--runtime torch`` (the converter holds its mask logits to ONNX Runtime's), the runner
    answers as the exported graph, coefficients and prototypes included, for the rows asked for only (three
    images padded to a bucket of four)."""
    from fashionbox.converter.detr import detr_graph
    from fashionbox.core.postprocessing import gather_detections
    from fashionbox.model_repository.runners import TORCH_FOLDER
    from fashionbox.models.torch_runtime import TorchDetrDetector

    repository = convert_hf(seg_folder, tmp_path / "torch", "torch")
    comparison = json.loads((repository / "manifest.json").read_text())["comparison"]["torch detector"]
    assert comparison["detections_count_mismatch"] == 0 and comparison["mask_logits"] < 1e-2
    limit = QUERIES * len(NAMES)
    runner = TorchDetrDetector(repository / "detector" / "1" / TORCH_FOLDER, device="cpu", precision="fp32",
                               score_threshold=THRESHOLD, max_detections=limit, max_batch_size=4, bucketed=True)
    assert runner.segments and runner.buckets == (1, 2, 4)
    batch = square_batches(90)[2]
    graph = detr_graph(seg_checkpoint, THRESHOLD)
    with torch.no_grad():
        boxes, scores, selected, coeffs, protos = (t.numpy() for t in graph(torch.from_numpy(batch)))
    expected = gather_detections(boxes, scores, selected, max_detections=limit, mask_coeffs=coeffs, protos=protos)
    answers = runner.detect(batch)
    assert len(answers) == len(batch) and sum(len(a) for a in answers) > 0
    for ours, theirs in zip(answers, expected, strict=True):
        assert ours.classes.tolist() == theirs.classes.tolist()
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)
        assert ours.mask_coeffs is not None and theirs.mask_coeffs is not None
        np.testing.assert_allclose(ours.mask_coeffs, theirs.mask_coeffs, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours.protos, theirs.protos, rtol=1e-4, atol=1e-4)


def test_the_gpu_profile_carries_rf_detr_seg_masks_through_the_engine_graph(seg_folder: Path, tmp_path: Path) -> None:
    """``--target gpu --runtime tensorrt`` (engines built later, on the GPU): the engine graph keeps each kept
    detection's mask coefficients (rows as the boxes, zero in the padding) and the prototypes, as its config
    declares; the converter checks them against the CPU graph in ONNX Runtime. (A first version dropped them:
    the config declared outputs the engine lacked, which Triton would have refused on the GPU.)"""
    import onnxruntime as ort

    from fashionbox import contract
    from fashionbox.converter.tensorrt import EngineOptions

    repository = convert(ConvertOptions(out=tmp_path / "gpu", detector=f"hf:{seg_folder}", score_threshold=THRESHOLD,
                                        compare_samples=2, target="gpu", runtime="tensorrt",
                                        engines=EngineOptions(build="later"))).repository
    session = ort.InferenceSession(str(repository / "detector" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == [contract.DET_BOXES.name, contract.DET_SCORES.name, contract.DET_CLASSES.name,
                     contract.DET_MASK_COEFFS.name, contract.DET_PROTOS.name]
    config = (repository / "detector" / "config.pbtxt").read_text()
    assert all(f'name: "{name}"' in config for name in names)
    _, _, classes, coeffs, protos = session.run(None, {contract.PIXELS.name: square_batches(90)[2]})
    valid = classes >= 0  # the padding's rows (none here: 10 queries, all kept) are zero, checked by the converter
    assert valid.any() and np.abs(coeffs[valid]).max() > 0 and not coeffs[~valid].any()
    assert coeffs.shape[2] == protos.shape[1] == 33 and protos.shape[2:] == (INPUT_SIZE // 4, INPUT_SIZE // 4)


def test_the_graph_factors_the_models_own_mask_logits(seg_checkpoint: Any) -> None:
    from fashionbox.converter.detr import detr_graph

    graph = detr_graph(seg_checkpoint, THRESHOLD)
    pixels = torch.from_numpy(square_batches(90)[2])
    with torch.no_grad():
        *_, coeffs, protos = graph(pixels)
    expected = reference_mask_logits(seg_checkpoint, pixels.numpy())
    assert coeffs.shape == (3, QUERIES, 33) and protos.shape == (3, 33, INPUT_SIZE // 4, INPUT_SIZE // 4)
    # float noise only (the logits reach tens here: the sums run in another order)
    np.testing.assert_allclose(torch.einsum("bqk,bkhw->bqhw", coeffs, protos).numpy(), expected, rtol=1e-4, atol=1e-3)
    assert float(np.abs(expected).max()) > 1.0  # masks that mean something: logits well away from 0


def test_the_exported_seg_graph_equals_transformers_boxes_and_mask_logits(seg_checkpoint: Any, tmp_path: Path) -> None:
    from fashionbox.converter.detr import compare_detr

    path = export_detr_onnx(seg_checkpoint, tmp_path / "seg.onnx", nms=NmsSettings(score_threshold=THRESHOLD))
    assert_graph_equals_transformers(seg_checkpoint, path, square_batches(90))
    report = compare_detr(seg_checkpoint, path, square_batches(90), NmsSettings(score_threshold=THRESHOLD))
    assert report.max_abs_error["mask_logits"] < 1e-2  # the converter's tolerance: logits, thresholded at 0


def test_the_mask_comparison_leaves_out_a_slot_the_query_selection_filled_otherwise(
        seg_checkpoint: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two-stage query selection is a top-k over encoder tokens: at a tie either runtime may put another
    proposal into a slot (2 of 300 slots of a base-sized random RF-DETR-Seg did, masks 6.4 apart). Such a slot's
    box differs too, and its mask is left out; a mask that differs under the same box is still caught."""
    from fashionbox.converter import detr
    from fashionbox.converter.detr import compare_detr

    path = export_detr_onnx(seg_checkpoint, tmp_path / "seg.onnx", nms=NmsSettings(score_threshold=THRESHOLD))
    original = detr.reference_segments

    def altered(*, move_box: bool) -> Any:
        def reference(checkpoint: Any, pixels: Any) -> tuple[Any, Any]:
            masks, boxes = (a.copy() for a in original(checkpoint, pixels))
            masks[:, 0] += 50.0
            if move_box:
                boxes[:, 0] += 20.0
            return masks, boxes
        return reference

    nms = NmsSettings(score_threshold=THRESHOLD)
    monkeypatch.setattr(detr, "reference_segments", altered(move_box=True))
    assert compare_detr(seg_checkpoint, path, square_batches(90), nms).max_abs_error["mask_logits"] < 1e-2
    monkeypatch.setattr(detr, "reference_segments", altered(move_box=False))
    assert compare_detr(seg_checkpoint, path, square_batches(90), nms).max_abs_error["mask_logits"] > 40.0


def test_masks_over_the_whole_letterbox_equal_rf_detrs_instance_post_processing(seg_checkpoint: Any) -> None:
    """What ``postprocess`` assembles at the letterbox without the box cut (``detector_mask_crop`` false), for the
    graph's kept detections, against RF-DETR's per-instance binary maps: the same instances, the same pixels but
    for logits within float noise of 0."""
    from fashionbox.converter.detr import detr_graph
    from fashionbox.core.imaging import LetterboxInfo
    from fashionbox.core.postprocessing import gather_detections
    from fashionbox.core.proto_masks import ProtoMasks

    graph = detr_graph(seg_checkpoint, THRESHOLD)
    compared = 0
    for batch in square_batches(90):
        with torch.no_grad():
            boxes, scores, selected, coeffs, protos = (t.numpy() for t in graph(torch.from_numpy(batch)))
        kept = gather_detections(boxes, scores, selected, max_detections=QUERIES * len(NAMES), mask_coeffs=coeffs,
                                 protos=protos)
        for image, (ours, theirs) in enumerate(zip(kept, _instance_masks(seg_checkpoint, batch), strict=True)):
            info = LetterboxInfo(width=INPUT_SIZE, height=INPUT_SIZE, scale=1.0, pad_x=0, pad_y=0)
            geometry = ProtoMasks(info, protos.shape[2:4], input_size=INPUT_SIZE)
            whole = np.tile(np.array([0, 0, INPUT_SIZE, INPUT_SIZE], dtype=np.float32), (len(ours), 1))
            masks = [m for m in geometry.letterbox(ours.mask_coeffs, protos[image], whole) if not m.empty]
            reference = theirs["segmentation"].numpy()
            assert len(masks) == len(reference) == len(theirs["segments_info"])
            for mask, expected in zip(masks, reference, strict=True):
                bits = np.zeros((INPUT_SIZE, INPUT_SIZE), dtype=bool)
                bits[mask.top:mask.top + mask.bits.shape[0], mask.left:mask.left + mask.bits.shape[1]] = mask.bits
                assert (bits != expected).mean() < 0.005
                compared += 1
    assert compared > 0


@pytest.mark.integration
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "torch"])
def test_served_rf_detr_seg_masks_equal_its_instance_post_processing(triton_server: Any, seg_folder: Path,
                                                                    seg_checkpoint: Any, tmp_path: Path,
                                                                    runtime: str) -> None:
    """ONNX Runtime, OpenVINO (what ``--runtime auto`` picked for this tiny model on an AMD EPYC) and the torch
    runtime (the GPU's without TensorRT): their mask logits are held to ONNX Runtime's by the converter, as
    YOLO-seg's."""
    from PIL import Image
    from test_detr_families import scenes

    from fashionbox.client import FashionClient
    from fashionbox.core.imaging import decode_image, letterbox

    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the openvino runtime needs fashionbox-core[openvino]")
    repository = convert_hf(seg_folder, tmp_path / "seg", runtime)
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["family"] == "rf_detr_seg" and manifest["comparison"]["detector"]["mask_logits"] < 1e-2
    if runtime != "onnxruntime":
        twin = {"openvino": "openvino fp32 detector", "torch": "torch detector"}[runtime]
        assert manifest["comparison"][twin]["mask_logits"] < 1e-2
    server = triton_server(repository)
    labels = seg_checkpoint.label_map
    ious = []
    with FashionClient(str(server.endpoints.grpc)) as client:
        for data in scenes():
            served = client.detect(data).detections
            decoded = decode_image(data, target_size=INPUT_SIZE)
            pixels, info = letterbox(decoded, INPUT_SIZE)
            (theirs,) = _instance_masks(seg_checkpoint, pixels[None])
            assert [d.category for d in served] == [labels.category_names[s["label_id"]]
                                                    for s in theirs["segments_info"]]
            np.testing.assert_allclose([d.score for d in served], [s["score"] for s in theirs["segments_info"]],
                                       atol=1e-3)
            for detection, expected in zip(served, theirs["segmentation"].numpy(), strict=True):
                mask = detection.mask
                assert mask is not None and mask.shape == (info.height, info.width)
                # the reference's letterbox map, its content resized to the photo (bilinear, > 0.5)
                top, left = round(info.pad_y), round(info.pad_x)
                content = expected[top:INPUT_SIZE - top, left:INPUT_SIZE - left].astype(np.float32)
                resized = np.asarray(Image.fromarray(content).resize((info.width, info.height), Image.BILINEAR)) > 0.5
                ious.append((mask & resized).sum() / max(1, (mask | resized).sum()))
    assert ious and min(ious) > 0.8 and float(np.mean(ious)) > 0.9
