"""Benchmark: the served JPEG decode (Pillow, DCT-scaled draft) against the well-kept alternatives.

    .venv/bin/python tests/benchmarks/bench_decode.py [--rounds 5] [--out tests/benchmarks/results/decode.json]

What ``preprocess`` does per image is decode + letterbox to the detector's 320 px. Each decoder
here does the same job its fastest way, on the same generated 1280x960 JPEGs (q90, baseline and
progressive):

- ``pillow``: :func:`fashionbox.core.imaging.decode_image` (``draft`` picks the smallest DCT
  scale covering 320 px) + :func:`letterbox`: what the server runs;
- ``simplejpeg``: libjpeg-turbo through ``decode_jpeg(min_width=, min_height=)`` (DCT-scaled);
- ``turbojpeg``: PyTurboJPEG 1.x over the system's libturbojpeg (Debian 12's is 2.1: ``apt-get install
  libturbojpeg0``; PyTurboJPEG 2 wants 3.0) with ``scaling_factor``;
- ``opencv``: ``cv2.imdecode`` with ``IMREAD_REDUCED_COLOR_{2,4,8}``.

Every alternative's scaled pixels are letterboxed by the same Pillow resize, and the result is
compared with the served pixels (max and mean absolute difference). A second table records what
each decoder does with the inputs the server must handle: EXIF orientation, CMYK, progressive,
truncated and garbage bytes (run, not assumed). Rounds interleave the decoders; medians.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_report import write_report  # noqa: E402

ROOT = HERE.parents[1]
SIZE = 320
Decoder = Callable[[bytes], np.ndarray]


def _scale_denominator(width: int, height: int) -> int:
    """The largest of 1, 2, 4, 8 whose DCT-scaled image still covers ``SIZE`` on the long side."""
    long_side = max(width, height)
    for denominator in (8, 4, 2):
        if -(-long_side // denominator) >= SIZE:
            return denominator
    return 1


def _letterbox_array(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Letterbox a DCT-scaled decode of a ``width`` x ``height`` (stored) image; a decoder that
    applied an EXIF rotation hands back the array the other way round."""
    from fashionbox.core.imaging import DecodedImage, letterbox

    if (rgb.shape[1] > rgb.shape[0]) != (width > height):
        width, height = height, width

    pixels, _ = letterbox(DecodedImage(Image.fromarray(rgb), width, height), SIZE)
    return pixels


def pillow(data: bytes) -> np.ndarray:
    from fashionbox.core.imaging import decode_image, letterbox

    pixels, _ = letterbox(decode_image(data, target_size=SIZE), SIZE)
    return pixels


def simplejpeg_decoder() -> Decoder:
    import simplejpeg

    def decode(data: bytes) -> np.ndarray:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        d = _scale_denominator(width, height)
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-width // d), min_height=-(-height // d))
        return _letterbox_array(rgb, width, height)

    return decode


def turbojpeg_decoder() -> Decoder:
    from turbojpeg import TJPF_RGB, TurboJPEG

    jpeg = TurboJPEG()

    def decode(data: bytes) -> np.ndarray:
        width, height, _, _ = jpeg.decode_header(data)
        rgb = jpeg.decode(data, pixel_format=TJPF_RGB, scaling_factor=(1, _scale_denominator(width, height)))
        return _letterbox_array(rgb, width, height)

    return decode


def opencv_decoder() -> Decoder:
    import cv2

    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags[_scale_denominator(width, height)])
        if bgr is None:
            raise ValueError("cv2.imdecode returned None")
        return _letterbox_array(np.ascontiguousarray(bgr[:, :, ::-1]), width, height)

    return decode


def make_images(count: int) -> dict[str, list[bytes]]:
    from fashionbox.synth import render_scene

    out: dict[str, list[bytes]] = {"baseline": [], "progressive": []}
    for i in range(count):
        image = render_scene(700_000 + i, size=(1280, 960)).image
        for kind, progressive in (("baseline", False), ("progressive", True)):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90, progressive=progressive)
            out[kind].append(buffer.getvalue())
    return out


