"""The secure profile end to end: ``fashionbox serve --secure`` with mutual TLS and an admin key.

One real server, started through the command line exactly as an operator would start it (key in a
file, certificates made here), on the stand-in models. Inference stays open to any client holding a
certificate the CA signed; every admin API answers only callers that send the key, on gRPC and HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from client_servers import image_set, standin_repository
from pki import ca_pem, issue, make_ca
from tritonclient.utils import InferenceServerException

from fashionbox import contract
from fashionbox.client import AccessDenied, ClientConfig, FashionClient, RetryPolicy, TlsConfig
from fashionbox.server import find_free_ports

pytestmark = pytest.mark.integration
pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")

ADMIN_KEY = "fashionbox-test-admin-key-0123456789"
EXIT_TIMEOUT_S = 5


@dataclass(frozen=True)
class SecureServer:
    process: subprocess.Popen[bytes]
    grpc: str
    http: str
    ca: Path
    client_key: Path
    client_cert: Path
    log: Path

    def client_config(self, **changes: object) -> ClientConfig:
        tls = TlsConfig(root_certificates=self.ca, private_key=self.client_key, certificate_chain=self.client_cert)
        return ClientConfig(url=self.grpc, tls=tls, retry=RetryPolicy.disabled(), **changes)  # type: ignore[arg-type]

    def grpc_client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(
            self.grpc,
            ssl=True,
            root_certificates=str(self.ca),
            private_key=str(self.client_key),
            certificate_chain=str(self.client_cert),
        )


def _wait_ready(server: SecureServer, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"fashionbox serve exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{server.http}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout_s} s:\n{server.log.read_text()}")


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    folder = tmp_path_factory.mktemp("secure")
    ca = make_ca("FashionBox secure-profile CA")
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_pem(ca))
    server_key, server_cert = issue(ca, "fashionbox.test", server=True).write(folder, "server")
    client_key, client_cert = issue(ca, "search-backend", server=False).write(folder, "client")
    key_file = folder / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")
    key_file.chmod(0o600)
    grpc_port, http_port, metrics_port = find_free_ports(3)
    log = folder / "serve.log"
    command = [
        sys.executable, "-m", "fashionbox.commands.cli", "serve", "--secure",
        "--repository", str(standin_repository(tmp_path_factory)),
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
        "--tls-cert", str(server_cert), "--tls-key", str(server_key), "--tls-client-ca", str(ca_file),
        "--admin-key-file", str(key_file), "--exit-timeout-s", str(EXIT_TIMEOUT_S),
        "--log-file", str(folder / "triton.log"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHIONBOX_")}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = SecureServer(
        process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", ca_file, client_key, client_cert, log
    )
    try:
        _wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=EXIT_TIMEOUT_S + 15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _http_status(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# -- what stays open ----------------------------------------------------------------------------------


def test_inference_needs_a_client_certificate_but_no_admin_key(secure: SecureServer) -> None:
    with FashionClient(config=secure.client_config()) as client:
        result = client.detect(image_set(1)[0])

    assert result.width > 0


def test_the_serve_banner_names_the_transport_and_the_restriction_but_never_the_key(secure: SecureServer) -> None:
    banner = secure.log.read_text()

    assert "mutual TLS; admin APIs restricted to the admin key" in banner
    assert "starting tritonserver:" in banner and "admin-key=<redacted>" in banner
    assert ADMIN_KEY not in banner


def _private_triton_address(secure: SecureServer) -> str:
    match = re.search(r"front door: messages over \d+ bytes refused; Triton on (127\.0\.0\.1:\d+)",
                      secure.log.read_text())
    assert match, "the banner names the front door and Triton's private port"
    return match[1]


def test_behind_the_front_door_tritons_private_port_takes_neither_plaintext_nor_the_clients_certificate(
    secure: SecureServer,
) -> None:
    # The door holds the operator's TLS; the hop to Triton has its own mutual TLS, made at each start,
    # so a local user reaching the loopback port gets no way past the client certificates.
    private = _private_triton_address(secure)
    assert private != secure.grpc
    with grpcclient.InferenceServerClient(secure.grpc, ssl=True, root_certificates=str(secure.ca),
                                          private_key=str(secure.client_key),
                                          certificate_chain=str(secure.client_cert)) as through_the_door:
        assert through_the_door.is_server_live()
    attempts = [
        grpcclient.InferenceServerClient(private),
        grpcclient.InferenceServerClient(private, ssl=True, root_certificates=str(secure.ca),
                                         private_key=str(secure.client_key), certificate_chain=str(secure.client_cert)),
    ]
    for client in attempts:
        with client, pytest.raises(InferenceServerException):
            client.is_server_live(client_timeout=5)
    # The control: the hop's own certificates (named on Triton's command line in the log) get in.
    hop = re.search(r"--grpc-root-cert=(\S+)/ca\.pem", secure.log.read_text())
    assert hop, "Triton is told to require the hop's client certificate"
    folder = Path(hop[1])
    with grpcclient.InferenceServerClient(private, ssl=True, root_certificates=str(folder / "ca.pem"),
                                          private_key=str(folder / "door.key"),
                                          certificate_chain=str(folder / "door.pem")) as door:
        assert door.is_server_live()


def test_health_and_metadata_stay_open_over_http(secure: SecureServer) -> None:
    assert _http_status(f"{secure.http}/v2/health/ready") == 200
    assert _http_status(f"{secure.http}/v2/models/{contract.ENSEMBLE_MODEL}") == 200


# -- HTTP, the plaintext side door ----------------------------------------------------------------------


def test_plaintext_http_inference_is_refused_without_the_key(secure: SecureServer) -> None:
    # HTTP has no TLS: without this a local caller would infer past the client certificates.
    body = b'{"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": ["not an image"]}]}'
    url = f"{secure.http}/v2/models/{contract.ENSEMBLE_MODEL}/infer"

    assert _http_status(url, data=body) == 403
    assert _http_status(url, headers={contract.ADMIN_KEY_NAME: ADMIN_KEY}, data=body) != 403  # past the door
    assert "(plaintext; inference needs the admin key; bodies over" in secure.log.read_text()


def _serve_refusal(tmp_path: Path, *extra: str, key_mode: int = 0o600) -> subprocess.CompletedProcess[str]:
    ca = make_ca("refusal CA")
    server_key, server_cert = issue(ca, "fashionbox.test", server=True).write(tmp_path, "server")
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")
    key_file.chmod(key_mode)
    command = [
        sys.executable, "-m", "fashionbox.commands.cli", "serve", "--secure", "--repository", str(tmp_path),
        "--tls-cert", str(server_cert), "--tls-key", str(server_key), "--admin-key-file", str(key_file), *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHIONBOX_")}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_the_secure_profile_refuses_to_start_with_http_off_loopback(tmp_path: Path) -> None:
    result = _serve_refusal(tmp_path, "--host", "0.0.0.0", "--http-host", "0.0.0.0")

    assert result.returncode == 2, result.stderr
    assert "the secure profile serves HTTP on loopback only" in result.stderr and "--no-http" in result.stderr


def test_serve_refuses_an_admin_key_file_other_users_may_read(tmp_path: Path) -> None:
    result = _serve_refusal(tmp_path, key_mode=0o644)

    assert result.returncode == 2, result.stderr
    assert "is open to other users (mode 0644): run chmod 600" in result.stderr
    assert ADMIN_KEY not in result.stderr + result.stdout


# -- FashionBox's own tools ------------------------------------------------------------------------------


def _tool(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``fashionbox ARGS`` in this process: its exit code, stdout and stderr."""
    from fashionbox.commands.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_line_tools_reach_the_secure_server_with_its_certificates_and_key(
    secure: SecureServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """detect and eval (and the catalog's commands, the same flags) as an operator runs them against the
    secure profile: the CA, this client's certificate and key, the admin key for what it guards."""
    for name in [n for n in os.environ if n.startswith("FASHIONBOX_")]:
        monkeypatch.delenv(name)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_set(1)[0])
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")
    tls = ["--tls-ca", str(secure.ca), "--tls-cert", str(secure.client_cert), "--tls-key", str(secure.client_key)]

    code, out, err = _tool(capsys, "detect", str(photo), "--url", secure.grpc, "--json", *tls)
    assert code == 0, err
    answer = json.loads(out.splitlines()[0])
    with FashionClient(config=secure.client_config()) as client:
        assert answer["detections"] == client.detect(photo.read_bytes()).to_dict()["detections"]
    for missing in (["--tls-ca", str(secure.ca)], []):  # no client certificate; no TLS at all
        code, _, err = _tool(capsys, "detect", str(photo), "--url", secure.grpc, *missing)
        assert code == 1 and f"{photo}: " in err, err

    # eval reads the label map, which the secure profile keeps behind the admin key
    code, _, err = _tool(capsys, "eval", "--url", secure.grpc, "--images", "2", "--json", *tls)
    assert code == 2 and "AccessDenied" in err and "give it with --admin-key-file FILE" in err, err
    code, out, err = _tool(capsys, "eval", "--url", secure.grpc, "--images", "2", "--json", *tls,
                           "--admin-key-file", str(key_file))
    assert code == 0 and json.loads(out)["source"] == f"served at {secure.grpc}", err

    # the same connection from the client's variables instead of flags
    monkeypatch.setenv("FASHIONBOX_TLS_ROOT_CERTIFICATES", str(secure.ca))
    monkeypatch.setenv("FASHIONBOX_TLS_PRIVATE_KEY", str(secure.client_key))
    monkeypatch.setenv("FASHIONBOX_TLS_CERTIFICATE_CHAIN", str(secure.client_cert))
    code, out, err = _tool(capsys, "detect", str(photo), "--url", secure.grpc, "--json")
    assert code == 0 and json.loads(out.splitlines()[0])["detections"] == answer["detections"], err
    code, _, err = _tool(capsys, "detect", str(photo), "--url", secure.grpc, "--tls-cert", str(tmp_path / "nope.pem"),
                         "--tls-key", str(secure.client_key))
    assert code == 2 and "--tls-cert" in err and "nope.pem" in err, err


