"""Benchmark: what the front door (fashionbox.server.front_door, .http_door) costs, with and without it, in one run.

    .venv/bin/python tests/benchmarks/bench_front_door.py [--repository artifacts/model_repository]
        [--rounds 3] [--duration-s 8] [--protocol grpc|http] [--out tests/benchmarks/results/front_door.json]

``fashionbox serve`` runs as an operator runs it, in its own process (the front door lives there, on
its own thread), once with ``--front-door`` and once with ``--no-front-door`` per round, the order
alternating between rounds. Each run: a warm-up, images/s at saturation (closed loop at
``--saturation`` in flight) and p50 / p99 at concurrency 1, both from the load generator of
``fashionbox loadtest`` on the same cores, plus the CPU time of the ``fashionbox serve`` process
itself less its idle rate (the supervisor's polling, measured for 3 s before each level): the front
door's CPU; and of the whole server (that process, tritonserver, its stubs) per request. Medians over
the rounds.
Images: the 1280x960 JPEGs of bench_serving.py. ``--protocol http`` drives the same levels over HTTP
(the door's HTTP side against Triton's own HTTP): threads with one keep-alive connection each, posting
inference requests in the binary data extension, as ``tritonclient.http`` sends them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report
from bench_serving import make_images

ROOT = Path(__file__).resolve().parents[2]
IDLE_S = 3.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU time of ``pid`` and its descendants alive now (tritonserver, its stubs)."""
    from fashionbox.server.stubs import children

    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += _cpu_s(current)
        except (OSError, IndexError):
            continue
        pending.extend(children(current))
    return total


