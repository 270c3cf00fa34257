"""The served pipeline's steps, run in one process: the fidelity reference and the baseline.

Same functions as the Triton models (``fashionbox.core.imaging``, ``fashionbox.core.postprocessing``),
with the networks swapped in through two callables, so a difference between served and
in-process results can only come from the runtime:

- :meth:`InProcessPipeline.torch_reference`: the PyTorch models, NMS with ONNX semantics
  in PyTorch; what ``fashionbox eval --reference`` and the fidelity check compare against;
- :meth:`InProcessPipeline.from_repository`: the exported ONNX graphs in ONNX Runtime, read
  from a model repository; the "best configuration without Triton" baseline of the benchmark.

Usage::

    pipeline = InProcessPipeline.torch_reference()
    result = pipeline.run([jpeg_bytes])[0]     # ImageResult: boxes in original pixels, ...
    masked = pipeline.run_with_masks([jpeg_bytes])[0]   # MaskedResult, when the heads have a mask head

With an attribute checkpoint that has a mask head, :meth:`InProcessPipeline.run_with_masks` also
returns each detection's mask probabilities on the head's grid over its crop region
(``fashionbox.core.imaging.crop_regions`` of its letterbox box), with the letterbox boxes and the
mapping to the original image that pasting them needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fashionbox import contract
from fashionbox.contract.labels import LabelMap
from fashionbox.core.imaging import (
    DecodeLimits,
    InvalidImageError,
    LetterboxInfo,
    crop_garments,
    decode_image,
    letterbox,
    rect_canvas,
    whole_image_crop,
)
from fashionbox.core.postprocessing import DetectorOutput, ImageResult, finish_detections, rescore_detections
from fashionbox.core.serving import group_by_shape

__all__ = ["ImageLevelHeads", "InProcessPipeline", "MaskedResult"]

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
DetectFn = Callable[[U8], list[DetectorOutput]]
ClassifyFn = Callable[[U8], F32]
VerifyFn = Callable[[U8], F32]
ClassifyMasksFn = Callable[[U8], tuple[F32, F32]]


@dataclass(frozen=True)
class MaskedResult:
    """One image's result with its detections' masks as the mask head gives them."""

    result: ImageResult
    crop_masks: F32
    """float32 ``[n, m, m]``: mask probabilities over each detection's crop region, rows as in ``result``."""
    boxes_letterbox: F32
    """float32 ``[n, 4]``: the detections' boxes in letterbox pixels (what the crops were cut around)."""
    info: LetterboxInfo
    embeddings: F32 | None = None
    """float32 ``[n, D]``: each detection's vector (the default model's embedding head), or None."""
    image_embedding: F32 | None = None
    label_probs: F32 | None = None
    """float32 ``[V]``: the image's product-vertical probabilities, or None."""


@dataclass(frozen=True)
class ImageLevelHeads:
    """The default model's attribute network with its image-level heads, as ``postprocess`` uses it: the
    garment crops and each image's whole-photo crop (:func:`fashionbox.core.imaging.whole_image_crop`)
    in one call that returns every output by ONNX name (``probs``, ``masks``, ``embeddings``, ``verticals``)."""

    run: Callable[[U8], dict[str, F32]]
    vertical_labels: tuple[str, ...] = ()
    embedding_model: str = ""
    labels_model: str = ""
    top_k: int = 5
    dtype: str = "float16"


