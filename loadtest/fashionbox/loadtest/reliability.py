"""Overload and soak measurements: an open-loop driver that tells accepted from refused, and server RSS.

The load-test runner (``runner.py``) measures what a server sustains; this module measures how it
behaves past that and over time, for ``scripts/overload.py``, ``scripts/soak.py`` and the
reliability tests::

    result = asyncio.run(drive_open_loop(url, images, rate_rps=200, duration_s=60, deadline_s=1.0))
    result.accepted_latency.p99_ms, result.refused, result.refusal_latency.p99_ms, result.deadline_misses
    sampler = RssSampler(server_pid, interval_s=5).start(); ...; sampler.stop(); sampler.growth()

Requests go out at their scheduled times whatever earlier ones did (open loop), each with the call
deadline ``deadline_s``. An accepted request's latency is counted from its *scheduled* time (a
server that stalls is charged for the stall); a refusal's from the moment it was *sent*, since
what is measured there is how fast the server says no. "Refused" means Triton's queue policy or
a server shutting down said no: UNAVAILABLE or RESOURCE_EXHAUSTED. DEADLINE_EXCEEDED is an
accepted request that missed its deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionbox import contract
from fashionbox.loadtest.senders import RequestSpec, serialise_request, status_name
from fashionbox.loadtest.stats import LatencyHistogram, LatencySummary
from fashionbox.server.stubs import children

__all__ = [
    "REFUSAL_STATUSES",
    "OpenLoopResult",
    "RssSample",
    "RssSampler",
    "add_run_arguments",
    "drive_open_loop",
    "images_and_capacity",
    "measure_capacity_rps",
    "process_tree_rss_bytes",
    "refusal_reason",
]

REFUSAL_STATUSES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
"""How Triton says no: a full queue or queue timeout (UNAVAILABLE), out of resources, a server stopping."""
OK = "OK"
_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_START_DELAY_S = 0.05
_MESSAGES_KEPT = 5


def refusal_reason(status: str, details: str) -> str:
    """``queue_full`` / ``queue_timeout`` / ``stopping`` for Triton's words, ``at_capacity`` for the
    ensemble's admission control, else the status name."""
    lowered = details.lower()
    if "maximum queue size" in lowered:
        return "queue_full"
    if "at capacity" in lowered:
        return "at_capacity"
    if "timeout expired" in lowered:
        return "queue_timeout"
    if "stopping" in lowered:
        return "stopping"
    return status


@dataclass(frozen=True)
class OpenLoopResult:
    """What one open-loop run saw. Latencies in milliseconds."""

    rate_rps: float
    duration_s: float
    deadline_s: float
    sent: int
    outcomes: dict[str, int]
    """``"OK"`` or a gRPC status name -> count."""
    accepted_latency: LatencySummary
    """OK responses, from their scheduled send time."""
    refusal_latency: LatencySummary
    """UNAVAILABLE / RESOURCE_EXHAUSTED answers, from the moment they were sent."""
    refusal_latency_by_reason: dict[str, LatencySummary]
    """The same by reason: ``queue_full``, ``queue_timeout``, ``stopping`` or the status name."""
    send_lag: LatencySummary
    """How late the driver itself sent (a driver that cannot keep up shows here, not as latency)."""
    late_ok: int
    """OK responses that arrived after their deadline, counted from the scheduled time."""
    empty_ok: int
    """OK responses without data in every requested output (docs/FIELD_NOTES.md: numpy 2 in the stub)."""
    messages: dict[str, dict[str, int]]
    """Status -> the server's messages under it, with their counts (the first 5 different ones)."""

    @property
    def ok(self) -> int:
        return self.outcomes.get(OK, 0)

    @property
    def refused(self) -> int:
        return sum(count for status, count in self.outcomes.items() if status in REFUSAL_STATUSES)

    @property
    def deadline_misses(self) -> int:
        """Accepted requests that did not finish in time: DEADLINE_EXCEEDED answers and late OKs."""
        return self.outcomes.get("DEADLINE_EXCEEDED", 0) + self.late_ok

    @property
    def errors(self) -> int:
        """Answers that are neither OK nor a refusal (nor a missed deadline): should be none."""
        return self.sent - self.ok - self.refused - self.outcomes.get("DEADLINE_EXCEEDED", 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate_rps": self.rate_rps,
            "duration_s": round(self.duration_s, 3),
            "deadline_s": self.deadline_s,
            "sent": self.sent,
            "ok": self.ok,
            "refused": self.refused,
            "errors": self.errors,
            "deadline_misses": self.deadline_misses,
            "late_ok": self.late_ok,
            "empty_ok": self.empty_ok,
            "ok_rps": round(self.ok / self.duration_s, 2) if self.duration_s else 0.0,
            "outcomes": dict(sorted(self.outcomes.items())),
            "messages": {status: dict(said) for status, said in sorted(self.messages.items())},
            "accepted_latency_ms": _rounded(self.accepted_latency.as_dict()),
            "refusal_latency_ms": _rounded(self.refusal_latency.as_dict()),
            "refusal_latency_ms_by_reason": {
                reason: _rounded(summary.as_dict())
                for reason, summary in sorted(self.refusal_latency_by_reason.items())
            },
            "send_lag_ms": _rounded(self.send_lag.as_dict()),
        }


