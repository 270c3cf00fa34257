"""Expected calibration error of detection scores (fashionbox.commands.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from fashionbox.commands.calibration import (
    apply_platt,
    detection_outcomes,
    expected_calibration_error,
    fit_platt,
    reliability_table,
)
from fashionbox.commands.evaluation import EvalSample, GroundTruth, Prediction


def test_a_calibrated_set_has_zero_error() -> None:
    # 4 at 0.25 with 1 right, 2 at 0.5 with 1 right, 5 at 1.0 all right.
    scores = [0.25] * 4 + [0.5] * 2 + [1.0] * 5
    correct = [1, 0, 0, 0] + [1, 0] + [1] * 5
    assert expected_calibration_error(scores, correct, bins=10) == pytest.approx(0.0, abs=1e-12)


def test_error_is_the_count_weighted_gap_between_accuracy_and_confidence() -> None:
    # Bin (0.8, 0.9]: 4 detections at 0.9, 1 right: gap 0.65. Bin (0.2, 0.3]: 2 at 0.3, both right: gap 0.7.
    scores = [0.9] * 4 + [0.3] * 2
    correct = [1, 0, 0, 0, 1, 1]
    expected = 4 / 6 * abs(0.25 - 0.9) + 2 / 6 * abs(1.0 - 0.3)
    assert expected_calibration_error(scores, correct, bins=10) == pytest.approx(expected)


def test_one_bin_compares_the_mean_confidence_with_the_accuracy() -> None:
    assert expected_calibration_error([0.2, 0.6, 1.0], [1, 1, 0], bins=1) == pytest.approx(abs(2 / 3 - 0.6))


def test_a_confident_wrong_detector_has_error_near_its_confidence() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.9, 1.0, 1000)
    assert expected_calibration_error(scores, np.zeros(1000), bins=15) == pytest.approx(scores.mean())


def test_bin_edges_belong_to_the_lower_bin_and_zero_to_the_first() -> None:
    table = reliability_table([0.0, 0.1, 0.1000001, 0.5], [0, 1, 1, 0], bins=10)
    assert [(round(r["low"], 2), r["count"]) for r in table] == [(0.0, 2), (0.1, 1), (0.4, 1)]


def test_nothing_to_measure_is_zero_error() -> None:
    assert expected_calibration_error([], [], bins=15) == 0.0
    assert reliability_table([], [], bins=15) == []


@pytest.mark.parametrize(("scores", "correct", "bins", "message"), [
    ([0.5, 0.6], [1], 10, "outcomes"),
    ([1.5], [1], 10, r"\[0, 1\]"),
    ([float("nan")], [1], 10, "finite"),
    ([0.5], [2], 10, "0 or 1"),
    ([0.5], [1], 0, "bins"),
])
def test_bad_inputs_are_refused(scores: list[float], correct: list[int], bins: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(scores, correct, bins=bins)


def _sample(*truth: tuple[tuple[float, float, float, float], str]) -> EvalSample:
    return EvalSample("s", b"", 100, 100, tuple(GroundTruth(box, category, {}) for box, category in truth))


def test_a_detection_is_right_with_the_same_category_at_iou_half_and_each_garment_counts_once() -> None:
    sample = _sample(((0, 0, 50, 50), "pants"), ((60, 60, 90, 90), "shoe"))
    predictions = [
        Prediction((0, 0, 50, 50), "pants", 0.9),      # right
        Prediction((1, 1, 50, 50), "pants", 0.8),      # a duplicate of a garment already matched
        Prediction((60, 60, 90, 90), "skirt", 0.7),    # right place, wrong category
        Prediction((60, 60, 80, 80), "shoe", 0.6),     # IoU 400/900 < 0.5
        Prediction((60, 60, 88, 90), "shoe", 0.5),     # IoU 840/900: right
    ]
    scores, correct = detection_outcomes([sample], [predictions])

    assert scores.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert correct.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_outcomes_need_one_prediction_list_per_sample() -> None:
    with pytest.raises(ValueError, match="prediction lists"):
        detection_outcomes([_sample()], [])


def test_platt_scaling_recovers_a_known_miscalibration_and_lowers_the_error() -> None:
    rng = np.random.default_rng(1)
    true_p = rng.uniform(0.05, 0.95, 20000)
    correct = (rng.random(20000) < true_p).astype(float)
    # An overconfident detector: logit(score) = 2 * logit(p) + 0.5.
    scores = 1 / (1 + np.exp(-(2 * np.log(true_p / (1 - true_p)) + 0.5)))
    a, b = fit_platt(scores, correct)

    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-0.25, abs=0.05)
    before = expected_calibration_error(scores, correct)
    after = expected_calibration_error(apply_platt(scores, a, b), correct)
    assert after < 0.02 < before
    with pytest.raises(ValueError, match="no detections"):
        fit_platt([], [])
