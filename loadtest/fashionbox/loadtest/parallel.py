"""One closed-loop level measured by several load processes, for servers faster than one client process.

A request costs the harness's client CPU (about 0.9 ms for a 200 KB JPEG on the raw sender), so one
asyncio process offers roughly 1,000 requests/s at most. This module spreads the concurrency over
``processes`` worker processes, started with ``multiprocessing``'s *spawn* method (gRPC's threads do
not survive a fork), and merges their figures exactly: the point's percentiles are those of the sum
of the workers' HDR histograms, never an average of percentiles::

    point = measure_concurrency_parallel(url, images, concurrency=64, duration_s=10, processes=4)
    point.throughput_rps, point.latency.p99_ms, point.harness.cpu_fraction

How one measurement runs:

1. the concurrency is split into shares that differ by at most one (:func:`split_concurrency`);
2. each process opens its own :class:`~fashionbox.loadtest.senders.RawGrpcSender`, checks the model
   is ready on the target and says so;
3. the parent sends every process one start time a little in the future (``time.monotonic()`` is
   one clock for the whole machine on Linux); each process runs its share of closed-loop workers;
4. requests completing in ``[start, start + warmup_s)`` are warm-up; those completing in the next
   ``duration_s`` are measured; then each process stops issuing, awaits what is in flight (at most
   ``timeout_s``), closes its sender and sends back its :class:`WorkerFigures`.

As in the single-process runner, a worker backs off after a failed request (``backoff``, a
:class:`~fashionbox.loadtest.backoff.BackoffSettings`) so that a refusing or restarting server is
not flooded; the seconds waited come back as the point's ``backoff_s``, with a note.

A process that fails (the target does not answer, an exception) makes the whole measurement raise
:class:`~fashionbox.loadtest.errors.LoadTestError` (:class:`~fashionbox.loadtest.errors.TargetUnavailable`
when the target is unreachable, as in the single-process runner); the parent waits for each step
with a deadline and terminates and joins every process it started, on every path.

Spawned processes import the caller's main module again: a script that calls this at top level
needs the usual ``if __name__ == "__main__":`` guard.

The point's ``harness.cpu_fraction`` is the CPU time of all load processes together per measured
second (cores busy, so it may exceed 1); CPU per request is ``cpu_fraction * duration_s / requests``.
The harness counts as saturated when any one process used 90 % of a core. Server statistics and
metrics are not collected on this path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing
import random
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from fashionbox import contract
from fashionbox.loadtest.backoff import BackoffSettings, backoff_notes
from fashionbox.loadtest.errors import LoadTestConfigError, LoadTestError, TargetUnavailable
from fashionbox.loadtest.report import HarnessUsage, LoadLevel, Point
from fashionbox.loadtest.runner import SATURATED_CPU_FRACTION, check_ready, split_host_port
from fashionbox.loadtest.senders import RawGrpcSender, RequestSpec
from fashionbox.loadtest.stats import LatencyHistogram

__all__ = ["WorkerFigures", "WorkerPlan", "measure_concurrency_parallel", "point_from_figures", "split_concurrency"]

logger = logging.getLogger(__name__)

_START_LEAD_S = 0.25
"""How far in the future the common start is set: time for the start message to reach every process."""
_STARTUP_S = 60.0
"""Spawning a process, importing gRPC and checking readiness, at most (a loaded 2-core machine is slow)."""
_MARGIN_S = 10.0
"""Beyond the load's own end and drain: closing senders, pickling the figures, exiting."""
_EXIT_S = 5.0
"""How long a finished process may take to exit before it is terminated."""
_READY_CHECK_S = 10.0


@dataclass(frozen=True)
class WorkerPlan:
    """What one load process runs (pickled to the spawned process)."""

    index: int
    url: str
    model: str
    images: tuple[bytes, ...]
    concurrency: int
    first_request: int
    """Corpus index of this process's first request, so processes do not send the same images in step."""
    warmup_s: float
    duration_s: float
    timeout_s: float
    backoff: BackoffSettings = field(default_factory=BackoffSettings)


