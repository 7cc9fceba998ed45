"""Automatic hybrid distribution (Pipe-BD §III-C): choose stages × replicas from a cost table.

A layout (a :class:`~pipebd.plan.Plan`) partitions the ``n`` blocks into contiguous stages and
gives stage ``s`` ``r_s`` data-parallel replicas, ``Σ r_s = N``. In the pipelined steady state
(tr-dpu without a barrier) the throughput is set by the slowest stage, so the planner minimises
the *bottleneck*

    max over stages s of  cost(s) = input(b) + Σ teacher_i(b) + Σ student_i(b) + Σ allreduce_i(r_s)

where ``b = ceil(B / r_s)`` is the largest replica's share of the batch (see
:func:`pipebd.costmodel.stage_cost`; ``input`` is data loading for the first stage and the relay
receive otherwise), subject to every replica's peak memory fitting ``memory_limit_bytes``.

Memory is judged per *stage configuration* (blocks ``j..i`` at ``b`` rows), never per block
alone: :func:`pipebd.costmodel.stage_memory` adds the resident bytes of the stage's blocks, the
largest transient and the relay buffers. The limit of a run is :func:`memory_limit_for`
(``--memory-limit``, else on CUDA the device's memory minus a margin, else none); a plan given
with ``--plan`` is checked against it by :func:`check_plan_memory` before anything spawns.

The paper enumerates 56 hand-listed layouts for 4 devices and 6 blocks. Here the search is
exact and general, by dynamic programming over block prefixes × devices used:

    best[i][d] = min over the last stage (blocks j..i-1, r replicas) of max(best[j][d-r], cost(j, i-1, r))

in ``O(n² N²)`` time (16 blocks × 64 devices: well under a second). Ties are broken
deterministically by a second DP that, among layouts whose every stage costs at most the
optimal bottleneck, minimises (number of stages, total device-seconds per batch); both
criteria add over stages, so the lexicographic optimum is exact too.

Replicas split the batch evenly; an indivisible batch is split by largest remainder
(:func:`pipebd.plan.split_rows`, the plan's default when it names no weights). On homogeneous
devices this is optimal — per-replica time grows with rows, so any uneven split only makes
the slowest replica slower. Uneven ``@w1:w2`` weights remain available to hand-written plans
(e.g. for mixed devices); the cost model evaluates them (:func:`~pipebd.costmodel.stage_cost`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

from .config import RunConfig
from .errors import ConfigError, PlanError
from .plan import Plan, Stage, split_rows
from .costmodel import CostTable, StageCost, choose_modes, estimate_cost_table, stage_cost, stage_memory
from .modes import BlockModes, candidate_modes

__all__ = ["PlanError", "PlanResult", "search", "plan", "plan_for", "pipeline_plan", "pipeline_plan_for",
           "cost_table_for", "raw_cost_table_for", "modes_for", "memory_limit_for", "check_plan_memory", "check_plan_memory_for", "CUDA_MARGIN"]

log = logging.getLogger("pipebd.planner")


#: Part of a GPU's memory the default limit leaves free (CUDA context, NCCL buffers, fragmentation):
#: the larger of a fraction of the total and a fixed number of bytes.
CUDA_MARGIN = (0.05, 2 * 2**30)


@dataclass(frozen=True)
class PlanResult:
    """A plan and what the cost model says about it."""

    plan: Plan
    bottleneck_s: float  # max over stages of the per-batch stage time
    stages: tuple[StageCost, ...]
    total_work_s: float  # Σ replicas × stage time (device-seconds per batch)
    seconds: float  # wall time the search took
    evaluated: int  # (first, last, replicas) stage configurations costed


def _row_counts(batch_size: int, r: int) -> tuple[int, ...]:
    return tuple(sorted(set(split_rows(batch_size, (1,) * r)), reverse=True))


def search(costs: CostTable, devices: int, batch_size: int, *, memory_limit_bytes: float | None = None,
           inflight: int = 2, max_replicas: int | None = None) -> PlanResult:
    """The exact bottleneck-optimal plan on exactly ``devices`` devices (see the module docstring).

    ``max_replicas=1`` restricts the search to one replica per stage (tr / tr-dpu layouts).
    """
    t0 = time.perf_counter()
    n = costs.num_blocks
    if devices < 1:
        raise PlanError(f"devices must be >= 1, got {devices}")
    if batch_size < 1:
        raise PlanError(f"batch size must be >= 1, got {batch_size}")
    R = min(devices, batch_size, max_replicas or devices)
    if devices > n * R:
        why = "one replica per stage" if max_replicas == 1 else f"at most {R} replicas per stage (one row each)"
        raise PlanError(f"{devices} devices cannot all be used by {n} blocks with {why}; use at most {n * R} "
                        "devices" + ("" if max_replicas == 1 else " or a larger batch"))
    if memory_limit_bytes is not None and memory_limit_bytes <= 0:
        raise PlanError(f"memory limit must be > 0 bytes, got {memory_limit_bytes}")

    # Per-row-count prefix sums over blocks of input + teacher + student time; OOM blocks counted apart.
    row_sets = {r: _row_counts(batch_size, r) for r in range(1, R + 1)}
    prefix: dict[int, tuple[list[float], list[int]]] = {}
    for rows in row_sets.values():
        for b in rows:
            if b in prefix:
                continue
            acc, bad = [0.0], [0]
            for i in range(n):
                t = costs.teacher_time(i, b) + costs.student_time(i, b)
                ok = costs.feasible(i, b) and math.isfinite(t)
                acc.append(acc[-1] + (t if ok else 0.0))
                bad.append(bad[-1] + (0 if ok else 1))
            prefix[b] = (acc, bad)
    ar_prefix = {}
    for r in range(1, R + 1):
        acc = [0.0]
        for i in range(n):
            acc.append(acc[-1] + costs.allreduce_time(i, r))
        ar_prefix[r] = acc

    unknown_memory = False
    smallest_memory = math.inf
    inf = math.inf
    # cost[j][i][r]: blocks j..i on r replicas (index r; r=0 unused)
    cost: list[list[list[float]]] = [[[] for _ in range(n)] for _ in range(n)]
    evaluated = 0
    for j in range(n):
        for i in range(j, n):
            row = [inf] * (R + 1)
            for r in range(1, R + 1):
                evaluated += 1
                worst = -1.0
                for b in row_sets[r]:
                    acc, bad = prefix[b]
                    if bad[i + 1] - bad[j]:
                        worst = inf
                        break
                    inp = costs.data_time(b) if j == 0 else costs.relay_time(j, b)
                    worst = max(worst, inp + acc[i + 1] - acc[j])
                if worst == inf:
                    continue
                if memory_limit_bytes is not None:
                    mem = stage_memory(costs, j, i, row_sets[r][0], inflight=inflight)
                    if mem is None:
                        unknown_memory = True
                    elif mem > memory_limit_bytes:
                        smallest_memory = min(smallest_memory, mem)
                        continue
                row[r] = worst + ar_prefix[r][i + 1] - ar_prefix[r][j]
            cost[j][i] = row
    if unknown_memory:
        log.warning("the cost table has no memory data for some blocks; the memory limit is not enforced for them "
                    "(profile with `python -m pipebd profile` to measure memory)")

    # DP 1: the optimal bottleneck.
    best = [[inf] * (devices + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for i in range(1, n + 1):
        bi = best[i]
        for d in range(1, devices + 1):
            v = inf
            for j in range(i):
                bj = best[j]
                cj = cost[j][i - 1]
                for r in range(1, min(d, R) + 1):
                    prev = bj[d - r]
                    if prev == inf:
                        continue
                    c = cj[r]
                    m = prev if prev > c else c
                    if m < v:
                        v = m
            bi[d] = v
    bottleneck = best[n][devices]
    if bottleneck == inf:
        if memory_limit_bytes is not None and smallest_memory < inf:
            raise PlanError(f"no layout of {n} blocks on {devices} devices fits the memory limit of "
                            f"{memory_limit_bytes / 2**30:.2f} GiB (the stages tried need at least "
                            f"{smallest_memory / 2**30:.2f} GiB); raise --memory-limit, add devices or lower "
                            "--batch-size")
        raise PlanError(f"no feasible layout of {n} blocks on {devices} devices at batch {batch_size}: the profile "
                        "marks the needed configurations out of memory; add devices or lower --batch-size")

    # DP 2: among layouts with every stage <= the bottleneck, fewest stages, then least total work.
    thr = bottleneck * (1 + 1e-12) + 1e-15
    key: list[list[tuple[int, float] | None]] = [[None] * (devices + 1) for _ in range(n + 1)]
    parent: list[list[tuple[int, int] | None]] = [[None] * (devices + 1) for _ in range(n + 1)]
    key[0][0] = (0, 0.0)
    for i in range(1, n + 1):
        for d in range(1, devices + 1):
            bk, bp = None, None
            for j in range(i):
                kj = key[j]
                cj = cost[j][i - 1]
                for r in range(1, min(d, R) + 1):
                    prev = kj[d - r]
                    c = cj[r]
                    if prev is None or c > thr:
                        continue
                    cand = (prev[0] + 1, prev[1] + r * c)
                    if bk is None or cand < bk:
                        bk, bp = cand, (j, r)
            key[i][d], parent[i][d] = bk, bp
    stages: list[Stage] = []
    i, d = n, devices
    while i > 0:
        j, r = parent[i][d]
        stages.append(Stage(j, i - 1, r))
        i, d = j, d - r
    result_plan = Plan(tuple(reversed(stages)))
    result_plan.validate(num_blocks=n, devices=devices, batch_size=batch_size)
    sc = tuple(stage_cost(costs, s, batch_size, inflight=inflight) for s in result_plan.stages)
    return PlanResult(plan=result_plan, bottleneck_s=max(c.total_s for c in sc), stages=sc,
                      total_work_s=sum(c.work_s for c in sc), seconds=time.perf_counter() - t0, evaluated=evaluated)


def plan(costs: CostTable, devices: int, batch_size: int, memory_limit_bytes: float | None = None,
         inflight: int = 2) -> Plan:
    """The ahd plan: stages × replicas on ``devices`` devices minimising the steady-state bottleneck."""
    return search(costs, devices, batch_size, memory_limit_bytes=memory_limit_bytes, inflight=inflight).plan


def cost_table_for(cfg: RunConfig) -> CostTable:
    """``cfg.profile``'s table (checked against the workload), else a FLOP-based estimate, priced
    for the run's compute modes (:func:`modes_for`)."""
    raw = raw_cost_table_for(cfg)
    return raw.priced(modes_for(cfg, raw))


