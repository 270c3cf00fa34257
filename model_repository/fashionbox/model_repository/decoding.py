"""The ensemble's entry work, shared by its two entry models: admission, then one decode per image.

``preprocess`` (the steps layout: decode only) and ``decode_detect`` (the fused CPU layout: decode and
the detector in one step) both admit or refuse a whole dynamic batch before anything is decoded
(:class:`fashionbox.core.admission.AdmissionSlots`), then decode each request's images once into
the letterboxed PIXELS, their IMAGE_INFO and every image-level family's view
(:class:`fashionbox.core.views.ViewRecipe`). A request whose image does not decode fails alone with
INVALID_ARG and gives its slot back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fashionbox import contract
from fashionbox.core.capability import PipelineKey
from fashionbox.core.gpu_imaging import CpuDecoder, DecodeSettings, select_decoder
from fashionbox.core.imaging import DecodeLimits, InvalidImageError, letterbox
from fashionbox.core.serving import (
    AdmissionSettings,
    ErrorCode,
    InputSpec,
    LetterboxSettings,
    ModelArgs,
    PreprocessParameters,
    RequestError,
    ViewParameters,
    read_input,
)

__all__ = ["Entry", "ImageDecoding"]

Arrays = dict[str, npt.NDArray[Any]]


class ImageDecoding:
    """IMAGE BYTES [1] of one request -> PIXELS, IMAGE_INFO and the families' views, decoded once."""

    def __init__(self, args: ModelArgs, log_info: Callable[[str], None]) -> None:
        params = PreprocessParameters.from_parameters(args.parameters)
        self.input_size = params.input_size
        # FASHIONBOX_MAX_IMAGE_BYTES / FASHIONBOX_MAX_PIXELS in the server's environment override
        # the limits in config.pbtxt, so an operator can change them without a new repository.
        self.limits = DecodeLimits.from_env(os.environ, params.limits)
        self.image = InputSpec(contract.IMAGE.name, np.object_, contract.IMAGE.dims)
        self.views: dict[str, Any] = {}  # output name -> ViewRecipe, in config order
        view_params = ViewParameters.optional(args.parameters)
        for name, recipe in ((contract.CLASSIFIER_VIEW.name, view_params.classifier_view),
                             (contract.EMBEDDER_VIEW.name, view_params.embedder_view)):
            if recipe:
                from fashionbox.core.views import ViewRecipe  # only repositories with image-level families

                self.views[name] = ViewRecipe.from_json(recipe)
        # The GPU profile decodes JPEGs with nvJPEG (decode_device auto/cuda); everything else on the CPU.
        self.decoder = select_decoder(DecodeSettings.from_parameters(args.parameters).decode_device,
                                      gpu_index=args.device_id)
        self.rect = LetterboxSettings.optional(args.parameters)
        if self.rect is not None and not isinstance(self.decoder, CpuDecoder):
            raise ValueError(f"{args.name}: a rect letterbox ({self.rect}) is decoded on the CPU only, "
                             f"not on {self.decoder.device}")
        log_info(f"{args.name}: decoding images on {self.decoder.device}; {params}, effective {self.limits}"
                 f"{f', {self.rect}' if self.rect else ''}")

    def decode(self, request: Any) -> Arrays:
        images = read_input(request, self.image).reshape(-1)
        if self.rect is not None:
            return self._decode_rect(images, self.rect)
        size = self.input_size
        pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
        info = np.empty((len(images), 5), dtype=np.float32)
        views = {name: np.empty((len(images), recipe.height, recipe.width, 3), dtype=np.uint8)
                 for name, recipe in self.views.items()}
        for row, data in enumerate(images):
            try:
                if views:
                    pixels[row], box, made = self.decoder.decode_views(bytes(data), size, self.limits,
                                                                       list(self.views.values()))
                    for name, view in zip(views, made, strict=True):
                        views[name][row] = view
                else:
                    pixels[row], box = self.decoder.decode_letterbox(bytes(data), size, self.limits)
            except InvalidImageError as exc:
                raise RequestError(f"{_where(row, len(images))}{exc}") from exc
            info[row] = box.as_array()
        return {contract.PIXELS.name: pixels, contract.IMAGE_INFO.name: info, **views}

    def _decode_rect(self, images: npt.NDArray[Any], rect: LetterboxSettings) -> Arrays:
        """:meth:`decode` with a rect letterbox: every image of the request decoded first, then each
        letterboxed into the smallest rect letterbox that holds them all (one image: its own)."""
        decoded = []
        for row, data in enumerate(images):
            try:
                decoded.append(CpuDecoder.decode(bytes(data), self.input_size, self.limits, list(self.views.values())))
            except InvalidImageError as exc:
                raise RequestError(f"{_where(row, len(images))}{exc}") from exc
        shapes = [rect.canvas(image.width, image.height, self.input_size) for image, _ in decoded]
        canvas = (max(h for h, _ in shapes), max(w for _, w in shapes))
        boxed = [letterbox(image, self.input_size, canvas=canvas) for image, _ in decoded]
        outputs: Arrays = {contract.PIXELS.name: np.stack([pixels for pixels, _ in boxed]),
                           contract.IMAGE_INFO.name: np.stack([info.as_array() for _, info in boxed])}
        for index, name in enumerate(self.views):
            outputs[name] = np.stack([made[index] for _, made in decoded])
        return outputs


