"""Training of the attribute classifier's mask head on the generator's exact silhouettes.

Targets come from :func:`fashionbox.synth.render_scene_with_instances` (``i + 1`` on garment
``i``'s visible pixels) through the same geometry the server uses: the scene is JPEG-encoded,
decoded and letterboxed by :mod:`fashionbox.core.imaging` exactly as ``render_sample`` does (same
pixels as the scene cache), the instance map is sampled at twice the letterbox's resolution, and
each (jittered, like a detection) box's crop comes from ``crop_garments`` while its target is the
garment's coverage of every cell of the ``m x m`` grid over ``crop_regions`` of the same box::

    cache = build_mask_cache(cache_dir, count=3000, seed=1, input_size=320)
    path = train_masks(settings, cache, label_map, base=attributes_checkpoint)

The trunk and the attribute heads stay frozen (their outputs stay bit-identical); only the mask
head is trained, with a per-pixel binary cross-entropy on the soft coverage plus a soft Dice term.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from tqdm import tqdm

from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.core.imaging import LetterboxInfo, crop_garments, crop_regions, decode_image, letterbox
from fashionbox.models import (
    AttributeClassifier,
    CheckpointError,
    checkpoint_metadata,
    load_attributes,
    save_checkpoint,
)
from fashionbox.training.schedule import lr_at

__all__ = ["MaskCache", "MaskSample", "MaskTrainSettings", "build_mask_cache", "instance_grid", "mask_batch",
           "mask_loss", "render_mask_sample", "train_masks"]


class MaskTrainSettings(Protocol):
    """What :func:`train_masks` reads of ``fashionbox.training.trainer.TrainSettings`` (a protocol,
    so this module does not import the trainer that calls it)."""

    @property
    def seed(self) -> int: ...

    @property
    def resume(self) -> bool: ...

    @property
    def out_dir(self) -> Path: ...

    @property
    def checkpoint_every(self) -> int: ...

    @property
    def mask_size(self) -> int: ...

    @property
    def mask_lr(self) -> float: ...

    @property
    def mask_steps(self) -> int: ...

    @property
    def mask_batch(self) -> int: ...

    @property
    def box_jitter(self) -> float: ...

    def to_json(self) -> str: ...


log = logging.getLogger(__name__)

INSTANCE_UPSAMPLE = 2
"""The instance map is kept at this many times the letterbox's resolution (finer than the 320-px
letterbox, so small garments' targets are not blocky)."""


@dataclass(frozen=True)
class MaskSample:
    pixels: npt.NDArray[np.uint8]  # [S, S, 3] letterbox
    instances: npt.NDArray[np.uint8]  # [k*S, k*S]: i + 1 on garment i, 0 (or 255, unannotated) elsewhere
    boxes: npt.NDArray[np.float32]  # [G, 4] letterbox pixels


def instance_grid(instances: npt.NDArray[np.uint8], info: LetterboxInfo, size: int) -> npt.NDArray[np.uint8]:
    """The original-resolution instance map sampled (nearest) on a ``size x size`` grid over the letterbox.

    The grid covers the letterbox's square (``size`` is a multiple of its side): each cell takes
    the instance of the original pixel under its centre, through the letterbox's own mapping
    (:meth:`LetterboxInfo.to_original`'s inverse of ``to_letterbox``); cells in the padding are 0.
    """
    side = size / INSTANCE_UPSAMPLE
    centres = (np.arange(size, dtype=np.float64) + 0.5) * (side / size)
    xs = np.floor((centres - info.pad_x) / info.scale).astype(np.int64)
    ys = np.floor((centres - info.pad_y) / info.scale).astype(np.int64)
    height, width = instances.shape
    valid_x = (xs >= 0) & (xs < width)
    valid_y = (ys >= 0) & (ys < height)
    out = instances[np.clip(ys, 0, height - 1)][:, np.clip(xs, 0, width - 1)]
    out = np.where(valid_y[:, None] & valid_x[None, :], out, 0).astype(np.uint8)
    return out


def render_mask_sample(seed: int, input_size: int, label_map: LabelMap) -> MaskSample:
    """One scene as the training cache holds it: the same pixels as ``render_sample`` plus its instances."""
    from fashionbox.synth import render_scene_with_instances

    rng = np.random.default_rng(seed)
    scene, instances = render_scene_with_instances(seed, label_map=label_map)
    data = scene.encode(format="JPEG", quality=int(rng.integers(70, 96)))  # as render_sample draws it
    pixels, info = letterbox(decode_image(data, target_size=input_size), input_size)
    boxes = info.to_letterbox(np.array([g.box for g in scene.garments], dtype=np.float32).reshape(-1, 4))
    grid = instance_grid(instances, info, input_size * INSTANCE_UPSAMPLE)
    return MaskSample(pixels, grid, boxes.astype(np.float32))


