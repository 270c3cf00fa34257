"""OpenVINO runners for the python backend: the converter's ONNX graphs on the CPU, fp32 or bf16.

``fashionbox convert --runtime openvino [--precision bf16]`` keeps the repository's ``model.onnx``
and writes ``runtime: openvino`` into the ``detector`` and ``attributes`` configs (and those of the
image-level networks and an embedder's text tower, :class:`OpenVinoImageBranch`,
:class:`OpenVinoTextEmbedder`); those models then load :class:`OpenVinoDetector` /
:class:`OpenVinoAttributes`, which answer exactly as
:class:`fashionbox.core.serving.OnnxDetector` / :class:`fashionbox.core.serving.OnnxAttributes`
do: they *are* those classes with the session swapped for :class:`OpenVinoSession`, which offers
ONNX Runtime's ``run(output_names, feeds)``, so every output the ONNX Runtime runners read by name
(``masks``, ``mask_coeffs`` and ``protos`` included, when a graph has them) comes back the same way::

    detector = OpenVinoDetector(path, OrtSettings(intra_op_threads=1), max_detections=100, precision="bf16")
    detector.detect(pixels)          # uint8 [B, S, S, 3] -> list[DetectorOutput]

The graph is compiled once per model instance, with ``OrtSettings.intra_op_threads`` as OpenVINO's
``INFERENCE_NUM_THREADS``, one stream and no core pinning (several single-thread instances share
the cores, as ONNX Runtime's do: docs/FIELD_NOTES.md). Compiled graphs are kept in OpenVINO's model
cache (:func:`cache_dir`, ``FASHIONBOX_OPENVINO_CACHE``): compiling a ViT-sized graph takes minutes
(a YOLOS-small-sized one 104 s on 2 vCPUs), loading it from the cache a fraction of a second, so only
the first load of a graph on a host pays (``auto``'s check at conversion, or the first instance).

**Precision is always explicit.** On a CPU with AMX or AVX512-BF16, OpenVINO's CPU plugin runs
bf16 *by default*; ``fp32`` therefore sets the inference precision hint to ``f32``, and ``bf16`` to
``bf16``. bf16 needs those units: on a CPU without them it is refused (:class:`OpenVinoError`),
never silently run in fp32, both by the CPU's flags (:func:`host_cpu`) and by reading the
precision back from the compiled model. The converter checks the converting host; model load
checks the serving host again, since the two may differ.

In NGC's Triton image, Triton's own ``openvino`` backend could serve the same ``model.onnx``
(``backend: "openvino"`` with the ``INFERENCE_PRECISION_HINT`` parameter); FashionBox's python
models use this module instead, so the embedded server (python backend only) and the NGC image
serve one repository the same way.

**No telemetry.** The ``openvino`` wheel depends on ``openvino-telemetry``, which sends usage events to
Google Analytics unless a consent file in the user's home says no; it sends them from a process that a
worker thread forks (``multiprocessing``, fork start method) when a graph is compiled. A model server
sends nothing home; and in a python-backend stub, whose other threads may hold a lock at that moment
(the import lock, here), the forked child can hang on it for good: the stub's exit then waits for the
child, so unloading the model hung until Triton's exit timeout (twice in about 45 stops of the shipped
repository). :func:`import_openvino` therefore hides the telemetry package before ``openvino`` is
imported; ``openvino`` takes its absence as "no telemetry" (its own stub), and nothing forks.

Needs the ``openvino`` extra (``pip install 'fashionbox-core[openvino]'``); without it, loading a
runner fails with that hint, and importing this module works.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionbox.core.postprocessing import AnyArray
from fashionbox.core.serving import OnnxAttributes, OnnxDetector, OnnxImageBranch, OnnxTextEmbedder, OrtSettings

__all__ = [
    "BF16_FLAGS",
    "CACHE_ENV",
    "INSTALL_HINT",
    "OPENVINO_PRECISIONS",
    "TELEMETRY_PACKAGE",
    "CpuInfo",
    "OpenVinoAttributes",
    "OpenVinoDetector",
    "OpenVinoError",
    "OpenVinoImageBranch",
    "OpenVinoSession",
    "OpenVinoTextEmbedder",
    "cache_dir",
    "check_precision",
    "host_cpu",
    "import_openvino",
]

log = logging.getLogger(__name__)

OPENVINO_PRECISIONS = ("fp32", "bf16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""Linux ``/proc/cpuinfo`` flags of the units that run bf16 natively (either is enough)."""
INSTALL_HINT = "pip install 'fashionbox-core[openvino]'"
_HINTS = {"fp32": "f32", "bf16": "bf16"}
"""Our precision names -> OpenVINO's ``INFERENCE_PRECISION_HINT`` values."""
_ISA_FLAG = re.compile(r"^(avx|amx|fma|f16c|sse4|vnni)")


class OpenVinoError(RuntimeError):
    """OpenVINO is not installed, or the precision asked for cannot run on this CPU; fails model load."""


