"""A generated photo collection with known garments and known copies, for the catalog's tests and benchmark.

``write_collection(folder, count, seed)`` renders ``count`` scenes (fashionbox.synth) as JPEGs and
adds, for some of them, an exact copy (the same bytes), a re-encoded copy (JPEG quality 70) and a
resized copy (75 %); it returns the ground truth: each scene's garments (category, attributes) and
the groups of copies.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fashionbox.synth import render_scene


@dataclass(frozen=True)
class Truth:
    """What was written: originals with their garments, and which files are copies of which."""

    garments: dict[str, tuple[tuple[str, dict[str, str]], ...]]
    """Resolved path of each original -> (category, {group: label}) of each garment in it."""
    exact: list[list[str]] = field(default_factory=list)
    near: list[list[str]] = field(default_factory=list)
    """Groups (sorted paths) of an original and its re-encoded or resized copy."""

    def images_with(self, category: str, attributes: dict[str, str] | None = None) -> set[str]:
        wanted = attributes or {}
        return {path for path, garments in self.garments.items()
                if any(c == category and all(a.get(g) == v for g, v in wanted.items()) for c, a in garments)}


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_collection(folder: Path, *, count: int, seed: int, exact: int = 2, reencoded: int = 1,
                     resized: int = 1) -> Truth:
    """``count`` scenes under ``folder/photos``; copies of the first scenes under ``folder/photos/copies``."""
    photos = folder / "photos"
    copies = photos / "copies"
    copies.mkdir(parents=True, exist_ok=True)
    garments: dict[str, tuple[tuple[str, dict[str, str]], ...]] = {}
    originals: list[tuple[Path, Image.Image, bytes]] = []
    for i in range(count):
        scene = render_scene(seed * 100_000 + i)
        data = _jpeg(scene.image, 90)
        path = photos / f"scene-{seed}-{i:04d}.jpg"
        path.write_bytes(data)
        garments[str(path.resolve())] = tuple((g.category, dict(g.attributes)) for g in scene.garments)
        originals.append((path, scene.image, data))
    truth = Truth(garments)
    k = 0
    for _ in range(exact):
        path, _, data = originals[k]
        copy = copies / f"exact-{path.name}"
        copy.write_bytes(data)
        truth.exact.append(sorted([str(path.resolve()), str(copy.resolve())]))
        k += 1
    for _ in range(reencoded):
        path, image, _ = originals[k]
        copy = copies / f"reencoded-{path.name}"
        copy.write_bytes(_jpeg(image, 70))
        truth.near.append(sorted([str(path.resolve()), str(copy.resolve())]))
        k += 1
    for _ in range(resized):
        path, image, _ = originals[k]
        copy = copies / f"resized-{path.name}"
        small = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
        copy.write_bytes(_jpeg(small, 90))
        truth.near.append(sorted([str(path.resolve()), str(copy.resolve())]))
        k += 1
    return truth
