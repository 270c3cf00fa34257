"""Training the default family's detector and attribute heads on your own COCO-format data.

``fashionbox train --coco ANNOTATIONS.json --images DIR`` calls :func:`train_coco`. The file is
COCO's detection layout, as Fashionpedia, iMaterialist, ModaNet and DeepFashion2 publish it:

* ``categories`` are mapped by NAME onto the label map (Fashionpedia's names); ``labels`` chooses a
  subset (the detector's class head keeps those rows of the starting weights). A category the map
  does not have stops the run with its name, unless ``skip_unknown`` (then counted in the report);
* Fashionpedia ``attribute_ids`` are mapped onto the attribute groups: an annotation with no id of a
  group (or two different ones) is not trained on that group (a masked cross-entropy);
* images are decoded and letterboxed by ``fashionbox.core.imaging`` exactly as the served
  ``preprocess`` does, so the networks train on the pixels they are served;
* boxes partly outside their image are clipped to it, with a warning naming the annotation; a box
  with no area inside its image is refused, naming it. Every other fault in the file (missing
  images, malformed JSON, wrong types, unknown ids) is refused with the record it is in
  (:class:`CocoDataError`).

Training starts from the shipped weights (``init="default"``), a FashionBox checkpoint (``init=PATH``)
or random weights (``init="scratch"``); ``init="hf:ID"`` (a transformers backbone) is refused with the
reason. The detector trains for ``detector_steps`` (class-balanced image sampling with ``balance``),
then the attribute heads for ``attribute_steps``; both checkpoint every ``checkpoint_every`` steps
and continue with ``resume``. A seeded ``val_fraction`` of the images is held out; the report gives
the validation losses of the starting weights and of the trained ones. :func:`search_coco` runs an
Optuna search over learning rate, batch size and weight decay on that split::

    report = train_coco(CocoTrainSettings(annotations=Path("ann.json"), images=Path("img"), out_dir=out))
    report.detector_val_loss  # (before, after)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fashionbox.contract.labels import LabelMap
from fashionbox.core.imaging import InvalidImageError, LetterboxInfo, crop_garments, decode_image, letterbox
from fashionbox.models import (
    AttributeClassifier,
    AttributeConfig,
    DetectorConfig,
    FashionDetector,
    checkpoint_metadata,
    default_weights,
    load_attributes,
    load_detector,
    save_checkpoint,
)
from fashionbox.models.detector import DetectorOutputs
from fashionbox.training.detection import DetectionTargets, assign_targets, detection_loss
from fashionbox.training.schedule import lr_at

__all__ = ["CocoData", "CocoDataError", "CocoTrainReport", "CocoTrainSettings", "SearchResult", "build_coco_arrays",
           "load_coco", "search_coco", "train_coco"]

log = logging.getLogger(__name__)


class CocoDataError(ValueError):
    """An annotation file, or an image it names, that cannot be trained on; the message names the record."""


# -- reading the file ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: npt.NDArray[np.float32]
    """[G, 4] x1, y1, x2, y2 in image pixels (clipped to the image)."""
    classes: npt.NDArray[np.int64]
    """[G] label-map indices."""
    attributes: npt.NDArray[np.int64]
    """[G, groups] label index per group; -1 where the annotation does not say (not trained on)."""
    segmentations: tuple[Segmentation | None, ...] = ()
    """Per garment: COCO polygons, or uncompressed RLE counts (column-major); None where there is none."""


Segmentation = tuple[tuple[float, ...], ...] | list[int]


@dataclass(frozen=True)
class CocoData:
    images: tuple[CocoImage, ...]
    label_map: LabelMap
    unknown_skipped: dict[str, int] = field(default_factory=dict)
    """Annotations of categories the label map does not have, by name (``skip_unknown``)."""
    not_selected: int = 0
    """Annotations of label-map categories left out by ``labels``."""
    crowd_skipped: int = 0
    clipped: int = 0
    """Boxes partly outside their image, clipped to it."""

    @property
    def garments(self) -> int:
        return sum(len(i.classes) for i in self.images)

    @property
    def with_masks(self) -> int:
        """Garments whose annotation carries a segmentation (the mask head trains on those)."""
        return sum(s is not None for i in self.images for s in i.segmentations)


def _fail(path: Path, where: str, problem: str) -> CocoDataError:
    return CocoDataError(f"{path}: {where}: {problem}")


def _int(value: Any, path: Path, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, where, f"{key!r} must be an integer, got {value!r}")
    return value


def _records(document: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    records = document.get(key)
    if not isinstance(records, list):
        raise _fail(path, key, f"must be a list (COCO's {key!r}), got {type(records).__name__}")
    for k, record in enumerate(records):
        if not isinstance(record, dict):
            raise _fail(path, f"{key}[{k}]", f"must be an object, got {record!r}")
    return records


def _decode_compressed_counts(text: str) -> list[int]:
    """COCO's compressed RLE string (``maskApi.c``'s ``rleFrString``) to its counts."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _segmentation(value: Any, width: int, height: int, path: Path, where: str) -> Segmentation | None:
    """Polygons ``[[x, y, ...], ...]`` or RLE ``{"size": [h, w], "counts": [...] or "..."}``; None for none."""
    if value is None or value == []:
        return None
    if isinstance(value, list):
        polygons = []
        for polygon in value:
            if (not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon)):
                raise _fail(path, where, "'segmentation' polygons must be lists of at least three x, y pairs, "
                                         f"got {str(polygon)[:80]}")
            polygons.append(tuple(float(v) for v in polygon))
        return tuple(polygons)
    if isinstance(value, dict) and isinstance(value.get("size"), list):
        if [int(v) for v in value["size"]] != [height, width]:
            raise _fail(path, where, f"'segmentation' RLE size {value['size']} is not the image's "
                                     f"[height, width] [{height}, {width}]")
        counts = value.get("counts")
        if isinstance(counts, str):
            counts = _decode_compressed_counts(counts)
        if (isinstance(counts, list) and all(isinstance(v, int) and v >= 0 for v in counts)
                and sum(counts) == width * height):
            return counts
    raise _fail(path, where, f"'segmentation' must be polygons or an RLE of the image's size, got {str(value)[:80]}")


