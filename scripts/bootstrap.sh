#!/usr/bin/env bash
# Create .venv and install Mainsail with every extra and the dev tools. Idempotent: a stamp
# holding the hash of pyproject.toml skips the install when nothing changed, so a warm run
# takes well under a second. uv (installed into the venv from PyPI) does the resolving; its
# cache (~/.cache/uv) makes a reinstall on a warm machine quick.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${VENV:-.venv}
py=${PYTHON:-python3}
stamp=.stamps/install
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "bootstrap: installing Mainsail into $venv (first run downloads torch and ray; later runs are cached)" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
[ -x "$venv/bin/uv" ] || "$venv/bin/python" -m pip install -q --disable-pip-version-check uv
"$venv/bin/uv" pip install -q --python "$venv/bin/python" -e '.[dev]'
mkdir -p .stamps && echo "$want" > "$stamp"
