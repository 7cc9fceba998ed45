"""The layer-wise baseline ``ls`` (DESIGN.md §2): task parallelism over whole blocks.

The second baseline of Pipe-BD (Jang et al. 2023, §II-B, "layer-wise scheduling"): each
device owns whole blocks and trains them one after another at the full batch size, running
the frozen teacher from the image up to each block it trains. There is no communication
during training (the blocks are independent given the teacher, DESIGN.md §1); what it pays
is load imbalance (a device finishes only when its slowest set of blocks does) and teacher
redundancy (the prefix T0..Ti is recomputed by every device, for every block it owns).

Blocks are assigned to ranks either explicitly (``--ls-map "0:1:2,3:4,5"``: ranks separated
by commas, the blocks of one rank by colons, trained in the order given) or by the
longest-processing-time-first rule of Graham ("Bounds on Multiprocessing Timing
Anomalies", 1969, :func:`lpt_assign`) on each block's cost as ls pays it — data loading + the
teacher prefix T0..Ti + the student — taken from the run's cost table (``--profile``, else FLOP
estimates; :func:`pipebd.planner.cost_table_for`): blocks in decreasing cost, each to the
least-loaded rank.

Every rank must own at least one block: an idle device would only dilute the per-rank
figures, so ``--devices`` above the number of blocks, or an empty rank in ``--ls-map``, is
a configuration error.

The schedule: each rank first trains the warm-up steps of all its blocks (unmeasured; per
step LOAD the whole batch, TEACHER T0..Ti, STUDENT i, UPDATE i), then meets the others at a
barrier, opens its window, trains the measured steps of all its blocks, and waits at a
closing barrier (recorded as ``sync``) inside the window. The run's
measured time, the slowest rank's window, is then the makespan of the measured part, and
the lightly loaded ranks show their imbalance as ``sync`` time.
"""

from __future__ import annotations

from typing import Sequence

from pipebd.config import ConfigError, RunConfig
from pipebd.schedule import Schedule, ScheduleBuilder, ScheduleSpec
from pipebd.strategies import Strategy, register_strategy

__all__ = ["LayerWise", "lpt_assign", "parse_ls_map", "format_ls_map", "ls_assignment", "ls_schedule"]

_MAP_SYNTAX = ('blocks of each rank separated by ":" and ranks separated by ",", e.g. --ls-map "0:1:2,3" '
               "for blocks 0-2 on rank 0 and block 3 on rank 1")


def parse_ls_map(text: str, num_blocks: int, devices: int, *, shared: bool = False) -> list[list[int]]:
    """Parse ``"0:1:2,3:4,5"`` into per-rank block lists; raise :class:`ConfigError` on any flaw.

    The map must name exactly ``devices`` ranks, each owning at least one block, and cover
    blocks ``0..num_blocks-1`` exactly once — or, with ``shared`` (``cache``'s replicated blocks),
    at least once, a block named by several ranks being trained by all of them.
    """
    allowed = f"blocks 0..{num_blocks - 1}"
    parts = text.replace(" ", "").split(",")
    assignment: list[list[int]] = []
    for rank, part in enumerate(parts):
        if part == "":
            raise ConfigError(f"--ls-map {text!r} gives rank {rank} no blocks; every rank must own at least one of "
                              f"{allowed} ({_MAP_SYNTAX}); lower --devices if there are too few blocks")
        blocks = []
        for tok in part.split(":"):
            if not tok.isdigit():
                raise ConfigError(f"cannot parse --ls-map {text!r}: {tok!r} (rank {rank}) is not a block number; "
                                  f"expected {_MAP_SYNTAX}")
            blocks.append(int(tok))
        assignment.append(blocks)
    if len(assignment) != devices:
        raise ConfigError(f"--ls-map {text!r} assigns blocks to {len(assignment)} rank(s) but --devices is "
                          f"{devices}; give one comma-separated group per device, or set --devices "
                          f"{len(assignment)}")
    seen: dict[int, int] = {}
    for rank, blocks in enumerate(assignment):
        for b in blocks:
            if b >= num_blocks:
                raise ConfigError(f"--ls-map {text!r} names block {b} (rank {rank}) but the workload has "
                                  f"{allowed}; use only those")
            if b in seen and (not shared or seen[b] == rank):
                once = "at most once per rank" if shared else "by exactly one rank"
                raise ConfigError(f"--ls-map {text!r} assigns block {b} twice (rank {seen[b]} and rank {rank}); "
                                  f"each of {allowed} must be trained {once}")
            seen[b] = rank
    missing = sorted(set(range(num_blocks)) - set(seen))
    if missing:
        raise ConfigError(f"--ls-map {text!r} leaves block(s) {', '.join(map(str, missing))} to no rank; "
                          f"each of {allowed} must be trained by exactly one rank")
    return assignment


