"""Model metadata, the standard health service and server reflection."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import ServerThread

from rnnserve import Client


def test_models_carry_the_manifest_metadata(
    client: Client, model_name: str, tiny_package: Path
) -> None:
    manifest = json.loads((tiny_package / "manifest.json").read_text())
    (listed,) = client.list_models()
    assert listed == client.get_model(model_name) == client.get_model(model_name, 1)
    assert (listed.name, listed.version) == (manifest["name"], manifest["version"])
    assert (listed.shape, listed.cell, listed.output) == ("many-to-many", "gru", "vocabulary")
    assert (listed.layers, listed.hidden_size) == (manifest["layers"], manifest["hidden_size"])
    assert listed.vocabulary.kind == "char"
    assert listed.vocabulary.size == manifest["tokenizer"]["size"]
    assert listed.vocabulary.special_tokens == manifest["tokenizer"]["special_tokens"]
    assert listed.state_bytes == 4 * manifest["layers"] * manifest["hidden_size"]
    assert listed.metrics == manifest["metrics"] and "test_bits_per_char" in listed.metrics


def test_health_reports_serving(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rnnserve.v1.RnnServe"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_without_models_is_not_serving(tmp_path: Path) -> None:
    from support import server_config

    with (
        ServerThread(server_config(tmp_path)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"rnnserve.v1.RnnServe", "grpc.health.v1.Health"} <= names
