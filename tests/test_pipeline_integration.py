"""The whole served pipeline over real gRPC: a repository from write_repository on the embedded Triton.

The ONNX graphs are the stand-ins of ``tests/onnx_standins.py`` (exact contract, real NMS), so
this checks the serving system, not model quality: every output arrives with consistent shapes,
boxes come back in original pixels, the served numbers equal the same functions run in-process,
and a bad image fails only its own request with INVALID_ARGUMENT.
"""

from __future__ import annotations

import io
import json
import queue
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from onnx_standins import DetectorStandIn, write_attributes, write_detector
from PIL import Image

from fashionbox import contract
from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.converter.repository import LABELS_JSON_PARAMETER, ModelScheduling, RepositorySettings, write_repository
from fashionbox.core.imaging import crop_garments, decode_image, letterbox
from fashionbox.core.postprocessing import PAD_CLASS, ImageResult, finish_detections
from fashionbox.core.serving import OnnxAttributes, OnnxDetector, OrtSettings
from fashionbox.v1 import detections_pb2

pytestmark = pytest.mark.integration
pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
grpcclient = pytest.importorskip("tritonclient.grpc")

LABELS = default_label_map()
BATCH_OF_THREE = 3
SETTINGS = RepositorySettings(
    input_size=64,
    crop_size=32,
    max_detections=20,
    # Waiting up to 0.5 s for a batch of 3 makes three concurrent requests share one execute(),
    # which is what the per-request error test must exercise. Single requests pay the wait.
    preprocess=ModelScheduling(max_batch_size=4, preferred_batch_sizes=(BATCH_OF_THREE,), max_queue_delay_us=500_000),
    # The 500 ms batching delay must stay below the later steps' queue timeouts (RepositorySettings checks).
    detector=ModelScheduling(queue_timeout_us=5_000_000),
    # The same wait at postprocess: three requests with different numbers of detections can share
    # one execute() only because its DET_* inputs allow ragged batches.
    postprocess=ModelScheduling(queue_timeout_us=5_000_000, preferred_batch_sizes=(BATCH_OF_THREE,),
                                max_queue_delay_us=500_000),
    attributes=ModelScheduling(max_batch_size=4),  # small, so one BLS call is split into chunks
    model_version="integration-test",
)
OUTPUTS = [spec.name for spec in contract.ENSEMBLE_OUTPUTS]


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("standins")
    spec = DetectorStandIn.default(input_size=SETTINGS.input_size, num_categories=LABELS.num_categories)
    detector = write_detector(folder / "detector.onnx", spec)
    group_sizes = [len(g.labels) for g in LABELS.attribute_groups]
    attributes = write_attributes(folder / "attributes.onnx", crop_size=SETTINGS.crop_size, group_sizes=group_sizes)
    return detector, attributes


@pytest.fixture(scope="module")
def client(triton_server: Any, onnx_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    detector, attributes = onnx_models
    repository = write_repository(
        tmp_path_factory.mktemp("served") / "repository",
        detector_onnx=detector,
        attributes_onnx=attributes,
        label_map=LABELS,
        settings=SETTINGS,
        manifest={"purpose": "integration test with ONNX stand-ins"},
    )
    server = triton_server(repository)
    with grpcclient.InferenceServerClient(server.endpoints.grpc) as connection:
        yield connection


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 90} if image_format != "PNG" else {}))
    return buffer.getvalue()


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A dark, textured picture: the stand-in detector finds garments in dark images."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _image_input(images: Sequence[bytes]) -> Any:
    tensor = grpcclient.InferInput(contract.IMAGE.name, [len(images), 1], contract.IMAGE.datatype)
    tensor.set_data_from_numpy(np.array([[data] for data in images], dtype=np.object_))
    return tensor


def _infer(client: Any, images: Sequence[bytes]) -> dict[str, NDArray[Any]]:
    result = client.infer(
        contract.ENSEMBLE_MODEL,
        [_image_input(images)],
        outputs=[grpcclient.InferRequestedOutput(name) for name in OUTPUTS],
    )
    outputs = {name: result.as_numpy(name) for name in OUTPUTS}
    missing = [name for name, value in outputs.items() if value is None]
    assert not missing, f"outputs missing from the response: {missing}"
    return outputs


def _infer_at_once(client: Any, images: Sequence[bytes]) -> dict[int, tuple[Any, Any]]:
    """One request per image, all sent before any answer: per index, (result, error)."""
    replies: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for index, data in enumerate(images):
        client.async_infer(
            contract.ENSEMBLE_MODEL,
            [_image_input([data])],
            callback=lambda result, error, index=index: replies.put((index, result, error)),
            outputs=[grpcclient.InferRequestedOutput(name) for name in OUTPUTS],
        )
    results = {}
    for _ in images:
        index, result, error = replies.get(timeout=60)
        results[index] = (result, error)
    return results


