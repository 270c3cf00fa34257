"""Network definitions and their checkpoints (safetensors only: no pickle, no code from a file).

A checkpoint is one ``.safetensors`` file whose metadata carries everything needed to rebuild
the network and read its outputs: the architecture config, the label map and a format tag::

    detector, labels = load_detector(default_weights("detector"))
    save_checkpoint(path, detector, kind="detector", config_json=..., label_map=labels)

The shipped default weights live in ``models/weights/`` and are reproduced by
``fashionbox train`` (see README).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Literal

from torch import nn

from fashionbox.contract.labels import LabelMap
from fashionbox.models.attributes import AttributeClassifier, AttributeConfig
from fashionbox.models.detector import DetectorConfig, FashionDetector

__all__ = [
    "AttributeClassifier",
    "AttributeConfig",
    "CheckpointError",
    "DetectorConfig",
    "FashionDetector",
    "checkpoint_metadata",
    "default_weights",
    "file_sha256",
    "load_attributes",
    "load_detector",
    "save_checkpoint",
    "served_score_threshold",
    "verifier_serves",
]

Kind = Literal["detector", "attributes"]
_FORMAT = "fashionbox-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, of the wrong kind, or does not match its network."""


def default_weights(kind: Kind) -> Path:
    """Path of the shipped weights for ``kind``."""
    path = Path(str(resources.files("fashionbox.models").joinpath(f"weights/{kind}.safetensors")))
    if not path.is_file():
        raise CheckpointError(f"shipped {kind} weights are missing at {path}; run `fashionbox train`")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verifier_serves(classifier: AttributeClassifier, detector_sha256: str, categories: int) -> bool:
    """Whether ``classifier``'s verifier head (the second stage) re-scores a detector's detections: only
    where it has one, fitted to exactly that detector checkpoint (``detector_sha256``, the file's), over
    its ``categories``. Its offsets correct that detector's scores; another detector's, even one trained
    on the same scenes, would be corrected wrongly (``fashionbox train --stage verifier`` refits it)."""
    config = classifier.config
    return (classifier.verifier_head is not None and config.verifier_detector == detector_sha256
            and config.verifier_classes == categories)


def save_checkpoint(path: Path, model: nn.Module, *, kind: Kind, config_json: str, label_map: LabelMap,
                    extra: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    metadata = {"format": _FORMAT, "kind": kind, "config": config_json, "label_map": label_map.to_json()}
    metadata.update(extra or {})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)


def checkpoint_metadata(path: Path) -> dict[str, str]:
    """The string metadata a checkpoint carries (its config, label map, training recipe, ...)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def served_score_threshold(path: Path) -> float:
    """The score threshold ``fashionbox convert`` serves the detector checkpoint at by default: a calibrated
    detector's own (in its calibrated units), else the contract's."""
    return DetectorConfig.from_json(checkpoint_metadata(path)["config"]).served_score_threshold


def _read(path: Path, kind: Kind) -> tuple[dict[str, object], dict[str, str]]:
    from safetensors import safe_open

    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if metadata.get("format") != _FORMAT or metadata.get("kind") != kind:
        raise CheckpointError(
            f"{path} is not a FashionBox {kind} checkpoint (format={metadata.get('format')!r}, "
            f"kind={metadata.get('kind')!r})"
        )
    return tensors, metadata


def _load_state(model: nn.Module, tensors: dict[str, object], path: Path) -> None:
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match its declared architecture: {exc}") from exc


def load_detector(path: Path) -> tuple[FashionDetector, LabelMap]:
    tensors, metadata = _read(path, "detector")
    labels = LabelMap.from_dict(json.loads(metadata["label_map"]))
    model = FashionDetector(DetectorConfig.from_json(metadata["config"]))
    _load_state(model, tensors, path)
    return model.eval(), labels


def load_attributes(path: Path) -> tuple[AttributeClassifier, LabelMap]:
    tensors, metadata = _read(path, "attributes")
    labels = LabelMap.from_dict(json.loads(metadata["label_map"]))
    model = AttributeClassifier(AttributeConfig.from_json(metadata["config"]))
    _load_state(model, tensors, path)
    return model.eval(), labels
