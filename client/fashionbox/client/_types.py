"""The client's result types: frozen dataclasses, not protos, and never ``None`` for "missing".

A :class:`ImageDetections` is what ``FashionClient.detect`` returns. It is built from the
``fashionbox.v1.ImageDetections`` message the server sends (:meth:`ImageDetections.from_proto`),
is immutable, and offers the few operations a caller needs to use it straight away: filters
that return new results, a JSON-friendly dict, and drawing on the image.

Usage::

    result = client.detect("look.jpg")
    for detection in result.above(0.5).with_attribute("sleeve length", "wrist-length"):
        print(detection.category, detection.box.as_list(), detection.attribute("neckline type"))
    result.draw("look.jpg").save("look.boxes.png")

Models that segment also send each detection's instance mask: ``detection.mask`` is a boolean
array ``[height, width]`` at the image's size (decoded from ``detection.mask_rle``, the COCO
run-length encoding the server sends, on each access), ``None`` for results without masks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from fashionbox.contract.embedding import unpack_embedding
from fashionbox.contract.rle import decode_rle, rle_area

from ._images import ImageInput

if TYPE_CHECKING:
    from fashionbox.v1 import detections_pb2

__all__ = [
    "AttributeScore",
    "BoundingBox",
    "Detection",
    "ImageDetections",
    "ImageInput",
    "ImageLabel",
    "MaskRLE",
    "ModelInfo",
    "ModelStatistics",
    "PackedEmbedding",
    "TensorInfo",
]

def _f32(value: float) -> float:
    """The shortest Python float that reads back as the same float32.

    Scores and coordinates are float32 on the wire; widening 0.9f gives 0.8999999761581421,
    which is the same number to the model but noise in JSON and in logs.
    """
    return float(str(np.float32(value)))


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """A box in original-image pixels after EXIF orientation; (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_list(self) -> list[float]:
        """``[x1, y1, x2, y2]``, the order of the BOXES tensor and of COCO-style ``xyxy`` tools."""
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True, slots=True)
class AttributeScore:
    """The most likely label of one attribute group, and its probability within the group."""

    label: str
    score: float
    fashionpedia_id: int | None = None
    """Fashionpedia attribute id of ``label``; ``None`` when built by hand without one."""


@dataclass(frozen=True, slots=True)
class MaskRLE:
    """An instance mask as the server sends it: COCO uncompressed run-length encoding.

    ``counts`` alternates runs of pixels outside and inside the mask, column by column (down the
    first column, then the next), starting with a run outside; they sum to ``width * height``.
    pycocotools reads :meth:`to_coco` as it is. Small, hashable and cheap to store; :meth:`to_array`
    expands it.
    """

    width: int
    height: int
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", tuple(map(int, self.counts)))  # twice as fast as a generator
        if sum(self.counts) != self.width * self.height:
            raise ValueError(f"mask RLE counts sum to {sum(self.counts)}, not {self.width} x {self.height}")

    @property
    def area(self) -> int:
        """Pixels inside the mask."""
        return rle_area(self.counts)

    def to_array(self) -> npt.NDArray[np.bool_]:
        """The mask as a boolean array ``[height, width]``."""
        return decode_rle(self.counts, self.width, self.height)

    def to_coco(self) -> dict[str, Any]:
        """``{"size": [height, width], "counts": [...]}``, COCO's uncompressed RLE (``pycocotools.mask``)."""
        return {"size": [self.height, self.width], "counts": list(self.counts)}


@dataclass(frozen=True, slots=True)
class PackedEmbedding:
    """A feature vector as the server sends it (``fashionbox.v1.Embedding``): L2-normalised, packed.

    ``model`` names the model that made it: vectors of different models are not comparable.
    ``to_array()`` unpacks it to float32; the dot product of two is their cosine similarity.
    """

    model: str
    dimension: int
    dtype: str
    values: bytes

    def __post_init__(self) -> None:
        self.to_array()  # refuses a length that does not match dimension and dtype

    def to_array(self) -> npt.NDArray[np.float32]:
        return unpack_embedding(self.values, self.dimension, self.dtype)

    @classmethod
    def from_proto(cls, message: Any) -> PackedEmbedding:
        return cls(str(message.model), int(message.dimension), str(message.dtype), bytes(message.values))


@dataclass(frozen=True, slots=True)
class ImageLabel:
    """One image-level label (a classifier's class for the whole image), e.g. a product vertical."""

    label: str
    score: float
    index: int
    """Index of the label in the classifier's label list."""


