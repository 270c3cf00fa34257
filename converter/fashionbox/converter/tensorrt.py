"""TensorRT for ``fashionbox convert --target gpu``: engine graphs, engines, configs, build records.

Small typed steps, used by :func:`fashionbox.converter.convert`::

    tensorrt_detector_graph(detector_onnx, out, max_detections=50)   # NMS padded inside the graph
    tensorrt_attributes_graph(attributes_onnx, out)
    configs = gpu_model_configs(settings, label_map, EngineOptions(cuda_graphs=True))
    profile = profile_for(configs["detector"])                         # min/opt/max batch
    trtexec_command(EngineSpec("detector", onnx, plan, profile), options)
    record = build_engine(spec, options)                              # TensorRT Python API

Why the engine graphs differ from the CPU ones: a ``tensorrt_plan`` model's tensors must carry the
batch dimension first, and ONNX ``NonMaxSuppression`` lists kept boxes as ``[M, 3]`` rows for the
whole batch. The engine graph therefore scatters the kept scores back per image and takes the top
``max_detections`` with ``TopK``, giving fixed, padded ``[B, K]`` outputs (class ``-1`` for padding,
as :func:`fashionbox.core.postprocessing.stack_padded` pads), so no python step sits between detector
and crops. Its tensors are named as in ``contract.py`` (``PIXELS`` -> ``DET_*``), since Triton binds
a plan's tensors by name. Every convert checks it in ONNX Runtime against the CPU graph.

Engines are not portable: a plan runs only with the TensorRT version and on the GPU model it was
built with. The repository records where its engines were built (``manifest.json`` ``engines``, or
``engines.json`` written by ``build_engines.sh``) in the format of :mod:`fashionbox.server.engines`,
which checks the record against the serving machine before the server starts.

Engines are built either now (``EngineOptions(build="now")``, the default: the ``tensorrt``
package must be importable, on the GPU that will serve) or later (``build="later"``: the
repository gets ``build_engines.sh``, the exact ``trtexec`` commands, which the ``engine-builder``
compose service runs on the deployment GPU).
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from fashionbox import contract
from fashionbox.converter.errors import ConvertError
from fashionbox.server import engines as serving

# The record format and the serve-time check live in the server part; re-exported for the converter's callers.
from fashionbox.server.engines import (
    ENGINES_RECORD,
    ENGINES_SCRIPT,
    PLAN_FILE,
    EngineMismatchError,
    EngineRecord,
    GpuInfo,
    check_engine_compatibility,
    local_gpus,
    repository_runtime,
)

__all__ = [
    "ENGINES_RECORD",
    "ENGINES_SCRIPT",
    "PLAN_FILE",
    "TENSORRT_PLATFORM",
    "EngineError",
    "EngineMismatchError",
    "EngineOptions",
    "EngineRecord",
    "EngineSpec",
    "Fp16UnsupportedError",
    "GpuInfo",
    "GpuRepository",
    "OptimizationProfile",
    "build_engine",
    "check_engine_compatibility",
    "compare_detector_graphs",
    "engine_specs",
    "engines_script",
    "fit_engine_outputs",
    "gpu_model_configs",
    "local_gpus",
    "prepare_gpu_repository",
    "profile_for",
    "repository_runtime",
    "tensorrt_attributes_graph",
    "tensorrt_config",
    "tensorrt_detector_graph",
    "trtexec_command",
]

logger = logging.getLogger(__name__)

TENSORRT_PLATFORM = "tensorrt_plan"
ONNX_FILE = "model.onnx"
"""The engine graph kept next to the plan, so the plan can be rebuilt on the serving GPU."""
TIMING_CACHE_ENV = "FASHIONBOX_TIMING_CACHE"
SLOW_FP16_COMPUTE_CAPABILITIES = ("5.0", "5.2", "6.1")
"""Where TensorRT's ``platform_has_fast_fp16`` is false (Maxwell, consumer Pascal such as the P4/P40)."""

BuildWhen = Literal["now", "later"]


class EngineError(ConvertError, serving.EngineError):
    """A TensorRT engine cannot be built (also a :class:`fashionbox.server.engines.EngineError`)."""


class Fp16UnsupportedError(EngineError):
    """FP16 was asked for on a GPU without fast FP16; it is refused, never silently dropped."""


