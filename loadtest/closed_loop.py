"""Closed-loop load: ``concurrency`` workers each send the next image as soon as one returns.

The measuring part of the load-test harness: it produces frozen :class:`LoadPoint` values
and never prints. Requests go through ``tritonclient.grpc.aio`` directly on one channel
(the cheapest path from Python), with the request tensor built by the typed client's pure
code so both send identical bytes::

    point = asyncio.run(run_closed_loop("127.0.0.1:8001", images, concurrency=4, duration_s=10))
    point.throughput_rps, point.latency_ms["p99"]
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fashionbox import contract

__all__ = ["LoadPoint", "run_closed_loop"]

PERCENTILES = (50.0, 90.0, 95.0, 99.0)


@dataclass(frozen=True)
class LoadPoint:
    concurrency: int
    duration_s: float
    requests: int
    errors: dict[str, int]
    throughput_rps: float
    latency_ms: dict[str, float]
    bytes_sent: int
    latencies_ms: tuple[float, ...] = field(repr=False, default=())

    def to_dict(self) -> dict[str, object]:
        return {"concurrency": self.concurrency, "duration_s": round(self.duration_s, 3), "requests": self.requests,
                "errors": dict(self.errors), "throughput_rps": round(self.throughput_rps, 2),
                "latency_ms": {k: round(v, 2) for k, v in self.latency_ms.items()}, "bytes_sent": self.bytes_sent}


def _percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    if not latencies_ms:
        return {f"p{p:g}": float("nan") for p in PERCENTILES}
    values = np.percentile(np.asarray(latencies_ms), PERCENTILES)
    return {f"p{p:g}": float(v) for p, v in zip(PERCENTILES, values, strict=True)}


async def run_closed_loop(url: str, images: Sequence[bytes], *, concurrency: int, duration_s: float,
                          warmup_s: float = 1.0, model: str = contract.ENSEMBLE_MODEL,
                          timeout_s: float = 30.0) -> LoadPoint:
    """Measure one concurrency level for ``duration_s`` after ``warmup_s`` of the same load."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    if concurrency < 1 or duration_s <= 0 or not images:
        raise ValueError("need concurrency >= 1, duration_s > 0 and at least one image")
    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(contract.DETECTIONS.name)]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    sent_bytes = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    def request_for(data: bytes) -> list[object]:
        tensor = grpcclient.InferInput(contract.IMAGE.name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        return [tensor]

    async def worker(offset: int) -> None:
        nonlocal sent_bytes
        i = offset
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            data = images[i % len(images)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                await client.infer(model, request_for(data), outputs=outputs, client_timeout=timeout_s)
                failed = None
            except InferenceServerException as exc:
                failed = str(exc.status() or "UNKNOWN")
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop_at:
                sent_bytes += len(data)
                if failed is None:
                    latencies.append((t1 - t0) * 1000.0)
                else:
                    errors[failed] += 1

    try:
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    finally:
        await client.close()
    return LoadPoint(concurrency, duration_s, len(latencies) + sum(errors.values()), dict(errors),
                     len(latencies) / duration_s, _percentiles(latencies), sent_bytes, tuple(latencies))
