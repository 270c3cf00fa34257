"""`fashionbox train --coco`: training on a Fashionpedia-format export of generated scenes.

The export is ``write_coco_dataset``'s (Fashionpedia's layout, with ``attribute_ids``). Bad files are
refused with the record at fault named; a short run from the shipped weights lowers the loss on the
images it trained on, checkpoints, resumes, and an Optuna search writes its trials and best parameters.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fashionbox.commands.cli import main
from fashionbox.contract.labels import default_label_map
from fashionbox.core.imaging import decode_image, letterbox
from fashionbox.models import (
    AttributeClassifier,
    AttributeConfig,
    default_weights,
    load_attributes,
    load_detector,
    save_checkpoint,
)
from fashionbox.models.detector import LevelHead
from fashionbox.synth import write_coco_dataset
from fashionbox.training.coco import (
    CocoDataError,
    CocoTrainSettings,
    _starting_detector,
    build_coco_arrays,
    load_coco,
    prepare,
    search_coco,
    subset_label_map,
    train_coco,
)

LABELS = default_label_map()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco_dataset(tmp_path_factory.mktemp("coco"), count=6, seed=11)


def _document(export: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(export.read_text())
    return document


def _write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def _load(path: Path, export: Path, **kw: Any) -> Any:
    return load_coco(path, export.parent / "images", LABELS, **kw)


def test_the_export_maps_categories_attributes_and_pixels_as_served(export: Path) -> None:
    data = _load(export, export)
    document = _document(export)
    assert data.garments == len(document["annotations"]) > 0
    first = document["annotations"][0]
    image = data.images[0]
    assert LABELS.categories[int(image.classes[0])].name == document["categories"][first["category_id"] - 1]["name"]
    for j, group in enumerate(LABELS.attribute_groups):  # attribute_ids decode to the readable labels
        label = first["attributes"].get(group.name)
        assert image.attributes[0, j] == (-1 if label is None else group.labels.index(label))
    arrays = build_coco_arrays(data, 320)
    pixels, info = letterbox(decode_image(image.path.read_bytes(), target_size=320), 320)
    assert np.array_equal(arrays.pixels[0], pixels)
    assert np.allclose(arrays.boxes[: len(image.classes)], info.to_letterbox(image.boxes))


def test_an_annotation_without_a_groups_id_is_not_trained_on_that_group(export: Path, tmp_path: Path) -> None:
    document = _document(export)
    document["annotations"][0]["attribute_ids"] = []
    data = _load(_write(tmp_path, document), export)
    assert (data.images[0].attributes[0] == -1).all()


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: "", "the annotation file is empty"),
    (lambda d: '{"images": [', "not valid JSON: Expecting value at line 1, column 13"),
    (lambda d: [], "must be a JSON object"),
    (lambda d: {**d, "annotations": {"a": 1}}, "annotations: must be a list"),
    (lambda d: d["annotations"][1].update(bbox="10,10,5,5"), "annotation id 2 (annotations[1]): 'bbox' must be"),
    (lambda d: d["annotations"][0].update(category_id="3"), "annotation id 1 (annotations[0]): 'category_id' must be"),
    (lambda d: d["annotations"][0].update(attribute_ids=[1.5]), "'attribute_ids' must be a list of integers"),
    (lambda d: d["annotations"][0].update(image_id=99), "image_id 99 is not in 'images'"),
    (lambda d: d["images"][0].update(width=0), "image id 1: 'width' must be positive"),
    (lambda d: d["annotations"][2].update(bbox=[5000, 10, 20, 20]), "annotation id 3 (annotations[2]): box"),
    (lambda d: d["images"][1].update(file_name="gone.jpg"), "image id 2: its file"),
])
def test_a_bad_file_is_refused_naming_the_record(export: Path, tmp_path: Path, change: Any, message: str) -> None:
    document = copy.deepcopy(_document(export))
    changed = change(document)
    with pytest.raises(CocoDataError, match=None) as info:
        _load(_write(tmp_path, document if changed is None else changed), export)
    assert message in str(info.value)


def test_a_box_partly_outside_is_clipped_with_a_warning(export: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    document = _document(export)
    width = document["images"][0]["width"]
    document["annotations"][0]["bbox"] = [width - 10, 5, 40, 30]
    with caplog.at_level(logging.WARNING):
        data = _load(_write(tmp_path, document), export)
    assert data.clipped == 1
    assert data.images[0].boxes[0].tolist() == [width - 10, 5, width, 35]
    assert "annotation id 1 (annotations[0]): box" in caplog.text and "clipped" in caplog.text


def test_unknown_categories_are_named_or_skipped_and_counted(export: Path, tmp_path: Path) -> None:
    document = _document(export)
    renamed = document["annotations"][0]["category_id"]
    document["categories"][renamed - 1]["name"] = "umbrella"
    count = sum(a["category_id"] == renamed for a in document["annotations"])
    path = _write(tmp_path, document)
    with pytest.raises(CocoDataError, match=rf"'umbrella' \({count} annotations\).*--skip-unknown"):
        _load(path, export)
    data = _load(path, export, skip_unknown=True)
    assert data.unknown_skipped == {"umbrella": count}
    assert data.garments == len(document["annotations"]) - count


def test_labels_choose_a_subset_and_the_detector_keeps_those_rows(export: Path) -> None:
    data = _load(export, export, labels=("pants", "dress"))
    assert data.label_map.category_names == ("dress", "pants")
    kept = sum(len(i.classes) for i in data.images)
    assert kept + data.not_selected == len(_document(export)["annotations"])
    settings = CocoTrainSettings(annotations=export, images=export.parent, out_dir=export.parent)
    subset = _starting_detector(settings, data.label_map)
    shipped, _ = load_detector(default_weights("detector"))
    rows = [LABELS.category_index("dress"), LABELS.category_index("pants")]
    for mine, theirs in zip(subset.heads, shipped.heads, strict=True):
        assert isinstance(mine, LevelHead) and isinstance(theirs, LevelHead)
        assert torch.equal(mine.cls.weight, theirs.cls.weight[rows])
    with pytest.raises(CocoDataError, match="'cape'"):
        subset_label_map(LABELS, ["cape"])


def test_init_hf_is_refused_with_the_reason(export: Path, tmp_path: Path) -> None:
    settings = CocoTrainSettings(annotations=export, images=export.parent / "images", out_dir=tmp_path,
                                 init="hf:microsoft/resnet-50")
    with pytest.raises(CocoDataError, match=r"transformers backbone.*not implemented.*torchvision"):
        prepare(settings, LABELS)


def test_the_cli_refuses_a_bad_file_in_one_line(export: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "")
    assert main(["train", "--coco", str(path), "--images", str(export.parent / "images"), "--out", str(tmp_path)]) == 2
    assert "the annotation file is empty" in capsys.readouterr().err
    assert main(["train", "--labels", "dress", "--out", str(tmp_path)]) == 2
    assert "--labels only apply" in capsys.readouterr().err


def test_training_on_the_export_lowers_the_loss_checkpoints_and_resumes(export: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["train", "--coco", str(export), "--images", str(export.parent / "images"), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--val-fraction", "0", "--detector-steps", "8",
            "--attribute-steps", "8", "--batch", "4", "--balance", "--threads", "2",
            "--detector-lr", "3e-4", "--attribute-lr", "3e-4"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["images_train"] == 6
    # from the shipped weights (the optimum for generated scenes in general), eight steps fit these six
    before, after = report["detector_train_loss"]
    assert after < 0.97 * before
    before, after = report["attribute_train_loss"]
    assert after < 0.8 * before
    _, labels = load_detector(out / "detector.safetensors")
    assert labels.category_names == LABELS.category_names
    from safetensors import safe_open

    with safe_open(str(out / "detector.safetensors"), framework="pt") as handle:
        assert handle.metadata()["coco_step"] == "8"
    # resume: step 9 only
    assert main([*args[:args.index("--detector-steps")], "--detector-steps", "9", "--batch", "4",
                 "--resume", "--stage", "detector"]) == 0
    with safe_open(str(out / "detector.safetensors"), framework="pt") as handle:
        assert handle.metadata()["coco_step"] == "9"


def test_the_search_writes_its_trials_and_best_parameters(export: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason="needs fashionbox-training[search] (requirements-dev.txt)")
    settings = CocoTrainSettings(annotations=export, images=export.parent / "images", out_dir=tmp_path,
                                 val_fraction=0.34, stages=("detector",), threads=1)
    result = search_coco(settings, 2, steps_per_trial=2)
    trials = json.loads(result.trials_path.read_text())
    assert len(trials) == 2 and all(t["state"] == "COMPLETE" for t in trials)
    best = json.loads(result.best_path.read_text())
    assert best["value"] == min(t["value"] for t in trials)
    assert {best["lr"], best["batch"], best["weight_decay"]} == set(result.best.values())


def _with_ellipses(document: dict[str, Any]) -> dict[str, Any]:
    """Every annotation gets a polygon: the ellipse inscribed in its box (a silhouette unlike the scenes')."""
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    for a in document["annotations"]:
        x, y, w, h = a["bbox"]
        xs, ys = x + w / 2 + w / 2 * np.cos(angles), y + h / 2 + h / 2 * np.sin(angles)
        a["segmentation"] = [np.stack([xs, ys], axis=1).reshape(-1).round(2).tolist()]
    return document


def test_compressed_rle_reads_as_pycocotools_writes_it() -> None:
    mask_utils = pytest.importorskip("pycocotools.mask", reason="needs pycocotools (requirements-dev.txt)")
    from fashionbox.contract.rle import encode_rle
    from fashionbox.training.coco import _decode_compressed_counts

    mask = np.random.default_rng(3).random((37, 53)) < 0.3
    mask[5:30, 10:40] = True
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert _decode_compressed_counts(compressed["counts"].decode()) == list(encode_rle(mask))


def test_segmentations_are_checked_and_train_the_mask_head(export: Path, tmp_path: Path) -> None:
    document = _with_ellipses(_document(export))
    bad = copy.deepcopy(document)
    bad["annotations"][1]["segmentation"] = [[1, 2, 3]]
    with pytest.raises(CocoDataError, match=r"annotation id 2 \(annotations\[1\]\): 'segmentation' polygons"):
        _load(_write(tmp_path, bad), export)
    path = _write(tmp_path, document)
    assert _load(path, export).with_masks == len(document["annotations"])
    start = tmp_path / "start"  # --init PATH: a detector checkpoint and the attribute heads beside it
    start.mkdir()
    shutil.copy(default_weights("detector"), start / "detector.safetensors")
    torch.manual_seed(0)
    base = AttributeClassifier(AttributeConfig(group_sizes=tuple(len(g.labels) for g in LABELS.attribute_groups),
                                               mask_size=16))
    save_checkpoint(start / "attributes.safetensors", base.eval(), kind="attributes",
                    config_json=base.config.to_json(), label_map=LABELS)
    settings = CocoTrainSettings(annotations=path, images=export.parent / "images", out_dir=tmp_path / "out",
                                 init=str(start / "detector.safetensors"), stages=("masks",), val_fraction=0,
                                 mask_steps=10, mask_batch=8, mask_lr=1e-2, threads=2)
    report = train_coco(settings)
    assert report.mask_train_loss is not None
    before, after = report.mask_train_loss
    assert after < 0.95 * before  # a random trunk: the head learns the ellipses' common shape
    classifier, _ = load_attributes(tmp_path / "out" / "attributes.safetensors")
    assert classifier.mask_head is not None
    for name, tensor in base.state_dict().items():  # trunk and attribute heads untouched
        if not name.startswith("mask_head."):
            assert torch.equal(tensor, classifier.state_dict()[name]), name


def test_bf16_autocast_trains_and_a_missing_gpu_is_named(export: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    settings = CocoTrainSettings(annotations=export, images=export.parent / "images", out_dir=tmp_path,
                                 stages=("detector",), amp=True, detector_steps=1, detector_batch=2, val_fraction=0,
                                 threads=2)
    report = train_coco(settings)
    assert report.detector_train_loss is not None and all(np.isfinite(report.detector_train_loss))
    assert load_detector(tmp_path / "detector.safetensors")[0].heads[0].cls.weight.dtype == torch.float32
    if not torch.cuda.is_available():
        args = ["train", "--coco", str(export), "--images", str(export.parent / "images"), "--out", str(tmp_path),
                "--device", "cuda"]
        assert main(args) == 2
        assert "--device cuda: this machine has no CUDA GPU" in capsys.readouterr().err
