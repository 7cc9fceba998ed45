"""Measurements: per-rank timing events, and the one place the CSV schemas live (DESIGN.md §4).

Each rank owns a :class:`Recorder`. A strategy wraps its work in ``recorder.span(phase, block,
step)`` (phases: :data:`PHASES`) and brackets the timed part of its run with
``recorder.measure()`` windows; warm-up steps run outside any window and are excluded. The
runner gathers every rank's :class:`RankReport` on rank 0 and turns them into rows:

- ``runs.csv``   one row per run (:data:`RUN_COLUMNS`),
- ``ranks.csv``  one row per rank and phase (:data:`RANK_COLUMNS`),
- ``events.csv`` one row per timed event (:data:`EVENT_COLUMNS`), plus a Chrome trace.

Rows are appended atomically (a lock, then write-to-temp and rename), so concurrent writers
never interleave and a reader never sees half a table. Column meanings: results/README.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

__all__ = [
    "PHASES", "RUN_COLUMNS", "RANK_COLUMNS", "EVENT_COLUMNS", "Recorder", "RankReport",
    "append_rows", "rank_rows", "event_rows", "write_trace", "summarise",
]

#: Phases a rank's time is attributed to; ``idle`` is the remainder of the measured wall time.
PHASES = ("data", "teacher", "student", "update", "comm", "sync", "idle")

RUN_COLUMNS = [
    "run_id", "timestamp", "tag", "status", "error", "workload", "strategy", "devices", "device_type",
    "batch_size", "steps_measured", "warmup_steps", "measured_time_s", "throughput_sps", "epoch_samples",
    "epoch_time_s", "ideal_epoch_time_s", "efficiency", "mean_utilisation", "max_peak_memory_mb", "plan",
    "resolution", "width_mult", "data", "seed", "threads_per_rank", "git_commit", "torch_version", "hostname",
]
RANK_COLUMNS = ["run_id", "workload", "strategy", "devices", "rank", "phase", "seconds", "fraction", "wall_s",
                "utilisation", "peak_memory_mb", "nvml_utilisation"]
EVENT_COLUMNS = ["run_id", "rank", "phase", "block", "step", "start_s", "end_s"]


@dataclass
class RankReport:
    """What one rank measured; picklable, gathered to rank 0."""

    rank: int
    wall_s: float
    events: list[tuple[str, int, int, float, float]]  # (phase, block, step, start, end), measured only
    peak_memory_mb: float
    nvml_utilisation: float | None = None
    plan: str = ""
    extra: dict = field(default_factory=dict)


class Recorder:
    """Times the phases of one rank; ``span`` and ``measure`` are cheap context managers."""

    def __init__(self, rank: int, device: torch.device | None = None):
        self.rank = rank
        self.cuda = device is not None and device.type == "cuda"
        self.device = device
        self.events: list[tuple[str, int, int, float, float]] = []
        self.windows: list[tuple[float, float]] = []
        self._measuring = False
        self._t0 = time.perf_counter()
        self.plan = ""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self._t0

    @contextlib.contextmanager
    def span(self, phase: str, block: int = -1, step: int = -1):
        if not self._measuring:
            yield
            return
        start = self._now()
        try:
            yield
        finally:
            self.events.append((phase, block, step, start, self._now()))

    def start_window(self) -> None:
        """Open a timed window; a run's measured wall time is the sum of its windows."""
        if self._measuring:
            raise RuntimeError("a measurement window is already open")
        self._window_start = self._now()
        self._measuring = True

    def stop_window(self) -> None:
        if self._measuring:
            self._measuring = False
            self.windows.append((self._window_start, self._now()))

    @contextlib.contextmanager
    def measure(self):
        """``with recorder.measure():`` — a timed window around the block."""
        self.start_window()
        try:
            yield
        finally:
            self.stop_window()

    @property
    def measuring(self) -> bool:
        return self._measuring

    def report(self) -> RankReport:
        return RankReport(rank=self.rank, wall_s=sum(e - s for s, e in self.windows), events=list(self.events),
                          peak_memory_mb=peak_memory_mb(self.device), plan=self.plan,
                          extra={"windows": list(self.windows)})


def peak_memory_mb(device: torch.device | None) -> float:
    """``max_memory_allocated`` on CUDA; the process's peak RSS on CPU."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def phase_seconds(report: RankReport) -> dict[str, float]:
    """Seconds per phase inside the measured windows; ``idle`` is what no span covered."""
    sec = {p: 0.0 for p in PHASES}
    for phase, _b, _s, start, end in report.events:
        sec[phase] = sec.get(phase, 0.0) + (end - start)
    covered = sum(v for k, v in sec.items() if k != "idle")
    sec["idle"] = max(0.0, report.wall_s - covered)
    return sec


def rank_rows(run_id: str, base: dict, reports: list[RankReport]) -> list[dict]:
    rows = []
    for rep in reports:
        sec = phase_seconds(rep)
        wall = max(rep.wall_s, 1e-12)
        busy = sum(v for k, v in sec.items() if k not in ("idle", "sync", "comm"))
        for phase in PHASES:
            rows.append({"run_id": run_id, "workload": base["workload"], "strategy": base["strategy"],
                         "devices": base["devices"], "rank": rep.rank, "phase": phase, "seconds": sec[phase],
                         "fraction": sec[phase] / wall, "wall_s": rep.wall_s, "utilisation": min(1.0, busy / wall),
                         "peak_memory_mb": rep.peak_memory_mb, "nvml_utilisation": rep.nvml_utilisation})
    return rows


def event_rows(run_id: str, reports: list[RankReport]) -> list[dict]:
    return [{"run_id": run_id, "rank": r.rank, "phase": p, "block": b, "step": s, "start_s": st, "end_s": en}
            for r in reports for (p, b, s, st, en) in r.events]


def summarise(reports: list[RankReport], *, batch_size: int, steps: int, epoch_samples: int) -> dict:
    """Run-level figures: measured time = the slowest rank's measured wall time."""
    measured = max(r.wall_s for r in reports)
    throughput = steps * batch_size / measured if measured > 0 else float("nan")
    utils = []
    for rep in reports:
        sec = phase_seconds(rep)
        busy = sum(v for k, v in sec.items() if k not in ("idle", "sync", "comm"))
        utils.append(min(1.0, busy / max(rep.wall_s, 1e-12)))
    return {"measured_time_s": measured, "throughput_sps": throughput, "epoch_samples": epoch_samples,
            "epoch_time_s": epoch_samples / throughput, "mean_utilisation": sum(utils) / len(utils),
            "max_peak_memory_mb": max(r.peak_memory_mb for r in reports)}


def write_trace(path: str, run_id: str, reports: list[RankReport]) -> None:
    """Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one thread per rank."""
    events = []
    for rep in reports:
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": rep.rank, "args": {"name": f"rank {rep.rank}"}})
        for phase, block, step, start, end in rep.events:
            name = phase if block < 0 else f"{phase} b{block}"
            events.append({"name": name, "cat": phase, "ph": "X", "pid": 0, "tid": rep.rank,
                           "ts": start * 1e6, "dur": (end - start) * 1e6, "args": {"block": block, "step": step}})
    _atomic_write_text(path, json.dumps({"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"run_id": run_id}}))


def _atomic_write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
                table = pd.concat([old, new], ignore_index=True) if len(old) else new
            else:
                table = new
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".csv")
            with os.fdopen(fd, "w") as f:
                table.to_csv(f, index=False)
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
