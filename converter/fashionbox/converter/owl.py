"""The open-vocabulary families, OWL-ViT and OWLv2: a transformers checkpoint plus text queries -> the detector graph.

A fashion team with no labelled photos can still serve real detections: OWL-ViT (``model_type``
``owlvit``) and OWLv2 (``owlv2``) were trained on web-scale image-text pairs and find whatever a text
query names. FashionBox serves them with a fixed list of classes, each a query::

    checkpoint = load_owl(Path("owlv2-base-patch16-ensemble/model.safetensors"), "owlv2")  # the default queries
    checkpoint = with_queries(checkpoint, read_queries(Path("queries.txt")))               # or your own
    export_owl_onnx(checkpoint, Path("detector.onnx"), nms=NmsSettings(score_threshold=0.1, iou_threshold=0.3))
    report = compare_owl(checkpoint, Path("detector.onnx"), batches, nms)                  # vs transformers

**The classes.** By default the 27 Fashionpedia garments and accessories (``shirt, blouse`` ...
``umbrella``; its garment parts, closures and decorations are left out: they are pieces of what the
other queries find), each named by its Fashionpedia name, so the served label map, the
attribute heads' garments and the catalog read them as they read a Fashionpedia-trained checkpoint's;
the query is ``a photo of a`` and the name's alternatives joined by ``or`` ("a photo of a shirt or
blouse"), :data:`QUERY_TEMPLATE`. ``--queries FILE`` replaces them (:func:`read_queries`): one class a
line, ``name`` or ``name: prompt | prompt ...``, a prompt being a text or ``@photo.jpg``, an
:class:`Example` photo (an image-guided query: the class is what looks like the object in it). Several
prompts are averaged as unit vectors into one class embedding (prompt ensembling); texts and photos may
mix. The queries are embedded once, at conversion: a text by the checkpoint's own text tower (its
tokenizer, as its processor pads them), a photo by its processor, image tower and
``embed_image_query`` (:func:`example_embedding`, transformers' ``image_guided_detection`` query side);
the graph holds the embeddings (:class:`fashionbox.models.owl_graph.OwlGraph`) and runs the image side
only. A query longer than the text tower's positions is refused (transformers would truncate it
silently).

**Post-processing.** The processor's ``post_process_object_detection`` inside the graph (each patch's
best query, a sigmoid, boxes scaled by the input's side; its default threshold 0.1), then class-wise
NMS (IoU 0.3, transformers' own default where it suppresses: ``post_process_image_guided_detection``):
an OWL model answers with one box per image patch, and neighbouring patches match one garment.
``--iou-threshold 1`` turns NMS off and serves exactly the processor's list.

**The letterbox.** Square only, at the checkpoint's own size (the processor's ``height``: 960 for
OWLv2 base, 768 for OWL-ViT B/32): the ViT's position embeddings and the box bias are laid out for
that grid (transformers can interpolate them, but the hub checkpoints were not trained that way).
OWLv2's processor pads each photo to a square bottom-right with 0.5 grey and resizes it; FashionBox
letterboxes it centred with grey 114: the same square up to where the padding sits and its shade.
OWL-ViT's processor crops the centre square (a photo's sides are cut off); the letterbox keeps the
whole photo.

**Parity** is on the same letterboxed pixels: the processor normalises them (its resize and its pad or
centre crop turned off) and transformers' model runs with the queries' token ids (prompt ensembles and
example photos: the model's image tower and heads against the classes' embeddings). The converter's check
(:func:`compare_owl`) is dense: every patch's score, query and box against ``post_process_object_detection``
with no threshold (:func:`dense_reference`), and the graph's NMS against
:func:`fashionbox.models.nms.nms_onnx_semantics` on the graph's own outputs, so a score a hair from the
threshold or two boxes at the IoU limit cannot refuse a good conversion by chance (with hundreds or
thousands of patches an image such near ties are to be expected now and then: an estimate, not measured
on real weights). The tests also compare the served list itself with the processor's
list after the same NMS (:func:`reference_detections`).

**Checked before any weights load** (JSON and the safetensors header): ``model_type``, the processor's
config (``preprocessor_config.json``, or transformers 5's ``processor_config.json``), the tokenizer's
files, a whole safetensors file; then the processor's size must be the vision tower's square.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fashionbox import contract
from fashionbox.contract.labels import LabelMap, fashionpedia_taxonomy
from fashionbox.converter.detr import (
    PREPROCESSOR_FILE,
    DetrError,
    DetrPreprocessing,
    _load_model,
    _read_config,
    _tensor_shapes,
    _transformers,
    preprocessing_of,
)
from fashionbox.converter.export import MIN_OPSET, ComparisonReport, ExportError, _append_nms, _session, check_onnx
from fashionbox.converter.image_models import PROCESSOR_FILE  # transformers 5's processor file
from fashionbox.converter.labels import family_label_map
from fashionbox.core.postprocessing import DetectorOutput, gather_detections
from fashionbox.models.detr_graph import DetrSpec
from fashionbox.models.nms import NmsSettings, nms_onnx_semantics
from fashionbox.models.owl_graph import OWL_SCORING, OwlGraph, save_queries

__all__ = [
    "DEFAULT_QUERIES",
    "OWL_STYLES",
    "QUERY_TEMPLATE",
    "Example",
    "OwlCheckpoint",
    "OwlStyle",
    "Prompt",
    "Queries",
    "compare_owl",
    "dense_reference",
    "example_embedding",
    "export_owl_onnx",
    "load_owl",
    "owl_loader",
    "owl_spec",
    "query_embeddings",
    "read_queries",
    "reference_detections",
    "requery",
    "with_queries",
    "write_owl_torch_files",
]


SCORE_THRESHOLD = 0.1
"""``post_process_object_detection``'s default threshold in both OWL processors."""
IOU_THRESHOLD = 0.3
"""Class-wise NMS IoU: transformers' ``post_process_image_guided_detection`` default (its text-query
post-processing has no NMS: ``--iou-threshold 1`` serves that list as it is)."""
MAX_DETECTIONS = 100
"""At most this many per image after NMS (the processor keeps every patch above the threshold)."""

