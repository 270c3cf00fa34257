"""The OpenVINO CPU runtime: parity with ONNX Runtime, bf16 refusals, ``auto``'s choice, and serving.

OpenVINO reads the converter's ONNX graphs as they are (NonMaxSuppression included). fp32 must
answer as ONNX Runtime does within the converter's tolerances; bf16 runs only where the CPU has AMX
or AVX512-BF16, and is refused elsewhere: the refusal is tested by injecting a CPU without those
flags, since this suite also runs on hosts that have them. A repository converted with
``--runtime openvino`` is served by a real embedded Triton over gRPC and answers as the ONNX
Runtime pipeline does. bf16's quality (box mAP, attribute accuracy) is in test_openvino_quality.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from fashionbox import contract
from fashionbox.client import FashionClient
from fashionbox.commands.cli import main as fashionbox_main
from fashionbox.commands.evaluation import (
    compare_fidelity,
    heldout_samples,
    predictions_from_detections,
    predictions_from_result,
)
from fashionbox.contract.labels import default_label_map
from fashionbox.converter import ConvertError, ConvertOptions, _comparison_inputs, convert, resolve_spec
from fashionbox.converter.cpu_runtimes import (
    BF16_TOLERANCE,
    MARGIN,
    MIN_TIMING_ROUNDS,
    TorchCandidate,
    check_openvino,
    choose_cpu_runtime,
    compare_runners,
    pick,
)
from fashionbox.converter.export import ComparisonReport, compare_torch_runners
from fashionbox.converter.repository import RepositorySettings
from fashionbox.core import openvino_runtime
from fashionbox.core.openvino_runtime import (
    CACHE_ENV,
    CpuInfo,
    OpenVinoAttributes,
    OpenVinoDetector,
    OpenVinoError,
    OpenVinoSession,
    cache_dir,
    check_precision,
    host_cpu,
)
from fashionbox.core.postprocessing import DetectorOutput
from fashionbox.core.serving import (
    ModelArgs,
    OnnxAttributes,
    OnnxDetector,
    OrtSettings,
    RuntimeSettings,
    create_ort_session,
)
from fashionbox.model_repository.runners import load_attributes_runner, load_detector_runner
from fashionbox.models.pipeline import InProcessPipeline
from fashionbox.models.torch_runtime import TorchAttributes, TorchDetector
from fashionbox.server.model_config import backend_args

Batches = tuple[list[npt.NDArray[np.uint8]], list[npt.NDArray[np.uint8]]]
LABELS = default_label_map()
TOLERANCE = ConvertOptions(out=Path("unused")).tolerance
NO_BF16 = CpuInfo("AMD EPYC 7R13 Processor", frozenset({"avx2", "avx512f", "avx512_vnni", "fma"}))
AMX = CpuInfo("Intel(R) Xeon(R) Platinum 8488C", frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))
BF16_HERE = host_cpu().has_bf16


@pytest.fixture(scope="module")
def openvino_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default models converted with ``--runtime openvino`` (fp32)."""
    out = tmp_path_factory.mktemp("openvino") / "repository"
    return convert(ConvertOptions(out=out, runtime="openvino", compare_samples=4)).repository


@pytest.fixture(scope="module")
def batches() -> Batches:
    """The converter's own comparison inputs: random pixels plus generated scenes, and their crops."""
    return _comparison_inputs(320, 96, 8, LABELS)


def _graphs(repository: Path) -> tuple[Path, Path]:
    return (repository / contract.DETECTOR_MODEL / "1" / "model.onnx",
            repository / contract.ATTRIBUTES_MODEL / "1" / "model.onnx")


# -- the host's CPU and the bf16 refusal ------------------------------------------------------------------


def test_cpu_flags_are_read_from_proc_cpuinfo() -> None:
    text = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f amx_bf16 "
            "amx_tile avx512_bf16\n\nprocessor\t: 1\nmodel name\t: ignored\nflags\t\t: fpu\n")
    cpu = CpuInfo.parse_cpuinfo(text)

    assert cpu.model == "Intel(R) Xeon(R) Processor"
    assert cpu.bf16_units == ("amx_bf16", "avx512_bf16")
    assert cpu.as_dict()["isa_flags"] == ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f"]
    assert not CpuInfo.parse_cpuinfo("flags : avx2 avx512f\n").has_bf16


