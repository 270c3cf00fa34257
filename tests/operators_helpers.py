"""Helpers of the operators' tools tests: tritonserver started directly through ``fashionbox-tritonserver``
(as Model Analyzer or a shell starts it, not through ``fashionbox serve``)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from fashionbox.server import find_free_ports


def console_script(name: str) -> str:
    """The console script ``name`` of this environment (installed by the parts' pyproject.toml)."""
    path = Path(sysconfig.get_path("scripts")) / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: pip install -e ./server")
    return found


def wait_ready(http_url: str, process: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with code {process.returncode} before it was ready")
        try:
            with opener.open(f"{http_url}/v2/health/ready", timeout=1.0) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            exc.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"tritonserver at {http_url} was not ready after {timeout_s:g} s")


@contextlib.contextmanager
def direct_tritonserver(
    repository: Path, log_path: Path, extra: Sequence[str] = ()
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``fashionbox-tritonserver`` on ``repository`` and free ports, ready; yields (process, gRPC URL).
    Killed on leaving the block if the test did not stop it."""
    grpc_port, http_port, metrics_port = find_free_ports(3)
    command = [
        console_script("fashionbox-tritonserver"),
        f"--model-repository={repository}",
        f"--grpc-port={grpc_port}",
        f"--http-port={http_port}",
        f"--metrics-port={metrics_port}",
        "--exit-timeout-secs=10",
        *extra,
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{http_port}", process)
        yield process, f"127.0.0.1:{grpc_port}"
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    import os

                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
