"""Load shapes: how much load to offer at each moment, as pure values (ghz's pacers, locust's shapes).

Two families, one small interface each:

- **closed loop** (:class:`ClosedShape`): ``concurrency_at(t_s)`` requests are kept in flight; a
  worker sends the next request as soon as its previous one returns. :class:`FixedConcurrency`,
  :class:`ConcurrencySteps`, :class:`ConcurrencyLine`.
- **open loop** (:class:`OpenShape`): requests are sent on a schedule that does not wait for
  responses, so a slow server cannot slow the sender down (no coordinated omission); latency is
  measured from the *scheduled* send time. The schedule comes from a rate profile ``rate_at(t_s)``
  through its cumulative count ``Λ(t) = ∫ rate``: request ``n`` is due at ``Λ⁻¹(n)`` for evenly
  spaced (``constant``) arrivals, or at ``Λ⁻¹(E₁ + … + Eₙ)`` with unit-exponential ``Eᵢ`` for
  ``poisson`` arrivals (time rescaling, which is exact for a varying rate too).
  :class:`ConstantRate`, :class:`RateSteps`, :class:`RateLine`.

Usage::

    shape = OpenShape(RateLine(10, 100, duration_s=30), process="poisson", seed=1)
    for t_s in shape.send_times():      # seconds from the start, increasing, ends at 30 s
        ...
    ClosedShape(ConcurrencySteps((1, 2, 4), hold_s=10)).concurrency_at(12.0)   # -> 2

The runner only asks these questions; nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from fashionbox.loadtest.errors import LoadTestConfigError

__all__ = [
    "ArrivalProcess",
    "ClosedShape",
    "ConcurrencyLine",
    "ConcurrencyProfile",
    "ConcurrencySteps",
    "ConstantRate",
    "FixedConcurrency",
    "LoadShape",
    "OpenShape",
    "RateLine",
    "RateProfile",
    "RateSteps",
    "parse_ramp",
]

ArrivalProcess = Literal["constant", "poisson"]
ARRIVAL_PROCESSES: tuple[ArrivalProcess, ...] = ("constant", "poisson")


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise LoadTestConfigError(f"{name} must be a positive number, got {value!r}")


# -- open loop: rate profiles ---------------------------------------------------------------------


class RateProfile(Protocol):
    """A request rate over time (requests per second), with its integral and the integral's inverse."""

    @property
    def duration_s(self) -> float | None:
        """Where the profile ends; None: it never ends (the runner's bounds stop it)."""

    @property
    def label(self) -> str: ...

    def rate_at(self, t_s: float) -> float: ...

    def cumulative(self, t_s: float) -> float:
        """Expected requests sent in ``[0, t_s]``: ``Λ(t)``."""

    def time_of(self, count: float) -> float:
        """``Λ⁻¹(count)``: when the expected count reaches ``count``; ``inf`` if it never does."""

    def level_at(self, t_s: float) -> float:
        """The load level a measurement window starting at ``t_s`` belongs to (steps group windows)."""


@dataclass(frozen=True)
class ConstantRate:
    rate_rps: float
    hold_s: float | None = None

    def __post_init__(self) -> None:
        _positive("rate_rps", self.rate_rps)
        if self.hold_s is not None:
            _positive("hold_s", self.hold_s)

    @property
    def duration_s(self) -> float | None:
        return self.hold_s

    @property
    def label(self) -> str:
        return f"{self.rate_rps:g} req/s"

    def rate_at(self, t_s: float) -> float:
        return self.rate_rps

    def cumulative(self, t_s: float) -> float:
        t = max(t_s, 0.0) if self.hold_s is None else min(max(t_s, 0.0), self.hold_s)
        return self.rate_rps * t

    def time_of(self, count: float) -> float:
        t = max(count, 0.0) / self.rate_rps
        return math.inf if self.hold_s is not None and t >= self.hold_s else t

    def level_at(self, t_s: float) -> float:
        return self.rate_rps


