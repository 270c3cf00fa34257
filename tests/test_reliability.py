"""Unit tests for the reliability helpers: stub watching, refusal reasons, RSS sampling (no server)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from fashionbox.loadtest.reliability import RssSampler, drive_open_loop, process_tree_rss_bytes, refusal_reason
from fashionbox.server.stubs import STUB_NAME, StubWatch, crashed, python_stubs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _fake_stub(instance: str) -> subprocess.Popen[bytes]:
    """A sleeping child whose command line reads like Triton 2.51's stub for ``instance``."""
    arguments = ["repo/model/1/model.py", "triton_python_backend_shm_region_x", "1048576", "1048576", "1"]
    return subprocess.Popen(
        [f"/opt/backends/python/{STUB_NAME}", "-c", "import time; time.sleep(60)", *arguments, instance, "DEFAULT"],
        executable=sys.executable,
    )


def test_the_watch_names_a_stub_that_was_killed_and_only_that_one() -> None:
    stubs = [_fake_stub(instance) for instance in ("preprocess_0_0", "detector_0_0")]
    try:
        watch = StubWatch.of(os.getpid())
        assert sorted(name for _, name in watch.stubs) == ["detector_0_0", "preprocess_0_0"]
        assert watch.dead() == []

        stubs[0].send_signal(signal.SIGKILL)
        stubs[0].wait()

        assert watch.dead() == ["preprocess_0_0"]
        assert list(python_stubs(os.getpid()).values()) == ["detector_0_0"]
    finally:
        for stub in stubs:
            stub.kill()
            stub.wait()


def test_the_load_time_stub_of_a_model_ending_is_no_crash() -> None:
    """The python backend runs a stub named after the model itself while loading it; it ends once the
    instances serve, with the model READY and no newer stub of its name: not a death."""

    class Server:
        pid = os.getpid()  # no stub among this process's children: nothing renewed

        def model_ready(self, model: str) -> bool:
            return True

    gone = [(10**7 + 1, "preprocess"), (10**7 + 2, "preprocess_0_1")]
    watch = StubWatch(server_pid=os.getpid(), stubs=tuple(gone))
    assert crashed(Server(), watch, gone) == ["preprocess_0_1"]  # type: ignore[arg-type]


def test_refusals_are_told_apart_by_what_triton_said() -> None:
    prefix = "in ensemble 'fashion', [request id: <id_unknown>] "
    assert refusal_reason("UNAVAILABLE", prefix + "Exceeds maximum queue size") == "queue_full"
    assert refusal_reason("UNAVAILABLE", "in ensemble 'fashion', Request timeout expired") == "queue_timeout"
    assert refusal_reason("UNAVAILABLE", "Server is stopping, scheduler for model has stopped") == "stopping"
    assert refusal_reason("RESOURCE_EXHAUSTED", "out of memory") == "RESOURCE_EXHAUSTED"


def test_the_rss_of_a_process_tree_includes_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process_tree_rss_bytes(os.getpid())
        assert tree[os.getpid()] > 10 * 2**20 and child.pid in tree

        sampler = RssSampler(os.getpid(), interval_s=0.01).start()
        samples = sampler.stop()
        summary = sampler.summary()
    finally:
        child.kill()
        child.wait()

    assert len(samples) >= 2 and all(s.processes >= 2 for s in samples)
    assert summary["start_mib"] > 10 and summary["growth_percent"] is not None


@pytest.mark.parametrize("field", ["rate_rps", "duration_s", "deadline_s"])
def test_the_open_loop_driver_refuses_a_rate_duration_or_deadline_that_is_not_positive(field: str) -> None:
    values = {"rate_rps": 10.0, "duration_s": 1.0, "deadline_s": 1.0, field: 0.0}
    with pytest.raises(ValueError, match=field):
        asyncio.run(drive_open_loop("127.0.0.1:1", [b"x"], **values))
