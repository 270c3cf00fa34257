"""Admission control's shared slots: takes, releases, expiry, and several processes at once."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_servers import dark_jpeg, image_set, start_private_server
from onnx_standins import write_standin_repository

from fashionbox.client import ClientConfig, FashionClient, ImageDetections, InvalidImage, RetryPolicy
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.repository import (
    DEFAULT_MAX_IN_FLIGHT,
    ModelScheduling,
    RepositorySettings,
    gpu_scheduling,
    model_configs,
)
from fashionbox.core.admission import AdmissionSlots, slots_path
from fashionbox.core.serving import AdmissionSettings, Parameters
from fashionbox.loadtest.reliability import drive_open_loop
from fashionbox.server import TritonServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_slots_are_taken_until_none_is_left_and_given_back_by_key(tmp_path: Path) -> None:
    slots = AdmissionSlots(tmp_path / "slots", capacity=3, ttl_s=10)

    assert [slots.take([key]) == 1 for key in (1, 2, 3, 4)] == [True, True, True, False]
    assert slots.in_use() == 3
    slots.release([2])
    slots.release([2, 99])  # a key with no slot frees nothing
    assert slots.in_use() == 2 and slots.take([5]) == 1 and slots.take([6]) == 0


def test_take_admits_as_many_as_are_free_under_one_lock(tmp_path: Path) -> None:
    slots = AdmissionSlots(tmp_path / "slots", capacity=5, ttl_s=10)
    assert slots.take([1, 2]) == 2

    assert slots.take([3, 4, 5, 6]) == 3
    assert slots.take([7]) == 0 and slots.in_use() == 5
    assert slots.take([]) == 0


def test_a_slot_never_given_back_frees_itself_after_the_ttl(tmp_path: Path) -> None:
    clock = Clock()
    slots = AdmissionSlots(tmp_path / "slots", capacity=2, ttl_s=5, clock=clock)
    assert slots.take([1, 2]) == 2 and slots.take([3]) == 0

    clock.now += 5.5
    assert slots.in_use() == 0
    assert slots.take([4, 5]) == 2


def test_a_pending_slot_frees_itself_quickly_unless_confirmed_then_lasts_the_ttl(tmp_path: Path) -> None:
    clock = Clock()
    slots = AdmissionSlots(tmp_path / "slots", capacity=3, ttl_s=5, pending_s=1, clock=clock)
    assert slots.take([1, 2, 3]) == 3
    clock.now += 0.5
    slots.confirm([2])  # reached the detector: only the ensemble gets there

    clock.now += 0.6  # 1.1 s after the take: the two unconfirmed slots are free again
    assert slots.in_use() == 1 and slots.take([4, 5]) == 2
    clock.now += 3.8  # 4.4 s after its confirmation
    assert slots.in_use() == 1
    slots.confirm([1])  # its pending slot expired: confirming it takes none
    clock.now += 0.7  # 5.1 s after its confirmation
    assert slots.in_use() == 0


def test_pending_time_must_be_positive_and_at_most_the_ttl(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pending_s"):
        AdmissionSlots(tmp_path / "slots", capacity=1, ttl_s=1, pending_s=2)
    with pytest.raises(ValueError, match="admission_pending_ms"):
        AdmissionSettings(max_in_flight=4, admission_ttl_ms=500, admission_pending_ms=1_000)


def test_processes_opening_the_same_file_share_the_slots(tmp_path: Path) -> None:
    first = AdmissionSlots(tmp_path / "slots", capacity=2, ttl_s=10)
    second = AdmissionSlots(tmp_path / "slots", capacity=2, ttl_s=10)

    assert first.take([1]) == 1 and second.take([2]) == 1
    assert first.take([3]) == 0 and second.take([4]) == 0
    second.release([1])
    assert first.take([5]) == 1


def _hammer(path: str, rounds: int, worker: int, results: mp.Queue) -> None:
    slots = AdmissionSlots(Path(path), capacity=5, ttl_s=60)
    taken = 0
    for round_ in range(rounds):
        key = worker * 1_000_000 + round_ + 1
        if slots.take([key]) == 1:
            taken += 1
            assert slots.in_use() <= 5
            slots.confirm([key])
            slots.release([key])
    results.put(taken)


def test_concurrent_processes_never_hold_more_than_the_capacity(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    results: mp.Queue = context.Queue()
    workers = [context.Process(target=_hammer, args=(str(tmp_path / "slots"), 300, i, results)) for i in range(4)]
    for worker in workers:
        worker.start()
    taken = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)

    assert all(worker.exitcode == 0 for worker in workers)
    assert sum(taken) > 0
    assert AdmissionSlots(tmp_path / "slots", capacity=5, ttl_s=60).in_use() == 0


def test_each_server_and_repository_gets_its_own_slots_file(tmp_path: Path) -> None:
    assert slots_path(tmp_path / "a", 10) != slots_path(tmp_path / "a", 11)
    assert slots_path(tmp_path / "a", 10) != slots_path(tmp_path / "b", 10)
    assert slots_path(tmp_path / "a", 10) == slots_path(tmp_path / "x" / ".." / "a", 10)


def test_capacity_and_ttl_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="capacity"):
        AdmissionSlots(tmp_path / "slots", capacity=0, ttl_s=1)
    with pytest.raises(ValueError, match="ttl_s"):
        AdmissionSlots(tmp_path / "slots", capacity=1, ttl_s=0)


# -- configs ------------------------------------------------------------------------------------------


def test_admission_control_is_on_by_default_in_the_entry_and_the_exit() -> None:
    configs = model_configs(RepositorySettings(), default_label_map())
    for name in ("preprocess", "postprocess"):
        assert configs[name].parameters["max_in_flight"].string_value == str(DEFAULT_MAX_IN_FLIGHT)
    assert gpu_scheduling()["max_in_flight"] > DEFAULT_MAX_IN_FLIGHT


def test_admission_settings_go_to_preprocess_and_postprocess_only_when_on() -> None:
    labels = default_label_map()
    off = model_configs(RepositorySettings(max_in_flight=0), labels)
    on = model_configs(RepositorySettings(max_in_flight=24), labels)

    assert all("max_in_flight" not in config.parameters for config in off.values())
    for name in ("preprocess", "detector", "postprocess"):
        parameters = Parameters.from_model_config({"name": name, "parameters": {
            k: {"string_value": v.string_value} for k, v in on[name].parameters.items()}})
        # Unset, the TTL is 5 s (more than the later steps' queue timeouts, none here).
        assert AdmissionSettings.optional(parameters) == AdmissionSettings(max_in_flight=24, admission_ttl_ms=5_000,
                                                                           admission_pending_ms=1_000)
    assert "max_in_flight" in on["detector"].parameters  # it confirms the slots preprocess takes
    assert "max_in_flight" not in on["attributes"].parameters
    assert AdmissionSettings.optional(Parameters({})) is None


def test_repository_settings_refuse_a_bad_bound_or_a_ttl_shorter_than_the_pipeline() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        RepositorySettings(max_in_flight=-1)
    with pytest.raises(ValueError, match="admission_ttl_ms"):
        RepositorySettings(max_in_flight=8, admission_ttl_ms=2_000,
                           detector=ModelScheduling(queue_timeout_us=1_000_000),
                           postprocess=ModelScheduling(queue_timeout_us=1_000_000))


# -- served ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admission_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Stand-in models, at most 3 requests inside the ensemble."""
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    settings = RepositorySettings(input_size=64, crop_size=32, max_detections=10, max_in_flight=3,
                                  preprocess=ModelScheduling(instances=2, max_batch_size=4, max_queue_size=16),
                                  model_version="admission")
    repository = write_standin_repository(tmp_path_factory.mktemp("admission"), settings, purpose="admission tests")
    server = start_private_server(repository, tmp_path_factory.mktemp("logs"))
    try:
        yield server
    finally:
        server.stop(timeout_s=10)


