"""How an outside family's class names become the served label map, and which garments get attributes.

Every family (YOLOS and the other DETR-style detectors, Ultralytics YOLO, ...) names its classes in
its checkpoint (``id2label``, ONNX metadata ``names``); :func:`family_label_map` turns them into a
:class:`fashionbox.contract.labels.LabelMap` whose attribute groups are the attribute heads', each
class getting the groups of the default garment it looks like (:data:`ATTRIBUTE_PROXIES`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fashionbox.contract.labels import Category, LabelMap, LabelMapError, default_label_map, fashionpedia_taxonomy
from fashionbox.converter.errors import ConvertError

__all__ = ["ATTRIBUTE_PROXIES", "DATASET_PROXIES", "attribute_proxy", "family_label_map"]


ATTRIBUTE_PROXIES: Mapping[str, str | None] = {
    "shirt, blouse": "shirt, blouse",
    "top, t-shirt, sweatshirt": "top, t-shirt, sweatshirt",
    "sweater": "sweater",
    "cardigan": "sweater",
    "jacket": "jacket",
    "vest": "jacket",
    "pants": "pants",
    "shorts": "shorts",
    "skirt": "skirt",
    "coat": "coat",
    "dress": "dress",
    "jumpsuit": "dress",
    "cape": "coat",
    "glasses": None,
    "hat": "hat",
    "headband, head covering, hair accessory": None,
    "tie": None,
    "glove": None,
    "watch": None,
    "belt": None,
    "leg warmer": None,
    "tights, stockings": None,
    "sock": None,
    "shoe": "shoe",
    "bag, wallet": "bag, wallet",
    "scarf": None,
    "umbrella": None,
    # garment parts, closures and decorations: reported as detections, never given attributes
    "hood": None,
    "collar": None,
    "lapel": None,
    "epaulette": None,
    "sleeve": None,
    "pocket": None,
    "neckline": None,
    "buckle": None,
    "zipper": None,
    "applique": None,
    "bead": None,
    "bow": None,
    "flower": None,
    "fringe": None,
    "ribbon": None,
    "rivet": None,
    "ruffle": None,
    "sequin": None,
    "tassel": None,
}
"""Fashionpedia category (a class name of a checkpoint trained on Fashionpedia) -> the default label
map's category whose attribute groups apply to it, or ``None`` when the attribute heads say nothing
about it.

The attribute heads are trained on crops of the default label map's 12 garments; an outside
family's garment gets the groups of the garment it looks like (a cardigan is classified as a sweater is), and
parts such as ``sleeve`` and ``neckline`` are detections without attributes. Names outside this
table (a checkpoint with its own classes) get no attributes either."""


DATASET_PROXIES: Mapping[str, str | None] = {
    # DeepFashion2's 13 categories (its annotations' spelling; "vest", a sleeveless top there, is
    # looked up in ATTRIBUTE_PROXIES first, where Fashionpedia's vest is a jacket's)
    "short sleeve top": "top, t-shirt, sweatshirt",
    "long sleeve top": "top, t-shirt, sweatshirt",
    "short sleeve outwear": "jacket",
    "long sleeve outwear": "jacket",
    "sling": "top, t-shirt, sweatshirt",
    "trousers": "pants",
    "short sleeve dress": "dress",
    "long sleeve dress": "dress",
    "vest dress": "dress",
    "sling dress": "dress",
    # DeepFashion2 as its YOLO conversions often name it
    "short sleeved shirt": "top, t-shirt, sweatshirt",
    "long sleeved shirt": "top, t-shirt, sweatshirt",
    "short sleeved outwear": "jacket",
    "long sleeved outwear": "jacket",
    "short sleeved dress": "dress",
    "long sleeved dress": "dress",
    # ModaNet's 13 categories ("dress", "pants", "shorts" are in ATTRIBUTE_PROXIES already)
    "bag": "bag, wallet",
    "boots": "shoe",
    "footwear": "shoe",
    "outer": "coat",
    "top": "top, t-shirt, sweatshirt",
    "skirts": "skirt",
    "headwear": "hat",
    "sunglasses": None,
    "scarf & tie": None,
    "scarf/tie": None,
}
"""The other datasets fashion models are trained on (DeepFashion2, ModaNet): class name -> proxy,
as :data:`ATTRIBUTE_PROXIES`. Names are matched lower-case with ``_`` and ``-`` read as spaces, so
``short_sleeved_shirt`` finds ``short sleeved shirt``."""


def attribute_proxy(name: str) -> str | None:
    """The default-label-map category whose attribute groups apply to ``name``.

    Looked up in :data:`ATTRIBUTE_PROXIES` (Fashionpedia), then :data:`DATASET_PROXIES`, each
    first as written, then lower-case with ``_``/``-`` as spaces; ``None`` when neither knows it.
    """
    normalised = " ".join(name.lower().replace("_", " ").replace("-", " ").split())
    for table in (ATTRIBUTE_PROXIES, DATASET_PROXIES):
        for key in (name, normalised):
            if key in table:
                return table[key]
    return None


def family_label_map(id2label: Mapping[int, str], attribute_labels: LabelMap | None = None,
                    *, name: str) -> LabelMap:
    """The served label map: categories in ``id2label`` order, attribute groups of the attribute heads.

    ``id2label`` must cover ``0..n-1`` (the model's class indices). Fashionpedia names keep their
    Fashionpedia id and supercategory; other names keep their checkpoint id.
    """
    attribute_labels = attribute_labels or default_label_map()
    ids = sorted(int(k) for k in id2label)
    if ids != list(range(len(ids))):
        raise ConvertError(f"id2label must number its classes 0..{len(ids) - 1}, got ids {ids}")
    taxonomy = {c["name"]: c for c in fashionpedia_taxonomy()["categories"]}
    categories = []
    for index in ids:
        label = str(id2label[index])
        proxy = attribute_proxy(label)
        try:
            groups = attribute_labels.groups_for(proxy) if proxy is not None else ()
        except LabelMapError:
            groups = ()  # the attribute heads' label map does not have that garment
        known = taxonomy.get(label)
        categories.append(Category(
            name=label,
            fashionpedia_id=int(known["id"]) if known else index,
            supercategory=str(known["supercategory"]) if known else "unknown",
            groups=tuple(groups),
        ))
    return LabelMap(name=name, categories=tuple(categories), attribute_groups=attribute_labels.attribute_groups)
