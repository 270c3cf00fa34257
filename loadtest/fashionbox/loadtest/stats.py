"""Latency statistics on an HDR histogram (the ``hdrhistogram`` package): record, merge, summarise.

Latencies are recorded in whole microseconds from 1 µs to 1 hour with 3 significant digits, so a
percentile is exact to 0.1 % of its value whatever the range, memory stays fixed however many
requests are recorded, and windows merge exactly (a point's percentiles are those of the merged
histogram of its windows, never an average of percentiles)::

    h = LatencyHistogram()
    h.record_s(0.0123)                  # a 12.3 ms request
    h.summary().p99_ms
    LatencyHistogram.decode(h.encode())  # the same histogram, e.g. sent back by a load process

The percentile definition is HdrHistogram's: the smallest recorded value (to the histogram's
resolution) at or below which ``p`` % of the values lie.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fashionbox.loadtest.errors import LoadTestConfigError

__all__ = ["PERCENTILES", "LatencyHistogram", "LatencySummary", "percentile_key"]

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000
_SIGNIFICANT_DIGITS = 3


def _hdr() -> Any:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError as exc:  # pragma: no cover - the extra is part of the install
        raise ImportError("the load-test harness needs hdrhistogram: pip install fashionbox-loadtest") from exc
    return HdrHistogram


def percentile_key(percentile: float) -> str:
    """``50.0 -> "p50"``, ``99.9 -> "p99.9"``: the keys used in reports."""
    return f"p{percentile:g}"


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles and moments of one histogram, in milliseconds (NaN when nothing was recorded)."""

    count: int
    min_ms: float
    mean_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float

    @classmethod
    def empty(cls) -> LatencySummary:
        nan = math.nan
        return cls(0, nan, nan, nan, nan, nan, nan, nan, nan)

    def percentile(self, key: str) -> float:
        """The value for a report key: ``"p50"`` ... ``"p99.9"``, ``"mean"``, ``"max"``, ``"min"``."""
        values = self.as_dict()
        if key not in values:
            raise LoadTestConfigError(f"unknown latency statistic {key!r}; expected one of {sorted(values)}")
        return values[key]

    def as_dict(self) -> dict[str, float]:
        return {
            "p50": self.p50_ms,
            "p90": self.p90_ms,
            "p95": self.p95_ms,
            "p99": self.p99_ms,
            "p99.9": self.p999_ms,
            "mean": self.mean_ms,
            "min": self.min_ms,
            "max": self.max_ms,
        }


class LatencyHistogram:
    """A mutable HDR histogram of latencies in microseconds.

    Percentiles follow HdrHistogram's definition but are read with numpy from the histogram's
    counts (the package's own loop is pure Python and too slow to run on the event loop every
    window); the mean is exact, from a running sum.
    """

    __slots__ = ("_h", "_sum_us")

    def __init__(self) -> None:
        self._h = _hdr()(_LOWEST_US, _HIGHEST_US, _SIGNIFICANT_DIGITS)
        self._sum_us = 0

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def record_us(self, value_us: int) -> None:
        # Clamp rather than drop: a value outside the range still counts, at the range's edge.
        value = min(max(int(value_us), _LOWEST_US), _HIGHEST_US)
        self._h.record_value(value)
        self._sum_us += value

    def record_s(self, value_s: float) -> None:
        self.record_us(round(value_s * 1e6))

    def add(self, other: LatencyHistogram) -> None:
        if other.count:
            self._h.add(other._h)
            self._sum_us += other._sum_us

    def encode(self) -> str:
        """This histogram as text (HdrHistogram's compressed V2 blob plus the running sum), for :meth:`decode`."""
        blob = self._h.encode()
        return json.dumps({"hdr": blob.decode("ascii") if isinstance(blob, bytes) else blob, "sum_us": self._sum_us})

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        """The histogram :meth:`encode` wrote: the same counts, so the same percentiles, and the same mean."""
        try:
            fields = json.loads(text)
            blob, sum_us = fields["hdr"], fields["sum_us"]
            if not isinstance(blob, str) or not isinstance(sum_us, int):
                raise TypeError(f"unexpected field types {type(blob).__name__}, {type(sum_us).__name__}")
            out = cls()
            out._h.decode_and_add(blob)
        except Exception as exc:  # json, base64, zlib and hdrh each raise their own kinds
            raise LoadTestConfigError(f"not an encoded latency histogram: {exc}") from exc
        out._sum_us = sum_us
        return out

    @classmethod
    def merged(cls, histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
        out = cls()
        for histogram in histograms:
            out.add(histogram)
        return out

    def _values_at_us(self, percentiles: Sequence[float]) -> list[float]:
        total = self.count
        counts = np.ctypeslib.as_array(self._h.counts)[: self._h.counts_len]
        cumulative = np.cumsum(counts)
        out = []
        for percentile in percentiles:
            # HdrHistogram's rank: round(p/100 * total), at least 1; the value is the bucket's highest.
            rank = max(int(min(percentile, 100.0) * total / 100 + 0.5), 1)
            index = int(np.searchsorted(cumulative, rank, side="left"))
            value = self._h.get_value_from_index(index)
            out.append(float(self._h.get_highest_equivalent_value(value) if percentile else value))
        return out

    def value_at_ms(self, percentile: float) -> float:
        if not self.count:
            return math.nan
        return self._values_at_us([percentile])[0] / 1000.0

    def summary(self) -> LatencySummary:
        if not self.count:
            return LatencySummary.empty()
        p = [v / 1000.0 for v in self._values_at_us(PERCENTILES)]
        return LatencySummary(
            count=self.count,
            min_ms=float(self._h.get_min_value()) / 1000.0,
            mean_ms=self._sum_us / self.count / 1000.0,
            max_ms=float(self._h.get_max_value()) / 1000.0,
            p50_ms=p[0],
            p90_ms=p[1],
            p95_ms=p[2],
            p99_ms=p[3],
            p999_ms=p[4],
        )
