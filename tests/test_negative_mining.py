"""Hard-negative mining for the detector's warm restart: which scenes it scores, which it keeps,
how the batches draw them, that it never touches a held-out seed, and its CLI flags.

Fast: a hand-made scene cache of random pixels and a tiny detector; nothing is rendered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fashionbox.commands.cli import main
from fashionbox.contract.labels import default_label_map
from fashionbox.models import DetectorConfig, FashionDetector, save_checkpoint
from fashionbox.models.detector import DetectorOutputs
from fashionbox.training.data import SceneCache, scene_seed
from fashionbox.training.negatives import (
    HELDOUT_DATASETS,
    SCENE_KINDS,
    NegativeSettings,
    _draw,
    check_training_seeds,
    false_positive_scores,
    mining_candidates,
    select_hardest,
    train_detector_negatives,
)

torch.set_num_threads(1)
SIZE = 64


def _cache(folder: Path, kinds: list[str], boxes: list[list[list[float]]], seed: int = 0) -> SceneCache:
    """A scene cache as ``build_mixed_cache`` writes it, with random pixels and the given boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(folder / "pixels.npy", rng.integers(0, 256, (len(kinds), SIZE, SIZE, 3), dtype=np.uint8))
    flat = [b for scene in boxes for b in scene]
    np.save(folder / "boxes.npy", np.array(flat, dtype=np.float32).reshape(-1, 4))
    np.save(folder / "classes.npy", np.zeros(len(flat), dtype=np.int64))
    np.save(folder / "attributes.npy", np.full((len(flat), len(default_label_map().attribute_groups)), -1,
                                               dtype=np.int64))
    np.save(folder / "offsets.npy", np.cumsum([0] + [len(s) for s in boxes]).astype(np.int64))
    np.save(folder / "kinds.npy", np.array([SCENE_KINDS.index(k) for k in kinds], dtype=np.int64))
    return SceneCache(folder)


class _FixedDetector(torch.nn.Module):
    """Returns the same two boxes and scores for every image: one on a garment, one elsewhere."""

    def __init__(self, boxes: list[list[float]], scores: list[float]) -> None:
        super().__init__()
        self.boxes = torch.tensor(boxes)
        self.scores = torch.tensor(scores)

    def forward(self, pixels: torch.Tensor) -> DetectorOutputs:
        b = pixels.shape[0]
        n = self.boxes.shape[0]
        scores = torch.stack([self.scores, self.scores * 0.5])  # two classes: the first is the larger
        empty = torch.zeros(b, n)
        return DetectorOutputs(self.boxes.expand(b, -1, -1), scores.expand(b, -1, -1), empty[..., None], empty,
                               empty)


def test_the_false_score_ignores_boxes_on_a_garment_and_takes_every_box_of_an_empty_scene(tmp_path: Path) -> None:
    cache = _cache(tmp_path, ["distractors", "empty", "distractors"],
                   [[[0, 0, 20, 20]], [], [[40, 40, 60, 60]]])
    model = _FixedDetector([[0, 0, 20, 20], [40, 40, 60, 60]], [0.9, 0.4])
    model.train()

    scores = false_positive_scores(model, cache, np.array([0, 1, 2]), batch=2)

    # Scene 0: the 0.9 box lies on its garment, so its worst mistake is the 0.4 box; scene 1 has no
    # garment: 0.9; scene 2's garment is under the 0.4 box: 0.9.
    np.testing.assert_allclose(scores, [0.4, 0.9, 0.9], rtol=1e-6)
    assert model.training  # the mode it was in comes back


def test_a_box_overlapping_a_garment_by_less_than_the_iou_is_a_false_positive(tmp_path: Path) -> None:
    cache = _cache(tmp_path, ["distractors"], [[[0, 0, 20, 20]]])
    model = _FixedDetector([[10, 0, 30, 20], [40, 40, 60, 60]], [0.8, 0.3])  # IoU 1/3 with the garment

    assert false_positive_scores(model, cache, np.array([0]))[0] == pytest.approx(0.8)
    assert false_positive_scores(model, cache, np.array([0]), iou=0.3)[0] == pytest.approx(0.3)