# -- options and records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineOptions:
    """How the GPU repository's engines are built and served."""

    build: BuildWhen = "now"
    """``now``: build with the TensorRT Python API here; ``later``: write ``build_engines.sh``."""
    fp16: bool = True
    workspace_mib: int = 2048
    """TensorRT builder workspace limit."""
    timing_cache: Path | None = None
    """Kept across builds so rebuilds skip kernel timing; None: the user cache folder."""
    cuda_graphs: bool = False
    """``optimization { cuda { graphs: true } }`` on the engine models."""
    gpu_decode: bool = True
    """``preprocess`` decodes JPEGs with nvJPEG when torchvision and CUDA are importable."""

    def __post_init__(self) -> None:
        if self.build not in ("now", "later"):
            raise ConvertError(f"engines must be built 'now' or 'later', got {self.build!r}")
        if isinstance(self.workspace_mib, bool) or not isinstance(self.workspace_mib, int) or self.workspace_mib < 1:
            raise ConvertError(f"workspace_mib must be a positive integer, got {self.workspace_mib!r}")

    def timing_cache_path(self, tensorrt_version: str) -> Path:
        if self.timing_cache is not None:
            return Path(self.timing_cache)
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "fashionbox" / f"tensorrt-{tensorrt_version}.timing-cache"


@dataclass(frozen=True)
class OptimizationProfile:
    """One TensorRT optimization profile over the batch dimension of one input."""

    input_name: str
    item_shape: tuple[int, ...]
    """The input's shape without the batch dimension."""
    min_batch: int
    opt_batch: int
    max_batch: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConvertError(f"profile needs 1 <= min <= opt <= max batch, got "
                               f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if any(d < 1 for d in self.item_shape):
            raise ConvertError(f"{self.input_name}: TensorRT profiles need static item dims, got {self.item_shape}")

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.item_shape)

    def trtexec_flags(self) -> list[str]:
        def spec(batch: int) -> str:
            return f"{self.input_name}:" + "x".join(str(d) for d in self.shape(batch))

        return [f"--minShapes={spec(self.min_batch)}", f"--optShapes={spec(self.opt_batch)}",
                f"--maxShapes={spec(self.max_batch)}"]


@dataclass(frozen=True)
class EngineSpec:
    """One engine to build: paths relative to the repository root (or absolute)."""

    model: str
    onnx: Path
    plan: Path
    profile: OptimizationProfile


def profile_for(config: Any) -> OptimizationProfile:
    """The profile of a batching ``ModelConfig``: batch 1 to ``max_batch_size``.

    The opt batch is the largest preferred batch size when the config names some (what the
    dynamic batcher aims for), else ``max_batch_size``.
    """
    if config.max_batch_size < 1:
        raise ConvertError(f"{config.name}: engines are built for batching models (max_batch_size >= 1)")
    if len(config.input) != 1:
        raise ConvertError(f"{config.name}: expected one input, got {len(config.input)}")
    preferred = list(config.dynamic_batching.preferred_batch_size)
    opt = max(preferred) if preferred else config.max_batch_size
    return OptimizationProfile(config.input[0].name, tuple(int(d) for d in config.input[0].dims),
                               1, opt, config.max_batch_size)


def engine_specs(configs: Mapping[str, Any], root: Path = Path()) -> list[EngineSpec]:
    """One spec per ``tensorrt_plan`` config: ``<root>/<model>/1/model.onnx`` -> ``model.plan``."""
    return [EngineSpec(name, root / name / "1" / ONNX_FILE, root / name / "1" / PLAN_FILE, profile_for(config))
            for name, config in configs.items() if config.platform == TENSORRT_PLATFORM]


# -- engine graphs (pure ONNX, checked in ONNX Runtime) ------------------------------------------------


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("preparing TensorRT graphs needs onnx: pip install fashionbox-converter") from exc
    return onnx


def _rename_input(graph: Any, old: str, new: str) -> None:
    for value in graph.input:
        if value.name == old:
            value.name = new
            break
    else:
        raise EngineError(f"the graph has no input {old!r}; see fashionbox/contract.py")
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _check_and_save(model: Any, dst: Path) -> Path:
    onnx = _import_onnx()
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return dst


