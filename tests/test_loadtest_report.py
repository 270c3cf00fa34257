"""Server statistics diffs, metrics parsing, capacity planning and every printer, on hand-made reports."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fashionbox.loadtest.capacity import parse_costs, plan_capacity
from fashionbox.loadtest.errors import LoadTestConfigError
from fashionbox.loadtest.html import Series, line_chart, nice_ticks, render_html
from fashionbox.loadtest.printers import format_report, write_csv, write_json
from fashionbox.loadtest.report import HarnessUsage, LoadLevel, Point, Report, RunSettings, TargetReport
from fashionbox.loadtest.server_stats import (
    ModelBreakdown,
    ModelCounters,
    diff_statistics,
    parse_prometheus,
    parse_statistics,
    summarise_metrics,
)
from fashionbox.loadtest.stats import LatencyHistogram
from fashionbox.loadtest.windows import StabilityRule

STATS_BEFORE = {
    "model_stats": [
        {
            "name": "detector",
            "version": "1",
            "inference_count": "10",
            "execution_count": "10",
            "inference_stats": {
                "success": {"count": "10", "ns": "100000000"},
                "queue": {"count": "10", "ns": "10000000"},
                "compute_input": {"count": "10", "ns": "1000000"},
                "compute_infer": {"count": "10", "ns": "80000000"},
                "compute_output": {"count": "10", "ns": "2000000"},
            },
        },
        {
            "name": "fashion",
            "version": "1",
            "inference_count": "10",
            "execution_count": "0",
            "inference_stats": {"success": {"count": "10", "ns": "200000000"}},
        },
    ]
}
STATS_AFTER = {
    "model_stats": [
        {
            "name": "detector",
            "version": "1",
            "inference_count": "110",
            "execution_count": "35",
            "inference_stats": {
                "success": {"count": "110", "ns": "1100000000"},
                "queue": {"count": "110", "ns": "510000000"},
                "compute_input": {"count": "110", "ns": "11000000"},
                "compute_infer": {"count": "110", "ns": "480000000"},
                "compute_output": {"count": "110", "ns": "12000000"},
            },
            "batch_stats": [],
        },
        {
            "name": "fashion",
            "version": "1",
            "inference_count": "110",
            "execution_count": "0",
            "inference_stats": {"success": {"count": "110", "ns": "2200000000"}, "fail": {"count": "2", "ns": "5"}},
        },
        {"name": "idle", "version": "1", "inference_stats": {}},
    ]
}


def test_statistics_diff_gives_per_request_stage_times_and_batch_size() -> None:
    before, after = parse_statistics(STATS_BEFORE), parse_statistics(STATS_AFTER)
    by_model = {b.model: b for b in diff_statistics(before, after)}
    assert set(by_model) == {"detector", "fashion"}  # no traffic, no row
    d = by_model["detector"]
    assert d.requests == 100 and d.executions == 25
    assert d.avg_batch_size == pytest.approx(4.0)
    assert d.queue_ms == pytest.approx(5.0)
    assert d.compute_input_ms == pytest.approx(0.1)
    assert d.compute_infer_ms == pytest.approx(4.0)
    assert d.compute_output_ms == pytest.approx(0.1)
    assert d.total_ms == pytest.approx(10.0)
    f = by_model["fashion"]
    assert f.failures == 2 and math.isnan(f.avg_batch_size) and f.total_ms == pytest.approx(20.0)


def test_counters_of_several_versions_are_summed() -> None:
    stats = {
        "model_stats": [
            {"name": "m", "version": "1", "inference_count": "1"},
            {"name": "m", "version": "2", "inference_count": "2"},
        ]
    }
    assert parse_statistics(stats)["m"] == ModelCounters(inference_count=3)


PROMETHEUS = """# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
nv_cpu_memory_used_bytes 1000
nv_inference_request_success{model="fashion",version="1"} 42
"""


def test_prometheus_text_is_parsed_with_labels() -> None:
    metrics = parse_prometheus(PROMETHEUS)
    assert metrics["nv_cpu_utilization"] == [({}, 0.5)]
    assert metrics["nv_inference_request_success"] == [({"model": "fashion", "version": "1"}, 42.0)]


def test_metrics_summary_reports_what_exists_and_says_what_is_missing() -> None:
    second = parse_prometheus(PROMETHEUS.replace("0.5", "0.7"))
    summary = summarise_metrics([parse_prometheus(PROMETHEUS), None, second])
    assert summary.available and summary.cpu_utilization == pytest.approx(0.6)
    assert summary.gpu_utilization is None
    assert "no GPU utilisation" in summary.note
    assert "nv_cpu_utilization" in summary.families
    assert not summarise_metrics([None]).available


def _point(
    target: str,
    concurrency: int,
    rps: float,
    p99_ms: float,
    *,
    stable: bool = True,
    errors: dict[str, int] | None = None,
) -> Point:
    h = LatencyHistogram()
    for k in range(100):
        h.record_s((p99_ms * (0.5 + 0.5 * k / 98)) / 1000)
    return Point(
        target=target,
        load=LoadLevel("closed", concurrency),
        duration_s=9.0,
        windows_used=3,
        throughput_rps=rps,
        latency=h.summary(),
        errors=errors or {},
        requests=100 + sum((errors or {}).values()),
        bytes_sent=123_456,
        stable=stable,
        note="" if stable else "not stable",
        harness=HarnessUsage(0.3, math.nan, False),
    )


def _report(*targets: TargetReport) -> Report:
    settings = RunSettings(
        plan=("concurrency 1",),
        window_s=3.0,
        warmup_s=2.0,
        max_duration_s=30.0,
        max_requests=None,
        stability=StabilityRule(),
        sender="raw",
        corpus={"source": "test"},
        model="fashion",
        timeout_s=30.0,
    )
    return Report(settings=settings, targets=targets, created_unix=1.0)


CPU = TargetReport(
    "cpu",
    "127.0.0.1:8001",
    (
        _point("cpu", 1, 20.0, 60.0),
        _point("cpu", 4, 60.0, 120.0),
        _point("cpu", 8, 70.0, 200.0),
        _point("cpu", 16, 90.0, 100.0, stable=False),
    ),
)
GPU = TargetReport(
    "gpu",
    "10.0.0.7:8001",
    (
        _point("gpu", 4, 400.0, 30.0),
        _point("gpu", 16, 900.0, 80.0),
        _point("gpu", 32, 1000.0, 140.0, errors={"UNAVAILABLE": 3}),
    ),
)


def test_capacity_takes_the_best_stable_point_without_errors_within_the_slo() -> None:
    plan = plan_capacity(_report(CPU, GPU), slo_p99_ms=150, target_rps=500, cost_per_hour={"cpu": 0.5, "gpu": 3.0})
    cpu, gpu = plan.rows
    assert cpu.best is not None and cpu.best.load.concurrency == 4  # c=16 is faster but never stabilised
    assert cpu.instances == 9  # ceil(500 / 60)
    assert cpu.cost_per_million == pytest.approx(0.5 / (60 * 3600) * 1e6)
    assert cpu.total_cost_per_hour == pytest.approx(4.5)
    assert gpu.best is not None and gpu.best.load.concurrency == 16  # c=32 had errors
    assert gpu.instances == 1
    assert gpu.cost_per_million == pytest.approx(3.0 / (900 * 3600) * 1e6)


def test_capacity_says_so_when_no_point_meets_the_slo() -> None:
    (row,) = plan_capacity(_report(CPU), slo_p99_ms=10).rows
    assert row.best is None and row.instances is None
    assert "no point meets p99 <= 10 ms" in row.note


def test_capacity_falls_back_to_an_unstable_point_with_a_note() -> None:
    target = TargetReport("cpu", "x:1", (_point("cpu", 16, 90.0, 100.0, stable=False),))
    (row,) = plan_capacity(_report(target), slo_p99_ms=150).rows
    assert row.best is not None and "never stabilised" in row.note


def test_costs_parse_and_unknown_targets_are_refused() -> None:
    assert parse_costs(["cpu=0.68", "gpu=3"]) == {"cpu": 0.68, "gpu": 3.0}
    for bad in (["cpu"], ["cpu=abc"], ["=1"], ["cpu=-1"]):
        with pytest.raises(LoadTestConfigError):
            parse_costs(bad)
    with pytest.raises(LoadTestConfigError):
        plan_capacity(_report(CPU), slo_p99_ms=100, cost_per_hour={"tpu": 1.0})


def test_json_has_the_documented_keys_for_every_point(tmp_path: Path) -> None:
    report = _report(CPU, GPU)
    path = tmp_path / "out.json"
    write_json(report, path)
    doc = json.loads(path.read_text())
    assert len(doc["points"]) == 7
    for point in doc["points"]:
        assert {"concurrency", "throughput_rps", "latency_ms", "errors", "stable"} <= set(point)
        assert {"p50", "p90", "p95", "p99"} <= set(point["latency_ms"])
    assert doc["points"][-1]["errors"] == 3
    assert doc["points"][-1]["errors_by_status"] == {"UNAVAILABLE": 3}


def test_open_loop_points_carry_rate_rps() -> None:
    point = Point(
        target="t",
        load=LoadLevel("open", 25.0, process="poisson"),
        duration_s=1.0,
        windows_used=1,
        throughput_rps=25.0,
        latency=LatencyHistogram().summary(),
        errors={},
        requests=0,
        bytes_sent=0,
        stable=False,
        note="",
    )
    d = point.as_dict()
    assert d["rate_rps"] == 25.0 and "concurrency" not in d and d["arrivals"] == "poisson"
    assert d["latency_ms"]["p50"] is None  # NaN is not JSON


def test_csv_has_one_row_per_point(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    write_csv(_report(CPU), path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["concurrency"] for r in rows] == ["1", "4", "8", "16"]
    assert rows[1]["throughput_rps"] == "60.0" and rows[3]["stable"] == "False"


def test_terminal_report_shows_points_notes_and_the_capacity_table() -> None:
    report = _report(CPU, GPU)
    report = Report(
        report.settings,
        report.targets,
        plan_capacity(report, slo_p99_ms=150, target_rps=500, cost_per_hour={"cpu": 0.5, "gpu": 3.0}),
    )
    text = format_report(report)
    assert "p99.9 ms" in text and "UNAVAILABLE 3" in text
    assert "cpu c=16: not stable" in text
    assert "processor" in text and "$/1M images" in text and "instances for 500 req/s" in text


SVG = "{http://www.w3.org/2000/svg}"


def _with_server(point: Point, *breakdowns: ModelBreakdown) -> Point:
    return dataclasses.replace(point, server=breakdowns)


def _breakdown(model: str, queue: float, infer: float, *, executions: int = 10) -> ModelBreakdown:
    return ModelBreakdown(model, 100, 0, executions, 100, 2.0, queue, 0.1, infer, 0.0, queue + 0.1 + infer + 1.0)


def _charts(page: str) -> list[ET.Element]:
    """Every inline chart, parsed: each must be well-formed SVG."""
    return [ET.fromstring(svg) for svg in re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)]


def _texts(chart: ET.Element) -> set[str]:
    return {"".join(t.itertext()) for t in chart.iter(f"{SVG}text")}


def _ids(chart: ET.Element, pattern: str) -> list[ET.Element]:
    return [g for g in chart.iter(f"{SVG}g") if re.fullmatch(pattern, g.get("id", ""))]


def _cells(page: str, *first: str) -> list[str]:
    """The cells of the table row whose first cells are ``first``."""
    for row in re.findall(r"<tr>(.*?)</tr>", page):
        cells = re.findall(r"<td>(.*?)</td>", row)
        if tuple(cells[: len(first)]) == first:
            return cells
    raise AssertionError(f"no row {first}")


def test_html_report_draws_every_chart_with_its_series_labels_and_axes() -> None:
    cpu = TargetReport(
        "cpu",
        CPU.url,
        (
            _with_server(CPU.points[0], _breakdown("detector", 5.0, 4.0), _breakdown("fashion", 0, 0, executions=0)),
            _with_server(CPU.points[1], _breakdown("detector", 9.0, 0.0)),
            *CPU.points[2:],
        ),
    )
    report = _report(cpu, GPU)
    page = render_html(Report(report.settings, report.targets, plan_capacity(report, slo_p99_ms=150)))
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>\n")
    throughput, latency, knee, bars = charts = _charts(page)
    assert len(charts) == 4  # three line charts for the closed loop, the stage bars
    titles = (
        "Throughput against load (closed loop)",
        "Latency percentiles against load (closed loop)",
        "p99 latency against throughput (closed loop)",
        "Server-side time per request, per composing model",
    )
    for chart, title in zip(charts, titles, strict=True):
        assert title in _texts(chart) and f'aria-label="{title}"' in page
    assert {"concurrency (requests in flight)", "throughput (req/s)", "cpu", "gpu"} <= _texts(throughput)
    assert {"latency (ms)", "cpu p50", "cpu p90", "cpu p99", "gpu p50", "gpu p90", "gpu p99"} <= _texts(latency)
    assert {"throughput (req/s)", "p99 latency (ms)", "cpu p99", "gpu p99"} <= _texts(knee)
    # One line per series, one marker per point of it.
    assert len(_ids(throughput, r"chart0-series-\d+")) == 2
    assert len(_ids(latency, r"chart1-series-\d+")) == 6
    assert len(_ids(knee, r"chart2-series-\d+")) == 2
    cpu_line, gpu_line = _ids(throughput, r"chart0-series-\d+")
    assert len(list(cpu_line.iter(f"{SVG}use"))) == 4 and len(list(gpu_line.iter(f"{SVG}use"))) == 3
    # Bars: the ensemble (no executions) is left out; zero stages draw nothing.
    assert {"cpu c=1 detector", "cpu c=4 detector", "queue", "compute infer"} <= _texts(bars)
    assert "cpu c=1 fashion" not in _texts(bars)
    assert {g.get("id") for g in _ids(bars, r"chart3-bar-\d+-\d+")} == {
        f"chart3-bar-{b}" for b in ("0-0", "0-1", "0-2", "1-0", "1-1")
    }
    # The tables show the report's numbers.
    percentiles = [f"{cpu.points[1].latency.percentile(k):,.1f}" for k in ("p50", "p90", "p95", "p99")]
    assert _cells(page, "cpu", "c=4")[:7] == ["cpu", "c=4", "60.0", *percentiles]
    assert _cells(page, "gpu", "c=32")[8] == "3"  # errors
    assert _cells(page, "cpu", "c=1", "detector")[3:] == ["100", "5.00", "0.10", "4.00", "0.00", "10.10", "2.00"]
    assert _cells(page, "cpu")[1:3] == [f"{cpu.points[1].latency.p99_ms:,.1f}", "60.0"]  # capacity: best is c=4
    assert "Capacity at p99 &le; 150 ms" in page and "Utilisation" in page


def test_html_report_is_self_contained_and_deterministic() -> None:
    report = _report(CPU, GPU)
    page = render_html(report)
    assert page == render_html(report)
    for tag in ("<script", "<link", "<img", "<iframe", "@import", " src="):
        assert tag not in page
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "element ids repeat across charts"
    references = re.findall(r'href="([^"]*)"', page) + re.findall(r"url\(([^)]*)\)", page)
    assert references and set(references) <= {f"#{i}" for i in ids}  # markers and clip paths, all inline
    namespaces = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert set(re.findall(r"https?://[^\s\"'<>]*", page)) <= namespaces


def test_html_report_escapes_what_comes_from_inputs() -> None:
    name = '<script>alert("x")</script> & $\\alpha$'
    hidden = "_hidden"
    targets = (
        TargetReport(name, '"><img src=x>', tuple(dataclasses.replace(p, target=name) for p in CPU.points)),
        TargetReport(hidden, "h:1", tuple(dataclasses.replace(p, target=hidden) for p in GPU.points)),
    )
    page = render_html(_report(*targets))
    assert "<script" not in page and "<img" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; $\\alpha$"
    assert _cells(page, escaped, "c=1")  # the tables
    throughput, latency, _ = _charts(page)  # well-formed: the SVG writer escaped the names
    assert {name, hidden} <= _texts(throughput)  # not mathtext, not dropped for a leading "_"
    assert {f"{name} p99", f"{hidden} p50"} <= _texts(latency)


def test_a_line_chart_without_finite_points_says_no_data() -> None:
    svg = line_chart(
        [Series("empty", ((1.0, math.nan),), "#000")], title="Nothing", x_label="x", y_label="y", chart_id="c"
    )
    (chart,) = _charts(svg)
    assert {"Nothing", "no data", "x", "y"} <= _texts(chart) and not _ids(chart, r"c-series-\d+")
    assert "empty" not in _texts(chart)


def test_the_report_modules_do_not_import_matplotlib() -> None:
    code = "import sys, fashionbox.loadtest.cli, fashionbox.loadtest.html; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_nice_ticks_cover_the_range_with_round_steps() -> None:
    assert nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0, 1.3) == pytest.approx([0, 0.5, 1.0, 1.5])
    assert nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
