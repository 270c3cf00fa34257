"""The embedded Triton server: configuration, command line, and the real process lifecycle."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest

from fashionbox.server import (
    TRITON_HOME_ENV,
    ConfigError,
    PortInUseError,
    RepositoryError,
    ServerConfig,
    ServerStartError,
    TritonServer,
    add_serve_arguments,
    build_command,
    config_from_arguments,
    find_free_ports,
    prepare_backend_directory,
    settings,
    stub_import_paths,
)
from fashionbox.server.config import environment_variables

if TYPE_CHECKING:
    from conftest import TritonServers

# Verbatim from the project's model.py files: the stub ignores PYTHONPATH (see fashionbox.server).
SITE_BOOTSTRAP = """\
import os, site, sys
_before = list(sys.path); [site.addsitedir(f) for f in os.environ.get("FASHIONBOX_SITE_PACKAGES", "").split(os.pathsep)]; sys.path[:0] = [p for p in sys.path if p not in _before]
"""  # noqa: E501

ECHO_MODEL = (
    SITE_BOOTSTRAP
    + '''
import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Returns INPUT unchanged, and the numpy version the stub imported."""

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            version = np.array([[np.__version__.encode()]] * data.shape[0], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT", data), pb_utils.Tensor("NUMPY_VERSION", version)]
                )
            )
        return responses
