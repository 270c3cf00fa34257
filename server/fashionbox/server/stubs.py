"""Python-backend stubs of a running Triton: which are alive, a watch that notices one dying, and
the supervisor that restarts a server whose stub died and says whether the pipeline answers.

Every python-backend model instance runs in its own ``triton_python_backend_stub`` process, a child
of ``tritonserver``. Triton 2.51 does not restart a stub that dies (killed, out of memory,
segfault in a native library): every later request routed to that instance fails with INTERNAL
"Stub process '<model>_0_0' is not healthy." and, worse, the server and the model keep reporting
*ready*, so no probe notices (measured, docs/RELIABILITY.md). ``fashionbox serve`` therefore
watches the stubs itself and restarts the server when one is gone::

    code = supervise(server, ready_file=Path("/tmp/fashionbox.ready"))   # blocks

A stub also ends when its model is unloaded or reloaded through the repository API (an admin with
the key, or anyone in explicit mode): that is no crash, and the server is not restarted. The
supervisor tells them apart by the model's readiness: a stub gone while Triton still reports its
model READY, with no new stub for that model, died; one whose model is unloading, unloaded or
was given new stubs ended on purpose. The verdict "every model of the pipeline is READY and no
stub died" is written to ``ready_file`` (present: ready; absent: not), which probes read.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fashionbox.server.errors import PortInUseError

__all__ = [
    "BROKEN_STOP_S",
    "SHM_DIR",
    "STUB_NAME",
    "ReadyFile",
    "StubWatch",
    "children",
    "crashed",
    "model_of",
    "python_stubs",
    "remove_regions",
    "restart_on_same_ports",
    "supervise",
]

logger = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"
# The stub's command line (Triton 2.51): binary, model.py, shm region, two shm sizes, parent pid,
# backend folder, ipc id, the instance name the server's errors use ("preprocess_0_0"), runtime.
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_.-]+_\d+_\d+$")
_INSTANCE_SUFFIX = re.compile(r"_\d+_\d+$")
# The stub's shared-memory region, the third word of its command line, is a file in /dev/shm.
_REGION = re.compile(r"^triton_python_backend_shm_region_[A-Za-z0-9_-]+$")
_PROC = Path("/proc")
SHM_DIR = Path("/dev/shm")
BROKEN_STOP_S = 0.0
"""How long a restart waits for a server whose stub died to stop: not at all. SIGTERM would wait out
the exit timeout (unloading a model whose stub is gone hangs), and so would a drain; requests in
flight get UNAVAILABLE or CANCELLED, which clients retry."""


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


def _started(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (0 if unknown)."""
    try:
        return int((_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _is_zombie(pid: int) -> bool:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _stubs(server_pid: int) -> dict[int, tuple[str, str | None, int]]:
    """Live stubs of ``server_pid``: process id -> (model instance name, shared-memory region or None,
    start time)."""
    stubs = {}
    for pid in children(server_pid):
        command = _command_line(pid)
        if command and os.path.basename(command[0]) == STUB_NAME and not _is_zombie(pid):
            names = [part for part in command[2:] if _INSTANCE_NAME.match(part)]
            # Without an instance name: the model folder (<repository>/<model>/<version>/model.py).
            name = names[-1] if names else Path(command[1] if len(command) > 1 else "?").parent.parent.name
            region = command[2] if len(command) > 2 and _REGION.match(command[2]) else None
            stubs[pid] = (name, region, _started(pid))
    return stubs


def python_stubs(server_pid: int) -> dict[int, str]:
    """Live python-backend stubs of the server ``server_pid``: process id -> model instance name."""
    return {pid: name for pid, (name, _, _) in _stubs(server_pid).items()}


def model_of(instance: str) -> str:
    """The model of a stub's instance name: ``"preprocess_0_1"`` -> ``"preprocess"``."""
    return _INSTANCE_SUFFIX.sub("", instance)


def remove_regions(regions: Iterable[str]) -> list[str]:
    """Remove the python backend's shared-memory regions named (only names it gives: never another
    file in ``/dev/shm``); the ones that were there. Call once no process of the server is left: a
    killed server or stub leaves its regions behind, a cleanly stopping Triton removes its own."""
    removed = []
    for region in sorted(set(regions)):
        if _REGION.match(region):
            try:
                (SHM_DIR / region).unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning("could not remove %s: %s", SHM_DIR / region, exc)
                continue
            removed.append(region)
    return removed


@dataclass(frozen=True)
class StubWatch:
    """The stubs a server had when it became ready; :meth:`dead` names those gone since."""

    server_pid: int
    stubs: tuple[tuple[int, str], ...]
    regions: tuple[str, ...] = ()
    """Their shared-memory regions in ``/dev/shm`` (:func:`remove_regions`)."""
    started: tuple[tuple[int, int], ...] = ()
    """Process id -> start time (clock ticks since boot)."""

    @classmethod
    def of(cls, server_pid: int) -> StubWatch:
        found = _stubs(server_pid)
        return cls(
            server_pid,
            tuple(sorted((pid, name) for pid, (name, _, _) in found.items())),
            tuple(sorted(region for _, region, _ in found.values() if region is not None)),
            tuple(sorted((pid, started) for pid, (_, _, started) in found.items())),
        )

    def dead_stubs(self) -> list[tuple[int, str]]:
        """(process id, instance name) of the stubs that have exited or been killed."""
        alive = python_stubs(self.server_pid)
        return [(pid, name) for pid, name in self.stubs if pid not in alive]

    def dead(self) -> list[str]:
        """Instance names (``"preprocess_0_0"``) whose stub process has exited or been killed."""
        return [name for _, name in self.dead_stubs()]


class Supervised(Protocol):
    """What :func:`supervise` needs of a server (``fashionbox.server.process.TritonServer`` has it)."""

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def wait_until_ready(self, timeout_s: float | None = None) -> None: ...

    def wait(self, timeout_s: float | None = None) -> int | None: ...

    def stop(self, timeout_s: float | None = None) -> int | None: ...

    def watch_stubs(self) -> StubWatch:
        """The stubs alive now (the server keeps their regions, to remove them once it is stopped)."""
        ...

    def pipeline_models(self) -> tuple[str, ...]:
        """The models the server loads at start: every one must be READY for the pipeline to answer."""
        ...

    def model_ready(self, model: str) -> bool | None:
        """Triton's model-ready answer: True, False (unloading, unloaded, unknown), None (no answer)."""
        ...


class ReadyFile:
    """The supervisor's verdict where probes read it: the file exists while the pipeline answers.

    Written atomically (a probe never reads half a file) with the server's pid and the models
    checked; removed when the pipeline stops answering and when supervision ends. Every change of
    verdict is logged, with or without a file.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.ready: bool | None = None
        self.reason = ""

    def set(self, ready: bool, reason: str) -> None:
        if ready == self.ready and reason == self.reason:
            return
        if ready:
            logger.info("pipeline ready: %s", reason)
        elif self.ready is not False or reason != self.reason:
            logger.warning("pipeline NOT ready: %s", reason)
        self.ready, self.reason = ready, reason
        if self.path is None:
            return
        if ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            partial.write_text(f"ready\n{reason}\n", encoding="utf-8")
            os.replace(partial, self.path)
        else:
            self.path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Supervision ends: remove the file, quietly."""
        self.ready, self.reason = None, ""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


_RESTART_ATTEMPTS = 10


def restart_on_same_ports(server: Supervised, stop_timeout_s: float = BROKEN_STOP_S) -> None:
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


def crashed(server: Supervised, watch: StubWatch, dead: list[tuple[int, str]]) -> list[str]:
    """Of the ``dead`` stubs of ``watch`` (:meth:`StubWatch.dead_stubs`), the instance names of those
    that died rather than ended with an unload or reload of their model through the repository API.

    A model reloaded (also a composing model reloaded with its ensemble) has a new stub of the same
    instance name, started after the old one, which Triton ends once the new one serves; one
    unloading or unloaded is not READY. A stub gone while its model is READY without a newer stub
    of its name died: Triton 2.51 never notices. Without an answer from the server (no HTTP) every
    one counts as died. (A reload that drops instances, 2 to 1, looks like a death: restarted.)
    """
    assert server.pid is not None
    watched, started = {pid for pid, _ in watch.stubs}, dict(watch.started)
    alive = _stubs(server.pid)
    died = []
    for pid, name in dead:
        model = model_of(name)
        born = started.get(pid)
        renewed = any(
            other == name and (other_pid not in watched if born is None else other_born > born)
            for other_pid, (other, _, other_born) in alive.items()
        )
        if name == model:
            # No instance suffix: the model-level stub the python backend runs while it loads the model
            # (its config's auto-completion), which ends once the instances serve; never a crash.
            logger.info("stub %s ended: the load-time stub of model %s", name, model)
        elif renewed:
            logger.info("stub %s ended: its model %s was reloaded", name, model)
        elif _model_ready(server, model) is False:
            logger.info("stub %s ended: its model %s was unloaded", name, model)
        else:
            died.append(name)
    return died


def _model_ready(server: Supervised, model: str, attempts: int = 3) -> bool | None:
    """``server.model_ready(model)``, asked again when the server gave no answer (a second each): a
    server busy unloading a model under load may not answer at once, and no answer counts as a death."""
    ready = server.model_ready(model)
    for _ in range(attempts - 1):
        if ready is not None:
            break
        ready = server.model_ready(model)
    return ready


def _pipeline_verdict(server: Supervised) -> tuple[bool, str]:
    models = server.pipeline_models()
    answers = {model: server.model_ready(model) for model in models}
    missing = [model for model, ready in answers.items() if ready is False]
    silent = [model for model, ready in answers.items() if ready is None]
    if missing:
        return False, f"model(s) {', '.join(missing)} not READY (unloaded through the repository API?)"
    if silent and len(silent) < len(models):
        return False, f"no readiness answer for model(s) {', '.join(silent)}"
    if silent:
        return True, f"stubs alive (models {', '.join(models)} not checked: no HTTP)"
    return True, f"models {', '.join(models)} READY, their stubs alive"


def supervise(
    server: Supervised,
    *,
    poll_s: float = 0.25,
    stop_timeout_s: float = BROKEN_STOP_S,
    stop: threading.Event | None = None,
    on_restart: Callable[[list[str]], None] | None = None,
    watch: StubWatch | None = None,
    ready_file: Path | None = None,
    check_models_s: float = 1.0,
) -> int | None:
    """Block while ``server`` runs: restart it whenever one of its python-backend stubs dies, and keep
    the verdict "the pipeline answers" in ``ready_file``.

    Returns the server's exit code when it exits on its own, or ``None`` once ``stop`` is set.

    Policy (docs/RELIABILITY.md, "Readiness"):

    - a stub that died (:func:`crashed`): the verdict turns to not ready at once, the server is
      killed without a drain (``stop_timeout_s``, default :data:`BROKEN_STOP_S`: a pipeline with a
      dead stub cannot drain, and its stop would wait out the exit timeout), its shared-memory
      regions removed, and it is started again on the same ports; clients retrying UNAVAILABLE
      meanwhile carry on;
    - a model unloaded or reloaded through the repository API (a key holder, or anyone in explicit
      mode): no restart; while any model of :meth:`Supervised.pipeline_models` is not READY
      (checked every ``check_models_s``) the verdict is not ready and a warning says which; it is
      ready again once they are loaded.

    Must run on the thread that started the server. ``watch`` is the stubs to watch at first
    (default: those alive now, so call it once the server is ready).
    """
    if server.pid is None:
        raise RuntimeError("supervise() needs a started server")
    watch = watch if watch is not None else server.watch_stubs()
    verdict = ReadyFile(ready_file)
    next_check = 0.0
    try:
        while stop is None or not stop.is_set():
            code = server.wait(timeout_s=0)  # exited on its own (its stubs are gone with it)
            if code is not None:
                verdict.set(False, f"tritonserver exited with code {code}")
                return code
            dead = watch.dead_stubs()
            died = crashed(server, watch, dead) if dead else []
            if died:
                verdict.set(False, f"python backend stub(s) {', '.join(died)} died; restarting the server")
                if on_restart is not None:
                    on_restart(died)
                began = time.monotonic()
                restart_on_same_ports(server, stop_timeout_s)
                logger.info("server restarted %.2f s after the death of stub(s) %s", time.monotonic() - began,
                            ", ".join(died))
                watch, next_check = server.watch_stubs(), 0.0
                continue
            if dead:  # ended with an unload or reload: watch the stubs there are now
                watch, next_check = server.watch_stubs(), 0.0
            if time.monotonic() >= next_check:
                verdict.set(*_pipeline_verdict(server))
                next_check = time.monotonic() + check_models_s
            code = server.wait(timeout_s=poll_s)
            if code is not None:
                verdict.set(False, f"tritonserver exited with code {code}")
                return code
        return None
    finally:
        verdict.clear()
