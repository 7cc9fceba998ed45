"""Measurements: the one place the CSV schemas live, and how a run's figures are derived (DESIGN.md §4).

Each rank's :class:`pipebd.recorder.Recorder` times its spans inside measurement windows; the
runner gathers every rank's :class:`RankReport` on rank 0 and turns them into rows:

- ``runs.csv``   one row per run (:data:`RUN_COLUMNS`),
- ``ranks.csv``  one row per rank and phase (:data:`RANK_COLUMNS`),
- ``events.csv`` one row per timed event (:data:`EVENT_COLUMNS`), plus a Chrome trace.

Epoch time (:func:`summarise`): for each measurement window, ``T`` is the slowest rank's window
time over ``S`` measured steps. A window that is not pipelined costs ``T / S`` per step. A
*pipelined* window (teacher relaying: steps overlap across ranks) starts with the pipeline's
fill and ends with its drain, which an epoch pays once: its steady-state period ``p`` is taken
from the steps after the first (per rank, the time between the first and the last measured
step's completion over ``S - 1`` steps; the slowest rank's, and at most ``T / S``: a fill is
never negative), its fill and drain is ``T - S·p``, and an epoch of ``E`` steps costs
``(T - S·p) + E·p``. A run's epoch time is the sum over its
windows (``dp`` has one per block) — the same definition the cost model uses for predictions.

Rows are appended atomically (a lock, then :func:`pipebd.fileio.atomic_write`: write-to-temp and
rename), so concurrent writers never interleave and a reader never sees half a table. Column meanings: results/README.md.
:func:`with_ideal` fills the ideal-time / efficiency columns of a run row, :func:`load_results`
reads a results directory back (the plots use it). This module does not import torch, so CSV
readers such as ``plots/`` can import it without paying for (or needing) torch.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field

import pandas as pd

from .fileio import atomic_write, atomic_write_text

__all__ = [
    "PHASES", "BUSY_PHASES", "RUN_COLUMNS", "RANK_COLUMNS", "EVENT_COLUMNS", "RankReport", "append_rows",
    "rank_rows", "event_rows", "loss_rows", "LOSS_COLUMNS", "write_trace", "summarise", "window_period", "epoch_time", "with_ideal",
    "load_results",
]

log = logging.getLogger("pipebd.metrics")

#: Phases a rank's time is attributed to; ``idle`` is the remainder of the measured wall time.
PHASES = ("data", "teacher", "student", "update", "comm", "sync", "idle")
#: Phases that count as useful work: utilisation = their seconds / measured wall time.
BUSY_PHASES = ("data", "teacher", "student", "update")

RUN_COLUMNS = [
    "run_id", "timestamp", "tag", "status", "error", "workload", "strategy", "devices", "device_type",
    "batch_size", "steps_measured", "warmup_steps", "measured_time_s", "throughput_sps", "epoch_samples",
    "epoch_time_s", "ideal_epoch_time_s", "efficiency", "mean_utilisation", "max_peak_memory_mb", "plan",
    "resolution", "width_mult", "data", "seed", "threads_per_rank", "git_commit", "torch_version", "hostname",
    "mean_nvml_utilisation", "steady_period_s", "fill_drain_s", "load_avg_start", "load_avg_end", "modes", "cpu",
    "seq_len", "throughput_tps", "model_tflops", "mfu", "epochs", "student_top1", "student_top1_raw", "teacher_top1",
]
RANK_COLUMNS = ["run_id", "workload", "strategy", "devices", "rank", "phase", "seconds", "fraction", "wall_s",
                "utilisation", "peak_memory_mb", "nvml_utilisation"]
EVENT_COLUMNS = ["run_id", "rank", "phase", "block", "step", "start_s", "end_s"]
#: losses.csv: every block's batch loss per step (summed over the replicas' weighted shares)
LOSS_COLUMNS = ["run_id", "workload", "strategy", "devices", "modes", "block", "step", "loss"]


def summed_losses(per_rank: list[dict]) -> dict[int, dict[int, float]]:
    """Every rank's ``{block: {step: loss share}}`` as one ``{block: {step: loss}}``: a block
    trained by several replicas has its shares summed (each is weighted by its rows / batch)."""
    total: dict[int, dict[int, float]] = {}
    for losses in per_rank:
        for block, steps in losses.items():
            per_step = total.setdefault(int(block), {})
            for step, v in steps.items():
                per_step[int(step)] = per_step.get(int(step), 0.0) + v
    return total


def loss_rows(run_id: str, run_row: dict, losses: dict[int, dict[int, float]]) -> list[dict]:
    """losses.csv rows of a run's summed losses (:func:`summed_losses`), by block and step."""
    base = {k: run_row.get(k) for k in ("workload", "strategy", "devices", "modes")}
    return [{"run_id": run_id, **base, "block": b, "step": k, "loss": losses[b][k]}
            for b in sorted(losses) for k in sorted(losses[b])]


