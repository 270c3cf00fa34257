"""The CPU runtimes at convert time: OpenVINO checked against ONNX Runtime, and ``auto``'s measured choice.

``fashionbox convert --target cpu`` serves the exported ONNX graphs with ONNX Runtime or OpenVINO
(:mod:`fashionbox.core.openvino_runtime`), fp32, or bf16 in OpenVINO where the CPU has AMX or
AVX512-BF16. Which is faster depends on the host (docs/FIELD_NOTES.md, "CPU runtimes differ by
host"), so ``--runtime auto`` measures it here, on the converting host, on the graphs just exported:

- :func:`check_openvino`: OpenVINO's answers against ONNX Runtime's on the converter's comparison
  inputs. fp32 is held to the converter's tolerances (``ConvertOptions.tolerance``), detection by
  detection (tied scores may come in either order: :data:`SCORE_TIE`); bf16 rounds
  activations to 8 bits of mantissa, so it is held to :data:`BF16_TOLERANCE` over detections
  matched between the two (same class, IoU >= 0.5), with a bound on the share of detections that
  only one side keeps (those sitting at the score threshold flip). Box mAP and attribute accuracy
  on held-out scenes are the quality bar proper (tests/test_openvino_quality.py, and the benchmark).
- :func:`choose_cpu_runtime`: time every candidate that passed, interleaved, medians of
  :data:`TIMING_ROUNDS` rounds (fewer past :data:`TIMING_BUDGET_S`), and pick the fastest (ONNX
  Runtime unless another beats it by :data:`MARGIN`); the timings and the CPU they were taken on
  go into the repository's manifest. The torch runtime (PyTorch in the python backend) is a
  candidate too where it could serve the repository (:class:`TorchCandidate`: a family with a torch
  runner, the square letterbox, the steps layout): PyTorch eager is as fast as ONNX Runtime or
  faster on some networks and hosts (OWLv2's full-attention ViT on an AVX2 EPYC, BENCHMARKS.md). It is
  held to the converter's fp32 tolerances in served order, as ``--runtime torch`` is.

bf16 is a candidate of ``auto`` only when asked for (``--precision bf16``): it changes answers at
the threshold, which is the user's trade to make, not the converter's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fashionbox.converter.errors import ConvertError
from fashionbox.converter.export import ComparisonReport, mask_logits_error
from fashionbox.core.openvino_runtime import (
    INSTALL_HINT,
    OpenVinoAttributes,
    OpenVinoDetector,
    OpenVinoError,
    OpenVinoImageBranch,
    check_precision,
    host_cpu,
    import_openvino,
)
from fashionbox.core.postprocessing import DetectorOutput
from fashionbox.core.serving import OnnxAttributes, OnnxDetector, OnnxImageBranch, OrtSettings

__all__ = [
    "BF16_TOLERANCE",
    "MARGIN",
    "MIN_TIMING_ROUNDS",
    "PROBE_GARMENTS",
    "TEXT_PROBES",
    "TIMING_BUDGET_S",
    "TIMING_ROUNDS",
    "BranchProbe",
    "CpuChoice",
    "TorchCandidate",
    "check_bf16_host",
    "check_openvino",
    "check_text_tower",
    "choose_cpu_runtime",
    "compare_runners",
    "pick",
]

log = logging.getLogger(__name__)

BF16_TOLERANCE: dict[str, float] = {"scores": 0.03, "unmatched_fraction": 0.05, "probs": 0.03}
"""bf16 against ONNX Runtime fp32: on detections matched by class and IoU >= 0.5, the largest score
difference; the share of detections kept by one side only; the largest attribute probability
difference. Measured on the default models (30 scenes and random pixels): 0.009, 0.016 and 0.018.
Boxes are bounded by the match (IoU >= 0.5) and recorded (``matched_boxes``, letterbox px: about 5
on scenes, 15 on random pixels, whose low-score boxes are ill-defined), not held to a figure."""
TIMING_ROUNDS = 9
"""Interleaved rounds per candidate in ``auto``'s timing (each: one detector batch of 1, one
attribute batch of :data:`PROBE_GARMENTS`); the median decides."""
PROBE_GARMENTS = 8
"""Garments a photo carries in ``auto``'s probe: the attribute heads' batch beside the detector's single
photo, and the embedder's garments besides the photo. A guess for street and editorial photos;
``fashionbox convert --auto-garments N`` says what the collection holds (1 for product shots of one
garment), so the probe weighs the detector and the heads as serving will."""
TIMING_BUDGET_S = 60.0
"""After this long (the warm-up included), ``auto`` stops timing at the end of a round once it has
:data:`MIN_TIMING_ROUNDS`: a ViT of 10 s an image (OWLv2 at 960 px on 2 cores) would otherwise spend
minutes of a conversion on it. The manifest records the rounds run."""
MIN_TIMING_ROUNDS = 3
MARGIN = 0.10
"""Another runtime is chosen over ONNX Runtime (the reference every candidate is checked against) only
when its probe is this much faster. Closer, the probe cannot tell them apart: OpenVINO fp32 measured
5 % faster on the default models served 0.5 % apart in p50 (BENCHMARKS.md, "The torch runtime
beside them"), and OWL-ViT's pick flipped between runs at 4 % ("What `auto` costs a conversion");
bf16 wins by 30-45 % where the CPU has it."""

REFERENCE = "onnxruntime/fp32"
MATCH_IOU = 0.5
TWIN_PX = 0.05
"""Boxes whose corners agree within this (letterbox px; the converter's fp32 box tolerance) are twins
whatever their IoU: a degenerate box (no width or height, as a random model's may be) has none."""
SCORE_TIE = 1e-5
"""Scores closer than this to a full list's last score are ties at its cut: either runtime may keep
another of them. Ties also make the served order ambiguous (two runtimes may serve equal scores in
either order), so exact parity pairs detections by identity, not by position: a confident
detection's sigmoid saturates at exactly 1.0 in fp32, so ties come with trained models too."""

U8 = npt.NDArray[np.uint8]


def check_bf16_host() -> None:
    """Refuse bf16 on a converting host without AMX or AVX512-BF16 (it could not be checked here)."""
    try:
        check_precision("bf16")
    except OpenVinoError as exc:
        raise ConvertError(f"{exc} (the converter checks bf16's quality on this host before writing it)") from exc


def _iou(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _overlap(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """IoU; above any IoU for twins (:data:`TWIN_PX`), the closer the higher (a random model's
    degenerate boxes come in near copies: each takes its own)."""
    distance = float(np.abs(a - b).max())
    return 2.0 - distance / TWIN_PX if distance <= TWIN_PX else _iou(a, b)


def _match(ours: DetectorOutput, theirs: DetectorOutput) -> list[tuple[int, int]]:
    """Greedy by our score: each of our detections takes the unused same-class one of highest IoU."""
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for i in np.argsort(-ours.scores, kind="stable"):
        best, best_iou = -1, MATCH_IOU
        for j in range(len(theirs)):
            if j in used or int(theirs.classes[j]) != int(ours.classes[i]):
                continue
            iou = _overlap(ours.boxes[i], theirs.boxes[j])
            if iou >= best_iou:
                best, best_iou = j, iou
        if best >= 0:
            used.add(best)
            pairs.append((int(i), best))
    return pairs


def _differ(ours: DetectorOutput, theirs: DetectorOutput, pairs: Sequence[tuple[int, int]],
            max_detections: int | None) -> bool:
    """Whether one image's detections differ between two runtimes: other counts, or a detection without
    its twin (``pairs``) on the other side, but for those tied at a full list's last score."""
    if len(ours) != len(theirs):
        return True
    cut = max(float(ours.scores.min()), float(theirs.scores.min())) \
        if max_detections is not None and len(ours) >= max_detections else None
    paired_ours, paired_theirs = {i for i, _ in pairs}, {j for _, j in pairs}
    alone = [float(ours.scores[i]) for i in range(len(ours)) if i not in paired_ours] + \
        [float(theirs.scores[j]) for j in range(len(theirs)) if j not in paired_theirs]
    return any(cut is None or score > cut + SCORE_TIE for score in alone)


def compare_runners(name: str, detector: Any, attributes: Any, reference_detector: Any, reference_attributes: Any,
                    detector_batches: Sequence[U8], attribute_batches: Sequence[U8], *,
                    matched: bool = False, max_detections: int | None = None) -> list[ComparisonReport]:
    """Two runtimes' runners, answer for answer: ``detector``/``attributes`` against the references.

    Detections are paired with their twins on the other side (same class, IoU >= 0.5 or corners within
    :data:`TWIN_PX`, greedy by score), not by position: which of several tied scores is served first is
    not compared.
    ``detections_count_mismatch`` counts the images whose detections differ: other counts, or a
    detection without a twin, but where the list is full (``max_detections``) for those tied at its
    last score (either runtime may keep another of them). Exact parity (``matched`` false, the
    converter's tolerance keys): ``boxes``/``scores``, the largest differences between twins.
    ``matched`` (bf16): the same as ``matched_boxes``, ``matched_scores``, and ``unmatched_fraction``
    (detections one side only keeps, over the reference's count). A segmenting graph (YOLO-seg, RF-DETR-Seg)
    adds ``mask_logits``: the largest difference between twins' mask logits over the prototype grid.
    ``probs``: the largest attribute probability difference.
    """
    errors = {"detections_count_mismatch": 0.0, "matched_boxes": 0.0, "matched_scores": 0.0,
              "unmatched_fraction": 0.0}
    unmatched = total = samples = 0
    masks: float | None = None
    for batch in detector_batches:
        answers, references = detector.detect(batch), reference_detector.detect(batch)
        if len(answers) != len(batch) or len(references) != len(batch):
            # a runtime that compiled the graph wrongly for some shape (seen: OpenVINO on a batched MatMul)
            raise ConvertError(f"{name}: {len(answers)} answers (the reference {len(references)}) for a batch of "
                               f"{len(batch)} images of {batch.shape[1]}x{batch.shape[2]}: the runtime does not run "
                               "this graph as ONNX Runtime does")
        for ours, theirs in zip(answers, references, strict=True):
            pairs = _match(ours, theirs)
            errors["detections_count_mismatch"] += float(_differ(ours, theirs, pairs, max_detections))
            for i, j in pairs:
                box = float(np.abs(ours.boxes[i] - theirs.boxes[j]).max())
                errors["matched_boxes"] = max(errors["matched_boxes"], box)
                errors["matched_scores"] = max(errors["matched_scores"], abs(float(ours.scores[i] - theirs.scores[j])))
            if ours.protos is not None and theirs.protos is not None:  # a segmenting graph: the twins' mask logits
                masks = max(masks or 0.0, mask_logits_error(ours, theirs, pairs))
            unmatched += len(ours) + len(theirs) - 2 * len(pairs)
            total += len(theirs)
        samples += len(batch)
    errors["unmatched_fraction"] = unmatched / max(total, 1)
    if not matched:
        errors = {"boxes": errors["matched_boxes"], "scores": errors["matched_scores"],
                  "detections_count_mismatch": errors["detections_count_mismatch"]}
    if masks is not None:
        errors["mask_logits"] = masks
    worst = max(float(np.abs(attributes.classify(b) - reference_attributes.classify(b)).max())
                for b in attribute_batches)
    return [ComparisonReport(f"{name} detector", errors, samples),
            ComparisonReport(f"{name} attributes", {"probs": worst}, sum(len(b) for b in attribute_batches))]


def _over(reports: Sequence[ComparisonReport], precision: str, tolerance: dict[str, float]) -> dict[str, float]:
    """What exceeds the tolerance, as ``"<report's model>: <key>"``: fp32 every key of every report
    (:meth:`ComparisonReport.over`: served order, exact parity, a segmenting graph's mask logits too), bf16
    on matched detections (its mask logits recorded, not bounded: 8 bits of mantissa)."""
    if precision != "bf16":
        return {f"{report.model}: {key}": value for report in reports for key, value in report.over(tolerance).items()}
    checked = [("matched_scores", "scores"), ("unmatched_fraction", "unmatched_fraction"), ("probs", "probs")]
    over: dict[str, float] = {}
    for report in reports:
        for key, limit in checked:
            value = report.max_abs_error.get(key)
            if value is not None and value > tolerance.get(limit, 0.0):
                over[f"{report.model}: {key}"] = value
    return over


@dataclass(frozen=True)
class _Graphs:
    detector_onnx: Path
    attributes_onnx: Path
    max_detections: int
    num_attribute_labels: int
    threads: int

    def onnxruntime(self) -> tuple[OnnxDetector, OnnxAttributes]:
        settings = OrtSettings(intra_op_threads=self.threads)
        return (OnnxDetector(self.detector_onnx, settings, max_detections=self.max_detections),
                OnnxAttributes(self.attributes_onnx, settings, num_attribute_labels=self.num_attribute_labels))

    def openvino(self, precision: str) -> tuple[OpenVinoDetector, OpenVinoAttributes]:
        settings = OrtSettings(intra_op_threads=self.threads)
        return (OpenVinoDetector(self.detector_onnx, settings, max_detections=self.max_detections, precision=precision),
                OpenVinoAttributes(self.attributes_onnx, settings, num_attribute_labels=self.num_attribute_labels,
                                   precision=precision))


def check_openvino(detector_onnx: Path, attributes_onnx: Path, detector_batches: Sequence[U8],
                   attribute_batches: Sequence[U8], *, precision: str, tolerance: dict[str, float],
                   max_detections: int, num_attribute_labels: int,
                   branches: Sequence[BranchProbe] = ()) -> list[ComparisonReport]:
    """OpenVINO at ``precision`` against ONNX Runtime; :class:`ConvertError` beyond tolerance.

    fp32 is held to ``tolerance`` (the converter's), bf16 to :data:`BF16_TOLERANCE`; the image-level
    networks (``branches``) too, as ``auto`` checks them (bf16's recorded).
    """
    graphs = _Graphs(detector_onnx, attributes_onnx, max_detections, num_attribute_labels, threads=1)
    reference = graphs.onnxruntime()
    reports, runners = _compare(graphs, precision, detector_batches, attribute_batches, reference)
    limits = BF16_TOLERANCE if precision == "bf16" else tolerance
    over = _over(reports, precision, limits)
    excluded: dict[str, str] = {}
    _branch_runners(branches, {REFERENCE: reference, f"openvino/{precision}": runners}, 1, tolerance, excluded,
                    reports)
    if over or excluded:
        raise ConvertError(f"OpenVINO {precision} differs from ONNX Runtime beyond tolerance: "
                           f"{over or excluded[f'openvino/{precision}']} (tolerance {limits})")
    return reports


def _compare(graphs: _Graphs, precision: str, detector_batches: Sequence[U8], attribute_batches: Sequence[U8],
             reference: tuple[Any, Any]) -> tuple[list[ComparisonReport], tuple[Any, Any]]:
    """OpenVINO's runners at ``precision`` against ``reference`` (ONNX Runtime's), and the runners."""
    try:
        runners = graphs.openvino(precision)
    except OpenVinoError as exc:
        raise ConvertError(str(exc)) from exc
    reports = compare_runners(f"openvino {precision}", *runners, *reference, detector_batches, attribute_batches,
                              matched=precision == "bf16", max_detections=graphs.max_detections)
    return reports, runners


TEXT_PROBES = ("a red floral dress", "black leather ankle boots with a low block heel", "striped shirt", "x")
"""What :func:`check_text_tower` embeds: texts of other lengths, so that the batch pads."""


def check_text_tower(onnx: Path, tokenizer_dir: Path, *, dimension: int, precision: str,
                     tolerance: dict[str, float]) -> ComparisonReport:
    """An embedder's text tower (``text_embedder``) in OpenVINO against ONNX Runtime: :data:`TEXT_PROBES` as
    one padded batch and the first alone (another shape). fp32 is held to the converter's ``embeddings``
    tolerance (:class:`ConvertError` beyond it), bf16 recorded, as the image-level networks' are."""
    from fashionbox.core.openvino_runtime import OpenVinoTextEmbedder
    from fashionbox.core.serving import OnnxTextEmbedder

    settings = OrtSettings(intra_op_threads=1)
    reference = OnnxTextEmbedder(onnx, tokenizer_dir, settings, dimension=dimension)
    try:
        ours = OpenVinoTextEmbedder(onnx, tokenizer_dir, settings, dimension=dimension, precision=precision)
    except OpenVinoError as exc:
        raise ConvertError(str(exc)) from exc
    error = max(float(np.abs(ours.embed(texts) - reference.embed(texts)).max())
                for texts in (list(TEXT_PROBES), list(TEXT_PROBES[:1])))
    report = ComparisonReport(f"openvino {precision} text_embedder", {"embeddings": error}, len(TEXT_PROBES) + 1)
    limit = tolerance.get("embeddings", 0.0)
    if precision != "bf16" and error > limit:
        raise ConvertError(f"OpenVINO {precision} runs the text tower beyond tolerance: embeddings {error:.2e} "
                           f"(tolerance {limit:.2e}); convert with --runtime onnxruntime")
    return report


@dataclass(frozen=True)
class TorchCandidate:
    """The torch runtime as a candidate of ``auto``: its CPU runners (fp32) and their check against the
    ONNX graphs (:func:`fashionbox.converter.export.compare_torch_runners`, the same as ``--runtime torch``)."""

    detector: Any
    attributes: Any
    reports: list[ComparisonReport]


@dataclass(frozen=True)
class BranchProbe:
    """An image-level network served beside the detector (``--classifier``, ``--embedder``) in ``auto``'s
    probe: each candidate runs it too (its ONNX graph, or for the torch runtime its transformers folder),
    checked against ONNX Runtime and timed as served per photo: a classifier on the photo (batch 1), an
    embedder on ``garments`` garments and the photo (batch 9 by default, one call as ``postprocess``
    makes it)."""

    kind: str
    """``classifier`` or ``embedder``."""
    onnx: Path
    output: str
    size: int
    height: int
    width: int
    torch_folder: Path | None = None
    """What :class:`fashionbox.models.torch_runtime.TorchImageBranch` loads (the torch candidate only)."""
    garments: int = PROBE_GARMENTS
    """Garments a photo carries (:data:`PROBE_GARMENTS`)."""

    @property
    def batch(self) -> int:
        return 1 if self.kind == "classifier" else self.garments + 1

    @property
    def key(self) -> str:
        """Its comparison key: the converter's tolerance for the classifier's probabilities or the vectors."""
        return "probs" if self.kind == "classifier" else "embeddings"

    def runner(self, runtime: str, precision: str, threads: int) -> Any:
        settings = OrtSettings(intra_op_threads=threads)
        if runtime == "torch":
            from fashionbox.models.torch_runtime import TorchImageBranch

            if self.torch_folder is None:
                raise ConvertError(f"the {self.kind}'s transformers folder is needed for the torch runtime")
            return TorchImageBranch(self.torch_folder, device="cpu", precision="fp32", size=self.size)
        if runtime == "openvino":
            return OpenVinoImageBranch(self.onnx, settings, output=self.output, size=self.size, precision=precision)
        return OnnxImageBranch(self.onnx, settings, output=self.output, size=self.size)

    @functools.cached_property
    def images(self) -> U8:
        """The probe's photos (random pixels, fixed seed), made once: every candidate runs the same batch."""
        return np.random.default_rng(5).integers(0, 256, (self.batch, self.height, self.width, 3), dtype=np.uint8)


@dataclass(frozen=True)
class CpuChoice:
    """``auto``'s pick on this host, and the record of why (the manifest's ``cpu_runtime``)."""

    runtime: str
    precision: str
    reports: list[ComparisonReport]
    record: dict[str, Any] = field(default_factory=dict)


def _time_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000.0


def choose_cpu_runtime(detector_onnx: Path, attributes_onnx: Path, detector_batches: Sequence[U8],
                       attribute_batches: Sequence[U8], *, allow_bf16: bool, tolerance: dict[str, float],
                       max_detections: int, num_attribute_labels: int, threads: int = 1,
                       rounds: int = TIMING_ROUNDS, budget_s: float = TIMING_BUDGET_S,
                       torch: TorchCandidate | None = None, branches: Sequence[BranchProbe] = (),
                       not_candidates: dict[str, str] | None = None, garments: int = PROBE_GARMENTS) -> CpuChoice:
    """Time ONNX Runtime fp32, OpenVINO fp32, (``allow_bf16``) OpenVINO bf16 and (``torch``) the torch
    runtime; the fastest that passed (:func:`pick`: ONNX Runtime unless another beats it by :data:`MARGIN`).

    ``branches``: the image-level networks the repository serves, run by every candidate too
    (:class:`BranchProbe`): checked and timed with the rest, since a pick moves them as well.
    A candidate that fails its check, or OpenVINO when it is not installed, is left out and the
    reason recorded, as are ``not_candidates`` (``runtime/precision`` -> why this repository could not
    serve it). Each round runs every candidate once (a detector batch of 1 and an attribute batch of
    ``garments``, as one image with its garments: :data:`PROBE_GARMENTS`), in a rotating order,
    ``rounds`` of them, or past ``budget_s`` seconds no more than :data:`MIN_TIMING_ROUNDS` (fewer if
    ``rounds`` is); the score is the median. Every candidate runs ``threads`` threads per network
    (PyTorch's pool set to it while timing).
    """
    graphs = _Graphs(detector_onnx, attributes_onnx, max_detections, num_attribute_labels, threads)
    runners: dict[str, tuple[Any, Any]] = {REFERENCE: graphs.onnxruntime()}
    excluded: dict[str, str] = dict(not_candidates or {})
    reports: list[ComparisonReport] = []
    precisions: tuple[str, ...] = ("fp32", "bf16") if allow_bf16 else ("fp32",)
    try:
        import_openvino()
    except OpenVinoError:
        excluded.update({f"openvino/{p}": f"not installed ({INSTALL_HINT})" for p in precisions})
        precisions = ()
    for precision in precisions:
        key = f"openvino/{precision}"
        candidate_reports, candidate = _compare(graphs, precision, detector_batches, attribute_batches,
                                                runners[REFERENCE])
        limits = BF16_TOLERANCE if precision == "bf16" else tolerance
        over = _over(candidate_reports, precision, limits)
        reports += candidate_reports
        if over:
            log.warning("auto: %s left out, it differs from ONNX Runtime beyond tolerance: %s", key, over)
            excluded[key] = f"beyond tolerance {limits}: {over}"
            continue
        runners[key] = candidate
    if torch is not None:
        reports += torch.reports
        over = _over(torch.reports, "fp32", tolerance)
        if over:
            log.warning("auto: torch/fp32 left out, it differs from ONNX Runtime beyond tolerance: %s", over)
            excluded["torch/fp32"] = f"beyond tolerance {tolerance}: {over}"
        else:
            runners["torch/fp32"] = (torch.detector, torch.attributes)
    with _torch_threads(threads if "torch/fp32" in runners else 0):
        branch_runners = _branch_runners(branches, runners, threads, tolerance, excluded, reports)
        pixels, crops = _first_rows(detector_batches, 1), _first_rows(attribute_batches, garments)
        calls: dict[str, dict[str, Callable[[], object]]] = {
            name: {"detector_b1": functools.partial(detector.detect, pixels),
                   f"attributes_b{garments}": functools.partial(attributes.classify, crops),
                   **{f"{probe.kind}_b{probe.batch}": functools.partial(branch_runners[name][probe.kind].run,
                                                                         probe.images) for probe in branches}}
            for name, (detector, attributes) in runners.items()}
        samples = _interleaved(calls, rounds, budget_s)
    names = list(runners)
    timings = {name: {part: round(statistics.median(values), 3) for part, values in parts.items()}
               for name, parts in samples.items()}
    for parts in timings.values():
        parts["total"] = round(sum(parts.values()), 3)
    chosen, fastest = pick(timings), min(names, key=lambda n: timings[n]["total"])
    runtime, precision = chosen.split("/")
    log.info("auto: %s chosen on %s (%s)%s", chosen, host_cpu().model,
             ", ".join(f"{n} {t['total']:.2f} ms" for n, t in timings.items()),
             f"; {fastest} is faster by less than {MARGIN:.0%}" if fastest != chosen else "")
    record = {"chosen": chosen, "fastest": fastest, "margin": MARGIN,
              "timings_ms": timings, "excluded": excluded,
              "rounds": len(samples[chosen]["detector_b1"]), "threads": threads, "garments_per_photo": garments,
              "measured": f"median of interleaved rounds: detector batch 1 + attributes batch {garments}"
                          + "".join(f" + {probe.kind} batch {probe.batch}" for probe in branches),
              "cpu": host_cpu().as_dict()}
    return CpuChoice(runtime, precision, reports, record)


def pick(timings: dict[str, dict[str, float]], margin: float = MARGIN) -> str:
    """The fastest candidate by ``total`` ms, unless it beats ONNX Runtime fp32 by less than ``margin``."""
    fastest = min(timings, key=lambda name: timings[name]["total"])
    if REFERENCE in timings and timings[fastest]["total"] > (1.0 - margin) * timings[REFERENCE]["total"]:
        return REFERENCE
    return fastest


def _interleaved(calls: dict[str, dict[str, Callable[[], object]]], rounds: int,
                 budget_s: float = TIMING_BUDGET_S) -> dict[str, dict[str, list[float]]]:
    """Each candidate's times (ms) per part and round, the candidates in a rotating order, after a warm-up
    call each; past ``budget_s`` no round starts once :data:`MIN_TIMING_ROUNDS` are done."""
    started = time.perf_counter()
    names = list(calls)
    samples: dict[str, dict[str, list[float]]] = {n: {part: [] for part in calls[n]} for n in names}
    for parts in calls.values():  # warm-up: first calls allocate
        for call in parts.values():
            call()
    for round_index in range(rounds):
        if round_index >= MIN_TIMING_ROUNDS and time.perf_counter() - started > budget_s:
            break
        for k in range(len(names)):
            name = names[(round_index + k) % len(names)]
            for part, call in calls[name].items():
                samples[name][part].append(_time_ms(call))
    return samples


def _branch_runners(branches: Sequence[BranchProbe], runners: dict[str, tuple[Any, Any]], threads: int,
                    tolerance: dict[str, float], excluded: dict[str, str],
                    reports: list[ComparisonReport]) -> dict[str, dict[str, Any]]:
    """Each candidate's runners of the image-level networks, checked against ONNX Runtime's on the probe's
    images; a candidate whose branch differs beyond tolerance (fp32; bf16's recorded) leaves ``runners``
    for ``excluded``, its reports added to ``reports``."""
    out: dict[str, dict[str, Any]] = {name: {} for name in runners}
    if not branches:
        return out
    out[REFERENCE] = {probe.kind: probe.runner("onnxruntime", "fp32", threads) for probe in branches}
    expected = {probe.kind: out[REFERENCE][probe.kind].run(probe.images) for probe in branches}
    for name in [n for n in runners if n != REFERENCE]:
        runtime, precision = name.split("/")
        over: dict[str, float] = {}
        for probe in branches:
            runner = out[name][probe.kind] = probe.runner(runtime, precision, threads)
            error = float(np.abs(runner.run(probe.images) - expected[probe.kind]).max())
            reports.append(ComparisonReport(f"{runtime} {precision} {probe.kind}", {probe.key: error}, probe.batch))
            if precision == "fp32" and error > tolerance.get(probe.key, 0.0):
                over[f"{probe.kind}: {probe.key}"] = error
        if over:
            log.warning("auto: %s left out, its image-level networks differ from ONNX Runtime: %s", name, over)
            excluded[name] = f"beyond tolerance {tolerance}: {over}"
            del runners[name], out[name]
    return out


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op pool at ``threads`` (as a served instance's), restored after; 0: untouched."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _first_rows(batches: Sequence[U8], rows: int) -> U8:
    """``rows`` rows of the batches shaped as the first (a rect letterbox's comparison adds other shapes)."""
    joined = np.concatenate([batch for batch in batches if batch.shape[1:] == batches[0].shape[1:]])
    while len(joined) < rows:
        joined = np.concatenate([joined, joined])
    return np.ascontiguousarray(joined[:rows])
