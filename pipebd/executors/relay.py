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
default, from :func:`pipebd.simulate.pipeline_plan`: the exact min-max split of the run's cost
table (``--profile``, else FLOP estimates), relays included. Internally a layout is a :class:`~pipebd.plan.Plan` with one
replica per stage; :class:`RelayPipeline` executes any plan, replicated stages included, and
is what ``ahd`` (§III-C, :mod:`pipebd.executors.ahd`) runs too.

Measurement: warm-up steps run first; then every rank drains its sends and meets at a
barrier, opens its window, runs the measured steps, drains, meets again and closes it. With
more than one stage the window is *pipelined*: its fill and drain are measured once and an
epoch pays them once, plus the steady-state period per step (:mod:`pipebd.metrics`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist

from ..comm import (Inbox, Outbox, Piece, TensorMeta, allreduce_sum_, exchange_meta, row_overlaps, row_ranges,
                    transport_device)
from ..config import ConfigError, RunConfig
from ..distill import BlockTrainer, teacher_forward
from ..plan import Plan, Stage
from .base import RankContext, Strategy, register_strategy

__all__ = ["TeacherRelay", "TeacherRelayDPU", "RelayPipeline", "parse_stages",
           "format_stages", "relay_plan"]

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


class RelayPipeline:
    """Executes a :class:`~pipebd.plan.Plan` on one rank: the stage this rank belongs to, with
    relays to the neighbouring stages and, for a replicated stage, a gradient all-reduce.

    Stage ``s``'s replicas split each batch into contiguous rows (``Stage.rows``); a replica
    of the first stage loads exactly its rows; every other replica receives its rows from
    whichever replicas of stage ``s-1`` hold them (:func:`~pipebd.comm.row_overlaps`) into a
    preallocated buffer, and sends the rows of its teacher output to the replicas of stage
    ``s+1`` that need them. ``barrier=True`` adds the ``tr`` barrier before every update.
    """

    def __init__(self, ctx: RankContext, plan: Plan, *, barrier: bool, label: str, layout: str | None = None):
        self.ctx, self.plan, self.barrier, self.label = ctx, plan, barrier, label
        self.layout = layout if layout is not None else str(plan)
        cfg = ctx.config
        self.depth = cfg.inflight
        self.stage_index, self.replica = plan.stage_of_rank(ctx.rank)
        self.stage = plan.stages[self.stage_index]
        self.blocks = list(self.stage.blocks)
        self.lo, self.hi = row_ranges(self.stage.rows(cfg.batch_size))[self.replica]
        self.weight = (self.hi - self.lo) / cfg.batch_size
        self.group = self._make_groups()
        self.teachers = ctx.teacher(self.blocks)
        self.trainers: dict[int, BlockTrainer] = {i: ctx.trainer(i) for i in self.blocks}
        self.inbox: Inbox | None = None
        self.outbox: Outbox | None = None
        self._connect()
        # only the first stage loads data: its rows of each batch, the next one copied ahead on CUDA
        self.batches = ctx.data.loader(ctx.device, self.lo, self.hi, end=cfg.total_steps) if self.inbox is None else None

    # ---------------------------------------------------------------- set-up

    def _make_groups(self):
        """One process group per replicated stage, created by every rank in stage order."""
        mine = None
        if self.ctx.world_size == 1:
            return None
        for i, s in enumerate(self.plan.stages):
            if s.replicas < 2:
                continue
            g = dist.new_group(ranks=list(self.plan.ranks_of(i)), timeout=timedelta(seconds=self.ctx.config.timeout))
            if i == self.stage_index:
                mine = g
        return mine

    def _pieces(self, neighbour: int) -> list[Piece]:
        """Rows this replica exchanges with the replicas of stage ``neighbour`` (local coordinates)."""
        B = self.ctx.config.batch_size
        other = self.plan.stages[neighbour]
        ranks = self.plan.ranks_of(neighbour)
        if neighbour < self.stage_index:
            pairs = [(i, j, lo, hi) for i, j, lo, hi in row_overlaps(other.rows(B), self.stage.rows(B))
                     if j == self.replica]
            return [Piece(ranks[i], lo - self.lo, hi - self.lo) for i, _j, lo, hi in pairs]
        pairs = [(i, j, lo, hi) for i, j, lo, hi in row_overlaps(self.stage.rows(B), other.rows(B))
                 if i == self.replica]
        return [Piece(ranks[j], lo - self.lo, hi - self.lo) for _i, j, lo, hi in pairs]

    def _connect(self) -> None:
        """Shape handshake front to back: receive the input's per-sample shape, probe the teacher
        blocks with it, send the output's; then preallocate the receive buffers."""
        ctx, wl = self.ctx, self.ctx.workload
        s, last = self.stage_index, len(self.plan.stages) - 1
        in_pieces = self._pieces(s - 1) if s > 0 else []
        out_pieces = self._pieces(s + 1) if s < last else []
        if s == 0:
            in_meta = TensorMeta(tuple(wl.input_shape), torch.float32)
        else:
            got = exchange_meta({}, [p.peer for p in in_pieces], device=ctx.device)
            metas = set(got.values())
            if len(metas) != 1:
                raise RuntimeError(f"rank {ctx.rank}: senders of stage {s - 1} disagree on the activation: {got}")
            in_meta = metas.pop()
        with torch.no_grad():
            probe = teacher_forward(self.teachers, torch.zeros((1, *in_meta.shape), dtype=in_meta.dtype,
                                                               device=ctx.device))
        out_meta = TensorMeta(tuple(probe.shape[1:]), probe.dtype)
        expected = wl.boundary_shapes[self.stage.last + 1] if wl.boundary_shapes else None
        if expected is not None and tuple(expected) != out_meta.shape:
            raise RuntimeError(f"rank {ctx.rank}: teacher blocks {self.stage} output {out_meta.shape}, but the "
                               f"workload's probe says {tuple(expected)}")
        if out_pieces:
            exchange_meta({p.peer: out_meta for p in out_pieces}, [], device=ctx.device)
        if in_pieces:
            self.inbox = Inbox(in_pieces, (self.hi - self.lo, *in_meta.shape), in_meta.dtype, ctx.device,
                               depth=self.depth)
        if out_pieces:
            self.outbox = Outbox(out_pieces, depth=self.depth)

    def _start_step(self) -> int:
        """The first step to run: the earliest ``step_count`` of any trainer on any rank (resume)."""
        local = min(t.step_count for t in self.trainers.values())
        if self.ctx.world_size == 1:
            return local
        t = torch.tensor([local], dtype=torch.int64, device=transport_device(self.ctx.device))
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    # ---------------------------------------------------------------- the loop

    def run(self) -> dict[int, BlockTrainer]:
        ctx, cfg = self.ctx, self.ctx.config
        rec = ctx.recorder
        rec.plan = self.layout
        total = cfg.total_steps
        start = self._start_step()
        window = max(cfg.warmup, start)
        if ctx.rank == 0:
            ctx.progress.start(max(0, total - start), f"{self.label} {rec.plan}")
        if self.inbox is not None:
            for step in range(start, min(start + self.depth, total)):
                self.inbox.post(step)
        self._steps(start, min(window, total))
        if window < total:
            self._drain()
            ctx.barrier()
            rec.start_window(pipelined=len(self.plan.stages) > 1)
            self._steps(window, total)
            self._drain()
            ctx.barrier()
            rec.stop_window()
        if self.batches is not None:
            self.batches.close()
        return self.trainers if self.replica == 0 else {}

    def _drain(self) -> None:
        if self.outbox is not None:
            with self.ctx.recorder.span("comm"):
                self.outbox.drain()

    def _steps(self, first: int, end: int) -> None:
        for step in range(first, end):
            if self._step(step, end_of_run=self.ctx.config.total_steps):
                self.ctx.after_step(step, self.trainers)
            if self.ctx.rank == 0:
                self.ctx.progress.advance(1)

    def _step(self, step: int, *, end_of_run: int) -> bool:
        """Run ``step`` on this rank; return whether any of its trainers trained (not just relayed)."""
        ctx, rec = self.ctx, self.ctx.recorder
        if self.inbox is None:
            with rec.span("data", step=step):
                x, _labels = self.batches.get(step)
        else:
            with rec.span("comm", step=step):
                x = self.inbox.wait(step)
        acts = [x]
        for block, teacher in zip(self.blocks, self.teachers):
            with rec.span("teacher", block, step):
                acts.append(teacher_forward([teacher], acts[-1]))
        if self.outbox is not None:
            with rec.span("comm", step=step):
                self.outbox.send(step, acts[-1])
        trained = []
        for k, block in enumerate(self.blocks):
            t = self.trainers[block]
            if t.step_count != step:  # resumed past this step: relay only
                continue
            with rec.span("student", block, step):
                t.begin(step)
                t.accumulate(acts[k], acts[k + 1], weight=self.weight)
            trained.append(t)
        if self.group is not None and trained:
            with rec.span("comm", step=step):
                allreduce_sum_([g for t in trained for g in t.grads()], group=self.group)
        if self.barrier and ctx.world_size > 1:
            with rec.span("sync", step=step):
                ctx.barrier()
        for t in trained:
            with rec.span("update", t.index, step):
                t.apply()
        del acts, x
        if self.inbox is not None and step + self.depth < end_of_run:
            self.inbox.post(step + self.depth)
        return bool(trained)


class _RelayStrategy(Strategy):
    barrier = True

    @classmethod
    def validate(cls, cfg: RunConfig, num_blocks: int) -> None:
        super().validate(cfg, num_blocks)
        relay_plan(cfg, num_blocks)

    @classmethod
    def describe_plan(cls, cfg: RunConfig, num_blocks: int) -> str:
        return format_stages([(s.first, s.last) for s in relay_plan(cfg, num_blocks).stages])

    def run(self) -> dict[int, BlockTrainer]:
        plan = relay_plan(self.ctx.config, self.ctx.workload.num_blocks)
        layout = format_stages([(s.first, s.last) for s in plan.stages])
        return RelayPipeline(self.ctx, plan, barrier=self.barrier, label=self.name, layout=layout).run()


@register_strategy("tr")
class TeacherRelay(_RelayStrategy):
    description = "Pipe-BD teacher relaying: one stage of blocks per device, barrier before each update"
    barrier = True


@register_strategy("tr-dpu")
class TeacherRelayDPU(_RelayStrategy):
    description = "teacher relaying + decoupled parameter update: no barrier, --inflight batches per link"
    barrier = False
