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

Image-level labels and embeddings (a classifier or embedder family, or the default model's vertical
and embedding heads) ride along: ``labels`` (the top k as ``(index, label, score)``),
``embeddings`` (one L2-normalised row per detection) and ``image_embedding``, packed with
:func:`fashionbox.contract.embedding.pack_embedding`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fashionbox.contract.embedding import pack_embedding
from fashionbox.contract.labels import LabelMap
from fashionbox.v1 import detections_pb2

__all__ = ["EmbeddingSettings", "build_image_detections", "top_labels"]


class EmbeddingSettings:
    """How the vectors of one model are sent: the model's name (provenance) and the packed dtype."""

    __slots__ = ("dtype", "model")

    def __init__(self, model: str, dtype: str = "float16") -> None:
        pack_embedding(np.zeros(1, dtype=np.float32), dtype)  # refuses an unknown dtype now
        self.model, self.dtype = model, dtype

    def fill(self, message: detections_pb2.Embedding, vector: npt.ArrayLike) -> None:
        array = np.asarray(vector, dtype=np.float32).reshape(-1)
        message.model, message.dimension, message.dtype = self.model, array.shape[0], self.dtype
        message.values = pack_embedding(array, self.dtype)


def top_labels(probs: npt.ArrayLike, names: Sequence[str], k: int) -> list[tuple[int, str, float]]:
    """The ``k`` most likely of ``probs`` (one image's ``[L]``) as ``(index, name, score)``, best first;
    ties keep the lower index first."""
    row = np.asarray(probs, dtype=np.float32).reshape(-1)
    if row.shape[0] != len(names):
        raise ValueError(f"{row.shape[0]} label scores for {len(names)} label names")
    order = np.argsort(-row, kind="stable")[: max(0, k)]
    return [(int(i), names[int(i)], float(row[int(i)])) for i in order]


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
    labels: Sequence[tuple[int, str, float]] = (),
    labels_model: str = "",
    embeddings: npt.ArrayLike | None = None,
    image_embedding: npt.ArrayLike | None = None,
    embedding: EmbeddingSettings | None = None,
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
        labels: the image-level labels to send, ``(index, label, score)`` best first (:func:`top_labels`),
            and ``labels_model`` the classifier that gave them.
        embeddings: ``[n, D]`` one vector per detection, or ``None``; ``image_embedding`` ``[D]`` the
            whole image's; both sent as ``embedding`` says (model name, dtype), which they need.

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
    embedding_rows: list[npt.NDArray[np.float32] | None] = [None] * count
    if embeddings is not None or image_embedding is not None:
        if embedding is None:
            raise ValueError("embeddings need `embedding` (the model's name and the dtype they are sent in)")
        if embeddings is not None:
            rows = np.asarray(embeddings, dtype=np.float32)
            if rows.ndim != 2 or rows.shape[0] != count:
                raise ValueError(f"embeddings must have shape [{count}, D] to match the scores, got {rows.shape}")
            embedding_rows = list(rows)
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
    for index, name, probability in labels:
        message.labels.add(label=name, score=probability, index=index)
    message.labels_model = labels_model
    if image_embedding is not None and embedding is not None:
        embedding.fill(message.embedding, image_embedding)
    # Python lists once, rather than numpy scalar access per field: this runs per image on the server.
    for box, score, category_index, row, counts, vector in zip(
        box_array.tolist(), score_array.tolist(), category_array.tolist(), attribute_array, mask_list,
        embedding_rows, strict=True
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
        if vector is not None and embedding is not None:
            embedding.fill(detection.embedding, vector)
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
