"""The runner on a fake server (the transport seam): closed and open loop, stability stop, coordinated omission.

The fake answers after a fixed service time with a fixed number of requests served at once, and can
stall for a while: enough to check the runner's arithmetic against values known in advance.
"""

from __future__ import annotations

import asyncio

import pytest

from fashionbox.loadtest.events import Event, PointMeasured, StageStarted, WindowMeasured
from fashionbox.loadtest.report import TargetReport
from fashionbox.loadtest.runner import RunOptions, Stage, Target, run_target, sweep_concurrency, sweep_rates
from fashionbox.loadtest.senders import SenderKind
from fashionbox.loadtest.server_stats import ServerSnapshot
from fashionbox.loadtest.shapes import ClosedShape, ConcurrencySteps
from fashionbox.loadtest.windows import StabilityRule

TARGET = Target("fake", "127.0.0.1:1", None)


class FakeServer:
    """``servers`` requests at a time, ``service_s`` each; a stall blocks everything for ``stall_s`` once."""

    kind: SenderKind = "raw"

    def __init__(
        self,
        service_s: float,
        servers: int = 1000,
        stall_at_s: float | None = None,
        stall_s: float = 0.0,
        fail_every: int = 0,
    ) -> None:
        self.service_s = service_s
        self.slots = asyncio.Semaphore(servers)
        self.stall_at_s = stall_at_s
        self.stall_s = stall_s
        self.fail_every = fail_every
        self.sent = 0
        self.t0 = 0.0

    async def open(self) -> None:
        self.t0 = asyncio.get_running_loop().time()

    async def close(self) -> None:
        pass

    async def send(self, index: int) -> str | None:
        self.sent += 1
        async with self.slots:
            now = asyncio.get_running_loop().time() - self.t0
            if self.stall_at_s is not None and now >= self.stall_at_s:
                self.stall_at_s = None
                await asyncio.sleep(self.stall_s)
            await asyncio.sleep(self.service_s)
        if self.fail_every and self.sent % self.fail_every == 0:
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
    assert point.throughput_rps == pytest.approx(4 / 0.02, rel=0.2)
    assert point.latency.p50_ms == pytest.approx(20, rel=0.25)
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
    assert point.throughput_rps == pytest.approx(50.0, rel=0.15)  # 5 requests in flight, never waiting on each other
    assert point.latency.p50_ms == pytest.approx(100, rel=0.15)


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
    assert high.throughput_rps == pytest.approx(3 * low.throughput_rps, rel=0.25)
