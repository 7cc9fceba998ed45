"""Abstract execution of a :class:`~.actions.Schedule` over all ranks: a discrete-event run of the
action lists with the real dependencies, each action lasting what ``duration`` says.

The same semantics as the interpreter's transport (:mod:`pipebd.runtime.interpreter`):

- compute actions (LOAD, TEACHER, STUDENT, UPDATE, PUT, GET) start when the rank is free;
- the ``k``-th SEND from ``a`` to ``b`` is matched by the ``k``-th RECV on ``b`` from ``a``; a RECV
  ends ``duration`` after both the rank is free and the send was issued (the receiver pays the
  transfer); a send *completes* when its receive has ended;
- a rank's sends are grouped by step; before a send of a new step, while ``inflight`` steps of
  sends are outstanding, the rank waits for the oldest to complete (what ``Outbox`` does);
- DRAIN waits until every outstanding send completed;
- the ``k``-th collective (ALLREDUCE, BARRIER) of a group on each member is one instance: it
  starts when the last member arrives and ends ``duration`` later on all of them.

With zero durations this is the validator's deadlock check; priced from a cost table it is the
cost model (:mod:`pipebd.costmodel.replay`). When no rank can move, :class:`Deadlock` names,
for every rank still running, the action it waits at and what it waits for.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable

from .actions import CLOSE, COLLECTIVES, DRAIN, OPEN, RECV, SEND, Action, Schedule, parse_window_note

__all__ = ["Timeline", "Deadlock", "execute", "match_p2p", "match_collectives"]


class Deadlock(RuntimeError):
    """No rank can make progress; ``blocked`` maps rank -> (position, why)."""

    def __init__(self, blocked: dict[int, tuple[int, str]]):
        self.blocked = blocked
        super().__init__("; ".join(f"rank {r} at position {i} {why}" for r, (i, why) in sorted(blocked.items())))


@dataclass
class Timeline:
    """Start and end of every action (``spans[rank][position]``) and every rank's windows."""

    spans: list[list[tuple[float, float]]]
    windows: list[list[tuple[float, float, bool, float]]]  # per rank: (open, close, pipelined, scale)

    @property
    def makespan(self) -> float:
        return max((e for rank in self.spans for _s, e in rank), default=0.0)

    def measured_s(self) -> float:
        """The run's measured time as the recorder reports it: per window, the slowest rank's,
        times the window's scale (what it counts per epoch: :func:`~.actions.window_note`)."""
        k = max((len(w) for w in self.windows), default=0)
        return sum(max((w[i][1] - w[i][0] for w in self.windows if len(w) > i), default=0.0)
                   * max((w[i][3] for w in self.windows if len(w) > i), default=1.0) for i in range(k))


def match_p2p(schedule: Schedule) -> tuple[dict, list[tuple[int, int, str]]]:
    """``{(rank, pos): (peer, peer_pos)}`` for every SEND and RECV, and the unmatched ones."""
    sends: dict[tuple[int, int], list[int]] = defaultdict(list)
    recvs: dict[tuple[int, int], list[int]] = defaultdict(list)
    for r, i, a in schedule:
        if a.kind == SEND:
            sends[(r, a.peer)].append(i)
        elif a.kind == RECV:
            recvs[(a.peer, r)].append(i)
    match, unmatched = {}, []
    for key in set(sends) | set(recvs):
        src, dst = key
        s, v = sends.get(key, []), recvs.get(key, [])
        for k in range(max(len(s), len(v))):
            if k < len(s) and k < len(v):
                match[(src, s[k])] = (dst, v[k])
                match[(dst, v[k])] = (src, s[k])
            elif k < len(s):
                unmatched.append((src, s[k], f"SEND to rank {dst} has no matching RECV on rank {dst}"))
            else:
                unmatched.append((dst, v[k], f"RECV from rank {src} has no matching SEND on rank {src}"))
    return match, unmatched


