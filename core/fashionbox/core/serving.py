"""What every FashionBox python-backend model needs: settings, ONNX Runtime sessions, responses.

The ``model.py`` files in ``model_repository/`` stay thin glue: they read their settings through
:class:`ModelArgs` and the :class:`ParameterSet` classes, run ONNX models through
:class:`OnnxDetector` / :class:`OnnxAttributes` (which the reference pipeline uses too),
and answer requests through :func:`respond_each` / :func:`run_concatenated`, which turn a
:class:`RequestError` into an error response for that one request while the rest of the batch
carries on (docs/ARCHITECTURE.md: errors are per request).

Triton's ``triton_python_backend_utils`` exists only inside the python backend stub, so it is
imported lazily by the few functions that build responses; everything else here is plain Python
and unit-tested without a server.

Each model's ``parameters`` are a :class:`ParameterSet` dataclass defined here: the converter
writes them with ``to_parameters()`` and the model reads them with ``from_parameters()``, so the
names and types exist once.

Usage inside a ``model.py``::

    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        params = AttributesParameters.from_parameters(self.args.parameters)
        self.heads = OnnxAttributes(self.args.version_file(params.onnx_file),
                                    OrtSettings.from_parameters(self.args.parameters),
                                    num_attribute_labels=params.num_attribute_labels)

    def execute(self, requests):
        return run_concatenated(requests, InputSpec("CROPS", np.uint8, (96, 96, 3)),
                                compute=self.heads.classify, split=..., model="attributes")
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Protocol, TypeVar, cast, get_type_hints

import numpy as np

from fashionbox import contract
from fashionbox.contract.labels import LabelMap
from fashionbox.core.imaging import DecodeLimits, rect_canvas
from fashionbox.core.postprocessing import AnyArray, DetectorOutput, Float32Array, gather_detections

__all__ = [
    "AdmissionSettings",
    "AttributesParameters",
    "BranchParameters",
    "ChunkResult",
    "DetectorParameters",
    "ErrorCode",
    "ImageLevelParameters",
    "InputSpec",
    "LetterboxSettings",
    "ModelArgs",
    "OnnxAttributes",
    "OnnxDetector",
    "OnnxImageBranch",
    "OnnxTextEmbedder",
    "OrtSettings",
    "ParameterError",
    "ParameterSet",
    "Parameters",
    "PostprocessParameters",
    "PreprocessParameters",
    "RequestError",
    "RuntimeSettings",
    "TextEmbedderParameters",
    "ViewParameters",
    "call_model_chunked",
    "check_session_io",
    "create_ort_session",
    "error_response",
    "group_by_shape",
    "read_input",
    "respond_each",
    "run_concatenated",
    "safe_relative_path",
    "success_response",
    "unexpected_error",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")
K = TypeVar("K")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ParameterError(ValueError):
    """A model's config ``parameters`` entry is missing or does not parse; fails model load."""


class ErrorCode(Enum):
    """The ``pb_utils.TritonError`` codes FashionBox models answer with (value: attribute name)."""

    INVALID_ARG = "INVALID_ARG"
    """The request itself is wrong (bad image, wrong shape); the client must change it."""
    INTERNAL = "INTERNAL"
    """The server failed on a valid request (a runtime error, a broken model)."""
    UNAVAILABLE = "UNAVAILABLE"
    """A model this one depends on could not be reached; retrying may help."""


class RequestError(Exception):
    """Fails one request with ``code`` and a message written for the person who sent it."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_ARG) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# -- settings -------------------------------------------------------------------------------------


class Parameters:
    """Typed, explicit reads of a model config's ``parameters`` (all strings in ``config.pbtxt``).

    Every getter names the model and the parameter in its error, and booleans accept only
    true/false/1/0/yes/no/on/off, so ``"false"`` can never read as ``True``.
    """

    def __init__(self, values: Mapping[str, str], *, model_name: str = "model") -> None:
        self._values = dict(values)
        self._model_name = model_name

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> Parameters:
        """From the model config dict Triton hands to ``initialize`` (``json.loads(args["model_config"])``)."""
        raw = config.get("parameters") or {}
        values: dict[str, str] = {}
        for key, value in raw.items():
            if isinstance(value, Mapping):
                values[str(key)] = str(value.get("string_value", ""))
            else:
                values[str(key)] = str(value)
        return cls(values, model_name=str(config.get("name", "model")))

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def _fail(self, name: str, problem: str) -> NoReturn:
        raise ParameterError(f"model {self._model_name!r}: parameter {name!r} {problem}")

    def string(self, name: str, default: str | None = None) -> str:
        if name in self._values:
            return self._values[name]
        if default is None:
            self._fail(name, "is required but missing from config.pbtxt")
        return default

    def integer(self, name: str, default: int | None = None, *, minimum: int | None = None) -> int:
        if name not in self._values:
            if default is None:
                self._fail(name, "is required but missing from config.pbtxt")
            value = default
        else:
            text = self._values[name].strip()
            try:
                value = int(text)
            except ValueError:
                self._fail(name, f"must be an integer, got {text!r}")
        if minimum is not None and value < minimum:
            self._fail(name, f"must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float | None = None) -> float:
        if name not in self._values:
            if default is None:
                self._fail(name, "is required but missing from config.pbtxt")
            return default
        text = self._values[name].strip()
        try:
            value = float(text)
        except ValueError:
            self._fail(name, f"must be a number, got {text!r}")
        if not np.isfinite(value):
            self._fail(name, f"must be a finite number, got {text!r}")
        return value

    def boolean(self, name: str, default: bool | None = None) -> bool:
        if name not in self._values:
            if default is None:
                self._fail(name, "is required but missing from config.pbtxt")
            return default
        text = self._values[name].strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        self._fail(name, f"must be true or false, got {self._values[name]!r}")


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def safe_relative_path(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that would leave ``root`` (absolute paths, ``..``)."""
    candidate = Path(relative)
    parts = candidate.parts
    if not parts or candidate.is_absolute() or any(not _SAFE_NAME.match(part) for part in parts):
        raise ParameterError(f"path {relative!r} must be a plain relative path inside {root}")
    resolved_root = root.resolve()
    resolved = (resolved_root / candidate).resolve()
    if not resolved.is_relative_to(resolved_root):
        raise ParameterError(f"path {relative!r} leaves {root}")
    return root / candidate


