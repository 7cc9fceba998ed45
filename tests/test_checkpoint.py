"""Checkpoint and resume (pipebd.checkpoint): a run killed mid-way and resumed ends with the
same student weights, bit for bit, as the run that was never interrupted.

The 2-rank runs cover ``dp`` (blocks one after another: finished blocks must be skipped on
resume) and ``tr-dpu`` (pipelined: ranks are at different steps when one dies, so only a
consistent cut can be resumed).
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from pipebd import checkpoint as ck
from pipebd.config import RunConfig
from pipebd.distill import BlockTrainer
from pipebd.runner import RunFailed, launch
from pipebd.zoo import build_workload

STRATEGIES = ["dp", "tr-dpu"]  # a removed strategy fails here, it is not skipped


def _base(tmp_path, strategy: str) -> RunConfig:
    return RunConfig(workload="tiny", strategy=strategy, devices=2, batch_size=4, steps=3, warmup=1, seed=3,
                     quiet=True, trace=False, out=str(tmp_path / "res"))


def _assert_same_weights(a_path: str, b_path: str) -> None:
    a = torch.load(a_path, weights_only=True)
    b = torch.load(b_path, weights_only=True)
    assert sorted(a["weights"]) == sorted(b["weights"])
    for i in a["weights"]:
        sa, sb = a["weights"][i], b["weights"][i]
        assert sorted(sa) == sorted(sb)
        for name in sa:
            assert torch.equal(sa[name], sb[name]), f"block {i} {name} differs after resume"
    assert a["paths"] == b["paths"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path, strategy):
    base = _base(tmp_path, strategy)
    ckdir = str(tmp_path / "ck")
    launch(base.replace(save_weights=str(tmp_path / "whole.pt")))
    with pytest.raises(RunFailed, match="rank 1 failed: killed by signal SIGKILL"):
        launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=1, inject_fault="1:2:kill"))
    counts = [ck.available_counts(ckdir, r) for r in range(2)]
    cut = ck.common_count(counts)
    assert cut is not None and 1 <= cut <= 3, counts  # rank 1 died after its 3rd step
    assert all(len(c) <= 3 for c in counts), counts  # older ones were pruned
    resumed = launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=1, resume=True,
                                  save_weights=str(tmp_path / "resumed.pt")))
    assert resumed.row["status"] == "resumed" and f"call {cut}" in resumed.row["error"]
    _assert_same_weights(str(tmp_path / "whole.pt"), str(tmp_path / "resumed.pt"))
    runs = pd.read_csv(tmp_path / "res" / "runs.csv")
    assert list(runs.status) == ["ok", "failed", "resumed"]


def test_dp_resume_skips_finished_blocks(tmp_path):
    """Resume dp in its last block: blocks 0-2 are finished in the checkpoint and skipped."""
    base = _base(tmp_path, "dp")
    ckdir = str(tmp_path / "ck")
    launch(base.replace(save_weights=str(tmp_path / "whole.pt")))
    # dp calls after_step once per (block, step), 4 steps per block; the fault fires at the
    # first step 3 (block 0, call 4), before the first checkpoint (call 5)
    with pytest.raises(RunFailed, match="rank 1 failed: .*InjectedFault"):
        launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=5, inject_fault="1:3:raise"))
    assert ck.common_count([ck.available_counts(ckdir, r) for r in range(2)]) is None
    # a resume with nothing to resume from starts at step 0 and saves calls 5, 10, 15 ...
    fresh = launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=5, resume=True,
                                save_weights=str(tmp_path / "fresh.pt")))
    assert fresh.row["status"] == "ok"
    _assert_same_weights(str(tmp_path / "whole.pt"), str(tmp_path / "fresh.pt"))
    counts = [ck.available_counts(ckdir, r) for r in range(2)]
    assert ck.common_count(counts) == 15 and 5 not in counts[0] + counts[1], counts  # 5 pruned (10 may remain)
    payload = torch.load(os.path.join(ckdir, "rank0", "ckpt-00000015.pt"), weights_only=True)
    assert {i: t["step"] for i, t in payload["trainers"].items()} == {0: 4, 1: 4, 2: 4, 3: 3}
    assert payload["calls"] == 15 and payload["fingerprint"]["strategy"] == "dp"
    # ... from which a resume trains only block 3's last step
    last = launch(base.replace(checkpoint_dir=ckdir, resume=True, save_weights=str(tmp_path / "last.pt")))
    assert last.row["status"] == "resumed"
    _assert_same_weights(str(tmp_path / "whole.pt"), str(tmp_path / "last.pt"))


# ----------------------------------------------------------------------------- unit


def test_common_count_is_the_newest_cut_all_ranks_have():
    assert ck.common_count([[2, 4, 6], [2, 4], [4, 6, 8]]) == 4
    assert ck.common_count([[2], [4]]) is None
    assert ck.common_count([[], [4]]) is None


def _trainer(block: int = 0) -> BlockTrainer:
    wl = build_workload("tiny", probe=False)
    return BlockTrainer(index=block, block=wl.student[block], last=False, total_steps=5, seed=0)


def test_save_load_round_trip_restores_trainer_and_rng(tmp_path):
    cfg = RunConfig(workload="tiny", checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2)
    t = _trainer()
    x = torch.randn(2, 3, 16, 16)
    y = torch.randn_like(t.block(x)).detach()
    for step in range(2):
        t.train_step(step, x, y)
    saver = ck.Checkpointer(cfg, 0, 1, torch.device("cpu"))
    assert not saver.maybe_save(1, {0: t}) and saver.maybe_save(2, {0: t})
    expected_rand = torch.rand(3)  # drawn after the save: restoring the RNG must reproduce it
    loader = ck.Checkpointer(cfg.replace(resume=True), 0, 1, torch.device("cpu"))
    payload = loader.load_cut()
    assert payload["calls"] == 2 and loader.resumed_from == 2
    ck.set_rng_state(payload["rng"], torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected_rand)
    fresh = _trainer()
    ck.restore_trainer(fresh, payload["trainers"][0])
    assert fresh.step_count == 2 and fresh.paths == t.paths
    assert fresh.scheduler.last_epoch == t.scheduler.last_epoch
    for a, b in zip(fresh.block.state_dict().values(), t.block.state_dict().values()):
        assert torch.equal(a, b)
    t.train_step(2, x, y)
    fresh.train_step(2, x, y)  # same optimizer momentum and learning rate: same next step
    for a, b in zip(fresh.block.parameters(), t.block.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_run_is_refused_on_load(tmp_path):
    cfg = RunConfig(workload="tiny", strategy="dp", devices=1, checkpoint_dir=str(tmp_path / "ck"),
                    checkpoint_every=1)
    ck.Checkpointer(cfg, 0, 1, torch.device("cpu")).save(1, {0: _trainer()})
    other = cfg.replace(strategy="ls", resume=True)
    with pytest.raises(ck.CheckpointError, match="strategy: checkpoint 'dp', this run 'ls'"):
        ck.Checkpointer(other, 0, 1, torch.device("cpu")).load_cut()


class _NotWeights:
    pass


def test_a_checkpoint_that_is_not_weights_only_is_refused(tmp_path):
    cfg = RunConfig(workload="tiny", checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=1, resume=True)
    os.makedirs(tmp_path / "ck" / "rank0")
    torch.save({"evil": _NotWeights()}, tmp_path / "ck" / "rank0" / "ckpt-00000001.pt")
    with pytest.raises(ck.CheckpointError, match="weights_only=True"):
        ck.Checkpointer(cfg, 0, 1, torch.device("cpu")).load_cut()


def test_pruning_never_deletes_the_cut(tmp_path):
    cfg = RunConfig(workload="tiny", devices=2, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=1)
    r0 = ck.Checkpointer(cfg, 0, 2, torch.device("cpu"))
    r1 = ck.Checkpointer(cfg, 1, 2, torch.device("cpu"))
    t = _trainer()
    for c in (1, 2, 3, 4):
        r0.save(c, {0: t})  # rank 0 runs ahead (a pipeline)
    assert ck.available_counts(cfg.checkpoint_dir, 0) == [1, 2, 3, 4]  # rank 1 has nothing yet
    r1.save(1, {0: t})
    r1.save(2, {0: t})
    assert ck.available_counts(cfg.checkpoint_dir, 1) == [2]
    r0.save(5, {0: t})
    assert ck.available_counts(cfg.checkpoint_dir, 0) == [2, 3, 4, 5]
    assert ck.common_count([ck.available_counts(cfg.checkpoint_dir, r) for r in range(2)]) == 2


def test_sequential_resume_equals_the_uninterrupted_run(tmp_path):
    base = _base(tmp_path, "sequential").replace(devices=1)
    ckdir = str(tmp_path / "ck")
    launch(base.replace(save_weights=str(tmp_path / "whole.pt")))
    with pytest.raises(RunFailed, match="rank 0 failed: killed by signal SIGKILL"):
        launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=1, inject_fault="0:2:kill"))
    resumed = launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=1, resume=True,
                                  save_weights=str(tmp_path / "resumed.pt")))
    assert resumed.row["status"] == "resumed"
    _assert_same_weights(str(tmp_path / "whole.pt"), str(tmp_path / "resumed.pt"))
