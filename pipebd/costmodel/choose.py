"""Choosing each block's compute mode from the profile (``--precision auto``, ``--memory-format auto``).

Every block's teacher forward and student step is timed by the profiler in every candidate
:class:`~pipebd.modes.Mode` (precision × memory format); :func:`choose_modes` takes, per block
and per part, the candidate with the least time summed over the per-replica batch sizes the
profile measured for every candidate (so one size's noise does not decide alone, and the sizes
a stage of 1..G replicas trains all count). A candidate the profile did not time is not chosen
unless it is the only one allowed (a pin), in which case it is returned as pinned and priced as
fp32 (:meth:`CostTable.unpriced` names it).

What this does not weigh: the relay saving of a bf16 teacher (half the bytes; small beside
compute on the profiles measured here) and the conversion a consumer pays when its mode
differs from its input's (a copy of one activation).
"""

from __future__ import annotations

import math
from typing import Sequence

from ..costfit import evaluate
from ..modes import FP32, BlockModes, Mode
from .table import CostTable

__all__ = ["choose_modes", "mode_score", "auto_priced", "describe_modes"]


def mode_score(times: dict[int, float], sizes: Sequence[int]) -> float:
    """Seconds summed over ``sizes`` (inf where any size ran out of memory)."""
    total = 0.0
    for b in sizes:
        t = evaluate(times, b)
        if math.isinf(t):
            return math.inf
        total += t
    return total


def _choose(costs: CostTable, part: str, block: int, allowed: Sequence[Mode]) -> Mode:
    measured = costs.mode_times(part, block)
    timed = [m for m in allowed if m.label in measured]
    if not timed:
        return allowed[0] if len(allowed) == 1 else FP32 if FP32 in allowed else allowed[0]
    sizes = sorted(set.intersection(*(set(measured[m.label]) for m in timed)))
    if not sizes:
        sizes = sorted(measured[timed[0].label])
    return min(timed, key=lambda m: (mode_score(measured[m.label], sizes), m != FP32))


def choose_modes(costs: CostTable | None, num_blocks: int, teacher: Sequence[Mode],
                 student: Sequence[Mode]) -> BlockModes:
    """Per block, the fastest allowed teacher mode and student mode the (unpriced) ``costs`` timed.

    ``teacher`` / ``student`` are the allowed candidates (:func:`pipebd.modes.candidate_modes`).
    Without a table, or with one that timed no mode but fp32 (a FLOP estimate, an old profile),
    the choice is fp32 contiguous where allowed — so ``auto`` never guesses."""
    if costs is None or not costs.has_modes():
        pick = lambda allowed: FP32 if FP32 in allowed else allowed[0]  # noqa: E731
        return BlockModes.uniform(num_blocks, pick(teacher), pick(student))
    return BlockModes(tuple(_choose(costs, "teacher", i, teacher) for i in range(num_blocks)),
                      tuple(_choose(costs, "student", i, student) for i in range(num_blocks)))


def auto_priced(costs: CostTable, *, teacher_precision: str = "auto", student_precision: str = "auto",
                memory_format: str = "auto") -> tuple[CostTable, BlockModes]:
    """``costs`` priced for the modes chosen under these pins, and the modes (for commands that
    have a profile but no run configuration: ``simulate``)."""
    from ..modes import candidate_modes

    if costs.modes:
        return costs, BlockModes.from_text(costs.modes)
    conv = memory_format != "contiguous" and any(k.endswith("-cl") for k in costs.variants)
    fmt = memory_format if conv or memory_format != "channels-last" else "contiguous"
    modes = choose_modes(costs, costs.num_blocks, candidate_modes(teacher_precision, fmt, conv=conv),
                         candidate_modes(student_precision, fmt, conv=conv))
    return costs.priced(modes), modes


def describe_modes(modes: BlockModes, raw: CostTable | None = None, rows: int | None = None) -> list[str]:
    """Lines of a per-block table: the chosen teacher and student mode and, where ``raw`` (an
    unpriced profile) timed candidates, each candidate's ms at ``rows`` rows (default: the largest
    profiled), the chosen one starred."""
    timed = raw is not None and not raw.modes and raw.has_modes()
    b = rows or (max(raw.batches()) if timed else None)
    head = f"{'block':>5}  {'teacher':<9}{'student':<9}"
    lines = [head + (f"  candidates at {b} rows, ms (teacher | student; * = chosen)" if timed else "")]
    for i in range(modes.num_blocks):
        line = f"{i:>5}  {modes.teacher[i].label:<9}{modes.student[i].label:<9}"
        if timed:
            cells = []
            for part, chosen in (("teacher", modes.teacher[i]), ("student", modes.student[i])):
                times = raw.mode_times(part, i)
                cells.append(" ".join(f"{m}{'*' if m == chosen.label else ''} {evaluate(t, b) * 1e3:.1f}"
                                      for m, t in times.items()))
            line += "  " + " | ".join(cells)
        lines.append(line)
    return lines
