"""Drain a Triton server before it stops: refuse new requests, let those already inside finish.

On SIGTERM Triton closes every model's scheduler at once, then waits up to its exit timeout for
requests in flight. A request inside the ensemble *between* two steps is then refused by the
next step (UNAVAILABLE "Server is stopping, scheduler for model has stopped accepting new
inference requests"): SIGTERM alone does not drain an ensemble (measured, docs/RELIABILITY.md).
Unloading the ensemble first does: Triton refuses new requests to it at once (NOT_FOUND "...has no
available versions", which the client retries) and keeps it until the requests already inside
have passed every step. Unloading needs the repository API, that is Triton's explicit model
control mode; ``TritonServer`` runs Triton so by default, with that API locked behind a key only
it holds, and ``stop()`` drains first, then unloads the steps (:func:`unload_all`: Triton's exit
would look only once a second whether they are gone)::

    drain("http://127.0.0.1:8000", timeout_s=30, headers={"admin-key": key})
    unload_all("http://127.0.0.1:8000", timeout_s=30, headers={"admin-key": key})   # then SIGTERM

The HTTP endpoint is used where there is one: it is always plaintext on the server's own host,
whatever TLS the gRPC endpoint demands of clients. A server without HTTP is drained over Triton's
gRPC (:class:`GrpcRepositoryApi`): its own port, or behind the front door its private one, with the
hop's own certificates when the door has TLS.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from fashionbox.contract import ENSEMBLE_MODEL

__all__ = ["GrpcRepositoryApi", "HttpRepositoryApi", "RepositoryApi", "RepositoryApiError", "drain", "unload_all"]

logger = logging.getLogger(__name__)

_POLL_S = 0.05
# Index states of a model that is (or is about to be) serving, or still finishing what it holds.
_LOADED_STATES = frozenset({"READY", "LOADING", "UNLOADING"})


class RepositoryApiError(Exception):
    """The repository API refused or could not be reached; the message says how."""


class RepositoryApi(Protocol):
    """Triton's model-repository API over one protocol: the index's states, and unloading a model."""

    def states(self, timeout_s: float) -> dict[str, str]:
        """Each model the index lists, with its state (``READY``, ``UNLOADING``, ...)."""
        ...

    def unload(self, model: str, timeout_s: float) -> None: ...


class HttpRepositoryApi:
    """Over HTTP: ``http_url`` the server's base URL, ``headers`` sent with each call (the admin key)."""

    def __init__(self, http_url: str, headers: Mapping[str, str] | None = None) -> None:
        self.http_url = http_url
        self.headers = dict(headers or {})

    def _post(self, path: str, timeout_s: float) -> Any:
        request = urllib.request.Request(f"{self.http_url}{path}", data=b"{}",
                                         headers={"Content-Type": "application/json", **self.headers})
        try:
            with urllib.request.urlopen(request, timeout=max(timeout_s, 0.1)) as response:
                body = response.read()
            return json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200]
            raise RepositoryApiError(f"HTTP {exc.code} {detail}") from exc
        except (OSError, ValueError) as exc:
            raise RepositoryApiError(str(exc)) from exc

    def states(self, timeout_s: float) -> dict[str, str]:
        index = self._post("/v2/repository/index", timeout_s) or []
        return {str(entry.get("name")): str(entry.get("state")) for entry in index}

    def unload(self, model: str, timeout_s: float) -> None:
        self._post(f"/v2/repository/models/{urllib.parse.quote(model)}/unload", timeout_s)


class GrpcRepositoryApi:
    """Over gRPC, for a server without HTTP: ``target`` ``host:port``, ``credentials`` for TLS (None:
    plaintext), ``metadata`` sent with each call (the admin key as ``triton-grpc-protocol-admin-key``).
    ``close()`` when done."""

    def __init__(self, target: str, *, credentials: Any = None,
                 metadata: Sequence[tuple[str, str]] = ()) -> None:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc  # the client's dependency: Triton's own schema

        self._grpc = grpc
        self._messages = service_pb2
        self._channel = (grpc.secure_channel(target, credentials) if credentials is not None
                         else grpc.insecure_channel(target))
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.metadata = tuple(metadata)

    def _call(self, method: Any, request: Any, timeout_s: float) -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=max(timeout_s, 0.1))
        except self._grpc.RpcError as exc:
            raise RepositoryApiError(f"gRPC {exc.code().name} {(exc.details() or '')[:200]}") from exc

    def states(self, timeout_s: float) -> dict[str, str]:
        index = self._call(self._stub.RepositoryIndex, self._messages.RepositoryIndexRequest(), timeout_s)
        return {model.name: model.state for model in index.models}

    def unload(self, model: str, timeout_s: float) -> None:
        self._call(self._stub.RepositoryModelUnload,
                   self._messages.RepositoryModelUnloadRequest(model_name=model), timeout_s)

    def close(self) -> None:
        self._channel.close()


