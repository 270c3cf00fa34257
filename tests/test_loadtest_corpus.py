"""The corpus: size mixes, generated scenes, image folders, and the requests built from them."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from PIL import Image

from fashionbox.loadtest.corpus import _allocate, folder_corpus, generated_corpus, parse_size_mix
from fashionbox.loadtest.errors import LoadTestConfigError
from fashionbox.loadtest.runner import Target, metrics_url_for
from fashionbox.loadtest.senders import RequestSpec, serialise_request, status_name


def test_size_mix_parses_with_default_weights() -> None:
    mix = parse_size_mix("640x480:1, 1280x960:2,100X50")
    assert [(s.width, s.height, s.weight) for s in mix] == [(640, 480, 1.0), (1280, 960, 2.0), (100, 50, 1.0)]
    for bad in ("", "640", "640x480:0", "axb"):
        with pytest.raises(LoadTestConfigError):
            parse_size_mix(bad)


def test_sizes_are_allocated_in_proportion_to_their_weights() -> None:
    sizes = _allocate(8, parse_size_mix("640x480:1,1280x960:2,2048x1536:1"))
    assert sorted(sizes).count((1280, 960)) == 4 and sizes.count((640, 480)) == 2 and len(sizes) == 8
    assert len(_allocate(5, parse_size_mix("20x20:1,30x30:1,40x40:1"))) == 5


def test_generated_scenes_are_jpegs_of_the_mixed_sizes_and_repeat_with_the_seed() -> None:
    corpus = generated_corpus(3, parse_size_mix("160x120:2,96x96:1"), seed=4)
    sizes = sorted(Image.open(io.BytesIO(data)).size for data in corpus.images)
    assert sizes == [(96, 96), (160, 120), (160, 120)]
    assert corpus.images == generated_corpus(3, parse_size_mix("160x120:2,96x96:1"), seed=4).images
    assert corpus.describe()["images"] == 3


def test_a_folder_corpus_reads_image_files_only(tmp_path: Path) -> None:
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    corpus = folder_corpus(tmp_path)
    assert sorted(corpus.names) == ["a.png", "b.jpg"]
    with pytest.raises(LoadTestConfigError):
        folder_corpus(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadTestConfigError):
        folder_corpus(tmp_path / "empty")


def test_a_serialised_request_carries_one_length_prefixed_bytes_element() -> None:
    from tritonclient.grpc import service_pb2

    wire = serialise_request(RequestSpec.for_ensemble(), b"jpeg-bytes")
    request = service_pb2.ModelInferRequest.FromString(wire)
    assert request.model_name == "fashion"
    assert request.inputs[0].name == "IMAGE" and request.inputs[0].datatype == "BYTES"
    assert list(request.inputs[0].shape) == [1, 1]
    assert [o.name for o in request.outputs] == ["DETECTIONS"]
    assert request.raw_input_contents[0] == struct.pack("<I", 10) + b"jpeg-bytes"


def test_status_names_are_normalised() -> None:
    import grpc

    assert status_name(grpc.StatusCode.UNAVAILABLE) == "UNAVAILABLE"
    assert status_name("StatusCode.INVALID_ARGUMENT") == "INVALID_ARGUMENT"
    assert status_name(None) == "UNKNOWN"


def test_targets_parse_with_a_metrics_endpoint() -> None:
    assert Target.parse("cpu=127.0.0.1:8001") == Target("cpu", "127.0.0.1:8001", "http://127.0.0.1:8002/metrics")
    assert Target.parse("gpu=10.0.0.7:9001,metrics=9100").metrics_url == "http://10.0.0.7:9100/metrics"
    assert Target.parse("x=h:1,metrics=none").metrics_url is None
    assert metrics_url_for("h:1", "other:5") == "http://other:5/metrics"
    for bad in ("cpu", "cpu=nohost", "=h:1", "cpu=h:1,colour=red", "cpu=h:99999"):
        with pytest.raises(LoadTestConfigError):
            Target.parse(bad)
