"""Pipe-BD teacher relaying (``tr``) and its decoupled parameter update (``tr-dpu``).

Pipe-BD (Jang et al., DATE 2023) §III-A, *teacher relaying*: the blocks are split into ``N``
contiguous stages, one device each. Only device 0 loads data; device ``k`` runs its teacher
blocks on the activation it receives from device ``k-1``, relays its output to device
``k+1`` with a non-blocking send, and trains its student blocks on the teacher
inputs/outputs it now holds. So each teacher block runs once per batch instead of once per
device (the redundancy of the data-parallel baseline), and the per-device batch stays whole.
In ``tr`` every device meets at a barrier before its optimizer step, as in the paper.

§III-B, *decoupled parameter update* (``tr-dpu``): the same code without the barrier. A
device updates its students as soon as its own backward is done and starts the next batch;
the next batch's receive is posted early into one of ``K = --inflight`` preallocated
buffers and at most ``K`` batches are in flight per link, so communication overlaps compute.
The math is untouched: student blocks never read each other, so the order in which devices
update cannot change any weight (DESIGN.md §1).

The stages come from ``--stages`` (``0-1,2-3,4-5``: block ranges, one per device) or, by
default, from :func:`pipebd.planner.pipeline_plan`: the exact min-max split of the run's cost
table (``--profile``, else FLOP estimates), relays included. Internally a layout is a
:class:`~pipebd.plan.Plan` with one replica per stage; :func:`relay_schedule` generates the
schedule of any plan, replicated stages included, and is what ``ahd`` (§III-C,
:mod:`pipebd.strategies.ahd`) generates too.

Measurement: warm-up steps run first; then every rank drains its sends and meets at a
barrier, opens its window, runs the measured steps, drains, meets again and closes it. With
more than one stage the window is *pipelined*: its fill and drain are measured once and an
epoch pays them once, plus the steady-state period per step (:mod:`pipebd.metrics`).
"""

from __future__ import annotations

import re
from typing import Sequence

from ..config import ConfigError, RunConfig
from ..plan import Plan, Stage, row_overlaps, row_ranges
from ..schedule import Schedule, ScheduleBuilder, ScheduleSpec
from .base import Strategy, register_strategy

__all__ = ["TeacherRelay", "TeacherRelayDPU", "relay_schedule", "parse_stages", "format_stages", "relay_plan"]

