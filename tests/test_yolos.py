"""The YOLOS family: a tiny random YOLOS checkpoint converted, served by a real Triton, equal to transformers.

No network: the checkpoint is a random-initialised ``YolosConfig`` (Fashionpedia names in
``id2label``) saved with ``save_pretrained`` into a temporary folder. Its weights are drawn wider
than transformers' initialisation so that scores spread and some detections pass the threshold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashionbox.commands.evaluation import EvalSample, GroundTruth, Prediction, attribute_f1, imaterialist_score
from fashionbox.contract.labels import default_label_map, fashionpedia_taxonomy
from fashionbox.converter import ConvertError, ConvertOptions, convert, resolve_spec

transformers = pytest.importorskip("transformers", reason="YOLOS needs fashionbox-converter[hf] (transformers)")
torch = pytest.importorskip("torch")

from fashionbox.converter.labels import ATTRIBUTE_PROXIES, family_label_map  # noqa: E402
from fashionbox.converter.yolos import (  # noqa: E402
    checkpoint_weights,
    compare_yolos,
    export_yolos_onnx,
    load_yolos,
    reference_detections,
)
from fashionbox.models.nms import NmsSettings  # noqa: E402

FASHIONPEDIA = [c["name"] for c in fashionpedia_taxonomy()["categories"]]
THRESHOLD = 0.2
INPUT_SIZE = 64


def save_tiny_yolos(folder: Path, *, seed: int = 0) -> Path:
    """A 2-layer YOLOS with 46 Fashionpedia classes, image_size 64x96 (not square, so embeddings interpolate)."""
    torch.manual_seed(seed)
    config = transformers.YolosConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=[64, 96],
        num_detection_tokens=10, id2label=dict(enumerate(FASHIONPEDIA)),
        label2id={name: i for i, name in enumerate(FASHIONPEDIA)})
    model = transformers.YolosForObjectDetection(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layernorm" not in name:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    transformers.YolosImageProcessorPil(size={"shortest_edge": INPUT_SIZE, "longest_edge": 112}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_yolos(tmp_path_factory.mktemp("tiny-yolos"))


@pytest.fixture(scope="module")
def repository(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("yolos-repo") / "repository"
    result = convert(ConvertOptions(out=out, detector=f"hf:{checkpoint_dir}", score_threshold=THRESHOLD,
                                    compare_samples=2))
    return result.repository


# -- the category mapping ---------------------------------------------------------------------------------


def test_every_fashionpedia_category_has_an_explicit_attribute_proxy() -> None:
    assert sorted(ATTRIBUTE_PROXIES) == sorted(FASHIONPEDIA)
    default_names = set(default_label_map().category_names)
    assert {v for v in ATTRIBUTE_PROXIES.values() if v is not None} <= default_names
    assert all(ATTRIBUTE_PROXIES[name] == name for name in default_names)


def test_yolos_label_map_keeps_id2label_order_and_gives_parts_no_attributes() -> None:
    labels = family_label_map(dict(enumerate(FASHIONPEDIA)), name="yolos")
    assert labels.category_names == tuple(FASHIONPEDIA)
    assert labels.attribute_groups == default_label_map().attribute_groups
    assert labels.groups_for("sleeve") == labels.groups_for("neckline") == ()
    assert labels.groups_for("cardigan") == default_label_map().groups_for("sweater")
    assert labels.groups_for("dress") == default_label_map().groups_for("dress")
    assert [c.fashionpedia_id for c in labels.categories] == list(range(46))


def test_yolos_label_map_refuses_gaps_in_id2label() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1"):
        family_label_map({0: "dress", 2: "sleeve"}, name="yolos")


# -- specs and loading -----------------------------------------------------------------------------------


def test_hf_spec_resolves_a_yolos_folder_to_its_safetensors(checkpoint_dir: Path) -> None:
    assert resolve_spec(f"hf:{checkpoint_dir}", "detector") == ("yolos", checkpoint_dir / "model.safetensors")


def test_hf_spec_refuses_other_model_types_missing_weights_and_attribute_heads(tmp_path: Path,
                                                                               checkpoint_dir: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "grounding-dino"}))
    with pytest.raises(ConvertError, match="none of"):
        resolve_spec(f"hf:{tmp_path}", "detector")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConvertError, match="'grounding-dino' is not supported"):
        resolve_spec(f"hf:{tmp_path}", "detector")
    with pytest.raises(ConvertError, match="attribute heads"):
        resolve_spec(f"hf:{checkpoint_dir}", "attributes")


def test_a_bin_checkpoint_loads_through_weights_only_torch_load(checkpoint_dir: Path, tmp_path: Path) -> None:
    reference = load_yolos(checkpoint_weights(checkpoint_dir))
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((checkpoint_dir / name).read_bytes())
    torch.save(reference.model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_yolos(checkpoint_weights(tmp_path))
    for key, value in reference.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_a_bin_holding_arbitrary_objects_is_refused(checkpoint_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((checkpoint_dir / name).read_bytes())
    torch.save({"not": argparse.Namespace(x=1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        load_yolos(checkpoint_weights(tmp_path))


def test_a_yolos_whose_id2label_does_not_match_its_class_head_is_refused(checkpoint_dir: Path,
                                                                          tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((checkpoint_dir / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    config["id2label"] = {str(i): name for i, name in enumerate(FASHIONPEDIA[:45])}
    config["label2id"] = {name: i for i, name in enumerate(FASHIONPEDIA[:45])}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match=r"class_labels_classifier\.layers\.2\.weight has 47 rows but id2label names "
                                         r"45 classes plus the no-object class \(46\)$"):
        load_yolos(checkpoint_weights(tmp_path))


def test_a_yolos_without_its_preprocessor_config_is_refused(checkpoint_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((checkpoint_dir / name).read_bytes())
    with pytest.raises(ValueError, match=r"has no preprocessor_config\.json"):
        load_yolos(checkpoint_weights(tmp_path))


def _copy_with_processor_size(checkpoint_dir: Path, folder: Path, size: dict[str, int]) -> Path:
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((checkpoint_dir / name).read_bytes())
    processor = json.loads((checkpoint_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
    (folder / "preprocessor_config.json").write_text(json.dumps({**processor, "size": size}), encoding="utf-8")
    return checkpoint_weights(folder)


def test_a_processor_without_any_size_is_refused(checkpoint_dir: Path, tmp_path: Path) -> None:
    weights = _copy_with_processor_size(checkpoint_dir, tmp_path, {"shortest_edge": 0, "longest_edge": 0})
    with pytest.raises(ValueError, match=r"cannot tell the input size from the processor's size \{\}$"):
        load_yolos(weights)


def test_a_processor_size_below_the_patch_size_is_refused(checkpoint_dir: Path, tmp_path: Path) -> None:
    weights = _copy_with_processor_size(checkpoint_dir, tmp_path, {"shortest_edge": 8, "longest_edge": 112})
    with pytest.raises(ValueError, match=r"^shortest_edge 8 is smaller than the patch size 16$"):
        load_yolos(weights)


# -- export and in-process parity -----------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [0, 16])  # the square letterbox (baked embeddings), the rect one (interpolated)
def test_exported_graph_equals_transformers_post_processing(checkpoint_dir: Path, tmp_path: Path,
                                                            stride: int) -> None:
    from fashionbox import contract
    from fashionbox.converter.repository import _onnx_io

    checkpoint = load_yolos(checkpoint_weights(checkpoint_dir))
    assert checkpoint.input_size == INPUT_SIZE and checkpoint.letterbox_stride == 16  # the patch size
    nms = NmsSettings(score_threshold=THRESHOLD)
    path = export_yolos_onnx(checkpoint, tmp_path / "detector.onnx", nms=nms, letterbox_stride=stride)
    sides = list(_onnx_io(path)[0][contract.ONNX_DETECTOR_INPUT][1][1:3])
    assert sides == ([None, None] if stride else [INPUT_SIZE, INPUT_SIZE])
    # transformers interpolates the checkpoint's 64x96 embeddings to each input's own patch grid
    shapes = [(INPUT_SIZE, INPUT_SIZE)] * 2 + ([(48, INPUT_SIZE), (INPUT_SIZE, 32), (16, INPUT_SIZE)] if stride else [])
    batches = [np.random.default_rng(i).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
               for i, (h, w) in enumerate(shapes)]
    report = compare_yolos(checkpoint, path, batches, nms)
    assert report.max_abs_error["kept_mismatch"] == 0
    assert report.max_abs_error["scores"] < 1e-5
    assert report.max_abs_error["boxes"] < 1e-3  # letterbox pixels
    for batch in batches:  # each shape keeps something, or its comparison proves nothing
        assert sum(len(r) for r in reference_detections(checkpoint, batch, THRESHOLD)) > 0, batch.shape


@pytest.mark.parametrize(("out_size", "in_size"), [(4, 6), (6, 4), (5, 5), (1, 4), (24, 54), (32, 54), (7, 3)])
def test_the_bicubic_matrix_is_torchs_bicubic_interpolation(out_size: int, in_size: int) -> None:
    from fashionbox.converter.yolos import bicubic_matrix

    table = torch.randn(2, 3, in_size, in_size + 2)
    theirs = torch.nn.functional.interpolate(table, size=(out_size, in_size + 2), mode="bicubic", align_corners=False)
    ours = torch.matmul(bicubic_matrix(out_size, in_size), table)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_the_rect_model_answers_as_transformers_at_any_patch_grid(checkpoint_dir: Path) -> None:
    """The swapped-in position embeddings (initial and mid-layer) are transformers' at every input size."""
    from fashionbox.converter.yolos import RectMidPositionEmbeddings, RectPositionEmbeddings, rect_model

    checkpoint = load_yolos(checkpoint_weights(checkpoint_dir))
    model = checkpoint.model
    assert model.config.use_mid_position_embeddings  # both tables are exercised
    rect = rect_model(model)
    assert isinstance(rect.vit.embeddings.interpolation, RectPositionEmbeddings)
    assert isinstance(rect.vit.encoder.interpolation, RectMidPositionEmbeddings)
    assert not isinstance(model.vit.embeddings.interpolation, RectPositionEmbeddings)  # a copy: the original kept
    for height, width in [(64, 64), (48, 64), (64, 16), (96, 64)]:
        pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height + width))
        with torch.no_grad():
            theirs, ours = model(pixel_values=pixels), rect(pixel_values=pixels)
        torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.pred_boxes, theirs.pred_boxes, atol=1e-5, rtol=1e-5)


