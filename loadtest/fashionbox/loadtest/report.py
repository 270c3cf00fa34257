"""The frozen result of a load test: the only thing printers see (docs/STYLE.md rule 9).

::

    Report
     ├── settings: RunSettings               what was run (shapes, windows, stability rule, corpus, sender)
     ├── targets: (TargetReport, ...)        one per --target, in order
     │    └── points: (Point, ...)           one per load level: throughput, latency, errors, bytes,
     │                                       stability, server breakdown, metrics, harness usage, windows
     └── capacity: CapacityPlan | None       best SLO-meeting point per target, instances, cost

``Report.to_dict()`` is the JSON document (``--json``); its ``points`` list holds every point of
every target with the keys the issue fixes (``concurrency`` or ``rate_rps``, ``throughput_rps``,
``latency_ms`` with ``p50``/``p90``/``p95``/``p99``, ``errors``, ``stable``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from fashionbox.loadtest.backoff import BackoffSettings
from fashionbox.loadtest.server_stats import MetricsSummary, ModelBreakdown
from fashionbox.loadtest.stats import LatencySummary
from fashionbox.loadtest.windows import StabilityRule, WindowSummary

__all__ = [
    "SCHEMA",
    "CapacityPlan",
    "CapacityRow",
    "HarnessUsage",
    "LoadLevel",
    "Point",
    "Report",
    "RunSettings",
    "TargetReport",
]

SCHEMA = "fashionbox.loadtest/1"


def _num(value: float | None, digits: int = 3) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


@dataclass(frozen=True)
class LoadLevel:
    """The load a point was measured at."""

    mode: Literal["closed", "open"]
    value: float
    """Concurrency (closed loop) or offered request rate in req/s (open loop)."""
    process: str = ""
    """Open loop: ``constant`` or ``poisson``."""
    ramp: bool = False
    """A window of a ramp, not a held level."""

    @property
    def concurrency(self) -> int | None:
        return round(self.value) if self.mode == "closed" else None

    @property
    def rate_rps(self) -> float | None:
        return self.value if self.mode == "open" else None

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"c={round(self.value)}"
        return f"{self.value:g} req/s" + (f" {self.process}" if self.process else "")


@dataclass(frozen=True)
class HarnessUsage:
    """How hard the load generator itself worked: if it is saturated, the numbers measure it, not the server."""

    cpu_fraction: float
    """CPU seconds of the harness process per wall second (1.0 = one core busy)."""
    send_lag_p99_ms: float
    """Open loop: 99th percentile of how late requests left against their schedule (NaN closed loop)."""
    saturated: bool
    note: str = ""


@dataclass(frozen=True)
class Point:
    target: str
    load: LoadLevel
    duration_s: float
    """Measured time (the windows the figures come from)."""
    windows_used: int
    throughput_rps: float
    """Successful responses per second."""
    latency: LatencySummary
    errors: dict[str, int]
    requests: int
    """Responses in the measured windows, successful or not."""
    bytes_sent: int
    stable: bool
    note: str
    server: tuple[ModelBreakdown, ...] = ()
    metrics: MetricsSummary | None = None
    harness: HarnessUsage | None = None
    windows: tuple[WindowSummary, ...] = ()
    throughput_spread: float = math.nan
    latency_spread: float = math.nan
    backoff_s: float = 0.0
    """Closed loop: seconds the workers spent, added up, waiting after errors before sending again."""
    skipped_sends: int = 0
    """Open loop: scheduled sends not made because most recent answers were errors (the offered rate was not held)."""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        latency = {key: _num(value) for key, value in self.latency.as_dict().items()}
        out: dict[str, Any] = {"target": self.target, "mode": self.load.mode}
        if self.load.mode == "closed":
            out["concurrency"] = self.load.concurrency
        else:
            out["rate_rps"] = _num(self.load.value)
            out["arrivals"] = self.load.process
        out.update(
            {
                "ramp": self.load.ramp,
                "throughput_rps": _num(self.throughput_rps),
                "latency_ms": latency,
                "errors": self.error_count,
                "errors_by_status": dict(self.errors),
                "requests": self.requests,
                "bytes_sent": self.bytes_sent,
                "stable": self.stable,
                "note": self.note,
                "duration_s": _num(self.duration_s),
                "windows_used": self.windows_used,
                "throughput_spread": _num(self.throughput_spread),
                "latency_spread": _num(self.latency_spread),
                "backoff_s": _num(self.backoff_s),
                "skipped_sends": self.skipped_sends,
                "server": [b.as_dict() for b in self.server],
                "metrics": self.metrics.as_dict() if self.metrics is not None else None,
                "harness": None
                if self.harness is None
                else {
                    "cpu_fraction": _num(self.harness.cpu_fraction),
                    "send_lag_p99_ms": _num(self.harness.send_lag_p99_ms),
                    "saturated": self.harness.saturated,
                    "note": self.harness.note,
                },
                "windows": [
                    {
                        "index": w.index,
                        "start_s": _num(w.start_s),
                        "duration_s": _num(w.duration_s),
                        "level": _num(w.level),
                        "ok": w.ok,
                        "errors": w.errors,
                        "throughput_rps": _num(w.throughput_rps),
                        "p50_ms": _num(w.latency.p50_ms),
                        "p99_ms": _num(w.latency.p99_ms),
                        "send_lag_p99_ms": _num(w.send_lag_p99_ms),
                        "backoff_s": _num(w.backoff_s),
                        "skipped_sends": w.skipped_sends,
                    }
                    for w in self.windows
                ],
            }
        )
        return out


@dataclass(frozen=True)
class TargetReport:
    name: str
    url: str
    points: tuple[Point, ...]
    model: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "model": self.model,
            "note": self.note,
            "points": [p.as_dict() for p in self.points],
        }


@dataclass(frozen=True)
class RunSettings:
    plan: tuple[str, ...]
    """One label per shape, in the order run."""
    window_s: float
    warmup_s: float
    max_duration_s: float
    max_requests: int | None
    stability: StabilityRule
    sender: str
    corpus: dict[str, object]
    model: str
    timeout_s: float
    error_backoff: BackoffSettings = field(default_factory=BackoffSettings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": list(self.plan),
            "window_s": self.window_s,
            "warmup_s": self.warmup_s,
            "max_duration_s": self.max_duration_s,
            "max_requests": self.max_requests,
            "stability": {
                "windows": self.stability.windows,
                "tolerance": self.stability.tolerance,
                "latency": self.stability.latency,
            },
            "sender": self.sender,
            "corpus": dict(self.corpus),
            "model": self.model,
            "timeout_s": self.timeout_s,
            "error_backoff": self.error_backoff.as_dict(),
        }


@dataclass(frozen=True)
class CapacityRow:
    target: str
    best: Point | None
    """The highest-throughput point meeting the SLO (stable, no errors, p99 within it); None if none does."""
    instances: int | None
    cost_per_hour: float | None
    """For one instance of this target (``--cost-per-hour``)."""
    note: str = ""

    @property
    def throughput_rps(self) -> float | None:
        return self.best.throughput_rps if self.best is not None else None

    @property
    def total_cost_per_hour(self) -> float | None:
        if self.instances is None or self.cost_per_hour is None:
            return None
        return self.instances * self.cost_per_hour

    @property
    def cost_per_million(self) -> float | None:
        """Dollars per million images at the SLO throughput of one instance."""
        if self.best is None or self.cost_per_hour is None or not self.best.throughput_rps > 0:
            return None
        return self.cost_per_hour / (self.best.throughput_rps * 3600.0) * 1e6

    def as_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "target": self.target,
            "load": None if best is None else best.load.label,
            "throughput_rps": _num(best.throughput_rps) if best else None,
            "p50_ms": _num(best.latency.p50_ms) if best else None,
            "p99_ms": _num(best.latency.p99_ms) if best else None,
            "instances": self.instances,
            "cost_per_hour": self.cost_per_hour,
            "total_cost_per_hour": _num(self.total_cost_per_hour, 4),
            "cost_per_million_images": _num(self.cost_per_million, 4),
            "note": self.note,
        }


@dataclass(frozen=True)
class CapacityPlan:
    slo_p99_ms: float
    target_rps: float | None
    rows: tuple[CapacityRow, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"slo_p99_ms": self.slo_p99_ms, "target_rps": self.target_rps, "rows": [r.as_dict() for r in self.rows]}


@dataclass(frozen=True)
class Report:
    settings: RunSettings
    targets: tuple[TargetReport, ...]
    capacity: CapacityPlan | None = None
    created_unix: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def points(self) -> tuple[Point, ...]:
        return tuple(p for t in self.targets for p in t.points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created_unix": round(self.created_unix, 3),
            "environment": dict(self.environment),
            "settings": self.settings.as_dict(),
            "points": [p.as_dict() for p in self.points],
            "targets": [{k: v for k, v in t.as_dict().items() if k != "points"} for t in self.targets],
            "capacity": self.capacity.as_dict() if self.capacity is not None else None,
        }
