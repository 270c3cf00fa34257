"""What only the asyncio client has, without a server: cancellation, work off the loop, a lazy channel.

Every behaviour both clients share is tested once for both in ``test_client_unit.py`` (the
``twin`` fixture runs ``AsyncFashionClient`` there behind blocking methods, ``client_twins.py``).
Here the tests drive the event loop themselves: closing from a task on the same loop, cancelling
``detect_many``, which thread encodes an image, and a client that never made a call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from client_fakes import AsyncFakeTransport, FakeTransport, detections_result, dress_and_shoe_payload, png_bytes
from PIL import Image

from fashionbox.client import AsyncFashionClient, ClientClosed, ImageEncoding
from fashionbox.contract.labels import default_label_map

_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


def client_for(fake: FakeTransport) -> AsyncFashionClient:
    return AsyncFashionClient(transport=AsyncFakeTransport(fake))


@pytest.fixture
def answering() -> FakeTransport:
    payload = dress_and_shoe_payload(default_label_map())
    return FakeTransport(lambda request: detections_result([payload]))


def test_closing_the_client_from_a_task_on_its_loop_during_detect_many_raises_client_closed(
    answering: FakeTransport,
) -> None:
    answering.delay_s = 0.01

    async def scenario() -> None:
        client = client_for(answering)

        async def close_soon() -> None:
            await asyncio.sleep(0.05)
            await client.aclose()

        closer = asyncio.ensure_future(close_soon())
        try:
            await client.detect_many([png_bytes()] * 500, max_in_flight=4)
        finally:
            await closer

    with pytest.raises(ClientClosed):
        run(scenario())
    assert len(answering.requests) < 500


def test_cancelling_detect_many_cancels_every_request_it_started(answering: FakeTransport) -> None:
    answering.delay_s = 10.0

    async def scenario() -> None:
        async with client_for(answering) as client:
            task = asyncio.ensure_future(client.detect_many([png_bytes()] * 20, max_in_flight=8))
            await asyncio.sleep(0.05)
            assert answering.in_flight == 8
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert answering.in_flight == 0

    run(scenario())


def test_files_and_in_memory_images_are_encoded_off_the_event_loop(
    answering: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fashionbox.client import _base

    threads: list[threading.Thread] = []
    original = _base.encode_image

    def recording(image: Any, encoding: ImageEncoding) -> bytes:
        threads.append(threading.current_thread())
        return original(image, encoding)

    monkeypatch.setattr(_base, "encode_image", recording)

    async def scenario() -> None:
        async with client_for(answering) as client:
            await client.detect(Image.new("RGB", (32, 32)))
            await client.detect(png_bytes())

    run(scenario())

    pil_thread, bytes_thread = threads
    assert pil_thread is not threading.main_thread()
    assert bytes_thread is threading.main_thread(), "bytes need no work, so no thread hop"


def test_a_client_that_never_called_closes_without_making_a_channel() -> None:
    client = AsyncFashionClient("127.0.0.1:1")

    run(client.aclose())

    assert client.is_closed
