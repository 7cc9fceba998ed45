"""Checkpoint and resume on spawned ranks: a run killed mid-way and resumed ends with the same
student weights, bit for bit, as the run that was never interrupted.

The 2-rank runs cover ``dp`` (blocks one after another: finished blocks must be skipped on
resume) and ``tr-dpu`` (pipelined: ranks are at different steps when one dies, so only a
consistent cut can be resumed). The uninterrupted dp run is the session's shared one
(conftest.dp_tiny_run, the same configuration as :func:`_base`).
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from pipebd import checkpoint as ck
from pipebd.config import RunConfig
from pipebd.runner import RunFailed, launch
from tests.helpers import tiny_two_rank_config

STRATEGIES = ["dp", "tr-dpu"]  # a removed strategy fails here, it is not skipped


def _base(tmp_path, strategy: str) -> RunConfig:
    return tiny_two_rank_config(strategy, str(tmp_path / "res"))


def _whole(request, tmp_path, strategy: str) -> str:
    """The saved weights of the uninterrupted run of ``_base(tmp_path, strategy)``."""
    if strategy == "dp":
        return request.getfixturevalue("dp_tiny_run")[1]
    path = str(tmp_path / "whole.pt")
    assert launch(_base(tmp_path, strategy).replace(out=str(tmp_path / "whole"), save_weights=path)).row["status"] == "ok"
    return path


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
def test_resume_after_a_kill_equals_the_uninterrupted_run(request, tmp_path, strategy):
    base = _base(tmp_path, strategy)
    ckdir = str(tmp_path / "ck")
    whole = _whole(request, tmp_path, strategy)
    with pytest.raises(RunFailed, match="rank 1 failed: killed by signal SIGKILL"):
        launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=1, inject_fault="1:2:kill"))
    counts = [ck.available_counts(ckdir, r) for r in range(2)]
    cut = ck.common_count(counts)
    assert cut is not None and 1 <= cut <= 3, counts  # rank 1 died after its 3rd step
    assert all(len(c) <= 3 for c in counts), counts  # older ones were pruned
    resumed = launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=1, resume=True,
                                  save_weights=str(tmp_path / "resumed.pt")))
    assert resumed.row["status"] == "resumed" and f"call {cut}" in resumed.row["error"]
    _assert_same_weights(whole, str(tmp_path / "resumed.pt"))
    runs = pd.read_csv(tmp_path / "res" / "runs.csv")
    assert list(runs.status) == ["failed", "resumed"]  # the uninterrupted run wrote its "ok" row elsewhere


def test_dp_resume_skips_finished_blocks(dp_tiny_run, tmp_path):
    """Resume dp in its last block: blocks 0-2 are finished in the checkpoint and skipped."""
    base = _base(tmp_path, "dp")
    ckdir = str(tmp_path / "ck")
    whole = dp_tiny_run[1]
    # dp calls after_step once per (block, step), 4 steps per block; the fault fires at the
    # first step 3 (block 0, call 4), before the first checkpoint (call 5)
    with pytest.raises(RunFailed, match="rank 1 failed: .*InjectedFault"):
        launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=5, inject_fault="1:3:raise"))
    assert ck.common_count([ck.available_counts(ckdir, r) for r in range(2)]) is None
    # a resume with nothing to resume from starts at step 0 and saves calls 5, 10, 15 ...
    fresh = launch(base.replace(checkpoint_dir=ckdir, checkpoint_every=5, resume=True,
                                save_weights=str(tmp_path / "fresh.pt")))
    assert fresh.row["status"] == "ok"
    _assert_same_weights(whole, str(tmp_path / "fresh.pt"))
    counts = [ck.available_counts(ckdir, r) for r in range(2)]
    assert ck.common_count(counts) == 15 and 5 not in counts[0] + counts[1], counts  # 5 pruned (10 may remain)
    payload = torch.load(os.path.join(ckdir, "rank0", "ckpt-00000015.pt"), weights_only=True)
    assert {i: t["step"] for i, t in payload["trainers"].items()} == {0: 4, 1: 4, 2: 4, 3: 3}
    assert payload["calls"] == 15 and payload["fingerprint"]["strategy"] == "dp"
    # ... from which a resume trains only block 3's last step
    last = launch(base.replace(checkpoint_dir=ckdir, resume=True, save_weights=str(tmp_path / "last.pt")))
    assert last.row["status"] == "resumed"
    _assert_same_weights(whole, str(tmp_path / "last.pt"))


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
