"""Experiments and bench on spawned ranks: a tiny experiment runs end to end through run_all's
code path (CSVs, DONE, retry of the failed run only, skip, --force, resume), and bench prints
its table.

They use the tiny workload, 2 measured steps and FLOP-estimated costs (no profiling), so the
file costs a handful of short launches.
"""

from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest

from pipebd.cli import main
from pipebd.experiments import ideal_seconds_per_sample, load_experiment
from pipebd.experiments.grid import _group_config
from tests.unit.test_experiments import GOOD, _write

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAKY = GOOD.replace("strategies: [dp, nosuch]", "strategies: [dp, flaky]").replace(
    "{timeout: 120.0, trace: false}", "{timeout: 120.0, trace: false, plugins: [tests.flaky_strategy]}")


def test_tiny_experiment_end_to_end_retry_skip_force_and_resume(tmp_path, monkeypatch):
    _write(tmp_path, FLAKY)
    results, plots = tmp_path / "results", tmp_path / "plots"
    cmd = ["bash", os.path.join(ROOT, "run_all.sh"), "--only", "tinyexp", "--experiments", str(tmp_path / "exps"),
           "--results", str(results), "--plots", str(plots)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**env, "PIPEBD_FLAKY_FAIL": "1"})
    # a failed run: exit 1 naming it, no DONE, and the ETA on every run line
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 run(s) failed" in out.stdout and "flaky" in out.stdout.split("1 run(s) failed")[1]
    assert "ETA" in out.stdout and "total" in out.stdout and "run_all:" in out.stdout
    d = results / "cpu" / "tinyexp"
    assert not (d / "DONE").exists()
    runs = pd.read_csv(d / "runs.csv")
    assert sorted(runs["strategy"]) == ["dp", "flaky"]
    ok = runs[runs["status"] == "ok"].iloc[0]
    assert ok["tag"] == "tinyexp" and ok["epoch_time_s"] > 0
    # the ideal travels with the run record: the group's cost table (here estimated) is made before its
    # runs, and its ideal per sample is in each run's RunConfig, which the runner writes into the row
    from pipebd.costmodel import estimate_cost_table

    prof = load_experiment(str(tmp_path / "exps" / "tinyexp.yaml")).profile("cpu")
    per_sample = ideal_seconds_per_sample(estimate_cost_table(_group_config(prof, prof.workloads[0], 8, 2)), 2, 8)
    assert per_sample and ok["ideal_epoch_time_s"] == pytest.approx(per_sample * ok["epoch_samples"])
    assert ok["efficiency"] == pytest.approx(ok["ideal_epoch_time_s"] / ok["epoch_time_s"])
    assert "failing on purpose" in runs[runs["status"] == "failed"].iloc[0]["error"]
    assert set(pd.read_csv(d / "simulate.csv")["devices"]) == {1, 2, 4}
    assert set(pd.read_csv(d / "schedules.csv")["devices"]) == {2, 4}
    listed = subprocess.run(cmd + ["--list"], capture_output=True, text=True, timeout=600, env=env).stdout
    assert "[1 of 2 ok, 1 failed]" in listed, listed

    # the next invocation retries only the failed run, then marks the experiment done
    out = subprocess.run(cmd + ["--no-plots"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 failed before and retried now" in out.stdout
    runs = pd.read_csv(d / "runs.csv")
    assert list(runs.groupby("strategy").size().items()) == [("dp", 1), ("flaky", 2)]
    done = json.loads((d / "DONE").read_text())
    assert (done["ok"], done["failed"]) == (2, 0)

    # finished: skipped
    out = subprocess.run(cmd + ["--no-plots"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0 and "done already" in out.stdout
    assert len(pd.read_csv(d / "runs.csv")) == 3
    assert "[done]" in subprocess.run(cmd + ["--list"], capture_output=True, text=True, timeout=600, env=env).stdout

    # an interrupted run (journal says started, rows half written) is cleared on resume
    monkeypatch.delenv("PIPEBD_FLAKY_FAIL", raising=False)
    (d / "DONE").unlink()
    units = pd.read_csv(d / "units.csv")
    dp_unit = units[(units["strategy"] == "dp") & (units["status"] == "ok")]
    units = units.drop(dp_unit.index)  # as if the dp run never finished
    units.to_csv(d / "units.csv", index=False)
    old_dp = dp_unit["run_id"].iloc[0]
    rc = main(["experiment", "tinyexp", "--experiments", str(tmp_path / "exps"), "--results", str(results),
               "--no-plots"])
    assert rc == 0
    runs = pd.read_csv(d / "runs.csv")
    assert old_dp not in set(runs["run_id"]) and sorted(runs[runs.status == "ok"]["strategy"]) == ["dp", "flaky"]
    assert old_dp not in set(pd.read_csv(d / "ranks.csv")["run_id"])
    assert (d / "DONE").exists()

    # --force reruns from scratch
    rc = main(["experiment", "tinyexp", "--experiments", str(tmp_path / "exps"), "--results", str(results),
               "--no-plots", "--force"])
    assert rc == 0
    again = pd.read_csv(d / "runs.csv")
    assert len(again) == 2 and not set(again["run_id"]) & set(runs["run_id"])


def test_bench_prints_table_with_dp_and_speedup(tmp_path, capsys):
    rc = main(["bench", "--workload", "tiny", "--devices", "2", "--batch-size", "8", "--steps", "2", "--warmup", "1",
               "--repeats", "1", "--strategies", "dp,tr,nosuch", "--ideal", "estimate", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    table = out[out.index("strategy "):]
    assert "speedup" in table and "eff." in table
    dp_line = next(ln for ln in table.splitlines() if ln.startswith("dp "))
    assert "1.00x" in dp_line
    assert any(ln.startswith("tr ") and "x" in ln for ln in table.splitlines())
    assert any(ln.startswith("nosuch") and "failed" in ln for ln in table.splitlines())
    assert any(ln.startswith("ideal") for ln in table.splitlines())
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert set(runs["tag"]) == {"bench"} and set(runs["strategy"]) == {"dp", "tr", "nosuch"}
