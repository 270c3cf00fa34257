"""Indexing as a Ray Data pipeline: ``fashionbox catalog index DIR --ray``, for a collection too large
for one machine's indexer, fanned out to several Triton replicas.

Usage::

    from fashionbox.catalog.ray_indexer import RayIndexer, RayOptions

    indexer = RayIndexer(db, ["10.0.0.1:8001", "10.0.0.2:8001"], options=RayOptions(address="auto"))
    report = indexer.index_folder(Path("/shared/photos"))    # the same IndexReport as Indexer's

The rules are :class:`fashionbox.catalog.indexer.Indexer`'s, and so is every line of SQL: the same
functions decide what is new (size and modification time, then content hash), copy an exact copy's
rows instead of sending it, and write a chunk of outcomes in one transaction
(``changed_files``, ``fresh_items``, ``write_outcomes``, ``copy_later``). Ray does the work per image:

1. **hash** (Ray tasks, as many at once as detect actors): each changed file is read and its SHA-256
   taken; the driver compares the hashes with the database a chunk at a time, as the plain indexer
   does, and keeps the new content;
2. **detect** (an actor pool, ``RayOptions.actors``): each actor reads its files again, sends them
   round robin to the servers (``max_in_flight`` requests per server, all actors together) and takes
   each image's perceptual hash while the server works; it returns the answer (pickled
   ``ImageDetections``) or the error;
3. **write** (the driver): answers are streamed back and written ``chunk_size`` at a time, one
   transaction each: a kill loses at most the chunks not yet committed, and the next run picks them up.

The driver writes because the embedded PostgreSQL listens on a local socket only, and one writer is
not the bottleneck: PostgreSQL spends about 7 ms of CPU on an image's rows, a CPU server about 57 ms
on its detection (BENCHMARKS.md, "Catalog"). On a cluster
(``RayOptions.address``) the files must be at the same paths on every node (a shared filesystem)
and fashionbox-catalog installed there. Without an address a local Ray is started for the run with
``RayOptions.num_cpus`` CPUs, no dashboard, its logs in a temporary folder removed afterwards, and
shut down at the end (a Ray already started in this process is used and left running). Ray's
processes listen on every interface whatever its node address (measured: raylet, GCS and workers
on ``::``), so the local Ray keeps Ray's token authentication on (its default; the token is in
``~/.ray/auth_token``).

Ray is the optional extra ``fashionbox-catalog[ray]``; without it :class:`RayUnavailable` says how to
install it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import pickle
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fashionbox.client import (
    DEFAULT_MAX_IN_FLIGHT,
    ClientConfig,
    FashionBoxError,
    FashionClient,
    ImageDetections,
    InvalidImage,
    InvalidInput,
)

from .database import Database
from .errors import CatalogError
from .hashing import phash64, sha256_hex, warm_up
from .indexer import (
    IndexReport,
    Progress,
    _Loaded,
    _Models,
    _Tally,
    changed_files,
    copy_later,
    find_images,
    fresh_items,
    register_root,
    start_bulk_load,
    write_outcomes,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'fashionbox-catalog[ray]'"

_OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""A local Ray's shared-memory object store: enough for the images and answers in flight, and no
more of a shared machine's memory (Ray's default is 30 % of it)."""


Batch = dict[str, npt.NDArray[Any]]
"""A batch as Ray Data hands it over with ``batch_format="numpy"``: a column name -> its values."""


class RayUnavailable(CatalogError):
    """Ray is not installed, or the cluster at the given address cannot be joined."""


class ServerUnreachable(CatalogError):
    """A server named for the run does not answer, or its model is not ready."""


class PipelineFailed(CatalogError):
    """A Ray task or actor failed during the run (Ray's error chained)."""


