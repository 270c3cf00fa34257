"""The Ultralytics YOLO family: tiny random YOLOv8 / YOLOv8-seg exports converted, served, equal to Ultralytics.

No network and no pickle: each model is built from Ultralytics' own YAML (scaled down: 128 px,
width 1/16), exported with Ultralytics' own ``model.export(format="onnx")``, and the converter
reads only that ONNX file. The reference is Ultralytics' predictor (``YOLO("x.onnx").predict``)
on the same letterboxed pixels (its NMS is its own ``TorchNMS``: torchvision cannot load here;
tests/ultralytics_models.py). Parity: category equal, score within 1e-3, box within 0.5 px, mask
IoU >= 0.98. The segment model is exported with a dynamic batch, the detect model with the
default batch of 1 (served image by image).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from fashionbox.converter import ConvertError, ConvertOptions, convert, resolve_spec
from fashionbox.core.imaging import DecodedImage, LetterboxInfo, decode_image, letterbox, rect_canvas
from fashionbox.core.proto_masks import masks_from_protos
from fashionbox.core.serving import OnnxDetector, OrtSettings

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from ultralytics_models import (  # noqa: E402
    DEEPFASHION2,
    build_yolo,
    import_ultralytics,
    load_predictor,
    predict,
)

import_ultralytics()  # fails with the install hint of requirements-dev.txt when missing

onnx = pytest.importorskip("onnx")

from fashionbox.converter.labels import family_label_map  # noqa: E402
from fashionbox.converter.ultralytics import (  # noqa: E402
    UltralyticsError,
    compare_ultralytics,
    export_ultralytics_onnx,
    load_ultralytics,
)
from fashionbox.models.nms import NmsSettings  # noqa: E402

SIZE = 128
STRIDE = 32  # the YOLOv8 models' largest stride: their rect letterbox's
NMS = NmsSettings(score_threshold=0.25, iou_threshold=0.7, max_per_class=300, max_detections=300)


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_yolo(tmp_path_factory.mktemp("yolo-seg"), task="segment", imgsz=SIZE, dynamic=True)


@pytest.fixture(scope="module")
def det_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_yolo(tmp_path_factory.mktemp("yolo-det"), task="detect", imgsz=SIZE, dynamic=False, seed=1)


def _scenes() -> list[bytes]:
    from fashionbox.synth import render_scene

    sizes = [(640, 480), (360, 640), (500, 500)]
    return [render_scene(70 + i, size=size).encode(format="JPEG", quality=90) for i, size in enumerate(sizes)]


def _thumbnail() -> bytes:
    """A photo smaller than the letterbox: the letterbox enlarges it, so the masks shrink back to it."""
    from fashionbox.synth import render_scene

    return render_scene(77, size=(100, 75)).encode(format="JPEG", quality=90)


def _letterboxed(*, rect: bool = False,
                 scenes: list[bytes] | None = None) -> list[tuple[bytes, npt.NDArray[np.uint8], LetterboxInfo]]:
    """Each scene letterboxed square, or each in its own rect letterbox (128x96, 96x128, 128x128)."""
    out = []
    for data in _scenes() if scenes is None else scenes:
        image = decode_image(data, target_size=SIZE)
        pixels, info = letterbox(image, SIZE, canvas=rect_canvas(image.width, image.height, SIZE, STRIDE)
                                 if rect else None)
        out.append((data, pixels, info))
    return out


def _boxes(result: Any) -> npt.NDArray[np.float32]:
    return np.asarray(result.boxes.xyxy.numpy(), dtype=np.float32).reshape(-1, 4)


def _iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _reference_original_masks(result: Any, info: LetterboxInfo) -> npt.NDArray[np.bool_]:
    """Ultralytics' letterbox masks taken to the original image by its own ``scale_masks``."""
    from ultralytics.utils.ops import scale_masks

    masks = result.masks.data[:, None].float()
    return (scale_masks(masks, (info.height, info.width))[:, 0] > 0.5).numpy()


# -- loading, labels and refusals ---------------------------------------------------------------------


