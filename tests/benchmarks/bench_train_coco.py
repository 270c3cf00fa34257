"""What `fashionbox train --coco` costs on this machine, written to a file.

    .venv/bin/python tests/benchmarks/bench_train_coco.py [--images 64] [--detector-steps 40]
        [--attribute-steps 40] [--batch 16] [--trials 3] [--search-steps 10] [--device cpu] [--amp]

Exports ``--images`` generated scenes in Fashionpedia's layout (``write_coco_dataset``), then times
the three parts of a run: reading and checking the file plus decoding and letterboxing every image
(``prepare``), the detector and attribute stages from the shipped weights (steps/s at ``--batch``
images per detector step and four times that many crops per attribute step), and an Optuna search
of ``--trials`` trials of ``--search-steps`` steps per stage (seconds per trial). The validation
losses before and after are recorded too (a tenth of the images held out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine, write_report

ROOT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--detector-steps", type=int, default=40)
    parser.add_argument("--attribute-steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--search-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--init", default="default", help="default (shipped weights), PATH or scratch")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/train_coco.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import torch

    from fashionbox.contract.labels import default_label_map
    from fashionbox.synth import write_coco_dataset
    from fashionbox.training.coco import CocoTrainSettings, prepare, search_coco, train_coco

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        t0 = time.perf_counter()
        annotations = write_coco_dataset(work / "data", count=args.images, seed=23)
        export_s = time.perf_counter() - t0
        settings = CocoTrainSettings(annotations=annotations, images=work / "data/images", out_dir=work / "out",
                                     detector_steps=args.detector_steps, attribute_steps=args.attribute_steps,
                                     detector_batch=args.batch, attribute_batch=4 * args.batch,
                                     detector_lr=3e-4, attribute_lr=3e-4, threads=args.threads, init=args.init,
                                     device=args.device, amp=args.amp, checkpoint_every=10_000)
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        prepared = prepare(settings, default_label_map())
        prepare_s = time.perf_counter() - t0
        report = train_coco(settings, prepared=prepared)
        search = None
        if args.trials:
            result = search_coco(replace(settings, out_dir=work / "search"), args.trials,
                                 steps_per_trial=args.search_steps, prepared=prepared)
            search = {"trials": args.trials, "steps_per_trial_per_stage": args.search_steps,
                      "seconds_per_trial": round(result.seconds_per_trial, 2), "best": result.best}
    summary = {
        "images": args.images, "garments": prepared[0].garments, "batch": args.batch,
        "export_s": round(export_s, 2), "prepare_s": round(prepare_s, 2),
        "prepare_ms_per_image": round(1000 * prepare_s / args.images, 1),
        "detector_steps": args.detector_steps, "detector_steps_per_s": round(report.detector_steps_per_s or 0, 3),
        "detector_images_per_s": round((report.detector_steps_per_s or 0) * args.batch, 2),
        "attribute_steps": args.attribute_steps,
        "attribute_steps_per_s": round(report.attribute_steps_per_s or 0, 3),
        "attribute_crops_per_s": round((report.attribute_steps_per_s or 0) * 4 * args.batch, 1),
        "train_coco_wall_s": round(report.seconds, 1),
        "detector_val_loss": report.detector_val_loss, "attribute_val_loss": report.attribute_val_loss,
        "search": search,
    }
    write_report(args.out, __file__, argv, {"summary": summary},
                 machine_info=machine(torch=torch.__version__, threads=args.threads, device=args.device,
                                      amp=args.amp, **({"gpu": torch.cuda.get_device_name(0)}
                                                       if args.device.startswith("cuda") else {})))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
