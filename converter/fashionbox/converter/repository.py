"""Write a complete Triton model repository: configs, model sources, ONNX graphs, labels, manifest.

Pure, typed steps (docs/STYLE.md rules 6 and 7) and one orchestrator:

- :class:`RepositorySettings` (with a :class:`ModelScheduling` per model) validates itself;
- :func:`model_configs` builds every ``config.pbtxt`` as a ``model_config_pb2.ModelConfig``, so the
  schema is checked when the config is made, not when Triton loads it;
- :func:`write_model_config` writes one with ``text_format``;
- :func:`check_onnx_contract` checks that the ONNX graphs have the tensors of ``contract.py``;
- :func:`write_repository` assembles everything in a hidden sibling folder and moves it into
  place only when complete, so a crash never leaves a half-written repository where Triton
  looks.

Layout written (``S`` = input size, every model has version ``1``)::

    <out>/labels.json                 the label map (contract.LABELS_FILE)
    <out>/manifest.json               what the caller passed: provenance of the weights
    <out>/README.md                   the ensemble's inputs and outputs
    <out>/preprocess/config.pbtxt     python backend, makes each image's capability TOKEN;  1/model.py
    <out>/detector/config.pbtxt       python backend running ONNX Runtime or OpenVINO;  1/model.py, 1/model.onnx
    <out>/attributes/config.pbtxt     python backend running ONNX Runtime or OpenVINO;  1/model.py, 1/model.onnx
    <out>/postprocess/config.pbtxt    python backend, calls ``attributes`` through BLS;  1/model.py
    <out>/fashion/config.pbtxt        the ensemble clients call;  1/ (empty, Triton requires it)
    <out>/classifier/config.pbtxt     a classifier family's graph (BLS from postprocess);  1/model.py, 1/model.onnx
    <out>/embedder/config.pbtxt       an embedder family's graph (BLS from postprocess);  1/model.py, 1/model.onnx
    <out>/text_embedder/config.pbtxt  its text tower, called directly;  1/model.py, 1/model.onnx, 1/tokenizer/

Usage::

    write_repository(
        Path("build/model_repository"),
        detector_onnx=Path("build/detector.onnx"),
        attributes_onnx=Path("build/attributes.onnx"),
        label_map=default_label_map(),
        settings=RepositorySettings(input_size=320, crop_size=96, model_version="2024.06-a1b2c3"),
        manifest={"export": {...}},
    )

:func:`model_configs` writes the cpu profile. The gpu profile (``detector`` and ``attributes``
as ``tensorrt_plan`` models on ``KIND_GPU`` with ``model.plan`` files, ``preprocess`` decoding on
the GPU) is derived from it by :func:`fashionbox.converter.tensorrt.gpu_model_configs` and
written by :func:`write_repository` through its ``configs`` and ``files`` arguments.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from tritonclient.grpc import model_config_pb2 as mc

from fashionbox import contract
from fashionbox.contract.labels import LabelMap
from fashionbox.core.gpu_imaging import DecodeSettings
from fashionbox.core.imaging import DecodeLimits
from fashionbox.core.serving import (
    AdmissionSettings,
    AttributesParameters,
    BranchParameters,
    DetectorParameters,
    ImageLevelParameters,
    LetterboxSettings,
    OrtSettings,
    ParameterSet,
    PostprocessParameters,
    PreprocessParameters,
    RuntimeSettings,
    TextEmbedderParameters,
    ViewParameters,
)
from fashionbox.server.model_config import CONFIG_FILE, ModelScheduling, write_model_config

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_ENTRY_QUEUE_SIZE",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_STEP_QUEUE_TIMEOUT_US",
    "LABELS_JSON_PARAMETER",
    "MODEL_VERSION",
    "ImageBranch",
    "ModelScheduling",
    "RepositorySettings",
    "Target",
    "attributes_embedding_size",
    "attributes_mask_size",
    "check_onnx_contract",
    "cpu_scheduling",
    "ensemble_config",
    "gpu_preprocess",
    "gpu_scheduling",
    "model_configs",
    "step_timeouts",
    "write_model_config",
    "write_repository",
]

logger = logging.getLogger(__name__)

Target = Literal["cpu", "gpu"]
TARGETS: tuple[Target, ...] = ("cpu", "gpu")
Layout = Literal["steps", "fused"]
LAYOUTS: tuple[Layout, ...] = ("steps", "fused")

MODEL_VERSION = "1"
ONNX_FILE = "model.onnx"
LABELS_JSON_PARAMETER = contract.LABELS_PARAMETER
"""Ensemble config parameter holding the label map JSON, so clients read labels from the server."""
MODEL_VERSION_PARAMETER = "model_version"
WEIGHTS_FILE = RuntimeSettings.weights_file
"""The checkpoint a ``torch`` runner loads, in its model's version folder."""

_PYTHON_SOURCE = "model.py"
_README = "README.md"
_SOURCE_PACKAGE = "fashionbox.model_repository"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# KServe v2 datatypes (contract.py) -> model config types. BYTES is TYPE_STRING in configs.
_CONFIG_TYPES = {
    "BOOL": mc.TYPE_BOOL,
    "UINT8": mc.TYPE_UINT8,
    "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16,
    "FP32": mc.TYPE_FP32,
    "BYTES": mc.TYPE_STRING,
}

# The ensemble's steps, in order, per layout (RepositorySettings.layout).
_ENSEMBLE_STEPS = {
    "steps": (contract.PREPROCESS_MODEL, contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL),
    "fused": (contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL),
}
_SOURCES = {contract.CLASSIFIER_MODEL: "branch", contract.EMBEDDER_MODEL: "branch"}
"""Models whose python source is shared (one image-level network model.py serves both)."""
_FUSED_SOURCES = {**_SOURCES, contract.DETECTOR_MODEL: "decode_detect"}
"""The fused layout's ``detector`` decodes too: the source that does both."""
TOKENIZER_DIR = TextEmbedderParameters.tokenizer_dir


@dataclass(frozen=True)
class ImageBranch:
    """An image-level network of another family, served beside the detector: ``classifier`` (image labels)
    or ``embedder`` (vectors for every garment and the whole image, and a text tower when it has one)."""

    name: str
    """Provenance sent with every result (``labels_model``, the embeddings' ``model``), e.g. ``hf:org/name``."""
    view: str
    """:class:`fashionbox.core.views.ViewRecipe` JSON: how ``preprocess`` makes its input from the decode."""
    height: int
    width: int
    size: int
    """Labels (classifier) or dimension (embedder)."""
    labels: tuple[str, ...] = ()
    """Classifier: the labels' names in index order."""
    text: bool = False
    """Embedder: serve its text tower as ``text_embedder``."""

    def __post_init__(self) -> None:
        for name in ("height", "width", "size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageBranch.{name} must be positive, got {getattr(self, name)}")
        if self.labels and len(self.labels) != self.size:
            raise ValueError(f"{len(self.labels)} label names for {self.size} classifier outputs")