def test_the_torch_runtime_serves_a_bin_checkpoint_as_safetensors_with_baked_embeddings(
        checkpoint_dir: Path, tmp_path: Path) -> None:
    """The torch runtime's YOLOS is the exported graph's model (position embeddings interpolated once to the
    served square, from a 64x96 checkpoint), saved again as safetensors even from a pytorch_model.bin."""
    from test_detr_families import assert_detects_as

    from fashionbox.model_repository.runners import TORCH_FOLDER
    from fashionbox.models.torch_runtime import TorchDetrDetector

    reference = load_yolos(checkpoint_weights(checkpoint_dir))
    source = tmp_path / "bin"
    source.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (source / name).write_bytes((checkpoint_dir / name).read_bytes())
    torch.save(reference.model.state_dict(), source / "pytorch_model.bin")
    repository = convert(ConvertOptions(out=tmp_path / "repository", detector=f"hf:{source}",
                                        score_threshold=THRESHOLD, compare_samples=2, runtime="torch")).repository
    folder = repository / "detector" / "1" / TORCH_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "detector.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["image_size"] == [INPUT_SIZE, INPUT_SIZE]
    runner = TorchDetrDetector(folder, device="cpu", precision="fp32", score_threshold=THRESHOLD, max_detections=100)
    assert_detects_as(runner, lambda pixels: reference_detections(reference, pixels, THRESHOLD), size=INPUT_SIZE)


