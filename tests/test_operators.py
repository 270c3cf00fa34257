"""Operators' tools: ``fashionbox-tritonserver`` (the embedded Triton as an executable), ``fashionbox-perf-analyzer``
(perf_analyzer with its libraries found), and a prompt stop of a server whose ensemble is not loaded."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from client_images import dark_jpeg
from onnx_standins import write_standin_repository
from operators_helpers import console_script, direct_tritonserver

from fashionbox.converter.repository import RepositorySettings
from fashionbox.core.capability import SECRET_ENV
from fashionbox.server import start_on_free_ports
from fashionbox.server.launcher import launch_arguments, launch_environment
from fashionbox.server.model_analyzer import input_data
from fashionbox.server.perf_analyzer import LIBRARIES, library_dir
from fashionbox.server.triton import SITE_PACKAGES_ENV, find_triton_distribution

_SETTINGS = RepositorySettings(input_size=64, crop_size=32, max_detections=10)


def test_the_launcher_binds_loopback_and_finds_the_backends_unless_told_otherwise(tmp_path: Path) -> None:
    given = ["--model-repository=/m", "--grpc-port=9001", "--model-control-mode=explicit"]
    assert launch_arguments(given, backend_directory=tmp_path) == [
        f"--backend-directory={tmp_path}",
        "--grpc-address=127.0.0.1",
        "--http-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        *given,
    ]


def test_the_launcher_passes_the_callers_addresses_and_backends_through_unchanged(tmp_path: Path) -> None:
    given = ["--grpc-address=0.0.0.0", "--http-address", "10.0.0.1", "--backend-directory=/b", "--log-verbose=1"]
    assert launch_arguments(given, backend_directory=tmp_path) == ["--metrics-address=127.0.0.1", *given]


def test_the_launcher_gives_the_environment_fashionbox_serve_gives() -> None:
    env = launch_environment({"LD_LIBRARY_PATH": "/x", "KEEP": "1"})
    assert env["KEEP"] == "1"
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[:2] == [str(find_triton_distribution().libs), "/x"]
    assert env[SITE_PACKAGES_ENV]
    assert env[SECRET_ENV] != launch_environment({})[SECRET_ENV]  # fresh at each start


def test_the_launcher_says_why_it_cannot_start(tmp_path: Path) -> None:
    env = {**os.environ, "FASHIONBOX_TRITON_HOME": str(tmp_path)}
    run = subprocess.run([console_script("fashionbox-tritonserver"), "--help"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert "has no bin/tritonserver" in run.stderr


def test_perf_analyzer_libraries_are_linked_under_their_real_names(tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="perf_analyzer's libraries come from nvidia-pytriton")
    folder = library_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(LIBRARIES)
    assert all((folder / name).resolve().is_file() for name in LIBRARIES)
    assert library_dir(tmp_path) == folder  # made once


def test_perf_analyzer_runs_through_its_entry() -> None:
    pytest.importorskip("pytriton", reason="perf_analyzer's libraries come from nvidia-pytriton")
    run = subprocess.run([console_script("fashionbox-perf-analyzer"), "--version"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Perf Analyzer Version" in run.stdout + run.stderr


@pytest.mark.integration
def test_perf_analyzer_measures_the_ensemble_on_a_launched_server(tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    repository = write_standin_repository(tmp_path, _SETTINGS, purpose="perf_analyzer through its entry")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(input_data([dark_jpeg(1), dark_jpeg(2)])))
    with direct_tritonserver(repository, tmp_path / "tritonserver.log") as (_, grpc_url):
        run = subprocess.run(
            [console_script("fashionbox-perf-analyzer"), "-m", "fashion", "-u", grpc_url, "-i", "grpc",
             "--input-data", str(data), "--concurrency-range", "1", "--measurement-mode", "count_windows",
             "--measurement-request-count", "20", "-s", "90", "--max-trials", "5", "-f", str(tmp_path / "out.csv")],
            capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0].startswith("Concurrency,Inferences/Second")
    assert float(rows[1].split(",")[1]) > 0


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) of the sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.append(address)
    return found


# 127.0.0.1 as /proc/net/tcp writes it, alone and as an IPv4-mapped IPv6 address.
_LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F"}


@pytest.mark.integration
def test_the_launched_server_listens_on_loopback_only(tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    repository = write_standin_repository(tmp_path, _SETTINGS, purpose="launcher bind")
    with direct_tritonserver(repository, tmp_path / "tritonserver.log") as (_, grpc_url):
        addresses = _listening_addresses(int(grpc_url.rsplit(":", 1)[1]))
    assert addresses and set(addresses) <= _LOOPBACK_HEX, addresses


@pytest.mark.integration
def test_a_server_whose_ensemble_is_not_loaded_stops_promptly(tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    repository = write_standin_repository(tmp_path, _SETTINGS, purpose="stop without the ensemble")
    server = start_on_free_ports(repository, tmp_path, model_control_mode="explicit", load_models=("preprocess",),
                                 exit_timeout_s=30)
    assert server.model_ready("fashion") is False and server.model_ready("preprocess") is True
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10  # was 34 s: the drain waited 30 s for a model never loaded
