"""Launch the ranks of a run on torch.distributed, gather their measurements, write the CSVs.

Two ways in, one path through :func:`rank_main`:
- locally, :func:`launch` validates the configuration (nothing is spawned for an invalid
  one) and spawns one process per rank with :func:`pipebd.launch.spawn_supervised`;
- under ``torchrun`` (single or multi node), each process runs its rank directly
  (:func:`pipebd.launch.torchrun_rank`).

Each rank builds the blocks of the workload its schedule uses (same seed, the same init as the
full build: :class:`pipebd.zoo.BlockOwnership`), runs its strategy, and sends a
:class:`~pipebd.metrics.RankReport` to rank 0 with ``gather_object``; after a barrier, rank 0
writes what the run leaves behind (:mod:`pipebd.run_outputs`: ``runs.csv``, ``ranks.csv``,
``losses.csv``, ``events.csv``, traces, the student's scores and the weights asked for). The
runner, not the strategy, writes files; the strategy's internals are unknown here.

Every run ends (DESIGN.md §5): :mod:`pipebd.launch` supervises the ranks (heartbeats, grace,
SIGTERM, SIGKILL, SIGINT/SIGTERM on the launcher: exit code 130) and names the rank that
caused a failure. A failed run appends a ``status=failed`` row to ``runs.csv`` with its error
and no figures. Under ``torchrun`` a hung or dead rank surfaces as its peers' process-group
timeout (``--timeout``) and torchrun's agent stops the others.

``--checkpoint-dir`` / ``--checkpoint-every`` / ``--resume``: see :mod:`pipebd.checkpoint`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import sys
import traceback
import uuid
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from . import metrics
from .recorder import Recorder
from .checkpoint import Checkpointer, set_rng_state
from .comm import threads_per_rank
from .config import RunConfig
from .data import DataSource
from .runtime import RankContext, run_strategy
from .strategies import get_strategy, import_plugins, uses_schedule
from .faults import Heartbeat
from .launch import RunFailed, RunInterrupted, init_rank, spawn_supervised, torchrun_rank, under_torchrun
from .options import data_config, workload_num_blocks, workload_options
from .preflight import validate
from .progress import Progress
from .run_outputs import git_commit, load_average, wants_weights, write_results
from .zoo import build_workload, canonical_name

__all__ = ["launch", "launch_series", "rank_main", "RunFailed", "RunInterrupted", "RunOutcome", "under_torchrun", "failed_row"]

log = logging.getLogger("pipebd.runner")


@dataclass
class RunOutcome:
    run_id: str
    row: dict  # the runs.csv row (rank 0's view), empty on ranks != 0 under torchrun


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def launch(cfg: RunConfig, *, run_id: str | None = None) -> RunOutcome:
    """Validate ``cfg`` and run it on ``cfg.devices`` ranks (spawned here, or under torchrun).

    ``run_id`` names the run in every CSV (default: a new timestamped id; under torchrun only
    rank 0's is recorded)."""
    cfg = _canonical(cfg)
    validate(cfg)
    run_id = run_id or new_run_id()
    if under_torchrun():
        rank = torchrun_rank(cfg.devices)
        try:
            row = rank_main(rank, cfg, run_id, store=None)
        except Exception as e:
            if rank == 0:  # best effort: the other ranks' fate is torchrun's to report
                _record_failure(cfg, run_id, f"rank 0 failed: {format_exception_short(e)}")
            raise
        return RunOutcome(run_id, row or {})
    return _spawn(cfg, run_id)


def launch_series(cfgs: Sequence[RunConfig]) -> list[RunOutcome]:
    """Run ``cfgs`` (every one on the same number of devices) one after another in one spawn of
    ranks: each rank runs :func:`rank_main` for each configuration in turn, in a fresh process
    group on its own prefix of the launcher's store, so a series pays for starting the processes
    and importing torch once instead of once per run (what ``verify`` and the tests do).

    Every configuration is validated before anything is spawned. If a rank fails, the series ends
    (:class:`RunFailed` names the rank and the run) and every run without a row is recorded failed."""
    cfgs = [_canonical(c) for c in cfgs]
    if not cfgs:
        return []
    if len({c.devices for c in cfgs}) != 1:
        raise ValueError(f"launch_series runs configurations on one number of devices, got {sorted({c.devices for c in cfgs})}")
    if under_torchrun():
        return [launch(c) for c in cfgs]
    for c in cfgs:
        validate(c)
    run_ids = [new_run_id() for _ in cfgs]
    try:
        spawn_supervised(_series_entry, (cfgs, run_ids), nprocs=cfgs[0].devices, timeout=max(c.timeout for c in cfgs))
    except (RunFailed, RunInterrupted) as e:
        for c, rid in zip(cfgs, run_ids):
            if not _read_run_row(c.out, rid, missing_ok=True):
                _record_failure(c, rid, str(e))
        raise
    return [RunOutcome(rid, _read_run_row(c.out, rid)) for c, rid in zip(cfgs, run_ids)]


def _series_entry(local_rank: int, store: dist.Store, heartbeat: Heartbeat, cfgs: list[RunConfig],
                  run_ids: list[str]) -> None:
    for i, (cfg, run_id) in enumerate(zip(cfgs, run_ids)):
        try:
            rank_main(local_rank, cfg, run_id, store=dist.PrefixStore(f"series{i}/", store),
                      local_world_size=cfg.devices, heartbeat=heartbeat)
        except Exception as e:
            raise RuntimeError(f"run {i + 1} of {len(cfgs)} in the series ({cfg.strategy} on {cfg.workload}, "
                               f"run id {run_id}): {format_exception_short(e)}") from e


def _canonical(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its workload's canonical name (an unknown one is left for :func:`validate` to refuse)
    and ``--strategy auto`` resolved to the strategy it picks (:mod:`pipebd.strategies.auto`)."""
    try:
        cfg = cfg.replace(workload=canonical_name(cfg.workload))
    except ValueError:
        return cfg
    from .strategies.auto import resolve_auto

    return resolve_auto(cfg)


def _spawn(cfg: RunConfig, run_id: str) -> RunOutcome:
    """Spawn ``cfg.devices`` supervised ranks; record a failed or interrupted run in runs.csv."""
    try:
        spawn_supervised(_spawn_entry, (cfg, run_id), nprocs=cfg.devices, timeout=cfg.timeout)
        return RunOutcome(run_id, _read_run_row(cfg.out, run_id))
    except (RunFailed, RunInterrupted) as e:
        _record_failure(cfg, run_id, str(e))
        raise


def _spawn_entry(local_rank: int, store: dist.Store, heartbeat: Heartbeat, cfg: RunConfig, run_id: str) -> None:
    rank_main(local_rank, cfg, run_id, store=store, local_world_size=cfg.devices, heartbeat=heartbeat)


def rank_main(rank: int, cfg: RunConfig, run_id: str, *, store: dist.Store | None,
              local_world_size: int | None = None, heartbeat: Heartbeat | None = None) -> dict | None:
    """Run one rank: init the process group, build, (resume), run the strategy, gather, (rank 0) write."""
    world = cfg.devices
    load_start = load_average()
    beat = heartbeat.beat if heartbeat is not None else (lambda: None)
    import_plugins(cfg.plugins)
    device = init_rank(cfg, rank, store=store, local_world_size=local_world_size)
    beat()
    try:
        if rank == 0 and cfg.teacher_weights is None and not cfg.quiet:
            print(f"[pipebd] {cfg.workload}: no --teacher-weights given; the teacher is randomly initialised",
                  file=sys.stderr)
        # the schedule first: a rank builds only the teacher and student blocks its actions use
        strategy_cls, num_blocks = get_strategy(cfg.strategy), workload_num_blocks(cfg)
        schedule = strategy_cls.schedule_for(cfg, num_blocks) if uses_schedule(strategy_cls) else None
        owned = strategy_cls.ownership(cfg, num_blocks, rank, schedule)
        workload = build_workload(cfg.workload, workload_options(cfg), owned=owned)
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
        ctx = RankContext(rank=rank, world_size=world, device=device, config=cfg, workload=workload, data=data,
                          recorder=recorder, progress=progress, heartbeat=heartbeat, checkpointer=checkpointer,
                          resume_state=resume_state, calls=int(resume_state["calls"]) if resume_state else 0)
        trainers = run_strategy(ctx, strategy_cls, schedule)
        beat()
        progress.close()
        report = recorder.report()
        report.plan = recorder.plan or strategy_cls.describe_plan(cfg, workload.num_blocks)
        payload = {
            "report": report,
            "paths": {i: t.paths for i, t in trainers.items()},
            "losses": {i: t.losses() for i, t in ctx.trainers.items()},  # every replica's share
            "weights": ({i: {k: v.detach().cpu() for k, v in t.block.state_dict().items()} for i, t in trainers.items()}
                        if wants_weights(cfg) else {}),
        }
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(payload, gathered, dst=0)
        beat()
        dist.barrier()  # every rank got here: nothing can fail any more but rank 0's writing
        row = None
        if rank == 0:
            resumed = checkpointer.resumed_from if checkpointer is not None else None
            row = write_results(cfg, run_id, workload, data, gathered, resumed_from=resumed, load_start=load_start)
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


def _read_run_row(out: str, run_id: str, *, missing_ok: bool = False) -> dict:
    """Run ``run_id``'s row of ``out``/runs.csv; :class:`RunFailed` if it has none (``{}`` with ``missing_ok``)."""
    import pandas as pd

    path = os.path.join(out, "runs.csv")
    match = pd.read_csv(path) if os.path.isfile(path) else None
    if match is not None:
        match = match[match["run_id"] == run_id]
    if match is None or match.empty:
        if missing_ok:
            return {}
        raise RunFailed(f"run {run_id} finished but wrote no {'row to ' if match is not None else ''}{path}")
    return match.iloc[-1].to_dict()


def format_exception_short(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()
