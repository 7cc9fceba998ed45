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

On CUDA a :class:`NvmlSampler` thread reads NVML's GPU utilisation (``torch.cuda.utilization``,
which needs ``nvidia-ml-py``) every ~75 ms while a measurement window is open; on CPU nothing
is sampled and peak memory is the process's peak RSS. :func:`with_ideal` fills the
ideal-time / efficiency columns of a run row, :func:`load_results` reads a results directory
back (the plots use it). This module imports torch lazily, so CSV readers such as ``plots/``
can import it without paying for (or needing) torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import resource
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import pandas as pd

if TYPE_CHECKING:  # torch is imported lazily: plots read CSVs through this module without it
    import torch

__all__ = [
    "atomic_write_text",
    "PHASES", "BUSY_PHASES", "RUN_COLUMNS", "RANK_COLUMNS", "EVENT_COLUMNS", "Recorder", "RankReport",
    "NvmlSampler", "append_rows", "rank_rows", "event_rows", "write_trace", "summarise", "with_ideal",
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
    "mean_nvml_utilisation",
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
    nvml_utilisation: float | None = None  # fraction 0..1, mean over the measured windows; None off CUDA
    plan: str = ""
    extra: dict = field(default_factory=dict)
    #: ``time.time()`` at the instant the rank's clock (event times) read 0; aligns ranks' clocks
    t0_unix: float | None = None


_NVML_NOTED = False


def _nvml_note(rank: int, why: BaseException) -> None:
    """Say once per process that NVML utilisation is not recorded, and why."""
    global _NVML_NOTED
    if _NVML_NOTED:
        return
    _NVML_NOTED = True
    msg = (f"NVML utilisation is not recorded (nvml_utilisation left empty): {type(why).__name__}: {why}. "
           "Install nvidia-ml-py to record it.")
    if rank == 0:
        print(f"[pipebd] note: {msg}", file=sys.stderr)
    log.info(msg)


def nvml_reader(device: "torch.device", rank: int = 0) -> Callable[[], float] | None:
    """A function returning the device's NVML utilisation as a fraction, or ``None`` (with a
    one-time note) when NVML cannot be read here (no ``nvidia-ml-py``, no driver, not CUDA)."""
    if device is None or device.type != "cuda":
        return None
    import torch

    def read() -> float:
        return torch.cuda.utilization(device) / 100.0

    try:
        read()
    except Exception as e:  # noqa: BLE001 — any NVML failure only disables the sampler
        _nvml_note(rank, e)
        return None
    return read


class NvmlSampler:
    """Background thread reading a utilisation counter every ``interval_s`` while ``active()``.

    Only samples taken while a measurement window is open count, so the mean is a
    time-weighted mean over the measured windows. A window shorter than the interval gets
    one sample when it closes (:meth:`window_closed`), so every window is represented.
    The thread is a daemon and never touches the CUDA stream; a read that fails stops it.
    """

    def __init__(self, read: Callable[[], float], active: Callable[[], bool], *, interval_s: float = 0.075,
                 rank: int = 0):
        if not 0 < interval_s <= 1.0:
            raise ValueError(f"interval_s must be in (0, 1] seconds, got {interval_s}")
        self.read = read
        self.active = active
        self.interval_s = interval_s
        self.rank = rank
        self.samples: list[float] = []
        self._in_window = 0  # samples taken in the currently open window
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed = False

    def start(self) -> None:
        if self._thread is None and not self.failed:
            self._thread = threading.Thread(target=self._loop, name=f"pipebd-nvml-{self.rank}", daemon=True)
            self._thread.start()

    def _take(self) -> None:
        try:
            v = float(self.read())
        except Exception as e:  # noqa: BLE001
            self.failed = True
            self._stop.set()
            _nvml_note(self.rank, e)
            return
        with self._lock:
            self.samples.append(v)
            self._in_window += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.active():
                self._take()

    def window_opened(self) -> None:
        with self._lock:
            self._in_window = 0

    def window_closed(self) -> None:
        if not self.failed and self._in_window == 0:
            self._take()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval_s + 1.0)
            self._thread = None

    def mean(self) -> float | None:
        with self._lock:
            return sum(self.samples) / len(self.samples) if self.samples else None


