"""The classifier and embedder families: a transformers image-level checkpoint -> uint8-in ONNX graphs.

One room for the two image-level families of issue 16 (docs/STYLE.md rule 15):

- **classifier**: any ``AutoModelForImageClassification`` checkpoint (ViT, ConvNeXt, ResNet,
  EfficientNet, ...). Graph ``images`` uint8 ``[B, H, W, 3]`` -> the processor's rescale and
  normalisation -> logits -> softmax (sigmoid for ``problem_type ==
  "multi_label_classification"``) = ``probs [B, L]``, labels from ``config.id2label``.
- **embedder**: CLIP (``CLIPModel``) and SigLIP (``SiglipModel``). Image graph ``images`` ->
  ``get_image_features`` -> L2 normalisation = ``embeddings [B, D]``; text graph ``input_ids``
  (and ``attention_mask`` when the family's tokenizer gives one) -> ``get_text_features`` -> L2
  normalisation = ``embeddings [B, D]``, with the tokenizer saved for
  :class:`fashionbox.core.text.TextTokenizer`.

::

    model = load_image_model("hf:google/vit-base-patch16-224", "classifier")   # or hf:FOLDER
    files = export_image_model(model, Path("out"))       # {"image": out/image.onnx}
    report = compare_image_model(model, files, images)   # raises ConvertError over tolerance

**The geometry is a** :class:`~fashionbox.core.views.ViewRecipe`, **the normalisation is in the graph.**
The processor's resize and centre crop are read from it into a recipe that the server's
``preprocess`` applies with PIL (pixel-identical to the processor's); the processor's rescale,
mean and std (and EfficientNet's ``rescale_offset``/``include_top``) form one per-channel affine map
``x * scale + bias`` that the graph applies to the uint8 pixels. The affine map is measured from
the processor itself (its output on constant images, then checked on a random one), so the graph
normalises exactly as the library does, and a processor whose normalisation is not per-channel
affine is refused. Processors whose resize is their own (neither transformers' generic one nor
ConvNeXt's ``crop_pct``) are refused by name rather than approximated.

**Parity** (:func:`compare_image_model`) is the library's own processor and forward on each image
against the ONNX graph (ONNX Runtime) on ``view.apply(image)``: classifier top-5 labels equal and
probabilities within 1e-3; embedder cosine >= 0.999 against ``get_image_features``, and on the
text tower against ``get_text_features`` over fixed phrases tokenized by the saved tokenizer.

**Checked before any weights load** (JSON only): ``config.json`` is of the kind asked for (a
detector given as a classifier, a classifier as an embedder, ... are refused with the spec that
fits), a classifier names its labels (``id2label``), and the processor config
(``preprocessor_config.json``, or ``processor_config.json``'s ``image_processor``) states the
input size and, when it normalises, ``image_mean`` and ``image_std``. Weights load without pickle
(safetensors, or ``pytorch_model.bin`` through ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from fashionbox import contract
from fashionbox.converter.errors import ConvertError
from fashionbox.converter.export import MIN_OPSET, ExportError, _session, check_onnx
from fashionbox.core.text import SETTINGS_FILE, TOKENIZER_FILE, TextSettings, TextTokenizer
from fashionbox.core.views import RESAMPLE_FILTERS, ViewRecipe
from fashionbox.models.image_graph import ImageGraph, TextGraph, features

__all__ = [
    "CLASSIFIER_TOLERANCE",
    "EMBEDDER_MIN_COSINE",
    "EMBEDDER_STYLES",
    "TEXT_PHRASES",
    "EmbedderStyle",
    "ImageModel",
    "ImageModelError",
    "Kind",
    "compare_image_model",
    "export_image_model",
    "load_image_model",
    "view_of",
]

log = logging.getLogger(__name__)

Kind = Literal["classifier", "embedder"]

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")
"""Fetched from the Hub beside hub.HUB_FILES for the families with a text tower (no pickle files)."""

CLASSIFIER_TOLERANCE = 1e-3
"""Largest |probability difference| allowed against the library (issue 16)."""
EMBEDDER_MIN_COSINE = 0.999
"""Smallest cosine allowed between the graph's and the library's embedding (issue 16)."""
TOP_K = 5

TEXT_PHRASES = ("a red shirt", "a blue dress with long sleeves", "black leather shoes",
                "a striped summer skirt worn with white sneakers and a yellow handbag on a sunny street")
"""What the text towers are compared on (the last is long enough to be truncated by small towers)."""

INSTALL_HINT = ("Hugging Face checkpoints need transformers: pip install 'fashionbox-converter[hf]' "
                "(or -c constraints.txt transformers)")

SUPPORTED_SPECS = ("--classifier takes hf:FOLDER_OR_HUB_ID of a transformers AutoModelForImageClassification "
                   "checkpoint (ViT, ConvNeXt, ResNet, EfficientNet, ...); --embedder takes hf:FOLDER_OR_HUB_ID of a "
                   "CLIP or SigLIP checkpoint (CLIPModel, SiglipModel); detectors go to --detector")


class ImageModelError(ConvertError):
    """A checkpoint that is not a usable classifier or embedder of the kind asked for."""


@dataclass(frozen=True)
class EmbedderStyle:
    """What one embedder ``model_type`` needs: its model class and how its processor pads text."""

    model_type: str
    model_class: str
    padding: Literal["longest", "max_length"]
    """CLIP's processors pad to the batch's longest text; SigLIP's documentation requires ``max_length``."""


