"""Quick per-block facts and cost estimates for balancing layouts before any profile exists.

:func:`block_facts` counts, on the meta device (no real compute, no memory), every block's
forward FLOPs per sample for teacher and student (``torch.utils.flop_counter``; a supernet
student on the path sampled at step 0), its parameter counts and boundary shapes.
:func:`estimate_block_costs` turns them into one relative cost per block: teacher + 3×
student forward, the usual forward+backward ratio. :mod:`pipebd.profiler` replaces these with
measured times; ``python -m pipebd zoo`` prints the facts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .zoo import WorkloadOptions, build_workload
from .zoo.layers import sample_path

__all__ = ["BlockFacts", "block_facts", "estimate_block_costs"]


@dataclass(frozen=True)
class BlockFacts:
    in_shape: tuple[int, ...]  # per sample
    out_shape: tuple[int, ...]
    teacher_flops: float  # forward, per sample
    student_flops: float  # forward, per sample (supernet: the step-0 path)
    teacher_params: int
    student_params: int


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=32)
def block_facts(workload: str, resolution: int | None = None, width_mult: float = 1.0,
                num_classes: int | None = None) -> tuple[BlockFacts, ...]:
    """Per-block FLOPs, parameters and shapes of a workload, counted on the meta device (cached)."""
    facts = []
    with torch.device("meta"):
        wl = build_workload(workload, WorkloadOptions(resolution=resolution, width_mult=width_mult,
                                                      num_classes=num_classes), probe=False)
        x = torch.zeros((1, *wl.input_shape))
        for i, (t, s) in enumerate(zip(wl.teacher, wl.student)):
            path = sample_path(s, seed=0, block_index=i, step=0)
            if path is not None:
                s.set_path(path)
            with FlopCounterMode(display=False) as ft, torch.no_grad():
                y = t(x)
            with FlopCounterMode(display=False) as fs, torch.no_grad():
                s(x)
            facts.append(BlockFacts(tuple(x.shape[1:]), tuple(y.shape[1:]), float(ft.get_total_flops()),
                                    float(fs.get_total_flops()), _params(t), _params(s)))
            x = y
    return tuple(facts)


def estimate_block_costs(cfg) -> list[float]:
    """Relative cost of each block of ``cfg``'s workload (FLOPs per sample, teacher + student train)."""
    return [f.teacher_flops + 3 * f.student_flops
            for f in block_facts(cfg.workload, cfg.resolution, cfg.width_mult, cfg.num_classes)]