@dataclass(frozen=True)
class ModelArgs:
    """The ``args`` Triton passes to ``initialize``, parsed once."""

    name: str
    version: str
    model_dir: Path
    """The model's folder (Triton calls it ``model_repository``); ``labels.json`` is one level up."""
    config: Mapping[str, Any]
    backend_args: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Everything Triton passed, e.g. ``model_instance_kind`` and ``model_instance_device_id``."""

    @classmethod
    def from_backend_args(cls, args: Mapping[str, str]) -> ModelArgs:
        config = json.loads(args["model_config"])
        return cls(
            name=str(args.get("model_name", config.get("name", "model"))),
            version=str(args["model_version"]),
            model_dir=Path(args["model_repository"]),
            config=config,
            backend_args=dict(args),
        )

    @property
    def parameters(self) -> Parameters:
        return Parameters.from_model_config(self.config)

    @property
    def version_dir(self) -> Path:
        return self.model_dir / self.version

    @property
    def repository_dir(self) -> Path:
        return self.model_dir.parent

    @property
    def instance_kind(self) -> str:
        """``KIND_CPU`` or ``KIND_GPU`` (Triton passes ``CPU`` / ``GPU``) for this model instance."""
        return "GPU" if str(self.backend_args.get("model_instance_kind", "CPU")).upper() == "GPU" else "CPU"

    @property
    def device_id(self) -> int:
        return int(self.backend_args.get("model_instance_device_id", 0) or 0)

    def torch_device(self) -> str:
        """Where a PyTorch runner of this instance computes: ``cuda:<id>`` for ``KIND_GPU``, else ``cpu``."""
        return f"cuda:{self.device_id}" if self.instance_kind == "GPU" else "cpu"

    def version_file(self, relative: str) -> Path:
        """A file inside this model's version folder (e.g. ``model.onnx``); escaping it is refused."""
        return safe_relative_path(self.version_dir, relative)

    def label_map(self) -> LabelMap:
        """The label map the converter wrote next to the models (``<repository>/labels.json``)."""
        return LabelMap.load(self.repository_dir / contract.LABELS_FILE)

    def max_batch_size(self) -> int:
        return int(self.config.get("max_batch_size", 0))


# -- ONNX Runtime -----------------------------------------------------------------------------------


P = TypeVar("P", bound="ParameterSet")


