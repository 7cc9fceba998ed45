"""The profiler: a quick profile on real ranks writes a CSV the cost model and the planner read back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from pipebd.comm import init_process_group
from pipebd.config import ConfigError, RunConfig
from pipebd.planner import plan_for
from pipebd.profiler import ProfileOptions, _Profiler, _write, default_profile_path, profile
from pipebd.simulate import CostTable, predict_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_profile_of_tiny_on_two_ranks(tmp_path):
    out = str(tmp_path / "tiny.csv")
    proc = subprocess.run([sys.executable, "-m", "pipebd", "profile", "--workload", "tiny", "--devices", "2",
                           "--batch-size", "8", "--quick", "--out", out], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out in proc.stdout
    costs = CostTable.from_csv(out)
    assert costs.num_blocks == 4 and costs.workload == "tiny" and costs.devices == 2 and costs.batch_size == 8
    for i in range(4):
        for b in (8, 4):  # ceil(B/g), g = 1, 2
            assert costs.teacher[i][b] > 0 and costs.student[i][b] > 0
            assert costs.memory[i][b] > costs.static_memory[i] > 0
        assert costs.allreduce[i][2] > 0
    for k in (1, 2, 3):  # every block boundary relayed
        assert costs.relay[k][8] > 0 and costs.relay[k][4] > 0
    assert costs.data_per_sample > 0 and costs.barrier[2] > 0
    assert costs.activation_bytes[1] == 8 * 16 * 16 * 4
    # later runs reuse it
    cfg = RunConfig(workload="tiny", devices=2, batch_size=8, profile=out)
    plan_for(cfg).validate(num_blocks=4, devices=2, batch_size=8)
    assert {p.strategy for p in predict_all(costs, 2, 8, 10)} >= {"dp", "tr", "tr-dpu", "ahd", "ideal"}


def test_supernet_blocks_profile_in_process(tmp_path):
    """One rank, in this process: supernet warm-up over every choice, then sampled paths."""
    cfg = RunConfig(workload="tiny-nas", devices=1, batch_size=6, threads=1)
    opts = ProfileOptions.for_config(cfg, str(tmp_path / "nas.csv"), quick=True)
    init_process_group(backend="gloo", rank=0, world_size=1, timeout_s=60, store=dist.HashStore())
    try:
        threads = torch.get_num_threads()
        rows = _Profiler(0, 1, torch.device("cpu"), cfg, opts).run()
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)
    _write(cfg, opts, rows)
    costs = CostTable.from_csv(opts.out)
    assert costs.num_blocks == 4 and costs.batches() == [6]
    assert all(costs.student[i][6] > 0 and costs.teacher[i][6] > 0 for i in range(4))
    assert not any(costs.relay) and not any(costs.allreduce)  # one rank: nothing to communicate


def test_bad_requests_fail_before_spawning(tmp_path):
    with pytest.raises(ConfigError, match="smaller than --devices"):
        profile(RunConfig(workload="tiny", devices=4, batch_size=2), str(tmp_path / "x.csv"))
    with pytest.raises(ConfigError, match="unknown workload"):
        profile(RunConfig(workload="nope", devices=1, batch_size=2), str(tmp_path / "x.csv"))
    assert not os.path.exists(tmp_path / "x.csv")


def test_default_profile_path():
    cfg = RunConfig(workload="tiny", devices=2, batch_size=8)
    assert default_profile_path(cfg) == os.path.join("results", "profiles", "tiny-cpu-n2-b8.csv")
    assert default_profile_path(cfg, "my.csv") == "my.csv"
    assert default_profile_path(cfg, "dir") == os.path.join("dir", "tiny-cpu-n2-b8.csv")
