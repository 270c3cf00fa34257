"""``fashionbox tune``: search dynamic batching, instance counts and threads per composing model under an SLO.

The repository is copied to a temporary folder and served by an embedded Triton on loopback with
explicit model control. Each configuration tried is written into the copy's ``config.pbtxt`` files
through ``ModelConfig`` protobufs (:func:`apply_scheduling`, :func:`make_consistent`), the changed
models are reloaded through Triton's repository API (``load_model``), and the same runner as
``fashionbox loadtest`` measures it. The objective is throughput; the constraint is p99 latency
(and no errors) at any of the measured concurrencies.

The search is coordinate descent with line search (Model Analyzer's quick search, in spirit): from
the current configuration, one parameter of one model moves one step at a time through its candidate
values, keeps going while the objective improves by at least ``min_gain`` (noise guard), and passes
repeat until a pass changes nothing or the trial budget is spent. It tries a few dozen configurations
where the cross product has thousands. Besides Triton's scheduling (instances, ``max_batch_size``,
queue delay, preferred sizes) it searches the network models' threads per instance (their
``intra_op_threads``, or the torch runtime's ``torch_threads``, :class:`ModelTuning`): on a CPU, one
instance of many threads and many instances of one thread trade latency against throughput
differently per model and host (BENCHMARKS.md, "Thread spinning and threads per network model"), so
it is measured, not guessed.
Candidates above the host's cores are left out (the tuning server runs here)::

    report = tune(TuneOptions(repository=Path("artifacts/model_repository"), images=corpus.images,
                              space=TuneSpace(models=("preprocess", "detector")), slo_p99_ms=150))
    report.best.config                      # ((model, ModelScheduling), ...)
    write_back(options.repository, report.best.config)     # what --write does

With ``TuneOptions.runtimes`` (target cpu repositories), the runtime is searched first, as one more
coordinate: the ``detector`` and ``attributes`` python models (and ``classifier`` and ``embedder``
where served) run the same ``model.onnx`` in ONNX Runtime or OpenVINO (fp32, or bf16 on CPUs with
AMX/AVX512-BF16), so switching is a config parameter
(:func:`apply_runtime`), not a re-conversion. The torch runtime is a candidate too where the
repository was converted for it (``--runtime torch``, or ``auto`` where it picked torch): such a
repository ships the checkpoints beside the same graphs, so its networks switch between PyTorch, ONNX
Runtime and OpenVINO (:func:`missing_runtime_files` says what another repository lacks). Each
candidate is measured once at the starting scheduling, the best (by the same ``min_gain`` rule) is
kept, and the scheduling search runs on it; ``write_back(repository, config,
runtime=report.best.runtime)`` writes both.

Nothing is changed in the original repository unless :func:`write_back` is called.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fashionbox import contract
from fashionbox.core.serving import OrtSettings, RuntimeSettings
from fashionbox.loadtest.errors import LoadTestConfigError, TuneError
from fashionbox.loadtest.events import Listener
from fashionbox.loadtest.report import Point
from fashionbox.loadtest.runner import RunOptions, Target, run_target, sweep_concurrency
from fashionbox.loadtest.senders import RequestSpec, SenderKind
from fashionbox.loadtest.windows import StabilityRule
from fashionbox.server import model_config as triton_config
from fashionbox.server.model_config import (
    CONFIG_FILE,
    ModelScheduling,
    apply_scheduling,
    scheduling_of,
    write_model_config,
)

__all__ = [
    "PARAMETERS",
    "ModelTuning",
    "Trial",
    "TuneConfig",
    "TuneOptions",
    "TuneReport",
    "TuneSpace",
    "apply_runtime",
    "apply_scheduling",
    "choose_runtime",
    "coordinate_descent",
    "describe_scheduling",
    "make_consistent",
    "missing_runtime_files",
    "read_config",
    "read_configs",
    "runtime_of",
    "scheduling_of",
    "threads_of",
    "threads_parameter",
    "torch_settings_of",
    "tune",
    "tuning_of",
    "write_back",
]

logger = logging.getLogger(__name__)

SPLIT = "instances x threads"
"""The search's move along a fixed core budget: instances and threads per instance changed together,
their product kept (1 x 2 <-> 2 x 1), which neither coordinate reaches alone when the cores are
all in use (one more instance oversubscribes, one thread fewer idles a core)."""
PARAMETERS = ("instances", "threads", SPLIT, "max_batch_size", "max_queue_delay_us", "preferred_batch_sizes")
THREADS_PARAMETER = "intra_op_threads"
"""The config parameter that sets a network model's runtime threads per instance in ONNX Runtime and
OpenVINO (:class:`fashionbox.core.serving.OrtSettings`)."""
TORCH_THREADS_PARAMETER = "torch_threads"
"""The torch runtime's (:class:`fashionbox.core.serving.RuntimeSettings`): its instance's PyTorch pool."""
# postprocess splits its BLS calls to ``attributes`` by this parameter (fashionbox.core.serving.PostprocessParameters).
ATTRIBUTES_MAX_BATCH_PARAMETER = "attributes_max_batch_size"


@dataclass(frozen=True)
class ModelTuning(ModelScheduling):
    """What tune sets for one model: Triton's scheduling and, for a network model, its threads."""

    threads: int = 0
    """Runtime threads of each instance (the config's :func:`threads_parameter`); 0: the model has no such
    parameter (a pre- or postprocessing step), so there is nothing to set or search."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threads < 0:
            raise ValueError(f"threads must not be negative (0 is none), got {self.threads}")


TuneConfig = tuple[tuple[str, ModelScheduling], ...]
"""One configuration: a scheduling per tuned model (a :class:`ModelTuning` where the search sets
threads too), in the space's model order (hashable)."""
CPU_RUNTIMES = ("onnxruntime/fp32", "openvino/fp32", "openvino/bf16", "torch/fp32")
"""Runtime candidates (``runtime/precision``) of the cpu target's network models (issue 23); the torch
runtime's in a repository converted for it (:func:`apply_runtime`)."""
RUNTIME_KEYS = tuple(f.name for f in dataclasses.fields(RuntimeSettings))
ORT_KEYS = tuple(f.name for f in dataclasses.fields(OrtSettings))
BRANCH_MODELS = (contract.CLASSIFIER_MODEL, contract.EMBEDDER_MODEL)
RUNTIME_MODELS = (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL)
"""The python models whose ``runtime`` and ``precision`` parameters say what runs their ``model.onnx``."""


