"""The catalog's pieces that need no server and no database: filters, hashes, near pairs, uploads, paths."""

from __future__ import annotations

import io
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionbox.catalog import Progress, QueryError, SearchFilter, find_images, parse_attribute, redact_url
from fashionbox.catalog.database import MAX_SOCKET_PATH_BYTES, SOCKET_NAME, Database
from fashionbox.catalog.errors import DatabaseError, UploadRejected
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


def test_the_web_page_sends_uploads_with_the_connection_it_was_given() -> None:
    """``catalog web --tls-ca ... --admin-key-file ...``: the page's client to the server carries them."""
    from fashionbox.client import ClientConfig, TlsConfig

    connection = ClientConfig(tls=TlsConfig(root_certificates=b"-----BEGIN CERTIFICATE-----\n"),
                              headers={"triton-grpc-protocol-admin-key": "k" * 20})
    app = CatalogApp(Database("postgresql://nobody@127.0.0.1:1/none"),
                     WebSettings(url="models.internal:8001", connection=connection))
    client = app.client()
    try:
        assert client.url == "models.internal:8001"
        assert client.config.tls == connection.tls and client.config.headers == connection.headers
    finally:
        client.close()


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


# -- visual search: SQL building, thresholds, vectors ---------------------------------------------------


def test_each_embedding_model_gets_its_own_partial_hnsw_index_on_its_dimension() -> None:
    from fashionbox.catalog.vectors import EmbeddingModel

    small = EmbeddingModel(3, "fashionbox@1", "garment", 128)
    assert small.cast == "vector(128)" and small.index_cast == "halfvec(128)" and small.indexed
    # garment vectors are searched in the narrow table (schema version 3), image vectors in images
    assert small.index_ddl() == ("CREATE INDEX IF NOT EXISTS garment_vectors_hnsw_3 ON garment_vectors USING hnsw "
                                 "((embedding::halfvec(128)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64) "
                                 "WHERE model_id = 3")
    assert small.category_index_name(12) == "garment_vectors_hnsw_3_12"
    wide = EmbeddingModel(4, "big", "image", 3072)  # past HNSW's 2,000 for vector: halfvec holds 4,000
    assert wide.indexed and "halfvec(3072)" in wide.index_ddl()
    assert wide.index_ddl().startswith("CREATE INDEX IF NOT EXISTS images_embedding_hnsw_4 ON images ")
    assert wide.index_ddl().endswith("WHERE embedding_model_id = 4")
    assert not EmbeddingModel(5, "huge", "image", 4096).indexed


def test_the_filter_is_the_same_condition_on_garments_or_on_the_narrow_vector_table() -> None:
    from fashionbox.catalog.queries import _where

    query = SearchFilter(category="dress", attributes=(("sleeve length", "short"),), min_score=0.5, board="b",
                         label="tops")
    wide, wide_params = _where(query)
    narrow, narrow_params = _where(query, alias="v")
    assert narrow == wide.replace("g.", "v.")
    assert [getattr(p, "obj", p) for p in narrow_params] == [getattr(p, "obj", p) for p in wide_params]
    assert narrow.startswith("NOT v.overlapped AND v.category = %s AND v.attributes @> %s AND v.score >= %s")
    assert _where(SearchFilter(include_overlapped=True), alias="v") == ("TRUE", [])
    with pytest.raises(KeyError):
        _where(query, alias="garments; DROP TABLE images")


