"""Triton model configuration: how a server schedules a model, read and written as ``config.pbtxt``.

The converter writes every config through :func:`write_model_config`; ``fashionbox tune`` reads
them back (:func:`read_config`), changes a model's :class:`ModelScheduling` (:func:`apply_scheduling`)
and writes them again. Configs are ``model_config_pb2.ModelConfig`` messages (tritonclient's copy of
Triton's schema), so a bad field fails when the config is made, not when Triton loads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILE", "ModelConfigError", "ModelScheduling", "apply_scheduling", "backend_args",
           "model_config_pb2", "read_config", "scheduling_of", "write_model_config"]

CONFIG_FILE = "config.pbtxt"


class ModelConfigError(ValueError):
    """A ``config.pbtxt`` that cannot be read or parsed; the message names the file."""


def model_config_pb2() -> Any:
    """tritonclient's ``model_config_pb2`` (Triton's model configuration schema)."""
    from tritonclient.grpc import model_config_pb2 as mc

    return mc


@dataclass(frozen=True)
class ModelScheduling:
    """How Triton schedules one model: instances and dynamic batching.

    ``max_queue_delay_us`` defaults to 0: Triton still batches whatever is queued when an
    instance frees up, and docs/FIELD_NOTES.md measured 2.2 ms added latency for a 2 ms delay at low
    load. Tune it with the load-test harness, not by guessing.

    The queue policy (off unless set: Triton's own default) makes an overloaded server refuse
    work instead of queueing it without bound: past ``max_queue_size`` waiting requests Triton
    rejects a new one at once, and a request that waited ``queue_timeout_us`` is rejected, both
    with UNAVAILABLE, which the client retries with backoff. ``fashionbox.converter.repository.RepositorySettings``
    sets the policy FashionBox ships (docs/RELIABILITY.md has the measurements behind it):

    - the entry, ``preprocess``, is bounded by size: its refusals come back in milliseconds;
    - ``detector`` and ``postprocess`` are bounded by the admission control (``max_in_flight`` of
      ``fashionbox.converter.repository.RepositorySettings``), which caps the requests inside the
      whole ensemble; without it (``max_in_flight=0``) ``fashionbox.converter.repository.step_timeouts``
      bounds them by waiting time: on a
      CPU the entry admits faster than the detector finishes, and without a bound there latency
      grows without limit. Not by size: a size-bounded single-instance model that refuses many requests a second
      left its instance mostly idle in Triton 2.51 (goodput fell to 5-10 % of capacity). A
      request refused by a later step fails as a whole with that status, never half-answered;
      only the work already done for it is lost;
    - ``attributes`` stays unbounded: ``postprocess`` calls it synchronously (BLS), so its queue
      never holds more than one request per ``postprocess`` instance, and a refusal there would
      surface as a postprocess error rather than as overload.
    """

    instances: int = 1
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    max_queue_size: int = 0
    """Requests that may wait in this model's queue; one more is rejected at once with
    UNAVAILABLE "Exceeds maximum queue size". 0 is unbounded (Triton's own default)."""
    queue_timeout_us: int = 0
    """Longest wait in this model's queue before the request is rejected (UNAVAILABLE "Request
    timeout expired"); 0 is no limit. Not taken from clients: Triton 2.51's ensemble does not pass
    a request's own timeout on to its steps (measured: a 1 ms timeout still ran after 700 ms)."""

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"instances must be at least 1, got {self.instances}")
        if self.max_queue_size < 0:
            raise ValueError(f"max_queue_size must not be negative (0 is unbounded), got {self.max_queue_size}")
        if self.queue_timeout_us < 0:
            raise ValueError(f"queue_timeout_us must not be negative (0 is none), got {self.queue_timeout_us}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must not be negative, got {self.max_queue_delay_us}")
        sizes = self.preferred_batch_sizes
        if any(not 1 <= s <= self.max_batch_size for s in sizes):
            raise ValueError(f"preferred_batch_sizes {sizes} must lie in [1, max_batch_size={self.max_batch_size}]")
        if list(sizes) != sorted(set(sizes)):
            raise ValueError(f"preferred_batch_sizes {sizes} must be strictly increasing")


def read_config(path: Path) -> Any:
    """``path`` (a ``config.pbtxt``) as a ``ModelConfig`` message."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2().ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}") from exc


def backend_args(repository: Path, model: str, *, version: str = "1", parameters: Mapping[str, str] | None = None,
                 kind: str = "CPU", device_id: int = 0) -> dict[str, str]:
    """The ``args`` Triton's python backend passes ``model``'s ``initialize``, from its ``config.pbtxt`` in
    ``repository`` (``parameters`` set over the config's): for tools and tests that load a model's
    runners as a server would (``fashionbox.model_repository.runners``). The config travels as the JSON
    Triton makes of it (proto field names)."""
    from google.protobuf import json_format

    config = read_config(repository / model / CONFIG_FILE)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return {"model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
            "model_version": version, "model_repository": str(repository / model), "model_name": model,
            "model_instance_kind": kind, "model_instance_device_id": str(device_id)}


def write_model_config(path: Path, config: Any) -> None:
    """Write ``config`` as ``config.pbtxt`` text, the format Triton reads."""
    from google.protobuf import text_format

    path.write_text(text_format.MessageToString(config), encoding="utf-8")


def scheduling_of(config: Any) -> ModelScheduling:
    """The instances and dynamic batching of ``config``."""
    instances = sum(max(group.count, 1) for group in config.instance_group) or 1
    batching = config.dynamic_batching
    return ModelScheduling(
        instances=instances,
        max_batch_size=max(config.max_batch_size, 1),
        preferred_batch_sizes=tuple(batching.preferred_batch_size),
        max_queue_delay_us=int(batching.max_queue_delay_microseconds),
        max_queue_size=int(batching.default_queue_policy.max_queue_size),
        queue_timeout_us=int(batching.default_queue_policy.default_timeout_microseconds),
    )


def apply_scheduling(config: Any, scheduling: ModelScheduling) -> Any:
    """A copy of ``config`` with ``scheduling``'s instances and dynamic batching (kind and devices kept)."""
    mc = model_config_pb2()
    out = mc.ModelConfig()
    out.CopyFrom(config)
    out.max_batch_size = scheduling.max_batch_size
    if out.instance_group:
        first = mc.ModelInstanceGroup()
        first.CopyFrom(out.instance_group[0])
        del out.instance_group[:]
        first.count = scheduling.instances
        out.instance_group.append(first)
    else:
        out.instance_group.append(
            mc.ModelInstanceGroup(count=scheduling.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
        )
    batching = out.dynamic_batching
    del batching.preferred_batch_size[:]
    batching.preferred_batch_size.extend(scheduling.preferred_batch_sizes)
    batching.max_queue_delay_microseconds = scheduling.max_queue_delay_us
    # Other queue-policy fields (timeout action, override) are kept as the config had them.
    batching.default_queue_policy.max_queue_size = scheduling.max_queue_size
    batching.default_queue_policy.default_timeout_microseconds = scheduling.queue_timeout_us
    if batching.default_queue_policy == model_config_pb2().ModelQueuePolicy():
        batching.ClearField("default_queue_policy")
    return out