DEFAULT_ENTRY_QUEUE_SIZE = 16
"""Requests that may wait for ``preprocess``, the ensemble's entry: two batches of 8, about 0.15 s
of work at the ~110 img/s one CPU server reaches (BENCHMARKS.md). Past it Triton refuses at once."""
DEFAULT_STEP_QUEUE_TIMEOUT_US = 1_000_000
"""Longest wait in the queue of ``detector`` and ``postprocess`` in a repository without admission
control (``--max-in-flight 0``; with it, their queues never hold more than ``max_in_flight``, and a
timeout would only lose the admitted request's slot): a bound for when one of them, not the entry,
is the bottleneck (seen at 2x overload on the shared CPU; a GPU detector under load). Far above
their normal wait (milliseconds), so it only acts past capacity: 250 ms fired
on the busy shared CI machine at six requests in flight, and 500 ms while a draining stop
unloaded the ensemble (0.5 s) and in a batch held back by a 500 ms batching delay. 2 s held
those but cut goodput at 2x load to 54 % (1 s: 62 %; 500 ms: 71 %), docs/RELIABILITY.md."""

DEFAULT_MAX_IN_FLIGHT = 16
"""Requests admitted into the ensemble at once (CPU target): two detector batches, about 0.2 s of
work at the ~80-100 img/s one 2-core server sustains. Past it the entry refuses at once (at twice
the sustainable rate: p50 2 ms, p99 7-15 ms as the rate rises; goodput 91-100 % of it, where 24
kept 86 %: docs/RELIABILITY.md)."""


# -- settings ---------------------------------------------------------------------------------------


def gpu_scheduling() -> dict[str, Any]:
    """Starting scheduling for the GPU profiles (one GPU), before ``fashionbox tune`` refines it.

    A GPU runs a batch of 64 letterboxes in about the time a CPU core runs one, so the networks
    get large batches and two instances (one computes while the other's inputs are copied), and
    the CPU-side python steps (``preprocess`` decodes what nvJPEG cannot, ``postprocess`` crops and
    builds results) get many instances: they, not the GPU, bound the throughput. The entry queue
    and the admission bound hold about a quarter second of work at 2,000 images/s before the
    server refuses.
    """
    return {
        "max_in_flight": 512,
        "preprocess": ModelScheduling(instances=8, max_batch_size=32, max_queue_size=512),
        "detector": ModelScheduling(instances=2, max_batch_size=64),
        "attributes": ModelScheduling(instances=2, max_batch_size=256),
        "postprocess": ModelScheduling(instances=8, max_batch_size=32),
    }


