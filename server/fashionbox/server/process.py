"""``TritonServer``: one ``tritonserver`` child process on one model repository.

    config = ServerConfig(repository=Path("build/model_repository"))
    with TritonServer(config) as server:          # start() + wait_until_ready()
        client = tritonclient.grpc.InferenceServerClient(server.endpoints.grpc)
        ...
    # leaving the block stops the server (drain, SIGTERM, then SIGKILL after the timeout)

How the child is wrapped, and why:

- it binds ``127.0.0.1`` unless another host is asked for: Triton itself binds every interface;
- with the front door (``ServerConfig.uses_front_door``: the secure profile, a non-loopback host,
  ``--front-door``), gRPC's and HTTP's public addresses are FashionBox's own listeners, which refuse
  messages and bodies over the request bound and forward the rest to Triton on private loopback
  ports chosen at each start (gRPC with mutual TLS of its own when the door has TLS)
  (:mod:`fashionbox.server.front_door`, :mod:`fashionbox.server.http_door`);
- its stdout and stderr go to a log file that outlives it, so a failed start can show the log tail;
- it runs in its own process group, so Ctrl-C in a terminal reaches only us and we stop it in order,
  and so stopping can also kill the python-backend stubs it forked;
- it runs under umask 077, as do the python-backend stubs it forks, so whatever they create (the
  admission slots and the stubs' regions in ``/dev/shm``, Triton's files) is its owner's alone; the
  log file is made 0600 and a temporary log folder 0700, removed on stop (kept when the start failed
  or the server died, so the log can be read);
- it gets ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``, set by util-linux's ``setpriv
  --pdeathsig`` in front of the command), so a crashed or killed parent never leaves a server
  holding the ports. The stubs notice their parent is gone and exit on their own a few seconds later.
  No Python code runs in the child between fork and exec (no ``preexec_fn``: the umask is Popen's
  own), so CPython starts it with ``vfork`` and no ``pthread_atfork`` handler runs there: gRPC's
  handlers, active while the front door's event loop runs in this process, made a restarted
  ``tritonserver`` abort before its ``exec`` now and then (``epoll_wait error: Bad file
  descriptor``, exit -6). Where ``setpriv`` is missing a ``preexec_fn`` sets the signal instead;
- it gets ``FASHIONBOX_SITE_PACKAGES`` and ``LD_LIBRARY_PATH`` for the python-backend stubs
  (:mod:`fashionbox.server.triton`), and ``FASHIONBOX_PIPELINE_SECRET``, made afresh at each start,
  with which the stubs make and check the tokens that keep the ensemble's steps from direct calls
  (:mod:`fashionbox.core.capability`): in the child's environment only, never in a config or on its
  command line, so only processes of the server's user can read it (``/proc/PID/environ`` is 0400).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from fashionbox.contract import ADMIN_GRPC_HEADER, ADMIN_KEY_NAME
from fashionbox.core.admission import slots_path
from fashionbox.core.capability import SECRET_ENV as PIPELINE_SECRET_ENV
from fashionbox.core.capability import new_secret
from fashionbox.server.checks import check_repository
from fashionbox.server.command import build_command, locks_repository
from fashionbox.server.config import ServerConfig, is_loopback
from fashionbox.server.errors import PortInUseError, ServerError, ServerStartError
from fashionbox.server.front_door import FrontDoor, FrontDoorConfig, HopTls, RequestBound, make_hop_tls, request_bound
from fashionbox.server.http_door import HttpDoorConfig
from fashionbox.server.network import Endpoints, find_free_ports, port_is_free
from fashionbox.server.security import new_launcher_key, redact
from fashionbox.server.stubs import StubWatch, remove_regions
from fashionbox.server.triton import find_triton_distribution, prepare_backend_directory, server_environment

__all__ = ["LOG_TAIL_LINES", "STOP_GRACE_S", "TritonServer", "start_on_free_ports"]

logger = logging.getLogger(__name__)

_LOG_NAME = "tritonserver.log"
_METRICS_BODY_BYTES = 64 * 1024
# Triton waits up to --exit-timeout-secs for in-flight requests, then unloads the models; this is
# the extra time stop() allows for the unloading before it kills.
STOP_GRACE_S = 5.0
_POLL_INTERVAL_S = 0.1
LOG_TAIL_LINES = 40

_PR_SET_PDEATHSIG = 1
CHILD_UMASK = 0o077
"""The umask of tritonserver and its stubs: what they create is readable by their owner only."""
# Triton logs this once every model is loaded and the gRPC endpoint listens: readiness without HTTP.
_GRPC_STARTED = b"Started GRPCInferenceService at "
_T = TypeVar("_T", bound="TritonServer")


def _child_command(command: Sequence[str]) -> tuple[list[str], Callable[[], None] | None]:
    """What the child runs, and the ``preexec_fn`` it still needs (None: none, so ``vfork`` is used).

    On Linux with util-linux's ``setpriv`` the command runs behind ``setpriv --pdeathsig KILL``,
    which sets the signal and execs it in place (same pid); elsewhere :func:`_child_setup_hook`.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv:
        return [setpriv, "--pdeathsig", "KILL", "--", *command], None
    return list(command), _child_setup_hook()