@dataclass(frozen=True)
class RateSteps:
    """Rates held ``hold_s`` each, one after the other (a step ramp); ends after the last."""

    rates_rps: tuple[float, ...]
    hold_s: float

    def __post_init__(self) -> None:
        if not self.rates_rps:
            raise LoadTestConfigError("a step ramp needs at least one rate")
        for rate in self.rates_rps:
            _positive("rate_rps", rate)
        _positive("hold_s", self.hold_s)

    @property
    def duration_s(self) -> float:
        return self.hold_s * len(self.rates_rps)

    @property
    def label(self) -> str:
        return f"steps {self.rates_rps[0]:g}..{self.rates_rps[-1]:g} req/s, {self.hold_s:g} s each"

    def _step(self, t_s: float) -> int:
        return min(max(int(t_s // self.hold_s), 0), len(self.rates_rps) - 1)

    def rate_at(self, t_s: float) -> float:
        return self.rates_rps[self._step(t_s)] if 0 <= t_s < self.duration_s else 0.0

    def level_at(self, t_s: float) -> float:
        return self.rates_rps[self._step(t_s)]

    def _starts(self) -> list[float]:
        # cumulative count at the start of each step
        out, total = [], 0.0
        for rate in self.rates_rps:
            out.append(total)
            total += rate * self.hold_s
        return out

    def cumulative(self, t_s: float) -> float:
        t = min(max(t_s, 0.0), self.duration_s)
        k = min(int(t // self.hold_s), len(self.rates_rps) - 1)
        return self._starts()[k] + self.rates_rps[k] * (t - k * self.hold_s)

    def time_of(self, count: float) -> float:
        if count >= self.cumulative(self.duration_s):
            return math.inf
        starts = self._starts()
        k = max(bisect.bisect_right(starts, max(count, 0.0)) - 1, 0)
        return k * self.hold_s + (max(count, 0.0) - starts[k]) / self.rates_rps[k]


@dataclass(frozen=True)
class RateLine:
    """A rate rising (or falling) linearly from ``start_rps`` to ``end_rps`` over ``duration_s`` (a line ramp)."""

    start_rps: float
    end_rps: float
    ramp_s: float

    def __post_init__(self) -> None:
        _positive("start_rps", self.start_rps)
        _positive("end_rps", self.end_rps)
        _positive("ramp_s", self.ramp_s)

    @property
    def duration_s(self) -> float:
        return self.ramp_s

    @property
    def label(self) -> str:
        return f"line {self.start_rps:g}->{self.end_rps:g} req/s over {self.ramp_s:g} s"

    @property
    def _slope(self) -> float:
        return (self.end_rps - self.start_rps) / self.ramp_s

    def rate_at(self, t_s: float) -> float:
        if not 0 <= t_s < self.ramp_s:
            return 0.0
        return self.start_rps + self._slope * t_s

    def level_at(self, t_s: float) -> float:
        return self.start_rps + self._slope * min(max(t_s, 0.0), self.ramp_s)

    def cumulative(self, t_s: float) -> float:
        t = min(max(t_s, 0.0), self.ramp_s)
        return self.start_rps * t + 0.5 * self._slope * t * t

    def time_of(self, count: float) -> float:
        n = max(count, 0.0)
        if n >= self.cumulative(self.ramp_s):
            return math.inf
        a, b = 0.5 * self._slope, self.start_rps
        if abs(a) < 1e-12:
            return n / b
        # a t² + b t - n = 0, the root in [0, ramp_s]; this form avoids cancellation when a is small.
        return 2.0 * n / (b + math.sqrt(b * b + 4.0 * a * n))


@dataclass(frozen=True)
class OpenShape:
    """Open-loop load: a rate profile and how arrivals are spread (evenly, or as a Poisson process)."""

    profile: RateProfile
    process: ArrivalProcess = "constant"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.process not in ARRIVAL_PROCESSES:
            raise LoadTestConfigError(f"arrival process must be one of {ARRIVAL_PROCESSES}, got {self.process!r}")

    @property
    def kind(self) -> Literal["open"]:
        return "open"

    @property
    def duration_s(self) -> float | None:
        return self.profile.duration_s

    @property
    def label(self) -> str:
        return f"{self.profile.label} ({self.process})"

    def level_at(self, t_s: float) -> float:
        return self.profile.level_at(t_s)

    def send_times(self) -> Iterator[float]:
        """Scheduled send times in seconds from the start, increasing; finite if the profile ends."""
        rng = random.Random(self.seed)
        count = 0.0
        while True:
            t = self.profile.time_of(count)
            if not math.isfinite(t):
                return
            yield t
            count += rng.expovariate(1.0) if self.process == "poisson" else 1.0


# -- closed loop: concurrency profiles ------------------------------------------------------------------


class ConcurrencyProfile(Protocol):
    @property
    def duration_s(self) -> float | None: ...

    @property
    def label(self) -> str: ...

    def concurrency_at(self, t_s: float) -> int: ...

    def level_at(self, t_s: float) -> float: ...


def _check_concurrency(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoadTestConfigError(f"concurrency must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class FixedConcurrency:
    concurrency: int
    hold_s: float | None = None

    def __post_init__(self) -> None:
        _check_concurrency(self.concurrency)
        if self.hold_s is not None:
            _positive("hold_s", self.hold_s)

    @property
    def duration_s(self) -> float | None:
        return self.hold_s

    @property
    def label(self) -> str:
        return f"concurrency {self.concurrency}"

    def concurrency_at(self, t_s: float) -> int:
        return self.concurrency

    def level_at(self, t_s: float) -> float:
        return float(self.concurrency)


@dataclass(frozen=True)
class ConcurrencySteps:
    levels: tuple[int, ...]
    hold_s: float

    def __post_init__(self) -> None:
        if not self.levels:
            raise LoadTestConfigError("a step ramp needs at least one concurrency level")
        for level in self.levels:
            _check_concurrency(level)
        _positive("hold_s", self.hold_s)

    @property
    def duration_s(self) -> float:
        return self.hold_s * len(self.levels)

    @property
    def label(self) -> str:
        return f"concurrency steps {self.levels[0]}..{self.levels[-1]}, {self.hold_s:g} s each"

    def concurrency_at(self, t_s: float) -> int:
        return self.levels[min(max(int(t_s // self.hold_s), 0), len(self.levels) - 1)]

    def level_at(self, t_s: float) -> float:
        return float(self.concurrency_at(t_s))


@dataclass(frozen=True)
class ConcurrencyLine:
    """Concurrency rising linearly (rounded down to whole workers) from ``start`` to ``end`` over ``ramp_s``."""

    start: int
    end: int
    ramp_s: float

    def __post_init__(self) -> None:
        _check_concurrency(self.start)
        _check_concurrency(self.end)
        _positive("ramp_s", self.ramp_s)

    @property
    def duration_s(self) -> float:
        return self.ramp_s

    @property
    def label(self) -> str:
        return f"concurrency line {self.start}->{self.end} over {self.ramp_s:g} s"

    def concurrency_at(self, t_s: float) -> int:
        t = min(max(t_s, 0.0), self.ramp_s)
        value = self.start + (self.end - self.start) * t / self.ramp_s
        return max(1, math.floor(value + 1e-9)) if self.end >= self.start else max(1, math.ceil(value - 1e-9))

    def level_at(self, t_s: float) -> float:
        return float(self.concurrency_at(t_s))


@dataclass(frozen=True)
class ClosedShape:
    profile: ConcurrencyProfile

    @property
    def kind(self) -> Literal["closed"]:
        return "closed"

    @property
    def duration_s(self) -> float | None:
        return self.profile.duration_s

    @property
    def label(self) -> str:
        return self.profile.label

    @property
    def max_concurrency(self) -> int:
        if isinstance(self.profile, FixedConcurrency):
            return self.profile.concurrency
        if isinstance(self.profile, ConcurrencySteps):
            return max(self.profile.levels)
        if isinstance(self.profile, ConcurrencyLine):
            return max(self.profile.start, self.profile.end)
        raise TypeError(f"unknown concurrency profile {self.profile!r}")

    def concurrency_at(self, t_s: float) -> int:
        return self.profile.concurrency_at(t_s)

    def level_at(self, t_s: float) -> float:
        return self.profile.level_at(t_s)


LoadShape = OpenShape | ClosedShape


# -- ramps from the command line ---------------------------------------------------------------------------


def _numbers(text: str, count: int, what: str) -> list[float]:
    parts = text.split(":")
    if len(parts) != count:
        raise LoadTestConfigError(f"{what}: expected {count} numbers separated by ':', got {text!r}")
    try:
        return [float(p) for p in parts]
    except ValueError as exc:
        raise LoadTestConfigError(f"{what}: {exc}") from exc


def _step_levels(start: float, end: float, step: float) -> list[float]:
    _positive("step", step)
    direction = 1.0 if end >= start else -1.0
    levels, value = [], start
    while (value - end) * direction <= 1e-9:
        levels.append(value)
        value += direction * step
    return levels


def _as_int(value: float, what: str) -> int:
    if value != int(value):
        raise LoadTestConfigError(f"{what} must be a whole number, got {value:g}")
    return int(value)


def parse_ramp(text: str, *, process: ArrivalProcess = "constant", seed: int = 0) -> LoadShape:
    """A ramp from its command-line form.

    ``rate:step:START:END:STEP:HOLD_S``, ``rate:line:START:END:RAMP_S``,
    ``concurrency:step:START:END:STEP:HOLD_S``, ``concurrency:line:START:END:RAMP_S``.
    """
    kind, _, rest = text.partition(":")
    form, _, numbers = rest.partition(":")
    if kind not in ("rate", "concurrency") or form not in ("step", "line"):
        raise LoadTestConfigError(
            f"ramp {text!r}: expected rate|concurrency:step:START:END:STEP:HOLD_S "
            "or rate|concurrency:line:START:END:RAMP_S"
        )
    if form == "step":
        start, end, step, hold_s = _numbers(numbers, 4, f"ramp {text!r}")
        levels = _step_levels(start, end, step)
        if kind == "rate":
            return OpenShape(RateSteps(tuple(levels), hold_s), process=process, seed=seed)
        ints = tuple(_as_int(v, f"ramp {text!r}: concurrency") for v in levels)
        return ClosedShape(ConcurrencySteps(ints, hold_s))
    start, end, ramp_s = _numbers(numbers, 3, f"ramp {text!r}")
    if kind == "rate":
        return OpenShape(RateLine(start, end, ramp_s), process=process, seed=seed)
    return ClosedShape(ConcurrencyLine(_as_int(start, "concurrency"), _as_int(end, "concurrency"), ramp_s))
