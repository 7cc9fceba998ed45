"""Checking a schedule before any process starts.

:func:`validate_schedule` raises :class:`ScheduleError` (a :class:`~pipebd.config.ConfigError`, so
the CLI exits 2) with the grid of the schedule and the offending action marked, when:

- an action is malformed (unknown kind, a step, block, row range, peer or group out of range);
- a SEND has no matching RECV (the ``k``-th send from ``a`` to ``b`` against the ``k``-th receive
  on ``b`` from ``a``: same step, boundary and rows, so the same shape), or the reverse;
- a collective's group is incomplete: every member must run the same sequence of collectives
  (kind, step, blocks) on that group;
- a rank reads a register it does not hold (a TEACHER, SEND, PUT or STUDENT whose rows of
  ``(step, boundary)`` were never loaded, computed, received or read from the store on that rank);
- a store is read before it is complete: every rank's first GET must come after a barrier of
  all ranks that follows every rank's last PUT;
- a student block is not trained exactly once per step: for every block and step, the rows of
  its STUDENT actions over all ranks must partition the batch; each STUDENT is followed by the
  block's UPDATE on its rank; a block trained by several ranks all-reduces its gradients over
  exactly those ranks between the two;
- a measurement window is opened twice or never closed;
- the schedule can deadlock under its in-flight bound (:func:`~.execute.execute` with zero
  durations: no rank can move while some still have actions).
"""

from __future__ import annotations

from collections import defaultdict

from ..config import ConfigError
from .actions import (ALLREDUCE, BARRIER, CLOSE, COLLECTIVES, GET, KINDS, LOAD, MARKERS, OPEN, PUT, RECV, SEND,
                      STUDENT, TEACHER, UPDATE, Schedule)
from .execute import Deadlock, execute, match_collectives, match_p2p
from .grid import format_grid

__all__ = ["ScheduleError", "validate_schedule", "problems"]


class ScheduleError(ConfigError):
    """A schedule cannot run; ``marks`` are the (rank, position) of the offending actions."""

    def __init__(self, message: str, marks=()):
        super().__init__(message)
        self.marks = tuple(marks)


def _field_problems(s: Schedule) -> list[tuple[int, int, str]]:
    out = []
    n, B, N = s.num_blocks, s.batch_size, s.devices
    for r, i, a in s:
        def bad(msg: str) -> None:
            out.append((r, i, f"{a.kind} {msg}"))

        if a.kind not in KINDS:
            bad(f"is not an action kind; expected one of {', '.join(KINDS)}")
            continue
        if a.kind not in MARKERS and not (a.kind == BARRIER and a.step == -1) and not 0 <= a.step < s.steps:
            bad(f"has step {a.step}, outside 0..{s.steps - 1}")
        if a.kind in (LOAD, TEACHER, SEND, RECV, STUDENT, PUT, GET):
            if a.rows is None or not 0 <= a.rows[0] < a.rows[1] <= B:
                bad(f"needs rows [lo, hi) with 0 <= lo < hi <= {B}, got {a.rows}")
        if a.kind in (TEACHER, STUDENT, UPDATE, ALLREDUCE):
            if not a.blocks or any(not 0 <= b < n for b in a.blocks):
                bad(f"needs blocks in 0..{n - 1}, got {a.blocks}")
            elif a.kind == TEACHER and list(a.blocks) != list(range(a.blocks[0], a.blocks[-1] + 1)):
                bad(f"blocks must be contiguous and ascending, got {a.blocks}")
            elif a.kind in (STUDENT, UPDATE) and len(a.blocks) != 1:
                bad(f"trains exactly one block, got {a.blocks}")
        if a.kind in (PUT, GET) and (a.boundary is None or not 1 <= a.boundary <= n):
            bad(f"needs a boundary in 1..{n} (the teacher's outputs; the input is LOADed), got {a.boundary}")
        if a.kind in (SEND, RECV):
            if a.peer is None or not 0 <= a.peer < N or a.peer == r:
                bad(f"needs a peer rank in 0..{N - 1} other than {r}, got {a.peer}")
            if a.boundary is None or not 0 <= a.boundary <= n:
                bad(f"needs a boundary in 0..{n}, got {a.boundary}")
        if a.kind in COLLECTIVES:
            g = a.group
            if len(g) < 2 or r not in g or list(g) != sorted(set(g)) or any(not 0 <= m < N for m in g):
                bad(f"needs a sorted group of >= 2 distinct ranks in 0..{N - 1} including rank {r}, got {g}")
    return out


