"""Names, dtypes and shapes of every tensor that crosses a model boundary, defined once.

The converter writes ``config.pbtxt`` files from these specs, the python-backend models read
and write tensors by these names, and the client decodes the ensemble's outputs with them.
Shapes exclude the batch dimension (every model batches); ``-1`` is a variable dimension.

Pipeline (ensemble ``fashion``)::

    IMAGE ─► preprocess ─► PIXELS, IMAGE_INFO, TOKEN (, CLASSIFIER_VIEW, EMBEDDER_VIEW)
    PIXELS, TOKEN ─► detector ─► DET_BOXES, DET_SCORES, DET_CLASSES        (NMS inside the ONNX graph)
    PIXELS, IMAGE_INFO, TOKEN, DET_* (, *_VIEW) ─► postprocess ─► BOXES, SCORES, CATEGORIES, ATTRIBUTE_SCORES,
                                                                 DETECTIONS
        └─ BLS: CROPS, TOKEN ─► attributes ─► ATTRIBUTE_PROBS (, CROP_MASKS, CROP_EMBEDDINGS, VERTICAL_PROBS)
        └─ BLS: VIEWS, TOKEN ─► classifier ─► LABEL_PROBS             (a classifier family, whole image)
        └─ BLS: VIEWS, TOKEN ─► embedder ─► EMBEDDINGS                (an embedder family, crops + whole image)
    TEXT ─► text_embedder ─► TEXT_EMBEDDINGS                          (the embedder's text tower, called directly)

Image-level labels and vectors travel inside DETECTIONS too (``ImageDetections.labels``,
``embedding``, ``Detection.embedding``). The image-level networks see the image as their own
processor would (``preprocess`` makes each view from the one decode); the default model's vertical
and embedding heads read the attribute trunk, and each image reaches them as one more crop: the
whole photo (``fashionbox.core.imaging.whole_image_crop``).

Instance masks have two sources, and travel to the client only inside DETECTIONS (a dense mask
tensor per image would dwarf every other output): a segmenting detector family (YOLO-seg, RF-DETR-Seg) adds
DET_MASK_COEFFS and DET_PROTOS to the detector's outputs (masks are assembled in ``postprocess``
for the kept detections only); the default family's attribute model adds CROP_MASKS, a mask on
each garment crop's grid that ``postprocess`` pastes back into the box (Mask R-CNN style).

``postprocess`` cuts the crops for the attribute heads and calls the ``attributes`` model
through BLS, because the number of crops per image is known only after detection. ``TOKEN``
makes the steps callable by the ensemble only (docs/RELIABILITY.md, "Direct calls to the
pipeline's steps").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ATTRIBUTES_MODEL",
    "CLASSIFIER_MODEL",
    "DETECTOR_MODEL",
    "EMBEDDER_MODEL",
    "ENSEMBLE_MODEL",
    "POSTPROCESS_MODEL",
    "PREPROCESS_MODEL",
    "TEXT_EMBEDDER_MODEL",
    "TensorSpec",
]

ENSEMBLE_MODEL = "fashion"
PREPROCESS_MODEL = "preprocess"
DETECTOR_MODEL = "detector"
ATTRIBUTES_MODEL = "attributes"
POSTPROCESS_MODEL = "postprocess"
CLASSIFIER_MODEL = "classifier"
EMBEDDER_MODEL = "embedder"
TEXT_EMBEDDER_MODEL = "text_embedder"
"""The text tower of an embedder family: a model of its own that clients call directly (``embed_text``)."""
TEXT_EMBEDDER_MAX_BATCH = 16
"""Texts per ``text_embedder`` request: its ``max_batch_size``, and what ``embed_text`` sends at most."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 datatype: "BYTES", "UINT8", "INT32", "FP32", ...
    dims: tuple[int, ...]
    doc: str = ""


# -- the ensemble's public contract ------------------------------------------------------------

