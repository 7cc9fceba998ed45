"""``even``: NVIDIA ModelOpt's block-wise ("bypass") distillation ownership (one file, nothing else).

ModelOpt's block-wise distillation (the open implementation behind Puzzle, Bercovich et al.
2025) gives every rank an *equal number of blocks* as one contiguous stage, relays the
teacher's activations from rank to rank, and has no cost model. Here it is the ``tr-dpu``
schedule (relayed, no barrier, ``--inflight`` batches in flight) over the even split: with
``n`` blocks on ``N`` ranks the first ``n mod N`` stages get one block more. Against ``tr-dpu``
(the same schedule over the cost-balanced split) it shows what the planner's balance is worth.
"""

from __future__ import annotations

from pipebd.config import ConfigError, RunConfig
from pipebd.plan import Plan, Stage
from pipebd.strategies import register_strategy
from pipebd.strategies.relay import TeacherRelayDPU


def even_plan(num_blocks: int, devices: int) -> Plan:
    if devices > num_blocks:
        raise ConfigError(f"strategy 'even' gives each of the {devices} devices at least one of the {num_blocks} "
                          f"blocks; use --devices {num_blocks} or fewer")
    base, extra = divmod(num_blocks, devices)
    stages, lo = [], 0
    for k in range(devices):
        size = base + (k < extra)
        stages.append(Stage(lo, lo + size - 1, 1))
        lo += size
    return Plan(tuple(stages))


@register_strategy("even")
class EvenSplit(TeacherRelayDPU):
    description = "ModelOpt bypass distillation: equal blocks per device, teacher relayed, no cost model"

    @classmethod
    def layout(cls, cfg: RunConfig, num_blocks: int) -> Plan:
        return even_plan(num_blocks, cfg.devices)

    @classmethod
    def choose_layout(cls, costs, spec, *, memory_limit_bytes=None) -> Plan:
        return even_plan(spec.num_blocks, spec.devices)
