"""``python -m pipebd profile``: measure the costs the planner and the simulator need.

Pipe-BD's automatic hybrid distribution (§III-C) plans from profiled costs. This profiler
launches ``N`` ranks with :mod:`pipebd.launch`, the runner's launcher (locally: spawned,
supervised, heartbeats; or under ``torchrun``), and every rank measures *at the same time*
(:mod:`pipebd.profile_measure`, which says how each number is taken): per block and candidate
per-replica batch ``ceil(B/g)``, ``g = 1..G``, teacher forward and student train-step seconds
and peak memory (re-measured one block at a time after an out-of-memory, so only a block that
does not fit alone is infeasible); relay and all-reduce times (modelled from bytes with one
rank); data loading; a barrier. The bytes a device may use (``--memory-limit``, else the GPU's
memory minus a margin) are recorded as the table's ``capacity``, so the planner judges every
stage against it.

A profiling rank that fails, dies or hangs ends the profile the way a run ends: non-zero exit,
the rank and its cause named (:func:`pipebd.launch.root_cause`), no process left. Each rank
beats its heartbeat after every timed trial, so a long measurement is not a stall.
``--inject-fault RANK:K:raise|kill|hang`` fires on RANK after its measured configuration K
(counted from 0; a configuration is what runs between two of the ranks' common barriers).

Rank 0 combines the ranks' medians (median over ranks; memory: the maximum) and writes one
tidy CSV (:data:`pipebd.costmodel.CSV_COLUMNS`) that :meth:`CostTable.from_csv` reads back, so
later runs pass it with ``--profile FILE``. ``--quick`` takes few trials (for tests).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import defaultdict

import torch
import torch.distributed as dist

from .config import ConfigError, RunConfig
from .strategies import import_plugins
from .faults import Heartbeat, parse_fault
from .launch import init_rank, spawn_supervised, torchrun_rank, under_torchrun
from .preflight import validate
from .profile_measure import RankProfiler
from .profile_options import MIN_REPLICA_GROUPS, ProfileOptions
from .costmodel import CSV_COLUMNS, CostTable, describe_modes, write_csv
from .zoo import WorkloadError, canonical_name

__all__ = ["ProfileOptions", "profile", "default_profile_path", "add_cli"]


def default_profile_path(cfg: RunConfig, out: str | None = None) -> str:
    """``--out`` as given if it names a .csv, else ``DIR/<workload>-<device>-n<N>-b<B>.csv`` (DIR: results/profiles)."""
    name = f"{_canonical(cfg.workload)}-{cfg.device_type}-n{cfg.devices}-b{cfg.batch_size}.csv"
    if out is None:
        return os.path.join("results", "profiles", name)
    return out if out.endswith(".csv") else os.path.join(out, name)


def _canonical(workload: str) -> str:
    try:
        return canonical_name(workload)
    except WorkloadError as e:
        raise ConfigError(str(e)) from None


def _validate(cfg: RunConfig, out: str, opts: ProfileOptions | None = None) -> None:
    if cfg.devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {cfg.devices}")
    g = opts.replica_groups if opts is not None else None
    if g is not None and g < cfg.devices:
        raise ConfigError(f"--replica-groups {g} is below --devices {cfg.devices}: a stage on all {cfg.devices} "
                          f"ranks trains ceil(B/{cfg.devices}) rows, which would not be profiled; use "
                          f"--replica-groups {max(cfg.devices, MIN_REPLICA_GROUPS)} or more (or omit it)")
    if cfg.batch_size < cfg.devices:
        raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than --devices {cfg.devices}: the smallest "
                          "candidate batch ceil(B/N) needs at least one row per device")
    parse_fault(cfg.inject_fault, cfg.devices)  # a bad --inject-fault fails here, before any spawn
    # Everything else a run checks (workload, data, CUDA, output directory), on one rank's terms:
    validate(cfg.replace(devices=1, strategy="sequential", shards=1, block_shards=None, inject_fault=None,
                         out=os.path.dirname(os.path.abspath(out))))
    if cfg.device_type == "cuda":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.devices))
        if torch.cuda.device_count() < local:
            raise ConfigError(f"--device cuda with {local} ranks on this host needs {local} GPUs, found "
                              f"{torch.cuda.device_count()}; lower --devices")


def profile(cfg: RunConfig, out: str, *, quick: bool = False, replica_groups: int | None = None,
            first_step: int | None = None) -> CostTable | None:
    """Profile ``cfg.workload`` on ``cfg.devices`` ranks at global batch ``cfg.batch_size``; write ``out``.

    ``replica_groups`` is ``G`` of :class:`ProfileOptions` (per-replica batches ``ceil(B/g)``,
    ``g = 1..G``; default ``max(devices, 4)``); ``first_step`` the step of the first timed trial
    (:attr:`ProfileOptions.first_step`). Returns the table (on the launching process / rank 0;
    ``None`` on other torchrun ranks).
    """
    cfg = cfg.replace(workload=_canonical(cfg.workload))
    if replica_groups is not None and replica_groups < 1:
        raise ConfigError(f"--replica-groups must be >= 1, got {replica_groups}; e.g. --replica-groups 8 profiles "
                          "the per-replica batches of stages of up to 8 replicas")
    if first_step is not None and first_step < 1:
        raise ConfigError(f"--first-step must be >= 1 (a step index), got {first_step}")
    opts = ProfileOptions.for_config(cfg, out, quick=quick, replica_groups=replica_groups, first_step=first_step)
    _validate(cfg, out, opts)
    if under_torchrun():
        rank = torchrun_rank(cfg.devices)
        _rank_main(rank, cfg, opts, store=None)
        return CostTable.from_csv(out) if rank == 0 else None
    spawn_supervised(_spawn_entry, (cfg, opts), nprocs=cfg.devices, timeout=cfg.timeout)
    return CostTable.from_csv(out)


def _spawn_entry(local_rank: int, store: dist.Store, heartbeat: Heartbeat, cfg: RunConfig,
                 opts: ProfileOptions) -> None:
    _rank_main(local_rank, cfg, opts, store=store, local_world_size=cfg.devices, heartbeat=heartbeat)


def _rank_main(rank: int, cfg: RunConfig, opts: ProfileOptions, *, store: dist.Store | None,
               local_world_size: int | None = None, heartbeat: Heartbeat | None = None) -> None:
    world = cfg.devices
    beat = heartbeat.beat if heartbeat is not None else (lambda: None)
    import_plugins(cfg.plugins)
    device = init_rank(cfg, rank, store=store, local_world_size=local_world_size)
    beat()
    try:
        rows = RankProfiler(rank, world, device, cfg, opts, heartbeat=heartbeat).run()
        beat()
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
        if rank == 0:
            _write(cfg, opts, [r for part in gathered for r in part])
        beat()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _write(cfg: RunConfig, opts: ProfileOptions, rows: list[dict]) -> None:
    """Combine the ranks' rows (median seconds, max bytes, all must be feasible) and write the CSV."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["kind"], r.get("block"), r.get("batch"), r.get("group"), r.get("mode") or "")].append(r)
    meta = {"workload": cfg.workload, "device_type": cfg.device_type, "devices": cfg.devices,
            "batch_size": cfg.batch_size, "source": "profile"}
    out = []
    order = {k: i for i, k in enumerate(("teacher", "student", "memory", "static_memory", "activation", "relay",
                                         "allreduce", "data", "barrier", "capacity", "store"))}
    for (kind, block, batch, group, mode), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][4], order[kv[0][0]], *(-1 if v is None else v for v in kv[0][1:4]))):
        feasible = min(int(r.get("feasible", 1)) for r in rs)
        secs = [r["seconds"] for r in rs if r.get("seconds") is not None]
        nbytes = [r["bytes"] for r in rs if r.get("bytes") is not None]
        trials = opts.trials if kind in ("teacher", "student") else opts.comm_trials
        note = next((r["note"] for r in rs if r.get("note")), "")
        measured = kind not in ("activation", "static_memory", "memory", "capacity") and not note.startswith("modelled")
        out.append({"kind": kind, "block": block, "batch": batch, "group": group,
                    "seconds": statistics.median(secs) if secs and feasible else None,
                    "bytes": max(nbytes) if nbytes and feasible else None, "feasible": feasible, "ranks": len(rs),
                    "trials": trials if measured else None, "note": note, **meta, "mode": mode})
    CostTable.from_rows(out)  # refuse to write a table that cannot be read back
    write_csv(opts.out, out, CSV_COLUMNS)


