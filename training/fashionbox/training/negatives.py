"""Hard negatives for the detector: a warm restart on scenes that mix garments with distractors.

The shipped detector first learned from scenes holding nothing but garments; on photos with no
garment it found garments anyway. This stage restarts from a trained detector (``init``) on a
scene cache in which a chosen share of scenes carries distractors under its garments
(``fashionbox.synth.distractors``) and another share is empty (distractors only, no garment).
Every location of an empty scene is a negative for the focal loss, whose ``(1 - p_t) ** gamma``
factor puts the weight on the confident mistakes (the hard negatives), and a batch's loss is
normalised by its positives, so an empty scene's mistakes weigh as much as a garment scene's.
``fashionbox train --stage detector
--distractors RATE`` runs it::

    settings = NegativeSettings(out_dir=Path("out"), cache_dir=cache, init=default_weights("detector"))
    path = train_detector_negatives(settings)     # out/detector.safetensors, recipe in its metadata

Which scenes are normal, with distractors or empty depends only on the seed and the index, so
the cache is reproducible and its normal scenes are exactly those of the plain detector stage.

Hard-negative mining (``mine_negatives=N``, ``--mine-negatives N``): before the first step and every
``mine_every`` steps the current detector scores ``N`` of the cache's negative scenes (distractors
or empty; training seeds only, never a held-out dataset seed, :data:`HELDOUT_DATASETS`); the
``mine_keep`` share where it fires hardest (its highest score on a box that overlaps no garment)
fills ``mine_share`` of every batch, the rest is drawn uniformly as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.synth.distractors import DEFAULT_DISTRACTOR_KINDS, DistractorConfig
from fashionbox.training.data import SceneCache, SceneSample, scene_sample, scene_seed
from fashionbox.training.detection import assign_targets, detection_loss
from fashionbox.training.schedule import lr_at

__all__ = [
    "HELDOUT_DATASETS",
    "SCENE_KINDS",
    "NegativeSettings",
    "build_mixed_cache",
    "check_scene_rates",
    "check_training_seeds",
    "false_positive_scores",
    "mining_candidates",
    "render_kind_sample",
    "scene_kind",
    "select_hardest",
    "train_detector_negatives",
]

log = logging.getLogger(__name__)

SCENE_KINDS = ("normal", "distractors", "empty")

HELDOUT_DATASETS = frozenset({7, 9, 11, 13})
"""Dataset seeds the benchmarks hold out (scene seeds ``seed * 1_000_003 + i``): 7 the quality and
test seed (bench_quality.py, tests/test_end_to_end.py), 9 the scenes without garments
(bench_false_positives.py), 11 and 13 the threshold's validation seeds (bench_threshold.py)."""

_DATASET_STRIDE = 1_000_003  # scene_seed's multiplier: a dataset seed owns one block of scene seeds


