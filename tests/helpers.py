"""Shared test helpers."""

from __future__ import annotations

from pipebd.config import RunConfig
from pipebd.verify import VerifyResult, verify_strategy

# verify keys its reference cache by the whole reference configuration (its results directory,
# under the workdir, included), so with the session's one workdir (tests/integration/conftest.py:
# verify_workdir) this cache serves every test module and each distinct sequential reference is
# trained once per session
_REFERENCES: dict = {}


def assert_keeps_math(cfg: RunConfig, workdir: str) -> VerifyResult:
    """Run ``cfg`` and its sequential reference; assert same weights (1e-5 relative) and NAS paths."""
    res = verify_strategy(cfg, workdir=workdir, reference_cache=_REFERENCES)
    assert res.ok, f"{cfg.strategy} x{cfg.devices} on {cfg.workload}: {res.detail}"
    assert res.paths_equal
    assert res.max_rel_error <= 1e-5
    return res


def tiny_two_rank_config(strategy: str, out: str) -> RunConfig:
    """tiny on 2 ranks, batch 4, 3 steps a block, seed 3: the checkpoint tests' runs (and, through
    the session's shared dp run, tests/integration/test_dp_ls.py's run rows)."""
    return RunConfig(workload="tiny", strategy=strategy, devices=2, batch_size=4, steps=3, warmup=1, seed=3,
                     quiet=True, trace=False, out=out)
