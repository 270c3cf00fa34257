"""Known answers for the metrics behind the quality bars (fashionbox.commands.evaluation).

Every expected number is worked out by hand in the comment beside it. Boxes are (x1, y1, x2, y2)
pixels; one truth ``T`` is the 10x10 box at the origin (area 100), so a prediction (0, 0, 10, h)
has IoU h/10 with it, exactly in floating point for the heights used here.

COCO AP (faster-coco-eval, the COCO definition): detections sorted by score, precision made
monotone from the right, read at the 101 recall points 0, 0.01, ..., 1; averaged over the IoU
thresholds 0.5, 0.55, ..., 0.95 (``bbox_map``) or at 0.5 only (``bbox_map50``), then over the
categories that have truth. Crowd annotations are not handled: every truth is written with
``iscrowd`` 0, so there is no crowd case to test.
"""

from __future__ import annotations

import math

import pytest

from fashionbox.commands.evaluation import (
    IMATERIALIST_IOUS,
    SCORE_TOLERANCE,
    EvalSample,
    GroundTruth,
    Prediction,
    attribute_accuracy,
    attribute_f1,
    coco_metrics,
    compare_fidelity,
    evaluate,
    imaterialist_score,
)
from fashionbox.contract.labels import default_label_map

LABELS = default_label_map()
T = GroundTruth((0, 0, 10, 10), "dress", {"sleeve length": "sleeveless"})
FAR = (50.0, 50.0, 60.0, 60.0)
"""A box that overlaps nothing at the origin."""


def _sample(*truth: GroundTruth) -> EvalSample:
    return EvalSample("x", b"", 100, 100, truth)


def _pred(box: tuple[float, float, float, float], score: float = 0.9, category: str = "dress",
          **attributes: str) -> Prediction:
    return Prediction(box, category, score, {k.replace("_", " "): v for k, v in attributes.items()})


EXACT = _pred((0, 0, 10, 10))


def test_the_iou_thresholds_are_the_ten_from_0_5_to_0_95() -> None:
    assert IMATERIALIST_IOUS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


# -- COCO mAP ------------------------------------------------------------------------------------------


def test_coco_perfect_prediction_is_1() -> None:
    # One truth, one exact prediction: precision 1 at every recall point, at every IoU -> 1.
    assert coco_metrics([_sample(T)], [[EXACT]], LABELS) == {"bbox_map": 1.0, "bbox_map50": 1.0}


def test_coco_no_predictions_is_0() -> None:
    # Nothing detected: recall 0 everywhere -> AP 0 (answered without running the evaluator).
    assert coco_metrics([_sample(T)], [[]], LABELS) == {"bbox_map": 0.0, "bbox_map50": 0.0}


def test_coco_one_miss_of_two_is_51_of_101() -> None:
    # Two truths, one found: precision 1 up to recall 0.5, nothing beyond. Of the 101 recall
    # points 0, 0.01, ..., 0.50 (51 points) read precision 1, the other 50 read 0 -> 51/101.
    samples = [_sample(T, GroundTruth((50, 50, 70, 70), "dress", {}))]
    metrics = coco_metrics(samples, [[EXACT]], LABELS)
    assert metrics["bbox_map"] == pytest.approx(51 / 101)
    assert metrics["bbox_map50"] == pytest.approx(51 / 101)


def test_coco_a_false_positive_ranked_below_the_hit_costs_nothing() -> None:
    # Ranked: TP (0.9) -> recall 1, precision 1; then FP (0.5) -> precision 1/2 at the same
    # recall. Monotone from the right, precision at every recall point is 1 -> AP 1.
    metrics = coco_metrics([_sample(T)], [[EXACT, _pred(FAR, score=0.5)]], LABELS)
    assert metrics == {"bbox_map": 1.0, "bbox_map50": 1.0}


