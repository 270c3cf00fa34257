"""Procedural fashion scenes with exact ground truth: the training data of the default models.

No fashion dataset can be downloaded where FashionBox is built, so the default detector and
attribute heads learn from generated photos: garments of every category of the label map drawn
with visibly true attributes (sleeve length over a skin-coloured arm, neckline cut to the skin,
textile pattern), as flat-lays or worn by a figure, on varied backgrounds, with occlusion, scale
changes and a photo finish. Everything is deterministic from an integer seed.

Usage::

    from fashionbox.synth import render_scene, write_coco_dataset, read_coco_dataset

    scene = render_scene(42)                        # Scene(image, garments, seed)
    garment = scene.garments[0]                     # GarmentAnnotation(category, box, attributes)
    garment.category, garment.box, garment.attributes
    jpeg = scene.encode(format="JPEG", quality=90)

    annotations = write_coco_dataset(Path("out"), count=1000, seed=7)   # out/images/*.jpg + annotations.json
    records = read_coco_dataset(annotations)        # AnnotatedImage(file_name, path, width, height, garments)

Garment identities (the same garment in many photos, for retrieval) and product photos (one
garment, shop style, with its product vertical)::

    scenes = render_identity_scenes(7, views=4)     # each has a garment with .identity == 7
    photo = render_product_photo(3)                 # ProductPhoto(image, garment, vertical, seed)

Boxes are ``x1, y1, x2, y2`` in pixels of the visible part of each garment; ``attributes`` maps
each attribute group that applies to the category (``label_map.groups_for``) to one label.
"""

from .coco import AnnotatedImage, image_seed, read_coco_dataset, write_coco_dataset
from .config import SceneConfig
from .errors import CocoFormatError, SynthConfigError, SynthError, UndrawableLabelError
from .identity import GarmentIdentity, sample_identity
from .preview import annotate_scene, contact_sheet
from .scene import (
    DROPPED_INSTANCE,
    GarmentAnnotation,
    ProductPhoto,
    Scene,
    identity_view_seed,
    render_identity_scenes,
    render_product_photo,
    render_scene,
    render_scene_with_instances,
)
from .verticals import CATEGORY_VERTICALS, VERTICALS, vertical_of

__all__ = [
    "CATEGORY_VERTICALS",
    "DROPPED_INSTANCE",
    "VERTICALS",
    "AnnotatedImage",
    "CocoFormatError",
    "GarmentAnnotation",
    "GarmentIdentity",
    "ProductPhoto",
    "Scene",
    "SceneConfig",
    "SynthConfigError",
    "SynthError",
    "UndrawableLabelError",
    "annotate_scene",
    "contact_sheet",
    "identity_view_seed",
    "image_seed",
    "read_coco_dataset",
    "render_identity_scenes",
    "render_product_photo",
    "render_scene",
    "render_scene_with_instances",
    "sample_identity",
    "vertical_of",
    "write_coco_dataset",
]