QUERY_TEMPLATE = "a photo of a {}"
"""A class name's query: its alternatives (``shirt, blouse``) joined by ``or``, in this template."""


@dataclass(frozen=True)
class OwlStyle:
    """What differs between OWL-ViT and OWLv2 here: classes and the processor's switches (the family is the
    ``model_type``)."""

    model_type: str
    model_class: str
    processor_class: str
    """The pure PIL/numpy image processor (no torchvision)."""
    as_given: tuple[str, ...]
    """The processor's switches that, turned off, leave letterboxed pixels as they are but for the
    normalisation (its resize, and OWLv2's pad or OWL-ViT's centre crop)."""


OWL_STYLES: dict[str, OwlStyle] = {
    "owlv2": OwlStyle("owlv2", "Owlv2ForObjectDetection", "Owlv2ImageProcessorPil", ("do_resize", "do_pad")),
    "owlvit": OwlStyle("owlvit", "OwlViTForObjectDetection", "OwlViTImageProcessorPil",
                       ("do_resize", "do_center_crop")),
}


@dataclass(frozen=True)
class Example:
    """An example photo of a class (an image-guided query): the class is what looks like the object in it.

    Best cropped to the one garment: the model picks one of the photo's boxes as the query (OWL-ViT: the most
    distinctive of those nearly covering the photo; OWLv2: its most object-like box), as transformers'
    ``image_guided_detection`` does."""

    path: Path
    written: str
    """The path as the queries file wrote it (relative to the file's folder): what the manifest records."""


Prompt = str | Example
"""One way of asking for a class: a text query, or an :class:`Example` photo."""


