"""Runs shared by several integration tests: each is launched once per session, on first use."""

from __future__ import annotations

import pytest

from tests.helpers import tiny_two_rank_config


@pytest.fixture(scope="session")
def verify_workdir(tmp_path_factory) -> str:
    """The one working directory of every verify in the session. ``verify_strategy`` keys a cached
    sequential reference by its whole configuration, whose results directory lies under the
    workdir, so references are shared (trained once) only between runs that share the workdir."""
    return str(tmp_path_factory.mktemp("verify"))


@pytest.fixture(scope="session")
def verified(request, verify_workdir):
    """``verified(module_name, key)``: the :class:`~pipebd.verify.VerifyResult` of a case in a test
    module's ``VERIFY_CASES`` (key -> RunConfig). Every case of every module collected in the
    session is verified at once, on first use, with :func:`pipebd.verify.verify_strategies`: the
    references in one series of single-rank runs, the runs in one series per device count, so the
    session pays for a few process starts instead of two per case."""
    from pipebd.verify import prepare, verify_strategies
    from tests.helpers import _REFERENCES

    cases = {}
    for module in dict.fromkeys(item.module for item in request.session.items):
        for key, cfg in getattr(module, "VERIFY_CASES", {}).items():
            cases[(module.__name__, key)] = cfg
    prepared = {case: prepare(cfg, verify_workdir) for case, cfg in cases.items()}
    results = dict(zip(prepared, verify_strategies(list(prepared.values()), reference_cache=_REFERENCES)))
    return lambda module, key: results[(module, key)]


@pytest.fixture(scope="session")
def dp_tiny_run(tmp_path_factory):
    """One uninterrupted dp run on 2 ranks: ``(results dir, saved weights, RunOutcome)``.

    The checkpoint tests compare resumed runs with its weights; test_dp_ls reads its run rows."""
    from pipebd.runner import launch

    root = tmp_path_factory.mktemp("dp-tiny")
    out, weights = str(root / "res"), str(root / "whole.pt")
    outcome = launch(tiny_two_rank_config("dp", out).replace(save_weights=weights))
    return out, weights, outcome