def modes_for(cfg: RunConfig, raw: CostTable | None = None) -> BlockModes:
    """The compute mode of every block's teacher and student in ``cfg``'s run: the pins
    (``--precision``, ``--teacher-precision``, ``--student-precision``, ``--memory-format``),
    with ``auto`` chosen from the profile's candidates (:func:`pipebd.costmodel.choose_modes`;
    fp32 contiguous without a profile that timed them)."""
    from .options import workload_is_conv, workload_num_blocks

    if cfg.modes:
        modes = BlockModes.from_text(cfg.modes)
        if modes.num_blocks != workload_num_blocks(cfg):
            raise ConfigError(f"--modes names {modes.num_blocks} blocks but {cfg.workload} has "
                              f"{workload_num_blocks(cfg)}; give one mode per block (mode*k repeats one k times)")
        if not workload_is_conv(cfg) and any(m.channels_last for m in modes.teacher + modes.student):
            raise ConfigError("--modes: channels-last (-cl) applies to convolutional workloads only")
        return modes
    conv = workload_is_conv(cfg)
    teacher = candidate_modes(cfg.teacher_precision, cfg.memory_format, conv=conv)
    student = candidate_modes(cfg.student_precision, cfg.memory_format, conv=conv)
    n = workload_num_blocks(cfg)
    if len(teacher) == 1 and len(student) == 1:
        return BlockModes.uniform(n, teacher[0], student[0])
    if raw is None:
        raw = raw_cost_table_for(cfg) if cfg.profile else None
    return choose_modes(raw, n, teacher, student)  # a table without timed candidates gives fp32


