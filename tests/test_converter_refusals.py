"""Every refusal the converter promises, triggered: taking a refusal out turns one of these red.

The PyTorch-vs-ONNX tolerance is triggered two honest ways: the tolerance option set tighter than
float32 arithmetic can agree on, and a model family (the :data:`FAMILIES` table is the seam new
families plug into) whose export is a different network than the one it compares against. Both
go through :func:`convert` itself, so the check in ``convert`` is what refuses, not a report.

Refusals tested elsewhere: a runtime the target cannot run and the torch runtime for a YOLOS
detector (test_torch_runtime.py), ``hf:`` folders of other model types, without weights, or
given as attribute heads (test_yolos.py), DETR-style checkpoints without id2label, with a class
head that does not match it, truncated, without a processor config, and ``hf:ORG/NAME`` offline
with an empty cache (test_detr_families.py), ``--engines now`` without TensorRT (test_tensorrt.py),
the export steps' own refusals and reports (test_export.py).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from fashionbox.contract.labels import LabelMap
from fashionbox.converter import FAMILIES, ConvertError, ConvertOptions, Family, convert, resolve_spec
from fashionbox.converter.export import ExportError, compare_detector, export_detector_onnx
from fashionbox.converter.yolos import (
    YolosError,
    YolosPreprocessing,
    checkpoint_weights,
    hf_model_type,
    yolos_input_size,
)
from fashionbox.models import FashionDetector, default_weights, load_detector, save_checkpoint

torch.set_num_threads(1)


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists(), "a refused conversion must write nothing"
    assert list(out.parent.iterdir()) == [], "nor leave anything beside it"


# -- options ------------------------------------------------------------------------------------------


def test_an_unknown_target_is_refused_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"^unknown target 'tpu': choose cpu or gpu$"):
        ConvertOptions(out=tmp_path / "repo", target="tpu")  # type: ignore[arg-type]


@pytest.mark.parametrize("opset", [11, 16])
def test_an_opset_below_17_is_refused_when_the_options_are_made(tmp_path: Path, opset: int) -> None:
    with pytest.raises(ConvertError, match=rf"^opset {opset} is too old: FashionBox exports opset 17 or newer$"):
        ConvertOptions(out=tmp_path / "repo", opset=opset)


def test_opset_17_is_accepted(tmp_path: Path) -> None:
    assert ConvertOptions(out=tmp_path / "repo", opset=17).opset == 17


# -- model specs --------------------------------------------------------------------------------------


def test_an_unknown_family_prefix_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConvertError, match=r"^unknown model family 'onnx' in 'onnx:model'; known: "
                                           r"\['conditional_detr', 'd_fine', 'dab_detr', 'deformable_detr', 'deimv2', "
                                           r"'detr', 'fashionbox', 'lw_detr', 'owlv2', 'owlvit', 'rf_detr', "
                                           r"'rf_detr_seg', 'rt_detr', 'rt_detr_v2', 'ultralytics', 'yolos'\]$"):
        resolve_spec("onnx:model", "detector")


@pytest.mark.parametrize("name", ["detector.pt", "detector.bin", "detector.ckpt"])
def test_a_checkpoint_that_is_not_safetensors_is_refused_even_when_it_exists(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ConvertError, match=r"expected 'default' or a \.safetensors checkpoint \(pickle files are "
                                           r"refused\)$"):
        resolve_spec(str(path), "detector")


def test_a_missing_safetensors_checkpoint_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.safetensors"
    with pytest.raises(ConvertError, match=rf"^checkpoint not found: {path}$"):
        resolve_spec(str(path), "attributes")


def test_a_safetensors_checkpoint_and_default_resolve() -> None:
    assert resolve_spec("default", "detector") == ("fashionbox", default_weights("detector"))
    shipped = default_weights("attributes")
    assert resolve_spec(str(shipped), "attributes") == ("fashionbox", shipped)


def test_an_hf_spec_that_is_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"is not a folder: expected a Hugging Face checkpoint folder$"):
        resolve_spec(f"hf:{tmp_path / 'nowhere'}", "detector")


def test_an_hf_folder_without_config_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConvertError, match=r"has no config\.json: not a Hugging Face checkpoint folder$"):
        resolve_spec(f"hf:{tmp_path}", "detector")


def test_an_hf_folder_whose_config_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text("{model_type: yolos", encoding="utf-8")
    with pytest.raises(ConvertError, match=r"^cannot read .*config\.json: "):
        resolve_spec(f"hf:{tmp_path}", "detector")


def test_hf_folder_helpers_raise_the_yolos_error_the_converter_translates(tmp_path: Path) -> None:
    with pytest.raises(YolosError, match="is not a folder"):
        checkpoint_weights(tmp_path / "nowhere")
    with pytest.raises(YolosError, match="cannot read"):
        hf_model_type(tmp_path)


@pytest.mark.parametrize(("shortest_edge", "expected"), [(16, 16), (63, 48), (64, 64)])
def test_the_yolos_input_size_is_the_shortest_edge_rounded_down_to_the_patch(shortest_edge: int,
                                                                             expected: int) -> None:
    preprocessing = YolosPreprocessing(1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), shortest_edge)
    assert yolos_input_size(preprocessing, patch_size=16) == expected


def test_a_yolos_shortest_edge_below_the_patch_size_is_refused() -> None:
    preprocessing = YolosPreprocessing(1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), shortest_edge=15)
    with pytest.raises(YolosError, match=r"^shortest_edge 15 is smaller than the patch size 16$"):
        yolos_input_size(preprocessing, patch_size=16)


# -- convert ------------------------------------------------------------------------------------------


def test_a_detector_whose_attribute_groups_differ_from_the_heads_is_refused(tmp_path: Path) -> None:
    detector, labels = load_detector(default_weights("detector"))
    dropped = labels.attribute_groups[-1].name
    relabelled = LabelMap(
        name="one group fewer",
        categories=tuple(dataclasses.replace(c, groups=tuple(g for g in c.groups if g != dropped))
                         for c in labels.categories),
        attribute_groups=labels.attribute_groups[:-1])
    checkpoint = tmp_path / "checkpoints" / "detector.safetensors"
    save_checkpoint(checkpoint, detector, kind="detector", config_json=detector.config.to_json(),
                    label_map=relabelled)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "repo"

    with pytest.raises(ConvertError, match=r"^the detector's and the attribute heads' label maps disagree on "
                                           r"attribute groups$"):
        convert(ConvertOptions(out=out, detector=str(checkpoint), compare_samples=1))
    _assert_nothing_written(out)


def test_a_tolerance_tighter_than_float32_agreement_refuses_the_conversion(tmp_path: Path) -> None:
    """The shipped detector's boxes agree to ~1e-4 px (hundreds of px, summed in other orders); 1e-9 px is below it."""
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "repo"
    tolerance = {**ConvertOptions(out=out).tolerance, "boxes": 1e-9}

    with pytest.raises(ExportError, match=r"^detector: ONNX Runtime differs from PyTorch beyond tolerance: "
                                          r"\{'boxes': [0-9.e-]+\} \(tolerance"):
        convert(ConvertOptions(out=out, compare_samples=1, tolerance=tolerance))
    _assert_nothing_written(out)


