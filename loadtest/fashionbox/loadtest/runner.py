"""The runner: drives load shapes against targets and measures them into a :class:`Report`.

``run(options) -> Report`` (ghz's ``runner.Run``); it never prints. Progress is told to an optional
listener as events (locust's events), which the CLI turns into a live display::

    options = RunOptions(targets=(Target("cpu", "127.0.0.1:8001"),),
                         stages=sweep_concurrency((1, 2, 4)), images=corpus.images)
    report = run(options, listener=print)

How a stage is measured:

1. the shape's first level is applied for ``warmup_s`` (not measured), then the shape runs;
2. completions are sorted into windows of ``window_s`` by completion time
   (:class:`~fashionbox.loadtest.windows.WindowRecorder`); at every window boundary the server's
   statistics and metrics and the harness's own CPU time are snapshotted;
3. a held level (``until_stable``) stops once its last ``k`` windows are stable, or after
   ``max_duration_s`` of measuring, or after ``max_requests`` completions, whichever comes first;
   a ramp runs for its own duration;
4. consecutive windows at the same level form a point: the stable last ``k`` windows if the level
   stabilised, else every window of the level (with a note saying it never stabilised).

Open loop sends each request at its scheduled time without waiting for earlier ones, and measures
its latency from that scheduled time, so a server that stalls is charged for the whole stall
(no coordinated omission). How late the sender itself was is recorded as ``send_lag``.

Errors are backed off (:mod:`fashionbox.loadtest.backoff`), so a server that is down or refusing is
not flooded: a closed-loop worker waits after a failure (``error_backoff_initial_s`` doubling up to
``error_backoff_max_s``, with jitter, reset by a success) and the open loop skips scheduled sends
while most recent answers are errors (beyond ``error_probe_rps``). Points report both
(``backoff_s``, ``skipped_sends`` and a note); ``error_backoff=False`` measures refusals as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from fashionbox.loadtest.backoff import (
    DEFAULT_BACKOFF_INITIAL_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_PROBE_RPS,
    BackoffSettings,
    backoff_notes,
)
from fashionbox.loadtest.errors import LoadTestConfigError, TargetUnavailable
from fashionbox.loadtest.events import Listener, PointMeasured, StageStarted, WindowMeasured
from fashionbox.loadtest.report import HarnessUsage, LoadLevel, Point, Report, RunSettings, TargetReport
from fashionbox.loadtest.senders import RequestSpec, Sender, SenderKind, make_sender, serialise_request
from fashionbox.loadtest.server_stats import (
    ModelBreakdown,
    ServerProbe,
    ServerSnapshot,
    diff_statistics,
    summarise_metrics,
)
from fashionbox.loadtest.shapes import (
    ClosedShape,
    ConstantRate,
    FixedConcurrency,
    LoadShape,
    OpenShape,
    RateLine,
)
from fashionbox.loadtest.windows import StabilityRule, Window, WindowRecorder, aggregate, check_stability

if TYPE_CHECKING:
    from fashionbox.client import ClientConfig

__all__ = [
    "SATURATED_CPU_FRACTION",
    "Probe",
    "RunOptions",
    "Stage",
    "Target",
    "check_ready",
    "run",
    "run_async",
    "run_target",
    "split_host_port",
    "sweep_concurrency",
    "sweep_rates",
]

logger = logging.getLogger(__name__)

# The harness is called saturated above this CPU use (seconds per second) or this open-loop send lag.
SATURATED_CPU_FRACTION = 0.9
_SATURATED_SEND_LAG_MS = 5.0
_DRAIN_TIMEOUT_S = 10.0


# -- options ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A server to load: ``name`` for reports, gRPC ``url``, and its metrics URL if it has one."""

    name: str
    url: str
    metrics_url: str | None = None

    def __post_init__(self) -> None:
        if not self.name or "=" in self.name or "," in self.name:
            raise LoadTestConfigError(f"target name {self.name!r} must be non-empty without '=' or ','")
        split_host_port(self.url)

    @classmethod
    def parse(cls, text: str) -> Target:
        """``NAME=HOST:PORT[,metrics=HOST:PORT|PORT|none]``; metrics default to Triton's layout (gRPC port + 1)."""
        name, sep, rest = text.partition("=")
        if not sep:
            raise LoadTestConfigError(f"target {text!r}: expected NAME=HOST:PORT[,metrics=PORT]")
        url, *options = rest.split(",")
        metrics: str | None = "default"
        for option in options:
            key, _, value = option.partition("=")
            if key != "metrics" or not value:
                raise LoadTestConfigError(f"target {text!r}: unknown option {option!r} (only metrics=...)")
            metrics = value
        return cls(name, url, metrics_url_for(url, metrics))