def tensorrt_detector_graph(src: Path, dst: Path, *, max_detections: int) -> Path:
    """The CPU detector graph with fixed per-image outputs: ``PIXELS`` -> ``DET_BOXES/SCORES/CLASSES``.

    Per image: the kept (class, box) pairs by score descending, ties by box then class (as
    :func:`fashionbox.core.postprocessing.gather_detections` orders them), padded to ``max_detections``
    with zero boxes, zero scores and class -1. A segmenting graph (YOLO-seg, RF-DETR-Seg: ``mask_coeffs`` and
    ``protos``) adds ``DET_MASK_COEFFS`` (each kept detection's coefficients, rows as ``DET_BOXES``, zero in the
    padding) and ``DET_PROTOS`` (the image's prototypes as they are), which ``postprocess`` assembles masks from.
    """
    if max_detections < 1:
        raise ConvertError(f"max_detections must be at least 1, got {max_detections}")
    onnx = _import_onnx()
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    _rename_input(graph, contract.ONNX_DETECTOR_INPUT, contract.PIXELS.name)
    outputs = {o.name for o in graph.output}
    wanted = {contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES, contract.ONNX_DETECTOR_SELECTED}
    if not wanted <= outputs:
        raise EngineError(f"{src}: the detector graph lacks outputs {sorted(wanted - outputs)}")
    boxes, scores, selected = (contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES,
                               contract.ONNX_DETECTOR_SELECTED)
    segments = {contract.ONNX_DETECTOR_MASK_COEFFS, contract.ONNX_DETECTOR_PROTOS} <= outputs

    def const(name: str, dtype: int, dims: list[int], values: list[Any]) -> str:
        graph.initializer.append(helper.make_tensor(f"pad_{name}", dtype, dims, values))
        return f"pad_{name}"

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        graph.node.append(helper.make_node(op, inputs, [f"pad_{output}"], name=f"pad_{output}", **attrs))
        return f"pad_{output}"

    i0, i1, i2 = (const(f"i{k}", TensorProto.INT64, [], [k]) for k in range(3))
    axis0 = const("axis0", TensorProto.INT64, [1], [0])
    axis1 = const("axis1", TensorProto.INT64, [1], [1])
    axis_last = const("axis_last", TensorProto.INT64, [1], [-1])
    k = const("k", TensorProto.INT64, [1], [max_detections])
    shape = node("Shape", [scores], "shape")  # [B, C, N]
    batch, classes_n, boxes_n = (node("Gather", [shape, i], f"dim{j}", axis=0) for j, i in enumerate((i0, i1, i2)))
    kept = node("GatherND", [scores, selected], "kept_scores")  # [M]
    sel_b, sel_c, sel_n = (node("Gather", [selected, i], f"sel{j}", axis=1) for j, i in enumerate((i0, i1, i2)))
    # Flat index box * C + class: TopK breaks ties by the lower index, i.e. by box, then class.
    flat = node("Add", [node("Mul", [sel_n, classes_n], "sel_nc"), sel_c], "sel_flat")
    index = node("Concat", [node("Unsqueeze", [sel_b, axis1], "sel_b2"),
                            node("Unsqueeze", [flat, axis1], "sel_flat2")], "scatter_index", axis=1)
    dense_shape = node("Concat", [node("Unsqueeze", [batch, axis0], "batch1"),
                                  node("Unsqueeze", [node("Mul", [boxes_n, classes_n], "nc"), axis0], "nc1")],
                       "dense_shape", axis=0)
    empty = node("ConstantOfShape", [dense_shape], "dense_empty",
                 value=helper.make_tensor("minus_one", TensorProto.FLOAT, [1], [-1.0]))
    dense = node("ScatterND", [empty, index, kept], "dense")  # [B, N*C], -1 where NMS kept nothing
    graph.node.append(helper.make_node("TopK", [dense, k], ["pad_top_scores", "pad_top_index"], name="pad_topk",
                                       axis=1, largest=1, sorted=1))
    top_scores, top_index = "pad_top_scores", "pad_top_index"
    valid = node("Greater", [top_scores, const("half", TensorProto.FLOAT, [], [-0.5])], "valid")
    box_index = node("Div", [top_index, classes_n], "box_index")
    class_index = node("Sub", [top_index, node("Mul", [box_index, classes_n], "box_base")], "class_index")
    pad_class = const("pad_class", TensorProto.INT32, [], [-1])
    zero = const("zero", TensorProto.FLOAT, [], [0.0])
    graph.node.append(helper.make_node("Where", [valid, node("Cast", [class_index], "class32", to=TensorProto.INT32),
                                                 pad_class], [contract.DET_CLASSES.name], name="det_classes"))
    graph.node.append(helper.make_node("Where", [valid, top_scores, zero], [contract.DET_SCORES.name],
                                       name="det_scores"))
    gathered = node("GatherND", [boxes, node("Unsqueeze", [box_index, axis_last], "box_index3")], "boxes_kept",
                    batch_dims=1)  # [B, K, 4]
    valid3 = node("Unsqueeze", [valid, axis_last], "valid3")
    graph.node.append(helper.make_node("Where", [valid3, gathered, zero], [contract.DET_BOXES.name], name="det_boxes"))
    if segments:  # the kept rows' mask coefficients, gathered as the boxes; the prototypes as they are
        coeffs = node("GatherND", [contract.ONNX_DETECTOR_MASK_COEFFS, node("Unsqueeze", [box_index, axis_last],
                                                                             "coeff_index3")],
                      "coeffs_kept", batch_dims=1)  # [B, K, D]
        graph.node.append(helper.make_node("Where", [valid3, coeffs, zero], [contract.DET_MASK_COEFFS.name],
                                           name="det_mask_coeffs"))
        graph.node.append(helper.make_node("Identity", [contract.ONNX_DETECTOR_PROTOS], [contract.DET_PROTOS.name],
                                           name="det_protos"))
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(contract.DET_BOXES.name, TensorProto.FLOAT, ["batch", max_detections, 4]),
        helper.make_tensor_value_info(contract.DET_SCORES.name, TensorProto.FLOAT, ["batch", max_detections]),
        helper.make_tensor_value_info(contract.DET_CLASSES.name, TensorProto.INT32, ["batch", max_detections]),
        *([helper.make_tensor_value_info(contract.DET_MASK_COEFFS.name, TensorProto.FLOAT,
                                         ["batch", max_detections, "coefficients"]),
           helper.make_tensor_value_info(contract.DET_PROTOS.name, TensorProto.FLOAT,
                                         ["batch", "coefficients", "proto_height", "proto_width"])]
          if segments else []),
    ])
    return _check_and_save(model, dst)


