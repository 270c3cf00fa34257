"""The networks' runners of the ``detector``, ``attributes``, image-level and text models, chosen by their
config's runtime.

``onnxruntime`` runs the version folder's ``model.onnx`` (:class:`fashionbox.core.serving.OnnxDetector`,
:class:`fashionbox.core.serving.OnnxAttributes`); ``openvino`` runs the same file with OpenVINO, fp32 or
bf16 (:mod:`fashionbox.core.openvino_runtime`, imported only then); ``torch`` runs the safetensors checkpoint
(or a DETR-style family's transformers files, :data:`TORCH_FOLDER`) with PyTorch on the instance's device
(:mod:`fashionbox.models.torch_runtime`, imported only then, so an ONNX-only environment needs no torch).
This module sits above both ``fashionbox.core`` and ``fashionbox.models``: the python models call it,
neither of those two imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fashionbox import contract
from fashionbox.core.serving import (
    AttributesParameters,
    AttributesRunner,
    BranchParameters,
    DetectorParameters,
    DetectorRunner,
    ModelArgs,
    OnnxAttributes,
    OnnxDetector,
    OnnxImageBranch,
    OnnxTextEmbedder,
    OrtSettings,
    RuntimeSettings,
    TextEmbedderParameters,
)

__all__ = [
    "ATTRIBUTE_EXTRAS",
    "TORCH_FOLDER",
    "load_attributes_runner",
    "load_branch_runner",
    "load_detector_runner",
    "load_text_runner",
]

TORCH_FOLDER = "transformers"
"""In a torch-runtime ``classifier`` / ``embedder`` version folder, and a DETR-style family's ``detector``
one: the family's transformers files (a FashionBox ``detector`` has its checkpoint there instead)."""

ATTRIBUTE_EXTRAS = {
    contract.ONNX_ATTRIBUTES_MASKS: contract.CROP_MASKS.name,
    contract.ONNX_ATTRIBUTES_EMBEDDINGS: contract.CROP_EMBEDDINGS.name,
    contract.ONNX_ATTRIBUTES_VERTICALS: contract.VERTICAL_PROBS.name,
    contract.ONNX_ATTRIBUTES_SCORE_OFFSETS: contract.CROP_SCORE_OFFSETS.name,
}
"""The attribute network's optional outputs (ONNX names) -> the tensors they are served as, beside
ATTRIBUTE_PROBS: by ``attributes``, or by ``postprocess`` where the attribute network runs inside it."""

R = TypeVar("R")


def _load_runner(
    args: ModelArgs,
    onnx_file: str,
    make_onnx: Callable[[Path, OrtSettings], R],
    make_torch: Callable[[Path, RuntimeSettings, str], R],
    make_openvino: Callable[[Path, OrtSettings, str], R],
    torch_folder: bool = False,
) -> tuple[R, str]:
    """The runner of ``args``' runtime (:class:`RuntimeSettings`), and a line saying what was loaded. The
    torch runner loads the version folder's checkpoint, or (``torch_folder``) its :data:`TORCH_FOLDER`."""
    runtime = RuntimeSettings.from_parameters(args.parameters)
    if runtime.runtime == "torch":
        from fashionbox.models.torch_runtime import set_threads

        set_threads(runtime.torch_threads)
        path = args.version_file(TORCH_FOLDER if torch_folder else runtime.weights_file)
        device = args.torch_device()
        return make_torch(path, runtime, device), f"{path} on {device} ({runtime.precision}) {runtime}"
    ort = OrtSettings.from_parameters(args.parameters)
    path = args.version_file(onnx_file)
    if runtime.runtime == "openvino":  # bf16 is checked against this (serving) host's CPU at load
        return make_openvino(path, ort, runtime.precision), f"{path} in OpenVINO ({runtime.precision}) {ort}"
    return make_onnx(path, ort), f"{path} {ort}"


def load_detector_runner(args: ModelArgs) -> tuple[DetectorRunner, str]:
    """The ``detector`` model's runner for its config's runtime, and a line saying what was loaded."""
    params = DetectorParameters.from_parameters(args.parameters)

    # a DETR-style family's transformers files, where a FashionBox detector has its checkpoint
    family = args.version_file(TORCH_FOLDER).is_dir()

    def torch_detector(path: Path, runtime: RuntimeSettings, device: str) -> DetectorRunner:
        from fashionbox.models.torch_runtime import TorchDetector, TorchDetrDetector

        runner = TorchDetrDetector if family else TorchDetector
        return runner.from_settings(path, runtime, device=device, max_detections=params.max_detections,
                                    max_batch_size=max(1, args.max_batch_size()))

    def onnx_detector(path: Path, ort: OrtSettings) -> DetectorRunner:
        return OnnxDetector(path, ort, max_detections=params.max_detections)

    def openvino_detector(path: Path, ort: OrtSettings, precision: str) -> DetectorRunner:
        from fashionbox.core.openvino_runtime import OpenVinoDetector

        return OpenVinoDetector(path, ort, max_detections=params.max_detections, precision=precision)

    runner, loaded = _load_runner(args, params.onnx_file, onnx_detector, torch_detector, openvino_detector,
                                  torch_folder=family)
    return runner, f"{loaded} {params}"


