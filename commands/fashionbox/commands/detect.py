"""``fashionbox detect``: send images to the server, print a table or JSON, draw pictures.

Client-side only (no torch): reads files, calls :class:`fashionbox.client.FashionClient`,
formats :class:`fashionbox.client.ImageDetections`. A file that fails (unreadable, rejected by
the server) is reported on stderr and the others carry on; the exit code is 1 if any failed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from fashionbox.client import FashionBoxError, FashionClient, ImageDetections

__all__ = ["detect_files", "format_table"]


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


def detect_files(images: Sequence[Path], *, url: str, as_json: bool = False, min_score: float = 0.3,
                 draw_dir: Path | None = None, timeout_s: float = 30.0, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    failures = 0
    if draw_dir is not None:
        draw_dir.mkdir(parents=True, exist_ok=True)
    with FashionClient(url) as client:
        for path in images:
            try:
                result = client.detect(path.read_bytes(), timeout_s=timeout_s).above(min_score)
            except (OSError, FashionBoxError) as exc:
                failures += 1
                print(f"{path}: {exc}", file=sys.stderr)
                continue
            if as_json:
                out.write(json.dumps({"image": str(path), **result.to_dict()}) + "\n")
            else:
                out.write(format_table(str(path), result) + "\n\n")
            if draw_dir is not None:
                target = draw_dir / f"{path.stem}.annotated.jpg"
                result.draw(path).save(target, quality=92)
                if not as_json:
                    out.write(f"annotated picture: {target}\n\n")
    return 1 if failures else 0
