"""Training data: generated scenes passed through the serving pre-processing, cached on disk.

Every scene is rendered by ``fashionbox.synth``, JPEG-encoded, decoded and letterboxed by
``fashionbox.core.imaging`` exactly as the ``preprocess`` model does it, so the networks train on
the pixels they are served. The cache is a folder of ``.npy`` arrays keyed by its parameters,
built by two worker processes (one per core here) and reused across runs::

    cache = build_scene_cache(cache_dir, count=8000, seed=1, input_size=320)
    cache.pixels[i]                     # uint8 [S, S, 3]
    cache.boxes_of(i), cache.classes_of(i), cache.attributes_of(i)
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.core.imaging import decode_image, letterbox

if TYPE_CHECKING:
    from fashionbox.synth.scene import Scene

__all__ = ["SceneCache", "SceneSample", "build_scene_cache", "render_sample", "scene_sample"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneSample:
    pixels: npt.NDArray[np.uint8]  # [S, S, 3]
    boxes: npt.NDArray[np.float32]  # [G, 4] letterbox pixels
    classes: npt.NDArray[np.int64]  # [G]
    attributes: npt.NDArray[np.int64]  # [G, num_groups]; -1 where the group does not apply


def scene_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` of a dataset: any image can be re-rendered alone."""
    return seed * 1_000_003 + index


def render_sample(seed: int, input_size: int, label_map: LabelMap) -> SceneSample:
    from fashionbox.synth import render_scene

    return scene_sample(render_scene(seed, label_map=label_map), seed, input_size, label_map)


def scene_sample(scene: Scene, seed: int, input_size: int, label_map: LabelMap) -> SceneSample:
    """``scene`` JPEG round-tripped (its quality drawn from ``seed``) and letterboxed as the served
    ``preprocess`` does, with its garments as targets in letterbox pixels."""
    rng = np.random.default_rng(seed)
    data = scene.encode(format="JPEG", quality=int(rng.integers(70, 96)))
    pixels, info = letterbox(decode_image(data, target_size=input_size), input_size)
    garments = scene.garments
    boxes = info.to_letterbox(np.array([g.box for g in garments], dtype=np.float32).reshape(-1, 4))
    classes = np.array([label_map.category_index(g.category) for g in garments], dtype=np.int64)
    attributes = np.full((len(garments), len(label_map.attribute_groups)), -1, dtype=np.int64)
    for i, garment in enumerate(garments):
        for j, group in enumerate(label_map.attribute_groups):
            label = garment.attributes.get(group.name)
            if label is not None:
                attributes[i, j] = group.labels.index(label)
    return SceneSample(pixels, boxes, classes, attributes)


def _render_worker(args: tuple[int, int, str]) -> SceneSample:
    seed, input_size, labels_json = args
    return render_sample(seed, input_size, LabelMap.from_dict(json.loads(labels_json)))


class SceneCache:
    """Scenes stored as flat arrays with per-scene offsets (memory-mapped pixels)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pixels = np.load(folder / "pixels.npy", mmap_mode="r")
        self.boxes = np.load(folder / "boxes.npy")
        self.classes = np.load(folder / "classes.npy")
        self.attributes = np.load(folder / "attributes.npy")
        self.offsets = np.load(folder / "offsets.npy")

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def _slice(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def boxes_of(self, i: int) -> npt.NDArray[np.float32]:
        return np.asarray(self.boxes[self._slice(i)])

    def classes_of(self, i: int) -> npt.NDArray[np.int64]:
        return np.asarray(self.classes[self._slice(i)])

    def attributes_of(self, i: int) -> npt.NDArray[np.int64]:
        return np.asarray(self.attributes[self._slice(i)])


def build_scene_cache(
    cache_root: Path,
    *,
    count: int,
    seed: int,
    input_size: int,
    label_map: LabelMap | None = None,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> SceneCache:
    """Render ``count`` scenes (or reuse a complete cache with the same parameters)."""
    label_map = label_map or default_label_map()
    key = f"scenes-n{count}-seed{seed}-s{input_size}-{label_map.name}"
    folder = Path(cache_root) / key
    if (folder / "complete").is_file():
        return SceneCache(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.lib.format.open_memmap(  # type: ignore[no-untyped-call]
        folder / "pixels.npy", mode="w+", dtype=np.uint8, shape=(count, input_size, input_size, 3))
    boxes, classes, attributes, offsets = [], [], [], [0]
    jobs = [(scene_seed(seed, i), input_size, label_map.to_json()) for i in range(count)]
    context = mp.get_context("fork")
    with context.Pool(workers) as pool:
        for i, sample in enumerate(pool.imap(_render_worker, jobs, chunksize=16)):
            pixels[i] = sample.pixels
            boxes.append(sample.boxes)
            classes.append(sample.classes)
            attributes.append(sample.attributes)
            offsets.append(offsets[-1] + len(sample.boxes))
            if progress is not None:
                progress(1)
    pixels.flush()
    del pixels
    np.save(folder / "boxes.npy", np.concatenate(boxes).astype(np.float32))
    np.save(folder / "classes.npy", np.concatenate(classes))
    np.save(folder / "attributes.npy", np.concatenate(attributes))
    np.save(folder / "offsets.npy", np.array(offsets, dtype=np.int64))
    (folder / "complete").write_text("ok\n")
    log.info("cached %d scenes in %s", count, folder)
    return SceneCache(folder)
