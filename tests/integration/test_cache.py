"""The cache strategy on real ranks: exact on the supernet at N = 3 (the registry test covers
tiny, tiny-nas and llm-tiny at N = 2 and tiny at 3), a bf16 store reported as lossy instead of
failing, and an on-disk store that a later run reuses and an interrupted teacher pass resumes."""

from __future__ import annotations

import os

import pandas as pd
import torch

from pipebd.config import RunConfig
from pipebd.runner import launch
from tests.helpers import assert_keeps_math

BASE = RunConfig(workload="tiny", strategy="cache", devices=2, batch_size=10, steps=3, warmup=1, threads=1,
                 timeout=60)
VERIFY_CASES = {
    "tiny-nas-n3": BASE.replace(workload="tiny-nas", devices=3, inflight=1),
    "bf16-store": BASE.replace(cache_dtype="bf16", teacher_precision="fp32", student_precision="fp32"),
    # phase B with replicated blocks: block 0 on all 3 ranks (row shards, all-reduced), one more block each
    "replicated-n3": BASE.replace(devices=3, batch_size=9, ls_map="0:1,0:2,0:3"),
}


def test_cache_keeps_the_math_on_the_supernet_at_three_ranks(verified):
    assert_keeps_math(verified(__name__, "tiny-nas-n3"))


def test_cache_keeps_the_math_with_a_block_replicated_on_every_rank(verified):
    assert_keeps_math(verified(__name__, "replicated-n3"))


def test_a_bf16_store_reports_its_error_instead_of_failing(verified):
    res = verified(__name__, "bf16-store")
    assert res.status == "LOSSY" and "bf16" in res.detail
    assert 0 < res.max_rel_error < 0.5  # rounded activations: a real, bounded difference


def _teacher_steps(out: str, run_id: str) -> set[tuple[int, int]]:
    ev = pd.read_csv(os.path.join(out, "events.csv"))
    ev = ev[(ev["run_id"] == run_id) & (ev["phase"] == "teacher")]
    return set(zip(ev["rank"], ev["step"]))


def test_a_disk_store_is_reused_and_an_interrupted_teacher_pass_resumes(tmp_path):
    store_root = tmp_path / "store"
    cfg = BASE.replace(cache_dir=str(store_root), cache_memory=1.0, out=str(tmp_path / "results"), quiet=True)
    first = launch(cfg.replace(save_weights=str(tmp_path / "a.pt")))
    (store,) = list(store_root.iterdir())
    done = sorted(os.listdir(store / "done"))
    assert done == ["0-0-10", "1-0-10", "2-0-10", "3-0-10"]  # every batch of the pass, complete
    # timed teacher-pass batches: rank 0 times batch 2, rank 1 batch 3 (0 and 1 are warm-up)
    assert _teacher_steps(cfg.out, first.run_id) == {(0, 2), (1, 3)}
    os.remove(store / "done" / "2-0-10")  # as if the pass had stopped before batch 2 was complete
    second = launch(cfg.replace(save_weights=str(tmp_path / "b.pt")))
    assert _teacher_steps(cfg.out, second.run_id) == {(0, 2)}  # only the missing batch is recomputed
    a, b = (torch.load(tmp_path / f, weights_only=True)["weights"] for f in ("a.pt", "b.pt"))
    assert a.keys() == b.keys() and a
    for blk in a:  # the resumed pass stored the same activations: the same students
        assert all(torch.equal(a[blk][t], b[blk][t]) for t in a[blk])