def test_coco_a_false_positive_ranked_above_the_hit_halves_ap() -> None:
    # Ranked: FP (0.95) -> recall 0, precision 0; then TP (0.9) -> recall 1, precision 1/2.
    # Every recall point 0..1 reads the best precision at or beyond it: 1/2 -> AP 0.5.
    metrics = coco_metrics([_sample(T)], [[EXACT, _pred(FAR, score=0.95)]], LABELS)
    assert metrics == {"bbox_map": 0.5, "bbox_map50": 0.5}


def test_coco_ties_in_score_keep_the_order_given() -> None:
    # Equal scores: the stable sort keeps the given order, so the two cases above reappear:
    # hit first -> 1, false positive first -> 0.5. (Ties are rare with real float scores, but
    # the result must not depend on anything but the input.)
    tie = _pred(FAR, score=0.9)
    assert coco_metrics([_sample(T)], [[EXACT, tie]], LABELS)["bbox_map"] == 1.0
    assert coco_metrics([_sample(T)], [[tie, EXACT]], LABELS)["bbox_map"] == 0.5


@pytest.mark.parametrize(("height", "expected_map"), [
    (5.0, 0.1),   # IoU 50/100 = 0.5 exactly: a hit at 0.5 only -> 1 of 10 thresholds
    (7.5, 0.6),   # IoU 0.75 exactly: hits at 0.5, 0.55, 0.6, 0.65, 0.7, 0.75 -> 6 of 10
])
def test_coco_iou_exactly_at_a_threshold_counts_as_a_hit(height: float, expected_map: float) -> None:
    metrics = coco_metrics([_sample(T)], [[_pred((0, 0, 10, height))]], LABELS)
    assert metrics["bbox_map"] == pytest.approx(expected_map)
    assert metrics["bbox_map50"] == 1.0


def test_coco_averages_over_categories_and_counts_truth_the_model_cannot_name() -> None:
    # dress: found -> AP 1. "cape" (not in the label map) has truth and no prediction -> AP 0.
    # Categories without truth are left out of the mean -> (1 + 0) / 2 = 0.5.
    samples = [_sample(T, GroundTruth((50, 50, 70, 70), "cape", {}))]
    assert coco_metrics(samples, [[EXACT]], LABELS) == {"bbox_map": 0.5, "bbox_map50": 0.5}


def test_coco_a_wrong_category_is_a_miss_and_a_false_positive() -> None:
    # The box is exact but says "skirt": dress has truth and no hit -> AP 0; skirt has no truth
    # and is left out of the mean -> 0.
    assert coco_metrics([_sample(T)], [[_pred((0, 0, 10, 10), category="skirt")]], LABELS)["bbox_map"] == 0.0


# -- iMaterialist: mean over IoU thresholds of TP / (TP + FP + FN) -------------------------------------------


def test_imaterialist_perfect_is_1() -> None:
    # TP 1, FP 0, FN 0 at every threshold -> 1/1.
    assert imaterialist_score([_sample(T)], [[EXACT]]) == 1.0


def test_imaterialist_no_predictions_is_0() -> None:
    # TP 0, FP 0, FN 1 -> 0/1 at every threshold.
    assert imaterialist_score([_sample(T)], [[]]) == 0.0


def test_imaterialist_one_miss_of_two_is_one_half() -> None:
    # TP 1, FP 0, FN 1 -> 1/2 at every threshold.
    samples = [_sample(T, GroundTruth((50, 50, 70, 70), "dress", {}))]
    assert imaterialist_score(samples, [[EXACT]]) == pytest.approx(0.5)


def test_imaterialist_one_false_positive_is_one_half_whatever_its_score() -> None:
    # TP 1, FP 1, FN 0 -> 1/2; unlike AP, the score's rank does not matter.
    assert imaterialist_score([_sample(T)], [[EXACT, _pred(FAR, score=0.5)]]) == pytest.approx(0.5)
    assert imaterialist_score([_sample(T)], [[EXACT, _pred(FAR, score=0.95)]]) == pytest.approx(0.5)


