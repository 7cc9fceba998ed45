"""Layouts as data: a :class:`Plan` is a partition of the blocks into contiguous stages, each
run by a number of data-parallel replicas that split the batch (Pipe-BD's automatic hybrid
distribution, §III-C). ``tr``/``tr-dpu`` are plans with one replica per stage; ``dp`` for one
block is a single stage of N replicas. A plan prints as a one-line string and parses back:

    0-1x2,2-5x1          blocks 0-1 on 2 replicas (even split), blocks 2-5 on 1
    0-1x2@3:1,2-5x2      blocks 0-1 on 2 replicas splitting the batch 3:1, blocks 2-5 on 2

Replicas are assigned to ranks in stage order: stage 0 gets ranks 0..r0-1, stage 1 the next
r1 ranks, and so on. Row splits are proportional to the weights (largest remainder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import ConfigError

__all__ = ["Stage", "Plan", "parse_plan", "split_rows", "row_ranges", "row_overlaps"]

_STAGE_RE = re.compile(r"^(\d+)(?:-(\d+))?x(\d+)(?:@(\d+(?::\d+)*))?$")


@dataclass(frozen=True)
class Stage:
    first: int  # first block (inclusive)
    last: int  # last block (inclusive)
    replicas: int
    weights: tuple[int, ...] | None = None  # batch split ratio among replicas; None = even

    @property
    def blocks(self) -> range:
        return range(self.first, self.last + 1)

    def rows(self, batch_size: int) -> tuple[int, ...]:
        """Rows of the batch each replica trains, in replica order."""
        return split_rows(batch_size, self.weights or (1,) * self.replicas)

    def __str__(self) -> str:
        span = f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"
        w = "" if self.weights is None else "@" + ":".join(map(str, self.weights))
        return f"{span}x{self.replicas}{w}"


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]

    @property
    def devices(self) -> int:
        return sum(s.replicas for s in self.stages)

    @property
    def num_blocks(self) -> int:
        return self.stages[-1].last + 1

    def ranks_of(self, stage_index: int) -> range:
        start = sum(s.replicas for s in self.stages[:stage_index])
        return range(start, start + self.stages[stage_index].replicas)

    def stage_of_rank(self, rank: int) -> tuple[int, int]:
        """(stage index, replica index within the stage) of ``rank``."""
        for i, _s in enumerate(self.stages):
            r = self.ranks_of(i)
            if rank in r:
                return i, rank - r.start
        raise ValueError(f"rank {rank} is outside a plan for {self.devices} devices")

    def stage_of_block(self, block: int) -> int:
        for i, s in enumerate(self.stages):
            if block in s.blocks:
                return i
        raise ValueError(f"block {block} is outside the plan {self}")

    def validate(self, *, num_blocks: int, devices: int, batch_size: int) -> None:
        """Raise :class:`ConfigError` unless the plan covers blocks 0..n-1 in order on ``devices``."""
        expect = 0
        for s in self.stages:
            if s.first != expect:
                what = "misses" if s.first > expect else "repeats or reorders"
                raise ConfigError(f"plan {self} {what} blocks: a stage starts at block {s.first}, expected {expect}; "
                                  f"stages must cover blocks 0..{num_blocks - 1} in order, each once")
            if s.last < s.first:
                raise ConfigError(f"plan {self}: stage {s} ends before it starts")
            expect = s.last + 1
        if expect != num_blocks:
            raise ConfigError(f"plan {self} covers blocks 0..{expect - 1} but the workload has {num_blocks} "
                              f"blocks (0..{num_blocks - 1})")
        if self.devices != devices:
            raise ConfigError(f"plan {self} uses {self.devices} replicas in total but --devices is {devices}; "
                              "the replicas of all stages must sum to the devices")
        for s in self.stages:
            if s.replicas > batch_size:
                raise ConfigError(f"plan {self}: stage {s} has {s.replicas} replicas but the batch has only "
                                  f"{batch_size} samples; use a larger --batch-size or fewer replicas")
            if min(s.rows(batch_size)) < 1:
                raise ConfigError(f"plan {self}: stage {s} gives a replica no rows of a {batch_size}-sample batch")

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.stages)


def split_rows(total: int, weights: tuple[int, ...]) -> tuple[int, ...]:
    """Split ``total`` rows proportionally to ``weights`` (largest remainder, earlier first on ties)."""
    wsum = sum(weights)
    exact = [total * w / wsum for w in weights]
    rows = [int(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - rows[i]), i))
    for i in order[: total - sum(rows)]:
        rows[i] += 1
    return tuple(rows)


def parse_plan(text: str) -> Plan:
    """Parse ``"0-1x2,2-5x1"``; raise :class:`ConfigError` with the expected syntax on error."""
    stages = []
    for part in text.replace(" ", "").split(","):
        m = _STAGE_RE.match(part)
        if not m:
            raise ConfigError(f"cannot parse plan stage {part!r} in {text!r}; expected FIRST-LASTxREPLICAS"
                              "[@W1:W2...] separated by commas, e.g. 0-1x2,2-5x1 or 0-1x2@3:1,2-5x2")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        replicas = int(m.group(3))
        if replicas < 1:
            raise ConfigError(f"plan stage {part!r} must have at least 1 replica")
        weights = tuple(int(w) for w in m.group(4).split(":")) if m.group(4) else None
        if weights is not None and (len(weights) != replicas or min(weights) < 1):
            raise ConfigError(f"plan stage {part!r}: give one positive weight per replica ({replicas})")
        stages.append(Stage(first, last, replicas, weights))
    return Plan(tuple(stages))


def row_ranges(rows) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each replica, given the rows each replica holds (contiguous, in order)."""
    out, lo = [], 0
    for n in rows:
        out.append((lo, lo + n))
        lo += n
    return out


def row_overlaps(send_rows, recv_rows) -> list[tuple[int, int, int, int]]:
    """Every (sender replica, receiver replica, lo, hi) whose row ranges of the batch overlap.

    Stage ``s`` splits the batch among its replicas as ``send_rows``, stage ``s+1`` as
    ``recv_rows``; rows ``[lo, hi)`` travel from that sender to that receiver. The pieces
    partition the batch exactly once, whatever the two widths (1→2, 2→1, 3→2, 2:1→1 …).
    """
    if sum(send_rows) != sum(recv_rows):
        raise ValueError(f"row splits {tuple(send_rows)} and {tuple(recv_rows)} cover different batch sizes")
    out = []
    for i, (slo, shi) in enumerate(row_ranges(send_rows)):
        for j, (rlo, rhi) in enumerate(row_ranges(recv_rows)):
            lo, hi = max(slo, rlo), min(shi, rhi)
            if lo < hi:
                out.append((i, j, lo, hi))
    return out
