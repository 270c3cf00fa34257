"""Build the typed result message (``fashionbox.v1.ImageDetections``) from the numeric outputs.

The ``postprocess`` Triton model calls :func:`build_image_detections` once per image to fill the
ensemble's DETECTIONS output; the in-process reference pipeline and the tests call the same
function, so the proto a client decodes is built in exactly one place. Pure numpy + protobuf:
no server, no torch.

Usage::

    message = build_image_detections(
        width=640, height=480,
        boxes=boxes, scores=scores, categories=categories, attribute_scores=attribute_scores,
        label_map=labels, model_version="1",
    )
    payload = message.SerializeToString()

With instance masks (a segmenting family or the default model's mask head), ``masks`` holds each
detection's COCO uncompressed RLE counts at ``width x height`` (``InstanceMask.to_rle()`` of
:mod:`fashionbox.core.masks`), or ``None`` for a detection without one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fashionbox.contract.labels import LabelMap
from fashionbox.v1 import detections_pb2

__all__ = ["build_image_detections"]


def build_image_detections(
    *,
    width: int,
    height: int,
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    categories: npt.ArrayLike,
    attribute_scores: npt.ArrayLike,
    label_map: LabelMap,
    model_version: str,
    model_name: str = "",
    masks: Sequence[Sequence[int] | None] | None = None,
) -> detections_pb2.ImageDetections:
    """One image's detections as an ``ImageDetections`` message.

    Args:
        width, height: size of the original image after EXIF orientation, in pixels.
        boxes: ``[n, 4]`` x1, y1, x2, y2 in original-image pixels (the BOXES tensor).
        scores: ``[n]`` detection confidences (SCORES).
        categories: ``[n]`` indices into ``label_map.categories`` (CATEGORIES).
        attribute_scores: ``[n, A]`` softmax of every attribute group concatenated in label-map
            order, ``A == label_map.num_attribute_labels`` (ATTRIBUTE_SCORES). With ``n == 0``
            any empty array is accepted, since an image without detections has no crops.
        label_map: the label map the model was trained with; it names categories and labels
            and says which groups apply to which category.
        model_version: version string recorded by the converter, for provenance.
        model_name: name of the detector family, for provenance.
        masks: per detection, its mask as COCO uncompressed RLE counts over the ``width x height``
            image (column-major, starting with a run outside), or ``None`` where it has none;
            ``None`` for the whole argument when the model does not segment.

    Only the groups that apply to a detection's category (``label_map.applicability``) are
    reported: a shoe has no sleeve length, and a score for it would be noise that a search
    index would happily store. Each reported group carries its arg-max label and that label's
    probability. Detections keep the order they are given in (the model sorts by score).

    Raises:
        ValueError: shapes disagree with each other or with the label map, or a category index
            is outside the label map. These are bugs in the caller, so they fail loudly rather
            than produce a result with wrong names.
    """
    if width < 0 or height < 0:
        raise ValueError(f"image size must not be negative, got {width}x{height}")
    box_array = np.asarray(boxes, dtype=np.float32)
    score_array = np.asarray(scores, dtype=np.float32).reshape(-1)
    category_array = np.asarray(categories).reshape(-1)
    count = score_array.shape[0]
    if box_array.size != count * 4:
        raise ValueError(f"boxes must have shape [{count}, 4] to match {count} scores, got {box_array.shape}")
    box_array = box_array.reshape(count, 4)
    if category_array.shape[0] != count:
        raise ValueError(f"categories must have {count} entries to match the scores, got {category_array.shape[0]}")
    if count and not np.issubdtype(category_array.dtype, np.integer):
        raise ValueError(f"categories must be integers, got dtype {category_array.dtype}")
    num_labels = label_map.num_attribute_labels
    attribute_array = np.asarray(attribute_scores, dtype=np.float32)
    if count == 0 and attribute_array.size == 0:
        attribute_array = np.zeros((0, num_labels), dtype=np.float32)
    elif attribute_array.shape != (count, num_labels):
        raise ValueError(
            f"attribute_scores must have shape [{count}, {num_labels}] for label map {label_map.name!r}, "
            f"got {attribute_array.shape}"
        )
    if count and (category_array.min() < 0 or category_array.max() >= label_map.num_categories):
        raise ValueError(
            f"category indices must lie in [0, {label_map.num_categories}) for label map {label_map.name!r}, "
            f"got {category_array.tolist()}"
        )
    mask_list = list(masks) if masks is not None else [None] * count
    if len(mask_list) != count:
        raise ValueError(f"masks must have {count} entries to match the scores, got {len(mask_list)}")
    pixels = int(width) * int(height)
    for k, counts in enumerate(mask_list):
        # Cheap (a sum), and a mask that does not cover the image exactly would decode to garbage.
        if counts is not None and sum(counts) != pixels:
            raise ValueError(f"mask {k}: RLE counts sum to {sum(counts)}, not width * height = {pixels}")

    groups = label_map.attribute_groups
    offsets = label_map.group_offsets
    applicability = label_map.applicability
    message = detections_pb2.ImageDetections(
        width=int(width),
        height=int(height),
        model_name=model_name,
        model_version=model_version,
        label_map=label_map.name,
    )
    # Python lists once, rather than numpy scalar access per field: this runs per image on the server.
    for box, score, category_index, row, counts in zip(
        box_array.tolist(), score_array.tolist(), category_array.tolist(), attribute_array, mask_list, strict=True
    ):
        category = label_map.categories[category_index]
        detection = message.detections.add(
            category=category.name,
            category_index=category_index,
            fashionpedia_id=category.fashionpedia_id,
            score=score,
        )
        detection.box.x1, detection.box.y1, detection.box.x2, detection.box.y2 = box
        if counts is not None:
            detection.mask.width, detection.mask.height = int(width), int(height)
            detection.mask.counts.extend(counts)
        for group, (_, start, stop), applies in zip(groups, offsets, applicability[category_index], strict=True):
            if not applies:
                continue
            best = int(np.argmax(row[start:stop]))
            detection.attributes.add(
                group=group.name,
                label=group.labels[best],
                score=float(row[start + best]),
                fashionpedia_id=group.fashionpedia_ids[best],
            )
    return message