# -- configs through ModelConfig protobufs ---------------------------------------------------------------


def read_config(path: Path) -> Any:
    """A ``config.pbtxt`` parsed into a ``ModelConfig`` (the schema is checked on parsing)."""
    try:
        return triton_config.read_config(path)
    except triton_config.ModelConfigError as exc:
        raise TuneError(str(exc)) from exc


def read_configs(repository: Path) -> dict[str, Any]:
    """Every model's config in ``repository``, keyed by folder name, sorted."""
    configs = {}
    for folder in sorted(p for p in repository.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()):
        configs[folder.name] = read_config(folder / CONFIG_FILE)
    if not configs:
        raise LoadTestConfigError(f"{repository} holds no model (no */{CONFIG_FILE})")
    return configs


def make_consistent(configs: Mapping[str, Any]) -> dict[str, Any]:
    """Copies of ``configs`` with the fields that follow from others updated.

    - an ensemble's ``max_batch_size`` is the smallest of its steps' (Triton refuses a larger one);
    - ``postprocess`` splits its BLS calls to ``attributes`` by ``attributes``' ``max_batch_size``.
    """
    mc = triton_config.model_config_pb2()
    out = {}
    for name, config in configs.items():
        copy = mc.ModelConfig()
        copy.CopyFrom(config)
        out[name] = copy
    for config in out.values():
        steps = [step.model_name for step in config.ensemble_scheduling.step]
        if config.platform == "ensemble" and steps and all(s in out for s in steps):
            config.max_batch_size = min(out[s].max_batch_size for s in steps)
    post, attributes = out.get(contract.POSTPROCESS_MODEL), out.get(contract.ATTRIBUTES_MODEL)
    if post is not None and attributes is not None and ATTRIBUTES_MAX_BATCH_PARAMETER in post.parameters:
        post.parameters[ATTRIBUTES_MAX_BATCH_PARAMETER].string_value = str(attributes.max_batch_size)
    return out


_DEFAULTS = RuntimeSettings()
"""What a network model's config means where it names no ``runtime``, ``precision`` or ``weights_file``."""


def _parameter(config: Any, key: str, default: str) -> str:
    """``config``'s parameter ``key`` (a ``config.pbtxt`` string), ``default`` where it has none."""
    return config.parameters[key].string_value if key in config.parameters else default


def _runtime(config: Any) -> str:
    return _parameter(config, "runtime", _DEFAULTS.runtime)


def threads_parameter(config: Any) -> str:
    """The parameter of ``config`` that holds its runtime threads per instance: ``torch_threads`` where the
    torch runtime runs the network, else ``intra_op_threads`` (ONNX Runtime, OpenVINO)."""
    return TORCH_THREADS_PARAMETER if _runtime(config) == "torch" else THREADS_PARAMETER


def threads_of(config: Any) -> int:
    """The runtime threads per instance of ``config`` (:func:`threads_parameter`), 0 where it has none."""
    parameters, key = config.parameters, threads_parameter(config)
    if key not in parameters:
        return 0
    try:
        return int(parameters[key].string_value)
    except ValueError as exc:
        raise TuneError(f"{config.name}: {key} is not a number: {parameters[key].string_value!r}") from exc


def tuning_of(config: Any) -> ModelTuning:
    """The scheduling and threads of ``config`` (what the search starts from)."""
    return ModelTuning(**dataclasses.asdict(scheduling_of(config)), threads=threads_of(config))


def configs_for(base: Mapping[str, Any], config: TuneConfig) -> dict[str, Any]:
    """``base`` with every tuned model's scheduling (and threads, where set) applied, made consistent."""
    changed = dict(base)
    for model, scheduling in config:
        if model not in changed:
            raise LoadTestConfigError(f"model {model!r} is not in the repository (has {sorted(base)})")
        changed[model] = apply_scheduling(changed[model], scheduling)
        threads = getattr(scheduling, "threads", 0)
        if threads:
            key = threads_parameter(changed[model])
            if key not in changed[model].parameters:
                raise LoadTestConfigError(f"{model} has no {key} parameter: its threads cannot be set")
            changed[model].parameters[key].string_value = str(threads)
    return make_consistent(changed)


