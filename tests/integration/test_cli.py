"""``python -m pipebd`` in a fresh interpreter: a sequential run end to end (the refusal before
spawning, --help and the zoo table run in-process in tests/unit/test_cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cli_runs_sequential_end_to_end(tmp_path):
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-m", "pipebd", "run", "--workload", "tiny", "--strategy", "sequential",
                           "--batch-size", "8", "--steps", "3", "--warmup", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "samples/s" in proc.stdout
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 1 and runs.status[0] == "ok" and runs.throughput_sps[0] > 0
    assert runs.workload[0] == "tiny" and runs.steps_measured[0] == 3
