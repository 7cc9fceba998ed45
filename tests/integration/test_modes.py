"""Compute modes on real ranks: bf16 and channels-last activations relayed over gloo, mixed
modes per block, verify against a reference in the same modes, and bf16 training quality."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from pipebd.commands.precision import precision_check
from pipebd.config import RunConfig
from pipebd.verify import BF16_RTOL

TINY = RunConfig(workload="tiny", batch_size=10, steps=3, warmup=1, threads=1, timeout=60, devices=2)


MODES = [
    # a relay of bf16, channels-last activations, every part in bf16-cl
    ("tr-dpu", "teacher=bf16-cl*4;student=bf16-cl*4"),
    # mixed per block: each consumer converts its input's dtype and format on entry; all-reduce of
    # channels-last gradients
    ("ahd", "teacher=fp32-cl,bf16*2,fp32;student=bf16,fp32-cl,bf16-cl,fp32"),
]
#: verified in the session's shared series (tests/integration/conftest.py: verified)
VERIFY_CASES = {case: TINY.replace(strategy=case[0], modes=case[1]) for case in MODES}


@pytest.mark.parametrize("strategy,modes", MODES)
def test_bf16_and_channels_last_keep_the_math_of_their_reference(verified, verify_workdir, strategy, modes):
    res = verified(__name__, (strategy, modes))
    assert res.paths_equal
    assert res.ok, res.detail
    assert res.max_rel_error <= BF16_RTOL
    assert res.lossy and res.modes == modes
    # the run (and its reference) recorded the modes and every block's loss at every step
    out = os.path.join(verify_workdir, "results")
    runs = pd.read_csv(os.path.join(out, "runs.csv"))
    assert modes in set(runs[runs["strategy"] == strategy]["modes"])
    losses = pd.read_csv(os.path.join(out, "losses.csv"))
    mine = losses[(losses["strategy"] == strategy) & (losses["modes"] == modes)]
    assert set(mine["block"]) == {0, 1, 2, 3} and set(mine["step"]) == set(range(TINY.total_steps))
    assert (mine["loss"] > 0).all()


def test_bf16_training_reaches_the_fp32_losses(tmp_path):
    cfg = RunConfig(workload="tiny", batch_size=16, steps=16, warmup=0, threads=2, quiet=True, trace=False,
                    out=str(tmp_path), teacher_precision="bf16", student_precision="bf16",
                    memory_format="channels-last")
    ok, rows = precision_check(cfg, tail=4, band=0.1, say=lambda m: None)
    assert len(rows) == 4
    assert ok, rows
