"""Training of the attribute classifier's garment-embedding and product-vertical heads on a frozen trunk.

Both heads read the trunk's pooled multi-stage descriptor (``AttributeClassifier.descriptor``),
and the trunk is frozen, so each crop's descriptor is computed once and cached; the heads then
train on the cache in minutes on two cores:

* **embedding** (``fashionbox train --stage embedding``): garment identities
  (``fashionbox.synth.render_identity_scenes``) in ``views`` scenes each; every view's garment is
  cut with ``crop_garments`` from the letterbox, as the server cuts a detection, with the box
  jitter of the attribute stage, ``crops_per_view`` times (half of them mirrored). Batches hold
  ``P`` identities x ``K`` crops and the loss is supervised contrastive (Khosla et al., 2020):
  each crop is pulled towards the other crops of its garment and pushed from every other garment.
* **verticals** (``--stage verticals``): single-product photos (``render_product_photo``), each
  letterboxed and cut as one crop of its whole content box (how the server feeds the vertical
  head), cross-entropy over ``fashionbox.synth.VERTICALS``.

Identities and photos come from seeds disjoint from the held-out ones the benchmarks use
(:func:`identity_seeds` with ``held_out=True``)::

    cache = build_identity_cache(cache_dir, classifier, seeds=identity_seeds(1, 2000), views=4, ...)
    path = train_embedding(settings, cache, label_map, base=attributes_checkpoint)
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from fashionbox.contract.labels import LabelMap
from fashionbox.core.imaging import crop_garments, decode_image, letterbox
from fashionbox.models import (
    AttributeClassifier,
    CheckpointError,
    checkpoint_metadata,
    load_attributes,
    save_checkpoint,
)
from fashionbox.training.schedule import lr_at

__all__ = [
    "HELD_OUT_BASE",
    "DescriptorCache",
    "IdentityCrops",
    "RetrievalSettings",
    "build_identity_cache",
    "build_product_cache",
    "identity_crops",
    "identity_seeds",
    "product_crop",
    "supervised_contrastive_loss",
    "train_embedding",
    "train_verticals",
    "with_heads",
]

log = logging.getLogger(__name__)

HELD_OUT_BASE = 10**12
"""Held-out identity and product seeds start here; training ones are ``seed * 1_000_003 + i``
(below ``10**12`` for every training seed under 10**6), so the two never meet."""


class RetrievalSettings(Protocol):
    """What this module reads of ``fashionbox.training.trainer.TrainSettings`` (a protocol, so this
    module does not import the trainer that calls it)."""

    @property
    def seed(self) -> int: ...

    @property
    def resume(self) -> bool: ...

    @property
    def out_dir(self) -> Path: ...

    @property
    def checkpoint_every(self) -> int: ...

    @property
    def retrieval_dim(self) -> int: ...

    @property
    def retrieval_steps(self) -> int: ...

    @property
    def retrieval_identities_per_batch(self) -> int: ...

    @property
    def retrieval_crops_per_identity(self) -> int: ...

    @property
    def retrieval_lr(self) -> float: ...

    @property
    def retrieval_temperature(self) -> float: ...

    @property
    def vertical_steps(self) -> int: ...

    @property
    def vertical_batch(self) -> int: ...

    @property
    def vertical_lr(self) -> float: ...

    def to_json(self) -> str: ...


def identity_seeds(seed: int, count: int, *, held_out: bool = False) -> list[int]:
    """The identity (or product photo) seeds of a training run, or of the held-out set."""
    if seed < 0 or seed >= 10**6:
        raise ValueError(f"training seeds are in [0, 10**6), got {seed}")
    base = HELD_OUT_BASE + seed * 1_000_003 if held_out else seed * 1_000_003
    return [base + i for i in range(count)]


def _jitter(boxes: npt.NDArray[np.float32], rng: np.random.Generator, amount: float,
            size: int) -> npt.NDArray[np.float32]:
    """Boxes moved by up to ``amount`` of their size per edge, like a detector's boxes (as the attribute stage)."""
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    out = boxes + rng.uniform(-amount, amount, boxes.shape).astype(np.float32) * wh
    clipped: npt.NDArray[np.float32] = np.clip(out, 0, size).astype(np.float32)
    return clipped


@dataclass(frozen=True)
class IdentityCrops:
    crops: npt.NDArray[np.uint8]
    """``[views * crops_per_view, C, C, 3]``, view-major; odd crops of a view are mirrored."""
    attributes: tuple[tuple[str, str], ...]
    """The garment's ``(group, label)`` pairs, sorted (its attribute label set)."""
    category: str


