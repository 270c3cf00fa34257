"""Capability tokens: only the ensemble can call the pipeline's steps.

Triton serves every step of the ensemble (``preprocess``, ``detector``, ``postprocess``,
``attributes``) to anyone who can call the ensemble, and a python model cannot tell a direct call
from the ensemble's by anything the request carries. So the steps pass a tensor only the server's
own processes can make: ``preprocess`` signs each image's letterboxed pixels with a per-server
secret, the ensemble wires that ``TOKEN`` into ``detector`` and ``postprocess``, which refuse a
request whose token does not match its pixels, and ``postprocess`` gives ``attributes`` (which it
calls through BLS) a token that never leaves the server.

The secret is ``$FASHIONBOX_PIPELINE_SECRET`` (hex), which ``fashionbox serve`` makes at each start
and sets in the environment of the ``tritonserver`` child only; the python-backend stubs inherit
it. It is never in ``config.pbtxt`` (the model-config API serves that) nor on Triton's command line.
A server started without it (plain ``tritonserver``, the NGC container without ``fashionbox serve``)
serves with the door open: the steps log a warning and check no token (set the variable yourself,
the same value for the whole server, to close it).

A token row (32 bytes, one per image)::

    key (8 bytes, random per request: the request's admission slot) | issued (8 bytes, float64
    time.monotonic() of preprocess) | HMAC-SHA256(secret, key | issued | pixels)[:16]

A token is valid for its pixels until it is ``lifetime_s`` old. Cost: one HMAC-SHA256 over the
letterboxed image (320x320x3 = 307 kB: about 0.2 ms here) in ``preprocess``, ``detector`` and
``postprocess`` each.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fashionbox import contract
from fashionbox.core.postprocessing import AnyArray
from fashionbox.core.serving import AdmissionSettings, InputSpec, ModelArgs, RequestError

__all__ = ["DEFAULT_LIFETIME_S", "SECRET_ENV", "TOKEN_INPUT", "PipelineKey", "guarded_step", "new_secret"]

SECRET_ENV = f"{contract.ENV_PREFIX}PIPELINE_SECRET"
"""The environment variable holding the per-server secret (hex); set by ``fashionbox serve``."""
DEFAULT_LIFETIME_S = 30.0
"""How long a token is valid at least (longer where the admission slots' TTL is longer). Not the slot
TTL itself: a request slower than that (a transformer detector or a CLIP-sized embedder on two busy
cores takes seconds per image) finishes uncounted once its slot expires, and must not then be
refused as a forged call (it was, with INVALID_ARGUMENT, when tokens lived exactly the 5 s TTL)."""

TOKEN_INPUT = InputSpec(contract.TOKEN.name, np.uint8, contract.TOKEN.dims)
"""How the steps behind ``preprocess`` read ``TOKEN``."""

_SIZE = contract.TOKEN.dims[0]
_KEY, _ISSUED, _MAC = slice(0, 8), slice(8, 16), slice(16, _SIZE)
_PIXELS_DOMAIN = b"fashionbox pixels\0"
_ATTRIBUTES_DOMAIN = b"fashionbox attributes\0"


def new_secret() -> str:
    """A fresh secret for one server start, as the hex string the environment carries."""
    return os.urandom(32).hex()


class PipelineKey:
    """The server's secret and what the steps do with it; ``enforced`` is False without a secret."""

    def __init__(self, secret: bytes | None, *, lifetime_s: float = DEFAULT_LIFETIME_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if secret is not None and len(secret) < 16:
            raise ValueError(f"the pipeline secret must be at least 16 bytes, got {len(secret)}")
        self._secret = secret or b""
        self.enforced = secret is not None
        self.lifetime_s = lifetime_s
        self._clock = clock
        attributes = hmac.new(self._secret, _ATTRIBUTES_DOMAIN, hashlib.sha256).digest()
        self._attributes_row = np.frombuffer(attributes, dtype=np.uint8)[:_SIZE].copy()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 lifetime_s: float = DEFAULT_LIFETIME_S) -> PipelineKey:
        """The key from ``$FASHIONBOX_PIPELINE_SECRET``; a malformed value is refused (fails model load)."""
        text = (os.environ if environ is None else environ).get(SECRET_ENV, "").strip()
        if not text:
            return cls(None, lifetime_s=lifetime_s)
        try:
            secret = bytes.fromhex(text)
        except ValueError as exc:
            raise ValueError(f"${SECRET_ENV} must be hex, as `fashionbox serve` writes it") from exc
        return cls(secret, lifetime_s=lifetime_s)

    @classmethod
    def for_step(cls, admission: AdmissionSettings | None) -> PipelineKey:
        """A step's key: tokens live :data:`DEFAULT_LIFETIME_S`, or an admission slot's TTL where that is longer."""
        lifetime_s = max(admission.admission_ttl_ms / 1000.0, DEFAULT_LIFETIME_S) if admission else DEFAULT_LIFETIME_S
        return cls.from_env(lifetime_s=lifetime_s)

    @property
    def warning(self) -> str:
        """What a step logs at load when the door is open."""
        return (f"${SECRET_ENV} is not set (the server was not started by `fashionbox serve`): the pipeline's "
                "steps take direct calls and check no token")

    @staticmethod
    def new_request_key() -> int:
        """A random, non-zero key for one request (its admission slot); 0 means no slot."""
        return int.from_bytes(os.urandom(8), "little") | 1

    def _mac(self, head: bytes, pixels: AnyArray) -> bytes:
        mac = hmac.new(self._secret, _PIXELS_DOMAIN, hashlib.sha256)
        mac.update(head)
        mac.update(np.ascontiguousarray(pixels).data)
        return mac.digest()[: _SIZE - 16]

    def sign(self, request_key: int, pixels: AnyArray) -> AnyArray:
        """uint8 ``[n, 32]``: one token per image of ``pixels`` (``[n, S, S, 3]``) for one request."""
        head = request_key.to_bytes(8, "little") + np.float64(self._clock()).tobytes()
        tokens = np.empty((pixels.shape[0], _SIZE), dtype=np.uint8)
        for row in range(pixels.shape[0]):
            tokens[row, :16] = np.frombuffer(head, dtype=np.uint8)
            tokens[row, 16:] = np.frombuffer(self._mac(head, pixels[row]), dtype=np.uint8)
        return tokens

    def check(self, tokens: AnyArray, pixels: AnyArray, *, model: str) -> int:
        """The request's key if every image's token was made by this server for its pixels and is
        not too old; else a :class:`RequestError` that says the step takes no direct calls.

        Without a secret nothing is checked (the key is still read, for the admission slot).
        """
        if tokens.shape[0] != pixels.shape[0]:
            raise RequestError(f"{contract.TOKEN.name} has {tokens.shape[0]} rows for {pixels.shape[0]} images")
        key = int.from_bytes(tokens[0, _KEY].tobytes(), "little")
        if not self.enforced:
            return key
        now = self._clock()
        for row in range(tokens.shape[0]):
            token = tokens[row].tobytes()
            issued = float(np.frombuffer(token[_ISSUED], dtype=np.float64)[0])
            if not hmac.compare_digest(token[_MAC], self._mac(token[:16], pixels[row])):
                raise self._refusal(model, f"its {contract.TOKEN.name} was not made by this server for these pixels")
            if int.from_bytes(token[_KEY], "little") != key:
                raise self._refusal(model, f"its images carry {contract.TOKEN.name}s of different requests")
            if not now - self.lifetime_s <= issued <= now + 1.0:
                raise self._refusal(model, f"its {contract.TOKEN.name} expired ({now - issued:.1f} s old, "
                                           f"valid {self.lifetime_s:g} s)")
        return key

    def attributes_tokens(self, count: int) -> AnyArray:
        """uint8 ``[count, 32]``: what ``postprocess`` sends ``attributes`` (never leaves the server)."""
        return np.tile(self._attributes_row, (count, 1))

    def check_attributes(self, tokens: AnyArray, *, model: str) -> None:
        if not self.enforced:
            return
        expected = self.attributes_tokens(tokens.shape[0]).tobytes()
        if not (tokens.shape[0] and hmac.compare_digest(np.ascontiguousarray(tokens).tobytes(), expected)):
            raise self._refusal(model, f"its {contract.TOKEN.name} is not the one postprocess sends")

    @staticmethod
    def _refusal(model: str, why: str) -> RequestError:
        return RequestError(
            f"refused: {why}. {model!r} is a step of the ensemble {contract.ENSEMBLE_MODEL!r} and takes no direct "
            f"calls; call {contract.ENSEMBLE_MODEL!r}")


def guarded_step(args: ModelArgs, warn: Callable[[str], None]) -> tuple[Any, PipelineKey]:
    """A step behind ``preprocess`` (``detector``, ``postprocess``): its admission slots (None when
    admission control is off) and its key; ``warn`` (the stub's logger) hears when the door is open."""
    admission = AdmissionSettings.optional(args.parameters)
    key = PipelineKey.for_step(admission)
    if not key.enforced:
        warn(f"{args.name}: {key.warning}")
    return (admission.slots(args) if admission else None), key
