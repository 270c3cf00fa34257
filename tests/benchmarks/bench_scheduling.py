"""Benchmark: one or two instances of ``postprocess`` (and ``attributes``) on the CPU, per layout, in one run.

    .venv/bin/python tests/benchmarks/bench_scheduling.py [--rounds 3] [--out tests/benchmarks/results/scheduling.json]

A load test at concurrency 8 showed the steps layout leaving about a third of two cores idle:
one ``postprocess`` instance waited on its BLS call to one ``attributes`` instance, so the two ran
one batch of requests at a time while ``preprocess`` and ``detector`` had nothing to do. This
measures one instance of each against two, per layout (the fused layout has no ``attributes``
model: its ``postprocess`` runs the network, and only its count changes); the converter's choice
per layout is recorded beside (two in the steps layout, one in the fused, from this measurement).
Every variant is the shipped default converted with ONNX Runtime and served by its own embedded
Triton; closed-loop levels over gRPC with generated 1280x960 JPEGs, variants interleaved per round
(rotating order), medians of rounds. Per level: images/s, p50/p99, and the share of the machine's
CPU left idle during it (``/proc/stat``; 100 % is one core).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import write_report
from served_variants import measure_variants, ratios, variant_parser

ROOT = Path(__file__).resolve().parents[2]


def variants(layouts: list[str]) -> dict[str, dict[str, Any]]:
    """``repository_settings`` per variant: one and two instances of ``postprocess`` (and of
    ``attributes`` in the steps layout), per layout."""
    from fashionbox.converter.repository import RepositorySettings

    shipped = RepositorySettings()
    out: dict[str, dict[str, Any]] = {}
    for layout in layouts:
        names = ("postprocess", "attributes") if layout == "steps" else ("postprocess",)
        for count, variant in ((1, "one-instance"), (2, "two-instances")):
            out[f"{layout}/{variant}"] = {"layout": layout, **{
                name: replace(getattr(shipped, name), instances=count) for name in names}}
    return out


def converter_defaults(layouts: list[str]) -> dict[str, int]:
    """``postprocess`` instances that ``fashionbox convert`` writes per layout."""
    from fashionbox.converter.repository import RepositorySettings, fused_scheduling

    return {layout: (fused_scheduling() if layout == "fused" else {}).get(
        "postprocess", RepositorySettings().postprocess).instances for layout in layouts}


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.splitlines()[0], ROOT / "tests/benchmarks/results/scheduling.json",
                            duration_s=8.0)
    args = parser.parse_args(argv)

    def build(folder: Path, layouts: list[str]) -> dict[str, Path]:
        from fashionbox.converter import ConvertOptions, convert

        return {name: convert(ConvertOptions(out=folder / name.replace("/", "-"), runtime="onnxruntime",
                                             repository_settings=settings)).repository
                for name, settings in variants(layouts).items()}

    measured = measure_variants(args, "fashionbox-bench-scheduling-", build)
    gains = ratios(measured, "two-instances", "one-instance")
    top, layouts = measured.pop("top"), measured.pop("layouts")
    write_report(args.out, __file__, argv, {**measured,
                                            "converter_default_postprocess_instances": converter_defaults(layouts),
                                            f"two_over_one_instance_images_per_s_c{top}": gains})
    print(json.dumps({"summary": measured["summary"], "ratios": gains}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