@dataclass(frozen=True, slots=True)
class Detection:
    """One garment or accessory.

    ``attributes`` maps group name (``"sleeve length"``) to its prediction, for the groups that
    apply to the category only: a shoe has no ``"sleeve length"`` key. It is read-only.
    """

    box: BoundingBox
    category: str
    score: float
    attributes: Mapping[str, AttributeScore] = field(default_factory=dict)
    category_index: int | None = None
    """Index of the category in the server's label map (``FashionClient.labels()``)."""
    fashionpedia_id: int | None = None
    """Fashionpedia category id."""
    mask_rle: MaskRLE | None = None
    """The instance mask as sent (run-length encoded), for callers that store it; ``None`` when the
    served model does not segment."""
    packed_embedding: PackedEmbedding | None = None
    """The garment's feature vector as sent; ``None`` when the served model embeds nothing."""

    def __post_init__(self) -> None:
        # A private copy, so the caller's dict cannot change a frozen result afterwards. A plain
        # dict rather than a MappingProxyType, because results must pickle (process pools, caches).
        object.__setattr__(self, "attributes", dict(self.attributes))

    @property
    def mask(self) -> npt.NDArray[np.bool_] | None:
        """The pixels of the garment: a boolean array ``[height, width]`` at the image's size (the
        frame of the box), or ``None`` without a mask. Decoded on each access: keep it in a variable."""
        return None if self.mask_rle is None else self.mask_rle.to_array()

    @property
    def embedding(self) -> npt.NDArray[np.float32] | None:
        """The garment's L2-normalised feature vector (float32 ``[dimension]``, computed on its crop),
        or ``None`` when the served model embeds nothing. Compare only vectors of the same
        ``packed_embedding.model``."""
        return None if self.packed_embedding is None else self.packed_embedding.to_array()

    def attribute(self, group: str) -> str | None:
        """The label predicted for ``group``, or ``None`` when the group does not apply."""
        prediction = self.attributes.get(group)
        return None if prediction is None else prediction.label

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "box": self.box.as_list(),
            "category": self.category,
            "score": self.score,
            "attributes": {
                group: {"label": prediction.label, "score": prediction.score}
                for group, prediction in self.attributes.items()
            },
        }
        if self.mask_rle is not None:
            out["mask"] = self.mask_rle.to_coco()
        if self.packed_embedding is not None:
            out["embedding"] = self.packed_embedding.to_array().tolist()
        return out


