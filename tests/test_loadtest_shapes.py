"""Load shapes: send schedules, rates, ramps and their command-line forms, against known values."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from fashionbox.loadtest.errors import LoadTestConfigError
from fashionbox.loadtest.shapes import (
    ClosedShape,
    ConcurrencyLine,
    ConcurrencySteps,
    ConstantRate,
    FixedConcurrency,
    OpenShape,
    RateLine,
    RateSteps,
    parse_ramp,
)


def test_constant_arrivals_are_evenly_spaced_from_zero() -> None:
    times = list(itertools.islice(OpenShape(ConstantRate(4.0)).send_times(), 5))
    assert times == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_constant_rate_with_a_hold_ends_after_it() -> None:
    times = list(OpenShape(ConstantRate(10.0, hold_s=2.0)).send_times())
    assert len(times) == 20
    assert times[-1] == pytest.approx(1.9)


def test_poisson_arrivals_have_the_right_mean_rate_and_exponential_gaps() -> None:
    times = list(itertools.islice(OpenShape(ConstantRate(50.0), process="poisson", seed=3).send_times(), 20_000))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 50, rel=0.03)
    # An exponential distribution's standard deviation equals its mean.
    assert statistics.pstdev(gaps) == pytest.approx(1 / 50, rel=0.05)
    assert all(b > a for a, b in itertools.pairwise(times))


def test_poisson_arrivals_repeat_with_the_same_seed_and_differ_with_another() -> None:
    def first(seed: int) -> list[float]:
        return list(itertools.islice(OpenShape(ConstantRate(10.0), process="poisson", seed=seed).send_times(), 10))

    assert first(1) == first(1)
    assert first(1) != first(2)


def test_step_ramp_sends_each_rate_for_its_hold() -> None:
    shape = OpenShape(RateSteps((10.0, 20.0, 40.0), hold_s=1.0))
    times = list(shape.send_times())
    per_second = [sum(1 for t in times if k <= t < k + 1) for k in range(3)]
    assert per_second == [10, 20, 40]
    assert shape.duration_s == 3.0
    assert [shape.level_at(t) for t in (0.5, 1.5, 2.5)] == [10.0, 20.0, 40.0]


def test_step_ramp_cumulative_and_inverse_agree() -> None:
    profile = RateSteps((5.0, 15.0), hold_s=2.0)
    assert profile.cumulative(2.0) == pytest.approx(10.0)
    assert profile.cumulative(3.0) == pytest.approx(25.0)
    for count in (0.0, 3.0, 10.0, 24.0):
        assert profile.cumulative(profile.time_of(count)) == pytest.approx(count)
    assert math.isinf(profile.time_of(40.0))


def test_line_ramp_rate_rises_linearly_and_its_count_is_the_integral() -> None:
    profile = RateLine(10.0, 30.0, ramp_s=10.0)
    assert profile.rate_at(5.0) == pytest.approx(20.0)
    assert profile.cumulative(10.0) == pytest.approx(200.0)  # mean rate 20 over 10 s
    for count in (1.0, 50.0, 150.0, 199.0):
        assert profile.cumulative(profile.time_of(count)) == pytest.approx(count)
    times = list(OpenShape(profile).send_times())
    assert len(times) == 200
    assert sum(1 for t in times if t < 5.0) == 75  # ∫0..5 (10 + 2t) dt


def test_falling_line_ramp_is_supported() -> None:
    profile = RateLine(30.0, 10.0, ramp_s=10.0)
    assert profile.cumulative(10.0) == pytest.approx(200.0)
    assert profile.time_of(profile.cumulative(7.5)) == pytest.approx(7.5)


def test_closed_shapes_give_whole_workers_over_time() -> None:
    assert ClosedShape(FixedConcurrency(4)).concurrency_at(123.0) == 4
    steps = ClosedShape(ConcurrencySteps((1, 2, 4), hold_s=10.0))
    assert [steps.concurrency_at(t) for t in (0, 9.9, 10, 25, 99)] == [1, 1, 2, 4, 4]
    line = ClosedShape(ConcurrencyLine(1, 9, ramp_s=8.0))
    assert [line.concurrency_at(t) for t in (0, 1, 4, 7.99, 8, 20)] == [1, 2, 5, 8, 9, 9]
    assert line.max_concurrency == 9


@pytest.mark.parametrize(
    ("text", "expected_type", "duration_s"),
    [
        ("rate:step:10:40:10:5", RateSteps, 20.0),
        ("rate:line:5:80:60", RateLine, 60.0),
        ("concurrency:step:1:4:1:3", ConcurrencySteps, 12.0),
        ("concurrency:line:1:16:30", ConcurrencyLine, 30.0),
    ],
)
def test_ramps_parse_from_the_command_line(text: str, expected_type: type, duration_s: float) -> None:
    shape = parse_ramp(text)
    assert isinstance(shape.profile, expected_type)
    assert shape.duration_s == duration_s


def test_step_ramp_levels_include_the_end() -> None:
    shape = parse_ramp("rate:step:10:40:10:5")
    assert isinstance(shape.profile, RateSteps)
    assert shape.profile.rates_rps == (10.0, 20.0, 30.0, 40.0)


@pytest.mark.parametrize(
    "text", ["rate:zigzag:1:2:3", "rate:step:1:2", "load:line:1:2:3", "concurrency:step:1.5:4:1:3"]
)
def test_bad_ramps_are_refused_with_a_config_error(text: str) -> None:
    with pytest.raises(LoadTestConfigError):
        parse_ramp(text)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf])
def test_a_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(LoadTestConfigError):
        ConstantRate(rate)


def test_concurrency_must_be_a_positive_integer() -> None:
    with pytest.raises(LoadTestConfigError):
        FixedConcurrency(0)