def test_an_input_size_of_a_patch_multiple_serves_yolos_at_it(checkpoint_dir: Path, tmp_path: Path) -> None:
    """Both graphs at another side: the square one baked there, the rect one interpolating to it."""
    from fashionbox.converter.detr import resized_checkpoint

    checkpoint = resized_checkpoint(load_yolos(checkpoint_weights(checkpoint_dir)), 80)
    nms = NmsSettings(score_threshold=THRESHOLD)
    for stride, shapes in [(0, [(80, 80)]), (16, [(80, 80), (48, 80), (80, 16)])]:
        path = export_yolos_onnx(checkpoint, tmp_path / f"detector-{stride}.onnx", nms=nms, letterbox_stride=stride)
        batches = [np.random.default_rng(i).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
                   for i, (h, w) in enumerate(shapes)]
        report = compare_yolos(checkpoint, path, batches, nms)
        assert report.max_abs_error["kept_mismatch"] == 0 and report.max_abs_error["scores"] < 1e-5
        assert all(sum(len(r) for r in reference_detections(checkpoint, b, THRESHOLD)) for b in batches)
    with pytest.raises(ConvertError, match="--input-size 72: a yolos detector takes a multiple of 16"):
        convert(ConvertOptions(out=tmp_path / "odd", detector=f"hf:{checkpoint_dir}", input_size=72))


