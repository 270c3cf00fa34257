"""Backing off after errors, so that a load test never floods a server that is down or refusing.

Without it a closed-loop worker answers each fast failure (connection refused, UNAVAILABLE,
RESOURCE_EXHAUSTED) with a new request at once: against a restarting server one run sent 108,424
failing requests and 8.2 GB in 21 s. Two mechanisms, both on by default and both reported:

- closed loop: each worker waits after a failed request before its next send, exponentially
  longer after each consecutive failure (``initial_s``, doubling, capped at ``max_s``, with
  jitter), and not at all once a request succeeds (:class:`ExponentialBackoff`); the time waited
  is reported as ``backoff_s``;
- open loop: while most answers of the last second were errors, a scheduled send is skipped
  unless the sends of that second number fewer than its successes plus ``probe_rps``
  (:class:`ErrorGate`); skipped sends are reported as ``skipped_sends``.

Turn both off (``enabled=False``, ``--no-error-backoff``) to measure refusals on purpose (an
overload measurement); the reliability driver (:mod:`fashionbox.loadtest.reliability`) has its
own open loop and never backs off::

    settings = BackoffSettings(initial_s=0.005, max_s=1.0)
    backoff = settings.for_worker(random.Random(0))   # None when turned off
    delay_s = backoff.failed()                        # after each failure; backoff.succeeded() resets
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from typing import Any

from fashionbox.loadtest.errors import LoadTestConfigError

__all__ = [
    "DEFAULT_BACKOFF_INITIAL_S",
    "DEFAULT_BACKOFF_MAX_S",
    "DEFAULT_PROBE_RPS",
    "BackoffSettings",
    "ErrorGate",
    "ExponentialBackoff",
    "backoff_notes",
]

DEFAULT_BACKOFF_INITIAL_S = 0.005
DEFAULT_BACKOFF_MAX_S = 1.0
DEFAULT_PROBE_RPS = 10.0
_GATE_HORIZON_S = 1.0
"""The open loop's "recent" answers and sends: those of the last second."""


@dataclasses.dataclass(frozen=True)
class BackoffSettings:
    """How the runner backs off after errors (see the module's docstring)."""

    enabled: bool = True
    initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    """Closed loop: wait after a first failure (before jitter); doubles after each further one."""
    max_s: float = DEFAULT_BACKOFF_MAX_S
    """Closed loop: longest wait between two sends of one worker."""
    probe_rps: float = DEFAULT_PROBE_RPS
    """Open loop: sends a second allowed beyond the successes while most answers are errors."""

    def __post_init__(self) -> None:
        for name, value in (("initial_s", self.initial_s), ("max_s", self.max_s), ("probe_rps", self.probe_rps)):
            if not (math.isfinite(value) and value > 0):
                raise LoadTestConfigError(f"error backoff {name} must be positive, got {value!r}")
        if self.max_s < self.initial_s:
            raise LoadTestConfigError(
                f"error backoff max_s ({self.max_s:g}) must be at least initial_s ({self.initial_s:g})"
            )

    def for_worker(self, rng: random.Random) -> ExponentialBackoff | None:
        """One closed-loop worker's backoff; None when backing off is turned off."""
        return ExponentialBackoff(self.initial_s, self.max_s, rng) if self.enabled else None

    def gate(self) -> ErrorGate | None:
        """The open loop's gate; None when backing off is turned off."""
        return ErrorGate(self.probe_rps) if self.enabled else None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ExponentialBackoff:
    """The wait after ``n`` consecutive failures: ``min(max_s, initial_s * 2**(n-1))`` times a jitter in [0.5, 1).

    Half the wait is fixed, so workers that failed together spread out while the wait still grows
    (equal jitter); a success starts over.
    """

    def __init__(self, initial_s: float, max_s: float, rng: random.Random) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.rng = rng
        self.failures = 0

    def failed(self) -> float:
        """Count one more consecutive failure; the seconds to wait before the next send."""
        self.failures += 1
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(self.failures - 1, 64))
        return ceiling * (0.5 + 0.5 * self.rng.random())

    def succeeded(self) -> None:
        self.failures = 0


class ErrorGate:
    """Open loop: whether a scheduled send may leave, given the answers and sends of the last ``horizon_s``.

    While errors are no more than successes every send leaves. Past that, a send leaves only while
    the sends of the horizon number fewer than its successes plus ``probe_rps * horizon_s``: a dead
    server gets ``probe_rps`` requests a second (enough to notice it is back), a server refusing most
    requests gets its successes plus those. Times are seconds on any one clock.
    """

    def __init__(self, probe_rps: float, horizon_s: float = _GATE_HORIZON_S) -> None:
        self.allowance = probe_rps * horizon_s
        self.horizon_s = horizon_s
        self._answers: deque[tuple[float, bool]] = deque()
        self._sends: deque[float] = deque()
        self._ok = 0
        self._failed = 0

    def _forget(self, now_s: float) -> None:
        oldest = now_s - self.horizon_s
        while self._answers and self._answers[0][0] < oldest:
            _, ok = self._answers.popleft()
            if ok:
                self._ok -= 1
            else:
                self._failed -= 1
        while self._sends and self._sends[0] < oldest:
            self._sends.popleft()

    def answered(self, t_s: float, *, ok: bool) -> None:
        self._answers.append((t_s, ok))
        if ok:
            self._ok += 1
        else:
            self._failed += 1

    def sent(self, t_s: float) -> None:
        self._sends.append(t_s)

    def allows(self, now_s: float) -> bool:
        self._forget(now_s)
        if self._failed <= self._ok:
            return True
        return len(self._sends) < self._ok + self.allowance


def backoff_notes(*, backoff_s: float, skipped_sends: int, worker_s: float = 0.0) -> list[str]:
    """What the error backoff did to a point, for its note: a report never hides that it throttled itself.

    ``worker_s`` is the closed loop's worker time (concurrency times duration), for the waited share.
    """
    notes = []
    if backoff_s > 0:
        share = f" ({backoff_s / worker_s:.0%} of their time)" if worker_s > 0 else ""
        notes.append(f"error backoff: workers waited {backoff_s:.2f} s in all{share} before resending after errors")
    if skipped_sends:
        notes.append(
            f"error backoff: {skipped_sends} scheduled sends skipped while most answers were errors, "
            "so the offered rate was not held"
        )
    return notes
