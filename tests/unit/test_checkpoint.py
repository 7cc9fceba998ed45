"""Checkpoints without processes (pipebd.checkpoint): the common cut, a save/load round trip
that restores trainer and RNG, refusals, pruning. Killed and resumed runs are in
tests/integration/test_checkpoint.py."""

from __future__ import annotations

import os

import pytest
import torch

from pipebd import checkpoint as ck
from pipebd.config import RunConfig
from pipebd.distill import BlockTrainer
from pipebd.zoo import build_workload


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
