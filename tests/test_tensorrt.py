"""fashionbox.converter.tensorrt (engine graphs, GPU configs, trtexec commands, engine records) and
fashionbox.server.engines (the serve-time check of those records).

Everything here runs on a CPU (the engine graphs run in ONNX Runtime; trtexec and nvidia-smi are
stand-in scripts); the tests that build real engines carry the ``tensorrt`` marker and skip with a
reason where TensorRT or a GPU is truly absent.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx_standins import DetectorStandIn, write_attributes, write_detector
from tritonclient.grpc import model_config_pb2 as mc

from fashionbox import contract
from fashionbox.contract.labels import default_label_map
from fashionbox.converter import ConvertError, ConvertOptions, convert
from fashionbox.converter.repository import ModelScheduling, RepositorySettings, model_configs, write_repository
from fashionbox.converter.tensorrt import (
    ENGINES_SCRIPT,
    EngineError,
    EngineOptions,
    EngineSpec,
    Fp16UnsupportedError,
    OptimizationProfile,
    build_engine,
    compare_detector_graphs,
    engine_specs,
    fit_engine_outputs,
    gpu_model_configs,
    prepare_gpu_repository,
    profile_for,
    tensorrt_attributes_graph,
    tensorrt_detector_graph,
    trtexec_command,
)
from fashionbox.server import RepositoryError
from fashionbox.server import engines as serving
from fashionbox.server.checks import check_repository
from fashionbox.server.engines import (
    ENGINES_RECORD,
    EngineMismatchError,
    GpuInfo,
    check_engine_compatibility,
    local_gpus,
)

LABELS = default_label_map()
SIZE, CROP, K = 64, 32, 10
SETTINGS = RepositorySettings(
    input_size=SIZE, crop_size=CROP, max_detections=K,
    detector=ModelScheduling(instances=2, max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_us=100,
                             max_queue_size=32),
    attributes=ModelScheduling(max_batch_size=32, max_queue_size=0),
    model_version="test-1", model_name="standin",
)
H200 = GpuInfo("NVIDIA H200", "9.0")
RECORD = {"tensorrt": "10.5.0.18", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("graphs")
    detector = write_detector(folder / "detector.onnx",
                              DetectorStandIn.default(input_size=SIZE, num_categories=LABELS.num_categories))
    attributes = write_attributes(folder / "attributes.onnx", crop_size=CROP,
                                  group_sizes=[len(g.labels) for g in LABELS.attribute_groups])
    return {
        "detector": detector,
        "attributes": attributes,
        "engine_detector": tensorrt_detector_graph(detector, folder / "engine_detector.onnx", max_detections=K),
        "engine_attributes": tensorrt_attributes_graph(attributes, folder / "engine_attributes.onnx"),
    }


def _run(path: Path, feeds: dict[str, Any]) -> list[Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result: list[Any] = session.run(None, feeds)
    return result


def _images(*brightness: int) -> Any:
    return np.stack([np.full((SIZE, SIZE, 3), b, dtype=np.uint8) for b in brightness])


# -- engine graphs ----------------------------------------------------------------------------------------


def test_the_engine_detector_graph_pads_exactly_the_detections_the_cpu_graph_keeps(graphs: dict[str, Path]) -> None:
    batches = [_images(0), _images(0, 255, 60), _images(30, 90)]
    assert compare_detector_graphs(graphs["detector"], graphs["engine_detector"], batches, max_detections=K) == 6

    boxes, scores, classes = _run(graphs["engine_detector"], {contract.PIXELS.name: _images(0, 255)})
    assert boxes.shape == (2, K, 4) and scores.shape == (2, K) and classes.dtype == np.int32
    assert classes[0].tolist() == [0, 10, 5, 2, 6] + [-1] * (K - 5)  # the stand-in's black-image detections
    assert (np.diff(scores[0, :5]) <= 0).all()
    assert classes[1].tolist() == [-1] * K and not scores[1].any() and not boxes[1].any()  # white: padding only


def test_an_engine_graph_without_the_outputs_its_config_declares_is_refused(graphs: dict[str, Path]) -> None:
    """Triton would refuse the engine on the GPU: the converter refuses it first (a segmenting detector's config
    declares DET_MASK_COEFFS and DET_PROTOS; a graph that drops them is caught here). Outputs the config does not
    serve are dropped from the graph (see the attribute graph's below)."""
    from dataclasses import replace

    plain = gpu_model_configs(SETTINGS, LABELS, EngineOptions())[contract.DETECTOR_MODEL]
    fit_engine_outputs(graphs["engine_detector"], plain)
    segmenting = gpu_model_configs(replace(SETTINGS, detector_masks=True), LABELS,
                                   EngineOptions())[contract.DETECTOR_MODEL]
    with pytest.raises(EngineError, match=r"outputs \['DET_BOXES', 'DET_CLASSES', 'DET_SCORES'\] lack "
                                          r"\['DET_MASK_COEFFS', 'DET_PROTOS'\], which the detector config declares"):
        fit_engine_outputs(graphs["engine_detector"], segmenting)


def test_the_engine_graphs_use_the_contract_tensor_names_triton_binds(graphs: dict[str, Path]) -> None:
    session = ort.InferenceSession(str(graphs["engine_detector"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [contract.PIXELS.name]
    assert [o.name for o in session.get_outputs()] == [
        contract.DET_BOXES.name, contract.DET_SCORES.name, contract.DET_CLASSES.name]

    crops = np.random.default_rng(0).integers(0, 256, (3, CROP, CROP, 3), dtype=np.uint8)
    (want,) = _run(graphs["attributes"], {contract.ONNX_ATTRIBUTES_INPUT: crops})
    (got,) = _run(graphs["engine_attributes"], {contract.CROPS.name: crops})
    np.testing.assert_array_equal(got, want)


def test_a_graph_without_the_contract_tensors_is_refused(graphs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no input 'pixels'"):
        tensorrt_detector_graph(graphs["engine_detector"], tmp_path / "x.onnx", max_detections=K)


# -- configs ----------------------------------------------------------------------------------------------


def test_gpu_configs_are_tensorrt_plans_on_gpus_and_the_ensemble_is_unchanged() -> None:
    cpu = model_configs(SETTINGS, LABELS)
    gpu = gpu_model_configs(SETTINGS, LABELS, EngineOptions(cuda_graphs=True))

    assert list(gpu) == list(cpu)
    # The engines take no capability TOKEN: the ensemble does not wire it to the detector, postprocess
    # sends attributes none, and no detector confirms admission slots (pending for the whole TTL).
    ensemble = cpu[contract.ENSEMBLE_MODEL]
    del ensemble.ensemble_scheduling.step[1].input_map[contract.TOKEN.name]
    assert gpu[contract.ENSEMBLE_MODEL] == ensemble
    assert gpu[contract.POSTPROCESS_MODEL] == _engine_side(cpu[contract.POSTPROCESS_MODEL])
    assert gpu[contract.POSTPROCESS_MODEL].parameters["attributes_token"].string_value == "false"
    # the python postprocess batches requests whatever their numbers of detections, as on the CPU
    assert {i.name for i in gpu[contract.POSTPROCESS_MODEL].input if i.allow_ragged_batch} == {
        contract.DET_BOXES.name, contract.DET_SCORES.name, contract.DET_CLASSES.name}
    for name in (contract.DETECTOR_MODEL, contract.ATTRIBUTES_MODEL):
        config = gpu[name]
        assert config.platform == "tensorrt_plan" and config.backend == ""
        assert [(g.count, g.kind) for g in config.instance_group] == [
            (cpu[name].instance_group[0].count, mc.ModelInstanceGroup.KIND_GPU)]
        assert config.dynamic_batching == cpu[name].dynamic_batching  # queue policy included
        assert config.max_batch_size == cpu[name].max_batch_size
        assert config.optimization.cuda.graphs
        assert not config.parameters  # ONNX Runtime threading means nothing to TensorRT
        assert [i.name for i in config.input] == [i.name for i in cpu[name].input if i.name != contract.TOKEN.name]
        assert not any(i.allow_ragged_batch for i in config.input)  # TensorRT would take them flattened
        parsed = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())
        assert parsed == config
    preprocess = gpu[contract.PREPROCESS_MODEL]
    assert preprocess.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert preprocess.parameters["decode_device"].string_value == "auto"


def test_the_gpu_detector_config_is_exactly_this() -> None:
    config = gpu_model_configs(SETTINGS, LABELS, EngineOptions())[contract.DETECTOR_MODEL]
    assert text_format.MessageToString(config) == f"""\
name: "detector"
platform: "tensorrt_plan"
max_batch_size: 8
input {{
  name: "PIXELS"
  data_type: TYPE_UINT8
  dims: {SIZE}
  dims: {SIZE}
  dims: 3
}}
output {{
  name: "DET_BOXES"
  data_type: TYPE_FP32
  dims: {K}
  dims: 4
}}
output {{
  name: "DET_SCORES"
  data_type: TYPE_FP32
  dims: {K}
}}
output {{
  name: "DET_CLASSES"
  data_type: TYPE_INT32
  dims: {K}
}}
instance_group {{
  count: 2
  kind: KIND_GPU
}}
dynamic_batching {{
  preferred_batch_size: 4
  max_queue_delay_microseconds: 100
  default_queue_policy {{
    max_queue_size: 32
  }}
}}
"""


def test_without_gpu_decode_preprocess_stays_on_the_cpu_profile() -> None:
    gpu = gpu_model_configs(SETTINGS, LABELS, EngineOptions(gpu_decode=False))
    assert gpu[contract.PREPROCESS_MODEL] == _engine_side(model_configs(SETTINGS, LABELS)[contract.PREPROCESS_MODEL])


def _engine_side(config: Any) -> Any:
    """A python step's CPU config as the TensorRT profile writes it (no TOKEN to the engines, no pending slots)."""
    parameters = config.parameters
    if "admission_pending_ms" in parameters:
        parameters["admission_pending_ms"].string_value = parameters["admission_ttl_ms"].string_value
    if "attributes_token" in parameters:
        parameters["attributes_token"].string_value = "false"
    return config


# -- profiles and trtexec -----------------------------------------------------------------------------------


def test_the_profile_comes_from_the_batching_config() -> None:
    gpu = gpu_model_configs(SETTINGS, LABELS, EngineOptions())
    assert profile_for(gpu[contract.DETECTOR_MODEL]) == OptimizationProfile("PIXELS", (SIZE, SIZE, 3), 1, 4, 8)
    assert profile_for(gpu[contract.ATTRIBUTES_MODEL]) == OptimizationProfile("CROPS", (CROP, CROP, 3), 1, 32, 32)
    with pytest.raises(ConvertError, match="min <= opt <= max"):
        OptimizationProfile("PIXELS", (SIZE, SIZE, 3), 1, 16, 8)
    no_batching = mc.ModelConfig(name="x", max_batch_size=0)
    with pytest.raises(ConvertError, match="batching models"):
        profile_for(no_batching)


def test_trtexec_command_is_exactly_the_engine_build() -> None:
    spec = engine_specs(gpu_model_configs(SETTINGS, LABELS, EngineOptions()))[0]
    assert trtexec_command(spec, EngineOptions(workspace_mib=1024), timing_cache="/cache/t.cache") == [
        "trtexec", "--onnx=detector/1/model.onnx", "--saveEngine=detector/1/model.plan",
        f"--minShapes=PIXELS:1x{SIZE}x{SIZE}x3", f"--optShapes=PIXELS:4x{SIZE}x{SIZE}x3",
        f"--maxShapes=PIXELS:8x{SIZE}x{SIZE}x3", "--memPoolSize=workspace:1024M", "--fp16",
        "--timingCacheFile=/cache/t.cache", "--skipInference",
    ]
    assert "--fp16" not in trtexec_command(spec, EngineOptions(fp16=False))


@pytest.mark.parametrize("bad", [{"build": "soon"}, {"workspace_mib": 0}])
def test_bad_engine_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConvertError):
        EngineOptions(**bad)


# -- a GPU repository, engines later ------------------------------------------------------------------------


def _fake_tools(folder: Path, gpu_line: str = "NVIDIA H200, 9.0") -> dict[str, str]:
    """trtexec and nvidia-smi stand-ins: trtexec logs its arguments and writes the --saveEngine file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trtexec").write_text(
        '#!/bin/sh\necho "$@" >> "$TRTEXEC_LOG"\n'
        'for a in "$@"; do case "$a" in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done\n')
    (folder / "nvidia-smi").write_text(f'#!/bin/sh\necho "{gpu_line}"\n')
    for tool in ("trtexec", "nvidia-smi"):
        (folder / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "TRT_VERSION": "10.5.0.18",
            "TRTEXEC_LOG": str(folder / "trtexec.log"), "FASHIONBOX_TIMING_CACHE": str(folder / "cache/t.cache")}


@pytest.fixture()
def later_repository(graphs: dict[str, Path], tmp_path: Path) -> Path:
    gpu = prepare_gpu_repository(tmp_path / "work", detector_onnx=graphs["detector"],
                                 attributes_onnx=graphs["attributes"], settings=SETTINGS, label_map=LABELS,
                                 options=EngineOptions(build="later"), detector_batches=[_images(0, 128)])
    return write_repository(tmp_path / "repo", detector_onnx=graphs["detector"], attributes_onnx=graphs["attributes"],
                            label_map=LABELS, settings=SETTINGS, manifest={"target": "gpu", "engines": gpu.manifest},
                            configs=gpu.configs, files=gpu.files)


def test_engines_later_writes_the_engine_graphs_configs_and_the_build_script(later_repository: Path) -> None:
    out = later_repository
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "README.md", "attributes/1/model.onnx", "attributes/config.pbtxt", ENGINES_SCRIPT,
        "detector/1/model.onnx", "detector/config.pbtxt", "fashion/config.pbtxt", "labels.json", "manifest.json",
        "postprocess/1/model.py", "postprocess/config.pbtxt", "preprocess/1/model.py", "preprocess/config.pbtxt",
    ]
    session = ort.InferenceSession(str(out / "detector/1/model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == contract.PIXELS.name
    for name in ("detector", "attributes"):
        config = text_format.Parse((out / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert config.platform == "tensorrt_plan"
    assert os.access(out / ENGINES_SCRIPT, os.X_OK)
    engines = json.loads((out / "manifest.json").read_text())["engines"]
    assert engines["status"] == "pending" and engines["built_on"] is None
    assert engines["models"]["detector"]["profile"] == {"input_name": "PIXELS", "item_shape": [SIZE, SIZE, 3],
                                                        "min_batch": 1, "opt_batch": 4, "max_batch": 8}


def test_serving_refuses_a_repository_whose_engines_are_not_built(later_repository: Path) -> None:
    with pytest.raises(serving.EngineError, match=f"not built yet; run .*{re.escape(ENGINES_SCRIPT)}"):
        check_engine_compatibility(later_repository, gpus=[H200], tensorrt_version="10.5.0")


def test_the_build_script_runs_trtexec_per_engine_and_records_where(later_repository: Path, tmp_path: Path) -> None:
    env = _fake_tools(tmp_path / "bin")
    subprocess.run(["sh", str(later_repository / ENGINES_SCRIPT)], check=True, env=env, capture_output=True)

    calls = (tmp_path / "bin" / "trtexec.log").read_text().splitlines()
    assert len(calls) == 2 and all(f"--timingCacheFile={tmp_path}/bin/cache/t.cache" in c for c in calls)
    assert calls[0].startswith("--onnx=detector/1/model.onnx --saveEngine=detector/1/model.plan")
    assert (later_repository / "detector/1/model.plan").is_file()
    assert json.loads((later_repository / ENGINES_RECORD).read_text()) == RECORD
    record = check_engine_compatibility(later_repository, gpus=[H200], tensorrt_version="10.5.0")
    assert record is not None and record.gpu_name == "NVIDIA H200"


def test_the_build_script_refuses_fp16_on_a_gpu_without_fast_fp16(later_repository: Path, tmp_path: Path) -> None:
    env = _fake_tools(tmp_path / "bin", gpu_line="Tesla P4, 6.1")
    done = subprocess.run(["sh", str(later_repository / ENGINES_SCRIPT)], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "Tesla P4 (compute capability 6.1) has no fast FP16: convert again with --no-fp16" in done.stderr
    assert not (tmp_path / "bin" / "trtexec.log").exists() and not (later_repository / ENGINES_RECORD).exists()


@pytest.mark.parametrize(
    ("gpus", "tensorrt_version", "message"),
    [
        ([GpuInfo("NVIDIA L4", "8.9")], "10.5.0", "compute capability 8.9, the engines were built for 9.0"),
        ([H200, GpuInfo("NVIDIA H100 80GB HBM3", "9.0")], "10.5.0", "GPU 1 is NVIDIA H100 80GB HBM3"),
        ([H200], "10.3.0.26", "TensorRT here is 10.3.0.26, the engines were built with 10.5.0.18"),
        ([], "10.5.0", "no NVIDIA GPU is visible"),
    ],
)
def test_engines_built_elsewhere_are_refused_with_what_differs(
    later_repository: Path, tmp_path: Path, gpus: list[GpuInfo], tensorrt_version: str, message: str
) -> None:
    subprocess.run(["sh", str(later_repository / ENGINES_SCRIPT)], check=True, env=_fake_tools(tmp_path / "bin"),
                   capture_output=True)
    with pytest.raises(EngineMismatchError, match=re.escape(message)):
        check_engine_compatibility(later_repository, gpus=gpus, tensorrt_version=tensorrt_version)


def test_fashionbox_serve_refuses_foreign_engines_and_says_where_gpu_repositories_run(
    later_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(["sh", str(later_repository / ENGINES_SCRIPT)], check=True, env=_fake_tools(tmp_path / "bin"),
                   capture_output=True)
    monkeypatch.setenv("TRT_VERSION", "10.5.0.18")
    monkeypatch.setattr(serving, "local_gpus", lambda: [GpuInfo("NVIDIA A10G", "8.6")])
    with pytest.raises(RepositoryError, match=r"compute capability 8\.6"):
        check_repository(later_repository)
    monkeypatch.setattr(serving, "local_gpus", lambda: [H200])
    with pytest.raises(RepositoryError, match=r"embedded server .* cannot load"):
        check_repository(later_repository)


def test_the_entrypoint_check_refuses_then_execs_the_server(later_repository: Path, tmp_path: Path) -> None:
    env = _fake_tools(tmp_path / "bin", gpu_line="NVIDIA A10G, 8.6")
    subprocess.run(["sh", str(later_repository / ENGINES_SCRIPT)], check=True, env=env, capture_output=True)
    command = [sys.executable, "-m", "fashionbox.server.engines", "check", str(later_repository), "--",
               "echo", "server started"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "server started"
    assert "fit this machine" in done.stderr and "RuntimeWarning" not in done.stderr
    (tmp_path / "bin" / "nvidia-smi").write_text('#!/bin/sh\necho "NVIDIA L4, 8.9"\n')
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "compute capability 8.9" in done.stderr and "server started" not in done.stdout


def test_the_serve_time_check_does_not_import_the_converter(later_repository: Path, tmp_path: Path) -> None:
    env = _fake_tools(tmp_path / "bin")
    subprocess.run(["sh", str(later_repository / ENGINES_SCRIPT)], check=True, env=env, capture_output=True)
    program = (
        "import sys\n"
        "from fashionbox.server.checks import check_repository\n"
        "from fashionbox.server.engines import check_engine_compatibility, main\n"
        f"assert check_engine_compatibility(__import__('pathlib').Path({str(later_repository)!r})) is not None\n"
        "print(sorted(m for m in sys.modules if m.startswith('fashionbox.converter')))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_build_error_is_also_the_serving_sides_engine_error() -> None:
    assert issubclass(EngineError, ConvertError) and issubclass(EngineError, serving.EngineError)
    assert issubclass(Fp16UnsupportedError, serving.EngineError)


def test_a_cpu_repository_has_nothing_to_check(tmp_path: Path) -> None:
    (tmp_path / contract.MANIFEST_FILE).write_text(json.dumps({"target": "cpu"}))
    assert check_engine_compatibility(tmp_path, gpus=[]) is None


def test_local_gpus_reads_nvidia_smi() -> None:
    out = "NVIDIA H200, 9.0\nNVIDIA H200, 9.0\n"
    assert local_gpus(runner=lambda command: out) == [H200, H200]


# -- engines now --------------------------------------------------------------------------------------------


def test_engines_now_without_tensorrt_is_refused_before_any_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when the package is absent
    with pytest.raises(EngineError, match="--engines later") as refused:
        convert(ConvertOptions(out=tmp_path / "repo", target="gpu"))
    assert "--runtime torch runs the networks with PyTorch on the GPU" in str(refused.value)  # the other way
    assert not (tmp_path / "repo").exists()


def test_convert_target_gpu_engines_later_writes_the_gpu_repository_of_the_shipped_weights(tmp_path: Path) -> None:
    result = convert(ConvertOptions(out=tmp_path / "repo", target="gpu", compare_samples=2,
                                    engines=EngineOptions(build="later", cuda_graphs=True)))
    out = result.repository
    assert result.manifest["target"] == "gpu" and result.manifest["engines"]["status"] == "pending"
    assert (out / ENGINES_SCRIPT).is_file() and not (out / "detector/1/model.plan").exists()
    detector = text_format.Parse((out / "detector/config.pbtxt").read_text(), mc.ModelConfig())
    assert detector.platform == "tensorrt_plan" and detector.optimization.cuda.graphs
    # The engine graph in the repository is the one checked against the CPU graph during convert.
    pixels = np.zeros((2, detector.input[0].dims[0], detector.input[0].dims[1], 3), dtype=np.uint8)
    boxes, _, classes = _run(out / "detector/1/model.onnx", {contract.PIXELS.name: pixels})
    assert boxes.shape == (2, contract.DEFAULT_MAX_DETECTIONS, 4) and classes.dtype == np.int32
    # The shipped attribute graph has the mask, embedding, vertical and verifier heads: its engine graph and
    # config serve them under the same names, in the same order (Triton binds a plan's outputs by name).
    attributes = text_format.Parse((out / "attributes/config.pbtxt").read_text(), mc.ModelConfig())
    served = [contract.ATTRIBUTE_PROBS.name, contract.CROP_MASKS.name, contract.CROP_EMBEDDINGS.name,
              contract.VERTICAL_PROBS.name, contract.CROP_SCORE_OFFSETS.name]
    assert [o.name for o in attributes.output] == served
    crops = np.zeros((3, attributes.input[0].dims[0], attributes.input[0].dims[1], 3), dtype=np.uint8)
    session = ort.InferenceSession(str(out / "attributes/1/model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == served
    outputs = session.run(None, {contract.CROPS.name: crops})
    for output, config in zip(outputs, attributes.output, strict=True):
        assert output.shape == (3, *config.dims)
    postprocess = text_format.Parse((out / "postprocess/config.pbtxt").read_text(), mc.ModelConfig())
    assert postprocess.parameters["crop_masks"].string_value == "true"
    assert postprocess.parameters["score_offsets"].string_value == "true"  # the second stage, on the GPU too
    assert postprocess.parameters["labels_from"].string_value == "attributes"
    assert postprocess.parameters["embeddings_from"].string_value == "attributes"


def _fake_tensorrt(*, fast_fp16: bool) -> Any:
    class Builder:
        platform_has_fast_fp16 = fast_fp16

        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> object:
            raise AssertionError("FP16 must be checked before anything is built")

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    return types.SimpleNamespace(__version__="10.5.0", Logger=Logger, Builder=Builder)


def test_fp16_on_a_gpu_without_fast_fp16_is_refused_not_dropped(tmp_path: Path) -> None:
    spec = EngineSpec("detector", tmp_path / "d.onnx", tmp_path / "d.plan",
                      OptimizationProfile("PIXELS", (SIZE, SIZE, 3), 1, 4, 8))
    with pytest.raises(Fp16UnsupportedError, match=r"no fast FP16; pass --no-fp16"):
        build_engine(spec, EngineOptions(fp16=True), tensorrt=_fake_tensorrt(fast_fp16=False),
                     gpu=GpuInfo("Tesla P4", "6.1"))


def _tensorrt_and_gpu() -> str | None:
    """Why real-engine tests cannot run here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed"
    if not local_gpus():
        return "no NVIDIA GPU is visible"
    return None


@pytest.mark.tensorrt
@pytest.mark.skipif(_tensorrt_and_gpu() is not None, reason=str(_tensorrt_and_gpu()))
def test_real_engines_build_from_the_engine_graphs_and_record_this_gpu(graphs: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    options = EngineOptions(fp16=False, workspace_mib=512, timing_cache=tmp_path / "t.cache")
    gpu = prepare_gpu_repository(tmp_path / "work", detector_onnx=graphs["detector"],
                                 attributes_onnx=graphs["attributes"], settings=SETTINGS, label_map=LABELS,
                                 options=options, detector_batches=[_images(0)])
    out = write_repository(tmp_path / "repo", detector_onnx=graphs["detector"], attributes_onnx=graphs["attributes"],
                           label_map=LABELS, settings=SETTINGS, manifest={"target": "gpu", "engines": gpu.manifest},
                           configs=gpu.configs, files=gpu.files)
    assert (tmp_path / "t.cache").stat().st_size > 0
    assert gpu.manifest["status"] == "built" and gpu.manifest["built_on"]["gpu_name"] == local_gpus()[0].name
    assert check_engine_compatibility(out) is not None

    import tensorrt

    runtime = tensorrt.Runtime(tensorrt.Logger(tensorrt.Logger.WARNING))
    expected = {"detector": [contract.PIXELS.name, contract.DET_BOXES.name, contract.DET_SCORES.name,
                             contract.DET_CLASSES.name],
                "attributes": [contract.CROPS.name, contract.ATTRIBUTE_PROBS.name]}
    for model, names in expected.items():
        engine = runtime.deserialize_cuda_engine((out / model / "1" / "model.plan").read_bytes())
        assert engine is not None
        assert [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)] == names  # what Triton binds


def test_the_engine_attribute_graph_names_every_optional_head_as_the_configs_do(tmp_path: Path) -> None:
    """An attribute graph with embedding and vertical heads keeps them under the served names (a
    TensorRT engine's outputs are matched to the config by name)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_node("ReduceMean", ["as_float"], ["pooled"], axes=[1, 2], keepdims=0)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["crops"], ["as_float"], to=TensorProto.FLOAT), x,
         helper.make_node("Softmax", ["pooled"], ["probs"], axis=1),
         helper.make_node("LpNormalization", ["pooled"], ["embeddings"], axis=1, p=2),
         helper.make_node("Softmax", ["pooled"], ["verticals"], axis=1)],
        "heads", [helper.make_tensor_value_info("crops", TensorProto.UINT8, ["n", CROP, CROP, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 3])
         for name in ("probs", "embeddings", "verticals")])
    source = tmp_path / "heads.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    engine_graph = tensorrt_attributes_graph(source, tmp_path / "engine.onnx")

    session = ort.InferenceSession(str(engine_graph), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == [contract.ATTRIBUTE_PROBS.name, contract.CROP_EMBEDDINGS.name, contract.VERTICAL_PROBS.name]
    crops = np.random.default_rng(0).integers(0, 256, (2, CROP, CROP, 3), dtype=np.uint8)
    renamed = session.run(None, {contract.CROPS.name: crops})
    original = _run(source, {"crops": crops})
    for a, b in zip(renamed, original, strict=True):
        np.testing.assert_array_equal(a, b)


def _branch_graph(path: Path, output: str, size: int, side: int = 16) -> Path:
    """A stand-in image-level graph: uint8 ``images`` [n, side, side, 3] -> ``output`` [n, size]."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, size], np.linspace(-1, 1, 3 * size).tolist())
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["pooled"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], [output], axis=1)],
        "branch", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["n", side, side, 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", size])], initializer=[weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_families_networks_become_engines_that_take_no_token(graphs: dict[str, Path], tmp_path: Path) -> None:
    from fashionbox.converter.repository import ImageBranch

    settings = RepositorySettings(
        input_size=SIZE, crop_size=CROP, max_detections=K,
        classifier=ImageBranch(name="c", view="{}", height=16, width=16, size=3, labels=("a", "b", "c")),
        embedder=ImageBranch(name="e", view="{}", height=16, width=16, size=4, text=False))
    branches = {contract.CLASSIFIER_MODEL: _branch_graph(tmp_path / "c.onnx", "probs", 3),
                contract.EMBEDDER_MODEL: _branch_graph(tmp_path / "e.onnx", "embeddings", 4)}
    gpu = prepare_gpu_repository(tmp_path / "work", detector_onnx=graphs["detector"],
                                 attributes_onnx=graphs["attributes"], settings=settings, label_map=LABELS,
                                 options=EngineOptions(build="later"), detector_batches=[_images(0)],
                                 branch_onnx=branches)
    for name, served in ((contract.CLASSIFIER_MODEL, contract.LABEL_PROBS.name),
                         (contract.EMBEDDER_MODEL, contract.EMBEDDINGS.name)):
        config = gpu.configs[name]
        assert config.platform == "tensorrt_plan" and [i.name for i in config.input] == [contract.VIEWS.name]
        assert [o.name for o in config.output] == [served]
        engine_graph = gpu.files[f"{name}/1/model.onnx"]
        views = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
        (renamed,) = _run(engine_graph, {contract.VIEWS.name: views})
        (original,) = _run(branches[name], {"images": views})
        np.testing.assert_array_equal(renamed, original)
    assert gpu.configs[contract.POSTPROCESS_MODEL].parameters["branch_token"].string_value == "false"
    script = gpu.files[ENGINES_SCRIPT].read_text()
    assert f"--onnx={contract.CLASSIFIER_MODEL}/1/model.onnx" in script and "--maxShapes=VIEWS:" in script