def _render_worker(args: tuple[int, int, str]) -> MaskSample:
    seed, input_size, labels_json = args
    return render_mask_sample(seed, input_size, LabelMap.from_dict(json.loads(labels_json)))


class MaskCache:
    """Scenes with instance maps, as flat arrays with per-scene offsets (memory-mapped images)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pixels = np.load(folder / "pixels.npy", mmap_mode="r")
        self.instances = np.load(folder / "instances.npy", mmap_mode="r")
        self.boxes = np.load(folder / "boxes.npy")
        self.offsets = np.load(folder / "offsets.npy")

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def scene_of_box(self) -> npt.NDArray[np.int64]:
        return np.repeat(np.arange(len(self)), np.diff(self.offsets))

    def instance_of_box(self, box_id: int) -> int:
        """The instance-map value of garment ``box_id`` (its index in its scene, plus one)."""
        scene = int(np.searchsorted(self.offsets, box_id, side="right") - 1)
        return box_id - int(self.offsets[scene]) + 1


def build_mask_cache(cache_root: Path, *, count: int, seed: int, input_size: int,
                     label_map: LabelMap | None = None, workers: int = 2,
                     progress: Callable[[int], None] | None = None) -> MaskCache:
    """Render ``count`` scenes with their instance maps (or reuse a complete cache with the same parameters)."""
    from fashionbox.training.data import scene_seed

    label_map = label_map or default_label_map()
    key = f"masks-n{count}-seed{seed}-s{input_size}-x{INSTANCE_UPSAMPLE}-{label_map.name}"
    folder = Path(cache_root) / key
    if (folder / "complete").is_file():
        return MaskCache(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grid = input_size * INSTANCE_UPSAMPLE
    pixels = np.lib.format.open_memmap(  # type: ignore[no-untyped-call]
        folder / "pixels.npy", mode="w+", dtype=np.uint8, shape=(count, input_size, input_size, 3))
    instances = np.lib.format.open_memmap(  # type: ignore[no-untyped-call]
        folder / "instances.npy", mode="w+", dtype=np.uint8, shape=(count, grid, grid))
    boxes, offsets = [], [0]
    jobs = [(scene_seed(seed, i), input_size, label_map.to_json()) for i in range(count)]
    with mp.get_context("fork").Pool(workers) as pool:
        for i, sample in enumerate(pool.imap(_render_worker, jobs, chunksize=16)):
            pixels[i] = sample.pixels
            instances[i] = sample.instances
            boxes.append(sample.boxes)
            offsets.append(offsets[-1] + len(sample.boxes))
            if progress is not None:
                progress(1)
    pixels.flush()
    instances.flush()
    del pixels, instances
    np.save(folder / "boxes.npy", np.concatenate(boxes).astype(np.float32))
    np.save(folder / "offsets.npy", np.array(offsets, dtype=np.int64))
    (folder / "complete").write_text("ok\n")
    log.info("cached %d scenes with instances in %s", count, folder)
    return MaskCache(folder)


def mask_targets(instances: npt.NDArray[np.uint8], instance: int, boxes: npt.NDArray[np.float32], input_size: int,
                 mask_size: int) -> npt.NDArray[np.float32]:
    """Coverage ``[n, m, m]`` of garment ``instance`` in each cell of the grid over each box's crop region."""
    regions = crop_regions(boxes, input_size, input_size) * INSTANCE_UPSAMPLE
    silhouette = Image.fromarray((np.asarray(instances) == instance).astype(np.float32), mode="F")
    out = np.zeros((len(boxes), mask_size, mask_size), dtype=np.float32)
    for i, (x1, y1, x2, y2) in enumerate(regions.tolist()):
        if x2 - x1 >= 1.0 and y2 - y1 >= 1.0:
            out[i] = np.asarray(silhouette.resize((mask_size, mask_size), Image.Resampling.BOX, box=(x1, y1, x2, y2)))
    return out


def _jitter(boxes: npt.NDArray[np.float32], rng: np.random.Generator, amount: float,
            size: int) -> npt.NDArray[np.float32]:
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    out = boxes + rng.uniform(-amount, amount, boxes.shape).astype(np.float32) * wh
    clipped: npt.NDArray[np.float32] = np.clip(out, 0, size).astype(np.float32)
    return clipped


