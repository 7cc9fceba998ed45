"""The sequential reference (DESIGN.md §2): one device trains every block on the same batch
sequence. It is the ground truth every other strategy must reproduce.

Per step: LOAD the batch, then for each block i: TEACHER i, STUDENT i, UPDATE i. ``--shards g``
(or ``block_shards``, as ``verify`` sets it) splits each block's batch into ghost shards — one
STUDENT action per shard, loss weighted by its share — which reproduces the numerics of ``g``
data-parallel replicas exactly.
"""

from __future__ import annotations

from pipebd.config import ConfigError, RunConfig
from pipebd.plan import row_ranges
from pipebd.schedule import Schedule, ScheduleBuilder, ScheduleSpec
from pipebd.strategies import Strategy, register_strategy


@register_strategy("sequential")
class Sequential(Strategy):
    description = "one device, every block in turn on the same batches (the reference)"
    max_devices = 1

    @classmethod
    def validate(cls, cfg: RunConfig, num_blocks: int) -> None:
        if cfg.shards < 1 or cfg.shards > cfg.batch_size:
            raise ConfigError(f"--shards must be between 1 and the batch size {cfg.batch_size}, got {cfg.shards}")
        if cfg.block_shards is not None:
            if len(cfg.block_shards) != num_blocks or any(sum(s) != cfg.batch_size or min(s) < 1
                                                         for s in cfg.block_shards):
                raise ConfigError(f"block_shards must give, for each of the {num_blocks} blocks, positive shard "
                                  f"sizes summing to the batch size {cfg.batch_size}; got {cfg.block_shards}")
        super().validate(cfg, num_blocks)

    @classmethod
    def describe_plan(cls, cfg: RunConfig, num_blocks: int) -> str:
        return f"shards={cfg.shards}" if cfg.shards > 1 else ""

    @classmethod
    def generate(cls, spec: ScheduleSpec, layout=None) -> Schedule:
        B, n = spec.batch_size, spec.num_blocks
        b = ScheduleBuilder(cls.name, spec)
        for step in range(spec.steps):
            if step == spec.warmup:
                b.open(0)
            b.load(0, step, (0, B))
            for i in range(n):
                b.teacher(0, step, [i], (0, B))
                for rows in row_ranges(spec.shards[i] if spec.shards else (B,)):
                    b.student(0, step, i, rows)
                b.update(0, step, i)
        b.close(0)
        return b.build()