def runtime_of(configs: Mapping[str, Any]) -> str:
    """``runtime/precision`` of the ``detector`` model's config (ONNX Runtime fp32 when it names none)."""
    if contract.DETECTOR_MODEL not in configs:
        raise LoadTestConfigError(f"no {contract.DETECTOR_MODEL} model (has {sorted(configs)})")
    detector = configs[contract.DETECTOR_MODEL]
    return f"{_runtime(detector)}/{_parameter(detector, 'precision', _DEFAULTS.precision)}"


def runtime_models(configs: Mapping[str, Any]) -> tuple[str, ...]:
    """The models whose ``model.onnx`` runs in the chosen runtime: ``detector`` and ``attributes``, or in
    the fused layout (``postprocess`` runs the attribute network, ``attributes_inline``) ``detector``
    and ``postprocess``; and the image-level networks ``classifier`` and ``embedder`` where the
    repository serves them (the converter runs them in the others' runtime)."""
    post = configs.get(contract.POSTPROCESS_MODEL)
    inline = post is not None and "attributes_inline" in post.parameters and \
        post.parameters["attributes_inline"].string_value == "true"
    networks = (contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL) if inline else RUNTIME_MODELS
    return networks + tuple(name for name in BRANCH_MODELS if name in configs)


def torch_settings_of(repository: Path) -> RuntimeSettings | None:
    """The torch runtime's settings of a repository converted for it (its manifest's ``runtime``, or
    ``converted_runtime`` once tune wrote another) whose configs may run another runtime now: its NMS
    thresholds as exported; ``None`` for a repository converted for another runtime."""
    path = repository / contract.MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    converted = str(manifest.get("converted_runtime") or manifest.get("runtime") or "")
    nms = manifest.get("export", {}).get("nms", {})
    if not converted.startswith("torch") or not {"score_threshold", "iou_threshold"} <= set(nms):
        return None
    return RuntimeSettings(runtime="torch", score_threshold=float(nms["score_threshold"]),
                           iou_threshold=float(nms["iou_threshold"]))


def apply_runtime(configs: Mapping[str, Any], runtime: str, *,
                  torch_settings: RuntimeSettings | None = None) -> dict[str, Any]:
    """Copies of ``configs`` whose network models run in ``runtime`` (``CPU_RUNTIMES``).

    ONNX Runtime and OpenVINO run each model's ``model.onnx``: switching between them is the ``runtime``
    and ``precision`` parameters. The torch runtime runs the checkpoints with the NMS settings a torch
    conversion wrote into the configs, so only such a repository's configs switch to it (they stay as
    converted) and from it: to ONNX Runtime or OpenVINO its runtime parameters give way to the
    converter's ONNX Runtime ones, at the same threads per instance; and back, where ``torch_settings``
    (:func:`torch_settings_of` its manifest) gives the torch runtime's parameters again, as the converter
    wrote them, at the same threads per instance. An embedder's text tower
    (``text_embedder``, ONNX only) goes to OpenVINO with them and stays in ONNX Runtime otherwise, as the
    converter writes it. The instances stay on the CPU: a GPU profile's models are refused.
    """
    if runtime not in CPU_RUNTIMES:
        raise LoadTestConfigError(f"unknown runtime {runtime!r}; choose from {CPU_RUNTIMES}")
    name, precision = runtime.split("/")
    out = make_consistent(configs)  # copies
    gpu = triton_config.model_config_pb2().ModelInstanceGroup.KIND_GPU
    for model in runtime_models(out):
        config = out.get(model)
        if config is None or config.backend != "python" or "onnx_file" not in config.parameters \
                or any(group.kind == gpu for group in config.instance_group):
            raise LoadTestConfigError(
                f"the runtime search switches the CPU runtime of {model}, a python model with a model.onnx on "
                f"CPU instances; this repository's {model} is not such a model (convert with --target cpu)")
        current = _runtime(config)
        if name == "torch" and current != "torch" and torch_settings is None:
            raise LoadTestConfigError(
                f"{runtime}: this repository's {model} runs {current}; the torch runtime's checkpoints and "
                "settings come from a conversion for it (fashionbox convert --runtime torch, or --runtime auto "
                "where it picks torch), whose repository tune switches to ONNX Runtime and OpenVINO and back")
        if name == "torch" and current != "torch" and torch_settings is not None:
            threads = threads_of(config) or 1  # the converter's torch parameters, at the instance's threads
            for key in (*ORT_KEYS, *RUNTIME_KEYS):
                if key in config.parameters:
                    del config.parameters[key]
            settings = dataclasses.replace(torch_settings, torch_threads=threads)
            for key, value in settings.for_model(model).items():
                config.parameters[key].string_value = value
            continue
        if name == "torch":
            continue  # as converted: fp32 on the CPU
        if current == "torch":  # the converter's ONNX Runtime parameters, at the instance's threads
            threads = threads_of(config) or 1
            for key in RUNTIME_KEYS:
                if key in config.parameters:
                    del config.parameters[key]
            for key, value in OrtSettings(intra_op_threads=threads).to_parameters().items():
                config.parameters[key].string_value = value
        config.parameters["runtime"].string_value = name
        config.parameters["precision"].string_value = precision
    text = out.get(contract.TEXT_EMBEDDER_MODEL)
    if text is not None:  # an embedder's text tower: into OpenVINO with the networks, else ONNX Runtime (as converted)
        for key in ("runtime", "precision"):
            if key in text.parameters:
                del text.parameters[key]
        if name == "openvino":
            text.parameters["runtime"].string_value = name
            text.parameters["precision"].string_value = precision
    return out


