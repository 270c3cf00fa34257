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
``flock``; the file's name comes
from the repository and the server's process id, so two servers never share one and a restarted
server starts empty::

    slots = AdmissionSlots.for_server(repository_dir, capacity=16, ttl_s=5.0, pending_s=1.0)
    admitted = slots.take(keys)              # preprocess: the first `admitted` go in; the rest are refused
    slots.confirm(keys)                      # detector
    slots.release(keys)                      # postprocess: each request answered
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["AdmissionSlots", "slots_path"]

# Per slot: when it frees itself (time.monotonic(); 0.0 is free) and the key of the request holding it.
_SLOT_TYPE = np.dtype([("expires", "<f8"), ("key", "<u8")])
_FILE_PREFIX = "fashionbox-admission-"


def slots_path(repository: Path, server_pid: int) -> Path:
    """Where the slots of the server ``server_pid`` serving ``repository`` live."""
    key = hashlib.sha256(f"{Path(repository).resolve()}\0{server_pid}".encode()).hexdigest()[:16]
    shm = Path("/dev/shm")
    folder = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return folder / f"{_FILE_PREFIX}{key}"


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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with _Lock(fd):
                if os.fstat(fd).st_size < size:  # the first process sizes it; zeros are free slots
                    os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
            self._slots: npt.NDArray[np.void] = np.frombuffer(self._map, dtype=_SLOT_TYPE, count=capacity)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @classmethod
    def for_server(cls, repository: Path, *, capacity: int, ttl_s: float,
                   pending_s: float | None = None) -> AdmissionSlots:
        """The slots of the server this python-backend stub belongs to (its parent process)."""
        return cls(slots_path(repository, os.getppid()), capacity=capacity, ttl_s=ttl_s, pending_s=pending_s)

    def _live(self, now: float) -> npt.NDArray[np.bool_]:
        live: npt.NDArray[np.bool_] = self._slots["expires"] > now
        return live

    def take(self, keys: Sequence[int]) -> int:
        """Take a pending slot for each of ``keys`` in order, as many as are free, under one lock;
        how many were taken (``preprocess`` admits the first ``take(keys)`` requests of a batch and
        refuses the rest). A pending slot frees itself after ``pending_s`` unless confirmed."""
        with _Lock(self._fd):
            now = self._clock()
            free = np.flatnonzero(~self._live(now))[:len(keys)]
            self._slots["key"][free] = np.asarray(keys[:len(free)], dtype=np.uint64)
            self._slots["expires"][free] = now + self.pending_s
            return len(free)

    def confirm(self, keys: Sequence[int]) -> None:
        """The requests of ``keys`` reached the step only the ensemble reaches: hold their live slots
        for ``ttl_s``. A key without a live slot (its pending time ran out first) takes none: that
        request finishes uncounted rather than another one being refused."""
        with _Lock(self._fd):
            now = self._clock()
            for key in keys:
                mine = (self._slots["key"] == np.uint64(key)) & self._live(now)
                self._slots["expires"][mine] = now + self.ttl_s

    def release(self, keys: Sequence[int]) -> None:
        """Give back the slots of ``keys`` (a key with no slot, already freed or expired, frees nothing)."""
        with _Lock(self._fd):
            for key in keys:
                mine = self._slots["key"] == np.uint64(key)
                self._slots["expires"][mine] = 0.0
                self._slots["key"][mine] = 0

    def in_use(self) -> int:
        with _Lock(self._fd):
            return int(self._live(self._clock()).sum())

    def close(self) -> None:
        del self._slots  # the array shares the map's buffer: it must go before the map closes
        self._map.close()
        os.close(self._fd)


class _Lock:
    """``flock`` held for a ``with`` block, between processes (a stub runs one ``execute`` at a time)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
