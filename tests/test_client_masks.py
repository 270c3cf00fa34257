"""The typed client's instance masks: decoding ``fashionbox.v1.Mask``, the result types, drawing.

Client-side only (fashionbox.client, fashionbox.contract, fashionbox.v1, numpy, Pillow), so it
runs in the client's oldest and newest venvs too (numpy 1.24-2.x, protobuf 4.21-6.x).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fashionbox.client import BoundingBox, Detection, ImageDetections, MaskRLE, draw_detections
from fashionbox.client._drawing import category_colour
from fashionbox.contract.rle import decode_rle, encode_rle
from fashionbox.v1 import detections_pb2

WIDTH, HEIGHT = 200, 150


def _mask() -> np.ndarray[Any, Any]:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[60:120, 50:130] = True
    mask[90, 140] = True
    return mask


def _message(with_mask: bool) -> detections_pb2.ImageDetections:
    message = detections_pb2.ImageDetections(width=WIDTH, height=HEIGHT, model_name="m", model_version="1")
    detection = message.detections.add(category="dress", category_index=10, fashionpedia_id=10, score=0.9)
    detection.box.x1, detection.box.y1, detection.box.x2, detection.box.y2 = 50, 60, 141, 120
    if with_mask:
        detection.mask.width, detection.mask.height = WIDTH, HEIGHT
        detection.mask.counts.extend(encode_rle(_mask()))
    return message


def test_a_detection_decodes_its_mask_to_a_boolean_array_at_image_size() -> None:
    result = ImageDetections.from_proto(
        detections_pb2.ImageDetections.FromString(_message(with_mask=True).SerializeToString()))
    (detection,) = result.detections
    assert detection.mask_rle is not None
    assert detection.mask_rle.area == int(_mask().sum())
    mask = detection.mask
    assert mask is not None and mask.dtype == np.bool_ and mask.shape == (HEIGHT, WIDTH)
    assert (mask == _mask()).all()


def test_a_result_without_masks_decodes_as_before_with_mask_none() -> None:
    result = ImageDetections.from_proto(_message(with_mask=False))
    (detection,) = result.detections
    assert detection.mask is None and detection.mask_rle is None
    assert "mask" not in detection.to_dict()


def test_an_older_reader_ignores_the_mask_field() -> None:
    # What a client built before Detection.mask sees: the same bytes minus the unknown field 7.
    payload = _message(with_mask=True).SerializeToString()
    stripped = detections_pb2.ImageDetections.FromString(payload)
    for detection in stripped.detections:
        detection.ClearField("mask")
    old = ImageDetections.from_proto(stripped)
    new = ImageDetections.from_proto(detections_pb2.ImageDetections.FromString(payload))
    assert old.detections[0].box == new.detections[0].box and old.detections[0].score == new.detections[0].score


def test_results_with_masks_stay_hashable_comparable_and_picklable() -> None:
    first = ImageDetections.from_proto(_message(with_mask=True))
    second = ImageDetections.from_proto(_message(with_mask=True))
    assert first == second
    assert hash(first.detections[0].mask_rle) == hash(second.detections[0].mask_rle)
    assert first != ImageDetections.from_proto(_message(with_mask=False))
    assert pickle.loads(pickle.dumps(first)) == first
    assert first.above(0.5).detections[0].mask_rle == first.detections[0].mask_rle  # filters keep masks


def test_to_dict_gives_the_mask_as_coco_rle() -> None:
    (detection,) = ImageDetections.from_proto(_message(with_mask=True)).detections
    coco = detection.to_dict()["mask"]
    assert coco["size"] == [HEIGHT, WIDTH]
    assert (decode_rle(coco["counts"], WIDTH, HEIGHT) == _mask()).all()


def test_mask_rle_refuses_counts_that_do_not_cover_the_image() -> None:
    with pytest.raises(ValueError, match="sum to 5"):
        MaskRLE(3, 3, (2, 3))


def test_draw_fills_the_mask_in_the_box_colour_and_leaves_the_rest() -> None:
    result = ImageDetections.from_proto(_message(with_mask=True))
    image = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128))
    drawn = np.asarray(result.draw(image, show_attributes=False), dtype=np.int16)
    plain = np.asarray(result.draw(image, show_attributes=False, show_masks=False), dtype=np.int16)
    colour = np.array(category_colour(result.detections[0]), dtype=np.int16)
    inside = (100, 90)  # (y, x): in the mask, off the box outline and the label
    assert (plain[inside] == 128).all()
    tinted = drawn[inside]
    assert np.abs(tinted - colour).sum() < np.abs(np.int16(128) - colour).sum()  # moved towards the colour
    outside = (140, 20)
    assert (drawn[outside] == plain[outside]).all()


def test_draw_scales_masks_to_a_thumbnail() -> None:
    detection = Detection(box=BoundingBox(50, 60, 141, 120), category="dress", score=0.9, category_index=10,
                          mask_rle=MaskRLE(WIDTH, HEIGHT, tuple(encode_rle(_mask()))))
    result = ImageDetections(width=WIDTH, height=HEIGHT, detections=(detection,))
    thumbnail = Image.new("RGB", (WIDTH * 2, HEIGHT * 2), (128, 128, 128))
    drawn = np.asarray(draw_detections(thumbnail, result, show_attributes=False), dtype=np.int16)
    assert not (drawn[200, 180] == 128).all()  # (100, 90) in the result's frame
    assert (drawn[280, 40] == 128).all()
