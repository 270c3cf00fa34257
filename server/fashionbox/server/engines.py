"""Serve-time check of a GPU repository's TensorRT engines: were they built for this machine?

Engines are not portable: a plan runs only with the TensorRT version and on the GPU model it was
built with. The repository records where its engines were built (``manifest.json`` ``engines``
``built_on``, or ``engines.json`` written by ``build_engines.sh``); the converter
(``fashionbox.converter.tensorrt``) writes these records in the format read here, and
:func:`check_engine_compatibility` refuses a mismatch with a message that says what differs and
how to rebuild.

Command line (the container entrypoint runs it before ``tritonserver``)::

    python -m fashionbox.server.engines check /models -- fashionbox serve --repository=/models
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionbox import contract

__all__ = [
    "ENGINES_RECORD",
    "ENGINES_SCRIPT",
    "ENGINE_MODELS",
    "PLAN_FILE",
    "EngineError",
    "EngineMismatchError",
    "EngineRecord",
    "GpuInfo",
    "check_engine_compatibility",
    "engine_record",
    "local_gpus",
    "local_tensorrt_version",
    "main",
    "repository_runtime",
]

logger = logging.getLogger(__name__)

PLAN_FILE = "model.plan"
ENGINES_SCRIPT = "build_engines.sh"
"""Written by the converter into a repository whose engines are built later, on the serving GPU."""
ENGINES_RECORD = "engines.json"
"""Written by ``build_engines.sh``: where the engines were built."""
ENGINE_MODELS = (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL)
"""The models a TensorRT repository serves as ``<model>/1/model.plan``."""


class EngineError(ValueError):
    """A repository's TensorRT engines are missing, unrecorded, or do not fit this machine."""


class EngineMismatchError(EngineError):
    """The repository's engines were built with another TensorRT or on another GPU."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str
    """``major.minor``, e.g. ``9.0``."""


@dataclass(frozen=True)
class EngineRecord:
    """Where engines were built: what a plan needs to find again to run."""

    tensorrt: str
    gpu_name: str
    compute_capability: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> EngineRecord:
        try:
            return cls(str(data["tensorrt"]), str(data["gpu_name"]), str(data["compute_capability"]))
        except (KeyError, TypeError) as exc:
            raise EngineError(f"{source}: engine record lacks {exc}; rebuild the engines") from exc


Runner = Callable[[Sequence[str]], str]


def _run(command: Sequence[str]) -> str:
    return subprocess.run(list(command), check=True, capture_output=True, text=True, timeout=30).stdout


def local_gpus(*, runner: Runner | None = None) -> list[GpuInfo]:
    """The GPUs this process can see: through torch.cuda when it has CUDA, else ``nvidia-smi``."""
    if runner is None:
        try:
            import torch

            if torch.cuda.is_available():
                return [GpuInfo(torch.cuda.get_device_name(i), "{}.{}".format(*torch.cuda.get_device_capability(i)))
                        for i in range(torch.cuda.device_count())]
        except ImportError:
            pass
        if shutil.which("nvidia-smi") is None:
            return []
    try:
        out = (runner or _run)(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("nvidia-smi failed: %s", exc)
        return []
    gpus = []
    for line in out.splitlines():
        if line.strip():
            name, _, capability = line.rpartition(",")
            gpus.append(GpuInfo(name.strip(), capability.strip()))
    return gpus


def local_tensorrt_version() -> str | None:
    """TensorRT here: the Python package, else ``TRT_VERSION`` (set in NGC images), else unknown."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return os.environ.get("TRT_VERSION") or None


def _release(version: str) -> tuple[str, ...]:
    # 10.5.0.18 and 10.5.0 are the same release for plan compatibility: compare major.minor.patch.
    return tuple(version.split(".")[:3])


