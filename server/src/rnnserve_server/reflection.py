"""Server reflection under both names clients ask for: ``grpc.reflection.v1`` (what
current grpcurl, Postman and grpc_cli try first) and ``grpc.reflection.v1alpha`` (older
tools).

grpcio-reflection implements only v1alpha (grpc/grpc#38576). v1 is the same protocol in
another package, with identical messages and field numbers, so the one v1alpha servicer
answers both: a v1 request parses as the v1alpha request and a v1alpha response is the v1
response on the wire. The v1 file descriptor (v1alpha's, renamed) joins the descriptor
pool, so reflection also describes the v1 service itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
SERVICE_NAMES = (reflection.SERVICE_NAME, V1_SERVICE)


def _renamed(type_name: str) -> str:
    old, new = f".{V1ALPHA_PACKAGE}.", f".{V1_PACKAGE}."
    return new + type_name.removeprefix(old) if type_name.startswith(old) else type_name


def _rename_messages(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for message_field in message.field:
            if message_field.HasField("type_name"):  # assigning "" would set it
                message_field.type_name = _renamed(message_field.type_name)
        _rename_messages(message.nested_type)


def add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add grpc/reflection/v1/reflection.proto to ``pool`` unless it is there already."""
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    _rename_messages(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = (
                _renamed(method.input_type),
                _renamed(method.output_type),
            )
    pool.Add(proto)


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection, v1 and v1alpha, listing ``service_names`` and itself."""
    add_v1_descriptor(descriptor_pool.Default())
    # reflection.aio is the asyncio servicer's public name (not in the package's __all__)
    servicer = reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
        (*service_names, *SERVICE_NAMES)
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
