"""Pipe-BD automatic hybrid distribution (``ahd``): teacher relaying over replicated stages.

Pipe-BD (Jang et al., DATE 2023) §III-C: with more devices than balanced stages, or blocks
of very uneven cost, one stage per device leaves devices idle. AHD runs a
:class:`~pipebd.plan.Plan` instead: contiguous stages of blocks, stage ``s`` on ``r_s``
data-parallel replicas that split each batch by rows (evenly, or by ``@w1:w2`` weights).

- Each replica of the first stage loads its own rows of the batch
  (``DataSource.load(step, lo, hi)``); no other stage touches the data.
- Relayed activations are sliced and gathered between stages of different widths: for each
  (sender replica, receiver replica) pair the overlap of their row ranges travels as one
  non-blocking message into a sliced view of the receiver's preallocated input buffer
  (:func:`~pipebd.plan.row_overlaps`), so 1→2, 2→1, 3→1, 2→3 and uneven splits all work.
- Inside a replicated stage, every replica weights its loss by its share of the batch (as
  ``BlockTrainer.accumulate`` does for ghost shards) and the present gradients are summed
  with one flattened all-reduce in the stage's own process group; all replicas sample the
  same NAS path (``BlockTrainer.begin`` draws it from (seed, block, step)).
- No barrier across stages: the decoupled parameter update of §III-B, with at most
  ``--inflight`` batches in flight per link.

The plan comes from ``--plan`` (e.g. ``0-1x2,2-5x1``; ``python -m pipebd plan`` prints one),
else from :func:`pipebd.planner.plan_for` (costs from ``--profile`` or a FLOP estimate),
computed from the same cost table on every rank (a deterministic search, so every rank runs the
same layout). The schedule is :func:`~pipebd.strategies.relay.relay_schedule`'s, shared with
``tr``/``tr-dpu``.
"""

from __future__ import annotations

import logging

from ..config import ConfigError, RunConfig
from ..plan import Plan, parse_plan
from ..schedule import Schedule, ScheduleSpec
from .base import Strategy, register_strategy
from .relay import relay_schedule

__all__ = ["AutoHybrid", "ahd_plan"]

log = logging.getLogger("pipebd.ahd")


def _planned(cfg: RunConfig) -> Plan:
    """The plan for a run without ``--plan``: the AHD planner's, from the run's cost table."""
    from ..planner import plan_for

    plan = plan_for(cfg)
    log.info("ahd: no --plan given; the planner chose %s for %d device(s)", plan, cfg.devices)
    return plan


def ahd_plan(cfg: RunConfig, num_blocks: int) -> Plan:
    """``cfg``'s plan (``--plan`` or planned), validated against the workload, devices and batch."""
    if cfg.plan is not None:
        if not cfg.plan.strip():
            raise ConfigError("--plan is empty; give stages like 0-1x2,2-5x1 (or omit --plan to let the planner "
                              "choose)")
        plan = parse_plan(cfg.plan)
    else:
        plan = _planned(cfg)
    plan.validate(num_blocks=num_blocks, devices=cfg.devices, batch_size=cfg.batch_size)
    if cfg.plan is not None:  # a planned layout fits by construction; a given one is checked before any spawn
        from ..planner import check_plan_memory_for

        check_plan_memory_for(cfg, plan)
    return plan


@register_strategy("ahd")
class AutoHybrid(Strategy):
    description = "Pipe-BD automatic hybrid distribution: relayed stages x data-parallel replicas (--plan)"

    @classmethod
    def layout(cls, cfg: RunConfig, num_blocks: int) -> Plan:
        return ahd_plan(cfg, num_blocks)

    @classmethod
    def choose_layout(cls, costs, spec: ScheduleSpec, *, memory_limit_bytes: float | None = None) -> Plan:
        from ..planner import plan as make_plan

        return make_plan(costs, spec.devices, spec.batch_size, memory_limit_bytes=memory_limit_bytes,
                         inflight=spec.inflight)

    @classmethod
    def generate(cls, spec: ScheduleSpec, layout: Plan) -> Schedule:
        return relay_schedule(spec, layout, barrier=False, strategy=cls.name, layout=str(layout))