def _rounded(values: dict[str, float]) -> dict[str, float | None]:
    return {key: (None if value != value else round(value, 3)) for key, value in values.items()}


class _Recorder:
    def __init__(self, deadline_s: float, outputs: int) -> None:
        self.deadline_s = deadline_s
        self.outputs = outputs
        self.outcomes: Counter[str] = Counter()
        self.messages: dict[str, Counter[str]] = {}
        self.accepted = LatencyHistogram()
        self.refusals = LatencyHistogram()
        self.refusals_by_reason: dict[str, LatencyHistogram] = {}
        self.lag = LatencyHistogram()
        self.late_ok = 0
        self.empty_ok = 0

    def ok(self, scheduled: float, done: float, response: bytes) -> None:
        from tritonclient.grpc import service_pb2

        self.outcomes[OK] += 1
        latency_s = done - scheduled
        self.accepted.record_s(latency_s)
        if latency_s > self.deadline_s:
            self.late_ok += 1
        message = service_pb2.ModelInferResponse.FromString(response)
        contents = message.raw_output_contents
        if len(contents) != self.outputs or not all(contents):
            self.empty_ok += 1

    def failed(self, status: str, details: str, sent: float, done: float) -> None:
        self.outcomes[status] += 1
        said = self.messages.setdefault(status, Counter())
        if details in said or len(said) < _MESSAGES_KEPT:
            said[details] += 1
        if status in REFUSAL_STATUSES:
            self.refusals.record_s(done - sent)
            reason = refusal_reason(status, details)
            self.refusals_by_reason.setdefault(reason, LatencyHistogram()).record_s(done - sent)


