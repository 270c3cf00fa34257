"""The images a load test sends: a folder of image files, or generated fashion scenes with a size mix.

::

    corpus = generated_corpus(count=32, sizes=parse_size_mix("640x480:1,1280x960:2"), seed=1)
    corpus = folder_corpus(Path("photos"))
    corpus.images[i], corpus.describe()

Images are sent in a fixed shuffled order (from ``seed``), cycling, so every run with the same
corpus sends the same bytes in the same order.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fashionbox.loadtest.errors import LoadTestConfigError

__all__ = ["Corpus", "SizeShare", "folder_corpus", "generated_corpus", "parse_size_mix"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_SIZE_MIX = "640x480:1,1280x960:2,2048x1536:1"


@dataclass(frozen=True)
class SizeShare:
    width: int
    height: int
    weight: float

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or not self.weight > 0:
            raise LoadTestConfigError(f"bad size share {self}: sizes of at least 16 px and a positive weight")


@dataclass(frozen=True)
class Corpus:
    images: tuple[bytes, ...]
    names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if not self.images:
            raise LoadTestConfigError(f"the corpus {self.source} holds no image")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def mean_bytes(self) -> float:
        return statistics.fmean(len(i) for i in self.images)

    def describe(self) -> dict[str, object]:
        sizes = [len(i) for i in self.images]
        return {
            "source": self.source,
            "images": len(sizes),
            "mean_bytes": round(statistics.fmean(sizes)),
            "min_bytes": min(sizes),
            "max_bytes": max(sizes),
        }


def parse_size_mix(text: str) -> tuple[SizeShare, ...]:
    """``"640x480:1,1280x960:2"`` -> shares (weight defaults to 1)."""
    shares = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        size, _, weight = item.partition(":")
        width, sep, height = size.lower().partition("x")
        if not sep:
            raise LoadTestConfigError(f"size mix {text!r}: expected WIDTHxHEIGHT[:WEIGHT], got {item!r}")
        try:
            values = int(width), int(height), float(weight) if weight else 1.0
        except ValueError as exc:
            raise LoadTestConfigError(f"size mix {text!r}: {exc}") from exc
        shares.append(SizeShare(*values))
    if not shares:
        raise LoadTestConfigError(f"size mix {text!r} names no size")
    return tuple(shares)


def _allocate(count: int, shares: Sequence[SizeShare]) -> list[tuple[int, int]]:
    """``count`` sizes in proportion to the weights (largest remainders), in a fixed interleaved order."""
    total = sum(s.weight for s in shares)
    exact = [count * s.weight / total for s in shares]
    counts = [int(e) for e in exact]
    for k in sorted(range(len(shares)), key=lambda k: exact[k] - counts[k], reverse=True)[: count - sum(counts)]:
        counts[k] += 1
    sizes = [(s.width, s.height) for s, n in zip(shares, counts, strict=True) for _ in range(n)]
    return sizes


def generated_corpus(
    count: int, sizes: Sequence[SizeShare], *, seed: int = 1, quality: int = 90, base_seed: int = 900_000
) -> Corpus:
    """``count`` generated fashion scenes as JPEGs, their sizes drawn from ``sizes`` by weight."""
    from fashionbox.synth import render_scene

    if count < 1:
        raise LoadTestConfigError(f"a generated corpus needs at least 1 image, got {count}")
    planned = _allocate(count, sizes)
    random.Random(seed).shuffle(planned)
    images, names = [], []
    for k, (width, height) in enumerate(planned):
        scene = render_scene(base_seed + seed * 10_000 + k, size=(width, height))
        images.append(scene.encode(format="JPEG", quality=quality))
        names.append(f"scene-{k}-{width}x{height}.jpg")
    return Corpus(tuple(images), tuple(names), f"generated scenes ({len(images)}, sizes {_describe_mix(sizes)})")


def _describe_mix(sizes: Sequence[SizeShare]) -> str:
    return ",".join(f"{s.width}x{s.height}:{s.weight:g}" for s in sizes)


def folder_corpus(folder: Path, *, seed: int = 1, limit: int | None = None) -> Corpus:
    """Every image file under ``folder`` (recursively), in a fixed shuffled order."""
    if not folder.is_dir():
        raise LoadTestConfigError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    random.Random(seed).shuffle(paths)
    if limit is not None:
        paths = paths[:limit]
    return Corpus(tuple(p.read_bytes() for p in paths), tuple(p.name for p in paths), str(folder))