def test_loader_reads_task_size_and_deepfashion2_names_from_the_metadata(seg_onnx: Path, det_onnx: Path) -> None:
    seg, det = load_ultralytics(seg_onnx), load_ultralytics(det_onnx)
    assert (seg.task, seg.input_size, seg.mask_dim, seg.fixed_batch, seg.stride) == ("segment", SIZE, 32, None, STRIDE)
    assert (det.task, det.input_size, det.mask_dim, det.fixed_batch) == ("detect", SIZE, 0, 1)
    assert (seg.dynamic_shape, det.dynamic_shape) == (True, False)  # dynamic=True: any height and width
    labels = seg.label_map
    assert labels.category_names == DEEPFASHION2
    defaults = family_label_map({0: "dress", 1: "pants", 2: "top, t-shirt, sweatshirt", 3: "jacket"}, name="x")
    assert labels.groups_for("long sleeve dress") == defaults.groups_for("dress")
    assert labels.groups_for("trousers") == defaults.groups_for("pants")
    assert labels.groups_for("sling") == defaults.groups_for("top, t-shirt, sweatshirt")
    assert labels.groups_for("short sleeve outwear") == defaults.groups_for("jacket")
    assert labels.groups_for("long sleeve dress")  # the attribute heads run on these garments


def test_modanet_and_underscored_names_get_attribute_proxies() -> None:
    labels = family_label_map(dict(enumerate(["bag", "boots", "outer", "skirts", "headwear", "sunglasses",
                                              "long_sleeved_dress"])), name="modanet")
    defaults = family_label_map({0: "bag, wallet", 1: "shoe", 2: "coat", 3: "skirt", 4: "hat", 5: "dress"}, name="x")
    assert labels.groups_for("bag") == defaults.groups_for("bag, wallet")
    assert labels.groups_for("boots") == defaults.groups_for("shoe")
    assert labels.groups_for("outer") == defaults.groups_for("coat")
    assert labels.groups_for("skirts") == defaults.groups_for("skirt")
    assert labels.groups_for("headwear") == defaults.groups_for("hat")
    assert labels.groups_for("long_sleeved_dress") == defaults.groups_for("dress")
    assert labels.groups_for("sunglasses") == ()


def test_spec_resolves_an_onnx_file_and_refuses_pickles_other_files_and_attribute_heads(seg_onnx: Path,
                                                                                       tmp_path: Path) -> None:
    assert resolve_spec(f"ultralytics:{seg_onnx}", "detector") == ("ultralytics", seg_onnx)
    (tmp_path / "best.pt").write_bytes(b"not read")
    with pytest.raises(ConvertError, match=r"pickles and are refused; export it to ONNX first: yolo export"):
        resolve_spec(f"ultralytics:{tmp_path / 'best.pt'}", "detector")
    with pytest.raises(ConvertError, match=r"expected the \.onnx file"):
        resolve_spec(f"ultralytics:{tmp_path / 'best.engine'}", "detector")
    with pytest.raises(ConvertError, match="checkpoint not found"):
        resolve_spec(f"ultralytics:{tmp_path / 'missing.onnx'}", "detector")
    with pytest.raises(ConvertError, match="attribute heads"):
        resolve_spec(f"ultralytics:{seg_onnx}", "attributes")