class ParameterSet:
    """Base of the frozen dataclasses that hold one model's config ``parameters``.

    The converter writes :meth:`to_parameters` into ``config.pbtxt`` and the model reads
    :meth:`from_parameters` back, so each parameter's name, type and default are defined once,
    here. Fields are ``int`` (at least 1), ``float``, ``str`` or ``bool``; fields without a default
    are required in the config.
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(cast(Any, self)):
            value = getattr(self, field.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ValueError(f"{type(self).__name__}.{field.name} must be at least 1, got {value}")

    def to_parameters(self) -> dict[str, str]:
        """``{name: string value}`` as Triton stores them (booleans as ``true``/``false``)."""
        out: dict[str, str] = {}
        for field in dataclasses.fields(cast(Any, self)):
            value = getattr(self, field.name)
            if isinstance(value, bool):
                out[field.name] = "true" if value else "false"
            else:
                out[field.name] = repr(value) if isinstance(value, float) else str(value)
        return out

    @classmethod
    def from_parameters(cls: type[P], params: Parameters) -> P:
        hints = get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cast(Any, cls)):
            default = None if field.default is dataclasses.MISSING else field.default
            kind = hints[field.name]
            if kind is bool:
                kwargs[field.name] = params.boolean(field.name, default)
            elif kind is int:
                kwargs[field.name] = params.integer(field.name, default, minimum=1)
            elif kind is float:
                kwargs[field.name] = params.number(field.name, default)
            elif kind is str:
                kwargs[field.name] = params.string(field.name, default)
            else:  # a programming error in a subclass, caught by the unit tests
                raise TypeError(f"{cls.__name__}.{field.name}: parameters must be int, float, str or bool, not {kind}")
        return cls(**kwargs)


@dataclass(frozen=True)
class OrtSettings(ParameterSet):
    """ONNX Runtime threading for one model instance (parameters of ``detector`` and ``attributes``).

    On 2 cores more single-thread instances beat fewer multi-thread ones for the default model
    (docs/FIELD_NOTES.md), hence one thread. Spinning is off: with one thread there is no worker to
    spin and it changes nothing (63.0 against 61.6 images/s at concurrency 16), while with two threads
    per instance the waiting workers of every network instance held the cores the pipeline's other
    processes needed: the default model at two threads served 35.5 images/s spinning and 57.9 not, and
    a YOLOv8s-seg-sized detector's p50 at two threads fell from 218 to 184 ms (BENCHMARKS.md, "Thread
    spinning and threads per network model").
    """

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    allow_spinning: bool = False


RUNTIMES = ("onnxruntime", "openvino", "torch")
"""What runs a network model inside the python backend (TensorRT engines are not python models)."""
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class RuntimeSettings(ParameterSet):
    """Which runtime a python-backend network model (``detector``, ``attributes``) uses.

    ``onnxruntime`` runs ``model.onnx`` on the CPU (:class:`OrtSettings` apply). ``openvino`` runs the
    same file with OpenVINO, ``fp32`` or ``bf16`` where the CPU has AMX or AVX512-BF16
    (:mod:`fashionbox.core.openvino_runtime`; :class:`OrtSettings`' threads apply). ``torch`` runs the
    safetensors checkpoint (``weights_file``) with PyTorch on the instance's device: ``cuda:<id>``
    for a ``KIND_GPU`` instance, else the CPU, in ``fp16`` (autocast, CUDA only) or ``fp32``. The
    NMS thresholds are the ones the converter baked into the ONNX graph.
    """

    runtime: str = "onnxruntime"
    weights_file: str = "model.safetensors"
    precision: str = "fp32"
    pre_nms_top_k: int = 512
    """Torch runtime, detector: candidates per image and class that enter NMS."""
    score_threshold: float = contract.DEFAULT_SCORE_THRESHOLD
    iou_threshold: float = contract.DEFAULT_IOU_THRESHOLD
    torch_threads: int = 1
    """Torch runtime: CPU threads of the instance's stub process (its own process, so its own pool).
    One for the default model, as for ONNX Runtime (more single-thread instances beat fewer multi-thread
    ones); on CPU instances a heavier family's threads per instance (2), as its ONNX Runtime instances."""

    DETECTOR_ONLY: ClassVar[tuple[str, ...]] = ("pre_nms_top_k", "score_threshold", "iou_threshold")

    def for_model(self, name: str) -> dict[str, str]:
        """:meth:`to_parameters` for model ``name``: the NMS fields only where NMS runs (the detector)."""
        parameters = self.to_parameters()
        if name != contract.DETECTOR_MODEL:
            for key in self.DETECTOR_ONLY:
                del parameters[key]
        return parameters

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if (self.precision == "bf16") != (self.runtime == "openvino" and self.precision != "fp32"):
            # bf16 is OpenVINO's inference precision hint (fp32 or bf16 there); fp16 is the torch runtime's.
            raise ValueError(f"precision {self.precision!r} does not run in runtime {self.runtime!r}: bf16 is "
                             "OpenVINO's (fp32 or bf16), fp16 the torch runtime's on CUDA")


@dataclass(frozen=True)
class AdmissionSettings(ParameterSet):
    """Admission control (:mod:`fashionbox.core.admission`), parameters of ``preprocess`` and ``postprocess``.

    Present only when the repository bounds the requests inside the ensemble: ``preprocess``
    refuses a request that finds ``max_in_flight`` already admitted, ``detector`` confirms the slot
    of each request it runs, ``postprocess`` gives a slot back for each request it answers; a slot
    never given back frees itself after ``admission_ttl_ms`` (``admission_pending_ms`` unconfirmed).
    """

    max_in_flight: int
    admission_ttl_ms: int = 5_000
    admission_pending_ms: int = 1_000
    """A slot ``preprocess`` took stays *pending* this long unless ``detector`` (which only the
    ensemble reaches) confirms it: what a direct ``preprocess`` call can hold. At most the TTL."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.admission_pending_ms > self.admission_ttl_ms:
            raise ValueError(f"admission_pending_ms ({self.admission_pending_ms}) must not exceed "
                             f"admission_ttl_ms ({self.admission_ttl_ms})")

    @classmethod
    def optional(cls, params: Parameters) -> AdmissionSettings | None:
        """The settings, or None when the config has no ``max_in_flight`` (admission control off)."""
        return cls.from_parameters(params) if "max_in_flight" in params else None

    def slots(self, args: ModelArgs) -> Any:
        """This server's shared :class:`fashionbox.core.admission.AdmissionSlots`."""
        from fashionbox.core.admission import AdmissionSlots

        return AdmissionSlots.for_server(args.repository_dir, capacity=self.max_in_flight,
                                         ttl_s=self.admission_ttl_ms / 1000.0,
                                         pending_s=self.admission_pending_ms / 1000.0)


@dataclass(frozen=True)
class PreprocessParameters(ParameterSet):
    """Parameters of the ``preprocess`` model."""

    input_size: int
    """Side of the square letterbox the detector takes, in pixels."""
    max_image_bytes: int = DecodeLimits.max_image_bytes
    max_pixels: int = DecodeLimits.max_pixels

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(max_image_bytes=self.max_image_bytes, max_pixels=self.max_pixels)


@dataclass(frozen=True)
class LetterboxSettings(ParameterSet):
    """A rect letterbox (``preprocess``, ``detector`` and ``postprocess``), written only where the detector
    takes one: each image is letterboxed to ``input_size`` on its long side and, on its short side, to
    the smallest size that leaves a multiple of ``letterbox_stride`` of padding
    (:func:`fashionbox.core.imaging.rect_canvas`, Ultralytics' ``rect``), so a 4:3 photo at 640 runs the
    network on 640x480 instead of 640x640. The images of one request share one letterbox (the smallest
    holding each of them); Triton batches requests of equal shapes. Absent: the square letterbox."""

    letterbox_stride: int
    letterbox_min_side: int = 1
    """No side shorter than this (a multiple of the stride; 1: none but the stride): a detector that selects a
    fixed number of queries among its encoder tokens needs that many on a thin strip (LW-DETR)."""

    @classmethod
    def optional(cls, params: Parameters) -> LetterboxSettings | None:
        return cls.from_parameters(params) if "letterbox_stride" in params else None

    def canvas(self, width: int, height: int, input_size: int) -> tuple[int, int]:
        """``(height, width)`` of a ``width x height`` image's rect letterbox at ``input_size``."""
        floor = self.letterbox_min_side if self.letterbox_min_side > 1 else 0
        return rect_canvas(width, height, input_size, self.letterbox_stride, floor)

    def check(self, pixels: AnyArray, input_size: int) -> None:
        """Refuse ``[n, H, W, 3]`` pixels no rect letterbox of ``input_size`` makes (a :class:`RequestError`)."""
        height, width = pixels.shape[1:3]
        if max(height, width) != input_size or height % self.letterbox_stride or width % self.letterbox_stride \
                or min(height, width) < self.letterbox_min_side:
            floor = f", at least {self.letterbox_min_side} on the short one" if self.letterbox_min_side > 1 else ""
            raise RequestError(
                f"input {contract.PIXELS.name} is {width}x{height}: a letterbox of this model is {input_size} on its "
                f"long side and a multiple of {self.letterbox_stride} on both{floor}")


@dataclass(frozen=True)
class ViewParameters(ParameterSet):
    """``preprocess``'s image-level views, present only in repositories that serve a classifier or
    embedder family: each recipe (:class:`fashionbox.core.views.ViewRecipe` JSON) makes its output
    (CLASSIFIER_VIEW, EMBEDDER_VIEW) from the same decode as the letterbox. Empty: not served."""

    classifier_view: str = ""
    embedder_view: str = ""

    @classmethod
    def optional(cls, params: Parameters) -> ViewParameters:
        return cls.from_parameters(params)


@dataclass(frozen=True)
class DetectorParameters(ParameterSet):
    """Parameters of the ``detector`` model (plus :class:`OrtSettings`)."""

    input_size: int
    max_detections: int = 100
    """Per image, after NMS."""
    onnx_file: str = "model.onnx"
    """Relative to the version folder."""


@dataclass(frozen=True)
class AttributesParameters(ParameterSet):
    """Parameters of the ``attributes`` model (plus :class:`OrtSettings`)."""

    crop_size: int
    num_attribute_labels: int
    """Length of the probs vector; checked against every ONNX Runtime result."""
    onnx_file: str = "model.onnx"


@dataclass(frozen=True)
class PostprocessParameters(ParameterSet):
    """Parameters of the ``postprocess`` model."""

    input_size: int
    crop_size: int
    attributes_max_batch_size: int
    """The ``attributes`` model's ``max_batch_size``: larger BLS calls are split into chunks."""
    attributes_model: str = contract.ATTRIBUTES_MODEL
    model_version: str = ""
    """Recorded in every ``ImageDetections`` for provenance."""
    model_name: str = ""
    attributes_token: bool = True
    """Send ``attributes`` a ``TOKEN`` (false where it is a TensorRT engine, which takes none)."""
    crop_masks: bool = False
    """``attributes`` has a mask head: ask it for CROP_MASKS too and paste them into each detection."""
    detector_masks: bool = False
    """The detector segments: DET_MASK_COEFFS and DET_PROTOS are inputs, assembled into each detection's mask."""
    detector_mask_crop: bool = True
    """With ``detector_masks``: cut each mask to its box (Ultralytics' predictor); false: each mask over the whole
    letterbox (RF-DETR-Seg's post-processing). Either way a detection whose mask is empty is dropped, as both do."""
    attributes_inline: bool = False
    """The fused CPU layout: the attribute network runs inside ``postprocess`` (its graph in this model's
    version folder, :class:`AttributesParameters` and the runtime's settings among its parameters)
    instead of behind a BLS call to ``attributes``."""
    score_offsets: bool = False
    """``attributes`` has a verifier head served with this detector: ask it for CROP_SCORE_OFFSETS too and
    re-score each detection by its crop (``rescore_detections``) before finishing it."""
    score_threshold: float = 0.0
    """With ``score_offsets``: the served threshold, applied again to the re-scored detections."""


@dataclass(frozen=True)
class ImageLevelParameters(ParameterSet):
    """``postprocess``'s image-level labels and vectors, written only in repositories that serve them
    (:meth:`optional` gives the empty set, nothing served, for the others)."""

    labels_from: str = ""
    """Where image-level labels come from: ``classifier`` (the classifier family, on CLASSIFIER_VIEW),
    ``attributes`` (the default model's vertical head, on each image's whole-photo crop) or nothing."""
    label_names: str = "[]"
    """JSON list of the image-level labels' names, in the classifier's index order."""
    labels_model: str = ""
    label_top_k: int = 5
    embeddings_from: str = ""
    """Where vectors come from: ``embedder`` (the embedder family, on garment crops cut at its input
    size and on EMBEDDER_VIEW), ``attributes`` (the default model's embedding head, on the attribute
    crops and the whole-photo crop) or nothing."""
    embedding_model: str = ""
    embedding_dtype: str = "float16"
    embedder_view: str = ""
    """The embedder's :class:`fashionbox.core.views.ViewRecipe` JSON: garment crops go through it as an
    image through the family's processor (:func:`fashionbox.core.views.crop_views`)."""
    classifier_max_batch_size: int = 32
    embedder_max_batch_size: int = 64
    branch_token: bool = True
    """Send ``classifier`` and ``embedder`` a ``TOKEN`` (false where they are TensorRT engines, which take none)."""

    SOURCES: ClassVar[dict[str, tuple[str, ...]]] = {"labels_from": ("", "classifier", "attributes"),
                                                      "embeddings_from": ("", "embedder", "attributes")}

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in self.SOURCES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        names = json.loads(self.label_names)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("label_names must be a JSON list of strings")
        if self.labels_from and len(names) < 2:
            raise ValueError(f"labels_from {self.labels_from!r} needs at least two label_names")
        if self.embedding_dtype not in ("float16", "float32"):
            raise ValueError(f"embedding_dtype must be float16 or float32, got {self.embedding_dtype!r}")

    @property
    def image_label_names(self) -> tuple[str, ...]:
        return tuple(json.loads(self.label_names))

    @property
    def whole_image_crop(self) -> bool:
        """Whether each image also goes to ``attributes`` as one crop of the whole photo."""
        return "attributes" in (self.labels_from, self.embeddings_from)

    @classmethod
    def optional(cls, params: Parameters) -> ImageLevelParameters:
        return cls.from_parameters(params) if "labels_from" in params else cls()


@dataclass(frozen=True)
class BranchParameters(ParameterSet):
    """Parameters of the image-level networks ``classifier`` and ``embedder`` (plus :class:`OrtSettings`):
    uint8 images ``[height, width, 3]`` in, one float32 row of ``size`` out (LABEL_PROBS or EMBEDDINGS)."""

    height: int
    width: int
    size: int
    """Labels (classifier) or dimension (embedder): checked against every result."""
    graph_output: str
    """The ONNX graph's output: ``contract.ONNX_CLASSIFIER_OUTPUT`` or ``ONNX_EMBEDDER_OUTPUT``."""
    onnx_file: str = "model.onnx"


@dataclass(frozen=True)
class TextEmbedderParameters(ParameterSet):
    """Parameters of ``text_embedder`` (plus :class:`OrtSettings`): TEXT in, TEXT_EMBEDDINGS out."""

    dimension: int
    embedding_model: str = ""
    """The embedder's name, as its image vectors carry it (``Embedding.model``): which vectors these compare with."""
    max_text_bytes: int = 2048
    """A longer text is refused (INVALID_ARG) before it is tokenized."""
    onnx_file: str = "model.onnx"
    tokenizer_dir: str = "tokenizer"
    """Relative to the version folder: what :class:`fashionbox.core.text.TextTokenizer` loads."""


def create_ort_session(model_path: Path, settings: OrtSettings) -> Any:
    """An ONNX Runtime CPU session for ``model_path`` with ``settings`` applied."""
    import onnxruntime as ort

    if not model_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {model_path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spinning = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    logger.info(
        "loaded %s (intra_op_threads=%d, inter_op_threads=%d, allow_spinning=%s)",
        model_path,
        settings.intra_op_threads,
        settings.inter_op_threads,
        settings.allow_spinning,
    )
    return session


def check_session_io(session: Any, *, inputs: Sequence[str], outputs: Sequence[str], model_path: Path) -> None:
    """Fail model load, naming the file, when an ONNX graph does not have the contract's tensors."""
    have_in = [i.name for i in session.get_inputs()]
    have_out = [o.name for o in session.get_outputs()]
    missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
    if missing:
        raise ValueError(
            f"{model_path} does not follow the FashionBox ONNX contract: missing tensors {missing}; "
            f"it has inputs {have_in} and outputs {have_out}"
        )


class OnnxDetector:
    """The detector ONNX graph (``pixels`` -> ``boxes``, ``scores``, ``selected``) plus gathering.

    Used by the ``detector`` model and by the in-process reference pipeline, so both produce
    identical detections from identical pixels. A segmenting graph (outputs ``mask_coeffs`` and
    ``protos`` too: :attr:`segments`) gives each detection its mask coefficients and prototypes. A
    graph whose batch is fixed at 1 (an Ultralytics export without ``dynamic=True``) runs image
    by image.
    """

    def __init__(self, model_path: Path, settings: OrtSettings, *, max_detections: int) -> None:
        if max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}")
        self.model_path = model_path
        self.max_detections = max_detections
        self.session = self._create_session(model_path, settings)
        self._outputs = [contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES, contract.ONNX_DETECTOR_SELECTED]
        check_session_io(
            self.session, inputs=[contract.ONNX_DETECTOR_INPUT], outputs=self._outputs, model_path=model_path
        )
        names = {o.name for o in self.session.get_outputs()}
        self.segments = {contract.ONNX_DETECTOR_MASK_COEFFS, contract.ONNX_DETECTOR_PROTOS} <= names
        """Whether the graph segments (each detection then carries ``mask_coeffs`` and ``protos``)."""
        if self.segments:
            self._outputs += [contract.ONNX_DETECTOR_MASK_COEFFS, contract.ONNX_DETECTOR_PROTOS]
        graph_input = next(i for i in self.session.get_inputs() if i.name == contract.ONNX_DETECTOR_INPUT)
        self._one_at_a_time = list(graph_input.shape)[:1] == [1]

    def _create_session(self, model_path: Path, settings: OrtSettings) -> Any:
        """What runs the graph: ONNX Runtime here; :mod:`fashionbox.core.openvino_runtime` overrides it."""
        return create_ort_session(model_path, settings)

    def detect(self, pixels: AnyArray) -> list[DetectorOutput]:
        """uint8 ``[B, S, S, 3]`` letterboxed images -> one :class:`DetectorOutput` per image."""
        if self._one_at_a_time and len(pixels) != 1:
            return [row for k in range(len(pixels)) for row in self.detect(pixels[k:k + 1])]
        outputs = self.session.run(self._outputs, {contract.ONNX_DETECTOR_INPUT: pixels})
        boxes, scores, selected = outputs[:3]
        if self.segments:
            return gather_detections(boxes, scores, selected, max_detections=self.max_detections,
                                     mask_coeffs=outputs[3], protos=outputs[4])
        return gather_detections(boxes, scores, selected, max_detections=self.max_detections)


class OnnxAttributes:
    """The attribute ONNX graph: uint8 crops ``[B, C, C, 3]`` -> float32 probs ``[B, A]``."""

    def __init__(self, model_path: Path, settings: OrtSettings, *, num_attribute_labels: int) -> None:
        self.model_path = model_path
        self.num_attribute_labels = num_attribute_labels
        self.session = self._create_session(model_path, settings)
        check_session_io(
            self.session,
            inputs=[contract.ONNX_ATTRIBUTES_INPUT],
            outputs=[contract.ONNX_ATTRIBUTES_OUTPUT],
            model_path=model_path,
        )
        self.mask_size = _mask_size(self.session, model_path)
        """Side ``m`` of the mask head's grid (graph output ``masks`` ``[B, m, m]``); 0 without one."""
        names = {o.name for o in self.session.get_outputs()}
        self.outputs = tuple(n for n in (contract.ONNX_ATTRIBUTES_MASKS, contract.ONNX_ATTRIBUTES_EMBEDDINGS,
                                         contract.ONNX_ATTRIBUTES_VERTICALS, contract.ONNX_ATTRIBUTES_SCORE_OFFSETS)
                             if n in names)
        """The optional heads' outputs this graph has (``masks``, ``embeddings``, ``verticals``, ``score_offsets``)."""

    def _create_session(self, model_path: Path, settings: OrtSettings) -> Any:
        """What runs the graph: ONNX Runtime here; :mod:`fashionbox.core.openvino_runtime` overrides it."""
        return create_ort_session(model_path, settings)

    def classify(self, crops: AnyArray) -> Float32Array:
        (probs,) = self.session.run([contract.ONNX_ATTRIBUTES_OUTPUT], {contract.ONNX_ATTRIBUTES_INPUT: crops})
        return self._checked_probs(probs, crops.shape[0])

    def classify_with_masks(self, crops: AnyArray) -> tuple[Float32Array, Float32Array]:
        """float32 probs ``[B, A]`` and the mask head's probabilities ``[B, m, m]`` over each crop."""
        if not self.mask_size:
            raise ValueError(f"{self.model_path} has no mask head (no output {contract.ONNX_ATTRIBUTES_MASKS!r})")
        out = self.run(crops, (contract.ONNX_ATTRIBUTES_MASKS,))
        masks = out[contract.ONNX_ATTRIBUTES_MASKS]
        expected = (crops.shape[0], self.mask_size, self.mask_size)
        if masks.shape != expected:
            raise ValueError(f"{self.model_path} returned masks of shape {masks.shape}, expected {expected}")
        return out[contract.ONNX_ATTRIBUTES_OUTPUT], masks

    def run(self, crops: AnyArray, names: Sequence[str]) -> dict[str, Float32Array]:
        """``probs`` and the optional outputs ``names`` (of :attr:`outputs`), by ONNX name, one row per crop."""
        missing = [n for n in names if n not in self.outputs]
        if missing:
            raise ValueError(f"{self.model_path} has no output {missing} (it has {list(self.outputs)})")
        wanted = [contract.ONNX_ATTRIBUTES_OUTPUT, *names]
        results = self.session.run(wanted, {contract.ONNX_ATTRIBUTES_INPUT: crops})
        out = {name: np.asarray(value, dtype=np.float32) for name, value in zip(wanted, results, strict=True)}
        out[contract.ONNX_ATTRIBUTES_OUTPUT] = self._checked_probs(out[contract.ONNX_ATTRIBUTES_OUTPUT], crops.shape[0])
        for name in names:
            if out[name].shape[0] != crops.shape[0]:
                raise ValueError(f"{self.model_path} returned {out[name].shape[0]} rows of {name} for "
                                 f"{crops.shape[0]} crops")
        return out

    def _checked_probs(self, output: Any, count: int) -> Float32Array:
        probs: Float32Array = np.asarray(output, dtype=np.float32)
        expected = (count, self.num_attribute_labels)
        if probs.shape != expected:
            # A label map that does not match the heads would mislabel every attribute: refuse.
            raise ValueError(f"{self.model_path} returned probs of shape {probs.shape}, expected {expected}")
        return probs


class OnnxImageBranch:
    """An image-level graph (classifier or embedder): uint8 ``images`` ``[B, H, W, 3]`` -> float32
    ``[B, size]``, the graph's ``output`` (``probs`` or ``embeddings``)."""

    def __init__(self, model_path: Path, settings: OrtSettings, *, output: str, size: int) -> None:
        self.model_path, self.output, self.size = model_path, output, size
        self.session = self._create_session(model_path, settings)
        check_session_io(self.session, inputs=[contract.ONNX_IMAGE_INPUT], outputs=[output], model_path=model_path)

    def _create_session(self, model_path: Path, settings: OrtSettings) -> Any:
        """What runs the graph: ONNX Runtime here; :mod:`fashionbox.core.openvino_runtime` overrides it."""
        return create_ort_session(model_path, settings)

    def run(self, images: AnyArray) -> Float32Array:
        (rows,) = self.session.run([self.output], {contract.ONNX_IMAGE_INPUT: images})
        result: Float32Array = np.asarray(rows, dtype=np.float32)
        if result.shape != (images.shape[0], self.size):
            raise ValueError(f"{self.model_path} returned {self.output} of shape {result.shape}, "
                             f"expected {(images.shape[0], self.size)}")
        return result


class OnnxTextEmbedder:
    """An embedder family's text tower: texts -> its tokenizer (:class:`fashionbox.core.text.TextTokenizer`,
    saved next to the graph) -> the text graph -> float32 ``[n, dimension]``, L2-normalised."""

    def __init__(self, model_path: Path, tokenizer_dir: Path, settings: OrtSettings, *, dimension: int) -> None:
        from fashionbox.core.text import TextTokenizer

        self.model_path, self.dimension = model_path, dimension
        self.tokenizer = TextTokenizer.from_folder(tokenizer_dir)
        self.session = self._create_session(model_path, settings)
        self.inputs = [i.name for i in self.session.get_inputs()]
        check_session_io(self.session, inputs=[contract.ONNX_TEXT_INPUT_IDS], outputs=[contract.ONNX_EMBEDDER_OUTPUT],
                         model_path=model_path)

    def _create_session(self, model_path: Path, settings: OrtSettings) -> Any:
        """The graph's session: ONNX Runtime here (OpenVINO's runner overrides it)."""
        return create_ort_session(model_path, settings)

    def embed(self, texts: Sequence[str]) -> Float32Array:
        """One vector per text; a text the tokenizer refuses raises :class:`RequestError` (INVALID_ARG)."""
        try:
            feeds = self.tokenizer(list(texts))
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
        (rows,) = self.session.run([contract.ONNX_EMBEDDER_OUTPUT],
                                   {name: feeds[name] for name in self.inputs})
        result: Float32Array = np.asarray(rows, dtype=np.float32)
        if result.shape != (len(texts), self.dimension):
            raise ValueError(f"{self.model_path} returned embeddings of shape {result.shape}, "
                             f"expected {(len(texts), self.dimension)}")
        return result


def _mask_size(session: Any, model_path: Path) -> int:
    """``m`` of an attribute graph's ``masks`` output ``[B, m, m]``; 0 when the graph has none."""
    for output in session.get_outputs():
        if output.name == contract.ONNX_ATTRIBUTES_MASKS:
            shape = list(output.shape)
            if len(shape) != 3 or not isinstance(shape[1], int) or shape[1] < 1 or shape[1] != shape[2]:
                raise ValueError(f"{model_path}: output {contract.ONNX_ATTRIBUTES_MASKS!r} must be "
                                 f"[batch, m, m] with a fixed m, got {shape}")
            return int(shape[1])
    return 0


class DetectorRunner(Protocol):
    def detect(self, pixels: AnyArray) -> list[DetectorOutput]: ...


class AttributesRunner(Protocol):
    @property
    def mask_size(self) -> int:
        """Side of the mask head's square grid over each crop; 0 when the network has no mask head."""

    def classify(self, crops: AnyArray) -> Float32Array: ...

    def classify_with_masks(self, crops: AnyArray) -> tuple[Float32Array, Float32Array]:
        """Attribute probs ``[N, A]`` and mask probabilities ``[N, m, m]`` (only when ``mask_size``)."""

    @property
    def outputs(self) -> tuple[str, ...]:
        """The optional heads' ONNX output names the network has (``masks``, ``embeddings``, ``verticals``)."""

    def run(self, crops: AnyArray, names: Sequence[str]) -> dict[str, Float32Array]:
        """``probs`` and the optional outputs ``names``, keyed by ONNX output name."""


# -- requests and responses ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """What one request's input tensor must look like, batch dimension excluded (-1: any size)."""

    name: str
    dtype: type[np.generic]
    dims: tuple[int, ...]

    def check(self, array: AnyArray) -> AnyArray:
        """``array`` as ``[batch, *dims]`` of ``dtype``; a :class:`RequestError` says what is wrong."""
        expected = tuple("?" if d < 0 else d for d in self.dims)
        if array.ndim != 1 + len(self.dims) or any(
            want >= 0 and have != want for have, want in zip(array.shape[1:], self.dims, strict=True)
        ):
            raise RequestError(
                f"input {self.name} must have shape [batch, {', '.join(map(str, expected))}], got {list(array.shape)}"
            )
        if self.dtype is np.object_:
            if array.dtype != np.object_:
                raise RequestError(f"input {self.name} must be BYTES, got {array.dtype}")
            return array
        if array.dtype != self.dtype:
            raise RequestError(f"input {self.name} must be {np.dtype(self.dtype).name}, got {array.dtype}")
        return array


def _pb_utils() -> Any:
    # Only the python backend stub provides this module; importing it lazily keeps the rest of
    # this module usable (and testable) anywhere.
    return importlib.import_module("triton_python_backend_utils")


def read_input(request: Any, spec: InputSpec) -> AnyArray:
    """The request's ``spec.name`` tensor, checked against ``spec``."""
    tensor = _pb_utils().get_input_tensor_by_name(request, spec.name)
    if tensor is None:
        raise RequestError(f"input {spec.name} is missing from the request")
    return spec.check(tensor.as_numpy())


def error_response(error: RequestError) -> Any:
    """A response that fails its request with ``error.code`` and ``error.message``."""
    pb_utils = _pb_utils()
    code = getattr(pb_utils.TritonError, error.code.value)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(error.message, code))