def test_the_similarity_query_orders_by_the_indexed_expression_or_exactly_by_one_no_index_matches() -> None:
    from fashionbox.catalog.queries import _where, similar_sql
    from fashionbox.catalog.vectors import EmbeddingModel

    model = EmbeddingModel(7, "m", "garment", 64)
    where, params = _where(SearchFilter(attributes=(("sleeve length", "short"),), label="tops"), alias="v")
    assert len(params) == 2
    for category in (None, 5):
        indexed = similar_sql(model, where, exact=False, category_id=category)
        exact = similar_sql(model, where, exact=True, category_id=category)
        assert "ORDER BY (v.embedding::halfvec(64) <=> %s::halfvec(64))\n" in indexed
        assert "ORDER BY near, garment_id LIMIT %s" in exact and "ORDER BY (v.embedding" not in exact
        assert "(SELECT count(*) FROM filtered)" in exact and "filtered" not in indexed
        assert "(SELECT count(*) FROM picked)" in indexed
        # the model id (and category id) as literal integers: the partial indexes' conditions
        scope = "v.model_id = 7" + ("" if category is None else " AND v.category_id = 5")
        for sql in (indexed, exact):
            assert f"FROM garment_vectors v WHERE {scope} AND NOT v.overlapped AND v.attributes @> %s" in sql
            assert "(g.embedding::vector(64) <=> %s::vector(64)) AS distance" in sql  # similarities in float32
            assert "FROM picked p JOIN garments g ON g.id = p.garment_id" in sql
            assert "NOT (v.image_id = ANY(%s))" in sql
        # the filter's values, the excluded images, the vector, the garments, the vector, the images;
        # exact: the vector first and the scan limit
        assert indexed.count("%s") == len(params) + 5
        assert exact.count("%s") == len(params) + 6
    assert "category_id" not in similar_sql(model, where, exact=False)


def test_cosine_pairs_are_exactly_the_pairs_at_or_above_the_threshold() -> None:
    from fashionbox.catalog.vectors import cosine_pairs

    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(301, 16)).astype(np.float32)
    vectors[100] = vectors[7] + 0.05 * rng.normal(size=16)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    for threshold in (0.99, 0.8, 0.5):
        expected = [(i, j) for i in range(301) for j in range(i + 1, 301) if similarity[i, j] >= threshold]
        assert cosine_pairs(vectors, threshold, block=64) == expected
    assert (7, 100) in cosine_pairs(vectors, 0.99)
    assert cosine_pairs(vectors[:1], 0.0) == []


def test_a_vector_literal_reads_back_exactly_and_bad_vectors_are_refused() -> None:
    from fashionbox.catalog import CatalogError
    from fashionbox.catalog.vectors import normalised, vector_literal

    vector = np.random.default_rng(2).normal(size=8).astype(np.float32)
    text = vector_literal(vector)
    assert text.startswith("[") and text.endswith("]")
    assert np.array_equal(np.array(text[1:-1].split(","), dtype=np.float32), vector)
    for bad in (np.zeros(0), np.array([1.0, np.nan])):
        with pytest.raises(CatalogError):
            vector_literal(bad)
    assert float(np.linalg.norm(normalised([3.0, 4.0]))) == pytest.approx(1.0)
    with pytest.raises(CatalogError, match="not zero"):
        normalised([0.0, 0.0])


def test_the_query_garment_of_a_new_photo_is_numbered_from_one_and_needs_a_vector() -> None:
    from fashionbox.catalog.queries import query_from_result
    from fashionbox.client import PackedEmbedding
    from fashionbox.contract.embedding import pack_embedding

    def packed(values: list[float]) -> PackedEmbedding:
        return PackedEmbedding("m@1", len(values), "float16", pack_embedding(values, "float16"))

    result = ImageDetections(100, 100, (
        Detection(BoundingBox(10, 10, 50, 50), "sweater", 0.7, packed_embedding=packed([1.0, 0.0])),
        Detection(BoundingBox(11, 10, 50, 51), "top, t-shirt, sweatshirt", 0.9, packed_embedding=packed([0.0, 1.0])),
        Detection(BoundingBox(60, 60, 90, 90), "shoe", 0.5),
    ))
    best = query_from_result(result)  # the best-scoring garment: number 2
    assert best.number == 2 and best.category == "top, t-shirt, sweatshirt" and best.model == "m@1"
    assert best.vector.tolist() == [0.0, 1.0] and best.image_id is None
    assert query_from_result(result, 1).category == "sweater"
    with pytest.raises(QueryError, match="sends no garment vectors"):
        query_from_result(result, 3)
    for number in (0, 4):
        with pytest.raises(QueryError, match="numbered from 1"):
            query_from_result(result, number)
    with pytest.raises(QueryError, match="no garment"):
        query_from_result(ImageDetections(10, 10, ()))