def identity_crops(identity: int, *, views: int, crops_per_view: int, input_size: int, crop_size: int,
                   jitter: float, label_map: LabelMap) -> IdentityCrops:
    """Crops of garment ``identity`` in ``views`` scenes, served-style (JPEG, letterbox, jittered box crop)."""
    from fashionbox.synth import render_identity_scenes

    rng = np.random.default_rng([identity, 17])
    scenes = render_identity_scenes(identity, views, label_map=label_map)
    crops = []
    for scene in scenes:
        garment = next(g for g in scene.garments if g.identity == identity)
        data = scene.encode(format="JPEG", quality=int(rng.integers(70, 96)))
        pixels, info = letterbox(decode_image(data, target_size=input_size), input_size)
        box = info.to_letterbox(np.array([garment.box], dtype=np.float32)).astype(np.float32)
        for k in range(crops_per_view):
            crop = crop_garments(pixels, _jitter(box, rng, jitter, input_size), crop_size)[0]
            crops.append(crop[:, ::-1] if k % 2 else crop)
    first = next(g for g in scenes[0].garments if g.identity == identity)
    return IdentityCrops(np.ascontiguousarray(np.stack(crops)), tuple(sorted(first.attributes.items())),
                         first.category)


def product_crop(seed: int, *, input_size: int, crop_size: int, label_map: LabelMap,
                 ) -> tuple[npt.NDArray[np.uint8], str]:
    """Product photo ``seed`` as the server feeds the vertical head: letterboxed, one crop of its
    whole content box; and its vertical."""
    from fashionbox.synth import render_product_photo

    photo = render_product_photo(seed, label_map=label_map)
    rng = np.random.default_rng([seed, 23])
    data = photo.encode(format="JPEG", quality=int(rng.integers(70, 96)))
    decoded = decode_image(data, target_size=input_size)
    pixels, info = letterbox(decoded, input_size)
    content = info.to_letterbox(np.array([[0, 0, photo.image.width, photo.image.height]], dtype=np.float32))
    return crop_garments(pixels, content.astype(np.float32), crop_size)[0], photo.vertical


def _identity_worker(args: tuple[int, int, int, int, int, float, str]) -> IdentityCrops:
    identity, views, per_view, input_size, crop_size, jitter, labels_json = args
    return identity_crops(identity, views=views, crops_per_view=per_view, input_size=input_size, crop_size=crop_size,
                          jitter=jitter, label_map=LabelMap.from_dict(json.loads(labels_json)))


def _product_worker(args: tuple[int, int, int, str]) -> tuple[npt.NDArray[np.uint8], str]:
    seed, input_size, crop_size, labels_json = args
    return product_crop(seed, input_size=input_size, crop_size=crop_size,
                        label_map=LabelMap.from_dict(json.loads(labels_json)))


class DescriptorCache:
    """Per-crop trunk descriptors with their labels (``labels[i]``: identity index or vertical index)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.descriptors = np.load(folder / "descriptors.npy")
        self.labels = np.load(folder / "labels.npy")
        meta = json.loads((folder / "meta.json").read_text())
        self.names: list[str] = meta["names"]
        """Identity: each identity's attribute set as JSON; verticals: the vertical names."""

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])


def _trunk_key(classifier: AttributeClassifier) -> str:
    """Digest of the trunk's tensors: a cache is reused only with the same frozen trunk."""
    digest = hashlib.sha256()
    for name, tensor in sorted(classifier.state_dict().items()):
        if name.startswith(("features.", "heads.")):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def descriptors_of(classifier: AttributeClassifier, crops: npt.NDArray[np.uint8], batch: int = 256,
                   ) -> npt.NDArray[np.float32]:
    """The frozen trunk's descriptors of uint8 crops ``[N, C, C, 3]`` (eval mode, no gradients)."""
    classifier.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch):
            out.append(classifier.descriptor(torch.from_numpy(np.ascontiguousarray(crops[start:start + batch]))))
    return torch.cat(out).numpy().astype(np.float32)


def _write_cache(folder: Path, descriptors: npt.NDArray[np.float32], labels: npt.NDArray[np.int64],
                 names: Sequence[str]) -> DescriptorCache:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "descriptors.npy", descriptors)
    np.save(folder / "labels.npy", labels)
    (folder / "meta.json").write_text(json.dumps({"names": list(names)}))
    (folder / "complete").write_text("ok\n")
    return DescriptorCache(folder)


