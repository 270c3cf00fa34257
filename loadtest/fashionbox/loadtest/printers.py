"""Printers: a :class:`Report` (or an event) in, text out. Nothing here measures or does I/O but writing files.

- :func:`format_report`: the terminal tables (points, server breakdown, utilisation, capacity);
- :func:`format_event`: one line of live progress;
- :func:`write_json`, :func:`write_csv`: the machine-readable forms;
- the HTML report is in :mod:`fashionbox.loadtest.html`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fashionbox.loadtest.report import CapacityPlan, Point, Report

if TYPE_CHECKING:
    from fashionbox.loadtest.tune import Trial, TuneReport
from fashionbox.loadtest.events import Event, PointMeasured, StageStarted, WindowMeasured

__all__ = [
    "CSV_COLUMNS",
    "format_capacity",
    "format_event",
    "format_report",
    "format_table",
    "format_trial",
    "format_tune",
    "write_csv",
    "write_json",
]


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool] | None = None) -> str:
    """A plain aligned table with a rule under the header."""
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(headers)]
    align = right or [k > 0 for k in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(cells, widths, align, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _errors(point: Point) -> str:
    if not point.errors:
        return "0"
    return ", ".join(f"{status} {count}" for status, count in sorted(point.errors.items()))


POINT_COLUMNS = ("target", "load", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "p99.9 ms", "errors",
                 "MB sent", "stable")
"""Columns of the per-point table, shared by the terminal and HTML reports."""


def _points_table(points: Sequence[Point]) -> str:
    headers = list(POINT_COLUMNS)
    rows = [
        [
            p.target,
            p.load.label,
            _f(p.throughput_rps),
            _f(p.latency.p50_ms),
            _f(p.latency.p90_ms),
            _f(p.latency.p95_ms),
            _f(p.latency.p99_ms),
            _f(p.latency.p999_ms),
            _errors(p),
            _f(p.bytes_sent / 1e6),
            "yes" if p.stable else ("ramp" if p.load.ramp else "NO"),
        ]
        for p in points
    ]
    return format_table(headers, rows, right=[False, False, *([True] * 9)])


def _breakdown_table(points: Sequence[Point]) -> str:
    headers = [
        "target",
        "load",
        "model",
        "requests",
        "queue ms",
        "input ms",
        "infer ms",
        "output ms",
        "total ms",
        "batch",
    ]
    rows = []
    for p in points:
        for b in p.server:
            rows.append(
                [
                    p.target,
                    p.load.label,
                    b.model,
                    str(b.requests),
                    _f(b.queue_ms, 2),
                    _f(b.compute_input_ms, 2),
                    _f(b.compute_infer_ms, 2),
                    _f(b.compute_output_ms, 2),
                    _f(b.total_ms, 2),
                    _f(b.avg_batch_size, 2),
                ]
            )
    if not rows:
        return "server-side breakdown: the statistics API gave nothing"
    return format_table(headers, rows, right=[False, False, False, *([True] * 7)])


def _utilisation_table(points: Sequence[Point]) -> str:
    headers = ["target", "load", "server CPU", "server GPU", "harness CPU", "send lag p99 ms"]
    rows = []
    notes = set()
    for p in points:
        m, h = p.metrics, p.harness
        cpu = _f(100 * m.cpu_utilization, 0) + " %" if m is not None and m.cpu_utilization is not None else "-"
        gpu = _f(100 * m.gpu_utilization, 0) + " %" if m is not None and m.gpu_utilization is not None else "-"
        rows.append(
            [
                p.target,
                p.load.label,
                cpu,
                gpu,
                _f(100 * h.cpu_fraction, 0) + " %" if h is not None and math.isfinite(h.cpu_fraction) else "-",
                _f(h.send_lag_p99_ms, 2) if h is not None else "-",
            ]
        )
        if m is not None and m.note:
            notes.add(f"{p.target}: {m.note}")
    table = format_table(headers, rows, right=[False, False, True, True, True, True])
    return "\n".join([table, *sorted(notes)])


def format_capacity(plan: CapacityPlan) -> str:
    load = f"{plan.target_rps:g} req/s" if plan.target_rps is not None else "the target load"
    headers = [
        "processor",
        "load",
        "p99 ms",
        "p50 ms",
        "throughput req/s",
        "$/h",
        "$/1M images",
        f"instances for {load}",
        "$/h total",
    ]
    rows = []
    notes = []
    for row in plan.rows:
        best = row.best
        rows.append(
            [
                row.target,
                best.load.label if best else "-",
                _f(best.latency.p99_ms) if best else "-",
                _f(best.latency.p50_ms) if best else "-",
                _f(best.throughput_rps) if best else "-",
                _f(row.cost_per_hour, 2),
                _f(row.cost_per_million, 2),
                str(row.instances) if row.instances is not None else "-",
                _f(row.total_cost_per_hour, 2),
            ]
        )
        if row.note:
            notes.append(f"{row.target}: {row.note}")
    title = f"capacity at p99 <= {plan.slo_p99_ms:g} ms (best stable point without errors, per instance)"
    return "\n".join([title, format_table(headers, rows, right=[False, False, *([True] * 7)]), *notes])


def format_report(report: Report) -> str:
    points = report.points
    parts = [_points_table(points)]
    notes = [f"  {p.target} {p.load.label}: {p.note}" for p in points if p.note]
    if notes:
        parts.append("notes:\n" + "\n".join(notes))
    parts += ["", "server-side, per composing model (per request, from Triton's statistics):", _breakdown_table(points)]
    parts += ["", "utilisation:", _utilisation_table(points)]
    if report.capacity is not None:
        parts += ["", format_capacity(report.capacity)]
    return "\n".join(parts)


def format_event(event: Event) -> str:
    if isinstance(event, StageStarted):
        return f"[{event.target}] {event.index + 1}/{event.total}: {event.label}"
    if isinstance(event, WindowMeasured):
        state = "stable" if event.stable else "settling"
        return (
            f"[{event.target}]   window {event.window + 1} at {event.level:g}: {_f(event.throughput_rps)} req/s, "
            f"p50 {_f(event.p50_ms)} ms, p99 {_f(event.p99_ms)} ms, errors {event.errors} ({state})"
        )
    if isinstance(event, PointMeasured):
        p = event.point
        flag = "" if p.stable else "  [not stable]"
        return (
            f"[{p.target}] => {p.load.label}: {_f(p.throughput_rps)} req/s, p50 {_f(p.latency.p50_ms)} ms, "
            f"p99 {_f(p.latency.p99_ms)} ms, errors {p.error_count}{flag}"
        )
    raise TypeError(f"unknown event {event!r}")


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")


CSV_COLUMNS = (
    "target",
    "mode",
    "concurrency",
    "rate_rps",
    "arrivals",
    "ramp",
    "throughput_rps",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "p99.9_ms",
    "mean_ms",
    "max_ms",
    "requests",
    "errors",
    "bytes_sent",
    "stable",
    "duration_s",
    "windows_used",
    "backoff_s",
    "skipped_sends",
    "note",
)


def write_csv(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for p in report.points:
            d = p.as_dict()
            lat = d["latency_ms"]
            writer.writerow(
                [
                    p.target,
                    p.load.mode,
                    d.get("concurrency", ""),
                    d.get("rate_rps", ""),
                    d.get("arrivals", ""),
                    p.load.ramp,
                    d["throughput_rps"],
                    lat["p50"],
                    lat["p90"],
                    lat["p95"],
                    lat["p99"],
                    lat["p99.9"],
                    lat["mean"],
                    lat["max"],
                    p.requests,
                    p.error_count,
                    p.bytes_sent,
                    p.stable,
                    d["duration_s"],
                    p.windows_used,
                    d["backoff_s"],
                    p.skipped_sends,
                    p.note,
                ]
            )


def format_trial(trial: Trial, slo_p99_ms: float) -> str:
    if trial.error:
        return f"trial {trial.index}: {trial.change}: FAILED {trial.error}"
    verdict = "meets" if trial.meets_slo else "misses"
    return (
        f"trial {trial.index}: {trial.change}: {_f(trial.throughput_rps)} req/s at c={trial.concurrency}, "
        f"p99 {_f(trial.p99_ms)} ms ({verdict} p99 <= {slo_p99_ms:g} ms)"
    )


def format_tune(report: TuneReport) -> str:
    from fashionbox.loadtest.tune import describe_scheduling

    best_path = {report.best.index}
    searched_runtime = any(t.runtime for t in report.trials)  # a column only where the search switched it
    headers = ["#", "change", *(["runtime"] if searched_runtime else []), "req/s", "p99 ms", "at c", "SLO", ""]
    rows = []
    for t in report.trials:
        rows.append(
            [
                str(t.index),
                t.change,
                *([t.runtime] if searched_runtime else []),
                _f(t.throughput_rps),
                _f(t.p99_ms),
                str(t.concurrency) if t.concurrency is not None else "-",
                "FAILED" if t.error else ("meets" if t.meets_slo else "misses"),
                "<- best" if t.index in best_path else "",
            ]
        )
    parts = [
        f"tried {len(report.trials)} configurations (the full cross product has "
        f"{report.cross_product_size:,}); objective: throughput at p99 <= {report.slo_p99_ms:g} ms over "
        f"concurrency {', '.join(map(str, report.concurrency))}",
        format_table(headers, rows, right=[True, False, *([False] if searched_runtime else []), True, True, True,
                                           False, False]),
    ]
    baseline = dict(report.baseline.config)
    parts.append("\nrecommended configuration:")
    if report.best.runtime:
        was = report.baseline.runtime
        parts.append(f"  runtime: {report.best.runtime}" + (f"   (was {was})" if was != report.best.runtime else ""))
    for model, scheduling in report.best.config:
        before = baseline.get(model)
        mark = "" if before == scheduling else f"   (was {describe_scheduling(before)})" if before else ""
        parts.append(f"  {model}: {describe_scheduling(scheduling)}{mark}")
    if len(report.confirmation) == 2:
        again_base, again_best = report.confirmation
        parts.append(
            f"measured again back to back: baseline {_f(again_base.throughput_rps)} req/s (p99 "
            f"{_f(again_base.p99_ms)} ms), recommended {_f(again_best.throughput_rps)} req/s (p99 "
            f"{_f(again_best.p99_ms)} ms)"
        )
    if math.isfinite(report.gain):
        basis = "back to back" if len(report.confirmation) == 2 else "during the search"
        parts.append(f"throughput gain within the SLO: {report.gain:+.0%} (measured {basis})")
        level, level_gain = report.level_gain
        measured = report.confirmation[0] if len(report.confirmation) == 2 else report.baseline
        if math.isfinite(level_gain) and measured.concurrency != level:
            there = [p for p in measured.points if p.load.concurrency == level]
            why = (f" (its p99 there: {_f(there[0].latency.p99_ms)} ms)"
                   if there and there[0].latency.p99_ms > report.slo_p99_ms else "")
            parts.append(
                f"  the baseline's capacity within the SLO is at concurrency {measured.concurrency}{why}; "
                f"at concurrency {level} the gain is {level_gain:+.0%}"
            )
    elif not report.best.meets_slo:
        parts.append("no configuration tried meets the SLO; the one shown has the lowest p99")
    if report.best.config != report.baseline.config and not report.confirmed:
        parts.append(
            "measured back to back, the recommendation does not beat the current configuration by the minimum "
            "gain: the difference is within the noise, so keeping the current configuration is as good"
        )
    if report.written:
        parts.append("written: " + ", ".join(str(p) for p in report.written))
    return "\n".join(parts)
