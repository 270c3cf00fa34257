"""Instance masks on the server side: the RLE codec, pasting mask-head grids, the result proto, eval metrics.

The RLE is checked against pycocotools (the reader the proto promises), pasting against a
per-pixel implementation written here from the geometry's definition, and the segm mAP of
``fashionbox eval`` against pycocotools' COCOeval on the same scenes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from onnx_standins import standin_mask_probs, write_attributes
from test_serving import _FakeBlsResponse, _FakePbUtils, fake_pb_utils  # noqa: F401 (a fixture)

from fashionbox.commands.evaluation import (
    EvalSample,
    GroundTruth,
    Prediction,
    evaluate,
    has_masks,
    heldout_samples,
    imaterialist_mask_score,
    imaterialist_score,
    segm_metrics,
)
from fashionbox.contract.labels import default_label_map
from fashionbox.core.imaging import LetterboxInfo, crop_regions
from fashionbox.core.masks import InstanceMask, decode_rle, encode_rle, paste_crop_masks
from fashionbox.core.results import build_image_detections
from fashionbox.core.serving import OnnxAttributes, OrtSettings, call_model_chunked

mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is a dev dependency (requirements-dev.txt)")

LABELS = default_label_map()


def _coco_counts(mask: NDArray[np.bool_]) -> list[int]:
    """COCO's uncompressed counts of ``mask`` by their definition, one pixel at a time: column-major
    runs, alternating outside and inside, starting outside."""
    height, width = mask.shape
    flat = mask.T.reshape(-1)
    runs, value, length = [], False, 0
    for pixel in flat.tolist():
        if pixel == value:
            length += 1
        else:
            runs.append(length)
            value, length = pixel, 1
    runs.append(length)
    assert sum(runs) == width * height
    return runs


# -- RLE --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_rle_round_trips_and_pycocotools_reads_it(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 24, size=2))
    mask = rng.random((height, width)) < rng.random()
    counts = encode_rle(mask)
    assert counts == _coco_counts(mask)
    assert (decode_rle(counts, width, height) == mask).all()
    read = mask_utils.decode(mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width))
    assert (read.astype(bool) == mask).all()


def test_rle_of_empty_and_full_masks_follow_coco() -> None:
    assert encode_rle(np.zeros((3, 4), bool)) == [12]
    assert encode_rle(np.ones((3, 4), bool)) == [0, 12]
    first_pixel = np.zeros((3, 4), bool)
    first_pixel[0, 0] = True
    assert encode_rle(first_pixel) == [0, 1, 11]


def test_decode_refuses_counts_that_do_not_cover_the_image() -> None:
    with pytest.raises(ValueError, match="sum to 11"):
        decode_rle([5, 6], 3, 4)
    with pytest.raises(ValueError, match="negative"):
        decode_rle([13, -1], 3, 4)


@pytest.mark.parametrize("seed", range(20))
def test_region_rle_equals_the_full_image_rle(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    width, height = (int(v) for v in rng.integers(2, 40, size=2))
    w, h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    bits = rng.random((h, w)) < 0.6
    if seed % 4 == 0:  # as tall as the frame: runs continue from one column into the next
        y, h, bits = 0, height, rng.random((height, w)) < 0.8
    mask = InstanceMask(x, y, bits, width, height)
    assert mask.to_rle() == encode_rle(mask.to_array())
    assert InstanceMask.from_array(mask.to_array()).to_rle() == mask.to_rle()
    assert mask.area == int(mask.to_array().sum())


def test_instance_mask_refuses_a_region_outside_its_frame() -> None:
    with pytest.raises(ValueError, match="leaves"):
        InstanceMask(5, 0, np.ones((2, 2), bool), 6, 6)


# -- pasting ----------------------------------------------------------------------------------------


def _paste_one_pixel_at_a_time(grid: NDArray[Any], box: NDArray[Any], info: LetterboxInfo, size: int,
                               threshold: float = 0.5) -> NDArray[np.bool_]:
    """The definition, pixel by pixel: sample the grid bilinearly at each original pixel centre's
    letterbox position, inside the crop region only."""
    m = grid.shape[0]
    (x1, y1, x2, y2), = crop_regions(box[None], size, size).tolist()
    out = np.zeros((info.height, info.width), dtype=bool)
    if x2 - x1 < 1 or y2 - y1 < 1:  # crop_garments cuts no crop from a region under a pixel wide
        return out
    for v in range(info.height):
        ly = (v + 0.5) * info.scale + info.pad_y
        if not y1 <= ly <= y2:
            continue
        gy = min(max((ly - y1) / (y2 - y1) * m - 0.5, 0.0), m - 1)
        for u in range(info.width):
            lx = (u + 0.5) * info.scale + info.pad_x
            if not x1 <= lx <= x2:
                continue
            gx = min(max((lx - x1) / (x2 - x1) * m - 0.5, 0.0), m - 1)
            i0, j0 = math.floor(gy), math.floor(gx)
            i1, j1 = min(i0 + 1, m - 1), min(j0 + 1, m - 1)
            fy, fx = gy - i0, gx - j0
            value = ((1 - fy) * ((1 - fx) * grid[i0, j0] + fx * grid[i0, j1])
                     + fy * ((1 - fx) * grid[i1, j0] + fx * grid[i1, j1]))
            out[v, u] = value >= threshold
    return out


@pytest.mark.parametrize(("width", "height"), [(90, 60), (50, 97), (64, 64)])
def test_pasting_equals_bilinear_sampling_pixel_by_pixel(width: int, height: int) -> None:
    size = 64
    scale = size / max(width, height)
    info = LetterboxInfo(width, height, scale, float((size - round(width * scale)) // 2),
                         float((size - round(height * scale)) // 2))
    rng = np.random.default_rng(width)
    boxes = np.array([[5, 8, 40, 50], [0, 0, 64, 64], [30.5, 20.25, 61.0, 33.0], [10, 10, 10.4, 30]], np.float32)
    grids = rng.random((len(boxes), 7, 7)).astype(np.float32)
    masks = paste_crop_masks(grids, boxes, info)
    assert len(masks) == len(boxes)
    for mask, grid, box in zip(masks, grids, boxes, strict=True):
        expected = _paste_one_pixel_at_a_time(grid, box, info, size)
        # float32 here, float64 there: a pixel whose value sits on the threshold may differ.
        assert (mask.to_array() != expected).sum() <= 2
        assert mask.width == width and mask.height == height


@pytest.mark.parametrize("seed", range(12))
def test_pasting_random_boxes_and_grid_sizes_equals_the_definition(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    width, height = (int(v) for v in rng.integers(20, 160, size=2))
    size = 64
    scale = size / max(width, height)
    info = LetterboxInfo(width, height, scale, float((size - round(width * scale)) // 2),
                         float((size - round(height * scale)) // 2))
    corners = rng.uniform(-5, 64, size=(6, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0, 45, size=(6, 2))], axis=1).astype(np.float32)
    cells = int(rng.integers(1, 10))  # m = 1 included: one probability for the whole region
    grids = rng.random((6, cells, cells)).astype(np.float32)
    for mask, grid, box in zip(paste_crop_masks(grids, boxes, info), grids, boxes, strict=True):
        assert (mask.to_array() != _paste_one_pixel_at_a_time(grid, box, info, size)).sum() <= 2
        assert mask.to_rle() == encode_rle(mask.to_array())


def test_a_full_grid_covers_the_crop_region_mapped_to_the_original_and_stays_in_the_image() -> None:
    info = LetterboxInfo(1280, 960, 0.25, 0.0, 40.0)  # 320 letterbox, 40 px bars above and below
    boxes = np.array([[100, 20, 200, 300], [-5, 30, 330, 290]], np.float32)  # the second spills out
    masks = paste_crop_masks(np.ones((2, 14, 14), np.float32), boxes, info)
    (x1, y1, x2, y2), _ = crop_regions(boxes, 320, 320).tolist()
    first = masks[0].to_array()
    cols = np.flatnonzero(first.any(axis=0))
    rows = np.flatnonzero(first.any(axis=1))
    assert cols[0] == math.ceil(x1 / 0.25 - 0.5) and cols[-1] == math.floor(x2 / 0.25 - 0.5)
    assert rows[0] == max(0, math.ceil((y1 - 40) / 0.25 - 0.5))
    assert rows[-1] == min(959, math.floor((y2 - 40) / 0.25 - 0.5))
    assert first[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert masks[1].to_array().all()  # the whole image, and nothing outside it (the frame is the image)


def test_an_empty_grid_or_a_box_without_area_gives_an_empty_mask() -> None:
    info = LetterboxInfo(100, 100, 0.64, 0.0, 0.0)
    masks = paste_crop_masks(np.zeros((1, 5, 5), np.float32), np.array([[0, 0, 30, 30]], np.float32), info)
    assert masks[0].area == 0 and masks[0].to_rle() == [10_000]
    flat = paste_crop_masks(np.ones((1, 5, 5), np.float32), np.array([[64, 10, 64, 40]], np.float32), info)
    assert flat[0].area == 0


def test_paste_refuses_grids_that_do_not_match_the_boxes() -> None:
    info = LetterboxInfo(10, 10, 6.4, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"\[N, m, m\]"):
        paste_crop_masks(np.ones((1, 4, 5), np.float32), np.zeros((1, 4), np.float32), info)
    with pytest.raises(ValueError, match="2 crop masks for 1 boxes"):
        paste_crop_masks(np.ones((2, 4, 4), np.float32), np.zeros((1, 4), np.float32), info)


# -- the attribute runner, the BLS call, the repository ------------------------------------------------


GROUPS = [len(g.labels) for g in LABELS.attribute_groups]


def test_onnx_attributes_reads_the_mask_head_from_the_graph(tmp_path: Path) -> None:
    masked = OnnxAttributes(write_attributes(tmp_path / "m.onnx", crop_size=16, group_sizes=GROUPS, mask_size=6),
                            OrtSettings(), num_attribute_labels=LABELS.num_attribute_labels)
    plain = OnnxAttributes(write_attributes(tmp_path / "p.onnx", crop_size=16, group_sizes=GROUPS),
                           OrtSettings(), num_attribute_labels=LABELS.num_attribute_labels)
    crops = np.random.default_rng(0).integers(0, 255, size=(3, 16, 16, 3), dtype=np.uint8)
    probs, masks = masked.classify_with_masks(crops)
    assert (masked.mask_size, plain.mask_size) == (6, 0)
    np.testing.assert_allclose(probs, plain.classify(crops), atol=1e-6)  # same seed, same heads
    np.testing.assert_allclose(masks, standin_mask_probs(crops, 6), atol=1e-6)
    with pytest.raises(ValueError, match="has no mask head"):
        plain.classify_with_masks(crops)


def test_openvino_attributes_read_the_mask_head_from_the_graph_file(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino runtime is optional (pip install openvino)")
    from fashionbox.core.openvino_runtime import OpenVinoAttributes

    # OpenVINO's sessions report no shapes: the mask size comes from the graph file.
    heads = OpenVinoAttributes(write_attributes(tmp_path / "m.onnx", crop_size=16, group_sizes=GROUPS, mask_size=6),
                               OrtSettings(), num_attribute_labels=LABELS.num_attribute_labels)
    crops = np.random.default_rng(1).integers(0, 255, size=(2, 16, 16, 3), dtype=np.uint8)
    _, masks = heads.classify_with_masks(crops)
    assert heads.mask_size == 6
    np.testing.assert_allclose(masks, standin_mask_probs(crops, 6), atol=1e-5)


def test_the_converter_reads_the_mask_size_from_the_graph_and_refuses_a_grid_it_cannot_size(
    tmp_path: Path,
) -> None:
    import onnx

    from fashionbox.converter.repository import attributes_mask_size

    path = write_attributes(tmp_path / "m.onnx", crop_size=16, group_sizes=GROUPS, mask_size=6)
    assert attributes_mask_size(path) == 6
    assert attributes_mask_size(write_attributes(tmp_path / "p.onnx", crop_size=16, group_sizes=GROUPS)) == 0
    model = onnx.load(str(path))
    (output,) = (o for o in model.graph.output if o.name == "masks")
    output.type.tensor_type.shape.dim[2].dim_param = "width"  # the config needs CROP_MASKS' dims
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="with a fixed m"):
        attributes_mask_size(path)


def test_a_bls_call_returns_the_extra_outputs_of_each_chunk(fake_pb_utils: _FakePbUtils) -> None:  # noqa: F811
    def bls(model: str, inputs: dict[str, NDArray[Any]]) -> _FakeBlsResponse:
        crops = inputs["CROPS"]
        outputs = {"ATTRIBUTE_PROBS": crops[:, 0, 0, :2].astype(np.float32),
                   "CROP_MASKS": crops[:, :, :, 0].astype(np.float32)}
        if crops[0, 0, 0, 0] == 4:
            del outputs["CROP_MASKS"]  # a model that does not make the extra output fails its chunk
        return _FakeBlsResponse(outputs)

    fake_pb_utils.bls = bls
    crops = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    chunks = call_model_chunked("attributes", input_name="CROPS", output_name="ATTRIBUTE_PROBS", array=crops,
                                max_batch_size=4, extra_outputs=("CROP_MASKS",))
    assert chunks[0].error is None and chunks[0].extras["CROP_MASKS"][:, 0, 0].tolist() == [0, 1, 2, 3]
    assert chunks[1].output is None and chunks[1].error is not None
    assert "returned no CROP_MASKS" in chunks[1].error.message


def test_repository_settings_refuse_a_negative_mask_size() -> None:
    from fashionbox.converter.repository import RepositorySettings

    with pytest.raises(ValueError, match="crop_mask_size"):
        RepositorySettings(crop_mask_size=-1)


def test_segmenting_configs_wire_the_detector_s_mask_tensors_into_postprocess() -> None:
    from fashionbox import contract
    from fashionbox.converter.repository import RepositorySettings, model_configs

    configs = model_configs(RepositorySettings(detector_masks=True, crop_mask_size=12), LABELS)
    detector_outputs = {o.name for o in configs[contract.DETECTOR_MODEL].output}
    postprocess_inputs = {i.name for i in configs[contract.POSTPROCESS_MODEL].input}
    wanted = {contract.DET_MASK_COEFFS.name, contract.DET_PROTOS.name}
    assert wanted <= detector_outputs and wanted <= postprocess_inputs
    steps = {s.model_name: s for s in configs[contract.ENSEMBLE_MODEL].ensemble_scheduling.step}
    assert wanted <= set(steps[contract.DETECTOR_MODEL].output_map.values())
    assert wanted <= set(steps[contract.POSTPROCESS_MODEL].input_map.values())
    parameters = configs[contract.POSTPROCESS_MODEL].parameters
    assert parameters["detector_masks"].string_value == "true" and parameters["crop_masks"].string_value == "true"
    crop_masks = {o.name: list(o.dims) for o in configs[contract.ATTRIBUTES_MODEL].output}[contract.CROP_MASKS.name]
    assert crop_masks == [12, 12]
    # ... and no mask tensor leaves the ensemble: masks travel inside DETECTIONS only.
    assert not wanted & {o.name for o in configs[contract.ENSEMBLE_MODEL].output}


# -- the result proto ---------------------------------------------------------------------------------


def test_build_image_detections_carries_each_mask_and_leaves_it_out_where_there_is_none() -> None:
    a = LABELS.num_attribute_labels
    full = np.zeros((4, 6), bool)
    full[1:3, 2:5] = True
    message = build_image_detections(
        width=6, height=4, boxes=[[2, 1, 5, 3], [0, 0, 1, 1]], scores=[0.9, 0.5], categories=[0, 1],
        attribute_scores=np.full((2, a), 0.1, np.float32), label_map=LABELS, model_version="t",
        masks=[encode_rle(full), None],
    )
    first, second = message.detections
    assert first.HasField("mask") and not second.HasField("mask")
    assert (first.mask.width, first.mask.height) == (6, 4)
    assert (decode_rle(list(first.mask.counts), 6, 4) == full).all()
    with pytest.raises(ValueError, match="sum to 23"):
        build_image_detections(width=6, height=4, boxes=[[0, 0, 1, 1]], scores=[0.5], categories=[0],
                               attribute_scores=np.zeros((1, a), np.float32), label_map=LABELS,
                               model_version="t", masks=[[20, 3]])
    with pytest.raises(ValueError, match="masks must have 1 entries"):
        build_image_detections(width=6, height=4, boxes=[[0, 0, 1, 1]], scores=[0.5], categories=[0],
                               attribute_scores=np.zeros((1, a), np.float32), label_map=LABELS,
                               model_version="t", masks=[])


# -- fashionbox eval -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes() -> list[EvalSample]:
    return heldout_samples(4, seed=11)


def _shifted_predictions(samples: list[EvalSample], seed: int) -> list[list[Prediction]]:
    """Each truth mask rolled sideways by a few pixels, with random scores, plus one stray prediction."""
    rng = np.random.default_rng(seed)
    out = []
    for sample in samples:
        preds = []
        for truth in sample.truth:
            assert truth.mask is not None
            moved = np.roll(decode_rle(truth.mask, sample.width, sample.height), int(rng.integers(0, 25)), axis=1)
            preds.append(Prediction(truth.box, truth.category, float(rng.random()), mask=tuple(encode_rle(moved))))
        stray = np.zeros((sample.height, sample.width), bool)
        stray[:40, :40] = True
        preds.append(Prediction((0.0, 0.0, 40.0, 40.0), sample.truth[0].category, 0.3, mask=tuple(encode_rle(stray))))
        out.append(preds)
    return out


def test_heldout_truth_masks_are_the_scene_instance_maps(scenes: list[EvalSample]) -> None:
    from fashionbox.synth import render_scene_with_instances
    from fashionbox.training.data import scene_seed

    _, instances = render_scene_with_instances(scene_seed(11, 0), label_map=LABELS)
    sample = scenes[0]
    assert sample.truth and all(t.mask is not None for t in sample.truth)
    for k, truth in enumerate(sample.truth):
        assert truth.mask is not None
        assert list(truth.mask) == _coco_counts(instances == k + 1)


def test_segm_map_equals_pycocotools(scenes: list[EvalSample]) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    predictions = _shifted_predictions(scenes, seed=3)
    ours = segm_metrics(scenes, predictions, LABELS)

    # The same evaluation built here from the uncompressed counts, through pycocotools alone.
    categories = {c.name: i + 1 for i, c in enumerate(LABELS.categories)}
    images, annotations, results = [], [], []
    for image_id, (sample, preds) in enumerate(zip(scenes, predictions, strict=True), start=1):
        h, w = sample.height, sample.width
        images.append({"id": image_id, "width": w, "height": h})
        for truth in sample.truth:
            assert truth.mask is not None
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": list(truth.mask)}, h, w)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                "category_id": categories[truth.category], "segmentation": rle,
                                "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle))})
        for p in preds:
            assert p.mask is not None
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": list(p.mask)}, h, w)
            results.append({"image_id": image_id, "category_id": categories[p.category], "score": p.score,
                            "segmentation": rle})
    truth_api = COCO()
    truth_api.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    truth_api.createIndex()
    evaluator = COCOeval(truth_api, truth_api.loadRes(results), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert 0.1 < ours["segm_map"] < 0.99  # a real mix of hits and misses, not a degenerate case
    assert ours["segm_map"] == pytest.approx(evaluator.stats[0], abs=1e-9)
    assert ours["segm_map50"] == pytest.approx(evaluator.stats[1], abs=1e-9)


def test_imaterialist_on_masks_counts_tp_fp_fn_per_threshold() -> None:
    width, height = 20, 10
    truth_mask = np.zeros((height, width), bool)
    truth_mask[:, :10] = True  # 100 px
    half = np.zeros_like(truth_mask)
    half[:, :7] = True  # IoU 0.7 with the truth
    sample = EvalSample("one", b"", width, height,
                        (GroundTruth((0, 0, 10, 10), "dress", {}, tuple(encode_rle(truth_mask))),))
    # Boxes are identical: on boxes it is a perfect hit; on masks a hit only up to IoU 0.7.
    preds = [[Prediction((0, 0, 10, 10), "dress", 0.9, mask=tuple(encode_rle(half)))]]
    assert imaterialist_score([sample], preds) == pytest.approx(1.0)
    # thresholds 0.5 .. 0.70 hit (5 of 10): 1/1 each; the rest 0 / (1 + 1 - 0)
    assert imaterialist_mask_score([sample], preds) == pytest.approx(0.5)


def test_evaluate_reports_mask_metrics_only_when_predictions_carry_masks(scenes: list[EvalSample]) -> None:
    with_masks = _shifted_predictions(scenes, seed=4)
    without = [[Prediction(p.box, p.category, p.score) for p in preds] for preds in with_masks]
    assert has_masks(scenes, with_masks) and not has_masks(scenes, without)
    report = evaluate(scenes, with_masks, LABELS)
    assert {"segm_map", "segm_map50", "imaterialist_mask_score"} <= report.keys()
    assert 0.0 < report["imaterialist_mask_score"] < report["imaterialist_score"]  # shifted masks, exact boxes
    assert "segm_map" not in evaluate(scenes, without, LABELS)
