"""Fashionpedia's official measure in ``fashionbox eval`` against the `fashionpedia` package's FPEval.

The same generated truth and detections go through :func:`fashionpedia_measure` and through FPEval
(``iouType="bbox"``); every summary agrees within 1e-6. The sample covers what FPEval treats apart:
categories with attributes (IoU and attribute-F1 thresholds) and without (IoU only), garment parts,
crowd truths, every area range, more than ten detections per image, and attribute sets from equal to
disjoint. Known answers by hand check the F1 the match needs.
"""

from __future__ import annotations

import io
import json
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashionbox.commands.evaluation import (
    EvalSample,
    FashionpediaObject,
    GroundTruth,
    Prediction,
    _binary_macro_f1,
    evaluate,
    fashionpedia_measure,
    fashionpedia_vocabulary,
)
from fashionbox.contract.labels import default_label_map, fashionpedia_taxonomy

VOCABULARY = fashionpedia_vocabulary()
ATTRIBUTE_IDS = [int(a["id"]) for a in fashionpedia_taxonomy()["attributes"]]


def test_the_attribute_f1_is_sklearns_macro_f1_of_the_multi_hot_vectors() -> None:
    # equal sets: F1 of "present" 1 and of "absent" 1 -> 1
    assert _binary_macro_f1(frozenset({1, 2}), frozenset({1, 2}), 10) == 1.0
    # both empty: only "absent" occurs, all 10 agree -> 1
    assert _binary_macro_f1(frozenset(), frozenset(), 10) == 1.0
    # truth {1, 2}, predicted {1}: present 2*1/(2+0+1) = 2/3; absent 2*8/(16+1+0) = 16/17
    assert _binary_macro_f1(frozenset({1, 2}), frozenset({1}), 10) == pytest.approx((2 / 3 + 16 / 17) / 2)
    # truth empty, predicted {3}: present 0; absent 2*9/(18+0+1) = 18/19
    assert _binary_macro_f1(frozenset(), frozenset({3}), 10) == pytest.approx(9 / 19)


def _scene(rng: np.random.Generator, categories: list[int], crowd: bool
           ) -> tuple[list[FashionpediaObject], list[FashionpediaObject]]:
    truth, detections = [], []
    for _ in range(int(rng.integers(0, 7))):
        side = float(rng.choice([12.0, 40.0, 150.0])) * float(rng.uniform(0.8, 1.3))
        x, y = (float(v) for v in rng.uniform(0, 400, 2))
        box = (x, y, x + side * float(rng.uniform(0.6, 1.4)), y + side)
        attributes = frozenset(int(a) for a in rng.choice(ATTRIBUTE_IDS, int(rng.integers(0, 5)), replace=False))
        category = int(rng.choice(categories))
        truth.append(FashionpediaObject(box, category, attributes, iscrowd=crowd and rng.random() < 0.1))
        for _ in range(int(rng.integers(0, 3))):  # detections near it, with more or fewer attributes
            jitter = rng.normal(0, side * 0.12, 4)
            keep = frozenset(a for a in attributes if rng.random() < 0.8)
            extra = frozenset(int(a) for a in rng.choice(ATTRIBUTE_IDS, int(rng.integers(0, 2)), replace=False))
            detections.append(FashionpediaObject(tuple(float(b + j) for b, j in zip(box, jitter, strict=True)),  # type: ignore[arg-type]
                                                 category if rng.random() < 0.9 else int(rng.choice(categories)),
                                                 keep | extra, float(rng.random())))
    for _ in range(int(rng.integers(0, 8))):  # false positives anywhere
        x, y = (float(v) for v in rng.uniform(0, 400, 2))
        side = float(rng.uniform(8, 200))
        detections.append(FashionpediaObject((x, y, x + side, y + side), int(rng.choice(categories)),
                                             frozenset({int(rng.choice(ATTRIBUTE_IDS))}), float(rng.random())))
    return truth, detections


