"""The served ensemble of the client's integration tests: a private server, or one named by the environment.

With ``FASHIONBOX_CLIENT_TEST_URL`` set (``host:port`` of Triton's gRPC endpoint), the tests talk
to that server and import nothing server-side, so they run in a venv that holds only the client
wheel (``scripts/client_compat.sh`` starts it with ``tests/client_serve.py``). The server must
serve the stand-in repository of ``client_servers.py`` with the statistics API restricted to
:data:`~client_images.ADMIN_HEADER`. Without the variable, each test module starts a private
server of that kind (needs the server parts), as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from client_images import RESTRICT_STATISTICS

if TYPE_CHECKING:
    from fashionbox.server import TritonServer

SERVED_URL_ENV = "FASHIONBOX_CLIENT_TEST_URL"


@dataclass(frozen=True)
class Served:
    """Where the tests send their calls, and the server itself when this session started it."""

    url: str
    server: TritonServer | None

    def restartable(self) -> TritonServer:
        """The private server, for tests that stop and restart it; skips against a server started elsewhere."""
        if self.server is None:
            pytest.skip(f"the server at {self.url} ({SERVED_URL_ENV}) was started elsewhere and cannot be restarted")
        return self.server


def served_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Body of a module-scoped fixture: the server of ``FASHIONBOX_CLIENT_TEST_URL``, else a private one."""
    url = os.environ.get(SERVED_URL_ENV, "").strip()
    if url:
        yield Served(url, None)
        return
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    from client_servers import standin_repository, start_private_server

    server = start_private_server(
        standin_repository(tmp_path_factory), tmp_path_factory.mktemp("logs"), extra_args=(RESTRICT_STATISTICS,)
    )
    try:
        yield Served(server.endpoints.grpc, server)
    finally:
        server.stop(timeout_s=10)
