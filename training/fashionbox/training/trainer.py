"""Training of the default family: the detector, the attribute heads, then their mask, embedding and
vertical heads, on generated scenes (the last two: ``fashionbox.training.retrieval``).

``fashionbox train`` calls :func:`train_default`; each stage checkpoints (safetensors, with the
optimizer step in the metadata) every ``checkpoint_every`` steps and resumes from its last
checkpoint when run again with ``resume=True``. Everything is seeded, so a run on the same
machine with the same settings reproduces the shipped weights' quality (bitwise equality is
not promised across CPUs: floating-point reductions differ by thread count).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.core.imaging import crop_garments
from fashionbox.models import (
    AttributeClassifier,
    AttributeConfig,
    DetectorConfig,
    FashionDetector,
    checkpoint_metadata,
    save_checkpoint,
)
from fashionbox.training.data import SceneCache, build_scene_cache
from fashionbox.training.detection import assign_targets, detection_loss
from fashionbox.training.schedule import lr_at

__all__ = ["STAGES", "TrainSettings", "train_attributes", "train_default", "train_detector"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    out_dir: Path
    cache_dir: Path
    seed: int = 1
    train_scenes: int = 8000
    input_size: int = 320
    crop_size: int = 96
    detector_steps: int = 1100
    detector_batch: int = 32
    detector_lr: float = 3e-3
    attribute_epochs: int = 6
    attribute_batch: int = 128
    attribute_lr: float = 3e-3
    box_jitter: float = 0.06
    """Crop boxes are jittered by this fraction of their size, like a detector's boxes."""
    mask_scenes: int = 3000
    """Scenes (the first of the training seed's) rendered with instance maps for the mask head."""
    mask_size: int = 48
    mask_steps: int = 500
    mask_batch: int = 32
    mask_lr: float = 3e-3
    retrieval_identities: int = 2000
    """Garment identities (training seeds) the embedding head learns from."""
    retrieval_views: int = 4
    """Scenes per identity."""
    retrieval_crops_per_view: int = 2
    """Jittered crops per scene (the second mirrored)."""
    retrieval_dim: int = 128
    retrieval_steps: int = 3000
    retrieval_identities_per_batch: int = 64
    retrieval_crops_per_identity: int = 4
    retrieval_lr: float = 2e-3
    retrieval_temperature: float = 0.07
    vertical_photos: int = 12000
    """Single-product photos (training seeds) the vertical head learns from."""
    vertical_steps: int = 1500
    vertical_batch: int = 128
    vertical_lr: float = 2e-3
    threads: int = 2
    checkpoint_every: int = 100
    resume: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.train_scenes < self.detector_batch:
            raise ValueError("train_scenes must be at least one batch")
        if self.detector_steps < 1 or self.attribute_epochs < 1 or self.mask_steps < 1:
            raise ValueError("steps and epochs must be >= 1")
        if self.mask_size < 1 or self.mask_scenes < 1 or self.mask_batch < 1:
            raise ValueError("mask_size, mask_scenes and mask_batch must be >= 1")
        if min(self.retrieval_identities, self.retrieval_views, self.retrieval_crops_per_view, self.retrieval_dim,
               self.retrieval_steps, self.retrieval_crops_per_identity, self.vertical_photos, self.vertical_steps,
               self.vertical_batch) < 1 or self.retrieval_identities_per_batch < 2:
            raise ValueError("retrieval and vertical sizes and steps must be >= 1 (>= 2 identities per batch)")
        if self.retrieval_temperature <= 0:
            raise ValueError("retrieval_temperature must be positive")

    def to_json(self) -> str:
        """The recipe, recorded in checkpoints; local folders are left out (they name this machine)."""
        recipe = {k: v for k, v in asdict(self).items() if k not in ("out_dir", "cache_dir")}
        return json.dumps(recipe, sort_keys=True)


