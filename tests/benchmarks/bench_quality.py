"""Quality and fidelity of the served pipeline on held-out generated scenes, written to a file.

    .venv/bin/python tests/benchmarks/bench_quality.py [--images 200] [--seed 7]

Converts the shipped weights, serves them on the embedded Triton, sends the held-out scenes
through gRPC, runs the same scenes through the in-process PyTorch reference, and records:
COCO bbox mAP / mAP@.5 and attribute accuracy for both, and the served-vs-reference fidelity
report (detections compared one to one, boxes within 0.5 px, threshold ties counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/quality.json")
    args = parser.parse_args(argv)

    from fashionbox import contract
    from fashionbox.client import FashionClient
    from fashionbox.commands.evaluation import (
        compare_fidelity,
        evaluate,
        heldout_samples,
        predictions_from_detections,
        predictions_from_result,
    )
    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.models.pipeline import InProcessPipeline
    from fashionbox.server import ServerConfig, TritonServer, find_free_ports

    samples = heldout_samples(args.images, args.seed)
    with tempfile.TemporaryDirectory(prefix="fashionbox-quality-") as tmp:
        repository = convert(ConvertOptions(out=Path(tmp) / "repo")).repository
        manifest = json.loads((repository / contract.MANIFEST_FILE).read_text())
        threshold = float(manifest["export"]["nms"]["score_threshold"])
        grpc, http, metrics = find_free_ports(3)
        config = ServerConfig(
            repository=repository,
            grpc_port=grpc,
            http_port=http,
            metrics_port=metrics,
            log_path=Path(tmp) / "tritonserver.log",
        )
        with TritonServer(config) as server, FashionClient(server.endpoints.grpc) as client:
            label_map = client.labels()
            served = [predictions_from_detections(client.detect(sample.data)) for sample in samples]
    reference_pipeline = InProcessPipeline.torch_reference(score_threshold=threshold)
    reference = []
    for sample in samples:
        (result,) = reference_pipeline.run([sample.data])
        if isinstance(result, Exception):
            raise result
        reference.append(predictions_from_result(result, reference_pipeline.label_map))
    fidelity = compare_fidelity(served, reference, score_threshold=threshold)
    report = write_report(args.out, __file__, argv, {
        "images": args.images,
        "seed": args.seed,
        "weights": manifest["sources"],
        "served": evaluate(samples, served, label_map),
        "reference": evaluate(samples, reference, label_map),
        "fidelity": {**dataclasses.asdict(fidelity), "identical": fidelity.identical},
    })
    print(json.dumps({k: report[k] for k in ("served", "reference", "fidelity")}, indent=2))
    return 0 if fidelity.identical else 1


if __name__ == "__main__":
    sys.exit(main())
