"""Launch the ranks of a run on torch.distributed, gather their measurements, write the CSVs.

Two ways in, one path through :func:`rank_main`:
- locally, :func:`launch` validates the configuration, opens a ``TCPStore`` on 127.0.0.1 (an
  OS-chosen free port, so there is no port race) and spawns one process per rank with
  ``torch.multiprocessing``; if a rank fails, the others are stopped and the error names it;
- under ``torchrun`` (single or multi node), RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR are
  read from the environment and each process runs its rank directly.

Each rank builds the workload (same seed, same init), runs its strategy, and sends a
:class:`~pipebd.metrics.RankReport` to rank 0 with ``gather_object``; rank 0 writes
``runs.csv``, ``ranks.csv``, ``events.csv`` and ``trace.json`` under ``--out`` (the runner,
not the strategy, writes files; the strategy's internals are unknown here).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import socket
import subprocess
import sys
import traceback
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from . import metrics
from .comm import backend_for, init_process_group, threads_per_rank
from .config import ConfigError, RunConfig, data_config, validate, workload_options
from .data import DataSource
from .executors import RankContext, get_strategy, import_plugins
from .progress import Progress
from .zoo import build_workload, canonical_name

__all__ = ["launch", "rank_main", "RunFailed", "RunOutcome", "under_torchrun"]

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


def launch(cfg: RunConfig) -> RunOutcome:
    """Validate ``cfg`` and run it on ``cfg.devices`` ranks (spawned here, or under torchrun)."""
    cfg = cfg.replace(workload=canonical_name(cfg.workload)) if _known(cfg.workload) else cfg
    validate(cfg)
    run_id = os.environ.get("PIPEBD_RUN_ID") or new_run_id()
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != cfg.devices:
            raise ConfigError(f"torchrun started {world} processes but --devices is {cfg.devices}; make them equal")
        row = rank_main(int(os.environ["RANK"]), cfg, run_id, store=None)
        return RunOutcome(run_id, row or {})
    return _spawn(cfg, run_id)


def _known(name: str) -> bool:
    try:
        canonical_name(name)
        return True
    except ValueError:
        return False


def _spawn(cfg: RunConfig, run_id: str) -> RunOutcome:
    store = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False,
                          timeout=_dt.timedelta(seconds=cfg.timeout))
    ctx = mp.start_processes(_spawn_entry, args=(cfg, run_id, store.port), nprocs=cfg.devices, join=False,
                             start_method="spawn")
    old_int = signal.getsignal(signal.SIGINT)

    def _stop(signum, frame):  # SIGINT: stop every rank, then report
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _stop)
    try:
        while not ctx.join(timeout=0.5, grace_period=3):
            pass
    except ProcessException as e:
        raise _root_cause(ctx, e) from None
    finally:
        signal.signal(signal.SIGINT, old_int)
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join()
    return RunOutcome(run_id, _read_run_row(cfg.out, run_id))


def _root_cause(ctx, exc: ProcessException) -> RunFailed:
    """Name the rank that caused the failure, not one that merely lost its peer.

    A rank killed by a signal, or one whose error is not a communication error, is the root
    cause; ranks that died of "connection closed"/"timed out" were its victims.
    """
    failures: list[tuple[int, int, str]] = []  # (priority, rank, message)
    for i, p in enumerate(ctx.processes):
        err_file = ctx.error_files[i]
        if os.access(err_file, os.R_OK) and os.path.getsize(err_file) > 0:
            import pickle

            with open(err_file, "rb") as fh:
                tb = pickle.load(fh)
            last = [ln for ln in tb.strip().splitlines() if ln.strip()][-1]
            victim = any(s in tb for s in ("Connection closed by peer", "Connection reset", "Timed out",
                                           "timed out", "DistBackendError", "Broken pipe", "connection"))
            failures.append((1 if victim else 0, i, last))
        elif p.exitcode is not None and p.exitcode < 0 and p.exitcode != -signal.SIGTERM and p.exitcode != -signal.SIGKILL:
            failures.append((0, i, f"killed by signal {signal.Signals(-p.exitcode).name}"))
        elif p.exitcode == -signal.SIGKILL and i == getattr(exc, "error_index", -1):
            failures.append((0, i, "killed by signal SIGKILL"))
        elif p.exitcode not in (None, 0, -signal.SIGTERM, -signal.SIGKILL):
            failures.append((0, i, f"exited with code {p.exitcode}"))
    if not failures:
        idx = getattr(exc, "error_index", None)
        return RunFailed(f"rank {idx} failed: {exc}", idx)
    failures.sort()
    _prio, rank, msg = failures[0]
    return RunFailed(f"rank {rank} failed: {msg}", rank)


def _spawn_entry(local_rank: int, cfg: RunConfig, run_id: str, port: int) -> None:
    store = dist.TCPStore("127.0.0.1", port, world_size=None, is_master=False,
                          timeout=_dt.timedelta(seconds=cfg.timeout))
    rank_main(local_rank, cfg, run_id, store=store, local_world_size=cfg.devices)


def rank_main(rank: int, cfg: RunConfig, run_id: str, *, store: dist.Store | None,
              local_world_size: int | None = None) -> dict | None:
    """Run one rank: init the process group, build, run the strategy, gather, (rank 0) write."""
    world = cfg.devices
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(threads_per_rank(local_world, cfg.threads))
    import_plugins(cfg.plugins)
    if cfg.device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    init_process_group(backend=backend_for(cfg.device_type), rank=rank, world_size=world, timeout_s=cfg.timeout,
                       store=store, device=device)
    try:
        if rank == 0 and cfg.teacher_weights is None and not cfg.quiet:
            print(f"[pipebd] {cfg.workload}: no --teacher-weights given; the teacher is randomly initialised",
                  file=sys.stderr)
        workload = build_workload(cfg.workload, workload_options(cfg))
        data = DataSource(data_config(cfg, workload), cfg.batch_size)
        recorder = metrics.Recorder(rank, device)
        progress = Progress(enabled=rank == 0 and not cfg.quiet, batch_size=cfg.batch_size)
        strategy_cls = get_strategy(cfg.strategy)
        ctx = RankContext(rank=rank, world_size=world, device=device, config=cfg, workload=workload, data=data,
                          recorder=recorder, progress=progress)
        trainers = strategy_cls(ctx).run()
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
        row = None
        if rank == 0:
            row = _write_results(cfg, run_id, workload, data, gathered)
        dist.barrier()
        return row
    finally:
        dist.destroy_process_group()


def _write_results(cfg: RunConfig, run_id: str, workload, data: DataSource, gathered: list[dict]) -> dict:
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
        "status": "ok", "error": "", "workload": cfg.workload, "strategy": cfg.strategy, "devices": cfg.devices,
        "device_type": cfg.device_type, "batch_size": cfg.batch_size, "steps_measured": cfg.steps,
        "warmup_steps": cfg.warmup, **summary, "ideal_epoch_time_s": None, "efficiency": None,
        "plan": reports[0].plan, "resolution": workload.input_shape[-1], "width_mult": cfg.width_mult,
        "data": cfg.data, "seed": cfg.seed, "threads_per_rank": torch.get_num_threads(),
        "git_commit": git_commit(), "torch_version": torch.__version__, "hostname": socket.gethostname(),
    }
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