@dataclass
class RankReport:
    """What one rank measured; picklable, gathered to rank 0."""

    rank: int
    wall_s: float
    events: list[tuple[str, int, int, float, float]]  # (phase, block, step, start, end), measured only
    peak_memory_mb: float
    nvml_utilisation: float | None = None  # fraction 0..1, mean over the measured windows; None off CUDA
    plan: str = ""
    extra: dict = field(default_factory=dict)
    #: ``time.time()`` at the instant the rank's clock (event times) read 0; aligns ranks' clocks
    t0_unix: float | None = None


def phase_seconds(report: RankReport) -> dict[str, float]:
    """Seconds per phase inside the measured windows; ``idle`` is what no span covered."""
    sec = {p: 0.0 for p in PHASES}
    for phase, _b, _s, start, end in report.events:
        sec[phase] = sec.get(phase, 0.0) + (end - start)
    covered = sum(v for k, v in sec.items() if k != "idle")
    sec["idle"] = max(0.0, report.wall_s - covered)
    return sec


def _utilisation(sec: dict[str, float], wall_s: float) -> float:
    busy = sum(sec.get(p, 0.0) for p in BUSY_PHASES)
    return min(1.0, busy / max(wall_s, 1e-12))


def rank_rows(run_id: str, base: dict, reports: list[RankReport]) -> list[dict]:
    rows = []
    for rep in reports:
        sec = phase_seconds(rep)
        wall = max(rep.wall_s, 1e-12)
        util = _utilisation(sec, rep.wall_s)
        unknown = sorted(set(sec) - set(PHASES))
        if unknown:  # counted as covered time (not idle) but given no row: the rows then fall short of wall_s
            log.warning("rank %d recorded spans of unknown phase(s) %s; known phases: %s", rep.rank, unknown,
                        ", ".join(PHASES))
        for phase in PHASES:
            rows.append({"run_id": run_id, "workload": base["workload"], "strategy": base["strategy"],
                         "devices": base["devices"], "rank": rep.rank, "phase": phase, "seconds": sec[phase],
                         "fraction": sec[phase] / wall, "wall_s": rep.wall_s, "utilisation": util,
                         "peak_memory_mb": rep.peak_memory_mb, "nvml_utilisation": rep.nvml_utilisation})
    return rows


def _clock_offsets(reports: list[RankReport]) -> dict[int, float]:
    """Per rank, the seconds to add to its event times to put every rank on one clock whose
    0 is the earliest rank's start (wall-clock aligned; exact on one host, NTP across hosts)."""
    t0s = [r.t0_unix for r in reports if r.t0_unix is not None]
    if len(t0s) != len(reports):
        return {r.rank: 0.0 for r in reports}
    origin = min(t0s)
    return {r.rank: r.t0_unix - origin for r in reports}


def event_rows(run_id: str, reports: list[RankReport]) -> list[dict]:
    off = _clock_offsets(reports)
    return [{"run_id": run_id, "rank": r.rank, "phase": p, "block": b, "step": s, "start_s": st + off[r.rank],
             "end_s": en + off[r.rank]}
            for r in reports for (p, b, s, st, en) in r.events]


def _windows(report: RankReport) -> list[tuple[float, float, bool, list[tuple], float]]:
    """``(start, end, pipelined, events, scale)`` of each measurement window of ``report``."""
    wins = report.extra.get("windows") or [(0.0, report.wall_s)]
    piped = list(report.extra.get("pipelined") or []) + [False] * len(wins)
    scales = list(report.extra.get("scales") or []) + [1.0] * len(wins)
    out = []
    for k, (s, e) in enumerate(wins):
        evs = [ev for ev in report.events if s <= ev[3] <= e]
        out.append((s, e, bool(piped[k]), evs, float(scales[k])))
    return out


