"""The committed result schema modules are exactly what the pinned compiler makes of the .proto files."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from fashionbox.contract import protogen
from fashionbox.v1 import detections_pb2

needs_compiler = pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (the dev extra) compiles the schema"
)


@needs_compiler
def test_regenerating_reproduces_the_committed_modules_byte_for_byte() -> None:
    assert protogen.stale_files() == []


@needs_compiler
def test_the_check_command_passes_when_the_modules_are_up_to_date() -> None:
    assert protogen.main(["--check"]) == 0


@needs_compiler
def test_the_check_notices_a_hand_edited_module(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(protogen.PROTO_ROOT / "fashionbox" / "v1", copy / "fashionbox" / "v1")
    edited = copy / "fashionbox" / "v1" / "detections_pb2.pyi"
    edited.write_text(edited.read_text() + "\n# edited by hand\n")

    assert protogen.stale_files(proto_root=copy) == [edited]


@needs_compiler
def test_generate_writes_both_the_module_and_its_stub(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)

    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "fashionbox/v1/detections_pb2.py",
        "fashionbox/v1/detections_pb2.pyi",
    ]


def test_the_generated_module_imports_as_fashionbox_v1() -> None:
    assert detections_pb2.DESCRIPTOR.package == "fashionbox.v1"
    assert detections_pb2.DESCRIPTOR.name == "fashionbox/v1/detections.proto"


def _field_numbers(message: type) -> dict[str, int]:
    return {field.name: field.number for field in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_field_numbers_never_change_because_clients_in_other_languages_depend_on_them() -> None:
    assert _field_numbers(detections_pb2.BoundingBox) == {"x1": 1, "y1": 2, "x2": 3, "y2": 4}
    assert _field_numbers(detections_pb2.AttributePrediction) == {
        "group": 1,
        "label": 2,
        "score": 3,
        "fashionpedia_id": 4,
    }
    assert _field_numbers(detections_pb2.Detection) == {
        "box": 1,
        "category": 2,
        "category_index": 3,
        "fashionpedia_id": 4,
        "score": 5,
        "attributes": 6,
    }
    assert _field_numbers(detections_pb2.ImageDetections) == {
        "width": 1,
        "height": 2,
        "detections": 3,
        "model_name": 4,
        "model_version": 5,
        "label_map": 6,
    }
