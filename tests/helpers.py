"""Shared test helpers."""

from __future__ import annotations

from pipebd.config import RunConfig
from pipebd.verify import VerifyResult

# verify keys its reference cache by the whole reference configuration (its results directory,
# under the workdir, included), so with the session's one workdir (tests/integration/conftest.py:
# verify_workdir, verified) this cache serves every test module and each distinct sequential
# reference is trained once per session
_REFERENCES: dict = {}


def assert_keeps_math(res: VerifyResult) -> VerifyResult:
    """Assert that a verified run has the reference's weights (1e-5 relative) and NAS paths."""
    assert res.ok, f"{res.strategy} x{res.devices}: {res.detail}"
    assert res.paths_equal
    assert res.max_rel_error <= 1e-5
    return res


def tiny_two_rank_config(strategy: str, out: str) -> RunConfig:
    """tiny on 2 ranks, batch 4, 3 steps a block, seed 3: the checkpoint tests' runs (and, through
    the session's shared dp run, tests/integration/test_dp_ls.py's run rows)."""
    return RunConfig(workload="tiny", strategy=strategy, devices=2, batch_size=4, steps=3, warmup=1, seed=3,
                     quiet=True, trace=False, out=out)
