"""What the image-level branches cost on the CPU: served throughput with and without them, in one run.

    .venv/bin/python tests/benchmarks/bench_image_level.py [--rounds 3] [--embedder]
        # -> tests/benchmarks/results/image_level.json

Repositories, converted here from the shipped weights and served by the embedded Triton (gRPC, the
closed-loop load generator at several concurrencies, rounds interleaved, medians):

- ``detection+attributes``: the shipped attribute checkpoint with its embedding and vertical heads
  taken off (every other tensor the same): boxes, categories, attributes and masks only;
- ``full default``: the shipped checkpoint: also each garment's vector, the photo's vector and its
  product vertical (one more crop per image through the same attribute call);
- with ``--embedder``, ``+ CLIP ViT-B/32-sized embedder``: a random-weight CLIP of ViT-B/32's image
  size (224 px, patch 32, width 768, 12 layers; the text tower kept small) as ``--embedder hf:``:
  what serving a real CLIP per garment costs on this CPU.

Issue 16's goal: the full result at >= 0.8x the throughput of detection + attributes alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine, write_report
from bench_runtimes import served
from bench_serving import make_images

ROOT = Path(__file__).resolve().parents[2]


def strip_heads(out: Path) -> Path:
    """The shipped attribute checkpoint without the embedding and vertical heads."""
    from fashionbox.models import AttributeClassifier, default_weights, load_attributes, save_checkpoint

    classifier, labels = load_attributes(default_weights("attributes"))
    config = replace(classifier.config, retrieval_dim=0, verticals=())
    bare = AttributeClassifier(config)
    kept = bare.state_dict().keys()
    state = {k: v for k, v in classifier.state_dict().items() if k in kept}
    bare.load_state_dict(state, strict=True)
    save_checkpoint(out, bare, kind="attributes", config_json=config.to_json(), label_map=labels)
    return out


def vit_b32_clip(folder: Path) -> Path:
    """A random CLIP whose image tower has ViT-B/32's shape (what FashionCLIP is), with the tiny test
    CLIP's tokenizer and text tower, saved with a 224 px processor."""
    import torch
    import transformers
    from image_model_fixtures import build_tiny_clip

    tiny = build_tiny_clip(folder / "tiny")
    text = transformers.CLIPConfig.from_pretrained(tiny).text_config.to_dict()
    config = transformers.CLIPConfig(
        text_config=text, projection_dim=512,
        vision_config={"image_size": 224, "patch_size": 32, "hidden_size": 768, "intermediate_size": 3072,
                       "num_hidden_layers": 12, "num_attention_heads": 12})
    torch.manual_seed(0)
    out = folder / "b32"
    transformers.CLIPModel(config).eval().save_pretrained(out)
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 224},
                                                   crop_size={"height": 224, "width": 224}, resample=3)
    transformers.CLIPProcessor(image_processor=processor,
                               tokenizer=transformers.AutoTokenizer.from_pretrained(tiny)).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--embedder", action="store_true", help="also a ViT-B/32-sized CLIP embedder")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/image_level.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))

    from fashionbox.converter import ConvertOptions, convert

    started, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-image-level-") as tmp:
        work = Path(tmp)
        options = {"runtime": "onnxruntime", "compare_samples": 2}
        repositories = {
            "detection+attributes": convert(ConvertOptions(
                out=work / "bare", attributes=str(strip_heads(work / "bare.safetensors")),
                **options)).repository,  # type: ignore[arg-type]
            "full default": convert(ConvertOptions(out=work / "full", **options)).repository,  # type: ignore[arg-type]
        }
        if args.embedder:
            folder = vit_b32_clip(work / "clip-b32")
            repositories["+ CLIP ViT-B/32-sized embedder"] = convert(ConvertOptions(
                out=work / "clip", embedder=f"hf:{folder}", **options)).repository  # type: ignore[arg-type]
        for name, path in repositories.items():
            manifest = json.loads((path / "manifest.json").read_text())
            print(f"{name}: image_level {manifest.get('image_level', {}).get('embeddings_from', '-')}", flush=True)
        figures = served(repositories, make_images(args.images), args.rounds, args.duration_s,
                         tuple(int(c) for c in args.levels.split(",")), 1000.0, 0.0, work / "logs")
    summary = figures["summary"]
    bare = summary["detection+attributes"]["saturation_images_per_s"]
    ratios = {name: round(row["saturation_images_per_s"] / bare, 3) for name, row in summary.items()}
    write_report(args.out, __file__, argv, {
        "rounds": args.rounds, "served": figures, "ratio_to_detection_attributes": ratios,
        "goal": ">= 0.8 for the full default", "goal_met": ratios["full default"] >= 0.8,
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "wall_s": round(time.time() - started, 1),
    }, machine_info=machine())
    print(json.dumps({"summary": summary, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