def drain(
    api: str | RepositoryApi,
    models: Sequence[str] = (ENSEMBLE_MODEL,),
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> bool:
    """Unload ``models`` and wait until their requests in flight are done; never raises.

    ``api``: the server's HTTP base URL (``headers`` sent with each call), or a :class:`RepositoryApi`
    (:class:`GrpcRepositoryApi` for a server without HTTP). Returns True once every model is unloaded
    (at once when none is loaded), False if the server refused (not in explicit mode, the repository
    API locked by a key not sent), is unreachable, or the requests inside did not finish within
    ``timeout_s``; the caller then stops the server anyway.
    """
    return _unload(_api(api, headers), tuple(models), timeout_s=timeout_s, verb="drain")


def unload_all(api: str | RepositoryApi, *, timeout_s: float, headers: Mapping[str, str] | None = None) -> bool:
    """Unload every model still loaded, all at once, and wait until they are gone; never raises.

    What ``TritonServer.stop()`` does after :func:`drain`, right before SIGTERM: Triton's exit unloads
    the models itself but looks whether they are gone only once a second, so a python-backend model
    whose stub takes 1.2 s to end holds the exit 2 s; unloaded here first, the exit finds none.
    True once none is loaded; False as :func:`drain` says.
    """
    return _unload(_api(api, headers), None, timeout_s=timeout_s, verb="unload")


def _api(api: str | RepositoryApi, headers: Mapping[str, str] | None) -> RepositoryApi:
    return HttpRepositoryApi(api, headers) if isinstance(api, str) else api


def _unload(api: RepositoryApi, models: tuple[str, ...] | None, *, timeout_s: float, verb: str) -> bool:
    """Unload ``models`` (None: every model loaded) and poll the repository index until none is left."""
    started = time.monotonic()

    def left_s() -> float:
        return timeout_s - (time.monotonic() - started)

    def loaded() -> list[str]:
        # A model never loaded has no state in the index (explicit mode without it): nothing to wait for.
        states = api.states(left_s())
        names = models if models is not None else sorted(states)
        return [model for model in names if states.get(model) in _LOADED_STATES]

    which = ", ".join(models) if models is not None else "every model"
    try:
        waiting = loaded()
        which = ", ".join(waiting) or which
        for model in waiting:
            api.unload(model, left_s())
        while waiting and left_s() > 0:
            time.sleep(_POLL_S)
            waiting = loaded()
        if not waiting:
            logger.info("%sed %s in %.2f s", verb, which, time.monotonic() - started)
            return True
        logger.warning("requests in %s did not finish within %g s", ", ".join(waiting), timeout_s)
    except RepositoryApiError as exc:
        logger.warning("could not %s %s before stopping: %s", verb, which, exc)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fashionbox.server.drain``: drain a running server from outside it (a ``preStop`` hook, a script).

    ``fashionbox serve`` drains on SIGTERM by itself (also in the production image); this is for a
    Triton started some other way, in explicit mode with the repository API behind the admin key.

    The key that unlocks the repository API comes from ``$FASHIONBOX_ADMIN_KEY_FILE`` or
    ``$FASHIONBOX_ADMIN_KEY`` (never a flag: flags end up in process listings). Exit code 0 when
    drained, 1 when not (the caller stops the server anyway).
    """
    import argparse

    from fashionbox.contract import ADMIN_GRPC_HEADER, ADMIN_KEY_NAME, DEFAULT_HTTP_PORT
    from fashionbox.server.security import SecurityError, read_admin_key

    parser = argparse.ArgumentParser(prog="python -m fashionbox.server.drain", description=main.__doc__)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--http-url", default=f"http://127.0.0.1:{DEFAULT_HTTP_PORT}", help="server HTTP base URL")
    where.add_argument("--grpc-url", metavar="HOST:PORT",
                       help="drain over the server's gRPC instead (plaintext: a server without HTTP, on its host)")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="longest wait for requests in flight")
    parser.add_argument("--model", action="append", dest="models", help=f"model to unload (default {ENSEMBLE_MODEL})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        key = read_admin_key()
    except SecurityError as exc:
        parser.error(str(exc))
    models = tuple(args.models or (ENSEMBLE_MODEL,))
    if args.grpc_url is None:
        drained = drain(args.http_url.rstrip("/"), models, timeout_s=args.timeout_s,
                        headers={ADMIN_KEY_NAME: key} if key else None)
        return 0 if drained else 1
    api = GrpcRepositoryApi(args.grpc_url, metadata=((ADMIN_GRPC_HEADER, key),) if key else ())
    try:
        return 0 if drain(api, models, timeout_s=args.timeout_s) else 1
    finally:
        api.close()


if __name__ == "__main__":
    raise SystemExit(main())
