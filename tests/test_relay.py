"""Teacher relaying (``tr``) and decoupled parameter update (``tr-dpu``), Pipe-BD §III-A/B.

Every run is checked against the sequential reference with ``verify`` (same final weights,
same NAS paths). Ranks run with one thread, like the reference, so float results are
bit-identical: relayed activations are the teacher's exact outputs.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys

import pandas as pd
import pytest

from pipebd.plan import row_overlaps, row_ranges
from pipebd.config import ConfigError, RunConfig
from pipebd.preflight import validate
from pipebd.strategies.relay import parse_stages
from tests.helpers import assert_keeps_math

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _verify(tmp_path, cfg: RunConfig):
    return assert_keeps_math(cfg, str(tmp_path))


TINY = RunConfig(workload="tiny", batch_size=8, steps=3, warmup=1, threads=1, timeout=60)


@pytest.mark.parametrize("strategy,devices,inflight", [
    ("tr", 2, 2), ("tr", 3, 2), ("tr-dpu", 2, 2), ("tr-dpu", 3, 1),
])
def test_verify_tiny(tmp_path, strategy, devices, inflight):
    res = _verify(tmp_path, TINY.replace(strategy=strategy, devices=devices, inflight=inflight))
    assert res.max_rel_error == 0.0  # same shapes, same threads: the relay is exact


def test_verify_tiny_nas_dpu(tmp_path):
    cfg = TINY.replace(workload="tiny-nas", strategy="tr-dpu", devices=2, inflight=3)
    assert _verify(tmp_path, cfg).max_rel_error == 0.0


def test_verify_nas_cifar10_given_stages(tmp_path):
    cfg = RunConfig(workload="nas-cifar10", resolution=16, batch_size=8, steps=2, warmup=1, threads=1,
                    strategy="tr-dpu", devices=3, stages="0-2,3-4,5")
    _verify(tmp_path, cfg)


@pytest.mark.parametrize("stages,devices,match", [
    ("0-1;2-3", 2, "cannot parse"),
    ("a-b,2-3", 2, "cannot parse"),
    ("1-0,2-3", 2, "ends before it starts"),
    ("0,2-3", 2, "misses block"),
    ("0-1,2", 2, "misses block"),
    ("0-2,2-3", 2, "repeats or reorders"),
    ("2-3,0-1", 2, "misses block"),
    ("0-1,2-4", 2, "only 4 blocks"),
    ("0-1,2-3", 3, "--devices is 3"),
    ("0,1,2,3", 2, "--devices is 2"),
])
def test_bad_stages(stages, devices, match):
    for strategy in ("tr", "tr-dpu"):
        with pytest.raises(ConfigError, match=match):
            validate(RunConfig(workload="tiny", strategy=strategy, devices=devices, stages=stages))


def test_reordered_stages_message():
    with pytest.raises(ConfigError, match="repeats or reorders block 0"):
        parse_stages("0-1,0-3", num_blocks=4, devices=2)


def test_more_devices_than_blocks():
    with pytest.raises(ConfigError, match="ahd"):
        validate(RunConfig(workload="tiny", strategy="tr-dpu", devices=5))


def test_good_stages_validate():
    validate(RunConfig(workload="tiny", strategy="tr", devices=2, stages="0, 1-3"))
    validate(RunConfig(workload="tiny", strategy="tr-dpu", devices=4))


def test_row_overlaps_tile_the_batch():
    for send, recv in [((8,), (4, 4)), ((4, 4), (8,)), ((3, 3, 2), (4, 4)), ((5, 3), (3, 3, 2)), ((8,), (8,))]:
        pieces = row_overlaps(send, recv)
        rows = sorted((lo, hi) for _i, _j, lo, hi in pieces)
        assert rows[0][0] == 0 and rows[-1][1] == 8 and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        for i, j, lo, hi in pieces:
            s, r = row_ranges(send)[i], row_ranges(recv)[j]
            assert s[0] <= lo < hi <= s[1] and r[0] <= lo < hi <= r[1]
    assert row_overlaps((4, 4), (8,)) == [(0, 0, 0, 4), (1, 0, 4, 8)]


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
