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
DET_PROTOS are inputs too, assembled as Ultralytics' predictor assembles them
(``fashionbox.core.proto_masks.ProtoMasks``): at the letterbox first, where a detection whose mask
is empty is dropped as the predictor drops it, then in the original photo on a worker thread while
the attribute call runs (that step needs nothing the call answers). With ``detector_mask_crop`` false
(RF-DETR-Seg's post-processing) the masks are not cut to their boxes; else
with ``crop_masks`` the same BLS call asks ``attributes`` for CROP_MASKS, pasted into the image by
:func:`fashionbox.core.masks.paste_crop_masks`. Without either, detections carry no mask.

Image-level labels and vectors (``labels``, ``embedding`` of ImageDetections and of each detection):
with ``labels_from=classifier`` one BLS call to ``classifier`` takes every image's CLASSIFIER_VIEW;
with ``embeddings_from=embedder`` one BLS call to ``embedder`` takes every detection's crop (cut at
the embedder's input size) and every image's EMBEDDER_VIEW; with ``attributes`` as either source,
each image joins the attribute call as one more crop, the whole photo
(:func:`fashionbox.core.imaging.whole_image_crop`), and the default model's vertical and embedding
heads answer in the same call (VERTICAL_PROBS, CROP_EMBEDDINGS). A failed call fails exactly the
requests whose rows were in it.

The second stage: with ``score_offsets`` the attribute network has a verifier head fitted to this
detector, and the same call answers CROP_SCORE_OFFSETS; each image's detections are then re-scored by
their crops and those at or under ``score_threshold`` dropped
(:func:`fashionbox.core.postprocessing.rescore_detections`) before anything else is assembled, so
scores, order, masks and vectors all describe the detections that remain.
"""

# Bootstrap: the python backend stub ignores PYTHONPATH, so make the server's site-packages visible.
import os
import site
import sys
from concurrent.futures import ThreadPoolExecutor

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
from fashionbox.core.imaging import LetterboxInfo, crop_garments, whole_image_crop  # noqa: E402
from fashionbox.core.masks import paste_crop_masks  # noqa: E402
from fashionbox.core.postprocessing import (  # noqa: E402
    PAD_CLASS,
    finish_detections,
    rescore_detections,
    stack_image_results,
    unpad,
)
from fashionbox.core.results import EmbeddingSettings, build_image_detections, top_labels  # noqa: E402
from fashionbox.core.serving import (  # noqa: E402
    ImageLevelParameters,
    InputSpec,
    LetterboxSettings,
    ModelArgs,
    PostprocessParameters,
    RequestError,
    call_model_chunked,
    error_response,
    read_input,
    success_response,
    unexpected_error,
)
from fashionbox.core.views import ViewRecipe, crop_views  # noqa: E402
from fashionbox.model_repository.runners import ATTRIBUTE_EXTRAS, load_attributes_runner  # noqa: E402


class _Staged:
    """One request between cropping and the network calls."""

    def __init__(self, canvas, rows, infos, crops, segments=None, image_crops=None, views=None, embed_crops=None):
        self.canvas = canvas  # (height, width) of the request's letterbox
        self.rows = rows  # list[DetectorOutput], letterbox px
        self.infos = infos  # list[LetterboxInfo]
        self.crops = crops  # uint8 [sum of detections, C, C, 3]
        self.segments = segments  # detector_masks: per image (ProtoMasks, a LetterboxMask per row of `rows`)
        self.image_crops = image_crops  # whole_image_crop: uint8 [images, C, C, 3] (default image-level heads)
        self.views = views or {}  # CLASSIFIER_VIEW / EMBEDDER_VIEW: uint8 [images, H, W, 3]
        self.embed_crops = embed_crops  # embedder family: uint8 [sum of detections, E, E, 3]


class _Answers:
    """What the network calls gave one request (rows in its detection order, then its images')."""

    def __init__(self):
        self.probs = None  # [detections, A]
        self.masks = None  # [detections, m, m] or None
        self.embeddings = None  # [detections, D] or None
        self.image_embeddings = None  # [images, D] or None
        self.label_probs = None  # [images, L] or None
        self.score_offsets = None  # [detections, C] or None (a verifier head)


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        params = PostprocessParameters.from_parameters(self.args.parameters)
        self.rect = LetterboxSettings.optional(self.args.parameters)  # then PIXELS come in a request's own shape
        size = -1 if self.rect else params.input_size
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
        self.mask_crop = params.detector_mask_crop
        # A segmenting detector's masks win: the attribute model is then not asked for its own.
        self.crop_masks = params.crop_masks and not params.detector_masks
        self.mask_worker = None
        if params.detector_masks:
            from fashionbox.core.proto_masks import ProtoMasks  # only segmenting families need it

            self.proto_masks = ProtoMasks
            # Step 2 needs nothing the network calls answer: it runs on this thread while they run
            # (a BLS call waits with the GIL released; numpy and Pillow release it too).
            self.mask_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.args.name}-masks")
        self.image_level = image_level = ImageLevelParameters.optional(self.args.parameters)
        self.view_specs = tuple(
            InputSpec(spec.name, np.uint8, (-1, -1, 3)) for spec, used in (
                (contract.CLASSIFIER_VIEW, image_level.labels_from == "classifier"),
                (contract.EMBEDDER_VIEW, image_level.embeddings_from == "embedder")) if used)
        self.label_names = image_level.image_label_names
        self.embedder_view = None
        if image_level.embeddings_from == "embedder":
            self.embedder_view = ViewRecipe.from_json(image_level.embedder_view)
        self.embedding = (EmbeddingSettings(image_level.embedding_model, image_level.embedding_dtype)
                          if image_level.embeddings_from else None)
        # what the attribute call answers besides ATTRIBUTE_PROBS
        self.attribute_extras = tuple(name for name, wanted in (
            (contract.CROP_MASKS.name, self.crop_masks),
            (contract.CROP_EMBEDDINGS.name, image_level.embeddings_from == "attributes"),
            (contract.VERTICAL_PROBS.name, image_level.labels_from == "attributes"),
            (contract.CROP_SCORE_OFFSETS.name, params.score_offsets)) if wanted)
        pb_utils.Logger.log_info(f"{self.args.name}: label map {self.label_map.name!r} {params} {image_level}")
        self.heads = None
        if params.attributes_inline:  # the fused CPU layout: no BLS round trip for the attribute network
            self.heads, loaded = load_attributes_runner(self.args)
            served = {name: graph for graph, name in ATTRIBUTE_EXTRAS.items()}
            self.graph_extras = tuple(served[name] for name in self.attribute_extras)
            missing = sorted(set(self.graph_extras) - set(getattr(self.heads, "outputs", ())))
            if missing:
                raise RuntimeError(f"{self.args.name}: the attribute graph has no output {missing}")
            pb_utils.Logger.log_info(f"{self.args.name}: attribute network inside this step: {loaded}")
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

        pending = self.mask_worker.submit(self._assemble_masks, staged) if self.mask_worker is not None else None
        answers, failures = self._call_networks(staged)
        assembled = pending.result() if pending is not None else {}
        for i, stage in staged.items():
            if i in failures:
                responses[i] = error_response(failures[i])
                continue
            try:
                if isinstance(assembled.get(i), Exception):
                    raise assembled[i]
                responses[i] = success_response(self._finish(stage, answers[i], assembled.get(i)))
            except Exception as exc:
                responses[i] = error_response(unexpected_error(self.args.name, exc))
        return responses

    def _stage(self, request, keys):
        pixels, info, boxes, scores, classes = (read_input(request, spec) for spec in self.specs)
        keys.append(self.key.check(read_input(request, TOKEN_INPUT), pixels, model=self.args.name))
        if self.rect is not None:
            self.rect.check(pixels, self.params.input_size)
        count = pixels.shape[0]
        if not info.shape[0] == boxes.shape[0] == scores.shape[0] == classes.shape[0] == count:
            raise RequestError(
                f"inputs disagree on the number of images: PIXELS {pixels.shape[0]}, IMAGE_INFO {info.shape[0]}, "
                f"DET_BOXES {boxes.shape[0]}, DET_SCORES {scores.shape[0]}, DET_CLASSES {classes.shape[0]}"
            )
        rows = [unpad(boxes[k], scores[k], classes[k]) for k in range(count)]
        infos = [LetterboxInfo.from_array(info[k]) for k in range(count)]
        segments = (self._letterbox_masks(request, boxes, classes, rows, infos, pixels.shape[1:3])
                    if self.segment_specs else None)
        crops = [crop_garments(pixels[k], rows[k].boxes, self.crop_size) for k in range(count)]
        empty = np.empty((0, self.crop_size, self.crop_size, 3), dtype=np.uint8)
        views = {}
        for spec in self.view_specs:
            views[spec.name] = read_input(request, spec)
            if views[spec.name].shape[0] != count:
                raise RequestError(f"{spec.name} has {views[spec.name].shape[0]} images for {count} in PIXELS")
        embed_crops = None
        if self.embedder_view is not None:
            embed_crops = np.concatenate([crop_views(pixels[k], rows[k].boxes, self.embedder_view)
                                          for k in range(count)], axis=0)
        return _Staged(
            canvas=pixels.shape[1:3],
            rows=rows,
            infos=infos,
            crops=np.concatenate(crops, axis=0) if crops else empty,
            segments=segments,
            image_crops=(np.concatenate([whole_image_crop(pixels[k], infos[k], self.crop_size) for k in range(count)])
                         if self.image_level.whole_image_crop else None),
            views=views,
            embed_crops=embed_crops,
        )

    def _letterbox_masks(self, request, boxes, classes, rows, infos, canvas):
        """A segmenting detector's masks at the letterbox (step 1), per image ``(geometry, masks)``.

        With ``detector_mask_crop`` (Ultralytics' rule) each mask is cut to its box; without it (RF-DETR-Seg's)
        it is taken over the whole letterbox. A detection whose mask is empty there is dropped from ``rows``
        (in place), as both predictors drop it: no crop, no attributes, no answer for it.
        """
        coeffs, protos = (read_input(request, spec) for spec in self.segment_specs)
        if not coeffs.shape[0] == protos.shape[0] == boxes.shape[0] or coeffs.shape[1] != boxes.shape[1]:
            raise RequestError(
                f"{contract.DET_MASK_COEFFS.name} {list(coeffs.shape)} and {contract.DET_PROTOS.name} "
                f"{list(protos.shape)} do not match {contract.DET_BOXES.name} {list(boxes.shape)}"
            )
        if coeffs.shape[2] != protos.shape[1]:
            raise RequestError(f"{coeffs.shape[2]} mask coefficients per detection for {protos.shape[1]} prototypes")
        segments = []
        for k in range(boxes.shape[0]):
            geometry = self.proto_masks(infos[k], protos.shape[2:4], input_size=canvas)
            cut = rows[k].boxes if self.mask_crop else np.tile(
                np.array([0.0, 0.0, canvas[1], canvas[0]], dtype=np.float32), (len(rows[k].boxes), 1))
            masks = geometry.letterbox(coeffs[k][classes[k] != PAD_CLASS], protos[k], cut)
            keep = np.array([not mask.empty for mask in masks], dtype=bool)
            if not keep.all():
                rows[k] = rows[k].subset(keep)
                masks = [mask for mask, kept in zip(masks, keep, strict=True) if kept]
            segments.append((geometry, masks))
        return segments

    def _call_networks(self, staged):
        """Per request index its :class:`_Answers`, and the errors of requests whose rows were in a failed call."""
        answers = {i: _Answers() for i in staged}
        failures = {}
        attributes_rows = {i: (np.concatenate([stage.crops, stage.image_crops]) if stage.image_crops is not None
                               else stage.crops) for i, stage in staged.items()}
        if self.heads is not None:
            extras = self._inline_attributes(attributes_rows, failures)
        else:  # a TensorRT attribute engine takes no TOKEN (attributes_token false); the python branches always do
            extras = self._bls(self.params.attributes_model, contract.ATTRIBUTE_PROBS.name, attributes_rows,
                               self.params.attributes_max_batch_size, failures, self.attribute_extras,
                               token=self.params.attributes_token)
        for i, outputs in extras.items():
            n = staged[i].crops.shape[0]
            answer = answers[i]
            if contract.ATTRIBUTE_PROBS.name not in outputs:  # no call: nothing detected, no whole-photo crop
                answer.probs = np.zeros((0, self.label_map.num_attribute_labels), dtype=np.float32)
                continue
            answer.probs = outputs[contract.ATTRIBUTE_PROBS.name][:n]
            answer.masks = outputs[contract.CROP_MASKS.name][:n] if self.crop_masks else None
            if contract.CROP_EMBEDDINGS.name in outputs:
                answer.embeddings = outputs[contract.CROP_EMBEDDINGS.name][:n]
                answer.image_embeddings = outputs[contract.CROP_EMBEDDINGS.name][n:]
            if contract.VERTICAL_PROBS.name in outputs:
                answer.label_probs = outputs[contract.VERTICAL_PROBS.name][n:]
            if contract.CROP_SCORE_OFFSETS.name in outputs:
                answer.score_offsets = outputs[contract.CROP_SCORE_OFFSETS.name][:n]
        if self.image_level.labels_from == "classifier":
            views = {i: stage.views[contract.CLASSIFIER_VIEW.name] for i, stage in staged.items() if i not in failures}
            for i, outputs in self._bls(contract.CLASSIFIER_MODEL, contract.LABEL_PROBS.name, views,
                                        self.image_level.classifier_max_batch_size, failures,
                                        token=self.image_level.branch_token).items():
                answers[i].label_probs = outputs[contract.LABEL_PROBS.name]
        if self.image_level.embeddings_from == "embedder":
            rows = {i: np.concatenate([stage.embed_crops, stage.views[contract.EMBEDDER_VIEW.name]])
                    for i, stage in staged.items() if i not in failures}
            for i, outputs in self._bls(contract.EMBEDDER_MODEL, contract.EMBEDDINGS.name, rows,
                                        self.image_level.embedder_max_batch_size, failures,
                                        token=self.image_level.branch_token).items():
                n = staged[i].embed_crops.shape[0]
                answers[i].embeddings = outputs[contract.EMBEDDINGS.name][:n]
                answers[i].image_embeddings = outputs[contract.EMBEDDINGS.name][n:]
        return answers, failures

    def _bls(self, model, output, arrays, max_batch_size, failures, extra_outputs=(), token=True):
        """One chunked BLS call to ``model`` over every request's rows (``arrays``: request index ->
        rows); per request that it answered, ``{output and extra_outputs: its rows}``, or ``{}`` when no
        request had a row (no call made: the outputs' shapes are the model's to say). Requests whose
        rows were in a failed chunk go into ``failures``, and out of the answer."""
        arrays = {i: array for i, array in arrays.items() if i not in failures}
        owners = np.array([i for i, array in arrays.items() for _ in range(array.shape[0])], dtype=np.int64)
        if not len(owners):
            return {i: {} for i in arrays}
        chunks = call_model_chunked(
            model, input_name=contract.CROPS.name if model == self.params.attributes_model else contract.VIEWS.name,
            output_name=output, array=np.concatenate([a for a in arrays.values() if a.shape[0]]),
            max_batch_size=max_batch_size,
            extra=self._attributes_token if token else None,
            extra_outputs=extra_outputs)
        results = {}
        for chunk in chunks:
            if chunk.error is not None:
                for i in np.unique(owners[chunk.rows]).tolist():
                    failures[i] = chunk.error
                continue
            for name, values in ((output, chunk.output), *chunk.extras.items()):
                if name not in results:
                    results[name] = np.zeros((len(owners), *values.shape[1:]), dtype=np.float32)
                results[name][chunk.rows] = values
        answered, start = {}, 0
        for i, array in arrays.items():
            stop = start + array.shape[0]
            if i not in failures:
                answered[i] = {name: values[start:stop] for name, values in results.items()}
            start = stop
        return answered

    def _inline_attributes(self, arrays, failures):
        """The attribute network run here over every request's rows, in chunks of its max batch size;
        the answer shaped as :meth:`_bls`'s. If a chunk fails, every request in the call fails."""
        arrays = {i: array for i, array in arrays.items() if i not in failures}
        rows = [array for array in arrays.values() if array.shape[0]]
        if not rows:
            return {i: {} for i in arrays}
        crops = rows[0] if len(rows) == 1 else np.concatenate(rows)
        chunk = self.params.attributes_max_batch_size
        try:
            parts = [self.heads.run(crops[start:start + chunk], self.graph_extras)
                     for start in range(0, crops.shape[0], chunk)]
        except Exception as exc:
            error = unexpected_error(self.args.name, exc)
            failures.update({i: error for i in arrays})
            return {}
        served = {contract.ONNX_ATTRIBUTES_OUTPUT: contract.ATTRIBUTE_PROBS.name, **ATTRIBUTE_EXTRAS}
        results = {served[graph]: np.concatenate([part[graph] for part in parts]) if len(parts) > 1 else parts[0][graph]
                   for graph in (contract.ONNX_ATTRIBUTES_OUTPUT, *self.graph_extras)}
        answered, start = {}, 0
        for i, array in arrays.items():
            stop = start + array.shape[0]
            answered[i] = {name: values[start:stop] for name, values in results.items()}
            start = stop
        return answered

    def _attributes_token(self, rows):
        return {contract.TOKEN.name: self.key.attributes_tokens(rows)}

    def _assemble_masks(self, staged):
        """A segmenting detector's masks in the original photos (step 2), per request index: per image,
        the RLE counts of each of its detections (before the second stage drops any), or the exception
        that request met."""
        assembled = {}
        for i, stage in staged.items():
            try:
                assembled[i] = [[mask.to_rle() for mask in geometry.original(masks)]
                                for geometry, masks in stage.segments]
            except Exception as exc:
                assembled[i] = exc
        return assembled

    def _finish(self, stage, answer, assembled=None):
        """The request's outputs; ``assembled``: per image, the RLE counts of its detector's masks."""
        results, messages, start = [], [], 0
        for image, (row, info) in enumerate(zip(stage.rows, stage.infos, strict=True)):
            stop = start + len(row)
            rows = slice(start, stop)
            masks = assembled[image] if assembled is not None else None
            if answer.score_offsets is not None:  # the second stage: every per-detection array follows `keep`
                row, rows = rescore_detections(row, answer.score_offsets[start:stop],
                                               score_threshold=self.params.score_threshold)
                rows += start
                if masks is not None:
                    masks = [masks[k] for k in (rows - start).tolist()]
            result = finish_detections(row, info, answer.probs[rows], self.label_map)
            if answer.masks is not None:
                masks = [mask.to_rle() for mask in paste_crop_masks(answer.masks[rows], row.boxes, info,
                                                                    input_size=stage.canvas)]
            embeddings = answer.embeddings[rows] if answer.embeddings is not None else None
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
                labels=(top_labels(answer.label_probs[image], self.label_names, self.image_level.label_top_k)
                        if answer.label_probs is not None else ()),
                labels_model=self.image_level.labels_model if answer.label_probs is not None else "",
                embeddings=embeddings,
                image_embedding=answer.image_embeddings[image] if answer.image_embeddings is not None else None,
                embedding=self.embedding,
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
        self.heads = None
        if self.mask_worker is not None:
            self.mask_worker.shutdown(wait=True)
        if self.slots is not None:
            self.slots.close()
