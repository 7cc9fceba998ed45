"""The profiler in this process (one rank, an in-process gloo group): supernet blocks, heartbeats
and injected faults, out-of-memory handling, the profiled batches, refusals before spawning. The
quick profile on real ranks is in tests/integration/test_profiler.py."""

from __future__ import annotations

import csv
import os

import pytest
import torch
import torch.distributed as dist

from pipebd.cli import build_parser
from pipebd.comm import init_process_group
from pipebd.config import ConfigError, RunConfig
from pipebd.profile_measure import RankProfiler
from pipebd.profiler import ProfileOptions, _write, default_profile_path, profile
from pipebd.costmodel import CostTable


def test_supernet_blocks_profile_in_process(tmp_path):
    """One rank, in this process: supernet warm-up over every choice, then sampled paths."""
    cfg = RunConfig(workload="tiny-nas", devices=1, batch_size=6, threads=1)
    opts = ProfileOptions.for_config(cfg, str(tmp_path / "nas.csv"), quick=True, replica_groups=2)
    _write(cfg, opts, _in_process(cfg, opts))
    costs = CostTable.from_csv(opts.out)
    assert costs.num_blocks == 4 and costs.batches() == [3, 6]  # ceil(6/g), g = 1..2
    assert all(costs.student[i][b] > 0 and costs.teacher[i][b] > 0 for i in range(4) for b in (3, 6))
    assert sorted(costs.data) == [3, 6]
    # one rank: nothing to communicate, so relay, all-reduce and barrier are modelled from bytes
    assert costs.modelled == ("relay", "allreduce", "barrier")
    assert all(costs.relay[k][b] > 0 for k in (1, 2, 3) for b in (3, 6))
    assert sorted(costs.allreduce[0]) == [2] and costs.allreduce_time(0, 4) > costs.allreduce_time(0, 2) > 0
    assert any("relay times are modelled" in g for g in costs.gaps())
    with open(opts.out) as f:
        notes = [r["note"] for r in csv.DictReader(f) if r["kind"] in ("relay", "allreduce", "barrier")]
    assert notes and all(n.startswith("modelled:") for n in notes)


def _in_process(cfg: RunConfig, opts: ProfileOptions, heartbeat=None) -> list[dict]:
    init_process_group(backend="gloo", rank=0, world_size=1, timeout_s=60, store=dist.HashStore())
    try:
        threads = torch.get_num_threads()
        return RankProfiler(0, 1, torch.device("cpu"), cfg, opts, heartbeat=heartbeat).run()
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)


class _CountingHeartbeat:
    def __init__(self):
        self.count = 0

    def beat(self) -> None:
        self.count += 1


def test_profiling_ranks_beat_while_they_measure_and_honour_injected_faults(tmp_path, monkeypatch):
    """A long profile is progress, not a stall: the heartbeat moves at every configuration
    boundary and after every timed trial. --inject-fault RANK:K fires after configuration K."""
    from pipebd.faults import InjectedFault

    cfg = RunConfig(workload="tiny", devices=1, batch_size=4, threads=1)
    opts = ProfileOptions.for_config(cfg, str(tmp_path / "hb.csv"), quick=True, replica_groups=1)
    hb, seen = _CountingHeartbeat(), []  # the heartbeat's count at each configuration boundary
    real = RankProfiler._boundary

    def boundary(self):
        seen.append(hb.count)
        real(self)

    monkeypatch.setattr(RankProfiler, "_boundary", boundary)
    _in_process(cfg, opts, hb)
    assert len(seen) > 3 and all(b > a for a, b in zip(seen, seen[1:]))  # progress between every two
    assert hb.count > len(seen)
    hb, seen[:] = _CountingHeartbeat(), []
    with pytest.raises(InjectedFault, match="injected fault on rank 0 at step 2"):
        _in_process(cfg.replace(inject_fault="0:2:raise"), opts, hb)
    assert len(seen) == 4  # configurations 0, 1 and 2 finished; it fired at the next boundary


def test_out_of_memory_is_judged_per_stage_not_per_block(tmp_path, monkeypatch):
    """An out-of-memory with every block resident re-measures each block alone; only a block that
    does not fit alone (here: student 3 at the full batch) is marked infeasible."""
    cfg = RunConfig(workload="tiny", devices=1, batch_size=8, threads=1)
    opts = ProfileOptions.for_config(cfg, str(tmp_path / "oom.csv"), quick=True)
    real = RankProfiler._student

    def student(self, i, x, y):
        if (not self.lean and i == 2) or (self.lean and i == 3 and x.shape[0] == 8):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, i, x, y)

    monkeypatch.setattr(RankProfiler, "_student", student)
    _write(cfg, opts, _in_process(cfg, opts))
    costs = CostTable.from_csv(opts.out)
    assert costs.batches() == [2, 3, 4, 8]
    assert all(costs.feasible(i, b) for i in range(3) for b in (2, 3, 4, 8))  # block 2 fits alone
    assert not costs.feasible(3, 8) and costs.feasible(3, 4) and costs.student[3][4] > 0
    assert all(costs.teacher[i][8] > 0 for i in range(4))
    with open(opts.out) as f:
        mem_notes = {(r["block"], r["batch"]): r["note"] for r in csv.DictReader(f) if r["kind"] == "memory"}
    assert "measured alone" in mem_notes[("2", "8")] and mem_notes[("3", "8")] == "out of memory alone"


def test_replica_groups_choose_the_profiled_batches(tmp_path):
    assert ProfileOptions(out="x").batches(256, 1) == [256, 128, 86, 64]  # default: max(ranks, 4)
    assert ProfileOptions(out="x").batches(8, 2) == [8, 4, 3, 2]
    assert ProfileOptions(out="x").batches(64, 6) == [64, 32, 22, 16, 13, 11]
    assert ProfileOptions(out="x", replica_groups=8).batches(256, 1) == [256, 128, 86, 64, 52, 43, 37, 32]
    assert ProfileOptions(out="x", replica_groups=8).batches(4, 1) == [4, 2, 1]  # at most one row per replica
    args = build_parser().parse_args(["profile", "-w", "tiny", "-n", "1", "-b", "256", "--replica-groups", "8",
                                      "--device", "cuda", "--out", "p.csv"])
    assert args.replica_groups == 8 and args.devices == 1 and args.device_type == "cuda"
    with pytest.raises(ConfigError, match="--replica-groups 2 is below --devices 4"):
        profile(RunConfig(workload="tiny", devices=4, batch_size=8), str(tmp_path / "x.csv"), replica_groups=2)
    with pytest.raises(ConfigError, match="--replica-groups must be >= 1"):
        profile(RunConfig(workload="tiny", devices=1, batch_size=8), str(tmp_path / "x.csv"), replica_groups=0)


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