def test_bf16_is_refused_on_a_cpu_without_amx_or_avx512_bf16_and_allowed_with_either() -> None:
    with pytest.raises(OpenVinoError, match=r"bf16 needs a CPU with AMX or AVX512-BF16 .*AMD EPYC 7R13"):
        check_precision("bf16", NO_BF16)
    check_precision("bf16", AMX)
    check_precision("bf16", CpuInfo("Xeon", frozenset({"avx512_bf16"})))
    check_precision("fp32", NO_BF16)
    with pytest.raises(OpenVinoError, match="precision must be one of"):
        check_precision("fp16", AMX)


def test_a_bf16_runner_fails_to_load_on_a_serving_host_without_bf16(openvino_repository: Path) -> None:
    detector_onnx, attributes_onnx = _graphs(openvino_repository)
    with pytest.raises(OpenVinoError, match="bf16 needs a CPU with AMX or AVX512-BF16"):
        OpenVinoDetector(detector_onnx, OrtSettings(), max_detections=10, precision="bf16", cpu=NO_BF16)
    with pytest.raises(OpenVinoError, match="bf16 needs a CPU with AMX or AVX512-BF16"):
        OpenVinoAttributes(attributes_onnx, OrtSettings(), num_attribute_labels=LABELS.num_attribute_labels,
                           precision="bf16", cpu=NO_BF16)


def test_the_model_files_refuse_a_bf16_config_on_a_host_without_bf16(openvino_repository: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_runtime, "host_cpu", lambda: NO_BF16)
    args = ModelArgs.from_backend_args(_backend_args(openvino_repository, contract.DETECTOR_MODEL, "bf16"))
    with pytest.raises(OpenVinoError, match="AMD EPYC 7R13"):
        load_detector_runner(args)


def test_the_converter_refuses_bf16_on_a_converting_host_without_it_before_exporting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_runtime, "host_cpu", lambda: NO_BF16)
    for runtime in ("openvino", "auto"):
        with pytest.raises(ConvertError, match="bf16 needs a CPU with AMX or AVX512-BF16"):
            convert(ConvertOptions(out=tmp_path / runtime, runtime=runtime, precision="bf16"))
        assert not (tmp_path / runtime).exists()


@pytest.mark.parametrize(("fields", "message"), [
    ({"runtime": "onnxruntime", "precision": "bf16"}, "bf16 runs in OpenVINO only"),
    ({"runtime": "torch", "precision": "bf16"}, "bf16 runs in OpenVINO only"),
    ({"target": "gpu", "runtime": "openvino"}, "runtime 'openvino' does not run on target gpu"),
    ({"target": "gpu", "precision": "bf16"}, "--precision applies to target cpu"),
    ({"precision": "fp16"}, "choose fp32 or bf16"),
])
def test_the_converter_refuses_precisions_its_runtime_cannot_run(fields: dict[str, Any], message: str,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=message):
        ConvertOptions(out=tmp_path, **fields)


def test_runtime_settings_pair_bf16_with_openvino_only() -> None:
    assert RuntimeSettings(runtime="openvino", precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="precision 'bf16' does not run in runtime 'onnxruntime'"):
        RuntimeSettings(precision="bf16")
    with pytest.raises(ValueError, match="precision 'fp16' does not run in runtime 'openvino'"):
        RuntimeSettings(runtime="openvino", precision="fp16")
    with pytest.raises(ValueError, match="runtime openvino runs on target cpu only"):
        RepositorySettings(target="gpu", runtime=RuntimeSettings(runtime="openvino"))


