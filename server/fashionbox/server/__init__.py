"""The embedded Triton server: the ``tritonserver`` binary of the nvidia-pytriton wheel as a child process.

With ``$FASHIONBOX_TRITON_HOME`` set (the production image sets ``/opt/tritonserver``), the Triton
installed there is run instead, with its own backends: the same wrapper (draining on SIGTERM,
loopback by default, TLS and admin-key flags) in a container as on a laptop.

``fashionbox serve`` runs it on a model repository; tests start it through the fixtures in
``tests/conftest.py``. In code::

    config = ServerConfig(repository=Path("build/model_repository"))
    with TritonServer(config) as server:          # start() + wait_until_ready()
        client = tritonclient.grpc.InferenceServerClient(server.endpoints.grpc)
        ...

This module re-exports the public names of its parts, each importing only those before it:

- ``errors``: the exceptions (``ServerError`` and its subclasses);
- ``settings``: fields declared once with their flag, variable and parser;
- ``security``: TLS files and the admin key; ``config``: ``ServerConfig``;
- ``network``: ``Endpoints`` and free ports; ``command``: the tritonserver command line;
- ``stubs``: the python-backend stubs and their supervision; ``triton``: finding Triton, its backends;
- ``engines``: the serve-time TensorRT engine check (``python -m fashionbox.server.engines check``);
- ``checks``: the checks before a start; ``drain``: unloading the ensemble before a stop;
- ``process``: ``TritonServer``; ``cli``: ``fashionbox serve`` / ``python -m fashionbox.server``.

For operators' own tools (docs/TUNING.md), not imported here: ``launcher`` (``fashionbox-tritonserver``,
the embedded tritonserver as an executable), ``perf_analyzer`` (``fashionbox-perf-analyzer``) and
``model_analyzer`` (a Triton Model Analyzer config for the ensemble).
"""

from __future__ import annotations

from fashionbox.server.cli import add_serve_arguments, config_from_arguments, run_server_cli, serve_main
from fashionbox.server.command import build_command
from fashionbox.server.config import DEFAULT_REPOSITORY, ServerConfig, parse_bool
from fashionbox.server.errors import ConfigError, PortInUseError, RepositoryError, ServerError, ServerStartError
from fashionbox.server.network import Endpoints, find_free_port, find_free_ports
from fashionbox.server.process import STOP_GRACE_S, TritonServer, running_server, serve_for_tuning, start_on_free_ports
from fashionbox.server.stubs import STUB_NAME
from fashionbox.server.triton import (
    TRITON_HOME_ENV,
    TritonDistribution,
    find_triton_distribution,
    prepare_backend_directory,
    stub_import_paths,
)

__all__ = [
    "DEFAULT_REPOSITORY",
    "STOP_GRACE_S",
    "STUB_NAME",
    "TRITON_HOME_ENV",
    "ConfigError",
    "Endpoints",
    "PortInUseError",
    "RepositoryError",
    "ServerConfig",
    "ServerError",
    "ServerStartError",
    "TritonDistribution",
    "TritonServer",
    "add_serve_arguments",
    "build_command",
    "config_from_arguments",
    "find_free_port",
    "find_free_ports",
    "find_triton_distribution",
    "parse_bool",
    "prepare_backend_directory",
    "run_server_cli",
    "running_server",
    "serve_for_tuning",
    "serve_main",
    "start_on_free_ports",
    "stub_import_paths",
]