@dataclass(frozen=True, slots=True)
class ImageDetections:
    """Everything found in one image, sorted by descending score as the server sent it.

    ``width`` and ``height`` are the size of the image after EXIF orientation: the frame the
    boxes are in. Iterating yields the detections; ``len()`` counts them.
    """

    width: int
    height: int
    detections: tuple[Detection, ...] = ()
    model_version: str = ""
    model_name: str = ""
    label_map: str = ""
    """Name of the label map the category and attribute names come from."""
    labels: tuple[ImageLabel, ...] = ()
    """Image-level labels (the classifier's top k, by descending score); empty without a classifier."""
    labels_model: str = ""
    """Which classifier gave ``labels``."""
    packed_embedding: PackedEmbedding | None = None
    """The whole image's feature vector as sent; ``None`` when the served model embeds nothing."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "detections", tuple(self.detections))
        object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def embedding(self) -> npt.NDArray[np.float32] | None:
        """The whole image's L2-normalised feature vector (float32 ``[dimension]``), or ``None``."""
        return None if self.packed_embedding is None else self.packed_embedding.to_array()

    @property
    def label(self) -> str | None:
        """The most likely image-level label, or ``None`` without a classifier."""
        return self.labels[0].label if self.labels else None

    def __len__(self) -> int:
        return len(self.detections)

    def __iter__(self) -> Iterator[Detection]:
        return iter(self.detections)

    # -- filters: each returns a new result with the same image and provenance --------------

    def _keep(self, detections: tuple[Detection, ...]) -> ImageDetections:
        return ImageDetections(
            width=self.width,
            height=self.height,
            detections=detections,
            model_version=self.model_version,
            model_name=self.model_name,
            label_map=self.label_map,
            labels=self.labels,
            labels_model=self.labels_model,
            packed_embedding=self.packed_embedding,
        )

    def above(self, min_score: float) -> ImageDetections:
        """Detections whose score is at least ``min_score``."""
        return self._keep(tuple(d for d in self.detections if d.score >= min_score))

    def with_category(self, *names: str) -> ImageDetections:
        """Detections of any of the given categories (exact Fashionpedia names, e.g. ``"dress"``)."""
        if not names:
            raise TypeError("with_category() needs at least one category name")
        wanted = frozenset(names)
        return self._keep(tuple(d for d in self.detections if d.category in wanted))

    def with_attribute(self, group: str, label: str) -> ImageDetections:
        """Detections whose predicted ``group`` label is ``label``.

        Detections of categories the group does not apply to are dropped: a shoe never matches
        ``("sleeve length", "sleeveless")``.
        """
        return self._keep(tuple(d for d in self.detections if d.attribute(group) == label))

    # -- conversions ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: ``{"width", "height", "detections": [{"box", "category", "score", "attributes"}]}``.

        ``box`` is ``[x1, y1, x2, y2]``; ``attributes`` is ``{group: {"label", "score"}}``; a detection
        with a mask also has ``mask``: ``{"size": [height, width], "counts": [...]}`` (COCO RLE).
        """
        out: dict[str, Any] = {
            "width": self.width,
            "height": self.height,
            "detections": [d.to_dict() for d in self.detections],
        }
        if self.labels:
            out["labels"] = [{"label": lab.label, "score": lab.score} for lab in self.labels]
        if self.packed_embedding is not None:
            out["embedding"] = self.packed_embedding.to_array().tolist()
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_proto(cls, message: detections_pb2.ImageDetections) -> ImageDetections:
        """Convert the ``fashionbox.v1.ImageDetections`` message the server sends."""
        detections = tuple(
            Detection(
                box=BoundingBox(_f32(d.box.x1), _f32(d.box.y1), _f32(d.box.x2), _f32(d.box.y2)),
                category=str(d.category),
                score=_f32(d.score),
                attributes={
                    str(a.group): AttributeScore(
                        label=str(a.label), score=_f32(a.score), fashionpedia_id=int(a.fashionpedia_id)
                    )
                    for a in d.attributes
                },
                category_index=int(d.category_index),
                fashionpedia_id=int(d.fashionpedia_id),
                mask_rle=(MaskRLE(int(d.mask.width), int(d.mask.height), tuple(d.mask.counts))
                          if d.HasField("mask") else None),
                packed_embedding=PackedEmbedding.from_proto(d.embedding) if d.HasField("embedding") else None,
            )
            for d in message.detections
        )
        return cls(
            width=int(message.width),
            height=int(message.height),
            detections=detections,
            model_version=str(message.model_version),
            model_name=str(message.model_name),
            label_map=str(message.label_map),
            labels=tuple(ImageLabel(str(lab.label), _f32(lab.score), int(lab.index)) for lab in message.labels),
            labels_model=str(message.labels_model),
            packed_embedding=PackedEmbedding.from_proto(message.embedding) if message.HasField("embedding") else None,
        )

    def draw(self, image: ImageInput, *, show_attributes: bool = True, show_masks: bool = True) -> Image.Image:
        """A copy of ``image`` with every box, its category, score and attributes drawn on it, and
        each mask filled semi-transparently in its box colour.

        See :func:`fashionbox.client.draw.draw_detections`.
        """
        from ._drawing import render  # drawing needs fonts; plain detect() callers never load them

        return render(image, self.detections, source_size=(self.width, self.height), show_attributes=show_attributes,
                      show_masks=show_masks)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output of the served model, as the server describes it."""

    name: str
    datatype: str
    """KServe v2 datatype, e.g. ``"BYTES"``, ``"FP32"``."""
    shape: tuple[int, ...]
    """With the batch dimension when the model batches; ``-1`` is variable."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the server says about the served ensemble (metadata and configuration)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int
    parameters: Mapping[str, str] = field(default_factory=dict)
    """The model config's ``parameters`` (provenance from the converter), without the label map,
    which ``FashionClient.labels()`` returns parsed."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", dict(self.parameters))


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """Triton's inference statistics for one model version, summed since the model loaded.

    Averages are per successful request; Triton times a request from its arrival in the model's
    queue. For the ensemble, queue and compute times are the sums over its steps; the composing
    models (``preprocess``, ``detector``...) show where the time goes. An average is 0.0 when
    there was nothing to average over.
    """

    model_name: str
    model_version: str
    request_count: int
    """Requests answered, successes and failures."""
    failure_count: int
    inference_count: int
    """Images (batch rows) inferred; more than ``execution_count`` when requests were batched."""
    execution_count: int
    """Times the model ran (one per batch)."""
    avg_request_ms: float
    """Successful requests, from arrival to response, inside the server."""
    avg_queue_ms: float
    """Waiting in the scheduler's queue (for the dynamic batcher, or for a free instance)."""
    avg_compute_ms: float
    """Running the model: input copy, inference and output copy."""
    avg_batch_size: float
    """``inference_count / execution_count``: how well the dynamic batcher is filling batches."""

    @property
    def success_count(self) -> int:
        return self.request_count - self.failure_count
