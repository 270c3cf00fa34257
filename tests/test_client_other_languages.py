"""The "other languages" section of ``client/README.md``, checked: the contract table and the shell blocks.

The README's blocks are found by the HTML comment in front of them and run exactly as written
(bash, coreutils, jq, and ``python -m grpc_tools.protoc`` standing in for ``protoc``). grpcurl is
not installed here, so its one step is done the way grpcurl does it: the request JSON is parsed
into Triton's ``ModelInferRequest`` by ``google.protobuf.json_format`` and sent with plain gRPC,
and the answer is written back as JSON with protobuf's JSON names.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from client_servers import dark_jpeg, standin_repository
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from fashionbox import contract
from fashionbox.client import ClientConfig, FashionClient, ImageDetections
from fashionbox.v1 import detections_pb2

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "client" / "fashionbox" / "v1" / "detections.proto"
README = ROOT / "client" / "README.md"
needs_shell = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("bash", "base64", "jq", "tail", "wc")),
    reason="the README's shell blocks need bash, coreutils and jq",
)


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- marker: ... -->`` in the client README."""
    match = re.search(rf"<!-- {re.escape(marker)}:[^>]*-->\s*```[a-z]*\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, f"client/README.md has no block marked {marker!r}"
    return match.group(1)


def run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with a ``protoc`` on PATH that is grpc_tools' protoc."""
    shim = cwd / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "protoc").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m grpc_tools.protoc "$@"\n')
    (shim / "protoc").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}{os.pathsep}{os.environ['PATH']}")
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    return completed


# -- without a server -----------------------------------------------------------------------------------


def test_the_contract_table_in_the_readme_is_the_contract() -> None:
    table = README.read_text().split("<!-- contract-table:", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| input") or line.startswith("| output")]
    documented = [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]

    specs = [("input", spec) for spec in contract.ENSEMBLE_INPUTS] + [
        ("output", spec) for spec in contract.ENSEMBLE_OUTPUTS
    ]
    assert [row[:4] for row in documented] == [
        [direction, spec.name, spec.datatype, json.dumps([-1, *spec.dims])] for direction, spec in specs
    ]
    assert [row[4] for row in documented] == [spec.doc for _, spec in specs]


def copy_schema(folder: Path) -> None:
    """The schema as the client's README finds it: ``fashionbox/v1/detections.proto`` under its folder."""
    target = folder / "fashionbox" / "v1"
    target.mkdir(parents=True)
    shutil.copy(SCHEMA, target / SCHEMA.name)


def test_the_python_stub_command_in_the_readme_generates_a_module_that_decodes_results(tmp_path: Path) -> None:
    copy_schema(tmp_path)
    (tmp_path / "gen").mkdir()
    command = readme_block("python-stubs").replace("python ", f'"{sys.executable}" ', 1)

    run_bash(command, tmp_path)

    generated = tmp_path / "gen" / "fashionbox" / "v1" / "detections_pb2.py"
    assert generated.is_file()
    assert (generated.with_suffix(".pyi")).is_file()


@needs_shell
def test_the_request_block_prefixes_the_image_with_its_little_endian_length(tmp_path: Path) -> None:
    image = dark_jpeg(3, size=(300, 200))
    (tmp_path / "look.jpg").write_bytes(image)

    run_bash(readme_block("build-request"), tmp_path)

    request = json.loads((tmp_path / "request.json").read_text())
    raw = base64.b64decode(request["raw_input_contents"][0])
    assert raw[:4] == len(image).to_bytes(4, "little")
    assert raw[4:] == image


# -- against a server --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(triton_server: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")
    endpoint: str = triton_server(standin_repository(tmp_path_factory)).endpoints.grpc
    return endpoint


def model_infer(url: str, request_json: str) -> str:
    """What ``grpcurl -d @ <url> inference.GRPCInferenceService/ModelInfer`` does, in Python."""
    request = json_format.Parse(request_json, service_pb2.ModelInferRequest())
    with grpc.insecure_channel(url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    answer: str = json_format.MessageToJson(response)
    return answer


@pytest.mark.integration
@needs_shell
def test_the_worked_example_round_trips_and_decodes_to_the_typed_clients_result(url: str, tmp_path: Path) -> None:
    image = dark_jpeg(11, size=(320, 240))
    (tmp_path / "look.jpg").write_bytes(image)
    copy_schema(tmp_path)

    run_bash(readme_block("build-request"), tmp_path)
    (tmp_path / "response.json").write_text(model_infer(url, (tmp_path / "request.json").read_text()))
    decoded = run_bash(readme_block("decode-response"), tmp_path).stdout

    from google.protobuf import text_format

    message = text_format.Parse(decoded, detections_pb2.ImageDetections())
    with FashionClient(config=ClientConfig(url=url)) as client:
        typed = client.detect(image)
    assert ImageDetections.from_proto(message) == typed
    assert (message.width, message.height) == (320, 240)
    assert len(message.detections) == len(typed) > 0


@pytest.mark.integration
def test_bytes_contents_need_no_length_prefix(url: str) -> None:
    image = dark_jpeg(12)
    request = {
        "model_name": contract.ENSEMBLE_MODEL,
        "inputs": [
            {"name": "IMAGE", "datatype": "BYTES", "shape": [1, 1], "contents": {"bytes_contents": [_b64(image)]}}
        ],
        "outputs": [{"name": "DETECTIONS"}],
    }

    response = json.loads(model_infer(url, json.dumps(request)))

    raw = base64.b64decode(response["rawOutputContents"][0])
    length = int.from_bytes(raw[:4], "little")
    assert length == len(raw) - 4
    message = detections_pb2.ImageDetections.FromString(raw[4:])
    with FashionClient(config=ClientConfig(url=url)) as client:
        assert ImageDetections.from_proto(message) == client.detect(image)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
