"""Writing schedules: :class:`ScheduleSpec` (what a generator is given) and
:class:`ScheduleBuilder` (one method per action kind, so a generator reads like the algorithm).

The builder drops what cannot exist on one rank (a collective over a group of one) and orders
collective groups, so generators need no special cases for ``N = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .actions import (ALLREDUCE, BARRIER, CLOSE, DRAIN, GET, LOAD, OPEN, PUT, RECV, SEND, STUDENT, TEACHER, UPDATE, Action,
                      Schedule, window_note)

__all__ = ["ScheduleSpec", "ScheduleBuilder"]


@dataclass(frozen=True)
class ScheduleSpec:
    """What every schedule generator is given: the workload's shape and the run's steps.

    ``steps`` is the number of training steps per block (warm-up included); the measurement
    window opens at step ``warmup``. ``shards`` (sequential only) splits each block's batch into
    ghost shards, per block. ``epochs`` is how many epochs the run's figures are for (``--epochs``):
    every strategy's epoch costs the same each time except one that pays something once (the
    ``cache`` teacher pass, whose window counts ``1/epochs`` of its time per epoch).
    """

    num_blocks: int
    devices: int
    batch_size: int
    steps: int
    warmup: int = 0
    inflight: int = 2
    shards: tuple[tuple[int, ...], ...] | None = None
    epochs: int = 1

    def __post_init__(self) -> None:
        for name in ("num_blocks", "devices", "batch_size", "steps", "inflight", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScheduleSpec.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"ScheduleSpec.warmup must be in [0, steps), got {self.warmup} of {self.steps}")

    @property
    def world(self) -> tuple[int, ...]:
        return tuple(range(self.devices))


class ScheduleBuilder:
    """Appends actions to per-rank lists; :meth:`build` returns the :class:`Schedule`."""

    def __init__(self, strategy: str, spec: ScheduleSpec, *, layout: str = ""):
        self.strategy, self.spec, self.layout = strategy, spec, layout
        self.ranks: list[list[Action]] = [[] for _ in range(spec.devices)]

    def _add(self, rank: int, action: Action) -> None:
        self.ranks[rank].append(action)

    def load(self, rank: int, step: int, rows: tuple[int, int], *, note: str = "") -> None:
        self._add(rank, Action(LOAD, step, rows=tuple(rows), note=note))

    def teacher(self, rank: int, step: int, blocks: Iterable[int], rows: tuple[int, int], *, note: str = "") -> None:
        self._add(rank, Action(TEACHER, step, blocks=tuple(blocks), rows=tuple(rows), note=note))

    def send(self, rank: int, step: int, boundary: int, rows: tuple[int, int], peer: int) -> None:
        self._add(rank, Action(SEND, step, rows=tuple(rows), boundary=boundary, peer=peer))

    def recv(self, rank: int, step: int, boundary: int, rows: tuple[int, int], peer: int) -> None:
        self._add(rank, Action(RECV, step, rows=tuple(rows), boundary=boundary, peer=peer))

    def student(self, rank: int, step: int, block: int, rows: tuple[int, int]) -> None:
        self._add(rank, Action(STUDENT, step, blocks=(block,), rows=tuple(rows)))

    def update(self, rank: int, step: int, block: int) -> None:
        self._add(rank, Action(UPDATE, step, blocks=(block,)))

    def allreduce(self, rank: int, step: int, blocks: Iterable[int], group: Sequence[int]) -> None:
        group = tuple(sorted(group))
        if len(group) > 1:
            self._add(rank, Action(ALLREDUCE, step, blocks=tuple(blocks), group=group))

    def barrier(self, rank: int, group: Sequence[int] | None = None, step: int = -1) -> None:
        group = tuple(sorted(self.spec.world if group is None else group))
        if len(group) > 1:
            self._add(rank, Action(BARRIER, step, group=group))

    def drain(self, rank: int) -> None:
        self._add(rank, Action(DRAIN))

    def open(self, rank: int, *, pipelined: bool = False, scale: float = 1.0) -> None:
        self._add(rank, Action(OPEN, note=window_note(pipelined=pipelined, scale=scale)))

    def put(self, rank: int, step: int, boundary: int, rows: tuple[int, int], *, note: str = "") -> None:
        self._add(rank, Action(PUT, step, rows=tuple(rows), boundary=boundary, note=note))

    def get(self, rank: int, step: int, boundary: int, rows: tuple[int, int], *, note: str = "") -> None:
        self._add(rank, Action(GET, step, rows=tuple(rows), boundary=boundary, note=note))

    def close(self, rank: int) -> None:
        self._add(rank, Action(CLOSE))

    def start_window(self, ranks: Iterable[int] | None = None, *, pipelined: bool = False,
                     drain: bool = False) -> None:
        """Every rank (drains its sends and) meets the others at a barrier, then opens its window,
        so the ranks start measuring together."""
        for r in self.spec.world if ranks is None else ranks:
            if drain:
                self.drain(r)
            self.barrier(r)
            self.open(r, pipelined=pipelined)

    def build(self) -> Schedule:
        s = self.spec
        return Schedule(self.strategy, s.num_blocks, s.batch_size, s.steps, self.ranks, inflight=s.inflight,
                        warmup=s.warmup, layout=self.layout)