def check_training_seeds(scene_seeds: npt.ArrayLike) -> None:
    """Refuse scene seeds that belong to a held-out dataset (:data:`HELDOUT_DATASETS`)."""
    datasets = {int(s) // _DATASET_STRIDE for s in np.asarray(scene_seeds, dtype=np.int64).reshape(-1)}
    bad = sorted(datasets & HELDOUT_DATASETS)
    if bad:
        raise ValueError(f"scene seeds of held-out dataset seed(s) {bad} must not be trained or mined on "
                         f"(held out: {sorted(HELDOUT_DATASETS)}); choose another --seed")


def scene_kind(seed: int, index: int, distractor_rate: float, empty_rate: float) -> str:
    """Which kind scene ``index`` of a mixed cache is: ``empty`` with probability ``empty_rate``,
    ``distractors`` (garments over distractors) with ``distractor_rate``, else ``normal``."""
    u = random.Random(f"scene-kind-{seed}-{index}").random()
    if u < empty_rate:
        return "empty"
    if u < empty_rate + distractor_rate:
        return "distractors"
    return "normal"


def render_kind_sample(seed: int, kind: str, input_size: int, label_map: LabelMap, *,
                       distractor_kinds: tuple[str, ...] | None = None, closeups: float = 0.0) -> SceneSample:
    """Scene ``seed`` of ``kind``, JPEG round-tripped and letterboxed as served (like ``render_sample``);
    ``distractor_kinds``: what the distractors are drawn from (default: the generator's default kinds);
    ``closeups``: the share of empty scenes that are close-ups (``DistractorConfig.closeup_probability``)."""
    from fashionbox.synth import render_scene
    from fashionbox.synth.distractors import render_distractor_scene, render_scene_with_distractors

    config = DistractorConfig(kinds=distractor_kinds or DEFAULT_DISTRACTOR_KINDS, closeup_probability=closeups)
    if kind == "normal":
        scene = render_scene(seed, label_map=label_map)
    elif kind == "distractors":
        scene, _ = render_scene_with_distractors(seed, label_map=label_map, distractors=config)
    elif kind == "empty":
        scene = render_distractor_scene(seed, config=config)
    else:
        raise ValueError(f"unknown scene kind {kind!r}; choose from {SCENE_KINDS}")
    return scene_sample(scene, seed, input_size, label_map)


def _worker(args: tuple[int, str, int, str, tuple[str, ...] | None, float]) -> SceneSample:
    seed, kind, input_size, labels_json, distractor_kinds, closeups = args
    return render_kind_sample(seed, kind, input_size, LabelMap.from_dict(json.loads(labels_json)),
                              distractor_kinds=distractor_kinds, closeups=closeups)


def distractor_tag(kinds: tuple[str, ...] | None, closeups: float = 0.0) -> str:
    """What cache names add for a choice of distractor kinds and close-up share: nothing for the
    generator's defaults (the caches written before the choice existed stay valid), else ``-k``
    and a digest of the kinds, ``-c`` and the share. Refuses unknown kinds and shares outside [0, 1]."""
    kinds = tuple(kinds or DEFAULT_DISTRACTOR_KINDS)
    DistractorConfig(kinds=kinds, closeup_probability=closeups)  # refuses what it cannot paint, naming it
    tag = "" if kinds == DEFAULT_DISTRACTOR_KINDS else "-k" + hashlib.sha256(",".join(kinds).encode()).hexdigest()[:8]
    return tag + (f"-c{closeups:g}" if closeups else "")


def build_mixed_cache(cache_root: Path, *, count: int, seed: int, input_size: int, distractor_rate: float,
                      empty_rate: float, label_map: LabelMap | None = None, workers: int = 2,
                      progress: Callable[[int], None] | None = None,
                      distractor_kinds: tuple[str, ...] | None = None, closeups: float = 0.0) -> SceneCache:
    """Render ``count`` scenes of mixed kinds (or reuse a complete cache with the same parameters);
    read back with :class:`~fashionbox.training.data.SceneCache`, plus ``kinds.npy`` (index into
    :data:`SCENE_KINDS`). ``distractor_kinds``: what the distractors are drawn from (default: the
    generator's defaults); ``closeups``: the share of the empty scenes that are close-ups."""
    check_scene_rates(distractor_rate, empty_rate)
    label_map = label_map or default_label_map()
    key = (f"mixed-n{count}-seed{seed}-s{input_size}-d{distractor_rate:g}-e{empty_rate:g}-{label_map.name}"
           f"{distractor_tag(distractor_kinds, closeups)}")
    folder = Path(cache_root) / key
    if (folder / "complete").is_file():
        return SceneCache(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.lib.format.open_memmap(  # type: ignore[no-untyped-call]
        folder / "pixels.npy", mode="w+", dtype=np.uint8, shape=(count, input_size, input_size, 3))
    kinds = [scene_kind(seed, i, distractor_rate, empty_rate) for i in range(count)]
    jobs = [(scene_seed(seed, i), kinds[i], input_size, label_map.to_json(), distractor_kinds, closeups)
            for i in range(count)]
    boxes, classes, attributes, offsets = [], [], [], [0]
    with mp.get_context("fork").Pool(workers) as pool:
        for i, sample in enumerate(pool.imap(_worker, jobs, chunksize=16)):
            pixels[i] = sample.pixels
            boxes.append(sample.boxes)
            classes.append(sample.classes)
            attributes.append(sample.attributes)
            offsets.append(offsets[-1] + len(sample.boxes))
            if progress is not None:
                progress(1)
    pixels.flush()
    del pixels
    np.save(folder / "boxes.npy", np.concatenate(boxes).astype(np.float32).reshape(-1, 4))
    np.save(folder / "classes.npy", np.concatenate(classes).astype(np.int64))
    np.save(folder / "attributes.npy",
            np.concatenate(attributes).astype(np.int64).reshape(-1, len(label_map.attribute_groups)))
    np.save(folder / "offsets.npy", np.array(offsets, dtype=np.int64))
    np.save(folder / "kinds.npy", np.array([SCENE_KINDS.index(k) for k in kinds], dtype=np.int64))
    (folder / "complete").write_text("ok\n")
    log.info("cached %d mixed scenes in %s", count, folder)
    return SceneCache(folder)


def check_scene_rates(distractor_rate: float, empty_rate: float) -> None:
    """Refuse shares of garments-over-distractors and empty scenes outside [0, 1] or summing past 1."""
    if not (0.0 <= distractor_rate <= 1.0 and 0.0 <= empty_rate <= 1.0 and distractor_rate + empty_rate <= 1.0):
        raise ValueError(f"distractor and empty-scene rates must be in [0, 1] and sum to at most 1, "
                         f"got {distractor_rate:g} and {empty_rate:g}")


@dataclass(frozen=True)
class NegativeSettings:
    out_dir: Path
    cache_dir: Path
    init: Path
    """The detector checkpoint the warm restart starts from (the shipped one by default)."""
    seed: int = 1
    scenes: int = 4000
    distractor_rate: float = 0.35
    """Share of scenes whose garments lie over distractors."""
    empty_rate: float = 0.25
    """Share of scenes with distractors and no garment."""
    distractor_kinds: tuple[str, ...] = DEFAULT_DISTRACTOR_KINDS
    """The kinds of distractor painted (``fashionbox.synth.distractors``)."""
    closeups: float = 0.0
    """Share of the empty scenes that are close-ups (one or two distractors filling the frame)."""
    steps: int = 600
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 50
    input_size: int = 320
    threads: int = 2
    checkpoint_every: int = 100
    resume: bool = False
    mine_negatives: int = 0
    """Negative scenes the detector scores at each mining pass (0: no mining)."""
    mine_keep: float = 0.25
    """Share of the scored scenes kept as mined: those where the detector fires hardest."""
    mine_share: float = 0.25
    """Share of every batch drawn from the mined scenes."""
    mine_every: int = 100
    """Steps between mining passes (the first is before step one)."""

    def __post_init__(self) -> None:
        check_scene_rates(self.distractor_rate, self.empty_rate)
        distractor_tag(self.distractor_kinds, self.closeups)
        if self.scenes < self.batch or self.batch < 1 or self.steps < 1:
            raise ValueError("steps and batch must be >= 1 and scenes at least one batch")
        if self.lr <= 0 or self.warmup < 0:
            raise ValueError("lr must be positive and warmup non-negative")
        if self.mine_negatives < 0 or self.mine_every < 1:
            raise ValueError("mine_negatives must be >= 0 and mine_every >= 1")
        if not (0.0 < self.mine_keep <= 1.0 and 0.0 <= self.mine_share < 1.0):
            raise ValueError(f"mine_keep must be in (0, 1] and mine_share in [0, 1), "
                             f"got {self.mine_keep:g} and {self.mine_share:g}")
        if self.mine_negatives:
            check_training_seeds([scene_seed(self.seed, 0), scene_seed(self.seed, self.scenes - 1)])
            if self.empty_rate + self.distractor_rate == 0:
                raise ValueError("mining needs negative scenes: give --distractors or --empty-scenes above 0")

    def to_json(self) -> str:
        """The recipe, for the checkpoint's metadata; local folders are left out."""
        recipe = {k: v for k, v in asdict(self).items() if k not in ("out_dir", "cache_dir", "init")}
        return json.dumps({"stage": "detector-hard-negatives", **recipe}, sort_keys=True)


def _batch(cache: SceneCache, indices: npt.NDArray[np.int64], rng: np.random.Generator, size: int,
           ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    order = np.sort(indices)
    pixels = np.asarray(cache.pixels[order])
    boxes, classes = [], []
    for k, i in enumerate(order):
        b = cache.boxes_of(int(i)).copy()
        if rng.random() < 0.5:  # horizontal flip: every label here is mirror-symmetric
            pixels[k] = pixels[k, :, ::-1]
            b[:, [0, 2]] = size - b[:, [2, 0]]
        boxes.append(torch.from_numpy(b))
        classes.append(torch.from_numpy(cache.classes_of(int(i))))
    return torch.from_numpy(np.ascontiguousarray(pixels)), boxes, classes


def mining_candidates(cache: SceneCache, seed: int, count: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Up to ``count`` indices of the cache's negative scenes (distractors or empty), drawn at random.

    The cache's scene ``i`` was rendered from ``scene_seed(seed, i)``; seeds of a held-out dataset
    are refused (:func:`check_training_seeds`)."""
    kinds = np.load(cache.folder / "kinds.npy")
    negative = np.flatnonzero(kinds != SCENE_KINDS.index("normal")).astype(np.int64)
    chosen = np.sort(rng.choice(negative, min(count, len(negative)), replace=False)).astype(np.int64)
    check_training_seeds([scene_seed(seed, int(i)) for i in chosen])
    return chosen


@torch.no_grad()
def false_positive_scores(model: torch.nn.Module, cache: SceneCache, indices: npt.NDArray[np.int64], *,
                          iou: float = 0.5, batch: int = 32) -> npt.NDArray[np.float32]:
    """Per scene, the detector's highest score (any class, before NMS: NMS only removes lower
    scores) on a box that overlaps every garment of the scene by less than ``iou``: the score of
    its worst false positive. An empty scene's boxes are all false."""
    from fashionbox.models.nms import box_iou

    was_training = model.training
    model.eval()
    out = np.zeros(len(indices), dtype=np.float32)
    try:
        for start in range(0, len(indices), batch):
            part = indices[start:start + batch]
            outputs = model(torch.from_numpy(np.asarray(cache.pixels[part])))
            best = outputs.scores.amax(dim=1)  # [B, N] over classes
            for k, i in enumerate(part):
                garments = torch.from_numpy(cache.boxes_of(int(i)))
                false = best[k]
                if len(garments):
                    overlaps = box_iou(outputs.boxes[k], garments).amax(dim=1)
                    false = torch.where(overlaps < iou, false, torch.zeros_like(false))
                out[start + k] = float(false.max())
    finally:
        model.train(was_training)
    return out


def select_hardest(indices: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], keep: float,
                   ) -> npt.NDArray[np.int64]:
    """The ``keep`` share of ``indices`` (at least one) with the highest ``scores``, hardest first
    (ties: the lower index first)."""
    if len(indices) != len(scores):
        raise ValueError(f"{len(indices)} indices but {len(scores)} scores")
    if not len(indices):
        return np.zeros(0, dtype=np.int64)
    count = max(1, round(keep * len(indices)))
    order = np.lexsort((indices, -scores.astype(np.float64)))
    hardest: npt.NDArray[np.int64] = np.asarray(indices, dtype=np.int64)[order[:count]]
    return hardest


def _draw(rng: np.random.Generator, size: int, batch: int, mined: npt.NDArray[np.int64], share: float,
          ) -> npt.NDArray[np.int64]:
    """A batch of distinct scene indices: ``share`` of it from ``mined``, the rest uniformly."""
    take = min(len(mined), round(share * batch))
    if take == 0:
        return rng.choice(size, batch, replace=False).astype(np.int64)
    first = rng.choice(mined, take, replace=False)
    rest = np.setdiff1d(np.arange(size), first, assume_unique=True)
    drawn: npt.NDArray[np.int64] = np.concatenate([first, rng.choice(rest, batch - take, replace=False)]).astype(
        np.int64)
    return drawn


def train_detector_negatives(settings: NegativeSettings, *, label_map: LabelMap | None = None,
                             cache: SceneCache | None = None) -> Path:
    """Warm-restart ``settings.init`` on the mixed cache; writes ``out_dir/detector.safetensors``."""
    from fashionbox.models import checkpoint_metadata, file_sha256, load_detector, save_checkpoint

    torch.set_num_threads(settings.threads)
    label_map = label_map or default_label_map()
    if cache is None:
        with tqdm(total=settings.scenes, desc="mixed scenes", unit="scene") as bar:
            cache = build_mixed_cache(settings.cache_dir, count=settings.scenes, seed=settings.seed,
                                      input_size=settings.input_size, distractor_rate=settings.distractor_rate,
                                      empty_rate=settings.empty_rate, label_map=label_map, progress=bar.update,
                                      distractor_kinds=settings.distractor_kinds, closeups=settings.closeups)
    path = settings.out_dir / "detector.safetensors"
    start = 0
    source = settings.init
    resuming = settings.resume and path.is_file()
    if resuming:
        source = path
        start = int(checkpoint_metadata(path).get("step", "0"))
        log.info("resuming hard-negative training at step %d", start)
    model, loaded_labels = load_detector(source)
    model.with_calibration()  # trained on raw scores; a calibration fits the weights it was fitted on only
    if loaded_labels.to_json() != label_map.to_json():
        raise ValueError(f"{source} was trained for label map {loaded_labels.name!r}, not {label_map.name!r}")
    config = model.config
    # The starting point and the recipe that made it, so the checkpoint names its whole history
    # (read before the first checkpoint, which may overwrite ``init`` when it is ``out_dir``'s).
    if resuming:
        init_sha = checkpoint_metadata(path).get("init_sha256", "")
        init_recipe = checkpoint_metadata(path).get("init_train_settings", "")
    else:
        init_sha = file_sha256(settings.init)
        init_recipe = checkpoint_metadata(settings.init).get("train_settings", "")
    torch.manual_seed(settings.seed + start)
    rng = np.random.default_rng([settings.seed, start])
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    model.train()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seconds_before = float(checkpoint_metadata(path).get("train_seconds", "0")) if resuming else 0.0
    progress = tqdm(range(start, settings.steps), desc="detector (hard negatives)", unit="step", initial=start,
                    total=settings.steps)
    mined = np.zeros(0, dtype=np.int64)
    mining_log: list[dict[str, float]] = json.loads(checkpoint_metadata(path).get("mining", "[]")) if resuming else []
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.steps, settings.lr, warmup=settings.warmup)
        if settings.mine_negatives and (step % settings.mine_every == 0 or step == start):
            # Its own generator, keyed by the step, so a resumed run mines the same candidates.
            candidates = mining_candidates(cache, settings.seed, settings.mine_negatives,
                                           np.random.default_rng([settings.seed, 1_009, step]))
            if not len(candidates):
                raise ValueError(f"no negative scene to mine among the cache's {len(cache)} scenes")
            hardness = false_positive_scores(model, cache, candidates)
            mined = select_hardest(candidates, hardness, settings.mine_keep)
            entry = {"step": float(step), "scored": float(len(candidates)),
                     "above_0.5": float((hardness > 0.5).mean()), "above_0.3": float((hardness > 0.3).mean()),
                     "kept_min_score": float(np.sort(hardness)[-len(mined)])}
            mining_log.append(entry)
            log.info("mined %d of %d negative scenes at step %d: %s", len(mined), len(candidates), step, entry)
        indices = _draw(rng, len(cache), settings.batch, mined, settings.mine_share)
        pixels, boxes, classes = _batch(cache, indices, rng, settings.input_size)
        outputs = model(pixels)
        targets = assign_targets(config, model.centers, model.location_strides, boxes, classes)
        loss = detection_loss(outputs, targets, config.num_classes)
        total = loss.total
        optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        progress.set_postfix(loss=f"{float(total.detach()):.3f}", cls=f"{float(loss.classification):.3f}",
                             box=f"{float(loss.box):.3f}")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
            elapsed = seconds_before + time.perf_counter() - t0
            rate = (step + 1 - start) / max(1e-9, time.perf_counter() - t0)
            save_checkpoint(path, model, kind="detector", config_json=config.to_json(), label_map=label_map,
                            extra={"step": str(step + 1), "train_settings": settings.to_json(),
                                   "init_sha256": init_sha, "init_train_settings": init_recipe,
                                   "train_seconds": f"{elapsed:.0f}",
                                   "steps_per_second": f"{rate:.3f}",
                                   **({"mining": json.dumps(mining_log)} if mining_log else {})})
    model.eval()
    return path
