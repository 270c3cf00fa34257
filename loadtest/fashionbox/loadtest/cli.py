"""``fashionbox loadtest`` and ``fashionbox tune``: flags in, options out, report printed.

The only module of the harness that prints. ``fashionbox/cli.py`` adds the subcommands with
:func:`add_loadtest_arguments` / :func:`add_tune_arguments` and calls :func:`loadtest_main` /
:func:`tune_main`. Examples::

    fashionbox loadtest --concurrency 1,2,4,8 --json out.json --html out.html
    fashionbox loadtest --rate 20,40,60 --arrivals poisson --slo-p99-ms 150 --target-rps 500 \\
        --target cpu=127.0.0.1:8001 --target gpu=10.0.0.7:8001 --cost-per-hour cpu=0.68 --cost-per-hour gpu=3.06
    fashionbox loadtest --ramp rate:line:5:80:60 --window-s 2
    fashionbox tune --repository artifacts/model_repository --slo-p99-ms 150 --concurrency 4,8 --write
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fashionbox import contract
from fashionbox.loadtest.backoff import DEFAULT_BACKOFF_INITIAL_S, DEFAULT_BACKOFF_MAX_S, DEFAULT_PROBE_RPS
from fashionbox.loadtest.errors import LoadTestConfigError, LoadTestError

if TYPE_CHECKING:
    from fashionbox.loadtest.events import Event, Listener
    from fashionbox.loadtest.runner import Stage
    from fashionbox.loadtest.tune import Trial
    from fashionbox.loadtest.windows import StabilityRule

__all__ = ["add_loadtest_arguments", "add_tune_arguments", "loadtest_main", "tune_main"]

logger = logging.getLogger(__name__)

DEFAULT_URL = f"{contract.DEFAULT_HOST}:{contract.DEFAULT_GRPC_PORT}"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _preferred(text: str) -> tuple[tuple[int, ...], ...]:
    """``"none;4;2,4"`` -> ``((), (4,), (2, 4))``."""
    out = []
    for item in text.split(";"):
        item = item.strip()
        out.append(() if item in ("", "none") else _ints(item))
    return tuple(out)


# -- shared flags ---------------------------------------------------------------------------------------


def _add_measurement_arguments(
    parser: argparse.ArgumentParser, *, duration_s: float, window_s: float, warmup_s: float, tolerance: float
) -> None:
    g = parser.add_argument_group("measurement")
    g.add_argument(
        "--duration-s",
        type=float,
        default=duration_s,
        help=f"longest measuring time per load level, warm-up not counted (default {duration_s:g})",
    )
    g.add_argument("--window-s", type=float, default=window_s, help=f"measurement window (default {window_s:g})")
    g.add_argument(
        "--warmup-s", type=float, default=warmup_s, help=f"unmeasured warm-up per level (default {warmup_s:g})"
    )
    g.add_argument("--max-requests", type=int, help="stop a level after this many responses")
    g.add_argument("--stability-windows", type=int, default=3, help="windows that must agree (default 3)")
    g.add_argument(
        "--stability-tolerance",
        type=float,
        default=tolerance,
        help=f"allowed max/min - 1 over those windows (default {tolerance:g})",
    )
    g.add_argument(
        "--stability-latency",
        default="p50",
        choices=["p50", "p90", "p95", "p99", "mean"],
        help="latency statistic the stability rule checks (default p50)",
    )
    g.add_argument("--timeout-s", type=float, default=30.0, help="per-request deadline (default 30)")
    g.add_argument(
        "--sender",
        choices=["raw", "tritonclient", "typed"],
        default="raw",
        help="raw: pre-serialised requests on grpc.aio (cheapest, default); tritonclient: "
        "tritonclient.grpc.aio; typed: FashionClient in threads",
    )
    c = parser.add_argument_group("corpus")
    c.add_argument("--images", type=Path, metavar="DIR", help="send the images in this folder")
    c.add_argument(
        "--generate", type=int, default=16, metavar="N", help="without --images: generate N fashion scenes (default 16)"
    )
    c.add_argument(
        "--sizes",
        default="640x480:1,1280x960:2,2048x1536:1",
        help="size mix of generated scenes, WxH:WEIGHT,... (default %(default)s)",
    )
    c.add_argument("--corpus-seed", type=int, default=1)
    parser.add_argument("-q", "--quiet", action="store_true", help="no live progress")


def _corpus(args: argparse.Namespace) -> tuple[tuple[bytes, ...], dict[str, object]]:
    from fashionbox.loadtest.corpus import folder_corpus, generated_corpus, parse_size_mix

    if args.images is not None:
        corpus = folder_corpus(args.images, seed=args.corpus_seed)
    else:
        corpus = generated_corpus(args.generate, parse_size_mix(args.sizes), seed=args.corpus_seed)
    return corpus.images, corpus.describe()


def _stability(args: argparse.Namespace) -> StabilityRule:
    from fashionbox.loadtest.windows import StabilityRule

    return StabilityRule(
        windows=args.stability_windows, tolerance=args.stability_tolerance, latency=args.stability_latency
    )


def _progress(quiet: bool) -> Listener | None:
    if quiet:
        return None
    from fashionbox.loadtest.printers import format_event

    def listener(event: Event) -> None:
        print(format_event(event), file=sys.stderr, flush=True)

    return listener


# -- loadtest -------------------------------------------------------------------------------------------------


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    t = parser.add_argument_group("targets")
    t.add_argument("--url", default=DEFAULT_URL, help=f"gRPC HOST:PORT of one target (default {DEFAULT_URL})")
    t.add_argument("--name", default="server", help="the --url target's name in reports (default %(default)s)")
    t.add_argument(
        "--metrics",
        default="default",
        metavar="PORT|HOST:PORT|URL|none",
        help="metrics endpoint of --url (default: the gRPC port + 1, Triton's layout)",
    )
    t.add_argument(
        "--target",
        action="append",
        metavar="NAME=HOST:PORT[,metrics=PORT]",
        help="a named target instead of --url; repeat to compare (e.g. cpu=... gpu=...)",
    )
    t.add_argument("--model", default=contract.ENSEMBLE_MODEL, help="model to load (default %(default)s)")
    t.add_argument("--input-name", default=contract.IMAGE.name, help="its BYTES input (default %(default)s)")
    t.add_argument("--output-name", action="append", help="outputs to ask for (default DETECTIONS)")
    t.add_argument("--channels", type=int, default=1, help="gRPC channels to spread requests over (default 1)")
    s = parser.add_argument_group("load")
    s.add_argument("--concurrency", type=_ints, metavar="LIST", help="closed loop: requests in flight, e.g. 1,2,4,8")
    s.add_argument("--rate", type=_floats, metavar="LIST", help="open loop: requests per second, e.g. 10,20,40")
    s.add_argument(
        "--arrivals",
        choices=["constant", "poisson"],
        default="constant",
        help="open loop: evenly spaced or Poisson arrivals (default constant)",
    )
    s.add_argument(
        "--ramp",
        action="append",
        metavar="SPEC",
        help="rate|concurrency:step:START:END:STEP:HOLD_S or rate|concurrency:line:START:END:RAMP_S",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of Poisson arrivals")
    s.add_argument("--max-in-flight", type=int, default=4096, help="open loop: cap on requests in flight")
    b = parser.add_argument_group("error backoff (so that a server that is down or refusing is not flooded)")
    b.add_argument(
        "--error-backoff-initial-s",
        type=float,
        default=DEFAULT_BACKOFF_INITIAL_S,
        help="closed loop: a worker's wait after a failed request, jittered, doubling while failures "
        "continue, reset by a success (default %(default)s)",
    )
    b.add_argument(
        "--error-backoff-max-s",
        type=float,
        default=DEFAULT_BACKOFF_MAX_S,
        help="closed loop: the longest such wait (default %(default)s)",
    )
    b.add_argument(
        "--error-probe-rps",
        type=float,
        default=DEFAULT_PROBE_RPS,
        help="open loop: while most answers of the last second are errors, skip scheduled sends beyond "
        "the successes plus this many a second (default %(default)s)",
    )
    b.add_argument(
        "--no-error-backoff",
        dest="error_backoff",
        action="store_false",
        help="send on errors as if they were successes: to measure refusals on purpose (overload)",
    )
    _add_measurement_arguments(parser, duration_s=30.0, window_s=3.0, warmup_s=2.0, tolerance=0.10)
    o = parser.add_argument_group("output and capacity planning")
    o.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    o.add_argument("--csv", type=Path, metavar="FILE", help="write one CSV row per point")
    o.add_argument("--html", type=Path, metavar="FILE", help="write an HTML report with plots")
    o.add_argument("--slo-p99-ms", type=float, help="latency SLO for capacity planning")
    o.add_argument("--target-rps", type=float, help="load to plan for (req/s); needs --slo-p99-ms")
    o.add_argument(
        "--cost-per-hour",
        action="append",
        default=[],
        metavar="NAME=USD",
        help="price of one instance of a target per hour; repeatable",
    )
    from fashionbox.client.connection import add_connection_arguments

    add_connection_arguments(parser)


def _stages(args: argparse.Namespace) -> tuple[Stage, ...]:
    from fashionbox.loadtest.runner import Stage, sweep_concurrency, sweep_rates
    from fashionbox.loadtest.shapes import parse_ramp

    stages: list[Stage] = []
    if args.concurrency:
        stages += sweep_concurrency(args.concurrency)
    if args.rate:
        stages += sweep_rates(args.rate, process=args.arrivals, seed=args.seed)
    for text in args.ramp or ():
        stages.append(Stage(parse_ramp(text, process=args.arrivals, seed=args.seed), until_stable=False))
    if not stages:
        stages += sweep_concurrency((1, 2, 4, 8))
    return tuple(stages)


def _window_for(stages: Sequence[Stage], window_s: float) -> float:
    """Step ramps need windows that divide their hold time, so no window straddles two levels."""
    from fashionbox.loadtest.shapes import ConcurrencySteps, RateSteps

    for stage in stages:
        profile = stage.shape.profile
        if isinstance(profile, (RateSteps, ConcurrencySteps)):
            per_hold = max(1, math.ceil(profile.hold_s / window_s - 1e-9))
            adjusted = profile.hold_s / per_hold
            if abs(adjusted - window_s) > 1e-9:
                logger.info("window %.3g s -> %.3g s so that windows divide the ramp's hold", window_s, adjusted)
            window_s = min(window_s, adjusted)
    return window_s


def loadtest_main(args: argparse.Namespace) -> int:
    from fashionbox.client.connection import connection_from_arguments
    from fashionbox.loadtest.capacity import check_cost_targets, parse_costs, plan_capacity
    from fashionbox.loadtest.html import render_html
    from fashionbox.loadtest.printers import format_report, write_csv, write_json
    from fashionbox.loadtest.runner import RunOptions, Target, metrics_url_for, run
    from fashionbox.loadtest.senders import RequestSpec

    try:
        if args.target_rps is not None and args.slo_p99_ms is None:
            raise LoadTestConfigError("--target-rps needs --slo-p99-ms")
        costs = parse_costs(args.cost_per_hour)
        targets = (
            tuple(Target.parse(t) for t in args.target)
            if args.target
            else (Target(args.name, args.url, metrics_url_for(args.url, args.metrics)),)
        )
        check_cost_targets(costs, [t.name for t in targets])
        stages = _stages(args)
        images, corpus = _corpus(args)
        request = RequestSpec(
            args.model, args.input_name, tuple(args.output_name) if args.output_name else (contract.DETECTIONS.name,)
        )
        options = RunOptions(
            targets=targets,
            stages=stages,
            images=images,
            request=request,
            sender=args.sender,
            window_s=_window_for(stages, args.window_s),
            warmup_s=args.warmup_s,
            max_duration_s=args.duration_s,
            max_requests=args.max_requests,
            stability=_stability(args),
            timeout_s=args.timeout_s,
            channels=args.channels,
            max_in_flight=args.max_in_flight,
            corpus=corpus,
            error_backoff=args.error_backoff,
            error_backoff_initial_s=args.error_backoff_initial_s,
            error_backoff_max_s=args.error_backoff_max_s,
            error_probe_rps=args.error_probe_rps,
            connection=connection_from_arguments(args),
        )
        if not args.quiet:
            print(
                f"corpus: {corpus['source']}, mean {corpus['mean_bytes']:,} bytes; "
                f"targets: {', '.join(f'{t.name}={t.url}' for t in targets)}",
                file=sys.stderr,
                flush=True,
            )
        report = run(options, listener=_progress(args.quiet))
        if args.slo_p99_ms is not None:
            report = dataclasses.replace(
                report,
                capacity=plan_capacity(
                    report, slo_p99_ms=args.slo_p99_ms, target_rps=args.target_rps, cost_per_hour=costs
                ),
            )
    except LoadTestError as exc:
        print(f"fashionbox loadtest: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, LoadTestConfigError) else 1
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
        print(f"JSON: {args.json}")
    if args.csv:
        write_csv(report, args.csv)
        print(f"CSV: {args.csv}")
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render_html(report), encoding="utf-8")
        print(f"HTML: {args.html}")
    return 0


# -- tune -------------------------------------------------------------------------------------------------------


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("artifacts/model_repository"),
        help="model repository to tune (served from a temporary copy; default %(default)s)",
    )
    parser.add_argument("--model", default=contract.ENSEMBLE_MODEL, help="model clients call (default %(default)s)")
    parser.add_argument(
        "--models",
        default="",
        help="composing models to tune (default: those of preprocess, detector, attributes, postprocess the "
             "repository has: all four in the steps layout, detector and postprocess in the fused one)",
    )
    parser.add_argument("--instances", type=_ints, default=(1, 2, 3), help="candidate instance counts")
    parser.add_argument(
        "--threads",
        type=_ints,
        default=(1, 2, 4),
        help="candidate runtime threads per instance of the network models (their intra_op_threads, or the torch "
             "runtime's torch_threads; counts above this host's cores are left out; default 1,2,4)",
    )
    parser.add_argument("--max-batch-sizes", type=_ints, default=(1, 2, 4, 8, 16), help="candidate max_batch_size")
    parser.add_argument(
        "--queue-delays-us", type=_ints, default=(0, 500, 2000, 5000), help="candidate max_queue_delay_microseconds"
    )
    parser.add_argument(
        "--preferred-batch-sizes",
        type=_preferred,
        default=((),),
        metavar="LISTS",
        help="candidate preferred batch sizes, ';' between candidates: 'none;4;2,4' (default none)",
    )
    parser.add_argument("--slo-p99-ms", type=float, default=150.0, help="p99 latency limit (default %(default)s)")
    parser.add_argument("--concurrency", type=_ints, default=(4, 8), help="levels each config is measured at")
    parser.add_argument("--max-trials", type=int, default=16, help="configurations to try at most")
    parser.add_argument("--min-gain", type=float, default=0.03, help="improvement that counts (default 3 %%)")
    parser.add_argument(
        "--write",
        action="store_true",
        help="write the recommended configs into --repository (only if the gain holds when re-measured)",
    )
    parser.add_argument(
        "--no-confirm",
        dest="confirm",
        action="store_false",
        help="skip measuring baseline and best again back to back after the search",
    )
    parser.add_argument(
        "--runtime",
        dest="runtimes",
        action="append",
        choices=("onnxruntime/fp32", "openvino/fp32", "openvino/bf16", "torch/fp32"),  # tune.CPU_RUNTIMES
        help="a CPU runtime to search first (repeat the flag for several; default: keep the repository's); "
             "torch/fp32 in a repository converted with --runtime torch",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every trial as JSON")
    parser.add_argument("--server-log", type=Path, metavar="FILE", help="keep the tuning server's log here")
    _add_measurement_arguments(parser, duration_s=12.0, window_s=2.0, warmup_s=1.5, tolerance=0.20)


def tune_main(args: argparse.Namespace) -> int:
    from fashionbox.loadtest.printers import format_trial, format_tune
    from fashionbox.loadtest.tune import TuneOptions, TuneSpace, tune, write_back
    from fashionbox.server import serve_for_tuning
    from fashionbox.server.model_config import CONFIG_FILE

    try:
        space = TuneSpace(
            models=(tuple(m.strip() for m in args.models.split(",") if m.strip())
                    or tuple(m for m in TuneSpace.models if (args.repository / m / CONFIG_FILE).is_file())),
            instances=args.instances,
            threads=args.threads,
            max_batch_sizes=args.max_batch_sizes,
            queue_delays_us=args.queue_delays_us,
            preferred=args.preferred_batch_sizes,
        )
        images, corpus = _corpus(args)
        options = TuneOptions(
            repository=args.repository,
            images=images,
            space=space,
            slo_p99_ms=args.slo_p99_ms,
            concurrency=args.concurrency,
            max_trials=args.max_trials,
            min_gain=args.min_gain,
            window_s=args.window_s,
            warmup_s=args.warmup_s,
            max_duration_s=args.duration_s,
            stability=_stability(args),
            sender=args.sender,
            timeout_s=args.timeout_s,
            model=args.model,
            server_log=args.server_log,
            confirm=args.confirm,
            corpus=corpus,
            runtimes=tuple(args.runtimes or ()),
        )
        if not args.quiet:
            print(
                f"tuning {', '.join(space.models)} in a copy of {args.repository} "
                f"(p99 <= {args.slo_p99_ms:g} ms, concurrency {args.concurrency})",
                file=sys.stderr,
                flush=True,
            )

        def on_trial(trial: Trial) -> None:
            if not args.quiet:
                print(format_trial(trial, args.slo_p99_ms), file=sys.stderr, flush=True)

        report = tune(options, launch=serve_for_tuning, on_trial=on_trial)
        if args.write and report.confirmed:
            written = write_back(args.repository, report.best.config, runtime=report.best.runtime)
            report = dataclasses.replace(report, written=tuple(written))
        elif args.write:
            print("not written: the recommendation's gain was not confirmed", file=sys.stderr)
    except LoadTestError as exc:
        print(f"fashionbox tune: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, LoadTestConfigError) else 1
    print(format_tune(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"JSON: {args.json}")
    return 0
