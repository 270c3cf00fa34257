"""The detector's image-level context branch: zero at the start, one logit per class for every
location, in the checkpoint, the ONNX graph, a class subset and the hard-negative warm restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fashionbox.commands.cli import main
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.export import compare_detector, export_detector_onnx
from fashionbox.models import (
    DetectorConfig,
    FashionDetector,
    checkpoint_metadata,
    default_weights,
    load_detector,
    save_checkpoint,
)
from fashionbox.models.nms import NmsSettings
from fashionbox.training.coco import CocoTrainSettings, _starting_detector
from fashionbox.training.negatives import NegativeSettings, train_detector_negatives

torch.set_num_threads(1)


def _tiny(context: int = 0, classes: int = 3) -> FashionDetector:
    torch.manual_seed(0)
    return FashionDetector(DetectorConfig(num_classes=classes, input_size=64, global_context=context)).eval()


def _pixels(batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8))


def _randomise(detector: FashionDetector, seed: int = 1) -> FashionDetector:
    assert detector.context is not None
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in detector.context.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return detector


def test_a_detector_gaining_the_branch_serves_exactly_what_it_served_before() -> None:
    detector, _ = load_detector(default_weights("detector"))
    if detector.context is not None:  # the shipped one may carry a branch: start from one without
        detector = _tiny()
    pixels = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (2, detector.config.input_size,
                                                                         detector.config.input_size, 3),
                                                                dtype=np.uint8))
    with torch.no_grad():
        before = detector(pixels)
        after = detector.with_context(16)(pixels)

    assert detector.config.global_context == 16 and detector.context is not None
    assert torch.equal(before.scores, after.scores) and torch.equal(before.boxes, after.boxes)
    assert not detector.context.cls.weight.any() and not detector.context.cls.bias.any()
    assert detector.with_context(16) is detector  # the same width again: kept
    with pytest.raises(ValueError, match="already has a context branch of 16"):
        detector.with_context(8)


def test_the_branch_adds_one_logit_per_class_to_every_location_from_the_whole_image() -> None:
    plain = _tiny()
    with_context = _randomise(_tiny().with_context(8))
    pixels = _pixels()
    with torch.no_grad():
        base = plain(pixels)
        out = with_context(pixels)
        features = with_context.neck(with_context.backbone((pixels.permute(0, 3, 1, 2).float() - with_context.mean)
                                                           / with_context.std))
        pooled = torch.cat([torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1) for f in features], dim=1)
        assert with_context.context is not None
        expected = with_context.context.cls(torch.relu(with_context.context.hidden(pooled)))  # [B, C]

    shift = out.cls_logits - base.cls_logits  # [B, N, C]
    assert torch.allclose(shift, expected[:, None, :].expand_as(shift), atol=1e-5)
    assert float(expected.abs().min()) > 1e-3  # it does move the logits
    assert torch.equal(out.boxes, base.boxes) and torch.equal(out.ctr_logits, base.ctr_logits)
    # Each photo gets its own context, from its own pixels.
    assert not torch.allclose(expected[0], expected[1])


def test_the_width_travels_in_the_config_and_older_configs_have_no_branch() -> None:
    config = DetectorConfig(num_classes=3, input_size=64, global_context=32)
    assert DetectorConfig.from_json(config.to_json()) == config

    older = json.loads(DetectorConfig(num_classes=3, input_size=64).to_json())
    del older["global_context"]
    assert DetectorConfig.from_json(json.dumps(older)).global_context == 0
    assert FashionDetector(DetectorConfig.from_json(json.dumps(older))).context is None
    with pytest.raises(ValueError, match="global_context"):
        DetectorConfig(num_classes=3, input_size=64, global_context=-1)
    with pytest.raises(ValueError, match="hidden width >= 1"):
        _tiny().with_context(0)


def test_a_checkpoint_and_the_onnx_graph_carry_the_branch(tmp_path: Path) -> None:
    detector = _randomise(_tiny().with_context(8))
    labels = default_label_map()
    path = tmp_path / "detector.safetensors"
    save_checkpoint(path, detector, kind="detector", config_json=detector.config.to_json(), label_map=labels)
    loaded, _ = load_detector(path)
    with torch.no_grad():
        assert torch.equal(loaded(_pixels()).scores, detector(_pixels()).scores)

    nms = NmsSettings(score_threshold=0.05)
    onnx = export_detector_onnx(loaded, tmp_path / "detector.onnx", nms=nms)
    report = compare_detector(loaded, onnx, [_pixels(3, seed=5).numpy()], nms)
    assert report.max_abs_error["scores"] < 1e-5 and report.max_abs_error["nms_count_mismatch"] == 0


def test_a_class_subset_keeps_the_branch_rows_of_its_classes(tmp_path: Path) -> None:
    labels = default_label_map()
    detector = _randomise(FashionDetector(DetectorConfig(num_classes=labels.num_categories)).with_context(8))
    path = tmp_path / "start.safetensors"
    save_checkpoint(path, detector, kind="detector", config_json=detector.config.to_json(), label_map=labels)
    from fashionbox.training.coco import subset_label_map

    subset_labels = subset_label_map(labels, ["pants", "dress"])
    settings = CocoTrainSettings(annotations=tmp_path / "a.json", images=tmp_path, out_dir=tmp_path, init=str(path))
    subset = _starting_detector(settings, subset_labels)

    rows = [labels.category_index(n) for n in subset_labels.category_names]
    assert subset.context is not None and detector.context is not None
    assert torch.equal(subset.context.cls.weight, detector.context.cls.weight[rows])
    assert torch.equal(subset.context.cls.bias, detector.context.cls.bias[rows])
    assert torch.equal(subset.context.hidden.weight, detector.context.hidden.weight)


def test_the_warm_restart_adds_the_branch_trains_it_and_resumes_with_it(tmp_path: Path) -> None:
    labels = default_label_map()
    start = FashionDetector(DetectorConfig(num_classes=labels.num_categories))
    init = tmp_path / "init.safetensors"
    save_checkpoint(init, start, kind="detector", config_json=start.config.to_json(), label_map=labels)
    settings = NegativeSettings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", init=init, scenes=8, batch=4,
                                steps=2, warmup=1, lr=1e-3, checkpoint_every=1, threads=1, global_context=8)
    path = train_detector_negatives(settings)

    trained, _ = load_detector(path)
    assert trained.config.global_context == 8 and trained.context is not None
    assert trained.context.cls.weight.abs().sum() > 0  # trained from zero
    assert json.loads(checkpoint_metadata(path)["train_settings"])["global_context"] == 8

    from dataclasses import replace

    resumed = train_detector_negatives(replace(settings, steps=3, resume=True, global_context=0))
    again, _ = load_detector(resumed)
    assert checkpoint_metadata(resumed)["step"] == "3" and again.config.global_context == 8
    with pytest.raises(ValueError, match="global_context"):
        NegativeSettings(out_dir=tmp_path, cache_dir=tmp_path, init=init, global_context=-2)


def test_train_refuses_a_context_width_other_than_the_one_init_has(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    labels = default_label_map()
    start = FashionDetector(DetectorConfig(num_classes=labels.num_categories)).with_context(8)
    init = tmp_path / "init.safetensors"
    save_checkpoint(init, start, kind="detector", config_json=start.config.to_json(), label_map=labels)
    argv = ["train", "--stage", "detector", "--distractors", "0.3", "--init", str(init), "--scenes", "8",
            "--detector-steps", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--threads", "1", "--global-context", "4"]
    assert main(argv) == 2
    assert "already has a context branch of 8 units, not --global-context 4" in capsys.readouterr().err