def test_imaterialist_a_prediction_without_truth_is_0_and_empty_images_are_skipped() -> None:
    # Image 1: TP 0, FP 1, FN 0 -> 0. Image 2: no truth, no predictions -> skipped, not 1 or 0.
    assert imaterialist_score([_sample(), _sample()], [[EXACT], []]) == 0.0
    # Image 1 perfect (1), image 2 skipped -> mean over one image = 1.
    assert imaterialist_score([_sample(T), _sample()], [[EXACT], []]) == 1.0
    assert math.isnan(imaterialist_score([_sample()], [[]]))


def test_imaterialist_averages_images_not_detections() -> None:
    # Image 1: 1 (perfect). Image 2: 3 truths, 1 found -> 1/3. Mean of images: (1 + 1/3) / 2 = 2/3,
    # not the pooled 2 / (2 + 0 + 2) = 1/2.
    crowded = _sample(T, GroundTruth((20, 20, 30, 30), "dress", {}), GroundTruth((40, 40, 50, 50), "dress", {}))
    assert imaterialist_score([_sample(T), crowded], [[EXACT], [EXACT]]) == pytest.approx(2 / 3)


@pytest.mark.parametrize(("height", "expected"), [
    (5.0, 0.1),   # IoU 0.5 exactly: TP at 0.5 (1/1); at the other 9, TP 0, FP 1, FN 1 -> 0/2. 1/10.
    (7.0, 0.5),   # IoU 0.7 exactly: TP at 0.5, 0.55, 0.6, 0.65, 0.7 -> 5/10.
    (7.5, 0.6),   # IoU 0.75 exactly: 6 thresholds -> 6/10.
])
def test_imaterialist_iou_exactly_at_a_threshold_is_a_true_positive(height: float, expected: float) -> None:
    assert imaterialist_score([_sample(T)], [[_pred((0, 0, 10, height))]]) == pytest.approx(expected)


def test_imaterialist_score_ties_give_the_same_counts_in_either_order() -> None:
    # A (IoU 0.6) and B (exact) tie at 0.9. Whichever is taken first, exactly one matches T at
    # every threshold (A up to 0.6, B above it): TP 1, FP 1, FN 0 -> 1/2 at every threshold.
    a, b = _pred((0, 0, 10, 6)), _pred((0, 0, 10, 10))
    assert imaterialist_score([_sample(T)], [[a, b]]) == pytest.approx(0.5)
    assert imaterialist_score([_sample(T)], [[b, a]]) == pytest.approx(0.5)


def test_imaterialist_categories_must_agree() -> None:
    # Exact box, other category: TP 0, FP 1, FN 1 -> 0.
    assert imaterialist_score([_sample(T)], [[_pred((0, 0, 10, 10), category="skirt")]]) == 0.0


# -- attribute accuracy and F1 ------------------------------------------------------------------------------


def test_attribute_accuracy_perfect_counts_only_the_groups_the_truth_has() -> None:
    # One matched garment whose truth has "sleeve length" only: 1/1 there; other groups have no
    # matched truth -> NaN with 0 matched (extra predicted groups are not scored).
    pred = _pred((0, 0, 10, 10), sleeve_length="sleeveless", neckline_type="v-neck")
    accuracy = attribute_accuracy([_sample(T)], [[pred]], LABELS)
    assert accuracy["sleeve length"] == {"accuracy": 1.0, "matched": 1}
    assert accuracy["neckline type"]["matched"] == 0 and math.isnan(accuracy["neckline type"]["accuracy"])


def test_attribute_accuracy_without_predictions_has_nothing_matched() -> None:
    accuracy = attribute_accuracy([_sample(T)], [[]], LABELS)
    assert accuracy["sleeve length"]["matched"] == 0 and math.isnan(accuracy["sleeve length"]["accuracy"])


def test_attribute_accuracy_one_wrong_of_two_is_one_half_and_a_missing_label_is_wrong() -> None:
    # Garment 1 right, garment 2 predicted without the group (None != label) -> 1/2.
    second = GroundTruth((50, 50, 70, 70), "dress", {"sleeve length": "wrist-length"})
    preds = [_pred((0, 0, 10, 10), sleeve_length="sleeveless"), _pred((50, 50, 70, 70))]
    assert attribute_accuracy([_sample(T, second)], [preds], LABELS)["sleeve length"] == {"accuracy": 0.5,
                                                                                          "matched": 2}


