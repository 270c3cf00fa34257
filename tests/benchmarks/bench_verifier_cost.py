"""What the verifier head (the second stage) adds to the served attribute graph on this CPU.

    .venv/bin/python tests/benchmarks/bench_verifier_cost.py [--with PATH] [--rounds 7] [--calls 40]

Exports the attribute checkpoint with the verifier head (``--with``, default the shipped one) and the
same checkpoint without it (every other tensor the same) to ONNX, and times both graphs in ONNX
Runtime with the served session settings (``OrtSettings()``: what ``attributes`` runs with) on
batches of 1, 8 and 32 crops, asking for every output the served call asks for. Rounds interleave
the two graphs (A B, then B A); each round's figure is the median of ``--calls`` calls; the report
gives the median over rounds and the ratio with / without. Also the rescoring itself
(``rescore_detections``) on 50 detections. Writes tests/benchmarks/results/verifier_cost.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report

ROOT = Path(__file__).resolve().parents[2]
BATCHES = (1, 8, 32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with", dest="with_head", type=Path, help="attribute checkpoint with a verifier head")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/verifier_cost.json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from fashionbox.converter.export import export_attributes_onnx
    from fashionbox.core.postprocessing import DetectorOutput, rescore_detections
    from fashionbox.core.serving import OrtSettings, create_ort_session
    from fashionbox.models import AttributeClassifier, default_weights, file_sha256, load_attributes

    path = args.with_head or default_weights("attributes")
    with_head, _ = load_attributes(path)
    if with_head.verifier_head is None:
        parser.error(f"{path} has no verifier head")
    without = AttributeClassifier(dataclasses.replace(with_head.config, verifier_classes=0)).eval()
    without.load_state_dict({k: v for k, v in with_head.state_dict().items() if not k.startswith("verifier_head.")})
    sessions: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fashionbox-verifier-cost-") as tmp:
        for name, model in (("with_verifier", with_head), ("without", without)):
            onnx = export_attributes_onnx(model, Path(tmp) / f"{name}.onnx", opset=17)
            sessions[name] = (create_ort_session(onnx, OrtSettings()), list(model.output_names))
    rng = np.random.default_rng(0)
    size = with_head.config.crop_size
    crops = {b: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for b in BATCHES}

    def median_ms(name: str, batch: int) -> float:
        session, outputs = sessions[name]
        feed = {"crops": crops[batch]}
        session.run(outputs, feed)
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            session.run(outputs, feed)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    rounds: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in sessions}
    for r in range(args.rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for batch in BATCHES:
            for name in order:
                rounds[name][batch].append(median_ms(name, batch))
    summary = {}
    for batch in BATCHES:
        a = statistics.median(rounds["with_verifier"][batch])
        b = statistics.median(rounds["without"][batch])
        summary[str(batch)] = {"with_verifier_ms": round(a, 3), "without_ms": round(b, 3), "ratio": round(a / b, 3)}

    torch.manual_seed(0)
    n, c = 50, with_head.config.verifier_classes
    detections = DetectorOutput(boxes=rng.uniform(0, 300, (n, 4)).astype(np.float32),
                                scores=np.sort(rng.uniform(0.02, 1, n)).astype(np.float32)[::-1].copy(),
                                classes=rng.integers(0, c, n).astype(np.int32))
    offsets = -rng.exponential(1.0, (n, c)).astype(np.float32)
    start = time.perf_counter()
    for _ in range(1000):
        rescore_detections(detections, offsets, score_threshold=0.02)
    rescore_us = (time.perf_counter() - start) / 1000 * 1e6

    report = write_report(args.out, __file__, argv, {
        "checkpoint": {"path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
                       "sha256": file_sha256(path), "verifier_hidden": with_head.config.verifier_hidden,
                       "verifier_classes": c},
        "ort_settings": dataclasses.asdict(OrtSettings()), "rounds": args.rounds, "calls_per_round": args.calls,
        "attribute_graph_ms_by_batch": summary, "rescore_50_detections_us": round(rescore_us, 1),
        "per_round_ms": {n: {str(b): [round(v, 3) for v in vs] for b, vs in by.items()} for n, by in rounds.items()},
    })
    print(json.dumps({k: report[k] for k in ("attribute_graph_ms_by_batch", "rescore_50_detections_us")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
