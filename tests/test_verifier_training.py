"""``fashionbox train --stage verifier``: the verifier head (the second stage) fitted for one detector.

Fast: a tiny random detector (its class biases raised so it finds "garments" everywhere) and a tiny
attribute classifier, built here; 24 scenes of the mixed cache and 16 fresh negatives at 64 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fashionbox.commands.cli import main
from fashionbox.contract.labels import default_label_map
from fashionbox.models import (
    AttributeClassifier,
    AttributeConfig,
    DetectorConfig,
    FashionDetector,
    checkpoint_metadata,
    file_sha256,
    load_attributes,
    save_checkpoint,
)
from fashionbox.models.pipeline import InProcessPipeline
from fashionbox.training.verifier import (
    FRESH_FIRST,
    VerifierRows,
    VerifierSettings,
    fit_verifier,
    label_detections,
    scene_seeds,
    train_verifier,
)

torch.set_num_threads(1)
LABELS = default_label_map()
C = len(LABELS.categories)
SIZE = 64
TINY = AttributeConfig(group_sizes=tuple(len(g.labels) for g in LABELS.attribute_groups), crop_size=32,
                       stem_channels=8, stages=((1, 8, 1, 1), (2, 8, 1, 2), (2, 16, 1, 2), (2, 16, 1, 2)),
                       embedding=16, dropout=0.0, mask_size=16, mask_channels=(8, 8, 8, 8), retrieval_dim=8,
                       head_hidden=16)


def _checkpoints(folder: Path) -> tuple[Path, Path]:
    """A tiny random detector whose class biases make it fire (scores about 0.3-0.6) and a tiny attribute
    checkpoint with mask and embedding heads."""
    config = DetectorConfig(num_classes=C, input_size=SIZE, stem_channels=8,
                            stages=((1, 8, 1, 1), (2, 8, 1, 2), (2, 8, 1, 2), (2, 8, 1, 2), (2, 8, 1, 2)),
                            neck_channels=8, head_convs=1)
    torch.manual_seed(0)
    detector = FashionDetector(config)
    with torch.no_grad():
        for name, parameter in detector.named_parameters():
            if name.endswith(".cls.bias"):
                parameter.uniform_(-1.0, 2.0)
    detector_path = folder / "detector.safetensors"
    save_checkpoint(detector_path, detector, kind="detector", config_json=config.to_json(), label_map=LABELS)
    base_path = folder / "base" / "attributes.safetensors"
    save_checkpoint(base_path, AttributeClassifier(TINY).eval(), kind="attributes", config_json=TINY.to_json(),
                    label_map=LABELS, extra={"train_settings": "{\"tiny\": true}"})
    return detector_path, base_path


def test_train_stage_verifier_adds_a_head_for_its_detector_and_keeps_every_other_tensor(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    detector, base = _checkpoints(tmp_path)
    out, cache = tmp_path / "out", tmp_path / "cache"

    assert main(["train", "--stage", "verifier", "--verifier-detector", str(detector), "--attributes-base", str(base),
                 "--scenes", "24", "--verifier-negatives", "16", "--verifier-epochs", "2", "--threads", "1",
                 "--cache-dir", str(cache), "--out", str(out)]) == 0

    printed = capsys.readouterr().out
    path = out / "attributes.safetensors"
    assert f"attributes: {path}" in printed and "validation BCE" in printed
    model, labels = load_attributes(path)
    original, _ = load_attributes(base)
    assert labels.to_json() == LABELS.to_json()
    assert model.verifier_head is not None and model.config.verifier_classes == C
    assert model.config.verifier_hidden == 5 * 64  # five members averaged side by side
    assert model.config.verifier_detector == file_sha256(detector)
    state = model.state_dict()
    kept = {k: v for k, v in state.items() if not k.startswith("verifier_head.")}
    assert kept.keys() == original.state_dict().keys()
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in kept.items())
    crops = torch.randint(0, 256, (5, TINY.crop_size, TINY.crop_size, 3), dtype=torch.uint8)
    offsets = model.outputs(crops)["score_offsets"]
    assert offsets.shape == (5, C) and bool((offsets <= 0).all())
    assert not torch.equal(state["verifier_head.mean"], torch.zeros_like(state["verifier_head.mean"]))

    meta = checkpoint_metadata(path)
    recipe = json.loads(meta["verifier_train_settings"])
    assert recipe["stage"] == "verifier" and recipe["scenes"] == 24 and recipe["negatives"] == 16
    assert recipe["epochs"] == 2 and recipe["hidden"] == 64 and recipe["weight_decay"] == 0.1
    assert recipe["fresh_first"] == FRESH_FIRST
    assert meta["verifier_detector_sha256"] == file_sha256(detector)
    assert meta["verifier_base_sha256"] == file_sha256(base)
    assert meta["train_settings"] == "{\"tiny\": true}"  # the base's own recipe is kept
    rows = json.loads(meta["verifier_rows"])
    assert rows["scene_detections"] > 0 and rows["fresh_detections"] > 0
    assert rows["train"] + rows["validation"] == rows["detections"]
    assert {"detector_alone", "with_verifier", "by_epoch"} <= json.loads(meta["verifier_validation_bce"]).keys()

    # A refit over the checkpoint just written (its head replaced), with other head settings, reads the
    # cached features: the detector does not run again.
    def no_detector(*args: object, **kwargs: object) -> InProcessPipeline:
        raise AssertionError("the features should come from the cache")

    monkeypatch.setattr(InProcessPipeline, "torch_reference", no_detector)
    again = train_verifier(VerifierSettings(out_dir=tmp_path / "again", cache_dir=cache, detector=detector, base=path,
                                            scenes=24, negatives=16, epochs=1, hidden=8, threads=1))
    refit, _ = load_attributes(again)
    assert refit.config.verifier_hidden == 5 * 8 and refit.config.verifier_classes == C
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in refit.state_dict().items()
               if not k.startswith("verifier_head."))
    assert json.loads(checkpoint_metadata(again)["verifier_rows"])["detections"] == rows["detections"]
    assert len(list(cache.glob("verifier-features-*.npz"))) == 1


def test_fitting_lowers_the_validation_loss_on_separable_features() -> None:
    rng = np.random.default_rng(0)
    n, d = 1200, 8
    right = rng.random(n) < 0.5
    features = rng.normal(size=(n, d)).astype(np.float32)
    features[:, 0] += np.where(right, 2.0, -2.0)  # the crop tells right from wrong; the score does not
    rows = VerifierRows(features, np.full(n, 0.8, np.float32), rng.integers(0, 3, n).astype(np.int64), right,
                        np.arange(n, dtype=np.int64))

    fit = fit_verifier(rows, categories=3, hidden=16, epochs=15, lr=1e-2, weight_decay=0.1, seed=1)

    assert fit.validation_rows == n // 5 and fit.train_rows == n - n // 5
    assert fit.bce_verifier < 0.6 * fit.bce_detector, (fit.bce_verifier, fit.bce_detector)
    assert [e for e, _ in fit.history] == [5, 10, 15]
    with torch.no_grad():
        offsets = fit.head(torch.from_numpy(features))
    assert bool((offsets <= 0).all())
    # It lowers the wrong detections' scores, and leaves the right ones about where they were.
    assert float(offsets[~right].mean()) < -2.0 < float(offsets[right].mean())


def test_a_detection_is_right_on_a_garment_of_its_category_by_iou_half() -> None:
    garments = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 4], [22, 22, 40, 40], [50, 50, 60, 60]], np.float32)
    classes = np.array([1, 2, 1, 3, 1])

    right = label_detections(boxes, classes, garments, np.array([1, 3]))

    assert right.tolist() == [True, False, False, True, False]
    assert label_detections(boxes, classes, np.zeros((0, 4)), np.zeros(0)).tolist() == [False] * 5


def test_held_out_seeds_and_overlapping_scene_ranges_are_refused(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    common = {"out_dir": tmp_path, "cache_dir": tmp_path, "detector": tmp_path / "d", "base": tmp_path / "a"}
    with pytest.raises(ValueError, match=r"held-out dataset seed\(s\) \[9\]"):
        VerifierSettings(seed=9, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scenes must be in"):
        VerifierSettings(scenes=FRESH_FIRST + 1, **common)  # type: ignore[arg-type]
    seeds = scene_seeds(1, 3, 2)
    assert seeds.tolist() == [1_000_003, 1_000_004, 1_000_005, 1_000_003 + FRESH_FIRST, 1_000_004 + FRESH_FIRST]

    assert main(["train", "--stage", "verifier", "--seed", "9", "--out", str(tmp_path / "out")]) == 2
    assert "held-out dataset seed(s) [9]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--stage", "verifier", "--stage", "detector"], "give it without other --stage"),
    (["--stage", "detector", "--stage", "verifier"], "give it without other --stage"),
    (["--stage", "verifier", "--distractors", "0.3"], "--distractors do not apply to --stage verifier"),
    (["--stage", "verifier", "--coco", "x.json"], "--coco do not apply to --stage verifier"),
    (["--stage", "verifier", "--init", "other.safetensors"], "--init do not apply"),
    (["--stage", "detector", "--verifier-epochs", "3"], "--verifier-epochs only apply to --stage verifier"),
    (["--stage", "verifier", "--verifier-detector", "missing.safetensors"], "no checkpoint there"),
    (["--stage", "detector", "--distractor-kinds", "all"], "--distractor-kinds choose the distractors of"),
    (["--stage", "detector", "--closeups", "0.3"], "--closeups choose the distractors of"),
    (["--stage", "verifier", "--closeups", "1.5"], "DistractorConfig.closeup_probability must be in [0, 1]"),
    (["--stage", "verifier", "--distractor-kinds", "person,spaceship"], "unknown ['spaceship']"),
    (["--stage", "detector", "--distractors", "0.3", "--distractor-kinds", "spaceship"], "unknown ['spaceship']"),
])
def test_train_refuses_what_does_not_go_with_the_verifier_stage(argv: list[str], message: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *argv, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_averaged_members_give_exactly_the_mean_of_their_outputs() -> None:
    from fashionbox.models.attributes import VerifierHead
    from fashionbox.training.verifier import average_heads

    torch.manual_seed(7)
    heads = [VerifierHead(10, 4, 3).eval() for _ in range(3)]
    for head in heads:
        with torch.no_grad():
            head.mean.normal_()
            head.std.uniform_(0.5, 2.0)
            head.mlp[3].bias.normal_(0.0, 3.0)  # type: ignore[union-attr]
    for head in heads[1:]:  # one standardisation, as when they are fitted on the same rows
        head.mean.copy_(heads[0].mean)
        head.std.copy_(heads[0].std)
    merged = average_heads(heads)
    x = torch.randn(6, 10)
    with torch.no_grad():
        expected = torch.stack([h.mlp((x - h.mean) / h.std) for h in heads]).mean(0)
        got = merged.mlp((x - merged.mean) / merged.std)
    assert merged.mlp[0].weight.shape == (12, 10)  # type: ignore[union-attr]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert bool((merged(x) <= 0).all())


def test_the_fresh_negatives_kinds_are_part_of_the_recipe_and_of_the_feature_cache_key(tmp_path: Path) -> None:
    from fashionbox.synth.distractors import DEFAULT_DISTRACTOR_KINDS, DISTRACTOR_KINDS
    from fashionbox.training.verifier import _features_path, _render_empty

    common = {"out_dir": tmp_path, "cache_dir": tmp_path, "detector": tmp_path / "d", "base": tmp_path / "a"}
    default = VerifierSettings(**common)  # type: ignore[arg-type]
    every = VerifierSettings(distractor_kinds=DISTRACTOR_KINDS, **common)  # type: ignore[arg-type]
    classifier = AttributeClassifier(TINY).eval()

    def key(settings: VerifierSettings) -> tuple[Path, dict[str, object]]:
        return _features_path(settings, "ab" * 32, classifier, SIZE, 0.3, LABELS)

    assert default.distractor_kinds == DEFAULT_DISTRACTOR_KINDS
    assert "distractor_kinds" not in key(default)[1]  # the caches written before the choice stay valid
    assert key(every)[1]["distractor_kinds"] == list(DISTRACTOR_KINDS) and key(every)[0] != key(default)[0]
    assert json.loads(every.to_json())["distractor_kinds"] == list(DISTRACTOR_KINDS)
    closeups = VerifierSettings(closeups=0.5, **common)  # type: ignore[arg-type]
    assert key(closeups)[1]["closeups"] == 0.5 and key(closeups)[0] not in (key(default)[0], key(every)[0])
    seed = scene_seeds(1, 0, 1)[0]
    plain = _render_empty((int(seed), SIZE, LABELS.to_json(), DEFAULT_DISTRACTOR_KINDS, 0.0))
    shapes = _render_empty((int(seed), SIZE, LABELS.to_json(), ("shapes",), 0.0))
    closeup = _render_empty((int(seed), SIZE, LABELS.to_json(), DEFAULT_DISTRACTOR_KINDS, 1.0))
    assert not np.array_equal(plain, closeup)
    assert plain.shape == shapes.shape == (SIZE, SIZE, 3) and not np.array_equal(plain, shapes)
