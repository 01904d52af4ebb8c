#!/usr/bin/env bash
# Generate the Python gRPC stubs for proto/rnnserve/v1 into the given folder.
# usage: gen-proto.sh PYTHON OUTDIR   (OUTDIR receives rnnserve_pb2.py, .pyi, _pb2_grpc.py)
set -euo pipefail
py=$1 out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  "$root/proto/rnnserve/v1/rnnserve.proto"
mkdir -p "$out"
cp "$tmp"/rnnserve/v1/rnnserve_pb2.py "$tmp"/rnnserve/v1/rnnserve_pb2.pyi \
   "$tmp"/rnnserve/v1/rnnserve_pb2_grpc.py "$out"/
