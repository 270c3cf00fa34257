"""The exceptions of ``fashionbox.synth``: one root, a shallow tree.

::

    SynthError                  anything the generator refuses to do
    ├── SynthConfigError        a SceneConfig field is out of range (also a ValueError)
    ├── UndrawableLabelError    the label map names a category or attribute with no drawing
    └── CocoFormatError         an annotation file is not the COCO layout this package reads
"""

from __future__ import annotations

__all__ = ["CocoFormatError", "SynthConfigError", "SynthError", "UndrawableLabelError"]


class SynthError(Exception):
    """Root of the generator's errors."""


class SynthConfigError(SynthError, ValueError):
    """A :class:`~fashionbox.synth.config.SceneConfig` field is invalid; the message names it."""


class UndrawableLabelError(SynthError):
    """The label map has a category, group or label the generator cannot draw.

    Generated ground truth must be visibly true, so an unknown name fails loudly instead of
    being drawn as something else.
    """


class CocoFormatError(SynthError):
    """An annotation file is missing a key or refers to an unknown image or category."""
