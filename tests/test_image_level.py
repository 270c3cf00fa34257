"""Image-level labels and embeddings (issue 16): the wire format, the client's view of it, the
parameters the steps share, and the repository's configs for the classifier and embedder families.
No server here; tests/test_image_models_served.py serves them for real."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fashionbox import contract
from fashionbox.client import ImageDetections, ImageLabel, InvalidInput
from fashionbox.client._base import TEXT_BATCH, text_batches
from fashionbox.contract.embedding import pack_embedding, unpack_embedding
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.repository import ImageBranch, RepositorySettings, model_configs
from fashionbox.core.imaging import LetterboxInfo, whole_image_crop
from fashionbox.core.results import EmbeddingSettings, build_image_detections, top_labels
from fashionbox.core.serving import ImageLevelParameters, Parameters
from fashionbox.v1 import detections_pb2

LABELS = default_label_map()


def _unit_rows(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _message(**kwargs: object) -> detections_pb2.ImageDetections:
    n = 2
    return build_image_detections(
        width=640, height=480, boxes=[[10, 20, 100, 200], [200, 40, 300, 400]], scores=[0.9, 0.6],
        categories=[0, 1], attribute_scores=np.full((n, LABELS.num_attribute_labels), 0.1, np.float32),
        label_map=LABELS, model_version="v", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_vectors_and_labels_reach_the_client_as_sent(dtype: str) -> None:
    garments, image = _unit_rows(2, 48), _unit_rows(1, 48, seed=1)[0]
    labels = top_labels(np.array([0.1, 0.7, 0.2], np.float32), ["tops", "bottoms", "footwear"], 2)
    message = _message(labels=labels, labels_model="m verticals", embeddings=garments, image_embedding=image,
                       embedding=EmbeddingSettings("m@1", dtype))
    result = ImageDetections.from_proto(detections_pb2.ImageDetections.FromString(message.SerializeToString()))

    tolerance = 1e-3 if dtype == "float16" else 0.0
    assert result.embedding is not None and result.embedding.dtype == np.float32
    np.testing.assert_allclose(result.embedding, image, atol=tolerance)
    for detection, row in zip(result, garments, strict=True):
        assert detection.embedding is not None and detection.packed_embedding is not None
        np.testing.assert_allclose(detection.embedding, row, atol=tolerance)
        assert detection.packed_embedding.model == "m@1" and detection.packed_embedding.dimension == 48
        assert float(detection.embedding @ row) > 0.9999  # packing changes a cosine by far less than 1e-4
    assert result.labels == (ImageLabel("bottoms", pytest.approx(0.7), 1),
                             ImageLabel("footwear", pytest.approx(0.2), 2))
    assert result.label == "bottoms" and result.labels_model == "m verticals"
    assert result.above(0.8).embedding is not None and result.above(0.8).labels == result.labels  # filters keep them
    as_dict = result.to_dict()
    assert as_dict["labels"][0]["label"] == "bottoms" and len(as_dict["detections"][0]["embedding"]) == 48
    json.dumps(as_dict)  # plain JSON types


def test_a_result_without_labels_or_vectors_decodes_with_the_fields_empty() -> None:
    result = ImageDetections.from_proto(_message())
    assert result.labels == () and result.label is None and result.embedding is None and result.labels_model == ""
    assert all(d.embedding is None for d in result)
    assert "labels" not in result.to_dict() and "embedding" not in result.to_dict()["detections"][0]


def test_top_labels_are_best_first_and_check_the_names() -> None:
    assert top_labels([0.2, 0.5, 0.2, 0.1], ["a", "b", "c", "d"], 3) == [
        (1, "b", 0.5), (0, "a", pytest.approx(0.2)), (2, "c", pytest.approx(0.2))]  # ties: lower index first
    assert len(top_labels([0.5, 0.5], ["a", "b"], 10)) == 2
    with pytest.raises(ValueError, match="3 label scores for 2 label names"):
        top_labels([0.1, 0.2, 0.7], ["a", "b"], 1)


def test_embeddings_need_their_model_and_one_row_per_detection() -> None:
    with pytest.raises(ValueError, match="need `embedding`"):
        _message(embeddings=_unit_rows(2, 8))
    with pytest.raises(ValueError, match=r"shape \[2, D\]"):
        _message(embeddings=_unit_rows(3, 8), embedding=EmbeddingSettings("m"))


def test_packing_refuses_what_does_not_fit() -> None:
    vector = _unit_rows(1, 16)[0]
    assert unpack_embedding(pack_embedding(vector, "float32"), 16, "float32").tolist() == vector.tolist()
    with pytest.raises(ValueError, match="is not 15 values of float16"):
        unpack_embedding(pack_embedding(vector, "float16"), 15, "float16")
    with pytest.raises(ValueError, match="choose one of"):
        pack_embedding(vector, "int8")
    with pytest.raises(ValueError, match="finite"):
        pack_embedding([np.nan, 1.0])
    with pytest.raises(ValueError, match="choose one of"):
        EmbeddingSettings("m", "bfloat16")


def test_whole_image_crop_covers_the_photo_not_the_padding() -> None:
    info = LetterboxInfo(width=640, height=320, scale=0.5, pad_x=0.0, pad_y=80.0)
    pixels = np.full((320, 320, 3), 114, np.uint8)
    pixels[80:240] = 200  # the photo
    crop = whole_image_crop(pixels, info, 32)
    assert crop.shape == (1, 32, 32, 3) and int(crop[0, 1:-1].min()) == 200  # no grey band from the padding
    assert int(crop.min()) > 180  # the filter's support reaches just past the edge rows, no more
    np.testing.assert_allclose(info.content_box, [0, 80, 320, 240])


def test_image_level_parameters_round_trip_and_refuse_nonsense() -> None:
    params = ImageLevelParameters(labels_from="attributes", label_names='["tops", "bottoms"]', labels_model="m",
                                  embeddings_from="embedder", embedding_model="hf:x")
    again = ImageLevelParameters.optional(Parameters(params.to_parameters()))
    assert again == params and again.image_label_names == ("tops", "bottoms") and again.whole_image_crop
    assert ImageLevelParameters.optional(Parameters({})) == ImageLevelParameters()  # nothing served
    with pytest.raises(ValueError, match="labels_from must be one of"):
        ImageLevelParameters(labels_from="vibes")
    with pytest.raises(ValueError, match="at least two label_names"):
        ImageLevelParameters(labels_from="classifier", label_names='["one"]')


CLASSIFIER = ImageBranch(name="hf:tiny-vit", view='{"x": 1}', height=32, width=32, size=3,
                         labels=("fall-winter", "spring-summer", "all-season"))
EMBEDDER = ImageBranch(name="hf:tiny-clip", view='{"y": 2}', height=48, width=48, size=64, text=True)


def _io(config: object) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    return ({i.name: list(i.dims) for i in config.input},  # type: ignore[attr-defined]
            {o.name: list(o.dims) for o in config.output})  # type: ignore[attr-defined]


def test_the_families_get_their_models_views_and_wiring() -> None:
    configs = model_configs(RepositorySettings(classifier=CLASSIFIER, embedder=EMBEDDER), LABELS)
    assert {contract.CLASSIFIER_MODEL, contract.EMBEDDER_MODEL, contract.TEXT_EMBEDDER_MODEL} <= set(configs)
    _, pre_out = _io(configs[contract.PREPROCESS_MODEL])
    assert pre_out[contract.CLASSIFIER_VIEW.name] == [32, 32, 3] and pre_out[contract.EMBEDDER_VIEW.name] == [48, 48, 3]
    assert configs[contract.PREPROCESS_MODEL].parameters["classifier_view"].string_value == '{"x": 1}'
    post_in, _ = _io(configs[contract.POSTPROCESS_MODEL])
    assert {contract.CLASSIFIER_VIEW.name, contract.EMBEDDER_VIEW.name} <= set(post_in)
    post = {k: v.string_value for k, v in configs[contract.POSTPROCESS_MODEL].parameters.items()}
    assert post["labels_from"] == "classifier" and post["embeddings_from"] == "embedder"
    assert json.loads(post["label_names"]) == list(CLASSIFIER.labels) and post["embedder_view"] == '{"y": 2}'
    assert _io(configs[contract.CLASSIFIER_MODEL]) == (
        {contract.VIEWS.name: [32, 32, 3], contract.TOKEN.name: [32]}, {contract.LABEL_PROBS.name: [3]})
    assert _io(configs[contract.EMBEDDER_MODEL])[1] == {contract.EMBEDDINGS.name: [64]}
    assert _io(configs[contract.TEXT_EMBEDDER_MODEL]) == (
        {contract.TEXT.name: [1]}, {contract.TEXT_EMBEDDINGS.name: [64]})
    text = configs[contract.TEXT_EMBEDDER_MODEL].dynamic_batching.default_queue_policy
    assert text.max_queue_size > 0  # a public entry: bounded like preprocess
    ensemble = configs[contract.ENSEMBLE_MODEL]
    steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
    assert steps == [contract.PREPROCESS_MODEL, contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL]  # BLS, not steps
    wired = {key for step in ensemble.ensemble_scheduling.step for key in step.input_map}
    assert {contract.CLASSIFIER_VIEW.name, contract.EMBEDDER_VIEW.name} <= wired


def test_default_heads_win_only_without_a_family_and_nothing_changes_without_them() -> None:
    plain = model_configs(RepositorySettings(), LABELS)
    assert "labels_from" not in plain[contract.POSTPROCESS_MODEL].parameters
    assert "classifier_view" not in plain[contract.PREPROCESS_MODEL].parameters
    heads = RepositorySettings(crop_embedding_size=32, vertical_labels=("tops", "bottoms"), model_name="fb",
                               model_version="7")
    configs = model_configs(heads, LABELS)
    _, attr_out = _io(configs[contract.ATTRIBUTES_MODEL])
    assert attr_out[contract.CROP_EMBEDDINGS.name] == [32] and attr_out[contract.VERTICAL_PROBS.name] == [2]
    post = {k: v.string_value for k, v in configs[contract.POSTPROCESS_MODEL].parameters.items()}
    assert (post["labels_from"], post["embeddings_from"], post["embedding_model"]) == ("attributes", "attributes",
                                                                                      "fb@7")
    both = RepositorySettings(crop_embedding_size=32, vertical_labels=("tops", "bottoms"), classifier=CLASSIFIER,
                              embedder=EMBEDDER)
    assert (both.labels_from, both.embeddings_from) == ("classifier", "embedder")


def test_a_branch_that_cannot_be_served_is_refused() -> None:
    with pytest.raises(ValueError, match="must be square"):
        RepositorySettings(embedder=ImageBranch(name="e", view="{}", height=32, width=48, size=8))
    with pytest.raises(ValueError, match="2 label names for 3"):
        ImageBranch(name="c", view="{}", height=8, width=8, size=3, labels=("a", "b"))


def test_embed_text_takes_a_list_of_real_texts_in_batches() -> None:
    assert [len(b) for b in text_batches([f"t{k}" for k in range(TEXT_BATCH + 3)])] == [TEXT_BATCH, 3]
    with pytest.raises(InvalidInput, match="not one string"):
        text_batches("red dress")
    with pytest.raises(InvalidInput, match="text 1 must be a non-empty string"):
        text_batches(["red dress", "  "])