def raw_cost_table_for(cfg: RunConfig) -> CostTable:
    """``cfg.profile``'s table as measured (every mode's times; checked against the workload), else a
    FLOP-based estimate."""
    from .options import workload_num_blocks
    from .zoo import canonical_name

    if not cfg.profile:
        return estimate_cost_table(cfg)
    costs = CostTable.from_csv(cfg.profile)
    want = workload_num_blocks(cfg)
    if costs.workload:
        try:
            same = canonical_name(costs.workload) == canonical_name(cfg.workload)
        except ValueError:
            same = costs.workload == cfg.workload
        if not same:
            raise ConfigError(f"profile {cfg.profile!r} was measured for workload {costs.workload!r}, not "
                              f"{cfg.workload!r}; profile this workload with `python -m pipebd profile --workload "
                              f"{cfg.workload}`")
    if costs.num_blocks != want:
        raise ConfigError(f"profile {cfg.profile!r} has {costs.num_blocks} blocks but {cfg.workload} has {want} "
                          "(different options?); re-profile with the same --resolution/--width-mult")
    if costs.batch_size and costs.batch_size != cfg.batch_size:
        log.info("profile measured at global batch %d, planning for %d: times are interpolated",
                 costs.batch_size, cfg.batch_size)
    return costs


def memory_limit_for(cfg: RunConfig, costs: CostTable | None = None) -> tuple[float | None, str]:
    """Bytes one device of ``cfg``'s run may use, and where that number comes from.

    ``cfg.memory_limit`` (``--memory-limit``) if set; else on CUDA the smallest visible GPU's
    total memory minus :data:`CUDA_MARGIN` (divided among the ranks sharing a GPU with
    ``--share-gpus``), or, where CUDA is not available here, the capacity the profile
    recorded; else (CPU) no limit.
    """
    if cfg.memory_limit is not None:
        if not cfg.memory_limit > 0:
            raise ConfigError(f"--memory-limit must be > 0 bytes, got {cfg.memory_limit}; e.g. --memory-limit 70GiB")
        return float(cfg.memory_limit), "--memory-limit"
    if cfg.device_type != "cuda":
        return None, "cpu: unlimited"
    import torch

    frac, floor = CUDA_MARGIN
    if torch.cuda.is_available() and torch.cuda.device_count():
        count = torch.cuda.device_count()
        total = min(torch.cuda.get_device_properties(d).total_memory for d in range(count))
        share = -(-int(os.environ.get("LOCAL_WORLD_SIZE", cfg.devices)) // count) if cfg.share_gpus else 1
        usable = (total - max(frac * total, floor)) / max(1, share)
        what = f"GPU total {total / 2**30:.1f} GiB minus max({frac:.0%}, {floor / 2**30:.0f} GiB)"
        return usable, what + (f", shared by {share} ranks" if share > 1 else "")
    if costs is not None and costs.capacity:
        return costs.capacity, "the profile's recorded device capacity"
    return None, "cuda: no device here and no capacity in the profile"


def plan_for(cfg: RunConfig, *, memory_limit_bytes: float | None = None) -> Plan:
    """The ahd plan of a run: from ``cfg.profile`` if given, else estimated costs.

    ``memory_limit_bytes`` defaults to ``cfg.extra["memory_limit_bytes"]``, else
    :func:`memory_limit_for` (``--memory-limit``, the GPU's memory, or none).
    """
    costs = cost_table_for(cfg)
    limit = memory_limit_bytes if memory_limit_bytes is not None else cfg.extra.get("memory_limit_bytes")
    if limit is None and (cfg.memory_limit is not None or any(costs.memory)):
        limit = memory_limit_for(cfg, costs)[0]  # a default limit is moot for a table without memory data
    return plan(costs, cfg.devices, cfg.batch_size, memory_limit_bytes=limit, inflight=cfg.inflight)


def pipeline_plan(costs: CostTable, devices: int, batch_size: int, *, memory_limit_bytes: float | None = None,
                  inflight: int = 2) -> Plan:
    """The best tr / tr-dpu layout: ``min(devices, blocks)`` contiguous stages of one replica each."""
    return search(costs, min(devices, costs.num_blocks), batch_size, memory_limit_bytes=memory_limit_bytes,
                  inflight=inflight, max_replicas=1).plan


def pipeline_plan_for(cfg: RunConfig) -> Plan:
    """The tr / tr-dpu layout of a run (one replica per stage) under its memory limit."""
    costs = cost_table_for(cfg)
    limit = memory_limit_for(cfg, costs)[0] if cfg.memory_limit is not None or any(costs.memory) else None
    return pipeline_plan(costs, cfg.devices, cfg.batch_size, memory_limit_bytes=limit, inflight=cfg.inflight)


def check_plan_memory(costs: CostTable, plan_: Plan, batch_size: int, limit: float | None, *, inflight: int = 2,
                      limit_source: str = "--memory-limit") -> None:
    """Raise :class:`PlanError` if a stage of ``plan_`` does not fit ``limit`` bytes per device.

    Each stage is judged as a whole (:func:`~pipebd.costmodel.stage_memory` at its largest
    replica's rows); a block the profile marked out of memory at those rows fails too. Stages
    without memory data are not checked (the estimate has none).
    """
    for k, s in enumerate(plan_.stages):
        rows = max(s.rows(batch_size))
        where = f"plan {plan_}: stage {k} ({s}: blocks {s.first}-{s.last} on {s.replicas} replica(s), {rows} rows each)"
        oom = [i for i in s.blocks if not costs.feasible(i, rows)]
        if oom:
            raise PlanError(f"{where}: the profile marks block {oom[0]} out of memory at {rows} rows; give the stage "
                            "more replicas or lower --batch-size (`python -m pipebd plan` picks a layout that fits)")
        if limit is None:
            continue
        peak = stage_memory(costs, s.first, s.last, rows, inflight=inflight)
        if peak is not None and peak > limit:
            raise PlanError(f"{where} needs an estimated peak of {peak / 2**30:.3f} GiB ({peak:.0f} bytes: resident "
                            f"blocks + largest transient + {inflight} relay buffers) per device, over the memory limit "
                            f"of {limit / 2**30:.3f} GiB ({limit:.0f} bytes, {limit_source}); give that stage more "
                            "replicas, split its blocks into more stages, lower --batch-size or raise --memory-limit "
                            "(`python -m pipebd plan` picks a layout that fits)")


def check_plan_memory_for(cfg: RunConfig, plan_: Plan) -> None:
    """:func:`check_plan_memory` with ``cfg``'s cost table (:func:`cost_table_for`) and limit."""
    costs = cost_table_for(cfg)
    if not any(costs.memory) and all(costs.feasible(i, cfg.batch_size) for i in range(costs.num_blocks)):
        log.info("no memory data in the cost table (no --profile?): the plan's memory is not checked")
        return
    limit, source = memory_limit_for(cfg, costs)
    check_plan_memory(costs, plan_, cfg.batch_size, limit, inflight=cfg.inflight, limit_source=source)


# ---- CLI --------------------------------------------------------------------------------
