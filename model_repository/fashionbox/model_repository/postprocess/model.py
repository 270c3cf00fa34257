"""Triton model ``postprocess``: detections -> attribute crops -> the ensemble's final outputs.

Inputs per image: PIXELS, IMAGE_INFO, TOKEN, DET_BOXES, DET_SCORES, DET_CLASSES. A request whose
TOKEN was not made by ``preprocess`` for its pixels is refused alone (INVALID_ARG): only the ensemble
calls this step (:mod:`fashionbox.core.capability`). It cuts the crops of
every detection of every request in the dynamic batch, classifies them with ONE BLS call to the
``attributes`` model (split into chunks of that model's max batch size, each with the token
``attributes`` takes; skipped when nothing was detected), then answers each request with BOXES
(original pixels), SCORES, CATEGORIES, ATTRIBUTE_SCORES (groups that do not apply are 0) and DETECTIONS (a serialized
``fashionbox.v1.ImageDetections`` per image). A failed BLS chunk fails exactly the requests whose
crops were in it. Parameters: :class:`fashionbox.core.serving.PostprocessParameters`.

Instance masks (each detection's ``mask`` in DETECTIONS, COCO RLE at the original resolution):
with ``detector_masks`` the detector segments, and DET_MASK_COEFFS (rows as DET_BOXES) and
DET_PROTOS are inputs too, assembled by ``fashionbox.core.proto_masks.masks_from_protos``; else
with ``crop_masks`` the same BLS call asks ``attributes`` for CROP_MASKS, pasted into the image by
:func:`fashionbox.core.masks.paste_crop_masks`. Without either, detections carry no mask.
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
from fashionbox.core.imaging import LetterboxInfo, crop_garments  # noqa: E402
from fashionbox.core.masks import paste_crop_masks  # noqa: E402
from fashionbox.core.postprocessing import PAD_CLASS, finish_detections, stack_image_results, unpad  # noqa: E402
from fashionbox.core.results import build_image_detections  # noqa: E402
from fashionbox.core.serving import (  # noqa: E402
    InputSpec,
    ModelArgs,
    PostprocessParameters,
    RequestError,
    call_model_chunked,
    error_response,
    read_input,
    success_response,
    unexpected_error,
)


class _Staged:
    """One request between cropping and the attribute call."""

    def __init__(self, rows, infos, crops, segments=None):
        self.rows = rows  # list[DetectorOutput], letterbox px
        self.infos = infos  # list[LetterboxInfo]
        self.crops = crops  # uint8 [sum of detections, C, C, 3]
        self.segments = segments  # detector_masks: per image (coeffs [n, K] of the kept rows, protos [K, h, w])


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        params = PostprocessParameters.from_parameters(self.args.parameters)
        size = params.input_size
        self.params = params
        self.crop_size = params.crop_size
        self.label_map = self.args.label_map()
        self.specs = (
            InputSpec(contract.PIXELS.name, np.uint8, (size, size, 3)),
            InputSpec(contract.IMAGE_INFO.name, np.float32, contract.IMAGE_INFO.dims),
            InputSpec(contract.DET_BOXES.name, np.float32, contract.DET_BOXES.dims),
            InputSpec(contract.DET_SCORES.name, np.float32, contract.DET_SCORES.dims),
            InputSpec(contract.DET_CLASSES.name, np.int32, contract.DET_CLASSES.dims),
        )
        self.segment_specs = (
            InputSpec(contract.DET_MASK_COEFFS.name, np.float32, contract.DET_MASK_COEFFS.dims),
            InputSpec(contract.DET_PROTOS.name, np.float32, contract.DET_PROTOS.dims),
        ) if params.detector_masks else ()
        # A segmenting detector's masks win: the attribute model is then not asked for its own.
        self.crop_masks = params.crop_masks and not params.detector_masks
        if params.detector_masks:
            from fashionbox.core.proto_masks import masks_from_protos  # only segmenting families need it

            self.masks_from_protos = masks_from_protos
        pb_utils.Logger.log_info(f"{self.args.name}: label map {self.label_map.name!r} {params}")
        self.slots, self.key = guarded_step(self.args, pb_utils.Logger.log_warn)

    def execute(self, requests):
        keys = []  # of the requests whose token is good: each one admitted by preprocess ends here
        try:
            return self._execute(requests, keys)
        finally:
            if self.slots is not None:
                self.slots.release(keys)

    def _execute(self, requests, keys):
        responses = [None] * len(requests)
        staged = {}
        for i, request in enumerate(requests):
            try:
                staged[i] = self._stage(request, keys)
            except RequestError as exc:
                responses[i] = error_response(exc)
            except Exception as exc:
                responses[i] = error_response(unexpected_error(self.args.name, exc))

        probs, failures = self._classify(staged)
        for i, stage in staged.items():
            if i in failures:
                responses[i] = error_response(failures[i])
                continue
            try:
                responses[i] = success_response(self._finish(stage, probs[i]))
            except Exception as exc:
                responses[i] = error_response(unexpected_error(self.args.name, exc))
        return responses

    def _stage(self, request, keys):
        pixels, info, boxes, scores, classes = (read_input(request, spec) for spec in self.specs)
        keys.append(self.key.check(read_input(request, TOKEN_INPUT), pixels, model=self.args.name))
        count = pixels.shape[0]
        if not info.shape[0] == boxes.shape[0] == scores.shape[0] == classes.shape[0] == count:
            raise RequestError(
                f"inputs disagree on the number of images: PIXELS {pixels.shape[0]}, IMAGE_INFO {info.shape[0]}, "
                f"DET_BOXES {boxes.shape[0]}, DET_SCORES {scores.shape[0]}, DET_CLASSES {classes.shape[0]}"
            )
        rows = [unpad(boxes[k], scores[k], classes[k]) for k in range(count)]
        crops = [crop_garments(pixels[k], rows[k].boxes, self.crop_size) for k in range(count)]
        empty = np.empty((0, self.crop_size, self.crop_size, 3), dtype=np.uint8)
        return _Staged(
            rows=rows,
            infos=[LetterboxInfo.from_array(info[k]) for k in range(count)],
            crops=np.concatenate(crops, axis=0) if crops else empty,
            segments=self._segments(request, boxes, classes) if self.segment_specs else None,
        )

    def _segments(self, request, boxes, classes):
        """Per image, the mask coefficients of the detections unpad kept, and the image's prototypes."""
        coeffs, protos = (read_input(request, spec) for spec in self.segment_specs)
        if not coeffs.shape[0] == protos.shape[0] == boxes.shape[0] or coeffs.shape[1] != boxes.shape[1]:
            raise RequestError(
                f"{contract.DET_MASK_COEFFS.name} {list(coeffs.shape)} and {contract.DET_PROTOS.name} "
                f"{list(protos.shape)} do not match {contract.DET_BOXES.name} {list(boxes.shape)}"
            )
        if coeffs.shape[2] != protos.shape[1]:
            raise RequestError(f"{coeffs.shape[2]} mask coefficients per detection for {protos.shape[1]} prototypes")
        return [(coeffs[k][classes[k] != PAD_CLASS], protos[k]) for k in range(boxes.shape[0])]

    def _classify(self, staged):
        """Attribute probs (and crop masks, else None) per request index, and the errors of requests
        whose BLS chunk failed."""
        owners = np.array([i for i, stage in staged.items() for _ in range(stage.crops.shape[0])], dtype=np.int64)
        all_probs = np.zeros((len(owners), self.label_map.num_attribute_labels), dtype=np.float32)
        all_masks = None
        chunks = []
        if len(owners):
            chunks = call_model_chunked(
                self.params.attributes_model,
                input_name=contract.CROPS.name,
                output_name=contract.ATTRIBUTE_PROBS.name,
                array=np.concatenate([stage.crops for stage in staged.values()], axis=0),
                max_batch_size=self.params.attributes_max_batch_size,
                extra=self._attributes_token if self.params.attributes_token else None,
                extra_outputs=(contract.CROP_MASKS.name,) if self.crop_masks else (),
            )
        failures = {}
        for chunk in chunks:
            if chunk.error is not None:
                for i in np.unique(owners[chunk.rows]).tolist():
                    failures[i] = chunk.error
                continue
            all_probs[chunk.rows] = chunk.output
            if self.crop_masks:
                masks = chunk.extras[contract.CROP_MASKS.name]
                if all_masks is None:
                    all_masks = np.zeros((len(owners), *masks.shape[1:]), dtype=np.float32)
                all_masks[chunk.rows] = masks
        probs, start = {}, 0
        for i, stage in staged.items():
            stop = start + stage.crops.shape[0]
            probs[i] = (all_probs[start:stop], all_masks[start:stop] if all_masks is not None else None)
            start = stop
        return probs, failures

    def _attributes_token(self, rows):
        return {contract.TOKEN.name: self.key.attributes_tokens(rows)}

    def _masks(self, stage, image, row, info, crop_masks):
        """RLE counts per detection of image ``image`` of ``stage``, or None when there are no masks."""
        if stage.segments is not None:
            coeffs, protos = stage.segments[image]
            masks = self.masks_from_protos(coeffs, protos, row.boxes, info)
        elif crop_masks is not None:
            masks = paste_crop_masks(crop_masks, row.boxes, info, input_size=self.params.input_size)
        else:
            return None
        return [mask.to_rle() for mask in masks]

    def _finish(self, stage, classified):
        probs, crop_masks = classified
        results, messages, start = [], [], 0
        for image, (row, info) in enumerate(zip(stage.rows, stage.infos, strict=True)):
            stop = start + len(row)
            result = finish_detections(row, info, probs[start:stop], self.label_map)
            masks = self._masks(stage, image, row, info, crop_masks[start:stop] if crop_masks is not None else None)
            start = stop
            results.append(result)
            message = build_image_detections(
                width=info.width,
                height=info.height,
                boxes=result.boxes,
                scores=result.scores,
                categories=result.categories,
                attribute_scores=result.attribute_scores,
                label_map=self.label_map,
                model_version=self.params.model_version,
                model_name=self.params.model_name,
                masks=masks,
            )
            messages.append(message.SerializeToString())
        boxes, scores, categories, attributes = stack_image_results(
            results, num_attribute_labels=self.label_map.num_attribute_labels
        )
        detections = np.array(messages, dtype=np.object_).reshape(-1, 1)
        return {
            contract.BOXES.name: boxes,
            contract.SCORES.name: scores,
            contract.CATEGORIES.name: categories,
            contract.ATTRIBUTE_SCORES.name: attributes,
            contract.DETECTIONS.name: detections,
        }

    def finalize(self):
        if self.slots is not None:
            self.slots.close()
