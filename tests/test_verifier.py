"""The second stage: the attribute network's verifier head re-scores every detection by its crop.

Unit tests hold the head (never above 0, old checkpoints load, ONNX equals PyTorch) and
``rescore_detections`` (the arithmetic, the order, what is dropped, ``keep`` indexing every other
array). A tiny random detector and a tiny attribute network whose verifier vetoes a known set of
categories then go through the in-process reference, the converter and a real Triton server in both
CPU layouts: the vetoed categories disappear everywhere, every other detection keeps its score, and
the served answers equal the in-process ones. The converter serves a verifier only with the
detector it was fitted to.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from fashionbox import contract
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.export import compare_attributes, export_attributes_onnx
from fashionbox.core.postprocessing import DetectorOutput, rescore_detections
from fashionbox.models import (
    AttributeClassifier,
    AttributeConfig,
    DetectorConfig,
    FashionDetector,
    file_sha256,
    load_attributes,
    save_checkpoint,
    verifier_serves,
)
from fashionbox.models.pipeline import InProcessPipeline

torch.set_num_threads(1)

LABELS = default_label_map()
C = LABELS.num_categories
GROUPS = tuple(len(g.labels) for g in LABELS.attribute_groups)
TINY = AttributeConfig(group_sizes=GROUPS, crop_size=32, embedding=32, dropout=0.0, head_hidden=24,
                       verifier_classes=C, verifier_hidden=16)
VETOED = tuple(range(0, C, 2))
"""Categories the test verifier vetoes (offset about -40); the others it leaves alone (about 0)."""
THRESHOLD = 0.005


def _uint8(shape: tuple[int, ...], seed: int) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _vetoing(config: AttributeConfig) -> AttributeClassifier:
    torch.manual_seed(0)
    model = AttributeClassifier(config).eval()
    assert model.verifier_head is not None
    last = model.verifier_head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-40.0 if k in VETOED else 40.0 for k in range(C)]))
    return model


# -- the head ---------------------------------------------------------------------------------------------


def test_the_head_only_lowers_scores_and_leaves_every_other_output_alone() -> None:
    torch.manual_seed(1)
    model = AttributeClassifier(TINY).eval()
    crops = torch.from_numpy(_uint8((6, 32, 32, 3), 2))
    out = model.outputs(crops)
    assert list(out) == list(model.output_names) == ["probs", "score_offsets"]
    assert out["score_offsets"].shape == (6, C) and bool((out["score_offsets"] <= 0).all())
    plain = AttributeClassifier(dataclasses.replace(TINY, verifier_classes=0)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("verifier_head.")})
    torch.testing.assert_close(plain.outputs(crops)["probs"], out["probs"], rtol=0, atol=0)


def test_a_checkpoint_from_before_the_verifier_loads_without_one(tmp_path: Path) -> None:
    model = AttributeClassifier(dataclasses.replace(TINY, verifier_classes=0)).eval()
    old = json.loads(model.config.to_json())
    for key in ("verifier_classes", "verifier_hidden", "verifier_detector"):
        old.pop(key)
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, model, kind="attributes", config_json=json.dumps(old), label_map=LABELS)
    loaded, _ = load_attributes(path)
    assert loaded.verifier_head is None and "score_offsets" not in loaded.output_names


def test_the_exported_graph_gives_the_offsets_pytorch_gives(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = AttributeClassifier(TINY).eval()
    with torch.no_grad():  # spread the offsets over the range the softplus bends in
        model.verifier_head.mlp[-1].bias.normal_(0.0, 3.0)  # type: ignore[union-attr]
    path = export_attributes_onnx(model, tmp_path / "attributes.onnx", opset=17)
    report = compare_attributes(model, path, [_uint8((5, 32, 32, 3), 4), _uint8((1, 32, 32, 3), 5)])
    assert set(report.max_abs_error) == {"probs", "score_offsets"}
    assert report.max_abs_error["score_offsets"] < 1e-4, report.max_abs_error


def test_a_verifier_is_served_only_with_the_detector_it_was_fitted_to() -> None:
    model = AttributeClassifier(dataclasses.replace(TINY, verifier_detector="ab" * 32))
    assert verifier_serves(model, "ab" * 32, C)
    assert not verifier_serves(model, "cd" * 32, C)
    assert not verifier_serves(model, "ab" * 32, C + 1)
    assert not verifier_serves(AttributeClassifier(dataclasses.replace(TINY, verifier_classes=0)), "", C)
    with pytest.raises(ValueError, match="verifier_classes"):
        AttributeConfig(group_sizes=GROUPS, verifier_classes=-1)


# -- rescore_detections -----------------------------------------------------------------------------------


def _detections() -> DetectorOutput:
    return DetectorOutput(
        boxes=np.arange(16, dtype=np.float32).reshape(4, 4),
        scores=np.array([0.9, 0.8, 0.5, 0.1], np.float32),
        classes=np.array([0, 1, 2, 1], np.int32),
        mask_coeffs=np.arange(8, dtype=np.float32).reshape(4, 2),
        protos=np.ones((2, 3, 3), np.float32),
    )


def test_rescoring_adds_the_category_offset_to_the_logit_reorders_and_drops() -> None:
    offsets = np.zeros((4, 3), np.float32)
    offsets[0, 0] = -4.0  # 0.9 -> sigmoid(logit(0.9) - 4) = 0.1416
    offsets[1, 0] = -50.0  # another category's column: the detection of class 1 keeps 0.8
    offsets[2, 2] = -0.5  # 0.5 -> 0.3775
    offsets[3, 1] = -10.0  # 0.1 -> 5e-6: dropped
    row, keep = rescore_detections(_detections(), offsets, score_threshold=0.01)
    assert keep.tolist() == [1, 2, 0]
    np.testing.assert_allclose(row.scores, [0.8, 1 / (1 + np.exp(0.5)), 1 / (1 + np.exp(-(np.log(9) - 4)))],
                               rtol=1e-6)
    assert row.classes.tolist() == [1, 2, 0]
    np.testing.assert_array_equal(row.boxes, _detections().boxes[[1, 2, 0]])
    np.testing.assert_array_equal(row.mask_coeffs, _detections().mask_coeffs[[1, 2, 0]])
    assert row.protos is not None and row.scores.dtype == np.float32


def test_rescoring_with_zero_offsets_changes_nothing_and_keeps_ties_in_order() -> None:
    detections = DetectorOutput(boxes=np.zeros((3, 4), np.float32), scores=np.array([0.7, 0.7, 1.0], np.float32),
                                classes=np.zeros(3, np.int32))
    row, keep = rescore_detections(detections, np.zeros((3, 1), np.float32), score_threshold=0.3)
    assert keep.tolist() == [2, 0, 1]
    np.testing.assert_allclose(row.scores, [1.0, 0.7, 0.7], rtol=1e-6)
    empty, none = rescore_detections(DetectorOutput.empty(), np.zeros((0, 5), np.float32), score_threshold=0.3)
    assert len(empty) == 0 and none.shape == (0,)


@pytest.mark.parametrize(("offsets", "message"), [
    (np.zeros((3, 3), np.float32), r"must be \[4, C\]"),
    (np.zeros((4, 2), np.float32), "outside the verifier's 2 categories"),
])
def test_rescoring_refuses_offsets_that_do_not_fit(offsets: NDArray[np.float32], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rescore_detections(_detections(), offsets, score_threshold=0.1)


# -- through the pipeline, the converter and the server ---------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("verifier")
    torch.manual_seed(5)
    detector = FashionDetector(DetectorConfig(num_classes=C, input_size=64)).eval()
    with torch.no_grad():  # random heads put every class near 0.07: let the pixels move each class's score
        for head in detector.heads:
            head.cls.weight.normal_(0.0, 0.3)
    paths = {"detector": folder / "detector.safetensors"}
    save_checkpoint(paths["detector"], detector, kind="detector", config_json=detector.config.to_json(),
                    label_map=LABELS)
    sha = file_sha256(paths["detector"])
    for name, fitted_to in (("attributes", sha), ("other", "0" * 64)):
        model = _vetoing(dataclasses.replace(TINY, verifier_detector=fitted_to))
        paths[name] = folder / f"{name}.safetensors"
        save_checkpoint(paths[name], model, kind="attributes", config_json=model.config.to_json(), label_map=LABELS)
    return paths


def _images(count: int) -> list[bytes]:
    from fashionbox.synth import render_scene

    return [render_scene(6_000 + i, size=(160, 120)).encode(format="JPEG", quality=90) for i in range(count)]


def _triples(results: list[Any]) -> list[list[tuple[int, float, tuple[float, ...]]]]:
    return [[(int(c), float(s), tuple(float(v) for v in b))
             for c, s, b in zip(r.categories, r.scores, r.boxes, strict=True)] for r in results]


def test_the_in_process_reference_drops_what_the_verifier_vetoes(checkpoints: dict[str, Path]) -> None:
    images = _images(4)

    def run(attributes: str, verifier: bool | None) -> list[list[tuple[int, float, tuple[float, ...]]]]:
        pipeline = InProcessPipeline.torch_reference(checkpoints["detector"], checkpoints[attributes],
                                                     score_threshold=THRESHOLD, verifier=verifier)
        return _triples(pipeline.run(images))

    without, auto, forced_off = run("attributes", False), run("attributes", None), run("other", None)
    assert sum(len(r) for r in without) > 20
    assert any(c in VETOED for r in without for c, _, _ in r)
    expected = [[d for d in r if d[0] not in VETOED] for r in without]
    assert [[(c, b) for c, _, b in r] for r in auto] == [[(c, b) for c, _, b in r] for r in expected]
    for got, want in zip(auto, expected, strict=True):  # the others keep their scores (offset -4e-18)
        np.testing.assert_allclose([s for _, s, _ in got], [s for _, s, _ in want], rtol=1e-6)
    assert forced_off == without  # fitted to another detector: not served
    with pytest.raises(ValueError, match="no verifier head"):
        InProcessPipeline.torch_reference(checkpoints["detector"], verifier=True, attributes_path=_plain(checkpoints))


def _plain(checkpoints: dict[str, Path]) -> Path:
    path = checkpoints["detector"].parent / "plain.safetensors"
    if not path.exists():
        model = AttributeClassifier(dataclasses.replace(TINY, verifier_classes=0)).eval()
        save_checkpoint(path, model, kind="attributes", config_json=model.config.to_json(), label_map=LABELS)
    return path


@pytest.fixture(scope="module")
def repositories(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fashionbox.converter import ConvertOptions, convert

    folder = tmp_path_factory.mktemp("verifier-repositories")
    out = {}
    for name, attributes, layout in (("steps", "attributes", "steps"), ("fused", "attributes", "fused"),
                                     ("other", "other", "steps")):
        out[name] = convert(ConvertOptions(out=folder / name, detector=str(checkpoints["detector"]),
                                           attributes=str(checkpoints[attributes]), runtime="onnxruntime",
                                           score_threshold=THRESHOLD, compare_samples=2,
                                           repository_settings={"layout": layout})).repository
    return out


def test_the_converter_serves_the_verifier_with_its_detector_only(repositories: dict[str, Path],
                                                                  checkpoints: dict[str, Path]) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    def config(repository: Path, model: str) -> Any:
        return text_format.Parse((repository / model / "config.pbtxt").read_text(), mc.ModelConfig())

    steps = repositories["steps"]
    manifest = json.loads((steps / contract.MANIFEST_FILE).read_text())
    assert manifest["verifier"] == {"classes": C, "score_threshold": THRESHOLD,
                                    "fitted_to": file_sha256(checkpoints["detector"])}
    assert manifest["comparison"]["attributes"]["score_offsets"] < 1e-4
    attributes = config(steps, contract.ATTRIBUTES_MODEL)
    offsets = [o for o in attributes.output if o.name == contract.CROP_SCORE_OFFSETS.name]
    assert len(offsets) == 1 and list(offsets[0].dims) == [C]
    post = config(steps, contract.POSTPROCESS_MODEL).parameters
    assert post["score_offsets"].string_value == "true" and float(post["score_threshold"].string_value) == THRESHOLD
    fused = config(repositories["fused"], contract.POSTPROCESS_MODEL).parameters
    assert fused["score_offsets"].string_value == "true" and fused["attributes_inline"].string_value == "true"

    other = repositories["other"]
    manifest = json.loads((other / contract.MANIFEST_FILE).read_text())
    assert "verifier" not in manifest and "not this one" in manifest["verifier_not_served"]
    assert contract.CROP_SCORE_OFFSETS.name not in [o.name for o in config(other, contract.ATTRIBUTES_MODEL).output]
    assert config(other, contract.POSTPROCESS_MODEL).parameters["score_offsets"].string_value == "false"


def test_the_repository_in_process_drops_what_the_verifier_vetoes(repositories: dict[str, Path]) -> None:
    images = _images(4)
    verified = _triples(InProcessPipeline.from_repository(repositories["steps"]).run(images))
    plain = _triples(InProcessPipeline.from_repository(repositories["other"]).run(images))
    expected = [[d for d in r if d[0] not in VETOED] for r in plain]
    assert any(c in VETOED for r in plain for c, _, _ in r) and sum(len(r) for r in expected) > 10
    assert [[(c, b) for c, _, b in r] for r in verified] == [[(c, b) for c, _, b in r] for r in expected]
    for got, want in zip(verified, expected, strict=True):
        np.testing.assert_allclose([s for _, s, _ in got], [s for _, s, _ in want], rtol=1e-6)


@pytest.mark.integration
def test_served_answers_equal_the_in_process_ones_in_both_layouts(triton_server: Any,
                                                                  repositories: dict[str, Path]) -> None:
    from fashionbox.client import FashionClient, ImageDetections, InvalidImage

    images = _images(5)
    expected = InProcessPipeline.from_repository(repositories["steps"]).run(images)
    plain = InProcessPipeline.from_repository(repositories["other"]).run(images)
    assert sum(len(r) for r in plain) > sum(len(r) for r in expected)  # type: ignore[arg-type]
    names = LABELS.categories
    for layout in ("steps", "fused"):
        server = triton_server(repositories[layout])
        with FashionClient(server.endpoints.grpc) as client:
            results = client.detect_many([*images[:2], b"not an image", *images[2:]], max_in_flight=4)
        assert isinstance(results[2], InvalidImage)
        served = [r for i, r in enumerate(results) if i != 2]
        for got, want in zip(served, expected, strict=True):
            assert isinstance(got, ImageDetections) and not isinstance(want, Exception)
            assert [d.category for d in got.detections] == [names[int(c)].name for c in want.categories], layout
            np.testing.assert_allclose([d.score for d in got.detections], want.scores, atol=1e-5)
            scores = [d.score for d in got.detections]
            assert scores == sorted(scores, reverse=True) and all(s > THRESHOLD for s in scores)
