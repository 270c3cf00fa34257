"""Classifier and embedder families (issue 16): tiny random transformers models, converted beside the
default detector, served by the real embedded Triton, against their own library on the same pixels.

- labels: the top-5 of ``AutoModelForImageClassification`` on its processor's pixel values of the same
  image, names equal and scores within 1e-3;
- the image vector: cosine >= 0.999 with CLIP's ``get_image_features`` on its processor's pixels;
- each garment's vector: cosine >= 0.999 with ``get_image_features`` on its processor's pixels of the same
  crop (cut from the letterbox around the detector's box: what ``postprocess`` cuts);
- ``embed_text``: cosine >= 0.999 with ``get_text_features`` on the processor's tokens;
- the text tower refuses bad texts alone; the image-level networks refuse direct calls;
- the catalog's web page searches by words through the text tower, ranked as ``Catalog.search_text``.

Images are PNGs (decoded at full size, as transformers decodes them: a JPEG larger than the letterbox is
decoded at a reduced DCT scale, which changes the view's pixels slightly).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from client_servers import start_private_server
from image_model_fixtures import PHRASES, build_tiny_classifier, build_tiny_clip
from PIL import Image

from fashionbox import contract
from fashionbox.client import FashionBoxError, FashionClient
from fashionbox.converter import ConvertOptions, convert
from fashionbox.server import TritonServer

transformers = pytest.importorskip("transformers", reason="the families need fashionbox-converter[hf]")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {"classifier": build_tiny_classifier(root / "vit", "vit"), "embedder": build_tiny_clip(root / "clip")}


def _convert_with_families(folders: dict[str, Path], out: Path, **options: Any) -> Path:
    """The default models with both families beside them."""
    return convert(ConvertOptions(out=out, classifier=f"hf:{folders['classifier']}",
                                  embedder=f"hf:{folders['embedder']}", compare_samples=2, **options)).repository


@pytest.fixture(scope="module")
def repository(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _convert_with_families(folders, tmp_path_factory.mktemp("families-repo") / "repo", runtime="onnxruntime")


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    started = start_private_server(repository, tmp_path_factory.mktemp("families-logs"))
    try:
        yield started
    finally:
        started.stop(timeout_s=10)


def _photos() -> list[tuple[Image.Image, bytes]]:
    from fashionbox.synth import render_scene

    out = []
    for seed, size in ((81, (640, 480)), (82, (360, 640)), (83, (500, 500))):
        image = render_scene(seed, size=size).image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append((image, buffer.getvalue()))
    blank = Image.new("RGB", (320, 240), (200, 200, 200))  # a photo without garments: nothing detected
    buffer = io.BytesIO()
    blank.save(buffer, format="PNG")
    return [*out, (blank, buffer.getvalue())]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


def test_the_repository_records_and_wires_both_families(repository: Path, folders: dict[str, Path]) -> None:
    manifest = json.loads((repository / contract.MANIFEST_FILE).read_text())
    assert set(manifest["image_models"]) == {"classifier", "embedder"} and manifest["image_models"]["embedder"]["text"]
    for name in (contract.CLASSIFIER_MODEL, contract.EMBEDDER_MODEL, contract.TEXT_EMBEDDER_MODEL):
        assert (repository / name / "1" / "model.onnx").is_file()
    assert any((repository / contract.TEXT_EMBEDDER_MODEL / "1" / "tokenizer").iterdir())
    assert manifest["comparison"]["classifier"] and manifest["comparison"]["embedder"]


def test_served_labels_and_vectors_equal_their_library(server: TritonServer, repository: Path,
                                                       folders: dict[str, Path]) -> None:
    from fashionbox.contract.labels import LabelMap
    from fashionbox.core.imaging import crop_garments, decode_image, letterbox
    from fashionbox.core.postprocessing import rescore_detections
    from fashionbox.core.serving import OnnxAttributes, OnnxDetector, OrtSettings
    from fashionbox.core.views import ViewRecipe

    classifier = transformers.AutoModelForImageClassification.from_pretrained(folders["classifier"]).eval()
    classifier_processor = transformers.AutoImageProcessor.from_pretrained(folders["classifier"])
    clip = transformers.CLIPModel.from_pretrained(folders["embedder"]).eval()
    clip_processor = transformers.CLIPImageProcessor.from_pretrained(folders["embedder"])
    manifest = json.loads((repository / contract.MANIFEST_FILE).read_text())
    size = int(manifest["export"]["input_size"])
    side = ViewRecipe.from_json(json.dumps(manifest["image_models"]["embedder"]["view"])).min_source_short_side
    detector = OnnxDetector(repository / contract.DETECTOR_MODEL / "1" / "model.onnx", OrtSettings(),
                            max_detections=int(manifest["export"]["nms"]["max_detections"]))
    names = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    crop = int(manifest["export"]["crop_size"])
    verifier = (OnnxAttributes(repository / contract.ATTRIBUTES_MODEL / "1" / "model.onnx", OrtSettings(),
                               num_attribute_labels=LabelMap.load(repository / contract.LABELS_FILE)
                               .num_attribute_labels) if "verifier" in manifest else None)
    garments = empty = 0
    with FashionClient(str(server.endpoints.grpc)) as client, torch.no_grad():
        for image, png in _photos():
            served = client.detect(png)
            # labels: the library's forward on its processor's pixels of the same image
            logits = classifier(**classifier_processor(images=image, return_tensors="pt")).logits[0]
            probs = torch.softmax(logits, dim=-1).numpy()
            top = np.argsort(-probs, kind="stable")[:5]
            assert [label.label for label in served.labels] == [names[i] for i in top]
            np.testing.assert_allclose([label.score for label in served.labels], probs[top], atol=1e-3)
            assert served.labels_model == manifest["image_models"]["classifier"]["name"]
            # the image's vector
            expected = clip.get_image_features(**clip_processor(images=image, return_tensors="pt"))
            expected = getattr(expected, "pooler_output", expected)
            assert served.embedding is not None and served.packed_embedding is not None
            assert served.packed_embedding.model == manifest["image_models"]["embedder"]["name"]
            assert _cosines(served.embedding, expected.numpy()[0]) >= 0.999
            assert abs(float(np.linalg.norm(served.embedding)) - 1.0) < 1e-2
            # each garment's vector, on the crop postprocess cuts around the detector's box
            pixels, _ = letterbox(decode_image(png, target_size=size), size)
            (found,) = detector.detect(pixels[None])
            if verifier is not None:  # the shipped second stage: the detections its crops confirm
                name = contract.ONNX_ATTRIBUTES_SCORE_OFFSETS
                offsets = verifier.run(crop_garments(pixels, found.boxes, crop), (name,))[name]
                found, _ = rescore_detections(found, offsets,
                                              score_threshold=manifest["verifier"]["score_threshold"])
            assert len(found) == len(served.detections)
            if not len(found):  # answered with its labels and vector (was INTERNAL: the empty attribute call)
                empty += 1
                continue
            # the crops postprocess cuts, given to the library's processor as a user would give them
            crops = [Image.fromarray(c) for c in crop_garments(pixels, found.boxes, side)]
            expected = clip.get_image_features(**clip_processor(images=crops, return_tensors="pt"))
            expected = getattr(expected, "pooler_output", expected).numpy()
            vectors = np.stack([d.embedding for d in served.detections])
            assert float(_cosines(vectors, expected).min()) >= 0.999
            garments += len(found)
    assert garments > 0, "the default detector found nothing: the garment vectors went untested"
    assert empty > 0, "every photo had a garment: a photo without one went untested"


def test_embed_text_equals_the_text_tower(server: TritonServer, folders: dict[str, Path], repository: Path) -> None:
    clip = transformers.CLIPModel.from_pretrained(folders["embedder"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders["embedder"])
    with FashionClient(str(server.endpoints.grpc)) as client, torch.no_grad():
        served = client.embed_text(list(PHRASES))
        expected = clip.get_text_features(**tokenizer(list(PHRASES), padding=True, return_tensors="pt"))
        expected = getattr(expected, "pooler_output", expected).numpy()
        assert served.shape == expected.shape
        assert float(_cosines(served, expected).min()) >= 0.999
        manifest = json.loads((repository / contract.MANIFEST_FILE).read_text())
        assert client.text_model() == manifest["image_models"]["embedder"]["name"]  # whose image vectors match
        many = client.embed_text([PHRASES[0]] * 20)  # more than one request's worth
        assert many.shape[0] == 20 and float(_cosines(many, np.repeat(served[:1], 20, axis=0)).min()) > 0.9999


def test_bad_texts_fail_alone_and_the_steps_take_no_direct_calls(server: TritonServer) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with FashionClient(str(server.endpoints.grpc)) as client:
        with pytest.raises(FashionBoxError, match="more than the 2048"):
            client.embed_text(["x" * 5000])
        assert client.embed_text([PHRASES[1]]).shape[0] == 1  # the server carries on

    with grpcclient.InferenceServerClient(server.endpoints.grpc) as raw:
        views = grpcclient.InferInput(contract.VIEWS.name, [1, 32, 32, 3], "UINT8")
        views.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.uint8))
        token = grpcclient.InferInput(contract.TOKEN.name, [1, 32], "UINT8")
        token.set_data_from_numpy(np.zeros((1, 32), np.uint8))
        for model in (contract.CLASSIFIER_MODEL, contract.EMBEDDER_MODEL):
            config = raw.get_model_config(model).config
            dims = [int(d) for d in config.input[0].dims]
            views = grpcclient.InferInput(contract.VIEWS.name, [1, *dims], "UINT8")
            views.set_data_from_numpy(np.zeros((1, *dims), np.uint8))
            with pytest.raises(InferenceServerException, match="takes no direct calls"):
                raw.infer(model, [views, token])


def test_a_repository_without_the_families_sends_no_labels_or_vectors_to_a_new_client(
        triton_server: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The stand-in repository has no image-level heads: every new field decodes empty, no error."""
    from client_servers import write_client_repository

    repository = write_client_repository(tmp_path_factory.mktemp("plain"))
    server = triton_server(repository)
    with FashionClient(str(server.endpoints.grpc)) as client:
        image = np.full((64, 80, 3), 128, np.uint8)
        result = client.detect(image)
        assert result.labels == () and result.embedding is None
        assert all(d.embedding is None for d in result.detections)