def window_period(events: list[tuple], start: float, end: float, *, pipelined: bool) -> tuple[float, int]:
    """``(steady-state seconds per step, measured steps)`` of one rank's window.

    Steps are the distinct step indices of the window's events. Not pipelined: the window's
    time over its steps. Pipelined: the time from the first measured step's completion (the
    end of its last event) to the last one's, over the steps between them, so the fill before
    the first completion and the drain after the last are left out; with fewer than two
    steps there is nothing to separate and the window's time per step is returned.
    """
    finish: dict[int, float] = {}
    for _p, _b, step, _st, en in events:
        if step >= 0:
            finish[step] = max(finish.get(step, -math.inf), en)
    steps = len(finish)
    if steps == 0:
        return end - start, 0
    ks = sorted(finish)
    if not pipelined or len(ks) < 2:
        return (end - start) / steps, steps
    return (finish[ks[-1]] - finish[ks[0]]) / (ks[-1] - ks[0]), steps


def epoch_time(windows: list[tuple], epoch_steps: int) -> tuple[float, float, float]:
    """``(epoch seconds, steady period, fill and drain)`` from ``(window seconds T, period p,
    steps S[, scale F])`` per window: each window's fill and drain ``T - S·p`` once, plus ``E·p``,
    times ``F`` (1 unless the window is paid once over several epochs)."""
    scaled = [(w[0], w[1], w[2], w[3] if len(w) > 3 else 1.0) for w in windows]
    period = sum(f * p for _t, p, _s, f in scaled)
    fill = sum(f * (t - s * p) for t, p, s, f in scaled)
    return fill + epoch_steps * period, period, fill


