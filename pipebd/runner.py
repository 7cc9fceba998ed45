"""Launch the ranks of a run on torch.distributed, gather their measurements, write the CSVs.

Two ways in, one path through :func:`rank_main`:
- locally, :func:`launch` validates the configuration (nothing is spawned for an invalid
  one), opens a ``TCPStore`` on 127.0.0.1 (an OS-chosen free port, so there is no port race
  and nothing listens beyond this host) and spawns one process per rank with
  ``torch.multiprocessing``;
- under ``torchrun`` (single or multi node), RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR are
  read from the environment and each process runs its rank directly.

Each rank builds the workload (same seed, same init), runs its strategy, and sends a
:class:`~pipebd.metrics.RankReport` to rank 0 with ``gather_object``; after a barrier, rank 0
writes ``runs.csv``, ``ranks.csv``, ``events.csv`` and ``trace.json`` under ``--out`` (the
runner, not the strategy, writes files; the strategy's internals are unknown here).

Every run ends (DESIGN.md §5). The local launcher supervises its ranks: a rank that raises,
dies of a signal, or makes no progress for ``--timeout`` seconds (the heartbeat of
:mod:`pipebd.faults`) ends the run; the other ranks get a short grace period to fail on their
own, then SIGTERM, then SIGKILL, and are reaped. :func:`_root_cause` names the rank that
caused the failure, not the peers that lost their connection to it or timed out waiting
for it. SIGINT/SIGTERM on the launcher stops every rank the same way (exit code 130). A
failed run appends a ``status=failed`` row to ``runs.csv`` with its error and no figures.
Under ``torchrun`` there is no launcher: a hung or dead rank surfaces as its peers'
process-group timeout (``--timeout``) and torchrun's agent stops the others.

``--checkpoint-dir`` / ``--checkpoint-every`` / ``--resume``: see :mod:`pipebd.checkpoint`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import multiprocessing.connection as mp_connection
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import metrics
from .recorder import Recorder
from .checkpoint import Checkpointer, set_rng_state
from .comm import backend_for, init_process_group, set_host_staging, threads_per_rank
from .config import ConfigError, RunConfig, data_config, validate, workload_num_blocks, workload_options
from .data import DataSource
from .executors import RankContext, get_strategy, import_plugins
from .faults import Heartbeat, HeartbeatWatch
from .progress import Progress
from .zoo import build_workload, canonical_name

__all__ = ["launch", "rank_main", "RunFailed", "RunInterrupted", "RunOutcome", "under_torchrun", "failed_row"]

log = logging.getLogger("pipebd.runner")


class RunFailed(RuntimeError):
    """A rank failed; the message names the rank and the cause."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


@dataclass
class RunOutcome:
    run_id: str
    row: dict  # the runs.csv row (rank 0's view), empty on ranks != 0 under torchrun


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def launch(cfg: RunConfig, *, run_id: str | None = None) -> RunOutcome:
    """Validate ``cfg`` and run it on ``cfg.devices`` ranks (spawned here, or under torchrun).

    ``run_id`` names the run in every CSV (default: a new timestamped id; under torchrun only
    rank 0's is recorded)."""
    cfg = cfg.replace(workload=canonical_name(cfg.workload)) if _known(cfg.workload) else cfg
    validate(cfg)
    run_id = run_id or new_run_id()
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != cfg.devices:
            raise ConfigError(f"torchrun started {world} processes but --devices is {cfg.devices}; make them equal")
        rank = int(os.environ["RANK"])
        try:
            row = rank_main(rank, cfg, run_id, store=None)
        except Exception as e:
            if rank == 0:  # best effort: the other ranks' fate is torchrun's to report
                _record_failure(cfg, run_id, f"rank 0 failed: {format_exception_short(e)}")
            raise
        return RunOutcome(run_id, row or {})
    return _spawn(cfg, run_id)


def _known(name: str) -> bool:
    try:
        canonical_name(name)
        return True
    except ValueError:
        return False


#: Seconds the launcher sleeps between looks at its ranks (exits, heartbeats, signals).
_POLL_S = 0.5
#: After the first failure, seconds to let the other ranks fail (or finish) on their own, so
#: their errors can be attributed; then they are stopped. Capped by --timeout.
_GRACE_S = 5.0
#: Seconds between SIGTERM and SIGKILL when stopping ranks.
_KILL_AFTER_S = 3.0