def test_the_catalog_indexes_and_asks_the_secure_server_with_the_same_flags(
    secure: SecureServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import tempfile

    from fashionbox.catalog.database import stop_embedded

    for name in [n for n in os.environ if n.startswith("FASHIONBOX_")]:
        monkeypatch.delenv(name)
    # Not under pytest's tmp: as root the embedded PostgreSQL runs as its own user, which must reach it.
    folder = Path(tempfile.mkdtemp(prefix="fashionbox-secure-catalog-"))
    folder.chmod(0o755)
    try:
        photos = folder / "photos"
        photos.mkdir()
        for index, data in enumerate(image_set(3)):
            (photos / f"photo-{index}.jpg").write_bytes(data)
        new_photo = folder / "new.jpg"
        new_photo.write_bytes(image_set(4)[3])
        tls = ["--tls-ca", str(secure.ca), "--tls-cert", str(secure.client_cert), "--tls-key", str(secure.client_key)]
        where = ["--catalog", str(folder / "catalog"), "--url", secure.grpc]

        code, _, err = _tool(capsys, "catalog", "index", str(photos), *where, "--quiet")
        assert code == 1 and "0 indexed" in err and "3 deferred" in err, err  # plaintext: left for a next run
        code, out, err = _tool(capsys, "catalog", "index", str(photos), *where, "--json", "--quiet", *tls)
        assert code == 0 and json.loads(out)["indexed"] == 3, err
        # Ray's workers get the certificates as bytes (no files on their machines): without them the
        # handshake fails and every photo is deferred, as in plaintext above.
        more = folder / "more"
        more.mkdir()
        for index, data in enumerate(image_set(6)[4:]):
            (more / f"more-{index}.jpg").write_bytes(data)
        code, out, err = _tool(capsys, "catalog", "index", str(more), *where, "--json", "--quiet", "--ray", *tls)
        assert code == 0 and json.loads(out)["indexed"] == 2, err
        # the stand-ins send no garment vectors, so a new photo's "more like this" stops there, past TLS
        code, _, err = _tool(capsys, "catalog", "similar", str(new_photo), *where, *tls)
        assert code == 2 and "the server sends no garment vectors" in err, err
        code, _, err = _tool(capsys, "catalog", "similar", str(new_photo), *where)
        assert code == 2 and "could not detect in it" in err, err
        _the_catalog_page_uploads_through_tls(folder / "catalog", secure, tls, new_photo.read_bytes())
    finally:
        stop_embedded(folder / "catalog" / "postgres")
        shutil.rmtree(folder, ignore_errors=True)


def _the_catalog_page_uploads_through_tls(catalog: Path, secure: SecureServer, tls: list[str], photo: bytes) -> None:
    """The page's upload: detected by the secure server with the connection `catalog web` builds from the
    flags, then saved and indexed; with no connection the server is not reached."""
    import argparse

    from catalog_collection import serve_web

    from fashionbox.catalog.database import Database
    from fashionbox.catalog.web import WebSettings, create_app
    from fashionbox.client.connection import add_connection_arguments, connection_from_arguments

    parser = argparse.ArgumentParser()
    add_connection_arguments(parser)
    connection = connection_from_arguments(parser.parse_args(tls), environ={})
    boundary = "fashionbox-secure-upload"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="new.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def post(address: str, data: bytes, headers: dict[str, str]) -> tuple[int, str, str]:
        """The status, body and final address (redirects followed)."""
        request = urllib.request.Request(address, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return int(response.status), response.read().decode(), str(response.url)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), address

    db = Database.open(catalog=catalog)
    with serve_web(create_app(db, WebSettings(url=secure.grpc))) as plain:
        status, body, _ = post(f"{plain}/upload", form, headers)
        assert status == 502 and "could not detect" in body, body
    with serve_web(create_app(db, WebSettings(url=secure.grpc, connection=connection))) as page:
        status, body, _ = post(f"{page}/upload", form, headers)
        assert status == 200 and "garments found" in body, body
        token = re.search(r'name="token" value="([0-9a-f]+)"', body)
        assert token is not None, body
        status, body, where = post(f"{page}/upload/save", f"token={token[1]}".encode(),
                                   {"Content-Type": "application/x-www-form-urlencoded"})
        # indexed through the secure server, then shown on its own page
        assert status == 200 and re.search(r"/image/\d+$", where), (where, body)


@pytest.mark.parametrize("sender", ["raw", "tritonclient", "typed"])
def test_the_load_test_measures_the_secure_server_through_every_sender(
    secure: SecureServer, sender: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Capacity planning for the secure profile measures it with TLS on, and reads Triton's statistics
    (behind the admin key there) for the server's breakdown."""
    for name in [n for n in os.environ if n.startswith("FASHIONBOX_")]:
        monkeypatch.delenv(name)
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY)
    tls = ["--tls-ca", str(secure.ca), "--tls-cert", str(secure.client_cert), "--tls-key", str(secure.client_key)]
    run = ["loadtest", "--url", secure.grpc, "--metrics", "none", "--sender", sender, "--concurrency", "2",
           "--generate", "2", "--warmup-s", "0.2", "--window-s", "0.5", "--duration-s", "1", "--quiet",
           "--json", str(tmp_path / "report.json")]

    code, _, err = _tool(capsys, *run, "--tls-ca", str(secure.ca))  # no client certificate: not even ready
    assert code == 1 and "did not answer" in err, err
    code, _, err = _tool(capsys, *run, *tls, "--admin-key-file", str(key_file))
    assert code == 0, err
    (point,) = json.loads((tmp_path / "report.json").read_text())["points"]
    assert point["requests"] > 0 and point["errors"] == 0, point
    # the server's breakdown comes from Triton's statistics, behind the admin key here
    assert {row["model"]: row["requests"] for row in point["server"]}["fashion"] > 0


# -- what the key guards ------------------------------------------------------------------------------


def test_statistics_without_the_key_are_refused_and_with_it_are_served(secure: SecureServer) -> None:
    with FashionClient(config=secure.client_config()) as client, pytest.raises(AccessDenied):
        client.statistics()

    with FashionClient(config=secure.client_config(headers={contract.ADMIN_GRPC_HEADER: ADMIN_KEY})) as client:
        assert {stats.model_name for stats in client.statistics()} >= {contract.ENSEMBLE_MODEL}


def test_the_model_config_without_the_key_is_refused_and_with_it_is_served(secure: SecureServer) -> None:
    with FashionClient(config=secure.client_config()) as client, pytest.raises(AccessDenied):
        client.labels()

    with FashionClient(config=secure.client_config(headers={contract.ADMIN_GRPC_HEADER: ADMIN_KEY})) as client:
        assert client.labels().num_categories > 0


@pytest.mark.parametrize("wrong", ["", "fashionbox-test-admin-key-WRONG"])
def test_the_model_repository_api_refuses_a_missing_or_wrong_key(secure: SecureServer, wrong: str) -> None:
    headers = {contract.ADMIN_GRPC_HEADER: wrong} if wrong else None
    client = secure.grpc_client()
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index(headers=headers)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.unload_model(contract.ENSEMBLE_MODEL, headers=headers)
        assert client.is_model_ready(contract.ENSEMBLE_MODEL)
    finally:
        client.close()


def test_the_model_repository_api_answers_the_key(secure: SecureServer) -> None:
    client = secure.grpc_client()
    try:
        index = client.get_model_repository_index(headers={contract.ADMIN_GRPC_HEADER: ADMIN_KEY}, as_json=True)
    finally:
        client.close()

    assert contract.ENSEMBLE_MODEL in {model["name"] for model in index["models"]}


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/v2/models/stats", None),
        (f"/v2/models/{contract.ENSEMBLE_MODEL}/config", None),
        ("/v2/repository/index", b"{}"),
        ("/v2/logging", None),
        ("/v2/trace/setting", None),
        ("/v2/systemsharedmemory/status", None),
    ],
)
def test_http_admin_apis_need_the_key_too(secure: SecureServer, path: str, data: bytes | None) -> None:
    url = f"{secure.http}{path}"

    refused = _http_status(url, data=data)
    allowed = _http_status(url, headers={contract.ADMIN_KEY_NAME: ADMIN_KEY}, data=data)

    assert refused == 403
    assert allowed == 200


