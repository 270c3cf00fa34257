"""The shipped model, converted and served by a real Triton, against its bars.

These tests convert the committed weights (``models/weights``), start the embedded server on
the result and talk gRPC. They hold the spine's bars: served results equal the in-process
PyTorch reference detection for detection, and quality on 200 held-out generated scenes meets
``bbox_map50 >= 0.90``, ``bbox_map >= 0.60`` and 0.90 attribute accuracy for sleeve length and
neckline type.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashionbox import contract
from fashionbox.client import FashionClient, InvalidImage
from fashionbox.commands.evaluation import (
    EvalSample,
    Prediction,
    compare_fidelity,
    evaluate,
    heldout_samples,
    predictions_from_detections,
    predictions_from_result,
)
from fashionbox.converter import ConvertOptions, convert
from fashionbox.models.pipeline import InProcessPipeline

pytestmark = pytest.mark.integration

HELDOUT_IMAGES = 200
HELDOUT_SEED = 7


@pytest.fixture(scope="session")
def default_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(ConvertOptions(out=tmp_path_factory.mktemp("default") / "model_repository")).repository


@pytest.fixture(scope="session")
def url(triton_server: Any, default_repository: Path) -> str:
    return str(triton_server(default_repository).endpoints.grpc)


@pytest.fixture(scope="session")
def heldout() -> list[EvalSample]:
    return heldout_samples(HELDOUT_IMAGES, HELDOUT_SEED)


@pytest.fixture(scope="session")
def served_predictions(url: str, heldout: list[EvalSample]) -> list[list[Prediction]]:
    with FashionClient(url) as client:
        return [predictions_from_detections(client.detect(sample.data)) for sample in heldout]


def test_served_detections_equal_the_pytorch_reference_on_200_heldout_images(
    heldout: list[EvalSample], served_predictions: list[list[Prediction]], default_repository: Path
) -> None:
    manifest = json.loads((default_repository / contract.MANIFEST_FILE).read_text())
    threshold = manifest["export"]["nms"]["score_threshold"]
    reference = InProcessPipeline.torch_reference(score_threshold=threshold)
    expected = []
    for sample in heldout:
        (result,) = reference.run([sample.data])
        assert not isinstance(result, Exception)
        expected.append(predictions_from_result(result, reference.label_map))
    report = compare_fidelity(served_predictions, expected, score_threshold=threshold)
    assert report.detections > HELDOUT_IMAGES, "the reference found too few garments to compare"
    assert report.unexplained_differences == 0, report
    assert report.max_box_diff_px <= 0.5, report


def test_served_quality_meets_the_bars_on_200_heldout_images(
    heldout: list[EvalSample], served_predictions: list[list[Prediction]], url: str
) -> None:
    with FashionClient(url) as client:
        label_map = client.labels()
    report = evaluate(heldout, served_predictions, label_map)
    assert report["bbox_map50"] >= 0.90, report
    assert report["bbox_map"] >= 0.60, report
    assert report["attribute_accuracy"]["sleeve length"] >= 0.90, report
    assert report["attribute_accuracy"]["neckline type"] >= 0.90, report


def test_a_bad_image_among_good_ones_fails_alone_with_its_message(url: str, heldout: list[EvalSample]) -> None:
    images: list[bytes] = [heldout[0].data, heldout[1].data[: len(heldout[1].data) // 3], heldout[2].data]
    with FashionClient(url) as client:
        results = client.detect_many(images)
    assert len(results[0]) > 0 and len(results[2]) > 0  # type: ignore[arg-type]
    assert isinstance(results[1], InvalidImage)
    assert "truncated" in str(results[1]) or "corrupt" in str(results[1])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fashionbox.commands.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_cli_detect_json_prints_one_object_per_image_with_boxes_in_original_pixels(
    url: str, heldout: list[EvalSample], tmp_path: Path
) -> None:
    paths = []
    for sample in heldout[:2]:
        path = tmp_path / f"{sample.name}.jpg"
        path.write_bytes(sample.data)
        paths.append(path)
    done = _cli("detect", "--url", url, "--json", "--min-score", "0.3", "--draw", str(tmp_path / "drawn"),
                *map(str, paths))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    for line, sample in zip(lines, heldout[:2], strict=True):
        assert line["detections"], line
        for detection in line["detections"]:
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 < x2 <= sample.width and 0 <= y1 < y2 <= sample.height
            assert detection["score"] >= 0.3
            for value in detection["attributes"].values():
                assert set(value) >= {"label", "score"}
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == sorted(f"{p.stem}.annotated.jpg" for p in paths)


def test_cli_detect_writes_a_coco_dataset_that_training_reads(url: str, heldout: list[EvalSample],
                                                               tmp_path: Path) -> None:
    """Pseudo-labels: the served detections as COCO, read back by ``train --coco``'s own loader as the same boxes."""
    from fashionbox.contract.labels import default_label_map
    from fashionbox.training.coco import load_coco

    paths = []
    for i, sample in enumerate(heldout[:3]):
        path = tmp_path / "photos" / ("shop" if i else "studio") / f"{sample.name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample.data)
        paths.append(path)
    out = tmp_path / "labels" / "pseudo.json"
    done = _cli("detect", "--url", url, "--min-score", "0.4", "--coco", str(out), *map(str, paths))
    assert done.returncode == 0, done.stderr
    assert f"train on them: fashionbox train --coco {out} --images {tmp_path / 'photos'}" in done.stdout
    document = json.loads(out.read_text())
    assert [image["file_name"] for image in document["images"]] == [
        p.relative_to(tmp_path / "photos").as_posix() for p in paths]
    labels = default_label_map()
    assert [c["name"] for c in document["categories"]] == list(labels.category_names)
    with FashionClient(url) as client:
        served = [client.detect(p.read_bytes()).above(0.4) for p in paths]
    assert len(document["annotations"]) == sum(len(r) for r in served) > 0
    for annotation in document["annotations"]:
        assert annotation["score"] >= 0.4 and annotation["iscrowd"] == 0
    data = load_coco(out, tmp_path / "photos", labels)
    assert data.garments == len(document["annotations"]) and data.clipped == 0
    for image, result in zip(data.images, served, strict=True):
        expected = np.array([d.box.as_list() for d in result.detections], np.float32).reshape(-1, 4)
        np.testing.assert_allclose(image.boxes, expected, atol=1e-3)
        assert [labels.category_names[c] for c in image.classes] == [d.category for d in result.detections]


