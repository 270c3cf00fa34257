"""Both clients against a real embedded Triton: volume, deadlines, dead servers, restarts, bad images.

Each test takes the ``twin`` fixture and runs through ``FashionClient`` and through
``AsyncFashionClient`` (behind blocking methods, ``client_twins.py``); both are compared with the
blocking client's single calls, image for image, so the two also agree on the wire. The server is private to this file
(stand-in models, see ``client_servers.py``), because one test stops and restarts it, and
Triton's statistics API on it is restricted to callers with the admin header. With
``FASHIONBOX_CLIENT_TEST_URL`` set, the tests use that server instead and need only the client
installed (``client_served.py``); the restart test is skipped there.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

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
from client_twins import TWINS, Twin

from fashionbox import contract
from fashionbox.client import (
    AccessDenied,
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

# Enough attempts to bridge a server restart (a few seconds), paced so the restarted server is
# found within half a second of being up.
RESTART_RETRY = RetryPolicy(max_attempts=200, initial_backoff_s=0.05, max_backoff_s=0.5, jitter=0.5)


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest) -> Iterator[Twin]:
    with Twin(request.param) as twin:
        yield twin


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served_ensemble(tmp_path_factory)


@pytest.fixture(scope="module")
def config(served: Served) -> ClientConfig:
    return ClientConfig(url=served.url)


@pytest.fixture(scope="module")
def expected(config: ClientConfig) -> dict[bytes, ImageDetections]:
    """The result for each distinct test image, one call at a time."""
    with FashionClient(config=config) as client:
        return {image: client.detect(image) for image in set(image_set(50))}


@pytest.mark.integration
def test_a_thousand_detections_through_detect_many_all_succeed_and_equal_single_calls(
    twin: Twin, config: ClientConfig, expected: dict[bytes, ImageDetections]
) -> None:
    images = image_set(1000)

    with twin.client(config=config) as client:
        outcomes = client.detect_many(images, max_in_flight=64)

    failures = [o for o in outcomes if not isinstance(o, ImageDetections)]
    assert failures == []
    assert outcomes == [expected[image] for image in images]
    assert sum(len(o) for o in outcomes if isinstance(o, ImageDetections)) > 0, "the stand-ins find garments"


@pytest.mark.integration
def test_detect_many_sends_concurrently_so_the_server_batches_requests(twin: Twin, config: ClientConfig) -> None:
    admin = ClientConfig(url=config.url, headers={ADMIN_HEADER: ADMIN_KEY})
    with twin.client(config=admin) as client:
        before = {s.model_name: s for s in client.statistics(contract.PREPROCESS_MODEL)}
        client.detect_many(image_set(256), max_in_flight=64)
        after = {s.model_name: s for s in client.statistics(contract.PREPROCESS_MODEL)}

    name = contract.PREPROCESS_MODEL
    images = after[name].inference_count - before[name].inference_count
    batches = after[name].execution_count - before[name].execution_count
    assert images == 256
    # One request at a time gives exactly one execution per image; fewer means requests overlapped.
    assert batches <= 0.9 * images, f"{batches} executions for {images} images: requests were not pipelined"


@pytest.mark.integration
def test_a_deadline_shorter_than_the_work_raises_deadline_exceeded(twin: Twin, config: ClientConfig) -> None:
    image = large_png()

    with twin.client(config=config) as client:
        assert client.detect(image).width == 2400, "the work itself succeeds given time"
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.detect(image, timeout_s=0.01)
        elapsed_s = time.monotonic() - started

    assert elapsed_s < 0.5, "a deadline is not retried"


def test_a_server_that_is_down_raises_connect_error_within_the_connect_timeout(twin: Twin) -> None:
    config = ClientConfig(url=f"127.0.0.1:{unused_port()}", timeouts=Timeouts(connect_s=2.0))

    started = time.monotonic()
    with twin.client(config=config) as client, pytest.raises(ConnectError, match=r"(?i)connection refused"):
        client.detect(image_set(1)[0])

    assert time.monotonic() - started < config.timeouts.connect_s, "retries included"


def test_a_server_that_accepts_but_never_answers_raises_connect_error_after_the_connect_timeout(twin: Twin) -> None:
    with socket.socket() as hung:  # the kernel completes the TCP handshake; nobody speaks HTTP/2
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"127.0.0.1:{hung.getsockname()[1]}"
        config = ClientConfig(url=url, timeouts=Timeouts(connect_s=1.0, request_s=30.0), retry=RetryPolicy.disabled())

        started = time.monotonic()
        with twin.client(config=config) as client, pytest.raises(ConnectError):
            client.detect(image_set(1)[0])
        elapsed_s = time.monotonic() - started

    assert 0.9 < elapsed_s < 2.0, "bounded by connect_s, not by request_s"


@pytest.mark.integration
def test_a_server_restarted_mid_run_is_recovered_by_retries_with_no_request_lost(
    twin: Twin,
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
    client = twin.client(config=ClientConfig(url=config.url, timeouts=Timeouts(request_s=30.0), retry=RESTART_RETRY))

    def feed() -> Iterator[bytes]:
        for image in images:
            pulled.release()
            yield image

    def load() -> None:
        try:
            outcomes.extend(client.detect_many(feed(), max_in_flight=8))
        except BaseException as exc:  # reported by the main thread
            crashed.append(exc)

    caplog.set_level(logging.INFO, logger="fashionbox.client")
    worker = threading.Thread(target=load)
    worker.start()
    try:
        for _ in range(100):  # a quarter of the run is sent before the server goes away
            assert pulled.acquire(timeout=30)
        restart(server)  # from this thread: the server dies with the thread that started it
    except BaseException:
        client.close()  # the worker stops at its next attempt instead of retrying for minutes
        raise
    finally:
        worker.join(timeout=90)
        client.close()

    assert not worker.is_alive()
    assert crashed == []
    assert [f"{type(o).__name__}: {o}" for o in outcomes if not isinstance(o, ImageDetections)][:5] == []
    assert outcomes == [expected[image] for image in images]
    assert any("retrying" in record.getMessage() for record in caplog.records), "the restart was noticed"


@pytest.mark.integration
def test_a_bad_image_among_good_ones_fails_alone_with_its_message(
    twin: Twin, config: ClientConfig, expected: dict[bytes, ImageDetections]
) -> None:
    good = image_set(20)
    truncated = good[0][: len(good[0]) // 3]
    images = [*good[:5], NOT_AN_IMAGE, *good[5:12], truncated, *good[12:]]

    with twin.client(config=config) as client:
        outcomes = client.detect_many(images, max_in_flight=8)

    bad = {index: outcome for index, outcome in enumerate(outcomes) if not isinstance(outcome, ImageDetections)}
    assert sorted(bad) == [5, 13]
    assert all(isinstance(error, InvalidImage) and error.status == "INVALID_ARGUMENT" for error in bad.values())
    assert "image" in bad[5].message.lower()
    assert [o for i, o in enumerate(outcomes) if i not in bad] == [expected[image] for image in good]


@pytest.mark.integration
def test_health_labels_model_info_and_statistics_are_read_from_the_server(twin: Twin, config: ClientConfig) -> None:
    with twin.client(config=config) as client:
        assert client.health() is True
        assert client.ready() is True
        assert client.labels() == default_label_map()
        info = client.model_info()
        with pytest.raises(AccessDenied, match=ADMIN_HEADER):
            client.statistics()

    assert info.name == contract.ENSEMBLE_MODEL
    assert [(t.name, t.datatype) for t in info.inputs] == [("IMAGE", "BYTES")]
    assert contract.DETECTIONS.name in [t.name for t in info.outputs]
    with twin.client(config=ClientConfig(url=config.url, headers={ADMIN_HEADER: ADMIN_KEY})) as admin:
        names = {s.model_name for s in admin.statistics()}
    assert {contract.ENSEMBLE_MODEL, contract.PREPROCESS_MODEL, contract.DETECTOR_MODEL} <= names


@pytest.mark.integration
def test_the_client_refuses_calls_after_close(twin: Twin, config: ClientConfig) -> None:
    client = twin.client(config=config)
    client.detect(image_set(1)[0])
    client.close()

    with pytest.raises(FashionBoxError, match="closed"):
        client.detect(image_set(1)[0])
