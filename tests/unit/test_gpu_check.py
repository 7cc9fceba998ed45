"""experiments/gpu_check.sh read, not run: the paper's numbers come from experiments/speedup.yaml
(never typed into the script) and every pipebd command runs under a timeout. The CPU dry run is
in tests/integration/test_gpu_check.py."""

from __future__ import annotations

import os
import re

from pipebd.experiments import load_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "gpu_check.sh")


def test_paper_numbers_are_read_not_typed():
    text = open(SCRIPT).read()
    for ref in load_experiment(os.path.join(ROOT, "experiments", "speedup.yaml")).paper_reference.values():
        for v in ref.values():
            assert not re.search(rf"(?<![\d.]){re.escape(f'{v:.2f}')}(?![\d])", text), v
    # every pipebd command of the check runs under a timeout (a step, or `timeout` itself)
    for n, line in enumerate(text.splitlines()):
        if re.search(r'"\$PY" (-m pipebd|-c|-)\b', line) and not line.lstrip().startswith("#"):
            prev = text.splitlines()[n - 1]
            assert "timeout" in line or line.lstrip().startswith("step ") or prev.lstrip().startswith("step "), line
