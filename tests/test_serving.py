"""fashionbox.core.serving: parameters, ONNX runners and per-request error handling, without a server.

``triton_python_backend_utils`` exists only inside Triton's python stub; these tests put a small
fake of it in ``sys.modules`` so the response logic runs in-process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from onnx_standins import DetectorStandIn, write_attributes, write_detector

from fashionbox import contract
from fashionbox.contract.labels import default_label_map
from fashionbox.core.capability import SECRET_ENV, PipelineKey
from fashionbox.core.serving import (
    AttributesParameters,
    DetectorParameters,
    ErrorCode,
    InputSpec,
    LetterboxSettings,
    ModelArgs,
    OnnxAttributes,
    OnnxDetector,
    OrtSettings,
    ParameterError,
    Parameters,
    PostprocessParameters,
    PreprocessParameters,
    RequestError,
    call_model_chunked,
    group_by_shape,
    respond_each,
    run_concatenated,
    safe_relative_path,
)

LABELS = default_label_map()


# -- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("true", True), ("False", False), ("0", False), (" yes ", True)])
def test_booleans_parse_explicitly(text: str, value: bool) -> None:
    assert Parameters({"flag": text}).boolean("flag") is value


def test_a_boolean_that_is_not_one_is_refused_with_the_model_and_parameter_named() -> None:
    with pytest.raises(ParameterError, match="model 'detector': parameter 'allow_spinning' must be true or false"):
        Parameters({"allow_spinning": "maybe"}, model_name="detector").boolean("allow_spinning", True)


def test_missing_required_and_malformed_integers_are_refused() -> None:
    params = Parameters({"input_size": "big"})
    with pytest.raises(ParameterError, match="must be an integer"):
        params.integer("input_size")
    with pytest.raises(ParameterError, match="required"):
        params.integer("crop_size")
    with pytest.raises(ParameterError, match="at least 1"):
        Parameters({"n": "0"}).integer("n", minimum=1)


def test_parameters_read_the_triton_model_config_layout() -> None:
    config = {"name": "m", "parameters": {"input_size": {"string_value": "320"}}}

    assert Parameters.from_model_config(config).integer("input_size") == 320


@pytest.mark.parametrize(
    "value",
    [
        OrtSettings(intra_op_threads=2, inter_op_threads=1, allow_spinning=False),
        PreprocessParameters(input_size=320, max_image_bytes=1000, max_pixels=2000),
        DetectorParameters(input_size=320, max_detections=7, onnx_file="x.onnx"),
        AttributesParameters(crop_size=96, num_attribute_labels=15),
        PostprocessParameters(input_size=320, crop_size=96, attributes_max_batch_size=64, model_version="v1"),
    ],
)
def test_every_parameter_set_round_trips_through_config_strings(value: Any) -> None:
    written = value.to_parameters()

    assert all(isinstance(v, str) for v in written.values())
    assert type(value).from_parameters(Parameters(written)) == value


def test_parameter_defaults_apply_when_the_config_leaves_them_out() -> None:
    assert OrtSettings.from_parameters(Parameters({})) == OrtSettings(1, 1, False)
    assert DetectorParameters.from_parameters(Parameters({"input_size": "64"})).onnx_file == "model.onnx"


def test_parameter_sets_refuse_non_positive_integers() -> None:
    with pytest.raises(ValueError, match="input_size must be at least 1"):
        DetectorParameters(input_size=0)


@pytest.mark.parametrize("bad", ["../model.onnx", "/etc/passwd", "a/../../b", "", "."])
def test_files_outside_the_version_folder_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ParameterError):
        safe_relative_path(tmp_path, bad)


def test_model_args_locate_the_version_folder_and_the_label_map(tmp_path: Path) -> None:
    LABELS.save(tmp_path / contract.LABELS_FILE)
    args = ModelArgs.from_backend_args(
        {
            "model_config": json.dumps({"name": "detector", "max_batch_size": 8}),
            "model_version": "1",
            "model_repository": str(tmp_path / "detector"),
            "model_name": "detector",
        }
    )

    assert args.version_file("model.onnx") == tmp_path / "detector" / "1" / "model.onnx"
    assert args.label_map() == LABELS
    assert args.max_batch_size() == 8


# -- ONNX runners ------------------------------------------------------------------------------


def test_onnx_detector_returns_sorted_detections_per_image(tmp_path: Path) -> None:
    spec = DetectorStandIn.default(input_size=32, num_categories=LABELS.num_categories)
    detector = OnnxDetector(write_detector(tmp_path / "d.onnx", spec), OrtSettings(), max_detections=3)

    rows = detector.detect(np.zeros((2, 32, 32, 3), np.uint8))

    assert [len(r) for r in rows] == [3, 3]
    assert np.all(np.diff(rows[0].scores) <= 0)


def test_onnx_attributes_refuse_heads_of_another_width(tmp_path: Path) -> None:
    path = write_attributes(tmp_path / "a.onnx", crop_size=8, group_sizes=(2, 3))
    heads = OnnxAttributes(path, OrtSettings(), num_attribute_labels=4)

    with pytest.raises(ValueError, match="expected"):
        heads.classify(np.zeros((1, 8, 8, 3), np.uint8))


def test_an_onnx_graph_without_the_contract_tensors_fails_to_load(tmp_path: Path) -> None:
    path = write_attributes(tmp_path / "a.onnx", crop_size=8, group_sizes=(2, 2))

    with pytest.raises(ValueError, match="does not follow the FashionBox ONNX contract"):
        OnnxDetector(path, OrtSettings(), max_detections=1)


# -- per-request responses ---------------------------------------------------------------------------


class _FakeTensor:
    def __init__(self, name: str, array: NDArray[Any]) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> NDArray[Any]:
        return self._array


class _FakeError:
    INVALID_ARG, INTERNAL, UNAVAILABLE = "INVALID_ARG", "INTERNAL", "UNAVAILABLE"

    def __init__(self, message: str, code: str) -> None:
        self.text, self.code = message, code


class _FakeResponse:
    def __init__(self, output_tensors: list[_FakeTensor] | None = None, error: _FakeError | None = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class _FakeBlsResponse:
    def __init__(self, outputs: dict[str, NDArray[Any]] | None = None, error: str | None = None) -> None:
        self.tensors = {name: _FakeTensor(name, value) for name, value in (outputs or {}).items()}
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> Any:
        return types.SimpleNamespace(message=lambda: self._error)


BlsHandler = Callable[[str, dict[str, NDArray[Any]]], _FakeBlsResponse]


class _FakePbUtils(types.ModuleType):
    """Just enough of triton_python_backend_utils for the glue code; BLS calls go to ``bls``."""

    Tensor = _FakeTensor
    TritonError = _FakeError
    InferenceResponse = _FakeResponse
    Logger = types.SimpleNamespace(log_info=lambda message: None, log_warn=lambda message: None)

    def __init__(self) -> None:
        super().__init__("triton_python_backend_utils")
        self.bls_calls: list[tuple[str, dict[str, NDArray[Any]]]] = []
        self.bls: BlsHandler = lambda model, inputs: _FakeBlsResponse(error="no BLS handler in this test")
        fake = self

        class InferenceRequest:
            def __init__(self, *, model_name: str, requested_output_names: list[str], inputs: list[_FakeTensor]):
                self.model_name = model_name
                self.inputs = {t.name(): t.as_numpy() for t in inputs}

            def exec(self) -> _FakeBlsResponse:
                fake.bls_calls.append((self.model_name, self.inputs))
                return fake.bls(self.model_name, self.inputs)

        self.InferenceRequest = InferenceRequest

    @staticmethod
    def get_input_tensor_by_name(request: dict[str, _FakeTensor], name: str) -> _FakeTensor | None:
        return request.get(name)

    @staticmethod
    def get_output_tensor_by_name(response: _FakeBlsResponse, name: str) -> _FakeTensor | None:
        return response.tensors.get(name)


@pytest.fixture
def fake_pb_utils(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FakePbUtils]:
    module = _FakePbUtils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    yield module


def _request(name: str, array: NDArray[Any]) -> dict[str, _FakeTensor]:
    return {name: _FakeTensor(name, array)}


SPEC = InputSpec("X", np.float32, (2,))


@pytest.mark.usefixtures("fake_pb_utils")
def test_a_malformed_request_fails_alone_and_the_others_share_one_compute() -> None:
    calls: list[NDArray[Any]] = []

    def compute(batch: NDArray[Any]) -> NDArray[Any]:
        calls.append(batch)
        return batch * 2

    requests = [
        _request("X", np.ones((1, 2), np.float32)),
        _request("X", np.ones((1, 3), np.float32)),  # wrong shape
        _request("X", np.full((2, 2), 3, np.float32)),
        {},  # input missing
    ]

    responses = run_concatenated(requests, SPEC, compute=compute, split=lambda r, s: {"Y": r[s]}, model="m")

    assert len(calls) == 1 and calls[0].shape == (3, 2)
    np.testing.assert_array_equal(responses[0].outputs["Y"], [[2, 2]])
    np.testing.assert_array_equal(responses[2].outputs["Y"], [[6, 6], [6, 6]])
    assert responses[1].error.code == "INVALID_ARG"
    assert "must have shape [batch, 2], got [1, 3]" in responses[1].error.text
    assert responses[3].error.code == "INVALID_ARG" and "missing" in responses[3].error.text


@pytest.mark.usefixtures("fake_pb_utils")
def test_requests_of_different_shapes_run_one_compute_per_shape_each_answered_its_rows() -> None:
    """A rect letterbox's PIXELS ([-1, -1, 3]): the requests of each shape are one network batch."""
    calls: list[tuple[int, ...]] = []

    def compute(batch: NDArray[Any]) -> NDArray[Any]:
        calls.append(batch.shape)
        return batch.reshape(len(batch), -1).sum(axis=1)

    spec = InputSpec("X", np.float32, (-1, -1))
    requests = [_request("X", np.full((1, 2, 3), 1, np.float32)), _request("X", np.full((2, 3, 2), 2, np.float32)),
                _request("X", np.full((1, 2, 3), 3, np.float32)), _request("X", np.ones((1, 4), np.float32))]

    responses = run_concatenated(requests, spec, compute=compute, split=lambda r, s: {"Y": r[s]}, model="m")

    assert sorted(calls) == [(2, 2, 3), (2, 3, 2)]
    assert [responses[i].outputs["Y"].tolist() for i in range(3)] == [[6.0], [12.0, 12.0], [18.0]]
    assert responses[3].error.code == "INVALID_ARG"


