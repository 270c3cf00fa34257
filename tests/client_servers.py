"""Servers and images for the client's integration tests, shared by the sync, async, TLS and wire files.

The repository is built once per test session from the ONNX stand-ins (``onnx_standins.py``: exact
contract, real NMS, tiny graphs), so these tests measure the client and the serving path, not a
model, and start in seconds. Private servers (``private_server``) run on ports of their own, for
tests that stop, restart or reconfigure them; always stop them (``with`` or ``finally``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from onnx_standins import write_standin_repository
from PIL import Image

from fashionbox.contract import ADMIN_GRPC_HEADER, ADMIN_KEY_NAME
from fashionbox.converter.repository import ModelScheduling, RepositorySettings
from fashionbox.server import TritonServer, start_on_free_ports
from fashionbox.server.security import ServerTls
from fashionbox.server.stubs import restart_on_same_ports

ADMIN_KEY = "s3cret-admin-key"
RESTRICT_STATISTICS = f"--grpc-restricted-protocol=statistics:{ADMIN_KEY_NAME}={ADMIN_KEY}"
"""Triton flag: the statistics API answers only calls that carry the admin header."""
ADMIN_HEADER = ADMIN_GRPC_HEADER
"""The header a client sends for that flag: Triton prefixes the key with ``triton-grpc-protocol-``."""

_SETTINGS = RepositorySettings(
    input_size=64,
    crop_size=32,
    max_detections=10,
    # Batches of up to 16 images: at 64 requests in flight the batcher has work to group.
    preprocess=ModelScheduling(max_batch_size=16),
    detector=ModelScheduling(max_batch_size=16),
    postprocess=ModelScheduling(max_batch_size=16),
    attributes=ModelScheduling(max_batch_size=64),
    max_in_flight=64,  # the tests keep up to 64 requests in flight on purpose
    model_version="client-integration",
    model_name="stand-ins",
)
_repositories: dict[Path, Path] = {}


def standin_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in model repository of this test session (built on the first call)."""
    key = tmp_path_factory.getbasetemp()
    if key not in _repositories:
        _repositories[key] = write_standin_repository(
            tmp_path_factory.mktemp("client-standins"), _SETTINGS,
            purpose="client integration tests with ONNX stand-ins",
        )
    return _repositories[key]


def start_private_server(
    repository: Path,
    log_dir: Path,
    *,
    extra_args: Sequence[str] = (),
    wait: bool = True,
    tls: ServerTls | None = None,
    admin_key: str | None = None,
    exit_timeout_s: int = 5,
) -> TritonServer:
    """A server of the caller's own on fresh ports, started (and ready unless ``wait=False``).

    Call from the thread that will stop it: the server dies with the thread that started it.
    """
    return start_on_free_ports(
        repository,
        log_dir,
        wait=wait,
        exit_timeout_s=exit_timeout_s,
        extra_args=tuple(extra_args),
        tls=tls,
        admin_key=admin_key,
    )


def restart(server: TritonServer) -> None:
    """Stop ``server`` and start it again on the same ports (call from the thread that started it)."""
    restart_on_same_ports(server, stop_timeout_s=15)


def dark_jpeg(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A small dark textured JPEG: the stand-in detector finds garments in dark images."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def image_set(count: int, unique: int = 50) -> list[bytes]:
    """``count`` images cycling through ``unique`` different ones (sizes vary too)."""
    distinct = [dark_jpeg(seed, size=(64 + 8 * (seed % 5), 48 + 8 * (seed % 3))) for seed in range(unique)]
    return [distinct[i % unique] for i in range(count)]


def large_png(size: tuple[int, int] = (2400, 1800)) -> bytes:
    """A large noisy PNG: decoding and letterboxing it takes the server tens of milliseconds."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 90, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


NOT_AN_IMAGE = b"this is not an image, just text with a .jpg name"
