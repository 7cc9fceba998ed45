"""The profiler on real ranks: a quick profile of tiny on two ranks writes a CSV the cost model
and the planner read back."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from pipebd.config import RunConfig
from pipebd.costmodel import CostTable, choose_modes
from pipebd.modes import candidate_modes, native_bf16
from pipebd.planner import cost_table_for, modes_for, plan_for
from pipebd.strategies.predict import predict_all

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_profile_of_tiny_on_two_ranks(tmp_path):
    out = str(tmp_path / "tiny.csv")
    proc = subprocess.run([sys.executable, "-m", "pipebd", "profile", "--workload", "tiny", "--devices", "2",
                           "--batch-size", "8", "--quick", "--out", out], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out in proc.stdout
    costs = CostTable.from_csv(out)
    assert costs.num_blocks == 4 and costs.workload == "tiny" and costs.devices == 2 and costs.batch_size == 8
    assert costs.batches() == [2, 3, 4, 8]  # ceil(B/g), g = 1..4 on two ranks
    for i in range(4):
        for b in (8, 4, 3, 2):
            assert costs.teacher[i][b] > 0 and costs.student[i][b] > 0
            assert costs.memory[i][b] > costs.static_memory[i] > 0
        assert costs.allreduce[i][2] > 0
    for k in (1, 2, 3):  # every block boundary relayed
        assert costs.relay[k][8] > 0 and costs.relay[k][4] > 0
    assert costs.data_per_sample > 0 and costs.barrier[2] > 0
    assert costs.activation_bytes[1] == 8 * 16 * 16 * 4
    # every candidate compute mode timed (auto is the default), relays in bf16 too; bf16 only
    # where this CPU computes it natively (else it is left out, and the profile says so)
    native = native_bf16(torch.device("cpu"))
    want = {"fp32", "fp32-cl"} | ({"bf16", "bf16-cl"} if native else set())
    for i in range(4):
        for part in ("teacher", "student"):
            times = costs.mode_times(part, i)
            assert set(times) == want
            assert all(times[m][b] > 0 for m in times for b in (8, 4, 3, 2))
    for k in (1, 2, 3):
        assert (f"relay:{k}:bf16" in costs.variants) == native
    assert native or "bf16 candidates not timed" in proc.stderr
    # later runs reuse it, in the modes it chose per block
    cfg = RunConfig(workload="tiny", devices=2, batch_size=8, profile=out)
    modes = modes_for(cfg)
    assert modes == choose_modes(costs, 4, candidate_modes(), candidate_modes())
    assert cost_table_for(cfg).modes == modes.to_text() or modes.is_fp32_contiguous
    plan_for(cfg).validate(num_blocks=4, devices=2, batch_size=8)
    predicted = predict_all(costs, 2, 8, 10, skip_unpredictable=True)  # a strategy may refuse the shape
    assert {p.strategy for p in predicted} >= {"dp", "tr", "tr-dpu", "ahd", "ideal"}
