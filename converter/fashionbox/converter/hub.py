"""Hugging Face Hub ids for ``hf:`` specs: ``hf:ORG/NAME`` fetched into (or read from) the local Hub cache.

Only what the converter reads is fetched: ``config.json``, ``preprocessor_config.json`` and the
safetensors weights (never ``pytorch_model.bin`` or other pickle files), through
``huggingface_hub.snapshot_download`` into the usual cache (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)::

    folder = fetch_checkpoint("valentinafeve/yolos-fashionpedia")   # -> .../snapshots/<commit>

Offline (``HF_HUB_OFFLINE=1``, or no network) the cache alone answers; a model not in it stops
with :class:`HubError`, whose message names the cache folder and the command that fills it on a
machine with a network. The environment is read on each call (not when ``huggingface_hub`` was
imported), so the cache and offline switch are the caller's at the time of the conversion.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fashionbox.converter.errors import ConvertError

__all__ = ["HUB_FILES", "HubError", "fetch_checkpoint", "hub_cache_dir", "hub_offline", "is_hub_id"]

HUB_FILES = ("config.json", "preprocessor_config.json", "*.safetensors", "model.safetensors.index.json")
"""What is fetched from a Hub repository (allow patterns): no pickle files."""

INSTALL_HINT = "hf:ORG/NAME needs huggingface_hub: pip install 'fashionbox-converter[hf]'"

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_TRUE = frozenset({"1", "true", "yes", "on"})


class HubError(ConvertError):
    """A Hub id that cannot be fetched or found in the local cache."""


def is_hub_id(text: str) -> bool:
    """``ORG/NAME`` as the Hub spells repository ids (a path such as ``/x/y`` or ``./x`` is not one)."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (``1``/``true``/``yes``/``on``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """The Hub cache as ``huggingface_hub`` resolves it, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache).expanduser() / "huggingface" / "hub"


def _fill_hint(repo_id: str, cache: Path) -> str:
    patterns = " ".join(f"--include '{p}'" for p in HUB_FILES)
    return (f"fill it on a machine with a network: HF_HUB_CACHE={cache} hf download {repo_id} {patterns} "
            f"(then copy {cache} here, or point HF_HUB_CACHE/HF_HOME at a copy), or pass hf:FOLDER with a "
            "downloaded checkpoint folder")


def fetch_checkpoint(repo_id: str, *, revision: str | None = None) -> Path:
    """The local snapshot folder of Hub model ``repo_id``: downloaded where there is a network, else cached."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    cache = hub_cache_dir()
    offline = hub_offline()
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                   allow_patterns=list(HUB_FILES))
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise HubError(f"hf:{repo_id}: {why} and the Hugging Face cache {cache} has no copy of {repo_id}; "
                       f"{_fill_hint(repo_id, cache)}") from exc
    except GatedRepoError as exc:
        raise HubError(f"hf:{repo_id} is gated on the Hub: accept its terms and log in (hf auth login)") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"hf:{repo_id} has no revision {revision!r} on the Hub") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"hf:{repo_id} is neither a local folder nor a model on the Hugging Face Hub "
                       "(or it is private: log in with hf auth login)") from exc
    except HfHubHTTPError as exc:
        raise HubError(f"hf:{repo_id}: the Hub answered {exc}") from exc
    return Path(str(folder))
