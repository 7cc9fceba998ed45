"""The sequential reference (DESIGN.md §2): one device trains every block on the same batch
sequence. It is the ground truth every other strategy must reproduce.

For step ``k`` it loads batch ``k``, runs the teacher block by block and trains each student
block on its teacher input/output pair. ``--shards g`` splits each batch into ``g`` ghost
shards (forward each, average the losses weighted by shard size), which reproduces the
numerics of ``g`` data-parallel replicas exactly.
"""

from __future__ import annotations

from pipebd.config import ConfigError, RunConfig
from pipebd.distill import BlockTrainer, shard_sizes, teacher_forward
from pipebd.executors import Strategy, register_strategy


@register_strategy("sequential")
class Sequential(Strategy):
    description = "one device, every block in turn on the same batches (the reference)"
    max_devices = 1

    @classmethod
    def validate(cls, cfg: RunConfig, num_blocks: int) -> None:
        super().validate(cfg, num_blocks)
        if cfg.shards < 1 or cfg.shards > cfg.batch_size:
            raise ConfigError(f"--shards must be between 1 and the batch size {cfg.batch_size}, got {cfg.shards}")
        if cfg.block_shards is not None:
            if len(cfg.block_shards) != num_blocks or any(sum(s) != cfg.batch_size or min(s) < 1
                                                         for s in cfg.block_shards):
                raise ConfigError(f"block_shards must give, for each of the {num_blocks} blocks, positive shard "
                                  f"sizes summing to the batch size {cfg.batch_size}; got {cfg.block_shards}")

    @classmethod
    def describe_plan(cls, cfg: RunConfig, num_blocks: int) -> str:
        return f"shards={cfg.shards}" if cfg.shards > 1 else ""

    def run(self) -> dict[int, BlockTrainer]:
        ctx, cfg = self.ctx, self.ctx.config
        n = ctx.workload.num_blocks
        teachers = ctx.teacher(range(n))
        trainers = {i: ctx.trainer(i) for i in range(n)}
        shards = cfg.block_shards or tuple(tuple(shard_sizes(cfg.batch_size, cfg.shards)) for _ in range(n))
        rec = ctx.recorder
        start = min(t.step_count for t in trainers.values())  # > 0 when resumed from a checkpoint
        ctx.progress.start(cfg.total_steps - start, "sequential")
        batches = ctx.data.loader(ctx.device, end=cfg.total_steps)  # on CUDA the next batch is copied ahead
        for step in range(start, cfg.total_steps):
            if step >= cfg.warmup and not rec.measuring:
                rec.start_window()
            with rec.span("data", step=step):
                x, _ = batches.get(step)
            for i in range(n):
                with rec.span("teacher", i, step):
                    y = teacher_forward([teachers[i]], x)
                t = trainers[i]
                if t.step_count == step:  # a resumed block may already be past this step
                    with rec.span("student", i, step):
                        t.begin(step)
                        lo = 0
                        for size in shards[i]:
                            t.accumulate(x[lo:lo + size], y[lo:lo + size], weight=size / x.shape[0])
                            lo += size
                    with rec.span("update", i, step):
                        t.apply()
                x = y
            ctx.after_step(step, trainers)
            ctx.progress.advance(1)
        rec.stop_window()
        batches.close()
        return trainers
