"""The text tower's tokenizer inside the server: texts -> the token tensors of the exported text graph.

The converter (``fashionbox.converter.image_models``) saves an embedder family's tokenizer into a
folder: the ``tokenizers`` library's ``tokenizer.json`` where the family has a fast tokenizer
(CLIP), else the transformers tokenizer's own files (SigLIP's SentencePiece model), plus
``text_settings.json`` (:class:`TextSettings`): how the family's processor pads and truncates for
``get_text_features``. The ``text_embedder`` python model then does::

    tokenizer = TextTokenizer.from_folder(folder)
    feeds = tokenizer(["a red shirt", "black leather shoes"])    # {"input_ids": int64 [B, T], ...}

Padding is the family's: CLIP pads to the longest text of the batch (at most ``max_length``) and
passes an attention mask; SigLIP pads every text to ``max_length`` as its documentation requires.
A fast tokenizer needs only the ``tokenizers`` package (``fashionbox-core[text]``); the fallback
needs ``transformers`` (and ``sentencepiece`` for SigLIP). Texts that are not ``str``, empty, or
longer than :data:`MAX_TEXT_BYTES` in UTF-8 are refused with a ``ValueError`` naming the text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fashionbox import contract

__all__ = ["MAX_TEXT_BYTES", "SETTINGS_FILE", "TOKENIZER_FILE", "TextSettings", "TextTokenizer", "check_texts"]

SETTINGS_FILE = "text_settings.json"
TOKENIZER_FILE = "tokenizer.json"
MAX_TEXT_BYTES = 2048
"""Longest text accepted, in UTF-8 bytes: a query is a phrase; longer input is truncated by the towers anyway."""

TOKENIZERS_HINT = "the text tower's tokenizer needs tokenizers: pip install 'fashionbox-core[text]'"
TRANSFORMERS_HINT = ("this text tower's tokenizer has no tokenizer.json and needs transformers (and sentencepiece "
                     "for SigLIP): pip install transformers sentencepiece")

Backend = Literal["tokenizers", "transformers"]
Padding = Literal["longest", "max_length"]


@dataclass(frozen=True)
class TextSettings:
    """How the family's processor tokenizes for ``get_text_features`` (the converter writes it)."""

    backend: Backend
    padding: Padding
    max_length: int
    """Truncation length, and the padded length for ``max_length`` padding."""
    pad_id: int
    pad_token: str
    attention_mask: bool
    """Whether the text graph takes ``attention_mask`` as well as ``input_ids``."""

    def __post_init__(self) -> None:
        if self.backend not in ("tokenizers", "transformers"):
            raise ValueError(f"backend must be 'tokenizers' or 'transformers', got {self.backend!r}")
        if self.padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {self.padding!r}")
        length = self.max_length
        if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= 8192:
            raise ValueError(f"max_length must be an integer in [2, 8192], got {self.max_length!r}")
        if isinstance(self.pad_id, bool) or not isinstance(self.pad_id, int) or self.pad_id < 0:
            raise ValueError(f"pad_id must be a non-negative integer, got {self.pad_id!r}")
        if not isinstance(self.attention_mask, bool):
            raise ValueError(f"attention_mask must be a boolean, got {self.attention_mask!r}")

    @property
    def input_names(self) -> tuple[str, ...]:
        """The text graph's inputs, in order."""
        if self.attention_mask:
            return (contract.ONNX_TEXT_INPUT_IDS, contract.ONNX_TEXT_ATTENTION_MASK)
        return (contract.ONNX_TEXT_INPUT_IDS,)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TextSettings:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"text settings must be JSON: {exc}") from exc
        fields = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) != fields:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"text settings must be a JSON object with the keys {sorted(fields)}, got {got}")
        return cls(**data)


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or ``ValueError`` saying which one is not a usable query."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ValueError(f"expected a sequence of texts, got {type(texts).__name__}")
    if not texts:
        raise ValueError("no texts given")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i} is a {type(text).__name__}, not a str")
        if not text.strip():
            raise ValueError(f"text {i} is empty")
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > MAX_TEXT_BYTES:
            raise ValueError(f"text {i} is {size} bytes in UTF-8, over the limit of {MAX_TEXT_BYTES}")
    return list(texts)


class TextTokenizer:
    """A saved tokenizer folder -> ``{"input_ids": int64 [B, T](, "attention_mask": int64 [B, T])}``."""

    def __init__(self, settings: TextSettings, backend: Any) -> None:
        self.settings = settings
        self._backend = backend

    @classmethod
    def from_folder(cls, path: Path | str) -> TextTokenizer:
        folder = Path(path)
        settings_file = folder / SETTINGS_FILE
        try:
            settings = TextSettings.from_json(settings_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{folder} is not a saved text tokenizer: cannot read {settings_file}: {exc}") from exc
        if settings.backend == "tokenizers":
            try:
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise ImportError(TOKENIZERS_HINT) from exc
            file = folder / TOKENIZER_FILE
            if not file.is_file():
                raise ValueError(f"{folder} has no {TOKENIZER_FILE}")
            tokenizer = Tokenizer.from_file(str(file))
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=settings.max_length)
            length = settings.max_length if settings.padding == "max_length" else None
            tokenizer.enable_padding(pad_id=settings.pad_id, pad_token=settings.pad_token, length=length)
            return cls(settings, tokenizer)
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise ImportError(TRANSFORMERS_HINT) from exc
        return cls(settings, AutoTokenizer.from_pretrained(str(folder), local_files_only=True))

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.settings.input_names

    def __call__(self, texts: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
        batch = check_texts(texts)
        if self.settings.backend == "tokenizers":
            encodings = self._backend.encode_batch(batch, add_special_tokens=True)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        else:
            out = self._backend(batch, padding=self.settings.padding, truncation=True,
                                max_length=self.settings.max_length, return_tensors="np",
                                return_attention_mask=True)
            ids = np.asarray(out["input_ids"], dtype=np.int64)
            mask = np.asarray(out["attention_mask"], dtype=np.int64)
        feeds = {contract.ONNX_TEXT_INPUT_IDS: ids}
        if self.settings.attention_mask:
            feeds[contract.ONNX_TEXT_ATTENTION_MASK] = mask
        return feeds
