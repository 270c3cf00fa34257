"""TLS files, the admin key and the rules ServerConfig enforces around them (no server started here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pki import ca_pem, issue, make_ca

from fashionbox.server import ConfigError, ServerConfig, add_serve_arguments, build_command, config_from_arguments
from fashionbox.server.security import (
    ADMIN_APIS,
    CLOSED_APIS,
    DOOR_KEY_NAME,
    HTTP_APIS,
    SecurityError,
    ServerTls,
    check_admin_key,
    read_admin_key,
    redact,
    security_arguments,
)

KEY = "abcdefghijklmnop-0123456789"


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pem")
    ca = make_ca("unit CA")
    key, cert = issue(ca, "fashionbox.test", server=True).write(folder, "server")
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_pem(ca))
    return {"cert": cert, "key": key, "ca": ca_file}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return tmp_path


# -- admin key ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("short", "at least 16"),
        ("a" * 15, "at least 16"),
        ("key-with:colon-0123456789", "letters, digits"),
        ("key-with,comma-0123456789", "letters, digits"),
        ("key-with=equals-0123456789", "letters, digits"),
        ("key with spaces 0123456789", "letters, digits"),
        ("key-with-newline\n0123456789", "letters, digits"),
    ],
)
def test_an_unusable_admin_key_is_refused_with_the_rule(key: str, problem: str) -> None:
    with pytest.raises(SecurityError, match=problem):
        check_admin_key(key)


def test_the_admin_key_is_read_from_its_file_ignoring_the_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)

    assert read_admin_key(path, environ={}) == KEY


def test_the_admin_key_comes_from_the_file_variable_before_the_key_variable(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    path.write_text(KEY)
    path.chmod(0o600)
    environ = {"FASHIONBOX_ADMIN_KEY_FILE": str(path), "FASHIONBOX_ADMIN_KEY": "other-key-0123456789"}

    assert read_admin_key(environ=environ) == KEY
    assert read_admin_key(environ={"FASHIONBOX_ADMIN_KEY": "other-key-0123456789"}) == "other-key-0123456789"
    assert read_admin_key(environ={}) is None


def test_a_missing_or_empty_key_file_is_an_error_not_an_open_server(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="cannot be read"):
        read_admin_key(tmp_path / "missing.key", environ={})
    (tmp_path / "empty.key").write_text("")
    (tmp_path / "empty.key").chmod(0o600)
    with pytest.raises(SecurityError, match="at least 16"):
        read_admin_key(tmp_path / "empty.key", environ={})


# -- Triton flags ---------------------------------------------------------------------------------------


def test_the_admin_key_restricts_every_admin_api_on_grpc_and_http() -> None:
    restriction = f"model-repository,model-config,shared-memory,statistics,trace,logging:admin-key={KEY}"

    assert security_arguments(None, KEY) == [
        f"--grpc-restricted-protocol={restriction}",
        f"--http-restricted-api={restriction}",
    ]
    assert "inference" not in ADMIN_APIS and "health" not in ADMIN_APIS and "metadata" not in ADMIN_APIS


def test_tls_flags_for_server_side_and_mutual_tls(pem_files: dict[str, Path]) -> None:
    cert, key, ca = pem_files["cert"].resolve(), pem_files["key"].resolve(), pem_files["ca"].resolve()

    assert security_arguments(ServerTls(cert, key), None) == [
        "--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
    assert security_arguments(ServerTls(cert, key, ca), None)[3:] == [
        "--grpc-use-ssl-mutual=true", f"--grpc-root-cert={ca}"]
    assert security_arguments(None, None) == []


def test_tls_files_that_are_missing_or_not_pem_are_refused(tmp_path: Path, pem_files: dict[str, Path]) -> None:
    not_pem = tmp_path / "cert.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a")

    with pytest.raises(SecurityError, match="is not a file"):
        ServerTls(tmp_path / "missing.pem", pem_files["key"])
    with pytest.raises(SecurityError, match="is not PEM"):
        ServerTls(not_pem, pem_files["key"])


def test_the_key_is_redacted_from_the_logged_command_and_the_repr(repository: Path) -> None:
    config = ServerConfig(repository=repository, admin_key=KEY)
    command = build_command(config, binary=Path("tritonserver"), backend_directory=Path("backends"))

    assert any(KEY in word for word in command)
    assert not any(KEY in word for word in redact(command, KEY))
    assert "admin_key" not in repr(config) and KEY not in repr(config)


# -- ServerConfig rules ---------------------------------------------------------------------------------


def test_explicit_model_control_is_refused_off_loopback_without_a_key(repository: Path) -> None:
    with pytest.raises(ConfigError, match="load and unload"):
        ServerConfig(repository=repository, host="0.0.0.0", model_control_mode="explicit")

    assert ServerConfig(repository=repository, host="127.0.0.1", model_control_mode="explicit")
    assert ServerConfig(repository=repository, host="0.0.0.0", model_control_mode="explicit", admin_key=KEY)


def test_model_control_defaults_to_none(repository: Path) -> None:
    assert ServerConfig(repository=repository).model_control_mode == "none"


def test_secure_profile_refuses_to_start_without_tls_and_a_key(repository: Path, pem_files: dict[str, Path]) -> None:
    tls = ServerTls(pem_files["cert"], pem_files["key"])

    with pytest.raises(ConfigError, match=r"TLS \(--tls-cert/--tls-key\) and an admin key"):
        ServerConfig(repository=repository, secure=True)
    with pytest.raises(ConfigError, match="an admin key"):
        ServerConfig(repository=repository, secure=True, tls=tls)
    with pytest.raises(ConfigError, match="TLS"):
        ServerConfig(repository=repository, secure=True, admin_key=KEY)
    assert ServerConfig(repository=repository, secure=True, tls=tls, admin_key=KEY).secure


def test_extra_arguments_may_not_fight_the_security_settings(repository: Path) -> None:
    with pytest.raises(ConfigError, match="conflicts"):
        ServerConfig(repository=repository, admin_key=KEY, extra_args=("--grpc-restricted-protocol=trace:k=v",))


def test_serve_flags_build_the_secure_config(tmp_path: Path, pem_files: dict[str, Path]) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args([
        "--repository", str(tmp_path), "--secure", "--tls-cert", str(pem_files["cert"]),
        "--tls-key", str(pem_files["key"]), "--tls-client-ca", str(pem_files["ca"]),
        "--admin-key-file", str(key_file)])  # fmt: skip

    config = config_from_arguments(args, environ={})

    assert config.secure and config.admin_key == KEY
    assert config.tls is not None and config.tls.mutual


def test_a_tls_key_without_a_certificate_is_a_config_error(tmp_path: Path, pem_files: dict[str, Path]) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--repository", str(tmp_path), "--tls-key", str(pem_files["key"])])

    with pytest.raises(ConfigError, match="both a certificate and a private key"):
        config_from_arguments(args, environ={})


def test_tls_and_key_come_from_the_environment_too(tmp_path: Path, pem_files: dict[str, Path]) -> None:
    environ = {
        "FASHIONBOX_TLS_CERT": str(pem_files["cert"]),
        "FASHIONBOX_TLS_KEY": str(pem_files["key"]),
        "FASHIONBOX_ADMIN_KEY": KEY,
        "FASHIONBOX_SECURE": "true",
    }

    config = ServerConfig.from_env(repository=tmp_path, environ=environ)

    assert config.secure and config.admin_key == KEY and config.tls is not None and not config.tls.mutual



# -- key files other users may read -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606, 0o601])
def test_a_key_file_other_users_may_read_is_refused_like_ssh_does(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "admin.key"
    path.write_text(KEY)
    path.chmod(mode)

    with pytest.raises(SecurityError, match=rf"open to other users \(mode {mode:04o}\): run chmod 600"):
        read_admin_key(path, environ={})
    with pytest.raises(SecurityError, match="open to other users"):
        read_admin_key(environ={"FASHIONBOX_ADMIN_KEY_FILE": str(path)})
    with pytest.raises(ConfigError, match="open to other users"):
        ServerConfig.from_env(repository=tmp_path, environ={"FASHIONBOX_ADMIN_KEY_FILE": str(path)})


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640])
def test_a_key_file_of_its_owner_or_group_is_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "admin.key"
    path.write_text(KEY)
    path.chmod(mode)

    assert read_admin_key(path, environ={}) == KEY


# -- the side doors: APIs closed in every profile, HTTP apart from gRPC ----------------------------------

LAUNCHER_KEY = "launcher-key-nobody-else-knows-0123"


def _flag_values(command: list[str], flag: str) -> list[str]:
    return [word.split("=", 1)[1] for word in command if word.startswith(f"{flag}=")]


def _restrictions(command: list[str]) -> tuple[list[str], list[str]]:
    return _flag_values(command, "--grpc-restricted-protocol"), _flag_values(command, "--http-restricted-api")


def test_without_an_admin_key_the_launcher_key_closes_shared_memory_trace_logging_and_the_repository(
    repository: Path,
) -> None:
    command = build_command(ServerConfig(repository=repository), binary=Path("t"), backend_directory=Path("b"),
                            launcher_key=LAUNCHER_KEY)

    closed = f"model-repository,shared-memory,trace,logging:admin-key={LAUNCHER_KEY}"
    assert _restrictions(command) == ([closed], [closed])
    assert CLOSED_APIS == ("shared-memory", "trace", "logging") and set(CLOSED_APIS) <= set(ADMIN_APIS)
    # Clients still read labels (model config) and statistics, and infer, without any key.
    assert not {"model-config", "statistics", "inference", "health", "metadata"} & set(ServerConfig(
        repository=repository).closed_apis())


def test_explicit_model_control_without_a_key_keeps_the_repository_api_open_but_closes_the_rest(
    repository: Path,
) -> None:
    # fashionbox tune loads and unloads through it (explicit mode is loopback only without a key).
    config = ServerConfig(repository=repository, model_control_mode="explicit")
    command = build_command(config, binary=Path("t"), backend_directory=Path("b"), launcher_key=LAUNCHER_KEY)

    closed = f"shared-memory,trace,logging:admin-key={LAUNCHER_KEY}"
    assert _restrictions(command) == ([closed], [closed])


@pytest.mark.parametrize("profile", ["launcher key", "explicit", "admin key", "secure"])
def test_behind_the_http_door_every_other_http_group_needs_the_doors_key(
    repository: Path, pem_files: dict[str, Path], profile: str
) -> None:
    # Triton's HTTP on its private port: health and metadata too, so a page that finds the port learns nothing.
    tls = ServerTls(pem_files["cert"], pem_files["key"], pem_files["ca"])
    config = {"launcher key": ServerConfig(repository=repository),
              "explicit": ServerConfig(repository=repository, model_control_mode="explicit"),
              "admin key": ServerConfig(repository=repository, admin_key=KEY),
              "secure": ServerConfig(repository=repository, secure=True, tls=tls, admin_key=KEY)}[profile]
    door_key = "d" * 32
    command = build_command(config, binary=Path("t"), backend_directory=Path("b"), launcher_key=LAUNCHER_KEY,
                            upstream_http_port=45679, door_key=door_key)
    grpc, http = _restrictions(command)
    groups = [group for flag in http for group in flag.split(":")[0].split(",")]
    assert sorted(groups) == sorted(HTTP_APIS)  # each group restricted once (Triton refuses twice), none left open
    doors = http[-1].split(":")
    assert doors[1] == f"{DOOR_KEY_NAME}={door_key}" and {"health", "metadata"} <= set(doors[0].split(","))
    assert not any(door_key in flag for flag in grpc)  # gRPC is no browser's: its restrictions stay the admin's
    # Without the door (HTTP straight to Triton, or none) the key restricts nothing.
    plain = build_command(config, binary=Path("t"), backend_directory=Path("b"), launcher_key=LAUNCHER_KEY,
                          door_key=door_key)
    assert not any(door_key in word for word in plain)


def test_an_admin_key_replaces_the_launcher_key(repository: Path) -> None:
    config = ServerConfig(repository=repository, admin_key=KEY)
    command = build_command(config, binary=Path("t"), backend_directory=Path("b"), launcher_key=LAUNCHER_KEY)

    restriction = f"{','.join(ADMIN_APIS)}:admin-key={KEY}"
    assert _restrictions(command) == ([restriction], [restriction])
    assert not any(LAUNCHER_KEY in word for word in command)


def test_extra_restrictions_may_not_restrict_an_api_twice(repository: Path) -> None:
    with pytest.raises(ConfigError, match="restricts logging, shared-memory, which the server closes itself"):
        ServerConfig(repository=repository, extra_args=("--http-restricted-api=logging,shared-memory:k=v",))
    # Groups the server leaves open may still be restricted by hand (the client tests restrict statistics).
    config = ServerConfig(repository=repository, extra_args=("--grpc-restricted-protocol=statistics:k=v0123",))
    assert config.extra_args


def test_http_binds_loopback_apart_from_grpc_and_can_be_turned_off(repository: Path) -> None:
    exposed = ServerConfig(repository=repository, host="0.0.0.0", admin_key=KEY)
    command = build_command(exposed, binary=Path("t"), backend_directory=Path("b"))
    assert _flag_values(command, "--grpc-address") == _flag_values(command, "--metrics-address") == ["0.0.0.0"]
    assert _flag_values(command, "--http-address") == ["127.0.0.1"]

    off = ServerConfig(repository=repository, host="0.0.0.0", http=False, admin_key=KEY)
    command = build_command(off, binary=Path("t"), backend_directory=Path("b"))
    assert "--allow-http=false" in command and not _flag_values(command, "--http-address")
    # Without HTTP the drain goes over gRPC: mode "none" is still run as explicit, the repository API locked.
    assert "--model-control-mode=explicit" in command and "--load-model=*" in command
    assert any(flag.startswith("model-repository,") for flag in _flag_values(command, "--grpc-restricted-protocol"))


def test_http_flags_and_variables(repository: Path) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--repository", str(repository), "--no-http", "--http-host", "10.0.0.5"])
    config = config_from_arguments(args, environ={})
    assert not config.http and config.http_host == "10.0.0.5"

    config = ServerConfig.from_env(repository, {"FASHIONBOX_HTTP": "false", "FASHIONBOX_HTTP_HOST": "::1"})
    assert not config.http and config.http_host == "::1"
    assert ServerConfig(repository=repository).http and ServerConfig(repository=repository).http_host == "127.0.0.1"


def test_the_secure_profile_refuses_http_off_loopback_and_closes_http_inference(
    repository: Path, pem_files: dict[str, Path]
) -> None:
    tls = ServerTls(pem_files["cert"], pem_files["key"], pem_files["ca"])
    with pytest.raises(ConfigError, match=r"secure profile serves HTTP on loopback only.*--http-host 0\.0\.0\.0"):
        ServerConfig(repository=repository, secure=True, tls=tls, admin_key=KEY, host="0.0.0.0", http_host="0.0.0.0")
    # Off HTTP, or loopback HTTP (the default, even with gRPC on every interface), is fine.
    assert ServerConfig(repository=repository, secure=True, tls=tls, admin_key=KEY, http=False, http_host="0.0.0.0")
    config = ServerConfig(repository=repository, secure=True, tls=tls, admin_key=KEY, host="0.0.0.0")

    grpc, http = _restrictions(build_command(config, binary=Path("t"), backend_directory=Path("b")))
    assert grpc == [f"{','.join(ADMIN_APIS)}:admin-key={KEY}"]
    assert http == [f"{','.join(ADMIN_APIS)},inference:admin-key={KEY}"]  # plaintext inference: the key too


def test_explicit_model_control_is_refused_when_http_leaves_loopback_without_a_key(repository: Path) -> None:
    with pytest.raises(ConfigError, match=r"on 0\.0\.0\.0 would let anyone on the network load and unload"):
        ServerConfig(repository=repository, model_control_mode="explicit", http_host="0.0.0.0")
    assert ServerConfig(repository=repository, model_control_mode="explicit", http_host="0.0.0.0", http=False)