def split_host_port(url: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); :class:`LoadTestConfigError` for anything else."""
    host, sep, port = url.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LoadTestConfigError(f"expected HOST:PORT, got {url!r}")
    return host, int(port)


def metrics_url_for(grpc_url: str, metrics: str | None = "default") -> str | None:
    """The Prometheus URL: ``default`` is the gRPC port + 1 (8001 -> 8002), ``none`` turns scraping off."""
    if metrics is None or metrics == "none":
        return None
    host, port = split_host_port(grpc_url)
    if metrics == "default":
        return f"http://{host}:{port + 1}/metrics"
    if metrics.isdigit():
        return f"http://{host}:{metrics}/metrics"
    if metrics.startswith("http://") or metrics.startswith("https://"):
        return metrics
    split_host_port(metrics)
    return f"http://{metrics}/metrics"


@dataclass(frozen=True)
class Stage:
    """One shape to run. Held levels stop on stability; ramps run for their own duration."""

    shape: LoadShape
    until_stable: bool = True

    def __post_init__(self) -> None:
        if not self.until_stable and self.shape.duration_s is None:
            raise LoadTestConfigError(f"{self.shape.label}: a stage that does not stop on stability needs a duration")


def sweep_concurrency(levels: Sequence[int]) -> tuple[Stage, ...]:
    return tuple(Stage(ClosedShape(FixedConcurrency(c))) for c in levels)


def sweep_rates(rates: Sequence[float], *, process: str = "constant", seed: int = 0) -> tuple[Stage, ...]:
    if process not in ("constant", "poisson"):
        raise LoadTestConfigError(f"arrival process must be constant or poisson, got {process!r}")
    return tuple(
        Stage(OpenShape(ConstantRate(r), process="poisson" if process == "poisson" else "constant", seed=seed + k))
        for k, r in enumerate(rates)
    )


@dataclass(frozen=True)
class RunOptions:
    targets: tuple[Target, ...]
    stages: tuple[Stage, ...]
    images: tuple[bytes, ...]
    request: RequestSpec = field(default_factory=RequestSpec.for_ensemble)
    sender: SenderKind = "raw"
    window_s: float = 3.0
    warmup_s: float = 2.0
    max_duration_s: float = 30.0
    """Measuring time per held level, at most (the warm-up not counted)."""
    max_requests: int | None = None
    """Completions per held level, at most."""
    stability: StabilityRule = field(default_factory=StabilityRule)
    timeout_s: float = 30.0
    channels: int = 1
    max_in_flight: int = 4096
    """Open loop: requests in flight at most; later ones wait (and their wait counts as latency)."""
    corpus: dict[str, object] = field(default_factory=dict)
    error_backoff: bool = True
    """Back off after errors (closed loop: wait before resending; open loop: skip sends); off to measure refusals."""
    error_backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    """Closed loop: a worker's wait after its first failure in a row (jittered), doubling after each further one."""
    error_backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    """Closed loop: a worker's longest wait after failures."""
    error_probe_rps: float = DEFAULT_PROBE_RPS
    """Open loop: sends a second beyond the successes while most answers of the last second are errors."""
    connection: ClientConfig | None = None
    """TLS and headers (the admin key, for the statistics in the secure profile) to every target
    (:mod:`fashionbox.client.connection`); ``None``: plaintext."""

    def __post_init__(self) -> None:
        if not self.targets:
            raise LoadTestConfigError("no target to load")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise LoadTestConfigError(f"target names must be unique, got {names}")
        if not self.stages:
            raise LoadTestConfigError("nothing to run: give concurrency levels, rates or a ramp")
        if not self.images:
            raise LoadTestConfigError("no image to send")
        if not self.window_s > 0 or self.warmup_s < 0 or not self.max_duration_s > 0 or not self.timeout_s > 0:
            raise LoadTestConfigError("window_s, max_duration_s and timeout_s must be positive, warmup_s >= 0")
        if self.max_requests is not None and self.max_requests < 1:
            raise LoadTestConfigError(f"max_requests must be positive, got {self.max_requests}")
        if self.max_in_flight < 1 or self.channels < 1:
            raise LoadTestConfigError("max_in_flight and channels must be positive")
        self.backoff_settings()  # raises LoadTestConfigError for bad error backoff values

    def backoff_settings(self) -> BackoffSettings:
        return BackoffSettings(
            enabled=self.error_backoff,
            initial_s=self.error_backoff_initial_s,
            max_s=self.error_backoff_max_s,
            probe_rps=self.error_probe_rps,
        )

    def settings(self) -> RunSettings:
        return RunSettings(
            plan=tuple(stage.shape.label for stage in self.stages),
            window_s=self.window_s,
            warmup_s=self.warmup_s,
            max_duration_s=self.max_duration_s,
            max_requests=self.max_requests,
            stability=self.stability,
            sender=self.sender,
            corpus=dict(self.corpus),
            model=self.request.model,
            timeout_s=self.timeout_s,
            error_backoff=self.backoff_settings(),
        )


