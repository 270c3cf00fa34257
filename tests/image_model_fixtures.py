"""Tiny random classifier and embedder checkpoints, built offline, saved as Hugging Face folders.

Each builder writes what a Hub repository of its family holds (``config.json``, safetensors
weights, ``preprocessor_config.json``, and the tokenizer files for the text towers) into
``folder`` and returns it, so that ``hf:FOLDER`` specs load it exactly as a downloaded
checkpoint::

    folder = build_tiny_classifier(tmp_path / "vit", arch="vit")    # 8 product verticals
    clip = build_tiny_clip(tmp_path / "clip")
    siglip = build_tiny_siglip(tmp_path / "siglip")                   # needs sentencepiece

The processors' sizes differ from one another on purpose (exact resize, shortest edge plus crop,
ConvNeXt's ``crop_pct``) so that the view tests cover every geometry. Weights are seeded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

VERTICALS = ("tops", "bottoms", "one-piece", "outerwear", "footwear", "bags", "headwear", "accessories")
"""The tiny classifiers' labels (id2label in this order)."""

PHRASES = (
    "a red shirt", "a blue dress with long sleeves", "black leather shoes", "a striped summer skirt",
    "green wool coat", "white sneakers", "a floral blouse", "denim jeans", "a yellow handbag",
    "a knitted winter hat", "grey hoodie", "a silk scarf", "brown boots", "a pleated midi skirt",
)
"""Text the tiny tokenizers are built from (and that the text parity checks encode)."""

ClassifierArch = Literal["vit", "convnext", "resnet", "efficientnet"]


def _labels() -> dict[str, Any]:
    return {"id2label": dict(enumerate(VERTICALS)), "label2id": {name: i for i, name in enumerate(VERTICALS)}}


