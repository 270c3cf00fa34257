"""A segmenting detector's masks (Ultralytics YOLO-seg): prototypes and coefficients -> original-image masks.

The detector graph returns, for the detections it kept, ``coeffs [N, K]`` and the image's
prototypes ``protos [K, h, w]`` (``fashionbox.contract``: DET_MASK_COEFFS, DET_PROTOS);
``postprocess`` turns them into one :class:`fashionbox.core.masks.RunMask` per detection::

    masks = masks_from_protos(coeffs, protos, boxes_letterbox, info)   # list[RunMask]
    counts = [mask.to_rle() for mask in masks]

or the two steps below apart, as ``postprocess`` runs them (the first tells which detections have a
mask at all, the second is most of the cost and can run while other work does)::

    geometry = ProtoMasks(info, protos.shape[1:], input_size=(height, width))
    letterbox = geometry.letterbox(coeffs, protos, boxes_letterbox)     # list[LetterboxMask]
    masks = geometry.original([m for m in letterbox if not m.empty])    # list[RunMask]

What it reproduces is Ultralytics' segment predictor (``ultralytics`` 8.4, ``retina_masks=False``,
its default), step by step, so served masks equal the library's:

1. ``process_mask``: the logits ``coeffs @ protos`` are upsampled bilinearly (``align_corners=False``)
   from the prototype grid to the ``S x S`` letterbox (or the rect one's ``W x H``), a pixel is in the
   mask when its logit is above ``logit(threshold)`` (0 for 0.5, i.e. sigmoid > 0.5), and the mask is
   cut to the box: pixel columns ``x1 <= x < x2`` and rows ``y1 <= y < y2``.
2. ``scale_masks``: the letterbox's image content (its padding removed) is resized bilinearly to
   the original ``height x width`` and a pixel is in the mask when the resampled value is above 0.5.

Only what can be non-zero is computed: the box's letterbox rows and columns, the prototype cells
they read, and the original pixels that sample them. numpy and Pillow (the python backend's
environment has no torch). Step 1 is Pillow's bilinear resize of the float logits over a source
box, which samples as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
does when enlarging (pixel centres, edges clamped; the prototype grid is always smaller than the
letterbox). Step 2 is never filled pixel by pixel: bilinear sampling is separable, so down each
original column the resampled value is linear between two letterbox rows, and a run of mask
pixels starts or ends only where it crosses 0.5; those crossings are computed from torch's own
taps (enlarging or shrinking) and give the mask as its runs, ready for RLE. A detection costs
its box's letterbox area and its original width times its letterbox height, not its original
area: against resizing the window with Pillow and encoding every pixel (this module before),
about 2x less CPU per photo at 1280x960 and 10x at 4032x3024 (BENCHMARKS.md, "Masks").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from fashionbox.core.imaging import ArrayLike, LetterboxInfo
from fashionbox.core.masks import RunMask, letterbox_shape

__all__ = ["PROTO_MASK_THRESHOLD", "LetterboxMask", "ProtoMasks", "masks_from_protos"]

PROTO_MASK_THRESHOLD = 0.5
"""Ultralytics' rule: a pixel is in the mask when sigmoid(logit) > 0.5 (and > 0.5 after rescaling)."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_TIE = 1e-9
"""In rows: a row this close to where a mask's profile is 0.5 samples 0.5 (a tie, outside the mask)."""


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


@dataclass(frozen=True)
class _Runs:
    """Runs of mask pixels in a region's columns: ``columns[i]`` holds rows ``[starts[i], ends[i])``."""

    columns: IntArray
    starts: IntArray
    ends: IntArray

    def flat(self, x: int, y: int, height: int) -> IntArray:
        """Start, end, start, ... as flat column-major indices of a frame ``height`` tall, the region at ``(x, y)``."""
        base = (self.columns + x) * height + y
        edges: IntArray = np.stack([base + self.starts, base + self.ends], axis=1).reshape(-1)
        return edges