def _perturbed_export_family() -> Family:
    """The FashionBox family, but the graph it exports is of a copy whose box head was nudged after loading."""

    def export_nudged(detector: FashionDetector, path: Path, **kwargs: Any) -> Path:
        nudged = copy.deepcopy(detector)
        with torch.no_grad():
            for head in nudged.heads:
                head.reg.bias.add_(0.5)
        return export_detector_onnx(nudged, path, **kwargs)

    return Family("fashionbox", load_detector, export_nudged, compare_detector, torch_runtime=True)


def test_an_export_that_disagrees_with_pytorch_beyond_the_default_tolerance_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FAMILIES, "fashionbox", _perturbed_export_family)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "repo"

    with pytest.raises(ExportError, match=r"^detector: ONNX Runtime differs from PyTorch beyond tolerance: "
                                          r"\{'boxes': ") as refused:
        convert(ConvertOptions(out=out, compare_samples=1))
    assert "'scores'" not in str(refused.value).split("(tolerance")[0], "only the box head was nudged"
    _assert_nothing_written(out)


def test_the_same_conversion_with_the_exported_network_unchanged_passes(tmp_path: Path) -> None:
    """The control for the two refusals above: the default tolerance accepts a faithful export."""
    result = convert(ConvertOptions(out=tmp_path / "repo", compare_samples=1))

    defaults = ConvertOptions(out=tmp_path).tolerance
    for model, errors in result.reports.items():
        for output, error in errors.items():
            assert error <= defaults[output], (model, output)
    assert result.reports["detector"]["boxes"] > 1e-9, "the tight-tolerance test relies on a nonzero box error"
    assert result.manifest["comparison"]["tolerance"] == defaults