def _batch(cache: SceneCache, indices: npt.NDArray[np.int64], rng: np.random.Generator,
           size: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    pixels = np.asarray(cache.pixels[np.sort(indices)])
    boxes, classes = [], []
    for k, i in enumerate(np.sort(indices)):
        b = cache.boxes_of(int(i)).copy()
        if rng.random() < 0.5:  # horizontal flip: every label here is mirror-symmetric
            pixels[k] = pixels[k, :, ::-1]
            b[:, [0, 2]] = size - b[:, [2, 0]]
        boxes.append(torch.from_numpy(b))
        classes.append(torch.from_numpy(cache.classes_of(int(i))))
    return torch.from_numpy(np.ascontiguousarray(pixels)), boxes, classes


def train_detector(settings: TrainSettings, cache: SceneCache, label_map: LabelMap) -> Path:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    config = DetectorConfig(num_classes=label_map.num_categories, input_size=settings.input_size)
    model = FashionDetector(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.detector_lr, weight_decay=1e-4)
    path = settings.out_dir / "detector.safetensors"
    start = 0
    if settings.resume and path.is_file():
        from fashionbox.models import load_detector

        loaded, _ = load_detector(path)
        model.load_state_dict(loaded.state_dict())
        start = int(checkpoint_metadata(path).get("step", "0"))
        log.info("resuming detector training at step %d", start)
    model.train()
    progress = tqdm(range(start, settings.detector_steps), desc="detector", unit="step", initial=start,
                    total=settings.detector_steps)
    t0 = time.perf_counter()
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.detector_steps, settings.detector_lr)
        indices = rng.choice(len(cache), settings.detector_batch, replace=False)
        pixels, boxes, classes = _batch(cache, indices, rng, settings.input_size)
        outputs = model(pixels)
        targets = assign_targets(config, model.centers, model.location_strides, boxes, classes)
        loss = detection_loss(outputs, targets, config.num_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        progress.set_postfix(loss=f"{float(loss.total.detach()):.3f}", cls=f"{float(loss.classification):.3f}",
                             box=f"{float(loss.box):.3f}")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.detector_steps:
            save_checkpoint(path, model, kind="detector", config_json=config.to_json(), label_map=label_map,
                            extra={"step": str(step + 1), "train_settings": settings.to_json(),
                                   "train_seconds": f"{time.perf_counter() - t0:.0f}"})
    return path


def _jitter(boxes: npt.NDArray[np.float32], rng: np.random.Generator, amount: float,
            size: int) -> npt.NDArray[np.float32]:
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    out = boxes + rng.uniform(-amount, amount, boxes.shape).astype(np.float32) * wh
    clipped: npt.NDArray[np.float32] = np.clip(out, 0, size).astype(np.float32)
    return clipped


def train_attributes(settings: TrainSettings, cache: SceneCache, label_map: LabelMap) -> Path:
    torch.manual_seed(settings.seed + 1)
    rng = np.random.default_rng(settings.seed + 1)
    config = AttributeConfig(group_sizes=tuple(len(g.labels) for g in label_map.attribute_groups),
                             crop_size=settings.crop_size)
    model = AttributeClassifier(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.attribute_lr, weight_decay=1e-4)
    scene_of_box = np.repeat(np.arange(len(cache)), np.diff(cache.offsets))
    has_attribute = (cache.attributes >= 0).any(axis=1)
    box_ids = np.flatnonzero(has_attribute)
    steps_per_epoch = max(1, len(box_ids) // settings.attribute_batch)
    total = steps_per_epoch * settings.attribute_epochs
    progress = tqdm(total=total, desc="attributes", unit="step")
    step = 0
    for _epoch in range(settings.attribute_epochs):
        order = rng.permutation(box_ids)
        for s in range(steps_per_epoch):
            chosen = np.sort(order[s * settings.attribute_batch : (s + 1) * settings.attribute_batch])
            crops = []
            for box_id in chosen:
                scene = int(scene_of_box[box_id])
                box = _jitter(cache.boxes[box_id : box_id + 1], rng, settings.box_jitter, settings.input_size)
                crop = crop_garments(cache.pixels[scene], box, settings.crop_size)[0]
                crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
            x = torch.from_numpy(np.ascontiguousarray(np.stack(crops)))
            y = torch.from_numpy(cache.attributes[chosen])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, settings.attribute_lr, warmup=50)
            logits = model.logits(x)
            losses = [torch.nn.functional.cross_entropy(g, y[:, j], ignore_index=-1, reduction="sum")
                      for j, g in enumerate(logits)]
            loss = sum(losses) / max(1, int((y >= 0).sum()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{float(loss.detach()):.3f}")  # type: ignore[union-attr]
    progress.close()
    path = settings.out_dir / "attributes.safetensors"
    save_checkpoint(path, model.eval(), kind="attributes", config_json=config.to_json(), label_map=label_map,
                    extra={"train_settings": settings.to_json()})
    return path


STAGES = ("detector", "attributes", "masks", "embedding", "verticals")


def train_default(settings: TrainSettings, *, stages: tuple[str, ...] = STAGES) -> dict[str, Path]:
    """Train ``stages`` in order; ``masks``, ``embedding`` and ``verticals`` add their head to the
    attribute checkpoint in ``out_dir`` (the one just trained, or one already there), or to the
    shipped one when there is none, keeping every other tensor as it is."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown training stages {sorted(unknown)}; choose from {STAGES}")
    torch.set_num_threads(settings.threads)
    label_map = default_label_map()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "detector" in stages or "attributes" in stages:
        with tqdm(total=settings.train_scenes, desc="scenes", unit="scene") as bar:
            cache = build_scene_cache(settings.cache_dir, count=settings.train_scenes, seed=settings.seed,
                                      input_size=settings.input_size, label_map=label_map, progress=bar.update)
        if "detector" in stages:
            written["detector"] = train_detector(settings, cache, label_map)
        if "attributes" in stages:
            written["attributes"] = train_attributes(settings, cache, label_map)
    if "masks" in stages:
        from fashionbox.models import default_weights
        from fashionbox.training.masks import build_mask_cache, train_masks

        base = settings.out_dir / "attributes.safetensors"
        if not base.is_file():
            base = default_weights("attributes")
        with tqdm(total=settings.mask_scenes, desc="scenes with instances", unit="scene") as bar:
            masks = build_mask_cache(settings.cache_dir, count=settings.mask_scenes, seed=settings.seed,
                                     input_size=settings.input_size, label_map=label_map, progress=bar.update)
        written["attributes"] = train_masks(settings, masks, label_map, base=base)
    for stage in ("embedding", "verticals"):
        if stage in stages:
            written["attributes"] = _train_retrieval_stage(settings, stage, label_map)
    return written


def _train_retrieval_stage(settings: TrainSettings, stage: str, label_map: LabelMap) -> Path:
    from fashionbox.models import default_weights, load_attributes
    from fashionbox.synth import VERTICALS
    from fashionbox.training.retrieval import (
        build_identity_cache,
        build_product_cache,
        identity_seeds,
        train_embedding,
        train_verticals,
    )

    base = settings.out_dir / "attributes.safetensors"
    if not base.is_file():
        base = default_weights("attributes")
    classifier, _ = load_attributes(base)
    if stage == "embedding":
        seeds = identity_seeds(settings.seed, settings.retrieval_identities)
        with tqdm(total=len(seeds), desc="identities", unit="garment") as bar:
            cache = build_identity_cache(settings.cache_dir, classifier, seeds=seeds, views=settings.retrieval_views,
                                         crops_per_view=settings.retrieval_crops_per_view,
                                         input_size=settings.input_size, jitter=settings.box_jitter,
                                         label_map=label_map, progress=bar.update)
        return train_embedding(settings, cache, label_map, base=base)
    seeds = identity_seeds(settings.seed, settings.vertical_photos)
    with tqdm(total=len(seeds), desc="product photos", unit="photo") as bar:
        products = build_product_cache(settings.cache_dir, classifier, seeds=seeds, input_size=settings.input_size,
                                       verticals=VERTICALS, label_map=label_map, progress=bar.update)
    return train_verticals(settings, products, label_map, base=base)