IMAGE = TensorSpec("IMAGE", "BYTES", (1,), "one encoded image (JPEG, PNG or WebP) per batch row")
BOXES = TensorSpec("BOXES", "FP32", (-1, 4), "x1, y1, x2, y2 in original image pixels (after EXIF rotation)")
SCORES = TensorSpec("SCORES", "FP32", (-1,), "detection confidence in [0, 1], sorted descending")
CATEGORIES = TensorSpec("CATEGORIES", "INT32", (-1,), "index into the label map's categories")
ATTRIBUTE_SCORES = TensorSpec(
    "ATTRIBUTE_SCORES",
    "FP32",
    (-1, -1),
    "per detection, the softmax of every attribute group concatenated in label-map order; "
    "groups that do not apply to the category are 0",
)
DETECTIONS = TensorSpec("DETECTIONS", "BYTES", (1,), "serialized fashionbox.v1.ImageDetections")

ENSEMBLE_INPUTS = (IMAGE,)
ENSEMBLE_OUTPUTS = (BOXES, SCORES, CATEGORIES, ATTRIBUTE_SCORES, DETECTIONS)

# -- between composing models ---------------------------------------------------------------------

# PIXELS dims are (S, S, 3); S comes from the detector checkpoint and is written into configs. With a
# rect letterbox (a detector that takes any height and width: RepositorySettings.letterbox_stride) they
# stay (-1, -1, 3): S on the long side, a multiple of the stride on the short one, per request.
PIXELS = TensorSpec("PIXELS", "UINT8", (-1, -1, 3), "letterboxed RGB image, HWC uint8")
IMAGE_INFO = TensorSpec("IMAGE_INFO", "FP32", (5,), "original width, original height, scale, pad x, pad y")
DET_BOXES = TensorSpec("DET_BOXES", "FP32", (-1, 4), "x1, y1, x2, y2 in letterbox pixels")
DET_SCORES = TensorSpec("DET_SCORES", "FP32", (-1,), "detection confidence")
DET_CLASSES = TensorSpec("DET_CLASSES", "INT32", (-1,), "category index")
CROPS = TensorSpec("CROPS", "UINT8", (-1, -1, 3), "one garment crop, HWC uint8, square")
ATTRIBUTE_PROBS = TensorSpec("ATTRIBUTE_PROBS", "FP32", (-1,), "softmax per group, concatenated")
DET_MASK_COEFFS = TensorSpec("DET_MASK_COEFFS", "FP32", (-1, -1),
                             "per detection (rows of DET_BOXES), its coefficients over DET_PROTOS; "
                             "segmenting families only")
DET_PROTOS = TensorSpec("DET_PROTOS", "FP32", (-1, -1, -1),
                        "mask prototypes [K, h, w] covering the whole letterbox; segmenting families only")
CROP_MASKS = TensorSpec("CROP_MASKS", "FP32", (-1, -1),
                        "per crop, the garment's mask probability on a square grid over the crop (the same "
                        "widened box as CROPS); attribute models with a mask head only")
CROP_EMBEDDINGS = TensorSpec("CROP_EMBEDDINGS", "FP32", (-1,),
                             "per crop, its L2-normalised feature vector; attribute models with an embedding head only")
VERTICAL_PROBS = TensorSpec("VERTICAL_PROBS", "FP32", (-1,),
                            "per crop, softmax over product verticals; attribute models with a vertical head only")
CROP_SCORE_OFFSETS = TensorSpec("CROP_SCORE_OFFSETS", "FP32", (-1,),
                                "per crop, one logit offset (<= 0) per category: the second-stage verifier's "
                                "correction of the detection's score; attribute models with a verifier head only")
CLASSIFIER_VIEW = TensorSpec("CLASSIFIER_VIEW", "UINT8", (-1, -1, 3),
                             "the whole image as the classifier family's processor resizes and crops it, HWC uint8")
EMBEDDER_VIEW = TensorSpec("EMBEDDER_VIEW", "UINT8", (-1, -1, 3),
                           "the whole image as the embedder family's processor resizes and crops it, HWC uint8")
