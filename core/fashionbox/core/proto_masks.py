"""A segmenting detector's masks (Ultralytics YOLO-seg): prototypes and coefficients -> original-image masks.

The detector graph returns, for the detections it kept, ``coeffs [N, K]`` and the image's
prototypes ``protos [K, h, w]`` (``fashionbox.contract``: DET_MASK_COEFFS, DET_PROTOS);
``postprocess`` turns them into one :class:`fashionbox.core.masks.InstanceMask` per detection::

    masks = masks_from_protos(coeffs, protos, boxes_letterbox, info)   # list[InstanceMask]
    counts = [mask.to_rle() for mask in masks]

What it reproduces is Ultralytics' segment predictor (``ultralytics`` 8.4, ``retina_masks=False``,
its default), step by step, so served masks equal the library's:

1. ``process_mask``: the logits ``coeffs @ protos`` are upsampled bilinearly (``align_corners=False``)
   from the prototype grid to the ``S x S`` letterbox (or the rect one's ``W x H``), a pixel is in the
   mask when its logit is above ``logit(threshold)`` (0 for 0.5, i.e. sigmoid > 0.5), and the mask is
   cut to the box: pixel columns ``x1 <= x < x2`` and rows ``y1 <= y < y2``.
2. ``scale_masks``: the letterbox's image content (its padding removed) is resized bilinearly to
   the original ``height x width`` and a pixel is in the mask when the resampled value is above 0.5.

Only what can be non-zero is computed: the box's letterbox rows and columns, the prototype cells
they read, and the original pixels that sample them; so a detection costs its box's area, not the
image's. numpy and Pillow (the python backend's environment has no torch): Pillow's bilinear
resize over a source box samples as ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)`` does when enlarging (pixel centres, edges clamped); when the original image
is smaller than the letterbox, step 2 shrinks and Pillow also averages (antialiases) where torch
samples, a difference of edge pixels only. Step 2 runs in 8 bits (255 x the resampled value,
rounded: above 0.5 is 128 and up).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from PIL import Image

from fashionbox.core.imaging import ArrayLike, LetterboxInfo
from fashionbox.core.masks import InstanceMask, letterbox_shape

__all__ = ["PROTO_MASK_THRESHOLD", "masks_from_protos"]

PROTO_MASK_THRESHOLD = 0.5
"""Ultralytics' rule: a pixel is in the mask when sigmoid(logit) > 0.5 (and > 0.5 after rescaling)."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _bilinear_taps(out_size: int, in_size: int) -> tuple[IntArray, IntArray, FloatArray]:
    """For each output index, torch's ``interpolate(mode="bilinear", align_corners=False)`` taps.

    Source position ``(i + 0.5) * in / out - 0.5`` clamped at 0; the lower cell, the upper cell
    (the last cell at the border) and the upper cell's weight.
    """
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, src - low


