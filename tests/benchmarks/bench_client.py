"""Benchmark: the typed client's added cost over raw ``tritonclient.grpc.aio``, same ensemble, same images.

    .venv/bin/python tests/benchmarks/bench_client.py [--rounds 15] [--duration-s 1.5] [--repository PATH]
                                                       [--out tests/benchmarks/results/client.json]

Both sides run on one event loop against the embedded Triton serving a repository converted from
the shipped weights (or ``--repository``), with the same 640x480 JPEG scenes, in closed loops of
1 and 32 concurrent callers:

- **raw**: what a careful user of ``tritonclient.grpc.aio`` writes: an ``InferInput`` of one BYTES
  element, only ``DETECTIONS`` requested, ``as_numpy`` on the answer (the serialized proto, undecoded);
- **typed**: ``AsyncFashionClient.detect``: input checks, the retry loop, and the answer decoded into
  ``ImageDetections`` dataclasses (more work than raw does);
- **typed detect_many**: the same requests through ``detect_many(max_in_flight=concurrency)``.

Rounds interleave the variants in short runs (their order alternates per round), so drift in the
machine (other jobs on a shared host) hits neighbouring runs alike; the added cost is the median
over rounds of each round's typed-against-raw difference, and the report keeps every run with the
load average it started at. Client and server share the machine's cores, as they would on one
host, so every CPU cycle the client spends is visible; the client's own CPU time per request is
reported too, as the figure least disturbed by other jobs. The goal: the typed client within 5 %
of raw in throughput and in p50 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine, write_report

ROOT = Path(__file__).resolve().parents[2]
GOAL_PCT = 5.0
WARM_UP_S = 2.0

Call = Callable[[bytes], Awaitable[Any]]


@dataclass(frozen=True)
class Run:
    variant: str
    concurrency: int
    round: int
    requests: int
    seconds: float
    throughput_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_us_per_request: float
    """CPU time of this process (all its threads) per request: the client's own cost, free of the
    server's noise. The server runs in other processes."""
    load_average_1m: float


def make_images(count: int) -> list[bytes]:
    """640x480 JPEGs (quality 90) of generated scenes with 1 to 4 garments."""
    from fashionbox.synth import render_scene

    images: list[bytes] = []
    seed = 700_000
    while len(images) < count:
        scene = render_scene(seed, size=(640, 480))
        seed += 1
        if 1 <= len(scene.garments) <= 4:
            images.append(scene.encode(format="JPEG", quality=90))
    return images


