"""Load-test, capacity-planning and tuning harness for FashionBox (``fashionbox loadtest`` / ``tune``).

Parts, each usable alone (STYLE.md rule 9: runner, load shape, stats, report, CLI apart)::

    shapes.py        load shapes: closed-loop concurrency, open-loop constant/Poisson rates, step/line ramps
    windows.py       measurement windows and the stability rule (last k windows within a tolerance)
    stats.py         HDR-histogram latency percentiles
    corpus.py        what is sent: a folder of images or generated scenes with a size mix
    senders.py       how one request is sent (pre-serialised grpc.aio, tritonclient.grpc.aio, typed client)
    server_stats.py  Triton statistics diffs per composing model, metrics endpoint
    runner.py        run(RunOptions) -> Report; progress as events (events.py)
    report.py        the frozen Report printers see
    capacity.py      best point under an SLO, instances for a target load, cost per million images
    printers.py      terminal tables, progress lines, JSON, CSV;  html.py: the HTML report with plots
    tune.py          coordinate-descent search over dynamic batching and instances, via Triton's repository API
    cli.py           the two subcommands

In code::

    from fashionbox.loadtest import RunOptions, Target, run, sweep_concurrency
    report = run(RunOptions(targets=(Target("cpu", "127.0.0.1:8001"),), stages=sweep_concurrency((1, 4)),
                            images=images))
    report.points[0].throughput_rps, report.points[0].latency.p99_ms
"""

from fashionbox.loadtest.errors import LoadTestConfigError, LoadTestError, TargetUnavailable, TuneError
from fashionbox.loadtest.report import Point, Report
from fashionbox.loadtest.runner import (
    RunOptions,
    Stage,
    Target,
    measure_concurrency,
    run,
    run_async,
    sweep_concurrency,
    sweep_rates,
)

__all__ = [
    "LoadTestConfigError",
    "LoadTestError",
    "Point",
    "Report",
    "RunOptions",
    "Stage",
    "Target",
    "TargetUnavailable",
    "TuneError",
    "measure_concurrency",
    "run",
    "run_async",
    "sweep_concurrency",
    "sweep_rates",
]
