"""One closed-loop concurrency level, measured by one process or spread over several.

The one call the benchmarks, the demo and the reliability checks use; it sits above
:mod:`fashionbox.loadtest.runner` (one process) and :mod:`fashionbox.loadtest.parallel` (several),
which builds on the runner.
"""

from __future__ import annotations

from collections.abc import Sequence

from fashionbox import contract
from fashionbox.loadtest.backoff import BackoffSettings
from fashionbox.loadtest.parallel import measure_concurrency_parallel
from fashionbox.loadtest.report import Point
from fashionbox.loadtest.runner import RunOptions, Stage, Target, metrics_url_for, run
from fashionbox.loadtest.senders import RequestSpec
from fashionbox.loadtest.shapes import ClosedShape, FixedConcurrency

__all__ = ["measure_concurrency"]


def measure_concurrency(
    url: str,
    images: Sequence[bytes],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    model: str = contract.ENSEMBLE_MODEL,
    timeout_s: float = 30.0,
    metrics: str | None = "default",
    processes: int = 1,
    backoff: BackoffSettings | None = None,
) -> Point:
    """One closed-loop level held for exactly ``duration_s`` (three windows, stability reported, not awaited).

    ``processes`` above 1 spreads the load over that many processes
    (:func:`~fashionbox.loadtest.parallel.measure_concurrency_parallel`), for servers faster than one
    client process can load: the point then has one window, exact merged percentiles and the CPU of
    all load processes, but no server statistics or metrics (``metrics`` is ignored).
    ``backoff``: how workers back off after errors (default :class:`BackoffSettings`: on).
    """
    backoff = backoff if backoff is not None else BackoffSettings()
    if processes != 1:
        return measure_concurrency_parallel(
            url,
            images,
            concurrency=concurrency,
            duration_s=duration_s,
            processes=processes,
            warmup_s=warmup_s,
            model=model,
            timeout_s=timeout_s,
            backoff=backoff,
        )
    options = RunOptions(
        targets=(Target("target", url, metrics_url_for(url, metrics)),),
        stages=(Stage(ClosedShape(FixedConcurrency(concurrency, hold_s=duration_s)), until_stable=False),),
        images=tuple(images),
        request=RequestSpec.for_ensemble(model),
        window_s=duration_s / 3,
        warmup_s=warmup_s,
        max_duration_s=duration_s,
        timeout_s=timeout_s,
        error_backoff=backoff.enabled,
        error_backoff_initial_s=backoff.initial_s,
        error_backoff_max_s=backoff.max_s,
        error_probe_rps=backoff.probe_rps,
    )
    report = run(options)
    (point,) = report.points
    return point