class Recorder:
    """Times the phases of one rank; ``span`` and ``measure`` are cheap context managers.

    On CUDA every timestamp synchronises the device (so a span covers its kernels), and an
    :class:`NvmlSampler` runs while windows are open (``nvml=False`` turns it off).
    """

    def __init__(self, rank: int, device: "torch.device | None" = None, *, nvml: bool = True,
                 nvml_interval_s: float = 0.075):
        self.rank = rank
        self.cuda = device is not None and device.type == "cuda"
        self.device = device
        self.events: list[tuple[str, int, int, float, float]] = []
        self.windows: list[tuple[float, float]] = []
        self._measuring = False
        self.plan = ""
        self._torch = None
        self._sampler: NvmlSampler | None = None
        if self.cuda:
            import torch

            self._torch = torch
            torch.cuda.reset_peak_memory_stats(device)
            read = nvml_reader(device, rank) if nvml else None
            if read is not None:
                self._sampler = NvmlSampler(read, lambda: self._measuring, interval_s=nvml_interval_s, rank=rank)
        self._t0_unix = time.time()
        self._t0 = time.perf_counter()

    def _now(self) -> float:
        if self.cuda:
            self._torch.cuda.synchronize(self.device)
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
        if self._sampler is not None:
            self._sampler.window_opened()
            self._sampler.start()
        self._measuring = True

    def stop_window(self) -> None:
        if self._measuring:
            self._measuring = False
            self.windows.append((self._window_start, self._now()))
            if self._sampler is not None:
                self._sampler.window_closed()

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

    def close(self) -> None:
        """Stop the NVML sampler thread (idempotent; :meth:`report` calls it)."""
        if self._sampler is not None:
            self._sampler.stop()

    def report(self) -> RankReport:
        self.close()
        return RankReport(rank=self.rank, wall_s=sum(e - s for s, e in self.windows), events=list(self.events),
                          peak_memory_mb=peak_memory_mb(self.device),
                          nvml_utilisation=self._sampler.mean() if self._sampler is not None else None,
                          plan=self.plan, extra={"windows": list(self.windows)}, t0_unix=self._t0_unix)


def peak_memory_mb(device: "torch.device | None") -> float:
    """``max_memory_allocated`` on CUDA; the process's peak RSS on CPU (MiB)."""
    if device is not None and device.type == "cuda":
        import torch

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


def summarise(reports: list[RankReport], *, batch_size: int, steps: int, epoch_samples: int) -> dict:
    """Run-level figures: measured time = the slowest rank's measured wall time (its windows summed)."""
    measured = max(r.wall_s for r in reports)
    throughput = steps * batch_size / measured if measured > 0 else float("nan")
    utils = [_utilisation(phase_seconds(rep), rep.wall_s) for rep in reports]
    nvml = [r.nvml_utilisation for r in reports if r.nvml_utilisation is not None]
    return {"measured_time_s": measured, "throughput_sps": throughput, "epoch_samples": epoch_samples,
            "epoch_time_s": epoch_samples / throughput, "mean_utilisation": sum(utils) / len(utils),
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


def atomic_write_text(path: str, text: str) -> None:
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
                with warnings.catch_warnings():  # all-empty columns (e.g. no ideal yet) are expected
                    warnings.simplefilter("ignore", FutureWarning)
                    table = pd.concat([old, new], ignore_index=True) if len(old) else new
            else:
                table = new
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".csv")
            with os.fdopen(fd, "w") as f:
                table.to_csv(f, index=False)
            os.replace(tmp, path)
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


def load_results(results_dir: str, *, notes: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read ``runs.csv``, ``ranks.csv`` and ``events.csv`` of a results directory.

    Keeps only runs whose ``status`` is ``"ok"`` and whose epoch time is a positive number;
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
    ok = (runs["status"].astype(str) == "ok") & (epoch > 0)
    for _, r in runs[~ok].iterrows():
        why = (f"status={r['status']}" + (f": {r['error']}" if isinstance(r["error"], str) and r["error"] else "")
               if str(r["status"]) != "ok" else f"epoch_time_s={r['epoch_time_s']!r} is not a positive number")
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
