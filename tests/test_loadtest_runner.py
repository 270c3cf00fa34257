"""The runner on a fake server (the transport seam): closed and open loop, stability stop, coordinated omission,
and the error backoff (a server that fails every request at once must not be flooded).

The fake answers after a fixed service time with a fixed number of requests served at once, and can
stall for a while: enough to check the runner's arithmetic against values known in advance.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from fashionbox.loadtest.events import Event, PointMeasured, StageStarted, WindowMeasured
from fashionbox.loadtest.report import TargetReport
from fashionbox.loadtest.runner import RunOptions, Stage, Target, run_target, sweep_concurrency, sweep_rates
from fashionbox.loadtest.senders import SenderKind
from fashionbox.loadtest.server_stats import ServerSnapshot
from fashionbox.loadtest.shapes import ClosedShape, ConcurrencySteps, ConstantRate, FixedConcurrency, OpenShape
from fashionbox.loadtest.windows import StabilityRule

TARGET = Target("fake", "127.0.0.1:1", None)


class FakeServer:
    """``servers`` requests at a time, ``service_s`` each; a stall blocks everything for ``stall_s`` once.

    Until ``refuse_until_s`` (``math.inf``: always) every request is refused at once with UNAVAILABLE,
    as by a server that is restarting.
    """

    kind: SenderKind = "raw"

    def __init__(
        self,
        service_s: float,
        servers: int = 1000,
        stall_at_s: float | None = None,
        stall_s: float = 0.0,
        fail_every: int = 0,
        refuse_until_s: float = 0.0,
    ) -> None:
        self.service_s = service_s
        self.slots = asyncio.Semaphore(servers)
        self.stall_at_s = stall_at_s
        self.stall_s = stall_s
        self.fail_every = fail_every
        self.refuse_until_s = refuse_until_s
        self.sent = 0
        self.t0 = 0.0

    async def open(self) -> None:
        self.t0 = asyncio.get_running_loop().time()

    async def close(self) -> None:
        pass

    async def send(self, index: int) -> str | None:
        self.sent += 1
        number = self.sent  # every fail_every-th request fails, whatever the others do meanwhile
        if asyncio.get_running_loop().time() - self.t0 < self.refuse_until_s:
            await asyncio.sleep(0)  # the refusal comes back at once
            return "UNAVAILABLE"
        async with self.slots:
            now = asyncio.get_running_loop().time() - self.t0
            if self.stall_at_s is not None and now >= self.stall_at_s:
                self.stall_at_s = None
                await asyncio.sleep(self.stall_s)
            await asyncio.sleep(self.service_s)
        if self.fail_every and number % self.fail_every == 0:
            return "RESOURCE_EXHAUSTED"
        return None


class NoProbe:
    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def snapshot(self, t_s: float) -> ServerSnapshot:
        return ServerSnapshot(t_s, None, None)


def _run(
    stages: tuple[Stage, ...], server: FakeServer, events: list[Event] | None = None, **kwargs: object
) -> TargetReport:
    settings: dict[str, object] = {"window_s": 0.4, "warmup_s": 0.2, "max_duration_s": 2.0}
    settings.update(kwargs)
    options = RunOptions(targets=(TARGET,), stages=stages, images=(b"x" * 100,), **settings)  # type: ignore[arg-type]
    listener = events.append if events is not None else None
    return asyncio.run(run_target(TARGET, stages, options, listener, sender=server, probe=NoProbe()))


def test_closed_loop_throughput_is_concurrency_over_latency() -> None:
    report = _run(sweep_concurrency((4,)), FakeServer(service_s=0.02), stability=StabilityRule(tolerance=0.3))
    (point,) = report.points
    assert point.load.concurrency == 4
    # Little's law ties the two measured numbers together, however slow the machine runs the fake:
    # 4 requests always in flight, each taking the mean latency.
    assert point.throughput_rps * point.latency.mean_ms / 1000 == pytest.approx(4, rel=0.3)
    # Never faster than the service time; generous above it for a busy shared machine.
    assert 19 <= point.latency.p50_ms < 200
    assert 4 / 0.2 < point.throughput_rps <= 1.15 * 4 / 0.02
    assert point.errors == {} and point.bytes_sent > 0


def test_a_stable_level_stops_after_its_stability_windows() -> None:
    events: list[Event] = []
    report = _run(
        sweep_concurrency((2,)),
        FakeServer(service_s=0.01),
        events,
        stability=StabilityRule(tolerance=0.5),
        max_duration_s=10.0,
    )
    (point,) = report.points
    assert point.stable and point.windows_used == 3
    assert len(point.windows) <= 4  # stopped early, far before 10 s
    kinds = [type(e) for e in events]
    assert kinds[0] is StageStarted and kinds[-1] is PointMeasured and WindowMeasured in kinds


def test_a_level_that_never_stabilises_says_so() -> None:
    report = _run(
        sweep_concurrency((1,)),
        FakeServer(service_s=0.01, stall_at_s=0.75, stall_s=0.3),
        stability=StabilityRule(tolerance=0.01),
        max_duration_s=1.6,
    )
    (point,) = report.points
    assert not point.stable
    assert "not stable" in point.note
    assert point.windows_used == len(point.windows) == 4  # every window of the level, not the last three


def test_errors_are_counted_by_status_and_excluded_from_throughput() -> None:
    report = _run(
        sweep_concurrency((2,)), FakeServer(service_s=0.01, fail_every=4), stability=StabilityRule(tolerance=0.5)
    )
    (point,) = report.points
    assert set(point.errors) == {"RESOURCE_EXHAUSTED"}
    assert point.error_count == pytest.approx(point.requests / 4, rel=0.2)
    assert point.throughput_rps == pytest.approx(0.75 * point.requests / point.duration_s, rel=0.05)


def test_open_loop_sends_at_the_offered_rate_whatever_the_latency() -> None:
    report = _run(sweep_rates((50.0,)), FakeServer(service_s=0.1), stability=StabilityRule(tolerance=0.5))
    (point,) = report.points
    assert point.load.rate_rps == 50.0
    # The schedule, not the answers, paces the sends: at 100+ ms a request, one sender waiting on
    # each answer would manage under 10 req/s; the open loop keeps ~5 in flight and holds 50.
    assert 35 < point.throughput_rps < 65
    assert 99 <= point.latency.p50_ms < 400
    assert point.throughput_rps * point.latency.mean_ms / 1000 > 3, "several requests in flight at once"


def test_open_loop_charges_a_stall_to_every_request_scheduled_during_it() -> None:
    """No coordinated omission: a 300 ms stall at 50 req/s delays ~15 requests, not one."""
    stall = dict(service_s=0.005, servers=1, stall_at_s=0.9, stall_s=0.3)
    rule = StabilityRule(tolerance=5.0)
    (open_point,) = _run(sweep_rates((50.0,)), FakeServer(**stall), stability=rule, max_duration_s=1.6).points  # type: ignore[arg-type]
    (closed_point,) = _run(sweep_concurrency((1,)), FakeServer(**stall), stability=rule, max_duration_s=1.6).points  # type: ignore[arg-type]
    # Open loop: the requests due during the stall waited for it; p90 of ~70 requests sees it.
    assert open_point.latency.p90_ms > 100
    # Closed loop: one request saw the stall, the sender waited instead of sending: p90 stays small.
    assert closed_point.latency.p90_ms < 20


def test_a_concurrency_step_ramp_gives_one_point_per_step() -> None:
    stage = Stage(ClosedShape(ConcurrencySteps((1, 3), hold_s=0.8)), until_stable=False)
    report = _run((stage,), FakeServer(service_s=0.02), window_s=0.4)
    assert [p.load.concurrency for p in report.points] == [1, 3]
    assert all(p.load.ramp and p.windows_used == 2 for p in report.points)
    low, high = report.points
    # Three workers against a server without a limit: well over twice the throughput of one.
    assert high.throughput_rps > 2 * low.throughput_rps


# -- error backoff ------------------------------------------------------------------------------------------


def _held(shape: ClosedShape | OpenShape) -> tuple[Stage, ...]:
    return (Stage(shape, until_stable=False),)


CLOSED_8_FOR_1_S = _held(ClosedShape(FixedConcurrency(8, hold_s=1.0)))
OPEN_400_FOR_1_S = _held(OpenShape(ConstantRate(400.0, hold_s=1.0)))


def test_closed_loop_backs_off_from_a_server_that_fails_every_request() -> None:
    server = FakeServer(service_s=0.005, refuse_until_s=math.inf)
    report = _run(CLOSED_8_FOR_1_S, server, window_s=0.25, warmup_s=0.0)
    # Each worker waits 5 ms, 10 ms, 20 ms... (at least half of each, jittered) up to 1 s: about ten
    # sends a worker in a second, against tens of thousands without the backoff.
    assert server.sent < 200
    (point,) = report.points
    assert set(point.errors) == {"UNAVAILABLE"} and point.throughput_rps == 0
    assert point.backoff_s > 2.0  # of the 8 worker-seconds, most were spent waiting
    assert "error backoff: workers waited" in point.note
    d = point.as_dict()
    assert d["backoff_s"] == pytest.approx(point.backoff_s, abs=1e-3) and d["skipped_sends"] == 0
    assert sum(w["backoff_s"] for w in d["windows"]) == pytest.approx(point.backoff_s, abs=0.01)


def test_without_backoff_the_closed_loop_resends_at_once() -> None:
    server = FakeServer(service_s=0.005, refuse_until_s=math.inf)
    report = _run(CLOSED_8_FOR_1_S, server, window_s=0.25, warmup_s=0.0, error_backoff=False)
    assert server.sent > 1000  # the old behaviour, kept for measuring refusals on purpose
    (point,) = report.points
    assert point.backoff_s == 0 and "backoff" not in point.note


def test_backoff_resets_once_the_server_answers_again() -> None:
    server = FakeServer(service_s=0.01, refuse_until_s=0.4)
    report = _run(CLOSED_8_FOR_1_S, server, window_s=0.25, warmup_s=0.0, error_backoff_max_s=0.1)
    (point,) = report.points
    first, *_, last = point.windows
    assert first.backoff_s > 0 and first.ok == 0
    # Healthy from 0.4 s, every worker back by 0.5 s at the latest (waits are at most 0.1 s); from
    # then on no request fails, so no worker waits and the loop runs at full speed.
    assert last.backoff_s == 0 and last.errors == {}
    assert last.throughput_rps > 0.25 * 8 / 0.01


def test_open_loop_skips_sends_while_most_answers_are_errors() -> None:
    server = FakeServer(service_s=0.005, refuse_until_s=math.inf)
    report = _run(OPEN_400_FOR_1_S, server, window_s=0.25, warmup_s=0.0)
    # About ten probes a second get through instead of 400.
    assert server.sent < 100
    (point,) = report.points
    assert point.skipped_sends > 200
    assert "scheduled sends skipped" in point.note and "not held" in point.note
    assert point.as_dict()["skipped_sends"] == point.skipped_sends


def test_open_loop_without_backoff_sends_every_scheduled_request() -> None:
    server = FakeServer(service_s=0.005, refuse_until_s=math.inf)
    report = _run(OPEN_400_FOR_1_S, server, window_s=0.25, warmup_s=0.0, error_backoff=False)
    assert server.sent > 300
    (point,) = report.points
    assert point.skipped_sends == 0 and "skipped" not in point.note


def test_backoff_leaves_a_healthy_open_loop_alone() -> None:
    server = FakeServer(service_s=0.005)
    report = _run(OPEN_400_FOR_1_S, server, window_s=0.25, warmup_s=0.0)
    (point,) = report.points
    assert point.skipped_sends == 0 and point.backoff_s == 0
    assert server.sent > 300
