"""bf16 is held to quality: on held-out generated scenes, box mAP and attribute accuracy within 0.5 points.

bf16 keeps 8 bits of mantissa, so it cannot match fp32 answer for answer: scores move by about
0.01 and detections that sit at the score threshold flip (issue 23). What must not move is quality.
The same exported graphs run the whole in-process pipeline (decode, letterbox, detect, crop,
classify) three ways on 100 held-out scenes (seed 7, ``fashionbox eval``'s default), scored by the
house's evaluation code: ONNX Runtime fp32, OpenVINO fp32 (the same figures) and OpenVINO bf16
(no more than 0.5 points below; being better is no failure). 30 scenes were too small a set: one
flipped detection moved mAP by up to about 1 point (the hard-negative detector of issue 18: 0.97
points on the first 30 scenes, within the bar on 100 and 200), so the test uses 100 and the
benchmark (tests/benchmarks/bench_runtimes.py) measures the same on more scenes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fashionbox.commands.evaluation import (
    EvalSample,
    attribute_accuracy,
    coco_metrics,
    heldout_samples,
    predictions_from_result,
)
from fashionbox.contract.labels import LabelMap
from fashionbox.converter import FAMILIES, ConvertOptions, family_nms
from fashionbox.converter.export import export_attributes_onnx
from fashionbox.core.openvino_runtime import OpenVinoAttributes, OpenVinoDetector, host_cpu
from fashionbox.core.serving import OnnxAttributes, OnnxDetector, OrtSettings
from fashionbox.models import default_weights, load_attributes
from fashionbox.models.pipeline import InProcessPipeline

QUALITY_POINTS = 0.005
"""0.5 points of box mAP or attribute accuracy (both fractions here)."""
SCENES, SEED = 100, 7


def _export(folder: Path) -> tuple[Path, Path, LabelMap, int, int, int]:
    family = FAMILIES["fashionbox"]()
    detector, label_map = family.load_detector(default_weights("detector"))
    classifier, _ = load_attributes(default_weights("attributes"))
    nms = family_nms(family, ConvertOptions(out=folder), detector)
    detector_onnx = family.export_detector(detector, folder / "detector.onnx", nms=nms, opset=17)
    attributes_onnx = export_attributes_onnx(classifier, folder / "attributes.onnx", opset=17)
    return (detector_onnx, attributes_onnx, label_map, nms.max_detections, family.input_size(detector),
            classifier.config.crop_size)


def _quality(pipeline: InProcessPipeline, samples: list[EvalSample]) -> tuple[float, float, int]:
    """Box mAP@[.5:.95], attribute accuracy pooled over groups, and the garments it was scored on."""
    predictions = []
    for sample in samples:
        (result,) = pipeline.run([sample.data])
        assert not isinstance(result, Exception)
        predictions.append(predictions_from_result(result, pipeline.label_map))
    box_map = coco_metrics(samples, predictions, pipeline.label_map)["bbox_map"]
    groups = attribute_accuracy(samples, predictions, pipeline.label_map).values()
    matched = sum(int(g["matched"]) for g in groups)
    return box_map, sum(g["accuracy"] * g["matched"] for g in groups if g["matched"]) / matched, matched


@pytest.mark.skipif(not host_cpu().has_bf16, reason="bf16 needs AMX or AVX512-BF16 (tests/test_openvino.py "
                                                    "checks that it is refused here)")
def test_bf16_keeps_box_map_and_attribute_accuracy_within_half_a_point_of_fp32(tmp_path: Path) -> None:
    detector_onnx, attributes_onnx, labels, max_detections, size, crop = _export(tmp_path)
    samples = heldout_samples(SCENES, seed=SEED, label_map=labels)
    threads = OrtSettings()
    a = labels.num_attribute_labels

    def pipeline(detector: OnnxDetector, heads: OnnxAttributes) -> InProcessPipeline:
        return InProcessPipeline(detector.detect, heads.classify, labels, size, crop)

    onnxruntime = _quality(pipeline(OnnxDetector(detector_onnx, threads, max_detections=max_detections),
                                    OnnxAttributes(attributes_onnx, threads, num_attribute_labels=a)), samples)
    fp32 = _quality(pipeline(
        OpenVinoDetector(detector_onnx, threads, max_detections=max_detections, precision="fp32"),
        OpenVinoAttributes(attributes_onnx, threads, num_attribute_labels=a, precision="fp32")), samples)
    bf16 = _quality(pipeline(
        OpenVinoDetector(detector_onnx, threads, max_detections=max_detections, precision="bf16"),
        OpenVinoAttributes(attributes_onnx, threads, num_attribute_labels=a, precision="bf16")), samples)

    assert fp32 == pytest.approx(onnxruntime, abs=1e-9)  # OpenVINO fp32 scores exactly as ONNX Runtime
    assert onnxruntime[0] > 0.5 and onnxruntime[2] >= SCENES, "the scenes must hold garments to score"
    assert bf16[0] >= fp32[0] - QUALITY_POINTS, (bf16, fp32)
    assert bf16[1] >= fp32[1] - QUALITY_POINTS, (bf16, fp32)
