"""The harness against a real embedded Triton: a short sweep through the CLI and a short tune.

The repository holds the ONNX stand-ins of ``tests/onnx_standins.py`` (exact contract, tiny compute),
so this checks the harness end to end, not model speed: every report form is written and holds the
documented keys, the server breakdown names the composing models, and tuning reloads models through
the repository API, measures each trial and writes the recommendation back.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from onnx_standins import write_standin_repository

from fashionbox import contract
from fashionbox.commands.cli import main
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.repository import CONFIG_FILE, ModelScheduling, RepositorySettings
from fashionbox.loadtest.tune import read_configs, scheduling_of, threads_of

pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")

LABELS = default_label_map()
SETTINGS = RepositorySettings(
    input_size=64,
    crop_size=32,
    max_detections=20,
    detector=ModelScheduling(max_batch_size=4),
    model_version="loadtest-integration",
)
QUICK = ["--window-s", "0.5", "--warmup-s", "0.5", "--generate", "4", "--sizes", "320x240:1,640x480:1", "-q"]
COMPOSING = {contract.PREPROCESS_MODEL, contract.DETECTOR_MODEL, contract.POSTPROCESS_MODEL, contract.ATTRIBUTES_MODEL}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_standin_repository(
        tmp_path_factory.mktemp("loadtest-standins"), SETTINGS, label_map=LABELS,
        purpose="load-test integration test with ONNX stand-ins",
    )


@pytest.mark.integration
def test_a_short_sweep_writes_every_report_form(triton_server: Any, repository: Path, tmp_path: Path) -> None:
    server = triton_server(repository)
    out = tmp_path / "report"
    metrics = server.config.metrics_port
    code = main([
        "loadtest", "--url", server.endpoints.grpc, "--name", "cpu", "--metrics", str(metrics),
        "--concurrency", "1,2", "--rate", "15", "--arrivals", "poisson", "--duration-s", "2",
        *QUICK, "--json", str(out / "points.json"), "--csv", str(out / "points.csv"),
        "--html", str(out / "report.html"),
        "--slo-p99-ms", "2000", "--target-rps", "100", "--cost-per-hour", "cpu=0.5",
    ])  # fmt: skip
    assert code == 0

    doc = json.loads((out / "points.json").read_text())
    points = doc["points"]
    assert [p.get("concurrency", p.get("rate_rps")) for p in points] == [1, 2, 15.0]
    for p in points:
        assert p["throughput_rps"] > 0 and p["errors"] == 0 and isinstance(p["stable"], bool)
        assert p["latency_ms"]["p50"] <= p["latency_ms"]["p90"] <= p["latency_ms"]["p95"] <= p["latency_ms"]["p99"]
        assert p["bytes_sent"] > 0
        assert {b["model"] for b in p["server"]} >= COMPOSING | {contract.ENSEMBLE_MODEL}
        detector = next(b for b in p["server"] if b["model"] == contract.DETECTOR_MODEL)
        assert detector["compute_infer_ms"] > 0 and detector["avg_batch_size"] >= 1
        assert p["metrics"]["available"], "the embedded Triton serves a metrics endpoint"
        assert p["harness"]["cpu_fraction"] >= 0
    assert points[2]["arrivals"] == "poisson" and points[2]["harness"]["send_lag_p99_ms"] is not None
    row = doc["capacity"]["rows"][0]
    assert row["target"] == "cpu" and row["instances"] >= 1 and row["cost_per_million_images"] > 0

    with (out / "points.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 4 and "Server-side time per request" in page


@pytest.mark.integration
def test_a_ramp_reports_one_point_per_step(triton_server: Any, repository: Path, tmp_path: Path) -> None:
    server = triton_server(repository)
    out = tmp_path / "ramp.json"
    code = main(["loadtest", "--url", server.endpoints.grpc, "--metrics", "none", "--ramp", "rate:step:10:20:10:1",
                 *QUICK, "--json", str(out)])  # fmt: skip
    assert code == 0
    points = json.loads(out.read_text())["points"]
    assert [p["rate_rps"] for p in points] == [10.0, 20.0]
    assert all(p["ramp"] for p in points)


def test_an_unreachable_target_fails_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    from fashionbox.server import find_free_port

    code = main(["loadtest", "--url", f"127.0.0.1:{find_free_port()}", "--concurrency", "1", *QUICK])
    assert code == 1
    assert "did not answer" in capsys.readouterr().err


def test_costs_for_a_target_the_run_lacks_are_refused_before_any_request(capsys: pytest.CaptureFixture[str]) -> None:
    from fashionbox.server import find_free_port

    # Nothing listens on the port: a refusal after the run would say "did not answer" instead.
    code = main(["loadtest", "--url", f"127.0.0.1:{find_free_port()}", "--concurrency", "1", "--slo-p99-ms", "150",
                 "--cost-per-hour", "cpu=0.17", *QUICK])
    assert code == 2
    err = capsys.readouterr().err
    assert "--cost-per-hour names unknown targets ['cpu']; the targets are ['server']" in err
    assert "did not answer" not in err


@pytest.mark.integration
def test_a_short_tune_reloads_models_and_writes_the_recommendation(repository: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "repository"
    shutil.copytree(repository, mine)
    out = tmp_path / "tune.json"
    monkeypatch.setattr("fashionbox.loadtest.tune.host_cores", lambda: 2)  # 4 threads are left out on any host
    code = main([
        "tune", "--repository", str(mine), "--models", "detector", "--instances", "1,2", "--threads", "1,2,4",
        "--max-batch-sizes", "4", "--queue-delays-us", "0", "--concurrency", "2", "--max-trials", "3",
        "--min-gain", "-0.99", "--slo-p99-ms", "5000", "--duration-s", "1.5", *QUICK, "--write", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    trials = doc["trials"]
    # Instances first, then the detector's runtime threads (reloaded with intra_op_threads 2).
    assert [t["change"] for t in trials] == ["baseline", "detector.instances 1 -> 2", "detector.threads 1 -> 2"]
    assert all(t["throughput_rps"] > 0 and t["meets_slo"] and not t["error"] for t in trials)
    assert trials[2]["config"]["detector"]["threads"] == 2
    assert doc["space"]["threads"] == [1, 2] and doc["space"]["threaded_models"] == ["detector"]
    assert doc["space"]["cross_product_size"] == 4
    # The winner and the baseline are measured again back to back, to tell a real gain from noise.
    assert [t["change"] for t in doc["confirmation"]] == ["baseline, again", "best, again"]
    # min-gain -0.99 accepts any measured trial, so the last config wins and is written back.
    assert doc["best"] == 2
    written = read_configs(mine)[contract.DETECTOR_MODEL]
    assert scheduling_of(written).instances == 2 and threads_of(written) == 2
    assert (mine / contract.DETECTOR_MODEL / CONFIG_FILE).read_text() != (
        repository / contract.DETECTOR_MODEL / CONFIG_FILE
    ).read_text()
    source = read_configs(repository)[contract.DETECTOR_MODEL]
    assert scheduling_of(source).instances == 1 and threads_of(source) == 1  # the source is untouched
