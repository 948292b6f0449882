#!/usr/bin/env bash
# Runs buf (from the npm package @bufbuild/buf, pinned) on the repo's buf.yaml.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
if [ ! -x "$tools/node_modules/.bin/buf" ]; then
  npm install --silent --no-audit --no-fund --prefix "$tools" @bufbuild/buf@1.75.0 >/dev/null
fi
cd "$root"
exec "$tools/node_modules/.bin/buf" "$@"