@dataclass(frozen=True)
class CpuInfo:
    """The CPU a runtime choice is made on: model name and its vector/matrix instruction flags."""

    model: str
    flags: frozenset[str]

    @property
    def bf16_units(self) -> tuple[str, ...]:
        """The flags of :data:`BF16_FLAGS` this CPU has (empty: no native bf16)."""
        return tuple(flag for flag in BF16_FLAGS if flag in self.flags)

    @property
    def has_bf16(self) -> bool:
        return bool(self.bf16_units)

    def as_dict(self) -> dict[str, Any]:
        """For manifests and benchmark results: the model and the SIMD/matrix flags that decide speed."""
        return {"model": self.model, "isa_flags": sorted(f for f in self.flags if _ISA_FLAG.match(f)),
                "bf16": self.has_bf16, "machine": platform.machine()}

    @classmethod
    def parse_cpuinfo(cls, text: str) -> CpuInfo:
        """From the text of Linux's ``/proc/cpuinfo`` (the first processor's ``model name`` and ``flags``)."""
        model, flags = "", ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = value
        return cls(model or platform.processor() or "unknown", frozenset(flags.split()))


@functools.cache
def host_cpu() -> CpuInfo:
    """This host's CPU (Linux ``/proc/cpuinfo``; elsewhere the model name only, so no bf16)."""
    try:
        return CpuInfo.parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return CpuInfo(platform.processor() or "unknown", frozenset())


def check_precision(precision: str, cpu: CpuInfo | None = None) -> None:
    """Refuse a precision OpenVINO cannot run as asked on ``cpu`` (default: this host's)."""
    if precision not in OPENVINO_PRECISIONS:
        raise OpenVinoError(f"OpenVINO precision must be one of {OPENVINO_PRECISIONS}, got {precision!r}")
    cpu = cpu or host_cpu()
    if precision == "bf16" and not cpu.has_bf16:
        raise OpenVinoError(
            f"bf16 needs a CPU with AMX or AVX512-BF16 (flags {' or '.join(BF16_FLAGS)}); this host's CPU "
            f"({cpu.model}) has neither, and OpenVINO would run fp32 instead: serve fp32 here, or bf16 on such a CPU")


TELEMETRY_PACKAGE = "openvino_telemetry"


def import_openvino() -> Any:
    """The ``openvino`` package, with its telemetry off (the module's docstring says why), or
    :class:`OpenVinoError` with the install hint."""
    # None in sys.modules makes `import openvino_telemetry` raise ImportError, which openvino answers with
    # its no-op stub. Set once, before openvino is first imported in this process; kept if already there.
    sys.modules.setdefault(TELEMETRY_PACKAGE, None)  # type: ignore[arg-type]  # None is import's "absent" mark
    try:
        import openvino  # type: ignore[import-untyped]  # no stubs or py.typed in the wheel
    except ImportError as exc:
        raise OpenVinoError(f"the openvino runtime needs the openvino package: {INSTALL_HINT}") from exc
    return openvino


CACHE_ENV = "FASHIONBOX_OPENVINO_CACHE"
"""Where OpenVINO keeps compiled graphs (its ``CACHE_DIR``): a folder, or ``off``; unset, the user's cache
folder (``$XDG_CACHE_HOME/fashionbox/openvino``, else ``~/.cache/fashionbox/openvino``)."""


def cache_dir() -> Path | None:
    """OpenVINO's model cache folder (:data:`CACHE_ENV`), created; None where it is off or cannot be written.

    OpenVINO keys an entry by the graph's content and the compile settings, so one folder serves every
    repository, precision and thread count on a host."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    try:
        folder = Path(value) if value else \
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fashionbox" / "openvino"
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: no home folder to resolve
        log.warning("OpenVINO's model cache is off: %s", exc)
        return None
    if not os.access(folder, os.W_OK):
        log.warning("OpenVINO's model cache is off: %s is not writable", folder)
        return None
    return folder


@functools.cache
def _core() -> Any:
    # One Core per process (a python-backend stub serves one model instance): it holds the plugins.
    return import_openvino().Core()


@dataclass(frozen=True)
class _Tensor:
    """``name`` and ``shape`` as ONNX Runtime's ``NodeArg`` has them (a dynamic dimension is a string)."""

    name: str
    shape: list[int | str]


def _tensor(port: Any) -> _Tensor:
    """The port under the ONNX graph's own name for it.

    OpenVINO gives a tensor every name it had on its way through the graph: an output computed by
    an elementwise op after a Gather answers to both ``masks`` and ``/mask_head/Gather_6_output_0``,
    and ``any_name`` may return either. The graph's interface names are the ones the exporter did
    not derive from a node path (those begin with ``/``); the shortest of them is taken.
    """
    names = sorted(port.get_names())
    interface = [n for n in names if not n.startswith("/")] or names
    shape: list[int | str] = [d.get_length() if d.is_static else str(d) for d in port.get_partial_shape()]
    return _Tensor(min(interface, key=len), shape)


