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

Boxes are ``x1, y1, x2, y2`` in pixels of the visible part of each garment; ``attributes`` maps
each attribute group that applies to the category (``label_map.groups_for``) to one label.
"""

from .coco import AnnotatedImage, image_seed, read_coco_dataset, write_coco_dataset
from .config import SceneConfig
from .errors import CocoFormatError, SynthConfigError, SynthError, UndrawableLabelError
from .preview import annotate_scene, contact_sheet
from .scene import (
    DROPPED_INSTANCE,
    GarmentAnnotation,
    Scene,
    render_scene,
    render_scene_with_instances,
)

__all__ = [
    "DROPPED_INSTANCE",
    "AnnotatedImage",
    "CocoFormatError",
    "GarmentAnnotation",
    "Scene",
    "SceneConfig",
    "SynthConfigError",
    "SynthError",
    "UndrawableLabelError",
    "annotate_scene",
    "contact_sheet",
    "image_seed",
    "read_coco_dataset",
    "render_scene",
    "render_scene_with_instances",
    "write_coco_dataset",
]
