"""Stage costs: what one stage of a :class:`~pipebd.plan.Plan` costs per batch, and its memory.

The planner's fast objective (Pipe-BD §III-C: minimise the slowest stage) and its memory check
read these; the closed-form pipeline recurrence :func:`simulate_pipeline` is kept as a test
oracle of the schedule replay (:mod:`.replay`), which is what predictions use. Data-parallel
replicas of a stage synchronise every step through their all-reduce, so a stage is one unit
whose per-batch time is its slowest replica plus the all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..config import ConfigError
from ..plan import Stage
from .table import CostTable

__all__ = ["StageCost", "stage_cost", "stage_memory", "PipelineResult", "simulate_pipeline"]

@dataclass(frozen=True)
class StageCost:
    """Per-batch cost of one stage (its slowest replica, plus the stage's all-reduce)."""

    stage: Stage
    rows: tuple[int, ...]  # rows per replica
    input_s: float  # data loading (first stage) or relay receive
    teacher_s: float
    student_s: float  # forward + backward + optimizer of every student block of the stage
    allreduce_s: float
    total_s: float  # busy seconds per batch: max over replicas(input + teacher + student) + all-reduce
    teacher_done_s: float  # seconds after the start when the stage's output can be sent
    memory_bytes: float | None  # peak bytes of the largest replica (None: not measured)
    extrapolated: bool = False  # a replica's rows lie outside a block's measured batch sizes

    @property
    def work_s(self) -> float:
        """Device-seconds per batch (replicas × stage time)."""
        return self.stage.replicas * self.total_s


def stage_cost(costs: CostTable, stage: Stage, batch_size: int, *, inflight: int = 2) -> StageCost:
    """Cost of ``stage`` when the global batch is ``batch_size`` (rows split as the stage says)."""
    rows = stage.rows(batch_size)
    if min(rows) < 1:
        raise ConfigError(f"stage {stage} gives a replica no rows of a {batch_size}-sample batch")
    best = None
    for b in sorted(set(rows), reverse=True):
        inp = costs.data_time(b) if stage.first == 0 else costs.relay_time(stage.first, b)
        tch = sum(costs.teacher_time(i, b) for i in stage.blocks)
        stu = sum(costs.student_time(i, b) for i in stage.blocks)
        key = inp + tch + stu
        if best is None or key > best[0]:
            best = (key, inp, tch, stu)
    _, inp, tch, stu = best
    ar = sum(costs.allreduce_time(i, stage.replicas) for i in stage.blocks)
    return StageCost(stage=stage, rows=rows, input_s=inp, teacher_s=tch, student_s=stu, allreduce_s=ar,
                     total_s=inp + tch + stu + ar, teacher_done_s=inp + tch,
                     memory_bytes=stage_memory(costs, stage.first, stage.last, max(rows), inflight=inflight),
                     extrapolated=costs.extrapolates(set(rows), stage.blocks))


def stage_memory(costs: CostTable, first: int, last: int, rows: int, *, inflight: int = 2) -> float | None:
    """Peak bytes of a replica training blocks ``first..last`` on ``rows`` rows.

    Blocks of a stage are trained one after another, so the resident parts add up and the
    transient parts (activations, gradients) peak at the largest block; the relay buffers
    (``inflight`` batches in and out) come on top. ``None`` when a block has no memory data.
    """
    static = 0.0
    peak = 0.0
    for i in range(first, last + 1):
        m = costs.memory_bytes(i, rows)
        if m is None:
            return None
        static += costs.static_memory[i]
        peak = max(peak, m - costs.static_memory[i])
    buffers = inflight * rows * ((costs.activation_bytes[first] if first > 0 else 0.0)
                                 + (costs.activation_bytes[last + 1] if last + 1 < costs.num_blocks else 0.0))
    return static + peak + buffers


# ---- pipelines --------------------------------------------------------------------------

@dataclass(frozen=True)
class PipelineResult:
    epoch_s: float  # time until every stage finished every step
    period_s: float  # steady-state seconds per step
    fill_s: float  # epoch_s - steps * period_s: pipeline fill and drain
    simulated_steps: int  # steps simulated event by event (the rest extrapolated at period_s)


def simulate_pipeline(stages: Sequence[StageCost], steps: int, *, inflight: int = 2) -> PipelineResult:
    """Discrete-event simulation of a pipeline without a barrier (tr-dpu, ahd).

    Stage ``k`` starts batch ``t`` when it finished batch ``t-1`` and stage ``k-1`` sent batch
    ``t``; it receives (``input_s``), runs its teacher blocks, sends its output — waiting first
    until stage ``k+1`` has received batch ``t - inflight`` (bounded in-flight sends) — and
    trains its students. Costs are constant per batch, so the schedule becomes periodic
    within a few multiples of ``stages × inflight`` batches; longer epochs are extrapolated
    from the simulated steady state.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if inflight < 1:
        raise ValueError(f"inflight must be >= 1, got {inflight}")
    K = len(stages)
    horizon = min(steps, max(256, 16 * K * inflight))
    finish = [0.0] * K
    recv_done: list[list[float]] = [[] for _ in range(K)]
    last_end: list[float] = []
    for t in range(horizon):
        arrival = 0.0
        for k, c in enumerate(stages):
            start = max(finish[k], arrival)
            recv_done[k].append(start + c.input_s)
            ready = start + c.teacher_done_s
            send = ready
            if k + 1 < K and t >= inflight:
                send = max(ready, recv_done[k + 1][t - inflight])
            finish[k] = start + c.total_s + (send - ready)
            arrival = send
        last_end.append(max(finish))
    if horizon >= 4:
        half = horizon // 2
        period = (last_end[-1] - last_end[half - 1]) / (horizon - half)
    else:
        period = max(c.total_s for c in stages)
    epoch = last_end[-1] + (steps - horizon) * period
    # the period is measured, so a pipeline without fill can come out a rounding error below zero
    return PipelineResult(epoch_s=epoch, period_s=period, fill_s=max(0.0, epoch - steps * period),
                          simulated_steps=horizon)