class OpenVinoSession:
    """An OpenVINO compiled model behind ONNX Runtime's ``InferenceSession`` surface.

    ``run(output_names, feeds)``, ``get_inputs()`` and ``get_outputs()``, so the ONNX Runtime
    runners run on it unchanged. One infer request, reused: a model instance runs one batch at a
    time; outputs are copied out of it before the next call overwrites them.
    """

    def __init__(self, model_path: Path, settings: OrtSettings, *, precision: str = "fp32",
                 cpu: CpuInfo | None = None) -> None:
        check_precision(precision, cpu)
        if not model_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {model_path}")
        self.model_path = model_path
        self.precision = precision
        config = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "INFERENCE_NUM_THREADS": settings.intra_op_threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        cache = cache_dir()
        self.compiled: Any = None
        if cache is not None:
            try:
                self.compiled = _core().compile_model(str(model_path), "CPU", {**config, "CACHE_DIR": str(cache)})
            except Exception as exc:  # any failure of the cache: compile as without one
                log.warning("%s: OpenVINO's model cache in %s failed (%s); compiling without it", model_path, cache,
                            exc)
        if self.compiled is None or self._compiled_precision() != _HINTS[precision]:
            self.compiled = _core().compile_model(str(model_path), "CPU", config)  # the answer that counts
        compiled_precision = self._compiled_precision()
        if compiled_precision != _HINTS[precision]:  # OpenVINO falls back to f32 where bf16 cannot run
            raise OpenVinoError(f"{model_path}: OpenVINO compiled {compiled_precision} where {precision} was asked "
                                "for; this CPU cannot run it as asked")
        self._inputs = [_tensor(port) for port in self.compiled.inputs]
        self._outputs = [_tensor(port) for port in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()
        log.info("loaded %s in OpenVINO %s (%s, threads=%d)", model_path, import_openvino().__version__, precision,
                 settings.intra_op_threads)

    def _compiled_precision(self) -> str:
        return str(self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())

    def get_inputs(self) -> list[_Tensor]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Tensor]:
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, AnyArray]) -> list[AnyArray]:
        """ONNX Runtime's ``InferenceSession.run``: the named outputs (all when ``None``), in that order."""
        names = [t.name for t in self._outputs] if output_names is None else list(output_names)
        self._request.infer({name: np.ascontiguousarray(value) for name, value in feeds.items()})
        return [np.array(self._request.get_tensor(name).data, copy=True) for name in names]


class OpenVinoDetector(OnnxDetector):
    """:class:`fashionbox.core.serving.OnnxDetector` run by OpenVINO (same graph, same answers in fp32)."""

    def __init__(self, model_path: Path, settings: OrtSettings, *, max_detections: int, precision: str = "fp32",
                 cpu: CpuInfo | None = None) -> None:
        self.precision = precision
        self._cpu = cpu
        super().__init__(model_path, settings, max_detections=max_detections)

    def _create_session(self, model_path: Path, settings: OrtSettings) -> Any:
        return OpenVinoSession(model_path, settings, precision=self.precision, cpu=self._cpu)


class OpenVinoAttributes(OnnxAttributes):
    """:class:`fashionbox.core.serving.OnnxAttributes` run by OpenVINO."""

    def __init__(self, model_path: Path, settings: OrtSettings, *, num_attribute_labels: int,
                 precision: str = "fp32", cpu: CpuInfo | None = None) -> None:
        self.precision = precision
        self._cpu = cpu
        super().__init__(model_path, settings, num_attribute_labels=num_attribute_labels)

    def _create_session(self, model_path: Path, settings: OrtSettings) -> Any:
        return OpenVinoSession(model_path, settings, precision=self.precision, cpu=self._cpu)


class OpenVinoImageBranch(OnnxImageBranch):
    """:class:`fashionbox.core.serving.OnnxImageBranch` (a classifier or embedder graph) run by OpenVINO."""

    def __init__(self, model_path: Path, settings: OrtSettings, *, output: str, size: int, precision: str = "fp32",
                 cpu: CpuInfo | None = None) -> None:
        self.precision = precision
        self._cpu = cpu
        super().__init__(model_path, settings, output=output, size=size)

    def _create_session(self, model_path: Path, settings: OrtSettings) -> Any:
        return OpenVinoSession(model_path, settings, precision=self.precision, cpu=self._cpu)


class OpenVinoTextEmbedder(OnnxTextEmbedder):
    """:class:`fashionbox.core.serving.OnnxTextEmbedder` (an embedder family's text tower) run by OpenVINO."""

    def __init__(self, model_path: Path, tokenizer_dir: Path, settings: OrtSettings, *, dimension: int,
                 precision: str = "fp32", cpu: CpuInfo | None = None) -> None:
        self.precision = precision
        self._cpu = cpu
        super().__init__(model_path, tokenizer_dir, settings, dimension=dimension)

    def _create_session(self, model_path: Path, settings: OrtSettings) -> Any:
        return OpenVinoSession(model_path, settings, precision=self.precision, cpu=self._cpu)
