"""Triton model ``detector``: letterboxed pixels -> detections, ONNX Runtime (CPU) or PyTorch (GPU/CPU).

PIXELS UINT8 [S, S, 3], TOKEN UINT8 [32] -> DET_BOXES FP32 [-1, 4] (letterbox px), DET_SCORES FP32 [-1],
DET_CLASSES INT32 [-1], and for a segmenting graph (an Ultralytics YOLO-seg) DET_MASK_COEFFS FP32
[-1, K] (rows as DET_BOXES, padding rows 0) and DET_PROTOS FP32 [K, h, w]. A request whose TOKEN was
not made by ``preprocess`` for its pixels is refused alone (INVALID_ARG): only the ensemble calls
this step (:mod:`fashionbox.core.capability`); with admission control, it confirms each request's
pending slot. The whole dynamic batch runs as one call: ONNX Runtime with NMS inside the graph, or
PyTorch on the instance's device with batched NMS (runtime ``torch``), and
:mod:`fashionbox.core.postprocessing` gathers the kept boxes per image. A request carrying
several images gets rows padded with class -1. Parameters:
:class:`fashionbox.core.serving.DetectorParameters`, :class:`fashionbox.core.serving.RuntimeSettings` and
:class:`fashionbox.core.serving.OrtSettings`.
"""

# Bootstrap: the python backend stub ignores PYTHONPATH, so make the server's site-packages visible.
import os
import site
import sys

_site_packages = os.environ.get("FASHIONBOX_SITE_PACKAGES")  # set by `fashionbox serve`; unset in containers
if _site_packages:
    _before = list(sys.path)
    for _folder in _site_packages.split(os.pathsep):
        site.addsitedir(_folder)  # processes .pth files, so editable installs resolve too
    sys.path[:0] = [p for p in sys.path if p not in _before]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from fashionbox import contract  # noqa: E402
from fashionbox.core.capability import TOKEN_INPUT, guarded_step  # noqa: E402
from fashionbox.core.postprocessing import detector_outputs  # noqa: E402
from fashionbox.core.serving import (  # noqa: E402
    DetectorParameters,
    InputSpec,
    LetterboxSettings,
    ModelArgs,
    read_input,
    run_concatenated,
)
from fashionbox.model_repository.runners import load_detector_runner  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        params = DetectorParameters.from_parameters(self.args.parameters)
        self.detector, loaded = load_detector_runner(self.args)
        # a rect letterbox: any shape the settings allow, requests of each shape run together
        self.input_size, self.rect = params.input_size, LetterboxSettings.optional(self.args.parameters)
        side = -1 if self.rect else params.input_size
        self.pixels = InputSpec(contract.PIXELS.name, np.uint8, (side, side, 3))
        self.slots, self.key = guarded_step(self.args, pb_utils.Logger.log_warn)
        # the graph gives mask coefficients and the repository routes them (detector_masks); a
        # segmenting graph served without masks keeps them to itself
        declared = {output["name"] for output in self.args.config.get("output", [])}
        self.segments = bool(getattr(self.detector, "segments", False)) and contract.DET_MASK_COEFFS.name in declared
        pb_utils.Logger.log_info(f"{self.args.name}: {loaded}{' (segmenting)' if self.segments else ''}")

    def execute(self, requests):
        return run_concatenated(
            requests, self.pixels, compute=self.detector.detect, split=self._split, model=self.args.name,
            check=self._check,
        )

    def _check(self, request, pixels):
        """Refuse a request the ensemble did not make; confirm the admission slot of one it did."""
        key = self.key.check(read_input(request, TOKEN_INPUT), pixels, model=self.args.name)
        if self.rect is not None:
            self.rect.check(pixels, self.input_size)
        if self.slots is not None:
            self.slots.confirm([key])

    def _split(self, rows, part):
        return detector_outputs(rows[part], segments=self.segments)

    def finalize(self):
        self.detector = None
        if self.slots is not None:
            self.slots.close()