def subset_label_map(label_map: LabelMap, names: Sequence[str] | None) -> LabelMap:
    """``label_map`` with only the categories ``names`` (in the map's order); all of them for None."""
    if not names:
        return label_map
    unknown = sorted(set(names) - set(label_map.category_names))
    if unknown:
        raise CocoDataError(f"--labels names categories the label map does not have: {unknown}; "
                            f"known: {list(label_map.category_names)}")
    chosen = tuple(c for c in label_map.categories if c.name in set(names))
    return LabelMap(f"{label_map.name}-{len(chosen)}of{label_map.num_categories}", chosen,
                    label_map.attribute_groups)


def _attribute_row(ids: list[int], category: str, label_map: LabelMap) -> npt.NDArray[np.int64]:
    row = np.full(len(label_map.attribute_groups), -1, dtype=np.int64)
    applies = set(label_map.groups_for(category))
    for j, group in enumerate(label_map.attribute_groups):
        if group.name not in applies:
            continue
        found = {group.fashionpedia_ids.index(i) for i in ids if i in group.fashionpedia_ids}
        if len(found) == 1:  # none: the annotation does not say; two: it contradicts itself
            row[j] = found.pop()
    return row


def load_coco(annotations: Path, images_dir: Path, label_map: LabelMap, *, labels: Sequence[str] | None = None,
              skip_unknown: bool = False) -> CocoData:
    """Read and check ``annotations`` (images under ``images_dir``); map it onto ``label_map`` (or its
    subset ``labels``). Raises :class:`CocoDataError` naming the record at fault."""
    path = Path(annotations)
    if not path.is_file():
        raise CocoDataError(f"annotation file not found: {path}")
    if not Path(images_dir).is_dir():
        raise CocoDataError(f"image folder not found: {images_dir}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise CocoDataError(f"{path}: the annotation file is empty")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoDataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    if not isinstance(document, dict):
        raise CocoDataError(f"{path}: must be a JSON object with 'images', 'annotations' and 'categories', "
                            f"got {type(document).__name__}")
    all_names = set(label_map.category_names)
    label_map = subset_label_map(label_map, labels)
    categories: dict[int, str] = {}
    for k, c in enumerate(_records(document, "categories", path)):
        where = f"categories[{k}]"
        cid = _int(c.get("id"), path, where, "id")
        if not isinstance(c.get("name"), str):
            raise _fail(path, where, f"'name' must be a string, got {c.get('name')!r}")
        categories[cid] = c["name"]
    images: dict[int, dict[str, Any]] = {}
    for k, i in enumerate(_records(document, "images", path)):
        where = f"images[{k}]"
        iid = _int(i.get("id"), path, where, "id")
        where = f"image id {iid}"
        if not isinstance(i.get("file_name"), str) or not i["file_name"]:
            raise _fail(path, where, f"'file_name' must be a non-empty string, got {i.get('file_name')!r}")
        for key in ("width", "height"):
            if _int(i.get(key), path, where, key) <= 0:
                raise _fail(path, where, f"{key!r} must be positive, got {i[key]}")
        if iid in images:
            raise _fail(path, where, "appears twice in 'images'")
        images[iid] = i
    per_image: dict[int, list[tuple[npt.NDArray[np.float32], int, npt.NDArray[np.int64], Segmentation | None]]] = {
        i: [] for i in images}
    unknown: Counter[str] = Counter()
    not_selected = crowd = clipped = 0
    for k, a in enumerate(_records(document, "annotations", path)):
        aid = a.get("id", f"#{k}")
        where = f"annotation id {aid} (annotations[{k}])"
        iid = _int(a.get("image_id"), path, where, "image_id")
        if iid not in images:
            raise _fail(path, where, f"image_id {iid} is not in 'images'")
        cid = _int(a.get("category_id"), path, where, "category_id")
        if cid not in categories:
            raise _fail(path, where, f"category_id {cid} is not in 'categories'")
        bbox = a.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in bbox)):
            raise _fail(path, where, f"'bbox' must be [x, y, width, height] (4 finite numbers), got {bbox!r}")
        ids = a.get("attribute_ids", [])
        if not isinstance(ids, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
            raise _fail(path, where, f"'attribute_ids' must be a list of integers, got {ids!r}")
        if a.get("iscrowd", 0):
            crowd += 1
            continue
        name = categories[cid]
        if name not in label_map.category_names:
            if name in all_names:
                not_selected += 1
            else:
                unknown[name] += 1
            continue
        image = images[iid]
        w, h = float(image["width"]), float(image["height"])
        x, y, bw, bh = (float(v) for v in bbox)
        box = np.array([x, y, x + bw, y + bh], dtype=np.float32)
        inside = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
        if bw <= 0 or bh <= 0 or inside[2] - inside[0] <= 0 or inside[3] - inside[1] <= 0:
            raise _fail(path, where, f"box {bbox} has no area inside its image {image['file_name']} "
                                     f"({image['width']}x{image['height']})")
        if not np.array_equal(inside, box):
            clipped += 1
            log.warning("%s: %s: box %s reaches outside its image %s (%dx%d); clipped to it", path, where, bbox,
                        image["file_name"], image["width"], image["height"])
        segmentation = _segmentation(a.get("segmentation"), int(image["width"]), int(image["height"]), path, where)
        per_image[iid].append((inside, label_map.category_index(name), _attribute_row(ids, name, label_map),
                               segmentation))
    if unknown and not skip_unknown:
        names = ", ".join(f"{n!r} ({c} annotations)" for n, c in sorted(unknown.items()))
        raise CocoDataError(f"{path}: categories the label map does not have: {names}; known: "
                            f"{list(label_map.category_names)}. Rename them to Fashionpedia's names, or pass "
                            "--skip-unknown to leave those annotations out")
    out = []
    groups = len(label_map.attribute_groups)
    for iid in sorted(images):
        image = images[iid]
        file = Path(images_dir) / image["file_name"]
        if not file.is_file():
            raise _fail(path, f"image id {iid}", f"its file {file} does not exist")
        rows = per_image[iid]
        out.append(CocoImage(iid, file, int(image["width"]), int(image["height"]),
                             np.array([r[0] for r in rows], dtype=np.float32).reshape(-1, 4),
                             np.array([r[1] for r in rows], dtype=np.int64),
                             np.array([r[2] for r in rows], dtype=np.int64).reshape(-1, groups),
                             tuple(r[3] for r in rows)))
    if not out:
        raise CocoDataError(f"{path}: 'images' is empty: nothing to train on")
    if unknown:
        log.warning("skipped %d annotations of categories the label map does not have: %s",
                    sum(unknown.values()), dict(unknown))
    return CocoData(tuple(out), label_map, dict(unknown), not_selected, crowd, clipped)


# -- pixels --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoArrays:
    """Letterboxed pixels and targets of a data set (like ``SceneCache``), boxes in letterbox pixels."""

    pixels: npt.NDArray[np.uint8]  # [N, S, S, 3]
    boxes: npt.NDArray[np.float32]  # [G, 4]
    classes: npt.NDArray[np.int64]  # [G]
    attributes: npt.NDArray[np.int64]  # [G, groups]
    offsets: npt.NDArray[np.int64]  # [N + 1]
    letterbox: tuple[LetterboxInfo, ...] = ()
    segmentations: tuple[Segmentation | None, ...] = ()
    """Per garment, in image-pixel coordinates (see :class:`CocoImage`)."""

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def garments_of(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


def build_coco_arrays(data: CocoData, input_size: int, cache_dir: Path | None = None) -> CocoArrays:
    """Decode and letterbox every image as the served ``preprocess`` does. With ``cache_dir`` the pixels
    are a memory-mapped file there, kept for the next run with the same files and size."""
    pixels: npt.NDArray[np.uint8]
    folder = None
    if cache_dir is not None:
        digest = hashlib.sha256()
        for image in data.images:
            stat = image.path.stat()
            digest.update(f"{image.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        folder = Path(cache_dir) / f"coco-{digest.hexdigest()[:16]}-s{input_size}"
        if (folder / "complete").is_file():
            cached: npt.NDArray[np.uint8] = np.load(folder / "pixels.npy", mmap_mode="r")
            return _arrays(data, cached, [json.loads(x) for x in (folder / "info.jsonl").read_text().splitlines()])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.lib.format.open_memmap(  # type: ignore[no-untyped-call]
            folder / "pixels.npy", mode="w+", dtype=np.uint8, shape=(len(data.images), input_size, input_size, 3))
    else:
        pixels = np.empty((len(data.images), input_size, input_size, 3), dtype=np.uint8)
    infos = []
    for n, image in enumerate(data.images):
        try:
            decoded = decode_image(image.path.read_bytes(), target_size=input_size)
        except (InvalidImageError, OSError) as exc:
            raise CocoDataError(f"image id {image.image_id} ({image.path}): cannot be decoded: {exc}") from exc
        if (decoded.width, decoded.height) != (image.width, image.height):
            raise CocoDataError(f"image id {image.image_id} ({image.path}) is {decoded.width}x{decoded.height} "
                                f"(EXIF orientation applied) but the file says {image.width}x{image.height}")
        pixels[n], info = letterbox(decoded, input_size)
        infos.append([info.scale, info.pad_x, info.pad_y])
    if folder is not None:
        del pixels
        (folder / "info.jsonl").write_text("".join(json.dumps(i) + "\n" for i in infos))
        (folder / "complete").write_text("ok\n")
        pixels = np.load(folder / "pixels.npy", mmap_mode="r")
    return _arrays(data, pixels, infos)


def _arrays(data: CocoData, pixels: npt.NDArray[np.uint8], infos: list[list[float]]) -> CocoArrays:
    boxes = []
    for image, (scale, pad_x, pad_y) in zip(data.images, infos, strict=True):
        b = image.boxes * np.float32(scale)
        b[:, 0::2] += np.float32(pad_x)
        b[:, 1::2] += np.float32(pad_y)
        boxes.append(b)
    groups = len(data.label_map.attribute_groups)
    offsets = np.concatenate([[0], np.cumsum([len(i.classes) for i in data.images])]).astype(np.int64)
    return CocoArrays(pixels, np.concatenate(boxes).astype(np.float32).reshape(-1, 4),
                      np.concatenate([i.classes for i in data.images]).astype(np.int64),
                      np.concatenate([i.attributes for i in data.images]).astype(np.int64).reshape(-1, groups),
                      offsets,
                      tuple(LetterboxInfo(i.width, i.height, s, x, y) for i, (s, x, y) in zip(data.images, infos,
                                                                                           strict=True)),
                      tuple(s for i in data.images for s in i.segmentations))


# -- settings and the starting weights -----------------------------------------------------------------


@dataclass(frozen=True)
class CocoTrainSettings:
    annotations: Path
    images: Path
    out_dir: Path
    cache_dir: Path | None = None
    labels: tuple[str, ...] | None = None
    skip_unknown: bool = False
    init: str = "default"
    """``default`` (the shipped weights), a FashionBox detector checkpoint PATH (its folder's
    ``attributes.safetensors`` too, when there is one), ``scratch``, or ``hf:ID`` (refused)."""
    freeze_backbone: bool = False
    balance: bool = False
    device: str = "cpu"
    amp: bool = False
    """bf16 autocast (CUDA, or CPU)."""
    val_fraction: float = 0.1
    seed: int = 1
    detector_steps: int = 300
    detector_batch: int = 16
    detector_lr: float = 1e-3
    attribute_steps: int = 300
    attribute_batch: int = 64
    attribute_lr: float = 1e-3
    weight_decay: float = 1e-4
    mask_steps: int = 300
    mask_batch: int = 32
    mask_lr: float = 1e-3
    mask_size: int = 48
    """The mask grid of a new mask head (one already in the starting attribute weights keeps its own)."""
    box_jitter: float = 0.06
    warmup_steps: int = 20
    threads: int = 2
    checkpoint_every: int = 100
    resume: bool = False
    stages: tuple[str, ...] = ("detector", "attributes", "masks")
    """``masks`` trains the attribute checkpoint's mask head on the annotations with a segmentation
    (skipped when none has one), trunk and attribute heads frozen."""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if min(self.detector_steps, self.detector_batch, self.attribute_steps, self.attribute_batch,
               self.mask_steps, self.mask_batch, self.mask_size, self.checkpoint_every) < 1:
            raise ValueError("steps, batch sizes and checkpoint_every must be >= 1")
        if min(self.detector_lr, self.attribute_lr) <= 0 or self.weight_decay < 0:
            raise ValueError("learning rates must be positive and weight_decay >= 0")
        unknown = set(self.stages) - {"detector", "attributes", "masks"}
        if unknown or not self.stages:
            raise ValueError(f"stages must be among detector, attributes, masks; got {self.stages}")

    def to_json(self) -> str:
        """The recipe, recorded in checkpoints; local folders are left out (they name this machine)."""
        recipe = {k: v for k, v in asdict(self).items() if k not in ("images", "out_dir", "cache_dir")}
        recipe["annotations"] = Path(self.annotations).name
        return json.dumps(recipe, sort_keys=True, default=str)


def _refuse_hf(init: str) -> None:
    raise CocoDataError(
        f"--init {init}: a transformers backbone (AutoBackbone: ResNet, ConvNeXt, ...) under the FashionBox "
        "detector is not implemented: the detector's FPN and heads are built for its own MobileNetV2-style "
        "backbone (channels 40/80/128 at strides 8/16/32), and a new backbone needs its own export graph and "
        "converter step. timm backbones cannot be used here either (timm imports torchvision, which does not "
        "load against this CPU torch). Fine-tune from a FashionBox checkpoint instead: --init default (the "
        "shipped weights), --init PATH/detector.safetensors, or --init scratch")


def _starting_detector(settings: CocoTrainSettings, label_map: LabelMap) -> FashionDetector:
    if settings.init.startswith("hf:"):
        _refuse_hf(settings.init)
    if settings.init == "scratch":
        return FashionDetector(DetectorConfig(num_classes=label_map.num_categories))
    path = default_weights("detector") if settings.init == "default" else Path(settings.init)
    model, labels = load_detector(path)
    model.with_calibration()  # trained on raw scores; a calibration fits the weights it was fitted on only
    missing = [n for n in label_map.category_names if n not in labels.category_names]
    if missing:
        raise CocoDataError(f"the starting detector {path} has no class for {missing}; its classes: "
                            f"{list(labels.category_names)} (use --init scratch to train new classes)")
    rows = [labels.category_index(n) for n in label_map.category_names]
    if rows == list(range(labels.num_categories)):
        return model
    subset = FashionDetector(replace(model.config, num_classes=len(rows)))
    state = model.state_dict()
    for key in list(state):
        if ".cls." in key:  # the class head's output rows, in the subset's order
            state[key] = state[key][rows]
    subset.load_state_dict(state)
    return subset


def _starting_attributes(settings: CocoTrainSettings, label_map: LabelMap) -> AttributeClassifier:
    if settings.init.startswith("hf:"):
        _refuse_hf(settings.init)
    sizes = tuple(len(g.labels) for g in label_map.attribute_groups)
    if settings.init == "scratch":
        return AttributeClassifier(AttributeConfig(group_sizes=sizes))
    if settings.init == "default":
        path = default_weights("attributes")
    else:
        path = Path(settings.init).parent / "attributes.safetensors"
        if not path.is_file():
            log.info("no %s beside --init; the attribute heads start from the shipped weights", path)
            path = default_weights("attributes")
    model, labels = load_attributes(path)
    if tuple(g.name for g in labels.attribute_groups) != label_map.group_names:
        raise CocoDataError(f"the starting attribute heads {path} have groups {list(labels.group_names)}, "
                            f"not {list(label_map.group_names)}")
    return model


# -- training ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoTrainReport:
    images_train: int
    images_val: int
    garments: int
    unknown_skipped: dict[str, int]
    not_selected: int
    clipped: int
    detector_path: Path | None = None
    attributes_path: Path | None = None
    detector_val_loss: tuple[float, float] | None = None
    """Validation detection loss of the starting weights and of the trained ones."""
    attribute_val_loss: tuple[float, float] | None = None
    detector_train_loss: tuple[float, float] | None = None
    """The same on (at most 32 of) the training images: what the steps fitted."""
    attribute_train_loss: tuple[float, float] | None = None
    mask_path: Path | None = None
    mask_val_loss: tuple[float, float] | None = None
    mask_train_loss: tuple[float, float] | None = None
    detector_steps_per_s: float | None = None
    attribute_steps_per_s: float | None = None
    mask_steps_per_s: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as text, a loss that could not be measured (no validation split) as None."""
        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v

        return {k: plain(v) for k, v in asdict(self).items()}


def _split(n: int, fraction: float, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    val = min(n - 1, math.ceil(n * fraction)) if fraction > 0 and n > 1 else 0
    return np.sort(order[val:]), np.sort(order[:val])


def _inverse_frequency(classes: npt.NDArray[np.int64], num_classes: int) -> npt.NDArray[np.float64]:
    counts = np.bincount(classes, minlength=num_classes).astype(np.float64)
    weights: npt.NDArray[np.float64] = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
    return weights


def _image_weights(arrays: CocoArrays, images: npt.NDArray[np.int64], num_classes: int) -> npt.NDArray[np.float64]:
    """Class-balanced sampling: an image weighs its rarest garment's inverse class frequency."""
    inverse = _inverse_frequency(np.concatenate([arrays.classes[arrays.garments_of(int(i))] for i in images]),
                                 num_classes)
    weights = np.array([inverse[arrays.classes[arrays.garments_of(int(i))]].max(initial=0.0) for i in images])
    weights = np.where(weights > 0, weights, weights[weights > 0].min(initial=1.0))
    normalised: npt.NDArray[np.float64] = weights / weights.sum()
    return normalised


def _detector_batch(arrays: CocoArrays, indices: npt.NDArray[np.int64], rng: np.random.Generator | None,
                    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    size = int(arrays.pixels.shape[1])
    pixels = np.array(arrays.pixels[indices])
    boxes, classes = [], []
    for k, i in enumerate(indices.tolist()):
        b = arrays.boxes[arrays.garments_of(i)].copy()
        if rng is not None and rng.random() < 0.5:  # every label here is mirror-symmetric
            pixels[k] = pixels[k, :, ::-1]
            b[:, [0, 2]] = size - b[:, [2, 0]]
        boxes.append(torch.from_numpy(b))
        classes.append(torch.from_numpy(arrays.classes[arrays.garments_of(i)].copy()))
    return torch.from_numpy(np.ascontiguousarray(pixels)), boxes, classes


def _detector_loss(model: FashionDetector, pixels: torch.Tensor, boxes: list[torch.Tensor],
                   classes: list[torch.Tensor], device: torch.device, amp: bool) -> torch.Tensor:
    config = model.config
    targets = assign_targets(config, model.centers.cpu(), model.location_strides.cpu(), boxes, classes)
    targets = DetectionTargets(*(t.to(device) for t in (targets.labels, targets.ltrb, targets.centerness)))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        outputs = model(pixels.to(device))
    outputs = DetectorOutputs(*(t.float() for t in outputs))
    return detection_loss(outputs, targets, config.num_classes).total


def _detector_val_loss(model: FashionDetector, arrays: CocoArrays, images: npt.NDArray[np.int64],
                       device: torch.device, amp: bool, batch: int) -> float:
    if not len(images):
        return float("nan")
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            pixels, boxes, classes = _detector_batch(arrays, chunk, None)
            total += float(_detector_loss(model, pixels, boxes, classes, device, amp)) * len(chunk)
    model.train(was_training)
    return total / len(images)


def _freeze_statistics(model: torch.nn.Module, settings: CocoTrainSettings) -> None:
    """Fine-tuning (not ``scratch``) keeps every BatchNorm's statistics as the starting weights have them:
    the small batches of a fine-tune would otherwise drag them off (the served model uses them)."""
    if settings.init != "scratch":
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _freeze(module: torch.nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.eval()


def _train_detector(settings: CocoTrainSettings, model: FashionDetector, arrays: CocoArrays,
                    train: npt.NDArray[np.int64], device: torch.device, *, path: Path | None,
                    label_map: LabelMap, start: int = 0) -> float:
    """Train in place; checkpoint to ``path`` (None: no checkpoints, the search's trials). Returns steps/s."""
    torch.manual_seed(settings.seed + start)
    rng = np.random.default_rng([settings.seed, start])
    model.to(device).train()
    if settings.freeze_backbone:
        _freeze(model.backbone)
    _freeze_statistics(model, settings)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.detector_lr, weight_decay=settings.weight_decay)
    weights = _image_weights(arrays, train, model.config.num_classes) if settings.balance else None
    batch = min(settings.detector_batch, len(train))
    warmup = min(settings.warmup_steps, max(1, settings.detector_steps // 10))
    t0 = time.perf_counter()
    for step in range(start, settings.detector_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.detector_steps, settings.detector_lr, warmup=warmup)
        chosen = np.sort(rng.choice(train, batch, replace=weights is not None, p=weights))
        pixels, boxes, classes = _detector_batch(arrays, chosen, rng)
        loss = _detector_loss(model, pixels, boxes, classes, device, settings.amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(parameters, 10.0)
        optimizer.step()
        if step % 10 == 0:
            log.info("detector step %d/%d loss %.4f", step + 1, settings.detector_steps, float(loss.detach()))
        if path is not None and ((step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.detector_steps):
            save_checkpoint(path, model, kind="detector", config_json=model.config.to_json(), label_map=label_map,
                            extra={"coco_step": str(step + 1), "coco_train_settings": settings.to_json(),
                                   "train_seconds": f"{time.perf_counter() - t0:.0f}"})
    model.eval()
    return (settings.detector_steps - start) / max(time.perf_counter() - t0, 1e-9)


def _attribute_batch(arrays: CocoArrays, garments: npt.NDArray[np.int64], rng: np.random.Generator | None,
                     crop_size: int, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    size = int(arrays.pixels.shape[1])
    scene_of = np.searchsorted(arrays.offsets, garments, side="right") - 1
    crops = []
    for g, scene in zip(garments.tolist(), scene_of.tolist(), strict=True):
        box = arrays.boxes[g : g + 1]
        if rng is not None:
            wh = np.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]] * 2, axis=1)
            box = np.clip(box + rng.uniform(-jitter, jitter, box.shape).astype(np.float32) * wh, 0, size)
        crop = crop_garments(np.asarray(arrays.pixels[scene]), box.astype(np.float32), crop_size)[0]
        crops.append(crop[:, ::-1] if rng is not None and rng.random() < 0.5 else crop)
    return (torch.from_numpy(np.ascontiguousarray(np.stack(crops))),
            torch.from_numpy(arrays.attributes[garments].copy()))


def _attribute_loss(model: AttributeClassifier, crops: torch.Tensor, targets: torch.Tensor, device: torch.device,
                    amp: bool) -> torch.Tensor:
    """Cross-entropy summed over the groups each garment's annotation names (-1: masked out), per label."""
    targets = targets.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model.logits(crops.to(device))
    losses = [torch.nn.functional.cross_entropy(g.float(), targets[:, j], ignore_index=-1, reduction="sum")
              for j, g in enumerate(logits)]
    total: torch.Tensor = torch.stack(losses).sum() / max(1, int((targets >= 0).sum()))
    return total


def _attribute_val_loss(model: AttributeClassifier, arrays: CocoArrays, garments: npt.NDArray[np.int64],
                        device: torch.device, amp: bool, batch: int) -> float:
    if not len(garments):
        return float("nan")
    was_training = model.training
    model.eval()
    total, labelled = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(garments), batch):
            chunk = garments[start : start + batch]
            crops, targets = _attribute_batch(arrays, chunk, None, model.config.crop_size, 0.0)
            n = int((targets >= 0).sum())
            total += float(_attribute_loss(model, crops, targets, device, amp)) * n
            labelled += n
    model.train(was_training)
    return total / max(1, labelled)


def _labelled_garments(arrays: CocoArrays, images: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    ids = np.concatenate([np.arange(arrays.offsets[i], arrays.offsets[i + 1]) for i in images] or [np.zeros(0)])
    ids = ids.astype(np.int64)
    return ids[(arrays.attributes[ids] >= 0).any(axis=1)] if len(ids) else ids


def _train_attributes(settings: CocoTrainSettings, model: AttributeClassifier, arrays: CocoArrays,
                      train: npt.NDArray[np.int64], device: torch.device, *, path: Path | None,
                      label_map: LabelMap, start: int = 0) -> float:
    garments = _labelled_garments(arrays, train)
    if not len(garments):
        raise CocoDataError("no training annotation has an attribute id of the label map's groups "
                            f"{list(label_map.group_names)}: nothing to train the attribute heads on")
    torch.manual_seed(settings.seed + 1 + start)
    rng = np.random.default_rng([settings.seed + 1, start])
    model.to(device).train()
    for name, parameter in model.named_parameters():  # the mask, embedding and vertical heads stay as they are
        parameter.requires_grad_(name.startswith("heads.") or (not settings.freeze_backbone
                                                                and name.startswith("features.")))
    for head in (model.mask_head, model.embedding_head, model.vertical_head):
        if head is not None:
            head.eval()
    if settings.freeze_backbone:
        model.features.eval()
    _freeze_statistics(model, settings)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.attribute_lr, weight_decay=settings.weight_decay)
    weights = None
    if settings.balance:
        weights = _inverse_frequency(arrays.classes[garments], label_map.num_categories)[arrays.classes[garments]]
        weights = weights / weights.sum()
    batch = min(settings.attribute_batch, len(garments))
    warmup = min(settings.warmup_steps, max(1, settings.attribute_steps // 10))
    t0 = time.perf_counter()
    for step in range(start, settings.attribute_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.attribute_steps, settings.attribute_lr, warmup=warmup)
        chosen = np.sort(rng.choice(garments, batch, replace=weights is not None, p=weights))
        crops, targets = _attribute_batch(arrays, chosen, rng, model.config.crop_size, settings.box_jitter)
        loss = _attribute_loss(model, crops, targets, device, settings.amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step % 10 == 0:
            log.info("attribute step %d/%d loss %.4f", step + 1, settings.attribute_steps, float(loss.detach()))
        if path is not None and ((step + 1) % settings.checkpoint_every == 0
                                 or step + 1 == settings.attribute_steps):
            save_checkpoint(path, model.eval(), kind="attributes", config_json=model.config.to_json(),
                            label_map=label_map, extra={"coco_attribute_step": str(step + 1),
                                                        "coco_train_settings": settings.to_json()})
            model.train()
            if settings.freeze_backbone:
                model.features.eval()
            _freeze_statistics(model, settings)
    model.eval()
    return (settings.attribute_steps - start) / max(time.perf_counter() - t0, 1e-9)


def _garment_mask(arrays: CocoArrays, garment: int, scene: int) -> npt.NDArray[np.uint8]:
    """Garment ``garment``'s own silhouette on the mask training's grid (``instance_grid`` at twice the
    letterbox's side: 1 inside, 0 outside); its own, so overlapping annotations (a sleeve on a dress) do
    not cut each other."""
    from PIL import Image, ImageDraw

    from fashionbox.contract.rle import decode_rle
    from fashionbox.training.masks import INSTANCE_UPSAMPLE, instance_grid

    info = arrays.letterbox[scene]
    segmentation = arrays.segmentations[garment]
    if isinstance(segmentation, list):
        full = decode_rle(segmentation, info.width, info.height).astype(np.uint8)
    else:
        canvas = Image.new("L", (info.width, info.height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in segmentation or ():
            draw.polygon(list(polygon), fill=1)
        full = np.asarray(canvas, dtype=np.uint8)
    return instance_grid(full, info, int(arrays.pixels.shape[1]) * INSTANCE_UPSAMPLE)


def _mask_batch(arrays: CocoArrays, garments: npt.NDArray[np.int64], rng: np.random.Generator | None,
                crop_size: int, mask_size: int, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    from fashionbox.training.masks import mask_targets

    size = int(arrays.pixels.shape[1])
    scene_of = np.searchsorted(arrays.offsets, garments, side="right") - 1
    crops, targets = [], []
    for g, scene in zip(garments.tolist(), scene_of.tolist(), strict=True):
        box = arrays.boxes[g : g + 1]
        if rng is not None:
            wh = np.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]] * 2, axis=1)
            box = np.clip(box + rng.uniform(-jitter, jitter, box.shape).astype(np.float32) * wh, 0, size)
        box = box.astype(np.float32)
        crop = crop_garments(np.asarray(arrays.pixels[scene]), box, crop_size)[0]
        target = mask_targets(_garment_mask(arrays, g, scene), 1, box, size, mask_size)[0]
        if rng is not None and rng.random() < 0.5:
            crop, target = crop[:, ::-1], target[:, ::-1]
        crops.append(crop)
        targets.append(target)
    return (torch.from_numpy(np.ascontiguousarray(np.stack(crops))),
            torch.from_numpy(np.ascontiguousarray(np.stack(targets))))


def _masked_garments(arrays: CocoArrays, images: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    ids = [g for i in images.tolist() for g in range(int(arrays.offsets[i]), int(arrays.offsets[i + 1]))
           if arrays.segmentations[g] is not None]
    return np.array(ids, dtype=np.int64)


def _mask_val_loss(model: AttributeClassifier, arrays: CocoArrays, garments: npt.NDArray[np.int64],
                   device: torch.device, batch: int) -> float:
    from fashionbox.training.masks import mask_loss

    if not len(garments):
        return float("nan")
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(garments), batch):
            chunk = garments[start : start + batch]
            crops, targets = _mask_batch(arrays, chunk, None, model.config.crop_size, model.mask_size, 0.0)
            total += float(mask_loss(model.mask_logits(crops.to(device)), targets.to(device))) * len(chunk)
    return total / len(garments)


def _train_mask_head(settings: CocoTrainSettings, model: AttributeClassifier, arrays: CocoArrays,
                     garments: npt.NDArray[np.int64], device: torch.device, *, path: Path, label_map: LabelMap,
                     start: int = 0) -> float:
    """Only the mask head learns (the trunk and the other heads frozen, in eval mode, as ``train_masks``)."""
    from fashionbox.training.masks import mask_loss

    torch.manual_seed(settings.seed + 2 + start)
    rng = np.random.default_rng([settings.seed + 2, start])
    head = model.mask_head
    assert head is not None
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("mask_head."))
    model.to(device).eval()
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.mask_lr, weight_decay=settings.weight_decay)
    batch = min(settings.mask_batch, len(garments))
    warmup = min(settings.warmup_steps, max(1, settings.mask_steps // 10))
    t0 = time.perf_counter()
    for step in range(start, settings.mask_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.mask_steps, settings.mask_lr, warmup=warmup)
        chosen = np.sort(rng.choice(garments, batch, replace=False))
        crops, targets = _mask_batch(arrays, chosen, rng, model.config.crop_size, model.mask_size,
                                     settings.box_jitter)
        head.train()
        loss = mask_loss(model.mask_logits(crops.to(device)), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        head.eval()
        if step % 10 == 0:
            log.info("mask step %d/%d loss %.4f", step + 1, settings.mask_steps, float(loss.detach()))
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.mask_steps:
            save_checkpoint(path, model.eval(), kind="attributes", config_json=model.config.to_json(),
                            label_map=label_map, extra={"coco_mask_step": str(step + 1),
                                                        "coco_attribute_step": str(settings.attribute_steps),
                                                        "coco_train_settings": settings.to_json()})
    return (settings.mask_steps - start) / max(time.perf_counter() - t0, 1e-9)


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CocoDataError(f"--device {name}: this machine has no CUDA GPU that torch can use "
                            f"(torch {torch.__version__}); train with --device cpu")
    return device


def prepare(settings: CocoTrainSettings, label_map: LabelMap) -> tuple[CocoData, CocoArrays, int]:
    """The checked data, its letterboxed arrays, and the detector's input size (the starting weights')."""
    if settings.init.startswith("hf:"):
        _refuse_hf(settings.init)
    data = load_coco(settings.annotations, settings.images, label_map, labels=settings.labels,
                     skip_unknown=settings.skip_unknown)
    size = 320
    if settings.init not in ("scratch",):
        path = default_weights("detector") if settings.init == "default" else Path(settings.init)
        size = DetectorConfig.from_json(checkpoint_metadata(path)["config"]).input_size if path.is_file() else size
    return data, build_coco_arrays(data, size, settings.cache_dir), size


def train_coco(settings: CocoTrainSettings, label_map: LabelMap | None = None,
               prepared: tuple[CocoData, CocoArrays, int] | None = None) -> CocoTrainReport:
    """Train ``settings.stages`` on the COCO file; checkpoints in ``settings.out_dir``."""
    from fashionbox.contract.labels import default_label_map

    t0 = time.perf_counter()
    torch.set_num_threads(settings.threads)
    device = _device(settings.device)
    data, arrays, _ = prepared or prepare(settings, label_map or default_label_map())
    train, val = _split(len(arrays), settings.val_fraction, settings.seed)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    if "detector" in settings.stages:
        path = settings.out_dir / "detector.safetensors"
        model = _starting_detector(settings, data.label_map)
        start = 0
        if settings.resume and path.is_file() and "coco_step" in checkpoint_metadata(path):
            model, _ = load_detector(path)
            start = int(checkpoint_metadata(path)["coco_step"])
            log.info("resuming detector training at step %d", start)
        model.to(device)
        fit = train[:32]
        before = _detector_val_loss(model, arrays, val, device, settings.amp, settings.detector_batch)
        fit_before = _detector_val_loss(model, arrays, fit, device, settings.amp, settings.detector_batch)
        rate = (_train_detector(settings, model, arrays, train, device, path=path, label_map=data.label_map,
                                start=start) if start < settings.detector_steps else float("nan"))
        after = _detector_val_loss(model, arrays, val, device, settings.amp, settings.detector_batch)
        fit_after = _detector_val_loss(model, arrays, fit, device, settings.amp, settings.detector_batch)
        report.update(detector_path=path, detector_val_loss=(before, after), detector_steps_per_s=rate,
                      detector_train_loss=(fit_before, fit_after))
    if "attributes" in settings.stages:
        path = settings.out_dir / "attributes.safetensors"
        classifier = _starting_attributes(settings, data.label_map)
        start = 0
        if settings.resume and path.is_file() and "coco_attribute_step" in checkpoint_metadata(path):
            classifier, _ = load_attributes(path)
            start = int(checkpoint_metadata(path)["coco_attribute_step"])
            log.info("resuming attribute training at step %d", start)
        classifier.to(device)
        garments = _labelled_garments(arrays, val)
        fitted = _labelled_garments(arrays, train)[:128]
        before = _attribute_val_loss(classifier, arrays, garments, device, settings.amp, settings.attribute_batch)
        fit_before = _attribute_val_loss(classifier, arrays, fitted, device, settings.amp, settings.attribute_batch)
        rate = (_train_attributes(settings, classifier, arrays, train, device, path=path, label_map=data.label_map,
                                  start=start) if start < settings.attribute_steps else float("nan"))
        after = _attribute_val_loss(classifier, arrays, garments, device, settings.amp, settings.attribute_batch)
        fit_after = _attribute_val_loss(classifier, arrays, fitted, device, settings.amp, settings.attribute_batch)
        report.update(attributes_path=path, attribute_val_loss=(before, after), attribute_steps_per_s=rate,
                      attribute_train_loss=(fit_before, fit_after))
    if "masks" in settings.stages and data.with_masks:
        report.update(_masks_stage(settings, arrays, train, val, device, data.label_map))
    elif "masks" in settings.stages:
        log.info("no annotation carries a segmentation: the mask head is not trained")
    return CocoTrainReport(len(train), len(val), data.garments, data.unknown_skipped, data.not_selected,
                           data.clipped, seconds=time.perf_counter() - t0, **report)


def _masks_stage(settings: CocoTrainSettings, arrays: CocoArrays, train: npt.NDArray[np.int64],
                 val: npt.NDArray[np.int64], device: torch.device, label_map: LabelMap) -> dict[str, Any]:
    from fashionbox.training.masks import with_mask_head

    path = settings.out_dir / "attributes.safetensors"
    start = 0
    if path.is_file():  # the attribute stage's result (or an earlier run's)
        classifier, _ = load_attributes(path)
        meta = checkpoint_metadata(path)
        if settings.resume and "coco_mask_step" in meta:
            start = int(meta["coco_mask_step"])
            log.info("resuming mask head training at step %d", start)
    else:
        classifier = _starting_attributes(settings, label_map)
    if classifier.mask_head is None:
        classifier = with_mask_head(classifier, settings.mask_size)
    classifier.to(device).eval()
    garments = _masked_garments(arrays, train)
    if not len(garments):
        log.info("no training annotation carries a segmentation: the mask head is not trained")
        return {}
    held_out, fitted = _masked_garments(arrays, val), garments[:64]
    before = _mask_val_loss(classifier, arrays, held_out, device, settings.mask_batch)
    fit_before = _mask_val_loss(classifier, arrays, fitted, device, settings.mask_batch)
    rate = (_train_mask_head(settings, classifier, arrays, garments, device, path=path, label_map=label_map,
                             start=start) if start < settings.mask_steps else float("nan"))
    return {"mask_path": path, "mask_steps_per_s": rate,
            "mask_val_loss": (before, _mask_val_loss(classifier, arrays, held_out, device, settings.mask_batch)),
            "mask_train_loss": (fit_before, _mask_val_loss(classifier, arrays, fitted, device, settings.mask_batch))}


# -- the hyper-parameter search ------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResult:
    best: dict[str, float | int]
    """``lr``, ``batch``, ``weight_decay`` of the best trial."""
    best_value: float
    trials: list[dict[str, Any]]
    seconds_per_trial: float
    best_path: Path
    trials_path: Path


BATCH_CHOICES = (4, 8, 16, 32)


def search_coco(settings: CocoTrainSettings, trials: int, *, steps_per_trial: int = 30,
                label_map: LabelMap | None = None,
                prepared: tuple[CocoData, CocoArrays, int] | None = None) -> SearchResult:
    """Optuna (TPE, seeded) over learning rate, batch size and weight decay: each trial trains the stages
    for ``steps_per_trial`` steps from the starting weights and is scored by the summed validation losses.
    Writes ``search/best_params.json`` and ``search/trials.json`` under ``out_dir``."""
    try:
        import optuna
    except ImportError as exc:
        raise CocoDataError("--search needs Optuna: pip install 'fashionbox-training[search]'") from exc

    from fashionbox.contract.labels import default_label_map

    if trials < 1:
        raise ValueError("trials must be >= 1")
    if settings.val_fraction <= 0:
        raise CocoDataError("--search needs a validation split: --val-fraction > 0")
    torch.set_num_threads(settings.threads)
    device = _device(settings.device)
    data, arrays, _ = prepared or prepare(settings, label_map or default_label_map())
    train, val = _split(len(arrays), settings.val_fraction, settings.seed)
    if not len(val):
        raise CocoDataError("--search needs at least two images (one for validation)")
    val_garments = _labelled_garments(arrays, val)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        batch = trial.suggest_categorical("batch", list(BATCH_CHOICES))
        decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        trial_settings = replace(settings, detector_lr=lr, attribute_lr=lr, detector_batch=batch,
                                 attribute_batch=batch, weight_decay=decay, detector_steps=steps_per_trial,
                                 attribute_steps=steps_per_trial)
        value = 0.0
        if "detector" in settings.stages:
            detector = _starting_detector(trial_settings, data.label_map).to(device)
            _train_detector(trial_settings, detector, arrays, train, device, path=None, label_map=data.label_map)
            value += _detector_val_loss(detector, arrays, val, device, settings.amp, 16)
        if "attributes" in settings.stages and len(val_garments):
            classifier = _starting_attributes(trial_settings, data.label_map).to(device)
            _train_attributes(trial_settings, classifier, arrays, train, device, path=None, label_map=data.label_map)
            value += _attribute_val_loss(classifier, arrays, val_garments, device, settings.amp, 64)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=settings.seed))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    seconds = (time.perf_counter() - t0) / trials
    folder = settings.out_dir / "search"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"number": t.number, "params": t.params, "value": t.value, "state": t.state.name,
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
             if t.datetime_complete and t.datetime_start else None} for t in study.trials]
    best = {"lr": float(study.best_params["lr"]), "batch": int(study.best_params["batch"]),
            "weight_decay": float(study.best_params["weight_decay"])}
    best_path, trials_path = folder / "best_params.json", folder / "trials.json"
    best_path.write_text(json.dumps({**best, "value": study.best_value, "steps_per_trial": steps_per_trial},
                                    indent=2) + "\n")
    trials_path.write_text(json.dumps(rows, indent=2) + "\n")
    return SearchResult(best, float(study.best_value), rows, seconds, best_path, trials_path)


def with_best(settings: CocoTrainSettings, best: dict[str, float | int]) -> CocoTrainSettings:
    """``settings`` with a search's best learning rate, batch size and weight decay (both stages)."""
    return replace(settings, detector_lr=float(best["lr"]), attribute_lr=float(best["lr"]),
                   detector_batch=int(best["batch"]), attribute_batch=int(best["batch"]),
                   weight_decay=float(best["weight_decay"]))
