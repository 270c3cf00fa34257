"""Admission control: a bound on the requests inside the ensemble, shared by its python steps.

Triton's queue policies bound one model's queue each; an ensemble has none of its own. On a CPU
the entry (``preprocess``) admits faster than the detector finishes, so with only per-model
bounds the excess waits in a later step's queue and is refused there after its timeout, about a
second later (docs/RELIABILITY.md). :class:`AdmissionSlots` bounds the whole pipeline instead:
``preprocess`` takes a slot for each request before it decodes anything and refuses one that finds
every slot taken, at once, with UNAVAILABLE. Each slot is keyed by its request's random key (carried
in the request's capability token, :mod:`fashionbox.core.capability`). The slot is *pending* until
``detector``, which only the ensemble can reach, confirms it; a pending slot frees itself after
``pending_s`` (1 s), so a direct call to ``preprocess``, whose outputs go back to its caller, holds
a slot that briefly. ``postprocess`` gives back the slot of each request it answers, by its key,
whatever the answer; a bad image gives its slot back in ``preprocess``. A confirmed request that
never reaches ``postprocess`` (its stub died; a later step's queue timeout, where one is set) holds
its slot until ``ttl_s`` after its confirmation, so a lost release costs a slot for a while, never
for good.

The slots are admission times in a small file shared by the stub processes of one server
(``/dev/shm`` where it is writable, else the temporary folder), changed only under an exclusive
``flock``; the file's name comes from the server's process id and the repository, so two servers
never share one and a restarted server starts empty. The models themselves create and remove it,
whoever started Triton (``fashionbox serve``, Model Analyzer, a shell): each open instance holds a
shared open-file-description lock (``F_OFD_SETLK``, which neither ``flock`` nor another process's
close disturbs) on the file's first byte for as long as it is open, and the instance whose
``close()`` (its model's ``finalize``) finds no other holder unlinks the file. A file whose server
is dead and whose every holder is gone (a killed server: no ``finalize`` ran) is removed by the
next :meth:`AdmissionSlots.for_server` in the same folder::

    slots = AdmissionSlots.for_server(repository_dir, capacity=16, ttl_s=5.0, pending_s=1.0)
    admitted = slots.take(keys)              # preprocess: the first `admitted` go in; the rest are refused
    slots.confirm(keys)                      # detector
    slots.release(keys)                      # postprocess: each request answered
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["AdmissionSlots", "reclaim_stale", "slots_path"]

# Per slot: when it frees itself (time.monotonic(); 0.0 is free) and the key of the request holding it.
_SLOT_TYPE = np.dtype([("expires", "<f8"), ("key", "<u8")])
_FILE_PREFIX = "fashionbox-admission-"


def _slots_folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def slots_path(repository: Path, server_pid: int) -> Path:
    """Where the slots of the server ``server_pid`` serving ``repository`` live."""
    key = hashlib.sha256(f"{Path(repository).resolve()}\0{server_pid}".encode()).hexdigest()[:16]
    return _slots_folder() / f"{_FILE_PREFIX}{server_pid}-{key}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except (OverflowError, ValueError):
        return True  # no process id (an older file's name): not ours to judge
    return True


def reclaim_stale(folder: Path | None = None) -> list[Path]:
    """Remove the slots files in ``folder`` (default: where :func:`slots_path` puts them) whose server
    process is gone and which no process holds open any more: what a killed server left behind.
    Another user's files (0600) cannot be opened and are left alone. Returns the files removed."""
    removed: list[Path] = []
    folder = _slots_folder() if folder is None else folder
    for path in folder.glob(f"{_FILE_PREFIX}*"):
        pid_text = path.name[len(_FILE_PREFIX):].partition("-")[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            # Non-blocking: a file held under the mutex is being opened (or closed) right now.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _ofd_lock(fd, fcntl.F_WRLCK, wait=False) and _same_file(fd, path):
                path.unlink()
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)  # drops the flock and the OFD lock with it
    return removed