def _fpeval(truth: list[list[FashionpediaObject]], detections: list[list[FashionpediaObject]],
            monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(np, "float", float, raising=False)  # FPEval uses np.float, gone since numpy 1.24
    fashionpedia_eval = pytest.importorskip("fashionpedia.fp_eval", reason="needs fashionpedia (requirements-dev.txt)")
    from fashionpedia.fp import Fashionpedia

    taxonomy = fashionpedia_taxonomy()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for image_id, (gts, dts) in enumerate(zip(truth, detections, strict=True), start=1):
        images.append({"id": image_id, "width": 600, "height": 600, "file_name": f"{image_id}.jpg"})
        for g in gts:
            x1, y1, x2, y2 = g.box
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": g.category_id,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": int(g.iscrowd), "attribute_ids": sorted(g.attribute_ids)})
        for d in dts:
            x1, y1, x2, y2 = d.box
            results.append({"image_id": image_id, "category_id": d.category_id, "score": d.score,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "attribute_ids": sorted(d.attribute_ids)})
    with redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's zero-division warnings, as FPEval runs them
        gt = Fashionpedia()
        gt.dataset = {"images": images, "annotations": annotations, "categories": taxonomy["categories"],
                      "attributes": taxonomy["attributes"]}
        gt.createIndex()
        evaluator = fashionpedia_eval.FPEval(gt, gt.loadRes(results), "bbox")
        evaluator.run()
    out: dict[str, Any] = dict(evaluator.results)
    out["box_only_AP"] = evaluator.resultDet["AP"]
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_the_measure_equals_fpevals_on_generated_predictions(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    label_map_ids = [c.fashionpedia_id for c in default_label_map().categories]
    categories = [*label_map_ids, 31, 33, 35]  # with garment parts: sleeve, neckline (attributes), pocket (none)
    scenes = [_scene(rng, categories, crowd=True) for _ in range(30)]
    scenes.append(([], [FashionpediaObject((0, 0, 50, 50), 0, frozenset(), 0.5 + 0.01 * k) for k in range(15)]))
    truth = [t for t, _ in scenes]
    detections = [d for _, d in scenes]
    ours = fashionpedia_measure(truth, detections, vocabulary=VOCABULARY)
    theirs = _fpeval(truth, detections, monkeypatch)
    assert set(theirs) <= set(ours)
    assert 0.05 < ours["AP"] < 0.95, "a sample that tests nothing"
    assert ours["AP"] < ours["box_only_AP"], "the attribute condition removes matches"
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(float(value), abs=1e-6), key


def test_fashionbox_eval_reports_the_measure_for_fashionpedia_files(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = default_label_map()
    sleeve = labels.group("sleeve length")
    truth = (GroundTruth((10, 10, 110, 210), "dress", {"sleeve length": "sleeveless"},
                         attribute_ids=(sleeve.fashionpedia_ids[0], 317)),
             GroundTruth((200, 20, 260, 60), "hat", {}))
    sample = EvalSample("a.jpg", b"", 400, 300, truth)
    right = Prediction((10, 10, 110, 210), "dress", 0.9,
                       {"sleeve length": "sleeveless", "textile pattern": "plain (pattern)"})
    wrong = Prediction((10, 10, 110, 210), "dress", 0.9, {"sleeve length": "wrist-length", "textile pattern": "dot"})
    hat = Prediction((200, 20, 260, 60), "hat", 0.8)
    assert evaluate([sample], [[right, hat]], labels, fashionpedia=True)["fashionpedia"]["AP"] == pytest.approx(1.0)
    report = evaluate([sample], [[wrong, hat]], labels, fashionpedia=True)["fashionpedia"]
    # the dress's attributes share nothing (F1 of "present" 0, "absent" ~0.99: below 0.5), so only the hat
    # matches; the dress weighs ten F1 slices, the hat one: AP = (0 * 10 + 1) / 11
    assert report["AP"] == pytest.approx(1 / 11)
    assert report["box_only_AP"] == pytest.approx(1.0)
    assert "fashionpedia" not in evaluate([sample], [[wrong, hat]], labels)


def test_eval_on_a_fashionpedia_file_reports_the_measure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fashionbox.commands.cli import main
    from fashionbox.synth import write_coco_dataset

    annotations = write_coco_dataset(tmp_path, count=4, seed=7)
    assert main(["eval", "--coco", str(annotations), "--images", str(tmp_path / "images"), "--reference",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    measure = report["fashionpedia"]
    # the shipped model on its own kind of scenes: most garments found with their attributes. (AP may
    # exceed box_only_AP: it weighs each category with attributes ten times, one per F1 threshold.)
    assert 0.3 < measure["AP"] <= 1.0
    assert measure["AP_IOU50_F150"] >= measure["AP_IOU75_F175"]
    assert report["bbox_map50"] > 0.3
