"""The HTML report: one self-contained file (inline SVG plots drawn here, no script, no network).

Plots: throughput against load, latency percentiles against load, latency against throughput,
and the server-side stage breakdown per composing model; then the tables of the terminal report::

    Path("report.html").write_text(render_html(report))
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fashionbox.loadtest.printers import POINT_COLUMNS
from fashionbox.loadtest.report import CapacityPlan, Point, Report

__all__ = ["Series", "line_chart", "nice_ticks", "render_html", "stacked_bars"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_DASHES = {"p50": "", "p90": "6 3", "p95": "2 2", "p99": "8 3 2 3", "p99.9": "1 3"}
_STAGES = (
    ("queue", "#9ecae1"),
    ("compute input", "#fdae6b"),
    ("compute infer", "#e6550d"),
    ("compute output", "#a1d99b"),
)


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[float, float], ...]
    colour: str
    dash: str = ""


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < high - 1e-12 * step:
        ticks.append(round(start + len(ticks) * step, 10))
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def line_chart(
    series: Sequence[Series], *, title: str, x_label: str, y_label: str, width: int = 620, height: int = 300
) -> str:
    """An SVG line chart with axes, ticks and a legend."""
    finite = [(x, y) for s in series for x, y in s.points if math.isfinite(x) and math.isfinite(y)]
    left, right, top, bottom = 64, 150, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    if not finite:
        out.append(f'<text x="{left + 10}" y="{top + 40}">no data</text></svg>')
        return "".join(out)
    xs = nice_ticks(min(0.0, min(x for x, _ in finite)), max(x for x, _ in finite))
    ys = nice_ticks(0.0, max(y for _, y in finite))

    def px(x: float) -> float:
        return left + (x - xs[0]) / (xs[-1] - xs[0]) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - ys[0]) / (ys[-1] - ys[0]) * plot_h

    for y in ys:
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>'
        )
    for x in xs:
        out.append(
            f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
            f'stroke="#333"/><text x="{px(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_fmt(x)}</text>'
        )
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(
        f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(y_label)}</text>"
    )
    for k, s in enumerate(series):
        pts = [(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)]
        if not pts:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{s.colour}" stroke-width="2"{dash}/>')
        out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{s.colour}"/>' for x, y in pts)
        ly = top + 12 + 16 * k
        out.append(
            f'<line x1="{left + plot_w + 10}" x2="{left + plot_w + 34}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{s.colour}" stroke-width="2"{dash}/><text x="{left + plot_w + 38}" y="{ly}">'
            f"{html.escape(s.name)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def stacked_bars(rows: Sequence[tuple[str, Sequence[float]]], *, title: str, unit: str, width: int = 760) -> str:
    """Horizontal stacked bars, one per row label, segments in :data:`_STAGES` order."""
    left, right, top, bar, gap = 230, 120, 28, 14, 6
    height = top + len(rows) * (bar + gap) + 40
    total = max((sum(v for v in values if math.isfinite(v)) for _, values in rows), default=0.0) or 1.0
    ticks = nice_ticks(0.0, total)
    plot_w = width - left - right
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}" font-family="sans-serif" font-size="11">',
        f'<text x="8" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    for k, (label, values) in enumerate(rows):
        y = top + k * (bar + gap)
        out.append(f'<text x="{left - 6}" y="{y + bar - 3}" text-anchor="end">{html.escape(label)}</text>')
        x = float(left)
        for (_, colour), value in zip(_STAGES, values, strict=False):
            if not math.isfinite(value) or value <= 0:
                continue
            w = value / ticks[-1] * plot_w
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colour}"/>')
            x += w
    axis_y = top + len(rows) * (bar + gap)
    for t in ticks:
        tx = left + t / ticks[-1] * plot_w
        out.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top - 4}" y2="{axis_y}" stroke="#eee"/>'
            f'<text x="{tx:.1f}" y="{axis_y + 14}" text-anchor="middle">{_fmt(t)}</text>'
        )
    out.append(f'<text x="{left + plot_w / 2}" y="{axis_y + 30}" text-anchor="middle">{html.escape(unit)}</text>')
    for k, (name, colour) in enumerate(_STAGES):
        out.append(
            f'<rect x="{left + plot_w + 10}" y="{top + 16 * k}" width="12" height="10" fill="{colour}"/>'
            f'<text x="{left + plot_w + 26}" y="{top + 9 + 16 * k}">{name}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _by_mode(points: Sequence[Point]) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(p.load.mode, []).append(p)
    return out


def _charts(report: Report) -> list[str]:
    charts = []
    targets = [t.name for t in report.targets]
    colour = {name: _COLOURS[k % len(_COLOURS)] for k, name in enumerate(targets)}
    for mode, points in _by_mode(report.points).items():
        x_label = "concurrency (requests in flight)" if mode == "closed" else "offered load (req/s)"
        per_target = {name: [p for p in points if p.target == name] for name in targets}
        throughput = [
            Series(name, tuple((p.load.value, p.throughput_rps) for p in pts), colour[name])
            for name, pts in per_target.items()
            if pts
        ]
        charts.append(
            line_chart(
                throughput,
                title=f"Throughput against load ({mode} loop)",
                x_label=x_label,
                y_label="throughput (req/s)",
            )
        )
        latency = [
            Series(
                f"{name} {key}",
                tuple((p.load.value, p.latency.percentile(key)) for p in pts),
                colour[name],
                _DASHES[key],
            )
            for name, pts in per_target.items()
            if pts
            for key in ("p50", "p90", "p99")
        ]
        charts.append(
            line_chart(
                latency,
                title=f"Latency percentiles against load ({mode} loop)",
                x_label=x_label,
                y_label="latency (ms)",
            )
        )
        knee = [
            Series(f"{name} p99", tuple((p.throughput_rps, p.latency.p99_ms) for p in pts), colour[name])
            for name, pts in per_target.items()
            if pts
        ]
        charts.append(
            line_chart(
                knee,
                title=f"p99 latency against throughput ({mode} loop)",
                x_label="throughput (req/s)",
                y_label="p99 latency (ms)",
            )
        )
    rows = []
    for p in report.points:
        for b in p.server:
            stages = (b.queue_ms, b.compute_input_ms, b.compute_infer_ms, b.compute_output_ms)
            # An ensemble executes nothing itself; its times are its steps' and would count twice.
            if b.executions > 0 and sum(stages) > 0:
                rows.append((f"{p.target} {p.load.label} {b.model}", stages))
    if rows:
        charts.append(
            stacked_bars(
                rows,
                title="Server-side time per request, per composing model",
                unit="ms per request (Triton statistics)",
            )
        )
    return charts


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _n(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _points_html(points: Sequence[Point]) -> str:
    rows = [
        [
            p.target,
            p.load.label,
            _n(p.throughput_rps),
            _n(p.latency.p50_ms),
            _n(p.latency.p90_ms),
            _n(p.latency.p95_ms),
            _n(p.latency.p99_ms),
            _n(p.latency.p999_ms),
            str(p.error_count),
            _n(p.bytes_sent / 1e6),
            "yes" if p.stable else "no",
            p.note,
        ]
        for p in points
    ]
    return _table(
        [*POINT_COLUMNS, "note"],
        rows,
    )


def _capacity_html(plan: CapacityPlan) -> str:
    rows = [
        [
            r.target,
            _n(r.best.latency.p99_ms) if r.best else "-",
            _n(r.throughput_rps),
            _n(r.cost_per_hour, 2),
            _n(r.cost_per_million, 2),
            str(r.instances) if r.instances else "-",
            _n(r.total_cost_per_hour, 2),
            r.note,
        ]
        for r in plan.rows
    ]
    load = f"{plan.target_rps:g} req/s" if plan.target_rps else "target load"
    return f"<h2>Capacity at p99 &le; {plan.slo_p99_ms:g} ms</h2>" + _table(
        [
            "processor",
            "p99 latency ms",
            "throughput req/s",
            "$/h",
            "$/1M images",
            f"instances for {load}",
            "$/h total",
            "note",
        ],
        rows,
    )


_STYLE = """body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 24px}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:12px;text-align:right}
td:first-child,th:first-child{text-align:left}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}.charts svg{margin:6px 12px 6px 0}code{background:#f4f4f4}"""


def render_html(report: Report) -> str:
    s = report.settings
    meta = (
        f"model <code>{html.escape(s.model)}</code>, sender <code>{html.escape(s.sender)}</code>, windows of "
        f"{s.window_s:g} s after {s.warmup_s:g} s warm-up, stable when the last {s.stability.windows} windows "
        f"agree within {s.stability.tolerance:.0%} (throughput and {s.stability.latency}), at most "
        f"{s.max_duration_s:g} s per level; corpus: {html.escape(str(s.corpus.get('source', '')))}"
    )
    targets = ", ".join(f"{html.escape(t.name)} = <code>{html.escape(t.url)}</code>" for t in report.targets)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>FashionBox load test</title>"
        f"<style>{_STYLE}</style></head><body><h1>FashionBox load test</h1>",
        f"<p>Targets: {targets}.<br>{meta}.</p>",
    ]
    if report.capacity is not None:
        parts.append(_capacity_html(report.capacity))
    parts.append("<h2>Plots</h2><div class='charts'>" + "".join(_charts(report)) + "</div>")
    parts.append("<h2>Points</h2>" + _points_html(report.points))
    breakdown = [
        [
            p.target,
            p.load.label,
            b.model,
            str(b.requests),
            _n(b.queue_ms, 2),
            _n(b.compute_input_ms, 2),
            _n(b.compute_infer_ms, 2),
            _n(b.compute_output_ms, 2),
            _n(b.total_ms, 2),
            _n(b.avg_batch_size, 2),
        ]
        for p in report.points
        for b in p.server
    ]
    parts.append(
        "<h2>Server-side breakdown per composing model</h2>"
        + _table(
            [
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
            ],
            breakdown,
        )
    )
    util = [
        [
            p.target,
            p.load.label,
            _n(100 * p.metrics.cpu_utilization, 0) if p.metrics and p.metrics.cpu_utilization is not None else "-",
            _n(100 * p.metrics.gpu_utilization, 0) if p.metrics and p.metrics.gpu_utilization is not None else "-",
            _n(100 * p.harness.cpu_fraction, 0) if p.harness else "-",
            p.metrics.note if p.metrics else "",
        ]
        for p in report.points
    ]
    parts.append(
        "<h2>Utilisation</h2>"
        + _table(["target", "load", "server CPU %", "server GPU %", "harness CPU %", "note"], util)
    )
    parts.append("</body></html>\n")
    return "".join(parts)