def test_duplicate_thresholds_are_checked() -> None:
    from fashionbox.catalog import Catalog
    from fashionbox.catalog.queries import DEFAULT_MIN_COSINE

    assert 0.0 < DEFAULT_MIN_COSINE < 1.0
    catalog = Catalog(Database("postgresql://nobody@127.0.0.1:1/none"))
    for kwargs, message in (({"min_cosine": 1.2}, "cosine"), ({"max_distance": 65}, "bits"),
                            ({"kind": "rotated"}, "transformed")):
        with pytest.raises(QueryError, match=message):
            catalog.duplicates(**kwargs)


def test_photos_match_when_their_garments_match_both_ways() -> None:
    from fashionbox.catalog.vectors import garment_set_similarity, matching_photos

    rng = np.random.default_rng(4)
    garments = rng.normal(size=(6, 32)).astype(np.float32)
    garments /= np.linalg.norm(garments, axis=1, keepdims=True)
    a = garments[:3]
    mirrored = a[::-1] + 0.01 * rng.normal(size=(3, 32)).astype(np.float32)  # the same garments, moved
    mirrored /= np.linalg.norm(mirrored, axis=1, keepdims=True)
    assert garment_set_similarity(a, mirrored) > 0.99
    part = garment_set_similarity(a, a[:1])  # one garment of three: a crop of it, or another photo of one
    assert part == pytest.approx((1.0 + float((a[1:] @ a[0]).sum())) / 3, abs=1e-5)
    assert garment_set_similarity(a, np.zeros((0, 32), dtype=np.float32)) == -1.0
    owners = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3, 3], dtype=np.int64)
    vectors = np.concatenate([a, mirrored, a[:1], garments[3:]])
    assert matching_photos(owners, vectors, 0.95) == [(0, 1)]
    assert (0, 2) in matching_photos(owners, vectors, part - 0.01)


def _padded(root: Path, socket_bytes: int) -> Path:
    """A catalog folder under ``root`` whose embedded server's socket path is ``socket_bytes`` long."""
    tail = f"/catalog/postgres/{SOCKET_NAME}"
    pad = socket_bytes - len(os.fsencode(root.resolve())) - 1 - len(tail)
    assert pad > 0
    folder = root.resolve() / ("p" * pad) / "catalog"
    assert len(os.fsencode(folder / "postgres" / SOCKET_NAME)) == socket_bytes
    return folder


def test_the_socket_bound_is_the_systems(tmp_path: Path) -> None:
    """A socket name of MAX_SOCKET_PATH_BYTES binds here, one byte more does not (what pgserver probes too)."""
    for length, fits in ((MAX_SOCKET_PATH_BYTES, True), (MAX_SOCKET_PATH_BYTES + 1, False)):
        folder = _padded(tmp_path, length) / "postgres"
        folder.mkdir(parents=True)
        with socket.socket(socket.AF_UNIX) as probe:
            if fits:
                probe.bind(str(folder / SOCKET_NAME))
            else:
                with pytest.raises(OSError):
                    probe.bind(str(folder / SOCKET_NAME))


def test_a_catalog_folder_too_long_for_the_socket_is_refused_before_the_database_starts(tmp_path: Path) -> None:
    """pgserver would put the socket in a folder every local user can enter, where PostgreSQL's trust
    authentication takes anyone in as the superuser (docs/RELIABILITY.md, Security)."""
    folder = _padded(tmp_path, MAX_SOCKET_PATH_BYTES + 1)
    with pytest.raises(DatabaseError, match=r"too long for the embedded PostgreSQL.s socket .* at most 107"):
        Database.open(catalog=folder)
    assert not (folder / "postgres").exists()

