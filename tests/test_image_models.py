"""Classifier and embedder families (issue 16): views, tokenizers, export and parity with transformers.

No network and no server: tiny random checkpoints (tests/image_model_fixtures.py) are built
offline and saved as Hugging Face folders. What is checked:

- the served view (``fashionbox.core.views``) gives the processor's own pixels, exactly, for the
  ViT, ConvNeXt (``crop_pct``), ResNet, EfficientNet, CLIP and SigLIP processors on odd-sized images;
- the saved tokenizer (``fashionbox.core.text``) gives the family's processor's tokens, exactly;
- the exported graphs match the library's processor + forward (top-5 equal, probabilities within
  1e-3; cosine >= 0.999 for image and text embeddings), and a graph that does not is refused;
- bad checkpoints and specs stop with a ConvertError naming the file and what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashionbox import contract
from fashionbox.converter.errors import ConvertError
from fashionbox.core.text import MAX_TEXT_BYTES, TextSettings, TextTokenizer
from fashionbox.core.views import ViewRecipe

transformers = pytest.importorskip("transformers", reason="image-level families need fashionbox-converter[hf]")
pytest.importorskip("sentencepiece", reason="SigLIP's tokenizer needs sentencepiece (requirements-dev.txt)")

from image_model_fixtures import (  # noqa: E402
    PHRASES,
    VERTICALS,
    build_tiny_classifier,
    build_tiny_clip,
    build_tiny_siglip,
    fill_hub_cache,
    odd_images,
)

from fashionbox.converter.image_models import (  # noqa: E402
    TEXT_PHRASES,
    ImageModel,
    ImageModelError,
    compare_image_model,
    export_image_model,
    load_image_model,
    view_of,
)

CLASSIFIERS = ("vit", "convnext", "resnet", "efficientnet")
EMBEDDERS = ("clip", "siglip")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-models")
    built = {arch: build_tiny_classifier(root / arch, arch) for arch in CLASSIFIERS}
    built["vit-multi"] = build_tiny_classifier(root / "vit-multi", "vit", multi_label=True)
    built["clip"] = build_tiny_clip(root / "clip")
    built["siglip"] = build_tiny_siglip(root / "siglip")
    return built


@pytest.fixture(scope="module")
def loaded(folders: dict[str, Path]) -> dict[str, ImageModel]:
    models = {name: load_image_model(f"hf:{folders[name]}", "classifier") for name in (*CLASSIFIERS, "vit-multi")}
    models.update({name: load_image_model(f"hf:{folders[name]}", "embedder") for name in EMBEDDERS})
    return models


@pytest.fixture(scope="module")
def exported(loaded: dict[str, ImageModel], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("image-onnx")
    return {name: export_image_model(model, root / name) for name, model in loaded.items()}


def _images(count: int = 6) -> list[np.ndarray]:
    return [np.asarray(image) for image in odd_images(count)]


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# -- views ------------------------------------------------------------------------------------------------------


def _raw_pixels(processor: Any, image: Any) -> np.ndarray:
    """The processor's pixels before rescale and normalisation, as HWC."""
    extra = {"include_top": False} if type(processor).__name__.startswith("EfficientNet") else {}
    out = processor(images=[image], do_rescale=False, do_normalize=False, return_tensors="np", **extra)
    return np.asarray(out["pixel_values"][0]).transpose(1, 2, 0)


@pytest.mark.parametrize("name", (*CLASSIFIERS, *EMBEDDERS))
def test_the_view_gives_the_processors_own_pixels_on_odd_sized_images(loaded: dict[str, ImageModel],
                                                                      name: str) -> None:
    model = loaded[name]
    for image in odd_images(6):
        ours = model.view.apply(image)
        theirs = _raw_pixels(model.processor, image)
        assert ours.dtype == np.uint8 and ours.shape == (model.view.height, model.view.width, 3)
        assert np.array_equal(ours, theirs.astype(np.float64).round().astype(np.uint8))
        assert np.abs(theirs - ours).max() == 0


def test_the_views_cover_each_processor_geometry(loaded: dict[str, ImageModel]) -> None:
    assert loaded["vit"].view == ViewRecipe(32, 32, resize=(32, 32), resample="bilinear")
    assert loaded["convnext"].view == ViewRecipe(40, 40, shortest_edge=45, crop=(40, 40), resample="bicubic")  # 40/.875
    assert loaded["resnet"].view == ViewRecipe(48, 48, shortest_edge=53, crop=(48, 48), resample="bilinear")
    assert loaded["clip"].view == ViewRecipe(32, 32, shortest_edge=36, crop=(32, 32), resample="bicubic")
    assert loaded["siglip"].view == ViewRecipe(32, 32, resize=(32, 32), resample="bicubic")
    assert all(model.view.square for model in loaded.values())


