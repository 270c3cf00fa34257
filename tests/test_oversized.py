"""Oversized requests over real gRPC: refused by ``preprocess``, and repeating them costs nothing more.

Triton 2.51 has no flag lowering its gRPC message ceiling (2 GiB) or an HTTP one, and the python
backend none capping its shared memory (``tritonserver --help``; the backend's options are
``shm-default-byte-size``, ``shm-growth-byte-size``, ``shm-region-prefix-name``,
``stub-timeout-seconds``, ``thread-pool-size``): an oversized image reaches the ``preprocess`` stub,
which refuses it before parsing. What that costs, and what bounds it, is in docs/RELIABILITY.md
("Oversized requests"). Without the front door (the loopback default), this file holds that the cost
is paid once, not per request; with it (``fashionbox serve --front-door`` in its own process), that
messages far over the bound (64 and 256 MB) are refused at once with RESOURCE_EXHAUSTED while the
RSS of serve's whole process tree and the stubs' ``/dev/shm`` stay flat and good requests are
answered, that the streaming API goes through it, and that requests at the bound grow the stubs'
shared memory once, to a bounded size.
"""

from __future__ import annotations

import io
import itertools
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


# -- the front door: `fashionbox serve` refuses messages over its bound before Triton sees them ---------

BOUND = MAX_IMAGE_BYTES * MAX_BATCH + 64 * 1024
"""What `fashionbox serve` derives from SETTINGS: max_image_bytes x the ensemble's max batch + 64 KiB."""
SOAK_SIZES_MB = (64, 256, 64, 256, 64, 256)
SOAK_RSS_GROWTH_LIMIT_MB = 40
"""RSS of serve's whole process tree (front door, tritonserver, stubs) after the soak, over the warm-up."""
SOAK_RSS_PEAK_LIMIT_MB = 60
"""And at any moment during it (sampled every 20 ms): a 64 MB message held anywhere would show."""
REFUSAL_LIMIT_S = 5.0
INFER = "/inference.GRPCInferenceService/ModelInfer"


def _infer_request(payload: bytes) -> bytes:
    """A serialised ModelInferRequest for the ensemble with one image of ``payload`` bytes."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=contract.ENSEMBLE_MODEL)
    tensor = request.inputs.add(name=contract.IMAGE.name, datatype=contract.IMAGE.datatype, shape=[1, 1])
    assert tensor is not None
    request.outputs.add(name="DETECTIONS")
    request.raw_input_contents.append(len(payload).to_bytes(4, "little") + payload)
    return bytes(request.SerializeToString())


def _decode_detections(response: bytes) -> Any:
    from tritonclient.grpc import InferResult, service_pb2

    return InferResult(service_pb2.ModelInferResponse.FromString(response)).as_numpy("DETECTIONS")


class _Serve:
    def __init__(self, process: Any, grpc: str, http: str, log: Path) -> None:
        self.process, self.grpc, self.http, self.log = process, grpc, http, log


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Serve]:
    """`fashionbox serve` as an operator runs it, with the front door (on loopback it is asked for), in its
    own process: RSS of that process's tree covers the front door, tritonserver and the stubs."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    from fashionbox.server import find_free_ports

    folder = tmp_path_factory.mktemp("front-door")
    repository = write_standin_repository(folder, SETTINGS, purpose="oversized requests at the front door")
    grpc_port, http_port, metrics_port = find_free_ports(3)
    log = folder / "serve.log"
    command = [
        sys.executable, "-m", "fashionbox.server", "--repository", str(repository),
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
        "--exit-timeout-s", "5", "--log-file", str(folder / "triton.log"), "--front-door",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHIONBOX_")}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    served = _Serve(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", log)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"fashionbox serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{served.http}/v2/health/ready", timeout=2) as response:
                    if response.status == 200 and "FashionBox Triton server ready" in log.read_text():
                        break
            except OSError:
                pass
            time.sleep(0.2)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def channel(serve: _Serve) -> Iterator[Any]:
    import grpc

    with grpc.insecure_channel(serve.grpc, options=[("grpc.max_send_message_length", -1),
                                                    ("grpc.max_receive_message_length", -1)]) as opened:
        yield opened


def _triton_pid(serve_pid: int) -> int:
    from fashionbox.server.stubs import children

    (pid,) = [child for child in children(serve_pid) if "tritonserver" in Path(f"/proc/{child}/cmdline").read_text()]
    return pid