def test_group_by_shape_joins_batches_by_row_shape_and_images_by_whole_shape_in_first_seen_order() -> None:
    batches = [("a", np.zeros((1, 2, 3))), ("b", np.zeros((3, 3, 2))), ("c", np.zeros((2, 2, 3)))]
    assert [[key for key, _ in group] for group in group_by_shape(batches)] == [["a", "c"], ["b"]]

    images = [(0, np.zeros((2, 3))), (1, np.zeros((3, 3))), (2, np.zeros((2, 3))), (3, np.zeros((2, 4)))]
    assert [[key for key, _ in group] for group in group_by_shape(images, batched=False)] == [[0, 2], [1], [3]]
    assert [[key for key, _ in group] for group in group_by_shape(images)] == [[0, 1, 2], [3]]
    assert group_by_shape([]) == []


def test_a_rect_letterbox_refuses_pixels_it_does_not_make() -> None:
    rect = LetterboxSettings(letterbox_stride=32)
    rect.check(np.zeros((1, 96, 128, 3), np.uint8), 128)
    rect.check(np.zeros((2, 128, 128, 3), np.uint8), 128)
    for shape in ((1, 96, 96, 3), (1, 100, 128, 3), (1, 128, 160, 3)):
        with pytest.raises(RequestError, match="128 on its long side and a multiple of 32"):
            rect.check(np.zeros(shape, np.uint8), 128)
    assert LetterboxSettings.optional(Parameters({})) is None
    assert LetterboxSettings.optional(Parameters({"letterbox_stride": "32"})) == rect
    # with a min side (LW-DETR's queries need tokens): a strip below it is refused, the canvas floored to it
    floored = LetterboxSettings(letterbox_stride=32, letterbox_min_side=64)
    floored.check(np.zeros((1, 64, 128, 3), np.uint8), 128)
    with pytest.raises(RequestError, match="a multiple of 32 on both, at least 64 on the short one"):
        floored.check(np.zeros((1, 32, 128, 3), np.uint8), 128)
    assert floored.canvas(4000, 10, 128) == (64, 128) and rect.canvas(4000, 10, 128) == (32, 128)
    assert LetterboxSettings.optional(Parameters({"letterbox_stride": "32", "letterbox_min_side": "64"})) == floored


