"""The schedule IR: an :class:`Action` is one thing one rank does; a :class:`Schedule` is one
ordered action list per rank for the steps of a run.

Modelled on ``torch.distributed.pipelining``'s per-rank ``_Action`` lists: the strategy is data,
printed as a grid (:mod:`.grid`), stored as CSV/JSON (:mod:`.io`), checked before any process
starts (:mod:`.validate`), executed by one interpreter (:mod:`pipebd.runtime.interpreter`) and
replayed by one cost model (:mod:`pipebd.costmodel.replay`).

Data an action reads or writes lives in *registers* ``(step, boundary)``: boundary ``k`` is the
teacher activation entering block ``k`` (0: the input images; ``n``: the teacher's logits), for
a contiguous range of the batch's rows ``[lo, hi)``.

=========  ===================================================================================
kind       meaning
=========  ===================================================================================
LOAD       load rows ``rows`` of batch ``step`` into register ``(step, 0)``
TEACHER    run teacher blocks ``blocks`` (contiguous) on ``(step, blocks[0])``, writing
           ``(step, b + 1)`` for every ``b`` in ``blocks``
SEND       non-blocking send of rows ``rows`` of ``(step, boundary)`` to rank ``peer``; at most
           ``inflight`` steps of sends are outstanding per rank (the oldest is waited for)
RECV       receive rows ``rows`` of ``(step, boundary)`` from ``peer``; receives are posted up to
           ``inflight`` steps ahead, so the transfer overlaps earlier compute
STUDENT    forward + backward of student ``blocks[0]`` on rows ``rows`` of ``(step, b)`` against
           ``(step, b + 1)``, loss weighted by ``(hi - lo) / batch``; gradients accumulate
ALLREDUCE  sum the gradients of ``blocks`` over the ranks ``group``
UPDATE     the optimizer step of student ``blocks[0]`` (the end of its training step)
BARRIER    every rank of ``group`` waits for all of them
PUT        write rows ``rows`` of register ``(step, boundary)`` to the activation store, at the
           dataset rows of batch ``step``'s samples (the ``cache`` strategy; ``note``: ``fill`` and
           the store's medium, ``memory`` or ``disk``)
GET        read rows ``rows`` of boundary ``boundary`` of batch ``step``'s samples from the store
           into register ``(step, boundary)`` (the next GET is prefetched while this rank computes)
DRAIN      wait until every send posted so far has completed
OPEN       open a measurement window (``note``: :func:`window_note`: ``pipelined`` when its steps
           overlap across ranks, ``scale=F`` when it counts ``F`` of its time per epoch)
CLOSE      close the measurement window
=========  ===================================================================================

Actions of the ``cache`` strategy's teacher pass carry ``fill`` in their note: a rank skips them
for a batch the store already holds (an interrupted teacher pass resumes; a complete store is
reused).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

__all__ = ["Action", "Schedule", "KINDS", "MARKERS", "LOAD", "TEACHER", "SEND", "RECV", "STUDENT", "ALLREDUCE",
           "UPDATE", "BARRIER", "DRAIN", "OPEN", "CLOSE", "PUT", "GET", "COLLECTIVES", "window_note",
           "parse_window_note", "is_fill"]

LOAD, TEACHER, SEND, RECV, STUDENT = "LOAD", "TEACHER", "SEND", "RECV", "STUDENT"
ALLREDUCE, UPDATE, BARRIER, DRAIN, OPEN, CLOSE = "ALLREDUCE", "UPDATE", "BARRIER", "DRAIN", "OPEN", "CLOSE"
PUT, GET = "PUT", "GET"
KINDS = (LOAD, TEACHER, SEND, RECV, STUDENT, ALLREDUCE, UPDATE, BARRIER, DRAIN, OPEN, CLOSE, PUT, GET)
#: kinds that belong to no step: they frame the steps (windows, draining)
MARKERS = (DRAIN, OPEN, CLOSE)
COLLECTIVES = (ALLREDUCE, BARRIER)


def window_note(*, pipelined: bool = False, scale: float = 1.0) -> str:
    """The note of an OPEN: ``pipelined`` (steps overlap across ranks: one fill and drain per epoch)
    and ``scale=F`` (the window's time counts ``F`` per epoch: the ``cache`` teacher pass, paid once
    over ``--epochs E``, has ``F = 1/E``)."""
    parts = (["pipelined"] if pipelined else []) + ([f"scale={scale:.12g}"] if scale != 1.0 else [])
    return " ".join(parts)


def parse_window_note(note: str) -> tuple[bool, float]:
    """``(pipelined, scale)`` of an OPEN's note (:func:`window_note`)."""
    pipelined, scale = False, 1.0
    for tok in note.split():
        if tok == "pipelined":
            pipelined = True
        elif tok.startswith("scale="):
            scale = float(tok[len("scale="):])
    return pipelined, scale


