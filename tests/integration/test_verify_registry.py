"""The registry is the contract: every registered strategy — a new baseline included, with no
edit here — trains the same student weights (and NAS paths) as the sequential reference with
the strategy's per-replica split, at N = 2 and 3 on ``tiny``, on the decoder workload ``llm-tiny``
(a two-candidate library per block: every candidate's weights must match; N = 2, and N = 3 for
``tr-dpu`` and ``ahd``), and on the supernet ``tiny-nas``.

A strategy that refuses both ``tiny`` shapes (e.g. a map written for the paper's 4 devices and 6
blocks) is verified on the paper's shape instead (the 6-block nas-cifar10 at N = 4, 16 px), so every
registered strategy is verified somewhere. References are shared between strategies with the
same split (the session's verify_workdir and tests.helpers' cache, so other modules' verify tests
share them too), and every case runs in the session's series of runs, one per device count (one spawn each:
``verify_strategies`` through the ``verified`` fixture), so the whole registry costs a handful of
process starts.

Batch 10 makes every data-parallel split at N = 3 uneven (4 + 3 + 3 rows: the rows_r / B loss
weights), so no per-strategy test repeats it.
"""

from __future__ import annotations

import pytest

from pipebd.config import ConfigError, RunConfig
from pipebd.preflight import validate
from pipebd.strategies import get_strategy, strategy_names

TINY = RunConfig(workload="tiny", batch_size=10, steps=3, warmup=1, threads=1, timeout=60)
PAPER_SHAPE = RunConfig(workload="nas-cifar10", resolution=16, batch_size=8, steps=2, warmup=1, threads=1,
                        timeout=60, devices=4)


def _runnable(cfg: RunConfig) -> str | None:
    try:
        validate(cfg)
        return None
    except ConfigError as e:
        return str(e)


def _cases():
    for name in strategy_names():
        if get_strategy(name).max_devices == 1:
            yield name, 1, "tiny"
            continue
        for n in (2, 3):
            yield name, n, "tiny"
        yield name, 2, "tiny-nas"
        yield name, 2, "llm-tiny"
        if name in ("tr-dpu", "ahd"):  # N = 3 where the layout has the most to get wrong (the suite's budget)
            yield name, 3, "llm-tiny"


def _config(strategy: str, devices: int, workload: str) -> RunConfig | str:
    """The case's configuration, or why the strategy refuses it (the test is then skipped)."""
    cfg = TINY.replace(strategy=strategy, devices=devices, workload=workload, inflight=1 if devices == 3 else 2)
    if workload == "llm-tiny":  # 16 tokens, 2 candidates per block (ffn0.5, kv1)
        cfg = cfg.replace(seq_len=16, batch_size=6, steps=2)
    why = _runnable(cfg)
    if why is None:
        return cfg
    tiny_ok = any(_runnable(TINY.replace(strategy=strategy, devices=n)) is None for n in (2, 3))
    if tiny_ok or devices != 2 or workload != "tiny":
        return f"{strategy} refuses this shape: {why[:120]}"
    cfg = PAPER_SHAPE.replace(strategy=strategy)  # refuses every tiny shape: its own, the paper's
    assert _runnable(cfg) is None, f"{strategy} runs on neither tiny at N=2/3 nor the paper's 4 x 6 shape"
    return cfg


CASES = list(_cases())
_CONFIGS = {case: _config(*case) for case in CASES}
#: the runnable cases, verified in the session's shared series (tests/integration/conftest.py: verified)
VERIFY_CASES = {case: cfg for case, cfg in _CONFIGS.items() if not isinstance(cfg, str)}


@pytest.mark.parametrize("strategy,devices,workload", CASES)
def test_every_registered_strategy_keeps_the_math(verified, strategy, devices, workload):
    case = (strategy, devices, workload)
    if isinstance(_CONFIGS[case], str):
        pytest.skip(_CONFIGS[case])
    res = verified(__name__, case)
    assert res.ok, res.detail
    assert res.paths_equal
