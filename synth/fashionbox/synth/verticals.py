"""Product verticals: the coarse shop departments a whole product photo belongs to (S1's use case).

One table maps every garment category of the Fashionpedia ontology that is sold as a product on
its own onto one vertical; the default label map's twelve categories are all in it. The vertical
head of the attribute model is trained on :data:`VERTICALS` in this order, and the checkpoint
records the names (``AttributeConfig.verticals``), so a served model reads them from its weights::

    vertical_of("coat")      # -> "outerwear"
    VERTICALS.index("bags")  # -> 5
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import SynthError

__all__ = ["CATEGORY_VERTICALS", "VERTICALS", "vertical_of"]

VERTICALS: tuple[str, ...] = ("tops", "bottoms", "one-piece", "outerwear", "footwear", "bags", "headwear")
"""The product verticals, in the order of the vertical head's outputs."""

CATEGORY_VERTICALS: Mapping[str, str] = {
    "shirt, blouse": "tops",
    "top, t-shirt, sweatshirt": "tops",
    "sweater": "tops",
    "cardigan": "tops",
    "vest": "tops",
    "pants": "bottoms",
    "shorts": "bottoms",
    "skirt": "bottoms",
    "tights, stockings": "bottoms",
    "leg warmer": "bottoms",
    "dress": "one-piece",
    "jumpsuit": "one-piece",
    "jacket": "outerwear",
    "coat": "outerwear",
    "cape": "outerwear",
    "shoe": "footwear",
    "sock": "footwear",
    "bag, wallet": "bags",
    "hat": "headwear",
    "headband, head covering, hair accessory": "headwear",
}
"""Fashionpedia category name -> vertical. Accessories with no vertical here (glasses, tie, glove,
watch, belt, scarf, umbrella) and garment parts (collar, pocket, ...) are not products of one."""


def vertical_of(category: str) -> str:
    """The vertical of a Fashionpedia category; raises for one that no vertical holds."""
    try:
        return CATEGORY_VERTICALS[category]
    except KeyError:
        raise SynthError(f"category {category!r} belongs to no product vertical; "
                         f"known: {sorted(CATEGORY_VERTICALS)}") from None
