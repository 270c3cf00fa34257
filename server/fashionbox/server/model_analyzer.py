"""A Triton Model Analyzer setup for a FashionBox repository: its config and its perf_analyzer input data.

``fashionbox model-analyzer-config`` writes both into a folder; then ``model-analyzer profile -f
FOLDER/model-analyzer.yaml`` searches the ensemble's composing models as Model Analyzer does
(docs/TUNING.md)::

    setup = write_setup(Path("artifacts/model_repository"), Path("ma"), images=[jpeg_bytes])
    # model-analyzer profile -f ma/model-analyzer.yaml

What the config tells Model Analyzer that it would not work out alone (each measured: issue 22):

- the models a step calls itself (BLS: ``postprocess`` calls ``attributes``) are not composing models
  of the ensemble, and Model Analyzer loads only the ensemble and its steps in its explicit mode:
  they are loaded at the server's start (``triton_server_flags: load-model``);
- the composing models are CPU models (``cpu_only_composing_models``), or Model Analyzer gives them
  GPU instances;
- a composing model's ``max_batch_size`` must be at least the ensemble's, or the ensemble does not
  load ("ensemble fashion allows maximum batch size 8, but it contains model detector which only
  allows maximum batch size to be 4"): the search's smallest ``max_batch_size`` is the ensemble's
  (``run_config_search_min_model_batch_size``), so every configuration it finds, the winner included,
  loads inside the shipped ensemble;
- the server is the embedded one (``fashionbox-tritonserver``) and perf_analyzer the wheel's, with its
  libraries (``fashionbox-perf-analyzer``); the ports are the caller's (Model Analyzer's defaults,
  8000-8002, are often taken on a shared machine);
- the ensemble's input is an encoded image: perf_analyzer's random bytes would all be refused as
  undecodable, so it sends real JPEGs (``input-data``, each element serialised as a 4-byte
  little-endian length then its bytes: docs/FIELD_NOTES.md).
"""

from __future__ import annotations

import base64
import json
import struct
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionbox.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, ENSEMBLE_MODEL, IMAGE
from fashionbox.server.errors import ConfigError
from fashionbox.server.model_config import CONFIG_FILE, read_config

__all__ = ["CONFIG_NAME", "INPUT_DATA_NAME", "AnalyzerSearch", "EnsembleLayout", "analyzer_config", "console_script",
           "ensemble_layout", "input_data", "render_yaml", "write_setup"]

CONFIG_NAME = "model-analyzer.yaml"
INPUT_DATA_NAME = "input-data.json"
LAUNCHER = "fashionbox-tritonserver"
PERF_ANALYZER = "fashionbox-perf-analyzer"


def console_script(name: str) -> str:
    """``name``'s full path when it is installed beside this interpreter (the config then works without
    the environment on ``PATH``), else ``name`` as Model Analyzer will look it up on ``PATH``."""
    path = Path(sysconfig.get_path("scripts")) / name
    return str(path) if path.is_file() else name


@dataclass(frozen=True)
class EnsembleLayout:
    """What Model Analyzer must know of an ensemble: its steps, the models they call, its batch size."""

    ensemble: str
    max_batch_size: int
    composing: tuple[str, ...]
    called: tuple[str, ...]
    """Models a step calls itself (BLS), named by a ``*_model`` parameter of the step's config."""


def ensemble_layout(repository: Path, ensemble: str = ENSEMBLE_MODEL) -> EnsembleLayout:
    """Read ``ensemble``'s steps, its max batch size and the models its steps call from ``repository``."""
    path = Path(repository) / ensemble / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{repository} has no ensemble {ensemble!r} ({path} is missing)")
    config = read_config(path)
    if config.platform != "ensemble":
        raise ConfigError(f"{path} is not an ensemble (platform {config.platform!r})")
    composing = tuple(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))
    called: list[str] = []
    for step in composing:
        step_config = read_config(Path(repository) / step / CONFIG_FILE)
        for key, value in step_config.parameters.items():
            name = value.string_value
            if key.endswith("_model") and name and (Path(repository) / name / CONFIG_FILE).is_file():
                called.append(name)
    return EnsembleLayout(ensemble=ensemble, max_batch_size=int(config.max_batch_size), composing=composing,
                          called=tuple(dict.fromkeys(c for c in called if c not in composing)))


