"""Running an experiment: one unit through :func:`pipebd.runner.launch` (a failure becomes a
``status=failed`` row), the units of a group with the invocation's ETA, the re-run rounds of noisy
cells, and :func:`run_experiment`, which per group profiles first, then runs the group's units
with the ideal from that profile in their RunConfig, and writes the derived tables and ``DONE``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

from ..config import RunConfig
from ..fileio import atomic_write_text
from .grid import (Unit, _canon, _canon_or_same, _group_config, _groups, input_resolution, plan_units, rotated,
                   unit_config)
from .journal import (_journal, _journal_row, _not_ok, _prepare_dir, _purge, _read_csv, _settings, _write_table,
                      experiment_dir)
from .spec import DEFAULT_MAX_RERUNS, DEFAULT_PROFILE, Experiment, ExperimentError, ProfileSpec, WorkloadSpec
from .tables import (SCHEDULE_COLUMNS, SIMULATE_COLUMNS, _schedule_rows, _simulate_rows, group_costs,
                     ideal_seconds_per_sample, profile_name)


@dataclass
class UnitResult:
    run_id: str
    status: str  # ok | failed
    row: dict
    wall_s: float
    error: str = ""


def run_unit(cfg: RunConfig, *, run_id: str | None = None) -> UnitResult:
    """Launch ``cfg`` under ``run_id``; a failure becomes a ``status=failed`` row of ``runs.csv`` (the
    runner writes it for failures after spawning; here for those before, e.g. an unknown strategy)."""
    from .. import metrics
    from ..runner import failed_row, launch, new_run_id

    run_id = run_id or new_run_id()
    t0 = time.perf_counter()
    try:
        row = launch(cfg, run_id=run_id).row
        return UnitResult(run_id, "ok", row, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 — any failure of one run is recorded and the experiment goes on
        msg = " ".join(str(e).split()) or type(e).__name__
        path = os.path.join(cfg.out, "runs.csv")
        runs = _read_csv(path)
        if runs.empty or run_id not in set(runs["run_id"].astype(str)):
            row = failed_row(cfg.replace(workload=_canon_or_same(cfg.workload)), run_id, msg)
            with warnings.catch_warnings():  # pandas warns about the all-empty figure columns
                warnings.simplefilter("ignore", FutureWarning)
                metrics.append_rows(path, [row], metrics.RUN_COLUMNS)
        return UnitResult(run_id, "failed", {}, time.perf_counter() - t0, msg)


class Eta:
    """Progress over every run of an invocation: ``[k/N]`` and the estimated time left, from the
    mean wall time of the runs finished so far in this invocation."""

    def __init__(self, total: int):
        self.total, self.done, self.seconds = total, 0, 0.0

    def add(self, n: int) -> None:
        """``n`` more runs (re-runs of noisy cells) join the total."""
        self.total += n

    def tick(self, wall_s: float) -> str:
        self.done += 1
        self.seconds += wall_s
        left = max(0, self.total - self.done) * self.seconds / self.done
        return f"[{self.done}/{self.total}, ETA {int(left // 60)}m{int(left % 60):02d}s]"


@dataclass
class ExperimentOutcome:
    """What one :func:`run_experiment` call did: ``ran`` is False when it was skipped as done."""

    ran: bool
    failed: list[str] = field(default_factory=list)  # unit keys whose last run failed, with the error
    noisy: list[str] = field(default_factory=list)  # cells still noisy after the re-runs


def _run_units(units, d, prof, exp, csv_path, eta: Eta, say, *, ideal: float | None = None) -> None:
    """Run ``units`` in order, each journaled before and after; ``ideal`` (the group's ideal seconds
    per sample, from its cost table) goes into every run's RunConfig, so the run record carries it."""
    from ..runner import new_run_id

    for u in units:
        cfg = unit_config(prof, u, out=d, tag=exp.name, profile_csv=csv_path, ideal_seconds_per_sample=ideal)
        run_id = new_run_id()
        _journal_row(d, u, run_id, "started")
        res = run_unit(cfg, run_id=run_id)
        _journal_row(d, u, run_id, res.status, res.wall_s, res.error)
        what = (f"epoch {float(res.row['epoch_time_s']):.1f} s" if res.status == "ok"
                else f"FAILED: {res.error[:160]}")
        rerun = " (re-run)" if u.repeat >= prof.repeats else ""
        say(f"  {eta.tick(res.wall_s)} {u.workload.name} b{u.batch_size} n{u.devices} r{u.repeat} {u.strategy:<7} "
            f"{what} ({res.wall_s:.0f} s){rerun}")


