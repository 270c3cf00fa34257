"""Load spread over several processes: the split, the checks, exact merging, and a real embedded Triton.

The integration tests use the session's stand-in repository (``client_servers.py``), so they measure
the harness, not a model: two load processes against a real server, and a target that does not
answer, which must fail fast and leave no process behind.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import random
import time
from typing import Any

import pytest

from fashionbox.loadtest import LoadTestConfigError, LoadTestError, TargetUnavailable, measure_concurrency
from fashionbox.loadtest.parallel import (
    WorkerFigures,
    measure_concurrency_parallel,
    point_from_figures,
    split_concurrency,
)
from fashionbox.loadtest.stats import LatencyHistogram


def _histogram(values_us: list[int]) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values_us:
        h.record_us(v)
    return h


def _latencies(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    return [round(rng.lognormvariate(9.0, 0.7)) for _ in range(count)]  # ~8 ms with a long tail


def _figures(values_us: list[int], errors: dict[str, int], cpu_s: float = 0.5) -> WorkerFigures:
    return WorkerFigures(_histogram(values_us).encode(), len(values_us), errors, 1000 * len(values_us), cpu_s)


# -- the split and the checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concurrency", "processes", "shares"),
    [(4, 2, (2, 2)), (5, 2, (3, 2)), (7, 3, (3, 2, 2)), (3, 3, (1, 1, 1)), (64, 1, (64,))],
)
def test_concurrency_is_split_into_shares_that_differ_by_at_most_one(
    concurrency: int, processes: int, shares: tuple[int, ...]
) -> None:
    assert split_concurrency(concurrency, processes) == shares


@pytest.mark.parametrize(
    "arguments",
    [
        {"concurrency": 4, "processes": 0, "duration_s": 1.0},
        {"concurrency": 1, "processes": 2, "duration_s": 1.0},
        {"concurrency": 4, "processes": 2, "duration_s": 0.0},
        {"concurrency": 4, "processes": 2, "duration_s": 1.0, "warmup_s": -0.5},
        {"concurrency": 4, "processes": 2, "duration_s": 1.0, "timeout_s": 0.0},
        {"concurrency": 4, "processes": 2, "duration_s": 1.0, "model": ""},
    ],
)
def test_bad_arguments_are_refused_before_any_process_starts(arguments: dict[str, Any]) -> None:
    with pytest.raises(LoadTestConfigError):
        measure_concurrency_parallel("127.0.0.1:1", [b"jpeg"], **arguments)
    assert not multiprocessing.active_children()


def test_a_bad_url_or_no_image_is_refused() -> None:
    with pytest.raises(LoadTestConfigError, match="HOST:PORT"):
        measure_concurrency_parallel("no-port", [b"jpeg"], concurrency=2, duration_s=1, processes=2)
    with pytest.raises(LoadTestConfigError, match="no image"):
        measure_concurrency_parallel("127.0.0.1:1", [], concurrency=2, duration_s=1, processes=2)


def test_measure_concurrency_refuses_zero_processes() -> None:
    with pytest.raises(LoadTestConfigError, match="processes"):
        measure_concurrency("127.0.0.1:1", [b"jpeg"], concurrency=2, duration_s=1, processes=0)


# -- histograms across processes ------------------------------------------------------------------------------


def test_a_histogram_survives_encoding_exactly() -> None:
    original = _histogram(_latencies(1, 5000))
    decoded = LatencyHistogram.decode(original.encode())
    assert decoded.count == original.count == 5000
    assert decoded.summary() == original.summary()  # every percentile, min, max and the exact mean
    assert decoded.encode() == original.encode()


def test_an_empty_histogram_survives_encoding() -> None:
    decoded = LatencyHistogram.decode(LatencyHistogram().encode())
    assert decoded.count == 0 and math.isnan(decoded.summary().p99_ms)


def test_decoding_garbage_fails_with_a_config_error() -> None:
    with pytest.raises(LoadTestConfigError, match="not an encoded latency histogram"):
        LatencyHistogram.decode('{"hdr": "not base64 at all", "sum_us": 3}')


def test_merging_two_processes_gives_the_percentiles_of_all_their_values() -> None:
    a, b = _latencies(2, 3000), _latencies(3, 2000)
    point = point_from_figures(
        [_figures(a, {"UNAVAILABLE": 2}), _figures(b, {"UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 4})],
        concurrency=8,
        processes=2,
        duration_s=2.0,
    )
    assert point.latency == _histogram(a + b).summary()
    assert point.latency.count == 5000
    assert point.throughput_rps == pytest.approx(2500.0)
    assert point.errors == {"DEADLINE_EXCEEDED": 4, "UNAVAILABLE": 3}
    assert point.requests == 5007
    assert point.bytes_sent == 5_000_000
    assert point.load.concurrency == 8 and point.windows_used == 1 and point.stable
    assert point.harness is not None and point.harness.cpu_fraction == pytest.approx(0.5)
    assert not point.harness.saturated
    assert "0.200 ms client CPU per request" in point.harness.note
    doc = json.loads(json.dumps(point.as_dict()))
    assert doc["concurrency"] == 8 and doc["errors"] == 7 and doc["harness"]["send_lag_p99_ms"] is None


def test_a_busy_load_process_marks_the_point_saturated() -> None:
    point = point_from_figures(
        [_figures([1000] * 10, {}, cpu_s=1.9), _figures([1000] * 10, {}, cpu_s=0.2)],
        concurrency=2,
        processes=2,
        duration_s=2.0,
    )
    assert point.harness is not None and point.harness.saturated
    assert "95% of a core" in point.note


# -- against a real server -------------------------------------------------------------------------------------


@pytest.mark.integration
def test_two_load_processes_measure_a_real_server(triton_server: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    from client_servers import image_set, standin_repository

    server = triton_server(standin_repository(tmp_path_factory))
    point = measure_concurrency(
        server.endpoints.grpc, image_set(8), concurrency=4, duration_s=2, warmup_s=0.5, processes=2
    )
    assert point.errors == {} and point.requests > 0 and point.throughput_rps > 0
    assert point.latency.p50_ms <= point.latency.p99_ms
    assert point.latency.count == point.requests == round(point.throughput_rps * point.duration_s)
    assert point.bytes_sent > 0
    assert point.note.startswith("2 load processes")
    assert point.harness is not None and point.harness.cpu_fraction > 0
    json.dumps(point.as_dict())
    assert not multiprocessing.active_children()


def test_a_target_that_does_not_answer_fails_fast_and_leaves_no_process() -> None:
    from fashionbox.server import find_free_port

    started = time.monotonic()
    with pytest.raises(TargetUnavailable, match="did not answer") as caught:
        measure_concurrency_parallel(
            f"127.0.0.1:{find_free_port()}", [b"jpeg"], concurrency=2, duration_s=1, processes=2, timeout_s=5
        )
    assert isinstance(caught.value, LoadTestError)
    assert time.monotonic() - started < 20
    assert not multiprocessing.active_children()