def _p2p_problems(s: Schedule) -> list[tuple[int, int, str]]:
    match, out = match_p2p(s)
    for (r, i), (peer, j) in match.items():
        a, b = s.ranks[r][i], s.ranks[peer][j]
        if a.kind == SEND and (a.step, a.boundary, a.rows) != (b.step, b.boundary, b.rows):
            out.append((r, i, f"SEND (step {a.step}, boundary {a.boundary}, rows {a.rows}) is matched by rank {peer}'s "
                              f"RECV at position {j} with step {b.step}, boundary {b.boundary}, rows {b.rows}: "
                              "sends and receives between two ranks must come in the same order with the same "
                              "step, boundary and rows"))
    return out


def _collective_problems(s: Schedule) -> list[tuple[int, int, str]]:
    out = []
    for (r, i), inst in match_collectives(s).items():
        a = s.ranks[r][i]
        members = {m for m, _ in inst}
        if members != set(a.group):
            out.append((r, i, f"{a.kind} over {a.group}: rank(s) {sorted(set(a.group) - members)} never join this "
                              "instance (every member must run the same collectives on a group, in the same order)"))
            continue
        for m, j in inst:
            b = s.ranks[m][j]
            if (b.kind, b.step, b.blocks) != (a.kind, a.step, a.blocks):
                out.append((r, i, f"{a.kind} step {a.step} blocks {a.blocks} meets rank {m}'s {b.kind} step {b.step} "
                                  f"blocks {b.blocks} at position {j}: the group's collectives differ"))
                break
    return out


def _covers(held: list[tuple[int, int]], rows: tuple[int, int]) -> bool:
    return any(lo <= rows[0] and rows[1] <= hi for lo, hi in held)


