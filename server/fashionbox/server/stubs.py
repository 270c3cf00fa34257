"""Python-backend stubs of a running Triton: which are alive, and a watch that notices one dying.

Every python-backend model instance runs in its own ``triton_python_backend_stub`` process, a child
of ``tritonserver``. Triton 2.51 does not restart a stub that dies (killed, out of memory,
segfault in a native library): every later request routed to that instance fails with INTERNAL
"Stub process '<model>_0_0' is not healthy." and, worse, the server and the model keep reporting
*ready*, so no probe notices (measured, docs/RELIABILITY.md). ``fashionbox serve`` therefore
watches the stubs itself and restarts the server when one is gone::

    code = supervise(server)                 # blocks; restarts the server when a stub dies

or by hand::

    watch = StubWatch.of(server.pid)         # right after the server is ready
    if watch.dead(): ...                      # e.g. once a second

Linux only (reads ``/proc``); elsewhere the watch sees no stubs and never reports one dead.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fashionbox.server.errors import PortInUseError

__all__ = ["STUB_NAME", "StubWatch", "children", "python_stubs", "restart_on_same_ports", "supervise"]

logger = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"
# The stub's command line (Triton 2.51): binary, model.py, shm region, two shm sizes, parent pid,
# backend folder, ipc id, the instance name the server's errors use ("preprocess_0_0"), runtime.
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_.-]+_\d+_\d+$")
_PROC = Path("/proc")


def _parent_pid(pid: int) -> int | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")"; ppid follows the last ")".
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    """The live direct children of ``pid`` (a scan of ``/proc``; empty where there is none)."""
    if not _PROC.is_dir():
        return []
    out = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and _parent_pid(int(entry.name)) == pid:
            out.append(int(entry.name))
    return sorted(out)


def _command_line(pid: int) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def python_stubs(server_pid: int) -> dict[int, str]:
    """Live python-backend stubs of the server ``server_pid``: process id -> model instance name."""
    stubs = {}
    for pid in children(server_pid):
        command = _command_line(pid)
        if command and os.path.basename(command[0]) == STUB_NAME and not _is_zombie(pid):
            names = [part for part in command[2:] if _INSTANCE_NAME.match(part)]
            # Without an instance name: the model folder (<repository>/<model>/<version>/model.py).
            stubs[pid] = names[-1] if names else Path(command[1] if len(command) > 1 else "?").parent.parent.name
    return stubs


@dataclass(frozen=True)
class StubWatch:
    """The stubs a server had when it became ready; :meth:`dead` names those gone since."""

    server_pid: int
    stubs: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, server_pid: int) -> StubWatch:
        return cls(server_pid, tuple(sorted(python_stubs(server_pid).items())))

    def dead(self) -> list[str]:
        """Instance names (``"preprocess_0_0"``) whose stub process has exited or been killed."""
        alive = python_stubs(self.server_pid)
        return [name for pid, name in self.stubs if alive.get(pid) != name]


class Supervised(Protocol):
    """What :func:`supervise` needs of a server (``fashionbox.server.process.TritonServer`` has it)."""

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def wait_until_ready(self, timeout_s: float | None = None) -> None: ...

    def wait(self, timeout_s: float | None = None) -> int | None: ...

    def stop(self, timeout_s: float | None = None) -> int | None: ...


_RESTART_ATTEMPTS = 10


def restart_on_same_ports(server: Supervised, stop_timeout_s: float) -> None:
    """Stop ``server`` and start it again on its ports (call from the thread that started it).

    Between the two another process may briefly hold one of the ports; the start is tried again
    for a few seconds before giving up.
    """
    server.stop(timeout_s=stop_timeout_s)
    for attempt in range(1, _RESTART_ATTEMPTS + 1):
        try:
            server.start()
            server.wait_until_ready()
            return
        except PortInUseError:
            # Another process may hold one of the ports for a moment; give up after a few seconds.
            server.stop(timeout_s=0)
            if attempt == _RESTART_ATTEMPTS:
                raise
            time.sleep(0.5)


def supervise(
    server: Supervised,
    *,
    poll_s: float = 1.0,
    stop_timeout_s: float = 10.0,
    stop: threading.Event | None = None,
    on_restart: Callable[[list[str]], None] | None = None,
    watch: StubWatch | None = None,
) -> int | None:
    """Block while ``server`` runs, restarting it whenever one of its python-backend stubs dies.

    Returns the server's exit code when it exits on its own, or ``None`` once ``stop`` is set.
    A restart stops the server (SIGTERM: requests in flight elsewhere may finish, for at most
    ``stop_timeout_s``, since unloading a model whose stub is gone hangs until the exit timeout),
    starts it again on the same ports and waits until it is ready; clients retrying
    UNAVAILABLE meanwhile carry on. Must run on the thread that started the server. ``watch``
    is the stubs to watch at first (default: those alive now, so call it once the server is ready).
    """
    if server.pid is None:
        raise RuntimeError("supervise() needs a started server")
    watch = watch if watch is not None else StubWatch.of(server.pid)
    while stop is None or not stop.is_set():
        code = server.wait(timeout_s=poll_s)
        if code is not None:
            return code
        dead = watch.dead()
        if not dead:
            continue
        logger.error("python backend stub(s) %s died; restarting the server", ", ".join(dead))
        if on_restart is not None:
            on_restart(dead)
        restart_on_same_ports(server, stop_timeout_s)
        assert server.pid is not None
        watch = StubWatch.of(server.pid)
        logger.info("server restarted after the death of stub(s) %s", ", ".join(dead))
    return None
