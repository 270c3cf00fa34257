"""What the server says about a measurement: Triton statistics diffs per model, and its metrics endpoint.

Triton's statistics API (``ModelStatistics``) holds cumulative counters per model: requests,
executions, and nanoseconds spent queueing and in compute input / infer / output. The runner takes a
:class:`ServerSnapshot` at every window boundary; the difference between the snapshots around a
point's windows is exactly the server's share of that point::

    breakdown = diff_statistics(before.models, after.models)     # {model: ModelBreakdown}
    breakdown["detector"].queue_ms, breakdown["detector"].avg_batch_size

The Prometheus endpoint (``--metrics-port``, 8002 by default) is scraped at the same boundaries for
utilisation gauges. The embedded Triton on CPU exposes ``nv_cpu_utilization`` and CPU memory but
no GPU family; :func:`summarise_metrics` reports the families that exist and says which are absent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import statistics
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fashionbox.client import ClientConfig

__all__ = [
    "MetricsSummary",
    "ModelBreakdown",
    "ModelCounters",
    "ServerProbe",
    "ServerSnapshot",
    "diff_statistics",
    "parse_prometheus",
    "parse_statistics",
    "summarise_metrics",
]

logger = logging.getLogger(__name__)

_STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one model (all versions summed), as Triton reports them."""

    success_count: int = 0
    fail_count: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0

    def __add__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))

    def __sub__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(*(a - b for a, b in zip(self._values(), other._values(), strict=True)))

    def _values(self) -> tuple[int, ...]:
        return (
            self.success_count,
            self.fail_count,
            self.inference_count,
            self.execution_count,
            self.success_ns,
            self.queue_ns,
            self.compute_input_ns,
            self.compute_infer_ns,
            self.compute_output_ns,
        )


def _int(value: Any) -> int:
    return int(value or 0)


def parse_statistics(stats: Mapping[str, Any]) -> dict[str, ModelCounters]:
    """``get_inference_statistics(as_json=True)`` -> counters per model name."""
    out: dict[str, ModelCounters] = {}
    for model in stats.get("model_stats", []):
        s = model.get("inference_stats", {})

        def stage(name: str, key: str, s: Mapping[str, Any] = s) -> int:
            return _int(s.get(name, {}).get(key))

        counters = ModelCounters(
            success_count=stage("success", "count"),
            fail_count=stage("fail", "count"),
            inference_count=_int(model.get("inference_count")),
            execution_count=_int(model.get("execution_count")),
            success_ns=stage("success", "ns"),
            queue_ns=stage("queue", "ns"),
            compute_input_ns=stage("compute_input", "ns"),
            compute_infer_ns=stage("compute_infer", "ns"),
            compute_output_ns=stage("compute_output", "ns"),
        )
        name = str(model.get("name", ""))
        out[name] = out[name] + counters if name in out else counters
    return out


@dataclass(frozen=True)
class ModelBreakdown:
    """One model's share of a measurement: per-request averages in ms, batch size, rates."""

    model: str
    requests: int
    failures: int
    executions: int
    inferences: int
    avg_batch_size: float
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float
    total_ms: float
    """Average time from arrival to response inside this model (Triton's ``success`` duration)."""

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "model": self.model,
            "requests": self.requests,
            "failures": self.failures,
            "executions": self.executions,
            "avg_batch_size": round(self.avg_batch_size, 3),
            "queue_ms": round(self.queue_ms, 3),
            "compute_input_ms": round(self.compute_input_ms, 3),
            "compute_infer_ms": round(self.compute_infer_ms, 3),
            "compute_output_ms": round(self.compute_output_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


def diff_statistics(before: Mapping[str, ModelCounters], after: Mapping[str, ModelCounters]) -> list[ModelBreakdown]:
    """Per model with traffic between the snapshots, in the order ``after`` lists them."""
    out = []
    for name, end in after.items():
        d = end - before.get(name, ModelCounters())
        if d.success_count <= 0 and d.fail_count <= 0:
            continue
        requests = max(d.success_count, 1)

        def ms(ns: int, requests: int = requests) -> float:
            return ns / requests / 1e6

        out.append(
            ModelBreakdown(
                model=name,
                requests=d.success_count,
                failures=d.fail_count,
                executions=d.execution_count,
                inferences=d.inference_count,
                # Ensembles report no executions; their "batch" is the requests themselves.
                avg_batch_size=d.inference_count / d.execution_count if d.execution_count else math.nan,
                queue_ms=ms(d.queue_ns),
                compute_input_ms=ms(d.compute_input_ns),
                compute_infer_ms=ms(d.compute_infer_ns),
                compute_output_ms=ms(d.compute_output_ns),
                total_ms=ms(d.success_ns),
            )
        )
    return out


# -- Prometheus metrics ---------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')

Metrics = dict[str, list[tuple[dict[str, str], float]]]


def parse_prometheus(text: str) -> Metrics:
    """Prometheus text exposition -> ``{family: [(labels, value), ...]}`` (comments skipped)."""
    out: Metrics = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
        out.setdefault(match["name"], []).append((labels, value))
    return out


@dataclass(frozen=True)
class MetricsSummary:
    """Utilisation over a measurement from the metrics endpoint; None where the server has no such metric."""

    available: bool
    cpu_utilization: float | None
    """Mean of ``nv_cpu_utilization`` (0..1, the whole machine) over the snapshots."""
    gpu_utilization: float | None
    """Mean of ``nv_gpu_utilization`` over GPUs and snapshots."""
    cpu_memory_used_bytes: float | None
    gpu_memory_used_bytes: float | None
    families: tuple[str, ...]
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "cpu_utilization": self.cpu_utilization,
            "gpu_utilization": self.gpu_utilization,
            "cpu_memory_used_bytes": self.cpu_memory_used_bytes,
            "gpu_memory_used_bytes": self.gpu_memory_used_bytes,
            "families": list(self.families),
            "note": self.note,
        }