def _where(row: int, count: int) -> str:
    """How a refusal names the image of a multi-image request."""
    return f"image {row} of {count} in this request: " if count > 1 else ""


class Entry:
    """Admission control and request keys of the ensemble's entry step.

    ``admit`` takes a slot for each request of a batch, in order, until capacity runs out (all of
    them without admission control); the caller answers the rest with :attr:`refusal`. A slot stays
    pending (``admission_pending_ms``) until the separate ``detector`` of the steps layout confirms
    it; in the fused layout nothing stands between this step and ``postprocess``, which gives it
    back, so it stays pending: a direct call to the entry holds its slot that briefly, and a request
    that needs longer finishes uncounted. ``release`` gives back the slots of requests that end in
    this step (failed), since ``postprocess`` will not see them.
    """

    def __init__(self, args: ModelArgs, log_info: Callable[[str], None], log_warn: Callable[[str], None]) -> None:
        admission = AdmissionSettings.optional(args.parameters)
        self.slots = admission.slots(args) if admission else None
        self.key = PipelineKey.for_step(admission)
        if not self.key.enforced:
            log_warn(f"{args.name}: {self.key.warning}")
        self.refusal = RequestError("the server is at capacity; retry later", ErrorCode.UNAVAILABLE)
        if admission:
            self.refusal = RequestError(
                f"the server is at capacity ({admission.max_in_flight} requests in flight); retry later",
                ErrorCode.UNAVAILABLE)
            log_info(f"{args.name}: admission control {admission}, slots {getattr(self.slots, 'path', '')}")

    def admit(self, requests: Sequence[Any]) -> list[tuple[Any, int]]:
        """``(request, key)`` of the requests admitted, a prefix of ``requests``."""
        keyed = [(request, self.key.new_request_key()) for request in requests]
        if self.slots is None:
            return keyed
        return keyed[:self.slots.take([key for _, key in keyed])]  # decided before anything is decoded

    def release(self, keys: Sequence[int]) -> None:
        if self.slots is not None and keys:
            self.slots.release(list(keys))

    def sign(self, key: int, pixels: npt.NDArray[np.uint8]) -> Arrays:
        """The TOKEN output: the later steps refuse PIXELS this step did not make."""
        return {contract.TOKEN.name: self.key.sign(key, pixels)}

    def close(self) -> None:
        if self.slots is not None:
            self.slots.close()