def mask_batch(cache: MaskCache, box_ids: npt.NDArray[np.int64], rng: np.random.Generator, *, crop_size: int,
               mask_size: int, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 crops ``[n, C, C, 3]`` and float targets ``[n, m, m]`` for garments ``box_ids`` (flipped at random)."""
    size = int(cache.pixels.shape[1])
    scene_of_box = np.searchsorted(cache.offsets, box_ids, side="right") - 1
    crops, targets = [], []
    for box_id, scene in zip(box_ids.tolist(), scene_of_box.tolist(), strict=True):
        box = _jitter(cache.boxes[box_id : box_id + 1], rng, jitter, size)
        crop = crop_garments(cache.pixels[scene], box, crop_size)[0]
        target = mask_targets(cache.instances[scene], box_id - int(cache.offsets[scene]) + 1, box, size, mask_size)[0]
        if rng.random() < 0.5:  # the silhouettes' mirror images are as likely
            crop, target = crop[:, ::-1], target[:, ::-1]
        crops.append(crop)
        targets.append(target)
    return (torch.from_numpy(np.ascontiguousarray(np.stack(crops))),
            torch.from_numpy(np.ascontiguousarray(np.stack(targets))))


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE on the soft coverage plus a per-mask soft Dice term (weights IoU-like overlap)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    probs = torch.sigmoid(logits).flatten(1)
    flat = targets.flatten(1)
    dice = 1 - (2 * (probs * flat).sum(1) + 1) / (probs.sum(1) + flat.sum(1) + 1)
    return bce + dice.mean()


def with_mask_head(base: AttributeClassifier, mask_size: int) -> AttributeClassifier:
    """A classifier with ``base``'s trunk and heads (copied) and a fresh mask head of ``mask_size`` (in eval mode)."""
    model = AttributeClassifier(replace(base.config, mask_size=mask_size))
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("mask_head.")}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith("mask_head.") for k in result.missing_keys):
        raise CheckpointError(f"the base classifier does not match: {result}")
    return model.eval()


def train_masks(settings: MaskTrainSettings, cache: MaskCache, label_map: LabelMap, *, base: Path) -> Path:
    """Train the mask head on top of the attribute checkpoint ``base``; writes ``attributes.safetensors``.

    The trunk and the attribute heads are ``base``'s, frozen (eval mode, no gradients). With
    ``settings.resume`` and a ``base`` that already has a head with a recorded ``mask_step``, the
    head continues from there.
    """
    torch.manual_seed(settings.seed + 2)
    rng = np.random.default_rng(settings.seed + 2)
    classifier, _ = load_attributes(base)
    start = 0
    meta = checkpoint_metadata(base)
    if settings.resume and classifier.mask_size == settings.mask_size and "mask_step" in meta:
        model = classifier
        start = int(meta["mask_step"])
        log.info("resuming mask head training at step %d", start)
    else:
        model = with_mask_head(classifier, settings.mask_size)
    head = model.mask_head
    assert head is not None
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("mask_head."))
    model.eval()  # trunk BatchNorm statistics stay as shipped
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.mask_lr, weight_decay=1e-4)
    box_ids = np.arange(int(cache.offsets[-1]))
    warmup = min(50, max(1, settings.mask_steps // 10))
    path = settings.out_dir / "attributes.safetensors"
    progress = tqdm(range(start, settings.mask_steps), desc="mask head", unit="step", initial=start,
                    total=settings.mask_steps)
    t0 = time.perf_counter()

    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.mask_steps, settings.mask_lr, warmup=warmup)
        chosen = np.sort(rng.choice(box_ids, settings.mask_batch, replace=len(box_ids) < settings.mask_batch))
        crops, targets = mask_batch(cache, chosen, rng, crop_size=model.config.crop_size,
                                    mask_size=settings.mask_size, jitter=settings.box_jitter)
        head.train()
        loss = mask_loss(model.mask_logits(crops), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        head.eval()
        progress.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.mask_steps:
            extra = {k: v for k, v in meta.items() if k not in ("format", "kind", "config", "label_map")}
            extra.update({"mask_step": str(step + 1), "mask_train_settings": settings.to_json(),
                          "mask_train_seconds": f"{time.perf_counter() - t0:.0f}"})
            save_checkpoint(path, model.eval(), kind="attributes", config_json=model.config.to_json(),
                            label_map=label_map, extra=extra)
    progress.close()
    return path