def summarise(reports: list[RankReport], *, batch_size: int, steps: int, epoch_samples: int) -> dict:
    """Run-level figures (module docstring): per window the slowest rank's time and period.

    ``steps`` is the measured steps per block asked for; a window whose events show another
    count (a resumed run) uses what it measured."""
    per_rank = [_windows(r) for r in reports]
    counts = {len(w) for w in per_rank}
    if len(counts) != 1:  # ranks disagree on their windows: fall back to each rank's total
        log.warning("ranks recorded different numbers of measurement windows (%s); epoch time from each rank's "
                    "total measured time", sorted(counts))
        per_rank = [[(0.0, r.wall_s, False, r.events, 1.0)] for r in reports]
    windows = []
    for k in range(len(per_rank[0])):
        t = max(w[k][1] - w[k][0] for w in per_rank)
        scale = max(w[k][4] for w in per_rank)
        if not any(w[k][2] for w in per_rank):
            # not pipelined: the window's steps over all ranks (the cache teacher pass splits its
            # batches over the ranks; every other strategy's ranks run the same steps)
            s = len({ev[2] for w in per_rank for ev in w[k][3] if ev[2] >= 0}) or steps
            windows.append((t, t / s, s, scale))
            continue
        periods = [window_period(w[k][3], w[k][0], w[k][1], pipelined=w[k][2]) for w in per_rank]
        s = max(n for _p, n in periods) or steps
        p = max(p for p, n in periods if n) if any(n for _p, n in periods) else t / s
        # a fill cannot be negative: when step costs vary (NAS paths) and the first step happens
        # to be cheap, the period over the later steps exceeds T/S; then there is no fill to see
        windows.append((t, min(p, t / s), s, scale))
    measured = sum(w[0] for w in windows)
    epoch, period, fill = epoch_time(windows, epoch_samples // batch_size)
    utils = [_utilisation(phase_seconds(rep), rep.wall_s) for rep in reports]
    nvml = [r.nvml_utilisation for r in reports if r.nvml_utilisation is not None]
    return {"measured_time_s": measured, "throughput_sps": epoch_samples / epoch if epoch > 0 else float("nan"),
            "epoch_samples": epoch_samples, "epoch_time_s": epoch, "steady_period_s": period, "fill_drain_s": fill,
            "mean_utilisation": sum(utils) / len(utils),
            "max_peak_memory_mb": max(r.peak_memory_mb for r in reports),
            "mean_nvml_utilisation": sum(nvml) / len(nvml) if nvml else None}


def with_ideal(row: dict, ideal_epoch_time_s: float | None) -> dict:
    """A copy of the runs.csv ``row`` with ``ideal_epoch_time_s`` and ``efficiency`` (= ideal /
    measured epoch time) filled in; both ``None`` when the ideal is unknown or not positive."""
    out = dict(row)
    ideal = None if ideal_epoch_time_s is None else float(ideal_epoch_time_s)
    epoch = row.get("epoch_time_s")
    if ideal is None or not math.isfinite(ideal) or ideal <= 0:
        out["ideal_epoch_time_s"], out["efficiency"] = None, None
        return out
    out["ideal_epoch_time_s"] = ideal
    try:
        epoch = float(epoch)
    except (TypeError, ValueError):
        epoch = float("nan")
    out["efficiency"] = ideal / epoch if math.isfinite(epoch) and epoch > 0 else None
    return out


def write_trace(path: str, run_id: str, reports: list[RankReport]) -> None:
    """Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one thread per rank,
    times on the same aligned clock as events.csv."""
    off = _clock_offsets(reports)
    events = []
    for rep in reports:
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": rep.rank, "args": {"name": f"rank {rep.rank}"}})
        for phase, block, step, start, end in rep.events:
            name = phase if block < 0 else f"{phase} b{block}"
            events.append({"name": name, "cat": phase, "ph": "X", "pid": 0, "tid": rep.rank,
                           "ts": (start + off[rep.rank]) * 1e6, "dur": (end - start) * 1e6,
                           "args": {"block": block, "step": step}})
    atomic_write_text(path, json.dumps({"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"run_id": run_id}}))


def append_rows(path: str, rows: list[dict], columns: list[str]) -> None:
    """Append ``rows`` to the CSV at ``path`` atomically: under an exclusive lock, write the
    whole new table to a temporary file and rename it over the old one."""
    if not rows:
        return
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    new = pd.DataFrame(rows)
    for c in columns:
        if c not in new:
            new[c] = None
    new = new[columns + [c for c in new.columns if c not in columns]]
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.path.exists(path) and os.path.getsize(path) > 0:
                old = pd.read_csv(path)
                with warnings.catch_warnings():  # all-empty columns (e.g. no ideal yet) are expected
                    warnings.simplefilter("ignore", FutureWarning)
                    table = pd.concat([old, new], ignore_index=True) if len(old) else new
            else:
                table = new
            atomic_write(path, lambda f: table.to_csv(f, index=False))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def _read_table(path: str, columns: list[str]) -> pd.DataFrame:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    df = pd.read_csv(path)
    for c in columns:  # a table written before a column was appended
        if c not in df:
            df[c] = None
    return df


def load_results(results_dir: str, *, notes: bool = True,
                 statuses: tuple[str, ...] = ("ok",)) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read ``runs.csv``, ``ranks.csv`` and ``events.csv`` of a results directory.

    Keeps only runs whose ``status`` is in ``statuses`` (``"ok"``; the timeline plot also takes
    ``"predicted"``, the replayed runs ``python -m pipebd schedule --predicted-out`` writes) and
    whose epoch time is a positive number;
    every other run is left out with a printed note (on stderr) naming it, and so are its
    rows of ``ranks.csv`` / ``events.csv`` and rows of runs that have no ``runs.csv`` row.
    Missing files give empty tables with the documented columns; so does a missing directory
    (with a note). Returns ``(runs, ranks, events)``.
    """
    say = _note if notes else (lambda _msg: None)
    if not os.path.isdir(results_dir):
        say(f"{results_dir}: no such results directory; nothing read from it")
    runs = _read_table(os.path.join(results_dir, "runs.csv"), RUN_COLUMNS)
    ranks = _read_table(os.path.join(results_dir, "ranks.csv"), RANK_COLUMNS)
    events = _read_table(os.path.join(results_dir, "events.csv"), EVENT_COLUMNS)
    if os.path.isdir(results_dir) and runs.empty:
        say(f"{results_dir}: no runs.csv rows")
    epoch = pd.to_numeric(runs["epoch_time_s"], errors="coerce")
    ok = runs["status"].astype(str).isin(statuses) & (epoch > 0)
    for _, r in runs[~ok].iterrows():
        why = (f"status={r['status']}" + (f": {r['error']}" if isinstance(r["error"], str) and r["error"] else "")
               if str(r["status"]) not in statuses else f"epoch_time_s={r['epoch_time_s']!r} is not a positive number")
        say(f"{results_dir}: skipped run {r['run_id']} ({r['strategy']} on {r['workload']}, "
            f"{r['devices']} devices): {why}")
    runs = runs[ok].reset_index(drop=True)
    keep = set(runs["run_id"])
    for name, df in (("ranks.csv", ranks), ("events.csv", events)):
        orphans = sorted(map(str, set(df["run_id"]) - keep))
        if orphans:
            say(f"{results_dir}: {name}: left out the rows of {len(orphans)} run(s) without an ok runs.csv row "
                f"({', '.join(orphans[:3])}{', ...' if len(orphans) > 3 else ''})")
    ranks = ranks[ranks["run_id"].isin(keep)].reset_index(drop=True)
    events = events[events["run_id"].isin(keep)].reset_index(drop=True)
    return runs, ranks, events
