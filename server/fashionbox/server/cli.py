"""``fashionbox serve`` and ``python -m fashionbox.server``: flags, then the server in the foreground.

The flags are derived from the ``ServerConfig`` declarations (:mod:`fashionbox.server.config`);
unset flags fall back to ``FASHIONBOX_*`` variables, then to the defaults. With neither
``--repository`` nor ``$FASHIONBOX_REPOSITORY`` it serves :data:`DEFAULT_REPOSITORY`, where
``fashionbox convert`` writes by default.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Mapping, Sequence

from fashionbox.server import settings
from fashionbox.server.config import DEFAULT_REPOSITORY, ServerConfig
from fashionbox.server.errors import ConfigError, ServerStartError
from fashionbox.server.process import TritonServer
from fashionbox.server.stubs import supervise

__all__ = ["DEFAULT_REPOSITORY", "add_serve_arguments", "config_from_arguments", "main", "run_server_cli",
           "serve_main"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fashionbox serve`` flags, one per declared ``ServerConfig`` input; all default to unset."""
    settings.add_arguments(parser, ServerConfig)


def config_from_arguments(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The config for parsed serve flags: flags win over FASHIONBOX_* variables, which win over defaults."""
    return ServerConfig.from_inputs(vars(args), environ, fallbacks=True)


def serve_main(args: argparse.Namespace) -> int:
    """Entry point for ``fashionbox serve`` after argument parsing; returns the process exit code."""
    try:
        config = config_from_arguments(args)
    except ConfigError as exc:
        print(f"fashionbox serve: {exc}", file=sys.stderr)
        return 2
    return run_server_cli(config)


def run_server_cli(config: ServerConfig) -> int:
    """Run the server in the foreground until Ctrl-C or SIGTERM; 0 on a clean stop, 1 on failure."""
    # SIGTERM (docker stop, systemd) should stop us as cleanly as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = TritonServer(config)
    try:
        try:
            server.start()
            server.wait_until_ready()
        except ServerStartError as exc:
            print(f"fashionbox serve: {exc}", file=sys.stderr)
            return 1
        endpoints = server.endpoints
        transport = "plaintext" if config.tls is None else ("mutual TLS" if config.tls.mutual else "TLS")
        if config.admin_key is not None:
            admin = "admin APIs restricted to the admin key"
        else:
            admin = f"APIs closed: {', '.join(config.closed_apis())}"
        bound = server.request_bound
        door = (f"front door: messages over {bound.max_request_bytes} bytes refused; Triton on {server.upstream_grpc}"
                if bound is not None and config.uses_front_door
                else "no front door: Triton takes gRPC messages up to 2 GiB")
        guard = (f"; bodies over {bound.max_request_bytes} bytes and other sites refused"
                 if bound is not None and config.uses_http_door
                 else "; no front door: bodies of any size, other sites not refused")
        http = f"{endpoints.http} (plaintext{'; inference needs the admin key' if config.secure else ''}{guard})"
        print(
            f"FashionBox Triton server ready (pid {server.pid})\n"
            f"  gRPC     {endpoints.grpc} ({transport}; {admin})\n"
            f"           {door}\n"
            f"  HTTP     {http if config.http else 'off'}\n"
            f"  metrics  {endpoints.metrics}\n"
            f"  log      {server.log_path}\n"
            f"  ready    {config.ready_file or 'no ready file (--ready-file)'}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        # Triton 2.51 neither restarts a python-backend stub that dies nor stops reporting ready:
        # supervise() restarts the server then, and keeps the ready file (fashionbox.server.stubs).
        try:
            code = supervise(server, ready_file=config.ready_file)
        except ServerStartError as exc:
            print(f"fashionbox serve: the restart after a python backend stub died failed: {exc}", file=sys.stderr)
            return 1
        print(
            f"fashionbox serve: tritonserver exited unexpectedly with code {code}; see {server.log_path}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("stopping the server ...", flush=True)
        return 0
    finally:
        try:
            server.stop()
        except KeyboardInterrupt:
            # A second Ctrl-C while stopping means: do not wait.
            server.stop(timeout_s=0)
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fashionbox.server [flags]``."""
    parser = argparse.ArgumentParser(prog="python -m fashionbox.server", description="Run the embedded Triton server.")
    add_serve_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_main(parser.parse_args(argv))