def load_attributes_runner(args: ModelArgs) -> tuple[AttributesRunner, str]:
    """The ``attributes`` model's runner for its config's runtime, and a line saying what was loaded."""
    params = AttributesParameters.from_parameters(args.parameters)

    def torch_heads(path: Path, runtime: RuntimeSettings, device: str) -> AttributesRunner:
        from fashionbox.models.torch_runtime import TorchAttributes

        return TorchAttributes(path, device=device, precision=runtime.precision,
                               num_attribute_labels=params.num_attribute_labels,
                               max_batch_size=max(1, args.max_batch_size()))

    def onnx_heads(path: Path, ort: OrtSettings) -> AttributesRunner:
        return OnnxAttributes(path, ort, num_attribute_labels=params.num_attribute_labels)

    def openvino_heads(path: Path, ort: OrtSettings, precision: str) -> AttributesRunner:
        from fashionbox.core.openvino_runtime import OpenVinoAttributes

        return OpenVinoAttributes(path, ort, num_attribute_labels=params.num_attribute_labels, precision=precision)

    runner, loaded = _load_runner(args, params.onnx_file, onnx_heads, torch_heads, openvino_heads)
    return runner, f"{loaded} {params}"


def load_branch_runner(args: ModelArgs) -> tuple[Any, str]:
    """The runner of an image-level network (``classifier``, ``embedder``): its ONNX graph in ONNX Runtime,
    or in OpenVINO where the config says so (the CPU target's choice for the other networks), or its
    transformers model in PyTorch for the torch runtime (``runtime`` torch: on the GPU in the GPU profile)."""
    params = BranchParameters.from_parameters(args.parameters)
    runtime = RuntimeSettings.from_parameters(args.parameters)
    if runtime.runtime == "torch":  # the transformers model in PyTorch on the instance's device
        from fashionbox.models.torch_runtime import TorchImageBranch, set_threads

        set_threads(runtime.torch_threads)
        folder, device = args.version_file(TORCH_FOLDER), args.torch_device()
        return (TorchImageBranch(folder, device=device, precision=runtime.precision, size=params.size,
                                 max_batch_size=max(1, args.max_batch_size())),
                f"{folder} on {device} ({runtime.precision}) {params}")
    ort = OrtSettings.from_parameters(args.parameters)
    path = args.version_file(params.onnx_file)
    if runtime.runtime == "openvino":
        from fashionbox.core.openvino_runtime import OpenVinoImageBranch

        return (OpenVinoImageBranch(path, ort, output=params.graph_output, size=params.size,
                                    precision=runtime.precision),
                f"{path} in OpenVINO ({runtime.precision}) {ort} {params}")
    return OnnxImageBranch(path, ort, output=params.graph_output, size=params.size), f"{path} {ort} {params}"


def load_text_runner(args: ModelArgs) -> tuple[OnnxTextEmbedder, str]:
    """The ``text_embedder`` model's runner: its text graph in OpenVINO where the config says so (a repository
    whose networks run in OpenVINO), else in ONNX Runtime (the torch runtime included: the text tower ships as
    ONNX only); and a line saying what was loaded."""
    params = TextEmbedderParameters.from_parameters(args.parameters)
    runtime = RuntimeSettings.from_parameters(args.parameters)
    ort = OrtSettings.from_parameters(args.parameters)
    path, tokenizer = args.version_file(params.onnx_file), args.version_file(params.tokenizer_dir)
    if runtime.runtime == "openvino":
        from fashionbox.core.openvino_runtime import OpenVinoTextEmbedder

        return (OpenVinoTextEmbedder(path, tokenizer, ort, dimension=params.dimension, precision=runtime.precision),
                f"{path} in OpenVINO ({runtime.precision}) {ort} {params}")
    return OnnxTextEmbedder(path, tokenizer, ort, dimension=params.dimension), f"{path} {ort} {params}"