def edge_cases() -> dict[str, bytes]:
    from fashionbox.synth import render_scene

    image = render_scene(700_999, size=(640, 480)).image
    cases: dict[str, bytes] = {}
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer rotates it upright
    image.save(buffer, format="JPEG", quality=90, exif=exif)
    cases["exif_orientation_6"] = buffer.getvalue()
    buffer = io.BytesIO()
    image.convert("CMYK").save(buffer, format="JPEG", quality=90)
    cases["cmyk"] = buffer.getvalue()
    cases["truncated"] = cases["exif_orientation_6"][: len(cases["exif_orientation_6"]) // 2]
    cases["garbage"] = b"\xff\xd8\xff" + bytes(range(256)) * 8
    return cases


def behaviour(name: str, decode: Decoder, cases: dict[str, bytes]) -> dict[str, str]:
    """What ``decode`` does with each edge case, against the served decode's pixels."""
    out: dict[str, str] = {}
    for case, data in cases.items():
        try:
            served = pillow(data)
        except Exception as exc:
            served = None
            served_error = type(exc).__name__
        try:
            pixels = decode(data)
        except Exception as exc:
            out[case] = f"error ({type(exc).__name__})" + ("" if served is not None else f"; served: {served_error}")
            continue
        if served is None:
            out[case] = f"decoded; served refuses it ({served_error})"
        else:
            diff = np.abs(pixels.astype(np.int16) - served.astype(np.int16))
            out[case] = f"decoded, max diff {int(diff.max())}, mean {float(diff.mean()):.2f} from served"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/decode.json")
    args = parser.parse_args(argv)

    decoders: dict[str, Decoder] = {"pillow": pillow}
    missing: dict[str, str] = {}
    for name, factory in (("simplejpeg", simplejpeg_decoder), ("turbojpeg", turbojpeg_decoder),
                          ("opencv", opencv_decoder)):
        try:
            decoders[name] = factory()
            decoders[name](make_images(1)["baseline"][0])
        except Exception as exc:  # a decoder that cannot load here is reported, not measured
            decoders.pop(name, None)
            missing[name] = f"{type(exc).__name__}: {exc}"
    images = make_images(args.images)
    runs: dict[str, dict[str, list[float]]] = {name: {kind: [] for kind in images} for name in decoders}
    fidelity: dict[str, dict[str, dict[str, float]]] = {}
    for name, decode in decoders.items():
        fidelity[name] = {}
        for kind, datas in images.items():
            diffs = [np.abs(decode(d).astype(np.int16) - pillow(d).astype(np.int16)) for d in datas]
            fidelity[name][kind] = {"max_abs": int(max(d.max() for d in diffs)),
                                    "mean_abs": round(float(np.mean([d.mean() for d in diffs])), 3)}
    for round_index in range(args.rounds):
        order = list(decoders)[round_index % len(decoders):] + list(decoders)[: round_index % len(decoders)]
        for name in order:
            for kind, datas in images.items():
                started = time.perf_counter()
                for data in datas:
                    decoders[name](data)
                runs[name][kind].append((time.perf_counter() - started) * 1000 / len(datas))
    cases = edge_cases()
    summary = {name: {f"{kind}_ms_per_image": round(statistics.median(times), 3) for kind, times in per_kind.items()}
               for name, per_kind in runs.items()}
    for name in summary:
        summary[name]["speedup_over_pillow_baseline"] = round(
            summary["pillow"]["baseline_ms_per_image"] / summary[name]["baseline_ms_per_image"], 2)
    report = {"images": args.images, "rounds": args.rounds, "size": SIZE, "summary": summary,
              "fidelity_vs_served": fidelity,
              "edge_cases": {name: behaviour(name, decode, cases) for name, decode in decoders.items()},
              "not_measured": missing, "runs": runs}
    write_report(args.out, __file__, argv, report)
    print(json.dumps({k: report[k] for k in ("summary", "fidelity_vs_served", "edge_cases", "not_measured")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
