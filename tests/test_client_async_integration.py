"""``AsyncFashionClient`` against a real embedded Triton: the mirror of ``test_client_integration.py``.

Each test has a namesake in the blocking client's file and checks the same behaviour through
``await``. Results are compared with the blocking client's, image for image: the twins share one
core, and this shows they also agree on the wire. Like its twin, it uses the server of
``FASHIONBOX_CLIENT_TEST_URL`` when that is set (``client_served.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from client_images import (
    ADMIN_HEADER,
    ADMIN_KEY,
    NOT_AN_IMAGE,
    image_set,
    large_png,
    unused_port,
)
from client_served import Served, served_ensemble

from fashionbox import contract
from fashionbox.client import (
    AccessDenied,
    AsyncFashionClient,
    ClientConfig,
    ConnectError,
    DeadlineExceeded,
    FashionBoxError,
    FashionClient,
    ImageDetections,
    InvalidImage,
    RetryPolicy,
    Timeouts,
)
from fashionbox.contract.labels import default_label_map

RESTART_RETRY = RetryPolicy(max_attempts=200, initial_backoff_s=0.05, max_backoff_s=0.5, jitter=0.5)
_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served_ensemble(tmp_path_factory)


@pytest.fixture(scope="module")
def config(served: Served) -> ClientConfig:
    return ClientConfig(url=served.url)


@pytest.fixture(scope="module")
def expected(config: ClientConfig) -> dict[bytes, ImageDetections]:
    """The blocking client's result for each distinct test image, one call at a time."""
    with FashionClient(config=config) as client:
        return {image: client.detect(image) for image in set(image_set(50))}


@pytest.mark.integration
def test_a_thousand_detections_through_detect_many_all_succeed_and_equal_single_calls(
    config: ClientConfig, expected: dict[bytes, ImageDetections]
) -> None:
    images = image_set(1000)

    async def scenario() -> list[ImageDetections | FashionBoxError]:
        async with AsyncFashionClient(config=config) as client:
            return await client.detect_many(images, max_in_flight=64)

    outcomes = run(scenario())

    failures = [o for o in outcomes if not isinstance(o, ImageDetections)]
    assert failures == []
    assert outcomes == [expected[image] for image in images], "equal to the blocking client's results"
    assert sum(len(o) for o in outcomes if isinstance(o, ImageDetections)) > 0, "the stand-ins find garments"


@pytest.mark.integration
def test_detect_many_sends_concurrently_so_the_server_batches_requests(config: ClientConfig) -> None:
    admin = ClientConfig(url=config.url, headers={ADMIN_HEADER: ADMIN_KEY})

    async def scenario() -> tuple[int, int]:
        async with AsyncFashionClient(config=admin) as client:
            (before,) = await client.statistics(contract.PREPROCESS_MODEL)
            await client.detect_many(image_set(256), max_in_flight=64)
            (after,) = await client.statistics(contract.PREPROCESS_MODEL)
        return after.inference_count - before.inference_count, after.execution_count - before.execution_count

    images, batches = run(scenario())

    assert images == 256
    # One request at a time gives exactly one execution per image; fewer means requests overlapped.
    assert batches <= 0.9 * images, f"{batches} executions for {images} images: requests were not pipelined"


@pytest.mark.integration
def test_a_deadline_shorter_than_the_work_raises_deadline_exceeded(config: ClientConfig) -> None:
    image = large_png()

    async def scenario() -> float:
        async with AsyncFashionClient(config=config) as client:
            assert (await client.detect(image)).width == 2400, "the work itself succeeds given time"
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await client.detect(image, timeout_s=0.01)
            return time.monotonic() - started

    assert run(scenario()) < 0.5, "a deadline is not retried"


def test_a_server_that_is_down_raises_connect_error_within_the_connect_timeout() -> None:
    config = ClientConfig(url=f"127.0.0.1:{unused_port()}", timeouts=Timeouts(connect_s=2.0))

    async def scenario() -> None:
        async with AsyncFashionClient(config=config) as client:
            await client.detect(image_set(1)[0])

    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"(?i)connection refused"):
        run(scenario())

    assert time.monotonic() - started < config.timeouts.connect_s, "retries included"


def test_a_server_that_accepts_but_never_answers_raises_connect_error_after_the_connect_timeout() -> None:
    with socket.socket() as hung:  # the kernel completes the TCP handshake; nobody speaks HTTP/2
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"127.0.0.1:{hung.getsockname()[1]}"
        config = ClientConfig(url=url, timeouts=Timeouts(connect_s=1.0, request_s=30.0), retry=RetryPolicy.disabled())

        async def scenario() -> None:
            async with AsyncFashionClient(config=config) as client:
                await client.detect(image_set(1)[0])

        started = time.monotonic()
        with pytest.raises(ConnectError):
            run(scenario())
        elapsed_s = time.monotonic() - started

    assert 0.9 < elapsed_s < 2.0, "bounded by connect_s, not by request_s"


