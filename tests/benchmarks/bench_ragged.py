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
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report
from served_variants import measure_variants, ratios, variant_parser

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
    defaults: dict[str, str] = {}

    def build(folder: Path, layouts: list[str]) -> dict[str, Path]:
        from fashionbox.converter import ConvertOptions, convert

        repositories: dict[str, Path] = {}
        for layout in layouts:
            converted = convert(ConvertOptions(out=folder / layout, runtime="onnxruntime",
                                               repository_settings={"layout": layout})).repository
            defaults[layout] = converted_default(converted)
            for ragged, variant in ((True, "ragged"), (False, "same-shape")):
                copy = shutil.copytree(converted, folder / f"{layout}-{variant}")
                repositories[f"{layout}/{variant}"] = set_ragged_batches(copy, ragged)
        return repositories

    measured = measure_variants(args, "fashionbox-bench-ragged-", build, extra=batching_figures)
    gains = ratios(measured, "ragged", "same-shape")
    top = measured.pop("top")
    del measured["layouts"]
    write_report(args.out, __file__, argv, {**measured, "converter_default": defaults,
                                            f"ragged_over_same_shape_images_per_s_c{top}": gains})
    print(json.dumps({"summary": measured["summary"], "ratios": gains}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