@dataclass(frozen=True, slots=True)
class RayOptions:
    """Where and how wide the pipeline runs."""

    address: str | None = None
    """A Ray cluster to join (``auto``, ``ray://host:10001``, ``host:6379``); ``None``: a local Ray for the run."""
    num_cpus: int = 2
    """A local Ray's CPUs (hash tasks run on them; the detect actors take none: they wait on the servers)."""
    actors: int = 1
    """Detect actors; each sends to every server round robin."""
    batch_size: int = 4
    """Images per batch handed to a detect actor (several batches are in flight in each actor)."""

    def __post_init__(self) -> None:
        for name in ("num_cpus", "actors", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"RayOptions.{name} must be at least 1, got {getattr(self, name)}")


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailable` with the install hint."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayUnavailable(f"indexing with --ray needs Ray, an optional extra: {INSTALL_HINT}") from exc
    return ray


_PROBE_TIMEOUT_S = 5.0


def probe_address(address: str, *, timeout_s: float = _PROBE_TIMEOUT_S) -> None:
    """:class:`RayUnavailable` unless something accepts a connection at a ``HOST:PORT`` or
    ``ray://HOST:PORT`` address (``auto`` and other forms are left to Ray). Ray itself retries a
    head that is not there for minutes, one warning at a time."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayUnavailable(f"nothing answers at the Ray address {address} ({exc.strerror or exc}): is the "
                             f"cluster's head node up, and is this its GCS (6379) or Ray Client (10001) port?") from exc


@contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """Ray started (or joined) for one run, shut down after it; a local Ray's folder is removed."""
    ray = import_ray()
    if ray.is_initialized():  # the caller's Ray: use it, leave it running
        yield ray
        return
    if options.address is not None:
        probe_address(options.address)
    temp_dir: str | None = None
    # Quiet: the indexer reports progress itself; Ray's own notices (its token, progress bars off, each
    # dataset's plan) would bury it. Ray's errors still show.
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if options.address is None:
        # Short: Ray's sockets live under it, and a Unix socket's path is limited to 107 bytes.
        temp_dir = tempfile.mkdtemp(prefix="fbray-")
        kwargs.update(num_cpus=options.num_cpus, include_dashboard=False, _temp_dir=temp_dir,
                      object_store_memory=_OBJECT_STORE_BYTES)
    try:
        try:
            ray.init(address=options.address, **kwargs)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError here
            if options.address is None:
                raise RayUnavailable(f"could not start a local Ray: {exc}") from exc
            raise RayUnavailable(f"could not join the Ray cluster at {options.address}: {exc} (a cluster with token "
                                 f"authentication, Ray's default, needs RAY_AUTH_MODE=token and its token here: "
                                 f"https://docs.ray.io/en/latest/ray-security/token-auth.html)") from exc
        with warnings.catch_warnings():  # Ray 2.60's DataContext warns about its own deprecated fields
            warnings.simplefilter("ignore", DeprecationWarning)
            context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        data_logger = logging.getLogger("ray.data")
        level = data_logger.level
        data_logger.setLevel(logging.ERROR)
        try:
            yield ray
        finally:
            data_logger.setLevel(level)
            ray.shutdown()
    finally:
        if temp_dir is not None:
            _remove(Path(temp_dir))


def _remove(folder: Path, *, attempts: int = 10, pause_s: float = 0.2) -> None:
    """Remove a local Ray's folder: a Ray process still exiting may write its session folder again."""
    for _ in range(attempts):
        shutil.rmtree(folder, ignore_errors=True)
        time.sleep(pause_s)
        if not folder.exists():
            return
    logger.warning("could not remove Ray's folder %s", folder)


def check_servers(urls: Sequence[str], *, timeout_s: float = 10.0, connection: ClientConfig | None = None) -> None:
    """Each server answers and its model is ready, or :class:`ServerUnreachable` naming the one that is not."""
    for url in urls:
        try:
            with FashionClient(url, config=connection) as client:
                ready = client.ready(timeout_s=timeout_s)
        except FashionBoxError as exc:
            raise ServerUnreachable(f"cannot reach the server at {url}: {exc}") from exc
        if not ready:
            raise ServerUnreachable(f"the server at {url} answers but its model is not ready")


class RayIndexer:
    """:class:`~fashionbox.catalog.indexer.Indexer`'s job as a Ray Data pipeline over one or more servers."""

    def __init__(self, db: Database, urls: Sequence[str], *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 chunk_size: int | None = None, progress: Callable[[Progress], None] | None = None,
                 options: RayOptions | None = None, bulk: bool | None = None,
                 connection: ClientConfig | None = None) -> None:
        """``bulk``: as :meth:`Indexer.index_files <fashionbox.catalog.indexer.Indexer.index_files>` (``None``:
        decided per run by :func:`~fashionbox.catalog.indexer.bulk_wanted`). ``connection``: the rest of the
        connection to the servers (TLS with its PEM bytes, headers: :mod:`fashionbox.client.connection`),
        sent to the actors with the URLs."""
        if not urls:
            raise ValueError("RayIndexer needs at least one server URL")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._db = db
        self._urls = tuple(urls)
        self._connection = connection
        self._max_in_flight = max_in_flight
        self._chunk_size = chunk_size or max(8, 2 * max_in_flight)
        self._progress = progress
        self._options = options or RayOptions()
        self._models = _Models()
        self._bulk = bulk

    def index_folder(self, root: Path) -> IndexReport:
        """Index every image under ``root`` that is new or changed since the last run."""
        root = root.resolve()
        return self.index_files(find_images(root), root=root)

    def index_folders(self, roots: Sequence[Path]) -> list[IndexReport]:
        """:meth:`index_folder` of each root, in one Ray session (Ray starts once)."""
        check_servers(self._urls, connection=self._connection)
        with ray_session(self._options):
            return [self._run(find_images(root.resolve()), root.resolve()) for root in roots]

    def index_files(self, paths: Sequence[Path], *, root: Path) -> IndexReport:
        """Index ``paths`` (files under ``root``, which is recorded as an indexed root)."""
        check_servers(self._urls, connection=self._connection)
        with ray_session(self._options):
            return self._run(paths, root)

    # -- the pipeline ------------------------------------------------------------------------------

    def _run(self, paths: Sequence[Path], root: Path) -> IndexReport:
        ray = import_ray()
        try:
            return self._pipeline(ray, paths, root)
        except ray.exceptions.RayError as exc:  # a task or actor died, the cluster went away
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineFailed(f"the Ray pipeline failed: {first} (the chunks written so far stay; the next run "
                                 f"picks up the rest)") from exc

    def _pipeline(self, ray: Any, paths: Sequence[Path], root: Path) -> IndexReport:
        start = time.perf_counter()
        tally = _Tally()
        with self._db.connect() as conn:
            root_id = register_root(conn, root)
            todo = changed_files(conn, paths, tally)
            if not todo:
                return tally.report(time.perf_counter() - start)
            loader = start_bulk_load(conn, len(todo), self._bulk)
            self._models.build_indexes = loader is None
            try:
                self._load(ray, conn, root_id, todo, tally, start)
            except BaseException:
                if loader is not None:
                    loader.abandon()  # the indexes stay out: the next run, or opening the catalog, builds them
                raise
            if loader is not None:
                loader.finish()
                tally.bulk, tally.index_build_s = True, loader.build_s
        return tally.report(time.perf_counter() - start)

    def _load(self, ray: Any, conn: Any, root_id: int, todo: list[Path], tally: _Tally, start: float) -> None:
        chunk = self._chunk_size
        # 1. content hashes (Ray tasks), compared with the database a chunk at a time
        hashed = ray.data.from_items([{"path": str(p)} for p in todo],
                                     override_num_blocks=min(len(todo), 2 * self._options.num_cpus))
        # As many hash tasks at once as detect actors: SHA-256 keeps up with a server (2,000 files/s a
        # core), and each task at once is a worker process to start (about 1 s of CPU for its imports).
        hashed = hashed.map_batches(_hash_batch, batch_size=chunk, batch_format="numpy",
                                    concurrency=self._options.actors)
        sent: set[str] = set()
        later: list[_Loaded] = []
        fresh: list[_Loaded] = []
        for batch in hashed.iter_batches(batch_size=chunk, batch_format="numpy"):
            loaded = []
            for item in _loaded_from(batch):
                if item.read_error is None and item.sha256 in sent:
                    later.append(item)
                else:
                    loaded.append(item)
                    sent.add(item.sha256)
            fresh.extend(fresh_items(conn, root_id, loaded, tally))
        logger.debug("hashed %d files in %.2f s: %d to send", len(todo), time.perf_counter() - start, len(fresh))
        total = len(todo)
        written = 0
        # 2. detection on the servers (actors), 3. written here a chunk at a time
        if fresh:
            for batch in self._detected(ray, fresh).iter_batches(batch_size=chunk, batch_format="numpy"):
                written += write_outcomes(conn, root_id, list(_outcomes_from(batch)), tally, self._models)
                self._report(written + tally.copied + tally.deferred, total, start, tally)
        copy_later(conn, root_id, later, tally)
        self._report(written + tally.copied + tally.deferred, total, start, tally)

    def _detected(self, ray: Any, fresh: list[_Loaded]) -> Any:
        options = self._options
        in_flight = self._max_in_flight * len(self._urls)
        batch = options.batch_size
        # Enough blocks that every actor has several batches queued, few enough that each is worth a task;
        # no more actors than blocks (Ray Data warns that the others would idle).
        per_block = max(batch, math.ceil(in_flight / options.actors))
        blocks = min(len(fresh), max(options.actors, math.ceil(len(fresh) / per_block)))
        actors = min(options.actors, blocks)
        per_actor = max(1, math.ceil(in_flight / actors))
        items = ray.data.from_items([{"path": str(i.path), "sha256": i.sha256} for i in fresh],
                                    override_num_blocks=blocks)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates remote args for map_batches (removal planned in 2.64) but names no other
            # way to set max_restarts; constraints.txt pins 2.60.
            warnings.simplefilter("ignore", DeprecationWarning)
            return items.map_batches(
                _Detector, batch_size=batch, batch_format="numpy", num_cpus=0,
                compute=ray.data.ActorPoolStrategy(
                    size=actors, max_tasks_in_flight_per_actor=max(4, 2 * math.ceil(per_actor / batch))),
                fn_constructor_kwargs={"urls": self._urls, "max_in_flight": per_actor,
                                       "connection": self._connection},
                ray_remote_args_fn=_no_restarts)

    def _report(self, done: int, total: int, start: float, tally: _Tally) -> None:
        if self._progress is not None:
            self._progress(Progress(done, total, time.perf_counter() - start, tally.failed))


# -- the work Ray does (module level: Ray pickles these by reference) -----------------------------------

def _no_restarts() -> dict[str, Any]:
    """A detect actor that dies is not restarted: the run fails, nothing was written for its images,
    and the next run sends them again. (Ray Data restarts actors by default and then warns, on every
    run, that their constructor arguments might be gone by the time it would.)"""
    return {"max_restarts": 0}


_STATUS_OK = "ok"
_STATUS_INVALID = "invalid"
_STATUS_DEFERRED = "deferred"
_STATUS_UNREADABLE = "unreadable"


def _stat_and_read(path: str) -> tuple[bytes | None, int, str | None]:
    """The file's bytes and modification time, or its read error."""
    try:
        mtime_ns = os.stat(path).st_mtime_ns
        return Path(path).read_bytes(), mtime_ns, None
    except OSError as exc:
        return None, 0, f"cannot read the file: {exc.strerror or exc}"


def _hash_batch(batch: Batch) -> dict[str, Any]:
    """Ray task: SHA-256, size and modification time of each file (its read error where it has none)."""
    shas, sizes, mtimes, errors = [], [], [], []
    for path in batch["path"].tolist():
        data, mtime_ns, error = _stat_and_read(str(path))
        shas.append("" if data is None else sha256_hex(data))
        sizes.append(0 if data is None else len(data))
        mtimes.append(mtime_ns)
        errors.append(error or "")
    return {"path": batch["path"], "sha256": np.array(shas, dtype=object),
            "size_bytes": np.array(sizes, dtype=np.int64), "mtime_ns": np.array(mtimes, dtype=np.int64),
            "read_error": np.array(errors, dtype=object)}


def _loaded_from(batch: Batch) -> Iterator[_Loaded]:
    for path, sha, size, mtime, error in zip(batch["path"].tolist(), batch["sha256"].tolist(),
                                             batch["size_bytes"].tolist(), batch["mtime_ns"].tolist(),
                                             batch["read_error"].tolist(), strict=True):
        yield _Loaded(Path(path), None, str(sha), int(size), int(mtime), read_error=str(error) or None)


class _Detector:
    """Ray actor: files sent to the servers round robin, ``max_in_flight`` requests at a time in all."""

    def __init__(self, urls: Sequence[str], max_in_flight: int, connection: ClientConfig | None = None) -> None:
        self._clients = [FashionClient(url, config=connection) for url in urls]
        self._turn = itertools.count()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        # More threads than requests: a thread taking a pHash holds no request slot.
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight + 2, thread_name_prefix="fashionbox-ray-detect")
        warm_up()

    async def __call__(self, batch: Batch) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        rows = await asyncio.gather(*(loop.run_in_executor(self._pool, self._one, str(path))
                                      for path in batch["path"].tolist()))
        columns: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
        for row in rows:
            for name, value in zip(_COLUMNS, row, strict=True):
                columns[name].append(value)
        return {"path": batch["path"], "sha256": np.array(columns["sha256"], dtype=object),
                "size_bytes": np.array(columns["size_bytes"], dtype=np.int64),
                "mtime_ns": np.array(columns["mtime_ns"], dtype=np.int64),
                "phash": np.array(columns["phash"], dtype=np.int64),
                "has_phash": np.array(columns["has_phash"], dtype=bool),
                "status": np.array(columns["status"], dtype=object),
                "message": np.array(columns["message"], dtype=object),
                "result": np.array(columns["result"], dtype=object)}

    def _one(self, path: str) -> tuple[Any, ...]:
        data, mtime_ns, error = _stat_and_read(path)
        if data is None:
            return "", 0, 0, 0, False, _STATUS_UNREADABLE, error, b""
        client = self._clients[next(self._turn) % len(self._clients)]
        with self._slots:
            try:
                outcome: ImageDetections | FashionBoxError = client.detect(data)
            except FashionBoxError as exc:
                outcome = exc
        try:
            phash, has_phash = phash64(data), True
        except Exception:  # Pillow raises several types for bad files; the server's verdict decides failure
            phash, has_phash = 0, False
        sha, size = sha256_hex(data), len(data)
        if isinstance(outcome, ImageDetections):
            return sha, size, mtime_ns, phash, has_phash, _STATUS_OK, "", pickle.dumps(outcome)
        # The same split as write_outcomes makes: the image's own fault, or the server's state.
        status = _STATUS_INVALID if isinstance(outcome, (InvalidImage, InvalidInput)) else _STATUS_DEFERRED
        return sha, size, mtime_ns, phash, has_phash, status, str(outcome), b""


_COLUMNS = ("sha256", "size_bytes", "mtime_ns", "phash", "has_phash", "status", "message", "result")


def _outcomes_from(batch: Batch) -> Iterator[tuple[_Loaded, ImageDetections | FashionBoxError | None]]:
    """The actor's rows as what ``write_outcomes`` takes: the file and its answer, error, or ``None``."""
    for values in zip(batch["path"].tolist(), *(batch[name].tolist() for name in _COLUMNS), strict=True):
        path, sha, size, mtime, phash, has_phash, status, message, result = values
        item = _Loaded(Path(path), None, str(sha), int(size), int(mtime),
                       phash=int(phash) if has_phash else None,
                       phash_error=None if has_phash else "not an image Pillow can read")
        if status == _STATUS_UNREADABLE:
            item.read_error = str(message)
            yield item, None
        elif status == _STATUS_OK:
            yield item, pickle.loads(result)  # written by _Detector in this run
        elif status == _STATUS_INVALID:
            yield item, InvalidImage(str(message))
        else:
            yield item, FashionBoxError(str(message))
