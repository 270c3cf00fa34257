"""The production compose file, validated offline (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_triton_image_matches_the_embedded_triton_release(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / compose["services"]["triton"]["build"]["dockerfile"]).read_text()
    # NGC 24.10 ships Triton 2.51, the release inside the nvidia-pytriton 0.7.0 wheel.
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:24\.10-py3$", dockerfile, re.MULTILINE)


def test_model_repository_is_mounted_read_only(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["triton"]["volumes"]
    assert "./artifacts/model_repository:/models:ro" in volumes


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    ports = compose["services"]["triton"]["ports"]
    assert sorted(ports) == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]


def test_server_reserves_a_gpu_checks_readiness_and_drains_on_stop(compose: dict[str, Any]) -> None:
    service = compose["services"]["triton"]
    device = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "/v2/health/ready" in " ".join(service["healthcheck"]["test"])
    command = service["command"]
    assert "--model-control-mode=none" in command
    exit_timeout_s = int(next(c for c in command if c.startswith("--exit-timeout-secs=")).split("=")[1])
    grace_s = int(str(service["stop_grace_period"]).rstrip("s"))
    assert grace_s > exit_timeout_s, "docker would SIGKILL before Triton finished draining"


def test_every_source_folder_the_package_needs_is_copied_into_the_image(compose: dict[str, Any]) -> None:
    import tomllib

    dockerfile = (ROOT / compose["services"]["triton"]["build"]["dockerfile"]).read_text()
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top_folders = {folder.split("/")[0] for folder in package_dirs.values()}
    copied = set(re.findall(r"^COPY (\S+) /opt/fashionbox/", dockerfile, re.MULTILINE))
    assert top_folders <= copied
