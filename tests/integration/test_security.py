"""Bearer-token authentication, session ownership, TLS and mutual TLS on the real server."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import ServerThread, make_test_certificates, scrape, server_config

from rnnserve import Client, NotFound, StepInput, TLSConfig, Unauthenticated, Unavailable

ALICE, BOB = "alice-secret-token-1", "bob-secret-token-22"


@pytest.fixture(scope="module")
def guarded(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    token_file = tmp_path_factory.mktemp("auth") / "tokens"
    token_file.write_text(f"# callers\nbob:{BOB}\n")
    config = server_config(
        models_dir, auth_tokens=f"alice:{ALICE}", auth_tokens_file=str(token_file)
    )
    with ServerThread(config) as server:
        yield server


def test_every_method_but_health_needs_a_token(guarded: ServerThread, model_name: str) -> None:
    with (
        Client(guarded.address) as anonymous,
        Client(guarded.address, token="wrong-token-x") as wrong,
    ):
        for client in (anonymous, wrong):
            with pytest.raises(Unauthenticated, match="Bearer"):
                client.list_models()
            with pytest.raises(Unauthenticated):
                client.create_session(model_name)
            with pytest.raises(Unauthenticated):
                list(client.generate("0" * 32, "x", max_tokens=1))
            with pytest.raises(Unauthenticated):
                list(client.step_stream([StepInput("0" * 32, text="x")]))
            assert client.health() == "SERVING"
    with grpc.insecure_channel(guarded.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(
                stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
            )
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_sessions_belong_to_their_caller(guarded: ServerThread, model_name: str) -> None:
    with Client(guarded.address, token=ALICE) as alice, Client(guarded.address, token=BOB) as bob:
        session = alice.create_session(model_name)
        alice.step(session.id, text="ab")
        # Bob sees exactly what an unknown id shows: no hint that the session exists.
        for attempt in (
            lambda: bob.step(session.id, text="c"),
            lambda: bob.close_session(session.id),
            lambda: list(bob.generate(session.id, max_tokens=1)),
        ):
            with pytest.raises(NotFound) as foreign:
                attempt()
            assert session.id in foreign.value.details
        with pytest.raises(NotFound) as unknown:
            bob.step("f" * 32, text="c")
        assert foreign.value.details.replace(session.id, "f" * 32) == unknown.value.details
        assert alice.step(session.id, text="c").steps == 3  # untouched by bob's attempts
        assert alice.close_session(session.id) == 3


def test_refused_calls_are_counted_and_logged_a_few_at_a_time(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = server_config(models_dir, auth_tokens=f"alice:{ALICE}", metrics_port=0)
    presented = "presented-secret-never-logged"
    with ServerThread(config) as server, grpc.insecure_channel(server.address) as channel:
        port = server.running.metrics_port  # type: ignore[union-attr]
        assert port
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        attempts = {
            "no token": (),
            "unknown token": (("authorization", f"Bearer {presented}"),),
            "not a bearer token": (("authorization", f"Basic {presented}"),),
        }
        list_models = channel.unary_unary("/rnnserve.v1.RnnServe/ListModels", None, None)
        with caplog.at_level(logging.WARNING, logger="rnnserve_server.auth"):
            for metadata in attempts.values():
                for _ in range(25):
                    with pytest.raises(grpc.RpcError) as refused:
                        list_models(b"", metadata=metadata, timeout=10)
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError):
                list(stub.ServerReflectionInfo(iter([]), metadata=attempts["no token"]))
        samples = scrape(port)
    for reason in attempts:
        expected = 25 + (reason == "no token")
        assert samples[("rnnserve_auth_failures_total", (("reason", reason),))] == expected
    lines = [r.getMessage() for r in caplog.records if r.name == "rnnserve_server.auth"]
    for reason in attempts:
        shown = [line for line in lines if line.endswith(reason)]
        assert 1 <= len(shown) <= 10  # at most a burst of lines per reason, not one per call
        assert (
            "refused a call to /rnnserve.v1.RnnServe/ListModels from ipv4:127.0.0.1:" in (shown[0])
        )
    assert not any(presented in line for line in lines)  # what was presented: never logged


def test_malformed_token_settings_stop_the_server(models_dir: Path) -> None:
    with pytest.raises(ValueError, match="name:token"):
        ServerThread(server_config(models_dir, auth_tokens="no-colon-here")).__enter__()


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


@needs_openssl
def test_tls_and_mutual_tls(models_dir: Path, certs: Path, model_name: str) -> None:
    ca = (certs / "ca.pem").read_bytes()
    tls = server_config(
        models_dir, tls_cert=str(certs / "server.pem"), tls_key=str(certs / "server.key")
    )
    with ServerThread(tls) as server:
        address = f"localhost:{server.port}"
        with Client(address, tls=TLSConfig(root_certificates=ca)) as client:
            assert client.list_models()[0].name == model_name
        with Client(address, timeout=5) as plaintext, pytest.raises(Unavailable):
            plaintext.list_models()
    mutual = server_config(
        models_dir,
        tls_cert=str(certs / "server.pem"),
        tls_key=str(certs / "server.key"),
        tls_client_ca=str(certs / "ca.pem"),
    )
    with ServerThread(mutual) as server:
        address = f"localhost:{server.port}"
        no_cert = Client(address, timeout=5, tls=TLSConfig(root_certificates=ca))
        with no_cert, pytest.raises(Unavailable):
            no_cert.list_models()
        with_cert = TLSConfig.from_files(
            certs / "ca.pem", certs / "client.pem", certs / "client.key"
        )
        with Client(address, tls=with_cert) as client, client.create_session(model_name) as s:
            assert s.step(text="a").steps == 1
