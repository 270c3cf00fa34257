"""Triton model ``detector`` of the fused CPU layout: encoded images -> decode -> detections, one step.

IMAGE BYTES [1] -> PIXELS UINT8 [S, S, 3], IMAGE_INFO FP32 [5], TOKEN UINT8 [32], DET_BOXES FP32
[-1, 4] (letterbox px), DET_SCORES FP32 [-1], DET_CLASSES INT32 [-1] (and DET_MASK_COEFFS /
DET_PROTOS for a segmenting graph, CLASSIFIER_VIEW / EMBEDDER_VIEW for the image-level families).
What ``preprocess`` and ``detector`` do in the steps layout, without the hop between them: the
ensemble's entry, it admits or refuses the whole dynamic batch (UNAVAILABLE, at once) before
anything is decoded (:class:`fashionbox.model_repository.decoding.Entry`: the slot stays pending
until ``postprocess`` gives it back, as a direct call's does), decodes each request's images
once (:class:`fashionbox.model_repository.decoding.ImageDecoding`: a request whose image does not
decode fails alone with INVALID_ARG), then runs every decoded image of the batch through the
detector in one call (ONNX Runtime or OpenVINO, its graph ``model.onnx`` in this version folder).
Parameters: :class:`fashionbox.core.serving.PreprocessParameters`,
:class:`fashionbox.core.serving.DetectorParameters`, :class:`fashionbox.core.serving.RuntimeSettings`
and :class:`fashionbox.core.serving.OrtSettings`.
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
from fashionbox.core.postprocessing import detector_outputs  # noqa: E402
from fashionbox.core.serving import (  # noqa: E402
    ModelArgs,
    RequestError,
    error_response,
    group_by_shape,
    success_response,
    unexpected_error,
)
from fashionbox.model_repository.decoding import Entry, ImageDecoding  # noqa: E402
from fashionbox.model_repository.runners import load_detector_runner  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        self.decoding = ImageDecoding(self.args, pb_utils.Logger.log_info)
        self.detector, loaded = load_detector_runner(self.args)
        declared = {output["name"] for output in self.args.config.get("output", [])}
        self.segments = bool(getattr(self.detector, "segments", False)) and contract.DET_MASK_COEFFS.name in declared
        pb_utils.Logger.log_info(f"{self.args.name}: {loaded}{' (segmenting)' if self.segments else ''}")
        self.entry = Entry(self.args, pb_utils.Logger.log_info, pb_utils.Logger.log_warn)

    def execute(self, requests):
        admitted = self.entry.admit(requests)
        responses = [None] * len(admitted) + [error_response(self.entry.refusal) for _ in requests[len(admitted):]]
        failed = []  # keys of admitted requests that end here: postprocess will not give their slots back
        try:
            decoded = {}
            for i, (request, key) in enumerate(admitted):
                try:
                    decoded[i] = self.decoding.decode(request)
                except Exception as exc:
                    error = exc if isinstance(exc, RequestError) else unexpected_error(self.args.name, exc)
                    responses[i] = error_response(error)
                    failed.append(key)
            if decoded:
                self._detect(admitted, decoded, responses, failed)
        except BaseException:  # Triton fails the whole batch: no request of it reaches postprocess
            failed = [key for _, key in admitted]
            raise
        finally:
            self.entry.release(failed)
        return responses

    def _detect(self, admitted, decoded, responses, failed):
        """The decoded images of the batch through the detector, one call per letterbox shape (one shape
        but with a rect letterbox); each request answered its rows."""
        for group in group_by_shape((i, outputs[contract.PIXELS.name]) for i, outputs in decoded.items()):
            self._detect_group(admitted, {i: decoded[i] for i, _ in group}, responses, failed)

    def _detect_group(self, admitted, decoded, responses, failed):
        batch = [outputs[contract.PIXELS.name] for outputs in decoded.values()]
        try:
            rows = self.detector.detect(batch[0] if len(batch) == 1 else np.concatenate(batch, axis=0))
        except Exception as exc:
            error = unexpected_error(self.args.name, exc)
            for i in decoded:
                responses[i] = error_response(error)
                failed.append(admitted[i][1])
            return
        start = 0
        for i, outputs in decoded.items():
            pixels = outputs[contract.PIXELS.name]
            part = slice(start, start + pixels.shape[0])
            start = part.stop
            try:
                responses[i] = success_response({**outputs, **self._split(rows, part),
                                                 **self.entry.sign(admitted[i][1], pixels)})
            except Exception as exc:
                responses[i] = error_response(unexpected_error(self.args.name, exc))
                failed.append(admitted[i][1])

    def _split(self, rows, part):
        return detector_outputs(rows[part], segments=self.segments)

    def finalize(self):
        self.detector = None
        self.entry.close()