@dataclass(frozen=True)
class WorkerFigures:
    """What one load process measured in the window (sent back to the parent)."""

    histogram: str
    """:meth:`LatencyHistogram.encode` of the successful requests' latencies."""
    ok: int
    errors: dict[str, int]
    bytes_sent: int
    """Request bytes of every request completing in the window, successful or not."""
    cpu_s: float
    """The process's CPU time over the measured window (all its threads, gRPC's included)."""
    backoff_s: float = 0.0
    """Seconds this process's workers waited after errors, waits begun in the window, added up."""


def split_concurrency(concurrency: int, processes: int) -> tuple[int, ...]:
    """``concurrency`` in ``processes`` shares that differ by at most one, larger shares first."""
    if processes < 1:
        raise LoadTestConfigError(f"processes must be at least 1, got {processes}")
    if concurrency < processes:
        raise LoadTestConfigError(f"concurrency {concurrency} cannot keep {processes} load processes busy")
    base, extra = divmod(concurrency, processes)
    return tuple(base + 1 if k < extra else base for k in range(processes))


# -- the load process ----------------------------------------------------------------------------------


class _Window:
    """Sorts completions of one process into warm-up, measured window or after it."""

    def __init__(self, start: float, warmup_s: float, duration_s: float, request_bytes: list[int]) -> None:
        self.begin = start + warmup_s
        self.end = self.begin + duration_s
        self.request_bytes = request_bytes
        self.histogram = LatencyHistogram()
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.bytes_sent = 0
        self.backoff_s = 0.0

    def record_backoff(self, t_start: float, t_end: float) -> None:
        if self.begin <= t_start < self.end:
            self.backoff_s += t_end - t_start

    def record(self, index: int, t_sent: float, t_done: float, status: str | None) -> None:
        if not self.begin <= t_done < self.end:
            return
        self.bytes_sent += self.request_bytes[index % len(self.request_bytes)]
        if status is None:
            self.ok += 1
            self.histogram.record_s(t_done - t_sent)
        else:
            self.errors[status] = self.errors.get(status, 0) + 1


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(t - time.monotonic(), 0.0))


async def _cpu_over(begin: float, end: float, duration_s: float) -> float:
    """CPU seconds of this process between two instants, prorated to exactly ``duration_s``."""
    await _sleep_until(begin)
    t0, cpu0 = time.monotonic(), time.process_time()
    await _sleep_until(end)
    t1, cpu1 = time.monotonic(), time.process_time()
    return (cpu1 - cpu0) * duration_s / (t1 - t0) if t1 > t0 else math.nan


async def _run_plan(plan: WorkerPlan, conn: Connection) -> WorkerFigures:
    sender = RawGrpcSender(RequestSpec.for_ensemble(plan.model), plan.url, plan.images, timeout_s=plan.timeout_s)
    try:
        await sender.open()
        await check_ready(plan.url, plan.model, min(plan.timeout_s, _READY_CHECK_S))
        conn.send(("ready",))
        # Nothing else runs on this loop yet, so blocking on the parent here costs nothing.
        start = conn.recv()
        if start is None:
            raise LoadTestError("the measurement was called off")
        window = _Window(float(start), plan.warmup_s, plan.duration_s, sender.request_bytes)
        counter = itertools.count(plan.first_request)
        client_errors = 0

        rng = random.Random(plan.index)

        async def closed_loop() -> None:
            nonlocal client_errors
            backoff = plan.backoff.for_worker(rng)
            while time.monotonic() < window.end:
                index = next(counter)
                t_sent = time.monotonic()
                try:
                    status = await sender.send(index)
                except Exception as exc:  # a sender bug must cost one request, not the run
                    status = f"CLIENT_{type(exc).__name__}"
                    if not client_errors:
                        logger.warning("the sender raised instead of returning a status: %r", exc)
                    client_errors += 1
                window.record(index, t_sent, time.monotonic(), status)
                if backoff is None:
                    continue
                if status is None:
                    backoff.succeeded()
                else:
                    t_wait = time.monotonic()
                    await asyncio.sleep(min(backoff.failed(), max(window.end - t_wait, 0.0)))
                    window.record_backoff(t_wait, time.monotonic())

        cpu = asyncio.ensure_future(_cpu_over(window.begin, window.end, plan.duration_s))
        await _sleep_until(float(start))
        workers = [asyncio.ensure_future(closed_loop()) for _ in range(plan.concurrency)]
        cpu_s = await cpu
        # The window is over: workers stop issuing; what is in flight gets at most timeout_s to answer.
        _, late = await asyncio.wait(workers, timeout=max(window.end - time.monotonic(), 0.0) + plan.timeout_s)
        for task in late:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await sender.close()
    return WorkerFigures(
        window.histogram.encode(), window.ok, window.errors, window.bytes_sent, cpu_s, window.backoff_s
    )