@pytest.mark.integration
def test_a_server_restarted_mid_run_is_recovered_by_retries_with_no_request_lost(
    served: Served,
    config: ClientConfig,
    expected: dict[bytes, ImageDetections],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = served.restartable()
    from client_servers import restart  # the server parts: only with a private server

    images = image_set(400)
    pulled = threading.Semaphore(0)
    outcomes: list[ImageDetections | FashionBoxError] = []
    crashed: list[BaseException] = []
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[None]]] = []

    def feed() -> Iterator[bytes]:
        for image in images:
            pulled.release()
            yield image

    async def load() -> None:
        running.append((asyncio.get_running_loop(), asyncio.current_task()))  # type: ignore[arg-type]
        restartable = ClientConfig(url=config.url, timeouts=Timeouts(request_s=30.0), retry=RESTART_RETRY)
        async with AsyncFashionClient(config=restartable) as client:
            outcomes.extend(await client.detect_many(feed(), max_in_flight=8))

    def worker_main() -> None:
        try:
            run(load())
        except BaseException as exc:  # reported by the main thread
            crashed.append(exc)

    caplog.set_level(logging.INFO, logger="fashionbox.client")
    # The event loop runs in a worker: the server must be stopped and started from this thread,
    # because it dies with the thread that started it.
    worker = threading.Thread(target=worker_main)
    worker.start()
    try:
        for _ in range(100):  # a quarter of the run is sent before the server goes away
            assert pulled.acquire(timeout=30)
        restart(server)
    except BaseException:
        for loop, task in running:  # stop the worker now instead of letting it retry for minutes
            loop.call_soon_threadsafe(task.cancel)
        raise
    finally:
        worker.join(timeout=90)

    assert not worker.is_alive()
    assert crashed == []
    assert [f"{type(o).__name__}: {o}" for o in outcomes if not isinstance(o, ImageDetections)][:5] == []
    assert outcomes == [expected[image] for image in images]
    assert any("retrying" in record.getMessage() for record in caplog.records), "the restart was noticed"


@pytest.mark.integration
def test_a_bad_image_among_good_ones_fails_alone_with_its_message(
    config: ClientConfig, expected: dict[bytes, ImageDetections]
) -> None:
    good = image_set(20)
    truncated = good[0][: len(good[0]) // 3]
    images = [*good[:5], NOT_AN_IMAGE, *good[5:12], truncated, *good[12:]]

    async def scenario() -> list[ImageDetections | FashionBoxError]:
        async with AsyncFashionClient(config=config) as client:
            return await client.detect_many(images, max_in_flight=8)

    outcomes = run(scenario())

    bad = {index: outcome for index, outcome in enumerate(outcomes) if not isinstance(outcome, ImageDetections)}
    assert sorted(bad) == [5, 13]
    assert all(isinstance(error, InvalidImage) and error.status == "INVALID_ARGUMENT" for error in bad.values())
    assert "image" in bad[5].message.lower()
    assert [o for i, o in enumerate(outcomes) if i not in bad] == [expected[image] for image in good]


@pytest.mark.integration
def test_health_labels_model_info_and_statistics_are_read_from_the_server(config: ClientConfig) -> None:
    async def scenario() -> Any:
        async with AsyncFashionClient(config=config) as client:
            assert await client.health() is True
            assert await client.ready() is True
            assert await client.labels() == default_label_map()
            with pytest.raises(AccessDenied, match=ADMIN_HEADER):
                await client.statistics()
            info = await client.model_info()
        async with AsyncFashionClient(config=ClientConfig(url=config.url, headers={ADMIN_HEADER: ADMIN_KEY})) as admin:
            names = {s.model_name for s in await admin.statistics()}
        return info, names

    info, names = run(scenario())

    assert info.name == contract.ENSEMBLE_MODEL
    assert [(t.name, t.datatype) for t in info.inputs] == [("IMAGE", "BYTES")]
    assert {contract.ENSEMBLE_MODEL, contract.PREPROCESS_MODEL, contract.DETECTOR_MODEL} <= names


@pytest.mark.integration
def test_the_client_refuses_calls_after_close(config: ClientConfig) -> None:
    async def scenario() -> None:
        client = AsyncFashionClient(config=config)
        await client.detect(image_set(1)[0])
        await client.aclose()
        await client.detect(image_set(1)[0])

    with pytest.raises(FashionBoxError, match="closed"):
        run(scenario())