def tensorrt_attributes_graph(src: Path, dst: Path) -> Path:
    """The attribute graph with the contract's tensor names: ``CROPS`` -> ``ATTRIBUTE_PROBS`` (and
    ``CROP_MASKS``, ``CROP_EMBEDDINGS``, ``VERTICAL_PROBS``, ``CROP_SCORE_OFFSETS`` where the graph has those heads)."""
    onnx = _import_onnx()
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    _rename_input(graph, contract.ONNX_ATTRIBUTES_INPUT, contract.CROPS.name)
    renames = {contract.ONNX_ATTRIBUTES_OUTPUT: (contract.ATTRIBUTE_PROBS.name, "attribute_probs"),
               contract.ONNX_ATTRIBUTES_MASKS: (contract.CROP_MASKS.name, "crop_masks"),
               contract.ONNX_ATTRIBUTES_EMBEDDINGS: (contract.CROP_EMBEDDINGS.name, "crop_embeddings"),
               contract.ONNX_ATTRIBUTES_VERTICALS: (contract.VERTICAL_PROBS.name, "vertical_probs"),
               contract.ONNX_ATTRIBUTES_SCORE_OFFSETS: (contract.CROP_SCORE_OFFSETS.name, "crop_score_offsets")}
    if contract.ONNX_ATTRIBUTES_OUTPUT not in {output.name for output in graph.output}:
        raise EngineError(f"{src}: the attribute graph has no output {contract.ONNX_ATTRIBUTES_OUTPUT!r}")
    for output in graph.output:
        if output.name in renames:
            name, node = renames[output.name]
            graph.node.append(helper.make_node("Identity", [output.name], [name], name=node))
            output.name = name
    return _check_and_save(model, dst)


_BRANCH_TENSORS = {contract.CLASSIFIER_MODEL: (contract.ONNX_CLASSIFIER_OUTPUT, contract.LABEL_PROBS.name),
                   contract.EMBEDDER_MODEL: (contract.ONNX_EMBEDDER_OUTPUT, contract.EMBEDDINGS.name)}