@pytest.mark.parametrize("processor", [
    pytest.param(lambda tf: tf.ConvNextImageProcessorPil(size={"shortest_edge": 384}), id="convnext-384-warps"),
    pytest.param(lambda tf: tf.CLIPImageProcessorPil(size={"shortest_edge": 20}, crop_size={"height": 24, "width": 26},
                                                     do_center_crop=True), id="crop-larger-than-image-pads"),
    pytest.param(lambda tf: tf.ViTImageProcessorPil(size={"height": 30, "width": 44}, resample=0), id="vit-oblong"),
    pytest.param(lambda tf: tf.ViTImageProcessorPil(), id="vit-defaults"),
    pytest.param(lambda tf: tf.CLIPImageProcessorPil(), id="clip-defaults"),
    pytest.param(lambda tf: tf.ConvNextImageProcessorPil(size={"shortest_edge": 224}), id="resnet-224"),
    pytest.param(lambda tf: tf.SiglipImageProcessorPil(), id="siglip-defaults"),
    pytest.param(lambda tf: tf.EfficientNetImageProcessorPil(size={"height": 224, "width": 224}, resample=0),
                 id="efficientnet-b0"),
])
def test_the_view_matches_other_processor_settings(processor: Any) -> None:
    from PIL import Image

    built = processor(transformers)
    view = view_of(built)
    rng = np.random.default_rng(5)
    large = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
             for h, w in ((427, 640), (519, 257))]
    for image in [*odd_images(4, seed=3), *large]:
        assert np.array_equal(view.apply(image), _raw_pixels(built, image).round().astype(np.uint8))


def test_a_view_recipe_round_trips_through_json() -> None:
    recipe = ViewRecipe(40, 40, shortest_edge=45, crop=(40, 40), resample="bilinear")
    assert ViewRecipe.from_json(recipe.to_json()) == recipe
    assert json.loads(recipe.to_json())["crop"] == [40, 40]
    exact = ViewRecipe(30, 44, resize=(30, 44))
    assert ViewRecipe.from_json(exact.to_json()) == exact and not exact.square


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"height": 32, "width": 32, "resize": (32, 32), "shortest_edge": 36, "crop": (32, 32)}, "exactly one"),
    ({"height": 32, "width": 32}, "exactly one"),
    ({"height": 32, "width": 32, "shortest_edge": 32}, "needs a centre crop"),
    ({"height": 32, "width": 32, "resize": (32, 30)}, "ends at"),
    ({"height": 32, "width": 32, "resize": (32, 32), "resample": "cubic"}, "resample must be one of"),
    ({"height": 0, "width": 32, "resize": (0, 32)}, "height must be an integer"),
])
def test_a_bad_view_recipe_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViewRecipe(**kwargs)


def test_a_view_refuses_what_it_cannot_reproduce() -> None:
    with pytest.raises(ImageModelError, match="without a centre crop"):
        view_of(transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, do_center_crop=False))
    with pytest.raises(ImageModelError, match="do_resize is false"):
        view_of(transformers.ViTImageProcessorPil(do_resize=False))
    with pytest.raises(ValueError, match="RGB"):
        ViewRecipe(8, 8, resize=(8, 8)).apply(odd_images(1)[0].convert("L"))


# -- tokenizers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EMBEDDERS)
def test_the_saved_tokenizer_gives_the_familys_tokens(loaded: dict[str, ImageModel],
                                                      exported: dict[str, dict[str, Path]], name: str) -> None:
    model = loaded[name]
    settings = model.text_settings
    assert settings is not None
    tokenizer = TextTokenizer.from_folder(exported[name]["tokenizer"])
    texts = [*PHRASES[:5], "an unseen word: Zyxwv!", "x " * 200]  # the last is truncated
    ours = tokenizer(texts)
    theirs = model.tokenizer(texts, padding=settings.padding, truncation=True,  # type: ignore[misc]
                             max_length=settings.max_length, return_tensors="np")
    assert set(ours) == set(tokenizer.input_names)
    for key, value in ours.items():
        assert value.dtype == np.int64
        assert np.array_equal(value, theirs[key])
    width = ours[contract.ONNX_TEXT_INPUT_IDS].shape[1]
    assert width == settings.max_length  # the long text fills it in both paddings
    short = tokenizer(["a red shirt"])[contract.ONNX_TEXT_INPUT_IDS].shape[1]
    assert (short == settings.max_length) == (settings.padding == "max_length")


