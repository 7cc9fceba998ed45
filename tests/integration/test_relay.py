"""Teacher relaying (``tr``) and decoupled parameter update (``tr-dpu``) on spawned ranks: an
explicit ``--stages`` layout on the 6-block nas-cifar10, and two torchrun "nodes".

The registry-wide check (test_verify_registry.py) verifies tr and tr-dpu on tiny / tiny-nas at
N = 2 and 3 with the planner's layout; this file covers what it does not: a layout given by hand.
Ranks run with one thread, like the reference, so float results are bit-identical: relayed
activations are the teacher's exact outputs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd

from pipebd.config import RunConfig
from tests.helpers import assert_keeps_math

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: verified in the session's shared series (tests/integration/conftest.py: verified); the
#: registry test's paper shape but for the strategy: the same sequential reference (shared)
VERIFY_CASES = {"stages": RunConfig(workload="nas-cifar10", resolution=16, batch_size=8, steps=2, warmup=1, threads=1,
                                    strategy="tr-dpu", devices=3, stages="0-2,3-4,5")}


def test_verify_nas_cifar10_given_stages(verified):
    res = assert_keeps_math(verified(__name__, "stages"))
    assert res.max_rel_error == 0.0  # same shapes, same threads: the relay is exact


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_one_host(tmp_path):
    """Two torchrun 'nodes' of one process each (static rendezvous on 127.0.0.1)."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    port = _free_port()
    out = tmp_path / "results"
    procs = []
    for node in (0, 1):
        cmd = [torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
               "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "pipebd", "run", "--workload", "tiny", "--strategy", "tr-dpu", "--devices", "2",
               "--batch-size", "8", "--steps", "2", "--warmup", "1", "--threads", "1", "--timeout", "60",
               "--out", str(out), "--quiet", "--no-trace"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    runs = pd.read_csv(out / "runs.csv")
    ok = runs[(runs.status == "ok") & (runs.strategy == "tr-dpu")]
    assert len(ok) == 1 and int(ok.devices.iloc[0]) == 2
