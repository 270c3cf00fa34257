"""TLS and mutual TLS between both clients and a real embedded Triton, with certificates made here.

Two private servers on stand-in models, configured through :class:`ServerTls` as ``fashionbox serve
--tls-cert/--tls-key[/--tls-client-ca]`` does: one with server-side TLS (``--grpc-use-ssl``), one that
also demands client certificates (``--grpc-use-ssl-mutual``). The certificates come from a test CA
generated with ``cryptography``; a second, unrelated CA plays the stranger. Every refusal must be a
:class:`ConnectError`, because from the caller's side a failed handshake is a connection failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from client_servers import image_set, standin_repository, start_private_server
from pki import SERVER_NAME, Pem, ca_pem, issue, make_ca

from fashionbox.client import (
    AsyncFashionClient,
    ClientConfig,
    ConnectError,
    FashionClient,
    ImageDetections,
    RetryPolicy,
    TlsConfig,
)
from fashionbox.server import TritonServer
from fashionbox.server.security import ServerTls

pytestmark = pytest.mark.integration
pytest.importorskip("pytriton", reason="the embedded server needs fashionbox-server (nvidia-pytriton)")

NO_RETRY = RetryPolicy.disabled()  # handshakes fail the same way every time


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    ca_file: Path
    client: Pem
    client_key_file: Path
    client_cert_file: Path
    stranger_ca_pem: bytes
    stranger_client: Pem


@dataclass(frozen=True)
class Servers:
    tls: TritonServer
    mutual: TritonServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pki, Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca("FashionBox test CA")
    stranger_ca = make_ca("Somebody else's CA")
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_pem(ca))
    server_key, server_cert = issue(ca, SERVER_NAME, server=True).write(folder, "server")
    client = issue(ca, "search-backend", server=False)
    client_key, client_cert = client.write(folder, "client")
    yield (
        Pki(
            ca_pem=ca_file.read_bytes(),
            ca_file=ca_file,
            client=client,
            client_key_file=client_key,
            client_cert_file=client_cert,
            stranger_ca_pem=ca_pem(stranger_ca),
            stranger_client=issue(stranger_ca, "intruder", server=False),
        ),
        server_key,
        server_cert,
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, pki: tuple[Pki, Path, Path]) -> Iterator[Servers]:
    keys, server_key, server_cert = pki
    repository = standin_repository(tmp_path_factory)
    logs = tmp_path_factory.mktemp("tls-logs")
    # Both start at once and load their models side by side.
    tls = start_private_server(repository, logs, tls=ServerTls(server_cert, server_key), wait=False)
    mutual = None
    try:
        mutual = start_private_server(
            repository, logs, tls=ServerTls(server_cert, server_key, client_ca=keys.ca_file), wait=False
        )
        tls.wait_until_ready()
        mutual.wait_until_ready()
        yield Servers(tls=tls, mutual=mutual)
    finally:
        tls.stop(timeout_s=10)
        if mutual is not None:
            mutual.stop(timeout_s=10)


@pytest.fixture(scope="module")
def keys(pki: tuple[Pki, Path, Path]) -> Pki:
    return pki[0]


def detect_both(config: ClientConfig) -> tuple[ImageDetections, ImageDetections]:
    """The same image through both twins."""
    image = image_set(1)[0]
    with FashionClient(config=config) as client:
        blocking = client.detect(image)

    async def detect_async() -> ImageDetections:
        async with AsyncFashionClient(config=config) as client:
            return await client.detect(image)

    return blocking, asyncio.run(detect_async())


def refused_by_both(config: ClientConfig) -> None:
    with pytest.raises(ConnectError):
        detect_both(config)

    async def detect_async() -> None:
        async with AsyncFashionClient(config=config) as client:
            await client.detect(image_set(1)[0])

    with pytest.raises(ConnectError):
        asyncio.run(detect_async())


# -- server-side TLS -----------------------------------------------------------------------------------


def test_tls_with_the_servers_ca_works_for_both_twins(servers: Servers, keys: Pki) -> None:
    config = ClientConfig(url=servers.tls.endpoints.grpc, tls=TlsConfig(root_certificates=keys.ca_file))

    blocking, asynchronous = detect_both(config)

    assert blocking == asynchronous
    assert blocking.width > 0


def test_tls_certificates_can_be_given_as_pem_bytes(servers: Servers, keys: Pki) -> None:
    config = ClientConfig(url=servers.tls.endpoints.grpc, tls=TlsConfig(root_certificates=keys.ca_pem))

    with FashionClient(config=config) as client:
        assert client.health()


def test_a_client_that_does_not_trust_the_servers_ca_fails_with_connect_error(servers: Servers, keys: Pki) -> None:
    config = ClientConfig(
        url=servers.tls.endpoints.grpc, tls=TlsConfig(root_certificates=keys.stranger_ca_pem), retry=NO_RETRY
    )

    refused_by_both(config)


def test_a_plaintext_client_fails_against_a_tls_server_with_connect_error(servers: Servers) -> None:
    refused_by_both(ClientConfig(url=servers.tls.endpoints.grpc, retry=NO_RETRY))


def test_server_name_override_makes_the_client_check_that_name_in_the_certificate(servers: Servers, keys: Pki) -> None:
    def config(name: str) -> ClientConfig:
        tls = TlsConfig(root_certificates=keys.ca_pem, server_name_override=name)
        return ClientConfig(url=servers.tls.endpoints.grpc, tls=tls, retry=NO_RETRY)

    with FashionClient(config=config(SERVER_NAME)) as client:
        assert client.health()
    refused_by_both(config("someone-else.test"))


# -- mutual TLS ------------------------------------------------------------------------------------------


def test_mutual_tls_with_a_client_certificate_works_for_both_twins(servers: Servers, keys: Pki) -> None:
    tls = TlsConfig(
        root_certificates=keys.ca_file, private_key=keys.client_key_file, certificate_chain=keys.client_cert_file
    )

    blocking, asynchronous = detect_both(ClientConfig(url=servers.mutual.endpoints.grpc, tls=tls))

    assert blocking == asynchronous


def test_mutual_tls_without_a_client_certificate_fails_with_connect_error(servers: Servers, keys: Pki) -> None:
    config = ClientConfig(
        url=servers.mutual.endpoints.grpc, tls=TlsConfig(root_certificates=keys.ca_pem), retry=NO_RETRY
    )

    refused_by_both(config)


def test_mutual_tls_with_a_certificate_from_another_ca_fails_with_connect_error(servers: Servers, keys: Pki) -> None:
    tls = TlsConfig(
        root_certificates=keys.ca_pem,
        private_key=keys.stranger_client.key,
        certificate_chain=keys.stranger_client.cert,
    )

    refused_by_both(ClientConfig(url=servers.mutual.endpoints.grpc, tls=tls, retry=NO_RETRY))


def test_mutual_tls_configured_from_the_environment(servers: Servers, keys: Pki) -> None:
    config = ClientConfig.from_env(
        {
            "FASHIONBOX_URL": servers.mutual.endpoints.grpc,
            "FASHIONBOX_TLS_ROOT_CERTIFICATES": str(keys.ca_file),
            "FASHIONBOX_TLS_PRIVATE_KEY": str(keys.client_key_file),
            "FASHIONBOX_TLS_CERTIFICATE_CHAIN": str(keys.client_cert_file),
            "FASHIONBOX_TLS_SERVER_NAME_OVERRIDE": SERVER_NAME,
        }
    )

    with FashionClient(config=config) as client:
        assert client.ready()