def test_attribute_accuracy_matches_at_iou_exactly_0_5_but_not_below() -> None:
    # IoU 0.5 exactly matches (>=): 1/1. IoU 0.49: no match -> nothing counted.
    at = attribute_accuracy([_sample(T)], [[_pred((0, 0, 10, 5), sleeve_length="sleeveless")]], LABELS)
    assert at["sleeve length"] == {"accuracy": 1.0, "matched": 1}
    below = attribute_accuracy([_sample(T)], [[_pred((0, 0, 10, 4.9), sleeve_length="sleeveless")]], LABELS)
    assert below["sleeve length"]["matched"] == 0


def test_attribute_accuracy_score_ties_take_the_first_given() -> None:
    # Two exact boxes tie at 0.9 for one truth; the stable sort gives it to the first listed, and
    # the second finds the truth used. Right label first -> 1/1; wrong label first -> 0/1.
    right = _pred((0, 0, 10, 10), sleeve_length="sleeveless")
    wrong = _pred((0, 0, 10, 10), sleeve_length="wrist-length")
    assert attribute_accuracy([_sample(T)], [[right, wrong]], LABELS)["sleeve length"]["accuracy"] == 1.0
    assert attribute_accuracy([_sample(T)], [[wrong, right]], LABELS)["sleeve length"]["accuracy"] == 0.0
    # A higher score wins regardless of order: wrong (0.8) listed first, right (0.9) takes the truth.
    lower = _pred((0, 0, 10, 10), score=0.8, sleeve_length="short (length)")
    assert attribute_accuracy([_sample(T)], [[lower, right]], LABELS)["sleeve length"]["accuracy"] == 1.0


def test_attribute_f1_perfect_is_1_over_the_labels_seen() -> None:
    # One garment, sleeveless right: sleeveless tp 1 -> F1 1; the other four labels have
    # tp + fp + fn = 0 and are left out of the macro mean -> 1.
    f1 = attribute_f1([_sample(T)], [[_pred((0, 0, 10, 10), sleeve_length="sleeveless")]], LABELS)
    assert f1["sleeve length"] == {"f1": 1.0, "matched": 1}


def test_attribute_f1_without_predictions_is_nan_with_nothing_matched() -> None:
    f1 = attribute_f1([_sample(T)], [[]], LABELS)
    assert f1["sleeve length"]["matched"] == 0 and math.isnan(f1["sleeve length"]["f1"])


def test_attribute_f1_macro_over_three_labels() -> None:
    # Truth / predicted: sleeveless/sleeveless, sleeveless/short (length), short (length)/short (length).
    #   sleeveless:     tp 1, fp 0, fn 1 -> 2/(2+0+1) = 2/3
    #   short (length): tp 1, fp 1, fn 0 -> 2/(2+1+0) = 2/3
    # Macro over the two labels seen: 2/3. (Accuracy on the same garments: 2/3 as well.)
    truths = [GroundTruth((0, 0, 10, 10), "dress", {"sleeve length": t})
              for t in ("sleeveless", "sleeveless", "short (length)")]
    said = ("sleeveless", "short (length)", "short (length)")
    samples = [_sample(t) for t in truths]
    preds = [[_pred((0, 0, 10, 10), sleeve_length=p)] for p in said]
    assert attribute_f1(samples, preds, LABELS)["sleeve length"] == {"f1": pytest.approx(2 / 3), "matched": 3}
    assert attribute_accuracy(samples, preds, LABELS)["sleeve length"]["accuracy"] == pytest.approx(2 / 3)


def test_attribute_f1_a_prediction_of_the_wrong_category_is_not_matched() -> None:
    f1 = attribute_f1([_sample(T)], [[_pred((0, 0, 10, 10), category="skirt", sleeve_length="sleeveless")]],
                      LABELS)
    assert f1["sleeve length"]["matched"] == 0


# -- served vs reference fidelity ---------------------------------------------------------------------------