def test_the_hardest_share_is_kept_hardest_first_ties_by_index() -> None:
    indices = np.array([3, 5, 8, 9, 12, 20, 21, 30], dtype=np.int64)
    scores = np.array([0.1, 0.7, 0.2, 0.9, 0.7, 0.05, 0.3, 0.6], dtype=np.float32)

    assert select_hardest(indices, scores, 0.25).tolist() == [9, 5]
    assert select_hardest(indices, scores, 0.5).tolist() == [9, 5, 12, 30]
    assert select_hardest(indices, scores, 0.01).tolist() == [9]  # at least one
    assert select_hardest(indices, scores, 1.0).tolist() == [9, 5, 12, 30, 21, 8, 3, 20]
    with pytest.raises(ValueError, match="indices but"):
        select_hardest(indices, scores[:3], 0.5)


def test_candidates_are_only_negative_scenes(tmp_path: Path) -> None:
    kinds = ["normal", "distractors", "empty", "normal", "empty", "distractors", "normal", "empty"]
    cache = _cache(tmp_path, kinds, [[[0, 0, 9, 9]] if k != "empty" else [] for k in kinds])

    some = mining_candidates(cache, 1, 3, np.random.default_rng(0))
    every = mining_candidates(cache, 1, 100, np.random.default_rng(0))

    assert len(some) == 3 and set(some.tolist()) <= {1, 2, 4, 5, 7}
    assert every.tolist() == [1, 2, 4, 5, 7]


@pytest.mark.parametrize("dataset", sorted(HELDOUT_DATASETS))
def test_mining_never_draws_a_held_out_seed(dataset: int, tmp_path: Path) -> None:
    cache = _cache(tmp_path, ["empty", "distractors"], [[], [[0, 0, 9, 9]]])

    with pytest.raises(ValueError, match="held-out dataset seed"):
        check_training_seeds([scene_seed(1, 0), scene_seed(dataset, 5)])
    with pytest.raises(ValueError, match="held-out dataset seed"):
        mining_candidates(cache, dataset, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="held-out dataset seed"):
        NegativeSettings(out_dir=tmp_path, cache_dir=tmp_path, init=tmp_path, seed=dataset, mine_negatives=10)
    check_training_seeds([scene_seed(1, i) for i in range(0, 1_000_003, 50_000)])  # training seed 1: fine


def test_the_held_out_datasets_are_the_benchmarks_seeds() -> None:
    # bench_quality / test_end_to_end (7), bench_false_positives (9), bench_threshold's validation (11, 13):
    # if a benchmark's default seed moves, HELDOUT_DATASETS must move with it.
    benchmarks = Path(__file__).resolve().parent / "benchmarks"
    threshold = (benchmarks / "bench_threshold.py").read_text()
    false_positives = (benchmarks / "bench_false_positives.py").read_text()
    end_to_end = (Path(__file__).resolve().parent / "test_end_to_end.py").read_text()
    assert '"--validation", default="11,13"' in threshold and '"--test", type=int, default=7' in threshold
    assert '"--negative-seed", type=int, default=9' in false_positives
    assert "HELDOUT_SEED = 7" in end_to_end
    assert set(HELDOUT_DATASETS) == {7, 9, 11, 13}


def test_a_batch_takes_its_share_from_the_mined_scenes_and_never_repeats_one() -> None:
    rng = np.random.default_rng(0)
    mined = np.array([100, 101, 102, 103, 104, 105], dtype=np.int64)
    for _ in range(20):
        batch = _draw(rng, 500, 16, mined, 0.25)
        assert len(batch) == 16 and len(set(batch.tolist())) == 16
        assert np.isin(batch[:4], mined).all()
    # Without mined scenes (or a zero share) the draw is the plain uniform one.
    assert _draw(np.random.default_rng(3), 500, 16, mined[:0], 0.25).tolist() == \
        np.random.default_rng(3).choice(500, 16, replace=False).tolist()
    assert len(_draw(rng, 500, 16, mined[:2], 0.5)) == 16  # fewer mined than the share: all of them


