"""fashionbox.contract.labels: the default map against the Fashionpedia taxonomy, lookups, JSON, validation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fashionbox.contract.labels import (
    AttributeGroup,
    Category,
    LabelMap,
    LabelMapError,
    default_label_map,
    fashionpedia_taxonomy,
)

DEFAULT_JSON = (Path(__file__).resolve().parents[1] / "client" / "fashionbox" / "contract" / "data"
                / "default_labels.json")

CATEGORIES = (
    "shirt, blouse",
    "top, t-shirt, sweatshirt",
    "sweater",
    "jacket",
    "coat",
    "dress",
    "pants",
    "shorts",
    "skirt",
    "hat",
    "shoe",
    "bag, wallet",
)
GROUPS = {
    "sleeve length": ("sleeveless", "short (length)", "elbow-length", "three quarter (length)", "wrist-length"),
    "neckline type": ("crew (neck)", "v-neck", "boat (neck)", "square (neckline)", "turtle (neck)"),
    "textile pattern": ("plain (pattern)", "stripe", "dot", "check", "floral"),
}


def _small_map(**changes: Any) -> dict[str, Any]:
    """A valid two-category, one-group map as a dict; ``changes`` replace top-level keys."""
    data: dict[str, Any] = {
        "name": "small",
        "categories": [
            {"name": "dress", "groups": ["textile pattern"]},
            {"name": "shoe", "groups": []},
        ],
        "attribute_groups": [
            {"name": "textile pattern", "labels": ["stripe", "dot"]},
        ],
    }
    data.update(changes)
    return data


# -- the default map ----------------------------------------------------------------------


def test_default_categories_have_their_fashionpedia_ids_and_supercategories() -> None:
    taxonomy = {c["name"]: c for c in fashionpedia_taxonomy()["categories"]}

    for category in default_label_map().categories:
        assert category.name in taxonomy, category.name
        assert category.fashionpedia_id == taxonomy[category.name]["id"], category.name
        assert category.supercategory == taxonomy[category.name]["supercategory"], category.name


def test_default_attribute_labels_have_their_fashionpedia_ids_and_group_supercategory() -> None:
    taxonomy = {a["name"]: a for a in fashionpedia_taxonomy()["attributes"]}

    for group in default_label_map().attribute_groups:
        for label, fashionpedia_id in zip(group.labels, group.fashionpedia_ids, strict=True):
            assert label in taxonomy, label
            assert fashionpedia_id == taxonomy[label]["id"], label
            assert taxonomy[label]["supercategory"] == group.supercategory, label


def test_shipped_taxonomy_has_the_46_categories_and_294_attributes_of_fashionpedia() -> None:
    taxonomy = fashionpedia_taxonomy()

    assert len(taxonomy["categories"]) == 46
    assert len(taxonomy["attributes"]) == 294
    assert len({c["id"] for c in taxonomy["categories"]}) == 46
    assert len({a["id"] for a in taxonomy["attributes"]}) == 294


def test_default_map_has_the_twelve_categories_in_file_order() -> None:
    labels = default_label_map()

    assert labels.name == "fashionbox-default"
    assert labels.category_names == CATEGORIES
    assert labels.num_categories == 12


def test_default_map_has_three_groups_of_five_labels_in_file_order() -> None:
    labels = default_label_map()

    assert labels.group_names == tuple(GROUPS)
    assert {g.name: g.labels for g in labels.attribute_groups} == GROUPS
    assert labels.num_attribute_labels == 15


def test_default_map_is_the_one_in_the_data_file() -> None:
    data = json.loads(DEFAULT_JSON.read_text(encoding="utf-8"))

    assert default_label_map() == LabelMap.from_dict(data)
    assert [c["name"] for c in data["categories"]] == list(CATEGORIES)


# -- lookups ------------------------------------------------------------------------------


def test_group_offsets_slice_the_concatenated_scores_in_group_order() -> None:
    assert default_label_map().group_offsets == (
        ("sleeve length", 0, 5),
        ("neckline type", 5, 10),
        ("textile pattern", 10, 15),
    )


def test_applicability_says_which_groups_each_category_reports() -> None:
    labels = default_label_map()

    assert len(labels.applicability) == 12
    assert labels.applicability[labels.category_index("dress")] == (True, True, True)
    assert labels.applicability[labels.category_index("jacket")] == (True, False, True)
    assert labels.applicability[labels.category_index("pants")] == (False, False, True)
    assert labels.applicability[labels.category_index("shoe")] == (False, False, False)


def test_groups_for_accepts_a_name_or_an_index() -> None:
    labels = default_label_map()

    assert labels.groups_for("pants") == ("textile pattern",)
    assert labels.groups_for("shoe") == ()
    assert labels.groups_for(5) == ("sleeve length", "neckline type", "textile pattern")
    assert labels.groups_for(labels.category_index("coat")) == ("sleeve length", "textile pattern")


def test_category_index_follows_the_file_order() -> None:
    labels = default_label_map()

    assert [labels.category_index(name) for name in CATEGORIES] == list(range(12))


def test_unknown_category_lookup_names_the_category_and_the_known_ones() -> None:
    with pytest.raises(LabelMapError, match=r"unknown category 'cardigan'; known: \['shirt, blouse'"):
        default_label_map().category_index("cardigan")
    with pytest.raises(LabelMapError, match="unknown category 'cardigan'"):
        default_label_map().groups_for("cardigan")


def test_group_lookup_returns_the_group_or_names_the_unknown_one() -> None:
    labels = default_label_map()

    assert labels.group("textile pattern").fashionpedia_ids == (317, 328, 323, 322, 325)
    with pytest.raises(LabelMapError, match="unknown attribute group 'colour'"):
        labels.group("colour")


# -- JSON ---------------------------------------------------------------------------------


def test_saved_default_map_loads_back_equal(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    original = default_label_map()

    original.save(path)
    loaded = LabelMap.load(path)

    assert loaded == original
    assert loaded.group_offsets == original.group_offsets
    assert loaded.applicability == original.applicability


def test_saved_map_carries_ids_and_the_taxonomy_name(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    default_label_map().save(path)

    data = json.loads(path.read_text(encoding="utf-8"))

    assert data["taxonomy"] == "fashionpedia"
    assert data["categories"][5] == {
        "name": "dress",
        "fashionpedia_id": 10,
        "supercategory": "wholebody",
        "groups": ["sleeve length", "neckline type", "textile pattern"],
    }
    assert data["attribute_groups"][2]["fashionpedia_ids"] == [317, 328, 323, 322, 325]


def test_map_built_by_hand_round_trips_through_json(tmp_path: Path) -> None:
    labels = LabelMap(
        name="hand",
        categories=(Category("hat", 14, "head", ("textile pattern",)), Category("shoe", 23, "legs and feet", ())),
        attribute_groups=(AttributeGroup("textile pattern", "textile pattern", ("stripe", "dot"), (328, 323)),),
    )
    path = tmp_path / "hand.json"

    labels.save(path)

    assert LabelMap.load(path) == labels


def test_missing_ids_are_filled_from_the_taxonomy() -> None:
    labels = LabelMap.from_dict(_small_map())

    assert [c.fashionpedia_id for c in labels.categories] == [10, 23]
    assert [c.supercategory for c in labels.categories] == ["wholebody", "legs and feet"]
    assert labels.attribute_groups[0].fashionpedia_ids == (328, 323)


# -- malformed maps -----------------------------------------------------------------------


def test_unknown_category_name_is_rejected_as_not_in_fashionpedia() -> None:
    data = _small_map(categories=[{"name": "spacesuit", "groups": []}])

    with pytest.raises(LabelMapError, match="'spacesuit' is not a Fashionpedia category"):
        LabelMap.from_dict(data)


def test_unknown_attribute_label_is_rejected_as_not_in_fashionpedia() -> None:
    data = _small_map(attribute_groups=[{"name": "textile pattern", "labels": ["stripe", "tartan-ish"]}])

    with pytest.raises(LabelMapError, match="'tartan-ish' is not a Fashionpedia attribute"):
        LabelMap.from_dict(data)


def test_category_naming_an_unknown_group_is_rejected_with_both_names() -> None:
    data = _small_map(categories=[{"name": "dress", "groups": ["textile pattern", "colour"]}])

    with pytest.raises(LabelMapError, match=r"category 'dress' names unknown groups \['colour'\]"):
        LabelMap.from_dict(data)


def test_duplicate_category_names_are_rejected() -> None:
    data = _small_map(categories=[{"name": "dress"}, {"name": "dress"}])

    with pytest.raises(LabelMapError, match="duplicate category names in label map 'small'"):
        LabelMap.from_dict(data)


def test_duplicate_group_names_are_rejected() -> None:
    group = {"name": "textile pattern", "labels": ["stripe", "dot"]}
    data = _small_map(attribute_groups=[group, group])

    with pytest.raises(LabelMapError, match="duplicate attribute group names in label map 'small'"):
        LabelMap.from_dict(data)


def test_group_with_one_label_is_rejected() -> None:
    data = _small_map(attribute_groups=[{"name": "textile pattern", "labels": ["stripe"]}])

    with pytest.raises(LabelMapError, match="attribute group 'textile pattern' needs at least two labels"):
        LabelMap.from_dict(data)


def test_group_with_fewer_ids_than_labels_is_rejected() -> None:
    data = _small_map(attribute_groups=[{"name": "textile pattern", "labels": ["stripe", "dot"],
                                         "fashionpedia_ids": [328]}])

    with pytest.raises(LabelMapError, match="attribute group 'textile pattern' needs at least two labels with ids"):
        LabelMap.from_dict(data)


def test_map_without_categories_is_rejected_as_malformed() -> None:
    with pytest.raises(LabelMapError, match="malformed label map: KeyError\\('categories'\\)"):
        LabelMap.from_dict({"name": "empty"})


def test_loading_a_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"

    with pytest.raises(LabelMapError, match=f"cannot read label map {re.escape(str(path))}"):
        LabelMap.load(path)


def test_loading_a_file_that_is_not_json_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text("categories: [dress]\n", encoding="utf-8")

    with pytest.raises(LabelMapError, match=f"cannot read label map {re.escape(str(path))}"):
        LabelMap.load(path)
