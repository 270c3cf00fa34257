"""``fashionbox convert --runtime auto`` on target cpu: the faster runtime measured on this host.

One conversion through the command line: ONNX Runtime fp32, OpenVINO fp32, the torch runtime (the
default detector takes the square letterbox) and (on a CPU with AMX or AVX512-BF16, where
``--precision bf16`` is accepted) OpenVINO bf16 are checked and timed, and
the choice, the timings and the CPU they were measured on land in ``manifest.json`` and the
choice in the ``detector`` and ``attributes`` configs. Which runtime wins depends on the host and
its load, so the test checks that the recorded choice is the fastest recorded (ONNX Runtime where
none beats it by the margin), not which it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashionbox import contract
from fashionbox.commands.cli import main as fashionbox_main
from fashionbox.converter import FAMILIES, _torch_not_candidate
from fashionbox.converter.cpu_runtimes import pick
from fashionbox.converter.repository import RepositorySettings
from fashionbox.core.openvino_runtime import host_cpu

BF16_HERE = host_cpu().has_bf16


def test_auto_conversion_writes_the_measured_runtime_into_configs_and_manifest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    precision = "bf16" if BF16_HERE else "fp32"
    out = tmp_path / "repository"
    # Product shots of three garments: the probe's attribute batch is a photo's garments (default 8).
    assert fashionbox_main(["convert", "--out", str(out), "--runtime", "auto", "--precision", precision,
                            "--auto-garments", "3"]) == 0
    manifest = json.loads((out / contract.MANIFEST_FILE).read_text())
    record = manifest["cpu_runtime"]
    timings = record["timings_ms"]
    assert record["garments_per_photo"] == 3 and "attributes batch 3" in record["measured"]
    assert all(set(parts) == {"detector_b1", "attributes_b3", "total"} for parts in timings.values())

    expected = {"onnxruntime/fp32", "openvino/fp32", "torch/fp32"} | ({"openvino/bf16"} if BF16_HERE else set())
    assert set(timings) == expected and record["excluded"] == {}  # the default detector takes the square letterbox
    assert record["chosen"] == pick(timings) and record["fastest"] == min(timings, key=lambda n: timings[n]["total"])
    runtime, chosen_precision = record["chosen"].split("/")
    assert manifest["runtime"] == runtime
    assert manifest["precision"] == (chosen_precision if runtime in ("openvino", "torch") else None)
    assert record["cpu"] == host_cpu().as_dict() and record["cpu"]["bf16"] == BF16_HERE
    # the torch runners were held to the converter's tolerances, as --runtime torch's are
    assert manifest["comparison"]["torch detector"]["detections_count_mismatch"] == 0
    assert manifest["comparison"]["torch attributes"]["probs"] <= manifest["comparison"]["tolerance"]["probs"]
    for model in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
        config = (out / model / "config.pbtxt").read_text()
        assert f'string_value: "{runtime}"' in config or runtime == "onnxruntime", model
        assert ('string_value: "openvino"' in config) == (runtime == "openvino"), model
        assert ((out / model / "1" / "model.safetensors").is_file()) == (runtime == "torch"), model
    printed = capsys.readouterr().out
    assert f"runtime: {record['chosen']} (measured: onnxruntime/fp32 " in printed
    assert (f"{record['fastest']} measured faster by less than 10%: onnxruntime/fp32 kept" in printed) == \
        (record["fastest"] != record["chosen"])


def test_what_auto_cannot_weigh_is_recorded_with_why() -> None:
    """The torch runtime serves the square letterbox and the steps layout, and the families with a torch runner."""
    default, ultralytics = FAMILIES["fashionbox"](), FAMILIES["ultralytics"]()
    assert _torch_not_candidate(default, RepositorySettings()) == {}
    assert "rect one here (--letterbox square lets auto weigh it)" in _torch_not_candidate(
        default, RepositorySettings(letterbox_stride=32))["torch/fp32"]
    assert _torch_not_candidate(default, RepositorySettings(layout="fused")) == {
        "torch/fp32": "the fused layout runs the ONNX graphs only"}
    assert _torch_not_candidate(ultralytics, RepositorySettings()) == {
        "torch/fp32": "no torch runner for ultralytics detectors"}


def test_auto_garments_is_a_photos_garments_and_sets_the_embedders_batch(tmp_path: Path) -> None:
    from fashionbox.converter import ConvertError, ConvertOptions
    from fashionbox.converter.cpu_runtimes import PROBE_GARMENTS, BranchProbe

    def probe(kind: str, **garments: int) -> BranchProbe:
        return BranchProbe(kind, tmp_path / "model.onnx", "out", 32, 32, 32, **garments)

    assert probe("embedder").batch == PROBE_GARMENTS + 1 == 9  # the photo's garments and the photo, one call
    assert probe("embedder", garments=1).batch == 2 and probe("embedder", garments=1).images.shape[0] == 2
    assert probe("classifier", garments=5).batch == 1  # the photo alone
    for refused in (0, -1, 257, True, 2.5):
        with pytest.raises(ConvertError, match=r"auto_garments must be an integer in 1\.\.256"):
            ConvertOptions(out=tmp_path, auto_garments=refused)  # type: ignore[arg-type]

