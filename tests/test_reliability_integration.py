"""Overload, shutdown and faults against a real embedded Triton (stand-in models, see ``client_servers.py``).

- past capacity the server refuses at once (UNAVAILABLE), answers the rest, and the client's
  retries back off until everything is answered;
- the short form of ``scripts/overload.py`` (twice the sustainable rate) holds its checks;
- SIGTERM under load: requests in flight finish, later ones are refused cleanly, the server exits
  within its exit timeout;
- a killed python-backend stub is noticed by ``fashionbox.server.stubs`` and the server restarted by
  ``supervise``; a client with retries carries on and every answer it got is correct.

Server restarts seen from the client (stop, start on the same port) are covered by
``test_client_integration.py``, for both clients. Figures: docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from client_servers import dark_jpeg, image_set, start_private_server
from onnx_standins import write_standin_repository

from fashionbox import contract
from fashionbox.client import (
    ClientConfig,
    ConnectError,
    FashionBoxError,
    FashionClient,
    ImageDetections,
    ModelNotReady,
    RetryPolicy,
    Timeouts,
)
from fashionbox.converter.repository import ModelScheduling, RepositorySettings
from fashionbox.loadtest.reliability import drive_open_loop
from fashionbox.server import Endpoints, ServerConfig, TritonServer, find_free_ports, running_server
from fashionbox.server.stubs import SHM_DIR, StubWatch, python_stubs, supervise

pytestmark = pytest.mark.integration
pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")

ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)
PATIENT_RETRY = RetryPolicy(max_attempts=200, initial_backoff_s=0.02, max_backoff_s=0.5, jitter=1.0)
"""Enough attempts to ride out a full queue or a restart, with full jitter so retries spread."""


def _repository(folder: Path, settings: RepositorySettings) -> Path:
    return write_standin_repository(folder, settings, purpose="reliability tests with ONNX stand-ins")


@pytest.fixture(scope="module")
def shipped_policy_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-in models with the queue policy ``fashionbox convert`` writes (RepositorySettings' defaults)."""
    settings = RepositorySettings(input_size=64, crop_size=32, max_detections=10, model_version="reliability")
    return _repository(tmp_path_factory.mktemp("shipped-policy"), settings)


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The entry admits 2 waiting requests (2 instances x batch 2 at work): easy to overload."""
    settings = RepositorySettings(
        input_size=64,
        crop_size=32,
        max_detections=10,
        preprocess=ModelScheduling(instances=2, max_batch_size=2, max_queue_size=2),
        max_in_flight=0,  # Triton's own queue policy alone (admission control: tests/test_admission.py)
        model_version="small-queue",
    )
    repository = _repository(tmp_path_factory.mktemp("small-queue"), settings)
    server = start_private_server(repository, tmp_path_factory.mktemp("logs"))
    try:
        yield server
    finally:
        server.stop(timeout_s=10)


# -- overload ----------------------------------------------------------------------------------------------


def test_past_capacity_the_server_refuses_at_once_with_unavailable_and_answers_the_rest(
    small_queue_server: TritonServer,
) -> None:
    images = image_set(50)

    # 300 requests within 0.15 s: far more than 2 waiting + 4 at work.
    result = asyncio.run(
        drive_open_loop(small_queue_server.endpoints.grpc, images, rate_rps=2000, duration_s=0.15, deadline_s=10)
    )

    assert result.sent == 300
    assert result.ok > 0 and result.refused > 0, result.as_dict()
    assert set(result.outcomes) == {"OK", "UNAVAILABLE"}, result.as_dict()["messages"]
    # The entry refuses past its queue; a later step may refuse what waited past its queue timeout.
    reasons = result.refusal_latency_by_reason
    assert "queue_full" in reasons and set(reasons) <= {"queue_full", "queue_timeout"}, result.as_dict()["messages"]
    assert result.errors == 0 and result.empty_ok == 0 and result.deadline_misses == 0
    # Every request answered, each once: accepted or refused, none lost. At least 4 find room even
    # if no request finishes within the burst: one per instance (an idle instance takes a lone
    # request as a batch of 1 rather than wait for a second) and the 2 the queue holds.
    assert result.ok + result.refused == result.sent and result.ok >= 4, result.as_dict()
    # Behaviour, not speed: how fast the server says no is measured, with its 10 ms bar, by
    # scripts/overload.py (BENCHMARKS.md); at 2,000 req/s on 2 shared cores a fixed bar in
    # milliseconds here fails now and then. What must hold on any machine: a refusal does not
    # wait behind the work (the typical one comes back before the typical answer) and every one
    # comes back long before the 10 s deadline a client would otherwise sit out.
    figures = {key: result.as_dict()[key] for key in ("accepted_latency_ms", "refusal_latency_ms_by_reason")}
    assert reasons["queue_full"].p50_ms < result.accepted_latency.p50_ms, figures
    assert result.refusal_latency.max_ms < 0.5 * 10_000, figures
    assert small_queue_server.is_alive()


def test_the_clients_retries_back_off_until_an_overloaded_server_has_answered_everything(
    small_queue_server: TritonServer, caplog: pytest.LogCaptureFixture
) -> None:
    images = image_set(120)
    config = ClientConfig(url=small_queue_server.endpoints.grpc, retry=PATIENT_RETRY)
    with FashionClient(config=config) as client:
        expected = {image: client.detect(image) for image in set(images)}
        caplog.set_level(logging.INFO, logger="fashionbox.client")

        outcomes = client.detect_many(images, max_in_flight=32)

    assert [f"{type(o).__name__}: {o}" for o in outcomes if not isinstance(o, ImageDetections)][:3] == []
    assert outcomes == [expected[image] for image in images]
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retried, "32 in flight against 6 places: some were refused and retried"
    assert any("Exceeds maximum queue size" in message for message in retried), retried[:3]


def test_the_short_overload_script_holds_at_twice_the_sustainable_rate(
    shipped_policy_repository: Path, tmp_path: Path
) -> None:
    out = tmp_path / "overload.json"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "overload.py"),
        f"--repository={shipped_policy_repository}",
        "--duration-s=3",
        "--capacity-s=2",
        "--images=4",
        "--image-size=640x480",
        "--deadline-s=5",  # above the later steps' 1 s queue timeout
        "--max-refusal-p99-ms=250",  # the script's bar is 10 ms on a quiet machine; CI shares its cores
        f"--out={out}",
    ]

    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert out.is_file(), done.stdout + done.stderr
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert checks["no_crash"] and checks["only_ok_or_refused"], report
    assert checks["accepted_meet_deadline"], report["run"]
    assert checks["entry_refusals_fast"], report["run"]["refusal_latency_ms_by_reason"]  # admission's, at 250 ms here
    assert report["run"]["ok"] > 0 and report["run"]["rate_rps"] > 1.9 * report["sustainable_rps"]


# -- SIGTERM under load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    sent: float
    done: float
    outcome: ImageDetections | FashionBoxError


def _load(client: FashionClient, images: list[bytes], stop: threading.Event, calls: list[_Call]) -> None:
    index = 0
    while not stop.is_set():
        sent = time.monotonic()
        try:
            outcome: ImageDetections | FashionBoxError = client.detect(images[index % len(images)])
        except FashionBoxError as error:
            outcome = error
            # Pause as a retrying client would: six threads resending instantly refused requests
            # would take the CPU from the requests still being served.
            time.sleep(0.02)
        calls.append(_Call(sent, time.monotonic(), outcome))
        index += 1


def _under_load(
    server: TritonServer, stop_server: Callable[[], int | None], *, size: tuple[int, int] = (640, 480)
) -> tuple[list[_Call], float, float, int | None]:
    """Six clients without retries send images of ``size``; after 1.5 s ``stop_server()`` runs.

    Returns every call, when the stop began, how long it took, and the server's exit code.
    """
    images = [dark_jpeg(seed, size=size) for seed in range(8)]
    config = ClientConfig(url=server.endpoints.grpc, retry=RetryPolicy.disabled(), timeouts=Timeouts(request_s=10))
    stop = threading.Event()
    calls: list[_Call] = []
    try:
        with FashionClient(config=config) as client:
            workers = [threading.Thread(target=_load, args=(client, images, stop, calls)) for _ in range(6)]
            for worker in workers:
                worker.start()
            time.sleep(1.5)
            began = time.monotonic()
            code = stop_server()
            took_s = time.monotonic() - began
            time.sleep(0.5)  # requests sent after the exit are refused too
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
    finally:
        stop.set()
        server.stop(timeout_s=0)
    return calls, began, took_s, code


def _log_figures(what: str, exit_s: float, in_flight: list[_Call], after: list[_Call]) -> None:
    # For docs/RELIABILITY.md: pytest -o log_cli=true --log-cli-level=INFO shows them.
    logger.info(
        "%s: exited after %.2f s; in flight %d (%d failed: %s); sent after %d (%d refused: %s)",
        what,
        exit_s,
        len(in_flight),
        len(_failures(in_flight)),
        sorted({type(o).__name__ for o in _failures(in_flight)}),
        len(after),
        len(_failures(after)),
        sorted({f"{type(o).__name__}/{o.status}" for o in _failures(after)}),
    )


def _failures(calls: list[_Call]) -> list[FashionBoxError]:
    return [c.outcome for c in calls if isinstance(c.outcome, FashionBoxError)]


def _assert_drained(in_flight: list[_Call]) -> None:
    """Every request inside the ensemble when the stop began finished.

    A call's ``sent`` is read before its bytes leave the client, so one sent just before the stop
    began may reach Triton after the unload and be refused at the entry (NOT_FOUND, retryable),
    as those sent after are. A request failing once inside the ensemble must never happen.
    """
    inside = [o for o in _failures(in_flight) if not isinstance(o, ModelNotReady)]
    assert inside == [], "every request inside the ensemble when the stop began finished"
    finished = [c for c in in_flight if not isinstance(c.outcome, FashionBoxError)]
    assert len(finished) >= 2, "requests in flight finished rather than being refused at the entry"


def test_sigterm_refuses_new_requests_cleanly_and_exits_within_the_exit_timeout(
    shipped_policy_repository: Path, tmp_path: Path
) -> None:
    server = start_private_server(shipped_policy_repository, tmp_path)  # exit_timeout_s=5

    def sigterm() -> int | None:
        assert server.pid is not None
        os.kill(server.pid, signal.SIGTERM)
        return server.wait(timeout_s=server.config.exit_timeout_s + 5)

    calls, signalled, exit_s, code = _under_load(server, sigterm)

    in_flight = [c for c in calls if c.sent < signalled < c.done]
    after = [c for c in calls if c.sent > signalled]
    _log_figures("SIGTERM", exit_s, in_flight, after)
    assert code == 0 and exit_s < server.config.exit_timeout_s + 5, (code, exit_s)
    assert len(in_flight) >= 3 and after, "six clients were sending before and after the signal"
    # Triton stops every scheduler at once: an ensemble request between two steps is refused by
    # the next ("Server is stopping"), so not everything in flight finishes; each failure is a
    # clean, retryable refusal, never a wrong or partial answer (the draining stop below fixes it).
    refused = _failures(in_flight) + _failures(after)
    assert _failures(after), "requests after the signal are refused"
    # Stopping (UNAVAILABLE), models unloaded (NOT_FOUND), no listener, calls cancelled by the
    # server's exit: all retryable.
    assert all(o.retryable for o in refused), {f"{type(o).__name__}: {o}" for o in refused}


@pytest.mark.parametrize("http", [True, False], ids=["over-http", "over-grpc"])
def test_a_draining_stop_finishes_every_request_in_flight_and_refuses_new_ones_cleanly(
    shipped_policy_repository: Path, tmp_path: Path, http: bool
) -> None:
    # The default config: stop() unloads the ensemble first (fashionbox.server.drain), then SIGTERMs; with
    # --no-http the drain goes over Triton's gRPC.
    with running_server(shipped_policy_repository, tmp_path, exit_timeout_s=5, http=http) as server:
        # Larger images: requests long enough that several were sent well before the stop began.
        calls, stopped, stop_s, code = _under_load(server, server.stop, size=(1600, 1200))

    in_flight = [c for c in calls if c.sent < stopped < c.done]
    after = [c for c in calls if c.sent > stopped]
    _log_figures("draining stop", stop_s, in_flight, after)
    assert code == 0 and stop_s < 2 * server.config.exit_timeout_s + 5, (code, stop_s)
    assert len(in_flight) >= 3 and after, "six clients were sending before and after the stop"
    _assert_drained(in_flight)
    refused = _failures(after)
    assert refused, "requests after the stop began are refused"
    # NOT_FOUND "no available versions" while draining, then no listener: both retryable.
    assert all(isinstance(o, ModelNotReady | ConnectError) and o.retryable for o in refused), {
        f"{type(o).__name__}: {o}" for o in refused
    }


def _ready(client: FashionClient) -> bool:
    try:
        return client.ready(timeout_s=2)
    except FashionBoxError:
        return False


@dataclass
class _ServeProcess:
    """``fashionbox serve`` in a child process, shaped like a TritonServer for ``_under_load``."""

    process: subprocess.Popen[bytes]
    endpoints: Endpoints

    def stop(self, timeout_s: float = 0) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_sigterm_to_fashionbox_serve_drains_what_is_in_flight_and_exits_cleanly(
    shipped_policy_repository: Path, tmp_path: Path
) -> None:
    # What systemd, docker stop (on an image running `fashionbox serve`) or Ctrl-C do.
    grpc_port, http_port, metrics_port = find_free_ports(3)
    command = [
        sys.executable, "-m", "fashionbox.commands.cli", "serve", "--repository", str(shipped_policy_repository),
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
        "--exit-timeout-s", "5", "--log-file", str(tmp_path / "triton.log"),
    ]  # fmt: skip
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    serve = _ServeProcess(process, Endpoints.for_config(ServerConfig(
        repository=shipped_policy_repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)))
    try:
        deadline = time.monotonic() + 90
        with FashionClient(config=ClientConfig(url=serve.endpoints.grpc)) as client:
            while not _ready(client):
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)

        def sigterm() -> int | None:
            process.send_signal(signal.SIGTERM)
            return process.wait(timeout=30)

        calls, signalled, exit_s, code = _under_load(serve, sigterm)  # type: ignore[arg-type]
    finally:
        serve.stop()

    in_flight = [c for c in calls if c.sent < signalled < c.done]
    after = [c for c in calls if c.sent > signalled]
    _log_figures("SIGTERM to fashionbox serve", exit_s, in_flight, after)
    assert code == 0 and exit_s < 2 * 5 + 5, ((tmp_path / "serve.log").read_text(), exit_s)
    assert len(in_flight) >= 3 and after, "six clients were sending before and after the signal"
    _assert_drained(in_flight)
    assert _failures(after) and all(o.retryable for o in _failures(after))


# -- a killed python-backend stub -------------------------------------------------------------------------


def test_a_killed_stub_is_noticed_the_server_restarted_and_no_acknowledged_answer_is_wrong(
    shipped_policy_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_private_server(shipped_policy_repository, tmp_path)
    images = image_set(300)
    config = ClientConfig(url=server.endpoints.grpc, retry=PATIENT_RETRY, timeouts=Timeouts(request_s=60))
    done = threading.Event()
    outcomes: list[ImageDetections | FashionBoxError] = []
    restarted: list[list[str]] = []
    client = FashionClient(config=config)
    try:
        expected = {image: client.detect(image) for image in set(images)}
        assert server.pid is not None
        stubs = python_stubs(server.pid)
        victim = next(pid for pid, name in stubs.items() if name.startswith(contract.PREPROCESS_MODEL))
        caplog.set_level(logging.INFO, logger="fashionbox.client")

        def load() -> None:
            try:
                outcomes.extend(client.detect_many(images, max_in_flight=4))
            finally:
                done.set()

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(0.3)
        watch = StubWatch.of(server.pid)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while not watch.dead() and time.monotonic() - killed < 5:
            time.sleep(0.01)
        noticed_s = time.monotonic() - killed
        # Poll fast in the test; `fashionbox serve` polls once a second.
        supervise(server, poll_s=0.1, stop=done, on_restart=restarted.append, watch=watch)
        worker.join(timeout=60)
        recovered_s = time.monotonic() - killed
        logger.info(
            "stub killed: seen dead after %.3f s, %s restarted, all %d requests answered %.1f s after the kill",
            noticed_s,
            restarted,
            len(outcomes),
            recovered_s,
        )
    finally:
        client.close()
        server.stop(timeout_s=10)

    assert noticed_s < 1, "the watch sees a killed stub at once"
    assert restarted and restarted[0][0].startswith(contract.PREPROCESS_MODEL), restarted
    assert [f"{type(o).__name__}: {o}" for o in outcomes if not isinstance(o, ImageDetections)][:3] == []
    assert outcomes == [expected[image] for image in images], "every acknowledged answer is the right one"
    messages = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert any("is not healthy" in m or "UNAVAILABLE" in m for m in messages), messages[:3]
    assert recovered_s < 60


# -- recovery time, shared memory, readiness, admin model changes -----------------------------------------

ADMIN = "reliability-admin-key-0123456789"


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _supervised(server: TritonServer, ready_file: Path, work: Callable[[], None]) -> list[list[str]]:
    """Run ``work`` on a thread while ``supervise`` (as ``fashionbox serve`` runs it) keeps this thread,
    the one that started the server; returns the restarts it made. Re-raises what ``work`` raised."""
    restarts: list[list[str]] = []
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised on the test's thread
            failure.append(exc)
        finally:
            stop.set()

    worker = threading.Thread(target=run)
    worker.start()
    try:
        code = supervise(server, stop=stop, on_restart=restarts.append, ready_file=ready_file)
    finally:
        stop.set()
        worker.join(timeout=120)
    if failure:
        raise failure[0]
    assert code is None, f"the server exited with {code}"
    assert not ready_file.exists(), "supervision ended: no ready file"
    return restarts


def _regions_left(regions: tuple[str, ...]) -> list[str]:
    return [region for region in regions if (SHM_DIR / region).exists()]


def test_a_killed_stub_is_replaced_within_seconds_readiness_drops_meanwhile_and_no_shared_memory_leaks(
    shipped_policy_repository: Path, tmp_path: Path
) -> None:
    server = start_private_server(shipped_policy_repository, tmp_path)
    ready_file = tmp_path / "pipeline.ready"
    image = dark_jpeg(0, size=(320, 240))
    config = ClientConfig(url=server.endpoints.grpc, retry=RetryPolicy.disabled(), timeouts=Timeouts(request_s=10))
    recoveries: list[float] = []
    left: list[list[str]] = []
    unready_seen: list[bool] = []
    ready_again: list[float] = []
    final_regions: tuple[str, ...] = ()

    def kill_three_times() -> None:
        nonlocal final_regions
        with FashionClient(config=config) as client:
            expected = client.detect(image)
            for _ in range(3):
                assert _wait_until(ready_file.exists, 30), "the pipeline is ready: the ready file is there"
                assert server.pid is not None
                watch = StubWatch.of(server.pid)
                assert len(watch.regions) == len(watch.stubs) >= 4, watch
                victim = next(pid for pid, name in watch.stubs if name.startswith(contract.DETECTOR_MODEL))
                killed = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                unready = False
                while True:  # light load: one request at a time, a short pause after a failure
                    if not unready and not ready_file.exists():
                        unready = True
                    elif unready and ready_file.exists() and len(ready_again) < len(recoveries) + 1:
                        ready_again.append(time.monotonic() - killed)
                    sent = time.monotonic()
                    try:
                        answer = client.detect(image)
                    except FashionBoxError:
                        time.sleep(0.05)
                    else:
                        if sent > killed:
                            recoveries.append(time.monotonic() - killed)
                            assert answer == expected
                            break
                    assert time.monotonic() - killed < 60, "no good answer within 60 s of the kill"
                unready_seen.append(unready)
                assert _wait_until(ready_file.exists, 30)
                left.append(_regions_left(watch.regions))
            assert server.pid is not None
            final_regions = StubWatch.of(server.pid).regions

    try:
        restarts = _supervised(server, ready_file, kill_three_times)
    finally:
        server.stop(timeout_s=10)

    logger.info(
        "stub killed 3 times: ready file back after %s s, first good answer after %s s",
        ", ".join(f"{r:.2f}" for r in ready_again),
        ", ".join(f"{r:.2f}" for r in recoveries),
    )
    assert len(restarts) == 3 and all(dead[0].startswith(contract.DETECTOR_MODEL) for dead in restarts), restarts
    # The benchmark figure is under 5 s (docs/RELIABILITY.md); a busy 2-core CI machine gets 10.
    assert all(r < 10 for r in recoveries), recoveries
    assert unready_seen == [True, True, True], "the ready file is gone while the pipeline is broken"
    assert left == [[], [], []], "the killed server's /dev/shm regions (the dead stub's too) are removed"
    assert final_regions and _regions_left(final_regions) == [], "a stopped server leaves no region"


def _admin_call(server: TritonServer, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{server.endpoints.http}{path}",
        data=b"{}" if "/repository/" in path else None,
        headers={"Content-Type": "application/json", contract.ADMIN_KEY_NAME: ADMIN},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read().decode()


def test_an_admin_unload_or_reload_restarts_nothing_and_the_ready_file_follows_the_pipeline(
    shipped_policy_repository: Path, tmp_path: Path
) -> None:
    server = start_private_server(shipped_policy_repository, tmp_path, admin_key=ADMIN)
    pid = server.pid
    ready_file = tmp_path / "pipeline.ready"
    image = dark_jpeg(1, size=(320, 240))
    config = ClientConfig(url=server.endpoints.grpc, retry=RetryPolicy.disabled(), timeouts=Timeouts(request_s=10))
    steps: list[str] = []

    def change_models() -> None:
        with FashionClient(config=config) as client:
            expected = client.detect(image)
            assert _wait_until(ready_file.exists, 30)
            for model in (contract.ENSEMBLE_MODEL, contract.ATTRIBUTES_MODEL, contract.PREPROCESS_MODEL):
                assert _admin_call(server, f"/v2/repository/models/{model}/unload") == (200, ""), model
                assert _wait_until(lambda: not ready_file.exists(), 10), f"{model} unloaded: not ready"
                if model == contract.ENSEMBLE_MODEL:
                    # Triton's own readiness does not see it (an unloaded model is no loaded model).
                    assert _admin_call(server, "/v2/health/ready")[0] == 200
                    with pytest.raises(ModelNotReady):
                        client.detect(image)
                time.sleep(1.5)  # a few supervisor polls: no restart
                assert server.pid == pid
                # The admin's load is answered (not "Server not ready" from a restart under way).
                assert _admin_call(server, f"/v2/repository/models/{model}/load") == (200, ""), model
                assert _wait_until(ready_file.exists, 10), f"{model} loaded again: ready"
                assert client.detect(image) == expected
                steps.append(f"unload+load {model}")

    try:
        restarts = _supervised(server, ready_file, change_models)
    finally:
        server.stop(timeout_s=10)

    assert restarts == [], "a model changed through the repository API by a key holder is no crash"
    assert len(steps) == 3, steps
