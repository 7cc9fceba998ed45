"""Automatic hybrid distribution (``ahd``), Pipe-BD §III-C: relayed stages × replicas.

Each plan is verified against the sequential reference run with the plan's row split as
ghost shards (``AutoHybrid.reference_shards``): same final weights, same NAS paths. The plans
cover every way stages of different widths meet that fits in four CPU ranks.
"""

from __future__ import annotations

import pytest

from pipebd.config import ConfigError, RunConfig
from pipebd.preflight import validate
from pipebd.strategies import get_strategy
from tests.helpers import assert_keeps_math

TINY = RunConfig(workload="tiny", strategy="ahd", batch_size=8, steps=3, warmup=1, threads=1, timeout=60)


def _verify(tmp_path, cfg: RunConfig):
    return assert_keeps_math(cfg, str(tmp_path))


@pytest.mark.parametrize("plan,devices", [
    ("0-1x2,2-3x1", 3),  # 2 -> 1: gather
    ("0x1,1-3x2", 3),  # 1 -> 2: slice
    ("0-1x2@2:1,2-3x1", 3),  # uneven split (5 + 3 rows) -> 1
    ("0x3,1-3x1", 4),  # 3 -> 1 (3 + 3 + 2 rows)
    ("0-1x2@3:1,2-3x2", 4),  # 6 + 2 rows -> 4 + 4: a sender feeds two receivers, a receiver hears two
])
def test_verify_plans(tmp_path, plan, devices):
    _verify(tmp_path, TINY.replace(plan=plan, devices=devices))


def test_verify_single_stage_nas(tmp_path):
    """One stage of two replicas (pure data parallelism): replicas must sample the same NAS path."""
    _verify(tmp_path, TINY.replace(workload="tiny-nas", plan="0-3x2", devices=2, inflight=1))


def test_verify_planned(tmp_path):
    """Without --plan the layout comes from the planner (decided on rank 0, broadcast)."""
    _verify(tmp_path, TINY.replace(devices=2))


def test_reference_shards_follow_the_plan():
    cfg = TINY.replace(plan="0-1x2@3:1,2-3x2", devices=4)
    assert get_strategy("ahd").reference_shards(cfg, 4) == ((6, 2), (6, 2), (4, 4), (4, 4))


@pytest.mark.parametrize("plan,devices,match", [
    ("0-1x2,2-3", 3, "cannot parse"),
    ("", 2, "empty"),
    ("0-1x2,3x1", 3, "misses"),
    ("0-2x1,2-3x1", 2, "repeats or reorders"),
    ("0-1x1,2-3x1", 3, "--devices is 3"),
    ("0-1x2@1:2:3,2-3x1", 3, "one positive weight per replica"),
    ("0-1x1,2-4x1", 2, "workload has 4"),
    ("0-1x9,2-3x1", 10, "batch has only 8"),
])
def test_bad_plans(plan, devices, match):
    with pytest.raises(ConfigError, match=match):
        validate(TINY.replace(plan=plan, devices=devices))
