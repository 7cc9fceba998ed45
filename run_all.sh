#!/usr/bin/env bash
# Reproduce the experiments (for now: the sequential reference on the default workload).
set -euo pipefail
cd "$(dirname "$0")"
./bootstrap.sh
.venv/bin/python -m pipebd run --workload nas-cifar10 --strategy sequential --batch-size 32 --steps 5 --out results/cpu "$@"