@pytest.mark.usefixtures("fake_pb_utils")
def test_a_failed_compute_fails_every_request_in_it_as_internal() -> None:
    def compute(batch: NDArray[Any]) -> NDArray[Any]:
        raise RuntimeError("out of memory")

    requests = [_request("X", np.ones((1, 2), np.float32)), _request("X", np.ones((1, 2), np.int32))]

    responses = run_concatenated(requests, SPEC, compute=compute, split=lambda r, s: {}, model="m")

    assert responses[0].error.code == "INTERNAL" and "out of memory" in responses[0].error.text
    assert responses[1].error.code == "INVALID_ARG" and "float32" in responses[1].error.text


@pytest.mark.usefixtures("fake_pb_utils")
def test_respond_each_turns_request_errors_into_their_own_codes() -> None:
    def handle(request: dict[str, Any]) -> dict[str, NDArray[Any]]:
        if "bad" in request:
            raise RequestError("not an image", ErrorCode.INVALID_ARG)
        if "bug" in request:
            raise KeyError("oops")
        return {"Y": np.zeros(1)}

    responses = respond_each([{}, {"bad": 1}, {"bug": 1}], handle, model="m")

    assert responses[0].error is None
    assert (responses[1].error.code, responses[1].error.text) == ("INVALID_ARG", "not an image")
    assert responses[2].error.code == "INTERNAL" and "KeyError" in responses[2].error.text


