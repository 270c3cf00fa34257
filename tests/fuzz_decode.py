"""Fuzzing the decode/preprocess path: real images, mutated, through decode_image and letterbox.

The only allowed outcomes for any bytes are a letterboxed image or :class:`InvalidImageError`;
anything else (another exception, a result of the wrong shape, an input that takes seconds) is a
bug. ``tests/test_fuzz_decode.py`` runs a bounded, reproducible share with hypothesis in CI;
this file run as a script fuzzes for a time budget with a seeded random generator::

    python tests/fuzz_decode.py --seconds 600 [--seed 1] [--max-pixels 64000000] [--crash-dir DIR]

(``scripts/fuzz.sh`` is the same with defaults). It prints how many inputs it tried, how many were
served and how many refused (by message), the slowest input and the peak memory, and exits 1
with the input saved to ``--crash-dir`` on the first failure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import re
import resource
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fashionbox.core.imaging import DecodeLimits, InvalidImageError, decode_image, letterbox

INPUT_SIZE = 320
"""The served letterbox size: JPEG DCT scaling depends on it, so fuzz at the real one."""
LIMITS = DecodeLimits(max_image_bytes=1 << 20, max_pixels=4_000_000)
"""Smaller than the served defaults so a mutated header cannot make one input cost seconds."""
SLOW_INPUT_S = 5.0
"""An input that takes longer than this counts as a hang (inputs are a few kB, limits are small)."""

MUTATIONS = 8
"""Kinds of :class:`Mutation`: bit flip, overwrite, truncate, insert, delete, duplicate, splice, int."""
_INTERESTING_INTS = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 30000, 0x7FFFFFFF, 0xFFFFFFFF)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bytes(width: int, height: int, rows: bytes | None = None, *, bit_depth: int = 8) -> bytes:
    """An RGB PNG written by hand: ``rows`` (filter byte + samples per row) or no pixel data at all.

    Pillow cannot write a 16-bit RGB PNG or a header that declares more pixels than it holds.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(rows)) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + data + chunk(b"IEND", b"")


