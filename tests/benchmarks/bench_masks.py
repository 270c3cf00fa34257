"""Benchmark: what instance masks add per image, server side (postprocess) and client side.

    .venv/bin/python tests/benchmarks/bench_masks.py [--rounds 7] [--garments 20] [--out results/masks.json]

One 1280x960 image with ``--garments`` detections of garment-like sizes (a fixed seed), as
``postprocess`` sees it: letterbox boxes at 320, and per detection either

- a mask head's grid (``--mask-size``, smooth blob-shaped probabilities), pasted by
  :func:`fashionbox.core.masks.paste_crop_masks`, or
- a YOLO-seg detector's coefficients over 32 prototypes (160x160 at a 640 letterbox), assembled
  by :func:`fashionbox.core.proto_masks.masks_from_protos` (when that module is installed), on
  this 1280x960 photo and on a 4032x3024 one (a phone camera's), against the straightforward form
  (both of Ultralytics' steps sampled at every pixel of the box and of its original region, then
  RLE pixel by pixel; the masks checked equal but for ties);

then RLE-encoded from the box-sized regions and written into the result proto. Timed, each the
median over rounds of the per-image time: pasting / assembling, RLE, ``build_image_detections``
plus serialisation with masks minus without, and the client's share (parsing the proto, and
expanding every ``Detection.mask``). The payload's size with and without masks is recorded. A
full-image RLE (``encode_rle`` of each mask as a 1280x960 array) and the straightforward paste
(every pixel of each crop region sampled, then its RLE) are timed as the baselines the run form
avoids (their masks are checked equal). Single-threaded, in process. Times are CPU time of this process
(``time.process_time``), medians over rounds: on the shared 2-core machine wall time mostly
measures the neighbours' load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report

WIDTH, HEIGHT = 1280, 960


def _boxes(rng: np.random.Generator, count: int, size: int) -> np.ndarray[Any, Any]:
    """Garment-sized boxes (5 % to 40 % of the letterbox side) inside the image part of a ``size`` letterbox."""
    scale = size / max(WIDTH, HEIGHT)
    top, bottom = (size - HEIGHT * scale) / 2, (size + HEIGHT * scale) / 2
    sides = rng.uniform(0.05, 0.4, size=(count, 2)) * size
    x1 = rng.uniform(0, size - sides[:, 0])
    y1 = rng.uniform(top, bottom - sides[:, 1])
    return np.stack([x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]], axis=1).astype(np.float32)


def _blob_grids(rng: np.random.Generator, count: int, cells: int) -> np.ndarray[Any, Any]:
    """Smooth garment-like probability grids: a random ellipse with a soft edge and some wobble."""
    centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells - 0.5
    out = np.empty((count, cells, cells), dtype=np.float32)
    for k in range(count):
        ry, rx = rng.uniform(0.25, 0.48, size=2)
        wobble = 0.08 * np.sin(centres[:, None] * rng.uniform(5, 15) + rng.uniform(0, 6))
        radius = (centres[:, None] / ry) ** 2 + (centres[None, :] / rx) ** 2 + wobble
        out[k] = 1.0 / (1.0 + np.exp(8.0 * (radius - 1.0)))
    return out


def _region_paste(grids: np.ndarray[Any, Any], boxes: np.ndarray[Any, Any], info: Any) -> list[Any]:
    """The straightforward form, for comparison: sample every pixel of each crop region bilinearly
    and keep the region's bits (:class:`fashionbox.core.masks.InstanceMask`)."""
    from fashionbox.core.imaging import crop_regions
    from fashionbox.core.masks import InstanceMask

    size = round(info.scale * max(info.width, info.height))
    cells = grids.shape[1]
    out = []
    for grid, (x1, y1, x2, y2) in zip(grids, crop_regions(boxes, size, size).tolist(), strict=True):
        axes = []
        for start, stop, pad, limit in ((x1, x2, info.pad_x, info.width), (y1, y2, info.pad_y, info.height)):
            first = max(0, int(np.ceil((start - pad) / info.scale - 0.5)))
            last = min(limit, int(np.floor((stop - pad) / info.scale - 0.5)) + 1)
            g = np.clip(((np.arange(first, last) + 0.5) * info.scale + pad - start) / (stop - start) * cells - 0.5,
                        0, cells - 1)
            low = np.floor(g).astype(np.int64)
            axes.append((first, low, np.minimum(low + 1, cells - 1), (g - low).astype(np.float32)))
        (x0, xl, xh, fx), (y0, yl, yh, fy) = axes
        rows = grid[yl] * (1 - fy)[:, None] + grid[yh] * fy[:, None]
        out.append(InstanceMask(x0, y0, rows[:, xl] * (1 - fx) + rows[:, xh] * fx >= 0.5, info.width, info.height))
    return out


def _median_ms(function: Callable[[], Any], rounds: int, repeats: int = 3) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(repeats):
            function()
        times.append((time.process_time() - start) / repeats * 1000.0)
    return statistics.median(times)


