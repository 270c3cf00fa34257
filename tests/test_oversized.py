"""Oversized requests over real gRPC: refused by ``preprocess``, and repeating them costs nothing more.

Triton 2.51 has no flag lowering its gRPC message ceiling (2 GiB) or an HTTP one, and the python
backend none capping its shared memory (``tritonserver --help``; the backend's options are
``shm-default-byte-size``, ``shm-growth-byte-size``, ``shm-region-prefix-name``,
``stub-timeout-seconds``, ``thread-pool-size``): an oversized image reaches the ``preprocess`` stub,
which refuses it before parsing. What that costs, and what bounds it, is in docs/RELIABILITY.md
("Oversized requests"); this file holds that the cost is paid once, not per request.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_standins import write_standin_repository
from PIL import Image

from fashionbox import contract
from fashionbox.converter.repository import ModelScheduling, RepositorySettings
from fashionbox.loadtest.reliability import process_tree_rss_bytes
from fashionbox.server import TritonServer

MAX_IMAGE_BYTES = 1_000_000
MAX_BATCH = 4
SETTINGS = RepositorySettings(
    input_size=64,
    crop_size=32,
    max_detections=10,
    preprocess=ModelScheduling(max_batch_size=MAX_BATCH),
    detector=ModelScheduling(max_batch_size=MAX_BATCH),
    postprocess=ModelScheduling(max_batch_size=MAX_BATCH),
    attributes=ModelScheduling(max_batch_size=16),
    max_image_bytes=MAX_IMAGE_BYTES,
    max_pixels=2_000_000,
    model_version="oversized",
)
RSS_GROWTH_LIMIT_MB = 60
"""Five requests at 4x the byte limit after a warm-up may not grow the server by more than this."""
SHM_GROWTH_LIMIT_MB = 1


# -- a real server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(triton_server: Any, tmp_path_factory: pytest.TempPathFactory) -> TritonServer:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    repository = write_standin_repository(tmp_path_factory.mktemp("oversized"), SETTINGS, purpose="oversized requests")
    started: TritonServer = triton_server(repository)
    return started


@pytest.fixture(scope="module")
def raw(server: TritonServer) -> Iterator[Any]:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    with grpcclient.InferenceServerClient(server.endpoints.grpc) as connection:
        yield connection


def _jpeg() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 90, (72, 96, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _infer(raw: Any, data: bytes) -> Any:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(contract.IMAGE.name, [1, 1], contract.IMAGE.datatype)
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = raw.infer(contract.ENSEMBLE_MODEL, [tensor], outputs=[grpcclient.InferRequestedOutput("DETECTIONS")])
    return result.as_numpy("DETECTIONS")


def _tree(pid: int) -> set[int]:
    return set(process_tree_rss_bytes(pid))


def _shm_mb(pid: int) -> float:
    """Bytes held in ``/dev/shm`` by the files the server's processes map (its python stubs' regions)."""
    files: set[str] = set()
    for member in _tree(pid):
        try:
            maps = (Path("/proc") / str(member) / "maps").read_text()
        except OSError:
            continue
        files.update(line.split(maxsplit=5)[5] for line in maps.splitlines()
                     if len(line.split(maxsplit=5)) == 6 and line.split(maxsplit=5)[5].startswith("/dev/shm/"))
    total = 0
    for name in files:
        try:
            total += os.stat(name).st_blocks * 512
        except OSError:
            continue
    return total / 2**20


def _rss_mb(pid: int) -> float:
    return sum(process_tree_rss_bytes(pid).values()) / 2**20


@pytest.mark.integration
def test_requests_at_four_times_the_byte_limit_are_refused_and_leave_memory_bounded(
    server: TritonServer, raw: Any
) -> None:
    import tritonclient.grpc as grpcclient

    assert server.pid is not None
    good = _infer(raw, _jpeg())
    oversized = os.urandom(4 * MAX_IMAGE_BYTES)
    for _ in range(2):  # warm-up: allocators and pools settle
        with pytest.raises(grpcclient.InferenceServerException):
            _infer(raw, oversized)
    rss_before, shm_before = _rss_mb(server.pid), _shm_mb(server.pid)

    for _ in range(5):
        with pytest.raises(grpcclient.InferenceServerException) as caught:
            _infer(raw, oversized)
        assert caught.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.RESOURCE_EXHAUSTED")
        assert f"over the limit of {MAX_IMAGE_BYTES} bytes" in (caught.value.message() or "")
        assert np.array_equal(_infer(raw, _jpeg()), good)  # other requests keep succeeding
    rss_after, shm_after = _rss_mb(server.pid), _shm_mb(server.pid)

    assert server.is_alive()
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB, f"server grew from {rss_before:.0f} to {rss_after:.0f} MB"
    assert shm_after - shm_before < SHM_GROWTH_LIMIT_MB, f"/dev/shm grew from {shm_before:.1f} to {shm_after:.1f} MB"
