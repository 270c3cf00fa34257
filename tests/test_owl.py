"""Open-vocabulary families (OWL-ViT, OWLv2): tiny random checkpoints with text queries, converted, served,
as transformers.

No network: each checkpoint is a random ``Owlv2ForObjectDetection`` / ``OwlViTForObjectDetection`` (64 px,
16 px patches) saved with its processor and a CLIP BPE tokenizer built here
(``image_model_fixtures.build_tiny_owl``); its boxes are widened so that neighbouring patches overlap and
the served NMS has work. Parity: the graph (ONNX Runtime, the torch runtime, Triton over gRPC) against
transformers' model run with the queries' token ids, its processor's ``post_process_object_detection``
and the same NMS, on the same letterboxed pixels; a class given by an example photo against transformers'
``image_guided_detection``, a prompt ensemble against the mean of the texts' ``get_text_features``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashionbox.converter import FAMILIES, ConvertError, ConvertOptions, convert, family_nms, resolve_spec

transformers = pytest.importorskip("transformers", reason="the OWL families need fashionbox-converter[hf]")
torch = pytest.importorskip("torch")

from image_model_fixtures import build_tiny_owl, fill_hub_cache  # noqa: E402

from fashionbox.contract.labels import default_label_map  # noqa: E402
from fashionbox.converter.detr import DetrError, checkpoint_weights  # noqa: E402
from fashionbox.converter.export import ExportError  # noqa: E402
from fashionbox.converter.owl import (  # noqa: E402
    DEFAULT_QUERIES,
    Example,
    OwlCheckpoint,
    Queries,
    compare_owl,
    export_owl_onnx,
    load_owl,
    query_text,
    read_queries,
    reference_detections,
    with_queries,
)
from fashionbox.models.nms import NmsSettings  # noqa: E402

SIZE = 64
MODEL_TYPES = ("owlv2", "owlvit")
NMS = NmsSettings(score_threshold=0.1, iou_threshold=0.3, max_per_class=100, max_detections=100)
NO_NMS = NmsSettings(score_threshold=0.1, iou_threshold=1.0, max_per_class=100, max_detections=100)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("owl")
    return {name: build_tiny_owl(root / name, name, size=SIZE, phrases=DEFAULT_QUERIES.texts) for name in MODEL_TYPES}


@pytest.fixture(scope="module")
def loaded(folders: dict[str, Path]) -> dict[str, OwlCheckpoint]:
    return {name: load_owl(checkpoint_weights(folder), name) for name, folder in folders.items()}


def _batches() -> list[Any]:
    from fashionbox.core.imaging import decode_image, letterbox
    from fashionbox.synth import render_scene

    rng = np.random.default_rng(3)
    scenes = [letterbox(decode_image(render_scene(80 + i, size=size).encode(format="PNG"), target_size=SIZE), SIZE)[0]
              for i, size in enumerate([(640, 480), (300, 640), (500, 500)])]
    return [rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8), np.stack(scenes),
            rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)]


def _queries_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "queries.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _example_photo(path: Path, seed: int) -> Path:
    """A garment cropped from a generated scene, as a user would crop an example of an item."""
    from fashionbox.synth import render_scene

    scene = render_scene(seed, size=(480, 360))
    x0, y0, x1, y1 = scene.garments[0].box
    path.parent.mkdir(parents=True, exist_ok=True)
    scene.image.crop((int(x0), int(y0), int(x1) + 1, int(y1) + 1)).save(path)
    return path


# -- the classes -------------------------------------------------------------------------------------------------


def test_the_default_queries_are_the_fashionpedia_garments_and_accessories(loaded: dict[str, OwlCheckpoint]) -> None:
    from fashionbox.contract.labels import fashionpedia_taxonomy

    categories = fashionpedia_taxonomy()["categories"]
    assert DEFAULT_QUERIES.names == tuple(c["name"] for c in categories[:27])
    assert "sleeve" not in DEFAULT_QUERIES.names and "zipper" not in DEFAULT_QUERIES.names
    assert DEFAULT_QUERIES.texts[:2] == ("a photo of a shirt or blouse", "a photo of a top or t-shirt or sweatshirt")
    assert query_text("headband, head covering, hair accessory") == (
        "a photo of a headband or head covering or hair accessory")
    labels = loaded["owlv2"].label_map
    assert labels.category_names == DEFAULT_QUERIES.names
    # Fashionpedia names: the attribute heads' garments apply as to a Fashionpedia-trained checkpoint's
    assert set(labels.groups_for("dress")) == set(default_label_map().groups_for("dress"))
    assert labels.groups_for("cardigan") == labels.groups_for("sweater") != ()
    assert labels.groups_for("umbrella") == ()
    assert loaded["owlv2"].embeddings.shape == (27, 32)


def test_a_queries_file_names_the_classes_and_their_query_texts(tmp_path: Path) -> None:
    queries = read_queries(_queries_file(tmp_path, "# my catalog\ndress\n\n  handbag: a yellow handbag \nshoe, boot\n"))
    assert queries == Queries(("dress", "handbag", "shoe, boot"),
                              ("a photo of a dress", "a yellow handbag", "a photo of a shoe or boot"))


def test_a_queries_file_reads_prompt_ensembles_and_example_photos(tmp_path: Path) -> None:
    _example_photo(tmp_path / "examples" / "tote.png", 1)
    queries = read_queries(_queries_file(tmp_path, "dress: a long dress | an evening gown\n"
                                                   "our tote: @examples/tote.png | a yellow handbag\n"
                                                   "tote alone: @ examples/tote.png\n"))
    tote = Example(path=tmp_path / "examples" / "tote.png", written="examples/tote.png")
    assert queries.prompts == (("a long dress", "an evening gown"), (tote, "a yellow handbag"), (tote,))
    assert queries.texts == ("a long dress", "an evening gown", "a yellow handbag") and queries.examples == (tote,)
    assert not queries.plain and read_queries(_queries_file(tmp_path, "dress\nbag: a bag\n")).plain
    described = queries.manifest()
    assert described["classes"]["our tote"] == ["@examples/tote.png", "a yellow handbag"]
    import hashlib
    assert described["examples"] == {"examples/tote.png": hashlib.sha256(tote.path.read_bytes()).hexdigest()}


@pytest.mark.parametrize(("text", "message"), [
    ("# nothing\n\n", "names no class"),
    ("dress\ndress: a long dress\n", r"queries\.txt: the queries name a class twice: \['dress'\]"),
    ("dress:\n", r":1: expected 'name' or 'name: prompt \| prompt \.\.\.' \(a text or '@photo.jpg' each\), "
                 r"got 'dress:'"),
    ("dress\n: a dress\n", r":2: expected 'name' or 'name: prompt"),
    ("dress: a dress || a gown\n", r":1: expected 'name' or 'name: prompt"),
    ("dress: a gown |\n", r":1: expected 'name' or 'name: prompt"),
    ("bag: @missing.jpg\n", r":1: the example photo 'missing.jpg' is not a file \(a path relative to the queries "
                            r"file's folder, after '@'\)"),
    ("bag: @\n", r":1: the example photo '' is not a file"),
])
def test_a_malformed_queries_file_is_refused_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DetrError, match=message):
        read_queries(_queries_file(tmp_path, text))


def test_a_query_longer_than_the_text_tower_is_refused(loaded: dict[str, OwlCheckpoint]) -> None:
    long = Queries(("dress", "coat"), ("a photo of a dress", " ".join(["a red shirt"] * 5)))
    with pytest.raises(DetrError, match=r"the query 'a red shirt a red.*' is 17 tokens: this checkpoint's text tower "
                                        r"takes at most 16 \(shorten it in the queries file\)"):
        with_queries(loaded["owlv2"], long)


def test_other_queries_change_the_classes_and_the_scores(loaded: dict[str, OwlCheckpoint], tmp_path: Path) -> None:
    queries = Queries(("red", "blue"), ("a red shirt", "a blue dress with long sleeves"))
    checkpoint = with_queries(loaded["owlv2"], queries)
    assert checkpoint.label_map.category_names == ("red", "blue")
    assert checkpoint.embeddings.shape == (2, 32)
    path = export_owl_onnx(checkpoint, tmp_path / "two.onnx", nms=NMS)
    from fashionbox import contract
    from fashionbox.converter.export import _session

    feed = {contract.ONNX_DETECTOR_INPUT: _batches()[0]}
    boxes, scores, _ = _session(path).run(None, feed)  # type: ignore[attr-defined]
    assert boxes.shape == (1, (SIZE // 16) ** 2, 4) and scores.shape == (1, 2, (SIZE // 16) ** 2)
    # each patch scores one class, its best query's
    assert ((scores > 0).sum(axis=1) == 1).all()
    assert compare_owl(checkpoint, path, _batches(), NMS).max_abs_error["labels_mismatch"] == 0


def _text_features(checkpoint: OwlCheckpoint, texts: list[str]) -> Any:
    """transformers' own text embeddings (its ``get_text_features``), as unit vectors."""
    tokens = checkpoint.tokenizer(texts, padding="max_length", max_length=16, return_tensors="pt")
    towers = getattr(checkpoint.model, checkpoint.style.model_type)  # model.owlv2 / model.owlvit
    with torch.no_grad():
        features = towers.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    features = getattr(features, "pooler_output", features)
    return torch.nn.functional.normalize(features, dim=-1)


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_a_prompt_ensemble_is_the_mean_of_its_texts_own_embeddings(loaded: dict[str, OwlCheckpoint], tmp_path: Path,
                                                                   name: str) -> None:
    texts = ["a photo of a dress", "a blue dress with long sleeves", "a photo of a skirt"]
    checkpoint = with_queries(loaded[name], Queries(("dress", "shirt"), (tuple(texts), "a red shirt")))
    expected = _text_features(checkpoint, texts).mean(0)
    assert torch.allclose(checkpoint.embeddings[0], expected, atol=1e-5)
    assert torch.allclose(checkpoint.embeddings[1], _text_features(checkpoint, ["a red shirt"])[0], atol=1e-5)
    # an ensemble of one text is that text's query, as transformers' forward computes it
    single = with_queries(loaded[name], Queries(("dress",), (("a photo of a dress",),)))
    assert torch.equal(single.embeddings[0], with_queries(loaded[name], Queries(("dress",), ("a photo of a dress",)))
                       .embeddings[0])
    # the exported graph against the model's own heads with these embeddings: every patch, and the NMS
    report = compare_owl(checkpoint, export_owl_onnx(checkpoint, tmp_path / "ensemble.onnx", nms=NMS), _batches(), NMS)
    assert report.max_abs_error["labels_mismatch"] == 0 and report.max_abs_error["nms_count_mismatch"] == 0
    assert report.max_abs_error["boxes"] < 1e-3 and report.max_abs_error["scores"] < 1e-5
    # and the ensemble does change the class: other scores than its first text alone
    first = with_queries(loaded[name], Queries(("dress", "shirt"), (texts[0], "a red shirt")))
    assert not torch.allclose(first.embeddings[0], checkpoint.embeddings[0], atol=1e-3)


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_a_class_given_by_an_example_photo_is_transformers_image_guided_detection(
        loaded: dict[str, OwlCheckpoint], tmp_path: Path, name: str) -> None:
    from fashionbox import contract
    from fashionbox.converter.export import _session

    checkpoint = loaded[name]
    tote = Example(path=_example_photo(tmp_path / "tote.png", 2), written="tote.png")
    guided = with_queries(checkpoint, Queries(("our tote",), ((tote,),)))
    assert guided.label_map.category_names == ("our tote",) and guided.embeddings.shape == (1, 32)
    path = export_owl_onnx(guided, tmp_path / "guided.onnx", nms=NO_NMS)
    query = checkpoint.processor(images=[np.asarray(_open(tote.path))], return_tensors="pt")["pixel_values"]
    for batch in _batches():
        boxes, scores, _ = _session(path).run(None, {contract.ONNX_DETECTOR_INPUT: batch})  # type: ignore[attr-defined]
        pixels = checkpoint.processor(images=list(batch), return_tensors="pt",
                                      **dict.fromkeys(checkpoint.style.as_given, False))["pixel_values"]
        with torch.no_grad():  # transformers' one-shot detection: the photo's query against every patch
            outputs = checkpoint.model.image_guided_detection(pixel_values=pixels,
                                                              query_pixel_values=query.repeat(len(batch), 1, 1, 1))
        expected_scores = outputs.logits[..., 0].sigmoid().numpy()
        cx, cy, w, h = outputs.target_pred_boxes.unbind(-1)
        expected_boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).numpy() * SIZE
        np.testing.assert_allclose(scores[:, 0, :], expected_scores, atol=1e-5)
        np.testing.assert_allclose(boxes, expected_boxes, atol=1e-3)
    # the converter's own check agrees, and with texts mixed in the photo's class is another class than the texts'
    mixed = with_queries(checkpoint, Queries(("our tote", "dress"), ((tote, "a yellow handbag"), "a photo of a dress")))
    report = compare_owl(mixed, export_owl_onnx(mixed, tmp_path / "mixed.onnx", nms=NMS), _batches(), NMS)
    assert report.max_abs_error["labels_mismatch"] == 0 and report.max_abs_error["nms_count_mismatch"] == 0
    assert not torch.allclose(mixed.embeddings[0], guided.embeddings[0], atol=1e-3)