"""An image-level family's network -> (its graph's output, the served output name)."""


def tensorrt_branch_graph(model: str, src: Path, dst: Path) -> Path:
    """A classifier's or embedder's image graph with the contract's tensor names: ``VIEWS`` ->
    ``LABEL_PROBS`` (classifier) or ``EMBEDDINGS`` (embedder)."""
    onnx = _import_onnx()
    from onnx import helper

    graph_output, served = _BRANCH_TENSORS[model]
    onnx_model = onnx.load(str(src))
    graph = onnx_model.graph
    _rename_input(graph, contract.ONNX_IMAGE_INPUT, contract.VIEWS.name)
    for output in graph.output:
        if output.name == graph_output:
            graph.node.append(helper.make_node("Identity", [graph_output], [served], name=served.lower()))
            output.name = served
            break
    else:
        raise EngineError(f"{src}: the {model} graph has no output {graph_output!r}")
    return _check_and_save(onnx_model, dst)


# -- configs ------------------------------------------------------------------------------------------


def tensorrt_config(cpu_config: Any, *, cuda_graphs: bool = False,
                    output_dims: Mapping[str, tuple[int, ...]] | None = None) -> Any:
    """A ``tensorrt_plan`` ``ModelConfig`` from a CPU runner's: same name, tensors and batching.

    Instances become ``KIND_GPU`` (one group, the same count per GPU); the ONNX Runtime
    parameters are dropped (they mean nothing to TensorRT).
    """
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig(name=cpu_config.name, platform=TENSORRT_PLATFORM,
                            max_batch_size=cpu_config.max_batch_size)
    # A TensorRT engine checks no capability token: the TOKEN input the python runner takes is dropped.
    config.input.extend(i for i in cpu_config.input if i.name != contract.TOKEN.name)
    for tensor in config.input:  # TensorRT's backend would take a ragged input as one flat tensor
        tensor.ClearField("allow_ragged_batch")
    config.output.extend(cpu_config.output)
    for output in config.output:
        if output_dims and output.name in output_dims:
            del output.dims[:]
            output.dims.extend(output_dims[output.name])
    count = sum(group.count for group in cpu_config.instance_group) or 1
    config.instance_group.append(mc.ModelInstanceGroup(count=count, kind=mc.ModelInstanceGroup.KIND_GPU))
    config.dynamic_batching.CopyFrom(cpu_config.dynamic_batching)
    if cuda_graphs:
        config.optimization.cuda.graphs = True
    return config


def gpu_model_configs(settings: Any, label_map: Any, options: EngineOptions) -> dict[str, Any]:
    """Every ``ModelConfig`` of the GPU profile, derived from the CPU profile's.

    ``detector`` and ``attributes`` become ``tensorrt_plan`` models; ``preprocess`` runs on a
    GPU instance and decodes JPEGs with nvJPEG where it can; ``postprocess`` and the ensemble
    are unchanged. An image-level family's ``classifier`` and ``embedder`` become engines too
    (:func:`tensorrt_branch_graph`); ``text_embedder`` stays a python model (its tokenizer runs in
    Python) running its graph in ONNX Runtime on the CPU.
    """
    from fashionbox.converter.repository import ensemble_config, gpu_preprocess, model_configs

    cpu_settings = replace(settings, target="cpu")
    configs = model_configs(cpu_settings, label_map)
    k = settings.max_detections
    configs[contract.DETECTOR_MODEL] = tensorrt_config(
        configs[contract.DETECTOR_MODEL], cuda_graphs=options.cuda_graphs,
        output_dims={contract.DET_BOXES.name: (k, 4), contract.DET_SCORES.name: (k,),
                     contract.DET_CLASSES.name: (k,)})
    configs[contract.ATTRIBUTES_MODEL] = tensorrt_config(configs[contract.ATTRIBUTES_MODEL],
                                                         cuda_graphs=options.cuda_graphs)
    for branch in _BRANCH_TENSORS:  # an image-level family's networks: engines too
        if branch in configs:
            configs[branch] = tensorrt_config(configs[branch], cuda_graphs=options.cuda_graphs)
    if options.gpu_decode:
        gpu_preprocess(configs[contract.PREPROCESS_MODEL])
    postprocess = configs[contract.POSTPROCESS_MODEL]
    postprocess.parameters["attributes_token"].string_value = "false"  # the engine takes no TOKEN
    if "labels_from" in postprocess.parameters:  # nor do the families' engines
        postprocess.parameters["branch_token"].string_value = "false"
    # No python detector confirms the slots preprocess takes: they are held for the whole TTL.
    for name in (contract.PREPROCESS_MODEL, contract.POSTPROCESS_MODEL):
        parameters = configs[name].parameters
        if "admission_pending_ms" in parameters:
            parameters["admission_pending_ms"].string_value = parameters["admission_ttl_ms"].string_value
    configs[contract.ENSEMBLE_MODEL] = ensemble_config(cpu_settings, label_map, configs)
    return configs


