"""Benchmark: how long an idle server takes to stop, as ``TritonServer.stop()`` does it now and as it did before.

    .venv/bin/python tests/benchmarks/bench_stop.py [--repository artifacts/model_repository] [--rounds 5]
        [--no-http] [--out tests/benchmarks/results/stop.json]

Two ways, the order alternating between rounds, each on a fresh server of ``--repository`` (ready, then
left idle for a second):

- ``stop``: ``TritonServer.stop()``: drain the ensemble, unload every other model at once, close the front
  door's HTTP side, SIGTERM (``fashionbox.server.drain``);
- ``before``: what ``stop()`` did until 8 December 2026: drain the ensemble, then SIGTERM with the door's
  HTTP side still open (its idle connections to Triton kept for 0.5 s); Triton's exit then unloads the
  steps itself, looking once a second whether they are gone and whether HTTP connections are still open.
  With ``--no-http`` there was no drain at all: SIGTERM alone.

The figure is the time from the call to the server's exit (the process reaped). Medians over the rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report

ROOT = Path(__file__).resolve().parents[2]


def _stop_before(server: Any) -> None:
    """Drain over HTTP (with HTTP on), then SIGTERM and wait: the door is closed only after the exit."""
    from fashionbox.contract import ADMIN_KEY_NAME
    from fashionbox.server.drain import drain

    if server.config.http:
        (key,) = re.findall(r"--http-restricted-api=\S+?:admin-key=(\S+)", " ".join(server.command))
        drain(server.endpoints.http, timeout_s=server.config.exit_timeout_s, headers={ADMIN_KEY_NAME: key})
    os.kill(server.pid, signal.SIGTERM)
    if server.wait(server.config.exit_timeout_s + 5) is None:
        raise RuntimeError("the server did not exit after SIGTERM")


def _one(repository: Path, log_dir: Path, way: str, http: bool) -> float:
    from fashionbox.server import start_on_free_ports

    server = start_on_free_ports(repository, log_dir, http=http, exit_timeout_s=30)
    try:
        time.sleep(1.0)
        started = time.monotonic()
        if way == "stop":
            code = server.stop()
        else:
            _stop_before(server)
            code = server.stop(timeout_s=0)  # reaps the exited process, closes the door, cleans up
        took_s = time.monotonic() - started
    finally:
        server.stop(timeout_s=0)
    if code != 0:
        raise RuntimeError(f"{way}: the server exited with {code}")
    return took_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "artifacts" / "model_repository")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-http", dest="http", action="store_false", help="servers without HTTP")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results" / "stop.json")
    args = parser.parse_args(argv)

    times: dict[str, list[float]] = {"stop": [], "before": []}
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-stop-") as logs:
        for round_ in range(args.rounds):
            order = ["stop", "before"] if round_ % 2 == 0 else ["before", "stop"]
            for way in order:
                took_s = _one(args.repository, Path(logs), way, args.http)
                times[way].append(round(took_s, 3))
                print(f"round {round_ + 1} {way}: {took_s:.2f} s", flush=True)
    medians = {way: statistics.median(values) for way, values in times.items()}
    report = write_report(args.out, __file__, argv, {
        "repository": args.repository.name if args.repository.is_absolute() else str(args.repository),
        "http": args.http, "rounds": args.rounds, "seconds": times, "median_s": medians,
        "saved_s": round(medians["before"] - medians["stop"], 3)})
    print(f"median: stop() {medians['stop']:.2f} s, before {medians['before']:.2f} s -> {args.out}")
    return 0 if report else 1


if __name__ == "__main__":
    raise SystemExit(main())
