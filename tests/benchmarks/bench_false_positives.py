"""False positives and calibration of detectors, before and after, on held-out generated scenes.

    .venv/bin/python tests/benchmarks/bench_false_positives.py [--images 200] [--seed 7] \
        [--negatives 100] [--negative-seed 9] [--detector NAME=PATH|git:REV|shipped ...] \
        [--attributes NAME=PATH|git:REV|shipped ...] [--no-verifier NAME ...] [--all-kinds] [--closeups] [--noise N]

For each detector (default: ``before``, the detector shipped before hard negatives, read from the
git commit that added it, and ``after``, the shipped one), through the in-process PyTorch reference
pipeline (the served pipeline equals it detection for detection: bench_quality.py) at its served
score threshold (a calibrated detector's own, in its calibrated units; else 0.3), on its served
scores (calibrated where it is: ``fashionbox calibrate``), with the attribute checkpoint given for
that name (``--attributes NAME=...``; default the shipped one) and its verifier head (the second
stage: each detection re-scored by its crop) where it was fitted to that detector, unless
``--no-verifier NAME``:

* distractor-only scenes (people without the labelled garments, hands, faces, furniture, objects,
  animal-like shapes, text, textures, clutter; no garment) and empty scenes (a background and
  nothing on it), seeds ``scene_seed(negative_seed, i)``, disjoint from training (seed 1) and the
  quality seed: detections per photo above 0.3 and above 0.5 (goal: none above 0.5, at most one
  above 0.3);
* with ``--all-kinds``, the same seeds painted with every kind of distractor, the opt-in ``shapes``
  (a collage of ellipses, boxes and blobs, flat or in the garments' textile patterns) included;
* with ``--closeups``, the same seeds as close-ups: one or two distractors filling the frame, as a
  pet, a chair or a face photographed up close (``DistractorConfig.closeup_probability``);
* with ``--noise N``, N photos of coloured 1/f noise (texture with no object);
* the normal held-out scenes of ``bench_quality.py`` (seed 7): box mAP, mAP@.5, attribute
  accuracy (bars 0.60, 0.90, 0.90), and the expected calibration error of the detections
  (``fashionbox.commands.calibration``: right = same category at IoU >= 0.5; 10 and 15 bins).

Writes tests/benchmarks/results/false_positives.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = "models/fashionbox/models/weights/detector.safetensors"
BEFORE = "git:68be8b8514be10bf77e4a5afc559137230571ce0"
"""The commit that holds the detector trained without distractors (the one shipped before issue 18)."""
THRESHOLDS = (0.3, 0.5)


def _noise_photo(rng: Any, size: tuple[int, int] = (640, 480)) -> bytes:
    """A JPEG of coloured noise with a 1/f^alpha amplitude spectrum (alpha in [1, 1.6], natural images'
    range), channels mixed so colours correlate: texture with no object in it."""
    import io

    import numpy as np
    from PIL import Image

    width, height = size
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0
    alpha = rng.uniform(1.0, 1.6)
    planes = [np.fft.irfft2((rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius**alpha,
                            s=(height, width)) for _ in range(3)]
    pixels = np.stack(planes, -1) @ (np.eye(3) + 0.3 * rng.normal(size=(3, 3)))
    pixels = (pixels - pixels.mean()) / pixels.std()
    pixels = 128 + pixels * rng.uniform(30, 60) + 30 * rng.normal(size=3)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _resolve(spec: str, tmp: Path, name: str, kind: str = "detector") -> Path:
    from fashionbox.models import default_weights

    if spec == "shipped":
        return default_weights(kind)  # type: ignore[arg-type]
    if spec.startswith("git:"):
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{spec[4:]}:{WEIGHTS.replace('detector', kind)}"],
                              check=True, capture_output=True).stdout
        path = tmp / f"{name}.safetensors"
        path.write_bytes(blob)
        return path
    return Path(spec)


def _per_photo(predictions: list[list[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"photos": len(predictions)}
    for t in THRESHOLDS:
        counts = [sum(1 for p in preds if p.score > t) for preds in predictions]
        out[f"above_{t}"] = {
            "mean_per_photo": round(sum(counts) / max(1, len(counts)), 4),
            "max_per_photo": max(counts, default=0),
            "photos_with_any": sum(1 for c in counts if c > 0),
            "photos_with_more_than_one": sum(1 for c in counts if c > 1),
        }
    out["top_score"] = round(max((p.score for preds in predictions for p in preds), default=0.0), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="normal held-out scenes (bench_quality's)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--negatives", type=int, default=100, help="distractor-only and empty scenes, each")
    parser.add_argument("--negative-seed", type=int, default=9)
    parser.add_argument("--detector", action="append", metavar="NAME=SPEC",
                        help=f"a detector to measure: a .safetensors path, git:REV or shipped "
                             f"(default: before={BEFORE} after=shipped)")
    parser.add_argument("--attributes", action="append", default=[], metavar="NAME=SPEC",
                        help="the attribute checkpoint for detector NAME (default: shipped)")
    parser.add_argument("--no-verifier", action="append", default=[], metavar="NAME",
                        help="measure detector NAME without the verifier head's second stage")
    parser.add_argument("--all-kinds", action="store_true",
                        help="also the negative seeds painted with every distractor kind, 'shapes' (patterned "
                             "ellipses, boxes and blobs) included: 'distractor_all_kinds'")
    parser.add_argument("--closeups", action="store_true",
                        help="also the negative seeds as close-ups (a pet, a chair, a face filling the frame): "
                             "'closeup'")
    parser.add_argument("--noise", type=int, default=0, metavar="N",
                        help="also N photos of coloured 1/f noise (natural images' spectrum, no object at all): "
                             "'noise'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/false_positives.json")
    args = parser.parse_args(argv)

    import numpy as np

    from fashionbox.commands.calibration import (
        apply_platt,
        detection_outcomes,
        expected_calibration_error,
        fit_platt,
        reliability_table,
    )
    from fashionbox.commands.evaluation import EvalSample, evaluate, heldout_samples, predictions_from_result
    from fashionbox.models import file_sha256, load_detector
    from fashionbox.models.pipeline import InProcessPipeline
    from fashionbox.synth.distractors import DISTRACTOR_KINDS, DistractorConfig, render_distractor_scene
    from fashionbox.training.data import scene_seed

    specs = dict(s.split("=", 1) for s in (args.detector or [f"before={BEFORE}", "after=shipped"]))
    attribute_specs = dict(s.split("=", 1) for s in args.attributes)
    unknown = sorted((set(attribute_specs) | set(args.no_verifier)) - set(specs))
    if unknown:
        parser.error(f"--attributes / --no-verifier name no --detector: {unknown}")
    normal = heldout_samples(args.images, args.seed)
    def photos(config: DistractorConfig | None) -> list[bytes]:
        """The negative seeds without garments, painted with ``config`` (the defaults when None)."""
        return [render_distractor_scene(scene_seed(args.negative_seed, i), config=config).encode(quality=90)
                for i in range(args.negatives)]

    negatives = {"distractor_only": photos(None), "empty": photos(DistractorConfig(min_items=0, max_items=0))}
    if args.closeups:  # the same seeds as close-ups: one or two distractors filling the frame
        negatives["closeup"] = photos(DistractorConfig(closeup_probability=1.0))
    if args.noise:
        negatives["noise"] = [_noise_photo(np.random.default_rng([args.negative_seed, i])) for i in range(args.noise)]
    if args.all_kinds:  # the same seeds painted with every kind, 'shapes' included (not in the defaults)
        negatives["distractor_all_kinds"] = photos(DistractorConfig(kinds=DISTRACTOR_KINDS))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fashionbox-fp-") as tmp:
        for name, spec in specs.items():
            path = _resolve(spec, Path(tmp), name)
            attributes = _resolve(attribute_specs.get(name, "shipped"), Path(tmp), f"{name}-attributes", "attributes")
            pipeline = InProcessPipeline.torch_reference(path, attributes, threads=args.threads,
                                                         verifier=False if name in args.no_verifier else None)

            def run(data: list[bytes], pipeline: InProcessPipeline = pipeline) -> list[list[Any]]:
                out = []
                for item in data:
                    (result,) = pipeline.run([item])
                    if isinstance(result, Exception):
                        raise result
                    out.append(predictions_from_result(result, pipeline.label_map))
                return out

            config = load_detector(path)[0].config
            entry: dict[str, Any] = {"spec": spec, "sha256": file_sha256(path), "calibrated": config.calibrated,
                                     "score_calibration": list(config.score_calibration),
                                     "served_threshold": config.score_threshold or 0.3,
                                     "attributes": attribute_specs.get(name, "shipped"),
                                     "attributes_sha256": file_sha256(attributes),
                                     "verifier": pipeline.verify is not None}
            for kind, data in negatives.items():
                entry[kind] = _per_photo(run(data))
            predictions = run([s.data for s in normal])
            quality = evaluate(normal, predictions, pipeline.label_map)
            scores, correct = detection_outcomes(normal, predictions)
            # Would Platt scaling help? Fit on half the images, measure on the other half, both ways.
            halves = [detection_outcomes(normal[k::2], predictions[k::2]) for k in (0, 1)]
            mapped = [apply_platt(halves[1 - k][0], *fit_platt(*halves[k])) for k in (0, 1)]
            platt_scores = np.concatenate([mapped[1], mapped[0]])
            platt_correct = np.concatenate([halves[0][1], halves[1][1]])
            entry["normal"] = {
                **{k: quality[k] for k in ("images", "detections", "bbox_map", "bbox_map50",
                                             "attribute_accuracy") if k in quality},
                "ece_15_bins": round(expected_calibration_error(scores, correct, bins=15), 4),
                "ece_10_bins": round(expected_calibration_error(scores, correct, bins=10), 4),
                "true_positive_share": round(float(correct.mean()) if correct.size else 0.0, 4),
                "ece_15_bins_after_platt_cross_fitted": round(
                    expected_calibration_error(platt_scores, platt_correct, bins=15), 4),
                "platt_fit_all": [round(v, 4) for v in fit_platt(scores, correct)],
                "reliability_15_bins": reliability_table(scores, correct, bins=15),
            }
            results[name] = entry
            print(name, json.dumps({k: v for k, v in entry.items() if k != "normal"}), file=sys.stderr)
    samples_note: list[EvalSample] = normal
    report = write_report(args.out, __file__, argv, {
        "normal_images": len(samples_note), "seed": args.seed, "negatives": args.negatives,
        "negative_seed": args.negative_seed, "detectors": results,
    })
    print(json.dumps(report["detectors"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
