"""``fashionbox convert --runtime auto`` on target cpu: the faster runtime measured on this host.

One conversion through the command line: ONNX Runtime fp32, OpenVINO fp32 and (on a CPU with AMX
or AVX512-BF16, where ``--precision bf16`` is accepted) OpenVINO bf16 are checked and timed, and
the choice, the timings and the CPU they were measured on land in ``manifest.json`` and the
choice in the ``detector`` and ``attributes`` configs. Which runtime wins depends on the host and
its load, so the test checks that the recorded choice is the fastest recorded, not which it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashionbox import contract
from fashionbox.commands.cli import main as fashionbox_main
from fashionbox.core.openvino_runtime import host_cpu

BF16_HERE = host_cpu().has_bf16


def test_auto_conversion_writes_the_measured_runtime_into_configs_and_manifest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    precision = "bf16" if BF16_HERE else "fp32"
    out = tmp_path / "repository"
    assert fashionbox_main(["convert", "--out", str(out), "--runtime", "auto", "--precision", precision]) == 0
    manifest = json.loads((out / contract.MANIFEST_FILE).read_text())
    record = manifest["cpu_runtime"]
    timings = record["timings_ms"]

    expected = {"onnxruntime/fp32", "openvino/fp32"} | ({"openvino/bf16"} if BF16_HERE else set())
    assert set(timings) == expected and record["excluded"] == {}
    assert record["chosen"] == min(timings, key=lambda name: timings[name]["total"])
    runtime, chosen_precision = record["chosen"].split("/")
    assert manifest["runtime"] == runtime
    assert manifest["precision"] == (chosen_precision if runtime == "openvino" else None)
    assert record["cpu"] == host_cpu().as_dict() and record["cpu"]["bf16"] == BF16_HERE
    for model in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
        config = (out / model / "config.pbtxt").read_text()
        assert ('string_value: "openvino"' in config) == (runtime == "openvino"), model
        assert (f'string_value: "{chosen_precision}"' in config) == (runtime == "openvino"), model
    assert f"runtime: {record['chosen']} (measured: onnxruntime/fp32 " in capsys.readouterr().out
