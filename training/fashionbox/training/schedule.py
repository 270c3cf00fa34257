"""The learning-rate schedule every training stage uses: linear warm-up, then cosine decay to 2 %."""

from __future__ import annotations

import math

__all__ = ["lr_at"]


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    """The learning rate at ``step`` (0-based) of ``total``, peaking at ``base`` after ``warmup`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
