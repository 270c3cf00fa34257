"""Instance masks on the server side: pasting mask-head grids back into the image, and their RLE.

Two sources give a detection a mask (``fashionbox.contract``): the attribute model's mask head
(CROP_MASKS, an ``m x m`` probability grid over each garment crop), pasted back here by
:func:`paste_crop_masks`; and a segmenting detector's prototypes
(``fashionbox.core.proto_masks.masks_from_protos``). Both give one mask per detection (a
:class:`FrameMask`): the pixels of the original image (after EXIF orientation, the frame of the
boxes) that belong to it, never as a full-image array, so twenty garments on a 1280x960 photo
stay cheap. :class:`InstanceMask` holds a box-sized boolean region plus its offset;
:class:`RunMask`, what pasting computes, holds the runs themselves (found per column from where
the interpolated probability crosses the threshold, so its cost grows with the box's width times
the grid size, not with its area). ``to_rle()`` writes the COCO uncompressed RLE of
``fashionbox.v1.Mask`` from either (:mod:`fashionbox.contract.rle` defines the encoding;
:func:`encode_rle` / :func:`decode_rle` are its full-image forms).

Usage::

    masks = paste_crop_masks(probs, boxes_letterbox, info)     # probs float32 [N, m, m]
    counts = [mask.to_rle() for mask in masks]                   # for build_image_detections
    full = masks[0].to_array()                                   # bool [height, width]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fashionbox.contract.rle import decode_rle, encode_rle, runs_to_counts
from fashionbox.core.imaging import ArrayLike, LetterboxInfo, crop_regions

__all__ = [
    "MASK_THRESHOLD",
    "FrameMask",
    "InstanceMask",
    "RunMask",
    "decode_rle",
    "encode_rle",
    "letterbox_shape",
    "paste_crop_masks",
]

BoolArray = npt.NDArray[np.bool_]

MASK_THRESHOLD = 0.5
"""A pixel belongs to the garment when its resampled probability is at least this."""


@dataclass(frozen=True, eq=False)
class InstanceMask:
    """One detection's mask in a ``width x height`` frame: ``bits`` placed with its top-left at ``(x, y)``.

    Pixels outside the region are outside the mask. The region lies inside the frame.
    """

    x: int
    y: int
    bits: BoolArray
    """bool ``[h, w]``."""
    width: int
    height: int

    def __post_init__(self) -> None:
        bits = np.asarray(self.bits)
        if bits.ndim != 2 or bits.dtype != np.bool_:
            raise ValueError(f"InstanceMask.bits must be a 2-D boolean array, got {bits.dtype} {bits.shape}")
        h, w = bits.shape
        if self.x < 0 or self.y < 0 or self.x + w > self.width or self.y + h > self.height:
            raise ValueError(f"InstanceMask region {w}x{h} at ({self.x}, {self.y}) leaves the "
                             f"{self.width}x{self.height} frame")

    @classmethod
    def empty(cls, width: int, height: int) -> InstanceMask:
        return cls(0, 0, np.zeros((0, 0), dtype=np.bool_), width, height)

    @classmethod
    def from_array(cls, mask: npt.ArrayLike) -> InstanceMask:
        """A full-frame boolean mask ``[height, width]``, kept as the bounding region of its pixels."""
        array = np.asarray(mask)
        if array.ndim != 2 or array.dtype != np.bool_:
            raise ValueError(f"a mask is a 2-D boolean array, got {array.dtype} {array.shape}")
        height, width = array.shape
        rows = np.flatnonzero(array.any(axis=1))
        if not rows.size:
            return cls.empty(width, height)
        cols = np.flatnonzero(array.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return cls(x0, y0, np.ascontiguousarray(array[y0:y1, x0:x1]), width, height)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.bits))

    def to_array(self) -> BoolArray:
        """The mask as a full-frame boolean array ``[height, width]``."""
        full = np.zeros((self.height, self.width), dtype=np.bool_)
        h, w = self.bits.shape
        full[self.y:self.y + h, self.x:self.x + w] = self.bits
        return full

    def to_rle(self) -> list[int]:
        """COCO uncompressed RLE counts over the whole frame, computed from the region alone."""
        total = self.width * self.height
        if not self.bits.any():
            return [total]
        h, w = self.bits.shape
        # Column-major over the region, each column framed by a pixel outside above and below, so
        # every run starts and ends inside its column; runs_to_counts joins runs that continue
        # from the bottom of one column to the top of the next (a region as tall as the frame).
        framed = np.zeros((w, h + 2), dtype=np.bool_)
        framed[:, 1:-1] = self.bits.T
        cols, ys = np.nonzero(framed[:, 1:] != framed[:, :-1])
        edges = (self.x + cols).astype(np.int64) * self.height + self.y + ys
        return runs_to_counts(edges, total)


@dataclass(frozen=True, eq=False)
class RunMask:
    """One detection's mask in a ``width x height`` frame, as its runs: ``edges`` alternates the flat
    column-major index where a run of mask pixels starts and where it ends (exclusive), increasing.

    The form :func:`paste_crop_masks` computes (per column, where the resampled probability crosses
    the threshold), so neither the region nor the image is ever filled pixel by pixel.
    """

    edges: npt.NDArray[np.int64]
    width: int
    height: int

    @property
    def area(self) -> int:
        return int((self.edges[1::2] - self.edges[0::2]).sum())

    def to_rle(self) -> list[int]:
        """COCO uncompressed RLE counts over the whole frame."""
        return runs_to_counts(self.edges, self.width * self.height)

    def to_array(self) -> BoolArray:
        """The mask as a full-frame boolean array ``[height, width]``."""
        return decode_rle(self.to_rle(), self.width, self.height)


class FrameMask(Protocol):
    """What every mask form offers: :class:`InstanceMask` (a region of bits), :class:`RunMask` (runs)."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def area(self) -> int: ...
    def to_rle(self) -> list[int]: ...
    def to_array(self) -> BoolArray: ...


