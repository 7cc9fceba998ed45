#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned requirements into it. Idempotent:
# a second run only checks that the requirements are satisfied.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing requirements into .venv (first time takes ~2 min)" >&2
  # Plain pip install: byte-compiles, which keeps `import torch` fast.
  .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
  echo "$want" > "$stamp"
fi