@dataclass(frozen=True)
class AnalyzerSearch:
    """Model Analyzer's search: mode, bounds, ports. The defaults are for a 2-core CPU machine."""

    mode: str = "quick"
    max_instance_count: int = 3
    max_model_batch_size: int = 16
    max_concurrency: int = 16
    grpc_port: int = DEFAULT_GRPC_PORT
    http_port: int = DEFAULT_HTTP_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    launch_mode: str = "local"

    def __post_init__(self) -> None:
        if self.mode not in ("quick", "brute", "optuna"):
            raise ConfigError(f"Model Analyzer's search mode is quick, brute or optuna, not {self.mode!r}")
        if self.launch_mode not in ("local", "remote"):
            raise ConfigError(f"launch mode is local or remote here, not {self.launch_mode!r}")
        for name in ("max_instance_count", "max_model_batch_size", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


def analyzer_config(repository: Path, output: Path, search: AnalyzerSearch | None = None,
                    ensemble: str = ENSEMBLE_MODEL) -> dict[str, Any]:
    """Model Analyzer's ``profile`` config for ``ensemble`` in ``repository``; its files go under ``output``."""
    search = search or AnalyzerSearch()
    layout = ensemble_layout(repository, ensemble)
    if len(layout.called) > 1:
        # triton_server_flags is a mapping: one --load-model at most.
        raise ConfigError(f"Model Analyzer can load one model besides the ensemble's steps; "
                          f"{ensemble}'s steps call {', '.join(layout.called)}")
    if search.max_model_batch_size < layout.max_batch_size:
        raise ConfigError(f"max_model_batch_size {search.max_model_batch_size} is below {ensemble}'s max batch size "
                          f"{layout.max_batch_size}: no configuration found would load inside the ensemble")
    repository, output = Path(repository).resolve(), Path(output).resolve()
    config: dict[str, Any] = {
        "model_repository": str(repository),
        "profile_models": {ensemble: {"perf_analyzer_flags": {"input-data": str(output / INPUT_DATA_NAME)}}},
        "cpu_only_composing_models": list(layout.composing),
    }
    if layout.called:
        config["triton_server_flags"] = {"load-model": layout.called[0]}
    config.update({
        "run_config_search_mode": search.mode,
        "run_config_search_min_model_batch_size": layout.max_batch_size,
        "run_config_search_max_model_batch_size": search.max_model_batch_size,
        "run_config_search_max_instance_count": search.max_instance_count,
        "run_config_search_max_concurrency": search.max_concurrency,
        "triton_launch_mode": search.launch_mode,
        "triton_server_path": console_script(LAUNCHER),
        "perf_analyzer_path": console_script(PERF_ANALYZER),
        "triton_grpc_endpoint": f"127.0.0.1:{search.grpc_port}",
        "triton_http_endpoint": f"127.0.0.1:{search.http_port}",
        "triton_metrics_url": f"http://127.0.0.1:{search.metrics_port}/metrics",
        "output_model_repository_path": str(output / "output_model_repository"),
        "override_output_model_repository": True,
        "export_path": str(output / "export"),
        "checkpoint_directory": str(output / "checkpoints"),
        "triton_output_path": str(output / "tritonserver.log"),
    })
    return config


def input_data(images: Sequence[bytes], input_name: str = IMAGE.name) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` for a BYTES input: one entry per image, each serialised."""
    if not images:
        raise ConfigError("perf_analyzer needs at least one image to send")
    return {"data": [
        {input_name: {"b64": base64.b64encode(struct.pack("<I", len(image)) + image).decode("ascii"), "shape": [1]}}
        for image in images
    ]}


def render_yaml(config: dict[str, Any], header: str = "") -> str:
    """``config`` (nested mappings, lists, scalars) as block YAML; strings as JSON strings, which YAML reads."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def scalar(value: Any) -> str:
        return json.dumps(value)  # true/false, numbers and double-quoted strings are YAML too

    def emit(value: Any, indent: int) -> None:
        pad = "  " * indent
        for key, item in value.items():
            if isinstance(item, dict):
                lines.append(f"{pad}{key}:")
                emit(item, indent + 1)
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: [{', '.join(scalar(v) for v in item)}]")
            else:
                lines.append(f"{pad}{key}: {scalar(item)}")

    emit(config, 0)
    return "\n".join(lines) + "\n"


def write_setup(repository: Path, output: Path, images: Sequence[bytes], search: AnalyzerSearch | None = None,
                ensemble: str = ENSEMBLE_MODEL) -> Path:
    """Write ``model-analyzer.yaml`` and its ``input-data.json`` into ``output``; the config's path."""
    config = analyzer_config(repository, output, search, ensemble)
    output.mkdir(parents=True, exist_ok=True)
    (output / INPUT_DATA_NAME).write_text(json.dumps(input_data(images)))
    path = output / CONFIG_NAME
    header = (f"Triton Model Analyzer config for {ensemble} in {Path(repository).resolve()}\n"
              f"written by `fashionbox model-analyzer-config` (docs/TUNING.md); run:\n"
              f"  model-analyzer profile -f {path.resolve()}")
    path.write_text(render_yaml(config, header))
    return path
