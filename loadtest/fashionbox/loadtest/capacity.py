"""Capacity planning: from measured points to "how many instances, and what does it cost?".

For each target, the best point is the highest throughput that meets the SLO: stable, no errors,
p99 latency within ``slo_p99_ms``. One instance of the target sustains that throughput at that
latency, so a load of ``target_rps`` needs ``ceil(target_rps / throughput)`` instances, and one
million images cost ``cost_per_hour / (throughput * 3600) * 1e6`` dollars::

    plan = plan_capacity(report, slo_p99_ms=150, target_rps=500, cost_per_hour={"cpu": 0.68, "gpu": 3.06})
    report = dataclasses.replace(report, capacity=plan)

A point that never stabilised is used only when no stable point meets the SLO, and then the row
says so: its figures are less certain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from fashionbox.loadtest.errors import LoadTestConfigError
from fashionbox.loadtest.report import CapacityPlan, CapacityRow, Point, Report

__all__ = ["best_point", "parse_costs", "plan_capacity"]


def _meets(point: Point, slo_p99_ms: float) -> bool:
    return point.error_count == 0 and point.latency.count > 0 and point.latency.p99_ms <= slo_p99_ms


def best_point(points: Sequence[Point], slo_p99_ms: float) -> tuple[Point | None, str]:
    """The highest-throughput point meeting the SLO, preferring stable points; and a note."""
    stable = [p for p in points if p.stable and _meets(p, slo_p99_ms)]
    if stable:
        return max(stable, key=lambda p: p.throughput_rps), ""
    unstable = [p for p in points if _meets(p, slo_p99_ms)]
    if unstable:
        best = max(unstable, key=lambda p: p.throughput_rps)
        return best, f"no stable point meets the SLO; {best.load.label} did but never stabilised"
    if not points:
        return None, "no point was measured"
    lowest = min((p for p in points if p.latency.count), key=lambda p: p.latency.p99_ms, default=None)
    if lowest is None:
        return None, "no request succeeded"
    return (
        None,
        f"no point meets p99 <= {slo_p99_ms:g} ms (lowest p99 {lowest.latency.p99_ms:.1f} ms at {lowest.load.label})",
    )


def plan_capacity(
    report: Report,
    *,
    slo_p99_ms: float,
    target_rps: float | None = None,
    cost_per_hour: Mapping[str, float] | None = None,
) -> CapacityPlan:
    if not (math.isfinite(slo_p99_ms) and slo_p99_ms > 0):
        raise LoadTestConfigError(f"the SLO must be a positive p99 in ms, got {slo_p99_ms!r}")
    if target_rps is not None and not target_rps > 0:
        raise LoadTestConfigError(f"the target load must be positive, got {target_rps!r}")
    costs = dict(cost_per_hour or {})
    check_cost_targets(costs, [t.name for t in report.targets])
    rows = []
    for target in report.targets:
        best, note = best_point(target.points, slo_p99_ms)
        instances = None
        if best is not None and target_rps is not None and best.throughput_rps > 0:
            instances = max(1, math.ceil(target_rps / best.throughput_rps - 1e-9))
        rows.append(CapacityRow(target.name, best, instances, costs.get(target.name), note))
    return CapacityPlan(slo_p99_ms, target_rps, tuple(rows))


def check_cost_targets(costs: Mapping[str, float], target_names: Sequence[str]) -> None:
    """Refuse costs for targets the run does not have (checked before a run, not after it)."""
    unknown = sorted(set(costs) - set(target_names))
    if unknown:
        raise LoadTestConfigError(
            f"--cost-per-hour names unknown targets {unknown}; the targets are {sorted(target_names)}"
            " (name them with --target NAME=HOST:PORT, or --name with --url)")


def parse_costs(items: Sequence[str]) -> dict[str, float]:
    """``["cpu=0.68", "gpu=3.06"]`` -> ``{"cpu": 0.68, "gpu": 3.06}`` (dollars per instance-hour)."""
    costs = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            cost = float(value)
        except ValueError:
            cost = math.nan
        if not sep or not name or not (math.isfinite(cost) and cost >= 0):
            raise LoadTestConfigError(f"--cost-per-hour expects NAME=USD, got {item!r}")
        costs[name] = cost
    return costs
