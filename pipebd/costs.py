"""Quick per-block cost estimates for balancing layouts before any profile exists.

The estimate of block ``i`` is its forward FLOPs per sample (teacher + 3× student, the usual
forward+backward ratio), counted by ``torch.utils.flop_counter`` on the meta device, so it
costs no real compute. :mod:`pipebd.profiler` replaces these with measured times.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from .zoo import WorkloadOptions, build_workload
from .zoo.layers import sample_path

__all__ = ["estimate_block_costs"]


@functools.lru_cache(maxsize=32)
def _estimate(workload: str, resolution: int | None, width_mult: float, num_classes: int | None) -> tuple[float, ...]:
    with torch.device("meta"):
        wl = build_workload(workload, WorkloadOptions(resolution=resolution, width_mult=width_mult,
                                                      num_classes=num_classes), probe=False)
        x = torch.zeros((1, *wl.input_shape))
        costs = []
        for i, (t, s) in enumerate(zip(wl.teacher, wl.student)):
            path = sample_path(s, seed=0, block_index=i, step=0)
            if path is not None:
                s.set_path(path)
            with FlopCounterMode(display=False) as ft, torch.no_grad():
                y = t(x)
            with FlopCounterMode(display=False) as fs, torch.no_grad():
                s(x)
            costs.append(float(ft.get_total_flops() + 3 * fs.get_total_flops()))
            x = y
    return tuple(costs)


def estimate_block_costs(cfg) -> list[float]:
    """Relative cost of each block of ``cfg``'s workload (FLOPs per sample, teacher + student train)."""
    return list(_estimate(cfg.workload, cfg.resolution, cfg.width_mult, cfg.num_classes))