# ---- CLI --------------------------------------------------------------------------------

def _cmd_profile(args: argparse.Namespace) -> int:
    from .runargs import config_from_args

    cfg = config_from_args(args, out="results")
    out = default_profile_path(cfg, args.out)
    t0 = time.perf_counter()
    costs = profile(cfg, out, quick=args.quick, replica_groups=args.replica_groups, first_step=args.first_step)
    if costs is None:
        return 0
    sizes = sorted(costs.batches(), reverse=True)
    print(f"profiled {costs.workload} on {cfg.devices} {cfg.device_type} rank(s), batch {cfg.batch_size} "
          f"(per-replica sizes {', '.join(map(str, sizes))}) in {time.perf_counter() - t0:.1f} s")
    for gap in costs.gaps():
        print(f"  note: {gap}")
    print(f"{'block':>5}  " + "  ".join(f"{'b=' + str(b) + ' T/S ms':>18}" for b in sizes))
    for i in range(costs.num_blocks):
        cells = []
        for b in sizes:
            t, s = costs.teacher[i].get(b), costs.student[i].get(b)
            cells.append("OOM".rjust(18) if s is None or math.isinf(s) or t is None or math.isinf(t)
                         else f"{t * 1e3:8.2f}/{s * 1e3:<9.2f}")
        print(f"{i:>5}  " + "  ".join(cells))
    if costs.has_modes():
        from .planner import modes_for

        print("compute modes a run with this profile uses (--precision/--memory-format auto):")
        print("\n".join(describe_modes(modes_for(cfg.replace(profile=out), costs), costs)))
    print(f"data {costs.data_per_sample * 1e6:.1f} us/sample; wrote {out} (reuse it with --profile {out})")
    return 0


def add_cli(sub) -> None:
    from .runargs import add_run_options

    p = sub.add_parser("profile", help="measure per-block compute, memory and communication costs on N ranks")
    add_run_options(p, strategy=False)
    p.add_argument("--quick", action="store_true", help="few trials (tests, smoke checks)")
    p.add_argument("--replica-groups", type=int, default=None, metavar="G",
                   help=f"profile the per-replica batches ceil(B/g) for g = 1..G, even with fewer ranks "
                        f"(default: max(--devices, {MIN_REPLICA_GROUPS})); G >= --devices")
    p.add_argument("--first-step", type=int, default=None, metavar="K",
                   help="step index of the first timed trial (NAS: the sampled paths of steps K, K+1, ...); give a "
                        "run's --warmup and --steps to profile exactly the paths it measures")
    # --out names the CSV here (a directory gets <workload>-<device>-n<N>-b<B>.csv); trials = --steps
    p.set_defaults(func=_cmd_profile, out=None, steps=7, warmup=2, timeout=600.0)