def lpt_assign(costs: Sequence[float], n: int) -> list[list[int]]:
    """Graham's longest-processing-time-first assignment of jobs (by ``costs``) to ``n`` bins.

    Jobs are taken in decreasing cost (ties: lower index first) and each goes to the bin with
    the smallest load so far (ties: lower bin). Returns, per bin, its jobs in increasing order;
    a bin gets an empty list when ``n`` exceeds the number of jobs.
    """
    if n < 1:
        raise ValueError(f"need at least 1 rank, got {n}")
    loads = [0.0] * n
    bins: list[list[int]] = [[] for _ in range(n)]
    for b in sorted(range(len(costs)), key=lambda b: (-costs[b], b)):
        r = min(range(n), key=lambda r: (loads[r], r))
        bins[r].append(b)
        loads[r] += costs[b]
    return [sorted(blocks) for blocks in bins]


def format_ls_map(assignment: Sequence[Sequence[int]]) -> str:
    """The ``--ls-map`` string of an assignment: ``0:1:2,3:4,5``."""
    return ",".join(":".join(map(str, a)) for a in assignment)


def ls_block_cost(costs, block: int, batch_size: int) -> float:
    """One ls step of ``block`` alone: load the batch, run the teacher from the image, train it."""
    return (costs.data_time(batch_size) + sum(costs.teacher_time(i, batch_size) for i in range(block + 1))
            + costs.student_time(block, batch_size))


def lpt_layout(costs, devices: int, batch_size: int) -> list[list[int]]:
    """LPT on the blocks' ls costs over ``min(devices, blocks)`` ranks."""
    n = costs.num_blocks
    return lpt_assign([ls_block_cost(costs, i, batch_size) for i in range(n)], min(devices, n))


def ls_assignment(cfg: RunConfig, num_blocks: int) -> list[list[int]]:
    """The blocks of each rank: ``cfg.ls_map`` when given, else LPT on the estimated block costs."""
    if cfg.ls_map is not None:
        return parse_ls_map(cfg.ls_map, num_blocks, cfg.devices)
    if cfg.devices > num_blocks:
        raise ConfigError(f"strategy {cfg.strategy!r} gives every device whole blocks, but --devices {cfg.devices} "
                          f"exceeds the {num_blocks} blocks of {cfg.workload!r}, so some rank would have nothing to "
                          f"train; use --devices {num_blocks} or fewer")
    from pipebd.planner import cost_table_for

    return lpt_layout(cost_table_for(cfg), cfg.devices, cfg.batch_size)


def ls_schedule(spec: ScheduleSpec, assignment: Sequence[Sequence[int]], *, strategy: str) -> Schedule:
    """Each rank trains its blocks at the full batch, warm-up of all of them first; then a
    barrier, the window, the measured steps, and a closing barrier inside the window."""
    B = spec.batch_size
    b = ScheduleBuilder(strategy, spec, layout=format_ls_map(assignment))
    if len(assignment) != spec.devices or any(not a for a in assignment):
        raise ConfigError(f"strategy {strategy!r}: the assignment {format_ls_map(assignment)!r} must give each of the "
                          f"{spec.devices} ranks at least one block")

    def train(rank: int, steps) -> None:
        for i in assignment[rank]:
            for step in steps:
                b.load(rank, step, (0, B))
                b.teacher(rank, step, range(i + 1), (0, B))
                b.student(rank, step, i, (0, B))
                b.update(rank, step, i)

    for r in spec.world:
        train(r, range(spec.warmup))
        b.barrier(r)
        b.open(r)
        train(r, range(spec.warmup, spec.steps))
        b.barrier(r)
        b.close(r)
    return b.build()


@register_strategy("ls")
class LayerWise(Strategy):
    description = "layer-wise: each device trains whole blocks at full batch (balanced by cost), no communication"

    @classmethod
    def layout(cls, cfg: RunConfig, num_blocks: int) -> list[list[int]]:
        return ls_assignment(cfg, num_blocks)

    @classmethod
    def choose_layout(cls, costs, spec: ScheduleSpec, *, memory_limit_bytes: float | None = None):
        if spec.devices > costs.num_blocks:
            raise ConfigError(f"ls gives every device whole blocks; {spec.devices} devices exceed the "
                              f"{costs.num_blocks} blocks")
        return lpt_layout(costs, spec.devices, spec.batch_size)

    @classmethod
    def format_layout(cls, layout) -> str:
        return format_ls_map(layout)

    @classmethod
    def generate(cls, spec: ScheduleSpec, layout) -> Schedule:
        return ls_schedule(spec, layout, strategy=cls.name)