@dataclass(frozen=True)
class Queries:
    """The served classes: their names (the label map's) and what each is asked as: one or more prompts, a
    text or an example photo each (several: their embeddings averaged, a prompt ensemble). A plain string
    stands for one text prompt."""

    names: tuple[str, ...]
    prompts: tuple[tuple[Prompt, ...], ...]

    def __post_init__(self) -> None:
        prompts = tuple((p,) if isinstance(p, str | Example) else tuple(p) for p in self.prompts)
        object.__setattr__(self, "prompts", prompts)
        if not self.names or len(self.names) != len(prompts):
            raise DetrError("the queries need at least one class, each with at least one prompt")
        if len(set(self.names)) != len(self.names):
            twice = sorted({n for n in self.names if self.names.count(n) > 1})
            raise DetrError(f"the queries name a class twice: {twice}")
        if any(not n.strip() or not ps or any(isinstance(p, str) and not p.strip() for p in ps)
               for n, ps in zip(self.names, prompts, strict=True)):
            raise DetrError("a query's class name and its prompts must not be empty")

    @property
    def texts(self) -> tuple[str, ...]:
        """Every text prompt, each once, in the order they first appear."""
        return tuple(dict.fromkeys(p for ps in self.prompts for p in ps if isinstance(p, str)))

    @property
    def examples(self) -> tuple[Example, ...]:
        """Every example photo, each once, in the order they first appear."""
        return tuple(dict.fromkeys(p for ps in self.prompts for p in ps if isinstance(p, Example)))

    @property
    def plain(self) -> bool:
        """One text a class: transformers' own forward, with the texts' token ids, computes these classes."""
        return all(len(ps) == 1 and isinstance(ps[0], str) for ps in self.prompts)

    def manifest(self) -> dict[str, Any]:
        """What the repository's manifest records: each class's prompts (an example photo as ``@`` and its path
        as written) and each example photo's SHA-256, so a later reader can tell which photo it was."""
        classes = {name: [p if isinstance(p, str) else f"{EXAMPLE_MARK}{p.written}" for p in ps]
                   for name, ps in zip(self.names, self.prompts, strict=True)}
        examples = {e.written: hashlib.sha256(e.path.read_bytes()).hexdigest() for e in self.examples}
        return {"classes": classes, "examples": examples}


def query_text(name: str) -> str:
    """``shirt, blouse`` -> ``a photo of a shirt or blouse``."""
    return QUERY_TEMPLATE.format(" or ".join(part.strip() for part in name.split(",") if part.strip()))


def _default_queries() -> Queries:
    garments = [str(c["name"]) for c in fashionpedia_taxonomy()["categories"]
                if c["supercategory"] not in ("garment parts", "closures", "decorations")]
    return Queries(tuple(garments), tuple((query_text(name),) for name in garments))


DEFAULT_QUERIES = _default_queries()
"""The 27 Fashionpedia garments and accessories, each queried as :func:`query_text` says."""

PROMPT_SEPARATOR = "|"
EXAMPLE_MARK = "@"


def _prompt(text: str, folder: Path, where: str) -> Prompt:
    if not text.startswith(EXAMPLE_MARK):
        return text
    written = text[len(EXAMPLE_MARK):].strip()
    path = folder / written
    if not written or not path.is_file():
        raise DetrError(f"{where}: the example photo {written!r} is not a file (a path relative to the queries "
                        "file's folder, after '@')")
    return Example(path=path, written=written)


def read_queries(path: Path) -> Queries:
    """A queries file: UTF-8, one class a line, ``name`` (queried as :func:`query_text` says) or
    ``name: prompt | prompt ...``, each prompt a text or ``@photo.jpg`` (an example photo, relative to the
    file's folder); several prompts are averaged (a prompt ensemble). Blank lines and lines starting with
    ``#`` are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DetrError(f"cannot read the queries file {path}: {exc}") from exc
    names: list[str] = []
    prompts: list[tuple[Prompt, ...]] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, text = line.partition(":")
        name = name.strip()
        parts = [part.strip() for part in text.split(PROMPT_SEPARATOR)] if sep else []
        if not name or (sep and not all(parts)):
            raise DetrError(f"{path}:{number}: expected 'name' or 'name: prompt | prompt ...' (a text or "
                            f"'@photo.jpg' each), got {raw!r}")
        names.append(name)
        prompts.append(tuple(_prompt(part, path.parent, f"{path}:{number}") for part in parts) if sep
                       else (query_text(name),))
    if not names:
        raise DetrError(f"{path} names no class: one class a line, 'name' or 'name: prompt | prompt ...'")
    try:
        return Queries(tuple(names), tuple(prompts))
    except DetrError as exc:
        raise DetrError(f"{path}: {exc}") from None


# -- checking and loading -------------------------------------------------------------------------------------


def _check_folder(weights: Path, style: OwlStyle) -> None:
    folder = weights.parent
    config = _read_config(folder)
    model_type = str(config.get("model_type", ""))
    if model_type != style.model_type:
        raise DetrError(f"{folder}: model_type {model_type!r} is not a {style.model_type} checkpoint")
    if not (folder / PREPROCESSOR_FILE).is_file() and not (folder / PROCESSOR_FILE).is_file():
        raise DetrError(f"{folder} has neither {PREPROCESSOR_FILE} nor {PROCESSOR_FILE}: the input size and "
                        "normalisation must come from the checkpoint")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise DetrError(f"{folder} has no tokenizer (tokenizer.json or vocab.json): the queries are embedded with "
                        "the checkpoint's own tokenizer")
    if weights.suffix != ".bin":
        _tensor_shapes(weights)  # a truncated or foreign file is refused before loading


@dataclass(frozen=True)
class OwlCheckpoint:
    folder: Path
    style: OwlStyle
    model: Any
    """The ``style.model_class`` model in eval mode, as transformers loaded it."""
    processor: Any
    """The ``style.processor_class`` image processor from the folder's preprocessor config."""
    tokenizer: Any
    preprocessing: DetrPreprocessing
    input_size: int
    """Side of the square letterbox (the processor's size)."""
    queries: Queries
    embeddings: torch.Tensor
    """The queries' text embeddings ``[Q, D]``, as the model's forward computes them."""
    label_map: LabelMap


