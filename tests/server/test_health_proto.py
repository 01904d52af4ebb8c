"""proto/grpc/health/v1/health.proto, which clients built from proto/ alone compile, is
the wire contract of the health service the server runs (grpcio-health-checking)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

PROTO = Path(__file__).resolve().parents[2] / "proto"


def test_the_vendored_health_proto_is_the_served_one(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}",
         f"--descriptor_set_out={tmp_path / 'health.pb'}", "grpc/health/v1/health.proto"],
        check=True,
    )  # fmt: skip
    compiled = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "health.pb").read_bytes())
    (ours,) = compiled.file
    served = descriptor_pb2.FileDescriptorProto()
    importlib.reload(health_pb2).DESCRIPTOR.CopyToProto(served)
    served.name = ours.name  # where the file lies
    for message in ours.message_type:  # protoc adds the JSON names, which are the default
        for field in [*message.field, *(f for n in message.nested_type for f in n.field)]:
            field.ClearField("json_name")
    assert ours == served
