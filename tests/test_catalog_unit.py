"""The catalog's pieces that need no server and no database: filters, hashes, near pairs, uploads, paths."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionbox.catalog import Progress, QueryError, SearchFilter, find_images, parse_attribute, redact_url
from fashionbox.catalog.database import Database
from fashionbox.catalog.errors import UploadRejected
from fashionbox.catalog.hashing import bits_to_int64, hamming, hamming_many, phash64
from fashionbox.catalog.indexer import overlapped_flags
from fashionbox.catalog.queries import near_pairs
from fashionbox.catalog.web import CatalogApp, WebSettings
from fashionbox.client import BoundingBox, Detection, ImageDetections
from fashionbox.synth import render_scene


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_an_attribute_filter_is_group_equals_label() -> None:
    assert parse_attribute(" sleeve length = wrist-length ") == ("sleeve length", "wrist-length")
    assert parse_attribute("neckline type=v-neck") == ("neckline type", "v-neck")
    for bad in ("sleeve length", "=v-neck", "neckline type=", ""):
        with pytest.raises(QueryError, match="GROUP=LABEL"):
            parse_attribute(bad)


def test_a_filter_refuses_a_group_twice_and_scores_outside_zero_one() -> None:
    with pytest.raises(QueryError, match="once"):
        SearchFilter(attributes=(("sleeve length", "short"), ("sleeve length", "wrist-length")))
    with pytest.raises(QueryError, match=r"\[0, 1\]"):
        SearchFilter(min_score=1.5)


def test_a_database_url_is_shown_without_its_password() -> None:
    assert redact_url("postgresql://ann:s3cret@db.example:5432/catalog") == "postgresql://ann:***@db.example:5432/catalog"
    assert redact_url("postgresql://db.example/catalog") == "postgresql://db.example/catalog"
    assert "s3cret" not in redact_url("postgresql://:s3cret@host/db")


def test_hashes_are_signed_64_bit_and_hamming_counts_bits() -> None:
    assert bits_to_int64(np.zeros(64, dtype=bool)) == 0
    assert bits_to_int64(np.ones(64, dtype=bool)) == -1
    assert bits_to_int64(np.array([True] + [False] * 63)) == -(1 << 63)
    assert hamming(0, -1) == 64 and hamming(0b1011, 0) == 3
    a = np.array([0, -1, 5], dtype=np.int64)
    b = np.array([-1, -1, 2], dtype=np.int64)
    assert hamming_many(a, b).tolist() == [64, 0, 3]
    with pytest.raises(ValueError):
        bits_to_int64(np.zeros(10, dtype=bool))


def test_phash_stays_close_under_reencoding_and_resizing_and_differs_between_scenes() -> None:
    scene = render_scene(5).image
    other = render_scene(6).image
    original = phash64(_encode(scene, "JPEG", quality=90))
    assert hamming(original, phash64(_encode(scene, "JPEG", quality=60))) <= 4
    half = scene.resize((scene.width // 2, scene.height // 2), Image.Resampling.LANCZOS)
    assert hamming(original, phash64(_encode(half, "PNG"))) <= 4
    assert hamming(original, phash64(_encode(other, "JPEG", quality=90))) > 10
    with pytest.raises(OSError):
        phash64(b"not an image")


def test_near_pairs_are_exactly_the_pairs_within_the_distance() -> None:
    rng = np.random.default_rng(3)
    hashes = rng.integers(-(1 << 63), (1 << 63) - 1, size=600, dtype=np.int64)
    flips = random.Random(3)
    for i in range(0, 600, 20):  # plant near copies 1 to 8 bits away, and identical triples
        mask = 0
        for bit in flips.sample(range(64), flips.randint(1, 8)):
            mask |= 1 << bit
        hashes[i + 1] = np.int64(np.uint64(int(hashes[i]) & 0xFFFF_FFFF_FFFF_FFFF ^ mask).astype(np.int64))
    hashes[300] = hashes[301] = hashes[302]
    for distance in (0, 3, 6, 10, 20):
        expected = [(i, j) for i in range(600) for j in range(i + 1, 600)
                    if hamming(int(hashes[i]), int(hashes[j])) <= distance]
        assert near_pairs(hashes, distance) == expected, distance
    assert near_pairs(hashes[:1], 6) == []


def test_a_box_covered_by_a_higher_scoring_box_of_another_category_is_overlapped() -> None:
    result = ImageDetections(100, 100, (
        Detection(BoundingBox(10, 10, 50, 50), "sweater", 0.9),
        Detection(BoundingBox(11, 10, 50, 51), "top, t-shirt, sweatshirt", 0.6),  # the same garment again
        Detection(BoundingBox(60, 60, 90, 90), "shoe", 0.5),
        Detection(BoundingBox(30, 30, 70, 70), "bag, wallet", 0.4),  # overlaps, but not the same box
    ))
    assert overlapped_flags(result) == [False, True, False, False]


def test_find_images_skips_hidden_folders_and_files_that_are_not_images(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.PNG", "sub/c.webp", "notes.txt", ".hidden/d.jpg", "sub/.e.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path.resolve()).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "sub/c.webp"]
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")


def test_progress_says_count_rate_and_eta() -> None:
    line = Progress(done=50, total=200, elapsed_s=10.0, failed=2).line()
    assert line == "indexed 50/200 images, 5.0 images/s, ETA 30 s, 2 failed"
    assert "ETA ?" in Progress(done=0, total=10, elapsed_s=0.0, failed=0).line()


def test_uploads_are_checked_for_type_and_size() -> None:
    app = CatalogApp(Database("postgresql://nobody@127.0.0.1:1/none"), WebSettings(max_upload_pixels=10_000))
    small = Image.new("RGB", (50, 40), "red")
    assert app._check_image(_encode(small, "JPEG")) == ".jpg"
    assert app._check_image(_encode(small, "PNG")) == ".png"
    assert app._check_image(_encode(small, "WEBP")) == ".webp"
    for data, status in ((_encode(small, "GIF"), 415), (b"plain text", 415),
                         (_encode(Image.new("RGB", (200, 100)), "PNG"), 413)):
        with pytest.raises(UploadRejected) as caught:
            app._check_image(data)
        assert caught.value.status == status
    with pytest.raises(ValueError):
        WebSettings(max_upload_bytes=0)
