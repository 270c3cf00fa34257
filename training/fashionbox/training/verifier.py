"""Training of the attribute classifier's verifier head, the pipeline's second stage, for one detector.

The default detector keeps finding a garment in some photos that hold none (a striped rug read as
pants). The verifier head (``fashionbox.models.attributes.VerifierHead``) reads each detection's
crop through the frozen attribute trunk's descriptor and gives one logit offset (<= 0) per
category; serving re-scores a detection as ``sigmoid(logit(score) + offset[category])`` and drops
what then falls below the served threshold. ``fashionbox train --stage verifier`` fits it on that
detector's own detections, run exactly as served (calibrated scores, at its served threshold):

* the detector's hard-negative training scenes (``build_mixed_cache``, with the shipped detector's
  recipe: 4000 scenes of seed 1, 35 % over distractors, 25 % without garments), where a detection is
  *right* when it overlaps a garment of its category by IoU >= 0.5;
* ``negatives`` fresh scenes of distractors only, of the same training seed but from index
  :data:`FRESH_FIRST` on, which the detector never trained on: every detection there is wrong.

Each detection's crop is cut as served (``crop_garments``) and described by the base attribute
checkpoint's frozen trunk; the descriptors are cached (one ``.npz`` under the cache folder, keyed by
the detector file, the trunk and the parameters), so a refit with other head settings skips the
detectors and the renderer. The head is then fitted, with the detector's score logit as a fixed
offset, by binary cross-entropy on *right*; the rows of scenes whose index is a multiple of 5 are
held out as validation. The checkpoint written is the base one with the head added (every other
tensor unchanged) and ``verifier_detector`` naming the detector file's sha256::

    settings = VerifierSettings(out_dir=Path("out"), cache_dir=cache, detector=default_weights("detector"),
                                base=default_weights("attributes"))
    path = train_verifier(settings)      # out/attributes.safetensors, recipe in its metadata

Measured for the shipped detector (16,597 detections, 8,047 right; about 5 minutes on two cores),
with the default five members averaged (one member's seed alone moved the result by a few photos), on
200 held-out photos with distractors and no garment (dataset seed 9): those with a detection above 0.5
go from 14 to 2, box mAP@.5 on the held-out seed 7 from 0.933 to 0.932 (BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from fashionbox import contract
from fashionbox.contract.labels import LabelMap
from fashionbox.core.imaging import CROP_MARGIN, crop_garments
from fashionbox.core.postprocessing import DetectorOutput
from fashionbox.models import (
    AttributeClassifier,
    CheckpointError,
    checkpoint_metadata,
    file_sha256,
    load_attributes,
    load_detector,
    save_checkpoint,
    served_score_threshold,
)
from fashionbox.models.attributes import VerifierHead
from fashionbox.models.nms import box_iou
from fashionbox.synth.distractors import DEFAULT_DISTRACTOR_KINDS
from fashionbox.training.data import SceneCache, scene_seed
from fashionbox.training.negatives import (
    build_mixed_cache,
    check_scene_rates,
    check_training_seeds,
    distractor_tag,
    render_kind_sample,
)

__all__ = [
    "DETECTION_BATCH",
    "FRESH_FIRST",
    "MATCH_IOU",
    "VALIDATION_EVERY",
    "VerifierFit",
    "VerifierRows",
    "VerifierSettings",
    "average_heads",
    "detection_rows",
    "fit_verifier",
    "label_detections",
    "scene_seeds",
    "train_verifier",
    "verifier_summary",
    "with_verifier",
]

log = logging.getLogger(__name__)

FRESH_FIRST = 10_000
"""Index of the first fresh negative scene of the training seed (``scene_seed(seed, FRESH_FIRST + i)``):
far past any index of the detector's scene cache (4000 scenes for the shipped one; ``scenes`` is
refused above it), so the fresh scenes are ones the detector never trained on."""

MATCH_IOU = 0.5
"""A detection is right when it overlaps a garment of its category by at least this IoU."""

VALIDATION_EVERY = 5
"""Rows of the scenes whose index is a multiple of this are the validation rows (every scene's
detections on one side)."""

DETECTION_BATCH = 16
"""Images per detector call."""

RENDER_CHUNK = 256
"""Fresh negative scenes rendered at a time (then detected): bounds the memory they take."""

_DATASET_STRIDE = 1_000_003  # scene_seed's multiplier: the scene indices of one seed stay below it
_FEATURES_VERSION = 1  # bump when what the feature cache holds changes


@dataclass(frozen=True)
class VerifierSettings:
    out_dir: Path
    cache_dir: Path
    detector: Path
    """The detector checkpoint the verifier corrects (the shipped one by default): run as served."""
    base: Path
    """The attribute checkpoint whose frozen trunk describes the crops and which the head is added to."""
    seed: int = 1
    """The training seed: of the detector's scene cache and of the fresh negatives."""
    scenes: int = 4000
    """Scenes of the detector's mixed (hard-negative) cache."""
    distractor_rate: float = 0.35
    empty_rate: float = 0.25
    negatives: int = 6000
    """Fresh scenes of distractors only (indices ``FRESH_FIRST`` on), every detection on them wrong."""
    distractor_kinds: tuple[str, ...] = DEFAULT_DISTRACTOR_KINDS
    """The kinds of distractor painted in the mixed cache's scenes and in the fresh ones
    (``fashionbox.synth.distractors``); the detector's own recipe is the natural choice."""
    closeups: float = 0.33
    """Share of the empty scenes (the mixed cache's and the fresh ones) that are close-ups: one or two
    distractors filling the frame. With ``negatives`` 6,000: the 4,000 scattered scenes of the first
    head's recipe and 2,000 close-ups (a real photo of a cat is a close-up)."""
    hidden: int = 64
    """Hidden units of each member's MLP."""
    members: int = 5
    """Heads fitted from seeds ``seed``, ``seed + 1``, ... and averaged (their pre-softplus outputs) into
    one head of ``members * hidden`` units: the fit's seed alone moved the held-out false positives by a
    few photos in 200, the average of five does not depend on one draw."""
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.1
    batch: int = 256
    threads: int = 2
    workers: int = 2
    """Processes rendering the scenes."""

    def __post_init__(self) -> None:
        if not 1 <= self.scenes <= FRESH_FIRST:
            raise ValueError(f"scenes must be in [1, {FRESH_FIRST}] (the fresh negatives start at index "
                             f"{FRESH_FIRST}), got {self.scenes}")
        if not 0 <= self.negatives <= _DATASET_STRIDE - FRESH_FIRST:
            raise ValueError(f"negatives must be in [0, {_DATASET_STRIDE - FRESH_FIRST}], got {self.negatives}")
        if min(self.hidden, self.members, self.epochs, self.batch, self.threads, self.workers) < 1:
            raise ValueError("hidden, members, epochs, batch, threads and workers must be >= 1")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ValueError(f"lr must be positive and weight_decay non-negative, got {self.lr:g} and "
                             f"{self.weight_decay:g}")
        check_scene_rates(self.distractor_rate, self.empty_rate)
        distractor_tag(self.distractor_kinds, self.closeups)  # refuses what cannot be painted, naming it
        if not 0 <= self.seed < 10**6:
            raise ValueError(f"training seeds are in [0, 10**6), got {self.seed}")
        check_training_seeds(scene_seeds(self.seed, self.scenes, self.negatives))

    def to_json(self) -> str:
        """The recipe, for the checkpoint's metadata; local paths are left out (the detector and the base
        are recorded by their sha256)."""
        recipe = {k: v for k, v in asdict(self).items() if k not in ("out_dir", "cache_dir", "detector", "base")}
        return json.dumps({"stage": "verifier", "fresh_first": FRESH_FIRST, "match_iou": MATCH_IOU,
                           "validation_every": VALIDATION_EVERY, **recipe}, sort_keys=True)


