"""HDR-histogram percentiles against known inputs, and merging windows."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from fashionbox.loadtest.stats import LatencyHistogram, LatencySummary


def _histogram(values_ms: list[float]) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values_ms:
        h.record_s(v / 1000.0)
    return h


def test_percentiles_of_one_to_a_thousand_ms_are_exact_to_a_tenth_of_a_percent() -> None:
    s = _histogram([float(v) for v in range(1, 1001)]).summary()
    assert s.count == 1000
    for got, want in ((s.p50_ms, 500), (s.p90_ms, 900), (s.p95_ms, 950), (s.p99_ms, 990), (s.p999_ms, 999)):
        assert got == pytest.approx(want, rel=1e-3)
    assert s.min_ms == pytest.approx(1.0, rel=1e-3)
    assert s.max_ms == pytest.approx(1000.0, rel=1e-3)
    assert s.mean_ms == pytest.approx(500.5, rel=1e-3)


def test_percentiles_match_the_nearest_rank_of_a_random_sample() -> None:
    rng = random.Random(5)
    values = [rng.lognormvariate(3.0, 0.6) for _ in range(20_000)]  # ~20 ms with a long tail
    s = _histogram(values).summary()
    ordered = sorted(values)
    for p, got in ((50, s.p50_ms), (90, s.p90_ms), (99, s.p99_ms), (99.9, s.p999_ms)):
        want = ordered[math.ceil(p / 100 * len(ordered)) - 1]
        assert got == pytest.approx(want, rel=2e-3)
        assert got == pytest.approx(float(np.percentile(values, p, method="inverted_cdf")), rel=2e-3)


def test_a_constant_latency_has_every_percentile_equal() -> None:
    s = _histogram([12.5] * 100).summary()
    assert [s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms] == pytest.approx([12.5] * 4, rel=1e-3)


def test_merging_windows_gives_the_percentiles_of_all_their_values() -> None:
    a = _histogram([float(v) for v in range(1, 501)])
    b = _histogram([float(v) for v in range(501, 1001)])
    merged = LatencyHistogram.merged([a, b]).summary()
    assert merged.count == 1000
    assert merged.p50_ms == pytest.approx(500, rel=1e-3)
    assert merged.p99_ms == pytest.approx(990, rel=1e-3)


def test_an_empty_histogram_reports_nan_not_zero() -> None:
    s = LatencyHistogram().summary()
    assert s.count == 0
    assert math.isnan(s.p50_ms) and math.isnan(s.p99_ms)
    assert math.isnan(s.mean_ms) and math.isnan(LatencySummary.empty().p99_ms)


def test_values_outside_the_range_are_clamped_not_lost() -> None:
    h = LatencyHistogram()
    h.record_us(0)
    h.record_s(10_000.0)  # past one hour
    assert h.count == 2
    assert h.summary().min_ms == pytest.approx(0.001, rel=0.01)


def test_summary_keys_are_the_report_keys() -> None:
    assert set(_histogram([1.0]).summary().as_dict()) == {"p50", "p90", "p95", "p99", "p99.9", "mean", "min", "max"}