'''
)

ECHO_CONFIG = """\
backend: "python"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "NUMPY_VERSION" data_type: TYPE_STRING dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def write_model(repository: Path, name: str, model_py: str, config: str = ECHO_CONFIG) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(config)
    (repository / name / "1" / "model.py").write_text(model_py)


@pytest.fixture(scope="session")
def echo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("echo-repository")
    write_model(repository, "echo", ECHO_MODEL)
    return repository


def free_port_config(repository: Path, tmp_path: Path, **fields: object) -> ServerConfig:
    grpc_port, http_port, metrics_port = find_free_ports(3)
    return ServerConfig(
        repository=repository,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        log_path=tmp_path / "tritonserver.log",
        **fields,  # type: ignore[arg-type]
    )


def process_is_gone(pid: int) -> bool:
    """True once ``pid`` has exited; a zombie waiting for a non-reaping init counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def live_processes_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def wait_for(condition: object, timeout_s: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def non_loopback_ipv4() -> str | None:
    """A local non-loopback address, found by routing a UDP socket (which sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


# -- configuration (no server) -------------------------------------------------------------------


def test_config_rejects_a_port_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="grpc_port"):
        ServerConfig(repository=tmp_path, grpc_port=70000)


def test_config_rejects_the_same_port_twice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must differ"):
        ServerConfig(repository=tmp_path, grpc_port=9000, http_port=9000)


def test_config_rejects_extra_args_that_set_a_managed_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--grpc-address"):
        ServerConfig(repository=tmp_path, extra_args=("--grpc-address=0.0.0.0",))


def test_config_rejects_models_to_load_outside_explicit_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="explicit"):
        ServerConfig(repository=tmp_path, load_models=("echo",))


def test_from_env_reads_prefixed_variables_and_parses_booleans_explicitly() -> None:
    config = ServerConfig.from_env(
        environ={
            "FASHIONBOX_REPOSITORY": "/models",
            "FASHIONBOX_GRPC_PORT": "9001",
            "FASHIONBOX_STRICT_READINESS": "false",
            "FASHIONBOX_MODEL_CONTROL_MODE": "explicit",
            "FASHIONBOX_LOAD_MODELS": "echo, fashion",
            "FASHIONBOX_TRITON_ARGS": "--grpc-keepalive-time=10000 --log-info=false",
        }
    )
    assert config == ServerConfig(
        repository=Path("/models"),
        grpc_port=9001,
        strict_readiness=False,
        model_control_mode="explicit",
        load_models=("echo", "fashion"),
        extra_args=("--grpc-keepalive-time=10000", "--log-info=false"),
    )


def test_from_env_rejects_an_unclear_boolean() -> None:
    with pytest.raises(ConfigError, match="FASHIONBOX_STRICT_READINESS"):
        ServerConfig.from_env(environ={"FASHIONBOX_REPOSITORY": "/m", "FASHIONBOX_STRICT_READINESS": "nope"})


def test_from_env_needs_a_repository() -> None:
    with pytest.raises(ConfigError, match="FASHIONBOX_REPOSITORY"):
        ServerConfig.from_env(environ={})


def test_serve_flags_win_over_the_environment() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--http-port", "9100", "--log-verbose", "--triton-arg=--log-info=false"])
    config = config_from_arguments(
        args,
        environ={"FASHIONBOX_REPOSITORY": "/models", "FASHIONBOX_HTTP_PORT": "9000", "FASHIONBOX_GRPC_PORT": "9001"},
    )
    assert (config.repository, config.grpc_port, config.http_port) == (Path("/models"), 9001, 9100)
    assert config.log_verbose == 1
    assert config.extra_args == ("--log-info=false",)


# -- settings declared once (fashionbox.server.settings) -------------------------------------------


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser


def test_every_config_field_has_a_flag_and_a_variable_each_named_once() -> None:
    options = {option for action in _serve_parser()._actions for option in action.option_strings}
    flags: list[str] = []
    variables: list[str] = []
    for field in dataclasses.fields(ServerConfig):
        setting = field.metadata.get(settings.SETTING)
        assert setting is not None, f"{field.name} is not declared"
        inputs = [(i.flag, i.variable) for i in setting.inputs]
        assert any(flag for flag, _ in inputs) and any(variable for _, variable in inputs), field.name
        flags += [flag for flag, _ in inputs if flag]
        variables += [variable for _, variable in inputs if variable]
    assert len(flags) == len(set(flags)) and len(variables) == len(set(variables))
    assert set(flags) <= options
    assert variables == environment_variables() and all(v.startswith("FASHIONBOX_") for v in variables)


# Input name -> (the variable's value, the flags saying the same); every value differs from the default.
SAMPLES: dict[str, tuple[str, list[str]]] = {
    "repository": ("/srv/models", ["--repository=/srv/models"]),
    "host": ("::1", ["--host=::1"]),
    "grpc_port": ("9101", ["--grpc-port=9101"]),
    "http_port": ("9100", ["--http-port=9100"]),
    "http": ("off", ["--no-http"]),
    "http_host": ("::1", ["--http-host=::1"]),
    "http_allowed_hosts": ("models.internal, 10.0.0.7", ["--http-allowed-host=models.internal",
                                                         "--http-allowed-host=10.0.0.7"]),
    "metrics_port": ("9102", ["--metrics-port=9102"]),
    "metrics_allowed_hosts": ("prometheus.internal", ["--metrics-allowed-host=prometheus.internal"]),
    "model_control_mode": ("explicit", ["--model-control-mode=explicit"]),
    "load_models": ("echo, fashion", ["--load-model=echo", "--load-model=fashion"]),
    "strict_readiness": ("off", ["--no-strict-readiness"]),
    "exit_timeout_s": ("7", ["--exit-timeout-s=7"]),
    "startup_timeout_s": ("9.5", ["--startup-timeout-s=9.5"]),
    "log_path": ("/tmp/t.log", ["--log-file=/tmp/t.log"]),
    "log_verbose": ("1", ["--log-verbose"]),
    "front_door": ("on", ["--front-door"]),
    "max_request_bytes": ("5000000", ["--max-request-bytes=5000000"]),
    "python_shm_default_bytes": ("4096", ["--python-shm-default-bytes=4096"]),
    "python_shm_growth_bytes": ("8192", ["--python-shm-growth-bytes=8192"]),
    "extra_args": ("--grpc-keepalive-time=10000 '--log-info=false'",
                   ["--triton-arg=--grpc-keepalive-time=10000", "--triton-arg=--log-info=false"]),
    "cache_dir": ("/var/cache/fb", ["--cache-dir=/var/cache/fb"]),
    "tls_cert": ("{pem}/server.crt", ["--tls-cert={pem}/server.crt"]),
    "tls_key": ("{pem}/server.key", ["--tls-key={pem}/server.key"]),
    "tls_client_ca": ("{pem}/ca.crt", ["--tls-client-ca={pem}/ca.crt"]),
    "admin_key_file": ("{pem}/admin.key", ["--admin-key-file={pem}/admin.key"]),
    "secure": ("yes", ["--secure"]),
    "drain_on_stop": ("0", ["--no-drain-on-stop"]),
    "ready_file": ("/run/fb/ready", ["--ready-file=/run/fb/ready"]),
}


def test_the_environment_and_the_flags_give_the_same_config(tmp_path: Path) -> None:
    for name in ("server.crt", "server.key", "ca.crt"):
        (tmp_path / name).write_text(f"-----BEGIN {name}-----\n")
    (tmp_path / "admin.key").write_text("admin-key-for-the-same-config-test\n")
    (tmp_path / "admin.key").chmod(0o600)
    declared = {i.name: i for _, setting in settings.declared(ServerConfig) for i in setting.inputs}
    flagged = {name for name, source in declared.items() if source.flag is not None}
    assert set(SAMPLES) == flagged, "a declared input without a sample here (or a sample of no input)"

    environ = {declared[name].variable or "": value.format(pem=tmp_path) for name, (value, _) in SAMPLES.items()}
    words = [word.format(pem=tmp_path) for _, flags in SAMPLES.values() for word in flags]
    from_env = ServerConfig.from_env(environ=environ)
    from_flags = config_from_arguments(_serve_parser().parse_args(words), environ={})

    assert from_env == from_flags
    for field in dataclasses.fields(ServerConfig):
        if field.default is not dataclasses.MISSING:
            assert getattr(from_env, field.name) != field.default, f"the sample leaves {field.name} at its default"
    assert from_env.tls is not None and from_env.tls.mutual
    assert from_env.admin_key == "admin-key-for-the-same-config-test"
    # The key itself comes from the environment only (never a flag: shell history).
    key_only = ServerConfig.from_env(environ={"FASHIONBOX_REPOSITORY": "/m", "FASHIONBOX_ADMIN_KEY": "k" * 20})
    assert key_only.admin_key == "k" * 20


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GRPC_PORT", "80O1", "FASHIONBOX_GRPC_PORT must be an integer, got '80O1'"),
        ("STARTUP_TIMEOUT_S", "soon", "FASHIONBOX_STARTUP_TIMEOUT_S must be a number, got 'soon'"),
        ("MODEL_CONTROL_MODE", "poll", "FASHIONBOX_MODEL_CONTROL_MODE must be one of none, explicit, got 'poll'"),
        ("SECURE", "si", "FASHIONBOX_SECURE must be one of true/false/1/0/yes/no/on/off, got 'si'"),
        ("DRAIN_ON_STOP", "2", "FASHIONBOX_DRAIN_ON_STOP must be one of true/false"),
        ("TRITON_ARGS", "--log-info='false", "FASHIONBOX_TRITON_ARGS must be shell words"),
        ("TLS_CLIENT_CA", "/ca.crt", "TLS needs both a certificate and a private key"),
        ("ADMIN_KEY", "short", "at least 16"),
        ("GRPC_PORT", "0", "grpc_port must be an integer in 1..65535"),
    ],
)
def test_unclear_values_in_the_environment_are_refused_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ServerConfig.from_env(environ={"FASHIONBOX_REPOSITORY": "/m", f"FASHIONBOX_{variable}": value})


def test_an_unclear_flag_value_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _serve_parser().parse_args(["--grpc-port=80O1"])
    assert "argument --grpc-port: expected an integer, got '80O1'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _serve_parser().parse_args(["--model-control-mode=poll"])
    assert "invalid choice: 'poll'" in capsys.readouterr().err


def test_the_server_modules_import_each_other_without_a_circle_nor_the_converter() -> None:
    package = Path(settings.__file__).parent
    parts = {f"fashionbox.server.{path.stem}": path for path in package.glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for module, path in parts.items():
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                # "from fashionbox.server import settings" imports the part, not the facade.
                names |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in parts else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        assert not any(name.startswith("fashionbox.converter") for name in names), path.name
        assert "fashionbox.server" not in names, f"{path.name} imports the facade"
        graph[module] = {name for name in names if name in parts and name != module}
    done: list[str] = []
    while len(done) < len(graph):  # peel off the parts whose imports are all done: a DAG peels to the end
        ready = sorted(m for m in graph if m not in done and graph[m] <= set(done))
        assert ready, f"an import circle among {sorted(set(graph) - set(done))}"
        done += ready


def test_command_binds_every_service_to_the_configured_host_only(tmp_path: Path) -> None:
    config = ServerConfig(repository=tmp_path, grpc_port=9001, http_port=9000, metrics_port=9002)
    command = build_command(
        config, binary=Path("/bin/tritonserver"), backend_directory=Path("/backends"), launcher_key=LOCK_KEY
    )
    for service in ("grpc", "http", "metrics"):
        assert f"--{service}-address=127.0.0.1" in command
    assert "--grpc-port=9001" in command
    assert f"--model-repository={tmp_path.resolve()}" in command


LOCK_KEY = "lock-key-known-to-the-wrapper-only"


def _control_flags(command: list[str]) -> list[str]:
    prefixes = ("--model-control-mode", "--load-model", "--grpc-restricted-protocol", "--http-restricted-api")
    return [word for word in command if word.startswith(prefixes)]


def test_mode_none_runs_triton_explicit_with_every_model_and_the_repository_api_locked(tmp_path: Path) -> None:
    # So stop() can drain (unload the ensemble first) while nobody else can load or unload; shared
    # memory, trace and logging are closed with the same key, which only the launcher knows.
    command = build_command(
        ServerConfig(repository=tmp_path), binary=Path("t"), backend_directory=Path("b"), launcher_key=LOCK_KEY
    )

    assert _control_flags(command) == [
        "--model-control-mode=explicit",
        "--load-model=*",
        f"--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:admin-key={LOCK_KEY}",
        f"--http-restricted-api=model-repository,shared-memory,trace,logging:admin-key={LOCK_KEY}",
    ]


def test_an_admin_key_locks_the_repository_api_with_the_other_admin_apis(tmp_path: Path) -> None:
    config = ServerConfig(repository=tmp_path, admin_key="admin-key-of-the-operator")

    command = build_command(config, binary=Path("t"), backend_directory=Path("b"))

    restriction = "model-repository,model-config,shared-memory,statistics,trace,logging:admin-key=" + config.admin_key
    assert _control_flags(command)[2:] == [
        f"--grpc-restricted-protocol={restriction}", f"--http-restricted-api={restriction}"]


def test_without_draining_mode_none_is_triton_mode_none(tmp_path: Path) -> None:
    config = ServerConfig(repository=tmp_path, drain_on_stop=False)
    command = build_command(config, binary=Path("t"), backend_directory=Path("b"), launcher_key=LOCK_KEY)

    assert _control_flags(command)[0] == "--model-control-mode=none"
    assert "--load-model=*" not in command


def test_a_command_without_any_key_is_refused(tmp_path: Path) -> None:
    # Without an admin key the launcher's key closes the side doors: no command without one.
    for config in (ServerConfig(repository=tmp_path), ServerConfig(repository=tmp_path, drain_on_stop=False)):
        with pytest.raises(ConfigError, match="needs a launcher key"):
            build_command(config, binary=Path("t"), backend_directory=Path("b"))


# -- start-up checks (no server process) ---------------------------------------------------------


def test_a_missing_repository_raises_repository_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        TritonServer(free_port_config(tmp_path / "nowhere", tmp_path)).start()


def test_an_empty_repository_raises_repository_error(tmp_path: Path) -> None:
    (tmp_path / "repository").mkdir()
    with pytest.raises(RepositoryError, match="holds no model"):
        TritonServer(free_port_config(tmp_path / "repository", tmp_path)).start()


def test_a_taken_port_raises_port_in_use_error_naming_the_port(echo_repository: Path, tmp_path: Path) -> None:
    config = free_port_config(echo_repository, tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", config.http_port))
        squatter.listen()
        server = TritonServer(config)
        with pytest.raises(PortInUseError, match=f"port {config.http_port} \\(http\\).*--http-port") as caught:
            server.start()
    assert caught.value.port == config.http_port
    assert server.pid is None  # refused before starting anything


# -- a real server -------------------------------------------------------------------------------


@pytest.fixture
def echo_server(triton_server: TritonServers, echo_repository: Path) -> TritonServer:
    return triton_server(echo_repository)


@pytest.mark.integration
def test_the_drain_over_grpc_is_refused_without_the_key_and_says_so(
    echo_server: TritonServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The repository API is locked behind the launcher's key on gRPC too: a drain without it changes nothing.
    from fashionbox.server.drain import GrpcRepositoryApi, drain, unload_all

    api = GrpcRepositoryApi(echo_server.upstream_grpc)
    try:
        with caplog.at_level(logging.WARNING, logger="fashionbox.server.drain"):
            assert drain(api, timeout_s=5) is False
            assert unload_all(api, timeout_s=5) is False
    finally:
        api.close()
    assert "could not drain fashion before stopping: gRPC" in caplog.text
    assert "could not unload every model before stopping: gRPC" in caplog.text and "restricted" in caplog.text
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(echo_server.endpoints.grpc)
    try:
        assert client.is_model_ready("echo")
    finally:
        client.close()


@pytest.mark.integration
def test_the_drain_command_drains_a_server_without_http_over_grpc(echo_repository: Path, tmp_path: Path) -> None:
    # The operator's tool for a Triton started some other way, here one without HTTP: refused without the key
    # (the repository API is locked), then the model is unloaded.
    import tritonclient.grpc as grpcclient

    with TritonServer(free_port_config(echo_repository, tmp_path, http=False)) as server:
        (key,) = re.findall(r"--grpc-restricted-protocol=\S+:admin-key=(\S+)", " ".join(server.command))
        env = {name: value for name, value in os.environ.items() if not name.startswith("FASHIONBOX_")}
        command = [sys.executable, "-m", "fashionbox.server.drain", f"--grpc-url={server.endpoints.grpc}",
                   "--model=echo", "--timeout-s=10"]
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 1 and "could not drain echo before stopping: gRPC" in refused.stderr
        drained = subprocess.run(command, env={**env, "FASHIONBOX_ADMIN_KEY": key}, capture_output=True, text=True,
                                 timeout=60, check=False)
        assert drained.returncode == 0 and "drained echo" in drained.stderr, drained.stderr
        assert key not in drained.stderr
        client = grpcclient.InferenceServerClient(server.endpoints.grpc)
        try:
            assert not client.is_model_ready("echo")
        finally:
            client.close()


@pytest.fixture
def grpc_client(echo_server: TritonServer) -> Iterator[object]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(echo_server.endpoints.grpc)
    try:
        yield client
    finally:
        client.close()


def infer_echo(client: object, data: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("INPUT", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("echo", [tensor])  # type: ignore[attr-defined]
    output, version = result.as_numpy("OUTPUT"), result.as_numpy("NUMPY_VERSION")
    assert output is not None and version is not None, "a requested output is missing"
    return output, version


@pytest.mark.integration
def test_server_answers_grpc_inference(grpc_client: object) -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    output, _ = infer_echo(grpc_client, data)
    np.testing.assert_array_equal(output, data)


@pytest.mark.integration
def test_python_backend_model_sees_numpy_1_and_returns_non_empty_outputs(grpc_client: object) -> None:
    output, version = infer_echo(grpc_client, np.ones((1, 4), dtype=np.float32))
    assert output.size == 4  # numpy 2 in the stub empties outputs silently (docs/FIELD_NOTES.md)
    stub_numpy = version[0, 0].decode()
    assert stub_numpy.split(".")[0] == "1", f"the stub imported numpy {stub_numpy}"


def test_stub_import_paths_put_pythonpath_before_site_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(first), "", str(second)]))
    paths = stub_import_paths()
    assert paths[:2] == [str(first), str(second)]
    assert sysconfig.get_paths()["purelib"] in paths[2:]
    assert len(paths) == len(set(paths))


@pytest.mark.integration
def test_models_import_from_the_servers_pythonpath(
    triton_server: TritonServers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a GPU image needs: numpy 1.x installed with `pip install --target DIR` over the image's
    # numpy 2, reaching the stubs (which ignore PYTHONPATH) through FASHIONBOX_SITE_PACKAGES.
    extra = tmp_path / "extra-site"
    extra.mkdir()
    (extra / "fashionbox_path_probe.py").write_text("OFFSET = 41.0\n")
    monkeypatch.setenv("PYTHONPATH", str(extra))
    repository = tmp_path / "repository"
    write_model(repository, "echo", ECHO_MODEL.replace(
        'pb_utils.Tensor("OUTPUT", data)', 'pb_utils.Tensor("OUTPUT", data + fashionbox_path_probe.OFFSET)'
    ).replace("import numpy as np\n", "import numpy as np\nimport fashionbox_path_probe\n", 1))
    server = triton_server(repository)

    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        output, _ = infer_echo(client, np.ones((1, 2), dtype=np.float32))
    finally:
        client.close()
    np.testing.assert_array_equal(output, np.full((1, 2), 42.0, dtype=np.float32))


def _installed_triton(home: Path, backends: Path) -> Path:
    """An installed Triton's layout (as /opt/tritonserver in NGC's image), made of the wheel's files."""
    from fashionbox.server import find_triton_distribution

    wheel = find_triton_distribution()
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "tritonserver").symlink_to(wheel.binary)
    (home / "lib").symlink_to(wheel.libs)
    (home / "backends").symlink_to(backends)
    (home / "TRITON_VERSION").write_text("2.51.0\n")
    return home


def test_an_installed_triton_without_a_binary_or_python_backend_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRITON_HOME_ENV, str(tmp_path))
    with pytest.raises(ServerStartError, match="has no bin/tritonserver"):
        prepare_backend_directory(tmp_path / "cache")
    (tmp_path / "empty-backends").mkdir()
    monkeypatch.delenv(TRITON_HOME_ENV)
    home = _installed_triton(tmp_path / "home", tmp_path / "empty-backends")
    monkeypatch.setenv(TRITON_HOME_ENV, str(home))
    with pytest.raises(ServerStartError, match="has no python backend"):
        prepare_backend_directory(tmp_path / "cache")


@pytest.mark.integration
def test_an_installed_triton_named_by_the_environment_is_run_with_its_own_backends(
    triton_server: TritonServers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _installed_triton(tmp_path / "opt-tritonserver", prepare_backend_directory(tmp_path / "cache"))
    monkeypatch.setenv(TRITON_HOME_ENV, str(home))
    repository = tmp_path / "repository"
    write_model(repository, "echo", ECHO_MODEL)
    server = triton_server(repository)
    assert server.command[0] == str(home / "bin" / "tritonserver")
    assert f"--backend-directory={home / 'backends'}" in server.command

    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        output, _ = infer_echo(client, np.arange(3, dtype=np.float32).reshape(1, 3))
    finally:
        client.close()
    np.testing.assert_array_equal(output, np.arange(3, dtype=np.float32).reshape(1, 3))


@pytest.mark.integration
def test_server_listens_on_loopback_only(echo_server: TritonServer) -> None:
    for service in ("grpc", "http", "metrics"):
        assert f"--{service}-address=127.0.0.1" in echo_server.command
    port = echo_server.config.grpc_port
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=2).close()


@pytest.mark.integration
def test_log_file_holds_the_server_output(echo_server: TritonServer) -> None:
    assert echo_server.log_path is not None
    log = echo_server.log_path.read_text()
    # Behind the front door (fashionbox.server.front_door) Triton's gRPC listens on a private loopback port.
    assert f"Started GRPCInferenceService at {echo_server.upstream_grpc}" in log
    assert "successfully loaded 'echo'" in log


@pytest.mark.integration
@pytest.mark.parametrize(("front_door", "http"), [(None, True), (True, True), (None, False), (True, False)],
                         ids=["http-door", "grpc-and-http-door", "no-http", "grpc-door-no-http"])
def test_stop_ends_the_server_gracefully(echo_repository: Path, tmp_path: Path, front_door: bool | None,
                                         http: bool) -> None:
    # The door's connections to Triton's HTTP (the readiness checks went through it) must not hold Triton's
    # exit: it waits for open HTTP connections up to its exit timeout, past stop()'s 10 s, then gets killed.
    # Without HTTP the models are unloaded over gRPC (Triton's own, or its private port behind the door).
    config = free_port_config(echo_repository, tmp_path, front_door=front_door, http=http)
    with TritonServer(config) as server:
        pid = server.pid
        assert pid is not None and server.is_alive()
        started = time.monotonic()
    assert time.monotonic() - started < 10
    assert server.returncode == 0
    assert process_is_gone(pid)
    assert live_processes_in_group(pid) == []  # the python-backend stubs too
    # Triton's exit looks once a second for open HTTP connections and live models and waits while there
    # are any: stop() closed the door's HTTP side and unloaded every model first, so it found none.
    assert config.log_path is not None
    exit_log = config.log_path.read_text().split("Signal (15) received.")[-1]
    assert "HTTP service connections" not in exit_log
    assert re.findall(r"Found (\d+) live models", exit_log) == ["0"]


@pytest.mark.integration
def test_a_tls_server_without_http_drains_over_the_doors_own_tls(echo_repository: Path, tmp_path: Path) -> None:
    # Mutual TLS at the door and no HTTP: the drain and the unloading go to Triton's private port with the
    # hop's own certificates (the clients' would not do); the exit then finds no live model.
    from pki import ca_pem, issue, make_ca

    from fashionbox.server.security import ServerTls

    ca = make_ca("stop-test-ca")
    key, cert = issue(ca, "localhost", server=True).write(tmp_path, "server")
    (tmp_path / "ca.pem").write_bytes(ca_pem(ca))
    config = free_port_config(echo_repository, tmp_path, http=False, front_door=True,
                              tls=ServerTls(cert, key, tmp_path / "ca.pem"))
    with TritonServer(config) as server:
        assert server.upstream_grpc != server.endpoints.grpc
    assert server.returncode == 0 and config.log_path is not None
    exit_log = config.log_path.read_text().split("Signal (15) received.")[-1]
    assert re.findall(r"Found (\d+) live models", exit_log) == ["0"]


SLEEPY_FINALIZE_MODEL = (
    ECHO_MODEL
    + """
    def finalize(self):
        import time
        time.sleep(120)  # holds up unloading, so a graceful stop cannot finish
"""
)


@pytest.mark.integration
def test_stop_kills_a_server_that_does_not_exit_within_the_timeout(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "sleepy", SLEEPY_FINALIZE_MODEL)
    server = TritonServer(free_port_config(repository, tmp_path))
    with server:
        pid = server.pid
        assert pid is not None
        started = time.monotonic()
        server.stop(timeout_s=1.0)
        took_s = time.monotonic() - started
    assert took_s < 3.0
    assert server.returncode == -signal.SIGKILL
    assert process_is_gone(pid)
    # SIGKILL is delivered at once, but a stub tearing down its memory is still listed for a moment.
    assert wait_for(lambda: live_processes_in_group(pid) == [], 5), live_processes_in_group(pid)


BROKEN_MODEL = (
    SITE_BOOTSTRAP
    + """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("this model refuses to load")
"""
)


@pytest.mark.integration
def test_a_server_that_exits_early_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "broken", BROKEN_MODEL)
    server = TritonServer(free_port_config(repository, tmp_path, startup_timeout_s=60.0))
    server.start()
    try:
        started = time.monotonic()
        with pytest.raises(ServerStartError, match="this model refuses to load") as caught:
            server.wait_until_ready()
        assert time.monotonic() - started < 20  # far below startup_timeout_s: it noticed the exit
        assert "refuses to load" in caught.value.log_tail
        assert not server.is_alive()
    finally:
        server.stop(timeout_s=5)


# -- the CLI in a child process ------------------------------------------------------------------


def spawn_serve(
    repository: Path, tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Run ``python -m fashionbox.server`` and wait for its ready banner; returns (process, server pid, output)."""
    grpc_port, http_port, metrics_port = find_free_ports(3)
    output = tmp_path / "serve.out"
    args = [
        *("--repository", str(repository), "--log-file", str(tmp_path / "tritonserver.log")),
        *("--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)),
        *extra,
    ]
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "fashionbox.server", *args], stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        text = output.read_text()
        if "ready (pid " in text:
            server_pid = int(text.split("ready (pid ", 1)[1].split(")", 1)[0])
            return process, server_pid, output
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise AssertionError(f"serve did not become ready:\n{output.read_text()}")


@pytest.mark.integration
def test_serve_stops_cleanly_on_sigterm(echo_repository: Path, tmp_path: Path) -> None:
    process, server_pid, output = spawn_serve(echo_repository, tmp_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0, output.read_text()
    assert process_is_gone(server_pid)
    assert "gRPC     127.0.0.1:" in output.read_text()


@pytest.mark.integration
def test_serve_keeps_a_ready_file_while_every_model_is_ready_and_removes_it_on_stop(
    echo_repository: Path, tmp_path: Path
) -> None:
    ready_file = tmp_path / "probe" / "ready"
    process, _, output = spawn_serve(echo_repository, tmp_path, "--ready-file", str(ready_file))
    try:
        assert wait_for(ready_file.exists, timeout_s=10), output.read_text()
        assert ready_file.read_text().startswith("ready\n")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
    assert code == 0, output.read_text()
    assert not ready_file.exists(), "no ready file once the server is stopped"
    assert f"ready    {ready_file}" in output.read_text()


@pytest.mark.integration
def test_tritonserver_dies_when_its_parent_is_killed(echo_repository: Path, tmp_path: Path) -> None:
    process, server_pid, _ = spawn_serve(echo_repository, tmp_path)
    assert not process_is_gone(server_pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert wait_for(lambda: process_is_gone(server_pid), timeout_s=5), "tritonserver outlived its parent"
    # The stubs are not our children; they notice the server is gone and exit by themselves.
    assert wait_for(lambda: live_processes_in_group(server_pid) == [], timeout_s=15), "stubs outlived the server"


# -- the side doors: closed APIs, private files, HTTP off ------------------------------------------------


def _http_call(url: str, data: bytes | None = None) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


@pytest.mark.integration
def test_without_an_admin_key_shared_memory_trace_logging_and_the_repository_are_closed(
    echo_server: TritonServer, grpc_client: Any
) -> None:
    from tritonclient.utils import InferenceServerException

    # A file a client would like Triton to write into, as the admission slots in /dev/shm.
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))
    target = shm / f"fashionbox-side-door-{os.getpid()}"
    target.write_bytes(b"\0" * 128)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            grpc_client.register_system_shared_memory("slots", f"/{target.name}", 128)
        with pytest.raises(InferenceServerException, match="restricted"):
            grpc_client.get_system_shared_memory_status()
    finally:
        target.unlink()
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc_client.update_log_settings({"log_verbose_level": 1})
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc_client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc_client.unload_model("echo")

    http = echo_server.endpoints.http
    assert _http_call(f"{http}/v2/systemsharedmemory/region/slots/register",
                      f'{{"key": "/{target.name}", "offset": 0, "byte_size": 128}}'.encode()) == 403
    assert _http_call(f"{http}/v2/logging", b'{"log_verbose_level": 1}') == 403
    assert _http_call(f"{http}/v2/trace/setting", b'{"trace_level": ["TIMESTAMPS"]}') == 403
    assert _http_call(f"{http}/v2/repository/models/echo/unload", b"{}") == 403
    # What clients call stays open: inference, health, metadata, the model config (labels), statistics.
    assert grpc_client.is_model_ready("echo")
    assert grpc_client.get_model_config("echo").config.name == "echo"
    assert grpc_client.get_inference_statistics("echo").model_stats
    assert _http_call(f"{http}/v2/health/ready") == 200
    data = np.ones((1, 3), dtype=np.float32)
    np.testing.assert_array_equal(infer_echo(grpc_client, data)[0], data)


def _http_exchange(address: str, method: str, path: str, headers: dict[str, str],
                   body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    import http.client

    host, port = address.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.integration
def test_a_loopback_servers_http_refuses_other_sites_and_serves_its_own(echo_server: TritonServer) -> None:
    """A web page in a browser on the server's host reaches loopback: by DNS rebinding (its own name
    resolving to 127.0.0.1, sent in Host) or by a form posted across sites. Triton's HTTP checks
    neither, so the front door's HTTP side stands in front of it in the default profile too, while
    gRPC still goes to Triton directly."""
    config = echo_server.config
    assert not config.uses_front_door and echo_server.upstream_grpc == echo_server.endpoints.grpc
    assert echo_server.log_path is not None
    started = re.search(r"Started HTTPService at 127\.0\.0\.1:(\d+)", echo_server.log_path.read_text())
    assert started and int(started[1]) != config.http_port  # Triton's own HTTP is private, behind the door
    http = echo_server.endpoints.http
    port = config.http_port
    infer = json.dumps({"inputs": [{"name": "INPUT", "shape": [1, 3], "datatype": "FP32",
                                    "data": [1.0, 2.0, 3.0]}]}).encode()
    path = "/v2/models/echo/infer"

    for method, target, body in (("GET", "/v2/models/echo", None), ("GET", "/v2/health/ready", None),
                                 ("POST", path, infer)):
        status, _, answer = _http_exchange(http, method, target, {"Host": f"rebound.example:{port}"}, body)
        assert status == 403 and "not served under the name 'rebound.example" in json.loads(answer)["error"]
    for marks in ({"Origin": "http://elsewhere.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                  {"Sec-Fetch-Site": "same-site", "Origin": f"http://127.0.0.1:{port}"}):
        status, _, answer = _http_exchange(http, "POST", path, {"Content-Type": "text/plain", **marks}, infer)
        assert status == 403 and "cannot change this server" in json.loads(answer)["error"], marks

    # The server's own names, its own origin, and clients that are not browsers are served.
    for headers in ({}, {"Host": f"localhost:{port}"}, {"Origin": f"http://127.0.0.1:{port}"},
                    {"Sec-Fetch-Site": "same-origin"}):
        status, _, answer = _http_exchange(http, "POST", path, {"Content-Type": "application/json", **headers},
                                           infer)
        assert status == 200, (headers, answer)
        assert json.loads(answer)["outputs"][0]["data"] == [1.0, 2.0, 3.0]
    status, headers, _ = _http_exchange(http, "GET", "/v2/models/echo", {"Origin": "http://elsewhere.example"})
    assert status == 200 and "access-control-allow-origin" not in headers  # readable by the server's own pages only

    # Triton's own HTTP, on its private port, answers only what the door sends (its key): a page that found the
    # port by rebinding a name to 127.0.0.1 learns nothing there and runs nothing, whatever it sends.
    private = f"http://127.0.0.1:{started[1]}"
    for method, target, body in (("GET", "/v2/health/ready", None), ("GET", "/v2", None),
                                 ("GET", "/v2/models/echo", None), ("GET", "/v2/models/echo/config", None),
                                 ("GET", "/v2/models/stats", None), ("POST", path, infer)):
        status, _, answer = _http_exchange(private, method, target, {"Content-Type": "application/json"}, body)
        assert status == 403 and "restricted" in json.loads(answer)["error"], (target, answer)
        guessed = {"fashionbox-door-key": "x" * 32, "Content-Type": "application/json"}
        assert _http_exchange(private, method, target, guessed, body)[0] == 403, target
        assert _http_exchange(http, method, target, guessed, body)[0] == 200, target  # the caller's value is dropped
    (door_key,) = re.findall(r"fashionbox-door-key=(\S+)", " ".join(echo_server.command))
    assert door_key not in echo_server.log_path.read_text()

    # The metrics endpoint: Triton's on a private port too, the same names answered.
    started = re.search(r"Started Metrics Service at 127\.0\.0\.1:(\d+)", echo_server.log_path.read_text())
    assert started and int(started[1]) != config.metrics_port
    metrics = echo_server.endpoints.metrics.removesuffix("/metrics")
    status, _, answer = _http_exchange(metrics, "GET", "/metrics", {"Host": f"rebound.example:{config.metrics_port}"})
    assert status == 403 and "--metrics-allowed-host" in json.loads(answer)["error"]
    status, _, answer = _http_exchange(metrics, "GET", "/metrics", {"Host": f"localhost:{config.metrics_port}"})
    assert status == 200 and b"nv_inference_request_success" in answer


def _umask(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:"))


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_server_and_its_stubs_create_files_for_their_owner_only(echo_server: TritonServer) -> None:
    from fashionbox.server.stubs import python_stubs

    assert echo_server.pid is not None and echo_server.log_path is not None
    stubs = python_stubs(echo_server.pid)
    assert stubs, "no python-backend stub found"
    assert {_umask(pid) for pid in (echo_server.pid, *stubs)} == {"0077"}
    assert echo_server.log_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.integration
def test_a_temporary_log_folder_is_private_and_removed_on_stop(echo_repository: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(free_port_config(echo_repository, tmp_path), log_path=None)
    with TritonServer(config) as server:
        log = server.log_path
        assert log is not None and log.parent.name.startswith("fashionbox-triton-")
        assert log.parent.stat().st_mode & 0o777 == 0o700
        assert log.stat().st_mode & 0o777 == 0o600
        assert "successfully loaded 'echo'" in log.read_text()
    assert not log.parent.exists()


@pytest.mark.integration
def test_a_temporary_log_folder_is_kept_when_the_start_fails(tmp_path: Path) -> None:
    repository = tmp_path / "broken"
    write_model(repository, "echo", "raise RuntimeError('this model does not load')\n")
    config = dataclasses.replace(free_port_config(repository, tmp_path, startup_timeout_s=60.0), log_path=None)
    server = TritonServer(config)
    server.start()
    with pytest.raises(ServerStartError):
        server.wait_until_ready()
    server.stop(timeout_s=0)
    assert server.log_path is not None and server.log_path.is_file(), "the log that explains the failure is gone"
    server.log_path.unlink()
    server.log_path.parent.rmdir()


@pytest.mark.integration
def test_without_http_the_server_gets_ready_and_nothing_listens_on_the_http_port(
    echo_repository: Path, tmp_path: Path
) -> None:
    import tritonclient.grpc as grpcclient

    with TritonServer(free_port_config(echo_repository, tmp_path, http=False)) as server:
        assert "--allow-http=false" in server.command
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.config.http_port), timeout=2).close()
        client = grpcclient.InferenceServerClient(server.endpoints.grpc)
        try:
            data = np.arange(3, dtype=np.float32).reshape(1, 3)
            np.testing.assert_array_equal(infer_echo(client, data)[0], data)
        finally:
            client.close()
    assert server.returncode == 0
