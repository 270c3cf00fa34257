"""TLS files, the admin key and the rules ServerConfig enforces around them (no server started here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pki import ca_pem, issue, make_ca

from fashionbox.server import ConfigError, ServerConfig, add_serve_arguments, build_command, config_from_arguments
from fashionbox.server.security import (
    ADMIN_APIS,
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

    assert read_admin_key(path, environ={}) == KEY


def test_the_admin_key_comes_from_the_file_variable_before_the_key_variable(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    path.write_text(KEY)
    environ = {"FASHIONBOX_ADMIN_KEY_FILE": str(path), "FASHIONBOX_ADMIN_KEY": "other-key-0123456789"}

    assert read_admin_key(environ=environ) == KEY
    assert read_admin_key(environ={"FASHIONBOX_ADMIN_KEY": "other-key-0123456789"}) == "other-key-0123456789"
    assert read_admin_key(environ={}) is None


def test_a_missing_or_empty_key_file_is_an_error_not_an_open_server(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="cannot be read"):
        read_admin_key(tmp_path / "missing.key", environ={})
    (tmp_path / "empty.key").write_text("")
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

