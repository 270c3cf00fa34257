"""Benchmark: an open-vocabulary OWL model served by FashionBox against in-process transformers, in one run.

    .venv/bin/python tests/benchmarks/bench_owl.py [--family owlvit|owlv2] [--rounds 3] [--images 3] [--out ...]

``--family owlvit`` (the default): ``google/owlvit-base-patch32``'s shape (ViT-B/32 at 768 x 768, 576
patches; text tower 12 layers 512 wide; projection 512); ``--family owlv2``:
``google/owlv2-base-patch16-ensemble``'s (ViT-B/16 at 960 x 960, 3,600 patches). Random weights, the
processor's defaults, and a CLIP BPE tokenizer trained here on the queries (words whole, as the hub's
keeps them; the hub's has 49,408 tokens: the text tower's compute is the same, its embedding table
smaller). The classes are the converter's default queries, the 27 Fashionpedia garments and
accessories. On the same 1280 x 960 JPEGs (generated, fixed seeds) it measures:

- **served**: ``convert(detector="hf:FOLDER")`` into a repository (ONNX Runtime), the embedded
  Triton, the closed-loop load generator over gRPC: latency p50/p99 at concurrency 1, images/s at
  concurrency 2. The queries' embeddings are in the graph; the square letterbox at the processor's size.
- **transformers, its own way**: the processor on the photo and the 27 queries (OWLv2's pads to a square
  and resizes with anti-aliasing; OWL-ViT's resizes and centre-crops), the model on both (the text tower
  runs each call, as ``Owlv2ForObjectDetection.forward`` does), ``post_process_object_detection``; torch
  on 2 threads; one image at a time.
- **transformers, same letterbox**: the same in-process path fed FashionBox's letterbox.
- **queries embedded once, in PyTorch**: the graph FashionBox serves (``OwlGraph``, as the torch runtime
  runs it) on the same letterbox, then its NMS, in process: what baking the queries saves, runtime aside.
- **detector graph alone**: the repository's ``detector/1/model.onnx`` in ONNX Runtime (2 threads) on
  pre-letterboxed pixels (the image tower, the class and box heads, NMS).

Rounds interleave them; the JSON keeps every run and the medians.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_detr import recorded_not_enforced
from bench_rounds import baseline_summary, served_rounds, served_summary, write_rounds
from bench_yolos import make_images, run_onnx_detector

ROOT = Path(__file__).resolve().parents[2]
VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
TEXT = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
        "max_position_embeddings": 16}
SHAPES = {"owlvit": {"image_size": 768, "patch_size": 32, "hub": "google/owlvit-base-patch32"},
          "owlv2": {"image_size": 960, "patch_size": 16, "hub": "google/owlv2-base-patch16-ensemble"}}


def save_base_sized(folder: Path, family: str) -> Path:
    """A random OWL model of ``family``'s base shape, its processor (defaults) and a tokenizer of the queries."""
    import torch
    import transformers
    from image_model_fixtures import trained_clip_vocab

    from fashionbox.converter.owl import DEFAULT_QUERIES

    shape = SHAPES[family]
    vocab, merges = trained_clip_vocab(DEFAULT_QUERIES.texts)
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16, pad_token="!")
    text = {**TEXT, "vocab_size": len(vocab), "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": tokenizer.pad_token_id}
    vision = {**VISION, "image_size": shape["image_size"], "patch_size": shape["patch_size"]}
    torch.manual_seed(0)
    if family == "owlv2":
        model = transformers.Owlv2ForObjectDetection(transformers.Owlv2Config(text_config=text, vision_config=vision))
        processor = transformers.Owlv2Processor(image_processor=transformers.Owlv2ImageProcessorPil(),
                                                tokenizer=tokenizer)
    else:
        model = transformers.OwlViTForObjectDetection(transformers.OwlViTConfig(text_config=text,
                                                                                vision_config=vision))
        processor = transformers.OwlViTProcessor(image_processor=transformers.OwlViTImageProcessorPil(),
                                                 tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run_transformers(folder: Path, family: str, images: list[bytes], *, letterbox_size: int | None) -> list[float]:
    """Seconds per image, decode to detections, in process: the processor on the photo and the queries (its
    own resize when ``letterbox_size`` is None, else FashionBox's square letterbox), the model, the
    processor's post-processing."""
    import torch
    import transformers
    from PIL import Image

    from fashionbox.converter.owl import DEFAULT_QUERIES, OWL_STYLES
    from fashionbox.core.imaging import decode_image, letterbox

    torch.set_num_threads(2)
    style = OWL_STYLES[family]
    model = getattr(transformers, style.model_class).from_pretrained(str(folder), local_files_only=True).eval()
    processor_class = "Owlv2Processor" if family == "owlv2" else "OwlViTProcessor"
    processor = getattr(transformers, processor_class).from_pretrained(str(folder), local_files_only=True)
    texts = [list(DEFAULT_QUERIES.texts)]
    seconds = []
    for data in images:
        started = time.perf_counter()
        if letterbox_size is None:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            inputs = processor(text=texts, images=image, return_tensors="pt")
            target = [(image.height, image.width)]
        else:
            pixels, _ = letterbox(decode_image(data, target_size=letterbox_size), letterbox_size)
            inputs = processor(text=texts, images=pixels, return_tensors="pt", do_resize=False,
                               **({"do_pad": False} if family == "owlv2" else {"do_center_crop": False}))
            target = [pixels.shape[:2]]
        with torch.no_grad():
            outputs = model(**inputs)
        processor.image_processor.post_process_object_detection(outputs, threshold=0.1, target_sizes=target)
        seconds.append(time.perf_counter() - started)
    return seconds


def run_queries_once(folder: Path, family: str, images: list[bytes], size: int) -> list[float]:
    """Seconds per image in process for the graph FashionBox serves, in PyTorch eager (the torch runtime's
    :class:`fashionbox.models.owl_graph.OwlGraph`: the queries embedded once, the image side per image) on
    the square letterbox, then its NMS: what baking the queries saves, apart from the runtime."""
    import torch

    from fashionbox.converter.detr import checkpoint_weights
    from fashionbox.converter.owl import SCORE_THRESHOLD, load_owl, owl_graph
    from fashionbox.core.imaging import decode_image, letterbox
    from fashionbox.models.nms import NmsSettings, nms_batched

    torch.set_num_threads(2)
    graph = owl_graph(load_owl(checkpoint_weights(folder), family))
    nms = NmsSettings(score_threshold=SCORE_THRESHOLD, iou_threshold=0.3, max_per_class=100, max_detections=100)
    seconds = []
    for data in images:
        started = time.perf_counter()
        pixels, _ = letterbox(decode_image(data, target_size=size), size)
        with torch.inference_mode():
            boxes, scores = graph(torch.from_numpy(pixels[None]))
            nms_batched(boxes, scores, nms)
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(SHAPES), default="owlvit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=3, help="distinct images; each baseline runs each once a round")
    parser.add_argument("--duration-s", type=float, default=15.0, help="served measurement window per level")
    parser.add_argument("--out", type=Path, default=None, help="default: tests/benchmarks/results/FAMILY.json")
    args = parser.parse_args(argv)
    out = args.out or ROOT / f"tests/benchmarks/results/{args.family}.json"
    size = SHAPES[args.family]["image_size"]

    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.core.serving import OrtSettings

    images = make_images(args.images)
    with tempfile.TemporaryDirectory(prefix="fashionbox-bench-owl-") as tmp:
        folder = save_base_sized(Path(tmp) / args.family, args.family)
        started = time.perf_counter()
        result = convert(ConvertOptions(
            out=Path(tmp) / "repo", detector=f"hf:{folder}", compare_samples=2, runtime="onnxruntime",
            tolerance=recorded_not_enforced(), repository_settings={"ort": OrtSettings(intra_op_threads=2)}))
        repository = result.repository
        convert_s = time.perf_counter() - started
        print(f"converted in {convert_s:.0f} s", flush=True)
        runs = served_rounds(repository, images, rounds=args.rounds, duration_s=args.duration_s, baselines={
            "own_way_s": lambda: run_transformers(folder, args.family, images, letterbox_size=None),
            "letterbox_s": lambda: run_transformers(folder, args.family, images, letterbox_size=size),
            "queries_once_s": lambda: run_queries_once(folder, args.family, images, size),
            "onnx_alone_s": lambda: run_onnx_detector(repository, images, size)})

    same_letterbox = baseline_summary(runs, "letterbox_s")
    served = served_summary(runs, against="own_way_s")
    summary = {
        **served,
        "transformers_own_way": baseline_summary(runs, "own_way_s"),
        "transformers_same_letterbox": same_letterbox,
        "torch_queries_embedded_once": baseline_summary(runs, "queries_once_s"),
        "detector_graph_alone": baseline_summary(runs, "onnx_alone_s"),
        "speedup_p50_vs_same_letterbox": round(same_letterbox["p50_ms"] / served["served_c1_p50_ms"], 2),
        "convert_s": round(convert_s, 1),
        "convert_comparison_not_enforced": result.reports["detector"],
    }
    shape = SHAPES[args.family]
    model = {"family": args.family, "vision": {**VISION, "image_size": shape["image_size"],
                                               "patch_size": shape["patch_size"]},
             "text": TEXT, "queries": 27, "served_letterbox": size,
             "weights": f"random ({shape['hub']}'s shape, same compute)"}
    write_rounds(out, __file__, argv, args, model, summary, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