def build_identity_cache(cache_root: Path, classifier: AttributeClassifier, *, seeds: Sequence[int], views: int,
                         crops_per_view: int, input_size: int, jitter: float, label_map: LabelMap,
                         workers: int = 2, progress: Callable[[int], None] | None = None) -> DescriptorCache:
    """Descriptors of every crop of every identity in ``seeds`` (or a complete cache with the same key)."""
    crop_size = classifier.config.crop_size
    key = (f"identities-{seeds[0]}-n{len(seeds)}-v{views}x{crops_per_view}-s{input_size}-c{crop_size}"
           f"-j{jitter}-{_trunk_key(classifier)}")
    folder = Path(cache_root) / key
    if (folder / "complete").is_file():
        return DescriptorCache(folder)
    jobs = [(s, views, crops_per_view, input_size, crop_size, jitter, label_map.to_json()) for s in seeds]
    descriptors, labels, names = [], [], []
    with mp.get_context("fork").Pool(workers) as pool:
        for index, sample in enumerate(pool.imap(_identity_worker, jobs, chunksize=4)):
            descriptors.append(descriptors_of(classifier, sample.crops))
            labels.append(np.full(len(sample.crops), index, dtype=np.int64))
            names.append(json.dumps([sample.category, *[f"{g}={v}" for g, v in sample.attributes]]))
            if progress is not None:
                progress(1)
    log.info("cached %d identities in %s", len(seeds), folder)
    return _write_cache(folder, np.concatenate(descriptors), np.concatenate(labels), names)


