"""Measurements of real runs: the CSVs a sequential and a 2-rank tr-dpu run write carry exactly
the columns results/README.md documents, with sane values; the trace has every rank; the ranks
share one clock; tr makes no synchronisation inside its measurement window; importing
pipebd.metrics does not import torch (a fresh interpreter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from pipebd import metrics
from tests.unit.test_metrics import ROOT, documented


def _run(out: str, strategy: str, devices: int):
    from pipebd.config import RunConfig
    from pipebd.runner import launch

    return launch(RunConfig(workload="tiny", strategy=strategy, devices=devices, batch_size=8, steps=3, warmup=1,
                            out=out, quiet=True))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> str:
    """One directory holding a sequential run and a 2-rank tr-dpu run."""
    out = str(tmp_path_factory.mktemp("metrics"))
    _run(out, "sequential", 1)
    _run(out, "tr-dpu", 2)
    return out


def test_csv_headers_are_the_documented_columns(results):
    for name, section in (("runs.csv", "runs.csv"), ("ranks.csv", "ranks.csv"), ("events.csv", "events.csv")):
        header = list(pd.read_csv(os.path.join(results, name), nrows=0).columns)
        assert header == documented(section), name


def test_values_are_sane(results):
    runs, ranks, events = metrics.load_results(results)
    assert len(runs) >= 1 and (runs["status"] == "ok").all()
    for _, run in runs.iterrows():
        r = ranks[ranks.run_id == run.run_id]
        assert sorted(r["rank"].unique()) == list(range(run.devices))
        for rank, g in r.groupby("rank"):
            sec = dict(zip(g.phase, g.seconds))
            wall = g.wall_s.iloc[0]
            assert list(g.phase) == list(metrics.PHASES)
            assert wall > 0 and all(v >= 0 for v in sec.values())
            busy = sum(sec[p] for p in metrics.BUSY_PHASES)
            assert busy <= wall * 1.0001, (run.strategy, rank)
            assert sum(sec.values()) == pytest.approx(wall, rel=0.05), (run.strategy, rank, sec, wall)
            assert g.utilisation.iloc[0] == pytest.approx(min(1.0, busy / wall))
            assert g.peak_memory_mb.iloc[0] > 0
            assert g.nvml_utilisation.isna().all()  # CPU: never sampled
        assert run.measured_time_s == pytest.approx(r.wall_s.max())
        assert run.throughput_sps > 0
        assert run.epoch_time_s == pytest.approx(run.epoch_samples / run.throughput_sps)
        steps = run.epoch_samples // run.batch_size
        assert run.epoch_time_s == pytest.approx(run.fill_drain_s + steps * run.steady_period_s)
        if run.strategy == "sequential":  # not pipelined: no fill, the period is the window's time per step
            assert run.fill_drain_s == pytest.approx(0.0, abs=1e-9)
            assert run.steady_period_s == pytest.approx(run.measured_time_s / run.steps_measured)
        assert run.load_avg_start >= 0 and run.load_avg_end >= 0
        assert 0 < run.mean_utilisation <= 1 and run.max_peak_memory_mb == pytest.approx(r.peak_memory_mb.max())
        assert pd.isna(run.ideal_epoch_time_s) and pd.isna(run.efficiency) and pd.isna(run.mean_nvml_utilisation)
        e = events[events.run_id == run.run_id]
        assert sorted(e["rank"].unique()) == list(range(run.devices))
        assert (e.end_s >= e.start_s).all() and set(e.phase) <= set(metrics.PHASES) - {"idle"}
        measured = range(run.warmup_steps, run.warmup_steps + run.steps_measured)
        assert set(e.step[e.step >= 0]) <= set(measured)  # warm-up steps are not recorded


def test_trace_json_has_every_rank(results):
    runs = pd.read_csv(os.path.join(results, "runs.csv"))
    documented_fields = set(documented("traces/<run_id>.json"))
    for _, run in runs.iterrows():
        with open(os.path.join(results, "traces", f"{run.run_id}.json")) as f:
            trace = json.load(f)
        assert trace["otherData"]["run_id"] == run.run_id and trace["displayTimeUnit"] == "ms"
        assert {k for k in trace if k != "otherData"} | {"otherData.run_id"} <= documented_fields
        spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
        names = [e for e in trace["traceEvents"] if e["ph"] == "M"]
        assert {e["tid"] for e in spans} == set(range(run.devices)) == {e["tid"] for e in names}
        for e in trace["traceEvents"]:
            assert {f"traceEvents[].{k}" for k in e} <= documented_fields
        events = pd.read_csv(os.path.join(results, "events.csv"))
        assert len(spans) == (events.run_id == run.run_id).sum()


def test_two_rank_run_shares_one_clock(results):
    runs, _ranks, events = metrics.load_results(results)
    multi = runs[runs.devices > 1]
    assert not multi.empty
    for _, run in multi.iterrows():
        e = events[events.run_id == run.run_id]
        starts = e.groupby("rank").start_s.min()
        ends = e.groupby("rank").end_s.max()
        # the ranks' measured steps overlap in time on the shared clock (they run concurrently)
        assert starts.max() < ends.min(), (starts.to_dict(), ends.to_dict())


def test_importing_metrics_does_not_import_torch():
    code = "import sys, pipebd.metrics; assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_tr_makes_no_sync_inside_its_window(tmp_path, monkeypatch):
    """tr at --inflight 2 on 2 ranks, timed by the CUDA clock over fake events
    (tests/fake_cuda_clock.py): no rank synchronises while its window is open."""
    from pipebd.config import RunConfig
    from pipebd.runner import launch

    monkeypatch.setenv("PIPEBD_FAKE_CLOCK_DIR", str(tmp_path))
    launch(RunConfig(workload="tiny", strategy="tr", devices=2, batch_size=8, steps=3, warmup=1, inflight=2,
                     out=str(tmp_path / "out"), quiet=True, trace=False, plugins=("tests.fake_cuda_clock",)))
    for rank in (0, 1):
        state = json.load(open(tmp_path / f"rank-{rank}.json"))
        assert state["windows"] == 1 and state["marks"] > 10, state  # the fake clock timed this rank
        assert state["syncs_in_window"] == 0, state
        assert state["syncs_outside"] >= 1, state  # the window's one wait, after it closed
