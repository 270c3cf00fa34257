"""Images and constants of the client's integration tests that need the client alone (no server parts).

Split from ``client_servers.py`` so the integration tests can also run in a venv that holds only
the client wheel, against a server started elsewhere (``client_served.py``,
``scripts/client_compat.sh``). ``client_servers`` re-exports all of it.
"""

from __future__ import annotations

import io
import socket

import numpy as np
from PIL import Image

from fashionbox.contract import ADMIN_GRPC_HEADER, ADMIN_KEY_NAME

ADMIN_KEY = "s3cret-admin-key"
RESTRICT_STATISTICS = f"--grpc-restricted-protocol=statistics:{ADMIN_KEY_NAME}={ADMIN_KEY}"
"""Triton flag: the statistics API answers only calls that carry the admin header."""
ADMIN_HEADER = ADMIN_GRPC_HEADER
"""The header a client sends for that flag: Triton prefixes the key with ``triton-grpc-protocol-``."""


def dark_jpeg(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A small dark textured JPEG: the stand-in detector finds garments in dark images."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def image_set(count: int, unique: int = 50) -> list[bytes]:
    """``count`` images cycling through ``unique`` different ones (sizes vary too)."""
    distinct = [dark_jpeg(seed, size=(64 + 8 * (seed % 5), 48 + 8 * (seed % 3))) for seed in range(unique)]
    return [distinct[i % unique] for i in range(count)]


def large_png(size: tuple[int, int] = (2400, 1800)) -> bytes:
    """A large noisy PNG: decoding and letterboxing it takes the server tens of milliseconds."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 90, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


NOT_AN_IMAGE = b"this is not an image, just text with a .jpg name"


def unused_port() -> int:
    """A local TCP port nobody listens on (at the moment of asking): a server that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