def build_product_cache(cache_root: Path, classifier: AttributeClassifier, *, seeds: Sequence[int],
                        input_size: int, verticals: Sequence[str], label_map: LabelMap, workers: int = 2,
                        progress: Callable[[int], None] | None = None) -> DescriptorCache:
    """Descriptors of product photos ``seeds`` (each one whole-photo crop, and its mirror image)."""
    crop_size = classifier.config.crop_size
    key = f"products-{seeds[0]}-n{len(seeds)}-s{input_size}-c{crop_size}-{_trunk_key(classifier)}"
    folder = Path(cache_root) / key
    if (folder / "complete").is_file():
        return DescriptorCache(folder)
    jobs = [(s, input_size, crop_size, label_map.to_json()) for s in seeds]
    crops, labels = [], []
    with mp.get_context("fork").Pool(workers) as pool:
        for crop, vertical in pool.imap(_product_worker, jobs, chunksize=16):
            crops += [crop, crop[:, ::-1]]
            labels += [verticals.index(vertical)] * 2
            if progress is not None:
                progress(1)
    descriptors = descriptors_of(classifier, np.ascontiguousarray(np.stack(crops)))
    log.info("cached %d product photos in %s", len(seeds), folder)
    return _write_cache(folder, descriptors, np.array(labels, dtype=np.int64), list(verticals))


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon on unit vectors: mean over anchors of -log softmax mass on the anchor's positives."""
    similarity = embeddings @ embeddings.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=embeddings.device)
    similarity = similarity.masked_fill(eye, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    counts = positives.sum(1).clamp(min=1)
    per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(1) / counts
    return per_anchor[positives.any(1)].mean()


def with_heads(base: AttributeClassifier, *, retrieval_dim: int | None = None,
               verticals: tuple[str, ...] | None = None) -> AttributeClassifier:
    """A classifier with ``base``'s tensors (copied) and the heads asked for; a head whose shape
    changes starts fresh, the others keep ``base``'s weights (in eval mode)."""
    config = base.config
    if retrieval_dim is not None:
        config = replace(config, retrieval_dim=retrieval_dim)
    if verticals is not None:
        config = replace(config, verticals=verticals)
    model = AttributeClassifier(config)
    fresh = set()
    if config.retrieval_dim != base.config.retrieval_dim:
        fresh.add("embedding_head.")
    if config.verticals != base.config.verticals:
        fresh.add("vertical_head.")
    state = {k: v for k, v in base.state_dict().items() if not k.startswith(tuple(fresh))}
    result = model.load_state_dict(state, strict=False)
    heads = ("embedding_head.", "vertical_head.")
    if result.unexpected_keys or any(not k.startswith(heads) for k in result.missing_keys):
        raise CheckpointError(f"the base classifier does not match: {result}")
    return model.eval()


def _save(path: Path, model: AttributeClassifier, label_map: LabelMap, meta: dict[str, str],
          extra: dict[str, str]) -> None:
    kept = {k: v for k, v in meta.items() if k not in ("format", "kind", "config", "label_map")}
    kept.update(extra)
    save_checkpoint(path, model.eval(), kind="attributes", config_json=model.config.to_json(), label_map=label_map,
                    extra=kept)


def _train_head(model: AttributeClassifier, head: torch.nn.Module, *, steps: int, start: int, lr: float,
                name: str, loss_at: Callable[[int], torch.Tensor],
                checkpoint: Callable[[int, float], None], every: int) -> None:
    for parameter_name, parameter in model.named_parameters():
        parameter.requires_grad_(parameter_name.startswith(f"{name}_head."))
    model.eval()  # trunk BatchNorm statistics stay as shipped
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    warmup = min(50, max(1, steps // 10))
    progress = tqdm(range(start, steps), desc=f"{name} head", unit="step", initial=start, total=steps)
    t0 = time.perf_counter()
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=warmup)
        head.train()
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        head.eval()
        progress.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if (step + 1) % every == 0 or step + 1 == steps:
            checkpoint(step + 1, time.perf_counter() - t0)
    progress.close()


def train_embedding(settings: RetrievalSettings, cache: DescriptorCache, label_map: LabelMap, *, base: Path) -> Path:
    """Train the embedding head on ``cache`` (identity descriptors) over ``base``; writes
    ``attributes.safetensors`` in ``settings.out_dir`` with every other tensor of ``base`` unchanged."""
    torch.manual_seed(settings.seed + 3)
    rng = np.random.default_rng(settings.seed + 3)
    classifier, _ = load_attributes(base)
    meta = checkpoint_metadata(base)
    start = 0
    if (settings.resume and classifier.config.retrieval_dim == settings.retrieval_dim
            and "embedding_step" in meta):
        model = classifier
        start = int(meta["embedding_step"])
        log.info("resuming embedding head training at step %d", start)
    else:
        model = with_heads(classifier, retrieval_dim=settings.retrieval_dim)
    head = model.embedding_head
    assert head is not None
    descriptors = torch.from_numpy(cache.descriptors)
    by_identity = [np.flatnonzero(cache.labels == i) for i in range(int(cache.labels.max()) + 1)]
    per_batch = min(settings.retrieval_identities_per_batch, len(by_identity))
    k = settings.retrieval_crops_per_identity

    def loss_at(step: int) -> torch.Tensor:
        chosen = rng.choice(len(by_identity), per_batch, replace=False)
        rows = np.concatenate([rng.choice(by_identity[i], k, replace=len(by_identity[i]) < k) for i in chosen])
        labels = torch.from_numpy(np.repeat(chosen, k))
        return supervised_contrastive_loss(head(descriptors[rows]), labels, settings.retrieval_temperature)

    path = settings.out_dir / "attributes.safetensors"

    def checkpoint(step: int, seconds: float) -> None:
        _save(path, model, label_map, meta, {
            "embedding_step": str(step), "embedding_train_settings": settings.to_json(),
            "embedding_train_seconds": f"{seconds:.0f}", "embedding_cache": cache.folder.name})

    _train_head(model, head, steps=settings.retrieval_steps, start=start, lr=settings.retrieval_lr, name="embedding",
                loss_at=loss_at, checkpoint=checkpoint, every=settings.checkpoint_every)
    return path


def train_verticals(settings: RetrievalSettings, cache: DescriptorCache, label_map: LabelMap, *, base: Path) -> Path:
    """Train the vertical head on ``cache`` (product-photo descriptors) over ``base``; as :func:`train_embedding`."""
    torch.manual_seed(settings.seed + 4)
    rng = np.random.default_rng(settings.seed + 4)
    classifier, _ = load_attributes(base)
    meta = checkpoint_metadata(base)
    verticals = tuple(cache.names)
    start = 0
    if settings.resume and classifier.config.verticals == verticals and "verticals_step" in meta:
        model = classifier
        start = int(meta["verticals_step"])
        log.info("resuming vertical head training at step %d", start)
    else:
        model = with_heads(classifier, verticals=verticals)
    head = model.vertical_head
    assert head is not None
    descriptors = torch.from_numpy(cache.descriptors)
    labels = torch.from_numpy(cache.labels)

    # Class-balanced batches: the label map has three tops for one dress, and a product shop's
    # verticals are not in the generator's proportions either.
    counts = np.bincount(cache.labels, minlength=len(verticals)).astype(np.float64)
    weights = 1.0 / counts[cache.labels]
    weights /= weights.sum()

    def loss_at(step: int) -> torch.Tensor:
        rows = torch.from_numpy(rng.choice(len(cache), settings.vertical_batch, replace=False, p=weights))
        return torch.nn.functional.cross_entropy(head(descriptors[rows]), labels[rows], label_smoothing=0.05)

    path = settings.out_dir / "attributes.safetensors"

    def checkpoint(step: int, seconds: float) -> None:
        _save(path, model, label_map, meta, {
            "verticals_step": str(step), "verticals_train_settings": settings.to_json(),
            "verticals_train_seconds": f"{seconds:.0f}", "verticals_cache": cache.folder.name})

    _train_head(model, head, steps=settings.vertical_steps, start=start, lr=settings.vertical_lr, name="vertical",
                loss_at=loss_at, checkpoint=checkpoint, every=settings.checkpoint_every)
    return path
