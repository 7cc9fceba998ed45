"""The dp and ls baselines on spawned ranks: an explicit --ls-map against the sequential
reference, and the run rows a dp launch writes.

The registry-wide check (test_verify_registry.py, batch 10) verifies dp and ls with their
default layouts on tiny / tiny-nas at N = 2 and 3, the uneven 4 / 3 / 3 dp split included.
"""

from __future__ import annotations

import os

import pandas as pd

from baselines.ls import LayerWise
from pipebd.config import RunConfig
from tests.helpers import assert_keeps_math


#: verified in the session's shared series (tests/integration/conftest.py: verified). Rank 0 owns
#: only the last block, rank 1 trains three blocks out of index order; the registry test's
#: configuration otherwise, so the sequential reference is the one it trained (shared)
VERIFY_CASES = {"ls-map": RunConfig(workload="tiny", strategy="ls", devices=2, batch_size=10, steps=3, warmup=1,
                                    threads=1, timeout=60, ls_map="3,2:0:1")}


def test_ls_tiny_2_ranks_explicit_map_matches_reference(verified):
    assert LayerWise.describe_plan(VERIFY_CASES["ls-map"], 4) == "3,2:0:1"
    assert_keeps_math(verified(__name__, "ls-map"))


def test_dp_launch_writes_ok_run_row(dp_tiny_run):
    """pipebd.runner.launch ran dp on 2 ranks (conftest.dp_tiny_run); its rows must be complete and sane."""
    out, _, outcome = dp_tiny_run
    runs = pd.read_csv(os.path.join(out, "runs.csv"))
    row = runs[runs["strategy"] == "dp"]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["status"] == "ok" and outcome.row["status"] == "ok"
    assert row["devices"] == 2
    assert row["throughput_sps"] > 0
    assert row["measured_time_s"] > 0
    assert row["plan"] == "dp x 2"
    ranks = pd.read_csv(os.path.join(out, "ranks.csv"))
    dp_ranks = ranks[(ranks["run_id"] == row["run_id"])]
    assert sorted(dp_ranks["rank"].unique()) == [0, 1]
    comm = dp_ranks[dp_ranks["phase"] == "comm"]["seconds"]
    assert (comm > 0).all(), "the gradient all-reduce must be recorded as comm time on every rank"