def test_clip_saves_a_fast_tokenizer_and_siglip_the_librarys(loaded: dict[str, ImageModel]) -> None:
    clip, siglip = loaded["clip"].text_settings, loaded["siglip"].text_settings
    assert clip is not None and siglip is not None
    assert (clip.backend, clip.padding, clip.max_length, clip.attention_mask) == ("tokenizers", "longest", 24, True)
    assert (siglip.backend, siglip.padding, siglip.max_length) == ("transformers", "max_length", 16)
    assert TextSettings.from_json(clip.to_json()) == clip


@pytest.mark.parametrize(("texts", "message"), [
    ([""], "text 0 is empty"),
    (["ok", "   "], "text 1 is empty"),
    (["ok", b"bytes"], "text 1 is a bytes, not a str"),
    (["é" * (MAX_TEXT_BYTES // 2 + 1)], f"over the limit of {MAX_TEXT_BYTES}"),
    ([], "no texts"),
    ("a red shirt", "sequence of texts"),
])
def test_bad_texts_are_refused(exported: dict[str, dict[str, Path]], texts: Any, message: str) -> None:
    tokenizer = TextTokenizer.from_folder(exported["clip"]["tokenizer"])
    with pytest.raises(ValueError, match=message):
        tokenizer(texts)


def test_a_folder_without_saved_settings_is_not_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a saved text tokenizer"):
        TextTokenizer.from_folder(tmp_path)
    (tmp_path / "text_settings.json").write_text('{"backend": "tokenizers"}')
    with pytest.raises(ValueError, match="must be a JSON object with the keys"):
        TextTokenizer.from_folder(tmp_path)


# -- export and parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", (*CLASSIFIERS, "vit-multi"))
def test_a_classifier_matches_transformers(loaded: dict[str, ImageModel], exported: dict[str, dict[str, Path]],
                                           name: str) -> None:
    model, files = loaded[name], exported[name]
    assert set(files) == {"image"}
    assert model.labels == VERTICALS and model.multi_label == (name == "vit-multi")
    report = compare_image_model(model, files, _images())
    assert report["top5_equal"] == 6 and report["max_prob_diff"] < 1e-4
    session = _session(files["image"])
    assert [i.name for i in session.get_inputs()] == [contract.ONNX_IMAGE_INPUT]
    assert [o.name for o in session.get_outputs()] == [contract.ONNX_CLASSIFIER_OUTPUT]
    for batch in (1, 3):  # a dynamic batch
        pixels = np.stack([model.view.apply(image) for image in odd_images(batch, seed=batch)])
        (probs,) = session.run(None, {contract.ONNX_IMAGE_INPUT: pixels})
        assert probs.shape == (batch, len(VERTICALS))
        sums = probs.sum(axis=1)
        assert np.allclose(sums, 1.0, atol=1e-5) != (name == "vit-multi")  # softmax; sigmoid per label


@pytest.mark.parametrize("name", EMBEDDERS)
def test_an_embedder_matches_transformers_for_images_and_text(loaded: dict[str, ImageModel],
                                                              exported: dict[str, dict[str, Path]], name: str) -> None:
    model, files = loaded[name], exported[name]
    assert set(files) == {"image", "text", "tokenizer"} and model.has_text
    report = compare_image_model(model, files, _images())
    assert report["image_min_cosine"] >= 0.99999 and report["text_min_cosine"] >= 0.99999
    assert report["tokens_equal"] == 1.0
    (embeddings,) = _session(files["image"]).run(None, {contract.ONNX_IMAGE_INPUT: np.stack(
        [model.view.apply(image) for image in odd_images(3)])})
    assert embeddings.shape == (3, model.dimension) and model.dimension == {"clip": 16, "siglip": 32}[name]
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    text = _session(files["text"])
    feeds = TextTokenizer.from_folder(files["tokenizer"])(list(TEXT_PHRASES[:3]))
    assert [i.name for i in text.get_inputs()] == list(feeds)
    (vectors,) = text.run(None, feeds)
    assert vectors.shape == (3, model.dimension)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_graph_that_normalises_differently_is_refused(loaded: dict[str, ImageModel], tmp_path: Path) -> None:
    """The comparison can fail: a graph with the wrong normalisation stops the conversion."""
    wrong = dataclasses.replace(loaded["vit"], bias=(-0.5, -0.5, -0.5))
    files = export_image_model(wrong, tmp_path / "vit")
    with pytest.raises(ImageModelError, match="does not match transformers"):
        compare_image_model(wrong, files, _images())
    wrong_view = dataclasses.replace(loaded["siglip"], view=ViewRecipe(32, 32, resize=(32, 32), resample="nearest"))
    files = export_image_model(wrong_view, tmp_path / "siglip")
    with pytest.raises(ImageModelError, match="embedder graphs do not match"):
        compare_image_model(wrong_view, files, _images())


# -- bad checkpoints and specs ---------------------------------------------------------------------------------


def _copy(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def _edit_json(file: Path, **changes: Any) -> None:
    data = json.loads(file.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    file.write_text(json.dumps(data))


def test_a_classifier_without_labels_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(folders["vit"], tmp_path)
    _edit_json(folder / "config.json", id2label=None, label2id=None)
    with pytest.raises(ConvertError, match=r"config\.json has no id2label: the label names and count"):
        load_image_model(f"hf:{folder}", "classifier")


@pytest.mark.parametrize(("change", "message"), [
    ({"image_mean": None}, r"preprocessor_config\.json states no normalisation: image_mean"),
    ({"image_std": [0.5]}, r"preprocessor_config\.json states no normalisation: image_std"),
    ({"size": None}, r"preprocessor_config\.json states no input size"),
])
def test_a_checkpoint_without_size_or_normalisation_is_refused(folders: dict[str, Path], tmp_path: Path,
                                                               change: dict[str, Any], message: str) -> None:
    folder = _copy(folders["convnext"], tmp_path)
    _edit_json(folder / "preprocessor_config.json", **change)
    with pytest.raises(ConvertError, match=message):
        load_image_model(f"hf:{folder}", "classifier")


def test_a_checkpoint_without_a_processor_config_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(folders["resnet"], tmp_path)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ConvertError, match=r"has no preprocessor_config\.json .*input size and normalisation"):
        load_image_model(f"hf:{folder}", "classifier")


def test_a_checkpoint_of_another_kind_is_refused_naming_the_spec_that_fits(folders: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="is an image-text embedder, not a classifier: give it as --embedder"):
        load_image_model(f"hf:{folders['clip']}", "classifier")
    with pytest.raises(ConvertError, match=r"is not a CLIP or SigLIP checkpoint \(an image classifier: give it as "
                                           "--classifier\\)"):
        load_image_model(f"hf:{folders['vit']}", "embedder")
    detector = _copy(folders["resnet"], tmp_path, "detector")
    _edit_json(detector / "config.json", model_type="detr", architectures=["DetrForObjectDetection"])
    for kind in ("classifier", "embedder"):
        with pytest.raises(ConvertError, match=r"is an object detector, not a .*: give it as --detector"):
            load_image_model(f"hf:{detector}", kind)


def test_a_bad_spec_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"hf:FOLDER_OR_HUB_ID .*timm: and open_clip:"):
        load_image_model("timm:resnet50", "classifier")
    with pytest.raises(ConvertError, match="does not exist and is not a Hub id"):
        load_image_model(f"hf:{tmp_path / 'no' / 'such' / 'folder'}", "classifier")
    with pytest.raises(ConvertError, match=r"has no config\.json"):
        load_image_model(f"hf:{tmp_path}", "embedder")


def test_an_offline_hub_id_missing_from_the_cache_names_the_cache(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(ConvertError, match=f"HF_HUB_OFFLINE is set and the Hugging Face cache {tmp_path / 'hf-home'}"):
        load_image_model("hf:fashion-org/tiny-clip", "embedder")


def test_a_hub_id_loads_from_a_filled_cache_offline_with_its_tokenizer(folders: dict[str, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fill_hub_cache(tmp_path / "hf-home" / "hub", "fashion-org/tiny-clip", folders["clip"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    model = load_image_model("hf:fashion-org/tiny-clip", "embedder")
    assert model.name == "hf:fashion-org/tiny-clip" and model.has_text and model.dimension == 16