@dataclass
class InProcessPipeline:
    detect: DetectFn
    classify: ClassifyFn
    label_map: LabelMap
    input_size: int
    crop_size: int
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    classify_masks: ClassifyMasksFn | None = None
    """Probs and crop masks in one pass, when the attribute heads have a mask head."""
    image_heads: ImageLevelHeads | None = None
    """The embedding and vertical heads, when the attribute network has them: then every call goes through it."""
    verify: VerifyFn | None = None
    """The second stage, when the attribute network's verifier head is served with this detector: crops ->
    score offsets ``[n, C]`` (with ``image_heads``, its ``score_offsets`` output is used instead)."""
    verify_threshold: float = 0.0
    """The served threshold the re-scored detections are held to again (``rescore_detections``)."""
    letterbox_stride: int = 0
    """A rect letterbox's stride (``RepositorySettings.letterbox_stride``), each image in its own; 0: square."""

    def run(self, images: Sequence[bytes]) -> list[ImageResult | InvalidImageError]:
        """Decode, detect (one batch), crop, classify (one batch), assemble; errors per image."""
        return [r.result if isinstance(r, MaskedResult) else r for r in self._run(images, masks=False)]

    def run_with_masks(self, images: Sequence[bytes]) -> list[MaskedResult | InvalidImageError]:
        """As :meth:`run`, with each detection's crop mask; needs attribute heads with a mask head."""
        if self.classify_masks is None:
            raise ValueError("these attribute heads have no mask head: use a checkpoint trained with one")
        return self._run(images, masks=True)

    def detections(self, images: Sequence[bytes], *,
                   model_version: str = "in-process") -> list[bytes | InvalidImageError]:
        """What the ensemble's DETECTIONS output carries for each image: a serialized
        ``fashionbox.v1.ImageDetections``, masks pasted and encoded as ``postprocess`` does when the
        attribute heads have a mask head; an error per bad image. The in-process equivalent of the
        whole served answer, for baselines that must do the same work as the server."""
        from fashionbox.core.masks import paste_crop_masks
        from fashionbox.core.results import EmbeddingSettings, build_image_detections, top_labels

        heads = self.image_heads
        embedding = EmbeddingSettings(heads.embedding_model, heads.dtype) if heads and heads.embedding_model else None

        out: list[bytes | InvalidImageError] = []
        for item in self._run(images, masks=self.classify_masks is not None):
            if isinstance(item, InvalidImageError):
                out.append(item)
                continue
            result, info = item.result, item.info
            masks = None
            if self.classify_masks is not None:
                pasted = paste_crop_masks(item.crop_masks, item.boxes_letterbox, info,
                                          input_size=self._canvas(info.width, info.height))
                masks = [mask.to_rle() for mask in pasted]
            message = build_image_detections(
                width=info.width, height=info.height, boxes=result.boxes, scores=result.scores,
                categories=result.categories, attribute_scores=result.attribute_scores,
                label_map=self.label_map, model_version=model_version, masks=masks,
                labels=(top_labels(item.label_probs, heads.vertical_labels, heads.top_k)
                        if heads and item.label_probs is not None else ()),
                labels_model=heads.labels_model if heads and item.label_probs is not None else "",
                embeddings=item.embeddings if embedding else None,
                image_embedding=item.image_embedding if embedding else None, embedding=embedding)
            out.append(message.SerializeToString())
        return out

    def _run(self, images: Sequence[bytes], *, masks: bool) -> list[MaskedResult | InvalidImageError]:
        decoded: list[tuple[int, U8, LetterboxInfo]] = []
        results: list[MaskedResult | InvalidImageError | None] = [None] * len(images)
        for i, data in enumerate(images):
            try:
                image = decode_image(data, target_size=self.input_size, limits=self.limits)
                pixels, info = letterbox(image, self.input_size, canvas=self._canvas(image.width, image.height))
            except InvalidImageError as exc:
                results[i] = exc
                continue
            decoded.append((i, pixels, info))
        if decoded:
            detections = self._detect_each_shape([pixels for _, pixels, _ in decoded])
            crops = [crop_garments(pixels, det.boxes, self.crop_size)
                     for (_, pixels, _), det in zip(decoded, detections, strict=True)]
            all_crops = np.concatenate(crops) if crops else np.zeros((0, self.crop_size, self.crop_size, 3), np.uint8)
            probs = np.zeros((0, self.label_map.num_attribute_labels), np.float32)
            crop_masks = np.zeros((0, 0, 0), np.float32)
            extra: dict[str, F32] = {}
            offsets: F32 | None = None
            if self.image_heads is not None:  # garments and whole photos in one call, as postprocess makes it
                n = len(all_crops)
                images_crops = np.concatenate([whole_image_crop(pixels, info, self.crop_size)
                                               for _, pixels, info in decoded])
                outputs = self.image_heads.run(np.concatenate([all_crops, images_crops]))
                probs = outputs[contract.ONNX_ATTRIBUTES_OUTPUT][:n]
                if masks and contract.ONNX_ATTRIBUTES_MASKS in outputs:
                    crop_masks = outputs[contract.ONNX_ATTRIBUTES_MASKS][:n]
                extra = {name: values for name, values in outputs.items()
                         if name in (contract.ONNX_ATTRIBUTES_EMBEDDINGS, contract.ONNX_ATTRIBUTES_VERTICALS)}
                if self.verify is not None:
                    offsets = outputs[contract.ONNX_ATTRIBUTES_SCORE_OFFSETS][:n]
            elif len(all_crops) and masks and self.classify_masks is not None:
                probs, crop_masks = self.classify_masks(all_crops)
            elif len(all_crops):
                probs = self.classify(all_crops)
            if self.verify is not None and offsets is None:
                offsets = (self.verify(all_crops) if len(all_crops)
                           else np.zeros((0, self.label_map.num_categories), np.float32))
            start, total = 0, len(all_crops)
            for k, ((i, _, info), det) in enumerate(zip(decoded, detections, strict=True)):
                stop = start + len(det)
                rows: slice | npt.NDArray[np.int64] = slice(start, stop)
                if offsets is not None:  # the second stage, as postprocess runs it
                    det, kept = rescore_detections(det, offsets[start:stop], score_threshold=self.verify_threshold)
                    rows = kept + start
                result = finish_detections(det, info, probs[rows], self.label_map)
                m = crop_masks.shape[-1]
                image_masks = crop_masks[rows] if len(crop_masks) else np.zeros((len(det), m, m), np.float32)
                vectors = extra.get(contract.ONNX_ATTRIBUTES_EMBEDDINGS)
                verticals = extra.get(contract.ONNX_ATTRIBUTES_VERTICALS)
                results[i] = MaskedResult(
                    result, image_masks, np.asarray(det.boxes, np.float32).reshape(-1, 4), info,
                    embeddings=vectors[rows] if vectors is not None else None,
                    image_embedding=vectors[total + k] if vectors is not None else None,
                    label_probs=verticals[total + k] if verticals is not None else None)
                start = stop
        return [r for r in results if r is not None]

    def _canvas(self, width: int, height: int) -> tuple[int, int]:
        """``(height, width)`` of a ``width x height`` image's letterbox."""
        if self.letterbox_stride:
            return rect_canvas(width, height, self.input_size, self.letterbox_stride)
        return self.input_size, self.input_size

    def _detect_each_shape(self, pixels: Sequence[U8]) -> list[DetectorOutput]:
        """The detector over letterboxes of any shapes, one batch per shape (one with the square letterbox)."""
        found: dict[int, DetectorOutput] = {}
        for members in group_by_shape(enumerate(pixels), batched=False):
            found.update(zip([k for k, _ in members], self.detect(np.stack([image for _, image in members])),
                             strict=True))
        return [found[k] for k in range(len(pixels))]

    # -- constructors ------------------------------------------------------------------------------------

    @classmethod
    def torch_reference(cls, detector_path: Path | None = None, attributes_path: Path | None = None, *,
                        score_threshold: float | None = None,
                        iou_threshold: float = contract.DEFAULT_IOU_THRESHOLD,
                        max_detections: int = contract.DEFAULT_MAX_DETECTIONS,
                        threads: int | None = None, raw_scores: bool = False,
                        verifier: bool | None = None) -> InProcessPipeline:
        """The checkpoints in PyTorch, as ``fashionbox convert`` would serve them: at ``score_threshold``,
        by default the detector's own (a calibrated checkpoint's) or the contract's. ``raw_scores``
        leaves a calibrated detector's scores uncalibrated (what ``fashionbox calibrate`` fits on);
        its threshold is then the contract's unless given. ``verifier``: re-score with the attribute
        network's verifier head (the second stage); None: where the converter would serve it (a head
        fitted to this detector file, :func:`fashionbox.models.verifier_serves`), False: never, True:
        always (an error without one)."""
        import torch

        from fashionbox.core.postprocessing import gather_detections
        from fashionbox.models import default_weights, file_sha256, load_attributes, load_detector, verifier_serves
        from fashionbox.models.nms import NmsSettings, nms_onnx_semantics

        if threads:
            torch.set_num_threads(threads)
        detector_path = detector_path or default_weights("detector")
        detector, label_map = load_detector(detector_path)
        if raw_scores:
            detector.with_calibration()
        classifier, _ = load_attributes(attributes_path or default_weights("attributes"))
        if verifier is None:
            verifier = not raw_scores and verifier_serves(classifier, file_sha256(detector_path),
                                                          label_map.num_categories)
        elif verifier and classifier.verifier_head is None:
            raise ValueError("these attribute heads have no verifier head (fashionbox train --stage verifier)")
        if score_threshold is None:
            score_threshold = detector.config.served_score_threshold
        nms = NmsSettings(score_threshold, iou_threshold, max_detections, max_detections)

        def detect(pixels: U8) -> list[DetectorOutput]:
            with torch.no_grad():
                out = detector(torch.from_numpy(pixels))
                selected = nms_onnx_semantics(out.boxes, out.scores, nms)
            return gather_detections(out.boxes.numpy(), out.scores.numpy(), selected.numpy(),
                                     max_detections=max_detections)

        def classify(crops: U8) -> npt.NDArray[np.float32]:
            with torch.no_grad():
                probs: npt.NDArray[np.float32] = classifier(torch.from_numpy(crops)).numpy()
            return probs

        def classify_masks(crops: U8) -> tuple[F32, F32]:
            with torch.no_grad():
                probs, masks = classifier.predict(torch.from_numpy(crops))
            return probs.numpy(), masks.numpy()

        def verify(crops: U8) -> F32:
            with torch.no_grad():
                out = classifier.outputs(torch.from_numpy(crops))
                offsets: F32 = out[contract.ONNX_ATTRIBUTES_SCORE_OFFSETS].numpy()
            return offsets

        return cls(detect, classify, label_map, detector.config.input_size, classifier.config.crop_size,
                   classify_masks=classify_masks if classifier.mask_size else None,
                   verify=verify if verifier else None, verify_threshold=score_threshold)

    @classmethod
    def from_repository(cls, repository: Path, *, intra_op_threads: int = 1) -> InProcessPipeline:
        """The ONNX graphs of a converted repository, in ONNX Runtime, with its settings."""
        from fashionbox.core.serving import OnnxAttributes, OnnxDetector, OrtSettings

        manifest = json.loads((repository / contract.MANIFEST_FILE).read_text())
        label_map = LabelMap.load(repository / contract.LABELS_FILE)
        export = manifest["export"]
        settings = OrtSettings(intra_op_threads=intra_op_threads)
        detector = OnnxDetector(repository / contract.DETECTOR_MODEL / "1" / "model.onnx", settings,
                                max_detections=int(export["nms"]["max_detections"]))
        # the fused layout (RepositorySettings.layout) runs the attribute network inside postprocess
        home = contract.POSTPROCESS_MODEL if manifest.get("layout") == "fused" else contract.ATTRIBUTES_MODEL
        attributes = OnnxAttributes(repository / home / "1" / "model.onnx", settings,
                                    num_attribute_labels=label_map.num_attribute_labels)
        verifier = manifest.get("verifier")  # {"classes": C, "score_threshold": t} where it is served

        def verify(crops: U8) -> F32:
            name = contract.ONNX_ATTRIBUTES_SCORE_OFFSETS
            return attributes.run(crops, (name,))[name]

        return cls(detector.detect, attributes.classify, label_map, int(export["input_size"]),
                   int(export["crop_size"]),
                   classify_masks=attributes.classify_with_masks if attributes.mask_size else None,
                   image_heads=_repository_heads(manifest, attributes),
                   verify=verify if isinstance(verifier, dict) else None,
                   verify_threshold=float(verifier["score_threshold"]) if isinstance(verifier, dict) else 0.0,
                   letterbox_stride=int(export.get("letterbox_stride", 0)))


def _repository_heads(manifest: dict[str, object], attributes: object) -> ImageLevelHeads | None:
    """The image-level heads a repository's ``postprocess`` serves from its attribute graph, if any (the
    manifest's ``image_level``: ``postprocess``'s :class:`fashionbox.core.serving.ImageLevelParameters`)."""
    from fashionbox.core.serving import ImageLevelParameters, OnnxAttributes, Parameters

    recorded = manifest.get("image_level")
    if not isinstance(attributes, OnnxAttributes) or not isinstance(recorded, dict):
        return None
    params = ImageLevelParameters.from_parameters(Parameters({str(k): str(v) for k, v in recorded.items()}))
    if "attributes" not in (params.labels_from, params.embeddings_from):
        return None
    names = tuple(attributes.outputs)

    def run(crops: U8) -> dict[str, F32]:
        return attributes.run(crops, names)

    return ImageLevelHeads(run, vertical_labels=params.image_label_names if params.labels_from == "attributes" else (),
                           embedding_model=params.embedding_model if params.embeddings_from == "attributes" else "",
                           labels_model=params.labels_model, top_k=params.label_top_k, dtype=params.embedding_dtype)