def _group_cells(d: str, w: WorkloadSpec, b: int, n: int, gcfg: RunConfig):
    """The speedup cells (:func:`pipebd.derived.speedup_cells`) of one group's ok runs so far."""
    from ..derived import speedup_cells

    runs = _read_csv(os.path.join(d, "runs.csv"))
    if runs.empty:
        return None
    res = float(input_resolution(gcfg))
    g = runs[(runs["workload"] == _canon(w.name)) & (runs["batch_size"] == b) & (runs["devices"] == n)
             & (_numeric(runs["resolution"]) == res) & ((_numeric(runs["width_mult"]) - w.width_mult).abs() < 1e-9)]
    return speedup_cells(g)


def _numeric(col):
    """A CSV column as numbers (blanks and text become NaN)."""
    import pandas as pd

    return pd.to_numeric(col, errors="coerce")


def _rerun_noisy(d, prof, exp, w, b, n, gcfg, csv_path, max_reruns: int, eta: Eta, say, *,
                 ideal: float | None = None) -> list[str]:
    """Re-run the group's noisy cells, each round ``dp`` and the noisy strategies in rotated order,
    until none is noisy or ``max_reruns`` rounds ran; returns the cells still noisy."""
    from ..derived import noisy_strategies

    steps = w.steps if w.steps is not None else prof.steps
    warmup = w.warmup if w.warmup is not None else prof.warmup
    done, _ = _journal(d)
    group = f"{w.key}|b{b}|n{n}|"  # the Unit.key prefix of this group
    rounds = len({int(r["repeat"]) for k, r in done.items() if k.startswith(group) and int(r["repeat"]) >= prof.repeats})
    while True:
        cells = _group_cells(d, w, b, n, gcfg)
        noisy = (noisy_strategies(cells[["strategy", "runs", "spread"]].itertuples(index=False, name=None))
                 if cells is not None and prof.strategies else [])
        noisy = [s for s in noisy if s in prof.strategies]
        if not noisy or "dp" not in prof.strategies:
            return []
        if rounds >= max_reruns:
            flagged = cells[cells["noisy"]]
            return [f"{w.name} b{b} n{n} {r.strategy} (spread {r.spread:.0%} over {r.runs} runs)"
                    for r in flagged.itertuples()]
        repeat = prof.repeats + rounds
        say(f"  noisy: {', '.join(s for s in noisy if s != 'dp')} on {w.name} b{b} n{n} (repeats differ by more "
            f"than 25 %): re-run round {rounds + 1}/{max_reruns} with dp")
        units = [Unit(w, s, n, b, repeat, steps, warmup) for s in rotated(noisy, rounds)]
        eta.add(len(units))
        _run_units(units, d, prof, exp, csv_path, eta, say, ideal=ideal)
        rounds += 1


def _with_teachers(prof: ProfileSpec, d: str, say) -> ProfileSpec:
    """``prof`` with every workload's ``teacher_weights`` set to the teacher trained for it when the
    profile asks (``teacher_epochs`` > 0): as ``python -m pipebd teacher`` (:mod:`pipebd.teacher_training`)
    on the training split, once per teacher, into ``d`` (kept until ``--force``; a file there is a
    finished one: the command writes it atomically). A workload that names its own file keeps it."""
    if not prof.teacher_epochs:
        return prof
    import dataclasses

    from .. import teacher_training
    from ..errors import ConfigError

    workloads = []
    for w in prof.workloads:
        if w.teacher_weights is None:
            # compress-mnist and nas-mnist share one teacher (pipebd.zoo.mnist.mnist_teacher): one file
            path = os.path.join(d, f"teacher-mnist-w{w.width_mult:g}-e{prof.teacher_epochs}.pt")
            if not os.path.exists(path):
                args = teacher_training.teacher_args(w.name, path, epochs=prof.teacher_epochs, width_mult=w.width_mult,
                                                     seed=prof.options.get("seed", 0))
                try:
                    r = teacher_training.train_teacher(args)
                except ConfigError as e:
                    raise ExperimentError(f"training the teacher of {w.name}: {e}") from None
                say(f"  teacher of {w.name}: {r.epochs} epoch(s) in {r.seconds:.1f} s, test top-1 "
                    f"{r.test_top1:.2%} -> {path}")
            w = dataclasses.replace(w, teacher_weights=path)
        workloads.append(w)
    return dataclasses.replace(prof, workloads=tuple(workloads))