def _child_setup_hook() -> Callable[[], None]:
    """A preexec_fn: umask 077, and SIGKILL for the child when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):

        def restrict() -> None:
            os.umask(CHILD_UMASK)

        return restrict
    # Load libc here, before the fork: dlopen in the forked child is not async-signal-safe. The hook
    # itself only makes four system calls, which keeps preexec_fn's deadlock risk with threads small.
    libc = ctypes.CDLL(None, use_errno=True)
    parent_pid = os.getpid()

    def hook() -> None:
        os.umask(CHILD_UMASK)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then no signal would ever come.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _exit_status(process: subprocess.Popen[bytes]) -> int | None:
    """Exit code (negative signal number if killed) of an exited child, without reaping it.

    Leaving the child a zombie keeps its pid, and so its process-group id, from being reused
    until we have killed the rest of its group.
    """
    if process.returncode is not None:
        return process.returncode
    try:
        result = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        # Reaped behind our back (a SIGCHLD handler, say): let Popen record what it can.
        return process.poll()
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return -result.si_status


class TritonServer:
    """One tritonserver child process on one model repository.

    ``start()`` must run on a thread that lives as long as the server: Linux delivers the
    parent-death signal when the *thread* that started the child exits, not only the process.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_path: Path | None = config.log_path
        self._command: list[str] = []
        self._returncode: int | None = None
        # Without an admin key: closes the APIs no client needs (security.CLOSED_APIS), unlocks the drain.
        self._launcher_key: str | None = None
        self._door_key: str | None = None  # what the door's HTTP side sends Triton's (security.DOOR_KEY_NAME)
        self._own_log_dir: Path | None = None  # a temporary log folder we made; removed on stop
        self._keep_log = False  # the start failed or the server died: the log explains it
        self._log_start = 0  # where this run's lines begin in the log file
        # The python stubs' /dev/shm regions seen in this run: removed once the server is stopped, since a
        # killed stub or server leaves its own behind (a clean Triton exit removes them itself).
        self._stub_regions: set[str] = set()
        # Our own listeners in front of Triton (fashionbox.server.front_door); Triton then listens on
        # loopback at _upstream_port (gRPC) and _upstream_http_port, fresh free ports at each start.
        self._front_door: FrontDoor | None = None
        self._upstream_port: int | None = None
        self._upstream_http_port: int | None = None  # Triton's HTTP behind the door's HTTP side
        self._upstream_metrics_port: int | None = None  # Triton's metrics behind the door's metrics side
        self._request_bound: RequestBound | None = None
        self._hop_tls: HopTls | None = None  # mutual TLS door -> Triton when the door has TLS
        self._hop_dir: Path | None = None

    # -- state ----------------------------------------------------------------------------------

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints.for_config(self.config)

    @property
    def upstream_grpc(self) -> str:
        """Where Triton's own gRPC listens: behind the front door a private loopback port, else the
        public address (:attr:`endpoints`)."""
        if self._upstream_port is None:
            return self.endpoints.grpc
        return f"127.0.0.1:{self._upstream_port}"

    @property
    def request_bound(self) -> RequestBound | None:
        """The front door's bound while it runs, on gRPC messages where the door has a gRPC side
        (``config.uses_front_door``) and on HTTP bodies; None without a front door."""
        return self._request_bound if self._front_door is not None else None

    @property
    def log_path(self) -> Path | None:
        """The server log; known once start() has run (or from the config)."""
        return self._log_path

    @property
    def command(self) -> list[str]:
        """The command line of the running (or last) server; empty before start()."""
        return list(self._command)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit code of the stopped server (negative: killed by that signal)."""
        return self._returncode

    def is_alive(self) -> bool:
        return self._process is not None and _exit_status(self._process) is None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the repository and ports, then start the child. Returns without waiting for readiness."""
        if self._process is not None:
            raise ServerError("the server is already started")
        config = self.config
        check_repository(config.repository)
        for protocol, host, port in (
            ("grpc", config.host, config.grpc_port),
            *((("http", config.http_host, config.http_port),) if config.http else ()),
            ("metrics", config.host, config.metrics_port),
        ):
            if not port_is_free(host, port):
                raise PortInUseError(port, protocol, host)
        if not is_loopback(config.host):
            logger.warning(
                "binding %s: the server is reachable from the network%s",
                config.host,
                "" if config.tls is not None else " over plaintext gRPC (no --tls-cert)",
            )
        if config.http and not is_loopback(config.http_host):
            logger.warning("binding HTTP to %s: plaintext HTTP (no TLS) is reachable from the network",
                           config.http_host)
        if config.http and not config.uses_http_door:
            logger.warning("--no-front-door: HTTP goes to Triton directly, which checks neither Host nor Origin, so "
                           "a web page in a browser that reaches %s can use the server (docs/RELIABILITY.md)",
                           config.http_host)

        dist = find_triton_distribution()
        backend_directory = prepare_backend_directory(config.cache_dir)
        self._launcher_key = new_launcher_key() if config.admin_key is None else None
        self._upstream_port = self._private_port() if config.uses_front_door else None
        self._upstream_http_port = self._private_port(self._upstream_port) if config.uses_http_door else None
        self._door_key = new_launcher_key() if self._upstream_http_port is not None else None
        self._upstream_metrics_port = (self._private_port(self._upstream_port, self._upstream_http_port)
                                       if config.uses_metrics_door else None)
        if config.uses_front_door or config.uses_http_door or config.uses_metrics_door:
            self._request_bound = request_bound(config.repository, os.environ, override=config.max_request_bytes)
        if config.uses_front_door and config.tls is not None:  # else the private port would be a plaintext way
            self._hop_dir = Path(tempfile.mkdtemp(prefix="fashionbox-hop-"))  # past the certificates
            self._hop_tls = make_hop_tls(self._hop_dir)
        self._command = build_command(
            config, binary=dist.binary, backend_directory=backend_directory, launcher_key=self._launcher_key,
            upstream_grpc_port=self._upstream_port, upstream_tls=self._hop_tls.server if self._hop_tls else None,
            upstream_http_port=self._upstream_http_port, upstream_metrics_port=self._upstream_metrics_port,
            door_key=self._door_key,
        )

        self._keep_log = False
        if config.log_path is None:  # a fresh folder per start (mkdtemp makes it 0700)
            self._own_log_dir = Path(tempfile.mkdtemp(prefix="fashionbox-triton-"))
            self._log_path = self._own_log_dir / _LOG_NAME
        assert self._log_path is not None
        self._log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Append: a log file the user named may hold the story of an earlier run worth keeping.
        descriptor = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._log_file = os.fdopen(descriptor, "ab")
        self._log_start = self._log_file.tell()

        env = server_environment(dist, os.environ)
        # A fresh secret per start, in the child's environment only (its stubs inherit it; not in
        # config.pbtxt nor on the command line): the steps' capability tokens (fashionbox.core.capability).
        env[PIPELINE_SECRET_ENV] = new_secret()
        secrets_ = (config.admin_key, self._launcher_key, self._door_key)
        logger.info("starting tritonserver: %s", shlex.join(redact(self._command, *secrets_)))
        try:
            self._open_front_door()
        except BaseException:
            self._remove_hop_tls()
            self._close_log()
            self._remove_own_log_dir()
            raise
        try:
            command, hook = _child_command(self._command)
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                umask=CHILD_UMASK,
                preexec_fn=hook,
            )
        except OSError as exc:
            self._close_front_door()
            self._remove_hop_tls()
            self._close_log()
            self._remove_own_log_dir()  # it holds nothing yet
            raise ServerStartError(f"could not run {dist.binary}: {exc}") from exc
        self._returncode = None
        logger.info("tritonserver pid %d, log %s", self._process.pid, self._log_path)

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Poll HTTP ``/v2/health/ready`` until it answers 200 (without HTTP: wait for Triton to log
        that gRPC listens, which it does once every model is loaded); fail fast if the server exits."""
        process = self._require_process()
        timeout_s = self.config.startup_timeout_s if timeout_s is None else timeout_s
        ready = self._http_ready if self.config.http else self._grpc_started
        deadline = time.monotonic() + timeout_s
        while True:
            code = _exit_status(process)
            if code is not None:
                raise self._exited_error(code)
            if ready():
                http = self.endpoints.http if self.config.http else "off"
                logger.info("tritonserver ready: gRPC %s, HTTP %s", self.endpoints.grpc, http)
                self.watch_stubs()
                return
            if time.monotonic() >= deadline:
                self._keep_log = True
                raise ServerStartError(
                    f"the server was not ready after {timeout_s:g} s (full log: {self._log_path})", self.log_tail()
                )
            time.sleep(_POLL_INTERVAL_S)

    def watch_stubs(self) -> StubWatch:
        """The python-backend stubs alive now (:class:`fashionbox.server.stubs.StubWatch`); their
        shared-memory regions are removed once the server is stopped."""
        watch = StubWatch.of(self._require_process().pid)
        self._stub_regions.update(watch.regions)
        return watch

    def pipeline_models(self) -> tuple[str, ...]:
        """The models this server loads at start (every model folder of the repository, or the
        explicit mode's ``load_models``): the pipeline answers only while each is READY."""
        config = self.config
        if config.model_control_mode == "explicit" and "*" not in config.load_models:
            return tuple(config.load_models)
        repository = Path(config.repository)
        return tuple(sorted(entry.name for entry in repository.iterdir()
                            if not entry.name.startswith(".") and (entry / "config.pbtxt").is_file()))

    def model_ready(self, model: str) -> bool | None:
        """Triton's ``/v2/models/<model>/ready``: True (READY), False (loading, unloading, unloaded,
        unknown), None (no HTTP, not running, or no answer within a second)."""
        if not self.config.http or not self.is_alive():
            return None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"{self.endpoints.http}/v2/models/{urllib.parse.quote(model)}/ready"
        try:
            with opener.open(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except OSError:
            return None

    def _http_ready(self) -> bool:
        # No proxies: an http_proxy variable must not send a loopback health check elsewhere.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.endpoints.http}/v2/health/ready", timeout=1.0) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()  # 503 while models load; the error holds the open response
        except OSError:
            pass  # not listening yet (URLError is an OSError)
        return False

    def _grpc_started(self) -> bool:
        if self._log_path is None:
            return False
        try:
            with open(self._log_path, "rb") as log:
                log.seek(self._log_start)
                return _GRPC_STARTED in log.read()
        except OSError:
            return False

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the server to exit on its own; its exit code, or None if still running at the timeout."""
        process = self._require_process()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (code := _exit_status(process)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_INTERVAL_S)
        return code

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the server: SIGTERM, then SIGKILL to its whole process group after ``timeout_s``.

        The default timeout is the config's exit timeout plus a grace for unloading models.
        Returns the exit code (None if never started); calling it again is harmless.
        """
        process = self._process
        if process is None:
            return self._returncode
        timeout_s = self.config.exit_timeout_s + STOP_GRACE_S if timeout_s is None else timeout_s
        if _exit_status(process) is not None:
            self._keep_log = True  # it died on its own: its log says why
        else:
            drains = self.config.model_control_mode == "explicit" or locks_repository(self.config)
            drained = timeout_s > 0 and drains and self._drain(min(timeout_s, float(self.config.exit_timeout_s)))
            if drained and self._front_door is not None:
                # Triton's exit waits for every HTTP connection still open, looking once a second, and the
                # door keeps idle ones to it: closed first, stop() takes a second less. Only once drained:
                # nothing long is left in flight then (requests get the side's stop_grace_s); undrained, the
                # door stays open while Triton finishes what it holds. gRPC stays open either way.
                self._front_door.close_http()
            with contextlib.suppress(OSError):  # the stubs' regions, to remove if they are killed
                self._stub_regions.update(StubWatch.of(process.pid).regions)
            # Only the server gets SIGTERM: it unloads the models, which ends the stubs in order.
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            if timeout_s <= 0:
                logger.info("killing tritonserver (stop without waiting)")
            elif self.wait(timeout_s) is None:
                logger.warning("tritonserver did not stop within %g s; killing it", timeout_s)
        # The server is a zombie or still running, so its group id is still ours: kill whatever is left
        # in the group (the server if it hung, stubs orphaned by a crash) before reaping.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self._returncode = process.wait()
        self._process = None
        self._close_front_door()  # after Triton: calls still open were answered or failed by it
        self._remove_hop_tls()
        self._close_log()
        with contextlib.suppress(OSError):  # the admission slots its stubs shared (fashionbox.core.admission)
            slots_path(Path(self.config.repository), process.pid).unlink(missing_ok=True)
        regions, self._stub_regions = self._stub_regions, set()
        if removed := remove_regions(regions):
            logger.info("removed %d shared-memory region(s) the python backend left in /dev/shm", len(removed))
        logger.info("tritonserver stopped with code %d", self._returncode)
        self._remove_own_log_dir()
        return self._returncode

    def _drain(self, drain_s: float) -> bool:
        """Before SIGTERM: unload the ensemble and wait for what is inside it (SIGTERM alone fails requests
        between two steps: fashionbox.server.drain), then every other model, all at once (Triton's exit
        would look only once a second whether they are gone). Over HTTP, else gRPC; within ``drain_s``.
        Whether the ensemble was drained."""
        # Imported here so the package never imports it before `python -m fashionbox.server.drain` runs it.
        from fashionbox.server.drain import GrpcRepositoryApi, HttpRepositoryApi, RepositoryApi, drain, unload_all

        config = self.config
        key = config.admin_key or self._launcher_key
        api: RepositoryApi
        grpc_api: GrpcRepositoryApi | None = None
        if config.http:
            api = HttpRepositoryApi(self.endpoints.http, {ADMIN_KEY_NAME: key} if key else None)
        elif self._upstream_port is not None or config.tls is None:  # Triton's own gRPC: a private port, or plaintext
            hop = self._hop_tls
            api = grpc_api = GrpcRepositoryApi(
                self.upstream_grpc,
                credentials=hop.channel_credentials() if hop is not None else None,
                metadata=((ADMIN_GRPC_HEADER, key),) if key else ())
        else:
            logger.info("no drain before stopping: HTTP is off and Triton's own gRPC takes only the clients' TLS")
            return False
        deadline = time.monotonic() + drain_s
        try:
            drained = drain(api, timeout_s=drain_s)
            if drained and (left_s := deadline - time.monotonic()) > 0:
                unload_all(api, timeout_s=left_s)
            return drained
        finally:
            if grpc_api is not None:
                grpc_api.close()

    def __enter__(self: _T) -> _T:
        self.start()
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop(timeout_s=0)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers --------------------------------------------------------------------------------

    def _private_port(self, *taken_too: int | None) -> int:
        """A free loopback port for Triton behind the front door: none of the configured ones, nor ``taken_too``."""
        config = self.config
        taken = {config.grpc_port, config.http_port, config.metrics_port, *taken_too}
        while (port := find_free_ports(1, "127.0.0.1")[0]) in taken:
            continue
        return port

    def _open_front_door(self) -> None:
        """Listen on the public gRPC address (behind the door), the HTTP one and the metrics one
        (PortInUseError if taken) before Triton starts."""
        if self._request_bound is None:
            return
        config = self.config
        bound = self._request_bound.max_request_bytes
        grpc_side = (FrontDoorConfig(host=config.host, port=config.grpc_port, upstream=self.upstream_grpc,
                                     max_request_bytes=bound, tls=config.tls, upstream_tls=self._hop_tls)
                     if self._upstream_port is not None else None)
        http = (HttpDoorConfig(host=config.http_host, port=config.http_port, max_request_bytes=bound,
                               upstream=f"127.0.0.1:{self._upstream_http_port}", names=config.http_allowed_hosts,
                               upstream_key=self._door_key)
                if self._upstream_http_port is not None else None)
        # Scrapes carry no body: the bound is only there because every side has one.
        metrics = (HttpDoorConfig(host=config.host, port=config.metrics_port, max_request_bytes=_METRICS_BODY_BYTES,
                                  upstream=f"127.0.0.1:{self._upstream_metrics_port}",
                                  names=config.metrics_allowed_hosts, flag="--metrics-allowed-host", label="metrics")
                   if self._upstream_metrics_port is not None else None)
        door = FrontDoor(grpc_side, http, metrics)
        door.start()
        self._front_door = door
        sides = [f"{config.host}:{config.grpc_port} (gRPC)"] if grpc_side else []
        sides += [f"{config.http_host}:{config.http_port} (HTTP)"] if http else []
        sides += [f"{config.host}:{config.metrics_port} (metrics)"] if metrics else []
        logger.info("front door on %s: messages and bodies over %s are refused", " and ".join(sides),
                    self._request_bound.describe())

    def _remove_hop_tls(self) -> None:
        folder, self._hop_dir, self._hop_tls = self._hop_dir, None, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _close_front_door(self) -> None:
        door, self._front_door = self._front_door, None
        if door is not None:
            door.stop()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log, without Triton's start-up tables ("" if no log yet).

        The tables (backends, models, options) are 200 characters wide and would push the error
        lines that explain a failed start out of the tail; the full log stays in the file.
        """
        if self._log_path is None or not self._log_path.is_file():
            return ""
        with open(self._log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 256 * 1024))
            text = log.read().decode("utf-8", errors="replace")
        kept = [line for line in text.splitlines() if line.strip() and not line.startswith(("+", "|"))]
        return "\n".join(kept[-lines:])

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise ServerError("the server is not started")
        return self._process

    def _exited_error(self, code: int) -> ServerStartError:
        tail = self.log_tail()
        # A port can be taken between our check and Triton's bind; Triton then names it in the log.
        match = re.search(r"Socket '(?P<address>[^']*):(?P<port>\d+)' already in use", tail)
        if match:
            port = int(match["port"])
            protocols = {
                self.config.grpc_port: "grpc",
                self.config.http_port: "http",
                self.config.metrics_port: "metrics",
            }
            return PortInUseError(port, protocols.get(port, "grpc"), self.config.host, tail)
        self._keep_log = True
        return ServerStartError(
            f"tritonserver exited with code {code} before it was ready (full log: {self._log_path})", tail
        )

    def _remove_own_log_dir(self) -> None:
        """Remove the temporary log folder start() made, unless its log explains a failure."""
        folder, self._own_log_dir = self._own_log_dir, None
        if folder is None:
            return
        if self._keep_log:
            logger.info("keeping the server log %s", self._log_path)
            return
        shutil.rmtree(folder, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def start_on_free_ports(
    repository: Path, log_dir: Path, *, wait: bool = True, attempts: int = 3, **fields: Any
) -> TritonServer:
    """A server on fresh loopback ports (more ``ServerConfig`` fields in ``fields``), started and,
    unless ``wait=False``, ready. For tests, scripts and tools that run a private server.

    Ports are found free, then bound by Triton a moment later; another process may take one in
    between, so the start is tried ``attempts`` times on new ports. Call from the thread that will
    stop it: the server dies with the thread that started it (``PR_SET_PDEATHSIG``).
    """
    for attempt in range(1, attempts + 1):
        grpc_port, http_port, metrics_port = find_free_ports(3)
        server = TritonServer(
            ServerConfig(
                repository=repository,
                grpc_port=grpc_port,
                http_port=http_port,
                metrics_port=metrics_port,
                log_path=Path(log_dir) / f"tritonserver-{grpc_port}.log",
                **fields,
            )
        )
        try:
            server.start()
            if wait:
                server.wait_until_ready()
        except PortInUseError:
            server.stop(timeout_s=0)
            if attempt == attempts:
                raise
            continue
        except BaseException:
            server.stop(timeout_s=0)
            raise
        return server
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_server(
    repository: Path, log_dir: Path, *, exit_timeout_s: int = 10, **fields: Any
) -> Iterator[TritonServer]:
    """A ready server on free loopback ports (:func:`start_on_free_ports`), stopped on leaving the
    block unless stopped already. For scripts, benchmarks and tests that run a private server."""
    server = start_on_free_ports(repository, log_dir, exit_timeout_s=exit_timeout_s, **fields)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serve_for_tuning(repository: Path, log_path: Path | None = None) -> Iterator[str]:
    """Serve ``repository`` with model control ``explicit`` and every model loaded; yields the gRPC
    URL. ``fashionbox tune`` rewrites the configs in ``repository`` and reloads the models through it
    (the launcher it is handed: :class:`fashionbox.loadtest.tune.Launcher`)."""
    grpc_port, http_port, metrics_port = find_free_ports(3)
    config = ServerConfig(
        repository=repository,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        model_control_mode="explicit",
        load_models=("*",),
        log_path=log_path if log_path is not None else repository.parent / "tritonserver.log",
    )
    with TritonServer(config) as server:
        yield str(server.endpoints.grpc)