def test_the_cli_refuses_bf16_for_onnx_runtime_in_one_line(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    code = fashionbox_main(["convert", "--out", str(tmp_path / "r"), "--runtime", "onnxruntime",
                            "--precision", "bf16"])

    assert code == 2
    assert "error: ConvertError: bf16 runs in OpenVINO only" in capsys.readouterr().err


# -- parity with ONNX Runtime ----------------------------------------------------------------------------


def test_the_session_returns_every_output_of_the_graph_by_name_as_onnx_runtime_does(
        openvino_repository: Path, batches: Batches) -> None:
    for path, feeds in zip(_graphs(openvino_repository),
                           ({contract.ONNX_DETECTOR_INPUT: batches[0][1]},
                            {contract.ONNX_ATTRIBUTES_INPUT: batches[1][1]}), strict=True):
        ours = OpenVinoSession(path, OrtSettings())
        theirs = create_ort_session(path, OrtSettings())
        names = [o.name for o in theirs.get_outputs()]
        assert [o.name for o in ours.get_outputs()] == names
        assert [i.name for i in ours.get_inputs()] == [i.name for i in theirs.get_inputs()]
        for name, a, b in zip(names, ours.run(None, feeds), theirs.run(names, feeds), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, name
        (first,) = ours.run(names[:1], feeds)
        first[...] = 0  # a copy: the next call's outputs are not written into it, nor it into them
        assert np.any(ours.run(names[:1], feeds)[0])


_COMPILE_AND_COUNT_FORKS = """
import json, sys, threading, time
from pathlib import Path
forks = []
sys.addaudithook(lambda event, args: event == "os.fork" and forks.append(event))
from fashionbox.core.openvino_runtime import OpenVinoSession
from fashionbox.core.serving import OrtSettings
OpenVinoSession(Path(sys.argv[1]), OrtSettings())
time.sleep(1)  # openvino-telemetry sends from a worker thread, which forks, right after a compile
print(json.dumps({"forks": len(forks), "threads": len(threading.enumerate()),
                  "telemetry": repr(sys.modules.get("openvino_telemetry", "never imported"))}))
"""


def test_openvino_sends_no_telemetry_and_forks_nothing(openvino_repository: Path, tmp_path: Path) -> None:
    # openvino-telemetry forks a sender from a worker thread when a graph is compiled; in a python-backend
    # stub that child once hung on the import lock, and the stub's exit waited for it: the model never
    # finished unloading. A fresh interpreter, as a stub is; HOME where its consent folder would appear.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), CACHE_ENV: "off"}
    run = subprocess.run([sys.executable, "-c", _COMPILE_AND_COUNT_FORKS, str(_graphs(openvino_repository)[1])],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    # openvino found the telemetry package absent (None in sys.modules), started no thread, forked nothing
    assert json.loads(run.stdout.splitlines()[-1]) == {"forks": 0, "threads": 1, "telemetry": "None"}, run.stdout
    assert not (tmp_path / "intel").exists()  # its consent folder and client id


def test_openvino_fp32_answers_as_onnx_runtime_within_the_converter_tolerances(
        openvino_repository: Path, batches: Batches) -> None:
    detector_onnx, attributes_onnx = _graphs(openvino_repository)
    reports = compare_runners(
        "openvino fp32",
        OpenVinoDetector(detector_onnx, OrtSettings(), max_detections=50, precision="fp32"),
        OpenVinoAttributes(attributes_onnx, OrtSettings(), num_attribute_labels=LABELS.num_attribute_labels),
        OnnxDetector(detector_onnx, OrtSettings(), max_detections=50),
        OnnxAttributes(attributes_onnx, OrtSettings(), num_attribute_labels=LABELS.num_attribute_labels),
        *batches)
    detector, attributes = (report.max_abs_error for report in reports)

    assert detector["detections_count_mismatch"] == 0
    assert detector["boxes"] <= TOLERANCE["boxes"] and detector["scores"] <= TOLERANCE["scores"]
    assert attributes["probs"] <= TOLERANCE["probs"]
    assert reports[0].samples == sum(len(b) for b in batches[0])


def _cache_files(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_compiled_graphs_are_kept_in_the_model_cache_and_a_broken_cache_only_costs_a_compile(
        openvino_repository: Path, batches: Batches, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    detector_onnx, _ = _graphs(openvino_repository)
    pixels = batches[0][0]
    expected = OnnxDetector(detector_onnx, OrtSettings(), max_detections=50).detect(pixels)

    def answers() -> list[tuple[Any, Any]]:
        runner = OpenVinoDetector(detector_onnx, OrtSettings(), max_detections=50, precision="fp32")
        return [(row.boxes, row.scores) for row in runner.detect(pixels)]

    def assert_answers_as_onnx_runtime() -> None:
        for (boxes, scores), theirs in zip(answers(), expected, strict=True):
            np.testing.assert_allclose(boxes, theirs.boxes, atol=TOLERANCE["boxes"])
            np.testing.assert_allclose(scores, theirs.scores, atol=TOLERANCE["scores"])

    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    assert cache_dir() == cache
    assert_answers_as_onnx_runtime()
    written = _cache_files(cache)
    assert written, "the compiled graph was not written to the model cache"
    assert_answers_as_onnx_runtime()  # read back from the cache
    assert _cache_files(cache) == written, "a cached graph is read, not compiled and written again"

    for path in written:  # a truncated or foreign blob: compiled again, same answers
        path.write_bytes(b"not a compiled graph")
    assert_answers_as_onnx_runtime()

    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_dir() is None
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    monkeypatch.setenv(CACHE_ENV, str(blocked / "cache"))
    assert cache_dir() is None, "a cache folder that cannot be made turns the cache off"
    assert_answers_as_onnx_runtime()


class _Fixed:
    """A runner that answers what it is given: detections per image, attribute probabilities per crop."""

    def __init__(self, detections: list[DetectorOutput], probs: float = 0.5) -> None:
        self.detections, self.probs = detections, probs

    def detect(self, batch: npt.NDArray[np.uint8]) -> list[DetectorOutput]:
        return self.detections[:len(batch)]

    def classify(self, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return np.full((len(crops), 3), self.probs, np.float32)


def _detections(rows: list[tuple[float, int, float]]) -> DetectorOutput:
    """(score, class, x1) rows; boxes 10 px wide and tall at (x1, 0)."""
    return DetectorOutput(boxes=np.array([[x, 0, x + 10, 10] for _, _, x in rows], np.float32).reshape(-1, 4),
                          scores=np.array([s for s, _, _ in rows], np.float32),
                          classes=np.array([c for _, c, _ in rows], np.int32))


def _served_order_errors(ours: list[tuple[float, int, float]], theirs: list[tuple[float, int, float]],
                         max_detections: int | None = None) -> dict[str, float]:
    pixels = np.zeros((1, 8, 8, 3), np.uint8)
    detector, _ = compare_runners("x", _Fixed([_detections(ours)]), _Fixed([]), _Fixed([_detections(theirs)]),
                                  _Fixed([]), [pixels], [np.zeros((1, 4, 4, 3), np.uint8)],
                                  max_detections=max_detections)
    return detector.max_abs_error


def test_a_twin_answering_another_number_of_images_is_refused_naming_the_batch() -> None:
    """What OpenVINO's CPU plugin did with a graph it compiled wrongly (a batched MatMul over a constant, in a
    first LW-DETR rect graph): one answer short, no error; the comparison stops naming it."""
    pixels = np.zeros((2, 8, 16, 3), np.uint8)
    one = [_detections([(0.9, 0, 1.0)])]
    with pytest.raises(ConvertError, match=r"^openvino fp32: 1 answers \(the reference 2\) for a batch of 2 images "
                                           r"of 8x16: the runtime does not run this graph as ONNX Runtime does$"):
        compare_runners("openvino fp32", _Fixed(one), _Fixed([]), _Fixed(one * 2), _Fixed([]), [pixels],
                        [np.zeros((1, 4, 4, 3), np.uint8)])


def test_exact_parity_takes_tied_scores_in_either_order_and_still_sees_a_real_difference() -> None:
    ours = [(1.0, 2, 300.0), (1.0, 0, 10.0), (0.6, 1, 50.0)]  # two confident detections saturated at 1.0
    theirs = [(1.0, 0, 10.0), (1.0, 2, 300.0), (0.6, 1, 50.0)]
    errors = _served_order_errors(ours, theirs)
    assert errors == {"boxes": 0.0, "scores": 0.0, "detections_count_mismatch": 0.0}
    assert _served_order_errors(ours, [theirs[0], (1.0, 2, 302.0), theirs[2]])["boxes"] == 2.0  # a box moved
    assert _served_order_errors(ours, [theirs[0], (1.0, 2, 330.0), theirs[2]])["detections_count_mismatch"] == 1.0
    assert _served_order_errors(ours, [theirs[0], (1.0, 1, 300.0), theirs[2]])["detections_count_mismatch"] == 1.0
    assert _served_order_errors(ours, [theirs[0], theirs[1], (0.5, 1, 50.0)])["scores"] == pytest.approx(0.1)
    assert _served_order_errors(ours, theirs[:2])["detections_count_mismatch"] == 1.0


def test_a_full_list_may_keep_different_detections_of_those_tied_at_its_last_score() -> None:
    ours = [(0.9, 0, 0.0), (0.3, 1, 100.0), (0.3, 1, 200.0)]
    theirs = [(0.9, 0, 0.0), (0.3, 1, 100.0), (0.3, 1, 400.0)]  # another 0.3 box kept instead of ours
    assert _served_order_errors(ours, theirs)["detections_count_mismatch"] == 1.0  # not full: they differ
    assert _served_order_errors(ours, theirs, max_detections=3) == {
        "boxes": 0.0, "scores": 0.0, "detections_count_mismatch": 0.0}  # full: a tie at the cut
    above = [(0.9, 1, 0.0), *theirs[1:]]  # above the cut a detection without its twin still counts
    assert _served_order_errors(ours, above, max_detections=3)["detections_count_mismatch"] == 1.0
    assert _served_order_errors(ours, [(0.9, 0, 2.0), *theirs[1:]], max_detections=3)["boxes"] == 2.0


def test_degenerate_boxes_pair_with_their_twins() -> None:
    """A random model's boxes may have no height or width (IoU 0 even with themselves): the same box on
    both sides is still the same detection, a moved one still is not."""
    flat = DetectorOutput(boxes=np.array([[63.8, 64.0, 64.1, 64.0], [0.0, 64.0, 0.0, 64.0]], np.float32),
                          scores=np.array([0.9, 0.8], np.float32), classes=np.array([1, 1], np.int32))
    moved = DetectorOutput(boxes=flat.boxes + np.array([[0, 0, 0, 0], [0, 0.5, 0, 0.5]], np.float32),
                           scores=flat.scores, classes=flat.classes)
    pixels = np.zeros((1, 8, 8, 3), np.uint8)

    def errors(theirs: DetectorOutput) -> dict[str, float]:
        detector, _ = compare_runners("x", _Fixed([flat]), _Fixed([]), _Fixed([theirs]), _Fixed([]), [pixels],
                                      [np.zeros((1, 4, 4, 3), np.uint8)])
        return detector.max_abs_error

    assert errors(flat) == {"boxes": 0.0, "scores": 0.0, "detections_count_mismatch": 0.0}
    assert errors(moved)["detections_count_mismatch"] == 1.0


def test_a_segmenting_graphs_twins_are_held_to_the_same_mask_logits() -> None:
    """YOLO-seg and RF-DETR-Seg: the twins' mask logits (coefficients times prototypes) are compared, in whatever
    order the runtimes serve them, and fp32's limit refuses a runtime whose masks differ."""
    from dataclasses import replace

    from fashionbox.converter.cpu_runtimes import _over
    from fashionbox.converter.export import ComparisonReport

    protos = np.random.default_rng(0).normal(size=(3, 4, 4)).astype(np.float32)
    coeffs = np.array([[1.0, 0.0, 0.5], [0.0, 2.0, 0.0]], np.float32)
    plain = _detections([(0.9, 0, 0.0), (0.8, 1, 100.0)])
    ours = replace(plain, mask_coeffs=coeffs, protos=protos)
    swapped = DetectorOutput(boxes=ours.boxes[::-1].copy(), scores=np.array([0.9, 0.9], np.float32),
                             classes=ours.classes[::-1].copy(), mask_coeffs=coeffs[::-1].copy(), protos=protos)
    ours = replace(ours, scores=np.array([0.9, 0.9], np.float32))
    pixels = np.zeros((1, 8, 8, 3), np.uint8)

    def errors(theirs: DetectorOutput) -> dict[str, float]:
        detector, _ = compare_runners("x", _Fixed([ours]), _Fixed([]), _Fixed([theirs]), _Fixed([]), [pixels],
                                      [np.zeros((1, 4, 4, 3), np.uint8)])
        return detector.max_abs_error

    assert errors(swapped)["mask_logits"] == 0.0  # the same masks, served in the other order
    other = replace(swapped, mask_coeffs=swapped.mask_coeffs + np.float32(0.1))
    expected = float(np.abs(0.1 * protos.sum(axis=0)).max())
    assert errors(other)["mask_logits"] == pytest.approx(expected, rel=1e-5)
    report = ComparisonReport("openvino fp32 detector", errors(other), 1)
    assert _over([report], "fp32", {"mask_logits": 1e-2}) == {
        "openvino fp32 detector: mask_logits": report.max_abs_error["mask_logits"]}
    assert "mask_logits" not in errors(plain)  # boxes only: nothing to compare


@pytest.mark.skipif(not BF16_HERE, reason="this CPU has neither AMX nor AVX512-BF16 (the refusal is tested above)")
def test_openvino_bf16_stays_within_its_stated_tolerance_and_really_runs_bf16(
        openvino_repository: Path, batches: Batches) -> None:
    detector_onnx, attributes_onnx = _graphs(openvino_repository)
    reports = check_openvino(detector_onnx, attributes_onnx, *batches, precision="bf16", tolerance=TOLERANCE,
                             max_detections=50, num_attribute_labels=LABELS.num_attribute_labels)
    detector, attributes = (report.max_abs_error for report in reports)

    assert detector["matched_scores"] <= BF16_TOLERANCE["scores"]
    assert detector["unmatched_fraction"] <= BF16_TOLERANCE["unmatched_fraction"]
    assert attributes["probs"] <= BF16_TOLERANCE["probs"]
    # bf16 differs from fp32 (it is not fp32 under another name) ...
    assert detector["matched_scores"] > 1e-4 and attributes["probs"] > 1e-4
    # ... and the compiled model says so
    session = OpenVinoSession(detector_onnx, OrtSettings(), precision="bf16")
    assert session.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
    fp32 = OpenVinoSession(detector_onnx, OrtSettings(), precision="fp32")  # OpenVINO's default here is bf16
    assert fp32.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


# -- repositories ---------------------------------------------------------------------------------------------


def _backend_args(repository: Path, model: str, precision: str) -> dict[str, str]:
    """What Triton passes the model, from the repository's own config (its precision set to ``precision``)."""
    return backend_args(repository, model, parameters={"precision": precision})


def test_the_openvino_repository_keeps_the_onnx_graphs_and_names_its_runtime(openvino_repository: Path) -> None:
    manifest = json.loads((openvino_repository / contract.MANIFEST_FILE).read_text())
    assert manifest["runtime"] == "openvino" and manifest["precision"] == "fp32"
    assert manifest["cpu_runtime"]["cpu"]["model"] == host_cpu().model
    assert manifest["comparison"]["openvino fp32 detector"]["detections_count_mismatch"] == 0
    assert "openvino" in manifest["versions"]
    for model in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
        assert (openvino_repository / model / "1" / "model.onnx").is_file()
        config = (openvino_repository / model / "config.pbtxt").read_text()
        assert 'key: "runtime"\n  value {\n    string_value: "openvino"' in config
        assert 'key: "intra_op_threads"' in config  # OpenVINO's threads, as ONNX Runtime's


def test_the_model_files_load_the_openvino_runners_their_configs_name(openvino_repository: Path) -> None:
    detector, loaded = load_detector_runner(
        ModelArgs.from_backend_args(_backend_args(openvino_repository, contract.DETECTOR_MODEL, "fp32")))
    heads, _ = load_attributes_runner(
        ModelArgs.from_backend_args(_backend_args(openvino_repository, contract.ATTRIBUTES_MODEL, "fp32")))

    assert isinstance(detector, OpenVinoDetector) and isinstance(heads, OpenVinoAttributes)
    assert "in OpenVINO (fp32)" in loaded


def test_auto_times_both_runtimes_and_records_the_choice_with_the_cpu(
        openvino_repository: Path, batches: Batches) -> None:
    detector_onnx, attributes_onnx = _graphs(openvino_repository)
    choice = choose_cpu_runtime(detector_onnx, attributes_onnx, *batches, allow_bf16=BF16_HERE, tolerance=TOLERANCE,
                                max_detections=50, num_attribute_labels=LABELS.num_attribute_labels, rounds=3)
    timings = choice.record["timings_ms"]

    expected = {"onnxruntime/fp32", "openvino/fp32"} | ({"openvino/bf16"} if BF16_HERE else set())
    assert set(timings) == expected
    assert choice.record["chosen"] == pick(timings) and choice.record["fastest"] == min(
        timings, key=lambda name: timings[name]["total"])
    assert choice.record["chosen"] == f"{choice.runtime}/{choice.precision}"
    assert all(t["detector_b1"] > 0 and t["attributes_b8"] > 0 for t in timings.values())
    assert choice.record["cpu"]["model"] == host_cpu().model and "isa_flags" in choice.record["cpu"]


def test_auto_keeps_onnx_runtime_unless_another_runtime_beats_it_by_the_margin() -> None:
    def timed(**totals: float) -> dict[str, dict[str, float]]:
        return {name.replace("_", "/"): {"total": total} for name, total in totals.items()}

    assert MARGIN == 0.10
    assert pick(timed(onnxruntime_fp32=100.0, openvino_fp32=91.0, torch_fp32=95.0)) == "onnxruntime/fp32"
    assert pick(timed(onnxruntime_fp32=100.0, openvino_fp32=89.0, torch_fp32=95.0)) == "openvino/fp32"
    assert pick(timed(onnxruntime_fp32=100.0, openvino_bf16=60.0, openvino_fp32=89.0)) == "openvino/bf16"
    assert pick(timed(onnxruntime_fp32=80.0, openvino_fp32=100.0)) == "onnxruntime/fp32"
    assert pick(timed(onnxruntime_fp32=100.0, torch_fp32=91.0), margin=0.0) == "torch/fp32"


def test_auto_leaves_out_openvino_when_it_is_not_installed_and_says_why(
        openvino_repository: Path, batches: Batches,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise OpenVinoError("the openvino runtime needs the openvino package: pip install 'fashionbox-core[openvino]'")

    monkeypatch.setattr("fashionbox.converter.cpu_runtimes.import_openvino", missing)
    choice = choose_cpu_runtime(*_graphs(openvino_repository), *batches, allow_bf16=False, tolerance=TOLERANCE,
                                max_detections=50, num_attribute_labels=LABELS.num_attribute_labels, rounds=1)

    assert (choice.runtime, choice.precision) == ("onnxruntime", "fp32")
    assert "fashionbox-core[openvino]" in choice.record["excluded"]["openvino/fp32"]


@pytest.fixture(scope="module")
def torch_runners(openvino_repository: Path, batches: Batches) -> TorchCandidate:
    """The torch runtime's CPU runners of the default checkpoints, checked against the graphs as the converter
    checks them."""
    options = ConvertOptions(out=Path("unused"))
    (_, detector_weights), (_, attributes_weights) = (resolve_spec(options.detector, "detector"),
                                                      resolve_spec(options.attributes, "attributes"))
    nms = json.loads((openvino_repository / contract.MANIFEST_FILE).read_text())["export"]["nms"]
    detector = TorchDetector.from_settings(
        detector_weights, RuntimeSettings(score_threshold=nms["score_threshold"], iou_threshold=nms["iou_threshold"]),
        device="cpu", max_detections=nms["max_detections"])
    heads = TorchAttributes(attributes_weights, device="cpu", precision="fp32",
                            num_attribute_labels=LABELS.num_attribute_labels)
    detector_onnx, attributes_onnx = _graphs(openvino_repository)
    reports = compare_torch_runners(detector, detector_onnx, attributes_weights, attributes_onnx, *batches,
                                    max_detections=nms["max_detections"],
                                    num_attribute_labels=LABELS.num_attribute_labels)
    return TorchCandidate(detector, heads, reports)


def test_auto_times_the_torch_runtime_at_the_instances_threads_within_its_time_budget(
        openvino_repository: Path, batches: Batches, torch_runners: TorchCandidate) -> None:
    threads_before = torch.get_num_threads()
    choice = choose_cpu_runtime(*_graphs(openvino_repository), *batches, allow_bf16=False, tolerance=TOLERANCE,
                                max_detections=50, num_attribute_labels=LABELS.num_attribute_labels, rounds=5,
                                budget_s=0.0, threads=1, torch=torch_runners)
    timings = choice.record["timings_ms"]

    assert set(timings) == {"onnxruntime/fp32", "openvino/fp32", "torch/fp32"}
    assert timings["torch/fp32"]["detector_b1"] > 0 and timings["torch/fp32"]["attributes_b8"] > 0
    assert choice.record["chosen"] == pick(timings)
    assert [r.model for r in choice.reports if r.model.startswith("torch")] == ["torch detector", "torch attributes"]
    assert torch.get_num_threads() == threads_before  # set to the instances' 1 while timing, then restored
    assert choice.record["rounds"] == MIN_TIMING_ROUNDS  # past its time budget, auto stops at the minimum


def test_auto_leaves_out_a_torch_runtime_beyond_tolerance_and_records_what_could_not_be_a_candidate(
        openvino_repository: Path, batches: Batches, torch_runners: TorchCandidate) -> None:
    wrong = TorchCandidate(torch_runners.detector, torch_runners.attributes,
                           [ComparisonReport("torch detector", {"boxes": 3.0, "scores": 0.0}, 8)])
    choice = choose_cpu_runtime(*_graphs(openvino_repository), *batches, allow_bf16=False, tolerance=TOLERANCE,
                                max_detections=50, num_attribute_labels=LABELS.num_attribute_labels, rounds=1,
                                torch=wrong, not_candidates={"openvino/bf16": "asked for no bf16"})

    assert "torch/fp32" not in choice.record["timings_ms"]
    assert "torch detector: boxes" in choice.record["excluded"]["torch/fp32"]
    assert choice.record["excluded"]["openvino/bf16"] == "asked for no bf16"
    assert choice.runtime in ("onnxruntime", "openvino")


# -- served ------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_served_openvino_repository_answers_over_grpc_as_the_onnx_runtime_pipeline(
        triton_server: Any, openvino_repository: Path) -> None:
    server = triton_server(openvino_repository)
    samples = heldout_samples(16, seed=11)
    with FashionClient(str(server.endpoints.grpc)) as client:
        answers = client.detect_many([s.data for s in samples])
    served = []
    for answer in answers:
        assert not isinstance(answer, Exception), answer
        served.append(predictions_from_detections(answer))
    reference = InProcessPipeline.from_repository(openvino_repository)  # ONNX Runtime on the same graphs
    expected = []
    for sample in samples:
        (result,) = reference.run([sample.data])
        assert not isinstance(result, Exception)
        expected.append(predictions_from_result(result, reference.label_map))

    # differences of a score within 1e-3 of the served threshold are explained, not errors
    manifest = json.loads((openvino_repository / contract.MANIFEST_FILE).read_text())
    threshold = manifest["export"]["nms"]["score_threshold"]
    report = compare_fidelity(served, expected, score_threshold=threshold)
    assert report.detections >= len(samples)
    assert report.unexplained_differences == 0, report
    assert report.max_box_diff_px <= 0.5, report
    log = Path(server.log_path).read_text()
    assert "in OpenVINO (fp32)" in log  # the python models loaded the OpenVINO runners
