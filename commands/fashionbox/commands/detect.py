"""``fashionbox detect``: send images to the server, print a table or JSON, draw pictures, or write the
detections as a COCO dataset.

Client-side only (no torch): reads files, calls :class:`fashionbox.client.FashionClient`,
formats :class:`fashionbox.client.ImageDetections`. A file that fails (unreadable, rejected by
the server) is reported on stderr and the others carry on; the exit code is 1 if any failed.

``--coco OUT.json`` writes what was detected (above ``--min-score``) as COCO's detection layout, the one
``fashionbox train --coco`` reads (:func:`coco_dataset`): pseudo-labels from a served model, such as an
open-vocabulary OWLv2 that needs no training, to train the fast default detector on your own photos.
Categories are the served label map's, by name; ``file_name`` is each image's path relative to the
images' common folder (``train --images``); boxes are ``[x, y, width, height]`` in the image's pixels
(after EXIF orientation, as the server saw it); a served mask is the annotation's ``segmentation``
(uncompressed RLE) and its ``area``; each annotation keeps its ``score``. Attributes are not written: the
attribute heads would be trained on their own guesses.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from fashionbox.client import ClientConfig, FashionBoxError, FashionClient, ImageDetections
from fashionbox.contract.labels import LabelMap

__all__ = ["coco_dataset", "common_folder", "detect_files", "format_table"]


def _attributes_text(detection_attributes: dict[str, dict[str, object]]) -> str:
    return ", ".join(f"{group}: {value['label']} ({float(value['score']):.2f})"  # type: ignore[arg-type]
                     for group, value in detection_attributes.items())


def format_table(name: str, result: ImageDetections) -> str:
    """A fixed-width table of one image's detections."""
    header = f"{name}  ({result.width}x{result.height}, {len(result)} detections)"
    rows = [("#", "category", "score", "box x1,y1,x2,y2 (px)", "attributes")]
    for i, detection in enumerate(result.detections, start=1):
        data = detection.to_dict()
        box = ",".join(f"{v:.0f}" for v in data["box"])
        rows.append((str(i), detection.category, f"{detection.score:.2f}", box, _attributes_text(data["attributes"])))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [header]
    if result.labels:
        lines.append(f"image labels ({result.labels_model}): "
                     + ", ".join(f"{label.label} {label.score:.2f}" for label in result.labels))
    if result.packed_embedding is not None:
        lines.append(f"embeddings: {result.packed_embedding.dimension}-d from {result.packed_embedding.model}, "
                     "one per detection and one for the image (--json prints them)")
    for r in rows:
        lines.append("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    return "\n".join(lines)


def coco_dataset(results: Sequence[tuple[Path, ImageDetections]], labels: LabelMap, root: Path) -> dict[str, Any]:
    """``results`` (each image's path and what was detected in it) as a COCO detection dataset whose
    ``file_name``s are relative to ``root``; categories numbered from 1 in the label map's order."""
    ids = {name: index + 1 for index, name in enumerate(labels.category_names)}
    categories = [{"id": ids[c.name], "name": c.name, "supercategory": c.supercategory} for c in labels.categories]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (path, result) in enumerate(results, start=1):
        images.append({"id": image_id, "file_name": path.relative_to(root).as_posix(), "width": result.width,
                       "height": result.height})
        for detection in result.detections:
            box = detection.box
            record: dict[str, Any] = {"id": len(annotations) + 1, "image_id": image_id,
                                      "category_id": ids[detection.category],
                                      "bbox": [box.x1, box.y1, box.width, box.height], "area": box.area, "iscrowd": 0,
                                      "score": detection.score}
            if detection.mask_rle is not None:
                record["segmentation"] = detection.mask_rle.to_coco()
                record["area"] = detection.mask_rle.area
            annotations.append(record)
    model = results[0][1] if results else None
    source = f"{model.model_name} {model.model_version} ({model.label_map})" if model else "no image"
    return {"info": {"description": f"detections of {source}, written by fashionbox detect --coco"},
            "images": images, "annotations": annotations, "categories": categories}


def common_folder(paths: Sequence[Path]) -> Path:
    """The deepest folder holding every one of ``paths`` (resolved)."""
    return Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))


def detect_files(images: Sequence[Path], *, url: str, as_json: bool = False, min_score: float = 0.3,
                 draw_dir: Path | None = None, timeout_s: float = 30.0, out: TextIO | None = None,
                 coco: Path | None = None, connection: ClientConfig | None = None) -> int:
    """Detect in ``images`` through the server at ``url`` (``connection``: the rest of the connection,
    TLS and headers: :mod:`fashionbox.client.connection`); 1 if any image failed, else 0."""
    out = out or sys.stdout
    failures = 0
    found: list[tuple[Path, ImageDetections]] = []
    if draw_dir is not None:
        draw_dir.mkdir(parents=True, exist_ok=True)
    with FashionClient(url, config=connection) as client:
        for path in images:
            try:
                result = client.detect(path.read_bytes(), timeout_s=timeout_s).above(min_score)
            except (OSError, FashionBoxError) as exc:
                failures += 1
                print(f"{path}: {exc}", file=sys.stderr)
                continue
            if coco is not None:
                found.append((path.resolve(), result))
            elif as_json:
                out.write(json.dumps({"image": str(path), **result.to_dict()}) + "\n")
            else:
                out.write(format_table(str(path), result) + "\n\n")
            if draw_dir is not None:
                target = draw_dir / f"{path.stem}.annotated.jpg"
                result.draw(path).save(target, quality=92)
                if not as_json and coco is None:
                    out.write(f"annotated picture: {target}\n\n")
        if coco is not None:
            root = common_folder([path for path, _ in found]) if found else Path.cwd()
            document = coco_dataset(found, client.labels(), root)
            coco.parent.mkdir(parents=True, exist_ok=True)
            coco.write_text(json.dumps(document), encoding="utf-8")
            out.write(f"{len(document['annotations'])} detections in {len(found)} images: {coco}\n"
                      f"train on them: fashionbox train --coco {coco} --images {root}\n")
    return 1 if failures else 0
