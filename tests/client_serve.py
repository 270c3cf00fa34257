"""Serve the ensemble of the client's integration tests until told to stop (SIGTERM or Ctrl-C).

For running the client's tests in another venv (``scripts/client_compat.sh``): run this with the
project's venv, which has the server parts, then point the tests at the printed address through
``FASHIONBOX_CLIENT_TEST_URL`` (``client_served.py``). The server is the one the integration
tests start for themselves: the ONNX stand-in repository, statistics restricted to the admin header.

Usage::

    .venv/bin/python tests/client_serve.py --folder /tmp/served   # writes /tmp/served/url when ready
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from client_images import RESTRICT_STATISTICS
from client_servers import start_private_server, write_client_repository


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="repository, logs and the url file go here")
    args = parser.parse_args(argv)
    folder: Path = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    repository = write_client_repository(folder)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    server = start_private_server(repository, logs, extra_args=(RESTRICT_STATISTICS,))
    try:
        url = server.endpoints.grpc
        (folder / "url.tmp").write_text(url + "\n")
        (folder / "url.tmp").replace(folder / "url")  # whoever polls for the file never reads half of it
        print(f"serving the client test ensemble at {url} (log under {logs})", flush=True)
        while not stop.wait(1.0):
            if not server.is_alive():
                print(f"the server died; see {server.log_path}", file=sys.stderr)
                return 1
        return 0
    finally:
        server.stop(timeout_s=10)


if __name__ == "__main__":
    sys.exit(main())
