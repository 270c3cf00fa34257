"""The default model's garment-embedding and product-vertical heads (issue 16 items 3 and 4).

Tiny random classifiers are built offline for the network, export and runner checks; the
generator's identities and product photos are checked for what they promise; the last tests
hold looser floors on the shipped weights over a few held-out garments and photos (the full
measures are tests/benchmarks/bench_embedding.py and bench_verticals.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from numpy.typing import NDArray

from fashionbox import contract
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.export import attribute_output_names, compare_attributes, export_attributes_onnx
from fashionbox.models import (
    AttributeClassifier,
    AttributeConfig,
    default_weights,
    load_attributes,
    save_checkpoint,
)
from fashionbox.models.torch_runtime import TorchAttributes
from fashionbox.synth import (
    CATEGORY_VERTICALS,
    VERTICALS,
    render_identity_scenes,
    render_product_photo,
    sample_identity,
    vertical_of,
)
from fashionbox.synth.errors import SynthError
from fashionbox.training.retrieval import identity_seeds, supervised_contrastive_loss, with_heads
from fashionbox.training.retrieval_eval import (
    embed,
    held_out_identities,
    held_out_products,
    instance_recall,
    label_set_iou,
)

torch.set_num_threads(1)

LABELS = default_label_map()
GROUPS = tuple(len(g.labels) for g in LABELS.attribute_groups)
TINY = AttributeConfig(group_sizes=GROUPS, crop_size=32, embedding=32, dropout=0.0, mask_size=16, head_hidden=24)
FULL = dataclasses.replace(TINY, retrieval_dim=8, verticals=("tops", "bottoms", "bags"))
TOLERANCE = 1e-4

SHIPPED_FROZEN_SHA256 = "69465f125ff0ca8546777a901158400225e257e1bfa5a084a03b1f5e8a43edfd"
"""SHA-256 over the names and bytes (sorted by name) of every tensor of the attribute checkpoint
shipped before these heads (trunk, attribute heads, mask head): the new checkpoint keeps them all."""


def _uint8(shape: tuple[int, ...], seed: int) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _tiny(config: AttributeConfig, seed: int = 0) -> AttributeClassifier:
    torch.manual_seed(seed)
    return AttributeClassifier(config).eval()


def test_heads_give_unit_embeddings_and_a_vertical_softmax() -> None:
    model = _tiny(FULL)
    out = model.outputs(torch.from_numpy(_uint8((5, 32, 32, 3), seed=1)))

    assert list(out) == ["probs", "masks", "embeddings", "verticals"] == list(model.output_names)
    assert out["probs"].shape == (5, sum(GROUPS))
    assert out["masks"].shape == (5, 16, 16)
    assert out["embeddings"].shape == (5, 8)
    assert out["verticals"].shape == (5, 3)
    torch.testing.assert_close(out["embeddings"].norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out["verticals"].sum(dim=1), torch.ones(5))
    assert model.descriptor(torch.from_numpy(_uint8((2, 32, 32, 3), seed=2))).shape == (2, model.descriptor_size)


def test_new_heads_leave_probs_and_masks_bit_identical() -> None:
    plain = _tiny(TINY)
    full = with_heads(plain, retrieval_dim=8, verticals=("tops", "bottoms", "bags"))
    crops = torch.from_numpy(_uint8((4, 32, 32, 3), seed=3))

    with torch.no_grad():
        probs, masks = plain.predict(crops)
        out = full.outputs(crops)

    assert torch.equal(out["probs"], probs)
    assert torch.equal(out["masks"], masks)
    assert torch.equal(full(crops), plain(crops))


def test_with_heads_keeps_every_base_tensor_and_trains_only_fresh_heads() -> None:
    base = _tiny(FULL, seed=4)
    again = with_heads(base, verticals=("tops", "bags"))

    kept = {k: v for k, v in again.state_dict().items() if not k.startswith("vertical_head.")}
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in kept.items())
    assert again.config.verticals == ("tops", "bags") and again.config.retrieval_dim == 8


def test_checkpoint_written_before_the_heads_loads_unchanged(tmp_path: Path) -> None:
    model = _tiny(TINY)
    old_config = json.loads(TINY.to_json())
    for key in ("retrieval_dim", "verticals", "head_hidden"):
        del old_config[key]
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, model, kind="attributes", config_json=json.dumps(old_config), label_map=LABELS)

    loaded, _ = load_attributes(path)

    assert loaded.embedding_head is None and loaded.vertical_head is None
    assert loaded.output_names == ("probs", "masks")
    runner = TorchAttributes(path, device="cpu", precision="fp32", num_attribute_labels=sum(GROUPS))
    crops = _uint8((3, 32, 32, 3), seed=5)
    result = runner.run_all(crops)
    assert set(result) == {"probs", "masks"}
    np.testing.assert_array_equal(result["probs"], runner.classify(crops))


def test_torch_runner_returns_every_output_of_a_checkpoint_with_heads(tmp_path: Path) -> None:
    model = _tiny(FULL)
    path = tmp_path / "full.safetensors"
    save_checkpoint(path, model, kind="attributes", config_json=FULL.to_json(), label_map=LABELS)
    runner = TorchAttributes(path, device="cpu", precision="fp32", num_attribute_labels=sum(GROUPS))
    crops = _uint8((3, 32, 32, 3), seed=6)

    result = runner.run_all(crops)

    assert runner.verticals == ("tops", "bottoms", "bags")
    assert result["embeddings"].shape == (3, 8) and result["verticals"].shape == (3, 3)
    with torch.no_grad():
        expected = model.outputs(torch.from_numpy(crops))
    for name, value in expected.items():
        np.testing.assert_allclose(result[name], value.numpy(), atol=1e-6)
    np.testing.assert_array_equal(runner.classify_with_masks(crops)[0], result["probs"])


def test_export_carries_embeddings_and_verticals_and_matches_torch(tmp_path: Path) -> None:
    model = _tiny(FULL, seed=7)
    path = export_attributes_onnx(model, tmp_path / "attributes.onnx")

    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == attribute_output_names(model) == [
        contract.ONNX_ATTRIBUTES_OUTPUT, contract.ONNX_ATTRIBUTES_MASKS, contract.ONNX_ATTRIBUTES_EMBEDDINGS,
        contract.ONNX_ATTRIBUTES_VERTICALS]
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert dims["embeddings"] == ["batch", 8] and dims["verticals"] == ["batch", 3]
    report = compare_attributes(model, path, [_uint8((1, 32, 32, 3), seed=8), _uint8((4, 32, 32, 3), seed=9)])

    assert set(report.max_abs_error) == {"probs", "masks", "embeddings", "embeddings_cosine", "verticals"}
    assert report.max_abs_error["embeddings_cosine"] < 1e-6
    report.raise_if_over({"probs": TOLERANCE, "masks": TOLERANCE, "embeddings": TOLERANCE,
                          "embeddings_cosine": 1e-6, "verticals": TOLERANCE})


def test_export_of_a_classifier_without_the_heads_keeps_its_outputs(tmp_path: Path) -> None:
    path = export_attributes_onnx(_tiny(TINY), tmp_path / "attributes.onnx")

    assert [o.name for o in onnx.load(str(path)).graph.output] == ["probs", "masks"]


def test_supervised_contrastive_loss_prefers_embeddings_grouped_by_identity() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    grouped = torch.nn.functional.normalize(torch.eye(3).repeat_interleave(2, dim=0) + 0.01, dim=1)
    mixed = torch.nn.functional.normalize(torch.eye(3).repeat(2, 1) + 0.01, dim=1)

    assert supervised_contrastive_loss(grouped, labels, 0.1) < supervised_contrastive_loss(mixed, labels, 0.1)


def test_identity_scenes_draw_the_same_garment_in_different_scenes() -> None:
    identity = sample_identity(11)
    scenes = render_identity_scenes(11, 3)

    garments = [next(g for g in s.garments if g.identity == 11) for s in scenes]
    assert {g.category for g in garments} == {identity.category}
    assert all(dict(g.attributes) == dict(identity.attributes) for g in garments)
    assert len({s.seed for s in scenes}) == 3
    assert len({s.image.size for s in scenes}) > 1 or len({g.box for g in garments}) == 3
    pixels = [np.asarray(s.image.resize((64, 64)), dtype=np.float32) for s in scenes]
    assert np.abs(pixels[0] - pixels[1]).mean() > 5.0  # other backgrounds, light, placement
    assert all(g.identity in (None, 11) for s in scenes for g in s.garments)
    assert render_identity_scenes(11, 1)[0].encode() == scenes[0].encode()  # deterministic


def test_identity_training_and_held_out_seeds_are_disjoint() -> None:
    train = set(identity_seeds(1, 100_000))
    held = set(identity_seeds(1, 100_000, held_out=True))

    assert not train & held


def test_product_photos_show_one_centred_garment_with_its_vertical() -> None:
    photo = render_product_photo(5, category="shoe")

    assert photo.vertical == "footwear" == vertical_of(photo.garment.category)
    x1, y1, x2, y2 = photo.garment.box
    width, height = photo.image.size
    assert x1 < width / 2 < x2 and y1 < height / 2 < y2
    assert max(x2 - x1, y2 - y1) > 0.3 * max(width, height)


def test_every_label_map_category_has_a_vertical_and_unknown_ones_fail_clearly() -> None:
    assert {CATEGORY_VERTICALS[name] for name in LABELS.category_names} == set(VERTICALS)
    with pytest.raises(SynthError, match="no product vertical"):
        vertical_of("umbrella")


def test_label_set_iou() -> None:
    assert label_set_iou(frozenset("abc"), frozenset("abd")) == 0.5


# -- the shipped weights ------------------------------------------------------------------------


def test_shipped_checkpoint_keeps_the_released_trunk_attribute_and_mask_tensors() -> None:
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(default_weights("attributes")), framework="pt") as handle:
        names = sorted(k for k in handle.keys()  # noqa: SIM118
                       if not k.startswith(("embedding_head.", "vertical_head.", "verifier_head.")))
        for name in names:
            digest.update(name.encode())
            digest.update(handle.get_tensor(name).contiguous().numpy().tobytes())
        metadata = handle.metadata()

    assert digest.hexdigest() == SHIPPED_FROZEN_SHA256
    config = json.loads(metadata["config"])
    assert config["retrieval_dim"] > 0 and tuple(config["verticals"]) == VERTICALS
    assert "embedding_train_settings" in metadata and "verticals_train_settings" in metadata


def test_shipped_embedding_finds_the_same_garment_in_other_scenes() -> None:
    classifier, labels = load_attributes(default_weights("attributes"))
    data = held_out_identities(40, 3, label_map=labels, seed=2)

    recall = instance_recall(embed(classifier, data.crops), data)

    assert recall["recall@1"] >= 0.7, recall
    assert recall["recall@10"] >= 0.9, recall


def test_shipped_vertical_head_classifies_held_out_product_photos() -> None:
    classifier, labels = load_attributes(default_weights("attributes"))
    crops, verticals = held_out_products(120, label_map=labels, seed=2)

    predicted = embed(classifier, crops, key="verticals").argmax(1)

    accuracy = float(np.mean([classifier.config.verticals[p] == v for p, v in zip(predicted, verticals, strict=True)]))
    assert accuracy >= 0.8, accuracy


def test_embedding_and_vertical_stages_train_checkpoint_and_resume_on_a_frozen_trunk(tmp_path: Path) -> None:
    from fashionbox.commands.cli import build_parser
    from fashionbox.training.trainer import TrainSettings, train_default

    out = tmp_path / "out"
    base = _tiny(TINY, seed=9)
    save_checkpoint(out / "attributes.safetensors", base, kind="attributes", config_json=TINY.to_json(),
                    label_map=LABELS)
    small = TrainSettings(out_dir=out, cache_dir=tmp_path / "cache", retrieval_identities=6, retrieval_views=2,
                          retrieval_identities_per_batch=3, retrieval_crops_per_identity=2, retrieval_dim=8,
                          retrieval_steps=4, vertical_photos=16, vertical_batch=8, vertical_steps=3,
                          checkpoint_every=2, threads=1)

    train_default(small, stages=("embedding", "verticals"))
    train_default(dataclasses.replace(small, retrieval_steps=6, resume=True), stages=("embedding",))

    from safetensors import safe_open

    trained, _ = load_attributes(out / "attributes.safetensors")
    assert trained.config.retrieval_dim == 8 and trained.config.verticals == VERTICALS
    frozen = {k: v for k, v in trained.state_dict().items() if not k.startswith(("embedding_head.", "vertical_head."))}
    assert frozen.keys() == base.state_dict().keys()
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items())
    with safe_open(str(out / "attributes.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["embedding_step"] == "6" and metadata["verticals_step"] == "3"
    assert json.loads(metadata["embedding_train_settings"])["retrieval_steps"] == 6
    assert len(list((tmp_path / "cache").iterdir())) == 2  # the identity cache was reused on resume
    args = build_parser().parse_args(["train", "--stage", "embedding", "--stage", "verticals"])
    assert args.stage == ["embedding", "verticals"]