@pytest.fixture(scope="module")
def torch_repository(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _convert_with_families(folders, tmp_path_factory.mktemp("families-torch") / "repo", runtime="torch")


def test_the_torch_runtime_serves_the_families_as_their_graphs(
        server: TritonServer, torch_repository: Path, triton_server: Any) -> None:
    """``--runtime torch`` (the GPU profile without TensorRT; here on the CPU): the families run as their
    transformers models in PyTorch, the graph the converter exports, and answer as ONNX Runtime does."""
    repository = torch_repository
    for name in (contract.CLASSIFIER_MODEL, contract.EMBEDDER_MODEL):
        assert (repository / name / "1" / "transformers" / "model.safetensors").is_file()
        assert 'string_value: "torch"' in (repository / name / "config.pbtxt").read_text()
    _assert_families_answer_alike(triton_server(repository), server)


def _assert_families_answer_alike(ours: TritonServer, reference: TritonServer) -> None:
    """The same labels (scores within 1e-3) and vectors (cosine >= 0.999) from both servers, photo by photo."""
    with FashionClient(str(reference.endpoints.grpc)) as reference_client, \
            FashionClient(str(ours.endpoints.grpc)) as client:
        for _, png in _photos()[:2]:
            expected, served = reference_client.detect(png), client.detect(png)
            assert [label.label for label in served.labels] == [label.label for label in expected.labels]
            np.testing.assert_allclose([label.score for label in served.labels],
                                       [label.score for label in expected.labels], atol=1e-3)
            assert served.embedding is not None and expected.embedding is not None
            assert float(served.embedding @ expected.embedding) >= 0.999
            for mine, theirs in zip(served.detections, expected.detections, strict=True):
                assert mine.embedding is not None and theirs.embedding is not None
                assert float(mine.embedding @ theirs.embedding) >= 0.999


def test_openvino_serves_the_families_checked_against_onnx_runtime_at_conversion(
        server: TritonServer, folders: dict[str, Path], triton_server: Any, tmp_path: Path) -> None:
    """``--runtime openvino``: the families' graphs and the embedder's text tower run in OpenVINO too, checked
    against ONNX Runtime when converted (the manifest's comparison), and served answer as the ONNX Runtime
    server does."""
    repository = _convert_with_families(folders, tmp_path / "repo", runtime="openvino")
    manifest = json.loads((repository / contract.MANIFEST_FILE).read_text())
    tolerance = manifest["comparison"]["tolerance"]
    assert manifest["comparison"]["openvino fp32 classifier"]["probs"] <= tolerance["probs"]
    assert manifest["comparison"]["openvino fp32 embedder"]["embeddings"] <= tolerance["embeddings"]
    assert manifest["comparison"]["openvino fp32 text_embedder"]["embeddings"] <= tolerance["embeddings"]
    for name in (contract.CLASSIFIER_MODEL, contract.EMBEDDER_MODEL, contract.TEXT_EMBEDDER_MODEL):
        assert 'string_value: "openvino"' in (repository / name / "config.pbtxt").read_text(), name
    ours = triton_server(repository)
    _assert_families_answer_alike(ours, server)
    with FashionClient(str(server.endpoints.grpc)) as reference, FashionClient(str(ours.endpoints.grpc)) as client:
        served, expected = client.embed_text(list(PHRASES)), reference.embed_text(list(PHRASES))
        np.testing.assert_allclose(served, expected, atol=tolerance["embeddings"])
        assert client.embed_text([PHRASES[0]]).shape[0] == 1  # one text: another sequence length, reshaped
    assert ours.log_path is not None
    assert any("text_embedder: " in line and "in OpenVINO (fp32)" in line
               for line in ours.log_path.read_text(errors="replace").splitlines())


def test_an_auto_pick_of_the_torch_runtime_writes_the_repository_runtime_torch_writes(
        folders: dict[str, Path], torch_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``--runtime auto`` measures the torch runtime fastest (OWLv2's full-attention ViT on an AVX2
    host), the repository is ``--runtime torch``'s: every config, and the files (the image-level families'
    transformers folders among them), with the measurement in the manifest. The timing is made to
    favour torch here; which runtime wins on this host is ``test_openvino_auto``'s."""
    from fashionbox.converter import cpu_runtimes

    measured = cpu_runtimes._interleaved

    def torch_fastest(runners: dict[str, Any], *args: Any) -> dict[str, dict[str, list[float]]]:
        samples = measured(runners, *args)
        samples["torch/fp32"] = {part: [0.001 for _ in times] for part, times in samples["torch/fp32"].items()}
        return samples

    monkeypatch.setattr(cpu_runtimes, "_interleaved", torch_fastest)
    repository = _convert_with_families(folders, tmp_path / "repo")  # --runtime auto

    def tree(root: Path) -> set[str]:
        return {str(path.relative_to(root)) for path in root.rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}  # (the served one's bytecode)

    assert tree(repository) == tree(torch_repository)
    for config in sorted(torch_repository.glob("*/config.pbtxt")):
        assert (repository / config.relative_to(torch_repository)).read_text() == config.read_text(), config
    manifest = json.loads((repository / contract.MANIFEST_FILE).read_text())
    expected = json.loads((torch_repository / contract.MANIFEST_FILE).read_text())
    assert (manifest["runtime"], manifest["precision"], manifest["cpu_cores"]) == ("torch", "fp32", None)
    assert {key: manifest[key] for key in ("export", "layout", "image_models")} == \
        {key: expected[key] for key in ("export", "layout", "image_models")}
    assert manifest["cpu_runtime"]["chosen"] == "torch/fp32" and "cpu_runtime" not in expected
    timings = manifest["cpu_runtime"]["timings_ms"]
    assert set(timings) == {"onnxruntime/fp32", "openvino/fp32", "torch/fp32"}
    # a pick moves the families too, so every candidate ran them, as served per photo, checked first
    for parts in timings.values():
        assert set(parts) == {"detector_b1", "attributes_b8", "classifier_b1", "embedder_b9", "total"}
    comparison = manifest["comparison"]
    for candidate in ("openvino fp32", "torch fp32"):
        assert comparison[f"{candidate} classifier"]["probs"] <= comparison["tolerance"]["probs"]
        assert comparison[f"{candidate} embedder"]["embeddings"] <= comparison["tolerance"]["embeddings"]


def test_auto_leaves_out_a_runtime_whose_image_level_networks_differ(repository: Path) -> None:
    """The families' graphs are checked per candidate before they are timed (here a tolerance no runtime meets)."""
    from fashionbox.contract.labels import LabelMap
    from fashionbox.converter import _comparison_inputs
    from fashionbox.converter.cpu_runtimes import BranchProbe, choose_cpu_runtime

    manifest = json.loads((repository / contract.MANIFEST_FILE).read_text())
    embedder = manifest["image_models"]["embedder"]
    probe = BranchProbe("embedder", repository / contract.EMBEDDER_MODEL / "1" / "model.onnx",
                        contract.ONNX_EMBEDDER_OUTPUT, embedder["size"], embedder["view"]["height"],
                        embedder["view"]["width"])
    labels = LabelMap.load(repository / "labels.json")
    tolerance = {**ConvertOptions(out=Path("unused")).tolerance, "embeddings": -1.0}
    choice = choose_cpu_runtime(repository / contract.DETECTOR_MODEL / "1" / "model.onnx",
                                repository / contract.ATTRIBUTES_MODEL / "1" / "model.onnx",
                                *_comparison_inputs(320, 96, 2, labels), allow_bf16=False, tolerance=tolerance,
                                max_detections=manifest["export"]["nms"]["max_detections"],
                                num_attribute_labels=labels.num_attribute_labels, rounds=1, branches=[probe])

    assert "embedder: embeddings" in choice.record["excluded"]["openvino/fp32"]
    assert set(choice.record["timings_ms"]) == {"onnxruntime/fp32"} and choice.runtime == "onnxruntime"
    assert "embedder_b9" in choice.record["timings_ms"]["onnxruntime/fp32"]
    assert choice.record["measured"].endswith("+ embedder batch 9")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with CUDA and an NVIDIA GPU")
def test_on_the_gpu_the_families_answer_as_their_graphs_on_the_cpu(
        server: TritonServer, folders: dict[str, Path], triton_server: Any,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The GPU profile without TensorRT (``--target gpu --runtime torch``): classifier and embedder in
    PyTorch on CUDA (fp16), against the ONNX graphs on the CPU server."""
    repository = _convert_with_families(folders, tmp_path_factory.mktemp("families-gpu") / "repo", target="gpu",
                                        runtime="torch")
    gpu_server = triton_server(repository)
    with FashionClient(str(server.endpoints.grpc)) as cpu_client, \
            FashionClient(str(gpu_server.endpoints.grpc)) as gpu_client:
        for _, png in _photos():
            expected, served = cpu_client.detect(png), gpu_client.detect(png)
            assert served.labels[0].label == expected.labels[0].label
            assert served.embedding is not None and expected.embedding is not None
            assert float(served.embedding @ expected.embedding) >= 0.99  # fp16 on the GPU
    log = gpu_server.log_path.read_text() if gpu_server.log_path is not None else ""
    assert "classifier" in log and "on cuda:0" in log


def test_the_catalog_web_page_searches_by_words_through_the_text_tower(server: TritonServer) -> None:
    """With a text tower served, the catalog's web page offers a words box and ranks photos by the words as
    ``Catalog.search_text`` does (the default model has none: ``tests/test_catalog_integration.py``)."""
    import re
    import urllib.parse
    import urllib.request

    from catalog_collection import scratch_catalog_folder, serve_web

    from fashionbox.catalog import Catalog, Database, Indexer
    from fashionbox.catalog.web import WebSettings, create_app

    url = str(server.endpoints.grpc)
    with scratch_catalog_folder("fashionbox-catalog-words-") as folder:
        photos = folder / "photos"
        photos.mkdir()
        for i, (_, png) in enumerate(_photos()[:3]):
            (photos / f"{i}.png").write_bytes(png)
        db = Database.open(catalog=folder / "catalog")
        with FashionClient(url) as client:
            assert Indexer(db, client).index_folder(photos).indexed == 3
            vector, model = client.embed_text([PHRASES[0]])[0], client.text_model()
        expected = [hit.image for hit in Catalog(db).search_text(vector, model=model, limit=48)]
        assert len(expected) == 3  # every photo has garments with vectors of the text tower's model
        with serve_web(create_app(db, WebSettings(url=url))) as web:
            with urllib.request.urlopen(f"{web}/", timeout=30) as response:
                page = response.read().decode()
            with urllib.request.urlopen(f"{web}/?{urllib.parse.urlencode({'text': PHRASES[0]})}", timeout=30) as r:
                shown = re.findall(r'data-image="([^"]+)"', r.read().decode())
        assert 'id="text"' in page
        assert shown == expected
        assert shown != re.findall(r'data-image="([^"]+)"', page)  # not the browsing order (newest first)
