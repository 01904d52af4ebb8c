"""TLS and mutual TLS against a real gRPC server with certificates made by openssl."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import rnnserve
from rnnserve import Client, TLSConfig
from rnnserve.cli import main

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(name: str, subject: str, cwd: Path, extensions: str = "") -> None:
    """A key and a certificate for `subject`, signed by the CA in `cwd`."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", subject,
            "-out", f"{name}.csr", cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-days", "2",
            "-subj", "/CN=test-ca", "-out", "ca.pem", cwd=folder)  # fmt: skip
    issue("server", "/CN=localhost", folder, "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    issue("client", "/CN=test-client", folder)
    return folder


@pytest.fixture
def mtls_address(certs: Path) -> Iterator[str]:
    """A health-checking server that requires a client certificate signed by the test CA."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"localhost:{port}"
    finally:
        server.stop(0).wait()


def test_mutual_tls_connects_with_the_client_certificate(certs: Path, mtls_address: str) -> None:
    tls = TLSConfig.from_files(certs / "ca.pem", certs / "client.pem", certs / "client.key")
    with Client(mtls_address, tls=tls, token="over-tls", timeout=10) as client:
        assert client.health() == "SERVING"


def test_without_a_client_certificate_the_server_refuses(certs: Path, mtls_address: str) -> None:
    with (
        Client(mtls_address, tls=TLSConfig.from_files(certs / "ca.pem"), timeout=10) as client,
        pytest.raises(rnnserve.Unavailable),
    ):
        client.health()


def test_an_untrusted_server_is_refused(certs: Path, mtls_address: str) -> None:
    # The system's trust store does not know the test CA.
    with Client(mtls_address, tls=True, timeout=10) as client, pytest.raises(rnnserve.Unavailable):
        client.health()


def test_cli_tls_options(
    certs: Path, mtls_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--address", mtls_address, "--tls-ca", str(certs / "ca.pem")]
    argv += ["--tls-cert", str(certs / "client.pem"), "--tls-key", str(certs / "client.key")]
    assert main([*argv, "health"]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert main(["--tls-cert", str(certs / "client.pem"), "health"]) == 2
    assert "certificate and a key" in capsys.readouterr().err