_COMM_ERROR = re.compile(
    r"connection (closed|reset|refused|aborted)|timed out|timeout|broken pipe|distbackenderror|distnetworkerror|"
    r"diststoreerror|gloo|nccl|socket|by peer|rendezvous", re.IGNORECASE)


class RunInterrupted(KeyboardInterrupt):
    """The launcher got SIGINT or SIGTERM; every rank was stopped."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def _spawn(cfg: RunConfig, run_id: str) -> RunOutcome:
    """Spawn ``cfg.devices`` ranks, supervise them, and stop them all on any failure or signal."""
    store = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False,
                          timeout=_dt.timedelta(seconds=cfg.timeout))
    watch = HeartbeatWatch(store, cfg.devices)
    pending: list[int] = []  # signals received; acted on by the supervision loop, never mid-spawn

    def _on_signal(signum, frame):
        pending.append(signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, _on_signal)
    procs: list = []
    try:
        ctx = mp.start_processes(_spawn_entry, args=(cfg, run_id, store.port), nprocs=cfg.devices, join=False,
                                 start_method="spawn")
        procs = list(ctx.processes)
        failure = _supervise(procs, ctx.error_files, watch, cfg, pending)
    except RunInterrupted as e:
        _stop_all(procs)
        _record_failure(cfg, run_id, str(e))
        raise
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
        _stop_all(procs)
    if failure is None:
        try:
            return RunOutcome(run_id, _read_run_row(cfg.out, run_id))
        except RunFailed as e:
            failure = e
    _record_failure(cfg, run_id, str(failure))
    raise failure


def _supervise(procs: list, error_files: list[str], watch: HeartbeatWatch, cfg: RunConfig,
               pending: list[int]) -> "RunFailed | None":
    """Wait for the ranks; on the first failure (an exit != 0, or no rank making progress for
    ``--timeout`` s) give the others a grace period, stop them, and return the root cause."""
    sentinels = {p.sentinel: i for i, p in enumerate(procs)}
    exited_at: dict[int, float] = {}
    failed_at: float | None = None
    stalled = False
    grace = min(_GRACE_S, cfg.timeout)
    while sentinels:
        ready = mp_connection.wait(list(sentinels), timeout=_POLL_S)
        now = time.monotonic()
        for s in ready:
            i = sentinels.pop(s)
            procs[i].join()
            exited_at[i] = now
            log.info("rank %d exited with code %s", i, procs[i].exitcode)
            if procs[i].exitcode != 0 and failed_at is None:
                failed_at = now
        if pending:
            raise RunInterrupted(pending[0])
        if not sentinels:
            break
        watch.poll(now)
        if failed_at is None and watch.stalled([i for i in range(len(procs)) if i not in exited_at], cfg.timeout, now):
            failed_at, stalled = now, True
            log.info("no rank made progress for %g s: stalled", cfg.timeout)
        if failed_at is not None and now - failed_at >= grace:
            break
    if failed_at is None:
        return None
    watch.poll()
    stopped = _stop_all(procs)
    log.info("stopped rank(s) %s", sorted(stopped))
    return _root_cause(procs, error_files, exited_at, stopped, watch, cfg.timeout, stalled)


def _stop_all(procs: list) -> set[int]:
    """SIGTERM every live rank, SIGKILL those still alive after a few seconds, reap all.
    Returns the ranks that had to be stopped."""
    stopped = {i for i, p in enumerate(procs) if p.is_alive()}
    for i in stopped:
        procs[i].terminate()
    deadline = time.monotonic() + _KILL_AFTER_S
    for i in stopped:
        procs[i].join(max(0.0, deadline - time.monotonic()))
    for i in stopped:
        if procs[i].is_alive():
            procs[i].kill()
    for p in procs:
        p.join()
    return stopped


def _last_error_line(path: str) -> tuple[str, str] | None:
    """(last line, whole traceback) a rank left in its error file, or None."""
    if not (os.access(path, os.R_OK) and os.path.getsize(path) > 0):
        return None
    import pickle

    with open(path, "rb") as fh:
        tb = pickle.load(fh)  # written by torch.multiprocessing in our own child, a local temp file
    lines = [ln for ln in str(tb).strip().splitlines() if ln.strip()]
    return (lines[-1].strip() if lines else "unknown error"), str(tb)


def _root_cause(procs: list, error_files: list[str], exited_at: dict[int, float], stopped: set[int],
                watch: HeartbeatWatch, timeout_s: float, stalled: bool) -> RunFailed:
    """Name the rank that caused the failure, not one that merely lost its peer.

    In order: a rank that raised a non-communication error, or died of a signal the launcher
    did not send (SIGKILL: killed from outside or out of memory), or exited non-zero by
    itself; else a rank that was still alive but had made no progress while its peers timed
    out or the whole run stalled (it hung); else the first rank whose communication failed.
    """
    roots: list[tuple[float, int, str]] = []
    victims: list[tuple[float, int, str]] = []
    for i, p in enumerate(procs):
        if i in stopped or p.exitcode == 0:
            continue
        t = exited_at.get(i, float("inf"))
        err = _last_error_line(error_files[i])
        if err is not None:
            (victims if _COMM_ERROR.search(err[0]) else roots).append((t, i, err[0]))
        elif p.exitcode is not None and p.exitcode < 0:
            name = _signal_name(-p.exitcode)
            hint = " (killed from outside, or by the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
            roots.append((t, i, f"killed by signal {name}{hint}"))
        else:
            roots.append((t, i, f"exited with code {p.exitcode}"))
    others = sorted({i for _t, i, _m in victims} | (stopped if roots else set()))
    if roots:
        _t, rank, msg = min(roots)
        return RunFailed(f"rank {rank} failed: {msg}{_also(others, rank)}", rank)
    now = time.monotonic()
    hung = [i for i in sorted(stopped) if watch.age(i, now) >= timeout_s / 2]
    if hung and (victims or stalled):
        rank = max(hung, key=lambda i: (watch.age(i, now), -i))
        age = watch.age(rank, now)
        waiting = sorted({i for _t, i, _m in victims} | (set(hung) - {rank}))
        tail = f"; rank(s) {', '.join(map(str, waiting))} timed out waiting for it" if waiting else ""
        return RunFailed(f"rank {rank} hung (no progress for {age:.0f} s, --timeout {timeout_s:g} s){tail}", rank)
    if victims:
        _t, rank, msg = min(victims)
        return RunFailed(f"rank {rank} failed: {msg} (a communication error: a peer failed, was stopped, or is "
                         f"slower than --timeout {timeout_s:g} s){_also(sorted(stopped), rank)}", rank)
    rank = min(stopped) if stopped else 0
    return RunFailed(f"rank {rank} failed for an unknown reason (exit code {procs[rank].exitcode})", rank)


def _also(ranks: list[int], rank: int) -> str:
    rest = [r for r in ranks if r != rank]
    return f"; rank(s) {', '.join(map(str, rest))} failed or were stopped as a consequence" if rest else ""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _spawn_entry(local_rank: int, cfg: RunConfig, run_id: str, port: int) -> None:
    store = dist.TCPStore("127.0.0.1", port, world_size=None, is_master=False,
                          timeout=_dt.timedelta(seconds=cfg.timeout))
    heartbeat = Heartbeat(local_rank, "127.0.0.1", port, interval_s=min(1.0, cfg.timeout / 10))
    try:
        rank_main(local_rank, cfg, run_id, store=store, local_world_size=cfg.devices, heartbeat=heartbeat)
    finally:
        heartbeat.stop()


def init_rank(cfg: RunConfig, rank: int, *, store: dist.Store | None, local_world_size: int | None = None) -> torch.device:
    """Join the process group as ``rank``: threads (cores ÷ local ranks), device, backend, timeout."""
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", cfg.devices))
    torch.set_num_threads(threads_per_rank(local_world, cfg.threads))
    if cfg.device_type == "cuda":
        # --share-gpus: more ranks than GPUs; ranks take GPUs round-robin and talk over gloo
        device = torch.device("cuda", local_rank % torch.cuda.device_count() if cfg.share_gpus else local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    set_host_staging(cfg.device_type == "cuda" and cfg.share_gpus)
    backend = backend_for(cfg.device_type, share_gpus=cfg.share_gpus)
    init_process_group(backend=backend, rank=rank, world_size=cfg.devices, timeout_s=cfg.timeout, store=store,
                       device=device if backend == "nccl" else None)
    return device


def rank_main(rank: int, cfg: RunConfig, run_id: str, *, store: dist.Store | None,
              local_world_size: int | None = None, heartbeat: Heartbeat | None = None) -> dict | None:
    """Run one rank: init the process group, build, (resume), run the strategy, gather, (rank 0) write."""
    world = cfg.devices
    load_start = _load_average()
    beat = heartbeat.beat if heartbeat is not None else (lambda: None)
    import_plugins(cfg.plugins)
    device = init_rank(cfg, rank, store=store, local_world_size=local_world_size)
    beat()
    try:
        if rank == 0 and cfg.teacher_weights is None and not cfg.quiet:
            print(f"[pipebd] {cfg.workload}: no --teacher-weights given; the teacher is randomly initialised",
                  file=sys.stderr)
        workload = build_workload(cfg.workload, workload_options(cfg))
        beat()
        data = DataSource(data_config(cfg, workload), cfg.batch_size)
        checkpointer = Checkpointer(cfg, rank, world, device) if cfg.checkpoint_dir else None
        resume_state = checkpointer.load_cut() if checkpointer is not None and cfg.resume else None
        if resume_state is not None:
            set_rng_state(resume_state["rng"], device)
            if rank == 0 and not cfg.quiet:
                print(f"[pipebd] resuming from checkpoint at after_step call {resume_state['calls']} "
                      f"({cfg.checkpoint_dir})", file=sys.stderr)
        elif cfg.resume and rank == 0 and not cfg.quiet:
            print(f"[pipebd] --resume: no checkpoint in {cfg.checkpoint_dir}; starting from step 0", file=sys.stderr)
        beat()
        recorder = Recorder(rank, device)
        progress = Progress(enabled=rank == 0 and not cfg.quiet, batch_size=cfg.batch_size)
        strategy_cls = get_strategy(cfg.strategy)
        ctx = RankContext(rank=rank, world_size=world, device=device, config=cfg, workload=workload, data=data,
                          recorder=recorder, progress=progress, heartbeat=heartbeat, checkpointer=checkpointer,
                          resume_state=resume_state, calls=int(resume_state["calls"]) if resume_state else 0)
        trainers = strategy_cls(ctx).run()
        beat()
        progress.close()
        report = recorder.report()
        report.plan = recorder.plan or strategy_cls.describe_plan(cfg, workload.num_blocks)
        payload = {
            "report": report,
            "paths": {i: t.paths for i, t in trainers.items()},
            "weights": ({i: {k: v.detach().cpu() for k, v in t.block.state_dict().items()} for i, t in trainers.items()}
                        if cfg.save_weights else {}),
        }
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(payload, gathered, dst=0)
        beat()
        dist.barrier()  # every rank got here: nothing can fail any more but rank 0's writing
        row = None
        if rank == 0:
            resumed = checkpointer.resumed_from if checkpointer is not None else None
            row = _write_results(cfg, run_id, workload, data, gathered, resumed_from=resumed, load_start=load_start)
        beat()
        return row
    finally:
        dist.destroy_process_group()


def _record_failure(cfg: RunConfig, run_id: str, error: str) -> None:
    """Append a ``status=failed`` row (configuration and error, no figures) unless the run
    already wrote its row; never lets a problem here hide the run's own error."""
    try:
        path = os.path.join(cfg.out, "runs.csv")
        if os.path.exists(path) and os.path.getsize(path) > 0:
            import pandas as pd

            if run_id in set(pd.read_csv(path, usecols=["run_id"])["run_id"].astype(str)):
                return
        with warnings.catch_warnings():  # pandas warns about the all-empty figure columns
            warnings.simplefilter("ignore", FutureWarning)
            metrics.append_rows(path, [failed_row(cfg, run_id, error)], metrics.RUN_COLUMNS)
    except Exception as e:  # noqa: BLE001
        log.warning("could not record the failed run in %s/runs.csv: %s", cfg.out, e)