def _taps(out_size: int, in_size: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """torch's ``interpolate(mode="bilinear", align_corners=False)`` taps: lower cell, upper cell, its weight."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    return low, np.minimum(low + 1, in_size - 1), src - low


def _pixelwise_proto_masks(coeffs: np.ndarray[Any, Any], protos: np.ndarray[Any, Any], boxes: np.ndarray[Any, Any],
                           info: Any, size: int) -> list[Any]:
    """The straightforward form, for comparison: Ultralytics' two steps sampled at every pixel of each
    box (at the letterbox) and of its region in the original image, kept as the region's bits
    (:class:`fashionbox.core.masks.InstanceMask`, RLE-encoded pixel by pixel)."""
    from fashionbox.core.masks import InstanceMask

    k, grid_h, grid_w = protos.shape
    logits = (coeffs @ protos.reshape(k, -1)).reshape(-1, grid_h, grid_w)
    ly0, ly1, wy = _taps(size, grid_h)
    lx0, lx1, wx = _taps(size, grid_w)
    gain = min(size / info.height, size / info.width)
    content_h, content_w = round(info.height * gain), round(info.width * gain)
    top, left = round((size - content_h) / 2 - 0.1), round((size - content_w) / 2 - 0.1)
    oy0, oy1, fy = _taps(info.height, content_h)
    ox0, ox1, fx = _taps(info.width, content_w)
    out = []
    for grid, (x1, y1, x2, y2) in zip(logits, boxes.tolist(), strict=True):
        c0, c1, r0, r1 = max(0, int(np.ceil(x1))), min(size, int(np.ceil(x2))), max(0, int(np.ceil(y1))), min(
            size, int(np.ceil(y2)))
        canvas = np.zeros((size, size), dtype=np.float32)  # step 1 within the box, at the letterbox
        rows = grid[ly0[r0:r1]] * (1 - wy[r0:r1, None]) + grid[ly1[r0:r1]] * wy[r0:r1, None]
        canvas[r0:r1, c0:c1] = (rows[:, lx0[c0:c1]] * (1 - wx[c0:c1]) + rows[:, lx1[c0:c1]] * wx[c0:c1]) > 0
        # step 2: the original pixels whose taps reach the box
        ys = np.flatnonzero((oy1 + top >= r0) & (oy0 + top < r1))
        xs = np.flatnonzero((ox1 + left >= c0) & (ox0 + left < c1))
        if not ys.size or not xs.size:
            out.append(InstanceMask.empty(info.width, info.height))
            continue
        ya, yb, xa, xb = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        down = (canvas[oy0[ya:yb] + top] * (1 - fy[ya:yb, None]) + canvas[oy1[ya:yb] + top] * fy[ya:yb, None])
        bits = (down[:, ox0[xa:xb] + left] * (1 - fx[xa:xb]) + down[:, ox1[xa:xb] + left] * fx[xa:xb]) > 0.5
        out.append(InstanceMask(xa, ya, bits, info.width, info.height))
    return out


def _proto_cost(rounds: int, garments: int, rng: np.random.Generator, width: int = WIDTH,
                height: int = HEIGHT) -> dict[str, Any] | None:
    try:
        from fashionbox.core.proto_masks import masks_from_protos
    except ImportError:
        return None
    from fashionbox.core.imaging import LetterboxInfo

    size, k, grid = 640, 32, 160
    info = LetterboxInfo(width, height, size / width, 0.0, (size - height * size / width) / 2)
    boxes = _boxes(rng, garments, size)
    # Prototypes that make blob-shaped masks in the boxes: coefficients pick smooth random fields.
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32) / grid
    protos = np.stack([np.sin(xx * rng.uniform(2, 12) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(2, 12))
                       for _ in range(k)]).astype(np.float32)
    coeffs = rng.normal(0, 1, size=(garments, k)).astype(np.float32)
    masks = masks_from_protos(coeffs, protos, boxes, info)
    baseline = _pixelwise_proto_masks(coeffs, protos, boxes, info, size)
    differing = sum(int((a.to_array() != b.to_array()).sum()) for a, b in zip(masks, baseline, strict=True))
    assert differing <= 1e-4 * sum(m.area for m in baseline), differing  # the same masks, but for ties
    return {
        "image": [width, height], "letterbox": size, "prototypes": [k, grid, grid],
        "assemble_ms": _median_ms(lambda: masks_from_protos(coeffs, protos, boxes, info), rounds),
        "rle_ms": _median_ms(lambda: [m.to_rle() for m in masks], rounds),
        "per_pixel_assemble_and_rle_ms": _median_ms(
            lambda: [m.to_rle() for m in _pixelwise_proto_masks(coeffs, protos, boxes, info, size)], rounds),
        "pixels_differing_from_per_pixel": differing,
        "mask_pixels_mean": float(np.mean([m.area for m in masks])),
    }


def run(rounds: int, garments: int, mask_size: int) -> dict[str, Any]:
    from fashionbox.client import ImageDetections
    from fashionbox.contract.labels import default_label_map
    from fashionbox.core.imaging import LetterboxInfo
    from fashionbox.core.masks import encode_rle, paste_crop_masks
    from fashionbox.core.results import build_image_detections
    from fashionbox.v1 import detections_pb2

    rng = np.random.default_rng(0)
    labels = default_label_map()
    size = 320
    info = LetterboxInfo(WIDTH, HEIGHT, size / WIDTH, 0.0, (size - HEIGHT * size / WIDTH) / 2)
    boxes = _boxes(rng, garments, size)
    grids = _blob_grids(rng, garments, mask_size)
    masks = paste_crop_masks(grids, boxes, info)
    counts = [m.to_rle() for m in masks]
    fields = {
        "width": WIDTH, "height": HEIGHT, "boxes": info.to_original(boxes),
        "scores": np.linspace(0.9, 0.4, garments).astype(np.float32),
        "categories": rng.integers(0, labels.num_categories, size=garments).astype(np.int32),
        "attribute_scores": np.full((garments, labels.num_attribute_labels), 0.1, np.float32),
        "label_map": labels, "model_version": "bench",
    }
    assert all(a.to_rle() == b.to_rle() for a, b in zip(masks, _region_paste(grids, boxes, info), strict=True))
    plain = build_image_detections(**fields).SerializeToString()
    masked = build_image_detections(**fields, masks=counts).SerializeToString()
    parsed = ImageDetections.from_proto(detections_pb2.ImageDetections.FromString(masked))

    build_plain_ms = _median_ms(lambda: build_image_detections(**fields).SerializeToString(), rounds)
    build_masked_ms = _median_ms(lambda: build_image_detections(**fields, masks=counts).SerializeToString(), rounds)
    parse_plain_ms = _median_ms(
        lambda: ImageDetections.from_proto(detections_pb2.ImageDetections.FromString(plain)), rounds)
    parse_masked_ms = _median_ms(
        lambda: ImageDetections.from_proto(detections_pb2.ImageDetections.FromString(masked)), rounds)
    crop_masks = {
        "mask_size": mask_size,
        "paste_ms": _median_ms(lambda: paste_crop_masks(grids, boxes, info), rounds),
        "rle_ms": _median_ms(lambda: [m.to_rle() for m in masks], rounds),
        "full_image_rle_ms": _median_ms(lambda: [encode_rle(m.to_array()) for m in masks], rounds),
        "per_pixel_paste_and_rle_ms": _median_ms(
            lambda: [m.to_rle() for m in _region_paste(grids, boxes, info)], rounds),
        "proto_build_added_ms": build_masked_ms - build_plain_ms,
        "mask_pixels_mean": float(np.mean([m.area for m in masks])),
        "runs_per_mask_mean": float(np.mean([len(c) for c in counts])),
    }
    crop_masks["server_added_ms"] = crop_masks["paste_ms"] + crop_masks["rle_ms"] + crop_masks["proto_build_added_ms"]
    client = {
        "parse_added_ms": parse_masked_ms - parse_plain_ms,
        "decode_all_masks_ms": _median_ms(lambda: [d.mask for d in parsed.detections], rounds),
    }
    return {
        "image": [WIDTH, HEIGHT], "garments": garments,
        "payload_bytes": {"without_masks": len(plain), "with_masks": len(masked)},
        "crop_masks": crop_masks,
        "proto_masks": _proto_cost(rounds, garments, rng),
        "proto_masks_4032x3024": _proto_cost(rounds, garments, rng, 4032, 3024),
        "client": client,
        "build_image_detections_ms": {"without_masks": build_plain_ms, "with_masks": build_masked_ms},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--garments", type=int, default=20)
    parser.add_argument("--mask-size", type=int, default=28, help="side of the mask head's grid")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "masks.json")
    args = parser.parse_args(argv)
    summary = run(args.rounds, args.garments, args.mask_size)
    report = write_report(args.out, __file__, argv, {"summary": summary})
    crop = summary["crop_masks"]
    print(f"{args.garments} garments on {WIDTH}x{HEIGHT}: crop masks add {crop['server_added_ms']:.2f} ms per image "
          f"server side (paste {crop['paste_ms']:.2f}, RLE {crop['rle_ms']:.2f}, proto "
          f"{crop['proto_build_added_ms']:.2f}); payload {summary['payload_bytes']['without_masks']} -> "
          f"{summary['payload_bytes']['with_masks']} bytes; client parse "
          f"+{summary['client']['parse_added_ms']:.2f} ms, all masks expanded "
          f"{summary['client']['decode_all_masks_ms']:.2f} ms")
    if summary["proto_masks"]:
        for key in ("proto_masks", "proto_masks_4032x3024"):
            proto = summary[key]
            print(f"YOLO-seg prototypes, {proto['image'][0]}x{proto['image'][1]}: assemble {proto['assemble_ms']:.2f} "
                  f"ms + RLE {proto['rle_ms']:.2f} ms per image; every pixel, then its RLE: "
                  f"{proto['per_pixel_assemble_and_rle_ms']:.2f} ms")
    print(f"written to {args.out} ({report['machine']['cpu_model']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