def _check_cores(cores: int, threads: int) -> None:
    for name, value in (("cores", cores), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def cpu_scheduling(cores: int, threads: int = 1) -> dict[str, Any]:
    """The steps layout's scheduling on the CPU target for a server of ``cores`` cores.

    A core per runtime thread, most of them for the detector: ``preprocess`` and ``postprocess`` a
    quarter of the cores each (single-thread instances), ``detector`` half and ``attributes`` an
    eighth, as instances of ``threads`` threads each (a heavy family's two: half as many instances,
    so that they do not oversubscribe the cores), never fewer than :class:`RepositorySettings`'
    defaults, which are what 2 cores get (measured there: BENCHMARKS.md, "Two instances of
    postprocess and attributes"); 16 cores get 4 / 8 / 2 / 4 with one thread, the CPU profile of the
    first GPU run (240 images/s on an H200 host's 16 cores, BENCHMARKS.md), 4 / 4 / 2 / 4 with two.
    The admission bound grows with the cores. The fused layout and the GPU profiles keep their own
    (:func:`fused_scheduling`, :func:`gpu_scheduling`).
    """
    _check_cores(cores, threads)
    shipped = RepositorySettings()
    counts = {"preprocess": cores // 4, "detector": cores // 2 // threads, "attributes": cores // 8 // threads,
              "postprocess": cores // 4}
    scheduling: dict[str, Any] = {name: replace(getattr(shipped, name),
                                                instances=max(getattr(shipped, name).instances, count))
                                  for name, count in counts.items()}
    scheduling["max_in_flight"] = shipped.max_in_flight * max(1, cores // 2)
    return scheduling


def fused_scheduling(cores: int = 2, threads: int = 1) -> dict[str, Any]:
    """Scheduling for the fused CPU layout (``layout="fused"``) on a server of ``cores`` cores.

    Its two python models split the cores by what each costs per image: ``detector`` (decode and
    the detector network) two fifths, ``postprocess`` (crops, the attribute network, masks, the
    result) three fifths, as measured per request on 2 cores (11.4 and 17.5 ms of CPU,
    ``tests/benchmarks/bench_cpu_per_request.py``, BENCHMARKS.md "Where the gap goes"), as instances
    of ``threads`` threads each, never fewer than one. 2 cores get one of each: a second
    ``postprocess`` instance made it slower there (0.90x and 0.92x the images/s at concurrency 16 in
    two runs, ``tests/benchmarks/bench_scheduling.py``), where the steps layout gains from two (it
    waits on its BLS call to ``attributes``); 16 cores get 6 / 9. The admission bound grows with the
    cores, as :func:`cpu_scheduling`'s.
    """
    _check_cores(cores, threads)
    shipped = RepositorySettings()
    counts = {"detector": cores * 2 // 5 // threads, "postprocess": cores * 3 // 5 // threads}
    scheduling: dict[str, Any] = {name: replace(getattr(shipped, name), instances=max(1, count))
                                  for name, count in counts.items()}
    scheduling["max_in_flight"] = shipped.max_in_flight * max(1, cores // 2)
    return scheduling


def step_timeouts(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (keyword arguments of :class:`RepositorySettings`) with the later steps bounded by
    :data:`DEFAULT_STEP_QUEUE_TIMEOUT_US` when admission control is off and they are not given."""
    if settings.get("max_in_flight", DEFAULT_MAX_IN_FLIGHT):
        return dict(settings)
    bounded = ModelScheduling(queue_timeout_us=DEFAULT_STEP_QUEUE_TIMEOUT_US)
    return {"detector": bounded, "postprocess": bounded, **settings}


@dataclass(frozen=True)
class RepositorySettings:
    """Everything about a repository that is not the weights or the label map.

    ``input_size`` and ``crop_size`` must match the ONNX graphs (checked by
    :func:`write_repository`). The ensemble's ``max_batch_size`` is the smallest of its steps',
    since Triton refuses an ensemble that allows more than one of its steps.
    """

    input_size: int = 320
    crop_size: int = 96
    max_detections: int = 100
    """Per image, after NMS."""
    letterbox_stride: int = 0
    """0: every image is letterboxed to the square ``input_size``. More (a detector whose graph takes any
    height and width that are multiples of it, as Ultralytics' ``dynamic=True`` exports do; target cpu):
    the rect letterbox, ``input_size`` on the long side and the smallest multiple of padding on the short
    one (:class:`fashionbox.core.serving.LetterboxSettings`): a 4:3 photo runs the network on 3/4 of the
    pixels. Requests of one shape batch together."""
    letterbox_min_side: int = 0
    """With the rect letterbox: no side shorter than this (a multiple of ``letterbox_stride``; 0: none), where the
    detector selects a fixed number of queries among its encoder tokens and a thin strip would leave fewer
    (LW-DETR's 300 among a ViT's one level)."""
    preprocess: ModelScheduling = field(
        default_factory=lambda: ModelScheduling(instances=2, max_queue_size=DEFAULT_ENTRY_QUEUE_SIZE)
    )
    """The entry: admits or refuses (``max_in_flight``) and refuses past a short queue (see
    :class:`ModelScheduling`). Two instances, so a refusal rarely waits behind a decode."""
    detector: ModelScheduling = field(default_factory=ModelScheduling)
    """No queue bound of its own: admission control bounds what can wait here (without it, use
    :func:`step_timeouts`)."""
    attributes: ModelScheduling = field(default_factory=lambda: ModelScheduling(instances=2, max_batch_size=64))
    """Batches crops, not images: several per image. Unbounded queue: see :class:`ModelScheduling`.
    Two instances, as ``postprocess`` (below)."""
    postprocess: ModelScheduling = field(default_factory=lambda: ModelScheduling(instances=2))
    """Two instances: one crops and assembles while the other waits on its BLS call to
    ``attributes``; with one of each, the pair ran one request batch at a time and left about a
    third of two cores idle at saturation (BENCHMARKS.md, "Two instances of postprocess and attributes")."""
    ort: OrtSettings = field(default_factory=OrtSettings)
    """ONNX Runtime threading (runtime ``onnxruntime``), and OpenVINO's (``openvino``: ``intra_op_threads``)."""
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    """What runs ``detector`` and ``attributes`` in the python backend: ONNX Runtime (the cpu
    target's default), OpenVINO (``openvino``, target cpu, fp32 or bf16, on the same ``model.onnx``)
    or PyTorch (``torch``: on the GPU for target gpu, else the CPU). Target gpu
    with ``onnxruntime`` means TensorRT engines instead (configs from ``gpu_model_configs``)."""
    gpu_decode: bool = True
    """Target gpu: ``preprocess`` runs on a GPU instance and decodes JPEGs with nvJPEG where it can."""
    max_image_bytes: int = DecodeLimits.max_image_bytes
    max_pixels: int = DecodeLimits.max_pixels
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    """Admission control: requests inside the ensemble at once; ``preprocess`` refuses more at once
    with UNAVAILABLE (:mod:`fashionbox.core.admission`). 0 is off."""
    admission_ttl_ms: int = 0
    """A slot whose request never reached ``postprocess`` (its stub died, or a later step's queue
    timeout refused it) frees itself after this long: more than an admitted request spends in the
    pipeline. 0: the later steps' queue timeouts together plus 5 s (5 s by default). Short,
    because until then a lost slot is capacity refused."""
    model_version: str = "unversioned"
    """Recorded in every result for provenance (e.g. a date plus the weights' hash)."""
    model_name: str = ""
    """The detector family, recorded in every result."""
    target: Target = "cpu"
    layout: Layout = "steps"
    """How the pipeline is cut into python-backend models. ``steps``: ``preprocess`` (decode),
    ``detector``, ``postprocess`` calling ``attributes`` through BLS, each network a model of its own
    to batch and place (the GPU profiles keep it). ``fused`` (target cpu with ONNX Runtime or
    OpenVINO): ``detector`` decodes and detects in one step, and the attribute network runs inside
    ``postprocess``: two hops through the python backend per request instead of four. The fused
    ``detector`` is the entry: it has ``detector``'s instances and batching and ``preprocess``'s queue
    bound; ``preprocess`` and ``attributes`` are not written."""
    detector_masks: bool = False
    """The detector segments (its family says so): it also outputs DET_MASK_COEFFS and DET_PROTOS, which
    the ensemble wires into ``postprocess`` to give each detection its mask."""
    detector_mask_crop: bool = True
    """With ``detector_masks``: each mask cut to its box (Ultralytics' predictor); False: each mask over the
    whole letterbox (RF-DETR-Seg's). Either way a detection whose mask is empty is dropped, as both do."""
    crop_mask_size: int = 0
    """Side of the attribute model's mask grid (CROP_MASKS), 0 without a mask head. Read from the
    attribute graph's ``masks`` output by :func:`write_repository`, which overrides what is given here."""
    crop_embedding_size: int = 0
    """Dimension of the attribute model's embedding head (CROP_EMBEDDINGS), 0 without one: the default
    model's garment and image vectors when no embedder family is served. Read from the graph."""
    vertical_labels: tuple[str, ...] = ()
    """The attribute model's vertical head's labels (VERTICAL_PROBS), () without one: the default model's
    image-level labels when no classifier family is served. Checked against the graph."""
    verifier_classes: int = 0
    """Categories of the attribute model's verifier head (CROP_SCORE_OFFSETS), 0 where none is served:
    ``postprocess`` then re-scores every detection by its crop (the second stage) and drops what falls
    to ``runtime.score_threshold`` or below. Set by the converter only for the detector the head was
    fitted to (:func:`fashionbox.models.verifier_serves`)."""
    classifier: ImageBranch | None = None
    embedder: ImageBranch | None = None
    label_top_k: int = 5
    """Image-level labels sent per image (the classifier's top k)."""
    embedding_dtype: str = "float16"
    """How vectors are packed in results: ``float16`` (half the bytes) or ``float32``."""
    image_models: ModelScheduling = field(default_factory=lambda: ModelScheduling(max_batch_size=32))
    """``classifier`` and ``embedder``: called through BLS like ``attributes``, so unbounded queues."""
    text_embedder: ModelScheduling = field(
        default_factory=lambda: ModelScheduling(max_batch_size=contract.TEXT_EMBEDDER_MAX_BATCH,
                                                max_queue_size=DEFAULT_ENTRY_QUEUE_SIZE))
    """An entry clients call directly: bounded like ``preprocess``."""

    def __post_init__(self) -> None:
        for name in ("input_size", "crop_size", "max_detections", "max_image_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.crop_mask_size, bool) or not isinstance(self.crop_mask_size, int) or self.crop_mask_size < 0:
            raise ValueError(f"crop_mask_size must be a whole number >= 0 (0: no mask head), "
                             f"got {self.crop_mask_size!r}")
        if self.crop_embedding_size < 0 or self.label_top_k < 1 or self.verifier_classes < 0:
            raise ValueError("crop_embedding_size and verifier_classes must be >= 0 and label_top_k >= 1")
        if self.embedding_dtype not in ("float16", "float32"):
            raise ValueError(f"embedding_dtype must be float16 or float32, got {self.embedding_dtype!r}")
        if len(self.vertical_labels) == 1:
            raise ValueError("a vertical head needs at least two labels")
        if self.classifier is not None and not self.classifier.labels:
            raise ValueError("the classifier needs its label names (ImageBranch.labels)")
        if self.embedder is not None and self.embedder.height != self.embedder.width:
            raise ValueError(f"the embedder's input must be square (garment crops are cut square), got "
                             f"{self.embedder.height}x{self.embedder.width}")
        DecodeLimits(max_image_bytes=self.max_image_bytes, max_pixels=self.max_pixels)  # refuses unusable limits
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) or self.max_in_flight < 0:
            raise ValueError(f"max_in_flight must be a whole number >= 0 (0 is off), got {self.max_in_flight!r}")
        if self.admission_ttl_ms < 0 or 0 < self.admission_ttl_ms <= self._later_timeouts_ms:
            raise ValueError(
                f"admission_ttl_ms ({self.admission_ttl_ms}) must be more than the later steps' queue timeouts "
                f"together ({self._later_timeouts_ms} ms), or slots of requests still in the pipeline expire; "
                "0 chooses for you")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not isinstance(self.runtime, RuntimeSettings):
            raise TypeError(f"runtime must be a RuntimeSettings, got {type(self.runtime).__name__}")
        if self.runtime.precision == "fp16" and not (self.target == "gpu" and self.runtime.runtime == "torch"):
            raise ValueError("precision fp16 applies to the torch runtime on target gpu only (CPUs serve fp32)")
        if self.runtime.runtime == "openvino" and self.target != "cpu":
            raise ValueError("runtime openvino runs on target cpu only (target gpu serves TensorRT engines or torch)")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if isinstance(self.letterbox_stride, bool) or not isinstance(self.letterbox_stride, int) \
                or self.letterbox_stride < 0 or (self.letterbox_stride and self.input_size % self.letterbox_stride):
            raise ValueError(f"letterbox_stride must be 0 (square) or divide input_size {self.input_size}, "
                             f"got {self.letterbox_stride!r}")
        if isinstance(self.letterbox_min_side, bool) or not isinstance(self.letterbox_min_side, int) \
                or self.letterbox_min_side < 0 or (self.letterbox_min_side and (
                    not self.letterbox_stride or self.letterbox_min_side % self.letterbox_stride
                    or self.letterbox_min_side > self.input_size)):
            raise ValueError(f"letterbox_min_side must be 0 or, with a rect letterbox, a multiple of letterbox_stride "
                             f"{self.letterbox_stride} up to input_size {self.input_size}, "
                             f"got {self.letterbox_min_side!r}")
        if self.letterbox_stride and (self.target != "cpu" or self.runtime.runtime == "torch"):
            raise ValueError("a rect letterbox (letterbox_stride) is served on target cpu with ONNX Runtime or "
                             "OpenVINO; the GPU profiles and the torch runtime take the square letterbox")
        if self.layout == "fused" and (self.target != "cpu" or self.runtime.runtime == "torch"):
            raise ValueError("layout fused is a CPU layout for ONNX Runtime and OpenVINO; target gpu and the torch "
                             "runtime keep the steps layout, each network its own model")
        for name in ("preprocess", "detector", "attributes", "postprocess"):
            if not isinstance(getattr(self, name), ModelScheduling):
                raise TypeError(f"{name} must be a ModelScheduling, got {type(getattr(self, name)).__name__}")
        # A step's queue timeout must leave room for the batching delays a request may sit out on its
        # way there, or requests held back only to form a batch are refused as if the server were full.
        delays_us = 0
        for name in ("preprocess", "detector", "postprocess"):
            scheduling = getattr(self, name)
            delays_us += scheduling.max_queue_delay_us
            if scheduling.queue_timeout_us and scheduling.queue_timeout_us <= 2 * delays_us:
                raise ValueError(
                    f"{name}.queue_timeout_us ({scheduling.queue_timeout_us}) must be more than twice the batching "
                    f"delays up to it ({delays_us} us), or batched requests time out; raise it or set 0 (no limit)"
                )

    @property
    def admission(self) -> tuple[ParameterSet, ...]:
        """The admission parameters ``preprocess`` and ``postprocess`` share; none when it is off."""
        if not self.max_in_flight:
            return ()
        ttl_ms = self.admission_ttl_ms or self._later_timeouts_ms + 5_000
        return (AdmissionSettings(max_in_flight=self.max_in_flight, admission_ttl_ms=ttl_ms),)

    @property
    def letterbox(self) -> tuple[ParameterSet, ...]:
        """The rect letterbox's parameter (``preprocess``, ``detector``, ``postprocess``); none when square."""
        if not self.letterbox_stride:
            return ()
        return (LetterboxSettings(letterbox_stride=self.letterbox_stride,
                                  letterbox_min_side=max(1, self.letterbox_min_side)),)

    @property
    def _later_timeouts_ms(self) -> int:
        return (self.detector.queue_timeout_us + self.postprocess.queue_timeout_us) // 1000

    @property
    def ensemble_max_batch_size(self) -> int:
        return min(self.scheduling(name).max_batch_size for name in self.ensemble_steps)

    @property
    def ensemble_steps(self) -> tuple[str, ...]:
        """The ensemble's steps, in order, for this layout."""
        return _ENSEMBLE_STEPS[self.layout]

    @property
    def sources(self) -> Mapping[str, str]:
        """Model name -> the folder of ``fashionbox.model_repository`` its ``model.py`` comes from, where
        it is not the model's own name."""
        return _FUSED_SOURCES if self.layout == "fused" else _SOURCES

    def scheduling(self, model: str) -> ModelScheduling:
        detector = self.detector
        if self.layout == "fused" and not (detector.max_queue_size or detector.queue_timeout_us):
            detector = replace(detector, max_queue_size=self.preprocess.max_queue_size)  # it is the entry
        schedules = {
            contract.PREPROCESS_MODEL: self.preprocess,
            contract.DETECTOR_MODEL: detector,
            contract.ATTRIBUTES_MODEL: self.attributes,
            contract.POSTPROCESS_MODEL: self.postprocess,
            contract.CLASSIFIER_MODEL: self.image_models,
            contract.EMBEDDER_MODEL: self.image_models,
            contract.TEXT_EMBEDDER_MODEL: self.text_embedder,
        }
        return schedules[model]

    @property
    def labels_from(self) -> str:
        """Where image-level labels come from: a classifier family wins over the default vertical head."""
        return "classifier" if self.classifier else "attributes" if self.vertical_labels else ""

    @property
    def embeddings_from(self) -> str:
        """Where vectors come from: an embedder family wins over the default embedding head."""
        return "embedder" if self.embedder else "attributes" if self.crop_embedding_size else ""

    def image_level(self) -> tuple[ParameterSet, ...]:
        """``postprocess``'s image-level parameters; none when nothing image-level is served."""
        if not (self.labels_from or self.embeddings_from):
            return ()
        return (ImageLevelParameters(**self._image_level()),)

    def views(self) -> tuple[ParameterSet, ...]:
        """``preprocess``'s view recipes; none without a classifier or embedder family."""
        if not (self.classifier or self.embedder):
            return ()
        return (ViewParameters(classifier_view=self.classifier.view if self.classifier else "",
                               embedder_view=self.embedder.view if self.embedder else ""),)

    def _image_level(self) -> dict[str, Any]:
        labels = self.classifier.labels if self.classifier else self.vertical_labels
        if self.embedder:
            embedding_model = self.embedder.name
        else:
            embedding_model = f"{self.model_name or 'fashionbox'}@{self.model_version}"
        return {
            "labels_from": self.labels_from,
            "label_names": json.dumps(list(labels) if self.labels_from else []),
            "labels_model": (self.classifier.name if self.classifier
                             else f"{self.model_name or 'fashionbox'} verticals" if self.vertical_labels else ""),
            "label_top_k": self.label_top_k,
            "embeddings_from": self.embeddings_from,
            "embedding_model": embedding_model if self.embeddings_from else "",
            "embedding_dtype": self.embedding_dtype,
            "embedder_view": self.embedder.view if self.embedder else "",
            "classifier_max_batch_size": self.image_models.max_batch_size,
            "embedder_max_batch_size": self.image_models.max_batch_size,
        }


# -- configs ------------------------------------------------------------------------------------------


def _dims(spec: contract.TensorSpec, sizes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    # contract.py leaves checkpoint-dependent sizes as -1; the converter knows them.
    return sizes.get(spec.name, spec.dims)


def _io(specs: tuple[contract.TensorSpec, ...], sizes: Mapping[str, tuple[int, ...]], message: type[Any]) -> list[Any]:
    return [message(name=s.name, data_type=_CONFIG_TYPES[s.datatype], dims=list(_dims(s, sizes))) for s in specs]


def _tensor_sizes(settings: RepositorySettings, label_map: LabelMap) -> dict[str, tuple[int, ...]]:
    s, c, a, m = settings.input_size, settings.crop_size, label_map.num_attribute_labels, settings.crop_mask_size
    if settings.letterbox_stride:  # each request's own shape (LetterboxSettings)
        s = -1
    sizes: dict[str, tuple[int, ...]] = {
        contract.PIXELS.name: (s, s, 3),
        contract.CROPS.name: (c, c, 3),
        contract.ATTRIBUTE_PROBS.name: (a,),
        contract.ATTRIBUTE_SCORES.name: (-1, a),
        **({contract.CROP_MASKS.name: (m, m)} if m else {}),
        **({contract.CROP_EMBEDDINGS.name: (settings.crop_embedding_size,)} if settings.crop_embedding_size else {}),
        **({contract.VERTICAL_PROBS.name: (len(settings.vertical_labels),)} if settings.vertical_labels else {}),
        **({contract.CROP_SCORE_OFFSETS.name: (settings.verifier_classes,)} if settings.verifier_classes else {}),
    }
    if settings.classifier:
        sizes[contract.CLASSIFIER_VIEW.name] = (settings.classifier.height, settings.classifier.width, 3)
        sizes[contract.LABEL_PROBS.name] = (settings.classifier.size,)
    if settings.embedder:
        sizes[contract.EMBEDDER_VIEW.name] = (settings.embedder.height, settings.embedder.width, 3)
        sizes[contract.EMBEDDINGS.name] = (settings.embedder.size,)
        sizes[contract.TEXT_EMBEDDINGS.name] = (settings.embedder.size,)
    return sizes


def _parameters(config: Any, *sets: ParameterSet) -> None:
    for parameter_set in sets:
        for key, value in parameter_set.to_parameters().items():
            config.parameters[key].string_value = value


def _ragged(inputs: list[Any]) -> list[Any]:
    """Mark every input with a variable dimension (after the batch one) ``allow_ragged_batch``.

    Not for the networks' runners (:func:`_runner_model`), which concatenate their requests' tensors
    into one batch: a rect letterbox's PIXELS must reach ``detector`` in batches of one shape.

    Triton's dynamic batcher only puts requests whose inputs have the same shape into one batch
    unless an input allows ragged batches. A python-backend model gets each request of a batch as
    its own tensors, so nothing is padded or concatenated for it; without the flag, ``postprocess``
    (``DET_BOXES``: one row per detection) met almost only batches of one request, since two
    images seldom have as many detections, and called ``attributes`` once per request instead of
    once per batch (BENCHMARKS.md, "Ragged batches"; the fused layout clears it again, :func:`_fused`).
    """
    for tensor in inputs:
        if -1 in tensor.dims:
            tensor.allow_ragged_batch = True
    return inputs


def _queue_policy(scheduling: ModelScheduling) -> Any:
    # REJECT (the enum's zero, so not written out) rather than DELAY: a timed-out request fails
    # instead of running late.
    return mc.ModelQueuePolicy(
        timeout_action=mc.ModelQueuePolicy.REJECT,
        default_timeout_microseconds=scheduling.queue_timeout_us,
        max_queue_size=scheduling.max_queue_size,
    )


def _python_model(
    name: str,
    scheduling: ModelScheduling,
    inputs: tuple[contract.TensorSpec, ...],
    outputs: tuple[contract.TensorSpec, ...],
    sizes: Mapping[str, tuple[int, ...]],
    *parameters: ParameterSet,
    ragged: bool = True,
) -> Any:
    model_inputs = _io(inputs, sizes, mc.ModelInput)
    config = mc.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=scheduling.max_batch_size,
        input=_ragged(model_inputs) if ragged else model_inputs,
        output=_io(outputs, sizes, mc.ModelOutput),
        instance_group=[mc.ModelInstanceGroup(count=scheduling.instances, kind=mc.ModelInstanceGroup.KIND_CPU)],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=list(scheduling.preferred_batch_sizes),
            max_queue_delay_microseconds=scheduling.max_queue_delay_us,
        ),
    )
    if scheduling.max_queue_size or scheduling.queue_timeout_us:
        # Only when bounded: an empty policy would still be written out as "default_queue_policy { }".
        config.dynamic_batching.default_queue_policy.CopyFrom(_queue_policy(scheduling))
    _parameters(config, *parameters)
    return config


def _runner_model(
    name: str,
    settings: RepositorySettings,
    inputs: tuple[contract.TensorSpec, ...],
    outputs: tuple[contract.TensorSpec, ...],
    sizes: Mapping[str, tuple[int, ...]],
    parameters: ParameterSet,
    admission: tuple[ParameterSet, ...] = (),
) -> Any:
    """The seam between runtimes: a network model's config for ``settings.target`` and runtime."""
    scheduling = settings.scheduling(name)
    if settings.runtime.runtime == "torch":
        config = _python_model(name, scheduling, inputs, outputs, sizes, parameters, ragged=False)
        for key, value in settings.runtime.for_model(name).items():
            config.parameters[key].string_value = value
        _parameters(config, *admission)
        if settings.target == "gpu":
            _on_gpu(config)
        return config
    if settings.target == "cpu":
        config = _python_model(name, scheduling, inputs, outputs, sizes, parameters, settings.ort, *admission,
                               ragged=False)
        if settings.runtime.runtime == "openvino":  # the same model.onnx, run by OpenVINO at this precision
            for key in ("runtime", "precision"):
                config.parameters[key].string_value = settings.runtime.to_parameters()[key]
        return config
    # gpu with engines: tensorrt_plan models with KIND_GPU instances and model.plan, built on the serving host.
    raise ValueError(
        f"target {settings.target!r} with runtime {settings.runtime.runtime!r} is not written by model_configs: "
        "the TensorRT profile's configs come from fashionbox.converter.tensorrt.gpu_model_configs"
    )


def _on_gpu(config: Any) -> None:
    """Run every instance of ``config`` on a GPU: ``count`` instances on each GPU Triton sees."""
    for group in config.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_GPU


def gpu_preprocess(config: Any) -> None:
    """The GPU profiles' ``preprocess``: a GPU instance decoding JPEGs with nvJPEG where it can."""
    _on_gpu(config)
    _parameters(config, DecodeSettings(decode_device="auto"))


def ensemble_config(settings: RepositorySettings, label_map: LabelMap, steps: Mapping[str, Any]) -> Any:
    """The ``fashion`` ensemble: each step's tensors wired by name, as ``contract.py`` draws it.

    Every input and output of every step maps to the ensemble tensor of the same name, so the
    wiring follows from the step configs and cannot forget a tensor (``TOKEN`` too: from
    ``preprocess`` to ``detector`` and ``postprocess``; it is no output of the ensemble).
    """
    sizes = _tensor_sizes(settings, label_map)
    config = mc.ModelConfig(
        name=contract.ENSEMBLE_MODEL,
        platform="ensemble",
        max_batch_size=settings.ensemble_max_batch_size,
        input=_io(contract.ENSEMBLE_INPUTS, sizes, mc.ModelInput),
        output=_io(contract.ENSEMBLE_OUTPUTS, sizes, mc.ModelOutput),
    )
    for name in settings.ensemble_steps:
        step_config = steps[name]
        config.ensemble_scheduling.step.append(
            mc.ModelEnsembling.Step(
                model_name=name,
                model_version=-1,
                input_map={t.name: t.name for t in step_config.input},
                output_map={t.name: t.name for t in step_config.output},
            )
        )
    config.parameters[LABELS_JSON_PARAMETER].string_value = label_map.to_json()
    config.parameters[MODEL_VERSION_PARAMETER].string_value = settings.model_version
    return config


def model_configs(settings: RepositorySettings, label_map: LabelMap) -> dict[str, Any]:
    """Every model's ``ModelConfig``, keyed by model name, in pipeline order (ensemble last)."""
    sizes = _tensor_sizes(settings, label_map)
    # Instance masks: a segmenting detector's tensors go to postprocess through the ensemble; the
    # attribute model's CROP_MASKS reach it through the same BLS call as ATTRIBUTE_PROBS.
    segments = (contract.DET_MASK_COEFFS, contract.DET_PROTOS) if settings.detector_masks else ()
    crop_outputs = tuple(spec for spec, present in (
        (contract.CROP_MASKS, settings.crop_mask_size), (contract.CROP_EMBEDDINGS, settings.crop_embedding_size),
        (contract.VERTICAL_PROBS, settings.vertical_labels),
        (contract.CROP_SCORE_OFFSETS, settings.verifier_classes)) if present)
    # the image-level families' views: made by preprocess from its decode, read by postprocess
    views = tuple(spec for spec, branch in ((contract.CLASSIFIER_VIEW, settings.classifier),
                                            (contract.EMBEDDER_VIEW, settings.embedder)) if branch)
    configs: dict[str, Any] = {
        contract.PREPROCESS_MODEL: _python_model(
            contract.PREPROCESS_MODEL,
            settings.preprocess,
            (contract.IMAGE,),
            (contract.PIXELS, contract.IMAGE_INFO, contract.TOKEN, *views),
            sizes,
            PreprocessParameters(
                input_size=settings.input_size,
                max_image_bytes=settings.max_image_bytes,
                max_pixels=settings.max_pixels,
            ),
            *settings.views(),
            *settings.admission,
            *settings.letterbox,
        ),
        contract.DETECTOR_MODEL: _runner_model(
            contract.DETECTOR_MODEL,
            settings,
            (contract.PIXELS, contract.TOKEN),
            (contract.DET_BOXES, contract.DET_SCORES, contract.DET_CLASSES, *segments),
            sizes,
            DetectorParameters(
                input_size=settings.input_size, max_detections=settings.max_detections, onnx_file=ONNX_FILE
            ),
            (*settings.admission, *settings.letterbox),  # it confirms the slots preprocess takes
        ),
        contract.ATTRIBUTES_MODEL: _runner_model(
            contract.ATTRIBUTES_MODEL,
            settings,
            (contract.CROPS, contract.TOKEN),
            (contract.ATTRIBUTE_PROBS, *crop_outputs),
            sizes,
            AttributesParameters(
                crop_size=settings.crop_size,
                num_attribute_labels=label_map.num_attribute_labels,
                onnx_file=ONNX_FILE,
            ),
        ),
        contract.POSTPROCESS_MODEL: _python_model(
            contract.POSTPROCESS_MODEL,
            settings.postprocess,
            (contract.PIXELS, contract.IMAGE_INFO, contract.DET_BOXES, contract.DET_SCORES, contract.DET_CLASSES,
             contract.TOKEN, *segments, *views),
            contract.ENSEMBLE_OUTPUTS,
            sizes,
            PostprocessParameters(
                input_size=settings.input_size,
                crop_size=settings.crop_size,
                attributes_max_batch_size=settings.attributes.max_batch_size,
                attributes_model=contract.ATTRIBUTES_MODEL,
                model_version=settings.model_version,
                model_name=settings.model_name,
                crop_masks=bool(settings.crop_mask_size),
                detector_masks=settings.detector_masks,
                detector_mask_crop=settings.detector_mask_crop,
                attributes_inline=settings.layout == "fused",
                score_offsets=bool(settings.verifier_classes),
                score_threshold=settings.runtime.score_threshold if settings.verifier_classes else 0.0,
            ),
            *settings.image_level(),
            *settings.admission,
            *settings.letterbox,
        ),
    }
    if settings.layout == "fused":
        configs = _fused(configs)
    configs.update(_branch_configs(settings, sizes))
    if settings.target == "gpu" and settings.gpu_decode:
        gpu_preprocess(configs[contract.PREPROCESS_MODEL])
    configs[contract.ENSEMBLE_MODEL] = ensemble_config(settings, label_map, configs)
    return configs


def _fused(configs: dict[str, Any]) -> dict[str, Any]:
    """The steps layout's configs folded into the fused layout's two models (``RepositorySettings.layout``).

    ``detector`` takes ``preprocess``'s input, outputs and parameters beside its own (the entry:
    admission control and the decode limits); ``postprocess`` takes ``attributes``' parameters
    and runtime settings, since the attribute network runs inside it.
    """
    preprocess, detector = configs.pop(contract.PREPROCESS_MODEL), configs[contract.DETECTOR_MODEL]
    attributes, postprocess = configs.pop(contract.ATTRIBUTES_MODEL), configs[contract.POSTPROCESS_MODEL]
    del detector.input[:]
    detector.input.extend(preprocess.input)
    outputs = {t.name: t for t in (*preprocess.output, *detector.output)}
    del detector.output[:]
    detector.output.extend(outputs.values())
    for source, target in ((preprocess, detector), (attributes, postprocess)):
        for key, value in source.parameters.items():
            target.parameters[key].string_value = value.string_value
    # Ragged batches made the fused postprocess slower (it runs the attribute network itself: 0.79x
    # and 0.84x the images/s at concurrency 16 in two runs on 2 cores, tests/benchmarks/bench_ragged.py)
    # while the steps layout gained; the fused one batches requests only when their detections are as many.
    for tensor in postprocess.input:
        tensor.ClearField("allow_ragged_batch")
    return configs


def _branch_configs(settings: RepositorySettings, sizes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """``classifier``, ``embedder`` and ``text_embedder``, for the families the settings serve."""
    configs: dict[str, Any] = {}
    runtime = settings.runtime.to_parameters() if settings.runtime.runtime == "openvino" else {}
    for name, branch, output, graph_output in (
            (contract.CLASSIFIER_MODEL, settings.classifier, contract.LABEL_PROBS, contract.ONNX_CLASSIFIER_OUTPUT),
            (contract.EMBEDDER_MODEL, settings.embedder, contract.EMBEDDINGS, contract.ONNX_EMBEDDER_OUTPUT)):
        if branch is None:
            continue
        parameters = BranchParameters(height=branch.height, width=branch.width, size=branch.size,
                                      graph_output=graph_output, onnx_file=ONNX_FILE)
        views = {**sizes, contract.VIEWS.name: (branch.height, branch.width, 3)}
        if settings.runtime.runtime == "torch":  # the transformers model in PyTorch, as the other networks
            config = _python_model(name, settings.scheduling(name), (contract.VIEWS, contract.TOKEN), (output,),
                                   views, parameters)
            for key, value in settings.runtime.for_model(name).items():
                config.parameters[key].string_value = value
            if settings.target == "gpu":
                _on_gpu(config)
        else:
            config = _python_model(name, settings.scheduling(name), (contract.VIEWS, contract.TOKEN), (output,),
                                   views, parameters, settings.ort)
            for key in ("runtime", "precision"):  # OpenVINO where the other networks run in it; else ONNX Runtime
                if key in runtime:
                    config.parameters[key].string_value = runtime[key]
        configs[name] = config
    if settings.embedder is not None and settings.embedder.text:
        config = _python_model(
            contract.TEXT_EMBEDDER_MODEL, settings.text_embedder, (contract.TEXT,), (contract.TEXT_EMBEDDINGS,),
            sizes, TextEmbedderParameters(dimension=settings.embedder.size, embedding_model=settings.embedder.name,
                                          onnx_file=ONNX_FILE), settings.ort)
        for key in ("runtime", "precision"):  # the text graph in OpenVINO too where the networks run in it
            if key in runtime:
                config.parameters[key].string_value = runtime[key]
        configs[contract.TEXT_EMBEDDER_MODEL] = config
    return configs


# -- ONNX checks --------------------------------------------------------------------------------------


_TensorShapes = dict[str, tuple[int, tuple[int | None, ...]]]


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("checking ONNX graphs needs onnx: pip install fashionbox-converter") from exc
    return onnx


def _onnx_io(path: Path) -> tuple[_TensorShapes, _TensorShapes]:
    """``(inputs, outputs)`` of an ONNX file: name -> (element type, dims with None for dynamic)."""
    model = _import_onnx().load(str(path), load_external_data=False)

    def describe(values: Any) -> _TensorShapes:
        out = {}
        for value in values:
            tensor = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
            out[value.name] = (tensor.elem_type, dims)
        return out

    return describe(model.graph.input), describe(model.graph.output)


def _check_tensor(
    path: Path,
    tensors: _TensorShapes,
    name: str,
    elem_type: int,
    dims: tuple[int | None, ...],
) -> None:
    if name not in tensors:
        raise ValueError(f"{path}: no tensor {name!r} (has {sorted(tensors)}); see fashionbox/contract.py")
    have_type, have_dims = tensors[name]
    if have_type != elem_type:
        raise ValueError(f"{path}: tensor {name!r} has ONNX element type {have_type}, expected {elem_type}")
    if len(have_dims) != len(dims) or any(
        want is not None and have is not None and have != want for have, want in zip(have_dims, dims, strict=True)
    ):
        shown = ["?" if d is None else d for d in dims]
        raise ValueError(f"{path}: tensor {name!r} has shape {list(have_dims)}, expected {shown}")


def check_onnx_contract(
    detector_onnx: Path, attributes_onnx: Path, settings: RepositorySettings, label_map: LabelMap
) -> None:
    """Refuse graphs whose tensor names, types or static sizes disagree with the settings.

    A detector exported at another input size, or attribute heads trained with another label
    map, would otherwise load fine and serve wrong results.
    """
    tp = _import_onnx().TensorProto
    s, c = settings.input_size, label_map.num_categories
    inputs, outputs = _onnx_io(detector_onnx)
    _check_tensor(detector_onnx, inputs, contract.ONNX_DETECTOR_INPUT, tp.UINT8, (None, s, s, 3))
    if settings.letterbox_stride and any(d is not None for d in inputs[contract.ONNX_DETECTOR_INPUT][1][1:3]):
        raise ValueError(f"{detector_onnx}: a rect letterbox (letterbox_stride {settings.letterbox_stride}) needs a "
                         f"graph that takes any height and width, got {list(inputs[contract.ONNX_DETECTOR_INPUT][1])}")
    _check_tensor(detector_onnx, outputs, contract.ONNX_DETECTOR_BOXES, tp.FLOAT, (None, None, 4))
    _check_tensor(detector_onnx, outputs, contract.ONNX_DETECTOR_SCORES, tp.FLOAT, (None, c, None))
    _check_tensor(detector_onnx, outputs, contract.ONNX_DETECTOR_SELECTED, tp.INT64, (None, 3))

    if settings.detector_masks:
        _check_tensor(detector_onnx, outputs, contract.ONNX_DETECTOR_MASK_COEFFS, tp.FLOAT, (None, None, None))
        _check_tensor(detector_onnx, outputs, contract.ONNX_DETECTOR_PROTOS, tp.FLOAT, (None, None, None, None))

    k, a, m = settings.crop_size, label_map.num_attribute_labels, settings.crop_mask_size
    inputs, outputs = _onnx_io(attributes_onnx)
    _check_tensor(attributes_onnx, inputs, contract.ONNX_ATTRIBUTES_INPUT, tp.UINT8, (None, k, k, 3))
    _check_tensor(attributes_onnx, outputs, contract.ONNX_ATTRIBUTES_OUTPUT, tp.FLOAT, (None, a))
    if m:
        _check_tensor(attributes_onnx, outputs, contract.ONNX_ATTRIBUTES_MASKS, tp.FLOAT, (None, m, m))
    if settings.crop_embedding_size:
        _check_tensor(attributes_onnx, outputs, contract.ONNX_ATTRIBUTES_EMBEDDINGS, tp.FLOAT,
                      (None, settings.crop_embedding_size))
    if settings.vertical_labels:
        _check_tensor(attributes_onnx, outputs, contract.ONNX_ATTRIBUTES_VERTICALS, tp.FLOAT,
                      (None, len(settings.vertical_labels)))
    if settings.verifier_classes:
        if settings.verifier_classes != label_map.num_categories:
            raise ValueError(f"verifier_classes {settings.verifier_classes} must be the label map's "
                             f"{label_map.num_categories} categories")
        _check_tensor(attributes_onnx, outputs, contract.ONNX_ATTRIBUTES_SCORE_OFFSETS, tp.FLOAT,
                      (None, settings.verifier_classes))


def attributes_embedding_size(attributes_onnx: Path) -> int:
    """Dimension of the attribute graph's embedding head (output ``embeddings`` ``[batch, D]``); 0 without one."""
    _, outputs = _onnx_io(attributes_onnx)
    if contract.ONNX_ATTRIBUTES_EMBEDDINGS not in outputs:
        return 0
    _, dims = outputs[contract.ONNX_ATTRIBUTES_EMBEDDINGS]
    if len(dims) != 2 or dims[1] is None or dims[1] < 1:
        raise ValueError(f"{attributes_onnx}: tensor {contract.ONNX_ATTRIBUTES_EMBEDDINGS!r} must be [batch, D] "
                         f"with a fixed D, got {['?' if d is None else d for d in dims]}")
    return dims[1]


def attributes_mask_size(attributes_onnx: Path) -> int:
    """Side ``m`` of the attribute graph's mask head (output ``masks`` ``[batch, m, m]``); 0 without one.

    Read from the graph, so a repository serves masks exactly when its attribute model makes them.
    """
    _, outputs = _onnx_io(attributes_onnx)
    if contract.ONNX_ATTRIBUTES_MASKS not in outputs:
        return 0
    _, dims = outputs[contract.ONNX_ATTRIBUTES_MASKS]
    if len(dims) != 3 or dims[1] is None or dims[1] < 1 or dims[1] != dims[2]:
        shown = ["?" if d is None else d for d in dims]
        raise ValueError(f"{attributes_onnx}: tensor {contract.ONNX_ATTRIBUTES_MASKS!r} must be [batch, m, m] "
                         f"with a fixed m, got {shown}")
    return dims[1]


# -- writing ------------------------------------------------------------------------------------------


def _inside(root: Path, *parts: str) -> Path:
    """``root / parts``, refusing names that would escape ``root`` (``..``, absolute, separators)."""
    for part in parts:
        if not _SAFE_NAME.match(part) or part in (".", ".."):
            raise ValueError(f"refusing path component {part!r}: not a plain file or model name")
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"refusing {path}: it leaves the repository {root}")
    return path


def _model_source(name: str) -> bytes:
    source = resources.files(_SOURCE_PACKAGE).joinpath(name, _PYTHON_SOURCE)
    if not source.is_file():
        raise FileNotFoundError(f"no python-backend source for model {name!r} in package {_SOURCE_PACKAGE}")
    return source.read_bytes()


def _build(
    root: Path,
    configs: Mapping[str, Any],
    onnx_files: Mapping[str, Path],
    label_map: LabelMap,
    manifest_json: str,
    files: Mapping[str, Path] | None = None,
    sources: Mapping[str, str] = _SOURCES,
) -> None:
    for name, config in configs.items():
        if config.name != name:
            raise ValueError(f"config keyed {name!r} is named {config.name!r}")
        model_dir = _inside(root, name)
        version_dir = _inside(model_dir, MODEL_VERSION)
        version_dir.mkdir(parents=True)
        write_model_config(_inside(model_dir, CONFIG_FILE), config)
        if config.backend == "python":
            _inside(version_dir, _PYTHON_SOURCE).write_bytes(_model_source(sources.get(name, name)))
        if name in onnx_files and config.backend == "python":  # the ONNX Runtime runners (cpu target)
            shutil.copyfile(onnx_files[name], _inside(version_dir, ONNX_FILE))
    label_map.save(_inside(root, contract.LABELS_FILE))
    _inside(root, contract.MANIFEST_FILE).write_text(manifest_json, encoding="utf-8")
    readme = resources.files(_SOURCE_PACKAGE).joinpath(_README)
    if readme.is_file():
        _inside(root, _README).write_bytes(readme.read_bytes())
    for relative, source in (files or {}).items():  # e.g. TensorRT plans and build_engines.sh (gpu target)
        destination = _inside(root, *relative.split("/"))
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, destination)  # keeps the mode: build_engines.sh stays executable


def _check_replaceable(out: Path) -> None:
    # Replacing means deleting the old folder: only ever do that to a repository we wrote.
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; refusing to replace it")
    if any(out.iterdir()) and not (out / contract.MANIFEST_FILE).is_file():
        raise FileExistsError(
            f"{out} is not empty and has no {contract.MANIFEST_FILE}: it does not look like a repository "
            "written by FashionBox, so it is not replaced"
        )


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no libc symbol (glibc < 2.28, musl)
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or file system without it
        return False
    raise OSError(error, os.strerror(error), str(a), None, str(b))


def _swap_into_place(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` folder to ``out``; the old ``out`` stays until the new one is there.

    On Linux the two folders are exchanged in one ``renameat2`` call, so a process killed at any
    moment (SIGKILL, power loss) leaves either the old or the new repository at ``out``, never
    none; the old one then sits under the hidden staging name until it is removed. Elsewhere
    POSIX cannot exchange two non-empty folders atomically: the old one is renamed aside first
    and renamed back if the second rename fails (an exception, not a kill, between the two).
    """
    if not (out.exists() or out.is_symlink()):
        os.rename(staging, out)
        return
    _check_replaceable(out)
    if _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the previous repository
        return
    previous = out.with_name(f".{out.name}.previous-{uuid.uuid4().hex[:8]}")
    os.rename(out, previous)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(previous, out)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def write_repository(
    out: Path,
    *,
    detector_onnx: Path,
    attributes_onnx: Path,
    label_map: LabelMap,
    settings: RepositorySettings,
    manifest: Mapping[str, Any],
    configs: Mapping[str, Any] | None = None,
    files: Mapping[str, Path] | None = None,
    branch_onnx: Mapping[str, Path] | None = None,
) -> Path:
    """Write the whole repository to ``out`` (replacing a previous one) and return ``out``.

    ``configs`` replaces :func:`model_configs` (the gpu target derives its own,
    :func:`fashionbox.converter.tensorrt.gpu_model_configs`); ``files`` maps repository-relative
    paths to files copied there last; ``branch_onnx`` maps ``classifier`` / ``embedder`` /
    ``text_embedder`` to their graphs (the text tower's tokenizer comes through ``files``). The ONNX
    graphs are always checked against the contract.
    Without ``configs``, ``settings.crop_mask_size`` is read from the attribute graph
    (:func:`attributes_mask_size`): a graph with a mask head gets CROP_MASKS served, one without does not.

    Everything is checked before the first byte is written (configs, ONNX contract, manifest is
    JSON), then built in a hidden sibling folder and renamed into place. If anything fails, the
    sibling is removed and a previous repository at ``out`` is left as it was.
    """
    out = Path(out)
    if out.name in ("", ".", "..") or out.resolve() == Path(out.anchor or "/").resolve():
        raise ValueError(f"refusing to write a repository at {str(out)!r}")
    for path in (detector_onnx, attributes_onnx):
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
    if configs is None:
        settings = replace(settings, crop_mask_size=attributes_mask_size(Path(attributes_onnx)),
                           crop_embedding_size=attributes_embedding_size(Path(attributes_onnx)))
    configs = dict(configs) if configs is not None else model_configs(settings, label_map)
    for path in (files or {}).values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"file to copy into the repository not found: {path}")
    check_onnx_contract(Path(detector_onnx), Path(attributes_onnx), settings, label_map)
    try:
        manifest_json = json.dumps(dict(manifest), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"manifest must be JSON-serialisable: {exc}") from exc
    if out.exists() or out.is_symlink():
        _check_replaceable(out)

    # the fused layout runs the attribute network inside postprocess
    attributes_home = contract.POSTPROCESS_MODEL if settings.layout == "fused" else contract.ATTRIBUTES_MODEL
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    try:
        _build(
            staging,
            configs,
            {contract.DETECTOR_MODEL: Path(detector_onnx), attributes_home: Path(attributes_onnx),
             **{name: Path(path) for name, path in (branch_onnx or {}).items()}},
            label_map,
            manifest_json,
            files,
            settings.sources,
        )
        staging.chmod(0o755)  # mkdtemp makes it 0700; a server running as another user must read it
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote model repository %s (%s)", out, ", ".join(configs))
    return out