class AdmissionSlots:
    """``capacity`` slots in the file at ``path``; see the module docstring."""

    def __init__(self, path: Path, *, capacity: int, ttl_s: float, pending_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        pending_s = ttl_s if pending_s is None else pending_s
        if not 0 < pending_s <= ttl_s:
            raise ValueError(f"pending_s must be positive and at most ttl_s ({ttl_s}), got {pending_s}")
        self.path = Path(path)
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.pending_s = pending_s
        self._clock = clock
        size = capacity * _SLOT_TYPE.itemsize
        fd = self._open_held(size)
        try:
            self._map = mmap.mmap(fd, size)
            self._slots: npt.NDArray[np.void] = np.frombuffer(self._map, dtype=_SLOT_TYPE, count=capacity)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def _open_held(self, size: int) -> int:
        """Open (or create) the file and take this instance's holder lock, under the mutex. A file
        unlinked by its last holder between our open and our lock is not the one at ``path`` any
        more: open again, so every live instance shares the file the path names."""
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                with _Lock(fd):
                    if not _same_file(fd, self.path):
                        os.close(fd)
                        continue
                    if os.fstat(fd).st_size < size:  # the first process sizes it; zeros are free slots
                        os.ftruncate(fd, size)
                    _ofd_lock(fd, fcntl.F_RDLCK, wait=True)
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise OSError(f"could not open {self.path}: it kept being removed")

    @classmethod
    def for_server(cls, repository: Path, *, capacity: int, ttl_s: float,
                   pending_s: float | None = None) -> AdmissionSlots:
        """The slots of the server this python-backend stub belongs to (its parent process)."""
        path = slots_path(repository, os.getppid())
        with contextlib.suppress(OSError):
            reclaim_stale(path.parent)
        return cls(path, capacity=capacity, ttl_s=ttl_s, pending_s=pending_s)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"the admission slots {self.path} are closed")
        return self._fd

    def _live(self, now: float) -> npt.NDArray[np.bool_]:
        live: npt.NDArray[np.bool_] = self._slots["expires"] > now
        return live

    def take(self, keys: Sequence[int]) -> int:
        """Take a pending slot for each of ``keys`` in order, as many as are free, under one lock;
        how many were taken (``preprocess`` admits the first ``take(keys)`` requests of a batch and
        refuses the rest). A pending slot frees itself after ``pending_s`` unless confirmed."""
        with _Lock(self._open_fd()):
            now = self._clock()
            free = np.flatnonzero(~self._live(now))[:len(keys)]
            self._slots["key"][free] = np.asarray(keys[:len(free)], dtype=np.uint64)
            self._slots["expires"][free] = now + self.pending_s
            return len(free)

    def confirm(self, keys: Sequence[int]) -> None:
        """The requests of ``keys`` reached the step only the ensemble reaches: hold their live slots
        for ``ttl_s``. A key without a live slot (its pending time ran out first) takes none: that
        request finishes uncounted rather than another one being refused."""
        with _Lock(self._open_fd()):
            now = self._clock()
            for key in keys:
                mine = (self._slots["key"] == np.uint64(key)) & self._live(now)
                self._slots["expires"][mine] = now + self.ttl_s

    def release(self, keys: Sequence[int]) -> None:
        """Give back the slots of ``keys`` (a key with no slot, already freed or expired, frees nothing)."""
        with _Lock(self._open_fd()):
            for key in keys:
                mine = self._slots["key"] == np.uint64(key)
                self._slots["expires"][mine] = 0.0
                self._slots["key"][mine] = 0

    def in_use(self) -> int:
        with _Lock(self._open_fd()):
            return int(self._live(self._clock()).sum())

    def close(self) -> None:
        """Stop using the slots; the last instance open on the file (in any process) removes it.
        Calling it again is harmless."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        del self._slots  # the array shares the map's buffer: it must go before the map closes
        self._map.close()
        try:
            with _Lock(fd):
                # Upgrading our read lock to a write lock succeeds only when no one else holds one.
                if _ofd_lock(fd, fcntl.F_WRLCK, wait=False) and _same_file(fd, self.path):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
        finally:
            os.close(fd)


class _Lock:
    """``flock`` held for a ``with`` block, between processes (a stub runs one ``execute`` at a time)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open at ``fd`` (it may have been unlinked since)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


# struct flock on Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t, 0 for OFD locks).
_FLOCK = struct.Struct("hhqqi4x")


def _ofd_lock(fd: int, kind: int, *, wait: bool) -> bool:
    """An open-file-description lock of ``kind`` (F_RDLCK, F_WRLCK) on the file's first byte: held by
    this open file until it is closed, in any process, and independent of ``flock``. False when
    ``wait`` is off and another open file holds a conflicting lock."""
    command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    try:
        fcntl.fcntl(fd, command, _FLOCK.pack(kind, os.SEEK_SET, 0, 1, 0))
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True