def failed_row(cfg: RunConfig, run_id: str, error: str) -> dict:
    """The runs.csv row of a failed run: what was asked for and why it failed, no figures."""
    plan = ""
    try:
        plan = get_strategy(cfg.strategy).describe_plan(cfg, workload_num_blocks(cfg))
    except Exception:  # noqa: BLE001 — the plan is informative only
        pass
    row = {
        "run_id": run_id, "timestamp": _dt.datetime.now().isoformat(timespec="seconds"), "tag": cfg.tag,
        "status": "failed", "error": error, "workload": cfg.workload, "strategy": cfg.strategy,
        "devices": cfg.devices, "device_type": cfg.device_type, "batch_size": cfg.batch_size,
        "warmup_steps": cfg.warmup, "plan": plan, "resolution": cfg.resolution, "width_mult": cfg.width_mult,
        "data": cfg.data, "seed": cfg.seed, "threads_per_rank": threads_per_rank(cfg.devices, cfg.threads),
        "git_commit": git_commit(), "torch_version": torch.__version__, "hostname": socket.gethostname(),
    }
    return {k: v for k, v in row.items() if k in metrics.RUN_COLUMNS}


def _load_average() -> float | None:
    """The host's 1-minute load average (recorded at a run's start and end, so a run that shared
    its cores with other work can be recognised afterwards); None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _write_results(cfg: RunConfig, run_id: str, workload, data: DataSource, gathered: list[dict], *,
                   resumed_from: int | None = None, load_start: float | None = None) -> dict:
    reports = [g["report"] for g in sorted(gathered, key=lambda g: g["report"].rank)]
    if cfg.save_weights:
        weights, paths = {}, {}
        for g in gathered:
            for i, w in g["weights"].items():
                weights.setdefault(i, w)
            for i, p in g["paths"].items():
                paths.setdefault(i, p)
        missing = sorted(set(range(workload.num_blocks)) - set(weights))
        if missing:
            raise RuntimeError(f"strategy {cfg.strategy!r} reported no final weights for blocks {missing}")
        os.makedirs(os.path.dirname(os.path.abspath(cfg.save_weights)), exist_ok=True)
        torch.save({"weights": weights, "paths": paths}, cfg.save_weights)
    summary = metrics.summarise(reports, batch_size=cfg.batch_size, steps=cfg.steps, epoch_samples=data.epoch_samples)
    row = {
        "run_id": run_id, "timestamp": _dt.datetime.now().isoformat(timespec="seconds"), "tag": cfg.tag,
        "status": "ok" if resumed_from is None else "resumed",
        "error": "" if resumed_from is None else (f"resumed from the checkpoint at after_step call {resumed_from}; "
                                                  "timings cover only the steps after it"),
        "workload": cfg.workload, "strategy": cfg.strategy, "devices": cfg.devices,
        "device_type": cfg.device_type, "batch_size": cfg.batch_size, "steps_measured": cfg.steps,
        "warmup_steps": cfg.warmup, **summary, "ideal_epoch_time_s": None, "efficiency": None,
        "plan": reports[0].plan, "resolution": workload.input_shape[-1], "width_mult": cfg.width_mult,
        "data": cfg.data, "seed": cfg.seed, "threads_per_rank": torch.get_num_threads(),
        "git_commit": git_commit(), "torch_version": torch.__version__, "hostname": socket.gethostname(),
        "load_avg_start": load_start, "load_avg_end": _load_average(),
    }
    if cfg.ideal_seconds_per_sample is not None:
        row = metrics.with_ideal(row, cfg.ideal_seconds_per_sample * data.epoch_samples)
    out = cfg.out
    metrics.append_rows(os.path.join(out, "ranks.csv"), metrics.rank_rows(run_id, row, reports), metrics.RANK_COLUMNS)
    if cfg.trace:
        metrics.append_rows(os.path.join(out, "events.csv"), metrics.event_rows(run_id, reports), metrics.EVENT_COLUMNS)
        metrics.write_trace(os.path.join(out, "traces", f"{run_id}.json"), run_id, reports)
    metrics.append_rows(os.path.join(out, "runs.csv"), [row], metrics.RUN_COLUMNS)
    return row


def _read_run_row(out: str, run_id: str) -> dict:
    import pandas as pd

    path = os.path.join(out, "runs.csv")
    if not os.path.isfile(path):
        raise RunFailed(f"run {run_id} finished but wrote no {path}")
    df = pd.read_csv(path)
    match = df[df["run_id"] == run_id]
    if match.empty:
        raise RunFailed(f"run {run_id} finished but wrote no row to {path}")
    return match.iloc[-1].to_dict()


_GIT: str | None = None


def git_commit() -> str:
    global _GIT
    if _GIT is None:
        try:
            _GIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                  cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            _GIT = "unknown"
    return _GIT


def format_exception_short(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()