def scene_seeds(seed: int, scenes: int, negatives: int) -> npt.NDArray[np.int64]:
    """Every scene seed a run renders: the cache's ``0..scenes-1`` and the fresh ``FRESH_FIRST..``."""
    indices = np.concatenate([np.arange(scenes), FRESH_FIRST + np.arange(negatives)]).astype(np.int64)
    seeds: npt.NDArray[np.int64] = scene_seed(seed, 0) + indices
    return seeds


def label_detections(boxes: npt.ArrayLike, classes: npt.ArrayLike, garment_boxes: npt.ArrayLike,
                     garment_classes: npt.ArrayLike, *, iou: float = MATCH_IOU) -> npt.NDArray[np.bool_]:
    """Per detection, whether it is right: it overlaps a garment of its own category by IoU >= ``iou``
    (several detections may match one garment: the verifier judges crops, NMS has already run)."""
    det = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    gt = np.asarray(garment_boxes, dtype=np.float32).reshape(-1, 4)
    if not len(det) or not len(gt):
        return np.zeros(len(det), dtype=bool)
    same = np.asarray(classes).reshape(-1)[:, None] == np.asarray(garment_classes).reshape(-1)[None, :]
    overlap = box_iou(torch.from_numpy(det), torch.from_numpy(gt)).numpy()
    right: npt.NDArray[np.bool_] = ((overlap >= iou) & same).any(axis=1)
    return right


