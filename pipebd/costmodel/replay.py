"""The cost model: a schedule replayed as a discrete-event simulation priced from a cost table.

What runs is what is predicted, by construction: the interpreter executes a strategy's
:class:`~pipebd.schedule.Schedule` and this module replays the same action lists with
:func:`pipebd.schedule.execute` (a receive waits on its send, a collective on its whole group,
a send on the in-flight bound), each action priced from the :class:`~.table.CostTable`:

=========  =============================================================
LOAD       ``data_time(rows)``
TEACHER    ``Σ teacher_time(b, rows)`` over its blocks
STUDENT    ``student_time(b, rows)`` (forward + backward + optimizer)
RECV       ``relay_time(boundary, rows)`` (the receiver pays the transfer)
ALLREDUCE  ``Σ allreduce_time(b, |group|)``
BARRIER    ``barrier_time(|group|)``
PUT / GET  ``store_time(write / read, medium, activation bytes × rows)`` (the ``cache`` store)
other      0 (SEND is non-blocking; UPDATE is inside the student's time)
=========  =============================================================

An epoch of ``S`` steps is replayed for ``H`` and ``2H`` steps (``H`` a few multiples of
ranks × in-flight, enough for a pipeline to reach its steady state) and extended linearly:
``period = (T(2H) − T(H)) / H``, ``epoch = T(2H) + (S − 2H) · period``, ``fill = epoch − S · period``
— the same split into one fill and ``S`` periods that the measurements use (DESIGN.md §4).
``ideal`` (each teacher and student block once per sample at its per-sample-fastest size,
÷ N; no loading, communication or idle time) is not a schedule and is computed directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..schedule import (ALLREDUCE, BARRIER, GET, LOAD, PUT, RECV, STUDENT, TEACHER, Action, Schedule, Timeline,
                        execute)
from .table import CostTable

__all__ = ["Prediction", "action_seconds", "replay", "replay_epoch", "predict_ideal", "horizon"]


@dataclass(frozen=True)
class Prediction:
    """One predicted epoch of one strategy."""

    strategy: str
    devices: int
    batch_size: int
    steps: int
    epoch_s: float
    step_s: float  # steady-state seconds per step (for dp: the sum over blocks of each block's step)
    fill_s: float = 0.0
    layout: str = ""  # the plan / stages / ls map the prediction assumes
    note: str = ""
    extrapolated: bool = False  # priced from a per-replica batch outside the measured range (costfit)


def action_seconds(costs: CostTable, a: Action) -> float:
    """Seconds action ``a`` costs by itself (waiting excluded: the replay adds it)."""
    k, rows = a.kind, a.nrows
    if k == LOAD:
        return costs.data_time(rows)
    if k == TEACHER:
        return sum(costs.teacher_time(b, rows) for b in a.blocks)
    if k == STUDENT:
        return costs.student_time(a.block, rows)
    if k == RECV:
        return costs.relay_time(a.boundary, rows)
    if k == ALLREDUCE:
        return sum(costs.allreduce_time(b, len(a.group)) for b in a.blocks)
    if k == BARRIER:
        return costs.barrier_time(len(a.group))
    if k in (PUT, GET):
        medium = "disk" if "disk" in a.note.split() else "memory"
        nbytes = costs.activation_bytes[a.boundary] * rows * (0.5 if "half" in a.note.split() else 1.0)
        return costs.store_time("write" if k == PUT else "read", medium, nbytes)
    return 0.0


def replay(schedule: Schedule, costs: CostTable) -> Timeline:
    """The predicted timeline of ``schedule`` (every action's start and end, every window)."""
    return execute(schedule, lambda _r, a: action_seconds(costs, a))


def _extrapolated(schedule: Schedule, costs: CostTable) -> bool:
    rows = {(a.block, a.nrows) for _r, _i, a in schedule if a.kind in (TEACHER, STUDENT)}
    return any(costs.extrapolates([n], [b]) for b, n in rows)


def horizon(devices: int, inflight: int) -> int:
    """Steps replayed for an epoch: enough for a pipeline of ``devices`` stages to settle."""
    return max(8, 4 * devices * inflight)


def replay_epoch(make: Callable[[int], Schedule], costs: CostTable, steps: int, *, devices: int,
                 inflight: int) -> tuple[float, float, float, bool]:
    """(epoch, period, fill, extrapolated) of ``steps`` steps; ``make(h)`` builds the schedule of
    ``h`` steps (no warm-up), which is replayed for ``h = H`` and ``2H`` and extended linearly."""
    h1 = horizon(devices, inflight)
    if steps <= 2 * h1:
        h1 = max(1, steps // 2)
    s1 = make(h1)
    t1 = replay(s1, costs).measured_s()
    h2 = min(steps, 2 * h1)
    if h2 == h1:
        return t1, t1 / h1, 0.0, _extrapolated(s1, costs)
    s2 = make(h2)
    t2 = replay(s2, costs).measured_s()
    period = (t2 - t1) / (h2 - h1)
    epoch = t2 + (steps - h2) * period
    # the period is a difference, so a pipeline without fill can come out a rounding error below zero
    return epoch, period, max(0.0, epoch - steps * period), _extrapolated(s2, costs)


def predict_ideal(costs: CostTable, devices: int, batch_size: int, steps: int) -> Prediction:
    """DESIGN.md §4: each teacher and student block once per sample at its per-sample-fastest size, ÷ N."""
    per_sample = 0.0
    for i in range(costs.num_blocks):
        per_sample += min(t / b for b, t in costs.teacher[i].items())
        per_sample += min(t / b for b, t in costs.student[i].items())
    step = per_sample * batch_size / devices
    return Prediction("ideal", devices, batch_size, steps, steps * step, step)