# -- load generation ----------------------------------------------------------------------------------------


class Probe(Protocol):
    """What the runner needs from the server side: a snapshot at every window boundary."""

    async def open(self) -> None: ...

    async def snapshot(self, t_s: float) -> ServerSnapshot: ...

    async def close(self) -> None: ...


class _Phase:
    """One stage against one target: generates the load, records windows, snapshots the server."""

    def __init__(
        self,
        stage: Stage,
        sender: Sender,
        probe: Probe,
        options: RunOptions,
        bytes_of: list[int],
        counter: Iterator[int],
    ) -> None:
        self.stage = stage
        self.shape = stage.shape
        self.sender = sender
        self.probe = probe
        self.options = options
        self.bytes_of = bytes_of
        self.counter = counter
        warmup = options.warmup_s
        self.recorder = WindowRecorder(
            warmup_s=warmup, window_s=options.window_s, level_at=lambda t: self.shape.level_at(max(t - warmup, 0.0))
        )
        self.snapshots: dict[int, ServerSnapshot] = {}
        self.cpu_at: dict[int, tuple[float, float]] = {}
        self.stopping = False
        self.stopped = asyncio.Event()
        self.client_errors = 0
        self.in_flight: set[asyncio.Task[None]] = set()
        self.t0 = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time() - self.t0

    async def _one(self, index: int, t_start: float) -> str | None:
        """Send request ``index`` and record its answer; its status (None: success)."""
        try:
            status = await self.sender.send(index)
        except Exception as exc:  # a sender bug must cost one request, not the run
            status = f"CLIENT_{type(exc).__name__}"
            if not self.client_errors:
                logger.warning("the sender raised instead of returning a status: %r", exc)
            self.client_errors += 1
        t_done = self.now()
        self.recorder.record(
            t_done_s=t_done,
            latency_s=t_done - t_start,
            status=status,
            bytes_sent=self.bytes_of[index % len(self.bytes_of)],
        )
        return status

    async def _back_off(self, delay_s: float) -> None:
        """Wait ``delay_s`` (less if the phase stops meanwhile) and record the wait."""
        t_start = self.now()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), delay_s)
        finally:
            self.recorder.record_backoff(t_s=t_start, backoff_s=self.now() - t_start)

    # closed loop: workers keep ``concurrency_at(t)`` requests in flight.
    async def _closed(self, shape: ClosedShape) -> None:
        warmup = self.options.warmup_s
        workers: dict[int, asyncio.Task[None]] = {}

        settings = self.options.backoff_settings()
        rng = random.Random(shape.label)

        async def worker(k: int) -> None:
            backoff = settings.for_worker(rng)
            while not self.stopping and k < shape.concurrency_at(max(self.now() - warmup, 0.0)):
                status = await self._one(next(self.counter), self.now())
                if backoff is None:
                    continue
                if status is None:
                    backoff.succeeded()
                elif not self.stopping:
                    await self._back_off(backoff.failed())

        try:
            while not self.stopping:
                wanted = shape.concurrency_at(max(self.now() - warmup, 0.0))
                for k in range(wanted):
                    task = workers.get(k)
                    if task is None or task.done():
                        workers[k] = asyncio.ensure_future(worker(k))
                # Fixed levels never change; ramps are checked often enough for whole-worker steps.
                await asyncio.sleep(0.05 if shape.duration_s is not None else 0.25)
        finally:
            self.in_flight.update(t for t in workers.values() if not t.done())

    # open loop: requests leave at their scheduled times whatever happened to earlier ones.
    def _schedule(self, shape: OpenShape) -> Iterator[float]:
        warmup = self.options.warmup_s
        if warmup > 0:
            first = OpenShape(ConstantRate(max(shape.level_at(0.0), 1e-9)), shape.process, shape.seed + 7919)
            for t in first.send_times():
                if t >= warmup:
                    break
                yield t
        for t in shape.send_times():
            yield warmup + t

    async def _open(self, shape: OpenShape) -> None:
        assert self.loop is not None
        loop = self.loop
        slots = asyncio.Semaphore(self.options.max_in_flight)
        gate = self.options.backoff_settings().gate()

        async def one(index: int, t_sched: float) -> None:
            try:
                status = await self._one(index, t_sched)
                if gate is not None:
                    gate.answered(self.now(), ok=status is None)
            finally:
                slots.release()

        behind = 0
        for t_sched in self._schedule(shape):
            if self.stopping:
                break
            delay = t_sched - self.now()
            if delay > 0:
                behind = 0
                await asyncio.sleep(delay)
                if self.stopping:
                    break
            else:
                behind += 1
                if behind % 32 == 0:  # far behind schedule: still let responses in
                    await asyncio.sleep(0)
            if gate is not None and not gate.allows(self.now()):
                self.recorder.record_skipped_send(t_s=self.now())
                continue
            await slots.acquire()
            t_sent = self.now()
            if gate is not None:
                gate.sent(t_sent)
            self.recorder.record_send_lag(t_sent_s=t_sent, lag_s=t_sent - t_sched)
            task = loop.create_task(one(next(self.counter), t_sched))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def _snapshot(self, boundary: int) -> None:
        self.cpu_at[boundary] = (self.now(), time.process_time())
        self.snapshots[boundary] = await self.probe.snapshot(self.now())

    def _level_windows(self, windows: Sequence[Window]) -> list[Window]:
        """The trailing run of windows at the same level as the last one."""
        if not windows:
            return []
        level = windows[-1].level
        run = list(itertools.takewhile(lambda w: w.level == level, reversed(windows)))
        return run[::-1]

    async def run(self, label: str, target: str, listener: Listener | None) -> list[Point]:
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        options = self.options
        shape = self.shape
        generator = self.loop.create_task(self._closed(shape) if isinstance(shape, ClosedShape) else self._open(shape))
        end_s = options.warmup_s + shape.duration_s if shape.duration_s is not None else math.inf
        boundary = 0
        completed_windows = 0
        try:
            while True:
                next_boundary_s = self.recorder.boundary_s(boundary)
                await asyncio.sleep(max(next_boundary_s - self.now(), 0.0))
                if generator.done():
                    generator.result()  # raise what broke the generator
                await self._snapshot(boundary)
                windows = self.recorder.complete_windows(next_boundary_s + 1e-9)
                completed_windows = boundary
                if boundary > 0 and listener is not None:
                    w = windows[boundary - 1].summary()
                    level_run = [x.summary() for x in self._level_windows(windows)]
                    listener(
                        WindowMeasured(
                            target,
                            label,
                            boundary - 1,
                            w.level,
                            w.throughput_rps,
                            w.latency.p50_ms,
                            w.latency.p99_ms,
                            sum(w.errors.values()),
                            check_stability(level_run, options.stability).stable,
                            self.now(),
                        )
                    )
                if self._should_stop(windows, next_boundary_s, end_s):
                    break
                boundary += 1
        finally:
            self.stopping = True
            self.stopped.set()
            await self._drain(generator)
        self.recorder.truncate(completed_windows)
        return self._points(target)

    def _should_stop(self, windows: Sequence[Window], now_s: float, end_s: float) -> bool:
        options = self.options
        if now_s + 1e-6 >= end_s:
            return True
        if not self.stage.until_stable:
            return False
        measured = now_s - options.warmup_s
        if measured + 1e-6 >= options.max_duration_s:
            return True
        if options.max_requests is not None and sum(w.completed for w in windows) >= options.max_requests:
            return True
        level_run = [w.summary() for w in self._level_windows(windows)]
        return check_stability(level_run, options.stability).stable

    async def _drain(self, generator: asyncio.Task[None]) -> None:
        generator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await generator
        pending = [t for t in self.in_flight if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=min(self.options.timeout_s, _DRAIN_TIMEOUT_S))
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    # -- points ---------------------------------------------------------------------------------------

    def _points(self, target: str) -> list[Point]:
        windows = self.recorder.windows
        groups: list[list[Window]] = []
        for window in windows:
            if groups and groups[-1][-1].level == window.level:
                groups[-1].append(window)
            else:
                groups.append([window])
        ramp = not self.stage.until_stable and not isinstance(
            getattr(self.shape, "profile", None), (FixedConcurrency, ConstantRate)
        )
        return [self._point(target, group, ramp) for group in groups if group]

    def _point(self, target: str, group: list[Window], ramp: bool) -> Point:
        rule = self.options.stability
        summaries = [w.summary() for w in group]
        verdict = check_stability(summaries, rule)
        chosen = group[-rule.windows :] if verdict.stable else group
        measured = aggregate(chosen)
        first, last = chosen[0].index, chosen[-1].index + 1
        notes = []
        if isinstance(self.shape, OpenShape) and isinstance(self.shape.profile, RateLine):
            notes.append("line ramp: one window, the rate changed during it")
        elif not verdict.stable:
            notes.append(("ramp step " if ramp else "") + (verdict.note or "never stabilised"))
        before, after = self.snapshots.get(first), self.snapshots.get(last)
        server: tuple[ModelBreakdown, ...] = ()
        if before is not None and after is not None and before.models is not None and after.models is not None:
            server = tuple(diff_statistics(before.models, after.models))
        metrics_samples = [self.snapshots[b].metrics for b in range(first, last + 1) if b in self.snapshots]
        harness = self._harness(first, last, measured.send_lag.value_at_ms(99.0))
        if harness.saturated:
            notes.append(harness.note)
        shape = self.shape
        level = group[-1].level
        load = (
            LoadLevel("closed", level, ramp=ramp)
            if isinstance(shape, ClosedShape)
            else LoadLevel("open", level, process=shape.process, ramp=ramp)
        )
        expected = level * measured.duration_s
        # Poisson counts vary by sqrt(n): only a shortfall beyond three of those is the server's.
        if load.mode == "open" and measured.ok < min(0.95 * expected, expected - 3 * math.sqrt(expected)):
            notes.append(f"throughput {measured.throughput_rps:.1f} req/s is below the offered {level:g} req/s")
        worker_s = level * measured.duration_s if load.mode == "closed" else 0.0
        notes += backoff_notes(backoff_s=measured.backoff_s, skipped_sends=measured.skipped_sends, worker_s=worker_s)
        errors = measured.errors
        return Point(
            target=target,
            load=load,
            duration_s=measured.duration_s,
            windows_used=len(chosen),
            throughput_rps=measured.throughput_rps,
            latency=measured.latency.summary(),
            errors=errors,
            requests=measured.ok + sum(errors.values()),
            bytes_sent=measured.bytes_sent,
            stable=verdict.stable,
            note="; ".join(notes),
            server=server,
            metrics=summarise_metrics(metrics_samples),
            harness=harness,
            windows=tuple(summaries),
            throughput_spread=verdict.throughput_spread,
            latency_spread=verdict.latency_spread,
            backoff_s=measured.backoff_s,
            skipped_sends=measured.skipped_sends,
        )

    def _harness(self, first: int, last: int, send_lag_p99_ms: float) -> HarnessUsage:
        start, end = self.cpu_at.get(first), self.cpu_at.get(last)
        cpu = math.nan
        if start is not None and end is not None and end[0] > start[0]:
            cpu = (end[1] - start[1]) / (end[0] - start[0])
        lagging = math.isfinite(send_lag_p99_ms) and send_lag_p99_ms > _SATURATED_SEND_LAG_MS
        busy = math.isfinite(cpu) and cpu >= SATURATED_CPU_FRACTION
        note = ""
        if busy or lagging:
            reasons = []
            if busy:
                reasons.append(f"the harness used {cpu:.0%} of a core")
            if lagging:
                reasons.append(f"requests left up to {send_lag_p99_ms:.1f} ms late (p99)")
            note = " and ".join(reasons) + ": the figures may measure the load generator, not the server"
        return HarnessUsage(cpu, send_lag_p99_ms, busy or lagging, note)


