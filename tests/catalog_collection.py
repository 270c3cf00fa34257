"""A generated photo collection with known garments and known copies, for the catalog's tests and benchmark.

``write_collection(folder, count, seed)`` renders ``count`` scenes (fashionbox.synth) as JPEGs and
adds, for some of them, an exact copy (the same bytes), a re-encoded copy (JPEG quality 70) and a
resized copy (75 %); it returns the ground truth: each scene's garments (category, attributes) and
the groups of copies.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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


HELD_OUT_IDENTITIES = 10**12
"""Identity seeds from here up are never trained on (``fashionbox.training.retrieval.HELD_OUT_BASE``)."""


@dataclass(frozen=True)
class IdentityTruth:
    """Photos of known garments (``fashionbox.synth.render_identity_scenes``) and transformed copies."""

    views: dict[str, tuple[int, str, tuple[float, float, float, float], frozenset[str]]]
    """Resolved path -> (identity, category, box of that garment in the photo, its label set: the category
    and ``group=label`` of each attribute, for S3's protocol)."""
    transformed: list[list[str]] = field(default_factory=list)
    """Groups (sorted paths) of a photo and its flipped, cropped and colour-changed copies."""

    def paths_of(self, identity: int) -> list[str]:
        return sorted(p for p, v in self.views.items() if v[0] == identity)


TRANSFORMS = ("flipped", "cropped", "recoloured")


def transform(image: Image.Image, kind: str) -> Image.Image:
    """A transformed copy: mirrored, cropped to the central 80 % (then back to the size), or its colours changed."""
    from PIL import ImageEnhance, ImageOps

    if kind == "flipped":
        return ImageOps.mirror(image)
    if kind == "cropped":
        w, h = image.size
        return image.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w, h), Image.Resampling.LANCZOS)
    if kind == "recoloured":
        return ImageEnhance.Brightness(ImageEnhance.Color(image).enhance(1.6)).enhance(1.1)
    raise ValueError(f"unknown transform {kind!r}")


def write_identities(folder: Path, *, identities: int, views: int, seed: int = 0, transformed: int = 0,
                     transforms: tuple[str, ...] = TRANSFORMS) -> IdentityTruth:
    """``views`` photos of each of ``identities`` held-out garments under ``folder``, and for the first
    ``transformed`` photos one copy per transform in ``transforms`` (under ``folder/copies``)."""
    from fashionbox.synth import render_identity_scenes

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[int, str, tuple[float, float, float, float], frozenset[str]]] = {}
    images: list[tuple[Path, Image.Image]] = []
    for k in range(identities):
        identity = HELD_OUT_IDENTITIES + seed * 100_000 + k
        for view, scene in enumerate(render_identity_scenes(identity, views)):
            garment = next(g for g in scene.garments if g.identity == identity)
            path = folder / f"identity-{identity}-view{view}.jpg"
            path.write_bytes(_jpeg(scene.image, 90))
            labels = frozenset([garment.category, *(f"{g}={v}" for g, v in garment.attributes.items())])
            out[str(path.resolve())] = (identity, garment.category, garment.box, labels)
            images.append((path, scene.image))
    truth = IdentityTruth(out)
    if transformed:
        copies = folder / "copies"
        copies.mkdir(exist_ok=True)
        for path, image in images[:transformed]:
            group = [str(path.resolve())]
            for kind in transforms:
                copy = copies / f"{kind}-{path.name}"
                copy.write_bytes(_jpeg(transform(image, kind), 90))
                group.append(str(copy.resolve()))
            truth.transformed.append(sorted(group))
    return truth


