"""Shared test helpers."""

from __future__ import annotations

from pipebd.config import RunConfig
from pipebd.verify import VerifyResult, verify_strategy

# verify keys its reference cache by the whole reference configuration, so one cache serves
# every test module and each distinct sequential reference is trained once per session
_REFERENCES: dict = {}


def assert_keeps_math(cfg: RunConfig, workdir: str) -> VerifyResult:
    """Run ``cfg`` and its sequential reference; assert same weights (1e-5 relative) and NAS paths."""
    res = verify_strategy(cfg, workdir=workdir, reference_cache=_REFERENCES)
    assert res.ok, f"{cfg.strategy} x{cfg.devices} on {cfg.workload}: {res.detail}"
    assert res.paths_equal
    assert res.max_rel_error <= 1e-5
    return res
