"""The layer-wise baseline ``ls`` (DESIGN.md §2): task parallelism over whole blocks.

The second baseline of Pipe-BD (Jang et al. 2023, §II-B, "layer-wise scheduling"): each
device owns whole blocks and trains them one after another at the full batch size, running
the frozen teacher from the image up to each block it trains. There is no communication
during training (the blocks are independent given the teacher, DESIGN.md §1); what it pays
is load imbalance (a device finishes only when its slowest set of blocks does) and teacher
redundancy (the prefix T0..Ti is recomputed by every device, for every block it owns).

Blocks are assigned to ranks either explicitly (``--ls-map "0:1:2,3:4,5"``: ranks separated
by commas, the blocks of one rank by colons, trained in the order given) or by the
longest-processing-time-first rule of Graham ("Bounds on Multiprocessing Timing
Anomalies", 1969, :func:`pipebd.simulate.lpt_assign`) on each block's cost as ls pays it —
data loading + the teacher prefix T0..Ti + the student — taken from the run's cost table
(``--profile``, else FLOP estimates; :func:`pipebd.planner.cost_table_for`), the same rule the
simulator predicts ls with: blocks in decreasing cost, each to the least-loaded rank.

Every rank must own at least one block: an idle device would only dilute the per-rank
figures, so ``--devices`` above the number of blocks, or an empty rank in ``--ls-map``, is
a configuration error.

Measurement: each rank first trains the warm-up steps of all its blocks (unmeasured), then
meets the others at a barrier, opens its window, trains the measured steps of all its
blocks, and waits at a closing barrier (recorded as ``sync``) inside the window. The run's
measured time, the slowest rank's window, is then the makespan of the measured part, and
the lightly loaded ranks show their imbalance as ``sync`` time.
"""

from __future__ import annotations

from pipebd.config import ConfigError, RunConfig
from pipebd.distill import BlockTrainer, teacher_forward
from pipebd.planner import cost_table_for
from pipebd.simulate import format_ls_map, lpt_assign
from pipebd.simulate import ls_assignment as ls_assignment_for_costs
from pipebd.executors import Strategy, register_strategy

__all__ = ["LayerWise", "lpt_assign", "parse_ls_map", "format_ls_map", "ls_assignment"]

_MAP_SYNTAX = ('blocks of each rank separated by ":" and ranks separated by ",", e.g. --ls-map "0:1:2,3" '
               "for blocks 0-2 on rank 0 and block 3 on rank 1")


def parse_ls_map(text: str, num_blocks: int, devices: int) -> list[list[int]]:
    """Parse ``"0:1:2,3:4,5"`` into per-rank block lists; raise :class:`ConfigError` on any flaw.

    The map must name exactly ``devices`` ranks, each owning at least one block, and cover
    blocks ``0..num_blocks-1`` exactly once.
    """
    allowed = f"blocks 0..{num_blocks - 1}"
    parts = text.replace(" ", "").split(",")
    assignment: list[list[int]] = []
    for rank, part in enumerate(parts):
        if part == "":
            raise ConfigError(f"--ls-map {text!r} gives rank {rank} no blocks; every rank must own at least one of "
                              f"{allowed} ({_MAP_SYNTAX}); lower --devices if there are too few blocks")
        blocks = []
        for tok in part.split(":"):
            if not tok.isdigit():
                raise ConfigError(f"cannot parse --ls-map {text!r}: {tok!r} (rank {rank}) is not a block number; "
                                  f"expected {_MAP_SYNTAX}")
            blocks.append(int(tok))
        assignment.append(blocks)
    if len(assignment) != devices:
        raise ConfigError(f"--ls-map {text!r} assigns blocks to {len(assignment)} rank(s) but --devices is "
                          f"{devices}; give one comma-separated group per device, or set --devices "
                          f"{len(assignment)}")
    seen: dict[int, int] = {}
    for rank, blocks in enumerate(assignment):
        for b in blocks:
            if b >= num_blocks:
                raise ConfigError(f"--ls-map {text!r} names block {b} (rank {rank}) but the workload has "
                                  f"{allowed}; use only those")
            if b in seen:
                raise ConfigError(f"--ls-map {text!r} assigns block {b} twice (rank {seen[b]} and rank {rank}); "
                                  f"each of {allowed} must be trained by exactly one rank")
            seen[b] = rank
    missing = sorted(set(range(num_blocks)) - set(seen))
    if missing:
        raise ConfigError(f"--ls-map {text!r} leaves block(s) {', '.join(map(str, missing))} to no rank; "
                          f"each of {allowed} must be trained by exactly one rank")
    return assignment


def ls_assignment(cfg: RunConfig, num_blocks: int) -> list[list[int]]:
    """The blocks of each rank: ``cfg.ls_map`` when given, else LPT on the estimated block costs."""
    if cfg.ls_map is not None:
        return parse_ls_map(cfg.ls_map, num_blocks, cfg.devices)
    if cfg.devices > num_blocks:
        raise ConfigError(f"strategy 'ls' gives every device whole blocks, but --devices {cfg.devices} exceeds the "
                          f"{num_blocks} blocks of {cfg.workload!r}, so some rank would have nothing to train; "
                          f"use --devices {num_blocks} or fewer")
    return ls_assignment_for_costs(cost_table_for(cfg), cfg.devices, cfg.batch_size)


@register_strategy("ls")
class LayerWise(Strategy):
    description = "layer-wise: each device trains whole blocks at full batch (balanced by cost), no communication"

    @classmethod
    def validate(cls, cfg: RunConfig, num_blocks: int) -> None:
        super().validate(cfg, num_blocks)
        ls_assignment(cfg, num_blocks)

    @classmethod
    def describe_plan(cls, cfg: RunConfig, num_blocks: int) -> str:
        return format_ls_map(ls_assignment(cfg, num_blocks))

    def run(self) -> dict[int, BlockTrainer]:
        ctx, cfg = self.ctx, self.ctx.config
        rec = ctx.recorder
        mine = ls_assignment(cfg, ctx.workload.num_blocks)[ctx.rank]
        teachers = ctx.teacher(range(max(mine) + 1))
        trainers = {i: ctx.trainer(i) for i in mine}
        self.batches = ctx.data.loader(ctx.device, end=cfg.total_steps)  # on CUDA the next batch is copied ahead
        todo = sum(cfg.total_steps - t.step_count for t in trainers.values())
        ctx.progress.start(todo, f"ls rank {ctx.rank} blocks {':'.join(map(str, mine))}")
        for i in mine:  # warm-up of every owned block, outside the window
            self._train(i, trainers[i], teachers, range(trainers[i].step_count, cfg.warmup))
        ctx.barrier()
        rec.start_window()
        for i in mine:
            t = trainers[i]
            self._train(i, t, teachers, range(max(t.step_count, cfg.warmup), cfg.total_steps))
        with rec.span("sync"):
            ctx.barrier()  # inside the window: the makespan includes waiting for the slowest rank
        rec.stop_window()
        self.batches.close()
        return trainers

    def _train(self, i: int, t: BlockTrainer, teachers: list, steps: range) -> None:
        ctx, rec = self.ctx, self.ctx.recorder
        for step in steps:
            with rec.span("data", i, step):
                x, _ = self.batches.get(step)
            with rec.span("teacher", i, step):
                y = teacher_forward(teachers[:i], x)  # the input of block i
                target = teacher_forward(teachers[i:i + 1], y)
            with rec.span("student", i, step):
                t.begin(step)
                t.accumulate(y, target)
            with rec.span("update", i, step):
                t.apply()
            ctx.after_step(step, {i: t})
            ctx.progress.advance(1)