def test_cli_eval_reports_coco_map_and_attribute_accuracy(url: str) -> None:
    done = _cli("eval", "--url", url, "--images", "12", "--seed", "11", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["images"] == 12
    assert 0.0 < report["bbox_map"] <= report["bbox_map50"] <= 1.0
    assert set(report["attribute_accuracy"]) == {"sleeve length", "neckline type", "textile pattern"}


def test_demo_serves_detects_draws_and_load_tests_then_exits(default_repository: Path, tmp_path: Path) -> None:
    done = _cli("demo", "--repository", str(default_repository), "--out", str(tmp_path), "--images", "2",
                "--loadtest-s", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list(tmp_path.glob("*.annotated.jpg"))) == 2
    points = json.loads((tmp_path / "loadtest.json").read_text())["points"]
    assert [p["concurrency"] for p in points] == [1, 4]
    assert all(p["throughput_rps"] > 0 and not p["errors"] for p in points)
    assert "stopping the server" in done.stdout
    assert "using the model repository" in done.stdout  # the fixture holds the shipped weights as they are
    assert "image labels (fashionbox verticals)" in done.stdout
    # the catalog step: both samples and the flipped copy indexed into the embedded PostgreSQL, the copy
    # found first among the garments like the first photo's, and grouped with its original as a duplicate
    catalog = json.loads((tmp_path / "catalog.json").read_text())
    assert catalog["indexed"] == 3 and catalog["failed"] == 0
    first = sorted(tmp_path.glob("samples/*.jpg"))[0].stem
    assert Path(catalog["similar"][0]).name == f"{first}.flipped.jpg"
    assert [sorted(Path(p).name for p in group) for group in catalog["duplicates"]] == [
        [f"{first}.flipped.jpg", f"{first}.jpg"]]


def test_the_demo_converts_again_a_repository_left_from_other_weights(default_repository: Path,
                                                                       tmp_path: Path) -> None:
    from fashionbox.commands.demo import _stale_reason

    assert _stale_reason(default_repository) == ""
    assert _stale_reason(tmp_path) == "none there yet"
    manifest = json.loads((default_repository / "manifest.json").read_text())
    manifest["sources"]["attributes"]["sha256"] = "0" * 64  # as a checkout before the mask head left it
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert _stale_reason(tmp_path) == "it was converted from other attribute weights than the shipped ones"
    (tmp_path / "manifest.json").write_text("{")
    assert _stale_reason(tmp_path) == "its manifest is unreadable"


def test_served_image_labels_and_vectors_equal_the_in_process_pipeline(
        url: str, default_repository: Path, heldout: list[EvalSample]) -> None:
    """The default model's product vertical and garment/photo embeddings, as served, against the same
    graphs in process (``InProcessPipeline.from_repository``: the whole photo as one more crop)."""
    from fashionbox.client import ImageDetections
    from fashionbox.v1 import detections_pb2

    pipeline = InProcessPipeline.from_repository(default_repository)
    assert pipeline.image_heads is not None and len(pipeline.image_heads.vertical_labels) == 7
    compared = 0
    with FashionClient(url) as client:
        for sample in heldout[:6]:
            served = client.detect(sample.data)
            (raw,) = pipeline.detections([sample.data])
            assert isinstance(raw, bytes)
            expected = ImageDetections.from_proto(detections_pb2.ImageDetections.FromString(raw))
            assert [label.label for label in served.labels] == [label.label for label in expected.labels]
            np.testing.assert_allclose([label.score for label in served.labels],
                                       [label.score for label in expected.labels], atol=1e-3)
            assert served.labels_model == "fashionbox verticals"
            assert served.embedding is not None and expected.embedding is not None
            assert served.packed_embedding is not None and served.packed_embedding.dimension == 128
            assert float(served.embedding @ expected.embedding) >= 0.999
            assert len(served) == len(expected)
            for mine, theirs in zip(served, expected, strict=True):
                assert mine.embedding is not None and theirs.embedding is not None
                assert float(mine.embedding @ theirs.embedding) >= 0.999
                compared += 1
    assert compared > 0
