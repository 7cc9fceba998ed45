"""Launch the ranks of a run on torch.distributed, gather their measurements, write the CSVs.

Two ways in, one path through :func:`rank_main`:
- locally, :func:`launch` validates the configuration (nothing is spawned for an invalid
  one) and spawns one process per rank with :func:`pipebd.launch.spawn_supervised`;
- under ``torchrun`` (single or multi node), each process runs its rank directly
  (:func:`pipebd.launch.torchrun_rank`).

Each rank builds the blocks of the workload its schedule uses (same seed, the same init as the
full build: :class:`pipebd.zoo.BlockOwnership`), runs its strategy, and sends a
:class:`~pipebd.metrics.RankReport` to rank 0 with ``gather_object``; after a barrier, rank 0
writes ``runs.csv``, ``ranks.csv``, ``events.csv`` and ``trace.json`` under ``--out`` (the
runner, not the strategy, writes files; the strategy's internals are unknown here). With a data
source that has a test split (``--data mnist5k``), the ranks also send every block's final student
weights (as for ``--save-weights``) and rank 0 fills ``student_top1`` (BatchNorm recalibrated),
``student_top1_raw`` and ``teacher_top1`` and writes ``block_losses.csv`` (every block's held-out
loss; per candidate path for a supernet) with :func:`pipebd.quality.assess`, after every timing
figure is computed.

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
import platform
import socket
import subprocess
import sys
import traceback
import uuid
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from . import metrics, quality
from .recorder import Recorder
from .checkpoint import Checkpointer, set_rng_state
from .comm import threads_per_rank
from .config import RunConfig
from .data import DataSource
from .export import save_students, students_path
from .fileio import atomic_write
from .runtime import RankContext, run_strategy
from .strategies import get_strategy, import_plugins, uses_schedule
from .faults import Heartbeat
from .launch import RunFailed, RunInterrupted, init_rank, spawn_supervised, torchrun_rank, under_torchrun
from .options import data_config, workload_num_blocks, workload_options
from .preflight import validate
from .progress import Progress
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
    load_start = _load_average()
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
                        if _wants_weights(cfg) else {}),
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
    weights = {}
    if _wants_weights(cfg):
        weights, paths = {}, {}
        for g in gathered:
            for i, w in g["weights"].items():
                weights.setdefault(i, w)
            for i, p in g["paths"].items():
                paths.setdefault(i, p)
        missing = sorted(set(range(workload.num_blocks)) - set(weights))
        if missing:
            raise RuntimeError(f"strategy {cfg.strategy!r} reported no final weights for blocks {missing}")
    if cfg.save_weights:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.save_weights)), exist_ok=True)
        atomic_write(cfg.save_weights, lambda f: torch.save({"weights": weights, "paths": paths}, f), binary=True)
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
        "modes": reports[0].extra.get("modes") or "", "cpu": cpu_description(), "epochs": cfg.epochs,
        **token_throughput(cfg, workload.tokens_per_sample, summary["throughput_sps"]),
    }
    if cfg.ideal_seconds_per_sample is not None:
        row = metrics.with_ideal(row, cfg.ideal_seconds_per_sample * data.epoch_samples)
    loss_rows = metrics.loss_rows(run_id, row, [g.get("losses", {}) for g in gathered])
    # after training and every figure above: scoring the stitched student changes no timing
    losses: dict[int, dict[int, float]] = {}
    for r in loss_rows:
        losses.setdefault(r["block"], {})[r["step"]] = r["loss"]
    assessed = quality.assess(cfg, weights, losses)
    row.update(student_top1=assessed.student_top1, student_top1_raw=assessed.student_top1_raw,
               teacher_top1=assessed.teacher_top1)
    out = cfg.out
    if cfg.save_students:
        save_students(students_path(out, run_id), run_id=run_id, workload=cfg.workload,
                      options=workload_options(cfg), weights=weights,
                      metrics={k: row[k] for k in ("student_top1", "student_top1_raw", "teacher_top1")})
    metrics.append_rows(os.path.join(out, "losses.csv"), loss_rows, metrics.LOSS_COLUMNS)
    if assessed.blocks:
        metrics.append_rows(os.path.join(out, "block_losses.csv"),
                            quality.block_loss_rows(run_id, row, assessed.blocks), quality.BLOCK_LOSS_COLUMNS)
    metrics.append_rows(os.path.join(out, "ranks.csv"), metrics.rank_rows(run_id, row, reports), metrics.RANK_COLUMNS)
    if cfg.trace:
        metrics.append_rows(os.path.join(out, "events.csv"), metrics.event_rows(run_id, reports), metrics.EVENT_COLUMNS)
        metrics.write_trace(os.path.join(out, "traces", f"{run_id}.json"), run_id, reports)
    metrics.append_rows(os.path.join(out, "runs.csv"), [row], metrics.RUN_COLUMNS)
    return row


def _wants_weights(cfg: RunConfig) -> bool:
    """Whether the ranks send rank 0 their blocks' final student weights: to save them
    (``--save-weights``, ``--save-students``), or to score the stitched student on a test split
    (:mod:`pipebd.quality`)."""
    return bool(cfg.save_weights) or cfg.save_students or quality.has_test_split(cfg)


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


#: Dense bf16 peak FLOP/s of known GPUs (vendor datasheets), for model FLOPs utilisation.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def token_throughput(cfg: RunConfig, tokens_per_sample: int | None, samples_per_s: float) -> dict:
    """Tokens/s of a sequence workload, the model FLOP/s it achieves (teacher forward + student
    forward and backward, 3× forward, counted by :func:`pipebd.costs.block_facts`) and, on a GPU of
    known peak, the model FLOPs utilisation (PaLM's MFU) over all devices; blank for image workloads."""
    if not tokens_per_sample:
        return {"seq_len": None, "throughput_tps": None, "model_tflops": None, "mfu": None}
    from .costs import block_facts
    from .options import workload_sizes

    per_sample = sum(f.teacher_flops + 3 * f.student_flops for f in block_facts(cfg.workload, workload_sizes(cfg)))
    tflops = per_sample * samples_per_s / 1e12
    mfu = None
    if cfg.device_type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        mfu = None if peak is None else tflops * 1e12 / (peak * cfg.devices)
    return {"seq_len": tokens_per_sample, "throughput_tps": samples_per_s * tokens_per_sample,
            "model_tflops": tflops, "mfu": mfu}


def cpu_description() -> str:
    """The host CPU's model and its widest vector / bf16 instructions (``/proc/cpuinfo``), e.g.
    ``AMD EPYC [avx2]`` or ``Intel(R) Xeon(R) Processor [avx512, avx512_bf16, amx_bf16]``: bf16
    on a CPU without ``avx512_bf16``/``amx_bf16`` is emulated, and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    if "avx512f" in have:
        have.remove("avx2")
    return f"{model or platform.machine()} [{', '.join(h.replace('avx512f', 'avx512') for h in have)}]"


def format_exception_short(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()