def seed_images() -> list[bytes]:
    """Small real files of every kind the server meets: the starting points of every mutation."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    turned = Image.Exif()
    turned[0x0112] = 6
    palette = photo.convert("P")
    rgba = photo.copy()
    rgba.putalpha(128)
    return [
        _encode(photo, "JPEG", quality=80),
        _encode(photo, "JPEG", quality=80, exif=turned.tobytes()),
        _encode(photo, "JPEG", progressive=True),
        _encode(photo.convert("L"), "JPEG"),
        _encode(photo.convert("CMYK"), "JPEG"),
        _encode(photo, "PNG"),
        _encode(palette, "PNG", transparency=0),
        _encode(rgba, "PNG"),
        _encode(Image.fromarray((rng.integers(0, 65536, (8, 12))).astype(np.uint16)), "PNG"),
        _encode(photo.convert("1"), "PNG"),
        _encode(photo, "PNG", save_all=True, append_images=[photo.rotate(90)]),
        _encode(photo, "WEBP", quality=70),
        _encode(rgba, "WEBP", lossless=True),
        _encode(photo, "WEBP", save_all=True, append_images=[photo.rotate(90)]),
        png_bytes(30000, 30000),
    ]


SEEDS = seed_images()


@dataclass(frozen=True)
class Mutation:
    """One edit of a seed: ``kind`` in ``range(MUTATIONS)``, where (fraction of the length), how much."""

    kind: int
    where: float
    size: int
    payload: bytes
    other: int
    """Index of the seed whose tail a splice takes."""

    def apply(self, data: bytes) -> bytes:
        at = min(len(data), int(self.where * len(data)))
        payload = self.payload or b"\x00"
        match self.kind % MUTATIONS:
            case 0:  # flip one bit per payload byte, around `at`
                out = bytearray(data)
                for offset, byte in enumerate(payload):
                    if out:
                        out[(at + offset * 7) % len(out)] ^= 1 << (byte % 8)
                return bytes(out)
            case 1:  # overwrite
                return data[:at] + payload + data[at + len(payload) :]
            case 2:  # truncate
                return data[:at]
            case 3:  # insert
                return data[:at] + payload * self.size + data[at:]
            case 4:  # delete
                return data[:at] + data[at + self.size :]
            case 5:  # duplicate a range, as a repeated chunk would
                return data[: at + self.size] + data[at : at + self.size] + data[at + self.size :]
            case 6:  # splice: this seed's head, another's tail
                tail = SEEDS[self.other % len(SEEDS)]
                return data[:at] + tail[int(self.where * len(tail)) :]
            case _:  # an interesting 16- or 32-bit value, where sizes and lengths live
                value = _INTERESTING_INTS[self.size % len(_INTERESTING_INTS)]
                packed = struct.pack(">I", value) if payload[0] % 2 else struct.pack(">H", value & 0xFFFF)
                return data[:at] + packed + data[at + len(packed) :]


def mutate(seed: int, mutations: list[Mutation]) -> bytes:
    data = SEEDS[seed % len(SEEDS)]
    for mutation in mutations:
        data = mutation.apply(data)
    return data


def check_one(data: bytes, limits: DecodeLimits = LIMITS) -> str:
    """Decode and letterbox ``data``; ``"served"`` or the refusal message. Anything else raises."""
    started = time.perf_counter()
    try:
        decoded = decode_image(data, target_size=INPUT_SIZE, limits=limits)
        pixels, info = letterbox(decoded, INPUT_SIZE)
    except InvalidImageError as exc:
        outcome = str(exc)
        assert outcome, "a refusal must say why"
    else:
        assert pixels.shape == (INPUT_SIZE, INPUT_SIZE, 3) and pixels.dtype == np.uint8
        assert decoded.image.mode == "RGB"
        assert 1 <= info.width * info.height <= limits.max_pixels, (info.width, info.height)
        assert info.scale > 0 and np.isfinite(info.scale)
        outcome = "served"
    elapsed_s = time.perf_counter() - started
    assert elapsed_s < SLOW_INPUT_S, f"one input of {len(data)} bytes took {elapsed_s:.1f} s"
    return outcome


def outcome_class(outcome: str) -> str:
    """A refusal message without its details (numbers, Pillow's words): what the run reports."""
    return re.sub(r"\d+", "N", outcome.split(":")[0])


def peak_rss_mb() -> float:
    """This process's own peak resident memory (MB).

    Linux's ``ru_maxrss`` is no good for that in a child process: it starts at the parent's peak at
    the fork and keeps it across exec, so a subprocess of a test session that once held 1 GB reads
    1 GB before it has done anything. ``VmHWM`` is the peak of the process's own address space.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB; no /proc elsewhere


def random_mutation(rng: random.Random) -> Mutation:
    return Mutation(
        kind=rng.randrange(MUTATIONS),
        where=rng.random(),
        size=rng.randrange(1, 65),
        payload=rng.randbytes(rng.randrange(1, 17)),
        other=rng.randrange(len(SEEDS)),
    )


def random_input(rng: random.Random) -> bytes:
    if rng.random() < 0.1:  # arbitrary bytes, sometimes behind a real signature
        prefix = rng.choice([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 "])
        return prefix + rng.randbytes(rng.randrange(0, 4096))
    return mutate(rng.randrange(len(SEEDS)), [random_mutation(rng) for _ in range(rng.randrange(1, 5))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=600.0, help="time budget")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-pixels", type=int, default=LIMITS.max_pixels)
    parser.add_argument("--crash-dir", type=Path, default=Path("artifacts/fuzz"))
    args = parser.parse_args(argv)
    limits = DecodeLimits(max_image_bytes=LIMITS.max_image_bytes, max_pixels=args.max_pixels)
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    slowest = (0.0, 0)
    started = time.monotonic()
    rss_before = peak_rss_mb()
    while time.monotonic() - started < args.seconds:
        data = random_input(rng)
        tried = time.perf_counter()
        try:
            outcome = check_one(data, limits)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                break
            args.crash_dir.mkdir(parents=True, exist_ok=True)
            path = args.crash_dir / f"crash-{hashlib.sha256(data).hexdigest()[:16]}.bin"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"FAILED on input #{sum(outcomes.values()) + 1} ({len(data)} bytes), saved to {path}")
            return 1
        outcomes[outcome_class(outcome)] += 1
        slowest = max(slowest, (time.perf_counter() - tried, len(data)))
    total = sum(outcomes.values())
    elapsed_s = time.monotonic() - started
    print(f"{total} inputs in {elapsed_s:.0f} s ({total / max(elapsed_s, 1e-9):.0f}/s), seed {args.seed}, "
          f"max_pixels {limits.max_pixels}: no crash")
    for outcome, count in outcomes.most_common():
        print(f"  {count:8d}  {outcome}")
    print(f"slowest input {slowest[0] * 1000:.0f} ms ({slowest[1]} bytes); "
          f"peak RSS {peak_rss_mb():.0f} MB (before {rss_before:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