def _drain_cli(secure: SecureServer, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHIONBOX_")}
    if key is not None:
        env["FASHIONBOX_ADMIN_KEY"] = key
    command = [sys.executable, "-m", "fashionbox.server.drain", f"--http-url={secure.http}", "--timeout-s=10"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_drain_command_needs_the_key_and_then_unloads_the_ensemble(
    secure: SecureServer,
) -> None:
    # The operator's tool (a preStop hook, a script before a plain tritonserver stops). Second to last:
    # it unloads.
    refused = _drain_cli(secure, None)
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr, refused.stderr
    assert _http_status(f"{secure.http}/v2/models/{contract.ENSEMBLE_MODEL}/ready") == 200

    drained = _drain_cli(secure, ADMIN_KEY)

    assert drained.returncode == 0, drained.stderr
    assert f"drained {contract.ENSEMBLE_MODEL}" in drained.stderr
    assert _http_status(f"{secure.http}/v2/models/{contract.ENSEMBLE_MODEL}/ready") != 200
    assert ADMIN_KEY not in drained.stderr


def test_sigterm_stops_the_secure_server_cleanly(secure: SecureServer) -> None:
    # Last in the file: the fixture's server is not needed afterwards.
    started = time.monotonic()
    secure.process.send_signal(signal.SIGTERM)
    code = secure.process.wait(timeout=EXIT_TIMEOUT_S + 15)

    assert code == 0
    assert time.monotonic() - started < EXIT_TIMEOUT_S + 15