VIEWS = TensorSpec("VIEWS", "UINT8", (-1, -1, 3), "what classifier and embedder take: images at their input size")
LABEL_PROBS = TensorSpec("LABEL_PROBS", "FP32", (-1,), "per image, the classifier's probability of each label")
EMBEDDINGS = TensorSpec("EMBEDDINGS", "FP32", (-1,), "per view or garment crop, the embedder's L2-normalised vector")
TEXT = TensorSpec("TEXT", "BYTES", (1,), "one UTF-8 text per batch row (text_embedder, called directly)")
TEXT_EMBEDDINGS = TensorSpec("TEXT_EMBEDDINGS", "FP32", (-1,),
                             "per text, its L2-normalised vector in the embedder's image space")
TOKEN = TensorSpec(
    "TOKEN",
    "UINT8",
    (32,),
    "capability token per image: made by preprocess with the server's secret, checked by detector, "
    "postprocess and attributes, which refuse direct calls without it (fashionbox.core.capability); "
    "internal to the ensemble, never one of its outputs",
)

# -- inside the ONNX graphs ---------------------------------------------------------------------------

ONNX_DETECTOR_INPUT = "pixels"  # uint8 [B, S, S, 3]
ONNX_DETECTOR_BOXES = "boxes"  # float32 [B, N, 4], letterbox pixels
ONNX_DETECTOR_SCORES = "scores"  # float32 [B, C, N]
ONNX_DETECTOR_SELECTED = "selected"  # int64 [M, 3]: (batch, class, box) kept by NonMaxSuppression
ONNX_ATTRIBUTES_INPUT = "crops"  # uint8 [B, C, C, 3]
ONNX_ATTRIBUTES_OUTPUT = "probs"  # float32 [B, A]
ONNX_ATTRIBUTES_MASKS = "masks"  # float32 [B, m, m], probabilities (attribute models with a mask head)
ONNX_DETECTOR_MASK_COEFFS = "mask_coeffs"  # float32 [B, N, K] (segmenting families), rows as in "boxes"
ONNX_DETECTOR_PROTOS = "protos"  # float32 [B, K, h, w] (segmenting families)
ONNX_ATTRIBUTES_EMBEDDINGS = "embeddings"  # float32 [B, D], L2-normalised (attribute models with an embedding head)
ONNX_ATTRIBUTES_VERTICALS = "verticals"  # float32 [B, V], softmax over product verticals (with a vertical head)
ONNX_ATTRIBUTES_SCORE_OFFSETS = "score_offsets"  # float32 [B, C], logit offsets <= 0 per category (verifier head)
ONNX_IMAGE_INPUT = "images"  # uint8 [B, H, W, 3]: the image graphs of the classifier and embedder families
ONNX_CLASSIFIER_OUTPUT = "probs"  # float32 [B, L]: softmax (single-label) or sigmoid (multi-label)
ONNX_EMBEDDER_OUTPUT = "embeddings"  # float32 [B, D], L2-normalised (image and text graphs alike)
ONNX_TEXT_INPUT_IDS = "input_ids"  # int64 [B, T]: token ids, padded as the family's tokenizer pads
ONNX_TEXT_ATTENTION_MASK = "attention_mask"  # int64 [B, T]: only in text graphs whose tower reads it

# -- files the converter writes into the repository ---------------------------------------------------

LABELS_FILE = "labels.json"
LABELS_PARAMETER = "labels_json"
"""Key of the ensemble config parameter holding the label map JSON (clients read labels from it)."""
MANIFEST_FILE = "manifest.json"

# -- serving defaults -----------------------------------------------------------------------------------

DEFAULT_SCORE_THRESHOLD = 0.3
"""Detections scoring at or below this are dropped inside the detector graph (NMS input)."""
DEFAULT_IOU_THRESHOLD = 0.6
DEFAULT_MAX_DETECTIONS = 50
"""Per image, after NMS (also the NMS cap per class)."""

DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
DEFAULT_HOST = "127.0.0.1"

ENV_PREFIX = "FASHIONBOX_"
"""Prefix of every environment variable FashionBox reads (server, decode limits, admin key, client)."""

# -- access ---------------------------------------------------------------------------------------------

ADMIN_KEY_NAME = "admin-key"
"""Header carrying the admin key when the admin APIs are restricted (``fashionbox serve --admin-key-file``)."""
ADMIN_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_NAME}"
"""The gRPC metadata key a client sends: Triton prefixes restricted-protocol header names with this."""