def letterbox_shape(info: LetterboxInfo, input_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """``(height, width)`` of the letterbox: ``input_size`` as given (a side, or the shape of a rect
    letterbox), or by default the square side ``info`` implies."""
    if input_size is None:
        input_size = round(info.scale * max(info.width, info.height))
    return (input_size, input_size) if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))


def _pixel_span(start: float, stop: float, pad: float, scale: float, limit: int) -> tuple[int, int]:
    """The original pixels (``first``, ``stop``) whose centres fall in the letterbox span ``[start, stop]``."""
    first = max(0, math.ceil((start - pad) / scale - 0.5))
    last = min(limit, math.floor((stop - pad) / scale - 0.5) + 1)
    return first, max(first, last)


def _paste(grids: npt.NDArray[np.float32], regions: npt.NDArray[np.float32], info: LetterboxInfo,
           threshold: float) -> list[RunMask]:
    """:func:`paste_crop_masks` for every box at once, column by column (see there).

    Bilinear sampling is separable: across, each original column's profile at the grid's row
    centres; down, between grid rows k and k+1 the value is linear in the pixel's grid coordinate,
    and above the first and below the last row centre it is the border cell's (the clamp). So a
    column's runs start where its profile rises through the threshold and end where it falls
    through it (a run starts at the top when the first cell is inside, ends at the bottom when the
    last is): only those crossings are computed. All boxes' columns are stacked, so the work is
    a few array operations over ``[columns, m]``, whatever the number of boxes.
    """
    count, cells = grids.shape[0], grids.shape[1]
    spans = np.zeros((count, 4), dtype=np.int64)  # col0, col1, row0, row1
    for i, (x1, y1, x2, y2) in enumerate(regions.tolist()):
        if x2 - x1 < 1.0 or y2 - y1 < 1.0:  # crop_garments cut no crop here: nothing to paste
            continue
        col0, col1 = _pixel_span(x1, x2, info.pad_x, info.scale, info.width)
        row0, row1 = _pixel_span(y1, y2, info.pad_y, info.scale, info.height)
        if row1 > row0:
            spans[i] = col0, col1, row0, row1
    widths = spans[:, 1] - spans[:, 0]
    total = int(widths.sum())
    if not total:
        return [RunMask(np.zeros((0,), dtype=np.int64), info.width, info.height) for _ in range(count)]
    box = np.repeat(np.arange(count), widths)  # the box of each stacked column
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
    column = np.arange(total) - np.repeat(offsets - spans[:, 0], widths)  # original pixel column
    reg = regions.astype(np.float64)
    x1 = reg[box, 0]
    # across: grid column coordinate of each pixel column's centre, clamped to the border cells' centres
    gx = ((column + 0.5) * info.scale + info.pad_x - x1) / (reg[box, 2] - x1) * cells - 0.5
    gx = np.minimum(np.maximum(gx, 0.0), cells - 1)
    low = gx.astype(np.int64)
    high = np.minimum(low + 1, cells - 1)
    fx = (gx - low).astype(np.float32)[:, None]
    rows = np.arange(cells)[None, :]
    profile = grids[box[:, None], rows, low[:, None]]
    profile += (grids[box[:, None], rows, high[:, None]] - profile) * fx  # [W, m]
    level = np.float32(threshold)
    inside = profile >= level
    # down: the pixel row (within the column's own rows 0..h-1) whose centre sits at grid coordinate
    # g is g * step + origin, per box; rows of the stretch between row centres k and k+1 lie in
    # [bounds[k], bounds[k + 1]).
    heights = spans[:, 3] - spans[:, 2]
    step = (reg[:, 3] - reg[:, 1]) / (cells * info.scale)
    origin = (0.5 / cells * (reg[:, 3] - reg[:, 1]) + reg[:, 1] - info.pad_y) / info.scale - 0.5 - spans[:, 2]
    bounds = np.ceil(np.arange(cells, dtype=np.float64)[None, :] * step[:, None] + origin[:, None])
    bounds = np.minimum(np.maximum(bounds, 0), heights[:, None]).astype(np.int64)  # [N, m]
    where, k = np.nonzero(inside[:, :-1] != inside[:, 1:])  # crossings, column by column, top to bottom
    here, after = profile[where, k], profile[where, k + 1]
    owner = box[where]
    at = np.ceil((k + (level - here) / (after - here)) * step[owner] + origin[owner])
    at = np.minimum(np.maximum(at, bounds[owner, k]), bounds[owner, k + 1]).astype(np.int64)
    top = np.flatnonzero(inside[:, 0])  # columns whose run starts at their first row
    bottom = np.flatnonzero(inside[:, -1])  # columns whose last run ends at their last row
    # All events in column order (then top, crossings, bottom): they alternate start, end.
    key = np.concatenate([top * (cells + 1), where * (cells + 1) + k + 1, bottom * (cells + 1) + cells])
    local = np.concatenate([np.zeros(top.size, dtype=np.int64), at, heights[box[bottom]]])
    order = np.argsort(key, kind="stable")
    event_column = (key[order] // (cells + 1))
    flat = column[event_column] * info.height + spans[box[event_column], 2] + local[order]
    pairs = flat.reshape(-1, 2)
    pair_box = box[event_column[0::2]]
    kept = pairs[:, 1] > pairs[:, 0]  # a crossing between two pixel centres covers none of them
    pairs, pair_box = pairs[kept], pair_box[kept]
    cuts = np.searchsorted(pair_box, np.arange(count + 1))
    return [RunMask(pairs[cuts[i]:cuts[i + 1]].reshape(-1), info.width, info.height) for i in range(count)]


def paste_crop_masks(probs: npt.ArrayLike, boxes_letterbox: ArrayLike, info: LetterboxInfo, *,
                     threshold: float = MASK_THRESHOLD,
                     input_size: int | tuple[int, int] | None = None) -> list[RunMask]:
    """The mask head's grids ``[N, m, m]`` (probabilities) as masks in the original image.

    Grid ``i`` covers ``crop_regions(boxes_letterbox[i], S, S)``, the letterbox region crop ``i``
    was cut from (``S``: ``input_size``, by default the letterbox side ``info`` implies; a rect
    letterbox's ``(height, width)``). Each
    original pixel in that region is sampled bilinearly at its centre's letterbox position (cells
    at the grid's border extend to its edge) and is in the mask when the probability is at least
    ``threshold``; the rest of the image is not. Computed per column from where the interpolated
    profile crosses the threshold, so a mask costs its box's width times ``m``, not its area.
    """
    grids = np.asarray(probs, dtype=np.float32)
    boxes = np.asarray(boxes_letterbox, dtype=np.float32).reshape(-1, 4)
    if grids.ndim != 3 or grids.shape[1] != grids.shape[2] or grids.shape[1] < 1:
        raise ValueError(f"crop masks must be [N, m, m] with m >= 1, got shape {grids.shape}")
    if grids.shape[0] != boxes.shape[0]:
        raise ValueError(f"{grids.shape[0]} crop masks for {boxes.shape[0]} boxes")
    height, width = letterbox_shape(info, input_size)
    return _paste(grids, crop_regions(boxes, width, height), info, threshold)
