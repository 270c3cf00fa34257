"""A calibrated detector: the Platt map in the graph, its served threshold, and ``fashionbox calibrate``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from fashionbox.commands.calibration import (
    THRESHOLD_CANDIDATES,
    apply_platt,
    choose_threshold,
    expected_calibration_error,
    fit_detector_calibration,
    verifier_refit_command,
)
from fashionbox.commands.cli import main
from fashionbox.commands.evaluation import EvalSample, GroundTruth, Prediction
from fashionbox.contract import DEFAULT_SCORE_THRESHOLD
from fashionbox.converter import FAMILIES, ConvertOptions, family_nms
from fashionbox.converter.export import compare_detector, export_detector_onnx
from fashionbox.models import (
    DetectorConfig,
    FashionDetector,
    checkpoint_metadata,
    default_weights,
    load_detector,
    save_checkpoint,
)
from fashionbox.models.nms import NmsSettings
from fashionbox.training.coco import CocoTrainSettings, _starting_detector


def _tiny(**config: object) -> FashionDetector:
    torch.manual_seed(0)
    return FashionDetector(DetectorConfig(num_classes=3, input_size=64, **config)).eval()  # type: ignore[arg-type]


def _pixels(batch: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(3).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8))


# -- the map in the graph ------------------------------------------------------------------------------


def test_a_calibrated_detector_serves_the_platt_map_of_its_raw_scores_with_the_same_boxes() -> None:
    detector = _tiny()
    with torch.no_grad():
        raw = detector(_pixels())
        calibrated = detector.with_calibration((2.5, -0.75), 0.05)(_pixels())

    assert torch.equal(raw.boxes, calibrated.boxes) and torch.equal(raw.cls_logits, calibrated.cls_logits)
    expected = apply_platt(raw.scores.double().numpy(), 2.5, -0.75)
    assert np.abs(calibrated.scores.double().numpy() - expected).max() < 1e-5
    assert not np.allclose(calibrated.scores.numpy(), raw.scores.numpy(), atol=1e-3)
    # Monotone: the order of the candidates (what NMS and AP see) is unchanged, to float32 rounding.
    order_raw = torch.argsort(raw.scores.flatten(), stable=True)
    assert float(calibrated.scores.flatten()[order_raw].diff().min()) > -1e-6


def test_zero_and_one_stay_zero_and_one() -> None:
    from fashionbox.models.detector import calibrate_scores

    out = calibrate_scores(torch.tensor([0.0, 1.0, 0.5]), 3.0, -1.0)
    assert out[0] == 0.0 and out[1] == 1.0 and abs(float(out[2]) - 1 / (1 + np.exp(1.0))) < 1e-6
    assert not torch.isnan(out).any()


def test_the_calibration_and_threshold_travel_in_the_config_and_older_configs_read_as_uncalibrated() -> None:
    config = DetectorConfig(num_classes=3, input_size=64, score_calibration=(3.0, -1.0), score_threshold=0.02)
    again = DetectorConfig.from_json(config.to_json())
    assert again == config and again.calibrated

    older = json.loads(DetectorConfig(num_classes=3, input_size=64).to_json())
    del older["score_calibration"], older["score_threshold"]
    plain = DetectorConfig.from_json(json.dumps(older))
    assert not plain.calibrated and plain.score_threshold is None
    assert again.served_score_threshold == 0.02 and plain.served_score_threshold == DEFAULT_SCORE_THRESHOLD


@pytest.mark.parametrize(("calibration", "threshold", "message"), [
    ((0.0, 0.0), None, "a > 0"), ((-1.0, 0.0), None, "a > 0"), ((float("nan"), 0.0), None, "finite"),
    ((1.0, float("inf")), None, "finite"), ((2.0, 0.0), 1.0, "score_threshold"), ((2.0, 0.0), -0.1, "score_threshold"),
])
def test_a_decreasing_or_broken_map_or_threshold_is_refused(calibration: tuple[float, float], threshold: float | None,
                                                            message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DetectorConfig(num_classes=3, input_size=64, score_calibration=calibration, score_threshold=threshold)


def test_the_onnx_graph_serves_the_calibrated_scores_as_pytorch_does(tmp_path: Path) -> None:
    detector = _tiny().with_calibration((3.5, -1.2), 0.02)
    nms = NmsSettings(score_threshold=0.02)
    path = export_detector_onnx(detector, tmp_path / "detector.onnx", nms=nms)
    report = compare_detector(detector, path, [_pixels(3).numpy()], nms)

    assert report.max_abs_error["scores"] < 1e-5 and report.max_abs_error["nms_count_mismatch"] == 0


def test_the_converter_serves_a_calibrated_checkpoint_at_its_own_threshold_unless_told_otherwise(
        tmp_path: Path) -> None:
    family = FAMILIES["fashionbox"]()
    calibrated = _tiny().with_calibration((3.0, -1.0), 0.02)

    assert family_nms(family, ConvertOptions(out=tmp_path), calibrated).score_threshold == 0.02
    assert family_nms(family, ConvertOptions(out=tmp_path, score_threshold=0.4), calibrated).score_threshold == 0.4
    assert family_nms(family, ConvertOptions(out=tmp_path), _tiny()).score_threshold == DEFAULT_SCORE_THRESHOLD


def test_training_from_a_calibrated_checkpoint_starts_from_raw_scores(tmp_path: Path) -> None:
    detector, labels = load_detector(default_weights("detector"))
    detector.with_calibration((3.0, -1.0), 0.02)
    path = tmp_path / "calibrated.safetensors"
    save_checkpoint(path, detector, kind="detector", config_json=detector.config.to_json(), label_map=labels)
    assert load_detector(path)[0].config.calibrated

    settings = CocoTrainSettings(annotations=tmp_path / "a.json", images=tmp_path, out_dir=tmp_path, init=str(path))
    start = _starting_detector(settings, labels)
    assert not start.config.calibrated and start.config.score_threshold is None


# -- fitting -------------------------------------------------------------------------------------------


def _overconfident_set(n: int = 400) -> tuple[list[EvalSample], list[list[Prediction]]]:
    """Each image one shirt; its detector scores one right box and two wrong ones, over-confidently."""
    rng = np.random.default_rng(5)
    samples, predictions = [], []
    for i in range(n):
        samples.append(EvalSample(f"s{i}", b"", 100, 100, (GroundTruth((10, 10, 60, 60), "shirt", {}),)))
        right = float(np.clip(rng.normal(0.75, 0.12), 0.06, 0.99))
        wrong = np.clip(rng.normal(0.45, 0.15, 2), 0.06, 0.99)
        predictions.append([Prediction((10, 10, 60, 60), "shirt", right),
                            Prediction((70, 70, 95, 95), "shirt", float(wrong[0])),
                            Prediction((0, 60, 30, 95), "pants", float(wrong[1]))])
    return samples, predictions


def _kept_right(predictions: Sequence[Sequence[Prediction]]) -> float:
    """A stand-in for mAP@.5: the share of the right boxes (the first of each image) still kept."""
    return sum(1 for preds in predictions for p in preds if p.box == (10, 10, 60, 60)) / len(predictions)


def test_the_fit_lowers_the_calibration_error_and_chooses_the_highest_threshold_that_keeps_quality() -> None:
    samples, predictions = _overconfident_set()
    fit = fit_detector_calibration(samples, predictions, _kept_right)

    assert fit.a > 0 and fit.detections == 3 * len(samples)
    assert fit.ece_after < 0.05 < fit.ece_before
    assert fit.true_positive_share == pytest.approx(1 / 3, abs=1e-9)
    assert set(fit.map50_by_threshold) == set(THRESHOLD_CANDIDATES)
    assert fit.score_threshold == choose_threshold(fit.map50_by_threshold)
    best = max(fit.map50_by_threshold.values())
    higher = [t for t in THRESHOLD_CANDIDATES if t > fit.score_threshold]
    assert all(fit.map50_by_threshold[t] < best - 0.005 for t in higher)
    # The calibrated scores mean what they say: a third of the detections are right, on average.
    calibrated = apply_platt([p.score for preds in predictions for p in preds], fit.a, fit.b)
    assert float(np.mean(calibrated)) == pytest.approx(1 / 3, abs=0.02)
    assert expected_calibration_error(calibrated, [p.box == (10, 10, 60, 60) for preds in predictions
                                                   for p in preds]) < 0.05


def test_choose_threshold_takes_the_highest_within_the_tolerance() -> None:
    assert choose_threshold({0.01: 0.94, 0.02: 0.938, 0.05: 0.93, 0.1: 0.90}) == 0.02
    assert choose_threshold({0.01: 0.5}) == 0.01


def test_the_refit_command_paints_the_distractors_the_detector_was_trained_with() -> None:
    from fashionbox.synth.distractors import DEFAULT_DISTRACTOR_KINDS, DISTRACTOR_KINDS

    out, attributes = Path("d.safetensors"), Path("a.safetensors")
    base = "fashionbox train --stage verifier --verifier-detector d.safetensors --attributes-base a.safetensors"
    assert verifier_refit_command(out, attributes, "") == base  # no recipe (a calibrated import, say)
    assert verifier_refit_command(out, attributes, json.dumps({"steps": 400})) == base  # before the choice
    assert verifier_refit_command(out, attributes, json.dumps({"distractor_kinds": DEFAULT_DISTRACTOR_KINDS})) == base
    assert verifier_refit_command(out, attributes, json.dumps({"distractor_kinds": DISTRACTOR_KINDS})) == (
        base + " --distractor-kinds all")
    assert verifier_refit_command(out, attributes, json.dumps({"distractor_kinds": ["shapes", "text"]})) == (
        base + " --distractor-kinds shapes,text")
    assert verifier_refit_command(out, attributes, json.dumps({"closeups": 0.5})) == base + " --closeups 0.5"
    assert verifier_refit_command(out, attributes, json.dumps(
        {"distractor_kinds": DISTRACTOR_KINDS, "closeups": 0.25})) == base + " --distractor-kinds all --closeups 0.25"


def test_too_few_or_no_right_detections_cannot_be_fitted() -> None:
    samples, predictions = _overconfident_set(5)
    with pytest.raises(ValueError, match="too few"):
        fit_detector_calibration(samples, predictions, _kept_right)
    samples, predictions = _overconfident_set()
    wrong_only = [[p for p in preds if p.box != (10, 10, 60, 60)] for preds in predictions]
    with pytest.raises(ValueError, match="0 of them right"):
        fit_detector_calibration(samples, wrong_only, _kept_right)


# -- the command ---------------------------------------------------------------------------------------


def test_calibrate_writes_the_same_weights_with_the_fitted_map_and_threshold(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", "--out", str(out), "--seeds", "11", "--scenes", "12", "--json"]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    # the shipped attribute heads' verifier was fitted to the input detector, not to the output file
    assert report["verifier_refit_needed"] is True
    assert f"--stage verifier --verifier-detector {out}" in printed.err

    calibrated, labels = load_detector(out)
    shipped, shipped_labels = load_detector(default_weights("detector"))
    assert labels.to_json() == shipped_labels.to_json()
    assert calibrated.config.score_calibration == (report["a"], report["b"]) or np.allclose(
        calibrated.config.score_calibration, (report["a"], report["b"]), atol=1e-6)
    assert calibrated.config.score_threshold == report["score_threshold"] in THRESHOLD_CANDIDATES
    for (name, a), (_, b) in zip(calibrated.state_dict().items(), shipped.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    metadata = checkpoint_metadata(out)
    recorded = json.loads(metadata["calibration"])
    assert recorded["fitted_on"] == {"generated_seeds": [11], "images": 12}
    assert report["ece_after"] < report["ece_before"]
    # The training history stays with the weights.
    shipped_meta = checkpoint_metadata(default_weights("detector"))
    assert all(metadata[k] == v for k, v in shipped_meta.items() if k not in ("config", "calibration"))

    # Calibrating a calibrated checkpoint fits on its raw scores again: the same map.
    again = tmp_path / "again.safetensors"
    assert main(["calibrate", "--detector", str(out), "--out", str(again), "--seeds", "11", "--scenes", "12",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["a"] == pytest.approx(report["a"], abs=1e-6)


def test_calibrate_fits_on_a_coco_validation_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--out", str(tmp_path / "val"), "--count", "12", "--seed", "11"]) == 0
    capsys.readouterr()
    out = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", "--coco", str(tmp_path / "val" / "annotations.json"), "--images",
                 str(tmp_path / "val" / "images"), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["fitted_on"] == {"coco": "annotations.json", "images": 12}
    assert report["detections"] > 12 and 0 < report["true_positive_share"] < 1
    assert load_detector(out)[0].config.calibrated
    code = main(["calibrate", "--coco", str(tmp_path / "val" / "annotations.json"), "--out", str(tmp_path / "x")])
    assert code == 2 and "--coco needs the image folder: --images DIR" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", ["7", "11,1", "9"])
def test_calibrate_refuses_the_seeds_that_measure_or_trained_the_model(tmp_path: Path, seeds: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--out", str(tmp_path / "x.safetensors"), "--seeds", seeds]) == 2
    assert "CalibrationError: --seeds" in capsys.readouterr().err  # one line, no traceback
    assert not (tmp_path / "x.safetensors").exists()