def missing_runtime_files(repository: Path, configs: Mapping[str, Any], runtime: str) -> list[str]:
    """The files ``runtime``'s runners would load that ``repository`` lacks (relative paths): each
    network model's ``model.onnx`` for ONNX Runtime and OpenVINO; for the torch runtime its checkpoint,
    or the transformers folder of a DETR-style detector or an image-level network."""
    from fashionbox.model_repository.runners import TORCH_FOLDER

    missing = []
    for model in runtime_models(configs):
        versions = sorted((p for p in (repository / model).glob("[0-9]*") if p.is_dir() and p.name.isdigit()),
                          key=lambda p: int(p.name))
        version = versions[-1] if versions else repository / model / "1"
        if runtime.split("/")[0] != "torch":
            wanted = [_parameter(configs[model], "onnx_file", "model.onnx")]
        elif model in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
            weights = _parameter(configs[model], "weights_file", _DEFAULTS.weights_file)
            wanted = [weights, TORCH_FOLDER] if model == contract.DETECTOR_MODEL else [weights]
        else:
            wanted = [TORCH_FOLDER]
        if not any((version / name).exists() for name in wanted):
            missing.append(f"{model}/{version.name}/{' or '.join(wanted)}")
    return missing


def _check_runtime_files(repository: Path, configs: Mapping[str, Any], runtimes: Sequence[str]) -> None:
    """:class:`LoadTestConfigError` naming what each of ``runtimes`` would load and ``repository`` lacks."""
    lacking = {runtime: missing for runtime in runtimes
               if (missing := missing_runtime_files(repository, configs, runtime))}
    if lacking:
        hint = " (the torch runtime's files come with fashionbox convert --runtime torch)" if any(
            runtime.startswith("torch/") for runtime in lacking) else ""
        raise LoadTestConfigError("; ".join(f"{runtime} cannot run here: {repository} lacks {', '.join(missing)}"
                                            for runtime, missing in lacking.items()) + hint)


def describe_scheduling(s: ModelScheduling) -> str:
    """``"2 inst, 1 thread, batch 8, delay 500 us, preferred [4]"`` (threads where the model has them)."""
    threads = getattr(s, "threads", 0)
    text = f"{s.instances} inst, " + (f"{threads} thread{'s' if threads > 1 else ''}, " if threads else "")
    text += f"batch {s.max_batch_size}, delay {s.max_queue_delay_us} us"
    return text + (f", preferred {list(s.preferred_batch_sizes)}" if s.preferred_batch_sizes else "")


def write_back(repository: Path, config: TuneConfig, *, runtime: str = "") -> list[Path]:
    """Write ``config`` (and ``runtime``, when given) into ``repository``'s configs; returns the files changed.

    A runtime that changes is recorded in the manifest too (its ``runtime`` and ``precision``, what the
    repository says runs its networks), with the one it was converted for (``converted_runtime``).
    """
    base = read_configs(repository)
    switched = apply_runtime(base, runtime, torch_settings=torch_settings_of(repository)) if runtime else base
    new = configs_for(switched, config)
    written = []
    for name, model_config in new.items():
        if model_config != base[name]:
            path = repository / name / CONFIG_FILE
            write_model_config(path, model_config)
            written.append(path)
    manifest_path = repository / contract.MANIFEST_FILE
    if runtime and runtime != runtime_of(base) and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest.setdefault("converted_runtime", f"{manifest.get('runtime', 'onnxruntime')}/"
                                                 f"{manifest.get('precision', 'fp32')}")
        manifest["runtime"], manifest["precision"] = runtime.split("/")
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
        written.append(manifest_path)
    return written


