"""Automatic hybrid distribution (``ahd``), Pipe-BD §III-C, without processes: the reference
shards a plan implies and the refusal of bad ``--plan`` strings. Plans run against the sequential
reference in tests/integration/test_ahd.py."""

from __future__ import annotations

import pytest

from pipebd.config import ConfigError, RunConfig
from pipebd.preflight import validate
from pipebd.strategies import get_strategy

TINY = RunConfig(workload="tiny", strategy="ahd", batch_size=8, steps=3, warmup=1, threads=1, timeout=60)


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
