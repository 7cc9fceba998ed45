"""The data-parallel baseline ``dp`` (DESIGN.md §2): blockwise distillation as DNA trains it.

DNA (Li et al., "Block-wisely Supervised Neural Architecture Search with Knowledge
Distillation", CVPR 2020) and the data-parallel baseline of Pipe-BD (Jang et al. 2023, §II-B)
train the blocks one after another, each on all ``N`` devices:

    for block i = 0 .. n-1:
        for each step k:
            rank r loads its shard of batch k (rows of shard_sizes(B, N), r-th slice: a
            distributed sampler over the same epoch order), runs the teacher T0..Ti on it
            from the image, trains Si on (input, output) of Ti with loss weight rows_r / B,
            all-reduces (SUM) the gradients, and takes the optimizer step.

Because each shard's loss is weighted by its share of the batch and the all-reduce sums,
uneven splits average exactly like one device with ghost shards, which is what ``verify``
checks (:meth:`DataParallel.reference_shards`). The redundancy is the point of the baseline:
every rank loads data and runs the teacher prefix T0..Ti for every block, at a per-device
batch of only ``B / N``.

The epoch time of ``dp`` is the sum over blocks: each block's measured steps run inside
their own recorder window (opened after a barrier so the ranks start aligned), and the
windows add up.
"""

from __future__ import annotations


from pipebd.comm import allreduce_sum_
from pipebd.config import ConfigError, RunConfig
from pipebd.distill import BlockTrainer, shard_sizes, teacher_forward
from pipebd.executors import Strategy, register_strategy

__all__ = ["DataParallel"]


@register_strategy("dp")
class DataParallel(Strategy):
    description = "DNA-style data parallel: blocks in turn, batch split over all devices, gradients all-reduced"

    @classmethod
    def validate(cls, cfg: RunConfig, num_blocks: int) -> None:
        super().validate(cfg, num_blocks)
        if cfg.batch_size < cfg.devices:
            raise ConfigError(f"strategy 'dp' splits each batch over the {cfg.devices} devices, so --batch-size must "
                              f"be >= --devices; got --batch-size {cfg.batch_size}. Use --batch-size "
                              f"{cfg.devices} or more, or lower --devices to {cfg.batch_size}")

    @classmethod
    def describe_plan(cls, cfg: RunConfig, num_blocks: int) -> str:
        return f"dp x {cfg.devices}"

    @classmethod
    def reference_shards(cls, cfg: RunConfig, num_blocks: int) -> tuple[tuple[int, ...], ...]:
        """Every block is split over all ranks, in rank order."""
        rows = tuple(shard_sizes(cfg.batch_size, cfg.devices))
        return tuple(rows for _ in range(num_blocks))

    def run(self) -> dict[int, BlockTrainer]:
        ctx, cfg = self.ctx, self.ctx.config
        rec = ctx.recorder
        n = ctx.workload.num_blocks
        rows = shard_sizes(cfg.batch_size, ctx.world_size)
        lo = sum(rows[:ctx.rank])
        hi = lo + rows[ctx.rank]
        weight = rows[ctx.rank] / cfg.batch_size
        teachers = ctx.teacher(range(n))
        trainers = {i: ctx.trainer(i) for i in range(n)}
        # each block reloads its shard of every batch (the baseline's redundancy); on CUDA the next
        # batch is copied ahead while this one computes
        batches = ctx.data.loader(ctx.device, lo, hi, end=cfg.total_steps)
        for i in range(n):
            t = trainers[i]
            prefix = teachers[:i + 1]
            ctx.progress.start(cfg.total_steps, f"dp block {i}")
            if t.step_count:
                ctx.progress.advance(t.step_count)
            for step in range(t.step_count, cfg.total_steps):
                if step >= cfg.warmup and not rec.measuring:
                    ctx.barrier()  # every rank has trained the same steps, so all reach it
                    rec.start_window()
                with rec.span("data", i, step):
                    x, _ = batches.get(step)
                with rec.span("teacher", i, step):
                    y = teacher_forward(prefix[:-1], x)  # the input of block i
                    target = teacher_forward(prefix[-1:], y)
                with rec.span("student", i, step):
                    t.begin(step)
                    t.accumulate(y, target, weight=weight)
                with rec.span("comm", i, step):
                    if ctx.world_size > 1:
                        allreduce_sum_(t.grads())
                with rec.span("update", i, step):
                    t.apply()
                ctx.after_step(step, {i: t})
                ctx.progress.advance(1)
            rec.stop_window()
        batches.close()
        # every rank holds identical replicas; one report per block is enough
        return trainers if ctx.rank == 0 else {}
