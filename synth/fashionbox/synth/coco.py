"""Generated datasets on disk in COCO format, the layout Fashionpedia ships in.

``write_coco_dataset`` writes ``images/000000.jpg ...`` and ``annotations.json`` with

* ``images``: ``id`` (index + 1), ``file_name`` (relative to ``images/``), ``width``, ``height``,
  ``seed`` (the scene seed, so any image can be re-rendered alone);
* ``categories``: ``id`` (label-map index + 1), ``name``, ``supercategory``, ``fashionpedia_id``;
* ``annotations``: ``id``, ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``, ``area`` (box
  area), ``iscrowd`` 0, ``attribute_ids`` (Fashionpedia attribute ids, as in Fashionpedia's own
  files) and the readable ``attributes`` ``{group: label}``.

Image ``i`` of a dataset with seed ``s`` is ``render_scene(image_seed(s, i))`` with
``image_seed(s, i) = s * 1_000_003 + i``, encoded at a JPEG quality drawn from that seed.

Usage::

    path = write_coco_dataset(Path("data/synth"), count=500, seed=7)
    for record in read_coco_dataset(path):
        record.path, record.garments
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionbox.contract.labels import LabelMap, default_label_map

from .config import SceneConfig
from .errors import CocoFormatError
from .scene import GarmentAnnotation, render_scene

__all__ = ["AnnotatedImage", "image_seed", "jpeg_quality", "read_coco_dataset", "write_coco_dataset"]

log = logging.getLogger(__name__)

ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
_SEED_STRIDE = 1_000_003


def image_seed(seed: int, index: int) -> int:
    """Scene seed of image ``index`` of the dataset with ``seed`` (a prime stride keeps datasets apart)."""
    return seed * _SEED_STRIDE + index


def jpeg_quality(scene_seed: int, config: SceneConfig) -> int:
    """JPEG quality a dataset uses for the scene of ``scene_seed``; separate from the scene's own draws."""
    return random.Random(f"jpeg-quality:{scene_seed}").randint(*config.jpeg_quality)


@dataclass(frozen=True)
class AnnotatedImage:
    image_id: int
    file_name: str
    """Relative to the dataset's ``images/`` folder."""
    path: Path
    width: int
    height: int
    garments: tuple[GarmentAnnotation, ...]


def write_coco_dataset(out_dir: Path, *, count: int, seed: int, label_map: LabelMap | None = None,
                       config: SceneConfig | None = None, progress: bool = False) -> Path:
    """Render ``count`` scenes into ``out_dir``; return the path of ``annotations.json``."""
    if count < 0 or seed < 0:
        raise ValueError(f"count and seed must be non-negative, got count={count} seed={seed}")
    label_map = label_map or default_label_map()
    config = config or SceneConfig()
    out_dir = Path(out_dir)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    step = max(1, count // 20)
    for index in range(count):
        scene_seed = image_seed(seed, index)
        scene = render_scene(scene_seed, label_map=label_map, config=config)
        file_name = f"{index:06d}.jpg"
        (out_dir / IMAGES_DIR / file_name).write_bytes(scene.encode("JPEG", jpeg_quality(scene_seed, config)))
        images.append({"id": index + 1, "file_name": file_name, "width": scene.image.width,
                       "height": scene.image.height, "seed": scene_seed})
        for garment in scene.garments:
            annotations.append(_annotation(len(annotations) + 1, index + 1, garment, label_map))
        if progress and ((index + 1) % step == 0 or index + 1 == count):
            log.info("rendered %d/%d scenes", index + 1, count)
    document = {
        "info": {"description": "FashionBox generated scenes", "seed": seed, "count": count,
                 "image_seed": f"seed * {_SEED_STRIDE} + index", "label_map": label_map.name},
        "licenses": [],
        "images": images,
        "categories": _categories(label_map),
        "annotations": annotations,
    }
    path = out_dir / ANNOTATIONS_FILE
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def _categories(label_map: LabelMap) -> list[dict[str, Any]]:
    return [{"id": index + 1, "name": c.name, "supercategory": c.supercategory, "fashionpedia_id": c.fashionpedia_id}
            for index, c in enumerate(label_map.categories)]


def _annotation(annotation_id: int, image_id: int, garment: GarmentAnnotation, label_map: LabelMap,
                ) -> dict[str, Any]:
    x1, y1, x2, y2 = garment.box
    attribute_ids = []
    for group_name, label in garment.attributes.items():
        group = label_map.group(group_name)
        attribute_ids.append(group.fashionpedia_ids[group.labels.index(label)])
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": label_map.category_index(garment.category) + 1,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
        "iscrowd": 0,
        "attribute_ids": sorted(attribute_ids),
        "attributes": dict(garment.attributes),
    }


def read_coco_dataset(path: Path, *, label_map: LabelMap | None = None) -> tuple[AnnotatedImage, ...]:
    """Annotations per image, ordered by image id, from ``annotations.json`` or its folder.

    Readable ``attributes`` are used where present; otherwise ``attribute_ids`` are decoded with
    ``label_map`` (ids of groups the map does not have are ignored, as in real Fashionpedia files).
    """
    path = Path(path)
    if path.is_dir():
        path = path / ANNOTATIONS_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        categories = {int(c["id"]): str(c["name"]) for c in document["categories"]}
        per_image: dict[int, list[GarmentAnnotation]] = {int(i["id"]): [] for i in document["images"]}
        decoder = _AttributeDecoder(label_map or default_label_map())
        for a in document["annotations"]:
            x, y, w, h = (float(v) for v in a["bbox"])
            category = categories[int(a["category_id"])]
            attributes = a.get("attributes")
            if attributes is None:
                attributes = decoder.decode(category, a.get("attribute_ids", []))
            per_image[int(a["image_id"])].append(GarmentAnnotation(category, (x, y, x + w, y + h), dict(attributes)))
        images_dir = path.parent / IMAGES_DIR
        return tuple(
            AnnotatedImage(int(i["id"]), str(i["file_name"]), images_dir / str(i["file_name"]), int(i["width"]),
                           int(i["height"]), tuple(per_image[int(i["id"])]))
            for i in sorted(document["images"], key=lambda i: int(i["id"]))
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CocoFormatError(f"cannot read COCO annotations {path}: {exc!r}") from exc


class _AttributeDecoder:
    """Fashionpedia attribute ids back to ``{group: label}`` for the groups of a category."""

    def __init__(self, label_map: LabelMap) -> None:
        self._label_map = label_map
        self._by_id: Mapping[int, tuple[str, str]] = {
            fid: (g.name, label)
            for g in label_map.attribute_groups
            for label, fid in zip(g.labels, g.fashionpedia_ids, strict=True)
        }

    def decode(self, category: str, attribute_ids: list[int]) -> dict[str, str]:
        groups = set(self._label_map.groups_for(category)) if category in self._label_map.category_names else set()
        out: dict[str, str] = {}
        for fid in attribute_ids:
            found = self._by_id.get(int(fid))
            if found and found[0] in groups:
                out.setdefault(found[0], found[1])
        return out
