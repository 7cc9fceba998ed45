"""Quick per-block facts and cost estimates for balancing layouts before any profile exists.

:func:`block_facts` counts, on the meta device (no real compute, no memory), every block's
forward FLOPs per sample for teacher and student (``torch.utils.flop_counter``), its parameter
counts and boundary shapes. A supernet student trains one uniformly sampled path per step, so
its FLOPs are the expectation over paths: fixed prefix + Σ over cells of the mean over that
cell's choices (a Zero choice counts 0 FLOPs) + fixed suffix.
:func:`estimate_block_costs` turns them into one relative cost per block: teacher + 3×
student forward, the usual forward+backward ratio. :mod:`pipebd.profiler` replaces these with
measured times; ``python -m pipebd zoo`` prints the facts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .options import workload_sizes
from .zoo import WorkloadOptions, build_workload

__all__ = ["BlockFacts", "block_facts", "estimate_block_costs", "sampled_path_ratio"]


@dataclass(frozen=True)
class BlockFacts:
    in_shape: tuple[int, ...]  # per sample
    out_shape: tuple[int, ...]
    teacher_flops: float  # forward, per sample
    student_flops: float  # forward, per sample (supernet: the mean over its uniformly sampled paths)
    teacher_params: int
    student_params: int


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Forward FLOPs of ``fn(*args)`` (no grad) and its output."""
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        out = fn(*args)
    return float(fc.get_total_flops()), out


def _choice_flops(block: torch.nn.Module, x: torch.Tensor) -> tuple[float, list[list[float]]]:
    """A supernet block's fixed FLOPs (prefix + suffix) and, per cell, the FLOPs of each choice."""
    fixed, x = _flops(block.prefix, x)
    cells = []
    for cell in block.cells:
        per_choice = []
        for op in cell:
            f, y = _flops(op, x)
            per_choice.append(f)
        cells.append(per_choice)
        x = y  # every choice of a cell gives the same shape
    return fixed + _flops(block.suffix, x)[0], cells


def _student_flops(block: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs of a student block; a supernet's is the mean over its uniformly sampled paths.

    Cells are chosen independently and uniformly, so the expected FLOPs of a path are the sum,
    over cells, of the mean FLOPs of the cell's choices (each counted on the cell's input).
    """
    if not getattr(block, "is_supernet", False):
        return _flops(block, x)[0]
    fixed, cells = _choice_flops(block, x)
    return fixed + sum(sum(c) / len(c) for c in cells)


def sampled_path_ratio(cfg, steps: range) -> tuple[list[float], float] | None:
    """Per supernet block of ``cfg``'s workload, the mean student FLOPs of the paths sampled at
    ``steps`` over the expectation over all paths (1.0 = the window costs what the average path
    costs), and the same for all blocks together; ``None`` for a workload without supernets.
    Counted on the meta device."""
    from .zoo import sample_path

    out, got_all, expect_all = [], 0.0, 0.0
    with torch.device("meta"):
        wl = build_workload(cfg.workload, workload_sizes(cfg), probe=False)
        if not wl.is_nas:
            return None
        x = wl.example_input(1)
        for i, (t, s) in enumerate(zip(wl.teacher, wl.student)):
            fixed, cells = _choice_flops(s, x)
            expect = fixed + sum(sum(c) / len(c) for c in cells)
            paths = [sample_path(s, seed=cfg.seed, block_index=i, step=k) for k in steps]
            got = sum(fixed + sum(c[p] for c, p in zip(cells, path)) for path in paths) / max(1, len(paths))
            out.append(got / expect)
            got_all, expect_all = got_all + got, expect_all + expect
            x = _flops(t, x)[1]
    return out, got_all / expect_all


@functools.lru_cache(maxsize=32)
def block_facts(workload: str, sizes: WorkloadOptions = WorkloadOptions()) -> tuple[BlockFacts, ...]:
    """Per-block FLOPs, parameters and shapes of a workload, counted on the meta device (cached).

    ``student_params`` counts every parameter of the block (a supernet: all its choices).
    """
    facts = []
    with torch.device("meta"):
        wl = build_workload(workload, sizes.sizes(), probe=False)
        x = wl.example_input(1)
        for t, s in zip(wl.teacher, wl.student):
            t_flops, y = _flops(t, x)
            facts.append(BlockFacts(tuple(x.shape[1:]), tuple(y.shape[1:]), t_flops, _student_flops(s, x),
                                    _params(t), _params(s)))
            x = y
    return tuple(facts)


def estimate_block_costs(cfg) -> list[float]:
    """Relative cost of each block of ``cfg``'s workload (FLOPs per sample, teacher + student train)."""
    return [f.teacher_flops + 3 * f.student_flops
            for f in block_facts(cfg.workload, workload_sizes(cfg))]
