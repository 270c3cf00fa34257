"""``fashionbox-tritonserver``: the embedded ``tritonserver`` as a plain executable, for tools that start
Triton themselves (Triton Model Analyzer's ``--triton-server-path``, a shell, a supervisor)::

    fashionbox-tritonserver --model-repository=build/model_repository --model-control-mode=explicit ...
    model-analyzer profile --triton-launch-mode=local --triton-server-path=fashionbox-tritonserver ...

It replaces itself (``exec``) with the Triton ``fashionbox serve`` runs (the nvidia-pytriton wheel's, or
``$FASHIONBOX_TRITON_HOME``'s) in the environment ``fashionbox serve`` gives it
(:func:`fashionbox.server.triton.server_environment`: the library path, ``FASHIONBOX_SITE_PACKAGES``)
plus a fresh ``FASHIONBOX_PIPELINE_SECRET``, under umask 077. Every argument is passed through as given;
in front of them it adds ``--backend-directory`` (the backends folder with this Python's stub) and
loopback ``--grpc-address``/``--http-address``/``--metrics-address`` (Triton binds every interface
otherwise), each only when the caller gives none of its own.

What it does not do, unlike ``fashionbox serve``: lock the model-repository and other admin APIs
behind a key (a tool that loads and unloads models needs them open, which is why the bind is
loopback by default), drain the ensemble on SIGTERM, or clean up after a killed server. The models
need no clean-up from it: the admission slots file is created and removed by the models themselves
(:mod:`fashionbox.core.admission`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fashionbox.core.capability import SECRET_ENV as PIPELINE_SECRET_ENV
from fashionbox.core.capability import new_secret
from fashionbox.server.errors import ServerError
from fashionbox.server.triton import find_triton_distribution, prepare_backend_directory, server_environment

__all__ = ["LOOPBACK", "launch_arguments", "launch_environment", "main"]

LOOPBACK = "127.0.0.1"
_ADDRESS_FLAGS = ("--grpc-address", "--http-address", "--metrics-address")
_CHILD_UMASK = 0o077  # as fashionbox serve's child (fashionbox.server.process.CHILD_UMASK)


def _given(arguments: Sequence[str]) -> set[str]:
    """The long flags among ``arguments``, in either form (``--flag=value`` or ``--flag value``)."""
    return {argument.partition("=")[0] for argument in arguments if argument.startswith("--")}


def launch_arguments(arguments: Sequence[str], *, backend_directory: Path) -> list[str]:
    """tritonserver's arguments: the defaults the caller did not give, then the caller's, unchanged."""
    given = _given(arguments)
    defaults = [] if "--backend-directory" in given else [f"--backend-directory={backend_directory}"]
    defaults += [f"{flag}={LOOPBACK}" for flag in _ADDRESS_FLAGS if flag not in given]
    return [*defaults, *arguments]


def launch_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``fashionbox serve``'s environment for the server and its stubs, with a fresh pipeline secret."""
    env = server_environment(find_triton_distribution(), environ)
    env[PIPELINE_SECRET_ENV] = new_secret()
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Exec tritonserver; returns (exit code 2) only when it cannot be run."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        dist = find_triton_distribution()
        command = [str(dist.binary), *launch_arguments(arguments, backend_directory=prepare_backend_directory())]
        env = launch_environment(os.environ)
    except (ServerError, OSError) as exc:
        print(f"fashionbox-tritonserver: {exc}", file=sys.stderr)
        return 2
    os.umask(_CHILD_UMASK)
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        print(f"fashionbox-tritonserver: could not run {command[0]}: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