def test_fidelity_of_identical_predictions_is_identical() -> None:
    preds = [[_pred((0, 0, 10, 10), score=0.8, sleeve_length="sleeveless")]]
    report = compare_fidelity(preds, preds, score_threshold=0.3)
    assert report.identical
    assert (report.matched, report.max_box_diff_px, report.max_score_diff, report.score_mismatches) == (1, 0.0, 0.0, 0)


def test_fidelity_reports_a_paired_score_beyond_the_tolerance() -> None:
    # Same box, category and labels; the served score is 0.01 off (10x the default 1e-3).
    served = [[_pred((0, 0, 10, 10), score=0.81)]]
    reference = [[_pred((0, 0, 10, 10), score=0.80)]]
    report = compare_fidelity(served, reference, score_threshold=0.3)
    assert report.matched == 1 and report.category_mismatches == 0 and report.max_box_diff_px == 0.0
    assert report.max_score_diff == pytest.approx(0.01)
    assert report.score_mismatches == 1
    assert report.unexplained_differences == 1
    assert not report.identical


def test_fidelity_score_tolerance_is_a_parameter_and_its_bound_is_inclusive() -> None:
    # 0.75 - 0.5 = 0.25 exactly in binary: at a tolerance of 0.25 it passes, just below it fails.
    served, reference = [[_pred((0, 0, 10, 10), score=0.75)]], [[_pred((0, 0, 10, 10), score=0.5)]]
    at = compare_fidelity(served, reference, score_threshold=0.3, score_tolerance=0.25)
    assert at.score_mismatches == 0 and at.identical and at.max_score_diff == 0.25
    below = compare_fidelity(served, reference, score_threshold=0.3, score_tolerance=0.2499)
    assert below.score_mismatches == 1 and not below.identical


def test_fidelity_scores_within_the_default_tolerance_pass_but_are_recorded() -> None:
    assert SCORE_TOLERANCE == 1e-3
    served = [[_pred((0, 0, 10, 10), score=0.8005), _pred(FAR, score=0.6)]]
    reference = [[_pred((0, 0, 10, 10), score=0.8), _pred(FAR, score=0.6)]]
    report = compare_fidelity(served, reference, score_threshold=0.3)
    assert report.identical and report.matched == 2 and report.score_mismatches == 0
    assert report.max_score_diff == pytest.approx(5e-4)


def test_fidelity_unpaired_detections_near_the_threshold_are_ties_not_score_mismatches() -> None:
    # The reference keeps a box at 0.3005 (within 1e-3 of the 0.3 threshold) that the served side
    # dropped: a threshold tie. One far from the threshold (0.6) would be unexplained.
    reference = [[_pred((0, 0, 10, 10), score=0.3005)]]
    report = compare_fidelity([[]], reference, score_threshold=0.3)
    assert (report.threshold_ties, report.unexplained_differences, report.score_mismatches) == (1, 0, 0)
    missing = compare_fidelity([[]], [[_pred((0, 0, 10, 10), score=0.6)]], score_threshold=0.3)
    assert missing.unexplained_differences == 1 and not missing.identical


# -- the report ---------------------------------------------------------------------------------------------


def test_evaluate_puts_the_known_answers_together() -> None:
    # One image, truth T, predictions: exact (0.9, right label) and a false positive above it (0.95).
    # AP: 0.5 (the FP ranks first); iMaterialist: 1/2; attribute accuracy and F1: 1 on 1 garment.
    report = evaluate([_sample(T)], [[_pred((0, 0, 10, 10), sleeve_length="sleeveless"), _pred(FAR, 0.95)]],
                      LABELS)
    assert report["images"] == 1 and report["detections"] == 2
    assert report["bbox_map"] == 0.5 and report["bbox_map50"] == 0.5
    assert report["imaterialist_score"] == pytest.approx(0.5)
    assert report["attribute_accuracy"]["sleeve length"] == 1.0
    assert report["attribute_matched"]["sleeve length"] == 1
    assert report["attribute_f1"]["sleeve length"] == 1.0