def _resize(values: npt.NDArray[np.float32], size: tuple[int, int],
            box: tuple[float, float, float, float]) -> npt.NDArray[np.float32]:
    """``values`` (float32 ``[h, w]``) over the source ``box`` (x0, y0, x1, y1), bilinearly resized to ``size``."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.float32)


def _span(low: IntArray, high: IntArray, start: int, stop: int) -> tuple[int, int]:
    """The output indices whose taps (non-decreasing ``low <= high``) touch cells ``[start, stop)``."""
    first = int(np.searchsorted(high, start, side="left"))
    last = int(np.searchsorted(low, stop, side="left"))
    return first, last


def _content(info: LetterboxInfo, size_h: int, size_w: int) -> tuple[int, int, int, int]:
    """Top, left, height, width of the image inside the ``size_w x size_h`` letterbox, as ``scale_masks``
    computes them."""
    gain = min(size_h / info.height, size_w / info.width)
    content_h = max(round(info.height * gain), 1)
    content_w = max(round(info.width * gain), 1)
    top = round((size_h - content_h) / 2 - 0.1)
    left = round((size_w - content_w) / 2 - 0.1)
    return top, left, content_h, content_w



def masks_from_protos(coeffs: npt.ArrayLike, protos: npt.ArrayLike, boxes_letterbox: ArrayLike, info: LetterboxInfo,
                      *, threshold: float = PROTO_MASK_THRESHOLD,
                      input_size: int | tuple[int, int] | None = None) -> list[InstanceMask]:
    """One mask in the original image per detection (see the module docstring for the steps).

    ``coeffs`` float32 ``[N, K]``, ``protos`` float32 ``[K, h, w]``, ``boxes_letterbox`` ``[N, 4]``
    (x1, y1, x2, y2 in letterbox pixels, rows as ``coeffs``). ``input_size`` is the letterbox side
    ``S`` (by default the one ``info`` implies), or ``(height, width)`` of a rect letterbox. A detection
    whose mask is empty gets :meth:`InstanceMask.empty` (Ultralytics' predictor drops such detections; the
    caller decides).
    """
    coeffs = np.asarray(coeffs, dtype=np.float32)
    protos = np.asarray(protos, dtype=np.float32)
    boxes = np.asarray(boxes_letterbox, dtype=np.float32).reshape(-1, 4)
    if protos.ndim != 3 or min(protos.shape) < 1:
        raise ValueError(f"protos must be [K, h, w], got shape {protos.shape}")
    if coeffs.ndim != 2 or coeffs.shape[1] != protos.shape[0]:
        raise ValueError(f"mask coefficients must be [N, K={protos.shape[0]}], got shape {coeffs.shape}")
    if coeffs.shape[0] != boxes.shape[0]:
        raise ValueError(f"{coeffs.shape[0]} mask coefficient rows for {boxes.shape[0]} boxes")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    size_h, size_w = letterbox_shape(info, input_size)
    _, proto_h, proto_w = protos.shape
    logit_threshold = math.log(threshold / (1.0 - threshold))
    # Step 1's taps: letterbox pixel -> prototype cells. Step 2's: original pixel -> letterbox pixels.
    ly0, ly1, _ = _bilinear_taps(size_h, proto_h)
    lx0, lx1, _ = _bilinear_taps(size_w, proto_w)
    top, left, content_h, content_w = _content(info, size_h, size_w)
    oy0, oy1, _ = _bilinear_taps(info.height, content_h)
    ox0, ox1, _ = _bilinear_taps(info.width, content_w)
    oy0, oy1, ox0, ox1 = oy0 + top, oy1 + top, ox0 + left, ox1 + left
    to_proto_x, to_proto_y = proto_w / size_w, proto_h / size_h
    to_content_x, to_content_y = content_w / info.width, content_h / info.height
    # every detection's logits at prototype resolution in one product (K x h x w per detection)
    all_logits = (coeffs @ protos.reshape(protos.shape[0], -1)).reshape(-1, proto_h, proto_w)
    masks: list[InstanceMask] = []
    for logits_full, (x1, y1, x2, y2) in zip(all_logits, boxes.tolist(), strict=True):
        # letterbox pixels the box keeps: x1 <= x < x2 and y1 <= y < y2
        c0, c1 = max(0, math.ceil(x1)), min(size_w, math.ceil(x2))
        r0, r1 = max(0, math.ceil(y1)), min(size_h, math.ceil(y2))
        xa, xb = _span(ox0, ox1, c0, c1)
        ya, yb = _span(oy0, oy1, r0, r1)
        if c1 <= c0 or r1 <= r0 or xb <= xa or ya >= yb:
            masks.append(InstanceMask.empty(info.width, info.height))
            continue
        # the letterbox window step 2 reads for those original pixels, and the prototype cells it needs
        wc0, wc1 = int(ox0[xa]), int(ox1[xb - 1]) + 1
        wr0, wr1 = int(oy0[ya]), int(oy1[yb - 1]) + 1
        pc0, pc1 = int(lx0[wc0]), int(lx1[wc1 - 1]) + 1
        pr0, pr1 = int(ly0[wr0]), int(ly1[wr1 - 1]) + 1
        logits = logits_full[pr0:pr1, pc0:pc1]
        # Pillow's bilinear upsampling of a float image over a source box samples as torch's
        # interpolate(align_corners=False) does, clamped at the edges (the box's cells are all there)
        upsampled = _resize(logits, (wc1 - wc0, wr1 - wr0),
                            (wc0 * to_proto_x - pc0, wr0 * to_proto_y - pr0, wc1 * to_proto_x - pc0,
                             wr1 * to_proto_y - pr0))
        window = upsampled > np.float32(logit_threshold)
        window[:, : max(0, c0 - wc0)] = False
        window[:, max(0, c1 - wc0):] = False
        window[: max(0, r0 - wr0)] = False
        window[max(0, r1 - wr0):] = False
        # step 2: the window (letterbox pixels wc0.., wr0..) resampled to original pixels [ya, yb) x [xa, xb)
        binary = Image.fromarray(window.astype(np.uint8) * np.uint8(255), mode="L")
        resampled = binary.resize((xb - xa, yb - ya), Image.Resampling.BILINEAR,
                                  box=((xa * to_content_x + left) - wc0, (ya * to_content_y + top) - wr0,
                                       (xb * to_content_x + left) - wc0, (yb * to_content_y + top) - wr0))
        bits = np.asarray(resampled) >= 128
        masks.append(InstanceMask(xa, ya, bits, info.width, info.height)
                     if bits.any() else InstanceMask.empty(info.width, info.height))
    return masks
