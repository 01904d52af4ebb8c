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


def reflect_v1(
    server: ServerThread, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Ask grpc.reflection.v1, as grpcurl does first. Its messages are v1alpha's on the
    wire (same fields, same numbers: only the package differs), so v1alpha's classes
    encode what a v1 client sends."""
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), timeout=10))


def test_reflection_v1_lists_and_describes_the_services(server: ServerThread) -> None:
    from google.protobuf import descriptor_pb2

    listed, described, service = reflect_v1(
        server,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        ),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="rnnserve.v1.RnnServe"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "rnnserve.v1.RnnServe",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    v1 = descriptor_pb2.FileDescriptorProto.FromString(
        described.file_descriptor_response.file_descriptor_proto[0]
    )
    assert (v1.name, v1.package) == ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")
    (method,) = v1.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    fields = {m.name: [(f.name, f.number) for f in m.field] for m in alpha.message_type}
    assert {m.name: [(f.name, f.number) for f in m.field] for m in v1.message_type} == fields
    rnnserve = descriptor_pb2.FileDescriptorProto.FromString(
        service.file_descriptor_response.file_descriptor_proto[0]
    )
    assert rnnserve.package == "rnnserve.v1"