def _tokens(checkpoint_tokenizer: Any, model: Any, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """The processor's tokenization (padded to the text tower's positions); refuses a query that does not fit."""
    length = int(model.config.text_config.max_position_embeddings)
    for text in texts:
        count = len(checkpoint_tokenizer(text)["input_ids"])
        if count > length:
            raise DetrError(f"the query {text!r} is {count} tokens: this checkpoint's text tower takes at most "
                            f"{length} (shorten it in the queries file)")
    encoded = checkpoint_tokenizer(list(texts), padding="max_length", max_length=length, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _text_embeddings(model: Any, tokenizer: Any, texts: Sequence[str], size: int) -> torch.Tensor:
    """``[T, D]``: the model's own ``image_text_embedder`` text side (the image's is not used)."""
    tokens = _tokens(tokenizer, model, texts)
    pixels = torch.zeros((1, 3, size, size), dtype=torch.float32)
    with torch.no_grad():
        embeddings: torch.Tensor = model.image_text_embedder(pixel_values=pixels, **tokens)[0]
    return embeddings.reshape(len(texts), -1).detach().clone()


def _example_pixels(example: Example) -> npt.NDArray[np.uint8]:
    from fashionbox.core.imaging import DecodeLimits, InvalidImageError, decode_image

    limits = DecodeLimits()
    try:  # at full resolution, as transformers' processor takes a photo (no side exceeds the pixel limit: no DCT draft)
        decoded = decode_image(example.path.read_bytes(), target_size=limits.max_pixels, limits=limits)
    except (OSError, InvalidImageError) as exc:
        raise DetrError(f"the example photo {example.written!r} ({example.path}) cannot be read: {exc}") from exc
    return np.asarray(decoded.image.convert("RGB"), dtype=np.uint8)


def example_embedding(model: Any, processor: Any, example: Example) -> torch.Tensor:
    """``[D]``: an example photo's query embedding as transformers' ``image_guided_detection`` takes it: the photo
    through the checkpoint's own processor (its resize, and OWLv2's pad or OWL-ViT's centre crop), the image
    tower, then the model's ``embed_image_query`` (which picks the box that stands for the photo)."""
    inputs = processor(images=[_example_pixels(example)], return_tensors="pt")
    with torch.no_grad():
        feature_map = model.image_embedder(pixel_values=inputs["pixel_values"])[0]
        batch, rows, cols, dim = feature_map.shape
        embeds = model.embed_image_query(feature_map.reshape(batch, rows * cols, dim), feature_map)[0]
    if embeds is None:  # OWL-ViT's selection found no box (non-finite boxes)
        raise DetrError(f"the example photo {example.written!r} gave the model no box to take as the query")
    vector: torch.Tensor = embeds.reshape(-1).detach().clone()
    return vector


def query_embeddings(model: Any, processor: Any, tokenizer: Any, queries: Queries, size: int) -> torch.Tensor:
    """``[Q, D]``: each class's embedding. One prompt: its text's or example photo's embedding as the model
    computes it; several: the mean of their unit vectors (the OWL papers' prompt ensembling; the class head
    normalises the mean again)."""
    vectors: dict[Prompt, torch.Tensor] = {}
    if queries.texts:
        vectors.update(zip(queries.texts, _text_embeddings(model, tokenizer, queries.texts, size), strict=True))
    vectors.update((example, example_embedding(model, processor, example)) for example in queries.examples)
    rows = []
    for prompts in queries.prompts:
        stacked = torch.stack([vectors[prompt] for prompt in prompts])
        rows.append(stacked[0] if len(prompts) == 1 else torch.nn.functional.normalize(stacked, dim=-1).mean(0))
    return torch.stack(rows)


def with_queries(checkpoint: OwlCheckpoint, queries: Queries) -> OwlCheckpoint:
    """``checkpoint`` serving ``queries``' classes: their embeddings and label map."""
    embeddings = query_embeddings(checkpoint.model, checkpoint.processor, checkpoint.tokenizer, queries,
                                  checkpoint.input_size)
    return replace(checkpoint, queries=queries, embeddings=embeddings, label_map=_label_map(queries, checkpoint.style))


def _label_map(queries: Queries, style: OwlStyle) -> LabelMap:
    return family_label_map(dict(enumerate(queries.names)), name=style.model_type)


def load_owl(weights: Path, model_type: str, queries: Queries = DEFAULT_QUERIES) -> OwlCheckpoint:
    """Check, then load the checkpoint whose weights file is ``weights``; embed ``queries``."""
    weights = Path(weights)
    style = OWL_STYLES[model_type]
    _check_folder(weights, style)
    transformers = _transformers()
    cls = getattr(transformers, style.model_class)
    model = _load_model(cls, weights.parent, weights)
    if not isinstance(model, cls):
        raise DetrError(f"{weights.parent} holds a {type(model).__name__}, not a {style.model_class}")
    folder = weights.parent
    processor = getattr(transformers, style.processor_class).from_pretrained(str(folder), local_files_only=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers' own errors for damaged tokenizer files
        raise DetrError(f"{folder}: the tokenizer does not load: {exc}") from exc
    preprocessing = preprocessing_of(processor, folder)
    size = dict(processor.size)
    side = int(model.config.vision_config.image_size)
    if size.get("height", side) != size.get("width", side) or preprocessing.shortest_edge != side:
        raise DetrError(f"{folder}: the processor's size {size} is not the vision tower's square {side}: FashionBox "
                        "serves an OWL checkpoint at its own square")
    return OwlCheckpoint(folder=folder, style=style, model=model, processor=processor, tokenizer=tokenizer,
                         preprocessing=preprocessing, input_size=side, queries=queries,
                         embeddings=query_embeddings(model, processor, tokenizer, queries, side),
                         label_map=_label_map(queries, style))


def owl_loader(model_type: str) -> Callable[[Path], tuple[OwlCheckpoint, LabelMap]]:
    """The family table's loader: the checkpoint with the default queries, and its label map."""

    def load(weights: Path) -> tuple[OwlCheckpoint, LabelMap]:
        checkpoint = load_owl(weights, model_type)
        return checkpoint, checkpoint.label_map

    return load


def requery(checkpoint: OwlCheckpoint, path: Path) -> tuple[OwlCheckpoint, LabelMap]:
    """The family table's ``queries``: ``checkpoint`` serving the classes of the queries file ``path``."""
    checkpoint = with_queries(checkpoint, read_queries(path))
    return checkpoint, checkpoint.label_map


# -- export -------------------------------------------------------------------------------------------------


def owl_spec(checkpoint: OwlCheckpoint) -> DetrSpec:
    mean, std = checkpoint.preprocessing.image_mean, checkpoint.preprocessing.image_std
    return DetrSpec(model_class=checkpoint.style.model_class, scoring=OWL_SCORING, top_k=0,
                    input_size=checkpoint.input_size, rescale_factor=checkpoint.preprocessing.rescale_factor,
                    image_mean=(mean[0], mean[1], mean[2]), image_std=(std[0], std[1], std[2]))


def owl_graph(checkpoint: OwlCheckpoint) -> OwlGraph:
    return OwlGraph(checkpoint.model, owl_spec(checkpoint), checkpoint.embeddings).eval()


def export_owl_onnx(checkpoint: OwlCheckpoint, path: Path, *, nms: NmsSettings, opset: int = MIN_OPSET,
                    letterbox_stride: int = 0) -> Path:
    """The graph (TorchScript exporter; dynamic batch) for the square letterbox, class-wise NMS appended."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below the supported minimum {MIN_OPSET}")
    if letterbox_stride:
        raise ExportError(f"a {checkpoint.style.model_type} graph takes only the square letterbox (its position "
                          "embeddings and box bias are laid out for its own grid)")
    size = checkpoint.input_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    dynamic = {contract.ONNX_DETECTOR_INPUT: {0: "batch"}, contract.ONNX_DETECTOR_BOXES: {0: "batch"},
               contract.ONNX_DETECTOR_SCORES: {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings from torch and transformers
        torch.onnx.export(owl_graph(checkpoint), (example,), str(path), input_names=[contract.ONNX_DETECTOR_INPUT],
                          output_names=[contract.ONNX_DETECTOR_BOXES, contract.ONNX_DETECTOR_SCORES],
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False)
    checkpoint.model.eval()
    _append_nms(path, nms)
    check_onnx(path)
    return path


def write_owl_torch_files(checkpoint: OwlCheckpoint, folder: Path) -> Path:
    """``folder`` with what :class:`fashionbox.models.torch_runtime.TorchDetrDetector` loads: the model saved
    by transformers (safetensors), the graph's spec and the queries' embeddings."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.model.save_pretrained(folder, safe_serialization=True)
    owl_spec(checkpoint).write(folder)
    save_queries(folder, checkpoint.embeddings)
    return folder


# -- the transformers reference and the comparison -----------------------------------------------------------


def _transformers_outputs(checkpoint: OwlCheckpoint, pixels: npt.NDArray[np.uint8]) -> Any:
    """transformers' answer on letterboxed ``pixels``, normalised by the checkpoint's processor and nothing else.

    Plain queries (one text a class): the model's forward with the texts' token ids, as transformers' own
    example runs it. Prompt ensembles and example photos, which that forward cannot take: the model's own
    image tower and heads (``image_embedder``, ``class_predictor``, ``box_predictor``, the steps of its
    forward) against the classes' embeddings as converted (how those follow from their prompts is held to
    transformers' ``image_guided_detection`` and ``get_text_features`` in tests/test_owl.py)."""
    inputs = checkpoint.processor(images=list(pixels), return_tensors="pt",
                                  **dict.fromkeys(checkpoint.style.as_given, False))
    model, queries = checkpoint.model, checkpoint.queries
    with torch.no_grad():
        if queries.plain:
            tokens = _tokens(checkpoint.tokenizer, model, [str(ps[0]) for ps in queries.prompts])
            repeated = {k: v.repeat(len(pixels), 1) for k, v in tokens.items()}
            return model(pixel_values=inputs["pixel_values"], **repeated)
        embeds = checkpoint.embeddings
        feature_map = model.image_embedder(pixel_values=inputs["pixel_values"])[0]
        batch, rows, cols, dim = feature_map.shape
        patches = feature_map.reshape(batch, rows * cols, dim)
        logits = model.class_predictor(patches, embeds.unsqueeze(0).expand(batch, -1, -1), None)[0]
        return SimpleNamespace(logits=logits, pred_boxes=model.box_predictor(patches, feature_map))


def reference_detections(checkpoint: OwlCheckpoint, pixels: npt.NDArray[np.uint8],
                         nms: NmsSettings) -> list[DetectorOutput]:
    """Transformers' own result on letterboxed ``pixels`` ``[B, S, S, 3]``, then the served NMS.

    The processor normalises the pixels (no resize, no pad), the model runs with the queries' token ids,
    ``post_process_object_detection`` keeps the patches above ``nms.score_threshold`` (boxes in letterbox
    pixels), and :func:`fashionbox.models.nms.nms_onnx_semantics` suppresses among each class's boxes."""
    batch, height, width = pixels.shape[:3]
    outputs = _transformers_outputs(checkpoint, pixels)
    results = checkpoint.processor.post_process_object_detection(outputs, threshold=nms.score_threshold,
                                                                 target_sizes=[(height, width)] * batch)
    classes = len(checkpoint.queries.names)
    rows = []
    for result in results:
        boxes = result["boxes"].to(torch.float32).reshape(1, -1, 4)
        labels = result["labels"]
        scores = torch.zeros((1, classes, boxes.shape[1]), dtype=torch.float32)
        scores[0, labels, torch.arange(len(labels))] = result["scores"].to(torch.float32)
        selected = nms_onnx_semantics(boxes, scores, nms).numpy()
        kept = gather_detections(boxes.numpy(), scores.numpy(), selected, max_detections=nms.max_detections)[0]
        order = np.lexsort((kept.classes, -kept.scores))
        rows.append(DetectorOutput(boxes=kept.boxes[order], scores=kept.scores[order], classes=kept.classes[order]))
    return rows


LABEL_TIE = 1e-4
"""A patch whose best two queries' scores are closer than this may name either: float noise, not a different
answer (the comparison does not count it)."""


def dense_reference(checkpoint: OwlCheckpoint, pixels: npt.NDArray[np.uint8]
                    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32],
                               npt.NDArray[np.float32]]:
    """transformers' answer for every patch of letterboxed ``pixels`` ``[B, S, S, 3]``: the processor's
    ``post_process_object_detection`` with no threshold gives each patch's score ``[B, N]``, query ``[B, N]``
    and box ``[B, N, 4]`` (letterbox pixels); and the margin ``[B, N]`` between its best two queries' scores."""
    batch, height, width = pixels.shape[:3]
    outputs = _transformers_outputs(checkpoint, pixels)
    results = checkpoint.processor.post_process_object_detection(outputs, threshold=-1.0,
                                                                 target_sizes=[(height, width)] * batch)
    top = outputs.logits.float().sigmoid().topk(min(2, outputs.logits.shape[-1]), dim=-1).values
    margin = (top[..., 0] - top[..., -1]) if top.shape[-1] > 1 else torch.full_like(top[..., 0], float("inf"))
    return (np.stack([r["scores"].float().numpy() for r in results]), np.stack([r["labels"].numpy() for r in results]),
            np.stack([r["boxes"].float().numpy() for r in results]), margin.numpy())


def compare_owl(checkpoint: OwlCheckpoint, path: Path, batches: Sequence[npt.NDArray[np.uint8]],
                nms: NmsSettings) -> ComparisonReport:
    """The exported graph (ONNX Runtime) against transformers, patch by patch, and its NMS against
    :func:`fashionbox.models.nms.nms_onnx_semantics` on the graph's own boxes and scores.

    ``scores`` and ``boxes``: the largest difference over every patch (its best query's score, its box)
    from transformers' model and ``post_process_object_detection``; ``labels_mismatch``: patches whose best
    query differs, their best two not within :data:`LABEL_TIE`; ``nms_count_mismatch``: images whose kept
    set differs from the reference NMS's on the same inputs. Dense, so a score a hair's breadth from the
    threshold, or two boxes at the IoU limit, cannot refuse a good conversion by chance."""
    session = _session(path)
    errors = {"scores": 0.0, "boxes": 0.0, "labels_mismatch": 0.0, "nms_count_mismatch": 0.0}
    samples = 0
    for batch in batches:
        boxes, scores, selected = session.run(None, {contract.ONNX_DETECTOR_INPUT: batch})  # type: ignore[attr-defined]
        ref_scores, ref_labels, ref_boxes, margin = dense_reference(checkpoint, batch)
        errors["scores"] = max(errors["scores"], float(np.abs(scores.max(axis=1) - ref_scores).max()))
        errors["boxes"] = max(errors["boxes"], float(np.abs(boxes - ref_boxes).max()))
        errors["labels_mismatch"] += float(((scores.argmax(axis=1) != ref_labels) & (margin > LABEL_TIE)).sum())
        expected = nms_onnx_semantics(torch.from_numpy(boxes), torch.from_numpy(scores), nms).numpy()
        for image in range(len(batch)):
            ours = {tuple(row) for row in selected[selected[:, 0] == image].tolist()}
            if ours != {tuple(row) for row in expected[expected[:, 0] == image].tolist()}:
                errors["nms_count_mismatch"] += 1
        samples += len(batch)
    return ComparisonReport("detector", errors, samples)
