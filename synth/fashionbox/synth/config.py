"""Scene generation settings: one frozen, self-validating object holding every default.

Sizes are relative where they must survive a change of resolution (box fractions, blur as a
fraction of the long side) and in pixels only where the pixel count is the point (the smallest
box worth annotating)::

    config = SceneConfig(max_garments=3, outfit_probability=0.0)   # flat-lays only
    scene = render_scene(7, config=config)
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SynthConfigError

__all__ = ["SceneConfig"]


@dataclass(frozen=True)
class SceneConfig:
    min_garments: int = 1
    """Fewest garments planned per scene (before occlusion drops any)."""
    max_garments: int = 5
    long_side_px: tuple[int, int] = (640, 1280)
    """Range of the image's long side when ``render_scene`` picks the size."""
    aspect_ratios: tuple[float, ...] = (4 / 3, 3 / 2, 5 / 4, 16 / 10, 1.0)
    """Long side / short side ratios of common photos."""
    portrait_probability: float = 0.4
    outfit_probability: float = 0.5
    """Chance that a scene shows an outfit on a figure instead of a flat-lay."""
    min_box_fraction: float = 0.06
    """Smallest planned garment box, as a fraction of the image's long side."""
    max_box_fraction: float = 0.8
    max_overlap: float = 0.3
    """Flat-lay: most of a garment's extent another garment's extent may cover (occlusion)."""
    max_outside_fraction: float = 0.1
    """Flat-lay: how far (fraction of its size) a garment may hang out of the frame."""
    max_rotation_deg: float = 8.0
    min_visible_fraction: float = 0.5
    """Garments with less of their silhouette visible are not annotated."""
    min_box_px: float = 12.0
    """Garments whose visible box is narrower or shorter than this are not annotated."""
    blur_probability: float = 0.5
    max_blur_fraction: float = 0.0015
    """Largest Gaussian blur radius, as a fraction of the long side."""
    max_noise_level: int = 6
    """Largest sensor-noise amplitude in 8-bit levels."""
    jpeg_quality: tuple[int, int] = (70, 95)
    """Range of JPEG qualities for written datasets."""

    def __post_init__(self) -> None:
        _check(1 <= self.min_garments <= self.max_garments, "min_garments", "1 <= min_garments <= max_garments")
        _check(self.max_garments <= 32, "max_garments", "at most 32 (instance ids are bytes)")
        low, high = self.long_side_px
        _check(32 <= low <= high <= 8192, "long_side_px", "32 <= low <= high <= 8192")
        _check(len(self.aspect_ratios) > 0 and all(1.0 <= r <= 4.0 for r in self.aspect_ratios),
               "aspect_ratios", "non-empty, each in [1, 4]")
        for name in ("portrait_probability", "outfit_probability", "blur_probability", "max_overlap",
                     "max_outside_fraction"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, name, "in [0, 1]")
        _check(0.0 < self.min_box_fraction <= self.max_box_fraction <= 1.0, "min_box_fraction",
               "0 < min_box_fraction <= max_box_fraction <= 1")
        _check(0.0 < self.min_visible_fraction <= 1.0, "min_visible_fraction", "in (0, 1]")
        _check(0.0 <= self.max_rotation_deg <= 45.0, "max_rotation_deg", "in [0, 45]")
        _check(self.min_box_px >= 1.0, "min_box_px", ">= 1")
        _check(0.0 <= self.max_blur_fraction <= 0.02, "max_blur_fraction", "in [0, 0.02]")
        _check(0 <= self.max_noise_level <= 64, "max_noise_level", "in [0, 64]")
        q_low, q_high = self.jpeg_quality
        _check(1 <= q_low <= q_high <= 100, "jpeg_quality", "1 <= low <= high <= 100")


def _check(ok: bool, field: str, rule: str) -> None:
    if not ok:
        raise SynthConfigError(f"SceneConfig.{field} must be {rule}")