def _crossing_table(weight: FloatArray) -> FloatArray:
    """``[columns, 16]``: for two window rows whose bits are codes ``c0`` (upper) and ``c1`` (lower),
    at index ``c0 | c1 << 2`` (a code is ``first | second << 1``), how far below the upper row the
    column's profile ``(1 - w) * first + w * second`` passes 0.5 (NaN where it does not change)."""
    codes = np.arange(4)
    value = (codes & 1)[None, :] * (1.0 - weight[:, None]) + (codes >> 1)[None, :] * weight[:, None]  # [W, 4]
    here, there = value[:, np.arange(16) & 3], value[:, np.arange(16) >> 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        table: FloatArray = (0.5 - here) / (there - here)
    return table


def _window_runs(window: npt.NDArray[np.bool_], low: IntArray, high: IntArray, weight: FloatArray,
                 crossings: FloatArray, *, start: float, step: float, count: int) -> _Runs:
    """Step 2 as runs: the binary ``window`` resampled bilinearly to a region, in the mask where above 0.5.

    Region column ``j`` samples window columns ``low[j]`` and ``high[j]`` (weight ``weight[j]`` on
    the second); region row ``i`` (of ``count``) sits at window row coordinate ``start + i * step``
    (row centres at integers; before the first row centre and past the last the border row's value
    holds, as the clamped taps give). Separable, so down each region column the value is linear in
    the row coordinate between two window rows: a run starts or ends only where that profile
    crosses 0.5, and only the crossings are computed. The work is the region's width times the
    window's height, not the region's area, and no pixel array nor pixel-wise RLE is made.
    """
    columns = np.ascontiguousarray(window.T)  # [window columns, window rows]
    first, second = columns[low], columns[high]  # [region columns, window rows]
    # (1 - w) * first + w * second > 0.5 for bits: both set, or the one set weighs more than half
    inside = (first & (second | (weight < 0.5)[:, None])) | (second & (weight > 0.5)[:, None])
    cells = inside.shape[1]
    framed = np.zeros((inside.shape[0], cells + 2), dtype=np.bool_)  # outside above the first and below the last row
    framed[:, 1:-1] = inside
    events = np.flatnonzero(framed[:, 1:] != framed[:, :-1])  # per column: a run's start, its end, the next start...
    column, edge = np.divmod(events, cells + 1)
    # edge e lies between window rows e - 1 and e; 0 and `cells` are the region's top and bottom
    local = np.where(edge == 0, 0, count).astype(np.int64)
    between = np.flatnonzero((edge > 0) & (edge < cells))
    if between.size:
        # A window row's two bits (first, second) are one of 4 codes, two rows' one of 16; per region
        # column, where the profile is 0.5 between two rows depends on those 16 and its weight only.
        codes = (first.view(np.uint8) | (second.view(np.uint8) << 1)).reshape(-1)
        above = events[between] - column[between] - 1  # window row e - 1, flat in `codes`
        pair = codes[above] | (codes[above + 1] << 2)
        at = (edge[between] - 1 + crossings.reshape(-1)[column[between] * 16 + pair] - start) / step  # in region rows
        # a run starts at the first row past a rising crossing (even events) and ends, exclusive,
        # at the first row at or past a falling one. A row exactly on a crossing samples 0.5, which
        # is not above it: rational scales put rows there (4032 -> 640: every fifth source row), and
        # float64 rounding must not decide, so rows within TIE of a crossing count as on it.
        row = np.where(between % 2 == 0, np.floor(at + _TIE) + 1, np.ceil(at - _TIE))
        local[between] = np.clip(row, 0, count).astype(np.int64)
    starts, ends = local[0::2], local[1::2]
    kept = ends > starts  # a crossing between two row centres covers none of them
    return _Runs(column[0::2][kept], starts[kept], ends[kept])


@dataclass(frozen=True)
class LetterboxMask:
    """Step 1 for one detection: its mask at the letterbox, as the window that holds its box and all
    step 2 reads (``bits``, bool, from letterbox column ``left`` and row ``top``), and the original
    pixels step 2 gives it (columns ``[x0, x1)``, rows ``[y0, y1)``)."""

    bits: npt.NDArray[np.bool_]
    left: int
    top: int
    x0: int
    x1: int
    y0: int
    y1: int

    @property
    def empty(self) -> bool:
        """No letterbox pixel of the box is in the mask: Ultralytics' predictor drops such a detection."""
        return not self.bits.any()


class ProtoMasks:
    """One image's mask geometry, from its letterbox to its original pixels: the two steps apart.

    ``letterbox`` (step 1) tells which detections have a mask at all before any other work is done
    on them; ``original`` (step 2) is the bulk of the cost and needs nothing else, so it can run
    while other work does. :func:`masks_from_protos` is both in a row.
    """

    def __init__(self, info: LetterboxInfo, grid: tuple[int, int], *, threshold: float = PROTO_MASK_THRESHOLD,
                 input_size: int | tuple[int, int] | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.info = info
        self.grid = grid
        self.size_h, self.size_w = size_h, size_w = letterbox_shape(info, input_size)
        self.logit_threshold = np.float32(math.log(threshold / (1.0 - threshold)))
        proto_h, proto_w = grid
        # Step 1's taps: letterbox pixel -> prototype cells. Step 2's: original pixel -> letterbox pixels.
        self.ly0, self.ly1, _ = _bilinear_taps(size_h, proto_h)
        self.lx0, self.lx1, _ = _bilinear_taps(size_w, proto_w)
        top, left, content_h, content_w = _content(info, size_h, size_w)
        oy0, oy1, _ = _bilinear_taps(info.height, content_h)
        ox0, ox1, self.fx = _bilinear_taps(info.width, content_w)
        self.oy0, self.oy1, self.ox0, self.ox1 = oy0 + top, oy1 + top, ox0 + left, ox1 + left
        self.content_top = top
        self.row_step = content_h / info.height  # letterbox rows per original row (step 2's taps, before clamping)
        self.crossings = _crossing_table(self.fx)  # per original column, shared by every detection

    def letterbox(self, coeffs: npt.ArrayLike, protos: npt.ArrayLike,
                  boxes_letterbox: ArrayLike) -> list[LetterboxMask]:
        """Step 1 for each detection (``coeffs [N, K]`` over ``protos [K, h, w]``, ``boxes_letterbox [N, 4]``)."""
        coeffs = np.asarray(coeffs, dtype=np.float32)
        protos = np.asarray(protos, dtype=np.float32)
        boxes = np.asarray(boxes_letterbox, dtype=np.float32).reshape(-1, 4)
        if protos.ndim != 3 or min(protos.shape) < 1:
            raise ValueError(f"protos must be [K, h, w], got shape {protos.shape}")
        if protos.shape[1:] != self.grid:
            raise ValueError(f"protos cover a {protos.shape[1]}x{protos.shape[2]} grid, "
                             f"not {self.grid[0]}x{self.grid[1]}")
        if coeffs.ndim != 2 or coeffs.shape[1] != protos.shape[0]:
            raise ValueError(f"mask coefficients must be [N, K={protos.shape[0]}], got shape {coeffs.shape}")
        if coeffs.shape[0] != boxes.shape[0]:
            raise ValueError(f"{coeffs.shape[0]} mask coefficient rows for {boxes.shape[0]} boxes")
        proto_h, proto_w = self.grid
        to_proto_x, to_proto_y = proto_w / self.size_w, proto_h / self.size_h
        # every detection's logits at prototype resolution in one product (K x h x w per detection)
        all_logits = (coeffs @ protos.reshape(protos.shape[0], -1)).reshape(-1, proto_h, proto_w)
        out: list[LetterboxMask] = []
        for logits_full, (bx1, by1, bx2, by2) in zip(all_logits, boxes.tolist(), strict=True):
            # letterbox pixels the box keeps: x1 <= x < x2 and y1 <= y < y2
            c0, c1 = max(0, math.ceil(bx1)), min(self.size_w, math.ceil(bx2))
            r0, r1 = max(0, math.ceil(by1)), min(self.size_h, math.ceil(by2))
            if c1 <= c0 or r1 <= r0:
                out.append(LetterboxMask(np.zeros((0, 0), dtype=np.bool_), 0, 0, 0, 0, 0, 0))
                continue
            x0, x1 = _span(self.ox0, self.ox1, c0, c1)
            y0, y1 = _span(self.oy0, self.oy1, r0, r1)
            # the window: the box, and the letterbox pixels step 2 reads for those original pixels
            wc0, wc1, wr0, wr1 = c0, c1, r0, r1
            if x1 > x0 and y1 > y0:
                wc0, wc1 = min(c0, int(self.ox0[x0])), max(c1, int(self.ox1[x1 - 1]) + 1)
                wr0, wr1 = min(r0, int(self.oy0[y0])), max(r1, int(self.oy1[y1 - 1]) + 1)
            else:
                x0 = x1 = y0 = y1 = 0
            # the prototype cells those read
            pc0, pc1 = int(self.lx0[wc0]), int(self.lx1[wc1 - 1]) + 1
            pr0, pr1 = int(self.ly0[wr0]), int(self.ly1[wr1 - 1]) + 1
            # Pillow's bilinear upsampling of a float image over a source box samples as torch's
            # interpolate(align_corners=False) does, clamped at the edges (the box's cells are all there)
            upsampled = _resize(logits_full[pr0:pr1, pc0:pc1], (wc1 - wc0, wr1 - wr0),
                                (wc0 * to_proto_x - pc0, wr0 * to_proto_y - pr0, wc1 * to_proto_x - pc0,
                                 wr1 * to_proto_y - pr0))
            bits = upsampled > self.logit_threshold
            bits[:, : c0 - wc0] = False
            bits[:, c1 - wc0:] = False
            bits[: r0 - wr0] = False
            bits[r1 - wr0:] = False
            out.append(LetterboxMask(bits, wc0, wr0, x0, x1, y0, y1))
        return out

    def original(self, masks: Sequence[LetterboxMask]) -> list[RunMask]:
        """Step 2: each letterbox mask resampled to the original image, as runs."""
        info = self.info
        out: list[RunMask] = []
        for mask in masks:
            if mask.x1 <= mask.x0 or mask.y1 <= mask.y0 or mask.empty:
                out.append(RunMask(np.zeros((0,), dtype=np.int64), info.width, info.height))
                continue
            columns = slice(mask.x0, mask.x1)
            runs = _window_runs(mask.bits, self.ox0[columns] - mask.left, self.ox1[columns] - mask.left,
                                self.fx[columns], self.crossings[columns],
                                start=(mask.y0 + 0.5) * self.row_step - 0.5 + self.content_top - mask.top,
                                step=self.row_step, count=mask.y1 - mask.y0)
            out.append(RunMask(runs.flat(mask.x0, mask.y0, info.height), info.width, info.height))
        return out


def masks_from_protos(coeffs: npt.ArrayLike, protos: npt.ArrayLike, boxes_letterbox: ArrayLike, info: LetterboxInfo,
                      *, threshold: float = PROTO_MASK_THRESHOLD,
                      input_size: int | tuple[int, int] | None = None) -> list[RunMask]:
    """One mask in the original image per detection (see the module docstring for the steps).

    ``coeffs`` float32 ``[N, K]``, ``protos`` float32 ``[K, h, w]``, ``boxes_letterbox`` ``[N, 4]``
    (x1, y1, x2, y2 in letterbox pixels, rows as ``coeffs``). ``input_size`` is the letterbox side
    ``S`` (by default the one ``info`` implies), or ``(height, width)`` of a rect letterbox. A detection
    whose mask is empty gets a mask without runs (Ultralytics' predictor drops such detections:
    :attr:`LetterboxMask.empty` tells which, after :meth:`ProtoMasks.letterbox`).
    """
    protos = np.asarray(protos, dtype=np.float32)
    if protos.ndim != 3 or min(protos.shape) < 1:
        raise ValueError(f"protos must be [K, h, w], got shape {protos.shape}")
    geometry = ProtoMasks(info, (protos.shape[1], protos.shape[2]), threshold=threshold, input_size=input_size)
    return geometry.original(geometry.letterbox(coeffs, protos, boxes_letterbox))