def _spread(model: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Re-draw every weight with a wider spread: default inits make near-identical outputs for all inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                continue
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_tiny_classifier(folder: Path, arch: ClassifierArch = "vit", *, multi_label: bool = False) -> Path:
    """A random ``AutoModelForImageClassification`` of ``arch`` with the 8 :data:`VERTICALS`."""
    import transformers as tf

    folder = Path(folder)
    torch.manual_seed(0)
    problem = {"problem_type": "multi_label_classification"} if multi_label else {}
    model: Any
    processor: Any
    if arch == "vit":
        config = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, **_labels(), **problem)
        model = tf.ViTForImageClassification(config)
        processor = tf.ViTImageProcessorPil(size={"height": 32, "width": 32}, resample=2,
                                            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    elif arch == "convnext":
        config = tf.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                   **_labels(), **problem)
        model = tf.ConvNextForImageClassification(config)
        processor = tf.ConvNextImageProcessorPil(size={"shortest_edge": 40}, crop_pct=0.875, resample=3,
                                                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    elif arch == "resnet":
        config = tf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                 layer_type="basic", **_labels(), **problem)
        model = tf.ResNetForImageClassification(config)
        processor = tf.ConvNextImageProcessorPil(size={"shortest_edge": 48}, crop_pct=0.9, resample=2,
                                                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    elif arch == "efficientnet":
        config = tf.EfficientNetConfig(image_size=40, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320,
                                       **_labels(), **problem)
        model = tf.EfficientNetForImageClassification(config)
        processor = tf.EfficientNetImageProcessorPil(size={"height": 40, "width": 40}, rescale_offset=True,
                                                     include_top=True, image_mean=[0.485, 0.456, 0.406],
                                                     image_std=[0.229, 0.224, 0.225])
    else:
        raise ValueError(f"unknown arch {arch!r}")
    _spread(model, seed=1, std=0.1)
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _clip_vocab(phrases: Sequence[str] = PHRASES) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary as CLIP's: every byte alone and as a word end, plus merges of the phrases."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    known = set(tokens)
    for phrase in phrases:
        for word in phrase.split():
            pieces = [*word[:-1], word[-1] + "</w>"]
            while len(pieces) > 1:
                merged = pieces[0] + pieces[1]
                rule = (pieces[0], pieces[1])
                if merged not in known:
                    known.add(merged)
                    tokens.append(merged)
                if rule not in merges:
                    merges.append(rule)
                pieces = [merged, *pieces[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def trained_clip_vocab(phrases: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary as CLIP's, its merges trained on ``phrases`` (``tokenizers``' BPE trainer):
    every word of them comes out whole, as the hub's CLIP tokenizer keeps common words, so a query takes
    about as many positions as there."""
    import json
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=5000, min_frequency=1, end_of_word_suffix="</w>", initial_alphabet=chars,
                                  show_progress=False)
    # CLIP's pre-tokenizer: lower case, runs of letters, each other character alone
    tokenizer.train_from_iterator([w for p in phrases for w in re.findall(r"[a-z]+|[^\sa-z]", p.lower())], trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for token in [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges  # type: ignore[return-value]


def build_tiny_clip(folder: Path) -> Path:
    """A random ``CLIPModel`` (32 px images, 16-d projection) with its processor and BPE tokenizer."""
    import transformers as tf

    folder = Path(folder)
    vocab, merges = _clip_vocab()
    tokenizer = tf.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=24)
    torch.manual_seed(0)
    config = tf.CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 24,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=16,
    )
    model = tf.CLIPModel(config).eval()
    _spread(model, seed=2, std=0.1)
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                               resample=3, do_center_crop=True)
    model.save_pretrained(folder)
    tf.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_owl(folder: Path, model_type: Literal["owlv2", "owlvit"] = "owlv2", *, size: int = 64,
                   phrases: Sequence[str] = ()) -> Path:
    """A random ``Owlv2ForObjectDetection`` / ``OwlViTForObjectDetection`` (``size`` px, 16 px patches, hidden 32)
    with its image processor and a CLIP BPE tokenizer (16 positions, as the hub's) trained on :data:`PHRASES` and
    ``phrases`` (the default queries: pass ``fashionbox.converter.owl.DEFAULT_QUERIES.texts``)."""
    import transformers as tf

    folder = Path(folder)
    vocab, merges = trained_clip_vocab((*PHRASES, *phrases))
    # OWL's tokenizers pad with "!" (id 0 in the hub's vocabulary; its forward takes a first id of 0 for a padded query)
    tokenizer = tf.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16, pad_token="!")
    torch.manual_seed(0)
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": tokenizer.pad_token_id}
    vision = {"image_size": size, "patch_size": 16, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2}
    if model_type == "owlv2":
        model = tf.Owlv2ForObjectDetection(tf.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
        image_processor = tf.Owlv2ImageProcessorPil(size={"height": size, "width": size})
        processor = tf.Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        model = tf.OwlViTForObjectDetection(tf.OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32))
        image_processor = tf.OwlViTImageProcessorPil(size={"height": size, "width": size},
                                                     crop_size={"height": size, "width": size})
        processor = tf.OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.eval()
    _spread(model, seed=4, std=0.1)
    with torch.no_grad():  # boxes about half the image wide (not a patch): neighbours overlap, NMS has work
        model.box_head.dense2.bias[2:] += 1.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_siglip(folder: Path) -> Path:
    """A random ``SiglipModel`` (32 px, hidden 32) with a SentencePiece tokenizer trained on :data:`PHRASES`."""
    import sentencepiece as spm
    import transformers as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.permutation(PHRASES[i].split())) for i in rng.integers(0, len(PHRASES), 400)]
    with tempfile.TemporaryDirectory() as scratch:
        prefix = Path(scratch) / "spiece"
        spm.SentencePieceTrainer.train(sentence_iterator=iter(list(PHRASES) + corpus), model_prefix=str(prefix),
                                       vocab_size=96, hard_vocab_limit=False, model_type="unigram", minloglevel=2,
                                       num_threads=1)
        tokenizer = tf.SiglipTokenizer(vocab_file=str(prefix) + ".model", model_max_length=16)
        torch.manual_seed(0)
        config = tf.SiglipConfig(
            text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16,
                         "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                         "bos_token_id": None},
            vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                           "num_hidden_layers": 2, "num_attention_heads": 2},
        )
        model = tf.SiglipModel(config).eval()
        _spread(model, seed=3, std=0.1)
        image_processor = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32}, resample=3)
        model.save_pretrained(folder)
        tf.SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def odd_images(count: int = 4, seed: int = 0) -> list[Any]:
    """RGB PIL images of odd sizes and aspect ratios (portrait, landscape, tiny, square), smooth plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(37, 53), (71, 29), (17, 23), (64, 64), (101, 45), (33, 90)]
    images = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, "RGB"))
    return images


def fill_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """``folder`` laid out as huggingface_hub's cache of ``repo_id`` (blobs by hash, snapshot links, refs/main)."""
    import hashlib
    import os

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot
