"""Pictures of scenes with their ground truth drawn on, for a person to check the generator.

Usage::

    sheet = contact_sheet([render_scene(seed) for seed in range(16)], tile_px=320)
    sheet.save("/tmp/synth_sheet.png")

Each box is labelled with its category and the first word of each attribute label
(``sweater | short wrist v-neck stripe`` reads: sweater, wrist-length sleeves, v-neck, stripes).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from .scene import Scene

__all__ = ["annotate_scene", "contact_sheet", "short_label"]


def short_label(category: str, attributes: dict[str, str] | None = None) -> str:
    """``category | attr attr``, each name cut at its first comma or space."""
    words = [_first_word(category)]
    words += [_first_word(label) for label in (attributes or {}).values()]
    return " ".join(words)


def _first_word(name: str) -> str:
    return name.replace(",", " ").split()[0]


def _colour(index: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((index * 0.61803) % 1.0, 0.9, 1.0)
    return (round(r * 255), round(g * 255), round(b * 255))


def annotate_scene(scene: Scene, *, width_px: int | None = None) -> Image.Image:
    """The scene image (optionally resized to ``width_px``) with boxes and short labels."""
    image = scene.image.copy()
    scale = 1.0
    if width_px is not None:
        scale = width_px / image.width
        image = image.resize((width_px, max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(9, image.width // 36))
    for index, garment in enumerate(scene.garments):
        colour = _colour(index)
        x1, y1, x2, y2 = (v * scale for v in garment.box)
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=max(1, image.width // 320))
        text = short_label(garment.category, dict(garment.attributes))
        # Above the box where there is room, so the label does not hide a small garment.
        text_h = draw.textbbox((0, 0), text, font=font)[3]
        origin = (x1 + 2, y1 - text_h - 3 if y1 > text_h + 3 else y1 + 1)
        left, top, right, bottom = draw.textbbox(origin, text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text(origin, text, fill=colour, font=font)
    return image


def contact_sheet(scenes: Sequence[Scene], *, tile_px: int = 320, columns: int = 4) -> Image.Image:
    """Annotated scenes on a grid of ``tile_px`` squares (each scene letterboxed into its tile)."""
    rows = max(1, -(-len(scenes) // columns))
    sheet = Image.new("RGB", (columns * tile_px, rows * tile_px), (40, 40, 40))
    for index, scene in enumerate(scenes):
        image = annotate_scene(scene, width_px=tile_px)
        if image.height > tile_px:
            image = annotate_scene(scene, width_px=max(1, round(tile_px * scene.image.width / scene.image.height)))
        x = (index % columns) * tile_px + (tile_px - image.width) // 2
        y = (index // columns) * tile_px + (tile_px - image.height) // 2
        sheet.paste(image, (x, y))
    return sheet