def test_a_warm_restart_with_mining_records_each_pass(tmp_path: Path) -> None:
    init = _tiny_init(tmp_path)
    kinds = ["normal", "distractors", "empty", "empty", "normal", "distractors", "empty", "normal"]
    cache = _cache(tmp_path / "cache", kinds, [[[4, 4, 40, 50]] if k != "empty" else [] for k in kinds])
    settings = NegativeSettings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", init=init, scenes=8,
                                batch=4, steps=3, warmup=1, lr=1e-4, input_size=SIZE, threads=1,
                                mine_negatives=4, mine_keep=0.5, mine_share=0.5, mine_every=2)

    path = train_detector_negatives(settings, cache=cache)

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    passes = json.loads(metadata["mining"])
    assert [p["step"] for p in passes] == [0.0, 2.0] and all(p["scored"] == 4.0 for p in passes)
    recipe = json.loads(metadata["train_settings"])
    assert recipe["mine_negatives"] == 4 and recipe["mine_share"] == 0.5 and recipe["mine_every"] == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--stage", "detector", "--mine-negatives", "100"], "give --distractors"),
    (["train", "--stage", "detector", "--distractors", "0.3", "--mine-negatives", "100", "--mine-keep", "0"],
     "mine_keep must be in (0, 1]"),
    (["train", "--stage", "detector", "--distractors", "0.3", "--mine-negatives", "100", "--seed", "9"],
     "held-out dataset seed"),
])
def test_train_refuses_bad_mining_flags_with_a_message(argv: list[str], message: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def _tiny_init(tmp_path: Path) -> Path:
    label_map = default_label_map()
    config = DetectorConfig(num_classes=len(label_map.categories), input_size=SIZE, stem_channels=8,
                            stages=((1, 8, 1, 1), (2, 8, 1, 2), (2, 8, 1, 2), (2, 8, 1, 2), (2, 8, 1, 2)),
                            neck_channels=8, head_convs=1)
    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_checkpoint(init, FashionDetector(config), kind="detector", config_json=config.to_json(),
                    label_map=label_map, extra={"train_settings": "{}"})
    return init


def test_a_resumed_run_keeps_the_mining_record_and_mines_where_it_resumes(tmp_path: Path) -> None:
    init = _tiny_init(tmp_path)
    kinds = ["normal", "empty", "distractors", "empty", "normal", "empty"]
    cache = _cache(tmp_path / "cache", kinds, [[[4, 4, 40, 50]] if k != "empty" else [] for k in kinds])
    common: dict[str, object] = {"out_dir": tmp_path / "out", "cache_dir": tmp_path / "cache", "init": init,
                                 "scenes": 6, "batch": 2, "warmup": 1, "lr": 1e-4, "input_size": SIZE,
                                 "threads": 1, "checkpoint_every": 2, "mine_negatives": 3, "mine_every": 3}
    train_detector_negatives(NegativeSettings(steps=2, **common), cache=cache)  # type: ignore[arg-type]
    path = train_detector_negatives(NegativeSettings(steps=4, resume=True, **common),  # type: ignore[arg-type]
                                    cache=cache)

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    assert metadata["step"] == "4"
    assert [p["step"] for p in json.loads(metadata["mining"])] == [0.0, 2.0, 3.0]


def test_mining_a_cache_without_negative_scenes_is_refused(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "cache", ["normal"] * 4, [[[4, 4, 40, 50]]] * 4)
    settings = NegativeSettings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", init=_tiny_init(tmp_path),
                                scenes=4, batch=2, steps=1, warmup=1, input_size=SIZE, threads=1, mine_negatives=4)

    with pytest.raises(ValueError, match="no negative scene to mine"):
        train_detector_negatives(settings, cache=cache)