def repository_runtime(manifest: Mapping[str, Any]) -> str:
    """``onnxruntime``, ``tensorrt`` or ``torch``: what runs a repository's networks, from its manifest."""
    if "runtime" in manifest:
        return str(manifest["runtime"])
    return "tensorrt" if manifest.get("target") == "gpu" else "onnxruntime"  # written before --runtime existed


def engine_record(repository: Path) -> EngineRecord | None:
    """Where the repository's engines were built; None for a repository without TensorRT engines."""
    manifest_path = repository / contract.MANIFEST_FILE
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if repository_runtime(manifest) != "tensorrt":
        return None
    engines = manifest.get("engines") or {}
    record_path = repository / ENGINES_RECORD
    if record_path.is_file():  # build_engines.sh ran after convert: it knows better
        return EngineRecord.from_json(json.loads(record_path.read_text(encoding="utf-8")), str(record_path))
    if engines.get("built_on"):
        return EngineRecord.from_json(engines["built_on"], f"{manifest_path} engines.built_on")
    raise EngineError(
        f"{repository}: the TensorRT engines are not built yet; run {repository / ENGINES_SCRIPT} on the serving "
        "GPU (docker compose runs it in the engine-builder service)")


def check_engine_compatibility(repository: Path, *, gpus: Sequence[GpuInfo] | None = None,
                               tensorrt_version: str | None = None) -> EngineRecord | None:
    """Refuse to serve engines built elsewhere; None for a repository without engines (nothing to check).

    Compares the recorded TensorRT release, GPU name and compute capability with every local
    GPU (Triton places ``KIND_GPU`` instances on all of them) and the local TensorRT when known.
    """
    repository = Path(repository)
    record = engine_record(repository)
    if record is None:
        return None
    missing = [name for name in ENGINE_MODELS if not (repository / name / "1" / PLAN_FILE).is_file()]
    if missing:
        raise EngineError(f"{repository}: no {PLAN_FILE} for {missing}; run {ENGINES_SCRIPT} on the serving GPU")
    local = list(gpus) if gpus is not None else local_gpus()
    if not local:
        raise EngineMismatchError(f"{repository} holds TensorRT engines built on {record.gpu_name} "
                                  f"(compute {record.compute_capability}), but no NVIDIA GPU is visible here")
    problems = []
    for index, gpu in enumerate(local):
        if gpu.compute_capability != record.compute_capability:
            problems.append(f"GPU {index} {gpu.name} has compute capability {gpu.compute_capability}, "
                            f"the engines were built for {record.compute_capability}")
        elif gpu.name != record.gpu_name:
            problems.append(f"GPU {index} is {gpu.name}, the engines were built on {record.gpu_name}")
    local_trt = tensorrt_version if tensorrt_version is not None else local_tensorrt_version()
    if local_trt is None:
        logger.warning("TensorRT version here unknown: assuming the engines' %s", record.tensorrt)
    elif _release(local_trt) != _release(record.tensorrt):
        problems.append(f"TensorRT here is {local_trt}, the engines were built with {record.tensorrt}")
    if problems:
        raise EngineMismatchError(
            f"{repository}: its TensorRT engines do not fit this machine: " + "; ".join(problems) +
            f". Engines are not portable: rebuild them here ({ENGINES_SCRIPT}, or fashionbox convert --target gpu)")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """``check REPOSITORY [-- COMMAND...]``: refuse foreign engines, then exec COMMAND (the server)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args:
        command = args[args.index("--") + 1:]
        args = args[: args.index("--")]
    if len(args) != 2 or args[0] != "check":
        print("usage: python -m fashionbox.server.engines check REPOSITORY [-- COMMAND...]", file=sys.stderr)
        return 2
    try:
        record = check_engine_compatibility(Path(args[1]))
    except EngineError as exc:
        print(f"fashionbox: {exc}", file=sys.stderr)
        return 1
    if record is not None:
        print(f"fashionbox: engines built with TensorRT {record.tensorrt} on {record.gpu_name} fit this machine",
              file=sys.stderr)
    if command:
        os.execvp(command[0], command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