EMBEDDER_STYLES: dict[str, EmbedderStyle] = {
    "clip": EmbedderStyle("clip", "CLIPModel", "longest"),
    "siglip": EmbedderStyle("siglip", "SiglipModel", "max_length"),
}
"""``model_type`` -> embedder style (the family table of the embedder kind)."""


@dataclass(frozen=True)
class ImageModel:
    kind: Kind
    name: str
    """Provenance: the spec (``hf:org/name``) or the folder's name."""
    model: Any
    """The torch module in eval mode, as transformers loaded it."""
    view: ViewRecipe
    labels: tuple[str, ...] = ()
    """Classifier: ``config.id2label`` in index order."""
    multi_label: bool = False
    dimension: int = 0
    """Embedder: the embedding's length."""
    has_text: bool = False
    tokenizer: Any | None = None
    """Embedder with a text tower: the transformers tokenizer (the reference for the saved one)."""
    processor: Any | None = None
    """The transformers image processor (the reference for the view and the normalisation)."""
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The processor's normalisation as ``pixel * scale + bias`` per RGB channel."""
    text_settings: TextSettings | None = None
    folder: Path | None = None


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return transformers


# -- the spec and the folder (JSON only: nothing imported or executed) --------------------------------------------


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImageModelError(f"cannot read {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise ImageModelError(f"{file} is not a JSON object")
    return data


def fetch_hub_folder(repo_id: str, *, text_files: bool) -> Path:
    """The Hub snapshot of ``repo_id`` (:mod:`.hub`), with the tokenizer files too when asked (a text tower's)."""
    from fashionbox.converter.hub import HubError, fetch_checkpoint, hub_cache_dir, hub_offline

    folder = fetch_checkpoint(repo_id)
    if not text_files:
        return folder
    # hub.fetch_checkpoint fetches the detector's files only; the same snapshot's tokenizer files come here
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    try:
        return Path(str(snapshot_download(repo_id, cache_dir=cache, local_files_only=hub_offline(),
                                          allow_patterns=list(TOKENIZER_FILES))))
    except Exception as exc:  # the model files came; only the tokenizer's are missing from the cache
        raise HubError(f"hf:{repo_id}: the Hugging Face cache {cache} has the model but not its tokenizer files "
                       f"({', '.join(TOKENIZER_FILES)}): fill it on a machine with a network, e.g. "
                       f"HF_HUB_CACHE={cache} hf download {repo_id}") from exc


def resolve_folder(spec: str, kind: Kind) -> tuple[Path, str]:
    """``hf:FOLDER`` or ``hf:ORG/NAME`` -> (local checkpoint folder, provenance name)."""
    if not isinstance(spec, str) or not spec.startswith("hf:"):
        raise ImageModelError(f"{spec!r}: a {kind} is given as hf:FOLDER_OR_HUB_ID (timm: and open_clip: specs are not "
                              "supported: they import torchvision, which does not load against this torch)")
    from fashionbox.converter.hub import is_hub_id

    text = spec[3:]
    folder = Path(text).expanduser()
    if folder.exists():
        return folder, folder.name
    if is_hub_id(text):
        return fetch_hub_folder(text, text_files=kind == "embedder"), spec
    raise ImageModelError(f"{spec}: {folder} does not exist and is not a Hub id ORG/NAME")


def _processor_dict(folder: Path) -> tuple[dict[str, Any], Path]:
    if (folder / PREPROCESSOR_FILE).is_file():
        return _read_json(folder / PREPROCESSOR_FILE), folder / PREPROCESSOR_FILE
    if (folder / PROCESSOR_FILE).is_file():
        nested = _read_json(folder / PROCESSOR_FILE).get("image_processor")
        if isinstance(nested, dict):
            return nested, folder / PROCESSOR_FILE
    raise ImageModelError(f"{folder} has no {PREPROCESSOR_FILE} (nor an image_processor in {PROCESSOR_FILE}): the "
                          "input size and normalisation must come from the checkpoint")


def _is_detector(config: dict[str, Any]) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    archs = [str(a) for a in config.get("architectures") or []]
    return (any(a.endswith("ForObjectDetection") for a in archs)
            or (not archs and config.get("model_type") in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES))


def check_folder(folder: Path, kind: Kind) -> dict[str, Any]:
    """Refuse a folder that is not a usable ``kind`` checkpoint before any weights load; its config."""
    if not folder.is_dir():
        raise ImageModelError(f"{folder} is not a folder: expected a Hugging Face checkpoint folder")
    if not (folder / CONFIG_FILE).is_file():
        raise ImageModelError(f"{folder} has no {CONFIG_FILE}: not a Hugging Face checkpoint folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ImageModelError(f"{folder} has none of {list(WEIGHT_FILES)}")
    config = _read_json(folder / CONFIG_FILE)
    model_type = str(config.get("model_type", ""))
    archs = [str(a) for a in config.get("architectures") or []]
    what = f"{folder / CONFIG_FILE} (model_type {model_type!r}, architectures {archs})"
    if _is_detector(config):
        raise ImageModelError(f"{what} is an object detector, not a {kind}: give it as --detector. {SUPPORTED_SPECS}")
    if kind == "classifier":
        if model_type in EMBEDDER_STYLES and not any(a.endswith("ForImageClassification") for a in archs):
            raise ImageModelError(f"{what} is an image-text embedder, not a classifier: give it as --embedder. "
                                  f"{SUPPORTED_SPECS}")
        if archs and not any(a.endswith("ForImageClassification") for a in archs):
            raise ImageModelError(f"{what} is not an image classifier (no *ForImageClassification architecture). "
                                  f"{SUPPORTED_SPECS}")
        id2label = config.get("id2label")
        if not isinstance(id2label, dict) or not id2label:
            raise ImageModelError(f"{folder / CONFIG_FILE} has no id2label: the label names and count must come from "
                                  "the checkpoint")
        if sorted(int(k) for k in id2label) != list(range(len(id2label))):
            raise ImageModelError(f"{folder / CONFIG_FILE}: id2label is not numbered 0..{len(id2label) - 1}")
        num_labels = config.get("num_labels")
        if num_labels is not None and int(num_labels) != len(id2label):
            raise ImageModelError(f"{folder / CONFIG_FILE}: num_labels {num_labels} but id2label names "
                                  f"{len(id2label)} labels")
    else:
        if model_type not in EMBEDDER_STYLES:
            hint = (" (an image classifier: give it as --classifier)"
                    if any(a.endswith("ForImageClassification") for a in archs) else "")
            raise ImageModelError(f"{what} is not a CLIP or SigLIP checkpoint{hint}. {SUPPORTED_SPECS}")
        style = EMBEDDER_STYLES[model_type]
        if archs and style.model_class not in archs:
            raise ImageModelError(f"{what} is not a {style.model_class} checkpoint (the image and text towers with "
                                  f"their projections). {SUPPORTED_SPECS}")
    processor, file = _processor_dict(folder)
    if not any(isinstance(processor.get(key), (dict, int)) and processor.get(key) for key in ("size", "crop_size")):
        raise ImageModelError(f"{file} states no input size (size or crop_size)")
    if processor.get("do_normalize", True):
        for key in ("image_mean", "image_std"):
            value = processor.get(key)
            if not isinstance(value, list) or len(value) != 3:
                raise ImageModelError(f"{file} states no normalisation: {key} must be a list of 3 values "
                                      f"(one per RGB channel), got {value!r}")
    return config


# -- the view and the normalisation, read from the processor -----------------------------------------------------


def _size_dict(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    items = value.items() if hasattr(value, "items") else dict(value).items()
    return {str(k): int(v) for k, v in items if v}


def _resample_name(processor: Any) -> str:
    value = getattr(processor, "resample", None)
    try:
        number = int(value) if value is not None else int(RESAMPLE_FILTERS["bilinear"])
    except (TypeError, ValueError) as exc:
        raise ImageModelError(f"{type(processor).__name__}: resample {value!r} is not a PIL filter") from exc
    for name, filter_id in RESAMPLE_FILTERS.items():
        if filter_id == number:
            return name
    raise ImageModelError(f"{type(processor).__name__}: resample {value!r} is not a PIL filter")


def view_of(processor: Any, where: str = "the processor") -> ViewRecipe:
    """The processor's resize and crop as a :class:`ViewRecipe` (refusing what it cannot express exactly)."""
    from transformers.image_processing_backends import PilBackend

    cls = type(processor)
    name = cls.__name__
    convnext = name.startswith("ConvNextImageProcessor")
    generic_resize = cls.resize is PilBackend.resize and cls.center_crop is PilBackend.center_crop
    generic_steps = cls._preprocess is PilBackend._preprocess or name.startswith("EfficientNetImageProcessor")
    if not isinstance(processor, PilBackend) or not (convnext or (generic_resize and generic_steps)):
        raise ImageModelError(f"{where}: {name} resizes or crops its own way, which the served view does not "
                              "reproduce exactly (supported: transformers' generic PIL resize and centre crop, and "
                              "ConvNeXt's crop_pct)")
    if not getattr(processor, "do_resize", False):
        raise ImageModelError(f"{where}: do_resize is false, so the input size follows each image; a served "
                              "image-level model needs a fixed input size")
    if getattr(processor, "do_pad", False):
        raise ImageModelError(f"{where}: do_pad is set; padded processors are not supported")
    resample = _resample_name(processor)
    size = _size_dict(getattr(processor, "size", None))
    crop_size = _size_dict(getattr(processor, "crop_size", None))
    do_crop = bool(getattr(processor, "do_center_crop", False))
    if convnext:
        if do_crop:
            raise ImageModelError(f"{where}: ConvNeXt's crop_pct crop followed by a second centre crop is not "
                                  "supported")
        edge = size.get("shortest_edge")
        if not edge:
            raise ImageModelError(f"{where}: ConvNeXt's size needs shortest_edge, got {size}")
        if edge < 384:  # transformers' rule: resize to edge / crop_pct, crop edge x edge
            crop_pct = float(getattr(processor, "crop_pct", 224 / 256) or 224 / 256)
            return ViewRecipe(edge, edge, shortest_edge=int(edge / crop_pct), crop=(edge, edge), resample=resample)
        return ViewRecipe(edge, edge, resize=(edge, edge), resample=resample)
    if "longest_edge" in size or "max_height" in size or "max_width" in size:
        raise ImageModelError(f"{where}: size {size} bounds the long side, so the input size follows each image")
    crop = (crop_size["height"], crop_size["width"]) if do_crop and {"height", "width"} <= set(crop_size) else None
    if do_crop and crop is None:
        raise ImageModelError(f"{where}: do_center_crop is set but crop_size {crop_size} has no height and width")
    if "shortest_edge" in size:
        if crop is None:
            raise ImageModelError(f"{where}: a shortest-edge resize ({size}) without a centre crop gives each image "
                                  "its own size; a served image-level model needs a fixed input size")
        return ViewRecipe(crop[0], crop[1], shortest_edge=size["shortest_edge"], crop=crop, resample=resample)
    if {"height", "width"} <= set(size):
        resize = (size["height"], size["width"])
        final = crop if crop is not None else resize
        return ViewRecipe(final[0], final[1], resize=resize, crop=crop, resample=resample)
    raise ImageModelError(f"{where}: cannot tell the input size from size {size}")


def normalisation_of(processor: Any, view: ViewRecipe, where: str = "the processor"
                     ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The processor's rescale and normalisation as per-channel ``(scale, bias)``, measured from the processor."""

    def run(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        out = processor(images=[pixels], do_resize=False, do_center_crop=False, return_tensors="np")
        return np.asarray(out["pixel_values"][0], dtype=np.float64)  # [3, H, W]

    shape = (view.height, view.width, 3)
    low, high = run(np.zeros(shape, np.uint8)), run(np.full(shape, 255, np.uint8))
    if low.shape != (3, view.height, view.width):
        raise ImageModelError(f"{where}: the processor's output {low.shape} is not RGB at {view.height}x{view.width}")
    bias = low.reshape(3, -1).mean(axis=1)
    scale = (high.reshape(3, -1).mean(axis=1) - bias) / 255.0
    probe = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    expected = probe.transpose(2, 0, 1) * scale[:, None, None] + bias[:, None, None]
    error = float(np.abs(run(probe) - expected).max())
    if error > 1e-4:
        raise ImageModelError(f"{where}: the processor's normalisation is not a per-channel affine map of the pixels "
                              f"(off by {error:.3g}); it cannot be folded into the graph")
    return (float(scale[0]), float(scale[1]), float(scale[2])), (float(bias[0]), float(bias[1]), float(bias[2]))


# -- loading ----------------------------------------------------------------------------------------------------


def _load_weights(cls: Any, folder: Path) -> Any:
    pickle_only = not any((folder / n).is_file() for n in WEIGHT_FILES[:2])
    try:
        if pickle_only:  # tensors only through torch.load(weights_only=True), never arbitrary objects
            model = cls.from_pretrained(str(folder), use_safetensors=False, weights_only=True, local_files_only=True)
        else:
            model = cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
    except Exception as exc:  # transformers' own errors: missing or mismatched tensors, bad files
        raise ImageModelError(f"{folder} does not load as a {getattr(cls, '__name__', cls)}: {exc}") from exc
    return model.eval()


def _text_settings(tokenizer: Any, text_config: Any, style: EmbedderStyle, folder: Path) -> TextSettings:
    limits = [int(v) for v in (getattr(tokenizer, "model_max_length", None),
                               getattr(text_config, "max_position_embeddings", None)) if v and int(v) < 10**6]
    if not limits:
        raise ImageModelError(f"{folder}: cannot tell the text tower's maximum length")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ImageModelError(f"{folder}: the tokenizer has no pad token")
    probe = tokenizer(["a"], padding=style.padding, truncation=True, max_length=min(limits))
    fast = getattr(tokenizer, "backend_tokenizer", None) is not None
    return TextSettings(backend="tokenizers" if fast else "transformers", padding=style.padding,
                        max_length=min(limits), pad_id=int(pad_id), pad_token=str(tokenizer.pad_token),
                        attention_mask="attention_mask" in probe)


def load_image_model(spec: str, kind: Kind) -> ImageModel:
    """Check, then load ``hf:FOLDER_OR_HUB_ID`` as a ``kind`` (``classifier`` or ``embedder``)."""
    if kind not in ("classifier", "embedder"):
        raise ImageModelError(f"kind must be 'classifier' or 'embedder', got {kind!r}")
    folder, name = resolve_folder(spec, kind)
    config = check_folder(folder, kind)
    tf = _transformers()
    where = str(_processor_dict(folder)[1])
    try:
        processor = tf.AutoImageProcessor.from_pretrained(str(folder), backend="pil", local_files_only=True)
    except Exception as exc:
        raise ImageModelError(f"{where} does not load as a transformers image processor: {exc}") from exc
    view = view_of(processor, where)
    scale, bias = normalisation_of(processor, view, where)
    if kind == "classifier":
        model = _load_weights(tf.AutoModelForImageClassification, folder)
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        if len(id2label) != model.config.num_labels:
            raise ImageModelError(f"{folder / CONFIG_FILE}: id2label has {len(id2label)} entries for "
                                  f"{model.config.num_labels} labels")
        multi = getattr(model.config, "problem_type", None) == "multi_label_classification"
        return ImageModel(kind="classifier", name=name, model=model, view=view,
                          labels=tuple(id2label[i] for i in range(len(id2label))), multi_label=multi,
                          processor=processor, scale=scale, bias=bias, folder=folder)
    style = EMBEDDER_STYLES[str(config["model_type"])]
    model = _load_weights(getattr(tf, style.model_class), folder)
    dimension = _image_features(model, torch.zeros((1, 3, view.height, view.width))).shape[-1]
    tokenizer = None
    settings = None
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # no tokenizer files: the image tower alone is served
        log.warning("%s: no tokenizer loads (%s); the text tower is not exported", folder, exc)
    if tokenizer is not None:
        settings = _text_settings(tokenizer, model.config.text_config, style, folder)
    return ImageModel(kind="embedder", name=name, model=model, view=view, dimension=int(dimension),
                      has_text=tokenizer is not None, tokenizer=tokenizer, processor=processor, scale=scale,
                      bias=bias, text_settings=settings, folder=folder)


# -- the graphs ------------------------------------------------------------------------------------------------


def _image_features(model: Any, pixel_values: Tensor) -> Tensor:
    with torch.no_grad():
        result: Tensor = features(model.get_image_features(pixel_values=pixel_values))
    return result


def _image_graph(model: ImageModel) -> ImageGraph:
    return ImageGraph(model.model, kind=model.kind, scale=model.scale, bias=model.bias,
                      multi_label=model.multi_label)


def _export(module: nn.Module, example: tuple[Tensor, ...], path: Path, inputs: list[str], output: str,
            dynamic: dict[str, dict[int, str]], opset: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings from torch and transformers
        torch.onnx.export(module, example, str(path), input_names=inputs, output_names=[output],
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False)
    check_onnx(path)
    return path


def export_image_model(model: ImageModel, out_dir: Path, *, opset: int = MIN_OPSET) -> dict[str, Path]:
    """``{"image": image.onnx}``, plus ``"text": text.onnx`` and ``"tokenizer": tokenizer/`` with a text tower."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below the supported minimum {MIN_OPSET}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = contract.ONNX_CLASSIFIER_OUTPUT if model.kind == "classifier" else contract.ONNX_EMBEDDER_OUTPUT
    example = torch.zeros((2, model.view.height, model.view.width, 3), dtype=torch.uint8)  # batch 2: FIELD_NOTES
    files = {"image": _export(_image_graph(model).eval(), (example,), out_dir / "image.onnx",
                              [contract.ONNX_IMAGE_INPUT], output,
                              {contract.ONNX_IMAGE_INPUT: {0: "batch"}, output: {0: "batch"}}, opset)}
    model.model.eval()  # the exporter restores each submodule's mode: keep eval certain
    if model.has_text and model.text_settings is not None:
        files["tokenizer"] = save_tokenizer(model, out_dir / "tokenizer")
        settings = model.text_settings
        feeds = TextTokenizer.from_folder(files["tokenizer"])(list(TEXT_PHRASES[:2]))
        names = list(settings.input_names)
        dynamic = {name: {0: "batch", 1: "tokens"} for name in names}
        dynamic[contract.ONNX_EMBEDDER_OUTPUT] = {0: "batch"}
        example_text = tuple(torch.from_numpy(feeds[name]) for name in names)
        files["text"] = _export(TextGraph(model.model).eval(), example_text, out_dir / "text.onnx", names,
                                contract.ONNX_EMBEDDER_OUTPUT, dynamic, opset)
        model.model.eval()
    return files


def save_tokenizer(model: ImageModel, folder: Path) -> Path:
    """The tokenizer for :class:`fashionbox.core.text.TextTokenizer`: ``tokenizer.json`` or the library's files."""
    if model.tokenizer is None or model.text_settings is None:
        raise ImageModelError(f"{model.name} has no text tower")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if model.text_settings.backend == "tokenizers":
        model.tokenizer.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    else:
        model.tokenizer.save_pretrained(str(folder))
    (folder / SETTINGS_FILE).write_text(model.text_settings.to_json() + "\n", encoding="utf-8")
    return folder


# -- the library's reference and the comparison ------------------------------------------------------------------


def _pil(image: npt.NDArray[np.uint8]) -> Any:
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ImageModelError(f"comparison images are uint8 [H, W, 3] RGB, got {array.dtype} {array.shape}")
    return Image.fromarray(array, "RGB")


def _cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    cosines: npt.NDArray[np.float64] = (a64 * b64).sum(-1) / norms
    return cosines


def compare_image_model(model: ImageModel, files: dict[str, Path], images: Sequence[npt.NDArray[np.uint8]]
                        ) -> dict[str, float]:
    """The library (its processor on each image, its forward) against the graphs on ``view.apply`` pixels.

    Classifier: ``max_prob_diff`` and ``top5_equal`` (images whose top-5 labels, in order, agree);
    embedder: ``image_min_cosine`` and, with a text tower, ``text_min_cosine`` over
    :data:`TEXT_PHRASES`. Raises :class:`ImageModelError` when over the tolerances of issue 16.
    """
    if not images:
        raise ImageModelError("no images to compare on")
    pictures = [_pil(image) for image in images]
    pixels = np.stack([model.view.apply(p) for p in pictures])
    ours = _session(files["image"]).run(None, {contract.ONNX_IMAGE_INPUT: pixels})[0]  # type: ignore[attr-defined]
    inputs = model.processor(images=pictures, return_tensors="pt")  # type: ignore[misc]
    report: dict[str, float] = {"images": float(len(images))}
    with torch.no_grad():
        if model.kind == "classifier":
            logits = model.model(pixel_values=inputs["pixel_values"]).logits
            theirs = (logits.sigmoid() if model.multi_label else logits.softmax(-1)).numpy()
            k = min(TOP_K, theirs.shape[1])
            top_ours = np.argsort(-ours, axis=1, kind="stable")[:, :k]
            top_theirs = np.argsort(-theirs, axis=1, kind="stable")[:, :k]
            report["max_prob_diff"] = float(np.abs(ours - theirs).max())
            report["top5_equal"] = float((top_ours == top_theirs).all(axis=1).sum())
            if report["max_prob_diff"] > CLASSIFIER_TOLERANCE or report["top5_equal"] < len(images):
                raise ImageModelError(f"{model.name}: the classifier graph does not match transformers: {report} "
                                      f"(probabilities within {CLASSIFIER_TOLERANCE} and every top-{k} equal required)")
            return report
        theirs = _image_features(model.model, inputs["pixel_values"]).numpy()
        report["image_min_cosine"] = float(_cosines(ours, theirs).min())
        if model.has_text and "text" in files:
            assert model.tokenizer is not None and model.text_settings is not None
            settings = model.text_settings
            feeds = TextTokenizer.from_folder(files["tokenizer"])(list(TEXT_PHRASES))
            text_ours = _session(files["text"]).run(None, feeds)[0]  # type: ignore[attr-defined]
            tokens = model.tokenizer(list(TEXT_PHRASES), padding=settings.padding, truncation=True,
                                     max_length=settings.max_length, return_tensors="pt")
            kwargs = {name: tokens[name] for name in settings.input_names}
            text_theirs = features(model.model.get_text_features(**kwargs)).numpy()
            report["text_min_cosine"] = float(_cosines(text_ours, text_theirs).min())
            same = all(np.array_equal(feeds[n], tokens[n].numpy()) for n in settings.input_names)
            report["tokens_equal"] = float(same)
    worst = min(v for k, v in report.items() if k.endswith("_min_cosine"))
    if worst < EMBEDDER_MIN_COSINE or report.get("tokens_equal", 1.0) < 1.0:
        raise ImageModelError(f"{model.name}: the embedder graphs do not match transformers: {report} (cosine >= "
                              f"{EMBEDDER_MIN_COSINE} and the saved tokenizer's tokens equal required)")
    return report