@dataclass(frozen=True)
class VerifierRows:
    """One row per detection: what the head is fitted on."""

    features: npt.NDArray[np.float32]
    """``[N, D]`` the frozen trunk's descriptors of the detections' crops."""
    scores: npt.NDArray[np.float32]
    """``[N]`` the detector's (served, calibrated) scores."""
    classes: npt.NDArray[np.int64]
    """``[N]`` the detections' categories."""
    right: npt.NDArray[np.bool_]
    """``[N]`` whether the detection is right (:func:`label_detections`)."""
    scenes: npt.NDArray[np.int64]
    """``[N]`` index of the scene it was found in (the fresh ones from :data:`FRESH_FIRST`)."""

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.features.ndim != 2 or any(len(a) != n for a in (self.features, self.classes, self.right,
                                                                  self.scenes)):
            raise ValueError(f"rows disagree: features {self.features.shape}, scores {self.scores.shape}, "
                             f"classes {self.classes.shape}, right {self.right.shape}, scenes {self.scenes.shape}")

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def concatenate(parts: list[VerifierRows], descriptor_size: int) -> VerifierRows:
        if not parts:
            return VerifierRows(np.zeros((0, descriptor_size), np.float32), np.zeros(0, np.float32),
                                np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64))
        return VerifierRows(np.concatenate([p.features for p in parts]), np.concatenate([p.scores for p in parts]),
                            np.concatenate([p.classes for p in parts]), np.concatenate([p.right for p in parts]),
                            np.concatenate([p.scenes for p in parts]))


def _descriptors(classifier: AttributeClassifier, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    with torch.inference_mode():
        out: npt.NDArray[np.float32] = classifier.descriptor(torch.from_numpy(np.ascontiguousarray(crops))).numpy()
    return out.astype(np.float32, copy=False)


Garments = list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]]
DetectFn = Callable[[npt.NDArray[np.uint8]], list[DetectorOutput]]


def detection_rows(detect: DetectFn, classifier: AttributeClassifier, pixels: npt.NDArray[np.uint8],
                   scenes: npt.NDArray[np.int64], garments: Garments | None) -> VerifierRows:
    """The rows of one batch of letterboxed images ``pixels`` ``[B, S, S, 3]`` (scene indices ``scenes``):
    ``detect`` (``InProcessPipeline.detect``) runs the detector as served, each detection's crop is cut
    as served and described by ``classifier``'s frozen trunk; ``garments`` (boxes, classes) per image
    label them, None: every detection is wrong (scenes without garments)."""
    crops, scores, classes, right, scene_of = [], [], [], [], []
    for k, det in enumerate(detect(pixels)):
        if not len(det):
            continue
        crops.append(crop_garments(pixels[k], det.boxes, classifier.config.crop_size))
        scores.append(det.scores.astype(np.float32))
        classes.append(det.classes.astype(np.int64))
        right.append(np.zeros(len(det), bool) if garments is None
                     else label_detections(det.boxes, det.classes, *garments[k]))
        scene_of.append(np.full(len(det), scenes[k], dtype=np.int64))
    if not crops:
        return VerifierRows.concatenate([], classifier.descriptor_size)
    return VerifierRows(_descriptors(classifier, np.concatenate(crops)), np.concatenate(scores),
                        np.concatenate(classes), np.concatenate(right), np.concatenate(scene_of))


