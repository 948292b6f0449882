#!/usr/bin/env bash
# Generates the Go stubs of protos/ into a GOPATH workspace (default
# examples/go/.gopath) with Debian's protoc, protoc-gen-go and
# protoc-gen-go-grpc. The protos carry no `option go_package`: the import
# paths are given here as M mappings, so the protos stay language-neutral.
#
#   examples/go/gen.sh [GOPATH_DIR]
#   GO111MODULE=off GOPATH=<GOPATH_DIR>:/usr/share/gocode go run ./examples/go ADDRESS
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/.gopath}
prefix=askmojo.local/gen
mkdir -p "$out/src"
cd "$root"
mapfile -t protos < <(find protos/askmojo -name '*.proto' | sort)
maps=()
for p in "${protos[@]}"; do
  rel=${p#protos/}                     # askmojo/metadata/v1/metadata_service.proto
  dir=$(dirname "$rel")                # askmojo/metadata/v1
  pkg=$(basename "$(dirname "$dir")")$(basename "$dir")   # metadatav1
  maps+=("M$rel=$prefix/$dir;$pkg")
done
# google/rpc/status.proto comes from Debian's golang-google-genproto-dev.
maps+=("Mgoogle/rpc/status.proto=google.golang.org/genproto/googleapis/rpc/status")
go_opts=$(IFS=,; echo "${maps[*]}")
protoc -I protos -I third_party/googleapis -I /usr/include \
  --go_out="$out/src" --go_opt="$go_opts" \
  --go-grpc_out="$out/src" --go-grpc_opt="$go_opts" \
  "${protos[@]}"
