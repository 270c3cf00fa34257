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

The HTTP endpoint is used because it is always plaintext on the server's own host, whatever TLS
the gRPC endpoint demands of clients.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from fashionbox.contract import ENSEMBLE_MODEL

__all__ = ["drain", "unload_all"]

logger = logging.getLogger(__name__)

_POLL_S = 0.05
# Index states of a model that is (or is about to be) serving, or still finishing what it holds.
_LOADED_STATES = frozenset({"READY", "LOADING", "UNLOADING"})


def _post(url: str, headers: Mapping[str, str], timeout_s: float) -> Any:
    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=max(timeout_s, 0.1)) as response:
        body = response.read()
    return json.loads(body) if body else None


def drain(
    http_url: str,
    models: Sequence[str] = (ENSEMBLE_MODEL,),
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> bool:
    """Unload ``models`` and wait until their requests in flight are done; never raises.

    ``http_url`` is the server's HTTP base URL. Returns True once every model is unloaded (at once
    when none is loaded), False if the server refused (not in explicit mode, the repository API
    locked by a key not in ``headers``), is unreachable, or the requests inside did not finish
    within ``timeout_s``; the caller then stops the server anyway.
    """
    return _unload(http_url, tuple(models), timeout_s=timeout_s, headers=headers, verb="drain")


def unload_all(http_url: str, *, timeout_s: float, headers: Mapping[str, str] | None = None) -> bool:
    """Unload every model still loaded, all at once, and wait until they are gone; never raises.

    What ``TritonServer.stop()`` does after :func:`drain`, right before SIGTERM: Triton's exit unloads
    the models itself but looks whether they are gone only once a second, so a python-backend model
    whose stub takes 1.2 s to end holds the exit 2 s; unloaded here first, the exit finds none.
    True once none is loaded; False as :func:`drain` says.
    """
    return _unload(http_url, None, timeout_s=timeout_s, headers=headers, verb="unload")


def _unload(http_url: str, models: tuple[str, ...] | None, *, timeout_s: float,
            headers: Mapping[str, str] | None, verb: str) -> bool:
    """Unload ``models`` (None: every model loaded) and poll the repository index until none is left."""
    started = time.monotonic()
    call_headers = dict(headers or {})

    def left_s() -> float:
        return timeout_s - (time.monotonic() - started)

    def loaded() -> list[str]:
        # A model never loaded has no state in the index (explicit mode without it): nothing to wait for.
        index = _post(f"{http_url}/v2/repository/index", call_headers, left_s()) or []
        states = {entry.get("name"): entry.get("state") for entry in index}
        names = models if models is not None else sorted(str(name) for name in states)
        return [model for model in names if states.get(model) in _LOADED_STATES]

    which = ", ".join(models) if models is not None else "every model"
    try:
        waiting = loaded()
        which = ", ".join(waiting) or which
        for model in waiting:
            _post(f"{http_url}/v2/repository/models/{urllib.parse.quote(model)}/unload", call_headers, left_s())
        while waiting and left_s() > 0:
            time.sleep(_POLL_S)
            waiting = loaded()
        if not waiting:
            logger.info("%sed %s in %.2f s", verb, which, time.monotonic() - started)
            return True
        logger.warning("requests in %s did not finish within %g s", ", ".join(waiting), timeout_s)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:200]
        logger.warning("could not %s %s before stopping: HTTP %d %s", verb, which, exc.code, detail)
    except (OSError, ValueError) as exc:
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

    from fashionbox.contract import ADMIN_KEY_NAME, DEFAULT_HTTP_PORT
    from fashionbox.server.security import SecurityError, read_admin_key

    parser = argparse.ArgumentParser(prog="python -m fashionbox.server.drain", description=main.__doc__)
    parser.add_argument("--http-url", default=f"http://127.0.0.1:{DEFAULT_HTTP_PORT}", help="server HTTP base URL")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="longest wait for requests in flight")
    parser.add_argument("--model", action="append", dest="models", help=f"model to unload (default {ENSEMBLE_MODEL})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        key = read_admin_key()
    except SecurityError as exc:
        parser.error(str(exc))
    headers = {ADMIN_KEY_NAME: key} if key else None
    drained = drain(args.http_url.rstrip("/"), tuple(args.models or (ENSEMBLE_MODEL,)), timeout_s=args.timeout_s,
                    headers=headers)
    return 0 if drained else 1


if __name__ == "__main__":
    raise SystemExit(main())