@pytest.mark.integration
def test_the_serve_banner_names_the_front_door_and_its_bound(serve: _Serve) -> None:
    text = serve.log.read_text()
    assert f"front door: messages over {BOUND} bytes refused" in text
    assert f"bodies over {BOUND} bytes and other sites refused" in text  # the HTTP line


@pytest.mark.integration
def test_a_soak_of_messages_far_over_the_bound_is_refused_at_once_and_memory_stays_flat(
    serve: _Serve, channel: Any
) -> None:
    import threading
    import time

    import grpc

    infer = channel.unary_unary(INFER)
    good_request = _infer_request(_jpeg())
    good = _decode_detections(infer(good_request, timeout=30))
    triton_pid = _triton_pid(serve.process.pid)
    oversized = {size: _infer_request(b"\xff" * (size * 2**20)) for size in sorted(set(SOAK_SIZES_MB))}

    def refused(message: bytes) -> tuple[Any, float]:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            infer(message, timeout=60)
        return caught.value, time.monotonic() - started

    for size in sorted(oversized):  # warm-up: one of each, so allocators and pools settle
        refused(oversized[size])
        for _ in range(5):
            assert np.array_equal(_decode_detections(infer(good_request, timeout=30)), good)
    rss_before, shm_before = _rss_mb(serve.process.pid), _shm_mb(triton_pid)

    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak.append(_rss_mb(serve.process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times: list[float] = []
    try:
        for size in SOAK_SIZES_MB:
            error, took_s = refused(oversized[size])
            times.append(took_s)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert f"vs. {BOUND})" in (error.details() or ""), error.details()
            assert took_s < REFUSAL_LIMIT_S, f"a {size} MB message took {took_s:.1f} s to be refused"
            assert np.array_equal(_decode_detections(infer(good_request, timeout=30)), good)  # others go on
    finally:
        stop.set()
        sampler.join()
    rss_after, shm_after = _rss_mb(serve.process.pid), _shm_mb(triton_pid)
    print(f"serve tree RSS {rss_before:.0f} -> {rss_after:.0f} MB (peak {max(peak):.0f}), "
          f"stubs' /dev/shm {shm_before:.1f} -> {shm_after:.1f} MB, refusals {[round(t, 3) for t in times]} s")

    assert serve.process.poll() is None and _triton_pid(serve.process.pid) == triton_pid
    assert rss_after - rss_before < SOAK_RSS_GROWTH_LIMIT_MB, f"grew from {rss_before:.0f} to {rss_after:.0f} MB"
    assert max(peak) - rss_before < SOAK_RSS_PEAK_LIMIT_MB, f"peaked at {max(peak):.0f} MB from {rss_before:.0f}"
    assert shm_after - shm_before < SHM_GROWTH_LIMIT_MB, f"/dev/shm grew from {shm_before:.1f} to {shm_after:.1f} MB"


@pytest.mark.integration
def test_the_stream_api_answers_through_the_front_door_and_an_oversized_message_ends_only_its_stream(
    serve: _Serve, channel: Any
) -> None:
    import queue

    import grpc
    import tritonclient.grpc as grpcclient

    good = _decode_detections(channel.unary_unary(INFER)(_infer_request(_jpeg()), timeout=30))

    def stream(images: list[bytes]) -> list[Any]:
        answers: queue.Queue[Any] = queue.Queue()
        with grpcclient.InferenceServerClient(serve.grpc) as client:
            client.start_stream(callback=lambda result, error: answers.put(error if error is not None else result))
            for image in images:
                tensor = grpcclient.InferInput(contract.IMAGE.name, [1, 1], contract.IMAGE.datatype)
                tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
                client.async_stream_infer(contract.ENSEMBLE_MODEL, [tensor],
                                          outputs=[grpcclient.InferRequestedOutput("DETECTIONS")])
            got = [answers.get(timeout=30) for _ in images]
            client.stop_stream()
        return got

    for answer in stream([_jpeg(), _jpeg()]):
        assert np.array_equal(answer.as_numpy("DETECTIONS"), good)
    (refused,) = stream([b"\xff" * (64 * 2**20)])
    assert isinstance(refused, grpcclient.InferenceServerException), refused
    assert refused.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED) and f"vs. {BOUND})" in (refused.message() or "")
    (after,) = stream([_jpeg()])  # a new stream is served as before
    assert np.array_equal(after.as_numpy("DETECTIONS"), good)


def _http_refused(base: str, size: int) -> tuple[int, str, float]:
    """POST ``size`` bytes to the ensemble over HTTP as a client that sends all before it reads."""
    import http.client
    import json
    import time
    import urllib.parse

    address = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=60)
    started = time.monotonic()
    try:
        connection.request("POST", f"/v2/models/{contract.ENSEMBLE_MODEL}/infer", body=b"\xff" * size,
                           headers={"Inference-Header-Content-Length": "2"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())["error"], time.monotonic() - started
    finally:
        connection.close()


@pytest.mark.integration
def test_http_bodies_far_over_the_bound_are_refused_at_once_memory_stays_flat_and_http_inference_answers(
    serve: _Serve, channel: Any
) -> None:
    import tritonclient.http as httpclient

    good = _decode_detections(channel.unary_unary(INFER)(_infer_request(_jpeg()), timeout=30))
    with httpclient.InferenceServerClient(serve.http.removeprefix("http://")) as client:
        def detect() -> Any:
            tensor = httpclient.InferInput(contract.IMAGE.name, [1, 1], contract.IMAGE.datatype)
            tensor.set_data_from_numpy(np.array([[_jpeg()]], dtype=np.object_))
            result = client.infer(contract.ENSEMBLE_MODEL, [tensor],
                                  outputs=[httpclient.InferRequestedOutput("DETECTIONS")])
            return result.as_numpy("DETECTIONS")

        assert np.array_equal(detect(), good)  # HTTP through the door answers as gRPC does
        _http_refused(serve.http, 64 * 2**20)  # warm-up
        triton_pid = _triton_pid(serve.process.pid)
        rss_before, shm_before = _rss_mb(serve.process.pid), _shm_mb(triton_pid)
        for size in SOAK_SIZES_MB:
            status, error, took_s = _http_refused(serve.http, size * 2**20)
            assert status == 413 and f"larger than this server takes ({BOUND} bytes" in error, (status, error)
            assert took_s < REFUSAL_LIMIT_S + 10, f"a {size} MB body took {took_s:.1f} s to be refused"
            assert np.array_equal(detect(), good)  # others go on
        rss_after, shm_after = _rss_mb(serve.process.pid), _shm_mb(triton_pid)
    print(f"HTTP soak: serve tree RSS {rss_before:.0f} -> {rss_after:.0f} MB, "
          f"stubs' /dev/shm {shm_before:.1f} -> {shm_after:.1f} MB")
    assert serve.process.poll() is None and _triton_pid(serve.process.pid) == triton_pid
    assert rss_after - rss_before < SOAK_RSS_GROWTH_LIMIT_MB, f"grew from {rss_before:.0f} to {rss_after:.0f} MB"
    assert shm_after - shm_before < SHM_GROWTH_LIMIT_MB, f"/dev/shm grew from {shm_before:.1f} to {shm_after:.1f} MB"


SHM_BURSTS = 4
SHM_PER_BURST = 8


@pytest.mark.integration
def test_requests_at_the_bound_grow_the_stubs_shared_memory_to_a_bounded_size_that_never_shrinks(
    serve: _Serve, channel: Any
) -> None:
    """What gets past the door (an image as large as the whole bound, refused by the byte limit) is
    copied into the entry stub's region; the region grows to a bounded size and never shrinks."""
    from concurrent import futures

    import grpc

    infer = channel.unary_unary(INFER)
    at_bound = _infer_request(b"\xff" * (BOUND - 1024))
    assert len(at_bound) <= BOUND
    triton_pid = _triton_pid(serve.process.pid)

    def refused(_: int) -> Any:
        with pytest.raises(grpc.RpcError) as caught:
            infer(at_bound, timeout=60)
        return caught.value

    shm = [_shm_mb(triton_pid)]
    for _ in range(SHM_BURSTS):
        with futures.ThreadPoolExecutor(SHM_PER_BURST) as pool:
            errors = list(pool.map(refused, range(SHM_PER_BURST)))
        assert all(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the limit of" in e.details() for e in errors)
        shm.append(_shm_mb(triton_pid))
    print(f"stubs' /dev/shm after each burst of {SHM_PER_BURST} requests at the bound: {shm} MB")

    # A region grows to the largest batch its stub has been handed (a later burst may batch more than
    # the first) and never shrinks; what bounds it is the batch times the message bound.
    assert all(after >= before for before, after in itertools.pairwise(shm)), "a region shrank: not Triton 2.51"
    assert max(shm) - shm[0] < 2 * MAX_BATCH * BOUND / 2**20, f"grown by more than two batches at the bound: {shm}"