def _open(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def test_an_example_that_is_not_a_photo_is_refused_naming_it(loaded: dict[str, OwlCheckpoint], tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not a photo", encoding="utf-8")
    broken = Queries(("bag",), ((Example(path=tmp_path / "notes.png", written="notes.png"),),))
    with pytest.raises(DetrError, match=r"the example photo 'notes.png' \(.*notes.png\) cannot be read: "):
        with_queries(loaded["owlvit"], broken)


# -- the graph against transformers ------------------------------------------------------------------------------


def _served_list(path: Path, batch: Any, nms: NmsSettings) -> list[Any]:
    """What ``postprocess`` gathers from the graph's outputs."""
    from fashionbox import contract
    from fashionbox.converter.export import _session
    from fashionbox.core.postprocessing import gather_detections

    boxes, scores, selected = _session(path).run(None, {contract.ONNX_DETECTOR_INPUT: batch})  # type: ignore[attr-defined]
    return gather_detections(boxes, scores, selected, max_detections=nms.max_detections)


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_the_exported_graph_equals_transformers_and_the_same_nms(loaded: dict[str, OwlCheckpoint], tmp_path: Path,
                                                                  name: str) -> None:
    from fashionbox.converter.detr import compare_detections

    checkpoint = loaded[name]
    batches = _batches()
    for nms in (NMS, NO_NMS):
        path = export_owl_onnx(checkpoint, tmp_path / f"{name}-{nms.iou_threshold}.onnx", nms=nms)
        report = compare_owl(checkpoint, path, batches, nms)  # every patch, and the NMS on the graph's own outputs
        assert report.samples == 6
        assert report.max_abs_error["labels_mismatch"] == 0 and report.max_abs_error["nms_count_mismatch"] == 0
        assert report.max_abs_error["boxes"] < 1e-3 and report.max_abs_error["scores"] < 1e-5
        # and the served list itself: transformers' post-processing plus the same NMS, detection for detection
        errors: dict[str, float] = {}
        for batch in batches:
            compare_detections(_served_list(path, batch, nms), reference_detections(checkpoint, batch, nms), errors)
        assert errors.get("kept_mismatch", 0) == 0 and errors["scores"] < 1e-5 and errors["boxes"] < 1e-3
    # the NMS did suppress (and nothing suppresses without it: the processor's own list, a box per patch)
    kept = [len(d) for b in batches for d in reference_detections(checkpoint, b, NMS)]
    every = [len(d) for b in batches for d in reference_detections(checkpoint, b, NO_NMS)]
    assert all(k > 0 for k in kept) and sum(kept) < sum(every) == sum(len(b) for b in batches) * (SIZE // 16) ** 2


def test_the_comparison_finds_other_queries_and_another_nms(loaded: dict[str, OwlCheckpoint], tmp_path: Path) -> None:
    checkpoint = loaded["owlv2"]
    names, texts = DEFAULT_QUERIES.names, DEFAULT_QUERIES.texts
    other = with_queries(checkpoint, Queries(names[::-1], texts[::-1]))  # the same classes, numbered backwards
    report = compare_owl(checkpoint, export_owl_onnx(other, tmp_path / "reversed.onnx", nms=NMS), _batches(), NMS)
    assert report.max_abs_error["labels_mismatch"] > 0
    report = compare_owl(checkpoint, export_owl_onnx(checkpoint, tmp_path / "nms.onnx", nms=NMS), _batches(), NO_NMS)
    assert report.max_abs_error["labels_mismatch"] == 0 and report.max_abs_error["nms_count_mismatch"] > 0
    with pytest.raises(ExportError, match="nms_count_mismatch"):
        report.raise_if_over(ConvertOptions(out=tmp_path).tolerance)


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_each_owl_family_defaults_to_its_processors_threshold_and_nms(folders: dict[str, Path], name: str) -> None:
    family_name, weights = resolve_spec(f"hf:{folders[name]}", "detector")
    assert family_name == name
    family = FAMILIES[name]()
    assert family.queries is not None and family.torch_runtime
    nms = family_nms(family, ConvertOptions(out=Path("unused")))
    assert (nms.score_threshold, nms.iou_threshold, nms.max_detections) == (0.1, 0.3, 100)
    assert family.letterbox_stride(load_owl(weights, name)) == 0


def test_an_owl_detector_takes_only_its_own_square(loaded: dict[str, OwlCheckpoint], folders: dict[str, Path],
                                                   tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="takes only the square letterbox"):
        export_owl_onnx(loaded["owlv2"], tmp_path / "rect.onnx", nms=NMS, letterbox_stride=16)
    with pytest.raises(ConvertError, match=f"--letterbox rect: this owlv2 detector's graph takes only the square "
                                           f"{SIZE} letterbox"):
        convert(ConvertOptions(out=tmp_path / "rect", detector=f"hf:{folders['owlv2']}", letterbox="rect"))
    with pytest.raises(ConvertError, match=f"--input-size 128: a owlv2 detector is served at its own {SIZE} only"):
        convert(ConvertOptions(out=tmp_path / "big", detector=f"hf:{folders['owlv2']}", input_size=128))
    assert not (tmp_path / "rect").exists() and not (tmp_path / "big").exists()


# -- refusals before any weights load ------------------------------------------------------------------------------


def _copy(folder: Path, into: Path) -> Path:
    shutil.copytree(folder, into)
    return into


def test_a_checkpoint_without_its_tokenizer_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(folders["owlv2"], tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "vocab.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(DetrError, match=r"has no tokenizer .*embedded with the checkpoint's own tokenizer"):
        load_owl(checkpoint_weights(folder), "owlv2")


def test_a_processor_size_unlike_the_vision_towers_square_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(folders["owlv2"], tmp_path / "resized")
    path = folder / "processor_config.json"
    config = json.loads(path.read_text())
    config["image_processor"]["size"] = {"height": 96, "width": 96}
    path.write_text(json.dumps(config))
    with pytest.raises(DetrError, match=f"is not the vision tower's square {SIZE}"):
        load_owl(checkpoint_weights(folder), "owlv2")


def test_an_owl_checkpoint_loaded_as_the_other_owl_family_is_refused(folders: dict[str, Path]) -> None:
    with pytest.raises(DetrError, match="model_type 'owlvit' is not a owlv2 checkpoint"):
        load_owl(checkpoint_weights(folders["owlvit"]), "owlv2")


def test_queries_are_refused_for_a_family_whose_classes_are_its_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"--queries names the classes of an open-vocabulary detector \(owlv2, "
                                           r"owlvit\); a fashionbox detector's classes are its checkpoint's"):
        convert(ConvertOptions(out=tmp_path / "repo", queries=_queries_file(tmp_path, "dress\n")))
    assert not (tmp_path / "repo").exists()


def test_a_hub_id_brings_the_tokenizer_with_the_weights_offline(folders: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = fill_hub_cache(tmp_path / "hf-home" / "hub", "fashion-org/tiny-owlv2", folders["owlv2"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    family, weights = resolve_spec("hf:fashion-org/tiny-owlv2", "detector")
    assert (family, weights) == ("owlv2", snapshot / "model.safetensors")
    assert (weights.parent / "tokenizer.json").is_file()
    assert load_owl(weights, "owlv2").embeddings.shape == (27, 32)


# -- converted: the manifest, the torch runtime, the served repository --------------------------------------------


@pytest.fixture(scope="module")
def repositories(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("owl-repos")
    queries = root / "queries.txt"
    _example_photo(root / "examples" / "tote.png", 4)
    queries.write_text("shirt, blouse\ndress: a blue dress with long sleeves | a photo of a dress\nshoe\n"
                       "bag, wallet\nour tote: @examples/tote.png\n", encoding="utf-8")
    out = {name: convert(ConvertOptions(out=root / name, detector=f"hf:{folder}", compare_samples=2,
                                        runtime="onnxruntime")).repository for name, folder in folders.items()}
    out["torch"] = convert(ConvertOptions(out=root / "torch", detector=f"hf:{folders['owlv2']}", compare_samples=2,
                                          runtime="torch", queries=queries)).repository
    return out


def test_the_manifest_records_what_each_class_was_asked_as(repositories: dict[str, Path]) -> None:
    manifest = json.loads((repositories["torch"] / "manifest.json").read_text())
    assert manifest["family"] == "owlv2" and manifest["runtime"] == "torch"
    import hashlib

    tote = (repositories["torch"].parent / "examples" / "tote.png").read_bytes()
    assert manifest["queries"] == {"file": "queries.txt", "classes": {
        "shirt, blouse": ["a photo of a shirt or blouse"],
        "dress": ["a blue dress with long sleeves", "a photo of a dress"],
        "shoe": ["a photo of a shoe"], "bag, wallet": ["a photo of a bag or wallet"],
        "our tote": ["@examples/tote.png"]}, "examples": {"examples/tote.png": hashlib.sha256(tote).hexdigest()}}
    labels = json.loads((repositories["torch"] / "labels.json").read_text())
    assert [c["name"] for c in labels["categories"]] == ["shirt, blouse", "dress", "shoe", "bag, wallet", "our tote"]
    assert manifest["comparison"]["detector"]["labels_mismatch"] == 0
    assert manifest["comparison"]["detector"]["nms_count_mismatch"] == 0
    assert manifest["comparison"]["torch detector"]["detections_count_mismatch"] == 0
    default = json.loads((repositories["owlvit"] / "manifest.json").read_text())
    assert default["queries"]["file"] is None and len(default["queries"]["classes"]) == 27
    assert default["export"]["letterbox_stride"] == 0 and default["export"]["nms"]["iou_threshold"] == 0.3


def test_the_cli_converts_with_a_queries_file_and_says_what_it_compared(folders: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    import subprocess
    import sys

    queries = _queries_file(tmp_path, "dress\nhandbag: a yellow handbag\n")
    done = subprocess.run([sys.executable, "-m", "fashionbox.commands.cli", "convert", "--detector",
                           f"hf:{folders['owlvit']}", "--queries", str(queries), "--runtime", "onnxruntime",
                           "--out", str(tmp_path / "repo")], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "labels_mismatch=0" in done.stdout and "nms_count_mismatch=0" in done.stdout
    manifest = json.loads((tmp_path / "repo" / "manifest.json").read_text())
    assert manifest["family"] == "owlvit"
    assert manifest["queries"]["classes"] == {"dress": ["a photo of a dress"], "handbag": ["a yellow handbag"]}
    # and a queries file for a family whose classes are its checkpoint's: the CLI's one-line error, nothing written
    done = subprocess.run([sys.executable, "-m", "fashionbox.commands.cli", "convert", "--queries", str(queries),
                           "--out", str(tmp_path / "default")], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 2 and "--queries names the classes of an open-vocabulary detector" in done.stderr
    assert not (tmp_path / "default").exists()


def test_the_torch_runtime_detector_answers_as_transformers_with_the_same_nms(
        repositories: dict[str, Path], loaded: dict[str, OwlCheckpoint]) -> None:
    from fashionbox.converter.detr import compare_detections
    from fashionbox.model_repository.runners import TORCH_FOLDER
    from fashionbox.models.torch_runtime import TorchDetrDetector

    folder = repositories["torch"] / "detector" / "1" / TORCH_FOLDER
    # safetensors and JSON only: nothing a loader would unpickle
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "detector.json", "model.safetensors",
                                                        "queries.safetensors"]
    queries = read_queries(repositories["torch"].parent / "queries.txt")
    checkpoint = with_queries(loaded["owlv2"], queries)
    runner = TorchDetrDetector(folder, device="cpu", precision="fp32", score_threshold=0.1, iou_threshold=0.3,
                               max_detections=100, max_batch_size=4, bucketed=True)
    errors: dict[str, float] = {}
    for batch in _batches():  # 1, 3 and 2 rows, padded to buckets 1, 4 and 2
        ours = runner.detect(batch)
        assert len(ours) == len(batch)
        compare_detections(ours, reference_detections(checkpoint, batch, NMS), errors)
    assert errors.get("kept_mismatch", 0) == 0 and errors["scores"] < 1e-5 and errors["boxes"] < 1e-3


def test_the_owl_spec_and_graphs_refuse_each_others_scoring(repositories: dict[str, Path], tmp_path: Path) -> None:
    from fashionbox.model_repository.runners import TORCH_FOLDER
    from fashionbox.models.detr_graph import DetrGraph, DetrSpec
    from fashionbox.models.owl_graph import OwlGraph, load_queries

    folder = repositories["torch"] / "detector" / "1" / TORCH_FOLDER
    spec = DetrSpec.read(folder)
    assert (spec.model_class, spec.scoring, spec.input_size) == ("Owlv2ForObjectDetection", "owl", SIZE)
    with pytest.raises(ValueError, match="serves the softmax and sigmoid_top_k scorings, not 'owl'"):
        DetrGraph(torch.nn.Identity(), spec, 0.5)
    with pytest.raises(ValueError, match="an OwlGraph serves scoring 'owl', not 'softmax'"):
        OwlGraph(torch.nn.Identity(), DetrSpec(**{**spec.__dict__, "scoring": "softmax"}), torch.zeros(2, 4))
    (tmp_path / "queries.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="does not hold the queries' embeddings"):
        load_queries(tmp_path)


def _scenes() -> list[bytes]:
    from fashionbox.synth import render_scene

    sizes = [(640, 480), (360, 640), (500, 500)]
    return [render_scene(90 + i, size=size).encode(format="JPEG", quality=90) for i, size in enumerate(sizes)]


def _assert_served_as_transformers(server: Any, checkpoint: OwlCheckpoint) -> None:
    from fashionbox.client import FashionClient
    from fashionbox.converter.detr import compare_detections
    from fashionbox.core.imaging import decode_image, letterbox
    from fashionbox.core.postprocessing import DetectorOutput

    names = checkpoint.label_map.category_names
    errors: dict[str, float] = {}
    total = 0
    with FashionClient(str(server.endpoints.grpc)) as client:
        for data in _scenes():
            served = client.detect(data).detections
            pixels, info = letterbox(decode_image(data, target_size=SIZE), SIZE)
            (expected,) = reference_detections(checkpoint, pixels[None], NMS)
            ours = DetectorOutput(boxes=np.array([d.box.as_list() for d in served], np.float32).reshape(-1, 4),
                                  scores=np.array([d.score for d in served], np.float32),
                                  classes=np.array([names.index(d.category) for d in served], np.int32))
            theirs = DetectorOutput(boxes=info.to_original(expected.boxes).astype(np.float32), scores=expected.scores,
                                    classes=expected.classes)
            compare_detections([ours], [theirs], errors)  # paired by class and score, nearest box among near ties
            total += len(served)
        sequential = [client.detect(data).detections for data in _scenes()]
        for together, alone in zip(client.detect_many(_scenes() * 3, max_in_flight=9), sequential * 3, strict=True):
            assert not isinstance(together, Exception), together
            # the same detections (a batch's float noise may swap two near-tied scores' order)
            assert sorted(d.category for d in together.detections) == sorted(d.category for d in alone)
    assert total > 0
    assert errors.get("kept_mismatch", 0) == 0 and errors["scores"] < 1e-3 and errors["boxes"] < 0.5, errors


@pytest.mark.integration
@pytest.mark.parametrize("name", [*MODEL_TYPES, "torch"])
def test_served_detections_equal_transformers_with_the_same_nms(
        triton_server: Any, repositories: dict[str, Path], loaded: dict[str, OwlCheckpoint], name: str) -> None:
    checkpoint = loaded["owlv2" if name == "torch" else name]
    if name == "torch":
        checkpoint = with_queries(checkpoint, read_queries(repositories["torch"].parent / "queries.txt"))
    _assert_served_as_transformers(triton_server(repositories[name]), checkpoint)
