"""Automatic hybrid distribution (``ahd``), Pipe-BD §III-C, on spawned ranks: relayed stages ×
replicas given by ``--plan``.

Each plan is verified against the sequential reference run with the plan's row split as ghost
shards (``AutoHybrid.reference_shards``): same final weights, same NAS paths. The planner's own
layouts on tiny / tiny-nas are verified by test_verify_registry.py; they never replicate a
stage there, so replicated stages are covered here, by the two most different width changes:
an uneven 2 -> 1 gather (5 + 3 rows), and a 1 -> 2 slice into a replicated stage of the
supernet (whose replicas must sample the same NAS path).
"""

from __future__ import annotations

import pytest

from pipebd.config import RunConfig
from tests.helpers import assert_keeps_math

TINY = RunConfig(workload="tiny", strategy="ahd", batch_size=8, steps=3, warmup=1, threads=1, timeout=60)


PLANS = [
    ("0-1x2@2:1,2-3x1", 3, "tiny"),  # uneven split (5 + 3 rows) -> 1: gather
    ("0x1,1-3x2", 3, "tiny-nas"),  # 1 -> 2: slice; the replicas of blocks 1-3 sample one NAS path
]
#: verified in the session's shared series (tests/integration/conftest.py: verified)
VERIFY_CASES = {case: TINY.replace(plan=case[0], devices=case[1], workload=case[2]) for case in PLANS}


@pytest.mark.parametrize("plan,devices,workload", PLANS)
def test_verify_plans(verified, plan, devices, workload):
    assert_keeps_math(verified(__name__, (plan, devices, workload)))