def _reference(data: bytes, onnx_models: tuple[Path, Path]) -> ImageResult:
    """The same steps in this process, through the same fashionbox functions."""
    pixels, info = letterbox(decode_image(data, target_size=SETTINGS.input_size), SETTINGS.input_size)
    detector = OnnxDetector(onnx_models[0], OrtSettings(), max_detections=SETTINGS.max_detections)
    heads = OnnxAttributes(onnx_models[1], OrtSettings(), num_attribute_labels=LABELS.num_attribute_labels)
    (row,) = detector.detect(pixels[None])
    probs = heads.classify(crop_garments(pixels, row.boxes, SETTINGS.crop_size))
    return finish_detections(row, info, probs, LABELS)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_each_image_format_returns_all_five_outputs_with_consistent_shapes(client: Any, image_format: str) -> None:
    width, height = 240, 160
    outputs = _infer(client, [_encode(_photo(width, height), image_format)])

    n = outputs["SCORES"].shape[1]
    a = LABELS.num_attribute_labels
    # numpy 2 in the stub's environment returns empty tensors without any error (docs/FIELD_NOTES.md)
    assert n > 0, "no detections came back: are the python-backend outputs empty?"
    assert outputs["BOXES"].shape == (1, n, 4) and outputs["BOXES"].dtype == np.float32
    assert outputs["SCORES"].dtype == np.float32
    assert outputs["CATEGORIES"].shape == (1, n) and outputs["CATEGORIES"].dtype == np.int32
    assert outputs["ATTRIBUTE_SCORES"].shape == (1, n, a) and outputs["ATTRIBUTE_SCORES"].dtype == np.float32
    assert outputs["DETECTIONS"].shape == (1, 1)
    assert np.all(np.diff(outputs["SCORES"][0]) <= 0)

    message = detections_pb2.ImageDetections.FromString(outputs["DETECTIONS"][0, 0])
    assert (message.width, message.height) == (width, height)
    assert message.model_version == SETTINGS.model_version
    assert message.label_map == LABELS.name
    assert [d.category for d in message.detections] == [LABELS.category_names[c] for c in outputs["CATEGORIES"][0]]
    np.testing.assert_allclose(
        [[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in message.detections], outputs["BOXES"][0], rtol=1e-6
    )


def test_served_results_equal_the_same_steps_run_in_process(client: Any, onnx_models: tuple[Path, Path]) -> None:
    data = _encode(_photo(300, 120, seed=3), "PNG")

    served = _infer(client, [data])
    expected = _reference(data, onnx_models)

    np.testing.assert_allclose(served["BOXES"][0], expected.boxes, atol=1e-4)
    np.testing.assert_allclose(served["SCORES"][0], expected.scores, atol=1e-6)
    np.testing.assert_array_equal(served["CATEGORIES"][0], expected.categories)
    np.testing.assert_allclose(served["ATTRIBUTE_SCORES"][0], expected.attribute_scores, atol=1e-6)


def test_boxes_come_back_in_original_pixels_within_the_image(client: Any) -> None:
    width, height = 400, 100  # letterboxed with 48 px of padding above and below at 64
    boxes = _infer(client, [_encode(_photo(width, height, seed=5), "JPEG")])["BOXES"][0]

    assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= width)
    assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= height)
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    assert boxes[:, 2].max() > SETTINGS.input_size, "boxes look like letterbox pixels, not original pixels"


def test_exif_rotated_jpeg_reports_the_upright_size(client: Any) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 200x100, shown 100x200
    buffer = io.BytesIO()
    _photo(200, 100).save(buffer, format="JPEG", exif=exif)

    outputs = _infer(client, [buffer.getvalue()])

    message = detections_pb2.ImageDetections.FromString(outputs["DETECTIONS"][0, 0])
    assert (message.width, message.height) == (100, 200)
    assert np.all(outputs["BOXES"][0][:, [0, 2]] <= 100) and np.all(outputs["BOXES"][0][:, [1, 3]] <= 200)


