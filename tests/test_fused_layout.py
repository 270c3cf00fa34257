"""The fused CPU layout (``RepositorySettings.layout="fused"``): decode + detector in one step, the
attribute network inside ``postprocess``; the same answers as the steps layout, the same policies.

Unit tests check the configs and files ``write_repository`` writes; integration tests serve the
shipped model converted in both layouts on real embedded Triton servers and compare every answer,
and stand-in repositories check the per-request errors, the capability token and admission.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from client_servers import dark_jpeg, fill_slots_then_wait, infer_model, start_private_server
from onnx_standins import write_standin_repository

from fashionbox import contract
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.repository import ModelScheduling, RepositorySettings, model_configs
from fashionbox.core.serving import RuntimeSettings
from fashionbox.server import TritonServer

SIZE, CROP, CAPACITY = 64, 32, 8


def _names(tensors: Any) -> list[str]:
    return [t.name for t in tensors]


def test_the_fused_layout_has_two_steps_and_no_step_model_of_its_own_per_network() -> None:
    settings = RepositorySettings(input_size=SIZE, crop_size=CROP, layout="fused", vertical_labels=("a", "b"),
                                  crop_embedding_size=8,
                                  detector=ModelScheduling(instances=2, max_batch_size=4),
                                  preprocess=ModelScheduling(max_queue_size=12))
    configs = model_configs(settings, default_label_map())
    assert list(configs) == [contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL, contract.ENSEMBLE_MODEL]
    detector, postprocess, ensemble = configs.values()
    assert _names(detector.input) == [contract.IMAGE.name]
    assert set(_names(detector.output)) == {"PIXELS", "IMAGE_INFO", "TOKEN", "DET_BOXES", "DET_SCORES", "DET_CLASSES"}
    # the entry: the detector's instances and batch, preprocess's queue bound, the decode limits and admission
    assert detector.instance_group[0].count == 2 and detector.max_batch_size == 4
    assert detector.dynamic_batching.default_queue_policy.max_queue_size == 12
    for key in ("max_image_bytes", "max_pixels", "max_in_flight", "onnx_file", "max_detections", "intra_op_threads"):
        assert key in detector.parameters, key
    # postprocess runs the attribute network: its parameters and runtime settings are there
    assert postprocess.parameters["attributes_inline"].string_value == "true"
    for key in ("num_attribute_labels", "onnx_file", "intra_op_threads", "embeddings_from"):
        assert key in postprocess.parameters, key
    assert [step.model_name for step in ensemble.ensemble_scheduling.step] == [contract.DETECTOR_MODEL,
                                                                               contract.POSTPROCESS_MODEL]
    assert ensemble.max_batch_size == 4
    steps = model_configs(RepositorySettings(input_size=SIZE, crop_size=CROP), default_label_map())
    assert steps[contract.POSTPROCESS_MODEL].parameters["attributes_inline"].string_value == "false"
    # ragged batches: measured faster for the steps layout's postprocess, slower for the fused one's
    assert [i.name for i in steps[contract.POSTPROCESS_MODEL].input if i.allow_ragged_batch] == [
        "DET_BOXES", "DET_SCORES", "DET_CLASSES"]
    assert not any(i.allow_ragged_batch for config in configs.values() for i in config.input)
    assert len(steps[contract.ENSEMBLE_MODEL].ensemble_scheduling.step) == 3


@pytest.mark.parametrize("fields", [
    {"target": "gpu"},
    {"runtime": RuntimeSettings(runtime="torch")},
    {"layout": "one-step"},
])
def test_the_fused_layout_is_refused_where_it_does_not_apply(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="layout"):
        RepositorySettings(**{"layout": "fused", **fields})


def test_the_fused_repository_holds_each_graph_where_its_runner_loads_it(tmp_path: Path) -> None:
    repository = write_standin_repository(tmp_path, RepositorySettings(input_size=SIZE, crop_size=CROP, layout="fused"),
                                          purpose="fused layout files")
    models = sorted(p.name for p in repository.iterdir() if p.is_dir())
    assert models == [contract.DETECTOR_MODEL, contract.ENSEMBLE_MODEL, contract.POSTPROCESS_MODEL]
    assert (repository / "detector/1/model.onnx").read_bytes() == (tmp_path / "detector.onnx").read_bytes()
    assert (repository / "postprocess/1/model.onnx").read_bytes() == (tmp_path / "attributes.onnx").read_bytes()
    source = (repository / "detector/1/model.py").read_text()
    assert "ImageDecoding" in source and "load_detector_runner" in source


# -- served ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped weights converted in both layouts (ONNX Runtime: the same graphs in both)."""
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    from fashionbox.converter import ConvertOptions, convert

    folder = tmp_path_factory.mktemp("layouts")
    return {layout: convert(ConvertOptions(out=folder / layout, runtime="onnxruntime", compare_samples=2, cores=2,
                                           repository_settings={"layout": layout})).repository
            for layout in ("steps", "fused")}


