"""Soak: 70 % of the sustainable rate for 30 minutes; no errors, server memory growth under 5 %.

    .venv/bin/python scripts/soak.py --repository artifacts/model_repository            # 30 min, own server
    .venv/bin/python scripts/soak.py --url 127.0.0.1:8001 --server-pid PID --rate 110    # a running server
    .venv/bin/python scripts/soak.py --repository DIR --duration-s 60 --capacity-s 5     # a short try

Steps: measure the sustainable rate (closed loop, ``--capacity-concurrency``, ``--capacity-s``)
unless ``--rate`` gives it; send ``--fraction`` of it (0.7), open loop, for ``--duration-s``
(1800) in segments of ``--segment-s`` (60: one progress line and one JSON entry each), while a
thread samples the resident memory of tritonserver and all its children (the python-backend
stubs) every ``--sample-s`` (5) seconds from ``/proc``. Memory growth is measured from the first
sample after ``--warmup-s`` (120: allocators, caches and ONNX Runtime arenas grow at first) to the
last sample. Writes the figures as JSON to ``--out`` (rewritten after every segment, so an
interrupted soak keeps what it measured).

Checks (exit code 1 if one fails): 0 errors of any kind (refusals and missed deadlines included)
and RSS growth under ``--max-rss-growth-percent`` (5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "benchmarks" / "results" / "soak.json"

logger = logging.getLogger("soak")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fashionbox.loadtest.reliability import add_run_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, out=DEFAULT_OUT, capacity_s=20.0,
                      url_help="host:port of a running server's gRPC endpoint (give --server-pid for RSS)")
    parser.add_argument("--server-pid", type=int, help="tritonserver's pid, with --url")
    parser.add_argument("--fraction", type=float, default=0.7, help="share of the sustainable rate to send")
    parser.add_argument("--duration-s", type=float, default=1800.0)
    parser.add_argument("--segment-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=120.0, help="memory baseline taken after this")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--deadline-s", type=float, default=2.0, help="each request's deadline")
    parser.add_argument("--max-rss-growth-percent", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.url and args.server_pid is None:
        parser.error("--url needs --server-pid to sample the server's memory")
    return args


def soak(args: argparse.Namespace, url: str, server_pid: int) -> dict[str, Any]:
    from fashionbox.loadtest.reliability import RssSampler, drive_open_loop, images_and_capacity

    images, capacity = images_and_capacity(args, url)
    rate = capacity * args.fraction
    report: dict[str, Any] = {
        "what": "open loop at a fraction of the sustainable rate, server RSS sampled",
        "created_unix_s": int(time.time()),
        "sustainable_rps": round(capacity, 2),
        "sustainable_measured": args.rate is None,
        "fraction": args.fraction,
        "rate_rps": round(rate, 2),
        "duration_s": args.duration_s,
        "deadline_s": args.deadline_s,
        "images": f"{args.images} generated {args.image_size} JPEGs",
        "segments": [],
    }
    sampler = RssSampler(server_pid, interval_s=args.sample_s).start()
    started = time.monotonic()
    totals = {"sent": 0, "ok": 0, "errors_any": 0}
    try:
        while (left_s := args.duration_s - (time.monotonic() - started)) > 0.5:
            segment_s = min(args.segment_s, left_s)
            result = asyncio.run(
                drive_open_loop(url, images, rate_rps=rate, duration_s=segment_s, deadline_s=args.deadline_s)
            )
            figures = result.as_dict()
            rss = sampler.samples[-1].rss_bytes / 2**20 if sampler.samples else float("nan")
            segment = {
                "t_s": round(time.monotonic() - started, 1),
                "sent": figures["sent"],
                "ok": figures["ok"],
                "not_ok": figures["sent"] - figures["ok"] + figures["late_ok"] + figures["empty_ok"],
                "outcomes": figures["outcomes"],
                "p50_ms": figures["accepted_latency_ms"]["p50"],
                "p99_ms": figures["accepted_latency_ms"]["p99"],
                "send_lag_p99_ms": figures["send_lag_ms"]["p99"],
                "rss_mib": round(rss, 1),
            }
            report["segments"].append(segment)
            totals["sent"] += segment["sent"]
            totals["ok"] += segment["ok"]
            totals["errors_any"] += segment["not_ok"]
            logger.info(
                "%6.0f s: %d sent, %d not OK, p50 %s ms, p99 %s ms, RSS %.1f MiB",
                segment["t_s"],
                segment["sent"],
                segment["not_ok"],
                segment["p50_ms"],
                segment["p99_ms"],
                rss,
            )
            _finish(report, totals, sampler, args, final=False)
    finally:
        sampler.stop()
    return _finish(report, totals, sampler, args, final=True)


def _finish(
    report: dict[str, Any], totals: dict[str, int], sampler: Any, args: argparse.Namespace, *, final: bool
) -> dict[str, Any]:
    memory = sampler.summary(baseline_after_s=min(args.warmup_s, args.duration_s / 2))
    segments = report["segments"]
    report["totals"] = dict(totals)
    report["latency_ms"] = {
        # Per-segment percentiles; the worst segment's p99 is the figure to quote.
        "p50_median_of_segments": sorted(s["p50_ms"] for s in segments)[len(segments) // 2] if segments else None,
        "p99_worst_segment": max((s["p99_ms"] or 0.0 for s in segments), default=None),
    }
    report["rss"] = memory
    report["rss_samples_mib"] = [[s.t_s, round(s.rss_bytes / 2**20, 1)] for s in sampler.samples]
    growth = memory.get("growth_percent")
    report["checks"] = {
        "zero_errors": totals["errors_any"] == 0 and totals["sent"] > 0,
        "rss_growth_below_limit": growth is not None and growth < args.max_rss_growth_percent,
    }
    report["passed"] = all(report["checks"].values())
    report["complete"] = final
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.url:
        report = soak(args, args.url, args.server_pid)
    else:
        from fashionbox.server import running_server

        with (
            tempfile.TemporaryDirectory(prefix="fashionbox-soak-") as logs,
            running_server(args.repository, Path(logs)) as server,
        ):
            report = soak(args, server.endpoints.grpc, server.pid)
    rss, latency = report["rss"], report["latency_ms"]
    print(
        f"{report['rate_rps']}/s ({args.fraction:.0%} of {report['sustainable_rps']}/s) for {args.duration_s:g} s: "
        f"{report['totals']['sent']} sent, {report['totals']['errors_any']} not OK, "
        f"p50 {latency['p50_median_of_segments']} ms, worst p99 {latency['p99_worst_segment']} ms; "
        f"RSS {rss.get('start_mib')} -> {rss.get('end_mib')} MiB ({rss.get('growth_percent')} %); "
        f"checks {report['checks']} -> {args.out}"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