def _server_slots(server: TritonServer) -> AdmissionSlots:
    assert server.pid is not None
    return AdmissionSlots(slots_path(server.config.repository, server.pid), capacity=3, ttl_s=10)


@pytest.mark.integration
def test_past_the_bound_the_ensemble_refuses_at_once_and_gives_every_slot_back(admission_server: TritonServer) -> None:
    # 60 requests within 0.1 s against 3 slots. (A burst of 200 made the sender and Triton's
    # frontend starve the stubs of the 2 cores now and then: the entry then answered its first
    # refusals after 35-100 ms, in 1 of 6 runs; this measures the refusal, not that contention.)
    result = asyncio.run(drive_open_loop(admission_server.endpoints.grpc, image_set(40), rate_rps=600,
                                         duration_s=0.1, deadline_s=10))

    assert result.ok > 0 and result.refused > 0, result.as_dict()
    assert set(result.outcomes) == {"OK", "UNAVAILABLE"}, result.as_dict()["messages"]
    reasons = result.refusal_latency_by_reason
    # Past 3 admitted the entry refuses; past its queue of 16, Triton itself does.
    assert "at_capacity" in reasons and set(reasons) <= {"at_capacity", "queue_full"}, result.as_dict()["messages"]
    assert result.errors == 0 and result.empty_ok == 0 and result.deadline_misses == 0
    # Behaviour, not speed: how fast the entry says no is measured against its 10 ms bar by
    # scripts/overload.py at a steady rate (BENCHMARKS.md). In this burst the 2 cores also run the
    # sender and the admitted requests, and the first refusals came back after 60-110 ms on one
    # day's machine and 20-50 ms on another's, so a bar in milliseconds here measures the machine.
    # What holds on any machine: a refusal is answered by the entry ("at capacity", not a later
    # step's queue timeout), not after the work of the admitted requests (the typical refusal
    # comes back before the typical answer), and every one long before the 10 s deadline a client
    # would otherwise sit out (beside a second job on the 2 cores the slowest took 640 ms).
    figures = {key: result.as_dict()[key] for key in ("accepted_latency_ms", "refusal_latency_ms_by_reason")}
    assert reasons["at_capacity"].p50_ms < result.accepted_latency.p50_ms, figures
    assert reasons["at_capacity"].max_ms < 0.5 * 10_000, figures
    assert _server_slots(admission_server).in_use() == 0  # every admitted request gave its slot back


