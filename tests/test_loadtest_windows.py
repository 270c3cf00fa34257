"""Measurement windows and the stability rule, on hand-made completions."""

from __future__ import annotations

import math

import pytest

from fashionbox.loadtest.errors import LoadTestConfigError
from fashionbox.loadtest.stats import LatencyHistogram
from fashionbox.loadtest.windows import (
    StabilityRule,
    Window,
    WindowRecorder,
    WindowSummary,
    aggregate,
    check_stability,
)


def _recorder(warmup_s: float = 1.0, window_s: float = 2.0) -> WindowRecorder:
    return WindowRecorder(warmup_s=warmup_s, window_s=window_s, level_at=lambda t: 4.0)


def _window(index: int, *, ok: int, latency_ms: float, duration_s: float = 1.0) -> WindowSummary:
    w = Window(index, index * duration_s, (index + 1) * duration_s, 1.0)
    for _ in range(ok):
        w.latency.record_s(latency_ms / 1000)
    w.ok = ok
    return w.summary()


def test_completions_land_in_the_window_of_their_completion_time_and_warmup_is_dropped() -> None:
    r = _recorder()
    r.record(t_done_s=0.5, latency_s=0.01, status=None, bytes_sent=100)  # warm-up
    r.record(t_done_s=1.0, latency_s=0.01, status=None, bytes_sent=100)  # window 0 starts at 1.0
    r.record(t_done_s=2.99, latency_s=0.02, status=None, bytes_sent=100)
    r.record(t_done_s=3.0, latency_s=0.03, status="UNAVAILABLE", bytes_sent=100)  # window 1
    assert [w.ok for w in r.windows] == [2, 0]
    assert r.windows[1].errors == {"UNAVAILABLE": 1}
    assert [w.bytes_sent for w in r.windows] == [200, 100]
    assert r.windows[0].start_s == 1.0 and r.windows[0].end_s == 3.0


def test_failed_requests_count_as_errors_not_latency() -> None:
    r = _recorder(warmup_s=0.0)
    r.record(t_done_s=0.1, latency_s=5.0, status="DEADLINE_EXCEEDED", bytes_sent=10)
    r.record(t_done_s=0.2, latency_s=0.01, status=None, bytes_sent=10)
    s = r.windows[0].summary()
    assert s.ok == 1 and s.errors == {"DEADLINE_EXCEEDED": 1}
    assert s.latency.count == 1 and s.latency.max_ms == pytest.approx(10.0, rel=1e-3)
    assert s.throughput_rps == pytest.approx(0.5)  # one success in a 2 s window


def test_complete_windows_include_empty_ones_and_exclude_the_open_one() -> None:
    r = _recorder(warmup_s=0.0, window_s=1.0)
    r.record(t_done_s=0.5, latency_s=0.01, status=None, bytes_sent=1)
    done = r.complete_windows(3.2)  # windows 0, 1, 2 ended; 3 is open
    assert [w.index for w in done] == [0, 1, 2]
    assert [w.ok for w in done] == [1, 0, 0]


def test_windows_take_the_shapes_level_at_their_middle() -> None:
    r = WindowRecorder(warmup_s=0.0, window_s=1.0, level_at=lambda t: 1.0 if t < 2 else 2.0)
    r.complete_windows(4.0)
    assert [w.level for w in r.windows] == [1.0, 1.0, 2.0, 2.0]


def test_three_windows_within_ten_percent_are_stable() -> None:
    windows = [
        _window(0, ok=50, latency_ms=30),
        _window(1, ok=100, latency_ms=20),
        _window(2, ok=104, latency_ms=21),
        _window(3, ok=98, latency_ms=20.5),
    ]
    verdict = check_stability(windows, StabilityRule(windows=3, tolerance=0.10))
    assert verdict.stable
    assert verdict.throughput_spread == pytest.approx(104 / 98 - 1)
    assert verdict.note == ""


def test_a_drifting_throughput_is_not_stable_and_the_note_says_by_how_much() -> None:
    windows = [_window(0, ok=100, latency_ms=20), _window(1, ok=115, latency_ms=20), _window(2, ok=130, latency_ms=20)]
    verdict = check_stability(windows, StabilityRule(windows=3, tolerance=0.10))
    assert not verdict.stable
    assert verdict.throughput_spread == pytest.approx(0.30)
    assert "throughput varied 30%" in verdict.note


def test_a_drifting_latency_is_not_stable() -> None:
    windows = [_window(k, ok=100, latency_ms=ms) for k, ms in enumerate((20, 22, 26))]
    verdict = check_stability(windows, StabilityRule(tolerance=0.10))
    assert not verdict.stable and verdict.latency_spread == pytest.approx(0.30, rel=0.01)
    assert check_stability(windows, StabilityRule(tolerance=0.35)).stable


def test_too_few_windows_are_never_stable() -> None:
    verdict = check_stability([_window(0, ok=10, latency_ms=1)], StabilityRule(windows=3))
    assert not verdict.stable and math.isnan(verdict.throughput_spread)
    assert "only 1 window" in verdict.note


def test_windows_without_any_success_are_not_stable() -> None:
    windows = [_window(k, ok=0, latency_ms=1) for k in range(3)]
    assert not check_stability(windows, StabilityRule()).stable


@pytest.mark.parametrize("kwargs", [{"windows": 1}, {"tolerance": 0.0}, {"latency": "p42"}])
def test_bad_stability_rules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(LoadTestConfigError):
        StabilityRule(**kwargs)  # type: ignore[arg-type]


def test_aggregate_merges_histograms_and_sums_counts_over_windows() -> None:
    windows = []
    for k in range(3):
        w = Window(k, 2.0 * k, 2.0 * (k + 1), 8.0)
        for ms in range(1, 101):
            w.latency.record_s((ms + 100 * k) / 1000)
        w.ok = 100
        w.errors["UNAVAILABLE"] = k
        w.bytes_sent = 1000
        windows.append(w)
    agg = aggregate(windows)
    assert agg.duration_s == 6.0 and agg.ok == 300
    assert agg.throughput_rps == pytest.approx(50.0)
    assert agg.errors == {"UNAVAILABLE": 3}
    assert agg.bytes_sent == 3000
    assert agg.latency.summary().p50_ms == pytest.approx(150.0, rel=1e-3)
    assert isinstance(agg.send_lag, LatencyHistogram) and agg.send_lag.count == 0