# -- BLS and the postprocess model, offline ------------------------------------------------------------


def test_a_bls_call_is_split_into_chunks_and_a_failed_chunk_is_reported_not_raised(
    fake_pb_utils: _FakePbUtils,
) -> None:
    def bls(model: str, inputs: dict[str, NDArray[Any]]) -> _FakeBlsResponse:
        crops = inputs["CROPS"]
        if crops[0, 0, 0, 0] == 4:
            return _FakeBlsResponse(error="instance crashed")
        return _FakeBlsResponse({"ATTRIBUTE_PROBS": crops[:, 0, 0, :2].astype(np.float32)})

    fake_pb_utils.bls = bls
    crops = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)

    chunks = call_model_chunked(
        "attributes", input_name="CROPS", output_name="ATTRIBUTE_PROBS", array=crops, max_batch_size=4
    )

    assert [c.rows for c in chunks] == [slice(0, 4), slice(4, 6)]
    assert chunks[0].output is not None and chunks[0].output[:, 0].tolist() == [0, 1, 2, 3]
    assert chunks[1].output is None and chunks[1].error is not None
    assert chunks[1].error.code is ErrorCode.INTERNAL
    assert "model 'attributes' failed: instance crashed" in chunks[1].error.message


POST_SETTINGS = {"input_size": 32, "crop_size": 8, "attributes_max_batch_size": 4}


def _load_model(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings_: Any) -> Any:
    """Import ``model_repository/<name>/model.py`` and initialize it as Triton would (``settings_``: more
    :class:`RepositorySettings`)."""
    import sysconfig

    from google.protobuf import json_format

    # The model's bootstrap edits sys.path; give it a copy that the test restores afterwards.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("FASHIONBOX_SITE_PACKAGES", sysconfig.get_paths()["purelib"])

    from fashionbox.converter.repository import ModelScheduling, RepositorySettings, model_configs

    settings = RepositorySettings(
        input_size=POST_SETTINGS["input_size"],
        crop_size=POST_SETTINGS["crop_size"],
        attributes=ModelScheduling(max_batch_size=POST_SETTINGS["attributes_max_batch_size"]),
        max_in_flight=0,  # one model alone never gives slots back; tests/test_admission.py serves it whole
        model_version="offline",
        **settings_,
    )
    config = model_configs(settings, LABELS)[name]
    LABELS.save(tmp_path / contract.LABELS_FILE)
    sources = Path(__file__).resolve().parents[1] / "model_repository" / "fashionbox" / "model_repository"
    source = sources / name / "model.py"
    spec = importlib.util.spec_from_file_location(f"fashionbox_offline_{name}_model", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
            "model_version": "1",
            "model_repository": str(tmp_path / name),
            "model_name": name,
        }
    )
    return model