def run_experiment(exp: Experiment, profile: str = DEFAULT_PROFILE, *, results_root: str = "results",
                   force: bool = False, say: Callable[[str], None] = print, max_reruns: int = DEFAULT_MAX_RERUNS,
                   eta: Eta | None = None) -> ExperimentOutcome:
    """Run (or resume) ``exp``'s ``profile``. ``DONE`` is written only when every run succeeded; a
    failed run is retried by the next invocation. Noisy cells are re-run (``max_reruns`` rounds)."""
    from ..strategies import import_plugins, strategy_names

    prof = exp.profile(profile)
    d = experiment_dir(results_root, profile, exp.name)
    if not force and os.path.exists(os.path.join(d, "DONE")):
        say(f"{exp.name}: done already ({d}/DONE); --force reruns it")
        return ExperimentOutcome(ran=False)
    if prof.options.get("device_type") == "cuda" and (prof.strategies or prof.costs == "profile"):
        import torch

        if not torch.cuda.is_available():
            raise ExperimentError(f"{exp.name} [{profile}] runs on CUDA, which is not available here; run the "
                                  "cpu profile (--profile cpu) on this machine")
    t_start = time.perf_counter()
    settings = _settings(exp, profile)
    _prepare_dir(d, settings, force=force, say=say)
    done, interrupted = _journal(d)
    _purge(d, interrupted, say)
    prof = _with_teachers(prof, d, say)
    units = plan_units(prof)
    todo = _not_ok(units, done)
    if eta is None:
        eta = Eta(len(todo))
    retried = sum(1 for u in todo if u.key in done)
    try:
        import_plugins(prof.options.get("plugins", ()))  # strategies a plugin registers are known here too
    except Exception as e:  # noqa: BLE001 — the runs will fail with the same error, recorded
        say(f"  note: {e}")
    known = set(strategy_names())
    missing = [s for s in prof.strategies if s not in known]
    say(f"{exp.name} [{profile}]: {len(units)} runs ({len(units) - len(todo)} done before"
        + (f", {retried} failed before and retried now" if retried else "") + f"), "
        f"{len(_groups(prof))} configuration(s) -> {d}")
    if missing:
        say(f"  note: strategy {', '.join(missing)} is not registered here; its runs are recorded as failed")
    sim_rows: list[dict] = []
    sched_rows: list[dict] = []
    still_noisy: list[str] = []
    top = max(prof.devices)
    for w, b, n in _groups(prof):  # per group: its costs (profiled first), then its runs with their ideal
        gcfg = _group_config(prof, w, b, n)
        cache = os.path.join(results_root, profile, "profiles", profile_name(gcfg))
        warmup = w.warmup if w.warmup is not None else prof.warmup
        costs, csv_path = group_costs(gcfg, prof.costs, path=cache, force=force, say=say, first_step=warmup)
        per_sample = None
        if costs is not None:
            per_sample = ideal_seconds_per_sample(costs, n, b)
            if n == top:  # simulate and plan from the profile of the most devices measured
                label = csv_path or "estimate"
                for epochs in prof.epochs:
                    sim_rows += _simulate_rows(gcfg.replace(epochs=epochs), costs, prof.simulate_devices, label, say)
                sched_rows += _schedule_rows(gcfg, costs, prof.plan_devices, label, say)
        _run_units([u for u in todo if u.group == (w.key, b, n)], d, prof, exp, csv_path, eta, say,
                   ideal=per_sample)
        if prof.repeats > 1:
            still_noisy += _rerun_noisy(d, prof, exp, w, b, n, gcfg, csv_path, max_reruns, eta, say,
                                        ideal=per_sample)
    if exp.paper_reference:
        _write_table(os.path.join(d, "paper_reference.csv"),
                     [{"workload": _canon(wl), "strategy": s, "speedup_vs_dp": v, "devices": 4,
                       "source": "Jang et al., DATE 2023, Fig. 6 (4 x RTX A6000)"}
                      for wl, ref in exp.paper_reference.items() for s, v in ref.items()],
                     ["workload", "strategy", "speedup_vs_dp", "devices", "source"])
    if prof.simulate_devices:
        _write_table(os.path.join(d, "simulate.csv"), sim_rows, SIMULATE_COLUMNS)
    if prof.plan_devices:
        _write_table(os.path.join(d, "schedules.csv"), sched_rows, SCHEDULE_COLUMNS)
    final, _ = _journal(d)
    failed = [f"{k}: {r.get('error', '')}"[:240] for k, r in final.items() if r["status"] != "ok"]
    summary = {"experiment": exp.name, "profile": profile, "finished": _dt.datetime.now().isoformat(timespec="seconds"),
               "runs": len(final), "ok": sum(r["status"] == "ok" for r in final.values()), "failed": len(failed),
               "noisy_cells": still_noisy, "seconds_this_session": round(time.perf_counter() - t_start, 1)}
    if failed:
        say(f"{exp.name}: NOT done: {len(failed)} run(s) failed (the next invocation retries only those): "
            + "; ".join(failed[:5]) + (" ..." if len(failed) > 5 else ""))
    else:
        atomic_write_text(os.path.join(d, "DONE"), json.dumps(summary, indent=1) + "\n")
        say(f"{exp.name}: done in {summary['seconds_this_session']:.0f} s, {summary['ok']} ok"
            + (f"; still noisy after {max_reruns} re-run round(s): {'; '.join(still_noisy)}" if still_noisy else ""))
    return ExperimentOutcome(ran=True, failed=failed, noisy=still_noisy)
