"""The embeddings' wire encoding (``fashionbox.v1.Embedding``), defined once for server and client.

``values`` holds ``dimension`` little-endian numbers of ``dtype`` (``"float16"`` or ``"float32"``):
the server packs each L2-normalised vector with :func:`pack_embedding`, the client unpacks it with
:func:`unpack_embedding` to a float32 array. float16 halves the bytes and changes a cosine
similarity by about 1e-6 (its relative rounding is 2**-11 per component), far below what separates
two garments. Pure numpy.

Usage::

    values = pack_embedding(vector, "float16")           # bytes
    vector = unpack_embedding(values, 512, "float16")    # float32 [512]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["EMBEDDING_DTYPES", "pack_embedding", "unpack_embedding"]

EMBEDDING_DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def _dtype(name: str) -> np.dtype[Any]:
    try:
        return EMBEDDING_DTYPES[name]
    except KeyError:
        raise ValueError(f"embedding dtype {name!r}: choose one of {sorted(EMBEDDING_DTYPES)}") from None


def pack_embedding(vector: npt.ArrayLike, dtype: str = "float16") -> bytes:
    """One vector (any shape of ``dimension`` numbers) as ``values`` bytes of ``dtype``."""
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not np.isfinite(array).all():
        raise ValueError("an embedding must be finite")
    return array.astype(_dtype(dtype)).tobytes()


def unpack_embedding(values: bytes, dimension: int, dtype: str) -> npt.NDArray[np.float32]:
    """``values`` as a float32 array ``[dimension]``; a length that does not match is refused."""
    kind = _dtype(dtype)
    if len(values) != dimension * kind.itemsize:
        raise ValueError(f"embedding of {len(values)} bytes is not {dimension} values of {dtype}")
    return np.frombuffer(values, dtype=kind).astype(np.float32)