def _post_request(num_detections: int, key: PipelineKey | None = None) -> dict[str, _FakeTensor]:
    """What the ensemble gives postprocess; its TOKEN made with ``key`` (default: no secret)."""
    s = POST_SETTINGS["input_size"]
    boxes = np.tile(np.array([4, 4, 20, 28], np.float32), (1, num_detections, 1))
    pixels = np.zeros((1, s, s, 3), np.uint8)
    key = key or PipelineKey(None)
    arrays = {
        "TOKEN": key.sign(key.new_request_key(), pixels),
        "PIXELS": pixels,
        "IMAGE_INFO": np.array([[64, 64, 0.5, 0, 0]], np.float32),  # a 64x64 image at scale 0.5
        "DET_BOXES": boxes,
        "DET_SCORES": np.linspace(0.9, 0.5, num_detections, dtype=np.float32)[None],
        "DET_CLASSES": np.zeros((1, num_detections), np.int32),
    }
    return {name: _FakeTensor(name, value) for name, value in arrays.items()}


def test_postprocess_fails_only_the_requests_whose_crops_were_in_a_failed_bls_chunk(
    fake_pb_utils: _FakePbUtils, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = LABELS.num_attribute_labels
    calls = []

    def bls(model: str, inputs: dict[str, NDArray[Any]]) -> _FakeBlsResponse:
        calls.append(len(inputs["CROPS"]))
        if len(calls) == 2:
            return _FakeBlsResponse(error="out of memory")
        return _FakeBlsResponse({"ATTRIBUTE_PROBS": np.full((len(inputs["CROPS"]), a), 0.5, np.float32)})

    fake_pb_utils.bls = bls
    model = _load_model("postprocess", tmp_path, monkeypatch)

    # crops 0-2 belong to request 0, 3-5 to request 2: chunk [0, 4) succeeds, chunk [4, 6) fails
    responses = model.execute([_post_request(3), _post_request(0), _post_request(3)])

    assert calls == [4, 2]  # one logical call for the whole batch, in chunks of max_batch_size
    assert responses[0].error is None and responses[1].error is None
    np.testing.assert_allclose(responses[0].outputs["BOXES"][0, 0], [8, 8, 40, 56])
    assert responses[0].outputs["ATTRIBUTE_SCORES"].shape == (1, 3, a)
    assert responses[1].outputs["BOXES"].shape == (1, 0, 4)
    assert responses[2].error.code == "INTERNAL"
    assert "attributes" in responses[2].error.text and "out of memory" in responses[2].error.text


def test_postprocess_assembles_a_segmenting_detectors_masks_during_the_attribute_call_failing_one_request_alone(
    fake_pb_utils: _FakePbUtils, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``detector_masks``: a detection whose mask is empty at the letterbox is dropped before its
    crop is cut (as Ultralytics' predictor drops it); the masks' original-size step needs nothing the
    attribute call answers and runs on a worker thread while that call runs; a request whose masks
    fail there is answered with its error alone."""
    import threading

    from fashionbox.client import ImageDetections
    from fashionbox.core.imaging import LetterboxInfo
    from fashionbox.core.proto_masks import ProtoMasks, masks_from_protos
    from fashionbox.v1 import detections_pb2

    a = LABELS.num_attribute_labels
    assembling = threading.Event()
    crops_sent: list[int] = []

    class Assembling(ProtoMasks):
        def original(self, masks: Any) -> Any:
            assembling.set()
            if self.info.width == 66:  # the second request's photo
                raise ValueError("prototypes out of range")
            return super().original(masks)

    def bls(model: str, inputs: dict[str, NDArray[Any]]) -> _FakeBlsResponse:
        assert assembling.wait(timeout=10), "the masks did not start before the attribute call returned"
        crops_sent.append(len(inputs["CROPS"]))
        return _FakeBlsResponse({"ATTRIBUTE_PROBS": np.full((len(inputs["CROPS"]), a), 0.5, np.float32)})

    fake_pb_utils.bls = bls
    model = _load_model("postprocess", tmp_path, monkeypatch, detector_masks=True)
    model.proto_masks = Assembling
    protos = np.zeros((1, 2, 8, 8), np.float32)
    protos[0, 0, :, :4], protos[0, 0, :, 4:] = 1.0, -1.0  # coefficients (1, 0): the letterbox's left half
    requests = []
    for width, second in ((64, [1.0, 0.0]), (66, [1.0, 0.0]), (64, [-1.0, 0.0])):  # the third's second: empty
        request = _post_request(2)
        request["IMAGE_INFO"] = _FakeTensor("IMAGE_INFO", np.array([[width, 64, 0.5, 0, 0]], np.float32))
        coeffs = np.array([[[1.0, 0.0], second]], np.float32)
        if second[0] < 0:  # the box inside the left half: no pixel of it is in the mask
            request["DET_BOXES"] = _FakeTensor("DET_BOXES", np.array([[[4, 4, 20, 28], [2, 2, 12, 12]]], np.float32))
        request["DET_MASK_COEFFS"] = _FakeTensor("DET_MASK_COEFFS", coeffs)
        request["DET_PROTOS"] = _FakeTensor("DET_PROTOS", protos)
        requests.append(request)
    nothing = _post_request(0)  # a photo without detections still carries its prototypes
    nothing["DET_MASK_COEFFS"] = _FakeTensor("DET_MASK_COEFFS", np.zeros((1, 0, 2), np.float32))
    nothing["DET_PROTOS"] = _FakeTensor("DET_PROTOS", protos)
    try:
        responses = model.execute([*requests, nothing])
    finally:
        model.finalize()
    assert crops_sent == [4, 1]  # 2 + 2 + 1 crops in chunks of 4: the empty mask's detection has none
    assert responses[3].error is None, responses[3].error.text
    assert responses[3].outputs["BOXES"].shape == (1, 0, 4)
    assert responses[1].error.code == "INTERNAL" and "prototypes out of range" in responses[1].error.text
    expected = masks_from_protos(np.array([[1.0, 0.0]] * 2, np.float32), protos[0], np.array([[4, 4, 20, 28]] * 2),
                                 LetterboxInfo(64, 64, 0.5, 0, 0), input_size=POST_SETTINGS["input_size"])
    for response, count in ((responses[0], 2), (responses[2], 1)):
        assert response.error is None
        assert response.outputs["BOXES"].shape == (1, count, 4)
        message = detections_pb2.ImageDetections.FromString(response.outputs["DETECTIONS"][0, 0])
        detections = ImageDetections.from_proto(message).detections
        assert len(detections) == count and all(d.mask is not None for d in detections)
        for detection, mask in zip(detections, expected[:count], strict=True):
            np.testing.assert_array_equal(detection.mask, mask.to_array())
            # the box (8..40 x 8..56 in the original) left of the prototypes' edge (x = 32)
            assert detection.mask[10:54, 10:30].all() and not detection.mask[:, 33:].any()
            assert not detection.mask[:6].any() and not detection.mask[58:].any()


def test_postprocess_takes_each_mask_whole_without_the_box_cut(
    fake_pb_utils: _FakePbUtils, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``detector_mask_crop`` false (RF-DETR-Seg's post-processing): a detection's mask is what its logits say over
    the whole letterbox, outside its box too; a detection whose whole mask is empty is still dropped."""
    from fashionbox.client import ImageDetections
    from fashionbox.v1 import detections_pb2

    a = LABELS.num_attribute_labels
    fake_pb_utils.bls = lambda model, inputs: _FakeBlsResponse(
        {"ATTRIBUTE_PROBS": np.full((len(inputs["CROPS"]), a), 0.5, np.float32)})
    model = _load_model("postprocess", tmp_path, monkeypatch, detector_masks=True, detector_mask_crop=False)
    protos = np.zeros((1, 2, 8, 8), np.float32)
    protos[0, 0, :, :4], protos[0, 0, :, 4:] = 1.0, -1.0  # coefficients (1, 0): the letterbox's left half
    request = _post_request(2)
    request["IMAGE_INFO"] = _FakeTensor("IMAGE_INFO", np.array([[64, 64, 0.5, 0, 0]], np.float32))
    request["DET_BOXES"] = _FakeTensor("DET_BOXES", np.array([[[4, 4, 12, 12], [2, 2, 12, 12]]], np.float32))
    request["DET_MASK_COEFFS"] = _FakeTensor("DET_MASK_COEFFS", np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32))
    request["DET_PROTOS"] = _FakeTensor("DET_PROTOS", protos)
    try:
        (response,) = model.execute([request])
    finally:
        model.finalize()
    assert response.error is None, response.error.text
    message = detections_pb2.ImageDetections.FromString(response.outputs["DETECTIONS"][0, 0])
    (detection,) = ImageDetections.from_proto(message).detections  # the second's mask is empty everywhere
    # the box is 8..24 in the original; the mask is the whole left half, 0..32, every row
    assert detection.mask is not None and detection.mask[:, :31].all() and not detection.mask[:, 33:].any()


def test_postprocess_makes_no_bls_call_when_nothing_was_detected(
    fake_pb_utils: _FakePbUtils, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load_model("postprocess", tmp_path, monkeypatch)

    responses = model.execute([_post_request(0), _post_request(0)])

    assert fake_pb_utils.bls_calls == []
    assert all(r.error is None for r in responses)
    assert responses[0].outputs["DETECTIONS"].shape == (1, 1)


@pytest.mark.parametrize("inline", [False, True])
def test_postprocess_answers_photos_without_detections_when_the_attribute_call_has_extra_outputs(
    fake_pb_utils: _FakePbUtils, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    """No detection and no whole-photo crop (image-level labels and vectors from other models): no
    attribute call, and no second stage or mask to assemble. The answer was INTERNAL ("score offsets
    must be [0, C] for 0 detections, got shape (0, 8, 8, 3)"): the empty answer took the crops' shape."""
    if inline:  # the fused layout runs the attribute network inside postprocess: it must not be called either
        from fashionbox.model_repository import runners

        class Heads:
            outputs = ("masks", "score_offsets")

            def run(self, crops: NDArray[Any], names: Any) -> dict[str, NDArray[Any]]:
                raise AssertionError("the attribute network ran on no crops")

        monkeypatch.setattr(runners, "load_attributes_runner", lambda args: (Heads(), "stand-in"))
    model = _load_model("postprocess", tmp_path, monkeypatch, verifier_classes=LABELS.num_categories,
                        crop_mask_size=8, layout="fused" if inline else "steps")

    responses = model.execute([_post_request(0), _post_request(0)])

    assert fake_pb_utils.bls_calls == []
    for response in responses:
        assert response.error is None, response.error
        assert response.outputs["ATTRIBUTE_SCORES"].shape == (1, 0, LABELS.num_attribute_labels)
        assert response.outputs["DETECTIONS"].shape == (1, 1)


def test_with_a_secret_postprocess_refuses_a_forged_token_alone_and_sends_attributes_its_own(
    fake_pb_utils: _FakePbUtils, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = bytes(range(32))
    monkeypatch.setenv(SECRET_ENV, secret.hex())
    a = LABELS.num_attribute_labels
    fake_pb_utils.bls = lambda model, inputs: _FakeBlsResponse(
        {"ATTRIBUTE_PROBS": np.full((len(inputs["CROPS"]), a), 0.5, np.float32)})
    model = _load_model("postprocess", tmp_path, monkeypatch)
    server = PipelineKey(secret)

    forged = _post_request(2, PipelineKey(b"not the server's secret"))
    tampered = _post_request(2, server)
    tampered["PIXELS"] = _FakeTensor("PIXELS", np.ones_like(tampered["PIXELS"].as_numpy()))
    responses = model.execute([_post_request(2, server), forged, tampered, _post_request(2)])

    assert responses[0].error is None and responses[0].outputs["BOXES"].shape == (1, 2, 4)
    for refused in responses[1:]:
        assert refused.error.code == "INVALID_ARG"
        assert "'postprocess' is a step of the ensemble 'fashion' and takes no direct calls" in refused.error.text
    assert "not made by this server for these pixels" in responses[2].error.text
    ((called, inputs),) = fake_pb_utils.bls_calls
    assert called == "attributes" and inputs["TOKEN"].shape == (2, 32)
    server.check_attributes(inputs["TOKEN"], model="attributes")  # the token attributes accepts


def test_a_token_is_bound_to_its_pixels_its_secret_and_its_lifetime() -> None:
    clock = [100.0]
    key = PipelineKey(bytes(32), lifetime_s=5, clock=lambda: clock[0])
    pixels = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    tokens = key.sign(77, pixels)

    assert tokens.shape == (2, 32) and key.check(tokens, pixels, model="detector") == 77
    with pytest.raises(RequestError, match="not made by this server"):
        key.check(tokens, pixels[::-1].copy(), model="detector")
    with pytest.raises(RequestError, match="not made by this server"):
        PipelineKey(bytes(range(32)), clock=lambda: clock[0]).check(tokens, pixels, model="detector")
    with pytest.raises(RequestError, match="attributes"):
        key.check_attributes(np.zeros((1, 32), np.uint8), model="attributes")
    clock[0] += 6
    with pytest.raises(RequestError, match="expired"):
        key.check(tokens, pixels, model="detector")
    # Without a secret (a server not started by `fashionbox serve`) nothing is checked.
    assert PipelineKey(None).check(np.zeros((2, 32), np.uint8), pixels, model="detector") == 0
    assert PipelineKey.from_env({}).enforced is False
    assert PipelineKey.from_env({SECRET_ENV: bytes(32).hex()}).enforced is True



def test_a_token_outlives_a_short_admission_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request slower than the slot TTL (5 s by default) finishes uncounted; its token must not expire
    with the slot, or a slow pipeline's requests are refused as forged calls."""
    from fashionbox.core.capability import DEFAULT_LIFETIME_S
    from fashionbox.core.serving import AdmissionSettings

    monkeypatch.setenv(SECRET_ENV, bytes(32).hex())
    short = PipelineKey.for_step(AdmissionSettings(max_in_flight=4, admission_ttl_ms=5_000))
    long = PipelineKey.for_step(AdmissionSettings(max_in_flight=4, admission_ttl_ms=90_000))
    assert short.lifetime_s == DEFAULT_LIFETIME_S == 30.0 and long.lifetime_s == 90.0
    assert PipelineKey.for_step(None).lifetime_s == DEFAULT_LIFETIME_S


@pytest.mark.usefixtures("fake_pb_utils")
def test_preprocess_answers_a_corrupt_image_alone_with_invalid_arg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), (10, 20, 30)).save(buffer, format="PNG")
    good = {"IMAGE": _FakeTensor("IMAGE", np.array([[buffer.getvalue()]], dtype=np.object_))}
    bad = {"IMAGE": _FakeTensor("IMAGE", np.array([[b"GIF89a nonsense"]], dtype=np.object_))}
    model = _load_model("preprocess", tmp_path, monkeypatch)

    responses = model.execute([good, bad, good])

    size = POST_SETTINGS["input_size"]
    for response in (responses[0], responses[2]):
        assert response.error is None
        assert response.outputs["PIXELS"].shape == (1, size, size, 3)
        np.testing.assert_allclose(response.outputs["IMAGE_INFO"], [[64, 32, 0.5, 0, 8]])
        assert response.outputs["TOKEN"].shape == (1, 32)
    assert responses[1].error.code == "INVALID_ARG"
    assert "not a JPEG, PNG or WebP image" in responses[1].error.text


@pytest.mark.usefixtures("fake_pb_utils")
def test_preprocess_decode_limits_from_the_environment_override_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASHIONBOX_MAX_IMAGE_BYTES", "50")
    model = _load_model("preprocess", tmp_path, monkeypatch)
    request = {"IMAGE": _FakeTensor("IMAGE", np.array([[bytes(64)]], dtype=np.object_))}

    (response,) = model.execute([request])

    assert response.error.code == "INVALID_ARG"
    assert response.error.text == "image is 64 bytes, over the limit of 50 bytes"


@pytest.mark.usefixtures("fake_pb_utils")
def test_preprocess_answers_fuzzed_images_with_pixels_or_invalid_arg_and_never_fails_the_good_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from fuzz_decode import SEEDS, random_input

    model = _load_model("preprocess", tmp_path, monkeypatch)
    rng = random.Random(5)
    good = {"IMAGE": _FakeTensor("IMAGE", np.array([[SEEDS[0]]], dtype=np.object_))}
    size = POST_SETTINGS["input_size"]

    for _ in range(50):
        fuzzed = [{"IMAGE": _FakeTensor("IMAGE", np.array([[random_input(rng)]], dtype=np.object_))} for _ in range(4)]
        responses = model.execute([good, *fuzzed, good])

        assert [r.error for r in (responses[0], responses[-1])] == [None, None]
        for response in responses:
            if response.error is None:
                assert response.outputs["PIXELS"].shape == (1, size, size, 3)
            else:
                assert response.error.code == "INVALID_ARG", response.error.text