def _edited(source: Path, target: Path, *, metadata: dict[str, str | None] | None = None,
            transpose_head: bool = False) -> Path:
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in (metadata or {}).items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    if transpose_head:  # another layout: [B, N, channels] instead of [B, channels, N]
        head = model.graph.output[0]
        model.graph.node.append(onnx.helper.make_node("Transpose", [head.name], ["other_layout"], perm=[0, 2, 1]))
        dims = [d.dim_value or d.dim_param for d in head.type.tensor_type.shape.dim]
        new = onnx.helper.make_tensor_value_info("other_layout", onnx.TensorProto.FLOAT, [dims[0], dims[2], dims[1]])
        model.graph.output[0].CopyFrom(new)
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize(("edit", "message"), [
    ({"metadata": {"names": repr(dict(enumerate(DEEPFASHION2[:12])))}},
     r"has 49 channels per anchor, but 4 box \+ 12 classes \(metadata 'names'\) \+ 32 mask = 48"),
    ({"metadata": {"imgsz": "[128, 160]"}}, r"imgsz 128x160 is not square"),
    ({"metadata": {"imgsz": "[100, 100]"}}, r"imgsz 100 is not a multiple of the model's stride 32"),
    ({"metadata": {"task": "pose"}}, r"task 'pose' is not served"),
    ({"metadata": {"names": None}}, r"has no Ultralytics metadata \['names'\]"),
    ({"metadata": {"names": "__import__('os').getcwd()"}}, r"metadata 'names' is not readable"),
    ({"metadata": {"end2end": "True"}}, r"end-to-end \(NMS-inside\) export is not served"),
    ({"transpose_head": True}, r"channels per anchor"),
])
def test_bad_exports_are_refused_with_what_is_wrong(seg_onnx: Path, tmp_path: Path, edit: dict[str, Any],
                                                     message: str) -> None:
    bad = _edited(seg_onnx, tmp_path / "bad.onnx", **edit)
    with pytest.raises(UltralyticsError, match=message):
        load_ultralytics(bad)