@pytest.mark.integration
def test_a_bad_image_gives_its_slot_back_at_once(admission_server: TritonServer) -> None:
    with FashionClient(admission_server.endpoints.grpc) as client:
        for _ in range(6):  # twice the bound: a leaked slot each would leave none
            with pytest.raises(InvalidImage):
                client.detect(b"not an image")
        assert isinstance(client.detect(dark_jpeg(1)), ImageDetections)
    assert _server_slots(admission_server).in_use() == 0


@pytest.mark.integration
def test_the_client_reads_at_capacity_as_overload_and_retries(admission_server: TritonServer) -> None:
    images = image_set(60)
    config = ClientConfig(url=admission_server.endpoints.grpc,
                          retry=RetryPolicy(max_attempts=50, initial_backoff_s=0.01, max_backoff_s=0.2))
    with FashionClient(config=config) as client:
        outcomes = client.detect_many(images, max_in_flight=16)

    assert all(isinstance(o, ImageDetections) for o in outcomes), [o for o in outcomes if isinstance(o, Exception)][:3]
    assert _server_slots(admission_server).in_use() == 0


@pytest.mark.integration
def test_the_stopped_server_removes_its_slots_file(tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    settings = RepositorySettings(input_size=64, crop_size=32, max_detections=10, max_in_flight=2)
    repository = write_standin_repository(tmp_path, settings, purpose="admission tests")
    server = start_private_server(repository, tmp_path / "logs")
    assert server.pid is not None
    path = slots_path(repository, server.pid)
    with FashionClient(server.endpoints.grpc) as client:
        client.detect(dark_jpeg(2))
    assert path.is_file()

    server.stop(timeout_s=10)
    assert not path.exists()