# -- targets and the whole run ---------------------------------------------------------------------------


async def check_ready(url: str, model: str, timeout_s: float, connection: ClientConfig | None = None) -> None:
    """Raise :class:`TargetUnavailable` unless ``model`` is ready on ``url`` (within ``timeout_s``)."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    from fashionbox.client.connection import grpc_security

    security = grpc_security(connection)
    client = grpcclient.InferenceServerClient(url, creds=security.credentials,
                                              channel_args=list(security.options) or None)
    try:
        ready = await client.is_model_ready(model, client_timeout=timeout_s, headers=security.headers or None)
    except InferenceServerException as exc:
        raise TargetUnavailable(f"{url} did not answer: {exc}") from exc
    finally:
        await client.close()
    if not ready:
        raise TargetUnavailable(f"model {model!r} is not ready on {url}")


async def run_target(
    target: Target,
    stages: Sequence[Stage],
    options: RunOptions,
    listener: Listener | None = None,
    *,
    sender: Sender | None = None,
    probe: Probe | None = None,
) -> TargetReport:
    """Run every stage against one target.

    ``sender`` and ``probe`` replace the gRPC ones (the transport seam: unit tests pass fakes and
    need no server); by default the target's readiness is checked first.
    """
    if sender is None:
        await check_ready(target.url, options.request.model, min(options.timeout_s, 10.0), options.connection)
        sender = make_sender(
            options.sender,
            options.request,
            target.url,
            options.images,
            timeout_s=options.timeout_s,
            channels=options.channels,
            threads=max(8, _max_concurrency(stages)),
            connection=options.connection,
        )
    bytes_of = [len(serialise_request(options.request, image)) for image in options.images]
    if probe is None:
        probe = ServerProbe(target.url, target.metrics_url, connection=options.connection)
    counter = itertools.count()
    points: list[Point] = []
    await sender.open()
    await probe.open()
    try:
        for k, stage in enumerate(stages):
            label = stage.shape.label
            if listener is not None:
                listener(StageStarted(target.name, label, k, len(stages)))
            phase = _Phase(stage, sender, probe, options, bytes_of, counter)
            for point in await phase.run(label, target.name, listener):
                points.append(point)
                if listener is not None:
                    listener(PointMeasured(point))
    finally:
        await probe.close()
        await sender.close()
    return TargetReport(target.name, target.url, tuple(points), model=options.request.model)


def _max_concurrency(stages: Sequence[Stage]) -> int:
    return max((s.shape.max_concurrency for s in stages if isinstance(s.shape, ClosedShape)), default=1)


async def run_async(options: RunOptions, listener: Listener | None = None) -> Report:
    targets = []
    for target in options.targets:
        targets.append(await run_target(target, options.stages, options, listener))
    return Report(
        settings=options.settings(), targets=tuple(targets), created_unix=time.time(), environment=_environment()
    )


def run(options: RunOptions, listener: Listener | None = None) -> Report:
    """Run the plan against every target in turn and return the report (no capacity plan; see capacity.py)."""
    return asyncio.run(run_async(options, listener))


def _environment() -> dict[str, object]:
    import os
    import platform

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
