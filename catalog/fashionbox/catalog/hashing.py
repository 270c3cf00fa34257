"""Content and perceptual hashes of an image file.

The content hash (SHA-256 of the file's bytes) makes indexing idempotent and finds exact copies;
the perceptual hash (imagehash's 64-bit DCT pHash) finds near copies: re-encoded, resized, lightly
edited. pHash is stored as a signed 64-bit integer (PostgreSQL ``bigint``); :func:`hamming` counts
differing bits.
"""

from __future__ import annotations

import hashlib
import io

import imagehash
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

PHASH_DRAFT_PX = 64
"""JPEGs are decoded in grey at a DCT-reduced size of at least this many pixels a side before hashing:
pHash looks at a 32x32 grey thumbnail, so a full colour decode is wasted work (docs/FIELD_NOTES.md,
decoding): 1.5 ms of CPU instead of 6 ms for a full decode, the same hash within 0-4 bits."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def phash64(data: bytes) -> int:
    """imagehash's pHash of the upright image in ``data``, as a signed 64-bit integer.

    Raises whatever Pillow raises for data that is not an image (``PIL.UnidentifiedImageError``,
    ``OSError`` for truncated files).
    """
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (PHASH_DRAFT_PX, PHASH_DRAFT_PX))
        upright = ImageOps.exif_transpose(image)
        bits = imagehash.phash(upright).hash.flatten()
    return bits_to_int64(bits)


def warm_up() -> None:
    """Hash a tiny image once: imagehash imports scipy's FFT on first use (about 0.6 s), which an
    indexer should pay before its first request, not while the server waits for more work."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    phash64(buffer.getvalue())


def bits_to_int64(bits: npt.NDArray[np.bool_]) -> int:
    """64 booleans (most significant first) as a two's-complement signed 64-bit integer."""
    if bits.size != 64:
        raise ValueError(f"a 64-bit hash needs 64 bits, got {bits.size}")
    value = 0
    for bit in bits.tolist():
        value = (value << 1) | int(bool(bit))
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes (signed or unsigned)."""
    return ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()


def hamming_many(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """Element-wise Hamming distances between two equally long arrays of 64-bit hashes."""
    as_bytes = np.bitwise_xor(a.astype(np.int64), b.astype(np.int64)).view(np.uint8).reshape(-1, 8)
    distances: npt.NDArray[np.uint8] = _POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)
    return distances


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
