"""The label map: categories and attribute groups, named as in the Fashionpedia ontology.

One label map travels with the models: the converter writes it into the model repository as
``labels.json`` and the server models, the client and the evaluation read it from there. The
default map is ``fashionbox/data/default_labels.json``; its names are checked against the
Fashionpedia taxonomy shipped in ``fashionbox/data/fashionpedia_taxonomy.json`` so weights
trained on real Fashionpedia data keep the same names and ids.

Usage::

    labels = default_label_map()
    labels.category_index("dress")          # -> 5
    labels.groups_for("pants")              # -> ("textile pattern",)
    labels.save(repository / "labels.json")
    LabelMap.load(repository / "labels.json")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "AttributeGroup",
    "Category",
    "LabelMap",
    "LabelMapError",
    "default_label_map",
    "fashionpedia_taxonomy",
]


class LabelMapError(ValueError):
    """A label map is malformed or names something the taxonomy does not have."""


@dataclass(frozen=True)
class Category:
    name: str
    fashionpedia_id: int
    supercategory: str
    groups: tuple[str, ...]
    """Attribute groups that apply to this category (``sleeve length`` means nothing for shoes)."""


@dataclass(frozen=True)
class AttributeGroup:
    name: str
    supercategory: str
    labels: tuple[str, ...]
    fashionpedia_ids: tuple[int, ...]


@dataclass(frozen=True)
class LabelMap:
    name: str
    categories: tuple[Category, ...]
    attribute_groups: tuple[AttributeGroup, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.categories]
        if len(set(names)) != len(names):
            raise LabelMapError(f"duplicate category names in label map {self.name!r}")
        group_names = {g.name for g in self.attribute_groups}
        if len(group_names) != len(self.attribute_groups):
            raise LabelMapError(f"duplicate attribute group names in label map {self.name!r}")
        for category in self.categories:
            unknown = set(category.groups) - group_names
            if unknown:
                raise LabelMapError(f"category {category.name!r} names unknown groups {sorted(unknown)}")
        taxonomy = _TaxonomyIndex.shared()
        for category in self.categories:
            known = taxonomy.known_category_id(category.name)
            if known is not None and known != category.fashionpedia_id:
                raise LabelMapError(f"category {category.name!r} has Fashionpedia id {known}, "
                                    f"not {category.fashionpedia_id}")
        for group in self.attribute_groups:
            if len(group.labels) < 2 or len(group.labels) != len(group.fashionpedia_ids):
                raise LabelMapError(f"attribute group {group.name!r} needs at least two labels with ids")

    # -- lookups -------------------------------------------------------------------------

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    @property
    def category_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.attribute_groups)

    @cached_property
    def _category_index(self) -> dict[str, int]:
        return {c.name: i for i, c in enumerate(self.categories)}

    def category_index(self, name: str) -> int:
        try:
            return self._category_index[name]
        except KeyError:
            raise LabelMapError(f"unknown category {name!r}; known: {list(self.category_names)}") from None

    def group(self, name: str) -> AttributeGroup:
        for g in self.attribute_groups:
            if g.name == name:
                return g
        raise LabelMapError(f"unknown attribute group {name!r}; known: {list(self.group_names)}")

    def groups_for(self, category: str | int) -> tuple[str, ...]:
        if isinstance(category, int):
            if not 0 <= category < len(self.categories):
                raise LabelMapError(f"category index {category} outside [0, {len(self.categories)})")
            return self.categories[category].groups
        return self.categories[self.category_index(category)].groups

    @cached_property
    def group_offsets(self) -> tuple[tuple[str, int, int], ...]:
        """``(group, start, stop)`` slices of the concatenated attribute score vector."""
        offsets = []
        start = 0
        for g in self.attribute_groups:
            offsets.append((g.name, start, start + len(g.labels)))
            start += len(g.labels)
        return tuple(offsets)

    @property
    def num_attribute_labels(self) -> int:
        return sum(len(g.labels) for g in self.attribute_groups)

    @cached_property
    def applicability(self) -> tuple[tuple[bool, ...], ...]:
        """``applicability[category][group]``: whether the group is reported for the category."""
        return tuple(tuple(g.name in c.groups for g in self.attribute_groups) for c in self.categories)

    # -- (de)serialisation -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "taxonomy": "fashionpedia",
            "categories": [
                {
                    "name": c.name,
                    "fashionpedia_id": c.fashionpedia_id,
                    "supercategory": c.supercategory,
                    "groups": list(c.groups),
                }
                for c in self.categories
            ],
            "attribute_groups": [
                {
                    "name": g.name,
                    "supercategory": g.supercategory,
                    "labels": list(g.labels),
                    "fashionpedia_ids": list(g.fashionpedia_ids),
                }
                for g in self.attribute_groups
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelMap:
        """Build from a dict; ids missing from the dict are filled from the Fashionpedia taxonomy."""
        try:
            taxonomy = _TaxonomyIndex.shared()
            # Ids and supercategories given explicitly win; missing ones come from the taxonomy.
            categories = tuple(
                Category(
                    name=c["name"],
                    fashionpedia_id=int(c["fashionpedia_id"] if "fashionpedia_id" in c
                                        else taxonomy.category_id(c["name"])),
                    supercategory=str(c["supercategory"] if "supercategory" in c
                                      else taxonomy.category_supercategory(c["name"])),
                    groups=tuple(c.get("groups", ())),
                )
                for c in data["categories"]
            )
            groups = tuple(
                AttributeGroup(
                    name=g["name"],
                    supercategory=g.get("supercategory", g["name"]),
                    labels=tuple(g["labels"]),
                    fashionpedia_ids=tuple(
                        int(i) for i in (g["fashionpedia_ids"] if "fashionpedia_ids" in g
                                         else [taxonomy.attribute_id(n) for n in g["labels"]])
                    ),
                )
                for g in data.get("attribute_groups", [])
            )
            return cls(name=str(data.get("name", "unnamed")), categories=categories, attribute_groups=groups)
        except (KeyError, TypeError) as exc:
            raise LabelMapError(f"malformed label map: {exc!r}") from exc

    @classmethod
    def load(cls, path: Path | str) -> LabelMap:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LabelMapError(f"cannot read label map {path}: {exc}") from exc
        return cls.from_dict(data)


def fashionpedia_taxonomy() -> dict[str, Any]:
    """The Fashionpedia ontology (46 categories, 294 attributes) shipped with the package."""
    data = resources.files("fashionbox.contract").joinpath("data")
    text = data.joinpath("fashionpedia_taxonomy.json").read_text(encoding="utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


class _TaxonomyIndex:
    _instance: _TaxonomyIndex | None = None

    def __init__(self, taxonomy: dict[str, Any]) -> None:
        self._categories = {c["name"]: c for c in taxonomy["categories"]}
        self._attributes = {a["name"]: a for a in taxonomy["attributes"]}

    @classmethod
    def shared(cls) -> _TaxonomyIndex:
        if cls._instance is None:
            cls._instance = cls(fashionpedia_taxonomy())
        return cls._instance

    def category_id(self, name: str) -> int:
        if name not in self._categories:
            raise LabelMapError(f"{name!r} is not a Fashionpedia category")
        return int(self._categories[name]["id"])

    def known_category_id(self, name: str) -> int | None:
        """The taxonomy's id for ``name``, or ``None`` for a label outside Fashionpedia."""
        entry = self._categories.get(name)
        return None if entry is None else int(entry["id"])

    def category_supercategory(self, name: str) -> str:
        self.category_id(name)
        return str(self._categories[name]["supercategory"])

    def attribute_id(self, name: str) -> int:
        if name not in self._attributes:
            raise LabelMapError(f"{name!r} is not a Fashionpedia attribute")
        return int(self._attributes[name]["id"])


def default_label_map() -> LabelMap:
    """The label map of the shipped default model (a subset of Fashionpedia)."""
    text = resources.files("fashionbox.contract").joinpath("data/default_labels.json").read_text(encoding="utf-8")
    return LabelMap.from_dict(json.loads(text))