def _merge(held: list[tuple[int, int]], rows: tuple[int, int]) -> list[tuple[int, int]]:
    out = []
    for lo, hi in sorted(held + [rows]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _dataflow_problems(s: Schedule) -> list[tuple[int, int, str]]:
    out = []
    trainers: dict[tuple[int, int], list[tuple[int, int, tuple[int, int]]]] = defaultdict(list)
    reduced_by: dict[int, set[tuple[int, int]]] = {}  # rank -> (block, step) it all-reduced
    for r, acts in enumerate(s.ranks):
        regs: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        open_student: dict[tuple[int, int], int] = {}
        reduced: set[tuple[int, int]] = set()
        window = None
        for i, a in enumerate(acts):
            def need(boundary: int, rows, what: str) -> None:
                if rows is not None and not _covers(regs[(a.step, boundary)], rows):
                    out.append((r, i, f"{a.kind} reads rows {rows} of step {a.step}'s activation entering block "
                                      f"{boundary} ({what}), which rank {r} never loaded, computed or received "
                                      f"(it holds {regs[(a.step, boundary)] or 'none'})"))

            if a.kind == LOAD and a.rows:
                regs[(a.step, 0)] = _merge(regs[(a.step, 0)], a.rows)
            elif a.kind == TEACHER and a.blocks and a.rows:
                need(a.blocks[0], a.rows, "the teacher's input")
                for b in a.blocks:
                    regs[(a.step, b + 1)] = _merge(regs[(a.step, b + 1)], a.rows)
            elif a.kind == SEND and a.boundary is not None:
                need(a.boundary, a.rows, "what it sends")
            elif a.kind in (RECV, GET) and a.boundary is not None and a.rows:
                regs[(a.step, a.boundary)] = _merge(regs[(a.step, a.boundary)], a.rows)
            elif a.kind == PUT and a.boundary is not None:
                need(a.boundary, a.rows, "what it stores")
            elif a.kind == STUDENT and a.blocks:
                b = a.block
                need(b, a.rows, "the student's input")
                need(b + 1, a.rows, "the student's target")
                open_student.setdefault((b, a.step), i)
                trainers[(b, a.step)].append((r, i, a.rows))
            elif a.kind == ALLREDUCE:
                for b in a.blocks:
                    if (b, a.step) not in open_student:
                        out.append((r, i, f"ALLREDUCE of block {b} at step {a.step} before any STUDENT of it on "
                                          f"rank {r}: there are no gradients to reduce"))
                    reduced.add((b, a.step))
            elif a.kind == UPDATE and a.blocks:
                key = (a.block, a.step)
                if key not in open_student:
                    out.append((r, i, f"UPDATE of block {a.block} at step {a.step} without a STUDENT of it before"))
                open_student.pop(key, None)
            elif a.kind == OPEN:
                if window is not None:
                    out.append((r, i, "OPEN while the window opened at position {window} is still open"))
                window = i
            elif a.kind == CLOSE:
                if window is None:
                    out.append((r, i, "CLOSE without an open window"))
                window = None
        for (b, st), i in open_student.items():
            out.append((r, i, f"STUDENT of block {b} at step {st} is never followed by its UPDATE on rank {r}"))
        if window is not None:
            out.append((r, window, "the window opened here is never closed"))
        reduced_by[r] = reduced
    # every block, every step: rows partition the batch; replicas all-reduce over exactly themselves
    for b in range(s.num_blocks):
        for st in range(s.steps):
            got = trainers.get((b, st), [])
            if not got:
                r0 = 0
                out.append((r0, len(s.ranks[r0]) - 1 if s.ranks[r0] else 0,
                            f"block {b} is never trained at step {st} (every block trains once per step)"))
                continue
            rows = sorted(x[2] for x in got)
            pos = 0
            for lo, hi in rows:
                if lo != pos:
                    r, i, _ = next(x for x in got if x[2] == (lo, hi))
                    why = "overlap" if lo < pos else f"leave rows {pos}:{lo} untrained"
                    out.append((r, i, f"the STUDENT actions of block {b} at step {st} {why}: their rows {rows} must "
                                      f"partition the batch 0:{s.batch_size} exactly once"))
                    break
                pos = hi
            else:
                if pos != s.batch_size:
                    r, i, _ = got[-1]
                    out.append((r, i, f"the STUDENT actions of block {b} at step {st} cover rows 0:{pos} of a batch of "
                                      f"{s.batch_size}; every row must be trained once"))
            ranks = sorted({x[0] for x in got})
            if len(ranks) > 1:
                for r, i, _ in got:
                    if (b, st) not in reduced_by.get(r, set()):
                        out.append((r, i, f"block {b} is trained by ranks {ranks} at step {st} but rank {r} does not "
                                          "all-reduce its gradients before the UPDATE"))
                        break
    return out


def _store_problems(s: Schedule) -> list[tuple[int, int, str]]:
    """What a GET reads is complete before it reads it: a barrier of every rank lies between each
    PUT of the GET's step (or, for a step no PUT writes — a later epoch reusing the store — each
    PUT of an earlier step) and the GET; every boundary read is written somewhere."""
    world = tuple(range(s.devices))
    puts = {(r, i) for r, i, a in s if a.kind == PUT}
    gets = [(r, i, a) for r, i, a in s if a.kind == GET]
    if not gets:
        return []
    out = []
    stored = {a.boundary for r, i, a in s if a.kind == PUT}
    for r, i, a in gets:
        if a.boundary not in stored:
            out.append((r, i, f"GET of boundary {a.boundary}, which no rank ever PUTs in the store"))
    if s.devices == 1 or not puts:
        return out

    counts = []  # per rank and position: world barriers passed before it
    for acts in s.ranks:
        c, row = 0, []
        for a in acts:
            row.append(c)
            c += a.kind == BARRIER and a.group == world
        counts.append(row)
    put_at: dict[int, int] = {}  # step -> the latest barrier count of any of its PUTs
    for r, i in puts:
        st = s.ranks[r][i].step
        put_at[st] = max(put_at.get(st, -1), counts[r][i])
    reported = set()
    for r, i, a in gets:
        need = put_at.get(a.step)
        if need is None:
            need = max((c for st, c in put_at.items() if st < a.step), default=-1)
        if counts[r][i] <= need and r not in reported:
            reported.add(r)
            out.append((r, i, f"GET of step {a.step} before the store is complete: put a barrier of all ranks after "
                              "every PUT it reads and before it"))
    return out


def problems(schedule: Schedule) -> list[tuple[int, int, str]]:
    """Every problem found, as (rank, position, message); empty for a valid schedule."""
    out = _field_problems(schedule)
    if out:
        return out
    comm = _p2p_problems(schedule) + _collective_problems(schedule)
    out = comm + _dataflow_problems(schedule) + _store_problems(schedule)
    if comm:  # the abstract execution needs matched communication
        return out
    try:
        execute(schedule, inflight=schedule.inflight)
    except Deadlock as e:
        out += [(r, i, f"deadlock under inflight {schedule.inflight}: rank {r} {why}")
                for r, (i, why) in sorted(e.blocked.items())]
    return out


def validate_schedule(schedule: Schedule) -> None:
    """Raise :class:`ScheduleError` (with the marked grid) unless ``schedule`` is valid."""
    found = problems(schedule)
    if not found:
        return
    marks = [(r, i) for r, i, _ in found]
    lines = [f"schedule of strategy {schedule.strategy!r} is invalid ({len(found)} problem(s)):"]
    for r, i, msg in found[:8]:
        lbl = schedule.ranks[r][i].label() if 0 <= i < len(schedule.ranks[r]) else "?"
        lines.append(f"  rank {r}, position {i} ({lbl}): {msg}")
    if len(found) > 8:
        lines.append(f"  … and {len(found) - 8} more")
    lines.append(format_grid(schedule, marks=marks))
    raise ScheduleError("\n".join(lines), marks)
