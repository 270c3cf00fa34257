"""Benchmark: the default model's garment embedding on held-out generated garment identities.

    .venv/bin/python tests/benchmarks/bench_embedding.py [--identities 500] [--views 4]
        [--weights models/fashionbox/models/weights/attributes.safetensors]
        [--out tests/benchmarks/results/embedding.json]

Held-out identities (seeds disjoint from training: ``fashionbox.training.retrieval.identity_seeds``
with ``held_out=True``) are drawn in ``--views`` scenes each and cut as the server cuts a
detection (JPEG, letterbox, box jittered by 6 % like a detector's). Then:

- **instance retrieval**: each garment's first view is a query, every other view of every garment
  the gallery; recall@1/5/10 (goal: >= 0.85 and >= 0.97 at 1 and 10);
- **S3's protocol**: queries the first views, gallery the second view of every other garment; a
  pair when the label sets (category + attribute labels) have IoU >= 0.5; precision / recall / F1
  at 1, 5, 10;

for the embedding and, beside it, a colour-histogram baseline (8x8x8 joint RGB, Hellinger) on the
same crops.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report

from fashionbox.models import default_weights, load_attributes
from fashionbox.training.retrieval_eval import (
    attribute_pair_scores,
    colour_histograms,
    embed,
    held_out_identities,
    instance_recall,
)

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=500)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1, help="held-out seed family (disjoint from training's)")
    parser.add_argument("--weights", type=Path, default=None, help="attribute checkpoint (default: shipped)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/embedding.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = args.weights or default_weights("attributes")
    classifier, label_map = load_attributes(weights)
    if classifier.embedding_head is None:
        raise SystemExit(f"{weights} has no embedding head")
    t0 = time.perf_counter()
    data = held_out_identities(args.identities, args.views, label_map=label_map, seed=args.seed)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectors = embed(classifier, data.crops)
    embed_s = time.perf_counter() - t0
    histograms = colour_histograms(data.crops)
    results = {
        "embedding": {"instance": instance_recall(vectors, data),
                      "attribute_pairs": attribute_pair_scores(vectors, data)},
        "colour_histogram": {"instance": instance_recall(histograms, data),
                             "attribute_pairs": attribute_pair_scores(histograms, data)},
    }
    goals = {"recall@1": 0.85, "recall@10": 0.97}
    met = {k: results["embedding"]["instance"][k] >= v for k, v in goals.items()}
    fields = {"settings": {"identities": args.identities, "views": args.views, "seed": args.seed,
                           "weights": str(Path(weights).relative_to(ROOT)) if Path(weights).is_relative_to(ROOT)
                           else Path(weights).name,
                           "retrieval_dim": classifier.config.retrieval_dim, "crops": len(data.crops)},
              "results": results, "goals": goals, "goals_met": met,
              "seconds": {"render": round(render_s, 1), "embed": round(embed_s, 1)}}
    report = write_report(args.out, __file__, argv, fields)
    print(f"instance: {results['embedding']['instance']}  baseline {results['colour_histogram']['instance']}")
    print(f"pairs: {results['embedding']['attribute_pairs']}")
    print(f"pairs baseline: {results['colour_histogram']['attribute_pairs']}")
    print(f"goals met: {met}; wrote {args.out} ({report['unix_time']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