def test_a_truncated_file_is_refused_before_anything_is_written(seg_onnx: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.onnx"
    data = seg_onnx.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    out = tmp_path / "repository"
    with pytest.raises(ConvertError, match="is not a readable ONNX model"):
        convert(ConvertOptions(out=out, detector=f"ultralytics:{truncated}"))
    assert not out.exists()


# -- the served graph against Ultralytics' predictor, in process ----------------------------------------


def test_the_rect_letterbox_has_the_shape_and_padding_of_ultralytics_own(tmp_path: Path) -> None:
    """``rect_canvas`` and ``letterbox(canvas=...)`` against Ultralytics' ``LetterBox(auto=True)``, which its
    predictor applies to one image of a dynamic export; pixels differ only by the resize (OpenCV's)."""
    from ultralytics.data.augment import LetterBox

    theirs = LetterBox((640, 640), auto=True, stride=32)
    for width, height in ((1280, 960), (960, 1280), (1000, 710), (333, 1999), (640, 640), (4000, 10), (75, 50)):
        canvas = rect_canvas(width, height, 640, 32)
        image = np.zeros((height, width, 3), np.uint8)
        image[height // 3:, width // 3:] = 255  # where the content lands shows the padding
        boxed = theirs(image=image)
        assert boxed.shape[:2] == canvas, (width, height)
        pixels, _ = letterbox(DecodedImage(Image.fromarray(image), width, height), 640, canvas=canvas)
        for axis in (0, 1):  # the rows, then the columns, that hold content: the same on both sides
            other = (1 - axis, 2)
            assert np.array_equal(np.flatnonzero((boxed != 114).any(axis=other)),
                                  np.flatnonzero((pixels != 114).any(axis=other))), (width, height, axis)


def test_served_graph_equals_the_users_graph_with_numpy_decode(seg_onnx: Path, det_onnx: Path,
                                                                tmp_path: Path) -> None:
    batches = [np.random.default_rng(i).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8) for i in range(2)]
    batches.append(np.stack([pixels for _, pixels, _ in _letterboxed()]))
    for source in (seg_onnx, det_onnx):
        model = load_ultralytics(source)
        served = export_ultralytics_onnx(model, tmp_path / f"{source.stem}-served.onnx", nms=NMS)
        report = compare_ultralytics(model, served, batches, NMS)
        assert report.max_abs_error["detections_count_mismatch"] == 0
        assert report.max_abs_error["boxes"] < 1e-4
        assert report.max_abs_error["scores"] < 1e-6
        assert report.max_abs_error.get("mask_coeffs", 0.0) < 1e-5


@pytest.mark.parametrize(("task", "rect"), [("segment", False), ("segment", True), ("detect", False)])
def test_served_detections_and_masks_equal_ultralytics_predictor_in_process(
        task: str, rect: bool, seg_onnx: Path, det_onnx: Path, tmp_path: Path) -> None:
    """On the same letterboxed pixels: square, and the dynamic export's rect letterboxes (each image its own
    shape, as the predictor runs one image of a dynamic export: ``rect``)."""
    source = seg_onnx if task == "segment" else det_onnx
    model = load_ultralytics(source)
    served = OnnxDetector(export_ultralytics_onnx(model, tmp_path / "served.onnx", nms=NMS), OrtSettings(),
                          max_detections=NMS.max_detections)
    assert served.segments == (task == "segment")
    reference = load_predictor(source, task)
    images = _letterboxed(rect=rect)
    if rect:
        assert [pixels.shape[:2] for _, pixels, _ in images] == [(96, 128), (128, 96), (128, 128)]
        ours = [served.detect(pixels[None])[0] for _, pixels, _ in images]
        theirs = [predict(reference, [pixels], imgsz=SIZE)[0] for _, pixels, _ in images]
        assert [tuple(result.orig_shape) for result in theirs] == [(96, 128), (128, 96), (128, 128)]
    else:
        ours = served.detect(np.stack([pixels for _, pixels, _ in images]))
        theirs = predict(reference, [pixels for _, pixels, _ in images], imgsz=SIZE)
    total = dropped = masked = 0
    for row, result, (_, pixels, info) in zip(ours, theirs, images, strict=True):
        height, width = pixels.shape[:2]
        keep = np.ones(len(row), dtype=bool)
        if task == "segment":
            assert row.mask_coeffs is not None and row.protos is not None
            assert row.protos.shape[1:] == (height // 4, width // 4)  # the prototypes cover this letterbox
            identity = LetterboxInfo(width, height, 1.0, 0, 0)  # the masks at the letterbox, as the predictor's
            at_letterbox = masks_from_protos(row.mask_coeffs, row.protos, row.boxes, identity,
                                             input_size=(height, width))
            # Ultralytics' predictor drops detections whose mask is empty; the rest must match it
            keep = np.array([m.area > 0 for m in at_letterbox], dtype=bool)
            dropped += int((~keep).sum())
        assert row.classes[keep].tolist() == result.boxes.cls.numpy().astype(int).tolist()
        np.testing.assert_allclose(row.scores[keep], result.boxes.conf.numpy(), atol=1e-3)
        # Ultralytics clips its boxes to the image it was given (here the letterbox)
        clipped = np.clip(row.boxes[keep], 0, [width, height, width, height])
        np.testing.assert_allclose(clipped, _boxes(result), atol=0.5)
        total += int(keep.sum())
        if task == "segment" and keep.any():
            assert row.mask_coeffs is not None and row.protos is not None
            kept = [m for m, k in zip(at_letterbox, keep, strict=True) if k]
            expected = result.masks.data.numpy().astype(bool)
            for mine, theirs_mask in zip(kept, expected, strict=True):
                assert _iou(mine.to_array(), theirs_mask) >= 0.98
            original = masks_from_protos(row.mask_coeffs[keep], row.protos, row.boxes[keep], info,
                                         input_size=(height, width))
            expected_original = _reference_original_masks(result, info)
            ious = [_iou(m.to_array(), e) for m, e in zip(original, expected_original, strict=True)]
            assert min(ious) >= 0.98, ious
            # the masks are shapes, not the whole box or nothing
            sides = np.diff(row.boxes[keep].reshape(-1, 2, 2), axis=1).reshape(-1, 2) / info.scale
            box_areas = sides[:, 0] * sides[:, 1]  # in original pixels
            assert any(0 < m.area < 0.9 * box for m, box in zip(original, box_areas, strict=True))
            masked += len(original)
    assert total >= 3  # the random model detects something on every run of this test
    assert masked == (total if task == "segment" else 0)


def test_openvino_serves_a_batch_one_export_image_by_image_as_onnx_runtime_does(det_onnx: Path,
                                                                                tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from fashionbox.core.openvino_runtime import OpenVinoDetector

    path = export_ultralytics_onnx(load_ultralytics(det_onnx), tmp_path / "served.onnx", nms=NMS)
    pixels = np.stack([pixels for _, pixels, _ in _letterboxed()])
    expected = OnnxDetector(path, OrtSettings(), max_detections=300).detect(pixels)
    got = OpenVinoDetector(path, OrtSettings(), max_detections=300).detect(pixels)
    assert [r.classes.tolist() for r in got] == [r.classes.tolist() for r in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)


def test_openvino_runs_a_dynamic_export_on_rect_letterboxes_as_onnx_runtime_does(seg_onnx: Path,
                                                                                 tmp_path: Path) -> None:
    """The rect letterbox's shapes change from request to request: OpenVINO compiles the graph with
    dynamic height and width and must give what ONNX Runtime gives on each."""
    pytest.importorskip("openvino")
    from fashionbox.core.openvino_runtime import OpenVinoDetector

    path = export_ultralytics_onnx(load_ultralytics(seg_onnx), tmp_path / "served.onnx", nms=NMS)
    expected_runner = OnnxDetector(path, OrtSettings(), max_detections=300)
    runner = OpenVinoDetector(path, OrtSettings(), max_detections=300)
    for _, pixels, _ in _letterboxed(rect=True):
        (expected,) = expected_runner.detect(pixels[None])
        (got,) = runner.detect(pixels[None])
        assert got.classes.tolist() == expected.classes.tolist() and len(got) > 0
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
        np.testing.assert_allclose(got.boxes, expected.boxes, atol=0.05)
        assert got.protos is not None and expected.protos is not None
        assert got.protos.shape == expected.protos.shape == (32, pixels.shape[0] // 4, pixels.shape[1] // 4)


# -- converted and served through a real Triton ------------------------------------------------------------


@pytest.fixture(scope="module")
def seg_repository(seg_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ultralytics-repo") / "repository"
    return convert(ConvertOptions(out=out, detector=f"ultralytics:{seg_onnx}", compare_samples=2)).repository


def test_the_gpu_profile_carries_yolo_seg_masks_through_the_engine_graph(seg_onnx: Path, tmp_path: Path) -> None:
    """``--target gpu`` (TensorRT engines built later): the engine graph gives each kept detection's mask
    coefficients (zero in the padding rows) and the prototypes, as the detector config declares, checked by the
    converter against the CPU graph in ONNX Runtime. A first version dropped them (the config declared outputs
    the engine lacked: Triton would have refused it on the GPU)."""
    import onnxruntime as ort

    from fashionbox import contract
    from fashionbox.converter.tensorrt import EngineOptions

    repository = convert(ConvertOptions(out=tmp_path / "gpu", detector=f"ultralytics:{seg_onnx}", compare_samples=2,
                                        target="gpu", runtime="tensorrt",
                                        engines=EngineOptions(build="later"))).repository
    session = ort.InferenceSession(str(repository / "detector" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [
        contract.DET_BOXES.name, contract.DET_SCORES.name, contract.DET_CLASSES.name, contract.DET_MASK_COEFFS.name,
        contract.DET_PROTOS.name]
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    _, _, classes, coeffs, protos = session.run(None, {contract.PIXELS.name: pixels})
    valid = classes >= 0
    assert valid.any() and (~valid).any()  # kept detections and padding rows
    assert np.abs(coeffs[valid]).max() > 0 and not coeffs[~valid].any()
    assert protos.shape[:2] == (2, coeffs.shape[2])


def test_convert_writes_a_segmenting_repository_with_ultralytics_defaults(seg_repository: Path) -> None:
    manifest = json.loads((seg_repository / "manifest.json").read_text())
    labels = json.loads((seg_repository / "labels.json").read_text())
    assert manifest["family"] == "ultralytics"
    assert manifest["export"]["input_size"] == SIZE
    assert manifest["export"]["letterbox_stride"] == STRIDE  # a dynamic export: the rect letterbox by default
    for model in ("preprocess", "detector", "postprocess"):
        config = (seg_repository / model / "config.pbtxt").read_text()
        assert 'key: "letterbox_stride"' in config and 'string_value: "32"' in config, model
        assert "dims: -1\n  dims: -1\n  dims: 3" in config, model  # PIXELS: each request's own shape
    detector_config = (seg_repository / "detector" / "config.pbtxt").read_text()
    assert "allow_ragged_batch" not in detector_config  # the network batches requests of one shape only
    # a detector of hundreds of ms: two threads per network instance (at most the cores), no spinning
    threads = min(2, os.cpu_count() or 1)
    assert f'key: "intra_op_threads"\n  value {{\n    string_value: "{threads}"' in detector_config
    assert manifest["export"]["nms"] == {"score_threshold": 0.25, "iou_threshold": 0.7, "max_per_class": 300,
                                         "max_detections": 300}
    assert manifest["comparison"]["detector"]["detections_count_mismatch"] == 0
    assert [c["name"] for c in labels["categories"]] == list(DEEPFASHION2)
    assert "versions" in manifest and "ultralytics" not in manifest["versions"]


def test_cli_convert_takes_an_ultralytics_onnx_file(det_onnx: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from fashionbox.commands.cli import main

    assert main(["convert", "--detector", f"ultralytics:{det_onnx}", "--out", str(tmp_path / "repo"),
                 "--threads", "3", "--cores", "16"]) == 0
    manifest = json.loads((tmp_path / "repo" / "manifest.json").read_text())
    assert manifest["family"] == "ultralytics"
    assert manifest["sources"]["detector"]["file"] == det_onnx.name
    out = capsys.readouterr().out
    assert "model repository" in out
    assert "letterbox: square 128x128" in out  # a fixed-shape export
    detector = (tmp_path / "repo" / "detector" / "config.pbtxt").read_text()
    assert 'key: "intra_op_threads"\n  value {\n    string_value: "3"' in detector
    assert 'key: "allow_spinning"\n  value {\n    string_value: "false"' in detector  # spinning threads hold cores
    # --cores 16: the steps' instances for a 16-core server, the admission bound with them; the detector's
    # 8 cores as 2 instances of 3 threads (not 8 of 3: 24 threads on 8 cores)
    from fashionbox.loadtest.tune import read_configs

    configs = read_configs(tmp_path / "repo")
    assert {name: configs[name].instance_group[0].count for name in ("preprocess", "detector", "attributes",
                                                                     "postprocess")} == {
        "preprocess": 4, "detector": 2, "attributes": 2, "postprocess": 4}
    assert configs["preprocess"].parameters["max_in_flight"].string_value == "128"
    assert manifest["cpu_cores"] == 16
    # the family's own two threads: the detector's 8 cores as 4 instances of 2
    assert main(["convert", "--detector", f"ultralytics:{det_onnx}", "--out", str(tmp_path / "repo2"),
                 "--cores", "16", "--runtime", "onnxruntime"]) == 0
    detector = read_configs(tmp_path / "repo2")["detector"]
    assert detector.instance_group[0].count == 4 and detector.parameters["intra_op_threads"].string_value == "2"
    assert main(["convert", "--detector", f"ultralytics:{det_onnx}", "--out", str(tmp_path / "bad"),
                 "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def _assert_served_as_predicted(served: Any, result: Any, info: LetterboxInfo, labels: Any) -> int:
    """A served answer against Ultralytics' predictor on the same letterbox; the detections compared.
    Both drop a detection whose mask is empty at the letterbox (see the in-process test): the lists are
    the same, every served detection has its mask."""
    with_mask = list(served.detections)
    assert all(d.mask is not None for d in with_mask)
    assert [d.category for d in with_mask] == [labels.category_names[int(c)] for c in result.boxes.cls]
    np.testing.assert_allclose([d.score for d in with_mask], result.boxes.conf.numpy(), atol=1e-3)
    boxes = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in with_mask]).reshape(-1, 4)
    np.testing.assert_allclose(boxes, info.to_original(_boxes(result)), atol=0.5)
    if with_mask:
        expected = _reference_original_masks(result, info)
        for detection, mask in zip(with_mask, expected, strict=True):
            assert detection.mask is not None and detection.mask.shape == (info.height, info.width)
            assert _iou(detection.mask, mask) >= 0.98
    return len(with_mask)


def test_a_rect_letterbox_is_refused_where_it_cannot_be_served_and_square_is_the_opt_out(
        seg_onnx: Path, det_onnx: Path, tmp_path: Path) -> None:
    from fashionbox.commands.cli import main

    with pytest.raises(ConvertError, match="takes only the square 128 letterbox"):  # a fixed-shape export
        convert(ConvertOptions(out=tmp_path / "fixed", detector=f"ultralytics:{det_onnx}", letterbox="rect",
                               compare_samples=1))
    # the exporter itself refuses a rect letterbox for it too, and a stride the dynamic export does not divide
    fixed, dynamic = load_ultralytics(det_onnx), load_ultralytics(seg_onnx)
    with pytest.raises(UltralyticsError, match="needs a dynamic=True export"):
        export_ultralytics_onnx(fixed, tmp_path / "fixed.onnx", nms=NMS, letterbox_stride=32)
    with pytest.raises(UltralyticsError, match="a multiple of its stride 32"):
        export_ultralytics_onnx(dynamic, tmp_path / "odd.onnx", nms=NMS, letterbox_stride=16)
    assert export_ultralytics_onnx(dynamic, tmp_path / "rect.onnx", nms=NMS, letterbox_stride=32).is_file()
    # another imgsz: a dynamic export at a multiple of its stride, as its predictor's imgsz=; never a fixed one
    with pytest.raises(ConvertError, match="exported at a fixed 128x128"):
        convert(ConvertOptions(out=tmp_path / "fixed160", detector=f"ultralytics:{det_onnx}", input_size=160))
    with pytest.raises(ConvertError, match="takes a multiple of its stride 32"):
        convert(ConvertOptions(out=tmp_path / "odd", detector=f"ultralytics:{seg_onnx}", input_size=150))
    convert(ConvertOptions(out=tmp_path / "seg160", detector=f"ultralytics:{seg_onnx}", input_size=160,
                           compare_samples=1))
    export = json.loads((tmp_path / "seg160" / "manifest.json").read_text())["export"]
    assert (export["input_size"], export["input_size_from"], export["letterbox_stride"]) == (160, "--input-size", 32)
    with pytest.raises(ConvertError, match="--letterbox rect is served on target cpu"):
        ConvertOptions(out=tmp_path / "gpu", detector=f"ultralytics:{seg_onnx}", letterbox="rect", target="gpu")
    with pytest.raises(ConvertError, match="letterbox 'wide'"):
        ConvertOptions(out=tmp_path / "x", letterbox="wide")  # type: ignore[arg-type]
    assert main(["convert", "--detector", f"ultralytics:{seg_onnx}", "--letterbox", "square",
                 "--out", str(tmp_path / "square")]) == 0
    assert json.loads((tmp_path / "square" / "manifest.json").read_text())["export"]["letterbox_stride"] == 0
    assert "letterbox_stride" not in (tmp_path / "square" / "preprocess" / "config.pbtxt").read_text()


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["steps", "fused"])
def test_served_yolo_seg_equals_ultralytics_predictor_over_grpc(
        triton_server: Any, seg_repository: Path, seg_onnx: Path, layout: str, tmp_path: Path) -> None:
    """Served in rect letterboxes (a dynamic export), as the predictor runs each photo: one request at a
    time, all at once (requests of one shape go through the network together), and two photos of
    different shapes in one request (they share the smallest letterbox holding both: here the square);
    in both layouts (the fused one decodes and detects in one step)."""
    if layout == "fused":
        seg_repository = convert(ConvertOptions(out=tmp_path / "fused", detector=f"ultralytics:{seg_onnx}",
                                                compare_samples=1, repository_settings={"layout": "fused"})).repository
    import tritonclient.grpc as grpcclient

    from fashionbox.client import FashionClient, ImageDetections
    from fashionbox.v1 import detections_pb2

    reference = load_predictor(seg_onnx, "segment")
    labels = load_ultralytics(seg_onnx).label_map
    server = triton_server(seg_repository)
    rect = _letterboxed(rect=True)
    expected = [predict(reference, [pixels], imgsz=SIZE)[0] for _, pixels, _ in rect]
    compared = 0
    with FashionClient(str(server.endpoints.grpc)) as client:
        for (data, _, info), result in zip(rect, expected, strict=True):
            compared += _assert_served_as_predicted(client.detect(data), result, info, labels)
        at_once = client.detect_many([data for data, _, _ in rect] * 4, max_in_flight=12)
        for index, answer in enumerate(at_once):
            assert not isinstance(answer, Exception), answer
            _, _, info = rect[index % len(rect)]
            compared += _assert_served_as_predicted(answer, expected[index % len(rect)], info, labels)
    assert compared > 0
    # a thumbnail smaller than the letterbox (its masks were refused: "box offset can't be negative")
    ((data, pixels, info),) = _letterboxed(rect=True, scenes=[_thumbnail()])
    (result,) = predict(reference, [pixels], imgsz=SIZE)
    with FashionClient(str(server.endpoints.grpc)) as client:
        assert _assert_served_as_predicted(client.detect(data), result, info, labels) > 0
    # a landscape and a portrait photo in one request: both in the square letterbox
    square = _letterboxed()[:2]
    tensor = grpcclient.InferInput("IMAGE", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data] for data, _, _ in square], dtype=np.object_))
    with grpcclient.InferenceServerClient(str(server.endpoints.grpc)) as raw:
        reply = raw.infer("fashion", [tensor], outputs=[grpcclient.InferRequestedOutput("DETECTIONS")])
    for row, (_, pixels, info) in enumerate(square):
        message = detections_pb2.ImageDetections.FromString(reply.as_numpy("DETECTIONS")[row, 0])
        (result,) = predict(reference, [pixels], imgsz=SIZE)
        _assert_served_as_predicted(ImageDetections.from_proto(message), result, info, labels)


def test_served_yolo_seg_drops_the_detections_whose_masks_are_empty_as_the_predictor_does(
        triton_server: Any, tmp_path: Path) -> None:
    """Mask coefficients biased down (``mask_bias``): about half the detections' masks come out empty
    at the letterbox. Ultralytics' predictor drops them; served, they are dropped before their crops
    are cut, so the answer is the predictor's list, detection for detection."""
    from fashionbox.client import FashionClient
    from fashionbox.core.proto_masks import ProtoMasks

    source = build_yolo(tmp_path / "sparse", task="segment", imgsz=SIZE, dynamic=True, mask_bias=-0.5)
    graph = OnnxDetector(export_ultralytics_onnx(load_ultralytics(source), tmp_path / "graph.onnx", nms=NMS),
                         OrtSettings(), max_detections=NMS.max_detections)
    rect = _letterboxed(rect=True)
    empty = kept = 0
    for _, pixels, _ in rect:  # the served graph's own detections: some masks empty, some not
        (row,) = graph.detect(pixels[None])
        assert row.mask_coeffs is not None and row.protos is not None
        height, width = pixels.shape[:2]
        geometry = ProtoMasks(LetterboxInfo(width, height, 1.0, 0, 0), row.protos.shape[1:],
                              input_size=(height, width))
        masks = geometry.letterbox(row.mask_coeffs, row.protos, row.boxes)
        empty += sum(mask.empty for mask in masks)
        kept += sum(not mask.empty for mask in masks)
    assert empty >= 3 and kept >= 3, (empty, kept)
    repository = convert(ConvertOptions(out=tmp_path / "repo", detector=f"ultralytics:{source}",
                                        compare_samples=1)).repository
    reference = load_predictor(source, "segment")
    labels = load_ultralytics(source).label_map
    server = triton_server(repository)
    with FashionClient(str(server.endpoints.grpc)) as client:
        served = sum(_assert_served_as_predicted(client.detect(data), predict(reference, [pixels], imgsz=SIZE)[0],
                                                 info, labels) for data, pixels, info in rect)
    assert served == kept


def test_importing_ultralytics_for_the_reference_leaves_pillow_s_open_alone() -> None:
    """The rest of the session's decode refusals depend on Pillow's own ``Image.open``."""
    from PIL import Image
    from ultralytics_models import import_ultralytics

    import_ultralytics()
    assert Image.open.__module__ == "PIL.Image"
