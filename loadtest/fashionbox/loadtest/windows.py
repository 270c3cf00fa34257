"""Measurement windows and the stability rule.

After the warm-up, time is cut into windows of ``window_s``; every completed request lands in the
window in which it *completed* (as perf_analyzer counts), with its latency, status and bytes. A load
level is measured until its last ``k`` windows agree (perf_analyzer's rule): for throughput and for
one latency percentile, ``max / min ≤ 1 + tolerance`` over those windows. A level that never gets
there within its time bound is reported with ``stable = False`` and a note saying by how much.

::

    recorder = WindowRecorder(warmup_s=2, window_s=3, level_at=shape.level_at)
    recorder.record(t_done_s=4.1, latency_s=0.020, status=None, bytes_sent=200_000)
    verdict = check_stability(recorder.summaries(), StabilityRule(windows=3, tolerance=0.1))
    point = aggregate(recorder.windows[-3:])     # merged histogram, throughput, errors, bytes
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fashionbox.loadtest.errors import LoadTestConfigError
from fashionbox.loadtest.stats import LatencyHistogram, LatencySummary

__all__ = [
    "Aggregate",
    "StabilityRule",
    "StabilityVerdict",
    "Window",
    "WindowRecorder",
    "WindowSummary",
    "aggregate",
    "check_stability",
]


@dataclass(frozen=True)
class StabilityRule:
    """``windows`` consecutive windows whose throughput and ``latency`` spread ≤ ``tolerance``.

    perf_analyzer's default is 3 windows within 10 %; docs/FIELD_NOTES.md suggests a looser 30 % on a noisy
    2-core machine.
    """

    windows: int = 3
    tolerance: float = 0.10
    latency: str = "p50"

    def __post_init__(self) -> None:
        if self.windows < 2:
            raise LoadTestConfigError(f"stability needs at least 2 windows, got {self.windows}")
        if not (math.isfinite(self.tolerance) and self.tolerance > 0):
            raise LoadTestConfigError(f"stability tolerance must be positive, got {self.tolerance!r}")
        if self.latency not in ("p50", "p90", "p95", "p99", "mean"):
            raise LoadTestConfigError(f"stability latency must be p50, p90, p95, p99 or mean, got {self.latency!r}")


@dataclass
class Window:
    """One window while it fills (mutable; the runner's event loop is its only writer)."""

    index: int
    start_s: float
    end_s: float
    level: float
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    send_lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    backoff_s: float = 0.0
    """Closed loop: seconds workers spent backing off after errors (waits begun in this window)."""
    skipped_sends: int = 0
    """Open loop: scheduled sends skipped because most recent answers were errors."""
    closed: bool = False
    """Set once the window has ended: nothing lands in it any more, so its summary is kept."""
    _summary: WindowSummary | None = field(default=None, repr=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def completed(self) -> int:
        return self.ok + sum(self.errors.values())

    def summary(self) -> WindowSummary:
        if self._summary is not None:
            return self._summary
        summary = WindowSummary(
            index=self.index,
            start_s=self.start_s,
            duration_s=self.duration_s,
            level=self.level,
            ok=self.ok,
            errors=dict(self.errors),
            throughput_rps=self.ok / self.duration_s,
            latency=self.latency.summary(),
            bytes_sent=self.bytes_sent,
            send_lag_p99_ms=self.send_lag.value_at_ms(99.0),
            backoff_s=self.backoff_s,
            skipped_sends=self.skipped_sends,
        )
        if self.closed:
            self._summary = summary
        return summary


@dataclass(frozen=True)
class WindowSummary:
    index: int
    start_s: float
    duration_s: float
    level: float
    ok: int
    errors: dict[str, int]
    throughput_rps: float
    latency: LatencySummary
    bytes_sent: int
    send_lag_p99_ms: float
    """Open loop: how late the sender was against the schedule (99th percentile); NaN in closed loop."""
    backoff_s: float = 0.0
    skipped_sends: int = 0


class WindowRecorder:
    """Sorts completions into windows by completion time, measured from the phase start in seconds."""

    def __init__(self, *, warmup_s: float, window_s: float, level_at: Callable[[float], float]) -> None:
        if warmup_s < 0 or not window_s > 0:
            raise LoadTestConfigError(f"need warmup_s >= 0 and window_s > 0, got {warmup_s}, {window_s}")
        self.warmup_s = warmup_s
        self.window_s = window_s
        self._level_at = level_at
        self.windows: list[Window] = []

    def window_index(self, t_s: float) -> int:
        """The window holding time ``t_s``; -1 during the warm-up."""
        if t_s < self.warmup_s:
            return -1
        return int((t_s - self.warmup_s) // self.window_s)

    def boundary_s(self, index: int) -> float:
        """Start of window ``index`` (its end is the start of ``index + 1``)."""
        return self.warmup_s + index * self.window_s

    def _window(self, index: int) -> Window:
        while len(self.windows) <= index:
            k = len(self.windows)
            start = self.boundary_s(k)
            # A window's load level is the shape's at its middle, so step ramps group windows cleanly.
            self.windows.append(Window(k, start, start + self.window_s, self._level_at(start + self.window_s / 2)))
        return self.windows[index]

    def record(self, *, t_done_s: float, latency_s: float, status: str | None, bytes_sent: int) -> None:
        index = self.window_index(t_done_s)
        if index < 0:
            return
        window = self._window(index)
        window.bytes_sent += bytes_sent
        if status is None:
            window.ok += 1
            window.latency.record_s(latency_s)
        else:
            window.errors[status] += 1

    def record_send_lag(self, *, t_sent_s: float, lag_s: float) -> None:
        index = self.window_index(t_sent_s)
        if index >= 0:
            self._window(index).send_lag.record_s(max(lag_s, 0.0))

    def record_backoff(self, *, t_s: float, backoff_s: float) -> None:
        """A closed-loop worker waited ``backoff_s`` after an error, from ``t_s`` on."""
        index = self.window_index(t_s)
        if index >= 0:
            self._window(index).backoff_s += backoff_s

    def record_skipped_send(self, *, t_s: float) -> None:
        """The open loop did not send a request scheduled at about ``t_s`` (errors dominated)."""
        index = self.window_index(t_s)
        if index >= 0:
            self._window(index).skipped_sends += 1

    def complete_windows(self, now_s: float) -> list[Window]:
        """Windows that have ended by ``now_s`` (including empty ones, which still count)."""
        done = self.window_index(now_s)  # the window ``now`` is in is still open
        if done > 0:
            self._window(done - 1)
        complete = self.windows[: max(done, 0)]
        for window in complete:
            window.closed = True
        return complete

    def truncate(self, count: int) -> None:
        """Drop windows after the first ``count`` (those the phase ended inside of)."""
        del self.windows[count:]


@dataclass(frozen=True)
class StabilityVerdict:
    stable: bool
    throughput_spread: float
    """``max / min - 1`` of the last windows' throughput (inf if one was 0, NaN with too few windows)."""
    latency_spread: float
    note: str = ""


def _spread(values: Sequence[float]) -> float:
    if any(math.isnan(v) for v in values):
        return math.inf
    low, high = min(values), max(values)
    if low <= 0:
        return 0.0 if high == low else math.inf
    return high / low - 1.0


def check_stability(windows: Sequence[WindowSummary], rule: StabilityRule) -> StabilityVerdict:
    """Whether the last ``rule.windows`` windows agree within ``rule.tolerance``."""
    if len(windows) < rule.windows:
        return StabilityVerdict(
            False, math.nan, math.nan, f"only {len(windows)} window(s), the stability rule needs {rule.windows}"
        )
    last = windows[-rule.windows :]
    if all(w.ok == 0 for w in last):
        return StabilityVerdict(False, math.inf, math.inf, "no successful request in the last windows")
    throughput = _spread([w.throughput_rps for w in last])
    latency = _spread([w.latency.percentile(rule.latency) for w in last])
    stable = throughput <= rule.tolerance and latency <= rule.tolerance
    note = ""
    if not stable:
        note = (
            f"not stable: over the last {rule.windows} windows throughput varied {throughput:.0%} and "
            f"{rule.latency} latency {latency:.0%} (tolerance {rule.tolerance:.0%})"
        )
    return StabilityVerdict(stable, throughput, latency, note)


@dataclass(frozen=True)
class Aggregate:
    """Several windows merged: what a point reports."""

    duration_s: float
    ok: int
    errors: dict[str, int]
    bytes_sent: int
    latency: LatencyHistogram
    send_lag: LatencyHistogram
    backoff_s: float = 0.0
    skipped_sends: int = 0

    @property
    def throughput_rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else math.nan


def aggregate(windows: Sequence[Window]) -> Aggregate:
    errors: Counter[str] = Counter()
    for window in windows:
        errors.update(window.errors)
    return Aggregate(
        duration_s=sum(w.duration_s for w in windows),
        ok=sum(w.ok for w in windows),
        errors=dict(errors),
        bytes_sent=sum(w.bytes_sent for w in windows),
        latency=LatencyHistogram.merged(w.latency for w in windows),
        send_lag=LatencyHistogram.merged(w.send_lag for w in windows),
        backoff_s=sum(w.backoff_s for w in windows),
        skipped_sends=sum(w.skipped_sends for w in windows),
    )
