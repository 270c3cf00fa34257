"""Overload check: twice the sustainable rate for a minute; the server must refuse fast, not queue.

    .venv/bin/python scripts/overload.py --repository artifacts/model_repository     # starts its own server
    .venv/bin/python scripts/overload.py --url 127.0.0.1:8001 --rate 110              # a running server
    .venv/bin/python scripts/overload.py --repository DIR --duration-s 5 --capacity-s 3   # the short CI form

Steps: measure the sustainable rate (closed loop, ``--capacity-concurrency``, ``--capacity-s``)
unless ``--rate`` gives it; send ``--factor`` times that rate, open loop, for ``--duration-s``,
each request with a ``--deadline-s`` deadline; write the figures as JSON to ``--out``.

Checks (exit code 1 if one fails; each is in the JSON under ``checks``):

- no crash: the server is still live (and, when started here, still running) afterwards;
- accepted requests meet their deadline: no DEADLINE_EXCEEDED, no OK later than the deadline;
- nothing but OK and refusals (UNAVAILABLE / RESOURCE_EXHAUSTED), and every OK has its outputs;
- refusals come back fast: p99 under ``--max-refusal-p99-ms`` (10), timed from the send, for the
  entry's refusals, "queue full" and the admission control's "at capacity"
  (``entry_refusals_fast``), and for all (``all_refusals_fast``). A later step refuses only after
  its queue timeout (1 s by default), so without admission control the second fails wherever a
  later step is the bottleneck (the detector, on the CPU target: docs/RELIABILITY.md).

The generator shares the machine with the server; ``send_lag_ms`` in the JSON says whether it kept
its schedule (a p99 lag of several ms means the figures are the machine's, not the server's).
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
DEFAULT_OUT = ROOT / "tests" / "benchmarks" / "results" / "overload.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fashionbox.loadtest.reliability import add_run_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, out=DEFAULT_OUT, capacity_s=10.0, url_help="host:port of a running server's gRPC")
    parser.add_argument("--factor", type=float, default=2.0, help="multiple of the sustainable rate to send")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--deadline-s", type=float, default=5.0, help="request deadline (> the 1 s step timeout)")
    parser.add_argument("--max-refusal-p99-ms", type=float, default=10.0)
    return parser.parse_args(argv)


def server_is_live(url: str) -> bool:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        return bool(client.is_server_live(client_timeout=5.0))
    except InferenceServerException:
        return False
    finally:
        client.close()


def run(args: argparse.Namespace, url: str, server: Any | None) -> dict[str, Any]:
    from fashionbox.loadtest.reliability import drive_open_loop, images_and_capacity

    images, capacity = images_and_capacity(args, url)
    rate = capacity * args.factor
    logging.info("sustainable rate %.1f/s; sending %.1f/s for %g s", capacity, rate, args.duration_s)
    result = asyncio.run(
        drive_open_loop(url, images, rate_rps=rate, duration_s=args.duration_s, deadline_s=args.deadline_s)
    )
    live = server_is_live(url) and (server is None or server.is_alive())
    figures = result.as_dict()
    # The entry's refusals (its queue full, or the admission control's "at capacity") come at once; a
    # later step's only after its queue timeout. Both are checked: the second fails wherever a later
    # step is the bottleneck and admission control is off.
    entry = [result.refusal_latency_by_reason[r] for r in ("queue_full", "at_capacity")
             if r in result.refusal_latency_by_reason]
    checks = {
        "no_crash": live,
        "accepted_meet_deadline": result.deadline_misses == 0,
        "only_ok_or_refused": result.errors == 0 and result.empty_ok == 0,
        "entry_refusals_fast": all(latency.p99_ms < args.max_refusal_p99_ms for latency in entry),
        "all_refusals_fast": result.refused == 0 or result.refusal_latency.p99_ms < args.max_refusal_p99_ms,
    }
    return {
        "what": "open loop at factor x the sustainable rate",
        "created_unix_s": int(time.time()),
        "sustainable_rps": round(capacity, 2),
        "sustainable_measured": args.rate is None,
        "factor": args.factor,
        "max_refusal_p99_ms": args.max_refusal_p99_ms,
        "images": f"{args.images} generated {args.image_size} JPEGs",
        "run": figures,
        "checks": checks,
        "passed": all(checks.values()),
    }


def _p(figures: dict[str, Any], reason: str) -> str:
    latency = figures["refusal_latency_ms_by_reason"].get(reason)
    return f"{latency['p50']}/{latency['p99']}" if latency else "-"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.url:
        report = run(args, args.url, None)
    else:
        from fashionbox.server import running_server

        with (
            tempfile.TemporaryDirectory(prefix="fashionbox-overload-") as logs,
            running_server(args.repository, Path(logs)) as server,
        ):
            report = run(args, server.endpoints.grpc, server)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    run_figures = report["run"]
    print(
        f"sustainable {report['sustainable_rps']}/s, sent {run_figures['rate_rps']:.1f}/s for "
        f"{run_figures['duration_s']} s: {run_figures['ok']} OK ({run_figures['ok_rps']}/s), "
        f"{run_figures['refused']} refused (queue full: p50/p99 {_p(run_figures, 'queue_full')} ms, at capacity: "
        f"{_p(run_figures, 'at_capacity')} ms, queue timeout: {_p(run_figures, 'queue_timeout')} ms), "
        f"accepted p99 {run_figures['accepted_latency_ms']['p99']} ms, {run_figures['deadline_misses']} deadline "
        f"misses, {run_figures['errors']} errors; checks {report['checks']} -> {args.out}"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
