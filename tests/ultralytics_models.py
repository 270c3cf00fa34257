"""Tiny random Ultralytics YOLO models built offline, exported by Ultralytics itself, and its predictor.

Shared by tests/test_ultralytics.py and tests/benchmarks/bench_families.py. Ultralytics is a
test/benchmark dependency only (requirements-dev.txt, installed ``--no-deps`` by
scripts/setup.sh); the converter never imports it.

Two facts of this machine shape the helpers (docs/FIELD_NOTES.md):

- torchvision cannot load against the CPU torch here and is not installed, but ultralytics reads
  its *version* from the package metadata at import time. :func:`import_ultralytics` puts a
  metadata-only ``torchvision`` distribution (no module) on ``sys.path`` first, so
  ``import torchvision`` still fails and Ultralytics' NMS is its own ``TorchNMS`` (written to
  match torchvision's ``nms``). Its predictor's warm-up imports torchvision outright, so
  :func:`predict` skips the warm-up (a dummy forward pass; it changes no result).
- A freshly built random YOLO outputs constants (BatchNorm's default statistics shrink the
  activations layer after layer): :func:`build_yolo` runs a few forward passes in train mode with
  ``momentum=None`` (a plain average) first, then draws the class biases so scores spread.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DEEPFASHION2 = ("short sleeve top", "long sleeve top", "short sleeve outwear", "long sleeve outwear", "vest",
                "sling", "shorts", "trousers", "skirt", "short sleeve dress", "long sleeve dress", "vest dress",
                "sling dress")
TORCHVISION_STANDIN = "0.28.0"  # the release that pairs with torch 2.13 (checks.check_torchvision)


def import_ultralytics() -> Any:
    """``ultralytics``, imported offline without torchvision (see the module docstring)."""
    if "ultralytics" in sys.modules:
        return sys.modules["ultralytics"]
    root = Path(tempfile.mkdtemp(prefix="fashionbox-ultralytics-"))
    info = root / f"torchvision-{TORCHVISION_STANDIN}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchvision\nVersion: {TORCHVISION_STANDIN}\n")
    sys.path.append(str(root))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(root / "config"))  # its settings file, not the home folder's
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from PIL import Image

    pillow_open = Image.open
    import ultralytics
    import ultralytics.utils.patches  # its side effect is undone below

    # Importing ultralytics replaces PIL.Image.open process-wide with a wrapper that, on an image
    # Pillow cannot identify, pip-installs pi-heif and retries: every later test in this session
    # (the server's decode refusals, the catalog's upload checks) would see that instead of
    # Pillow's own error. Its predictor opens no file in these tests, so Pillow's is put back.
    Image.open = pillow_open
    return ultralytics


def build_yolo(folder: Path, *, task: str = "segment", imgsz: int = 128, width: float = 0.0625,
               depth: float = 0.33, names: tuple[str, ...] = DEEPFASHION2, dynamic: bool = True,
               seed: int = 0, class_bias: tuple[float, float] = (-1.0, 1.0),
               class_logits: tuple[float, float] | None = None,
               calibration: npt.NDArray[np.uint8] | None = None, mask_bias: float = 0.0) -> Path:
    """A random YOLOv8 (``task`` detect or segment) from Ultralytics' YAML, exported to ONNX by Ultralytics.

    ``width``/``depth`` scale the YAML's ``n`` model (0.25 / 0.33); YOLOv8s is 0.50 / 0.33. Returns
    the ``.onnx`` file Ultralytics wrote (``dynamic``: batch and size dynamic; else batch 1).
    Class biases are drawn from ``class_bias`` (mean, std); with ``class_logits`` (mean, std) the
    class convolutions are instead rescaled so their logits over random images have that mean and
    spread (a trained model's few confident boxes, for benchmarks: (-4.5, 1) keeps some tens).
    ``calibration`` (uint8 RGB ``[n, imgsz, imgsz, 3]``, e.g. letterboxed scenes) replaces the
    random images the BatchNorm statistics and that rescaling are taken on. ``mask_bias`` is added to
    every mask coefficient's bias (segment): negative, some detections' masks come out empty, which
    Ultralytics' predictor drops.
    """
    import torch
    import yaml

    import_ultralytics()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    base = "yolov8n-seg.yaml" if task == "segment" else "yolov8n.yaml"
    config = copy.deepcopy(yaml_model_load(base))
    for key in ("scale", "yaml_file"):
        config.pop(key, None)
    config["scales"] = {"n": [depth, width, 1024]}
    config["nc"] = len(names)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"tiny-{task}-{imgsz}-{'dynamic' if dynamic else 'batch1'}"
    (folder / f"{stem}.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(seed)
    model = YOLO(str(folder / f"{stem}.yaml"), task=task)
    network = model.model
    network.names = dict(enumerate(names))
    batchnorms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.momentum = None
        bn.reset_running_stats()
    network.train()
    generator = torch.Generator().manual_seed(seed)
    images = None if calibration is None else torch.from_numpy(
        np.ascontiguousarray(calibration.transpose(0, 3, 1, 2))).float() / 255.0
    with torch.no_grad():
        for _ in range(3):
            network(torch.rand((4, 3, imgsz, imgsz), generator=generator) if images is None else images)
        for head in network.model[-1].cv3:  # class logits: some above the 0.25 threshold, some below
            head[-1].bias.normal_(*class_bias, generator=generator)
        if class_logits is not None:
            _rescale_class_logits(network, imgsz, class_logits, generator, images)
        if mask_bias:
            for head in network.model[-1].cv4:  # the mask coefficients, per stride
                head[-1].bias += mask_bias
    network.eval()
    # Ultralytics writes next to the working folder for a model built from a YAML: work in ``folder``
    with warnings.catch_warnings(), contextlib.chdir(folder):
        warnings.simplefilter("ignore")  # torch's notice that the TorchScript exporter is the legacy one
        exported = model.export(format="onnx", imgsz=imgsz, simplify=False, dynamic=dynamic, verbose=False)
    return (folder / exported).resolve()


def _rescale_class_logits(network: Any, imgsz: int, target: tuple[float, float], generator: Any,
                          images: Any = None) -> None:
    """Scale each stride's class convolution so its logits have mean/std ``target`` on random images."""
    import torch

    network.eval()
    convs = [head[-1] for head in network.model[-1].cv3]
    seen: dict[int, Any] = {}
    hooks = [conv.register_forward_hook(lambda module, args, out, i=i: seen.__setitem__(i, out))
             for i, conv in enumerate(convs)]
    try:
        network(torch.rand((2, 3, imgsz, imgsz), generator=generator) if images is None else images)
    finally:
        for hook in hooks:
            hook.remove()
    mean, std = target
    for i, conv in enumerate(convs):
        gain = std / float(seen[i].std())
        conv.weight.mul_(gain)
        conv.bias.copy_((conv.bias - float(seen[i].mean())) * gain + mean)


def predictor_class(task: str) -> type:
    """Ultralytics' own predictor for ``task``, without its torchvision-importing warm-up."""
    import_ultralytics()
    if task == "segment":
        from ultralytics.models.yolo.segment import SegmentationPredictor as Base
    else:
        from ultralytics.models.yolo.detect import DetectionPredictor as Base

    class Predictor(Base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.done_warmup = True

    return Predictor


def load_predictor(onnx_path: Path, task: str) -> Any:
    import_ultralytics()
    from ultralytics import YOLO

    return YOLO(str(onnx_path), task=task)


def predict(model: Any, images_rgb: list[npt.NDArray[np.uint8]], *, imgsz: int, conf: float = 0.25,
            iou: float = 0.7, max_det: int = 300) -> list[Any]:
    """Ultralytics' predictor on RGB images (it reads numpy arrays as OpenCV's BGR): its ``Results``."""
    task = model.task
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(model.predict([np.ascontiguousarray(im[..., ::-1]) for im in images_rgb], imgsz=imgsz, conf=conf,
                                   iou=iou, max_det=max_det, verbose=False, predictor=predictor_class(task)))