def _worker_main(plan: WorkerPlan, conn: Connection) -> None:
    """Entry point of a load process: runs the plan and sends ``("result", figures)`` or ``("failed", ...)``."""
    message: tuple[object, ...]
    try:
        message = ("result", asyncio.run(_run_plan(plan, conn)))
    except TargetUnavailable as exc:
        message = ("failed", "unavailable", str(exc))
    except Exception as exc:
        message = ("failed", "error", "".join(traceback.format_exception_only(exc)).strip())
    try:
        conn.send(message)
    except OSError:  # the parent is gone or gave up: nobody to tell
        pass
    finally:
        conn.close()


# -- the parent ----------------------------------------------------------------------------------------------


class _Processes:
    """The load processes and their pipes; ``stop()`` leaves none running whatever happened."""

    def __init__(self, plans: Sequence[WorkerPlan]) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes: list[BaseProcess] = []
        self.conns: list[Connection] = []
        try:
            for plan in plans:
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=_worker_main, args=(plan, child_end), name=f"fashionbox-load-{plan.index}", daemon=True
                )
                try:
                    process.start()
                except BaseException:
                    parent_end.close()
                    raise
                finally:
                    child_end.close()  # the child holds its own copy; EOF reaches us if it dies
                self.conns.append(parent_end)
                self.processes.append(process)
        except BaseException:
            self.stop(grace_s=0.0)
            raise

    def collect(self, deadline: float, step: str) -> list[tuple[Any, ...]]:
        """One message from every process, in process order; raises when one fails, dies or is late."""
        messages: dict[int, tuple[Any, ...]] = {}
        pending = set(range(len(self.processes)))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(str(k) for k in sorted(pending))
                raise LoadTestError(f"load process {names} did not {step} in time")
            wait([self.conns[k] for k in pending] + [self.processes[k].sentinel for k in pending], timeout=remaining)
            for k in sorted(pending):
                # A message is written before its process exits: read the pipe before trusting the sentinel.
                if self.conns[k].poll():
                    try:
                        message = self.conns[k].recv()
                    except EOFError:
                        raise self._died(k, step) from None
                    if message[0] == "failed":
                        _, kind, text = message
                        error = TargetUnavailable if kind == "unavailable" else LoadTestError
                        raise error(f"load process {k}: {text}")
                    messages[k] = message
                    pending.discard(k)
                elif not self.processes[k].is_alive():
                    raise self._died(k, step)
        return [messages[k] for k in range(len(self.processes))]

    def _died(self, k: int, step: str) -> LoadTestError:
        process = self.processes[k]
        process.join(timeout=_EXIT_S)
        return LoadTestError(f"load process {k} exited with code {process.exitcode} before it could {step}")

    def send_all(self, message: object) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(message)

    def stop(self, *, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        for process in self.processes:
            process.join(timeout=max(deadline - time.monotonic(), 0.0))
        for process in self.processes:
            if process.is_alive():
                # Expected when a measurement is abandoned; worth a warning when a finished one overstays.
                logger.log(logging.WARNING if grace_s else logging.DEBUG, "terminating load process %s", process.name)
                process.terminate()
                process.join(timeout=_EXIT_S)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
        for conn in self.conns:
            conn.close()


def measure_concurrency_parallel(
    url: str,
    images: Sequence[bytes],
    *,
    concurrency: int,
    duration_s: float,
    processes: int,
    warmup_s: float = 1.0,
    model: str = contract.ENSEMBLE_MODEL,
    timeout_s: float = 30.0,
    backoff: BackoffSettings | None = None,
) -> Point:
    """One closed-loop level held for ``duration_s``, its load generated by ``processes`` processes.

    ``backoff`` is how workers back off after errors (default :class:`BackoffSettings`: on).

    The point has one window (``windows_used=1``, ``stable=True``: stability is not measured here),
    exact merged percentiles, and ``harness`` with the CPU of all load processes together. Raises
    :class:`LoadTestConfigError` for bad arguments, :class:`TargetUnavailable` when the model is not
    ready on ``url``, :class:`LoadTestError` when a load process fails or overruns its deadline.
    """
    shares = split_concurrency(concurrency, processes)
    if not duration_s > 0 or not warmup_s >= 0 or not timeout_s > 0:
        raise LoadTestConfigError(
            f"duration_s and timeout_s must be positive and warmup_s >= 0, got {duration_s}, {timeout_s}, {warmup_s}"
        )
    if not images:
        raise LoadTestConfigError("no image to send")
    split_host_port(url)
    RequestSpec.for_ensemble(model)  # a bad model name fails here, not in every process
    plans = [
        WorkerPlan(
            index=k,
            url=url,
            model=model,
            images=tuple(images),
            concurrency=share,
            first_request=k * len(images) // processes,
            warmup_s=warmup_s,
            duration_s=duration_s,
            timeout_s=timeout_s,
            backoff=backoff if backoff is not None else BackoffSettings(),
        )
        for k, share in enumerate(shares)
    ]
    figures: list[WorkerFigures] = []
    workers = _Processes(plans)
    try:
        workers.collect(time.monotonic() + _STARTUP_S + min(timeout_s, _READY_CHECK_S), "get ready")
        start = time.monotonic() + _START_LEAD_S
        workers.send_all(start)
        results = workers.collect(start + warmup_s + duration_s + timeout_s + _MARGIN_S, "report its figures")
        figures = [message[1] for message in results]
    except BaseException:
        workers.send_all(None)  # processes still waiting for a start are told to give up
        workers.stop(grace_s=0.0)
        raise
    workers.stop(grace_s=_EXIT_S)
    return point_from_figures(figures, concurrency=concurrency, processes=processes, duration_s=duration_s)


def point_from_figures(
    figures: Sequence[WorkerFigures], *, concurrency: int, processes: int, duration_s: float
) -> Point:
    """The load processes' figures added up into one point: histograms merged, counts and CPU summed."""
    histogram = LatencyHistogram.merged(LatencyHistogram.decode(f.histogram) for f in figures)
    ok = sum(f.ok for f in figures)
    errors: dict[str, int] = {}
    for f in figures:
        for status, count in f.errors.items():
            errors[status] = errors.get(status, 0) + count
    requests = ok + sum(errors.values())
    cpu_s = sum(f.cpu_s for f in figures)
    backoff_s = sum(f.backoff_s for f in figures)
    busiest = max((f.cpu_s / duration_s for f in figures), default=math.nan)
    saturated = math.isfinite(busiest) and busiest >= SATURATED_CPU_FRACTION
    cpu_note = f"{cpu_s / requests * 1000:.3f} ms client CPU per request" if requests else "no request completed"
    if saturated:
        cpu_note += (
            f"; the busiest load process used {busiest:.0%} of a core: "
            "the figures may measure the load generator, not the server"
        )
    return Point(
        target="target",
        load=LoadLevel("closed", float(concurrency)),
        duration_s=float(duration_s),
        windows_used=1,
        throughput_rps=ok / duration_s,
        latency=histogram.summary(),
        errors=dict(sorted(errors.items())),
        requests=requests,
        bytes_sent=sum(f.bytes_sent for f in figures),
        stable=True,
        note="; ".join(
            [f"{processes} load process" + ("es" if processes != 1 else "")]
            + ([cpu_note] if saturated else [])
            + backoff_notes(backoff_s=backoff_s, skipped_sends=0, worker_s=concurrency * duration_s)
        ),
        harness=HarnessUsage(
            cpu_fraction=cpu_s / duration_s, send_lag_p99_ms=math.nan, saturated=saturated, note=cpu_note
        ),
        backoff_s=backoff_s,
    )
