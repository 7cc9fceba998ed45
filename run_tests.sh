#!/usr/bin/env bash
# The test command: bootstrap .venv if needed, then run the whole pytest suite on CPU.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k verify).
set -euo pipefail
cd "$(dirname "$0")"
./bootstrap.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