def _render_empty(args: tuple[int, int, str, tuple[str, ...], float]) -> npt.NDArray[np.uint8]:
    seed, input_size, labels_json, kinds, closeups = args
    return render_kind_sample(seed, "empty", input_size, LabelMap.from_dict(json.loads(labels_json)),
                              distractor_kinds=kinds, closeups=closeups).pixels


def _trunk_key(classifier: AttributeClassifier) -> str:
    """Digest of what the descriptor depends on: the trunk's tensors and the crop size."""
    digest = hashlib.sha256(str(classifier.config.crop_size).encode())
    for name, tensor in sorted(classifier.state_dict().items()):
        if name.startswith("features."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _features_path(settings: VerifierSettings, detector_sha256: str, classifier: AttributeClassifier,
                   input_size: int, score_threshold: float, label_map: LabelMap) -> tuple[Path, dict[str, object]]:
    key: dict[str, object] = {
        "version": _FEATURES_VERSION, "detector_sha256": detector_sha256, "trunk": _trunk_key(classifier),
        "seed": settings.seed, "scenes": settings.scenes, "distractor_rate": settings.distractor_rate,
        "empty_rate": settings.empty_rate, "negatives": settings.negatives, "fresh_first": FRESH_FIRST,
        **({} if settings.distractor_kinds == DEFAULT_DISTRACTOR_KINDS  # the caches made before the choice
           else {"distractor_kinds": list(settings.distractor_kinds)}),
        **({"closeups": settings.closeups} if settings.closeups else {}),
        "input_size": input_size, "score_threshold": score_threshold, "match_iou": MATCH_IOU,
        "nms_iou": contract.DEFAULT_IOU_THRESHOLD, "max_detections": contract.DEFAULT_MAX_DETECTIONS,
        "crop_margin": CROP_MARGIN, "label_map": label_map.name}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = (f"verifier-features-{detector_sha256[:12]}-{key['trunk']}-n{settings.scenes}-neg{settings.negatives}"
            f"-seed{settings.seed}-{digest}.npz")
    return Path(settings.cache_dir) / name, key


def _write_rows(path: Path, rows: VerifierRows, sources: npt.NDArray[np.int64], key: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, features=rows.features, scores=rows.scores, classes=rows.classes, right=rows.right,
                 scenes=rows.scenes, sources=sources, key=np.array(json.dumps(key, sort_keys=True)))
    os.replace(tmp, path)


def _read_rows(path: Path) -> tuple[VerifierRows, npt.NDArray[np.int64]]:
    with np.load(path) as data:
        rows = VerifierRows(data["features"], data["scores"], data["classes"], data["right"], data["scenes"])
        return rows, data["sources"]


def _extract(settings: VerifierSettings, classifier: AttributeClassifier, label_map: LabelMap, *,
             detector_sha256: str, input_size: int) -> tuple[VerifierRows, npt.NDArray[np.int64], Path]:
    """Every detection's row (the cache scenes', then the fresh negatives'), from the feature cache when
    one with the same key is there. ``sources``: ``[scene rows, fresh rows]``."""
    from fashionbox.models.pipeline import InProcessPipeline

    threshold = served_score_threshold(settings.detector)
    path, key = _features_path(settings, detector_sha256, classifier, input_size, threshold, label_map)
    if path.is_file():
        log.info("verifier features from %s", path)
        rows, sources = _read_rows(path)
        return rows, sources, path
    with tqdm(total=settings.scenes, desc="mixed scenes", unit="scene") as bar:
        cache: SceneCache = build_mixed_cache(settings.cache_dir, count=settings.scenes, seed=settings.seed,
                                              input_size=input_size, distractor_rate=settings.distractor_rate,
                                              empty_rate=settings.empty_rate, label_map=label_map,
                                              workers=settings.workers, progress=bar.update,
                                              distractor_kinds=settings.distractor_kinds,
                                              closeups=settings.closeups)
    if len(cache) != settings.scenes or cache.pixels.shape[1] != input_size:
        raise ValueError(f"{cache.folder} holds {len(cache)} scenes of {cache.pixels.shape[1]} px, "
                         f"expected {settings.scenes} of {input_size}")
    # The renderers are forked before the first inference (torch's thread pools are not fork-safe).
    with mp.get_context("fork").Pool(settings.workers) as pool:
        # As served: the detector at its served threshold, calibrated scores; the verifier is not applied.
        pipeline = InProcessPipeline.torch_reference(settings.detector, settings.base, threads=settings.threads)
        classifier.eval()
        parts: list[VerifierRows] = []
        for start in tqdm(range(0, settings.scenes, DETECTION_BATCH), desc="detections (training scenes)",
                          unit="batch"):
            indices = np.arange(start, min(start + DETECTION_BATCH, settings.scenes), dtype=np.int64)
            garments = [(cache.boxes_of(int(i)), cache.classes_of(int(i))) for i in indices]
            parts.append(detection_rows(pipeline.detect, classifier, np.asarray(cache.pixels[indices]), indices,
                                        garments))
        scene_rows = sum(len(p) for p in parts)
        with tqdm(total=settings.negatives, desc="detections (fresh negatives)", unit="scene") as bar:
            for chunk in range(FRESH_FIRST, FRESH_FIRST + settings.negatives, RENDER_CHUNK):
                indices = np.arange(chunk, min(chunk + RENDER_CHUNK, FRESH_FIRST + settings.negatives))
                jobs = [(scene_seed(settings.seed, int(i)), input_size, label_map.to_json(),
                         settings.distractor_kinds, settings.closeups) for i in indices]
                pixels = np.stack(pool.map(_render_empty, jobs, chunksize=16))
                for k in range(0, len(indices), DETECTION_BATCH):
                    part = slice(k, k + DETECTION_BATCH)
                    parts.append(detection_rows(pipeline.detect, classifier, pixels[part],
                                                indices[part].astype(np.int64), None))
                    bar.update(len(indices[part]))
    rows = VerifierRows.concatenate(parts, classifier.descriptor_size)
    sources = np.array([scene_rows, len(rows) - scene_rows], dtype=np.int64)
    _write_rows(path, rows, sources, key)
    log.info("cached %d detections' features (%d of the training scenes, %d of the fresh negatives) in %s",
             len(rows), sources[0], sources[1], path)
    return rows, sources, path


def _logit(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    p = np.clip(scores.astype(np.float64), 1e-6, 1 - 1e-6)
    logit: npt.NDArray[np.float64] = np.log(p / (1 - p))
    return logit


@dataclass(frozen=True)
class VerifierFit:
    head: VerifierHead
    """The fitted head (eval mode)."""
    bce_detector: float
    """Validation BCE of the detector's scores alone (no verifier)."""
    bce_verifier: float
    """Validation BCE of the re-scored detections after the last epoch."""
    history: tuple[tuple[int, float], ...]
    """``(epoch, validation BCE)`` every 5 epochs and after the last."""
    train_rows: int
    validation_rows: int


def fit_verifier(rows: VerifierRows, *, categories: int, hidden: int = 64, epochs: int = 30, lr: float = 1e-3,
                 weight_decay: float = 0.1, batch: int = 256, seed: int = 1, members: int = 1) -> VerifierFit:
    """Fit a :class:`VerifierHead` on ``rows``: ``BCE(logit(score) + head(x)[class], right)``, AdamW; the
    rows of scenes whose index is a multiple of :data:`VALIDATION_EVERY` are the validation rows. The
    descriptor's standardisation (the head's ``mean``, ``std``) is the training rows'. With ``members > 1``
    that many heads are fitted from seeds ``seed, seed + 1, ...`` and merged by :func:`average_heads`;
    ``bce_verifier`` is then the merged head's and ``history`` the first member's."""
    fits = [_fit_one(rows, categories=categories, hidden=hidden, epochs=epochs, lr=lr, weight_decay=weight_decay,
                     batch=batch, seed=seed + k) for k in range(members)]
    if members == 1:
        return fits[0]
    head = average_heads([f.head for f in fits])
    x = torch.from_numpy(np.ascontiguousarray(rows.features, dtype=np.float32))
    s = torch.from_numpy(_logit(rows.scores)).float()
    c = torch.from_numpy(rows.classes.astype(np.int64))
    y = torch.from_numpy(rows.right.astype(np.float32))
    valid = torch.from_numpy(rows.scenes % VALIDATION_EVERY == 0)
    with torch.no_grad():
        z = s[valid] + head(x[valid]).gather(1, c[valid, None]).squeeze(1)
        merged = float(torch.nn.functional.binary_cross_entropy_with_logits(z, y[valid]))
    log.info("verifier: %d members averaged, validation BCE %.4f (members %s)", members, merged,
             ", ".join(f"{f.bce_verifier:.4f}" for f in fits))
    return VerifierFit(head, fits[0].bce_detector, merged, fits[0].history, fits[0].train_rows,
                       fits[0].validation_rows)


def average_heads(heads: list[VerifierHead]) -> VerifierHead:
    """One head whose pre-softplus output is exactly the mean of ``heads``' (same standardisation): their
    hidden layers side by side, their output layers scaled by ``1 / len(heads)``."""
    states = [h.state_dict() for h in heads]
    first = states[0]
    merged_state = {
        "mean": first["mean"], "std": first["std"],
        "mlp.0.weight": torch.cat([s["mlp.0.weight"] for s in states]),
        "mlp.0.bias": torch.cat([s["mlp.0.bias"] for s in states]),
        "mlp.3.weight": torch.cat([s["mlp.3.weight"] for s in states], dim=1) / len(states),
        "mlp.3.bias": torch.stack([s["mlp.3.bias"] for s in states]).mean(0),
    }
    merged = VerifierHead(int(first["mean"].shape[0]), int(merged_state["mlp.0.weight"].shape[0]),
                          int(first["mlp.3.weight"].shape[0]))
    merged.load_state_dict(merged_state)
    return merged.eval()


def _fit_one(rows: VerifierRows, *, categories: int, hidden: int, epochs: int, lr: float, weight_decay: float,
             batch: int, seed: int) -> VerifierFit:
    x = torch.from_numpy(np.ascontiguousarray(rows.features, dtype=np.float32))
    s = torch.from_numpy(_logit(rows.scores)).float()
    c = torch.from_numpy(rows.classes.astype(np.int64))
    y = torch.from_numpy(rows.right.astype(np.float32))
    validation = torch.from_numpy(rows.scenes % VALIDATION_EVERY == 0)
    training = torch.nonzero(~validation).squeeze(1)
    if len(training) < 2 or not bool(validation.any()):
        raise ValueError(f"too few detections to fit the verifier: {len(training)} training and "
                         f"{int(validation.sum())} validation rows (at least 2 and 1); give more scenes")
    if len(rows) and (int(c.min()) < 0 or int(c.max()) >= categories):
        raise ValueError(f"a detection's category is outside the {categories} categories")
    torch.manual_seed(seed)
    head = VerifierHead(x.shape[1], hidden, categories)
    with torch.no_grad():
        head.mean.copy_(x[training].mean(0))
        head.std.copy_(x[training].std(0) + 1e-3)
    optimizer = torch.optim.AdamW(head.mlp.parameters(), lr=lr, weight_decay=weight_decay)
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def rescored(rows_: torch.Tensor) -> torch.Tensor:
        offsets: torch.Tensor = head(x[rows_]).gather(1, c[rows_, None]).squeeze(1)
        return s[rows_] + offsets

    valid = torch.nonzero(validation).squeeze(1)
    bce_detector = float(bce(s[valid], y[valid]))
    history: list[tuple[int, float]] = []
    bce_verifier = float("nan")
    for epoch in range(epochs):
        head.train()
        order = training[torch.randperm(len(training))]
        for k in range(0, len(order), batch):
            chosen = order[k:k + batch]
            loss = bce(rescored(chosen), y[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        head.eval()
        with torch.no_grad():
            bce_verifier = float(bce(rescored(valid), y[valid]))
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            history.append((epoch + 1, bce_verifier))
            log.info("verifier epoch %d: validation BCE %.4f (detector alone %.4f)", epoch + 1, bce_verifier,
                     bce_detector)
    return VerifierFit(head.eval(), bce_detector, bce_verifier, tuple(history), len(training), len(valid))


def with_verifier(base: AttributeClassifier, head: VerifierHead, *, detector_sha256: str) -> AttributeClassifier:
    """A classifier with every tensor of ``base`` (copied; a verifier head it had is replaced) and ``head``,
    its config naming the detector the head was fitted to (in eval mode)."""
    head_state = head.state_dict()
    config = replace(base.config, verifier_classes=int(head_state["mlp.3.weight"].shape[0]),
                     verifier_hidden=int(head_state["mlp.0.weight"].shape[0]), verifier_detector=detector_sha256)
    model = AttributeClassifier(config)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("verifier_head.")}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith("verifier_head.") for k in result.missing_keys):
        raise CheckpointError(f"the base classifier does not match: {result}")
    assert model.verifier_head is not None
    model.verifier_head.load_state_dict(head_state)
    return model.eval()


def train_verifier(settings: VerifierSettings) -> Path:
    """Fit the verifier head for ``settings.detector`` over ``settings.base``; writes
    ``out_dir/attributes.safetensors`` (the base's tensors unchanged, the head added, the recipe in its
    metadata) and returns its path."""
    t0 = time.perf_counter()
    torch.set_num_threads(settings.threads)
    for path, kind in ((settings.detector, "detector"), (settings.base, "attribute")):
        if not Path(path).is_file():
            raise CheckpointError(f"no {kind} checkpoint at {path}")
    detector, detector_labels = load_detector(settings.detector)
    classifier, label_map = load_attributes(settings.base)
    if detector_labels.to_json() != label_map.to_json():
        raise CheckpointError(f"{settings.detector} was trained for label map {detector_labels.name!r} and "
                              f"{settings.base} for {label_map.name!r}: the verifier needs one label map")
    # Read before anything is written: --out's attributes.safetensors may be the base.
    base_meta = checkpoint_metadata(settings.base)
    base_sha256 = file_sha256(settings.base)
    detector_sha256 = file_sha256(settings.detector)
    rows, sources, features = _extract(settings, classifier, label_map, detector_sha256=detector_sha256,
                                       input_size=detector.config.input_size)
    if not len(rows):
        raise ValueError(f"the detector made no detection on {settings.scenes + settings.negatives} scenes: "
                         "nothing to fit the verifier on")
    fit = fit_verifier(rows, categories=len(label_map.categories), hidden=settings.hidden, epochs=settings.epochs,
                       lr=settings.lr, weight_decay=settings.weight_decay, batch=settings.batch, seed=settings.seed,
                       members=settings.members)
    model = with_verifier(classifier, fit.head, detector_sha256=detector_sha256)
    counts = {"detections": len(rows), "scene_detections": int(sources[0]), "fresh_detections": int(sources[1]),
              "right": int(rows.right.sum()), "train": fit.train_rows, "validation": fit.validation_rows}
    validation = {"detector_alone": round(fit.bce_detector, 5), "with_verifier": round(fit.bce_verifier, 5),
                  "by_epoch": [[e, round(v, 5)] for e, v in fit.history]}
    kept = {k: v for k, v in base_meta.items() if k not in ("format", "kind", "config", "label_map")}
    kept.update({"verifier_train_settings": settings.to_json(), "verifier_detector_sha256": detector_sha256,
                 "verifier_base_sha256": base_sha256, "verifier_rows": json.dumps(counts, sort_keys=True),
                 "verifier_validation_bce": json.dumps(validation, sort_keys=True),
                 "verifier_train_seconds": f"{time.perf_counter() - t0:.0f}", "verifier_features": features.name})
    out = settings.out_dir / "attributes.safetensors"
    save_checkpoint(out, model, kind="attributes", config_json=model.config.to_json(), label_map=label_map,
                    extra=kept)
    log.info("%s", verifier_summary(out))
    return out


def verifier_summary(path: Path) -> str:
    """One line on the verifier an attribute checkpoint carries, from its metadata."""
    meta = checkpoint_metadata(path)
    if "verifier_rows" not in meta:
        return f"{path}: no verifier training recorded"
    rows = json.loads(meta["verifier_rows"])
    bce = json.loads(meta["verifier_validation_bce"])
    return (f"verifier for detector {meta['verifier_detector_sha256'][:12]}: {rows['detections']} detections "
            f"({rows['scene_detections']} on training scenes, {rows['fresh_detections']} on fresh negatives, "
            f"{rows['right']} right); validation BCE {bce['detector_alone']:.4f} (detector alone) -> "
            f"{bce['with_verifier']:.4f}; {meta['verifier_train_seconds']} s")
