"""Printing a schedule as a rank × order grid (one row per rank, one column per position).

Cells are :meth:`~.actions.Action.label`\\ s (``3:T1`` = step 3, teacher block 1; ``>1:a2[0:16]`` =
send rows 0–16 of the activation entering block 2 to rank 1). Marked cells (a validation error's
offending action) are drawn as ``>>cell<<``; long schedules are shown as the columns around the
first mark, or the first ``columns``, with the total length stated.
"""

from __future__ import annotations

from typing import Iterable

from .actions import Schedule

__all__ = ["format_grid"]


def format_grid(schedule: Schedule, *, marks: Iterable[tuple[int, int]] = (), columns: int | None = 24,
                start: int | None = None, wrap: int = 12) -> str:
    """The grid of ``schedule`` with ``marks`` ((rank, position) pairs) highlighted."""
    marks = set(marks)
    length = max((len(a) for a in schedule.ranks), default=0)
    if start is None:
        first = min((i for _r, i in marks), default=0)
        start = max(0, first - (columns or length) // 3) if marks else 0
    end = length if columns is None else min(length, start + columns)
    head = (f"schedule {schedule.strategy or '?'}"
            + (f" [{schedule.layout}]" if schedule.layout else "")
            + f": {schedule.devices} rank(s), {schedule.num_blocks} block(s), batch {schedule.batch_size}, "
              f"{schedule.steps} step(s), inflight {schedule.inflight}; "
            + (f"positions {start}..{end - 1} of {length}" if (start, end) != (0, length) else f"{length} positions"))
    cells = []
    for r, acts in enumerate(schedule.ranks):
        row = []
        for i in range(start, end):
            if i >= len(acts):
                row.append("")
                continue
            c = acts[i].label()
            row.append(f">>{c}<<" if (r, i) in marks else c)
        cells.append(row)
    lines = [head]
    for lo in range(0, end - start, wrap):
        cols = range(lo, min(lo + wrap, end - start))
        width = [max([len(str(start + c))] + [len(cells[r][c]) for r in range(len(cells))]) for c in cols]
        lines.append("        " + "  ".join(f"{start + c:<{w}}" for c, w in zip(cols, width)))
        for r in range(len(cells)):
            lines.append(f"rank {r:<2} " + "  ".join(f"{cells[r][c]:<{w}}" for c, w in zip(cols, width)).rstrip())
    return "\n".join(lines)
