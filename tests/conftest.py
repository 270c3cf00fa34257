"""Fixtures shared by the test files: real embedded Triton servers for integration tests.

``triton_server`` (session scope) is a callable that returns a *ready* ``TritonServer``::

    @pytest.mark.integration
    def test_something(triton_server, my_repository):
        server = triton_server(my_repository)                   # or triton_server(repo, log_verbose=1)
        client = tritonclient.grpc.InferenceServerClient(server.endpoints.grpc)

Servers bind 127.0.0.1 on free ports and write their log under pytest's temporary folder. The same
repository with the same extra ``ServerConfig`` fields gets the same running server within a test file,
so each file pays for a start once; a file's servers are stopped when it ends (each holds about a
gigabyte with its python stubs: kept for the whole session, the suite's forty-odd servers outgrew a 24 GiB
machine). Keep a shared server read-only in tests (no unloading models); start a private ``TritonServer``
otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import require_all

from fashionbox.server import TritonServer, start_on_free_ports

logger = logging.getLogger(__name__)


class TritonServers:
    """Starts servers on demand, one per (repository, config fields), and stops them all at the end."""

    # Free ports are only free until someone binds them; other test runs may share the machine.
    _PORT_ATTEMPTS = 3

    def __init__(self, log_root: Path) -> None:
        self._log_root = log_root
        self._servers: dict[tuple[str, str], TritonServer] = {}

    def __call__(self, repository: Path, **fields: Any) -> TritonServer:
        key = (str(Path(repository).resolve()), repr(sorted(fields.items())))
        server = self._servers.get(key)
        if server is not None:
            if server.is_alive():
                return server
            # A test crashed or stopped it; that test fails on its own, the others get a fresh server.
            logger.warning("shared server for %s died (log %s); starting another", repository, server.log_path)
            server.stop(timeout_s=0)
        server = self._start(repository, fields)
        self._servers[key] = server
        return server

    def _start(self, repository: Path, fields: dict[str, Any]) -> TritonServer:
        log_dir = self._log_root / f"server-{len(self._servers)}"
        log_dir.mkdir(parents=True, exist_ok=True)
        return start_on_free_ports(repository, log_dir, attempts=self._PORT_ATTEMPTS, **fields)

    def started(self) -> set[tuple[str, str]]:
        """The keys of the servers running now (see :meth:`stop_all`)."""
        return set(self._servers)

    def stop_all(self, keep: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> None:
        """Stop every server but those of ``keep`` (keys from :meth:`started`)."""
        # together: each drains and waits for its own exit (up to 10 s), and one after another the
        # session's dozens of shared servers took three minutes at its end
        stopping = {key: server for key, server in self._servers.items() if key not in keep}
        if stopping:
            with ThreadPoolExecutor(max_workers=len(stopping)) as pool:
                list(pool.map(lambda server: server.stop(timeout_s=10), stopping.values()))
        for key in stopping:
            del self._servers[key]


def pytest_configure(config: pytest.Config) -> None:
    # Under CI or FASHIONBOX_REQUIRE_ALL=1 a missing server-side dependency is an error, not a skip.
    config.pluginmanager.register(require_all, "fashionbox-require-all")


@pytest.fixture(scope="session", autouse=True)
def _openvino_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """OpenVINO's model cache in the session's temporary folder, not the user's cache folder: the runners
    and the servers the tests start (they inherit this environment) share it, as a host's do."""
    from fashionbox.core.openvino_runtime import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("openvino-cache"))
    yield
    if before is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServers]:
    """``triton_server(repository, **config_fields) -> TritonServer``: a ready, shared server."""
    servers = TritonServers(tmp_path_factory.mktemp("triton-logs"))
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture(scope="module", autouse=True)
def _servers_of_this_file(triton_server: TritonServers) -> Iterator[None]:
    """Stops the shared servers a test file started when it ends (its module fixtures are torn down first)."""
    before = triton_server.started()
    yield
    triton_server.stop_all(keep=before)
