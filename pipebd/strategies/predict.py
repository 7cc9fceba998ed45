"""Predictions for any registered strategy: its layout hook, its generator and the replay.

:func:`predict` is the one way every command predicts a strategy (``schedule``, ``simulate``,
``bench``, the experiments): the strategy chooses its layout from the cost table (or is given
one), generates its schedule, and :func:`pipebd.costmodel.replay_epoch` replays it. A new
baseline is predicted the moment it is registered; a strategy that cannot be expressed as a
schedule (an escape-hatch ``run``) raises :class:`NotPredictable`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from ..config import ConfigError
from ..costmodel import CostTable, Prediction, predict_ideal, replay_epoch
from ..schedule import ScheduleSpec
from .base import get_strategy, strategy_names, uses_schedule

__all__ = ["predict", "predict_all", "NotPredictable", "IDEAL"]

#: The pseudo-strategy of DESIGN.md §4's ideal (not a schedule), accepted wherever strategies are listed.
IDEAL = "ideal"


class NotPredictable(ConfigError):
    """The strategy has no schedule (it overrides ``run``), or no layout for this shape."""


def predict(name: str, costs: CostTable, devices: int, batch_size: int, steps: int, *, inflight: int = 2,
            memory_limit_bytes: float | None = None, layout: Any = None, epochs: int = 1) -> Prediction:
    """The predicted epoch of strategy ``name`` on ``devices`` devices (``layout``: else its own choice),
    averaged over ``epochs`` epochs (what a strategy pays once, the ``cache`` teacher pass, is spread)."""
    if name == IDEAL:
        return predict_ideal(costs, devices, batch_size, steps)
    cls = get_strategy(name)
    if not uses_schedule(cls):
        raise NotPredictable(f"strategy {name!r} runs its own loop (an escape-hatch run()), so it has no schedule to "
                             "replay; write it as a schedule generator to have it predicted")
    if cls.max_devices is not None and devices > cls.max_devices:
        p = predict(name, costs, cls.max_devices, batch_size, steps, inflight=inflight,
                    memory_limit_bytes=memory_limit_bytes, layout=layout, epochs=epochs)
        return dataclasses.replace(p, devices=devices, note=f"{cls.max_devices} device(s)")
    spec = ScheduleSpec(num_blocks=costs.num_blocks, devices=devices, batch_size=batch_size, steps=1,
                        inflight=inflight, epochs=max(1, epochs))
    if layout is None:
        layout = cls.choose_layout(costs, spec, memory_limit_bytes=memory_limit_bytes)
    used = _devices_used(cls, layout, devices)
    if used < devices:  # a layout on fewer devices (more devices than blocks): predicted where it runs
        p = predict(name, costs, used, batch_size, steps, inflight=inflight, layout=layout, epochs=epochs)
        return dataclasses.replace(p, devices=devices, note=f"uses {used} of {devices} devices")

    def make(h: int):
        return cls.generate(dataclasses.replace(spec, steps=h), layout)

    epoch, period, fill, extra = replay_epoch(make, costs, steps, devices=devices, inflight=inflight)
    return Prediction(name, devices, batch_size, steps, epoch, period, fill, make(1).layout, "", extra)


def _devices_used(cls, layout: Any, devices: int) -> int:
    n = getattr(layout, "devices", None)  # a Plan
    if isinstance(n, int):
        return n
    if isinstance(layout, list) and layout and isinstance(layout[0], list):  # an ls assignment
        return len(layout)
    return devices


def predict_all(costs: CostTable, devices: int, batch_size: int, steps: int, *, inflight: int = 2,
                memory_limit_bytes: float | None = None, strategies: Iterable[str] | None = None,
                skip_unpredictable: bool = False, epochs: int = 1) -> list[Prediction]:
    """Predictions of ``strategies`` (default: every registered one, then ``ideal``)."""
    names = list(strategies) if strategies is not None else [*strategy_names(), IDEAL]
    out = []
    for s in names:
        try:
            out.append(predict(s, costs, devices, batch_size, steps, inflight=inflight,
                               memory_limit_bytes=memory_limit_bytes, epochs=epochs))
        except ConfigError:
            if not skip_unpredictable:
                raise
    return out

