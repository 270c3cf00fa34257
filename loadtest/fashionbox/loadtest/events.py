"""Progress events the runner tells its listener (locust's events): measuring apart from reporting.

The runner calls ``listener(event)`` on its event loop; a listener must return quickly. The CLI's
live display is ``printers.format_event`` on each event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fashionbox.loadtest.report import Point

__all__ = ["Event", "Listener", "PointMeasured", "StageStarted", "WindowMeasured"]


@dataclass(frozen=True)
class StageStarted:
    target: str
    label: str
    index: int
    total: int


@dataclass(frozen=True)
class WindowMeasured:
    target: str
    label: str
    window: int
    level: float
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    stable: bool
    elapsed_s: float


@dataclass(frozen=True)
class PointMeasured:
    point: Point


Event = StageStarted | WindowMeasured | PointMeasured
Listener = Callable[[Event], None]
