"""The data-parallel baseline ``dp`` (DESIGN.md §2): blockwise distillation as DNA trains it.

DNA (Li et al., "Block-wisely Supervised Neural Architecture Search with Knowledge
Distillation", CVPR 2020) and the data-parallel baseline of Pipe-BD (Jang et al. 2023, §II-B)
train the blocks one after another, each on all ``N`` devices:

    for block i = 0 .. n-1:
        for each step k:
            rank r: LOAD its shard of batch k (rows of shard_sizes(B, N)), TEACHER T0..Ti on it
            from the image, STUDENT Si (loss weight rows_r / B), ALLREDUCE (SUM) the gradients
            over all ranks, UPDATE.

Because each shard's loss is weighted by its share of the batch and the all-reduce sums,
uneven splits average exactly like one device with ghost shards (what ``verify`` checks). The
redundancy is the point of the baseline: every rank loads data and runs the teacher prefix
T0..Ti for every block, at a per-device batch of only ``B / N``. Each block's measured steps are
their own window (opened after a barrier), and an epoch is the sum of the windows.
"""

from __future__ import annotations

from pipebd.config import ConfigError, RunConfig
from pipebd.distill import shard_sizes
from pipebd.plan import row_ranges
from pipebd.schedule import Schedule, ScheduleBuilder, ScheduleSpec
from pipebd.strategies import Strategy, register_strategy

__all__ = ["DataParallel"]


@register_strategy("dp")
class DataParallel(Strategy):
    description = "DNA-style data parallel: blocks in turn, batch split over all devices, gradients all-reduced"

    @classmethod
    def validate(cls, cfg: RunConfig, num_blocks: int) -> None:
        if cfg.batch_size < cfg.devices:
            raise ConfigError(f"strategy 'dp' splits each batch over the {cfg.devices} devices, so --batch-size must "
                              f"be >= --devices; got --batch-size {cfg.batch_size}. Use --batch-size "
                              f"{cfg.devices} or more, or lower --devices to {cfg.batch_size}")
        super().validate(cfg, num_blocks)

    @classmethod
    def describe_plan(cls, cfg: RunConfig, num_blocks: int) -> str:
        return f"dp x {cfg.devices}"

    @classmethod
    def generate(cls, spec: ScheduleSpec, layout=None) -> Schedule:
        b = ScheduleBuilder(cls.name, spec, layout=f"dp x {spec.devices}")
        shards = row_ranges(shard_sizes(spec.batch_size, spec.devices))
        for i in range(spec.num_blocks):
            for step in range(spec.steps):
                if step == spec.warmup:
                    b.start_window()
                for r, rows in enumerate(shards):
                    b.load(r, step, rows)
                    b.teacher(r, step, range(i + 1), rows)
                    b.student(r, step, i, rows)
                    b.allreduce(r, step, [i], spec.world)
                    b.update(r, step, i)
            for r in spec.world:
                b.close(r)
        return b.build()
