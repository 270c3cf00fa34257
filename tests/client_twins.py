"""One test for both clients: ``AsyncFashionClient`` behind ``FashionClient``'s blocking methods.

The two clients share one core and differ in how they wait, so a behaviour is tested once,
parametrised over :data:`TWINS`; a test module declares the fixture itself (``--noconftest``
runs, see ``scripts/client_compat.sh``)::

    @pytest.fixture(params=TWINS)
    def twin(request: pytest.FixtureRequest) -> Iterator[Twin]:
        with Twin(request.param) as twin:
            yield twin

    def test_something(twin: Twin) -> None:
        with twin.client(transport=FakeTransport(...)) as client:
            client.detect(image)

For ``"async"``, :meth:`Twin.client` gives an :class:`AsyncAsBlocking`: each call runs the
coroutine of the same name to completion on the client's own event loop, in the calling thread
(the loop is the same for every call, so a channel made on the first call serves the rest). A
call from another thread while the loop is busy (closing the client under a running
``detect_many``) is handed to the loop thread-safely. Behaviours only one client has (threads
and timers, cancellation, work kept off the event loop) stay in tests of their own.

Client-side only: the client's compatibility venvs import this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, Protocol, TypeVar

from client_fakes import AsyncFakeTransport, FakeTransport

from fashionbox.client import (
    AsyncFashionClient,
    ClientConfig,
    FashionBoxError,
    FashionClient,
    ImageDetections,
    ImageInput,
    ModelInfo,
    ModelStatistics,
)
from fashionbox.contract.labels import LabelMap

TWINS = ("sync", "async")
_T = TypeVar("_T")


class Client(Protocol):
    """What the shared tests call: ``FashionClient``'s surface."""

    @property
    def url(self) -> str: ...
    @property
    def config(self) -> ClientConfig: ...
    @property
    def is_closed(self) -> bool: ...
    def __enter__(self) -> Client: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None: ...
    def close(self) -> None: ...
    def detect(self, image: ImageInput, *, timeout_s: float | None = None) -> ImageDetections: ...
    def detect_many(
        self, images: Iterable[ImageInput], *, max_in_flight: int = ..., timeout_s: float | None = None
    ) -> list[ImageDetections | FashionBoxError]: ...
    def health(self, *, timeout_s: float | None = None) -> bool: ...
    def ready(self, *, timeout_s: float | None = None) -> bool: ...
    def labels(self, *, refresh: bool = False, timeout_s: float | None = None) -> LabelMap: ...
    def model_info(self, *, timeout_s: float | None = None) -> ModelInfo: ...
    def statistics(
        self, model_name: str | None = None, *, timeout_s: float | None = None
    ) -> tuple[ModelStatistics, ...]: ...


class AsyncAsBlocking:
    """An :class:`AsyncFashionClient` with ``FashionClient``'s blocking methods, on a private event loop."""

    def __init__(self, client: AsyncFashionClient) -> None:
        self.inner = client
        self._loop = asyncio.new_event_loop()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        if self._loop.is_running():  # another thread is inside a call: join the loop, do not nest it
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
        return self._loop.run_until_complete(coroutine)

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def config(self) -> ClientConfig:
        return self.inner.config

    @property
    def is_closed(self) -> bool:
        return self.inner.is_closed

    def __enter__(self) -> AsyncAsBlocking:
        self._run(self.inner.__aenter__())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._run(self.inner.__aexit__(exc_type, exc, traceback))

    def close(self) -> None:
        self._run(self.inner.aclose())

    def detect(self, image: ImageInput, *, timeout_s: float | None = None) -> ImageDetections:
        return self._run(self.inner.detect(image, timeout_s=timeout_s))

    def detect_many(
        self, images: Iterable[ImageInput], *, max_in_flight: int | None = None, timeout_s: float | None = None
    ) -> list[ImageDetections | FashionBoxError]:
        given: dict[str, Any] = {} if max_in_flight is None else {"max_in_flight": max_in_flight}
        return self._run(self.inner.detect_many(images, timeout_s=timeout_s, **given))

    def health(self, *, timeout_s: float | None = None) -> bool:
        return self._run(self.inner.health(timeout_s=timeout_s))

    def ready(self, *, timeout_s: float | None = None) -> bool:
        return self._run(self.inner.ready(timeout_s=timeout_s))

    def labels(self, *, refresh: bool = False, timeout_s: float | None = None) -> LabelMap:
        return self._run(self.inner.labels(refresh=refresh, timeout_s=timeout_s))

    def model_info(self, *, timeout_s: float | None = None) -> ModelInfo:
        return self._run(self.inner.model_info(timeout_s=timeout_s))

    def statistics(
        self, model_name: str | None = None, *, timeout_s: float | None = None
    ) -> tuple[ModelStatistics, ...]:
        return self._run(self.inner.statistics(model_name, timeout_s=timeout_s))

    def dispose(self) -> None:
        """Close the client if the test did not, then the loop as ``asyncio.run`` would."""
        if not self._loop.is_closed():
            try:
                self._loop.run_until_complete(self._finish())
            finally:
                self._loop.close()

    async def _finish(self) -> None:
        await self.inner.aclose()
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        await self._loop.shutdown_asyncgens()
        await self._loop.shutdown_default_executor()


class Twin:
    """Which client a parametrised test runs: ``"sync"`` (``FashionClient``) or ``"async"``.

    Used as a context manager by the fixture: on leaving, every async client it made is closed
    with its event loop.
    """

    def __init__(self, kind: str) -> None:
        if kind not in TWINS:
            raise ValueError(f"kind must be one of {TWINS}, got {kind!r}")
        self.kind = kind
        self._made: list[AsyncAsBlocking] = []

    @property
    def is_async(self) -> bool:
        return self.kind == "async"

    def client(
        self, url: str | None = None, *, config: ClientConfig | None = None, transport: FakeTransport | None = None
    ) -> Client:
        """A client of this kind; ``transport`` is the fake both kinds share (wrapped for asyncio)."""
        if not self.is_async:
            return FashionClient(url, config=config, transport=transport)
        wrapped = None if transport is None else AsyncFakeTransport(transport)
        made = AsyncAsBlocking(AsyncFashionClient(url, config=config, transport=wrapped))
        self._made.append(made)
        return made

    def __enter__(self) -> Twin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for made in self._made:
            made.dispose()

    def __repr__(self) -> str:
        return self.kind
