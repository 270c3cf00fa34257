"""Benchmark: the default model's product-vertical head on held-out generated product photos.

    .venv/bin/python tests/benchmarks/bench_verticals.py [--photos 1400]
        [--weights models/fashionbox/models/weights/attributes.safetensors]
        [--out tests/benchmarks/results/verticals.json]

Held-out single-product photos (``fashionbox.synth.render_product_photo``, seeds disjoint from
training) are JPEG-encoded, letterboxed and cut as one crop of their whole content box, as the
server feeds the vertical head; accuracy overall and per vertical (recall of each class), and the
confusion matrix (rows: true vertical, columns: predicted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report

from fashionbox.models import default_weights, load_attributes
from fashionbox.training.retrieval_eval import embed, held_out_products

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1400)
    parser.add_argument("--seed", type=int, default=1, help="held-out seed family (disjoint from training's)")
    parser.add_argument("--weights", type=Path, default=None, help="attribute checkpoint (default: shipped)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/verticals.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = args.weights or default_weights("attributes")
    classifier, label_map = load_attributes(weights)
    if classifier.vertical_head is None:
        raise SystemExit(f"{weights} has no vertical head")
    names = list(classifier.config.verticals)
    crops, verticals = held_out_products(args.photos, label_map=label_map, seed=args.seed)
    predicted = embed(classifier, crops, key="verticals").argmax(1)
    truth = np.array([names.index(v) for v in verticals])
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {name: {"accuracy": float(confusion[i, i] / max(1, confusion[i].sum())),
                        "photos": int(confusion[i].sum())} for i, name in enumerate(names)}
    accuracy = float((predicted == truth).mean())
    fields = {"settings": {"photos": args.photos, "seed": args.seed, "verticals": names},
              "accuracy": accuracy, "per_vertical": per_class, "confusion": confusion.tolist()}
    write_report(args.out, __file__, argv, fields)
    print(f"accuracy {accuracy:.4f}; per vertical {({k: round(v['accuracy'], 3) for k, v in per_class.items()})}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