async def drive_open_loop(
    url: str,
    images: Sequence[bytes],
    *,
    rate_rps: float,
    duration_s: float,
    deadline_s: float,
    model: str = contract.ENSEMBLE_MODEL,
    channels: int = 4,
) -> OpenLoopResult:
    """Send ``rate_rps`` requests a second for ``duration_s`` at evenly spaced times; wait for every answer.

    Images are sent in turn from ``images``, each request carrying one, round-robin over
    ``channels`` connections (one HTTP/2 connection carrying hundreds of large requests a second
    queues them in the client, which would be charged to the server). Raises ``ValueError`` for a
    rate, duration or deadline that is not positive.
    """
    import grpc

    for name, value in (("rate_rps", rate_rps), ("duration_s", duration_s), ("deadline_s", deadline_s)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    if not images:
        raise ValueError("no images to send")
    spec = RequestSpec.for_ensemble(model)
    requests = [serialise_request(spec, image) for image in images]
    recorder = _Recorder(deadline_s, len(spec.outputs))
    loop = asyncio.get_running_loop()
    count = max(1, round(rate_rps * duration_s))

    # A distinct option per channel keeps gRPC from sharing one connection between them.
    opened = [
        grpc.aio.insecure_channel(url, options=[*_CHANNEL_OPTIONS, ("fashionbox.channel", k)])
        for k in range(max(1, channels))
    ]
    async with contextlib.AsyncExitStack() as stack:
        for channel in opened:
            await stack.enter_async_context(channel)
        calls = [channel.unary_unary(_MODEL_INFER) for channel in opened]

        async def one(index: int, scheduled: float) -> None:
            sent = loop.time()
            recorder.lag.record_s(max(0.0, sent - scheduled))
            call = calls[index % len(calls)]
            try:
                response = await call(requests[index % len(requests)], timeout=deadline_s)
            except grpc.aio.AioRpcError as exc:
                recorder.failed(status_name(exc.code()), exc.details() or "", sent, loop.time())
                return
            recorder.ok(scheduled, loop.time(), response)

        start = loop.time() + _START_DELAY_S
        tasks: set[asyncio.Task[None]] = set()
        for index in range(count):
            scheduled = start + index / rate_rps
            delay_s = scheduled - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            task = asyncio.create_task(one(index, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sending_ended = loop.time()
        if tasks:
            await asyncio.gather(*tasks)

    return OpenLoopResult(
        rate_rps=rate_rps,
        duration_s=max(sending_ended - start, 1.0 / rate_rps),
        deadline_s=deadline_s,
        sent=count,
        outcomes=dict(recorder.outcomes),
        accepted_latency=recorder.accepted.summary(),
        refusal_latency=recorder.refusals.summary(),
        refusal_latency_by_reason={reason: h.summary() for reason, h in recorder.refusals_by_reason.items()},
        send_lag=recorder.lag.summary(),
        late_ok=recorder.late_ok,
        empty_ok=recorder.empty_ok,
        messages={status: dict(said) for status, said in recorder.messages.items()},
    )


# -- memory --------------------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0  # exited in the meantime
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def process_tree_rss_bytes(pid: int) -> dict[int, int]:
    """Resident memory of ``pid`` and every descendant (tritonserver and its python stubs), by pid."""
    out: dict[int, int] = {}
    pending = [pid]
    while pending:
        current = pending.pop()
        rss = _rss_bytes(current)
        if rss:
            out[current] = rss
        pending.extend(children(current))
    return out


@dataclass(frozen=True)
class RssSample:
    t_s: float
    """Seconds since the sampler started."""
    rss_bytes: int
    """tritonserver and all its descendants together."""
    processes: int


class RssSampler:
    """Samples a process tree's resident memory every ``interval_s`` on a background thread."""

    def __init__(self, pid: int, *, interval_s: float = 5.0) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = 0.0

    def start(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def sample(self) -> RssSample:
        tree = process_tree_rss_bytes(self.pid)
        point = RssSample(round(time.monotonic() - self._started, 3), sum(tree.values()), len(tree))
        self.samples.append(point)
        return point

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> list[RssSample]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return list(self.samples)

    def summary(self, *, baseline_after_s: float = 0.0) -> dict[str, Any]:
        """Start (first sample at or after ``baseline_after_s``, past warm-up), end, peak and growth."""
        usable = [s for s in self.samples if s.t_s >= baseline_after_s] or self.samples
        if not usable:
            return {}
        first, last = usable[0], usable[-1]
        peak = max(s.rss_bytes for s in usable)
        mib = 1024 * 1024
        return {
            "baseline_after_s": baseline_after_s,
            "start_mib": round(first.rss_bytes / mib, 1),
            "end_mib": round(last.rss_bytes / mib, 1),
            "peak_mib": round(peak / mib, 1),
            "growth_percent": round(100.0 * (last.rss_bytes - first.rss_bytes) / first.rss_bytes, 2)
            if first.rss_bytes
            else None,
            "processes": last.processes,
            "samples": len(self.samples),
        }


# -- setting up a run ------------------------------------------------------------------------------------


def measure_capacity_rps(
    url: str, images: Sequence[bytes], *, concurrency: int = 8, duration_s: float = 10.0, timeout_s: float = 30.0
) -> float:
    """The sustainable rate: successful responses a second, closed loop at ``concurrency``.

    Closed loop never queues more than ``concurrency`` requests, so the queue policy does not
    refuse any (at the default concurrency 8 and entry bound 16) and the figure is what the server
    completes.
    """
    from fashionbox.loadtest.level import measure_concurrency

    point = measure_concurrency(
        url, images, concurrency=concurrency, duration_s=duration_s, warmup_s=1.0, timeout_s=timeout_s, metrics=None
    )
    if not point.throughput_rps > 0:
        raise RuntimeError(f"the server answered nothing successfully at concurrency {concurrency}: {point.errors}")
    return float(point.throughput_rps)


def add_run_arguments(parser: argparse.ArgumentParser, *, out: Path, capacity_s: float, url_help: str) -> None:
    """The flags ``scripts/overload.py`` and ``scripts/soak.py`` share: where the server is, how the
    sustainable rate is found, the images, the output file."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--repository", type=Path, help="model repository: start an embedded server on it")
    where.add_argument("--url", help=url_help)
    parser.add_argument("--rate", type=float, help="sustainable rate in requests/s (default: measured)")
    parser.add_argument("--capacity-concurrency", type=int, default=8)
    parser.add_argument("--capacity-s", type=float, default=capacity_s)
    parser.add_argument("--images", type=int, default=16, help="generated JPEG scenes to cycle through")
    parser.add_argument("--image-size", default="1280x960")
    parser.add_argument("--out", type=Path, default=out)


def images_and_capacity(args: argparse.Namespace, url: str) -> tuple[list[bytes], float]:
    """The generated images of :func:`add_run_arguments`' flags, and ``--rate`` or the measured rate."""
    from fashionbox.loadtest.corpus import generated_corpus, parse_size_mix

    images = list(generated_corpus(args.images, parse_size_mix(args.image_size)).images)
    capacity = args.rate
    if capacity is None:
        capacity = measure_capacity_rps(url, images, concurrency=args.capacity_concurrency, duration_s=args.capacity_s)
    return images, float(capacity)
