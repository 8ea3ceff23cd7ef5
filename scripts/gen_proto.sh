#!/usr/bin/env bash
# Regenerate the Python stubs from proto/mainsail/proto/v1/mainsail.proto into $1 (default: in place).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/proto}
py=${PYTHON:-$root/.venv/bin/python}
export PATH="$(dirname "$py"):$PATH"
mkdir -p "$out/mainsail/proto/v1"
"$py" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  "$root/proto/mainsail/proto/v1/mainsail.proto"