def test_bad_jpeg_fails_only_its_own_request_in_a_shared_batch(client: Any) -> None:
    good = _encode(_photo(160, 120, seed=1), "JPEG")
    truncated = good[: len(good) // 3]

    results = _infer_batched(client, contract.PREPROCESS_MODEL, [good, truncated, good])

    for index in (0, 2):
        result, error = results[index]
        assert error is None, f"good request {index} failed: {error}"
        assert result.as_numpy("SCORES").shape[1] > 0
    _, error = results[1]
    assert error is not None, "the truncated JPEG was answered as if it were fine"
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "truncated" in error.message() or "corrupt" in error.message(), error.message()


def test_requests_with_different_numbers_of_detections_share_one_postprocess_batch(
        client: Any, onnx_models: tuple[Path, Path]) -> None:
    # Square grey pictures (no letterbox padding): the darker, the more the stand-in detects.
    images = [_encode(Image.new("RGB", (64, 64), (level,) * 3), "PNG") for level in (20, 100, 140)]
    expected = [_reference(data, onnx_models) for data in images]
    counts = [len(result.scores) for result in expected]
    assert len(set(counts)) == len(counts) and min(counts) > 0, f"the pictures must differ in detections: {counts}"

    answers = {}
    for index, (result, error) in _infer_batched(client, contract.POSTPROCESS_MODEL, images).items():
        assert error is None, f"request {index} failed: {error}"
        answers[index] = result

    for index, result in answers.items():  # each request answered with its own rows
        np.testing.assert_allclose(result.as_numpy("BOXES")[0], expected[index].boxes, atol=1e-4)
        np.testing.assert_allclose(result.as_numpy("SCORES")[0], expected[index].scores, atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("CATEGORIES")[0], expected[index].categories)
        np.testing.assert_allclose(result.as_numpy("ATTRIBUTE_SCORES")[0], expected[index].attribute_scores,
                                   atol=1e-6)


def _infer_batched(client: Any, model: str, images: Sequence[bytes], tries: int = 3) -> dict[int, tuple[Any, Any]]:
    """``_infer_at_once`` until ``model`` has run the requests as one batch: the answers of that try.

    The batching delay (500 ms) bounds how far apart the requests may reach ``model``; a loaded host
    (the CI suite on two cores) can space them further now and then, so a split try is sent again.
    A step that cannot batch them at all (ragged inputs refused, a missing preferred size) fails every try.
    """
    grown: dict[int, int] = {}
    for _ in range(tries):
        before = _batch_counts(client, model)
        results = _infer_at_once(client, images)
        after = _batch_counts(client, model)
        grown = {size: after.get(size, 0) - before.get(size, 0) for size in after if after[size] != before.get(size)}
        if grown.get(len(images), 0) >= 1:
            return results
    pytest.fail(f"{model} never ran the {len(images)} requests as one batch in {tries} tries: {grown} (last try)")


def _batch_counts(client: Any, model: str) -> dict[int, int]:
    """Executions per batch size of ``model`` so far (Triton's statistics)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {int(entry["batch_size"]): int(entry["compute_infer"]["count"]) for entry in stats.get("batch_stats", [])}


def test_bytes_that_are_not_an_image_fail_with_invalid_argument_and_a_human_message(client: Any) -> None:
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        _infer(client, [b"definitely not a picture"])

    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "not a JPEG, PNG or WebP image" in caught.value.message()


def test_an_image_tensor_of_the_wrong_shape_fails_alone(client: Any) -> None:
    good = _encode(_photo(64, 64), "PNG")
    tensor = grpcclient.InferInput(contract.IMAGE.name, [1, 2], contract.IMAGE.datatype)
    tensor.set_data_from_numpy(np.array([[good, good]], dtype=np.object_))

    with pytest.raises(grpcclient.InferenceServerException) as caught:
        client.infer(contract.ENSEMBLE_MODEL, [tensor])

    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape" in caught.value.message()
    assert _infer(client, [good])["SCORES"].shape[1] > 0  # the server carries on


def test_an_image_without_detections_gets_empty_outputs(client: Any) -> None:
    white = _encode(Image.new("RGB", (80, 60), (255, 255, 255)), "PNG")

    outputs = _infer(client, [white])

    assert outputs["BOXES"].shape == (1, 0, 4)
    assert outputs["ATTRIBUTE_SCORES"].shape == (1, 0, LABELS.num_attribute_labels)
    message = detections_pb2.ImageDetections.FromString(outputs["DETECTIONS"][0, 0])
    assert len(message.detections) == 0 and (message.width, message.height) == (80, 60)


def test_several_images_in_one_request_are_padded_to_the_longest(client: Any) -> None:
    white = _encode(Image.new("RGB", (80, 60), (255, 255, 255)), "PNG")
    dark = _encode(_photo(120, 90, seed=7), "JPEG")

    outputs = _infer(client, [dark, white])

    n = outputs["SCORES"].shape[1]
    assert n > 0 and outputs["BOXES"].shape == (2, n, 4) and outputs["DETECTIONS"].shape == (2, 1)
    assert np.all(outputs["CATEGORIES"][1] == PAD_CLASS)
    assert PAD_CLASS not in outputs["CATEGORIES"][0]
    assert len(detections_pb2.ImageDetections.FromString(outputs["DETECTIONS"][1, 0]).detections) == 0


def test_the_ensemble_config_publishes_the_label_map(client: Any) -> None:
    config = client.get_model_config(contract.ENSEMBLE_MODEL, as_json=True)["config"]

    published = json.loads(config["parameters"][LABELS_JSON_PARAMETER]["string_value"])

    assert LabelMap.from_dict(published) == LABELS