@contextlib.contextmanager
def scratch_catalog_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder for a catalog (its embedded PostgreSQL under ``catalog/postgres``), stopped
    and removed at the end."""
    from fashionbox.catalog.database import stop_embedded

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # the embedded PostgreSQL may run as its own user (tests/test_catalog_integration.py)
    try:
        yield path
    finally:
        stop_embedded(path / "catalog" / "postgres")
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def serve_web(app: Any) -> Iterator[str]:
    """``app`` (the catalog's web page) served by uvicorn on a free loopback port, in a thread; its address."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the web page did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def random_unit(rng: np.random.Generator, dim: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A random unit vector of ``dim`` float32s (a planted garment's or image's embedding)."""
    v = rng.normal(size=dim).astype(np.float32)
    out: np.ndarray[Any, np.dtype[np.float32]] = v / np.linalg.norm(v)
    return out


class PlantedServer:
    """A stand-in for the server in catalog tests: each file's answer is fixed in advance, by its bytes
    (``answers[data] = ImageDetections(...)``, or an exception to raise, as the client raises the server's
    refusals); ``detect`` takes a path or the bytes, as the client does."""

    def __init__(self) -> None:
        self.answers: dict[bytes, Any] = {}

    def detect(self, image: Any, **_: Any) -> Any:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        answer = self.answers[data]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def spy_on_plans(monkeypatch: Any) -> list[bool]:
    """Record, per statement ``Catalog.similar`` builds from now on, whether it searches exactly (True) or
    through an HNSW index (False)."""
    from fashionbox.catalog import queries

    ways: list[bool] = []
    real = queries.similar_sql

    def spy(*args: Any, **kwargs: Any) -> str:
        ways.append(bool(kwargs["exact"]))
        return str(real(*args, **kwargs))

    monkeypatch.setattr(queries, "similar_sql", spy)
    return ways


def copy_synthetic_images(conn: Any, count: int, prefix: str, *, width: int = 640, height: int = 480) -> int:
    """COPY ``count`` indexed image rows named ``/{prefix}/NNNNNNN.jpg`` (synthetic rows for garments to
    hang on, no files); the id of the first (the rest follow it)."""
    with conn.cursor().copy("COPY images (path, sha256, size_bytes, status, width, height) FROM STDIN") as copy:
        for i in range(count):
            copy.write_row((f"/{prefix}/{i:07d}.jpg", f"{i:064x}", 1000, "indexed", width, height))
    first = conn.execute("SELECT min(id) FROM images WHERE path LIKE %s", (f"/{prefix}/%",)).fetchone()
    assert first is not None and first[0] is not None
    return int(first[0])


@dataclass
class SyntheticGarments:
    """Rows for the catalog's speed benchmarks: no photo behind them, four garments per image."""

    vectors: Any
    """[N, dimension] float32 unit vectors around ``centres`` cluster centres."""
    categories: list[int]
    """Each garment's category index (into the label map's names), drawn at random."""
    clusters: list[int]
    """Each garment's cluster, whose index modulo the categories gives a category that follows the vector."""
    attributes: list[dict[str, dict[str, Any]]]
    """Each garment's attributes: a random label of every group its category has, score 0.9."""
    rng: Any
    """The generator, left where the rows ended, to draw the queries from."""


def copy_synthetic_garments(conn: Any, rows: SyntheticGarments, first_image: int, images: int, model_id: int, *,
                            per_image: int = 4) -> None:
    """COPY ``rows`` as the garments of ``images`` images whose ids follow ``first_image``, ``per_image`` each
    (one COPY: the insert trigger then fills ``garment_vectors``)."""
    from fashionbox.catalog.vectors import vector_literal
    from fashionbox.contract.labels import default_label_map

    categories = list(default_label_map().category_names)
    with conn.cursor().copy("COPY garments (image_id, ordinal, category, score, x1, y1, x2, y2, attributes, "
                            "embedding, embedding_model_id) FROM STDIN") as copy:
        row = 0
        for i in range(images):
            for k in range(per_image):
                copy.write_row((first_image + i, k, categories[rows.categories[row]], 0.9, 10, 10, 100, 100,
                                json.dumps(rows.attributes[row]), vector_literal(rows.vectors[row]), model_id))
                row += 1


def synthetic_garments(garments: int, *, dimension: int = 128, centres: int = 5000, seed: int = 7,
                       ) -> SyntheticGarments:
    """``garments`` rows (rounded down to whole images of 4), the same for the same arguments."""
    import numpy as np

    from fashionbox.contract.labels import default_label_map

    labels = default_label_map()
    names = list(labels.category_names)
    rng = np.random.default_rng(seed)
    count = garments // 4 * 4
    centre_vectors = rng.normal(size=(centres, dimension)).astype(np.float32)
    clusters = rng.integers(0, centres, size=count)
    vectors = centre_vectors[clusters] + 0.5 * rng.normal(size=(count, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    categories: list[int] = []
    attributes: list[dict[str, dict[str, Any]]] = []
    for _ in range(count):
        index = int(rng.integers(len(names)))
        categories.append(index)
        drawn: dict[str, dict[str, Any]] = {}
        for group in labels.groups_for(names[index]):
            choices = labels.group(group).labels
            drawn[group] = {"label": choices[int(rng.integers(len(choices)))], "score": 0.9}
        attributes.append(drawn)
    return SyntheticGarments(vectors, categories, clusters.tolist(), attributes, rng)