# -- building -----------------------------------------------------------------------------------------


def trtexec_command(spec: EngineSpec, options: EngineOptions, *, timing_cache: str | None = None) -> list[str]:
    """The ``trtexec`` command that builds ``spec`` as :func:`build_engine` would (TensorRT >= 8.6)."""
    command = ["trtexec", f"--onnx={spec.onnx}", f"--saveEngine={spec.plan}", *spec.profile.trtexec_flags(),
               f"--memPoolSize=workspace:{options.workspace_mib}M"]
    if options.fp16:
        command.append("--fp16")
    if timing_cache is not None:
        command.append(f"--timingCacheFile={timing_cache}")
    command.append("--skipInference")
    return command


def engines_script(specs: Sequence[EngineSpec], options: EngineOptions) -> str:
    """``build_engines.sh``: run in the repository on the serving GPU; writes plans and ``engines.json``."""
    lines = [
        "#!/bin/sh",
        "# Generated by `fashionbox convert --target gpu --engines later`. Run it on the GPU that will",
        "# serve this repository, with the TensorRT of the serving Triton (NGC tensorrt:<yy.mm> for",
        "# tritonserver:<yy.mm>): TensorRT engines only run on the GPU model and TensorRT version that",
        "# built them. It writes <model>/1/model.plan and engines.json (where they were built).",
        "set -eu",
        'cd "$(dirname "$0")"',
        f'TIMING_CACHE="${{{TIMING_CACHE_ENV}:-./timing.cache}}"',
        'mkdir -p "$(dirname "$TIMING_CACHE")"',
        'gpu="$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader | head -n 1)"',
        'capability="$(echo "${gpu##*,}" | tr -d " ")"',
    ]
    if options.fp16:
        slow = "|".join(SLOW_FP16_COMPUTE_CAPABILITIES)
        lines += [
            "# trtexec --fp16 quietly builds FP32 on a GPU without fast FP16: refuse instead.",
            f'case "$capability" in {slow}) echo "FP16 was asked for but ${{gpu%,*}} (compute capability '
            '$capability) has no fast FP16: convert again with --no-fp16" >&2; exit 1;; esac',
        ]
    for spec in specs:
        lines.append(f"echo 'building {spec.model} engine' >&2")
        lines.append(shlex.join(trtexec_command(spec, options)) + ' --timingCacheFile="$TIMING_CACHE"')
    lines += [
        'trt="${TRT_VERSION:-$(python3 -c \'import tensorrt; print(tensorrt.__version__)\')}"',
        f"printf '{{\"tensorrt\": \"%s\", \"gpu_name\": \"%s\", \"compute_capability\": \"%s\"}}\\n' "
        f'"$trt" "${{gpu%,*}}" "$capability" > {ENGINES_RECORD}',
        f"echo 'engines built; record in {ENGINES_RECORD}' >&2",
    ]
    return "\n".join(lines) + "\n"


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or an :class:`EngineError` with the install hint."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(
            "--target gpu --engines now needs the TensorRT Python package on the serving GPU "
            "(pip install tensorrt, or run in the NGC tensorrt container); or pass --engines later to "
            f"write the repository with {ENGINES_SCRIPT} (the trtexec commands) and build the engines on "
            "the deployment GPU (the compose engine-builder service does); or serve without engines: "
            "--runtime torch runs the networks with PyTorch on the GPU"
        ) from exc
    return tensorrt


def check_fp16(builder: Any, options: EngineOptions, gpu: str) -> None:
    if options.fp16 and not builder.platform_has_fast_fp16:
        raise Fp16UnsupportedError(
            f"FP16 was asked for but {gpu} has no fast FP16; pass --no-fp16 to build FP32 engines")


