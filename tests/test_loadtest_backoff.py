"""The error backoff's parts on their own: the closed loop's exponential wait, the open loop's gate,
the settings and their flags, and how parallel load processes report the time they waited.

The runner's behaviour against a server that fails every request is in ``test_loadtest_runner.py``.
"""

from __future__ import annotations

import argparse
import random

import pytest

from fashionbox.loadtest.backoff import BackoffSettings, ErrorGate, ExponentialBackoff, backoff_notes
from fashionbox.loadtest.cli import add_loadtest_arguments
from fashionbox.loadtest.errors import LoadTestConfigError
from fashionbox.loadtest.parallel import WorkerFigures, point_from_figures
from fashionbox.loadtest.runner import RunOptions, Target, sweep_concurrency
from fashionbox.loadtest.stats import LatencyHistogram


def test_the_wait_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = ExponentialBackoff(0.01, 0.1, random.Random(3))
    waits = [backoff.failed() for _ in range(8)]
    ceilings = [0.01, 0.02, 0.04, 0.08, 0.1, 0.1, 0.1, 0.1]
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert 0.5 * ceiling <= wait < ceiling  # at least half of it, so the wait does grow


def test_a_success_starts_the_wait_over() -> None:
    backoff = ExponentialBackoff(0.01, 1.0, random.Random(0))
    for _ in range(6):
        backoff.failed()
    assert backoff.failed() >= 0.32
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.failed() < 0.01


def test_a_long_outage_does_not_overflow_the_wait() -> None:
    backoff = ExponentialBackoff(0.005, 1.0, random.Random(0))
    waits = [backoff.failed() for _ in range(5000)]
    assert all(0.5 <= wait < 1.0 for wait in waits[10:])


def test_the_gate_is_open_while_errors_do_not_dominate() -> None:
    gate = ErrorGate(probe_rps=2.0)
    for k in range(100):
        t = k * 0.001
        assert gate.allows(t)
        gate.sent(t)
        gate.answered(t, ok=k % 2 == 0)  # half fail: not most


def test_the_gate_lets_probes_through_a_dead_server_and_reopens_when_it_is_back() -> None:
    gate = ErrorGate(probe_rps=5.0)
    sent = []
    for k in range(2000):  # 1,000 scheduled sends a second for two seconds, every answer an error
        t = k * 0.001
        if gate.allows(t):
            gate.sent(t)
            gate.answered(t, ok=False)
            sent.append(t)
    assert 5 <= len(sent) <= 15  # five a second, not 2,000
    # The server is back: probes succeed, and within a second the gate lets every scheduled send through.
    allowed = []
    for k in range(2000, 4000):
        t = k * 0.001
        allowed.append(gate.allows(t))
        if allowed[-1]:
            gate.sent(t)
            gate.answered(t, ok=True)
    assert all(allowed[-1000:])


def test_the_gate_allows_the_successes_plus_the_probes() -> None:
    gate = ErrorGate(probe_rps=10.0)
    allowed = 0
    for k in range(1000):  # a server refusing three requests in four
        t = k * 0.001
        if gate.allows(t):
            gate.sent(t)
            gate.answered(t, ok=allowed % 4 == 0)
            allowed += 1
    # sends <= successes + 10 over the second: s <= s/4 + 10, so about 13, far below 1,000.
    assert 10 <= allowed <= 20


@pytest.mark.parametrize(
    "settings",
    [
        {"initial_s": 0.0},
        {"initial_s": -1.0},
        {"max_s": float("inf")},
        {"initial_s": 2.0, "max_s": 1.0},
        {"probe_rps": 0.0},
    ],
)
def test_bad_backoff_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(LoadTestConfigError):
        BackoffSettings(**settings)  # type: ignore[arg-type]


def test_run_options_check_their_backoff_and_report_it_in_the_settings() -> None:
    common = {"targets": (Target("t", "127.0.0.1:1"),), "stages": sweep_concurrency((1,)), "images": (b"x",)}
    with pytest.raises(LoadTestConfigError, match="max_s"):
        RunOptions(**common, error_backoff_initial_s=0.5, error_backoff_max_s=0.1)  # type: ignore[arg-type]
    options = RunOptions(**common, error_backoff=False, error_backoff_max_s=2.0)  # type: ignore[arg-type]
    assert options.backoff_settings().for_worker(random.Random(0)) is None
    assert options.backoff_settings().gate() is None
    assert options.settings().as_dict()["error_backoff"] == {
        "enabled": False,
        "initial_s": 0.005,
        "max_s": 2.0,
        "probe_rps": 10.0,
    }


def test_the_flags_reach_the_options() -> None:
    parser = argparse.ArgumentParser()
    add_loadtest_arguments(parser)
    defaults = parser.parse_args([])
    assert defaults.error_backoff is True
    assert (defaults.error_backoff_initial_s, defaults.error_backoff_max_s, defaults.error_probe_rps) == (
        0.005,
        1.0,
        10.0,
    )
    args = parser.parse_args(
        [
            "--no-error-backoff",
            "--error-backoff-initial-s",
            "0.01",
            "--error-backoff-max-s",
            "2",
            "--error-probe-rps",
            "3",
        ]
    )
    assert not args.error_backoff
    assert (args.error_backoff_initial_s, args.error_backoff_max_s, args.error_probe_rps) == (0.01, 2.0, 3.0)


def test_notes_say_what_the_backoff_did() -> None:
    assert backoff_notes(backoff_s=0.0, skipped_sends=0) == []
    (waited,) = backoff_notes(backoff_s=4.0, skipped_sends=0, worker_s=8.0)
    assert "4.00 s" in waited and "50%" in waited
    (skipped,) = backoff_notes(backoff_s=0.0, skipped_sends=37)
    assert "37 scheduled sends skipped" in skipped


def test_parallel_points_add_up_the_time_their_processes_waited() -> None:
    empty = LatencyHistogram().encode()
    figures = [WorkerFigures(empty, 0, {"UNAVAILABLE": 20}, 0, 0.1, backoff_s=3.0) for _ in range(2)]
    point = point_from_figures(figures, concurrency=8, processes=2, duration_s=1.0)
    assert point.backoff_s == pytest.approx(6.0)
    assert "error backoff: workers waited 6.00 s in all (75% of their time)" in point.note
    assert point.as_dict()["backoff_s"] == 6.0
