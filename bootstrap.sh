#!/usr/bin/env bash
# Create .venv (if missing), install the pinned requirements into it, then this project
# (pyproject.toml: pipebd, baselines, plots and the `pipebd` command) as an editable install.
# Idempotent: a second run only compares two stamps and does nothing.
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
# The project itself, editable (it points at this checkout, so edits need no reinstall). The
# stamp names the checkout too: a .venv moved to or copied from another checkout reinstalls.
stamp=.venv/.project.sha
want=$( (sha256sum pyproject.toml; pwd -P) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x .venv/bin/pipebd ]; then
  echo "bootstrap: installing the project (pipebd, baselines, plots) into .venv" >&2
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
  echo "$want" > "$stamp"
fi