async def closed_loop(
    call: Call, images: list[bytes], concurrency: int, duration_s: float
) -> tuple[list[float], float]:
    """``concurrency`` callers, each sending its next image as soon as its last one is answered."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def caller(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            image = images[i % len(images)]
            started = time.perf_counter()
            await call(image)
            latencies.append(time.perf_counter() - started)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return latencies, time.perf_counter() - started


async def detect_many_loop(
    client: Any, images: list[bytes], concurrency: int, duration_s: float
) -> tuple[list[float], float]:
    """One ``detect_many`` call over images handed out until the duration is up.

    Per-image latency is not observable from outside ``detect_many``; the mean time in flight per
    image stands in for it (Little's law: concurrency / throughput).
    """
    stop_at = time.perf_counter() + duration_s

    def until_time_is_up() -> Any:
        i = 0
        while time.perf_counter() < stop_at:
            yield images[i % len(images)]
            i += 1

    started = time.perf_counter()
    outcomes = await client.detect_many(until_time_is_up(), max_in_flight=concurrency)
    seconds = time.perf_counter() - started
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert not failures, failures[:3]
    return [seconds / len(outcomes) * concurrency] * len(outcomes), seconds


def summarize(
    variant: str, concurrency: int, round_: int, latencies: list[float], seconds: float, cpu_s: float, load: float
) -> Run:
    ms = np.asarray(latencies) * 1000
    return Run(
        variant=variant,
        concurrency=concurrency,
        round=round_,
        requests=len(latencies),
        seconds=round(seconds, 3),
        throughput_per_s=round(len(latencies) / seconds, 2),
        p50_ms=round(float(np.percentile(ms, 50)), 3),
        p90_ms=round(float(np.percentile(ms, 90)), 3),
        p99_ms=round(float(np.percentile(ms, 99)), 3),
        client_cpu_us_per_request=round(cpu_s / len(latencies) * 1e6, 1),
        load_average_1m=round(load, 2),
    )


async def benchmark(
    url: str, images: list[bytes], rounds: int, duration_s: float, concurrencies: tuple[int, ...]
) -> list[Run]:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aio_grpcclient

    from fashionbox import contract
    from fashionbox.client import AsyncFashionClient, ClientConfig
    from fashionbox.client._transport import channel_args

    config = ClientConfig(url=url)
    raw_client = aio_grpcclient.InferenceServerClient(url=url, channel_args=channel_args(config))
    typed_client = AsyncFashionClient(config=config)

    async def raw(image: bytes) -> Any:
        tensor = np.empty((1, 1), dtype=np.object_)
        tensor[0, 0] = image
        infer_input = grpcclient.InferInput(contract.IMAGE.name, [1, 1], contract.IMAGE.datatype)
        infer_input.set_data_from_numpy(tensor)
        result = await raw_client.infer(
            contract.ENSEMBLE_MODEL, [infer_input], outputs=[grpcclient.InferRequestedOutput(contract.DETECTIONS.name)]
        )
        return result.as_numpy(contract.DETECTIONS.name)

    async def typed(image: bytes) -> Any:
        return await typed_client.detect(image)

    variants: dict[str, Callable[[int, float], Awaitable[tuple[list[float], float]]]] = {
        "raw": lambda c, seconds: closed_loop(raw, images, c, seconds),
        "typed": lambda c, seconds: closed_loop(typed, images, c, seconds),
        "typed detect_many": lambda c, seconds: detect_many_loop(typed_client, images, c, seconds),
    }
    try:
        for concurrency in concurrencies:  # warm-up: connections, batcher, python-backend stubs
            for run in variants.values():
                await asyncio.wait_for(run(concurrency, WARM_UP_S), timeout=60)
        runs: list[Run] = []
        names = list(variants)
        for round_ in range(1, rounds + 1):
            order = names if round_ % 2 else names[::-1]
            for concurrency in concurrencies:
                for name in order:
                    load = os.getloadavg()[0]
                    cpu_started = time.process_time()
                    latencies, seconds = await variants[name](concurrency, duration_s)
                    cpu_s = time.process_time() - cpu_started
                    run = summarize(name, concurrency, round_, latencies, seconds, cpu_s, load)
                    runs.append(run)
                    print(
                        f"  round {round_}  c={concurrency:<3} {name:<18} {run.throughput_per_s:8.1f} img/s  "
                        f"p50 {run.p50_ms:7.2f} ms  client CPU {run.client_cpu_us_per_request:6.0f} us/img",
                        flush=True,
                    )
        return runs
    finally:
        await raw_client.close()
        await typed_client.aclose()


def medians(runs: list[Run]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for key in sorted({(r.variant, r.concurrency) for r in runs}):
        group = [r for r in runs if (r.variant, r.concurrency) == key]
        table[f"{key[0]} c={key[1]}"] = {
            "variant": key[0],  # type: ignore[dict-item]
            "concurrency": key[1],
            "throughput_per_s": statistics.median(r.throughput_per_s for r in group),
            "p50_ms": statistics.median(r.p50_ms for r in group),
            "p90_ms": statistics.median(r.p90_ms for r in group),
            "p99_ms": statistics.median(r.p99_ms for r in group),
            "client_cpu_us_per_request": statistics.median(r.client_cpu_us_per_request for r in group),
        }
    return table


def overheads(runs: list[Run], concurrencies: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Typed against raw, per round (paired, same conditions), then the median over rounds."""
    result: dict[str, dict[str, float]] = {}
    for variant in ("typed", "typed detect_many"):
        for concurrency in concurrencies:
            throughput, p50, cpu = [], [], []
            for round_ in sorted({r.round for r in runs}):
                (raw,) = [r for r in runs if (r.variant, r.concurrency, r.round) == ("raw", concurrency, round_)]
                (typed,) = [r for r in runs if (r.variant, r.concurrency, r.round) == (variant, concurrency, round_)]
                throughput.append(100 * (raw.throughput_per_s - typed.throughput_per_s) / raw.throughput_per_s)
                p50.append(100 * (typed.p50_ms - raw.p50_ms) / raw.p50_ms)
                cpu.append(typed.client_cpu_us_per_request - raw.client_cpu_us_per_request)
            result[f"{variant} c={concurrency}"] = {
                "throughput_loss_pct": round(statistics.median(throughput), 2),
                "p50_increase_pct": round(statistics.median(p50), 2),
                "client_cpu_added_us_per_request": round(statistics.median(cpu), 1),
            }
    return result


def print_table(table: dict[str, dict[str, float]], costs: dict[str, dict[str, float]]) -> None:
    print(f"\n{'variant':<28}{'img/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'client us/img':>15}")
    for name, row in table.items():
        print(
            f"{name:<28}{row['throughput_per_s']:>10.1f}{row['p50_ms']:>10.2f}{row['p90_ms']:>10.2f}"
            f"{row['p99_ms']:>10.2f}{row['client_cpu_us_per_request']:>15.0f}"
        )
    print(
        f"\n{'added cost over raw (median of paired rounds)':<48}{'throughput':>12}{'p50':>10}   goal <= {GOAL_PCT:g} %"
    )
    for name, row in costs.items():
        latency = "(n/a)" if "detect_many" in name else f"{row['p50_increase_pct']:+.1f} %"
        cpu = f"{row['client_cpu_added_us_per_request']:+.0f} us CPU/img"
        print(f"{name:<48}{-row['throughput_loss_pct']:>+11.1f} %{latency:>10}   {cpu}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--duration-s", type=float, default=1.5, help="seconds per run")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument(
        "--repository", type=Path, help="an existing model repository (default: convert the shipped weights)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results" / "client.json")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (medians over interleaved rounds)")

    from fashionbox.server import ServerConfig, TritonServer, find_free_ports

    concurrencies = (1, 32)
    images = make_images(args.images)
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-client-") as tmp:
        repository = args.repository
        if repository is None:
            from fashionbox.converter import ConvertOptions, convert

            print("converting the shipped weights ...", flush=True)
            repository = convert(ConvertOptions(out=Path(tmp) / "repository")).repository
        grpc_port, http_port, metrics_port = find_free_ports(3)
        config = ServerConfig(
            repository=repository,
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
            log_path=Path(tmp) / "triton.log",
        )
        with TritonServer(config) as server:
            print(f"server ready at {server.endpoints.grpc}; {args.rounds} rounds of {args.duration_s:g} s per run")
            runs = asyncio.run(benchmark(server.endpoints.grpc, images, args.rounds, args.duration_s, concurrencies))

    table = medians(runs)
    costs = overheads(runs, concurrencies)
    print_table(table, costs)
    write_report(args.out, __file__, argv, {
        "benchmark": "typed client overhead over raw tritonclient.grpc.aio",
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration_s,
            "images": len(images),
            "image": "640x480 JPEG q90, generated scenes",
            "concurrencies": list(concurrencies),
            "repository": "given" if args.repository else "converted from the shipped weights",
        },
        "goal_pct": GOAL_PCT,
        "medians": table,
        "added_cost": costs,
        "runs": [asdict(run) for run in runs],
    }, machine_info=machine(cpus=_cpus()))
    print(f"\nwritten {args.out}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


if __name__ == "__main__":
    sys.exit(main())