def success_response(outputs: Mapping[str, AnyArray]) -> Any:
    pb_utils = _pb_utils()
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in outputs.items()]
    )


def unexpected_error(model: str, exc: BaseException) -> RequestError:
    """Log a bug-shaped failure with its traceback and turn it into an ``INTERNAL`` error."""
    logger.exception("%s: unexpected error while serving a request", model)
    return RequestError(f"{model} failed: {type(exc).__name__}: {exc}", ErrorCode.INTERNAL)


def respond_each(
    requests: Sequence[Any],
    handle: Callable[[Any], Mapping[str, AnyArray]],
    *,
    model: str,
) -> list[Any]:
    """One response per request from ``handle(request)``; a failure answers only its own request."""
    responses = []
    for request in requests:
        try:
            responses.append(success_response(handle(request)))
        except RequestError as exc:
            responses.append(error_response(exc))
        except Exception as exc:
            responses.append(error_response(unexpected_error(model, exc)))
    return responses


def run_concatenated(
    requests: Sequence[Any],
    spec: InputSpec,
    *,
    compute: Callable[[AnyArray], R],
    split: Callable[[R, slice], Mapping[str, AnyArray]],
    model: str,
    check: Callable[[Any, AnyArray], None] | None = None,
) -> list[Any]:
    """Run ``compute`` once over every valid request's rows, then answer each request its slice.

    Requests whose input is malformed, or that ``check(request, array)`` refuses (a
    :class:`RequestError`), are answered with their error and left out of the batch; if
    ``compute`` itself fails, every request that was in it fails with ``INTERNAL``. Where ``spec``
    has a variable dimension (a rect letterbox's PIXELS), requests of each shape run as one call.
    """
    responses: list[Any] = [None] * len(requests)
    valid: list[tuple[int, AnyArray]] = []
    for i, request in enumerate(requests):
        try:
            array = read_input(request, spec)
            if check is not None:
                check(request, array)
            valid.append((i, array))
        except RequestError as exc:
            responses[i] = error_response(exc)
    for members in group_by_shape(valid):
        _run_group(members, responses, compute, split, model)
    return responses


