"""Choose the score threshold on validation seeds, then report the test seed's bars at that threshold.

    .venv/bin/python tests/benchmarks/bench_threshold.py [--images 200] [--validation 11,13] [--test 7]
        # -> tests/benchmarks/results/threshold.json

The shipped threshold must not be tuned on the seed the quality bar is tested on (seed 7,
``tests/test_end_to_end.py``). This runs the in-process PyTorch reference (equal to the served
results: the fidelity check) once per seed at a low threshold (half the lowest candidate) and
filters to ``score > t`` for every candidate ``t`` (NMS only lets a higher score suppress, so this
equals a run at ``t``). A calibrated detector (``fashionbox calibrate``, which chooses its threshold
by this rule when it fits) is measured in calibrated units, over
``fashionbox.commands.calibration.THRESHOLD_CANDIDATES``; an uncalibrated one over ``CANDIDATES``.

The rule, applied to the pooled validation scenes only: the highest threshold whose mAP@.5 is
within ``--tolerance`` (0.005) of the best validation mAP@.5. Higher thresholds send fewer
detections to the attribute heads (each costs a crop), so among thresholds that detect equally
well the cheapest wins. The test seed is evaluated at the chosen threshold once, after the choice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
"""Raw-score candidates, for an uncalibrated detector."""


def _candidates() -> tuple[tuple[float, ...], float | None]:
    """The candidates in the shipped detector's units, and the threshold it carries (None: the contract's)."""
    from fashionbox.commands.calibration import THRESHOLD_CANDIDATES
    from fashionbox.models import default_weights, load_detector

    config = load_detector(default_weights("detector"))[0].config
    return (THRESHOLD_CANDIDATES if config.calibrated else CANDIDATES), config.score_threshold


def _predictions(seed: int, images: int, floor: float) -> tuple[Any, Any, Any]:
    from fashionbox.commands.evaluation import heldout_samples, predictions_from_result
    from fashionbox.models.pipeline import InProcessPipeline

    samples = heldout_samples(images, seed)
    pipeline = InProcessPipeline.torch_reference(score_threshold=floor, threads=2)
    predictions = []
    for sample in samples:
        (result,) = pipeline.run([sample.data])
        assert not isinstance(result, Exception), result
        predictions.append(predictions_from_result(result, pipeline.label_map))
    return samples, predictions, pipeline.label_map


def _at(samples: Any, predictions: Any, label_map: Any, threshold: float) -> dict[str, float]:
    from fashionbox.commands.evaluation import attribute_accuracy, coco_metrics

    kept = [[p for p in image if p.score > threshold] for image in predictions]
    metrics = coco_metrics(samples, kept, label_map)
    groups = attribute_accuracy(samples, kept, label_map)
    return {"map50": round(metrics["bbox_map50"], 4), "map": round(metrics["bbox_map"], 4),
            "detections_per_image": round(sum(len(k) for k in kept) / len(kept), 2),
            **{f"accuracy {name}": round(g["accuracy"], 4) for name, g in groups.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--validation", default="11,13", help="validation seeds (the threshold is chosen on them)")
    parser.add_argument("--test", type=int, default=7, help="the test seed (evaluated once, at the choice)")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/threshold.json")
    args = parser.parse_args(argv)

    from fashionbox import contract
    from fashionbox.commands.calibration import choose_threshold

    candidates, own = _candidates()
    served = contract.DEFAULT_SCORE_THRESHOLD if own is None else own
    floor = min(candidates) / 2
    seeds = [int(s) for s in args.validation.split(",")]
    if args.test in seeds:
        parser.error("the test seed must not be a validation seed")
    pooled: tuple[list[Any], list[Any]] = ([], [])
    per_seed: dict[str, dict[str, Any]] = {}
    label_map = None
    for seed in seeds:
        samples, predictions, label_map = _predictions(seed, args.images, floor)
        pooled[0].extend(samples)
        pooled[1].extend(predictions)
        per_seed[str(seed)] = {str(t): _at(samples, predictions, label_map, t) for t in candidates}
        print(f"validation seed {seed}: " + ", ".join(f"{t}: {per_seed[str(seed)][str(t)]['map50']}"
                                                     for t in candidates), flush=True)
    validation = {t: _at(pooled[0], pooled[1], label_map, t)["map50"] for t in candidates}
    chosen = choose_threshold(validation, args.tolerance)
    samples, predictions, label_map = _predictions(args.test, args.images, floor)
    test = _at(samples, predictions, label_map, chosen)
    shipped = _at(samples, predictions, label_map, served)
    write_report(args.out, __file__, argv, {
        "images_per_seed": args.images, "validation_seeds": seeds, "test_seed": args.test,
        "rule": f"highest threshold within {args.tolerance} of the best pooled validation mAP@.5",
        "validation_map50": {str(t): v for t, v in validation.items()}, "validation_per_seed": per_seed,
        "chosen": chosen, "shipped": served, "calibrated_units": own is not None,
        "test_at_chosen": test, "test_at_shipped": shipped,
        "bars_hold_at_chosen": test["map50"] >= 0.90 and test["map"] >= 0.60,
    })
    print(f"chosen on validation: {chosen} (shipped {served}); test seed {args.test}: "
          f"{test}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
