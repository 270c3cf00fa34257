"""The converter: trained PyTorch models -> ONNX (-> TensorRT) -> a complete Triton model repository.

A thin orchestrator over typed steps (``export``, ``repository``). Model families are one
table, :data:`FAMILIES`: adding a family means adding one entry with its loader and its
export/compare pair, not another branch::

    result = convert(ConvertOptions(out=Path("artifacts/model_repository")))
    result.repository, result.reports

Model specs: ``default`` (the shipped weights) or a path to a FashionBox ``.safetensors``
checkpoint, and the outside families' specs (:func:`resolve_spec`). No code is executed from a
checkpoint; the only download is ``hf:ORG/NAME``'s config and safetensors files (:mod:`.hub`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from fashionbox import contract
from fashionbox.contract.labels import LabelMap
from fashionbox.converter.errors import ConvertError

if TYPE_CHECKING:
    from fashionbox.converter.cpu_runtimes import BranchProbe, CpuChoice, TorchCandidate
    from fashionbox.converter.repository import RepositorySettings
    from fashionbox.converter.tensorrt import EngineOptions
    from fashionbox.models.nms import NmsSettings

__all__ = ["FAMILIES", "ConvertError", "ConvertOptions", "ConvertResult", "Family", "convert", "resolve_spec"]

log = logging.getLogger(__name__)

Target = Literal["cpu", "gpu"]
Runtime = Literal["auto", "onnxruntime", "openvino", "tensorrt", "torch"]
CpuPrecision = Literal["fp32", "bf16"]
Letterbox = Literal["auto", "square", "rect"]
LETTERBOXES = ("auto", "square", "rect")
RUNTIMES: dict[Target, tuple[str, ...]] = {"cpu": ("onnxruntime", "openvino", "torch"), "gpu": ("tensorrt", "torch")}
"""What may run the networks on each target; the first is ``auto``'s choice on gpu, and on cpu where
nothing is measured (the checks before export). On cpu ``auto`` times ONNX Runtime and OpenVINO on
the exported graphs, and the torch runtime where it could serve the repository (the square letterbox),
and keeps the fastest (:mod:`fashionbox.converter.cpu_runtimes`)."""


@dataclass(frozen=True)
class Family:
    """How to load, export and check one detector family."""

    name: str
    load_detector: Callable[[Path], tuple[Any, LabelMap]]
    export_detector: Callable[..., Path]
    """``(detector, path, *, nms, opset, letterbox_stride)``: the detector graph for the square letterbox
    (``letterbox_stride`` 0) or the rect one of that stride (a multiple of :attr:`letterbox_stride`'s)."""
    compare_detector: Callable[..., Any]
    input_size: Callable[[Any], int] = lambda detector: int(detector.config.input_size)
    """Side of the square letterbox the loaded detector is served at."""
    torch_runtime: bool = False
    """Whether the torch runtime can serve its checkpoints: :class:`fashionbox.models.torch_runtime.TorchDetector`
    the checkpoint file itself, or (``torch_files``) :class:`fashionbox.models.torch_runtime.TorchDetrDetector`."""
    torch_files: Callable[[Any, Path], Path] | None = None
    """Writes what the torch runtime loads for the loaded detector into a folder (a transformers family's
    saved model and graph spec) and returns it; None: the runtime loads the checkpoint file itself."""
    score_threshold: float = contract.DEFAULT_SCORE_THRESHOLD
    iou_threshold: float = contract.DEFAULT_IOU_THRESHOLD
    max_detections: int = contract.DEFAULT_MAX_DETECTIONS
    """The family's own predictor's defaults (``ConvertOptions`` overrides them): a checkpoint
    served by FashionBox answers as its library's predictor would."""
    segments: Callable[[Any], bool] = lambda detector: False
    """Whether the loaded detector's graph gives mask coefficients and prototypes (``detector_masks``)."""
    mask_crop: bool = True
    """A segmenting graph's masks are cut to their boxes, as Ultralytics' predictor does; False: each mask over
    the whole letterbox (RF-DETR-Seg's post-processing). Both drop a detection whose mask is empty."""
    own_score_threshold: Callable[[Any], float | None] = lambda detector: None
    """The threshold a loaded checkpoint carries for itself (a calibrated FashionBox detector's, in its
    calibrated units), which takes the place of ``score_threshold``; None: the family's."""
    own_max_detections: Callable[[Any], int | None] = lambda detector: None
    """The most detections a loaded detector's graph gives an image (a DETR-style checkpoint's queries,
    or its top-k), which takes the place of ``max_detections``: where a full list is cut, the runtimes'
    comparisons excuse the ties at its last score; None: the family's."""
    threads: int = 1
    """ONNX Runtime / OpenVINO threads per network instance on the CPU target, at most the serving
    machine's cores, unless ``--threads`` says otherwise. 1 for the default model, whose many
    single-thread instances serve it best; 2 for the other families' detectors, of hundreds of
    milliseconds per image, which one thread and one instance leave a core idle with (a
    YOLOv8s-seg-sized one on 2 cores: p50 184 against 315 ms, 1.37x the images/s; BENCHMARKS.md,
    "Thread spinning and threads per network model")."""
    letterbox_stride: Callable[[Any], int] = lambda detector: 0
    """The stride of the rect letterbox the loaded detector's graph takes (any height and width that are
    multiples of it: ``RepositorySettings.letterbox_stride``), 0 where it takes only the square one."""
    letterbox_min_side: Callable[[Any, int], int] = lambda detector, stride: 0
    """``(detector, stride)``: the shortest side its rect letterbox of that stride may have
    (``RepositorySettings.letterbox_min_side``; 0: none), where a thin strip would leave fewer encoder tokens
    than the queries the detector selects among them."""
    resize: Callable[[Any, int], Any] | None = None
    """``(detector, size)``: the loaded detector served at another letterbox side (``--input-size``),
    refused (a ``ConvertError``) where its graph cannot take it; None: served at its own size only."""
    queries: Callable[[Any, Path], tuple[Any, LabelMap]] | None = None
    """``(detector, file)``: an open-vocabulary detector serving the classes a queries file names
    (``--queries``), and their label map; None: the classes are the checkpoint's own."""


def _default_family() -> Family:
    from fashionbox.converter.export import compare_detector, export_detector_onnx
    from fashionbox.models import load_detector

    return Family("fashionbox", load_detector, export_detector_onnx, compare_detector, torch_runtime=True,
                  own_score_threshold=lambda detector: detector.config.score_threshold)


def _detr_style_family(style: Any) -> Family:
    from fashionbox.converter.detr import (
        compare_detr,
        export_detr_onnx,
        family_loader,
        graph_max_detections,
        resized_checkpoint,
        write_torch_files,
    )

    # transformers' post_process_object_detection keeps scores above its threshold (0.5 in each
    # DETR-style processor); DETR-style models need no NMS; at most the queries (or top_k) per image
    return Family(style.family, family_loader(style), export_detr_onnx, compare_detr,
                  input_size=lambda checkpoint: int(checkpoint.input_size), threads=2,
                  score_threshold=style.score_threshold, max_detections=style.max_detections,
                  own_max_detections=graph_max_detections, torch_runtime=True,
                  torch_files=write_torch_files, segments=lambda checkpoint: bool(checkpoint.style.masks),
                  mask_crop=not style.masks, letterbox_stride=lambda checkpoint: checkpoint.letterbox_stride,
                  letterbox_min_side=lambda checkpoint, stride: checkpoint.letterbox_min_side(stride),
                  resize=resized_checkpoint)


def _yolos_family() -> Family:
    from fashionbox.converter.yolos import YOLOS

    return _detr_style_family(YOLOS)


def _lw_detr_family() -> Family:
    from fashionbox.converter.lw_detr import LW_DETR

    return _detr_style_family(LW_DETR)


def _hf_family(name: str) -> Callable[[], Family]:
    def factory() -> Family:
        from fashionbox.converter.detr import STYLES

        return _detr_style_family(STYLES[name])

    return factory


def _owl_family(model_type: str) -> Callable[[], Family]:
    def factory() -> Family:
        from fashionbox.converter import owl

        # the OWL processors' threshold (0.1), class-wise NMS at transformers' image-guided default (0.3)
        return Family(model_type, owl.owl_loader(model_type), owl.export_owl_onnx, owl.compare_owl,
                      input_size=lambda checkpoint: int(checkpoint.input_size), threads=2,
                      score_threshold=owl.SCORE_THRESHOLD, iou_threshold=owl.IOU_THRESHOLD,
                      max_detections=owl.MAX_DETECTIONS, torch_runtime=True, torch_files=owl.write_owl_torch_files,
                      queries=owl.requery)

    return factory


def _ultralytics_family() -> Family:
    from fashionbox.converter.ultralytics import (
        compare_ultralytics,
        export_ultralytics_onnx,
        load_ultralytics_family,
        resized_ultralytics,
    )

    # Ultralytics' predictor defaults: conf 0.25, NMS IoU 0.7, max_det 300
    return Family("ultralytics", load_ultralytics_family, export_ultralytics_onnx, compare_ultralytics,
                  input_size=lambda model: int(model.input_size), score_threshold=0.25, iou_threshold=0.7,
                  max_detections=300, segments=lambda model: bool(model.segments), threads=2,
                  letterbox_stride=lambda model: int(model.stride) if model.dynamic_shape else 0,
                  resize=resized_ultralytics)


FAMILIES: dict[str, Callable[[], Family]] = {"fashionbox": _default_family, "yolos": _yolos_family,
                                             "detr": _hf_family("detr"),
                                             "conditional_detr": _hf_family("conditional_detr"),
                                             "rt_detr": _hf_family("rt_detr"),
                                             "rt_detr_v2": _hf_family("rt_detr_v2"),
                                             "d_fine": _hf_family("d_fine"),
                                             "deimv2": _hf_family("deimv2"),
                                             "deformable_detr": _hf_family("deformable_detr"),
                                             "dab_detr": _hf_family("dab_detr"), "lw_detr": _lw_detr_family,
                                             "rf_detr": _hf_family("rf_detr"), "rf_detr_seg": _hf_family("rf_detr_seg"),
                                             "owlv2": _owl_family("owlv2"), "owlvit": _owl_family("owlvit"),
                                             "ultralytics": _ultralytics_family}
"""Family name -> factory (lazy, so importing the converter does not import torch)."""

HF_MODEL_TYPES: dict[str, str] = {"yolos": "yolos", "detr": "detr", "conditional_detr": "conditional_detr",
                                  "rt_detr": "rt_detr", "rt_detr_v2": "rt_detr_v2", "d_fine": "d_fine",
                                  "deimv2": "deimv2", "deformable_detr": "deformable_detr", "dab-detr": "dab_detr",
                                  "lw_detr": "lw_detr", "rf_detr": "rf_detr", "owlv2": "owlv2", "owlvit": "owlvit"}
"""``model_type`` of a Hugging Face checkpoint's config.json -> family (specs ``hf:FOLDER_OR_HUB_ID``)."""

HF_ARCHITECTURES: dict[str, str] = {"RfDetrForInstanceSegmentation": "rf_detr_seg"}
"""An ``architectures`` entry of config.json -> family, where one ``model_type`` has two (RF-DETR and RF-DETR-Seg)."""

OPEN_VOCABULARY = frozenset({"owlv2", "owlvit"})
"""The families whose classes are queries (``--queries``: texts, embedded by the checkpoint's own tokenizer and
text tower, or example photos)."""


@dataclass(frozen=True)
class ConvertOptions:
    out: Path
    detector: str = "default"
    attributes: str = "default"
    classifier: str | None = None
    """An image-level classifier family (``hf:FOLDER_OR_HUB_ID``): labels for the whole image, served
    instead of the default model's product verticals."""
    embedder: str | None = None
    """An embedder family (``hf:FOLDER_OR_HUB_ID``, CLIP or SigLIP): vectors for every garment and the
    whole image (and ``text_embedder`` for its text tower), instead of the default model's embedding."""
    target: Target = "cpu"
    runtime: Runtime = "auto"
    """What runs the networks: ``onnxruntime`` (cpu) or TensorRT engines (gpu) for ``auto``, or
    ``torch`` (PyTorch in the python backend, on the GPU for target gpu, FP16 unless
    ``engines.fp16`` is off), or ``openvino`` (the same ONNX graphs in OpenVINO, target cpu). ``auto``
    on cpu measures ONNX Runtime and OpenVINO here, and the torch runtime where the family has one and the
    letterbox is square (a rect letterbox serves fewer pixels than any runtime saves), and records the
    choice in the manifest; a torch pick writes the repository ``torch`` would."""
    precision: CpuPrecision | None = None
    """Target cpu: ``fp32`` or ``bf16`` (OpenVINO only, on a CPU with AMX or AVX512-BF16: refused
    elsewhere). ``None`` is fp32. With ``auto``, ``bf16`` makes OpenVINO bf16 a candidate too."""
    opset: int = 17
    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    """``None``: the family's default (:class:`Family`), its own predictor's."""
    compare_samples: int = 8
    """Generated scenes used to compare ONNX Runtime with PyTorch (plus random inputs)."""
    tolerance: dict[str, float] = field(default_factory=lambda: {
        "boxes": 0.05, "scores": 1e-4, "probs": 1e-4, "masks": 1e-4, "nms_count_mismatch": 0.0, "nms_scores": 1e-4,
        "detections_count_mismatch": 0.0, "mask_coeffs": 1e-4, "embeddings": 1e-4, "embeddings_cosine": 1e-6,
        "verticals": 1e-4, "score_offsets": 1e-4, "mask_logits": 1e-2})
    repository_settings: dict[str, Any] = field(default_factory=dict)
    """Overrides for ``RepositorySettings`` (instance counts, batching...)."""
    cores: int | None = None
    """Target cpu with ONNX Runtime or OpenVINO: the serving machine's cores, which set the instances
    of each step (``fashionbox.converter.repository.cpu_scheduling``, ``fused_scheduling`` for the
    fused layout: 2 cores get the shipped defaults); ``None``: this machine's. Recorded in the
    manifest (``cpu_cores``)."""
    auto_garments: int = 8
    """``--runtime auto`` on target cpu: the garments a photo of the collection carries, which
    ``auto``'s probe weighs (its attribute batch, the embedder's garments:
    ``fashionbox.converter.cpu_runtimes.PROBE_GARMENTS`` by default; 1 for product shots). Recorded
    in the manifest (``cpu_runtime.garments_per_photo``)."""
    letterbox: Letterbox = "auto"
    """``square``: every image letterboxed to the square input size. ``rect``: the smallest stride
    multiple on the short side (``RepositorySettings.letterbox_stride``), as Ultralytics' predictor
    runs a dynamic export (the transformers detectors take it too); refused for a detector whose graph
    takes only the square. ``auto``: rect where the detector takes it and the target is cpu (ONNX
    Runtime or OpenVINO), else square."""
    input_size: int | None = None
    """The letterbox's side (its long side with a rect letterbox) to serve the detector at, instead of
    its own (a transformers processor's ``shortest_edge``, an Ultralytics export's ``imgsz``): a larger
    one for accuracy on small garments, a smaller one for speed. Refused where the graph cannot take it
    (a fixed-shape export, the default model, a size the graph's stride does not divide)."""
    queries: Path | None = None
    """An open-vocabulary detector's classes (OWL-ViT, OWLv2): a queries file, one class a line, ``name`` or
    ``name: prompt | prompt ...``, each a text or ``@photo.jpg`` (an example photo), several averaged
    (``fashionbox.converter.owl.read_queries``); None: the family's default (the 27
    Fashionpedia garments and accessories). Refused for the families whose classes are their checkpoint's."""
    engines: EngineOptions = field(default_factory=lambda: _engine_options())
    """``--target gpu`` only: TensorRT engines built now or later, FP16, workspace, CUDA graphs."""

    def __post_init__(self) -> None:
        if self.target not in ("cpu", "gpu"):
            raise ConvertError(f"unknown target {self.target!r}: choose cpu or gpu")
        if self.opset < 17:
            raise ConvertError(f"opset {self.opset} is too old: FashionBox exports opset 17 or newer")
        if self.runtime != "auto" and self.runtime not in RUNTIMES[self.target]:
            raise ConvertError(f"runtime {self.runtime!r} does not run on target {self.target}; choose one of "
                               f"{RUNTIMES[self.target]}")
        if self.precision not in (None, "fp32", "bf16"):
            raise ConvertError(f"precision {self.precision!r}: choose fp32 or bf16 (target gpu: --no-fp16)")
        if self.precision is not None and self.target != "cpu":
            raise ConvertError("--precision applies to target cpu; target gpu is FP16 unless --no-fp16")
        if self.precision == "bf16" and self.runtime not in ("openvino", "auto"):
            raise ConvertError(f"bf16 runs in OpenVINO only (--runtime openvino or auto), not {self.runtime}")
        if self.cores is not None and (isinstance(self.cores, bool) or not isinstance(self.cores, int)
                                       or self.cores < 1):
            raise ConvertError(f"cores must be a positive integer, got {self.cores!r}")
        if isinstance(self.auto_garments, bool) or not isinstance(self.auto_garments, int) or not \
                1 <= self.auto_garments <= 256:
            raise ConvertError(f"auto_garments must be an integer in 1..256, got {self.auto_garments!r}")
        if self.letterbox not in LETTERBOXES:
            raise ConvertError(f"letterbox {self.letterbox!r}: choose one of {LETTERBOXES}")
        if self.input_size is not None and (isinstance(self.input_size, bool) or not isinstance(self.input_size, int)
                                            or self.input_size < 1):
            raise ConvertError(f"input_size must be a positive integer, got {self.input_size!r}")
        if self.letterbox == "rect" and (self.target != "cpu" or self.runtime == "torch"):
            raise ConvertError("--letterbox rect is served on target cpu with ONNX Runtime or OpenVINO; the GPU "
                               "profiles and the torch runtime take the square letterbox")
        if self.repository_settings.get("layout") == "fused" and (self.target != "cpu" or self.runtime == "torch"):
            raise ConvertError("--layout fused is a CPU layout for ONNX Runtime and OpenVINO (--target cpu, --runtime "
                               "auto, onnxruntime or openvino); the GPU profiles and the torch runtime keep the steps "
                               "layout")

    @property
    def resolved_runtime(self) -> str:
        return RUNTIMES[self.target][0] if self.runtime == "auto" else self.runtime


@dataclass(frozen=True)
class ConvertResult:
    repository: Path
    reports: dict[str, dict[str, float]]
    manifest: dict[str, Any]


def _engine_options() -> EngineOptions:
    from fashionbox.converter.tensorrt import EngineOptions

    return EngineOptions()


def resolve_spec(spec: str, kind: Literal["detector", "attributes"]) -> tuple[str, Path]:
    """``default`` | ``PATH.safetensors`` | ``hf:FOLDER`` | ``ultralytics:FILE.onnx`` (detector only)
    -> (family, weights file)."""
    from fashionbox.models import default_weights

    if spec == "default":
        return "fashionbox", default_weights(kind)
    if spec.startswith("ultralytics:") and not Path(spec).exists():
        return _resolve_ultralytics(Path(spec[len("ultralytics:"):]), kind)
    if spec.startswith("hf:") and not Path(spec).exists():
        return _resolve_hf(Path(spec[3:]), kind)
    if ":" in spec and not Path(spec).exists():
        family = spec.split(":", 1)[0]
        raise ConvertError(f"unknown model family {family!r} in {spec!r}; known: {sorted(FAMILIES)}")
    path = Path(spec)
    if path.suffix != ".safetensors":
        raise ConvertError(f"{spec!r}: expected 'default' or a .safetensors checkpoint (pickle files are refused)")
    if not path.is_file():
        raise ConvertError(f"checkpoint not found: {spec}")
    return "fashionbox", path


def _resolve_ultralytics(path: Path, kind: Literal["detector", "attributes"]) -> tuple[str, Path]:
    from fashionbox.converter.ultralytics import UltralyticsError, check_path

    if kind != "detector":
        raise ConvertError("ultralytics: files are detectors; the attribute heads are FashionBox checkpoints")
    try:
        return "ultralytics", check_path(path)
    except UltralyticsError as exc:
        raise ConvertError(str(exc)) from exc


def _resolve_hf(folder: Path, kind: Literal["detector", "attributes"]) -> tuple[str, Path]:
    """``hf:FOLDER``, or ``hf:ORG/NAME`` (not a local folder) fetched through the Hub cache (:mod:`.hub`)."""
    from fashionbox.converter.detr import DetrError, checkpoint_weights, hf_architectures, hf_model_type
    from fashionbox.converter.hub import fetch_checkpoint, is_hub_id

    if kind != "detector":
        raise ConvertError("hf: checkpoints are detectors; the attribute heads are FashionBox checkpoints")
    repo_id = folder.as_posix() if not folder.exists() and is_hub_id(folder.as_posix()) else None
    if repo_id:
        folder = fetch_checkpoint(repo_id)
    try:
        weights = checkpoint_weights(folder)
        model_type = hf_model_type(folder)
    except DetrError as exc:
        raise ConvertError(str(exc)) from exc
    if repo_id and HF_MODEL_TYPES.get(model_type) in OPEN_VOCABULARY:  # its tokenizer embeds the queries
        from fashionbox.converter.image_models import fetch_hub_folder

        weights = fetch_hub_folder(repo_id, text_files=True) / weights.name
    if model_type not in HF_MODEL_TYPES:
        raise ConvertError(f"{folder}: Hugging Face model_type {model_type!r} is not supported; "
                           f"known: {sorted(HF_MODEL_TYPES)}")
    architectures = [HF_ARCHITECTURES[a] for a in hf_architectures(folder) if a in HF_ARCHITECTURES]
    return (architectures[0] if architectures else HF_MODEL_TYPES[model_type]), weights


def _letterbox_stride(options: ConvertOptions, family: Family, detector: Any, *, onnx_on_cpu: bool) -> int:
    """``RepositorySettings.letterbox_stride`` for ``options.letterbox`` (0: the square letterbox)."""
    stride = family.letterbox_stride(detector)
    if options.letterbox == "rect" and not stride:
        raise ConvertError(f"--letterbox rect: this {family.name} detector's graph takes only the square "
                           f"{family.input_size(detector)} letterbox (the DETR-style transformers detectors take any "
                           "height and width but an RT-DETR with anchor_image_size and an RT-DETRv2 or D-FINE with "
                           "discrete sampling; OWL-ViT, OWLv2, RF-DETR and RF-DETR-Seg their own square only; an "
                           "Ultralytics export does when exported with dynamic=True)")
    return stride if options.letterbox == "rect" or (options.letterbox == "auto" and onnx_on_cpu) else 0


def _comparison_inputs(size: int, crop: int, samples: int, label_map: LabelMap, *, letterbox_stride: int = 0,
                       letterbox_min_side: int = 0) -> tuple[list[npt.NDArray[np.uint8]], list[npt.NDArray[np.uint8]]]:
    """Random uint8 batches plus letterboxed generated scenes (and their garment crops); with a rect
    letterbox, a batch of the shape a 4:3 landscape photo is served at, one of a 1:2 portrait's (which
    a stride of half the size, as a tiny test model's, still serves narrower than the square) and one of
    the thinnest strip the letterbox makes (its min side, or one stride)."""
    from fashionbox.core.imaging import crop_garments
    from fashionbox.training.data import render_sample

    rng = np.random.default_rng(0)
    scenes = [render_sample(90_000 + i, size, label_map) for i in range(samples)]
    detector_batches = [rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8),
                        np.stack([s.pixels for s in scenes])]
    if letterbox_stride:
        from fashionbox.core.imaging import rect_canvas

        landscape = rect_canvas(4 * size, 3 * size, size, letterbox_stride, letterbox_min_side)
        portrait = rect_canvas(size, 2 * size, size, letterbox_stride, letterbox_min_side)
        strip = rect_canvas(size, 1, size, letterbox_stride, letterbox_min_side)
        detector_batches += [rng.integers(0, 256, (2, *landscape, 3), dtype=np.uint8),
                             rng.integers(0, 256, (1, *portrait, 3), dtype=np.uint8),
                             rng.integers(0, 256, (1, *strip, 3), dtype=np.uint8)]
    crops = [crop_garments(s.pixels, s.boxes, crop) for s in scenes]
    attribute_batches = [rng.integers(0, 256, (3, crop, crop, 3), dtype=np.uint8), np.concatenate(crops)]
    return detector_batches, attribute_batches


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import onnx
    import onnxruntime
    import torch

    versions = {"fashionbox": version("fashionbox-converter"), "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    transformers = sys.modules.get("transformers")  # only when a family loaded a Hugging Face checkpoint
    if transformers is not None:
        versions["transformers"] = str(transformers.__version__)
    openvino = sys.modules.get("openvino")  # only when a CPU runtime was checked or measured with it
    if openvino is not None:
        versions["openvino"] = str(openvino.__version__)
    return versions


def family_nms(family: Family, options: ConvertOptions, detector: Any = None) -> NmsSettings:
    """The detector graph's thresholds: the options' where given, else the loaded ``detector``'s own
    score threshold and most detections where it carries them, else the family's defaults."""
    from fashionbox.models.nms import NmsSettings

    def pick(given: float | None, default: float) -> float:
        return default if given is None else given

    own = family.own_score_threshold(detector) if detector is not None else None
    own_max = family.own_max_detections(detector) if detector is not None else None
    max_detections = int(pick(options.max_detections, pick(own_max, family.max_detections)))
    return NmsSettings(score_threshold=pick(options.score_threshold, pick(own, family.score_threshold)),
                       iou_threshold=pick(options.iou_threshold, family.iou_threshold),
                       max_per_class=max_detections, max_detections=max_detections)


def _cpu_runtime(options: ConvertOptions, detector_onnx: Path, attributes_onnx: Path,
                 det_batches: list[npt.NDArray[np.uint8]], attr_batches: list[npt.NDArray[np.uint8]], *,
                 max_detections: int, num_attribute_labels: int, threads: int, torch: TorchCandidate | None = None,
                 branches: list[BranchProbe] | None = None,
                 not_candidates: dict[str, str] | None = None) -> CpuChoice | None:
    """Target cpu: ``auto``'s measured choice (``torch``: the torch runtime a candidate too), or OpenVINO's
    check when asked for; ``None`` otherwise."""
    from fashionbox.converter.cpu_runtimes import CpuChoice, check_openvino, choose_cpu_runtime
    from fashionbox.core.openvino_runtime import host_cpu

    if options.target != "cpu":
        return None
    if options.runtime == "auto":
        return choose_cpu_runtime(detector_onnx, attributes_onnx, det_batches, attr_batches,
                                  allow_bf16=options.precision == "bf16", tolerance=options.tolerance,
                                  max_detections=max_detections, num_attribute_labels=num_attribute_labels,
                                  threads=threads, torch=torch, branches=branches or [],
                                  not_candidates=not_candidates, garments=options.auto_garments)
    if options.runtime != "openvino":
        return None
    precision = options.precision or "fp32"
    reports = check_openvino(detector_onnx, attributes_onnx, det_batches, attr_batches, precision=precision,
                             tolerance=options.tolerance, max_detections=max_detections,
                             num_attribute_labels=num_attribute_labels, branches=branches or [])
    return CpuChoice("openvino", precision, reports, {"chosen": f"openvino/{precision}", "cpu": host_cpu().as_dict()})


@dataclass
class _Branches:
    """The image-level families' exports: repository settings, graphs, files, reports, manifest."""

    settings: dict[str, Any] = field(default_factory=dict)
    onnx: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    reports: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per kind, the family's ONNX graph against its own library (:func:`compare_image_model`)."""
    manifest: dict[str, Any] = field(default_factory=dict)
    tokenizer: Path | None = None
    """The text tower's tokenizer folder, where the embedder has one."""


def _load_image_models(options: ConvertOptions) -> dict[str, Any]:
    """``--classifier`` / ``--embedder`` loaded (before minutes of detector export), by kind."""
    specs = {"classifier": options.classifier, "embedder": options.embedder}
    if not any(specs.values()):
        return {}
    from fashionbox.converter.image_models import load_image_model

    return {kind: load_image_model(spec, kind) for kind, spec in specs.items() if spec}  # type: ignore[arg-type]


def _comparison_images(samples: int) -> list[npt.NDArray[np.uint8]]:
    """Generated scenes at their own (odd) sizes: what the image-level families are compared on."""
    from fashionbox.synth import render_scene

    return [np.asarray(render_scene(95_000 + i).image.convert("RGB")) for i in range(max(2, samples // 2))]


def _export_image_models(models: dict[str, Any], tmp: Path, options: ConvertOptions) -> _Branches:
    """Export and compare each image-level family; what the repository needs of them (the torch runtime's
    files apart: :func:`_branch_torch_files`)."""
    from fashionbox.converter.image_models import compare_image_model, export_image_model
    from fashionbox.converter.repository import MODEL_VERSION, TOKENIZER_DIR, ImageBranch

    out = _Branches()
    if not models:
        return out
    images = _comparison_images(options.compare_samples)
    for kind, model in models.items():
        files = export_image_model(model, tmp / kind, opset=options.opset)
        report = compare_image_model(model, files, images)
        out.reports[kind] = dict(report)
        size = len(model.labels) if kind == "classifier" else int(model.dimension)
        out.settings[kind] = ImageBranch(name=model.name, view=model.view.to_json(), height=model.view.height,
                                         width=model.view.width, size=size, labels=tuple(model.labels),
                                         text=kind == "embedder" and "text" in files)
        name = _branch_model(kind)
        out.onnx[name] = files["image"]
        if kind == "embedder" and "text" in files:
            out.onnx[contract.TEXT_EMBEDDER_MODEL] = files["text"]
            out.tokenizer = Path(files["tokenizer"])
            for path in sorted(Path(files["tokenizer"]).iterdir()):
                if path.is_file():
                    out.files[f"{contract.TEXT_EMBEDDER_MODEL}/{MODEL_VERSION}/{TOKENIZER_DIR}/{path.name}"] = path
        out.manifest[kind] = {"spec": getattr(options, kind), "name": model.name, "size": size,
                              "view": json.loads(model.view.to_json()), "text": kind == "embedder" and "text" in files}
    return out


def _branch_model(kind: str) -> str:
    return contract.CLASSIFIER_MODEL if kind == "classifier" else contract.EMBEDDER_MODEL


def _branch_torch_folder(model: Any, kind: str, tmp: Path) -> Path:
    """The torch runtime's folder of an image-level family (:func:`_torch_files`), written once."""
    from fashionbox.models.torch_runtime import BRANCH_FILE

    folder = tmp / kind / "transformers"
    return folder if (folder / BRANCH_FILE).is_file() else _torch_files(model, folder)


def _branch_torch_files(models: dict[str, Any], tmp: Path) -> dict[str, Path]:
    """The torch runtime's files of the image-level families (repository path -> file): its runner
    rebuilds each graph from the transformers files."""
    from fashionbox.converter.repository import MODEL_VERSION
    from fashionbox.model_repository.runners import TORCH_FOLDER

    return {f"{_branch_model(kind)}/{MODEL_VERSION}/{TORCH_FOLDER}/{path.name}": path
            for kind, model in models.items()
            for path in sorted(_branch_torch_folder(model, kind, tmp).iterdir())}


def _branch_probes(models: dict[str, Any], branches: _Branches, settings: RepositorySettings, tmp: Path, *,
                   torch: bool, garments: int) -> list[BranchProbe]:
    """The image-level families in ``auto``'s probe (``torch``: with their folders for the torch candidate)."""
    from fashionbox.converter.cpu_runtimes import BranchProbe

    probes = []
    for kind, model in models.items():
        branch = settings.classifier if kind == "classifier" else settings.embedder
        assert branch is not None  # set from the same export
        output = contract.ONNX_CLASSIFIER_OUTPUT if kind == "classifier" else contract.ONNX_EMBEDDER_OUTPUT
        probes.append(BranchProbe(kind, branches.onnx[_branch_model(kind)], output, branch.size, branch.height,
                                  branch.width, torch_folder=_branch_torch_folder(model, kind, tmp) if torch else None,
                                  garments=garments))
    return probes


def _torch_files(model: Any, folder: Path) -> Path:
    """``folder`` with what :class:`fashionbox.models.torch_runtime.TorchImageBranch` loads: the transformers
    config and safetensors weights, and ``branch.json`` (kind, model class, normalisation, input size)."""
    from fashionbox.converter.image_models import EMBEDDER_STYLES
    from fashionbox.models.torch_runtime import BRANCH_FILE

    model.model.save_pretrained(folder, safe_serialization=True)
    model_class = ("AutoModelForImageClassification" if model.kind == "classifier"
                   else EMBEDDER_STYLES[str(model.model.config.model_type)].model_class)
    (folder / BRANCH_FILE).write_text(json.dumps({
        "kind": model.kind, "model_class": model_class, "scale": list(model.scale), "bias": list(model.bias),
        "multi_label": model.multi_label, "height": model.view.height, "width": model.view.width}), encoding="utf-8")
    return folder


def _torch_not_candidate(family: Family, settings: RepositorySettings) -> dict[str, str]:
    """Why ``auto`` cannot weigh the torch runtime for this repository (``{}``: it can)."""
    why = (f"no torch runner for {family.name} detectors" if not family.torch_runtime
           else "takes the square letterbox only, and this detector is served with the rect one here (--letterbox "
                "square lets auto weigh it)" if settings.letterbox_stride
           else "the fused layout runs the ONNX graphs only" if settings.layout == "fused" else "")
    return {"torch/fp32": why} if why else {}


def _torch_runners(family: Family, detector: Any, detector_path: Path, attributes_path: Path, tmp: Path,
                   detector_onnx: Path, attributes_onnx: Path, det_batches: list[npt.NDArray[np.uint8]],
                   attr_batches: list[npt.NDArray[np.uint8]], *, settings: Any, max_detections: int,
                   num_labels: int) -> tuple[dict[str, Path], TorchCandidate]:
    """The torch runtime's files (repository path -> file) and its CPU runners, checked against the ONNX
    graphs (:func:`fashionbox.converter.export.compare_torch_runners`)."""
    from fashionbox.converter.cpu_runtimes import TorchCandidate
    from fashionbox.converter.export import compare_torch_runners
    from fashionbox.converter.repository import MODEL_VERSION, WEIGHTS_FILE
    from fashionbox.models.torch_runtime import TorchAttributes

    files, torch_detector = _torch_detector(family, detector, detector_path, tmp, settings, max_detections)
    files[f"{contract.ATTRIBUTES_MODEL}/{MODEL_VERSION}/{WEIGHTS_FILE}"] = attributes_path
    heads = TorchAttributes(attributes_path, device="cpu", precision="fp32", num_attribute_labels=num_labels)
    reports = compare_torch_runners(torch_detector, detector_onnx, attributes_path, attributes_onnx, det_batches,
                                    attr_batches, max_detections=max_detections, num_attribute_labels=num_labels,
                                    torch_heads=heads)
    return files, TorchCandidate(torch_detector, heads, reports)


def _torch_detector(family: Family, detector: Any, detector_path: Path, tmp: Path, runtime: Any,
                    max_detections: int) -> tuple[dict[str, Path], Any]:
    """The torch runtime's detector files (repository path -> file) and its runner on the CPU in fp32, which
    the converter checks against the ONNX graph: the FashionBox checkpoint itself, or the family's files."""
    from fashionbox.converter.repository import MODEL_VERSION, WEIGHTS_FILE
    from fashionbox.model_repository.runners import TORCH_FOLDER
    from fashionbox.models.torch_runtime import TorchDetector, TorchDetrDetector

    cpu = replace(runtime, precision="fp32")
    version = f"{contract.DETECTOR_MODEL}/{MODEL_VERSION}"
    if family.torch_files is None:
        return ({f"{version}/{WEIGHTS_FILE}": detector_path},
                TorchDetector.from_settings(detector_path, cpu, device="cpu", max_detections=max_detections))
    folder = family.torch_files(detector, tmp / "torch-detector")
    files = {f"{version}/{TORCH_FOLDER}/{path.name}": path for path in sorted(folder.iterdir()) if path.is_file()}
    return files, TorchDetrDetector.from_settings(folder, cpu, device="cpu", max_detections=max_detections)


GRAPH_FIELDS = ("crop_mask_size", "crop_embedding_size", "verifier_classes", "classifier", "embedder")
"""The :class:`RepositorySettings` fields read off the exported graphs and image-level families, kept when
``auto``'s pick rebuilds the rest for the torch runtime."""


def _repository_settings(options: ConvertOptions, family: Family, detector: Any, runtime: str, *, nms: NmsSettings,
                         stride: int, size: int, crop: int, model_version: str,
                         verticals: tuple[str, ...]) -> tuple[RepositorySettings, int | None]:
    """What runs the networks (``runtime``) and how many instances of each step, before the graphs are known;
    and the serving machine's cores they were sized for (``None``: not sized by cores).

    On the CPU with the ONNX graphs, instances for the serving machine's cores (a measured 2-core
    default), per layout; a heavy family's networks: more threads per instance (:attr:`Family.threads`),
    never more than the cores, and as many fewer network instances. The torch runtime on CPU
    instances: as many threads as the family's ONNX instances would have.
    """
    from fashionbox.converter.repository import (
        RepositorySettings,
        cpu_scheduling,
        fused_scheduling,
        gpu_scheduling,
        step_timeouts,
    )
    from fashionbox.core.serving import OrtSettings, RuntimeSettings

    onnx_on_cpu = options.target == "cpu" and runtime != "torch"
    serving_cores = options.cores or os.cpu_count() or 2
    fused = options.repository_settings.get("layout") == "fused"
    cores = serving_cores if onnx_on_cpu else None
    threads = min(family.threads, serving_cores) if onnx_on_cpu else 1
    given_ort = options.repository_settings.get("ort")  # --threads
    instance_threads = given_ort.intra_op_threads if isinstance(given_ort, OrtSettings) else threads
    torch_threads = ((given_ort.intra_op_threads if isinstance(given_ort, OrtSettings)
                      else min(family.threads, serving_cores)) if runtime == "torch" and options.target == "cpu" else 1)
    runtime_settings = RuntimeSettings(
        runtime=runtime if runtime in ("torch", "openvino") else "onnxruntime",
        precision=("fp16" if runtime == "torch" and options.target == "gpu" and options.engines.fp16
                   else (options.precision or "fp32") if runtime == "openvino" else "fp32"),
        score_threshold=nms.score_threshold, iou_threshold=nms.iou_threshold, torch_threads=torch_threads)
    repository_settings = step_timeouts({
        **({"ort": OrtSettings(intra_op_threads=threads)} if threads > 1 else {}),
        "target": options.target, "runtime": runtime_settings, "gpu_decode": options.engines.gpu_decode,
        **(gpu_scheduling() if options.target == "gpu" else {}),
        **((fused_scheduling if fused else cpu_scheduling)(cores, instance_threads) if cores else {}),
        "letterbox_stride": stride, "letterbox_min_side": family.letterbox_min_side(detector, stride) if stride else 0,
        **options.repository_settings})
    if family.segments(detector):  # the detector's mask tensors go to postprocess
        repository_settings = {"detector_masks": True, "detector_mask_crop": family.mask_crop, **repository_settings}
    return RepositorySettings(input_size=size, crop_size=crop, max_detections=nms.max_detections,
                              model_name=family.name, model_version=model_version, vertical_labels=verticals,
                              **repository_settings), cores


def convert(options: ConvertOptions) -> ConvertResult:
    """Export, check, compare and write the repository; nothing is written on failure."""
    from fashionbox.converter.export import compare_attributes, export_attributes_onnx
    from fashionbox.converter.repository import attributes_embedding_size, attributes_mask_size, write_repository
    from fashionbox.models import file_sha256, load_attributes, verifier_serves

    runtime = options.resolved_runtime
    measure_cpu = options.target == "cpu" and options.runtime == "auto"
    if runtime == "openvino" or (measure_cpu and options.precision == "bf16"):
        from fashionbox.converter.cpu_runtimes import check_bf16_host
        from fashionbox.core.openvino_runtime import OpenVinoError, import_openvino

        try:
            import_openvino()  # refuse before the export when OpenVINO was asked for and is missing
        except OpenVinoError as exc:
            raise ConvertError(str(exc)) from exc
        if options.precision == "bf16":
            check_bf16_host()
    if runtime == "tensorrt" and options.engines.build == "now":
        from fashionbox.converter.tensorrt import import_tensorrt

        import_tensorrt()  # refuse before minutes of export when engines cannot be built here
    image_models = _load_image_models(options)
    family_name, detector_path = resolve_spec(options.detector, "detector")
    _, attributes_path = resolve_spec(options.attributes, "attributes")
    family = FAMILIES[family_name]()
    if runtime == "torch" and not family.torch_runtime:
        raise ConvertError(f"the torch runtime serves FashionBox checkpoints and transformers (hf:) detectors; a "
                           f"{family.name} detector runs through ONNX Runtime or OpenVINO (--target cpu) or TensorRT "
                           "(--target gpu)")
    if options.queries is not None and family.queries is None:
        raise ConvertError(f"--queries names the classes of an open-vocabulary detector "
                           f"({', '.join(sorted(OPEN_VOCABULARY))}); a {family.name} detector's classes are its "
                           "checkpoint's")
    detector, label_map = family.load_detector(detector_path)
    if options.queries is not None and family.queries is not None:
        detector, label_map = family.queries(detector, Path(options.queries))
    own_size = family.input_size(detector)
    if options.input_size is not None and options.input_size != own_size:
        if family.resize is None:
            raise ConvertError(f"--input-size {options.input_size}: a {family.name} detector is served at its own "
                               f"{own_size} only")
        detector = family.resize(detector, options.input_size)
    classifier, attribute_labels = load_attributes(attributes_path)
    if attribute_labels.attribute_groups != label_map.attribute_groups:
        raise ConvertError("the detector's and the attribute heads' label maps disagree on attribute groups")
    nms = family_nms(family, options, detector)
    max_detections = nms.max_detections
    size = family.input_size(detector)
    # the ONNX graphs in ONNX Runtime or OpenVINO on the CPU: where rect letterboxes apply
    onnx_on_cpu = options.target == "cpu" and runtime != "torch"
    stride = _letterbox_stride(options, family, detector, onnx_on_cpu=onnx_on_cpu)
    crop = classifier.config.crop_size
    detector_sha, attributes_sha = file_sha256(detector_path), file_sha256(attributes_path)
    verifier = verifier_serves(classifier, detector_sha, label_map.num_categories)
    verifier_note = ""
    if classifier.verifier_head is not None and not verifier and family.name != "fashionbox":
        verifier_note = (f"the attribute checkpoint's verifier head corrects the default detector it was fitted to "
                         f"({classifier.config.verifier_detector[:12]}...): a {family.name} detector is served "
                         "without the second stage")
        log.info("%s", verifier_note)
    elif classifier.verifier_head is not None and not verifier:
        verifier_note = (f"the attribute checkpoint's verifier head was fitted to detector "
                         f"{classifier.config.verifier_detector[:12]}..., not this one ({detector_sha[:12]}...): "
                         "served without the second stage (fashionbox train --stage verifier refits it)")
        log.warning("%s", verifier_note)
    model_version = f"{detector_sha[:8]}-{attributes_sha[:8]}"
    settings_for = functools.partial(_repository_settings, options, family, detector, nms=nms, stride=stride,
                                     size=size, crop=crop, model_version=model_version,
                                     verticals=tuple(getattr(classifier.config, "verticals", ())))
    settings, cores = settings_for(runtime)
    runtime_settings = settings.runtime
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fashionbox-convert-") as tmp:
        detector_onnx = family.export_detector(detector, Path(tmp) / "detector.onnx", nms=nms, opset=options.opset,
                                               letterbox_stride=stride)
        attributes_onnx = export_attributes_onnx(classifier, Path(tmp) / "attributes.onnx", opset=options.opset)
        # Every profile (the GPU's configs are written before write_repository sees the graph) serves
        # the crop masks exactly when the attribute graph has a mask head.
        settings = replace(settings, crop_mask_size=attributes_mask_size(attributes_onnx),
                           crop_embedding_size=attributes_embedding_size(attributes_onnx),
                           verifier_classes=label_map.num_categories if verifier else 0)
        det_batches, attr_batches = _comparison_inputs(size, crop, options.compare_samples, attribute_labels,
                                                       letterbox_stride=settings.letterbox_stride,
                                                       letterbox_min_side=settings.letterbox_min_side)
        det_report = family.compare_detector(detector, detector_onnx, det_batches, nms)
        attr_report = compare_attributes(classifier, attributes_onnx, attr_batches)
        reports = [det_report, attr_report]
        torch_files: dict[str, Path] = {}
        torch_runners: TorchCandidate | None = None
        not_candidates = _torch_not_candidate(family, settings) if measure_cpu else {}
        if runtime == "torch" or (measure_cpu and not not_candidates):
            # the runners load the checkpoints themselves, checked against the graphs (auto: a candidate)
            torch_files, torch_runners = _torch_runners(family, detector, detector_path, attributes_path, Path(tmp),
                                                        detector_onnx, attributes_onnx, det_batches, attr_batches,
                                                        settings=runtime_settings, max_detections=max_detections,
                                                        num_labels=label_map.num_attribute_labels)
            if runtime == "torch":
                reports += torch_runners.reports
        for report in reports:
            log.info("%s: max abs error ONNX Runtime vs PyTorch %s over %d samples",
                     report.model, report.max_abs_error, report.samples)
            report.raise_if_over(options.tolerance)
        branches = _export_image_models(image_models, Path(tmp), options)
        settings = replace(settings, classifier=branches.settings.get("classifier"),
                           embedder=branches.settings.get("embedder"))
        cpu_runtime = _cpu_runtime(options, detector_onnx, attributes_onnx, det_batches, attr_batches,
                                   max_detections=max_detections, num_attribute_labels=label_map.num_attribute_labels,
                                   threads=settings.ort.intra_op_threads,
                                   torch=torch_runners if measure_cpu else None, not_candidates=not_candidates,
                                   branches=_branch_probes(image_models, branches, settings, Path(tmp),
                                                           torch=torch_runners is not None and measure_cpu,
                                                           garments=options.auto_garments))
        if cpu_runtime is not None:
            runtime = cpu_runtime.runtime
            reports += cpu_runtime.reports
            if runtime == "openvino" and branches.tokenizer is not None and settings.embedder is not None:
                from fashionbox.converter.cpu_runtimes import check_text_tower

                reports.append(check_text_tower(branches.onnx[contract.TEXT_EMBEDDER_MODEL], branches.tokenizer,
                                                dimension=settings.embedder.size, precision=cpu_runtime.precision,
                                                tolerance=options.tolerance))
            if runtime == "torch":  # auto's pick: the repository --runtime torch writes
                settings = replace(settings_for("torch")[0], **{name: getattr(settings, name) for name in GRAPH_FIELDS})
                cores = None
            else:
                settings = replace(settings, runtime=replace(settings.runtime, runtime=runtime,
                                                             precision=cpu_runtime.precision))
            runtime_settings = settings.runtime
        if runtime != "torch":
            torch_files = {}
        else:
            branches.files.update(_branch_torch_files(image_models, Path(tmp)))
        manifest = {
            "created_unix_s": int(started),
            "target": options.target,
            "layout": settings.layout,
            "cpu_cores": cores,
            "runtime": runtime,
            "precision": runtime_settings.precision if runtime in ("torch", "openvino") else None,
            "family": family.name,
            "sources": {
                "detector": {"spec": options.detector, "sha256": detector_sha,
                             "file": detector_path.name},
                "attributes": {"spec": options.attributes, "sha256": attributes_sha,
                               "file": attributes_path.name},
            },
            "export": {"opset": options.opset, "nms": asdict(nms), "input_size": size,
                       "input_size_from": "checkpoint" if size == own_size else "--input-size", "crop_size": crop,
                       "letterbox_stride": settings.letterbox_stride,
                       "letterbox_min_side": settings.letterbox_min_side,
                       "exporter": ("the file's own graph (Ultralytics' exporter)" if family.name == "ultralytics"
                                    else "torch.onnx (TorchScript), dynamic batch"
                                    + (", height and width" if settings.letterbox_stride else ""))},
            "comparison": {**{report.model: report.max_abs_error for report in reports},
                           **branches.reports, "tolerance": options.tolerance},
            "versions": _versions(),
        }
        if family.queries is not None:  # an open-vocabulary detector: what each served class was asked as
            manifest["queries"] = {"file": Path(options.queries).name if options.queries else None,
                                   **detector.queries.manifest()}
        if branches.manifest:
            manifest["image_models"] = branches.manifest
        for image_level in settings.image_level():  # what postprocess serves; the in-process baseline reads it
            manifest["image_level"] = image_level.to_parameters()
        if verifier:  # the second stage: postprocess re-scores at the served threshold
            manifest["verifier"] = {"classes": label_map.num_categories, "score_threshold": nms.score_threshold,
                                    "fitted_to": classifier.config.verifier_detector}
        elif classifier.verifier_head is not None:
            manifest["verifier_not_served"] = verifier_note
        if cpu_runtime is not None:  # what auto measured (or the explicit check), and on which CPU
            manifest["cpu_runtime"] = cpu_runtime.record
        gpu = None
        if runtime == "tensorrt":
            from fashionbox.converter.tensorrt import prepare_gpu_repository

            gpu = prepare_gpu_repository(Path(tmp), detector_onnx=detector_onnx, attributes_onnx=attributes_onnx,
                                         settings=settings, label_map=label_map, options=options.engines,
                                         detector_batches=det_batches, branch_onnx=branches.onnx)
            manifest["engines"] = gpu.manifest
        repository = write_repository(options.out, detector_onnx=detector_onnx, attributes_onnx=attributes_onnx,
                                      label_map=label_map, settings=settings, manifest=manifest,
                                      configs=gpu.configs if gpu else None,
                                      files={**(gpu.files if gpu else torch_files), **branches.files},
                                      branch_onnx=branches.onnx)
    log.info("model repository written to %s in %.1f s", repository, time.time() - started)
    return ConvertResult(repository, {**{report.model: report.max_abs_error for report in reports}, **branches.reports},
                         json.loads(json.dumps(manifest)))