def group_by_shape(arrays: Iterable[tuple[K, AnyArray]], *, batched: bool = True) -> list[list[tuple[K, AnyArray]]]:
    """``(key, array)`` pairs grouped so that one network call can take each group, in first-seen order.

    ``batched``: the arrays are batches, joined by concatenation, so a row's shape (past the first
    dimension) decides; otherwise they are single images, joined by stacking, and the whole shape
    does. One group but with a rect letterbox (whose height and width vary by image).
    """
    groups: dict[tuple[int, ...], list[tuple[K, AnyArray]]] = {}
    for key, array in arrays:
        groups.setdefault(array.shape[1:] if batched else array.shape, []).append((key, array))
    return list(groups.values())


def _run_group(members: list[tuple[int, AnyArray]], responses: list[Any], compute: Callable[[AnyArray], R],
               split: Callable[[R, slice], Mapping[str, AnyArray]], model: str) -> None:
    """:func:`run_concatenated` for requests whose arrays have one shape: one ``compute`` call."""
    try:
        batch = members[0][1] if len(members) == 1 else np.concatenate([a for _, a in members], axis=0)
        result = compute(batch)
    except Exception as exc:
        failure = exc if isinstance(exc, RequestError) else unexpected_error(model, exc)
        for i, _ in members:
            responses[i] = error_response(failure)
        return
    start = 0
    for i, array in members:
        stop = start + array.shape[0]
        try:
            responses[i] = success_response(split(result, slice(start, stop)))
        except RequestError as exc:
            responses[i] = error_response(exc)
        except Exception as exc:
            responses[i] = error_response(unexpected_error(model, exc))
        start = stop