def is_fill(a: "Action") -> bool:
    """Whether ``a`` belongs to the ``cache`` teacher pass (skipped for batches already stored)."""
    return "fill" in a.note.split()


@dataclass(frozen=True)
class Action:
    """One action of one rank; the fields a kind does not use stay at their defaults."""

    kind: str
    step: int = -1
    blocks: tuple[int, ...] = ()
    rows: tuple[int, int] | None = None  # [lo, hi) of the global batch
    boundary: int | None = None  # SEND / RECV / PUT / GET: the activation entering this block
    peer: int | None = None  # SEND: destination, RECV: source
    group: tuple[int, ...] = ()  # ALLREDUCE / BARRIER: the ranks taking part (sorted)
    note: str = ""

    @property
    def block(self) -> int:
        return self.blocks[0] if self.blocks else -1

    @property
    def nrows(self) -> int:
        return 0 if self.rows is None else self.rows[1] - self.rows[0]

    def label(self) -> str:
        """A short cell for the grid: ``3:T1`` is step 3, teacher block 1."""
        k, r = self.kind, self.rows
        rows = f"[{r[0]}:{r[1]}]" if r is not None else ""
        blocks = "-".join(map(str, (self.blocks[0], self.blocks[-1]))) if len(self.blocks) > 1 else \
            (str(self.blocks[0]) if self.blocks else "")
        body = {
            LOAD: f"L{rows}", TEACHER: f"T{blocks}", STUDENT: f"S{blocks}{rows}", UPDATE: f"U{blocks}",
            SEND: f">{self.peer}:a{self.boundary}{rows}", RECV: f"<{self.peer}:a{self.boundary}{rows}",
            PUT: f"P{self.boundary}{rows}", GET: f"G{self.boundary}{rows}",
            ALLREDUCE: f"AR{blocks}{{{','.join(map(str, self.group))}}}",
            BARRIER: f"B{{{','.join(map(str, self.group))}}}", DRAIN: "DRAIN",
            OPEN: "OPEN" + ("~" if parse_window_note(self.note)[0] else ""), CLOSE: "CLOSE",
        }.get(k, k)
        return f"{self.step}:{body}" if self.step >= 0 else body


@dataclass
class Schedule:
    """One ordered action list per rank (``ranks[r]``) for ``steps`` steps of a ``batch_size`` batch."""

    strategy: str
    num_blocks: int
    batch_size: int
    steps: int
    ranks: list[list[Action]]
    inflight: int = 2
    warmup: int = 0
    layout: str = ""
    meta: dict = field(default_factory=dict)
    #: every block's teacher and student compute mode (:class:`pipebd.modes.BlockModes` text;
    #: "": fp32 contiguous): the interpreter runs it, relayed activations travel in its dtypes
    modes: str = ""

    @property
    def devices(self) -> int:
        return len(self.ranks)

    def __iter__(self) -> Iterator[tuple[int, int, Action]]:
        """Every (rank, position, action)."""
        for r, acts in enumerate(self.ranks):
            for i, a in enumerate(acts):
                yield r, i, a

    def __len__(self) -> int:
        return sum(len(a) for a in self.ranks)

    def count(self, kind: str) -> int:
        return sum(1 for _r, _i, a in self if a.kind == kind)

    def trainers_of(self, rank: int) -> list[int]:
        """Student blocks ``rank`` trains, in first-appearance order."""
        return list(dict.fromkeys(a.block for a in self.ranks[rank] if a.kind == STUDENT))

    def teachers_of(self, rank: int) -> list[int]:
        return sorted({b for a in self.ranks[rank] if a.kind == TEACHER for b in a.blocks})

    def reporter(self, block: int) -> int | None:
        """The rank that reports ``block``'s final weights: the lowest rank training it."""
        return next((r for r in range(self.devices) if any(a.kind == STUDENT and a.block == block
                                                          for a in self.ranks[r])), None)

    def student_rows(self, block: int, step: int | None = None) -> tuple[int, ...]:
        """Row counts of ``block``'s student actions in one step (the first it trains unless
        given), ordered by position in the batch: the ghost shards that reproduce its numerics."""
        acts = [a for _r, _i, a in self if a.kind == STUDENT and a.block == block]
        if not acts:
            return ()
        step = acts[0].step if step is None else step
        return tuple(a.nrows for a in sorted((a for a in acts if a.step == step), key=lambda a: a.rows))

    def block_modes(self):
        """:class:`pipebd.modes.BlockModes` of :attr:`modes` (fp32 contiguous when empty)."""
        from ..modes import BlockModes

        return BlockModes.from_text(self.modes) if self.modes else BlockModes.uniform(self.num_blocks)

    def with_ranks(self, ranks: Sequence[Sequence[Action]]) -> "Schedule":
        return replace(self, ranks=[list(r) for r in ranks])
