"""Benchmark: ``postprocess`` with ragged batches (the converter's default) against without, in one run.

    .venv/bin/python tests/benchmarks/bench_ragged.py [--rounds 3] [--out tests/benchmarks/results/ragged.json]

``postprocess`` takes one row per detection (``DET_BOXES [-1, 4]`` ...). Triton's dynamic batcher
puts requests into one batch only when their inputs have the same shape, unless the input allows
ragged batches, so without ``allow_ragged_batch`` two images batch together only when they have
as many detections, and ``postprocess`` calls ``attributes`` once per request. This measures what
allowing it changes.

The shipped default converted once per layout (``steps`` and ``fused``), then two copies of each:
``postprocess``'s variable-length inputs ragged, and not (what the converter chose per layout is
recorded as ``converter_default``: ragged for steps, same-shape for fused, from this measurement). Every
repository gets its own embedded Triton; closed-loop levels over gRPC with generated 1280x960
JPEGs, servers interleaved per round (rotating order), medians of rounds. Recorded per level:
images/s, p50/p99, ``postprocess``'s average batch and ``attributes`` executions per image, from
Triton's statistics over the level.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report
from bench_runtimes import make_images
from served_variants import medians, serve_interleaved, variant_parser

ROOT = Path(__file__).resolve().parents[2]


def set_ragged_batches(repository: Path, ragged: bool) -> Path:
    """Allow ragged batches on ``postprocess``'s variable-length inputs of ``repository``, or not."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = repository / "postprocess" / "config.pbtxt"
    config = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    for tensor in config.input:
        if -1 in tensor.dims:
            tensor.allow_ragged_batch = ragged
        else:
            tensor.ClearField("allow_ragged_batch")
    path.write_text(text_format.MessageToString(config), encoding="utf-8")
    return repository


def converted_default(repository: Path) -> str:
    """``ragged`` or ``same-shape``: what the converter wrote into ``repository``'s postprocess."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    text = (repository / "postprocess" / "config.pbtxt").read_text(encoding="utf-8")
    config = text_format.Parse(text, mc.ModelConfig())
    return "ragged" if any(tensor.allow_ragged_batch for tensor in config.input) else "same-shape"


def batching_figures(point: Any) -> dict[str, Any]:
    """``postprocess``'s average batch and ``attributes`` executions per image over the level."""
    models = {m.model: m for m in point.server}
    postprocess, attributes = models.get("postprocess"), models.get("attributes")
    requests = postprocess.requests if postprocess else 0
    return {
        "postprocess_avg_batch": round(postprocess.avg_batch_size, 2) if postprocess else None,
        # the fused layout runs the attribute network inside postprocess: no model of its own
        "attributes_calls_per_image": (round(attributes.executions / requests, 3)
                                       if attributes and requests else None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.splitlines()[0], ROOT / "tests/benchmarks/results/ragged.json", duration_s=10.0)
    args = parser.parse_args(argv)

    from fashionbox.converter import ConvertOptions, convert

    levels = tuple(int(c) for c in args.levels.split(","))
    layouts = args.layouts.split(",")
    load_before = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-ragged-") as tmp:
        repositories: dict[str, Path] = {}
        defaults: dict[str, str] = {}
        for layout in layouts:
            converted = convert(ConvertOptions(out=Path(tmp) / layout, runtime="onnxruntime",
                                               repository_settings={"layout": layout})).repository
            defaults[layout] = converted_default(converted)
            for ragged, variant in ((True, "ragged"), (False, "same-shape")):
                copy = shutil.copytree(converted, Path(tmp) / f"{layout}-{variant}")
                repositories[f"{layout}/{variant}"] = set_ragged_batches(copy, ragged)
        runs = serve_interleaved(repositories, Path(tmp) / "logs", make_images(args.images), levels=levels,
                                 rounds=args.rounds, duration_s=args.duration_s, extra=batching_figures)

    summary = medians(runs)
    top = str(max(levels))
    ratios = {layout: round(summary[f"{layout}/ragged"][top]["images_per_s"]  # type: ignore[operator]
                            / summary[f"{layout}/same-shape"][top]["images_per_s"], 3) for layout in layouts}
    write_report(args.out, __file__, argv, {
        "rounds": args.rounds, "levels": list(levels), "duration_s": args.duration_s,
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "converter_default": defaults, "summary": summary,
        f"ragged_over_same_shape_images_per_s_c{top}": ratios, "runs": runs,
        "wall_s": round(time.time() - started, 1),
    })
    print(json.dumps({"summary": summary, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
