"""Operators' standard tools on FashionBox as written: Triton Model Analyzer with ``fashionbox-tritonserver``
and ``fashionbox-perf-analyzer``, on the config ``fashionbox model-analyzer-config`` writes (docs/TUNING.md).

The integration test runs a tiny Model Analyzer profile (the shipped configuration and one searched, one
concurrency, short measurement windows, no concurrency sweep for the reports) in its local launch mode
against a real embedded server on a stand-in repository, and checks it measured the whole ensemble,
wrote its results and report, and logged no error.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from client_images import dark_jpeg
from onnx_standins import write_standin_repository
from operators_helpers import console_script

from fashionbox.converter.repository import RepositorySettings
from fashionbox.server import ConfigError, find_free_ports
from fashionbox.server.model_analyzer import (
    CONFIG_NAME,
    INPUT_DATA_NAME,
    AnalyzerSearch,
    analyzer_config,
    ensemble_layout,
    write_setup,
)

_SETTINGS = RepositorySettings(input_size=64, crop_size=32, max_detections=10)
_DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "model-analyzer.yaml"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_standin_repository(tmp_path_factory.mktemp("ma-repo"), _SETTINGS, purpose="model analyzer tests")


def test_the_layout_names_the_steps_the_model_they_call_and_the_batch_size(repository: Path) -> None:
    layout = ensemble_layout(repository)
    assert layout.composing == ("preprocess", "detector", "postprocess")
    assert layout.called == ("attributes",)
    assert layout.max_batch_size == 8


def test_the_config_loads_the_called_model_keeps_steps_on_cpu_and_the_ensemble_loadable(
    repository: Path, tmp_path: Path
) -> None:
    config = analyzer_config(repository, tmp_path, AnalyzerSearch(grpc_port=1001, http_port=1000, metrics_port=1002))
    assert config["triton_server_flags"] == {"load-model": "attributes"}
    assert config["cpu_only_composing_models"] == ["preprocess", "detector", "postprocess"]
    assert config["run_config_search_min_model_batch_size"] == 8  # every winner loads inside the ensemble
    assert config["triton_launch_mode"] == "local"
    assert Path(config["triton_server_path"]).name == "fashionbox-tritonserver"
    assert Path(config["perf_analyzer_path"]).name == "fashionbox-perf-analyzer"
    assert config["triton_grpc_endpoint"] == "127.0.0.1:1001"
    assert config["triton_metrics_url"] == "http://127.0.0.1:1002/metrics"
    assert config["profile_models"] == {"fashion": {"perf_analyzer_flags": {"input-data": str(
        tmp_path.resolve() / INPUT_DATA_NAME)}}}


def test_a_search_that_could_not_load_inside_the_ensemble_is_refused(repository: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="below fashion's max batch size 8"):
        analyzer_config(repository, tmp_path, AnalyzerSearch(max_model_batch_size=4))
    with pytest.raises(ConfigError, match="search mode"):
        AnalyzerSearch(mode="fast")
    with pytest.raises(ConfigError, match="no ensemble"):
        analyzer_config(tmp_path, tmp_path)


def test_the_written_yaml_reads_back_as_the_config(repository: Path, tmp_path: Path) -> None:
    path = write_setup(repository, tmp_path / "ma", [dark_jpeg(1)])
    assert path.name == CONFIG_NAME
    assert yaml.safe_load(path.read_text()) == analyzer_config(repository, tmp_path / "ma")
    data = yaml.safe_load((tmp_path / "ma" / INPUT_DATA_NAME).read_text())
    assert len(data["data"]) == 1 and data["data"][0]["IMAGE"]["shape"] == [1]


def test_the_deploy_example_says_what_the_generated_config_says(repository: Path, tmp_path: Path) -> None:
    """deploy/model-analyzer.yaml is the documented example: its settings (not its paths) are the writer's."""
    example = yaml.safe_load(_DEPLOY.read_text())
    generated = analyzer_config(repository, tmp_path)
    paths = {"model_repository", "profile_models", "output_model_repository_path", "export_path",
             "checkpoint_directory", "triton_output_path", "triton_server_path", "perf_analyzer_path"}
    assert set(example) == set(generated)
    assert {k: v for k, v in example.items() if k not in paths} == {
        k: v for k, v in generated.items() if k not in paths}
    assert example["triton_server_path"] == "fashionbox-tritonserver"
    assert example["perf_analyzer_path"] == "fashionbox-perf-analyzer"


def test_the_command_writes_the_setup(repository: Path, tmp_path: Path) -> None:
    from fashionbox.commands.cli import main

    assert main(["model-analyzer-config", "--repository", str(repository), "--output", str(tmp_path / "ma"),
                 "--generate", "2", "--sizes", "320x240:1", "--grpc-port", "9101"]) == 0
    config = yaml.safe_load((tmp_path / "ma" / CONFIG_NAME).read_text())
    assert config["triton_grpc_endpoint"] == "127.0.0.1:9101"
    assert len(yaml.safe_load((tmp_path / "ma" / INPUT_DATA_NAME).read_text())["data"]) == 2


def _tiny(config: dict[str, Any]) -> dict[str, Any]:
    """The shipped configuration and one searched, at one concurrency, in short windows, and no concurrency sweep
    for the reports (the summary is written from the search's measurements): 53 s instead of 97 here."""
    tiny = dict(config)
    tiny.update({
        "run_config_search_min_model_batch_size": 8,  # quick search on one point: the shipped batch size,
        "run_config_search_max_model_batch_size": 8,  # one instance of each step (Model Analyzer's brute
        "run_config_search_max_instance_count": 1,  # search refuses ensembles)
        "run_config_search_max_concurrency": 1,
        "concurrency_sweep_disable": True,  # the summary from the search's own measurements (a reload less)
        "skip_detailed_reports": True,
        "perf_analyzer_max_auto_adjusts": 1,
        "perf_analyzer_timeout": 120,
    })
    for flags in [model["perf_analyzer_flags"] for model in tiny["profile_models"].values()]:
        flags.update({"measurement-mode": "count_windows", "measurement-request-count": 20,
                      "stability-percentage": 90, "max-trials": 5})
    return tiny


@pytest.mark.integration
def test_model_analyzer_profiles_the_ensemble_with_the_launcher_and_perf_analyzer(
    tmp_path: Path,
) -> None:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    pytest.importorskip("model_analyzer", reason="pip install -r requirements-dev.txt (triton-model-analyzer)")
    repository = write_standin_repository(tmp_path, _SETTINGS, purpose="model analyzer")
    grpc_port, http_port, metrics_port = find_free_ports(3)
    output = tmp_path / "ma"
    path = write_setup(repository, output, [dark_jpeg(1), dark_jpeg(2)],
                       AnalyzerSearch(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port))
    path.write_text(yaml.safe_dump(_tiny(yaml.safe_load(path.read_text()))))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    run = subprocess.run([console_script("model-analyzer"), "profile", "-f", str(path)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    errors = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
    assert errors == [], log[-4000:]

    with open(output / "export" / "results" / "metrics-model-inference.csv") as results:
        rows = list(csv.DictReader(results))
    assert rows and all(row["Model"] == "fashion" for row in rows), rows
    assert all(float(row["Throughput (infer/sec)"]) > 0 for row in rows), rows
    assert "preprocess_config_default" in rows[0]["Model Config Path"]
    assert (output / "export" / "reports" / "summaries" / "fashion" / "result_summary.html").is_file()
    server_log = (output / "tritonserver.log").read_text()
    assert "successfully loaded 'attributes'" in server_log  # the model postprocess calls (BLS)
    assert "failed to load" not in server_log
