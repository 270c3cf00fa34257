"""Only the ensemble is callable from outside: direct calls to its steps are refused or cost little.

A real server on stand-in models (docs/RELIABILITY.md, "Direct calls to the pipeline's steps").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from client_servers import dark_jpeg, fill_slots_then_wait, infer_model, start_private_server
from onnx_standins import write_standin_repository

from fashionbox import contract
from fashionbox.client import FashionClient, ImageDetections
from fashionbox.converter.repository import ModelScheduling, RepositorySettings
from fashionbox.core.capability import SECRET_ENV
from fashionbox.server import TritonServer

pytestmark = pytest.mark.integration

SIZE, CROP, CAPACITY = 64, 32, 16


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    settings = RepositorySettings(input_size=SIZE, crop_size=CROP, max_detections=10, max_in_flight=CAPACITY,
                                  preprocess=ModelScheduling(instances=2, max_batch_size=4, max_queue_size=32),
                                  model_version="direct")
    repository = write_standin_repository(tmp_path_factory.mktemp("direct"), settings, purpose="direct-call tests")
    started = start_private_server(repository, tmp_path_factory.mktemp("logs"))
    try:
        yield started
    finally:
        started.stop(timeout_s=10)


def _grpc(server: TritonServer) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.endpoints.grpc)


def _refusal(server: TritonServer, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> Any:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as refused:
        infer_model(server, model, arrays, outputs)
    return refused.value


def _preprocessed(server: TritonServer, seed: int = 1) -> dict[str, np.ndarray]:
    """A direct ``preprocess`` call: what it gives its caller, TOKEN included."""
    result = infer_model(server, contract.PREPROCESS_MODEL, {"IMAGE": np.array([[dark_jpeg(seed)]], dtype=object)},
                    ["PIXELS", "IMAGE_INFO", "TOKEN"])
    return {name: result.as_numpy(name) for name in ("PIXELS", "IMAGE_INFO", "TOKEN")}


def _post_inputs(pixels: np.ndarray, token: np.ndarray) -> dict[str, np.ndarray]:
    return {"PIXELS": pixels, "IMAGE_INFO": np.array([[64, 64, 1, 0, 0]], np.float32),
            "DET_BOXES": np.array([[[4, 4, 40, 40]]], np.float32), "DET_SCORES": np.array([[0.9]], np.float32),
            "DET_CLASSES": np.zeros((1, 1), np.int32), "TOKEN": token}


def test_the_steps_refuse_direct_calls_without_a_token_or_with_a_forged_one(server: TritonServer) -> None:
    pixels = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    forged = np.random.default_rng(0).integers(0, 255, (1, 32), dtype=np.uint8)

    missing = _refusal(server, contract.DETECTOR_MODEL, {"PIXELS": pixels}, ["DET_BOXES"])
    assert missing.status() == "StatusCode.INVALID_ARGUMENT" and "TOKEN" in missing.message()
    for model, arrays, outputs in [
        (contract.DETECTOR_MODEL, {"PIXELS": pixels, "TOKEN": forged}, ["DET_BOXES"]),
        (contract.POSTPROCESS_MODEL, _post_inputs(pixels, forged), ["DETECTIONS"]),
        (contract.ATTRIBUTES_MODEL, {"CROPS": np.zeros((1, CROP, CROP, 3), np.uint8), "TOKEN": forged},
         ["ATTRIBUTE_PROBS"]),
    ]:
        error = _refusal(server, model, arrays, outputs)
        assert error.status() == "StatusCode.INVALID_ARGUMENT", (model, error)
        assert f"'{model}' is a step of the ensemble 'fashion' and takes no direct calls" in error.message(), error

    # A genuine token for other pixels is refused too: it is bound to what preprocess made.
    made = _preprocessed(server)
    error = _refusal(server, contract.DETECTOR_MODEL, {"PIXELS": made["PIXELS"] ^ 1, "TOKEN": made["TOKEN"]},
                     ["DET_BOXES"])
    assert "not made by this server for these pixels" in error.message()
    with FashionClient(server.endpoints.grpc) as client:
        assert isinstance(client.detect(dark_jpeg(3)), ImageDetections)


def test_direct_preprocess_calls_hold_admission_for_about_a_second_only(server: TritonServer) -> None:
    time.sleep(1.2)  # earlier tests' pending slots have expired
    image = np.array([[dark_jpeg(5)]], dtype=object)
    # every slot, taken by direct preprocess calls whose outputs go back to their caller
    refused_at_first, blocked_s = fill_slots_then_wait(server, contract.PREPROCESS_MODEL, CAPACITY, image)
    with FashionClient(server.endpoints.grpc) as client:
        assert isinstance(client.detect(dark_jpeg(6)), ImageDetections)
    # 16 direct calls used to refuse all ensemble traffic for the 5 s TTL; now for the 1 s pending time.
    assert refused_at_first > 0 and blocked_s < 1.6, (refused_at_first, blocked_s)


def test_the_secret_is_in_the_servers_environment_only(server: TritonServer) -> None:
    assert server.pid is not None
    environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    (secret,) = [entry.split(b"=", 1)[1] for entry in environ if entry.startswith(SECRET_ENV.encode() + b"=")]
    assert len(bytes.fromhex(secret.decode())) == 32
    assert secret not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    configs = b"".join(path.read_bytes() for path in server.config.repository.glob("*/config.pbtxt"))
    assert secret not in configs
    assert os.environ.get(SECRET_ENV) is None  # nor in the launcher's own environment


def test_a_token_a_direct_preprocess_call_returned_works_for_its_own_pixels_only(server: TritonServer) -> None:
    # The documented limit: what preprocess returns to its caller can be replayed to the detector (which
    # confirms its slot: run last, since that slot is then held for the TTL).
    made = _preprocessed(server, seed=4)
    result = infer_model(server, contract.DETECTOR_MODEL, {"PIXELS": made["PIXELS"], "TOKEN": made["TOKEN"]},
                    ["DET_BOXES"])
    assert result.as_numpy("DET_BOXES").shape[0] == 1
