"""build_image_detections: the numeric outputs of one image become a fashionbox.v1.ImageDetections."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.core.results import build_image_detections
from fashionbox.v1 import detections_pb2


@pytest.fixture(scope="module")
def labels() -> LabelMap:
    return default_label_map()


def _scores_peaking_at(labels: LabelMap, peaks: dict[str, int], peak: float = 0.7) -> npt.NDArray[np.float32]:
    """One attribute-score row: in each group, ``peak`` at the given label index, the rest shared."""
    row = np.zeros(labels.num_attribute_labels, dtype=np.float32)
    for group, start, stop in labels.group_offsets:
        width = stop - start
        row[start:stop] = (1.0 - peak) / (width - 1)
        row[start + peaks.get(group, 0)] = peak
    return row


def _build(labels: LabelMap, names: list[str], **overrides: object) -> detections_pb2.ImageDetections:
    n = len(names)
    arguments: dict[str, object] = {
        "width": 640,
        "height": 480,
        "boxes": np.array([[10 + i, 20 + i, 110 + i, 220 + i] for i in range(n)], dtype=np.float32).reshape(n, 4),
        "scores": np.linspace(0.9, 0.5, n, dtype=np.float32),
        "categories": np.array([labels.category_index(c) for c in names], dtype=np.int32),
        "attribute_scores": np.stack([_scores_peaking_at(labels, {})] * n)
        if n
        else np.zeros((0, labels.num_attribute_labels), np.float32),
        "label_map": labels,
        "model_version": "3",
    }
    arguments.update(overrides)
    return build_image_detections(**arguments)  # type: ignore[arg-type]


def test_only_the_groups_that_apply_to_the_category_are_reported(labels: LabelMap) -> None:
    message = _build(labels, ["dress", "pants", "shoe"])

    reported = [[a.group for a in d.attributes] for d in message.detections]

    assert reported == [
        ["sleeve length", "neckline type", "textile pattern"],
        ["textile pattern"],
        [],
    ]


def test_each_group_reports_its_argmax_label_with_score_and_fashionpedia_id(labels: LabelMap) -> None:
    row = _scores_peaking_at(labels, {"sleeve length": 4, "neckline type": 1, "textile pattern": 2}, peak=0.8)

    message = _build(labels, ["dress"], attribute_scores=row[None, :])

    attributes = {a.group: a for a in message.detections[0].attributes}
    assert attributes["sleeve length"].label == "wrist-length"
    assert attributes["neckline type"].label == "v-neck"
    assert attributes["textile pattern"].label == "dot"
    assert attributes["neckline type"].score == pytest.approx(0.8)
    v_neck = labels.group("neckline type")
    assert attributes["neckline type"].fashionpedia_id == v_neck.fashionpedia_ids[v_neck.labels.index("v-neck")]


def test_detections_keep_their_order_boxes_scores_and_category_ids(labels: LabelMap) -> None:
    message = _build(labels, ["shirt, blouse", "bag, wallet"])

    first, second = message.detections
    assert (first.box.x1, first.box.y1, first.box.x2, first.box.y2) == (10, 20, 110, 220)
    assert first.score == pytest.approx(0.9)
    assert second.score == pytest.approx(0.5)
    assert first.category == "shirt, blouse"
    assert first.category_index == 0
    assert first.fashionpedia_id == labels.categories[0].fashionpedia_id
    assert second.category_index == labels.category_index("bag, wallet")


def test_an_image_without_detections_still_carries_its_size_and_provenance(labels: LabelMap) -> None:
    message = build_image_detections(
        width=320,
        height=200,
        boxes=np.zeros((0, 4), np.float32),
        scores=np.zeros((0,), np.float32),
        categories=np.zeros((0,), np.int32),
        attribute_scores=np.zeros((0,), np.float32),
        label_map=labels,
        model_version="7",
        model_name="fashionbox-default",
    )

    assert (message.width, message.height) == (320, 200)
    assert list(message.detections) == []
    assert (message.model_name, message.model_version, message.label_map) == ("fashionbox-default", "7", labels.name)


def test_the_message_survives_serialization_unchanged(labels: LabelMap) -> None:
    message = _build(labels, ["dress", "hat"])

    decoded = detections_pb2.ImageDetections.FromString(message.SerializeToString())

    assert decoded == message


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("boxes", np.zeros((2, 4), np.float32), "boxes must have shape"),
        ("categories", np.zeros((3,), np.int32), "categories must have"),
        ("attribute_scores", np.zeros((1, 4), np.float32), "attribute_scores must have shape"),
        ("categories", np.array([0.0]), "categories must be integers"),
    ],
)
def test_shapes_that_disagree_are_rejected(
    labels: LabelMap, field: str, value: npt.NDArray[Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        _build(labels, ["dress"], **{field: value})


def test_a_category_outside_the_label_map_is_rejected(labels: LabelMap) -> None:
    with pytest.raises(ValueError, match="category indices"):
        _build(labels, ["dress"], categories=np.array([labels.num_categories], np.int32))