def _mean_gauge(samples: Sequence[Metrics], family: str) -> float | None:
    values = [value for metrics in samples for _, value in metrics.get(family, [])]
    return statistics.fmean(values) if values else None


def summarise_metrics(samples: Sequence[Metrics | None]) -> MetricsSummary:
    scraped = [m for m in samples if m is not None]
    if not scraped:
        return MetricsSummary(False, None, None, None, None, (), "metrics endpoint not reachable")
    families = tuple(sorted({name for m in scraped for name in m if name.startswith("nv_")}))
    summary = MetricsSummary(
        available=True,
        cpu_utilization=_mean_gauge(scraped, "nv_cpu_utilization"),
        gpu_utilization=_mean_gauge(scraped, "nv_gpu_utilization"),
        cpu_memory_used_bytes=_mean_gauge(scraped, "nv_cpu_memory_used_bytes"),
        gpu_memory_used_bytes=_mean_gauge(scraped, "nv_gpu_memory_used_bytes"),
        families=families,
    )
    missing = [
        name
        for name, value in (("CPU utilisation", summary.cpu_utilization), ("GPU utilisation", summary.gpu_utilization))
        if value is None
    ]
    if missing:
        summary = MetricsSummary(**{**summary.__dict__, "note": f"the server exports no {' or '.join(missing)}"})
    return summary


# -- probing a live server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSnapshot:
    t_s: float
    models: dict[str, ModelCounters] | None
    metrics: Metrics | None


class ServerProbe:
    """Takes snapshots of one server's statistics and metrics, never failing the load test over them."""

    def __init__(self, url: str, metrics_url: str | None, *, timeout_s: float = 5.0,
                 connection: ClientConfig | None = None) -> None:
        self._url = url
        self._connection = connection
        self._security: Any = None  # fashionbox.client.connection.GrpcSecurity, made by open()
        self._metrics_url = metrics_url
        self._timeout_s = timeout_s
        self._client: Any = None
        self._stats_ok = True
        self._metrics_ok = metrics_url is not None
        # No proxies: an http_proxy variable must not send a loopback scrape elsewhere.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    async def open(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        from fashionbox.client.connection import grpc_security

        self._security = grpc_security(self._connection)
        self._client = grpcclient.InferenceServerClient(self._url, creds=self._security.credentials,
                                                        channel_args=list(self._security.options) or None)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _statistics(self) -> dict[str, ModelCounters] | None:
        if not self._stats_ok or self._client is None:
            return None
        from tritonclient.utils import InferenceServerException

        try:
            stats = await self._client.get_inference_statistics(as_json=True, client_timeout=self._timeout_s,
                                                                headers=self._security.headers or None)
        except InferenceServerException as exc:
            logger.warning("no statistics from %s (%s); the report has no server breakdown", self._url, exc)
            self._stats_ok = False
            return None
        return parse_statistics(stats)

    def _scrape(self) -> Metrics | None:
        assert self._metrics_url is not None
        try:
            with self._opener.open(self._metrics_url, timeout=self._timeout_s) as response:
                return parse_prometheus(response.read().decode("utf-8", errors="replace"))
        except (OSError, urllib.error.URLError) as exc:
            logger.warning(
                "metrics endpoint %s not reachable (%s); utilisation is not reported", self._metrics_url, exc
            )
            self._metrics_ok = False
            return None

    async def snapshot(self, t_s: float) -> ServerSnapshot:
        metrics_task = asyncio.ensure_future(asyncio.to_thread(self._scrape)) if self._metrics_ok else None
        models = await self._statistics()
        metrics = await metrics_task if metrics_task is not None else None
        return ServerSnapshot(t_s, models, metrics)