def _scenes(count: int) -> list[bytes]:
    from fashionbox.synth import render_scene

    return [render_scene(4_000 + i, size=(640, 480)).encode(format="JPEG", quality=90) for i in range(count)]


def _raw_detections(server: TritonServer, images: list[bytes]) -> list[bytes]:
    """One request carrying every image: the serialized ImageDetections of each."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(contract.IMAGE.name, [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image] for image in images], dtype=object))
    with grpcclient.InferenceServerClient(server.endpoints.grpc) as client:
        result = client.infer(contract.ENSEMBLE_MODEL, [tensor],
                              outputs=[grpcclient.InferRequestedOutput(contract.DETECTIONS.name)])
    return [bytes(row[0]) for row in result.as_numpy(contract.DETECTIONS.name)]


def test_the_converter_runs_two_postprocess_instances_in_the_steps_layout_and_one_in_the_fused(
        shipped_layouts: dict[str, Path]) -> None:
    # Measured per layout (tests/benchmarks/bench_scheduling.py): the steps layout's postprocess
    # waits on its BLS call to attributes, the fused one runs the network itself.
    from fashionbox.loadtest.tune import read_configs

    def instances(layout: str) -> dict[str, int]:
        return {name: config.instance_group[0].count for name, config in read_configs(shipped_layouts[layout]).items()
                if config.instance_group}

    assert instances("steps")[contract.POSTPROCESS_MODEL] == 2 and instances("steps")[contract.ATTRIBUTES_MODEL] == 2
    assert instances("fused")[contract.POSTPROCESS_MODEL] == 1


def test_fused_scheduling_splits_the_cores_by_what_each_model_costs(tmp_path: Path) -> None:
    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.converter.repository import fused_scheduling
    from fashionbox.loadtest.tune import read_configs

    def counts(scheduling: dict[str, Any]) -> tuple[int, int, int]:
        return (scheduling[contract.DETECTOR_MODEL].instances, scheduling[contract.POSTPROCESS_MODEL].instances,
                scheduling["max_in_flight"])

    shipped = RepositorySettings().max_in_flight
    assert counts(fused_scheduling(2)) == (1, 1, shipped)  # measured on 2 cores: one of each
    assert counts(fused_scheduling(16)) == (6, 9, 8 * shipped)
    assert counts(fused_scheduling(16, threads=2)) == (3, 4, 8 * shipped)  # instances of two threads
    assert counts(fused_scheduling(1)) == (1, 1, shipped)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        fused_scheduling(16, threads=0)

    repository = convert(ConvertOptions(out=tmp_path / "fused16", runtime="onnxruntime", compare_samples=1, cores=16,
                                        repository_settings={"layout": "fused"})).repository
    configs = read_configs(repository)
    assert configs[contract.DETECTOR_MODEL].instance_group[0].count == 6
    assert configs[contract.POSTPROCESS_MODEL].instance_group[0].count == 9
    assert configs[contract.DETECTOR_MODEL].parameters["max_in_flight"].string_value == str(8 * shipped)
    assert json.loads((repository / contract.MANIFEST_FILE).read_text())["cpu_cores"] == 16


@pytest.mark.integration
def test_both_layouts_answer_the_same_for_the_shipped_model(triton_server: Any,
                                                            shipped_layouts: dict[str, Path]) -> None:
    from fashionbox.client import FashionClient, ImageDetections, InvalidImage

    images = _scenes(6)
    answers: dict[str, Any] = {}
    for layout, repository in shipped_layouts.items():
        server = triton_server(repository)
        with FashionClient(server.endpoints.grpc) as client:
            # one image per request, concurrently, with a bad one among them: it fails alone
            results = client.detect_many([*images[:3], b"not an image", *images[3:]], max_in_flight=8)
        assert isinstance(results[3], InvalidImage) and "not a JPEG, PNG or WebP" in str(results[3]), results[3]
        answers[layout] = ([r for i, r in enumerate(results) if i != 3], _raw_detections(server, images[:3]))
    (steps, steps_batch), (fused, fused_batch) = answers["steps"], answers["fused"]
    assert sum(len(r.detections) for r in steps) > 10
    for a, b in zip(steps, fused, strict=True):
        assert isinstance(a, ImageDetections) and isinstance(b, ImageDetections)
        assert [(d.category, d.box) for d in a.detections] == [(d.category, d.box) for d in b.detections]
        np.testing.assert_allclose([d.score for d in a.detections], [d.score for d in b.detections], atol=1e-6)
        for da, db in zip(a.detections, b.detections, strict=True):
            assert da.attributes == db.attributes or all(
                abs(x.score - y.score) < 1e-5 for x, y in zip(da.attributes, db.attributes, strict=True))
            assert da.embedding is not None
            np.testing.assert_allclose(da.embedding, db.embedding, atol=1e-3)
        assert [label.label for label in a.labels] == [label.label for label in b.labels] and a.labels
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-3)
    # several images in one request: the same messages, byte for byte
    assert steps_batch == fused_batch


@pytest.fixture(scope="module")
def fused_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    settings = RepositorySettings(input_size=SIZE, crop_size=CROP, max_detections=10, max_in_flight=CAPACITY,
                                  layout="fused", detector=ModelScheduling(instances=2, max_batch_size=4),
                                  preprocess=ModelScheduling(max_queue_size=32), model_version="fused")
    repository = write_standin_repository(tmp_path_factory.mktemp("fused"), settings, purpose="fused layout tests")
    started = start_private_server(repository, tmp_path_factory.mktemp("logs"))
    try:
        yield started
    finally:
        started.stop(timeout_s=10)


@pytest.mark.integration
def test_the_fused_postprocess_refuses_direct_calls_and_the_entry_holds_admission_briefly(
        fused_standin: TritonServer) -> None:
    from tritonclient.utils import InferenceServerException

    from fashionbox.client import FashionClient, ImageDetections

    image = np.array([[dark_jpeg(5)]], dtype=object)
    made = infer_model(fused_standin, contract.DETECTOR_MODEL, {"IMAGE": image}, ["PIXELS", "TOKEN", "DET_BOXES"])
    pixels, token = made.as_numpy("PIXELS"), made.as_numpy("TOKEN")
    post = {"PIXELS": pixels ^ 1, "IMAGE_INFO": np.array([[64, 64, 1, 0, 0]], np.float32),
            "DET_BOXES": np.array([[[4, 4, 40, 40]]], np.float32), "DET_SCORES": np.array([[0.9]], np.float32),
            "DET_CLASSES": np.zeros((1, 1), np.int32), "TOKEN": token}
    with pytest.raises(InferenceServerException) as refused:  # a real token, for other pixels
        infer_model(fused_standin, contract.POSTPROCESS_MODEL, post, ["DETECTIONS"])
    assert "not made by this server for these pixels" in refused.value.message(), refused.value
    # The server has no preprocess and no attributes model to call around the ensemble.
    with pytest.raises(InferenceServerException, match=r"unknown model|not found"):
        infer_model(fused_standin, contract.ATTRIBUTES_MODEL, {"CROPS": np.zeros((1, CROP, CROP, 3), np.uint8)},
               ["ATTRIBUTE_PROBS"])

    time.sleep(1.2)  # the slot the call above took has expired
    # every slot, by direct calls to the entry whose outputs go back to the caller: held for the pending time only
    refused_at_first, blocked_s = fill_slots_then_wait(fused_standin, contract.DETECTOR_MODEL, CAPACITY, image)
    assert refused_at_first > 0 and blocked_s < 1.6, (refused_at_first, blocked_s)
    with FashionClient(fused_standin.endpoints.grpc) as client:
        results = client.detect_many([dark_jpeg(s) for s in range(12)] + [b"\xff\xd8broken"], max_in_flight=12)
    assert all(isinstance(r, ImageDetections) for r in results[:12])
    assert not isinstance(results[12], ImageDetections) and "INVALID_ARGUMENT" in str(results[12])
    # every request gave its slot back, the failed one too: a full burst of raw calls (no retries) goes in
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(CAPACITY) as pool:
        burst = list(pool.map(lambda _: infer_model(fused_standin, contract.ENSEMBLE_MODEL, {"IMAGE": image},
                                               ["DETECTIONS"]), range(CAPACITY)))
    assert len(burst) == CAPACITY


def test_the_runtime_search_switches_the_fused_layouts_two_network_steps() -> None:
    from fashionbox.loadtest.tune import apply_runtime, runtime_models

    configs = model_configs(RepositorySettings(input_size=SIZE, crop_size=CROP, layout="fused"), default_label_map())
    assert runtime_models(configs) == (contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL)
    switched = apply_runtime(configs, "openvino/fp32")
    for name in (contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL):
        assert switched[name].parameters["runtime"].string_value == "openvino", name
    steps = model_configs(RepositorySettings(input_size=SIZE, crop_size=CROP), default_label_map())
    assert runtime_models(steps) == (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL)
    assert "runtime" not in apply_runtime(steps, "openvino/fp32")[contract.POSTPROCESS_MODEL].parameters
