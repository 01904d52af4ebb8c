#!/usr/bin/env bash
# Generate the Python stubs of proto/ with grpcio-tools:
#   proto/rnnserve/v1  -> CLIENT_OUT: rnnserve_pb2.py, .pyi, rnnserve_pb2_grpc.py
#   proto/inference    -> SERVER_OUT: grpc_service_pb2.py, .pyi, grpc_service_pb2_grpc.py,
#                         model_config_pb2.py, .pyi (the KServe v2 / Triton protocol)
# usage: gen-proto.sh PYTHON CLIENT_OUT SERVER_OUT
set -euo pipefail
py=$1 client_out=$2 server_out=$3
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
protoc() { "$py" -m grpc_tools.protoc --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" "$@"; }

protoc -I "$root/proto" "$root/proto/rnnserve/v1/rnnserve.proto"
mkdir -p "$client_out"
cp "$tmp"/rnnserve/v1/rnnserve_pb2.py "$tmp"/rnnserve/v1/rnnserve_pb2.pyi \
   "$tmp"/rnnserve/v1/rnnserve_pb2_grpc.py "$client_out"/

# Triton's files import each other by bare name (import "model_config.proto"), which protoc
# turns into top-level Python imports (import model_config_pb2). The .proto files stay as
# published; the generated modules import their siblings from their own package instead.
protoc -I "$root/proto/inference" "$root/proto/inference/grpc_service.proto" \
  "$root/proto/inference/model_config.proto"
sed -i -E 's/^import (model_config_pb2|grpc_service_pb2) as /from . import \1 as /' \
  "$tmp"/grpc_service_pb2.py "$tmp"/grpc_service_pb2.pyi "$tmp"/grpc_service_pb2_grpc.py
mkdir -p "$server_out"
cp "$tmp"/grpc_service_pb2.py "$tmp"/grpc_service_pb2.pyi "$tmp"/grpc_service_pb2_grpc.py \
   "$tmp"/model_config_pb2.py "$tmp"/model_config_pb2.pyi "$server_out"/