def test_convert_writes_a_yolos_repository_with_the_checkpoints_labels(repository: Path) -> None:
    manifest = json.loads((repository / "manifest.json").read_text())
    labels = json.loads((repository / "labels.json").read_text())
    assert manifest["family"] == "yolos"
    assert manifest["sources"]["detector"]["file"] == "model.safetensors"
    assert manifest["export"]["input_size"] == INPUT_SIZE
    assert manifest["export"]["exporter"] == "torch.onnx (TorchScript), dynamic batch, height and width"  # rect
    assert [c["name"] for c in labels["categories"]] == FASHIONPEDIA
    # the shipped attribute heads' verifier corrects the default detector only: no second stage here
    assert "verifier" not in manifest and "a yolos detector is served without" in manifest["verifier_not_served"]


def test_cli_convert_takes_an_hf_folder(checkpoint_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from fashionbox.commands.cli import main

    assert main(["convert", "--detector", f"hf:{checkpoint_dir}", "--out", str(tmp_path / "repo"),
                 "--score-threshold", str(THRESHOLD)]) == 0
    manifest = json.loads((tmp_path / "repo" / "manifest.json").read_text())
    assert manifest["family"] == "yolos"
    assert manifest["versions"]["transformers"] == transformers.__version__
    out = capsys.readouterr().out
    assert "model repository" in out
    assert "letterbox: rect (long side 64, short side a multiple of 16)" in out  # the CPU's default for YOLOS


# -- evaluation metrics ------------------------------------------------------------------------------------


def _sample(*truth: GroundTruth) -> EvalSample:
    return EvalSample("x", b"", 100, 100, truth)


def test_imaterialist_score_is_tp_over_tp_fp_fn_averaged_over_iou_thresholds() -> None:
    truth = GroundTruth((0, 0, 10, 10), "dress", {})
    exact = Prediction((0, 0, 10, 10), "dress", 0.9)
    shifted = Prediction((0, 0, 10, 8), "dress", 0.9)  # IoU 0.8: a TP at 0.5..0.8, else FP + FN
    wrong = Prediction((50, 50, 60, 60), "dress", 0.5)
    assert imaterialist_score([_sample(truth)], [[exact]]) == 1.0
    assert imaterialist_score([_sample(truth)], [[exact, wrong]]) == pytest.approx(0.5)
    assert imaterialist_score([_sample(truth)], [[shifted]]) == pytest.approx((7 * 1.0 + 3 * 0.0) / 10)
    assert imaterialist_score([_sample(truth), _sample()], [[exact], []]) == 1.0  # empty images skipped


def test_attribute_f1_is_macro_over_labels_on_matched_garments() -> None:
    labels = default_label_map()
    samples = [_sample(GroundTruth((0, 0, 10, 10), "dress", {"sleeve length": "sleeveless"})),
               _sample(GroundTruth((0, 0, 10, 10), "dress", {"sleeve length": "wrist-length"}))]
    predictions = [[Prediction((0, 0, 10, 10), "dress", 0.9, {"sleeve length": "sleeveless"})],
                   [Prediction((0, 0, 10, 10), "dress", 0.9, {"sleeve length": "sleeveless"})]]
    f1 = attribute_f1(samples, predictions, labels)
    # sleeveless: tp 1, fp 1 -> 2/3; wrist-length: fn 1 -> 0
    assert f1["sleeve length"] == {"f1": pytest.approx(1 / 3), "matched": 2}
    assert np.isnan(f1["neckline type"]["f1"])


# -- served through a real Triton -------------------------------------------------------------------------------


def _scenes() -> list[bytes]:
    from fashionbox.synth import render_scene

    sizes = [(640, 480), (360, 640), (500, 500)]
    return [render_scene(50 + i, size=size).encode(format="JPEG", quality=90) for i, size in enumerate(sizes)]


@pytest.fixture(scope="module")
def fused_repository(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("yolos-fused") / "repository"
    return convert(ConvertOptions(out=out, detector=f"hf:{checkpoint_dir}", score_threshold=THRESHOLD,
                                  compare_samples=2, repository_settings={"layout": "fused"})).repository


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["steps", "fused"])  # fused: decode and detect in one step, a call per shape
def test_served_yolos_detections_equal_transformers_on_the_same_images(
        triton_server: Any, request: pytest.FixtureRequest, checkpoint_dir: Path, layout: str) -> None:
    from fashionbox.client import FashionClient
    from fashionbox.core.imaging import decode_image, letterbox, rect_canvas

    repository = request.getfixturevalue("repository" if layout == "steps" else "fused_repository")
    checkpoint = load_yolos(checkpoint_weights(checkpoint_dir))
    labels = checkpoint.label_map
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["layout"] == layout
    # on the CPU the rect letterbox by default: the long side at 64, the short one a multiple of the patch size
    assert manifest["export"]["letterbox_stride"] == 16
    server = triton_server(repository)
    total = parts = garments = 0
    canvases = set()
    with FashionClient(str(server.endpoints.grpc)) as client:
        for data in _scenes():
            served = client.detect(data).detections
            decoded = decode_image(data, target_size=INPUT_SIZE)
            pixels, info = letterbox(decoded, INPUT_SIZE,
                                     canvas=rect_canvas(decoded.width, decoded.height, INPUT_SIZE, 16))
            canvases.add(pixels.shape[:2])
            (expected,) = reference_detections(checkpoint, pixels[None], THRESHOLD)
            assert [d.category for d in served] == [labels.category_names[c] for c in expected.classes]
            np.testing.assert_allclose([d.score for d in served], expected.scores, atol=1e-3)
            boxes = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in served]).reshape(-1, 4)
            np.testing.assert_allclose(boxes, info.to_original(expected.boxes), atol=0.5)
            for d in served:
                assert set(d.attributes) == set(labels.groups_for(d.category))
                parts += not labels.groups_for(d.category)
                garments += bool(d.attributes)
            total += len(served)
    # garments carry the attribute heads' groups; parts such as sleeve are reported without attributes
    assert total > 0 and parts > 0 and garments > 0
    assert canvases == {(48, INPUT_SIZE), (INPUT_SIZE, 48), (INPUT_SIZE, INPUT_SIZE)}  # 4:3, 9:16, square
    with FashionClient(str(server.endpoints.grpc)) as client:  # the shapes mixed in flight: each as alone
        alone = [client.detect(data).detections for data in _scenes()]
        together = client.detect_many(_scenes() * 3, max_in_flight=9)
    for result, expected in zip(together, alone * 3, strict=True):
        assert not isinstance(result, Exception), result
        assert [d.category for d in result.detections] == [d.category for d in expected]


@pytest.mark.integration
def test_eval_measures_the_served_yolos_model_on_a_coco_file(
        triton_server: Any, repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fashionbox.commands.cli import main
    from fashionbox.synth import write_coco_dataset

    annotations = write_coco_dataset(tmp_path / "coco", count=3, seed=5)
    url = str(triton_server(repository).endpoints.grpc)
    assert main(["eval", "--url", url, "--coco-annotations", str(annotations),
                 "--images", str(annotations.parent / "images"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 3
    for key in ("bbox_map", "bbox_map50", "imaterialist_score"):
        assert 0.0 <= report[key] <= 1.0
    assert set(report["attribute_f1"]) == {"sleeve length", "neckline type", "textile pattern"}