def match_collectives(schedule: Schedule) -> dict[tuple[int, int], tuple[tuple[int, int], ...]]:
    """``{(rank, pos): ((member, member_pos), ...)}``: the instance each collective belongs to
    (members that lack the ``k``-th instance are left out; the validator reports them)."""
    seq: dict[tuple, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r, i, a in schedule:
        if a.kind in COLLECTIVES:
            seq[a.group][r].append(i)
    out = {}
    for group, per_rank in seq.items():
        k_max = max(len(v) for v in per_rank.values())
        for k in range(k_max):
            inst = tuple((m, per_rank[m][k]) for m in group if k < len(per_rank.get(m, [])))
            for m, pos in inst:
                out[(m, pos)] = inst
    return out


def execute(schedule: Schedule, duration: Callable[[int, Action], float] | None = None, *,
            inflight: int | None = None) -> Timeline:
    """Run ``schedule`` abstractly; return its :class:`Timeline` or raise :class:`Deadlock`."""
    duration = duration or (lambda _r, _a: 0.0)
    depth = inflight or schedule.inflight
    p2p, _unmatched = match_p2p(schedule)
    coll = match_collectives(schedule)
    n = schedule.devices
    acts = schedule.ranks
    pc = [0] * n
    clock = [0.0] * n
    spans: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    windows: list[list[tuple[float, float, bool, float]]] = [[] for _ in range(n)]
    opened: list[tuple[float, bool, float] | None] = [None] * n
    outstanding: list[deque] = [deque() for _ in range(n)]  # [step, [send positions]] per rank

    def ended(r: int, i: int) -> float | None:
        return spans[r][i][1] if i < len(spans[r]) else None

    def group_done(r: int, group) -> float | None:
        t = 0.0
        for i in group[1]:
            peer, pos = p2p.get((r, i), (None, None))
            e = ended(peer, pos) if peer is not None else None
            if e is None:
                return None
            t = max(t, e)
        return t

    def finish(r: int, start: float, a: Action) -> None:
        end = start + max(0.0, float(duration(r, a)))
        spans[r].append((start, end))
        clock[r] = end
        pc[r] += 1

    blocked: dict[int, tuple[int, str]] = {}

    def try_step(r: int) -> bool:
        i = pc[r]
        a = acts[r][i]
        start = clock[r]
        if a.kind == SEND:
            q = outstanding[r]
            if not q or q[-1][0] != a.step:
                excess = len(q) - depth + 1
                for g in list(q)[:max(0, excess)]:
                    t = group_done(r, g)
                    if t is None:
                        pending = next(p2p.get((r, j), (None,))[0] for j in g[1])
                        blocked[r] = (i, f"({a.label()}) waits for rank {pending} to receive step {g[0]} "
                                         f"(inflight {depth})")
                        return False
                    start = max(start, t)
                for _ in range(max(0, excess)):
                    q.popleft()
                q.append([a.step, [i]])
            else:
                q[-1][1].append(i)
            finish(r, start, a)
            return True
        if a.kind == RECV:
            peer, pos = p2p.get((r, i), (a.peer, None))
            e = ended(peer, pos) if pos is not None else None
            if e is None:
                blocked[r] = (i, f"({a.label()}) waits for rank {peer}'s matching SEND")
                return False
            finish(r, max(start, e), a)
            return True
        if a.kind == DRAIN:
            t = start
            for g in outstanding[r]:
                d = group_done(r, g)
                if d is None:
                    blocked[r] = (i, f"(DRAIN) waits for step {g[0]}'s sends to be received")
                    return False
                t = max(t, d)
            outstanding[r].clear()
            finish(r, t, a)
            return True
        if a.kind in COLLECTIVES:
            inst = coll.get((r, i), ())
            missing = [m for m in a.group if m not in {x for x, _ in inst}]
            waiting = [m for m, pos in inst if pc[m] != pos]
            if missing or waiting:
                blocked[r] = (i, f"({a.label()}) waits for rank(s) {', '.join(map(str, missing + waiting))}")
                return False
            t0 = max(clock[m] for m, _ in inst)
            for m, _pos in inst:
                finish(m, t0, acts[m][pc[m]])
            return True
        if a.kind == OPEN:
            opened[r] = (start, *parse_window_note(a.note))
        elif a.kind == CLOSE and opened[r] is not None:
            windows[r].append((opened[r][0], start, opened[r][1], opened[r][2]))
            opened[r] = None
        finish(r, start, a)
        return True

    while True:
        moved = False
        blocked.clear()
        for r in range(n):
            while pc[r] < len(acts[r]) and try_step(r):
                moved = True
        if all(pc[r] == len(acts[r]) for r in range(n)):
            break
        if not moved:
            raise Deadlock({r: blocked.get(r, (pc[r], "is blocked")) for r in range(n) if pc[r] < len(acts[r])})
    return Timeline(spans, windows)
