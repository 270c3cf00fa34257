"""Checks run before the server starts: the repository holds models, and this machine can serve them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fashionbox.contract import MANIFEST_FILE
from fashionbox.server.errors import RepositoryError

__all__ = ["check_engines", "check_repository"]

logger = logging.getLogger(__name__)


def check_repository(repository: Path) -> None:
    """Refuse a missing repository, one without models, or one this machine cannot serve."""
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist or is not a folder")
    folders = [entry for entry in sorted(repository.iterdir()) if entry.is_dir() and not entry.name.startswith(".")]
    models = [folder for folder in folders if (folder / "config.pbtxt").is_file()]
    if not models:
        raise RepositoryError(
            f"model repository {repository} holds no model (no <name>/config.pbtxt); "
            "build one with `fashionbox convert`"
        )
    for folder in folders:
        if folder not in models:
            # In mode "none" Triton tries every folder, and one without a config may fail the start.
            logger.warning("%s has no config.pbtxt; Triton may fail to load it as a model", folder)
    check_engines(repository)


def check_engines(repository: Path) -> None:
    """A GPU repository: refuse engines built elsewhere, then say why the embedded server cannot serve it;
    refuse the torch GPU profile where no GPU is visible (Triton would fail its KIND_GPU instances)."""
    # Imported here, not with this module: the package then never imports it before
    # `python -m fashionbox.server.engines` runs it (runpy warns about that).
    from fashionbox.server import engines

    manifest_path = repository / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    if manifest.get("target") == "gpu" and engines.repository_runtime(manifest) == "torch" \
            and not engines.local_gpus():
        raise RepositoryError(
            f"{repository} is the GPU profile (--target gpu --runtime torch), but no NVIDIA GPU is visible here "
            "(nvidia-smi lists none): convert with --target cpu for this machine, or serve it on a GPU host"
        )

    try:
        record = engines.check_engine_compatibility(repository)
    except engines.EngineError as exc:
        raise RepositoryError(str(exc)) from exc
    if record is not None:
        raise RepositoryError(
            f"{repository} holds TensorRT engines (tensorrt_plan models), which the embedded server (python "
            "backend only) cannot load: serve it with the NGC tritonserver image (docker compose up, README "
            "'GPU deployment')"
        )