# -- the search ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneSpace:
    """Candidate values per parameter, for every model in ``models`` (a parameter with one value is fixed)."""

    models: tuple[str, ...] = (
        contract.PREPROCESS_MODEL,
        contract.DETECTOR_MODEL,
        contract.ATTRIBUTES_MODEL,
        contract.POSTPROCESS_MODEL,
    )
    instances: tuple[int, ...] = (1, 2, 3, 4)
    threads: tuple[int, ...] = (1, 2, 4)
    """Runtime threads per instance, for the models that have them (:class:`ModelTuning`); candidates
    above the host's cores are left out when the search runs."""
    max_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    queue_delays_us: tuple[int, ...] = (0, 500, 1000, 2000, 5000)
    preferred: tuple[tuple[int, ...], ...] = ((),)

    def __post_init__(self) -> None:
        if not self.models:
            raise LoadTestConfigError("nothing to tune: no model")
        for name in ("instances", "threads", "max_batch_sizes", "queue_delays_us", "preferred"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise LoadTestConfigError(f"{name} needs distinct candidate values, got {values}")
        if min(self.instances) < 1 or min(self.threads) < 1 or min(self.max_batch_sizes) < 1 \
                or min(self.queue_delays_us) < 0:
            raise LoadTestConfigError("instances, threads and batch sizes must be positive, delays not negative")

    def options(self, parameter: str) -> list[Any]:
        values: Sequence[Any] = {
            "instances": self.instances,
            "threads": self.threads,
            "max_batch_size": self.max_batch_sizes,
            "max_queue_delay_us": self.queue_delays_us,
            "preferred_batch_sizes": self.preferred,
        }[parameter]
        return sorted(values, key=lambda v: (len(v), v) if isinstance(v, tuple) else v)

    def coordinates(self, threaded: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """(model, parameter) pairs to search, instances first: they move throughput most on CPU, then
        threads and :data:`SPLIT` (only for the ``threaded`` models, by default all: those with a
        threads parameter)."""
        out = []
        for p in PARAMETERS:
            for m in self.models:
                if p in ("threads", SPLIT) and threaded is not None and m not in threaded:
                    continue
                searchable = min(len(self.instances), len(self.threads)) > 1 if p == SPLIT \
                    else len(self.options(p)) > 1
                if searchable:
                    out.append((m, p))
        return out

    def line(self, parameter: str, current: ModelScheduling) -> tuple[list[Any], int]:
        """The candidate values of ``parameter`` for a model scheduled ``current``, and where it stands.

        :data:`SPLIT`: the ``(instances, threads)`` pairs of the space with ``current``'s product, by threads.
        """
        if parameter != SPLIT:
            options = self.options(parameter)
            return options, _nearest_index(options, getattr(current, parameter))
        here = (current.instances, getattr(current, "threads", 0))
        budget = here[0] * here[1]
        pairs = {(i, t) for i in self.instances for t in self.threads if i * t == budget} | {here}
        options = sorted(pairs, key=lambda pair: pair[1])
        return options, options.index(here)

    def within(self, cores: int) -> TuneSpace:
        """This space without thread counts above ``cores`` (at least the smallest candidate stays)."""
        kept = tuple(t for t in self.threads if t <= cores) or (min(self.threads),)
        return dataclasses.replace(self, threads=kept)

    def size(self, threaded: Sequence[str]) -> int:
        """Configurations in the whole space, threads counted for the ``threaded`` models only."""
        scheduling = len(self.instances) * len(self.max_batch_sizes) * len(self.queue_delays_us) * len(self.preferred)
        return int(math.prod(scheduling * (len(self.threads) if m in threaded else 1) for m in self.models))


def _with(config: TuneConfig, model: str, parameter: str, value: Any) -> TuneConfig | None:
    """``config`` with one parameter changed; None if the result is invalid (e.g. preferred > max batch)."""
    out = []
    changes = dict(zip(("instances", "threads"), value, strict=True)) if parameter == SPLIT else {parameter: value}
    for name, scheduling in config:
        if name == model:
            try:
                scheduling = dataclasses.replace(scheduling, **changes)
            except ValueError:
                return None
        out.append((name, scheduling))
    return tuple(out)


def _nearest_index(options: Sequence[Any], value: Any) -> int:
    if value in options:
        return list(options).index(value)
    if isinstance(value, tuple):
        return 0
    return min(range(len(options)), key=lambda k: abs(options[k] - value))


@dataclass(frozen=True)
class Trial:
    index: int
    config: TuneConfig
    change: str
    throughput_rps: float
    """The best throughput among the measured concurrencies that met the SLO (else the best at all)."""
    p99_ms: float
    concurrency: int | None
    meets_slo: bool
    points: tuple[Point, ...] = ()
    error: str = ""
    runtime: str = ""
    """``runtime/precision`` the networks ran in (set when the search includes the runtime)."""

    def as_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return round(v, 3) if math.isfinite(v) else None

        return {
            "index": self.index,
            "change": self.change,
            **({"runtime": self.runtime} if self.runtime else {}),
            "config": {m: dataclasses.asdict(s) for m, s in self.config},
            "throughput_rps": num(self.throughput_rps),
            "p99_ms": num(self.p99_ms),
            "concurrency": self.concurrency,
            "meets_slo": self.meets_slo,
            "error": self.error,
            "points": [
                {
                    "concurrency": p.load.concurrency,
                    "throughput_rps": num(p.throughput_rps),
                    "p50_ms": num(p.latency.p50_ms),
                    "p99_ms": num(p.latency.p99_ms),
                    "errors": p.error_count,
                    "stable": p.stable,
                }
                for p in self.points
            ],
        }


def better(a: Trial, b: Trial, min_gain: float) -> bool:
    """Whether ``a`` beats ``b`` by a margin: feasible beats infeasible; then throughput; then lower p99."""
    if a.error:
        return False
    if b.error:
        return True
    if a.meets_slo != b.meets_slo:
        return a.meets_slo
    if a.meets_slo:
        return a.throughput_rps > b.throughput_rps * (1.0 + min_gain)
    return a.p99_ms < b.p99_ms * (1.0 - min_gain)


Evaluate = Callable[[TuneConfig, str], Awaitable[Trial]]


async def choose_runtime(
    evaluate: Callable[[str, str], Awaitable[Trial]], current: str, candidates: Sequence[str], min_gain: float
) -> tuple[list[Trial], str]:
    """Every runtime measured once (``evaluate(runtime, change)``), the current first; the best.

    A candidate replaces the best so far only when :func:`better` by ``min_gain`` (noise guard), so
    the current runtime stays unless another clearly wins; a candidate that fails to load never does.
    """
    trials = [await evaluate(current, "baseline")]
    best, chosen = trials[0], current
    for runtime in candidates:
        if runtime == current:
            continue
        trial = await evaluate(runtime, f"runtime {current} -> {runtime}")
        trials.append(trial)
        if better(trial, best, min_gain):
            best, chosen = trial, runtime
    return trials, chosen


async def coordinate_descent(
    evaluate: Evaluate,
    start: TuneConfig,
    space: TuneSpace,
    *,
    max_trials: int,
    min_gain: float = 0.03,
    max_passes: int = 3,
) -> tuple[list[Trial], Trial]:
    """Every trial made (in order) and the best one. ``evaluate`` is called once per distinct config.

    Threads are searched for the models whose starting scheduling has them (a :class:`ModelTuning`
    with ``threads`` set); the other models keep what their config says.
    """
    threaded = [model for model, scheduling in start if getattr(scheduling, "threads", 0)]
    trials: list[Trial] = []
    seen: dict[TuneConfig, Trial] = {}

    async def measure(config: TuneConfig, change: str) -> Trial:
        if config not in seen:
            trial = await evaluate(config, change)
            seen[config] = trial
            trials.append(trial)
        return seen[config]

    best = await measure(start, "baseline")
    for _ in range(max_passes):
        moved = False
        for model, parameter in space.coordinates(threaded):
            options, here = space.line(parameter, dict(best.config)[model])
            for direction in (1, -1):
                improved = False
                j = here + direction
                while 0 <= j < len(options) and len(trials) < max_trials:
                    candidate = _with(best.config, model, parameter, options[j])
                    if candidate is None:
                        j += direction
                        continue
                    if candidate in seen:
                        break  # measured before and left behind: going back cannot improve
                    now = dict(best.config)[model]
                    old = (now.instances, getattr(now, "threads", 0)) if parameter == SPLIT else getattr(now, parameter)
                    trial = await measure(candidate, f"{model}.{parameter} {_show(old, parameter)} -> "
                                                     f"{_show(options[j], parameter)}")
                    if not better(trial, best, min_gain):
                        break
                    best, improved, moved = trial, True, True
                    j += direction
                if improved:
                    break  # this direction paid off; the other one goes back where we came from
            if len(trials) >= max_trials:
                return trials, best
        if not moved:
            break
    return trials, best


def _show(value: Any, parameter: str = "") -> str:
    if parameter == SPLIT:
        return "x".join(map(str, value))
    return str(list(value)) if isinstance(value, tuple) else str(value)


# -- running it against a server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneOptions:
    repository: Path
    images: tuple[bytes, ...]
    space: TuneSpace = field(default_factory=TuneSpace)
    slo_p99_ms: float = 150.0
    concurrency: tuple[int, ...] = (4, 8)
    max_trials: int = 16
    min_gain: float = 0.03
    window_s: float = 2.0
    warmup_s: float = 1.5
    max_duration_s: float = 12.0
    stability: StabilityRule = field(default_factory=lambda: StabilityRule(tolerance=0.2))
    sender: SenderKind = "raw"
    timeout_s: float = 30.0
    model: str = contract.ENSEMBLE_MODEL
    server_log: Path | None = None
    corpus: dict[str, object] = field(default_factory=dict)
    confirm: bool = True
    """Measure baseline and best again, back to back, after the search."""
    runtimes: tuple[str, ...] = ()
    """Runtime candidates searched first (``CPU_RUNTIMES``; target cpu repositories); empty: keep the runtime."""

    def __post_init__(self) -> None:
        if not self.images:
            raise LoadTestConfigError("no image to send")
        if not self.concurrency or min(self.concurrency) < 1:
            raise LoadTestConfigError(f"concurrency levels must be positive, got {self.concurrency}")
        if self.max_trials < 1:
            raise LoadTestConfigError(f"max_trials must be at least 1, got {self.max_trials}")
        if not self.slo_p99_ms > 0:
            raise LoadTestConfigError(f"the SLO must be a positive p99 in ms, got {self.slo_p99_ms}")
        unknown = [r for r in self.runtimes if r not in CPU_RUNTIMES]
        if unknown:
            raise LoadTestConfigError(f"unknown runtimes {unknown}; choose from {CPU_RUNTIMES}")


@dataclass(frozen=True)
class TuneReport:
    repository: Path
    slo_p99_ms: float
    concurrency: tuple[int, ...]
    space: TuneSpace
    trials: tuple[Trial, ...]
    best: Trial
    baseline: Trial
    written: tuple[Path, ...] = ()
    confirmation: tuple[Trial, ...] = ()
    """Baseline and best measured again back to back after the search (empty if the baseline won)."""
    min_gain: float = 0.0
    threaded: tuple[str, ...] = ()
    """The tuned models whose threads were searched (those with a threads parameter)."""

    @property
    def cross_product_size(self) -> int:
        """Configurations in the space searched (threads for the threaded models only)."""
        return self.space.size(self.threaded)

    @property
    def confirmed(self) -> bool:
        """Whether the best beats the baseline by ``min_gain`` when measured back to back (True without a re-run)."""
        if self.best.config == self.baseline.config and self.best.runtime == self.baseline.runtime:
            return False
        if len(self.confirmation) != 2:
            return True
        again_base, again_best = self.confirmation
        return better(again_best, again_base, self.min_gain) or (
            again_best.meets_slo
            and again_best.p99_ms < again_base.p99_ms * (1.0 - self.min_gain)
            and again_best.throughput_rps >= again_base.throughput_rps
        )

    @property
    def gain(self) -> float:
        """Throughput gain of the best over the baseline, from the back-to-back confirmation if there is one."""
        baseline, best = self.confirmation if len(self.confirmation) == 2 else (self.baseline, self.best)
        if not (baseline.meets_slo and best.meets_slo) or not baseline.throughput_rps > 0:
            return math.nan
        return best.throughput_rps / baseline.throughput_rps - 1.0

    @property
    def level_gain(self) -> tuple[int | None, float]:
        """The best's throughput over the baseline's at one concurrency, the one where the best reached
        its throughput within the SLO (from the back-to-back confirmation if there is one), whatever the
        baseline's p99 there; NaN where the baseline was not measured at that concurrency.

        :attr:`gain` compares capacities within the SLO, which may come from different concurrencies: a
        baseline whose p99 crosses the SLO at the best's level by a few ms falls back to a lower level,
        and the capacity gain then counts the whole step between levels. This one does not.
        """
        baseline, best = self.confirmation if len(self.confirmation) == 2 else (self.baseline, self.best)
        if best.concurrency is None or not best.meets_slo:
            return None, math.nan
        def at(trial: Trial) -> float:
            rates = [p.throughput_rps for p in trial.points if p.load.concurrency == best.concurrency]
            return rates[0] if rates else math.nan
        base_rps, best_rps = at(baseline), at(best)
        if not base_rps > 0 or math.isnan(best_rps):
            return best.concurrency, math.nan
        return best.concurrency, best_rps / base_rps - 1.0

    def to_dict(self) -> dict[str, Any]:
        level, level_gain = self.level_gain
        return {
            "schema": "fashionbox.tune/1",
            "repository": str(self.repository),
            "slo_p99_ms": self.slo_p99_ms,
            "concurrency": list(self.concurrency),
            "space": {
                "models": list(self.space.models),
                "instances": list(self.space.instances),
                "threads": list(self.space.threads),
                "threaded_models": list(self.threaded),
                "max_batch_sizes": list(self.space.max_batch_sizes),
                "queue_delays_us": list(self.space.queue_delays_us),
                "preferred": [list(p) for p in self.space.preferred],
                "cross_product_size": self.cross_product_size,
            },
            "trials": [t.as_dict() for t in self.trials],
            "baseline": self.baseline.index,
            "best": self.best.index,
            **({"runtime": self.best.runtime} if self.best.runtime else {}),
            "confirmation": [t.as_dict() for t in self.confirmation],
            "confirmed": self.confirmed,
            "gain": None if math.isnan(self.gain) else round(self.gain, 4),
            "level_gain": {"concurrency": level, "gain": None if math.isnan(level_gain) else round(level_gain, 4)},
            "written": [str(p) for p in self.written],
        }


def _trial_from_points(
    index: int, config: TuneConfig, change: str, points: Sequence[Point], slo_p99_ms: float
) -> Trial:
    feasible = [p for p in points if p.error_count == 0 and p.latency.count and p.latency.p99_ms <= slo_p99_ms]
    pool = feasible or [p for p in points if p.latency.count]
    if not pool:
        return Trial(index, config, change, 0.0, math.inf, None, False, tuple(points), "no request succeeded")
    best = max(pool, key=lambda p: p.throughput_rps) if feasible else min(pool, key=lambda p: p.latency.p99_ms)
    return Trial(
        index,
        config,
        change,
        best.throughput_rps,
        best.latency.p99_ms,
        best.load.concurrency,
        bool(feasible),
        tuple(points),
    )


class _Reloader:
    """Writes configs into the served copy and reloads what changed, in an order Triton accepts."""

    def __init__(self, repository: Path, url: str, model: str, timeout_s: float) -> None:
        self.repository = repository
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.base = read_configs(repository)
        self.current = dict(self.base)

    async def apply(self, config: TuneConfig) -> None:
        new = configs_for(self.base, config)
        changed = [name for name, c in new.items() if c != self.current[name]]
        if not changed:
            return
        try:
            await self._load(new, changed)
        except TuneError:
            previous = self.current
            logger.warning("restoring the previous configuration after a failed reload")
            await self._load(previous, changed, current=new)
            raise

    async def _load(
        self, new: Mapping[str, Any], changed: Sequence[str], current: Mapping[str, Any] | None = None
    ) -> None:
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        current = self.current if current is None else current
        for name in changed:
            write_model_config(self.repository / name / CONFIG_FILE, new[name])
        ensembles = [n for n in changed if new[n].platform == "ensemble"]
        shrinking = [n for n in ensembles if new[n].max_batch_size < current[n].max_batch_size]
        growing = [n for n in ensembles if n not in shrinking]
        # A smaller ensemble batch is valid with the old steps, a larger one only with the new steps.
        order = shrinking + [n for n in changed if n not in ensembles] + growing
        client = grpcclient.InferenceServerClient(self.url)
        try:
            for name in order:
                logger.info("reloading %s", name)
                await client.load_model(name, client_timeout=120.0)
            if not await client.is_model_ready(self.model, client_timeout=self.timeout_s):
                raise TuneError(f"{self.model} is not ready after reloading {order}")
        except InferenceServerException as exc:
            raise TuneError(f"reloading {order} failed: {exc}") from exc
        finally:
            await client.close()
        self.current = dict(new)


async def _tune_on(
    url: str,
    served_copy: Path,
    options: TuneOptions,
    listener: Listener | None,
    on_trial: Callable[[Trial], None] | None,
) -> tuple[list[Trial], Trial, list[Trial]]:
    reloader = _Reloader(served_copy, url, options.model, options.timeout_s)
    for model in options.space.models:
        if model not in reloader.base:
            raise LoadTestConfigError(f"model {model!r} is not in {options.repository} (has {sorted(reloader.base)})")
    start: TuneConfig = tuple((m, tuning_of(reloader.base[m])) for m in options.space.models)
    run_options = RunOptions(
        targets=(Target("tune", url, None),),
        stages=sweep_concurrency(options.concurrency),
        images=options.images,
        request=RequestSpec.for_ensemble(options.model),
        sender=options.sender,
        window_s=options.window_s,
        warmup_s=options.warmup_s,
        max_duration_s=options.max_duration_s,
        stability=options.stability,
        timeout_s=options.timeout_s,
        corpus=options.corpus,
    )
    counter = iter(range(10**9))
    original = reloader.base
    runtime = runtime_of(original) if options.runtimes else ""
    torch = torch_settings_of(served_copy)

    async def evaluate(config: TuneConfig, change: str) -> Trial:
        index = next(counter)
        try:
            await reloader.apply(config)
        except TuneError as exc:
            trial = Trial(index, config, change, 0.0, math.inf, None, False, (), str(exc))
        else:
            target_report = await run_target(run_options.targets[0], run_options.stages, run_options, listener)
            trial = _trial_from_points(index, config, change, target_report.points, options.slo_p99_ms)
        trial = dataclasses.replace(trial, runtime=runtime)
        if on_trial is not None:
            on_trial(trial)
        return trial

    def use_runtime(name: str) -> None:
        nonlocal runtime
        runtime = name
        reloader.base = apply_runtime(original, name, torch_settings=torch)

    runtime_trials: list[Trial] = []
    baseline_runtime = runtime
    if options.runtimes:
        async def evaluate_runtime(name: str, change: str) -> Trial:
            use_runtime(name)
            return await evaluate(start, change)

        runtime_trials, chosen = await choose_runtime(evaluate_runtime, runtime, options.runtimes, options.min_gain)
        use_runtime(chosen)
    trials, best = await coordinate_descent(
        evaluate, start, options.space, max_trials=options.max_trials, min_gain=options.min_gain
    )
    confirmation: list[Trial] = []
    if options.confirm and (best.config != start or best.runtime != baseline_runtime):
        # Trials ran minutes apart; other work on the machine may have helped or hurt some. The
        # winner and the baseline measured back to back again say whether the gain is real.
        pairs = ((start, "baseline, again", baseline_runtime), (best.config, "best, again", runtime))
        for config, change, name in pairs:
            if options.runtimes:
                use_runtime(name)
            confirmation.append(await evaluate(config, change))
    return runtime_trials + trials, best, confirmation


class Launcher(Protocol):
    """Serves a repository folder with model control ``explicit`` and every model loaded, and yields
    its gRPC URL; tune rewrites the folder's configs and reloads models through that server.
    :func:`fashionbox.server.serve_for_tuning` is the embedded server's."""

    def __call__(self, repository: Path, log_path: Path | None) -> AbstractContextManager[str]: ...


def tune(
    options: TuneOptions,
    *,
    launch: Launcher,
    listener: Listener | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuneReport:
    """Serve a copy of the repository through ``launch``, search, stop; the original is untouched.

    Thread counts above this host's cores are left out of the space (the server runs here).
    """
    cores = host_cores()
    space = options.space.within(cores)
    if space.threads != options.space.threads:
        left_out = sorted(set(options.space.threads) - set(space.threads))
        logger.info("threads %s left out: this host has %d cores", left_out, cores)
    options = dataclasses.replace(options, space=space)
    with tempfile.TemporaryDirectory(prefix="fashionbox-tune-") as tmp:
        copy = Path(tmp) / "repository"
        shutil.copytree(options.repository, copy)
        base = read_configs(copy)
        _check_runtime_files(options.repository, base, options.runtimes)
        for runtime in options.runtimes:  # a runtime the configs cannot switch to fails here, not mid-search
            apply_runtime(base, runtime, torch_settings=torch_settings_of(copy))
        threaded = tuple(m for m in space.models if m in base and threads_of(base[m]))
        with launch(copy, options.server_log or Path(tmp) / "tritonserver.log") as url:
            trials, best, confirmation = asyncio.run(_tune_on(url, copy, options, listener, on_trial))
    return TuneReport(
        options.repository,
        options.slo_p99_ms,
        options.concurrency,
        options.space,
        tuple(trials),
        best,
        trials[0],
        confirmation=tuple(confirmation),
        min_gain=options.min_gain,
        threaded=threaded,
    )


def host_cores() -> int:
    """The cores this process may run on (the tuning server's, as it runs on this host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