def _serve(repository: Path, folder: Path, front_door: bool) -> tuple[subprocess.Popen[bytes], str, str]:
    from fashionbox.server import find_free_ports

    grpc_port, http_port, metrics_port = find_free_ports(3)
    command = [
        sys.executable, "-m", "fashionbox.server", "--repository", str(repository),
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
        "--front-door" if front_door else "--no-front-door", "--log-file", str(folder / "triton.log"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHIONBOX_")}
    log = (folder / f"serve-{grpc_port}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fashionbox serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return process, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("fashionbox serve was not ready within 120 s")


Load = Callable[[int, float, float], dict[str, Any]]
"""(concurrency, duration_s, warmup_s) -> a point: requests, throughput_rps, latency_ms p50 / p99, errors."""


def _grpc_load(url: str, images: list[bytes]) -> Load:
    from fashionbox.loadtest import measure_concurrency

    def load(concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
        return dict(measure_concurrency(url, images, concurrency=concurrency, duration_s=duration_s,
                                        warmup_s=warmup_s, metrics="none").as_dict())

    return load


def _http_load(address: str, images: list[bytes]) -> Load:
    """A closed loop over HTTP: ``concurrency`` threads, each with its own keep-alive connection."""
    import numpy as np
    import tritonclient.http as httpclient

    from fashionbox import contract

    bodies = []
    for image in images:
        tensor = httpclient.InferInput(contract.IMAGE.name, [1, 1], contract.IMAGE.datatype)
        tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_), binary_data=True)
        body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
        bodies.append((body, json_size))
    host, port = address.rsplit(":", 1)
    path = f"/v2/models/{contract.ENSEMBLE_MODEL}/infer"

    def load(concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
        started = time.monotonic()
        measure_from, stop_at = started + warmup_s, started + warmup_s + duration_s
        latencies: list[list[float]] = [[] for _ in range(concurrency)]
        errors = [0] * concurrency

        def worker(index: int) -> None:
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            sent = index
            while (now := time.monotonic()) < stop_at:
                body, json_size = bodies[sent % len(bodies)]
                sent += concurrency
                try:
                    connection.request("POST", path, body=body, headers={
                        "Inference-Header-Content-Length": str(json_size),
                        "Content-Type": "application/octet-stream"})
                    response = connection.getresponse()
                    response.read()
                    ok = response.status == 200
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = http.client.HTTPConnection(host, int(port), timeout=60)
                    ok = False
                if now >= measure_from and time.monotonic() <= stop_at:
                    if ok:
                        latencies[index].append(1000.0 * (time.monotonic() - now))
                    else:
                        errors[index] += 1
            connection.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done = sorted(latency for per_thread in latencies for latency in per_thread)
        if not done:
            raise RuntimeError(f"no HTTP request answered at concurrency {concurrency} ({sum(errors)} errors)")
        return {"requests": len(done), "throughput_rps": round(len(done) / duration_s, 2), "errors": sum(errors),
                "latency_ms": {"p50": round(float(np.percentile(done, 50)), 2),
                               "p99": round(float(np.percentile(done, 99)), 2)}}

    return load


def _point(load: Load, concurrency: int, duration_s: float, serve_pid: int) -> dict[str, Any]:
    warmup_s = 1.0
    # The serve process also runs the supervisor (readiness polls, /proc scans): a cost per second, not
    # per request, measured idle first and taken off, so what is left is the front door's.
    idle_before, idle_started = _cpu_s(serve_pid), time.monotonic()
    time.sleep(IDLE_S)
    idle_rate = (_cpu_s(serve_pid) - idle_before) / (time.monotonic() - idle_started)
    cpu_before, tree_before, started = _cpu_s(serve_pid), _tree_cpu_s(serve_pid), time.monotonic()
    point = load(concurrency, duration_s, warmup_s)
    elapsed = time.monotonic() - started
    share = 1000.0 * duration_s / elapsed  # CPU time covers the warm-up and set-up too: prorated
    cpu_ms = (_cpu_s(serve_pid) - cpu_before - idle_rate * elapsed) * share
    tree_ms = (_tree_cpu_s(serve_pid) - tree_before) * share
    requests = max(1, int(point.get("requests", 0)))
    return {
        "server_cpu_ms_per_request": round(tree_ms / requests, 3),
        "supervisor_idle_cpu_ms_per_s": round(1000.0 * idle_rate, 2),
        "images_per_s": point["throughput_rps"],
        "p50_ms": point["latency_ms"]["p50"],
        "p99_ms": point["latency_ms"]["p99"],
        "errors": point.get("errors"),
        "serve_process_cpu_ms_per_request": round(cpu_ms / requests, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "artifacts/model_repository")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--saturation", type=int, default=16, help="requests in flight at saturation")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                        help="the protocol the load goes over (http: the door's HTTP side)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/front_door.json")
    args = parser.parse_args(argv)

    images = make_images(args.images)
    runs: dict[str, list[dict[str, Any]]] = {"front_door": [], "direct": []}
    with tempfile.TemporaryDirectory(prefix="fashionbox-front-door-") as tmp:
        for round_index in range(args.rounds):
            order = (True, False) if round_index % 2 == 0 else (False, True)
            for front_door in order:
                process, grpc_url, http_address = _serve(args.repository, Path(tmp), front_door)
                load = _grpc_load(grpc_url, images) if args.protocol == "grpc" else _http_load(http_address, images)
                try:
                    _point(load, 4, 2.0, process.pid)  # warm every instance
                    saturation = _point(load, args.saturation, args.duration_s, process.pid)
                    single = _point(load, 1, args.duration_s, process.pid)
                finally:
                    process.terminate()
                    process.wait(timeout=60)
                name = "front_door" if front_door else "direct"
                runs[name].append({"saturation": saturation, "concurrency_1": single})
                print(f"round {round_index + 1} {name}: {saturation['images_per_s']:.1f} images/s at "
                      f"c={args.saturation}; c=1 p50 {single['p50_ms']:.1f} ms p99 {single['p99_ms']:.1f} ms; "
                      f"serve process {saturation['serve_process_cpu_ms_per_request']:.2f} ms CPU/request",
                      flush=True)

    def median(name: str, level: str, key: str) -> float:
        return round(statistics.median(run[level][key] for run in runs[name]), 3)

    summary: dict[str, Any] = {}
    for name in runs:
        summary[name] = {
            "images_per_s": median(name, "saturation", "images_per_s"),
            "c1_p50_ms": median(name, "concurrency_1", "p50_ms"),
            "c1_p99_ms": median(name, "concurrency_1", "p99_ms"),
            "serve_process_cpu_ms_per_request": median(name, "saturation", "serve_process_cpu_ms_per_request"),
            "server_cpu_ms_per_request": median(name, "saturation", "server_cpu_ms_per_request"),
        }
    direct, door = summary["direct"], summary["front_door"]
    summary["throughput_change_pct"] = round(100.0 * (door["images_per_s"] / direct["images_per_s"] - 1), 1)
    summary["c1_p50_added_ms"] = round(door["c1_p50_ms"] - direct["c1_p50_ms"], 2)
    summary["c1_p99_added_ms"] = round(door["c1_p99_ms"] - direct["c1_p99_ms"], 2)
    # On a CPU-bound server the door's CPU is what it takes from throughput: robust to a noisy machine,
    # where images/s of single runs move by more than the effect.
    added_cpu = door["serve_process_cpu_ms_per_request"]
    summary["front_door_cpu_ms_per_request"] = round(added_cpu, 3)
    summary["front_door_share_of_server_cpu_pct"] = round(100.0 * added_cpu / door["server_cpu_ms_per_request"], 1)
    shown = args.repository.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else Path(shown.name)  # no machine paths
    write_report(args.out, __file__, argv, {"repository": str(shown), "protocol": args.protocol, "rounds": args.rounds,
                                            "duration_s": args.duration_s, "saturation": args.saturation,
                                            "summary": summary, "runs": runs})
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
