"""The admission slots file is created and removed by the models themselves, whoever started Triton.

Unit tests of the holders' lifetime (:class:`fashionbox.core.admission.AdmissionSlots`), and an
integration test that starts ``tritonserver`` directly (as Model Analyzer or a shell does, not through
``fashionbox serve``), stops it, and finds no ``fashionbox-admission-*`` file left behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from client_images import dark_jpeg
from onnx_standins import write_standin_repository

from fashionbox.core.admission import AdmissionSlots, reclaim_stale, slots_path


def test_the_last_instance_to_close_removes_the_file(tmp_path: Path) -> None:
    first = AdmissionSlots(tmp_path / "slots", capacity=2, ttl_s=10)
    second = AdmissionSlots(tmp_path / "slots", capacity=2, ttl_s=10)
    assert first.take([1]) == 1

    first.close()
    assert (tmp_path / "slots").is_file()  # the second still uses it
    assert second.in_use() == 1
    second.close()
    assert not (tmp_path / "slots").exists()
    second.close()  # twice is harmless


def test_a_closed_instance_refuses_to_be_used(tmp_path: Path) -> None:
    slots = AdmissionSlots(tmp_path / "slots", capacity=2, ttl_s=10)
    slots.close()
    with pytest.raises(ValueError, match="closed"):
        slots.take([1])


def test_an_instance_opened_after_the_last_close_starts_a_fresh_file(tmp_path: Path) -> None:
    first = AdmissionSlots(tmp_path / "slots", capacity=2, ttl_s=10)
    first.take([1, 2])
    first.close()
    again = AdmissionSlots(tmp_path / "slots", capacity=2, ttl_s=10)
    assert again.in_use() == 0
    again.close()


def _hold(path: str, ready: Any, release: Any) -> None:
    slots = AdmissionSlots(Path(path), capacity=2, ttl_s=10)
    slots.take([7])
    ready.set()
    release.wait(30)
    slots.close()


def test_a_holder_in_another_process_keeps_the_file_until_it_closes(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    ready, release = context.Event(), context.Event()
    worker = context.Process(target=_hold, args=(str(tmp_path / "slots"), ready, release))
    worker.start()
    try:
        assert ready.wait(60)
        mine = AdmissionSlots(tmp_path / "slots", capacity=2, ttl_s=10)
        assert mine.in_use() == 1  # the same file
        mine.close()
        assert (tmp_path / "slots").is_file()
        release.set()
        worker.join(30)
        assert worker.exitcode == 0
        assert not (tmp_path / "slots").exists()
    finally:
        release.set()
        worker.join(5)


def _hold_forever(path: str, ready: Any) -> None:
    AdmissionSlots(Path(path), capacity=2, ttl_s=10)  # never closed: killed, as a stub of a killed server
    ready.set()
    time.sleep(120)


def _holder(path: Path) -> Any:
    context = mp.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_hold_forever, args=(str(path), ready))
    process.start()
    assert ready.wait(60)
    return process


def _kill(process: Any) -> None:
    process.kill()
    process.join(10)


def test_a_file_of_a_dead_server_is_reclaimed_once_no_process_holds_it(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / slots_path(tmp_path / "a", dead_pid).name
    held = tmp_path / slots_path(tmp_path / "b", dead_pid).name
    alive = tmp_path / slots_path(tmp_path / "c", os.getpid()).name
    holders = {path: _holder(path) for path in (stale, held, alive)}
    try:
        _kill(holders[stale])
        _kill(holders[alive])
        assert reclaim_stale(tmp_path) == [stale]  # `held` is still open; `alive` names a live server
        assert held.is_file() and alive.is_file()
        _kill(holders[held])
        assert reclaim_stale(tmp_path) == [held]
        assert alive.is_file()
    finally:
        for process in holders.values():
            _kill(process)


@pytest.mark.integration
def test_tritonserver_started_directly_leaves_no_admission_file(tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    from operators_helpers import direct_tritonserver

    from fashionbox.client import FashionClient
    from fashionbox.converter.repository import RepositorySettings

    settings = RepositorySettings(input_size=64, crop_size=32, max_detections=10, max_in_flight=2)
    repository = write_standin_repository(tmp_path, settings, purpose="admission without fashionbox serve")
    with direct_tritonserver(repository, tmp_path / "tritonserver.log") as (process, grpc_url):
        path = slots_path(repository, process.pid)
        with FashionClient(grpc_url) as client:
            client.detect(dark_jpeg(2))
        assert path.is_file(), sorted(p.name for p in path.parent.glob("fashionbox-admission-*"))
        process.send_signal(signal.SIGINT)  # as Model Analyzer stops its server
        assert process.wait(60) == 0
    assert not path.exists()


def test_files_without_a_server_process_id_are_left_alone(tmp_path: Path) -> None:
    for name in ("fashionbox-admission-99999999999999999999", "fashionbox-admission-0f3a9c", "other"):
        (tmp_path / name).write_bytes(b"")
    assert reclaim_stale(tmp_path) == []
    assert len(list(tmp_path.iterdir())) == 3
