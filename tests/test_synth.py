"""The procedural scene generator: determinism, label coverage, exact boxes, COCO files."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from fashionbox.contract.labels import LabelMap, default_label_map
from fashionbox.synth import (
    DROPPED_INSTANCE,
    CocoFormatError,
    Scene,
    SceneConfig,
    SynthConfigError,
    SynthError,
    UndrawableLabelError,
    contact_sheet,
    image_seed,
    read_coco_dataset,
    render_scene,
    render_scene_with_instances,
    write_coco_dataset,
)
from fashionbox.synth.canvas import Affine, Paint, rasterise
from fashionbox.synth.coco import jpeg_quality
from fashionbox.synth.garments import NECKLINES, SLEEVE_COVER, GarmentParams, Neckline, draw_top
from fashionbox.synth.patterns import PATTERN_LABELS, PatternKind, sample_pattern

SMALL = (320, 240)
COLOURS = {Paint.PATTERN: (40, 70, 140), Paint.SHADE: (28, 49, 98), Paint.OUTLINE: (20, 35, 70),
           Paint.ACCENT: (240, 240, 240), Paint.INNER: (245, 245, 245), Paint.SKIN: (224, 172, 138),
           Paint.HAIR: (30, 30, 30)}


@pytest.fixture(scope="module")
def label_map() -> LabelMap:
    return default_label_map()


@pytest.fixture(scope="module")
def many_scenes(label_map: LabelMap) -> list[Scene]:
    return [render_scene(seed, label_map=label_map, size=SMALL) for seed in range(500)]


def _render_garment(params: GarmentParams, scale: float = 100.0) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """A top drawn alone on black: (RGB pixels, garment mask); the neck line centre sits at (200, 100)."""
    drawing = draw_top(params, random.Random(0))
    pattern = sample_pattern(PatternKind.PLAIN, random.Random(0), COLOURS[Paint.PATTERN])
    image = Image.new("RGB", (400, 400))
    layers = rasterise(drawing, Affine.place((200, 100), scale), COLOURS, pattern.fill, (0, 0, 400, 400))
    assert layers.under is not None and layers.garment is not None
    for layer in (layers.under, layers.garment):
        image.paste(layer.rgb, (layer.left, layer.top), layer.mask)
    mask = np.zeros((400, 400), dtype=bool)
    g = layers.garment
    mask[g.top:g.top + g.rgb.height, g.left:g.left + g.rgb.width] = np.asarray(g.mask) > 0
    return np.asarray(image), mask


def _skin(pixels: NDArray[np.uint8]) -> NDArray[np.bool_]:
    result: NDArray[np.bool_] = np.all(pixels == np.array(COLOURS[Paint.SKIN], dtype=np.uint8), axis=-1)
    return result


# -- determinism and size -------------------------------------------------------------------------


def test_same_seed_renders_identical_pixels_and_annotations() -> None:
    first, second = render_scene(11), render_scene(11)
    assert first.image.tobytes() == second.image.tobytes()
    assert first.garments == second.garments


def test_different_seeds_render_different_scenes() -> None:
    assert render_scene(1, size=SMALL).image.tobytes() != render_scene(2, size=SMALL).image.tobytes()


def test_scene_is_rendered_at_the_requested_size() -> None:
    scene = render_scene(3, size=(500, 700))
    assert scene.image.size == (500, 700) and scene.image.mode == "RGB"


def test_random_size_is_a_photo_size_within_the_configured_range() -> None:
    config = SceneConfig()
    sizes = [render_scene(seed, config=config).image.size for seed in range(6)]
    for width, height in sizes:
        assert config.long_side_px[0] <= max(width, height) <= config.long_side_px[1]
        assert 1.0 <= max(width, height) / min(width, height) <= 1.7
    assert len(set(sizes)) > 1


def test_scene_scales_consistently() -> None:
    small, large = render_scene(5, size=(640, 480)), render_scene(5, size=(1280, 960))
    assert [(g.category, g.attributes) for g in small.garments] == [(g.category, g.attributes) for g in large.garments]
    for a, b in zip(small.garments, large.garments, strict=True):
        assert np.allclose(np.array(a.box) * 2, b.box, atol=4.0)
    shrunk = np.asarray(large.image.resize(small.image.size, Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(shrunk - np.asarray(small.image, dtype=np.float32)).mean() < 8.0


def test_negative_seed_is_rejected() -> None:
    with pytest.raises(SynthError, match="non-negative"):
        render_scene(-1)


# -- ground truth ------------------------------------------------------------------------------------


def test_every_category_and_attribute_label_appears_in_500_scenes(many_scenes: list[Scene],
                                                                   label_map: LabelMap) -> None:
    categories = Counter(g.category for scene in many_scenes for g in scene.garments)
    assert set(categories) == set(label_map.category_names)
    for group in label_map.attribute_groups:
        seen = Counter(g.attributes[group.name] for s in many_scenes for g in s.garments if group.name in g.attributes)
        assert set(seen) == set(group.labels), group.name
        assert min(seen.values()) >= 0.5 * max(seen.values()), f"{group.name} labels are unbalanced: {seen}"


def test_garments_get_exactly_their_applicable_attributes(many_scenes: list[Scene], label_map: LabelMap) -> None:
    for scene in many_scenes:
        for garment in scene.garments:
            assert set(garment.attributes) == set(label_map.groups_for(garment.category))
            for group, label in garment.attributes.items():
                assert label in label_map.group(group).labels


def test_scenes_hold_one_to_five_garments_and_some_occlusion(many_scenes: list[Scene]) -> None:
    counts = Counter(len(scene.garments) for scene in many_scenes)
    assert max(counts) <= 5 and counts[0] < 0.02 * len(many_scenes)
    assert {1, 2, 3, 4, 5} <= set(counts)


def test_boxes_lie_inside_the_image_and_are_not_tiny(many_scenes: list[Scene]) -> None:
    config = SceneConfig()
    for scene in many_scenes:
        width, height = scene.image.size
        for g in scene.garments:
            x1, y1, x2, y2 = g.box
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert x2 - x1 >= config.min_box_px and y2 - y1 >= config.min_box_px


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_boxes_cover_visible_pixels_only(seed: int) -> None:
    scene, instances = render_scene_with_instances(seed, size=(640, 480))
    assert instances.shape == (480, 640)
    assert set(np.unique(instances)) <= {0, DROPPED_INSTANCE, *range(1, len(scene.garments) + 1)}
    for index, garment in enumerate(scene.garments, start=1):
        rows = np.flatnonzero((instances == index).any(axis=1))
        cols = np.flatnonzero((instances == index).any(axis=0))
        assert garment.box == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)


def test_heavily_occluded_garments_are_not_annotated() -> None:
    config = SceneConfig(min_visible_fraction=1.0)
    strict = [render_scene_with_instances(seed, size=SMALL, config=config) for seed in range(40)]
    assert any((instances == DROPPED_INSTANCE).any() for _, instances in strict)
    relaxed = sum(len(render_scene(seed, size=SMALL).garments) for seed in range(40))
    assert sum(len(scene.garments) for scene, _ in strict) < relaxed


# -- what the labels look like ------------------------------------------------------------------------


def test_longer_sleeve_labels_cover_more_of_the_arm() -> None:
    covered, skin = [], []
    for label in ("sleeveless", "short (length)", "elbow-length", "three quarter (length)", "wrist-length"):
        pixels, mask = _render_garment(GarmentParams(sleeve_cover=SLEEVE_COVER[label]))
        covered.append(int(mask.sum()))
        skin.append(int(_skin(pixels).sum()))
    assert covered == sorted(covered) and len(set(covered)) == 5
    assert skin == sorted(skin, reverse=True) and len(set(skin)) == 5


def test_turtle_neck_hides_the_neck_and_other_necklines_show_skin() -> None:
    # Skin below the neck line (y > 100 px at 100 px per unit) between the shoulders.
    visible = {}
    for label, neckline in NECKLINES.items():
        pixels, _ = _render_garment(GarmentParams(sleeve_cover=1.0, neckline=neckline))
        visible[label] = int(_skin(pixels[96:150, 155:245]).sum())
        neck = int(_skin(pixels[70:96, 185:215]).sum())
        assert (neck == 0) == (neckline is Neckline.TURTLE), label
    assert visible["turtle (neck)"] == 0
    assert all(count > 100 for label, count in visible.items() if label != "turtle (neck)"), visible
    assert visible["boat (neck)"] > visible["crew (neck)"]


@pytest.mark.parametrize("label", list(PATTERN_LABELS))
def test_every_pattern_fills_a_garment_with_its_own_colours(label: str) -> None:
    kind = PATTERN_LABELS[label]
    spec = dataclasses.replace(sample_pattern(kind, random.Random(3), (200, 40, 40)), shade=(0.0, 0.0))
    pixels = spec.fill(Affine.place((0, 0), 60.0).inverse(), (0, 0, 60, 60))
    assert pixels.shape == (60, 60, 3) and pixels.dtype == np.uint8
    used = np.unique(pixels.reshape(-1, 3), axis=0).astype(int)
    assert len(used) == 1 if kind is PatternKind.PLAIN else len(used) >= 2
    palette = np.array(spec.colours)
    assert all(np.abs(palette - colour).max(axis=1).min() <= 3 for colour in used)


# -- labels and config --------------------------------------------------------------------------------


def test_label_map_with_an_undrawable_category_fails_clearly(label_map: LabelMap) -> None:
    data = label_map.to_dict()
    data["categories"].append({"name": "glove", "groups": []})
    with pytest.raises(UndrawableLabelError, match="'glove'"):
        render_scene(0, label_map=LabelMap.from_dict(data), size=SMALL)


def test_label_map_with_an_undrawable_attribute_label_fails_clearly(label_map: LabelMap) -> None:
    data = label_map.to_dict()
    data["attribute_groups"][1]["labels"].append("cowl (neck)")
    data["attribute_groups"][1]["fashionpedia_ids"].append(999)
    with pytest.raises(UndrawableLabelError, match=r"cowl \(neck\)"):
        render_scene(0, label_map=LabelMap.from_dict(data), size=SMALL)


def test_a_label_map_subset_draws_only_its_categories(label_map: LabelMap) -> None:
    data = label_map.to_dict()
    data["categories"] = [c for c in data["categories"] if c["name"] in ("dress", "shoe", "bag, wallet")]
    subset = LabelMap.from_dict(data)
    seen = {g.category for seed in range(30) for g in render_scene(seed, label_map=subset, size=SMALL).garments}
    assert seen == {"dress", "shoe", "bag, wallet"}


@pytest.mark.parametrize("fields", [
    {"min_garments": 0}, {"min_garments": 4, "max_garments": 2}, {"long_side_px": (900, 600)},
    {"outfit_probability": 1.5}, {"min_box_fraction": 0.9, "max_box_fraction": 0.5}, {"aspect_ratios": ()},
    {"jpeg_quality": (90, 70)}, {"min_visible_fraction": 0.0},
])
def test_config_rejects_invalid_fields(fields: dict[str, object]) -> None:
    with pytest.raises(SynthConfigError, match="SceneConfig"):
        SceneConfig(**fields)  # type: ignore[arg-type]


def test_config_limits_the_number_of_garments() -> None:
    config = SceneConfig(min_garments=1, max_garments=2)
    assert all(len(render_scene(seed, size=SMALL, config=config).garments) <= 2 for seed in range(30))


# -- encoding, COCO files and previews ----------------------------------------------------------------


def test_encode_returns_decodable_jpeg_and_png() -> None:
    scene = render_scene(4, size=SMALL)
    jpeg, png = scene.encode("JPEG", quality=80), scene.encode("PNG")
    assert jpeg[:2] == b"\xff\xd8" and Image.open(io.BytesIO(jpeg)).size == SMALL  # in memory: nothing to close
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(scene.image))


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coco")
    write_coco_dataset(out, count=4, seed=3)
    return out


def test_coco_file_loads_with_faster_coco_eval(coco_dir: Path, label_map: LabelMap) -> None:
    faster_coco_eval = pytest.importorskip("faster_coco_eval")
    coco = faster_coco_eval.COCO(str(coco_dir / "annotations.json"))
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4]
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(label_map.category_names)
    annotations = coco.loadAnns(coco.getAnnIds())
    assert annotations
    # The ground truth scored as detections is perfect: boxes and ids are in the layout COCOeval reads.
    detections = coco.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                                "score": 1.0} for a in annotations])
    evaluation = faster_coco_eval.COCOeval_faster(coco, detections, iouType="bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_coco_annotations_follow_the_fashionpedia_layout(coco_dir: Path, label_map: LabelMap) -> None:
    document = json.loads((coco_dir / "annotations.json").read_text())
    assert [c["fashionpedia_id"] for c in document["categories"]] == [c.fashionpedia_id for c in label_map.categories]
    for image in document["images"]:
        assert (coco_dir / "images" / image["file_name"]).is_file()
    for a in document["annotations"]:
        category = label_map.categories[a["category_id"] - 1]
        assert set(a["attributes"]) == set(category.groups) and a["iscrowd"] == 0
        expected = sorted(label_map.group(g).fashionpedia_ids[label_map.group(g).labels.index(lab)]
                          for g, lab in a["attributes"].items())
        assert a["attribute_ids"] == expected
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])


def test_coco_dataset_reads_back_the_rendered_annotations(coco_dir: Path) -> None:
    records = read_coco_dataset(coco_dir / "annotations.json")
    assert [r.file_name for r in records] == ["000000.jpg", "000001.jpg", "000002.jpg", "000003.jpg"]
    for index, record in enumerate(records):
        scene = render_scene(image_seed(3, index))
        assert record.garments == scene.garments
        assert (record.width, record.height) == scene.image.size
        with Image.open(record.path) as image:
            assert image.size == scene.image.size


def test_any_coco_image_can_be_re_rendered_alone_from_its_seed(coco_dir: Path) -> None:
    scene = render_scene(image_seed(3, 2))
    with Image.open(coco_dir / "images" / "000002.jpg") as image:
        written = np.asarray(image, dtype=np.float32)
    quality = jpeg_quality(image_seed(3, 2), SceneConfig())
    reencoded = np.asarray(Image.open(io.BytesIO(scene.encode("JPEG", quality))), dtype=np.float32)
    assert np.array_equal(written, reencoded)


def test_coco_attribute_ids_are_decoded_when_readable_attributes_are_missing(coco_dir: Path, tmp_path: Path) -> None:
    document = json.loads((coco_dir / "annotations.json").read_text())
    for a in document["annotations"]:
        del a["attributes"]
    stripped = tmp_path / "annotations.json"
    stripped.write_text(json.dumps(document))
    original = read_coco_dataset(coco_dir)
    assert [r.garments for r in read_coco_dataset(stripped)] == [r.garments for r in original]


def test_malformed_coco_file_fails_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    path.write_text('{"images": []}')
    with pytest.raises(CocoFormatError, match=r"annotations\.json"):
        read_coco_dataset(path)


def test_contact_sheet_tiles_every_scene() -> None:
    scenes = [render_scene(seed, size=SMALL) for seed in range(5)]
    assert contact_sheet(scenes, tile_px=100, columns=3).size == (300, 200)
