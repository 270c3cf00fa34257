"""The HTML report: one self-contained file (inline SVG plots drawn by matplotlib, no script, no network).

Plots: throughput against load, latency percentiles against load, latency against throughput,
and the server-side stage breakdown per composing model; then the tables of the terminal report::

    Path("report.html").write_text(render_html(report))

matplotlib is imported by the chart functions only, so a load test without ``--html`` never loads it.
Each chart is a matplotlib figure saved as SVG with text kept as ``<text>`` (``svg.fonttype: none``),
mathtext off (a ``$`` in a target name is text), no metadata or date and a fixed hash salt per chart,
so a report renders the same bytes twice and element ids stay unique within the page.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fashionbox.loadtest.printers import POINT_COLUMNS
from fashionbox.loadtest.report import CapacityPlan, Point, Report

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

__all__ = ["Series", "line_chart", "nice_ticks", "render_html", "stacked_bars"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_DASHES = {"p50": "", "p90": "6 3", "p95": "2 2", "p99": "8 3 2 3", "p99.9": "1 3"}
_STAGES = (
    ("queue", "#9ecae1"),
    ("compute input", "#fdae6b"),
    ("compute infer", "#e6550d"),
    ("compute output", "#a1d99b"),
)
_NO_METADATA: dict[str, str | None] = {"Date": None, "Creator": None, "Format": None, "Type": None}
_PX = 96.0  # CSS pixels per inch: a figure of ``width / _PX`` inches is ``width`` pixels on the page


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[float, float], ...]
    colour: str
    dash: str = ""
    """An SVG ``stroke-dasharray`` (``"6 3"``); empty for a solid line."""


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


@contextmanager
def _figure(chart_id: str, title: str, width: int, height: int) -> Iterator[tuple[Axes, io.StringIO]]:
    """A titled one-axes figure of ``width`` x ``height`` pixels whose SVG lands in the yielded buffer."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(
        {
            "svg.fonttype": "none",  # text stays <text>: searchable, and escaped by the SVG writer
            "svg.hashsalt": f"fashionbox-{chart_id}",  # ids the same every run, and distinct per chart
            "svg.id": chart_id,
            "text.parse_math": False,
            "text.usetex": False,
            "font.family": "sans-serif",
            "font.sans-serif": ["DejaVu Sans"],  # the font text is measured with; the browser falls back
            "font.size": 8.5,
            "axes.titlesize": 10,
            "axes.titleweight": "bold",
            "axes.titlelocation": "left",
        }
    ):
        fig = Figure(figsize=(width / _PX, height / _PX), layout="constrained")
        FigureCanvasAgg(fig)  # no GUI backend, whatever pyplot's default is
        ax = fig.add_subplot()
        ax.set_title(title)
        buffer = io.StringIO()
        yield ax, buffer
        fig.savefig(buffer, format="svg", metadata=_NO_METADATA)


def _inline(svg: str, chart_id: str, title: str) -> str:
    """The ``<svg>`` element alone (no XML prologue or DTD), labelled for screen readers.

    matplotlib names its groups ``figure_1``, ``axes_1``...in every figure; prefixed with the chart's id,
    they stay unique in a page of several charts (nothing refers to a group; markers and clip paths
    have salted ids already).
    """
    body = svg[svg.index("<svg") :].strip().replace('<g id="', f'<g id="{chart_id}-')
    return f'<div class="chart" role="img" aria-label="{html.escape(title)}">{body}</div>'


def _round_ticks(ax: Axes, which: str, ticks: Sequence[float]) -> None:
    """Ticks at :func:`nice_ticks` values, the axis spanning exactly them, labelled like the tables."""
    from matplotlib.ticker import FuncFormatter

    axis, limits = (ax.xaxis, ax.set_xlim) if which == "x" else (ax.yaxis, ax.set_ylim)
    axis.set_ticks(ticks)
    axis.set_major_formatter(FuncFormatter(lambda value, _: _fmt(value)))
    limits(ticks[0], ticks[-1])


def _legend(ax: Axes, handles: Sequence[Artist], labels: Sequence[str]) -> None:
    """A legend right of the plot; labels handed over with their handles, as matplotlib drops a "_name" it finds."""
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 620,
    height: int = 300,
    chart_id: str = "chart",
) -> str:
    """An SVG line chart with axes, ticks and a legend; each drawn series is the group ``{chart_id}-series-{k}``.

    Points that are not finite are left out, and so is a series with none left.
    """
    drawn = [(s, [(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)]) for s in series]
    drawn = [(s, pts) for s, pts in drawn if pts]
    with _figure(chart_id, title, width, height) as (ax, buffer):
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        if not drawn:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        else:
            finite = [p for _, pts in drawn for p in pts]
            xs = nice_ticks(min(0.0, min(x for x, _ in finite)), max(x for x, _ in finite))
            _round_ticks(ax, "x", xs)
            _round_ticks(ax, "y", nice_ticks(0.0, max(y for _, y in finite)))
            ax.grid(axis="y", color="#ddd", linewidth=0.8)
            lines = [
                ax.plot(
                    [x for x, _ in pts],
                    [y for _, y in pts],
                    color=s.colour,
                    linewidth=1.6,
                    linestyle=(0, tuple(float(v) for v in s.dash.split())) if s.dash else "solid",
                    marker="o",
                    markersize=3.5,
                    gid=f"series-{k}",
                )[0]
                for k, (s, pts) in enumerate(drawn)
            ]
            _legend(ax, lines, [s.name for s, _ in drawn])
    return _inline(buffer.getvalue(), chart_id, title)


def stacked_bars(
    rows: Sequence[tuple[str, Sequence[float]]], *, title: str, unit: str, width: int = 760, chart_id: str = "bars"
) -> str:
    """Horizontal stacked bars, one per row label, segments in :data:`_STAGES` order.

    Each drawn segment (finite and positive) is the group ``{chart_id}-bar-{row}-{stage}``.
    """
    height = 28 + len(rows) * 20 + 60
    total = max((sum(v for v in values if math.isfinite(v)) for _, values in rows), default=0.0) or 1.0
    with _figure(chart_id, title, width, height) as (ax, buffer):
        from matplotlib.patches import Patch

        _round_ticks(ax, "x", nice_ticks(0.0, total))
        ax.set_yticks(range(len(rows)), [label for label, _ in rows])
        ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)  # first row on top
        ax.tick_params(axis="y", length=0)
        ax.grid(axis="x", color="#eee", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.set_xlabel(unit)
        for r, (_, values) in enumerate(rows):
            left = 0.0
            for s, ((_, colour), value) in enumerate(zip(_STAGES, values, strict=False)):
                if math.isfinite(value) and value > 0:
                    ax.barh(r, value, left=left, height=0.7, color=colour, gid=f"bar-{r}-{s}")
                    left += value
        _legend(ax, [Patch(color=colour) for _, colour in _STAGES], [name for name, _ in _STAGES])
    return _inline(buffer.getvalue(), chart_id, title)


def _by_mode(points: Sequence[Point]) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(p.load.mode, []).append(p)
    return out


def _charts(report: Report) -> list[str]:
    charts: list[str] = []
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
                chart_id=f"chart{len(charts)}",
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
                chart_id=f"chart{len(charts)}",
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
                chart_id=f"chart{len(charts)}",
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
                chart_id=f"chart{len(charts)}",
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
h1{font-size:20px}h2{font-size:16px;margin-top:28px}code{background:#f4f4f4}
.chart{display:inline-block;margin:6px 12px 6px 0}"""


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