_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_stages(text: str, *, num_blocks: int, devices: int) -> list[tuple[int, int]]:
    """Parse ``--stages`` (``"0-1,2-3,4-5"``): one contiguous block range per device, in order."""
    syntax = ("expected one block range per device, FIRST-LAST or BLOCK, separated by commas, covering "
              f"blocks 0..{num_blocks - 1} in order, e.g. {format_stages(_even(num_blocks, max(1, min(devices, num_blocks))))}")
    ranges = []
    for part in text.replace(" ", "").split(","):
        m = _RANGE_RE.match(part)
        if not m:
            raise ConfigError(f"cannot parse --stages {text!r}: {part!r} is not a block range; {syntax}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last < first:
            raise ConfigError(f"--stages {text!r}: range {part!r} ends before it starts; {syntax}")
        ranges.append((first, last))
    expect = 0
    for first, last in ranges:
        if first > expect:
            missing = f"{expect}" if first == expect + 1 else f"{expect}-{first - 1}"
            raise ConfigError(f"--stages {text!r} misses block(s) {missing}; {syntax}")
        if first < expect:
            raise ConfigError(f"--stages {text!r} repeats or reorders block {first} (the previous stage ended at "
                              f"{expect - 1}); {syntax}")
        expect = last + 1
    if expect != num_blocks:
        if expect < num_blocks:
            raise ConfigError(f"--stages {text!r} misses block(s) {expect}-{num_blocks - 1}: the workload has "
                              f"{num_blocks} blocks; {syntax}")
        raise ConfigError(f"--stages {text!r} names block {expect - 1}, but the workload has only {num_blocks} "
                          f"blocks (0..{num_blocks - 1}); {syntax}")
    if len(ranges) != devices:
        raise ConfigError(f"--stages {text!r} gives {len(ranges)} stage(s) but --devices is {devices}; tr/tr-dpu "
                          f"run one stage per device, so give {devices} range(s) or set --devices {len(ranges)}")
    return ranges


def _even(n: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(n, parts)
    out, lo = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        out.append((lo, lo + size - 1))
        lo += size
    return out


def format_stages(ranges: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def relay_plan(cfg: RunConfig, num_blocks: int) -> Plan:
    """The one-replica-per-stage plan of ``cfg``: ``--stages`` if given, else cost-balanced."""
    if cfg.devices > num_blocks:
        raise ConfigError(f"strategy {cfg.strategy!r} runs one stage of at least one block per device, but the "
                          f"workload has {num_blocks} blocks and --devices is {cfg.devices}; use --devices <= "
                          f"{num_blocks}, or the 'ahd' strategy, which can replicate stages")
    if cfg.stages is not None:
        ranges = parse_stages(cfg.stages, num_blocks=num_blocks, devices=cfg.devices)
    else:
        from ..planner import pipeline_plan_for

        # the simulator's own best one-replica-per-stage split of the run's cost table (under
        # the memory limit), so what runs is what `simulate` predicts
        ranges = [(s.first, s.last) for s in pipeline_plan_for(cfg).stages]
    plan = Plan(tuple(Stage(a, b, 1) for a, b in ranges))
    plan.validate(num_blocks=num_blocks, devices=cfg.devices, batch_size=cfg.batch_size)
    if cfg.stages is not None:
        from ..planner import check_plan_memory_for

        check_plan_memory_for(cfg, plan)
    return plan


def relay_schedule(spec: ScheduleSpec, plan: Plan, *, barrier: bool, strategy: str, layout: str = "") -> Schedule:
    """The schedule of a :class:`~pipebd.plan.Plan`: every stage's replicas, every step.

    Per step, a replica of stage ``s`` holding rows ``[lo, hi)``: LOAD them (first stage) or
    RECV them from the replicas of stage ``s-1`` that hold them; TEACHER of each block; SEND the
    output rows to the replicas of stage ``s+1`` that need them; STUDENT of each block;
    ALLREDUCE over the stage's replicas (if several); BARRIER of all ranks (``tr`` only); UPDATE.
    A stage with one replica and no barrier UPDATEs each block right after its STUDENT instead:
    block ``b``'s optimizer step touches only student ``b``, so the weights are the same, but only
    one block's gradients are alive at a time (deferring every update to the end of the stage kept
    all of them: on llm-smol's 15-block stages ~0.9 GB per step, page-faulted in afresh each step,
    which made the run's student steps ~1.5x slower than the profile's).
    Warm-up steps come first; then every rank drains its sends, meets the others and opens a
    window (pipelined when there is more than one stage), runs the measured steps, drains,
    meets again and closes it.
    """
    B = spec.batch_size
    b = ScheduleBuilder(strategy, spec, layout=layout or str(plan))
    last = len(plan.stages) - 1
    pipelined = last > 0
    for si, stage in enumerate(plan.stages):
        ranks = list(plan.ranks_of(si))
        spans = row_ranges(stage.rows(B))
        into = [] if si == 0 else [(plan.ranks_of(si - 1)[i], j, lo, hi)
                                   for i, j, lo, hi in row_overlaps(plan.stages[si - 1].rows(B), stage.rows(B))]
        out = [] if si == last else [(i, plan.ranks_of(si + 1)[j], lo, hi)
                                     for i, j, lo, hi in row_overlaps(stage.rows(B), plan.stages[si + 1].rows(B))]
        eager = len(ranks) == 1 and not barrier  # nothing to wait for between a block's backward and its update
        for rep, rank in enumerate(ranks):
            rows = spans[rep]
            for step in range(spec.steps):
                if step == spec.warmup:
                    b.drain(rank)
                    b.barrier(rank)
                    b.open(rank, pipelined=pipelined)
                if si == 0:
                    b.load(rank, step, rows)
                for src, j, lo, hi in into:
                    if j == rep:
                        b.recv(rank, step, stage.first, (lo, hi), src)
                for blk in stage.blocks:
                    b.teacher(rank, step, [blk], rows)
                for i, dst, lo, hi in out:
                    if i == rep:
                        b.send(rank, step, stage.last + 1, (lo, hi), dst)
                if eager:  # each block's optimizer step right after its backward: one block's grads live
                    for blk in stage.blocks:
                        b.student(rank, step, blk, rows)
                        b.update(rank, step, blk)
                    continue
                for blk in stage.blocks:
                    b.student(rank, step, blk, rows)
                b.allreduce(rank, step, stage.blocks, ranks)
                if barrier:
                    b.barrier(rank, step=step)
                for blk in stage.blocks:
                    b.update(rank, step, blk)
            b.drain(rank)
            b.barrier(rank)
            b.close(rank)
    return b.build()


class _RelayStrategy(Strategy):
    """One stage per device; the layout is a one-replica-per-stage :class:`~pipebd.plan.Plan`."""

    barrier = True

    @classmethod
    def layout(cls, cfg: RunConfig, num_blocks: int) -> Plan:
        return relay_plan(cfg, num_blocks)

    @classmethod
    def choose_layout(cls, costs, spec: ScheduleSpec, *, memory_limit_bytes: float | None = None) -> Plan:
        from ..planner import pipeline_plan

        return pipeline_plan(costs, spec.devices, spec.batch_size, memory_limit_bytes=memory_limit_bytes,
                             inflight=spec.inflight)

    @classmethod
    def format_layout(cls, layout: Plan) -> str:
        return format_stages([(s.first, s.last) for s in layout.stages])

    @classmethod
    def generate(cls, spec: ScheduleSpec, layout: Plan) -> Schedule:
        return relay_schedule(spec, layout, barrier=cls.barrier, strategy=cls.name, layout=cls.format_layout(layout))


@register_strategy("tr")
class TeacherRelay(_RelayStrategy):
    description = "Pipe-BD teacher relaying: one stage of blocks per device, barrier before each update"
    barrier = True


@register_strategy("tr-dpu")
class TeacherRelayDPU(_RelayStrategy):
    description = "teacher relaying + decoupled parameter update: no barrier, --inflight batches per link"
    barrier = False
