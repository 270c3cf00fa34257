"""How an image-level model's processor turns a photo into its input pixels, without transformers.

The classifier and embedder families (``fashionbox.converter.image_models``) serve models whose
transformers image processor resizes and crops every image before normalising it. The
normalisation (rescale, mean, std) is inside the exported ONNX graph, which takes uint8 pixels;
what the ``preprocess`` model must do itself is the geometry, and it must do it exactly as the
processor does, so that the served pixels are the library's pixels. A :class:`ViewRecipe` holds
that geometry and travels to the server as JSON (a config parameter)::

    recipe = ViewRecipe.from_json(params["view_json"])
    pixels = recipe.apply(image)          # uint8 [recipe.height, recipe.width, 3]

Two resizes, as transformers' PIL-backend processors compute them (``get_resize_output_image_size``):

- ``resize=(H, W)``: stretched to exactly H x W (ViT, SigLIP, EfficientNet, ConvNeXt at 384 and up);
- ``shortest_edge=S``: the short side becomes ``S``, the long side ``int(S * long / short)`` (CLIP,
  ResNet and ConvNeXt below 384, whose ``crop_pct`` makes ``S = int(size / crop_pct)``).

then an optional centre crop (``top = (h - crop_h) // 2``, zero-padded when the image is smaller,
as ``transformers.image_transforms.center_crop``). The resize is PIL's ``Image.resize`` on the uint8
RGB image with the processor's filter (no ``reducing_gap``), which is what the processor calls.
Pure numpy and PIL: it runs inside the python backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

__all__ = ["RESAMPLE_FILTERS", "ViewRecipe"]

RESAMPLE_FILTERS: dict[str, int] = {
    "nearest": int(Image.Resampling.NEAREST),
    "box": int(Image.Resampling.BOX),
    "bilinear": int(Image.Resampling.BILINEAR),
    "hamming": int(Image.Resampling.HAMMING),
    "bicubic": int(Image.Resampling.BICUBIC),
    "lanczos": int(Image.Resampling.LANCZOS),
}
"""PIL's filter names (the JSON form) -> ``Image.Resampling`` values (transformers' ``resample``)."""

_MAX_SIDE = 4096


def _side(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SIDE:
        raise ValueError(f"{what} must be an integer in [1, {_MAX_SIDE}], got {value!r}")
    return value


def _pair(value: Any, what: str) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{what} must be (height, width), got {value!r}")
    return _side(value[0], f"{what} height"), _side(value[1], f"{what} width")


@dataclass(frozen=True)
class ViewRecipe:
    """The processor's resize and crop; ``height`` x ``width`` is what the model's graph takes."""

    height: int
    width: int
    resize: tuple[int, int] | None = None
    """Exact resize to (height, width); exclusive with ``shortest_edge``."""
    shortest_edge: int | None = None
    """Resize keeping the aspect ratio, short side to this; needs a ``crop`` (the graph's size is fixed)."""
    crop: tuple[int, int] | None = None
    """Centre crop (height, width) after the resize."""
    resample: str = "bicubic"
    """PIL filter name (a key of :data:`RESAMPLE_FILTERS`)."""

    def __post_init__(self) -> None:
        _side(self.height, "height")
        _side(self.width, "width")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE_FILTERS)}, got {self.resample!r}")
        if (self.resize is None) == (self.shortest_edge is None):
            raise ValueError("a view resizes either to an exact size (resize) or by its shortest edge, exactly one")
        if self.resize is not None:
            object.__setattr__(self, "resize", _pair(self.resize, "resize"))
        if self.shortest_edge is not None:
            _side(self.shortest_edge, "shortest_edge")
            if self.crop is None:
                raise ValueError("a shortest-edge resize keeps the aspect ratio: it needs a centre crop to a fixed "
                                 "size")
        if self.crop is not None:
            object.__setattr__(self, "crop", _pair(self.crop, "crop"))
        final = self.crop if self.crop is not None else self.resize
        if final != (self.height, self.width):
            raise ValueError(f"the view ends at {final} but says height x width = ({self.height}, {self.width})")

    @property
    def square(self) -> bool:
        return self.height == self.width

    @property
    def min_source_short_side(self) -> int:
        """Pixels the decoded image needs on its short side so that the resize only shrinks it: what a
        JPEG decoded at a reduced DCT scale (``fashionbox.core.imaging.decode_image``) must keep."""
        if self.shortest_edge is not None:
            return self.shortest_edge
        assert self.resize is not None
        return max(self.resize)

    @property
    def resample_filter(self) -> int:
        return RESAMPLE_FILTERS[self.resample]

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after the resize of a ``width`` x ``height`` image, as transformers computes it."""
        if self.resize is not None:
            return self.resize
        assert self.shortest_edge is not None
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        return (new_long, self.shortest_edge) if width <= height else (self.shortest_edge, new_long)

    def apply(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        """uint8 ``[height, width, 3]``: the processor's pixels before its rescale and normalisation."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
        height, width = self.resized_size(image.width, image.height)
        resized = image.resize((width, height), resample=self.resample_filter)
        pixels = np.asarray(resized, dtype=np.uint8)
        if self.crop is not None:
            pixels = _center_crop(pixels, self.crop)
        return np.ascontiguousarray(pixels)

    def to_json(self) -> str:
        return json.dumps({
            "height": self.height,
            "width": self.width,
            "resize": list(self.resize) if self.resize is not None else None,
            "shortest_edge": self.shortest_edge,
            "crop": list(self.crop) if self.crop is not None else None,
            "resample": self.resample,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ViewRecipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"a view recipe must be JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("a view recipe must be a JSON object")
        known = {"height", "width", "resize", "shortest_edge", "crop", "resample"}
        if set(data) - known or not {"height", "width"} <= set(data):
            raise ValueError(f"a view recipe has the keys {sorted(known)} (height and width required), "
                             f"got {sorted(data)}")
        resize, crop = data.get("resize"), data.get("crop")
        return cls(
            height=data["height"],
            width=data["width"],
            resize=tuple(resize) if isinstance(resize, list) else resize,
            shortest_edge=data.get("shortest_edge"),
            crop=tuple(crop) if isinstance(crop, list) else crop,
            resample=data.get("resample", "bicubic"),
        )


def _center_crop(pixels: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """``transformers.image_transforms.center_crop`` on HWC uint8: zero-padded when the image is smaller."""
    crop_h, crop_w = size
    height, width = pixels.shape[:2]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= height and left + crop_w <= width:
        return pixels[top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((new_h, new_w, pixels.shape[2]), dtype=pixels.dtype)
    top_pad, left_pad = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    padded[top_pad:top_pad + height, left_pad:left_pad + width] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


def crop_views(pixels: npt.NDArray[np.uint8], boxes: npt.ArrayLike, recipe: ViewRecipe) -> npt.NDArray[np.uint8]:
    """``[n, height, width, 3]``: each box of letterbox ``pixels`` cut as a square garment crop
    (:func:`fashionbox.core.imaging.crop_garments`, at the side the recipe's resize starts from) and then
    put through ``recipe`` as the family's processor would put that crop: what an embedder family
    embeds for each garment, and what its parity test gives the library."""
    from fashionbox.core.imaging import crop_garments

    crops = crop_garments(pixels, np.asarray(boxes, dtype=np.float32), recipe.min_source_short_side)
    out = np.empty((len(crops), recipe.height, recipe.width, 3), dtype=np.uint8)
    for k, crop in enumerate(crops):
        out[k] = recipe.apply(Image.fromarray(crop))
    return out