def build_engine(spec: EngineSpec, options: EngineOptions, *, tensorrt: Any | None = None,
                 gpu: GpuInfo | None = None) -> EngineRecord:
    """Build one plan with the TensorRT Python API; the timing cache is read and written back."""
    trt = tensorrt or import_tensorrt()
    if gpu is None:
        gpus = local_gpus()
        if not gpus:
            raise EngineError("no NVIDIA GPU is visible: TensorRT engines must be built on the serving GPU")
        gpu = gpus[0]
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    check_fp16(builder, options, gpu.name)
    flags = 0 if int(str(trt.__version__).split(".")[0]) >= 10 else \
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(spec.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {spec.onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib * 1024 * 1024)
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    p = spec.profile
    profile.set_shape(p.input_name, p.shape(p.min_batch), p.shape(p.opt_batch), p.shape(p.max_batch))
    config.add_optimization_profile(profile)
    cache_path = options.timing_cache_path(str(trt.__version__))
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {spec.model} from {spec.onnx} (see the TensorRT log above)")
    Path(spec.plan).write_bytes(bytes(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    logger.info("built %s engine %s (TensorRT %s, %s, fp16=%s)", spec.model, spec.plan, trt.__version__,
                gpu.name, options.fp16)
    return EngineRecord(str(trt.__version__), gpu.name, gpu.compute_capability)


def engines_manifest(specs: Sequence[EngineSpec], options: EngineOptions,
                     record: EngineRecord | None) -> dict[str, Any]:
    """The ``engines`` entry of ``manifest.json``."""
    return {
        "status": "built" if record is not None else "pending",
        "built_on": asdict(record) if record is not None else None,
        "script": ENGINES_SCRIPT,
        "fp16": options.fp16,
        "workspace_mib": options.workspace_mib,
        "cuda_graphs": options.cuda_graphs,
        "models": {s.model: {"onnx": str(s.onnx), "plan": str(s.plan), "profile": asdict(s.profile),
                             "trtexec": trtexec_command(s, options)} for s in specs},
    }


def compare_detector_graphs(cpu_onnx: Path, engine_onnx: Path, batches: Sequence[Any], *,
                            max_detections: int) -> int:
    """Check in ONNX Runtime that the engine graph's padded outputs equal the CPU graph's detections.

    Returns the number of images compared; raises :class:`EngineError` on the first difference.
    """
    import numpy as np
    import onnxruntime as ort

    from fashionbox.core.postprocessing import gather_detections, stack_padded

    def session(path: Path) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    cpu, engine = session(cpu_onnx), session(engine_onnx)
    names = [contract.DET_BOXES.name, contract.DET_SCORES.name, contract.DET_CLASSES.name]
    cpu_names = [contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES, contract.ONNX_DETECTOR_SELECTED]
    segments = contract.ONNX_DETECTOR_PROTOS in {o.name for o in cpu.get_outputs()}
    if segments:
        names += [contract.DET_MASK_COEFFS.name, contract.DET_PROTOS.name]
        cpu_names += [contract.ONNX_DETECTOR_MASK_COEFFS, contract.ONNX_DETECTOR_PROTOS]
    images = 0
    for batch in batches:
        boxes, scores, selected, *masks = cpu.run(cpu_names, {contract.ONNX_DETECTOR_INPUT: batch})
        rows = gather_detections(boxes, scores, selected, max_detections=max_detections,
                                 **(dict(zip(("mask_coeffs", "protos"), masks, strict=True)) if segments else {}))
        want_boxes, want_scores, want_classes = stack_padded(rows)
        got_boxes, got_scores, got_classes, *got_masks = engine.run(names, {contract.PIXELS.name: batch})
        n = want_classes.shape[1]
        if (got_classes[:, n:] != -1).any() or not np.array_equal(got_classes[:, :n], want_classes):
            raise EngineError(f"{engine_onnx}: the padded engine graph keeps other detections than the CPU graph")
        if not (np.allclose(got_scores[:, :n], want_scores, atol=1e-6)
                and np.allclose(got_boxes[:, :n], want_boxes, atol=1e-4)):
            raise EngineError(f"{engine_onnx}: the padded engine graph's scores or boxes differ from the CPU graph")
        if segments:
            got_coeffs, got_protos = got_masks
            for image, row in enumerate(rows):
                if row.mask_coeffs is None or not (np.allclose(got_coeffs[image, :len(row)], row.mask_coeffs, atol=1e-5)
                        and not got_coeffs[image, len(row):].any()
                        and np.array_equal(got_protos[image], masks[1][image])):
                    raise EngineError(f"{engine_onnx}: the padded engine graph's mask coefficients or prototypes "
                                      "differ from the CPU graph")
        images += len(batch)
    return images


def fit_engine_outputs(engine_onnx: Path, config: Any) -> None:
    """Make the engine graph's outputs the ones its Triton config declares: refuse a graph that lacks one (Triton
    would refuse to load the engine on the GPU, long after the conversion); drop the outputs the config does not
    serve (an attribute graph's verifier offsets beside another family's detector), which TensorRT then does not
    compute."""
    onnx = _import_onnx()
    model = onnx.load(str(engine_onnx))
    outputs = [o.name for o in model.graph.output]
    declared = {o.name for o in config.output}
    missing = declared - set(outputs)
    if missing:
        raise EngineError(f"{engine_onnx}: the engine graph's outputs {sorted(outputs)} lack {sorted(missing)}, which "
                          f"the {config.name} config declares")
    if declared != set(outputs):
        kept = [o for o in model.graph.output if o.name in declared]
        del model.graph.output[:]
        model.graph.output.extend(kept)
        _check_and_save(model, engine_onnx)


@dataclass(frozen=True)
class GpuRepository:
    """What :func:`fashionbox.converter.repository.write_repository` needs for a GPU repository."""

    configs: dict[str, Any]
    files: dict[str, Path]
    """Repository-relative path -> file to copy there (engine graphs, plans, ``build_engines.sh``)."""
    manifest: dict[str, Any]
    """The manifest's ``engines`` entry."""


def prepare_gpu_repository(work: Path, *, detector_onnx: Path, attributes_onnx: Path, settings: Any,
                           label_map: Any, options: EngineOptions,
                           detector_batches: Sequence[Any],
                           branch_onnx: Mapping[str, Path] | None = None) -> GpuRepository:
    """Engine graphs (checked against the CPU graphs), GPU configs, and engines now or a script."""
    work = Path(work) / "tensorrt"
    work.mkdir(parents=True, exist_ok=True)
    graphs = {
        contract.DETECTOR_MODEL: tensorrt_detector_graph(detector_onnx, work / "detector.onnx",
                                                         max_detections=settings.max_detections),
        contract.ATTRIBUTES_MODEL: tensorrt_attributes_graph(attributes_onnx, work / "attributes.onnx"),
        **{name: tensorrt_branch_graph(name, path, work / f"{name}.onnx")
           for name, path in (branch_onnx or {}).items() if name in _BRANCH_TENSORS},
    }
    compared = compare_detector_graphs(detector_onnx, graphs[contract.DETECTOR_MODEL], detector_batches,
                                       max_detections=settings.max_detections)
    logger.info("engine detector graph matches the CPU graph on %d images (ONNX Runtime)", compared)
    configs = gpu_model_configs(settings, label_map, options)
    specs = engine_specs(configs)
    for spec in specs:
        fit_engine_outputs(graphs[spec.model], configs[spec.model])
    files = {str(spec.onnx): graphs[spec.model] for spec in specs}
    record = None
    if options.build == "now":
        trt = import_tensorrt()
        gpus = local_gpus()
        if not gpus:
            raise EngineError("--engines now needs the serving NVIDIA GPU, and none is visible; "
                              "pass --engines later to build them on the deployment GPU")
        for spec in specs:
            local = replace(spec, onnx=graphs[spec.model], plan=work / f"{spec.model}.plan")
            record = build_engine(local, options, tensorrt=trt, gpu=gpus[0])
            files[str(spec.plan)] = local.plan
    else:
        script = work / ENGINES_SCRIPT
        script.write_text(engines_script(specs, options), encoding="utf-8")
        script.chmod(0o755)
        files[ENGINES_SCRIPT] = script
        logger.warning("TensorRT engines NOT built (--engines later): run %s in the repository on the serving GPU "
                       "(the compose engine-builder service does) before Triton loads it", ENGINES_SCRIPT)
    return GpuRepository(configs, files, engines_manifest(specs, options, record))
