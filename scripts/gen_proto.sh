#!/usr/bin/env bash
# Regenerate snapshotter/grpcapi/*_pb2*.py from our .proto files (grpcio-tools, from the test
# extra). The generated modules are committed, so running pyunion never needs protoc;
# tests/snapshotter/test_grpc_api.py fails when they are out of date with the .proto files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
  snapshotter/grpcapi/mount.proto snapshotter/grpcapi/snapshots.proto