@dataclass(frozen=True)
class ChunkResult:
    """One BLS call's share of a chunked call: its rows and either the outputs or the error."""

    rows: slice
    output: AnyArray | None
    error: RequestError | None
    extras: Mapping[str, AnyArray] = dataclasses.field(default_factory=dict)
    """The ``extra_outputs`` asked for, by name (empty when the call failed)."""


def call_model_chunked(
    model_name: str,
    *,
    input_name: str,
    output_name: str,
    array: AnyArray,
    max_batch_size: int,
    extra: Callable[[int], Mapping[str, AnyArray]] | None = None,
    extra_outputs: Sequence[str] = (),
) -> list[ChunkResult]:
    """Run ``array`` through another Triton model via BLS, at most ``max_batch_size`` rows a call.

    ``extra(rows)`` gives further inputs of a chunk of ``rows`` rows (e.g. a capability token);
    ``extra_outputs`` names further outputs to ask for (e.g. CROP_MASKS), each with a row per input.
    Errors are returned, not raised, so the caller can fail exactly the requests whose rows were
    in the failed chunk.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    pb_utils = _pb_utils()
    results = []
    for start in range(0, array.shape[0], max_batch_size):
        rows = slice(start, min(start + max_batch_size, array.shape[0]))
        try:
            request = pb_utils.InferenceRequest(
                model_name=model_name,
                requested_output_names=[output_name, *extra_outputs],
                inputs=[pb_utils.Tensor(input_name, np.ascontiguousarray(array[rows]))] + [
                    pb_utils.Tensor(name, np.ascontiguousarray(value))
                    for name, value in (extra(rows.stop - rows.start) if extra else {}).items()],
            )
            response = request.exec()
            if response.has_error():
                raise RequestError(f"model {model_name!r} failed: {response.error().message()}", ErrorCode.INTERNAL)
            outputs: dict[str, AnyArray] = {}
            for name in (output_name, *extra_outputs):
                tensor = pb_utils.get_output_tensor_by_name(response, name)
                if tensor is None:
                    raise RequestError(f"model {model_name!r} returned no {name}", ErrorCode.INTERNAL)
                outputs[name] = tensor.as_numpy()
                if outputs[name].shape[0] != rows.stop - rows.start:
                    raise RequestError(
                        f"model {model_name!r} returned {outputs[name].shape[0]} rows of {name} for "
                        f"{rows.stop - rows.start} inputs",
                        ErrorCode.INTERNAL,
                    )
            output = outputs.pop(output_name)
            results.append(ChunkResult(rows, output, None, outputs))
        except RequestError as exc:
            logger.error("BLS call to %s failed: %s", model_name, exc.message)
            results.append(ChunkResult(rows, None, exc))
        except Exception as exc:
            logger.exception("BLS call to %s failed", model_name)
            results.append(
                ChunkResult(rows, None, RequestError(f"calling model {model_name!r} failed: {exc}", ErrorCode.INTERNAL))
            )
    return results
