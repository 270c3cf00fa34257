"""Servers and images for the client's integration tests, shared by the sync, async, TLS and wire files.

The repository is built once per test session from the ONNX stand-ins (``onnx_standins.py``: exact
contract, real NMS, tiny graphs), so these tests measure the client and the serving path, not a
model, and start in seconds. Private servers (``private_server``) run on ports of their own, for
tests that stop, restart or reconfigure them; always stop them (``with`` or ``finally``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from client_images import (
    ADMIN_HEADER,
    ADMIN_KEY,
    NOT_AN_IMAGE,
    RESTRICT_STATISTICS,
    dark_jpeg,
    image_set,
    large_png,
)
from onnx_standins import write_standin_repository

from fashionbox.converter.repository import ModelScheduling, RepositorySettings
from fashionbox.server import TritonServer, start_on_free_ports
from fashionbox.server.security import ServerTls
from fashionbox.server.stubs import restart_on_same_ports

__all__ = [  # the client-only helpers are re-exported from client_images for the files that import them here
    "ADMIN_HEADER",
    "ADMIN_KEY",
    "NOT_AN_IMAGE",
    "RESTRICT_STATISTICS",
    "dark_jpeg",
    "image_set",
    "large_png",
    "restart",
    "standin_repository",
    "start_private_server",
    "write_client_repository",
]

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
        _repositories[key] = write_client_repository(tmp_path_factory.mktemp("client-standins"))
    return _repositories[key]


def write_client_repository(folder: Path) -> Path:
    """Write the stand-in model repository of the client's integration tests into ``folder``."""
    return write_standin_repository(folder, _SETTINGS, purpose="client integration tests with ONNX stand-ins")


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


def infer_model(server: TritonServer, model: str, arrays: dict[str, Any], outputs: list[str]) -> Any:
    """One raw gRPC call (no retries) of ``model`` with ``arrays`` as its inputs: the step models too."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in arrays.items():
        array = np.asarray(array)
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object
                                       else np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.endpoints.grpc) as client:
        return client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])


def fill_slots_then_wait(server: TritonServer, entry: str, capacity: int, image: Any) -> tuple[int, float]:
    """Take every admission slot by ``capacity`` direct calls to the ensemble's entry model (their
    outputs go back to the caller), then send raw ensemble requests (no retries) until one is
    admitted: ``(refusals seen, seconds from the first direct call to the admission)``. Each refusal
    must be the "at capacity" one, and the wait is cut at 3 s."""
    import time

    from tritonclient.utils import InferenceServerException

    from fashionbox import contract

    started = time.monotonic()
    for _ in range(capacity):
        infer_model(server, entry, {"IMAGE": image}, ["TOKEN"])
    refused = 0
    while True:
        try:
            infer_model(server, contract.ENSEMBLE_MODEL, {"IMAGE": image}, ["DETECTIONS"])
            return refused, time.monotonic() - started
        except InferenceServerException as exc:
            assert "at capacity" in exc.message(), exc
            refused += 1
            assert time.monotonic() - started < 3.0, "the direct calls held the slots past their pending time"
            time.sleep(0.05)
