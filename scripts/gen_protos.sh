#!/usr/bin/env bash
# The one codegen script: protos/ -> Python modules (+ .pyi stubs) at the repo root,
# so `askmojo.metadata.v1` imports from where its proto lives (protos/askmojo/metadata/v1).
# Pinned by pyproject (grpcio-tools, mypy-protobuf). Usage: scripts/gen_protos.sh [OUT_DIR]
# tests/unit/test_protos_fresh.py runs it into a temp dir and fails on any drift.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
py=${PYTHON:-$root/.venv/bin/python}
bin=$(dirname "$py")
cd "$root"
mapfile -t protos < <(find protos/askmojo -name '*.proto' | sort)
"$py" -m grpc_tools.protoc \
  -I protos -I third_party/googleapis \
  --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  "${protos[@]}"
# Packages need __init__.py to be installed and type-checked.
for d in $(cd protos && find askmojo -type d); do
  [ -f "$out/$d/__init__.py" ] || : > "$out/$d/__init__.py"
done
