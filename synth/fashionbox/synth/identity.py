"""Garment identities: everything that makes one garment that garment, fixed across photos.

An identity is drawn from its seed alone: category, attribute labels, the geometry the labels
leave free (neckline of a category without one, lengths, hat or shoe style: the drawing's own
random draws), colours and textile pattern. Scenes then place it with their own pose, scale,
rotation, light, background, neighbours and crop (``render_identity_scenes``), so retrieval can
be trained and measured on "the same garment in another photo"::

    identity = sample_identity(7)
    identity.category, identity.attributes
    scenes = render_identity_scenes(7, views=4)    # fashionbox.synth.scene
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from fashionbox.contract.labels import LabelMap, default_label_map

from .canvas import Paint
from .colours import RGB, distance, garment_colour, mix, scaled
from .garments import NECKLINE_GROUP, NECKLINES, SLEEVE_COVER, SLEEVE_GROUP, Neckline
from .patterns import PATTERN_GROUP, PATTERN_LABELS, PatternKind, PatternSpec, sample_pattern

__all__ = ["GarmentIdentity", "sample_identity"]

_ACCENTS: tuple[RGB, ...] = ((245, 245, 240), (25, 25, 28), (200, 160, 60), (120, 80, 50), (170, 170, 175))
_INNERS: tuple[RGB, ...] = ((248, 248, 245), (225, 230, 240), (30, 30, 35), (150, 150, 155), (210, 195, 170))
_WHITE: RGB = (255, 255, 255)


@dataclass(frozen=True, eq=False)
class GarmentIdentity:
    identity: int
    """The seed it was drawn from; scenes annotate the garment with it."""
    category: str
    attributes: Mapping[str, str]
    sleeve_cover: float
    neckline: Neckline
    shape_seed: int
    """Seeds the drawing's own random choices (lengths, styles), so its shape repeats."""
    colours: Mapping[Paint, RGB]
    """Fabric paints (pattern ground, shade, outline, accent, inner); skin and hair come from the scene."""
    pattern: PatternSpec


def sample_identity(seed: int, *, label_map: LabelMap | None = None, category: str | None = None) -> GarmentIdentity:
    """The garment of ``seed`` (of ``category`` when given, else a category drawn from the seed)."""
    label_map = label_map or default_label_map()
    rnd = random.Random(f"identity-{seed}")
    chosen = category if category is not None else rnd.choice(label_map.category_names)
    label_map.category_index(chosen)  # raises on an unknown category
    attributes = {group: rnd.choice(label_map.group(group).labels) for group in label_map.groups_for(chosen)}
    sleeve = attributes.get(SLEEVE_GROUP) or rnd.choice(sorted(SLEEVE_COVER))
    neckline = attributes.get(NECKLINE_GROUP)
    neck = NECKLINES[neckline] if neckline else rnd.choice(list(Neckline))
    ground = garment_colour(rnd)
    label = attributes.get(PATTERN_GROUP)
    pattern = sample_pattern(PATTERN_LABELS[label] if label else PatternKind.PLAIN, rnd, ground)
    dark = sum(ground) < 180
    colours = {
        Paint.PATTERN: ground,
        Paint.SHADE: mix(ground, _WHITE, 0.22) if dark else scaled(ground, 0.7),
        Paint.OUTLINE: mix(ground, _WHITE, 0.4) if dark else scaled(ground, 0.5),
        Paint.ACCENT: max(_ACCENTS, key=lambda c: distance(c, ground) + rnd.uniform(0, 150)),
        Paint.INNER: max(_INNERS, key=lambda c: distance(c, ground) + rnd.uniform(0, 150)),
    }
    return GarmentIdentity(seed, chosen, attributes, SLEEVE_COVER[sleeve], neck, rnd.getrandbits(32), colours,
                           pattern)
