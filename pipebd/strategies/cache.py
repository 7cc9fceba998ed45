"""The teacher-activation cache (``cache``): run the teacher once, train every block from the store.

LoLCATs (Zhang et al., ICLR 2025) distils block by block by running the teacher once, saving
every block's input and output hidden states, and training each block alone from them — no
relay, no pipeline fill, no teacher beside the students. Pipe-BD relays the teacher online
every epoch. ``cache`` is the first as a schedule, so it runs, is simulated and is planned like
the others (:mod:`pipebd.cachestore` holds the store):

- **phase A, teacher pass** — the ranks share the epoch's batches round-robin; for each, LOAD it,
  run TEACHER over every block and PUT every boundary ``1..n`` into the store (actions marked
  ``fill``: a batch already complete in the store is skipped, so an interrupted pass resumes and
  a complete store is reused by a later run). One batch per rank runs untimed first (warm-up);
  the timed batches, a multiple of N, are one window of scale ``1/E`` (``--epochs E``): an epoch
  pays ``1/E`` of the pass. Then a barrier: the store is complete before anyone reads it;
- **phase B, students** — each rank trains its blocks: the ranks in equal groups, the blocks in as
  many LPT bins (on the cost of a step from the store: the student, its reads, its all-reduce),
  each bin trained by every rank of its group on a row shard (replicated, as ``ahd`` replicates
  stages) — the grouping with the least predicted step, from whole blocks one rank each to every
  block on every rank; or ``--ls-map``, where a block named by several ranks is replicated on
  them. Per step, GET block ``b``'s input rows (boundary ``b``; block 0 LOADs them) and target
  rows (boundary ``b + 1``), STUDENT, ALLREDUCE among its replicas, UPDATE, the next step's reads
  prefetched. Warm-up steps first, then a barrier and the window;
- **epochs** — with the store reused, later epochs are phase B only (the store is indexed by
  dataset sample, so a reshuffled epoch reads its own samples). With ``--augment`` a stored
  target goes stale the next epoch: ``--cache-refresh auto`` rebuilds the store every epoch
  (said in the run log; each epoch is then phase A + B, both windows of scale ``1/epochs``) and
  ``--cache-refresh never`` is refused before spawning.

The math is the sequential reference's: each block trains on the whole batch on one rank (or on
its replicas' row shards, gradients weighted by rows and all-reduced: the reference's ghost shards),
against the same teacher activations (stored in their own dtype with ``--cache-dtype auto``;
``bf16`` / ``fp16`` halve an fp32 store and are lossy — ``verify`` reports the error).
Refused before spawning, with what to change: a store larger than ``--cache-memory`` with no
``--cache-dir`` that has room; a run crossing an epoch whose batches leave samples out
(``drop_last``) while the store is reused; fewer batches than ranks.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from typing import Sequence

from ..config import ConfigError, RunConfig
from ..distill import shard_sizes
from ..plan import row_ranges
from ..cachestore import DTYPES, SHM, StoreSpec, store_key
from ..schedule import Schedule, ScheduleBuilder, ScheduleSpec
from .base import Strategy, register_strategy

__all__ = ["ActivationCache", "CacheLayout", "store_spec_for", "cache_block_cost"]

log = logging.getLogger("pipebd.cache")


@dataclass(frozen=True)
class CacheLayout:
    """Phase B's blocks per rank and the store they read."""

    assignment: tuple[tuple[int, ...], ...]
    store: StoreSpec | None = None  # None: a prediction (host memory, reused)
    epoch_steps: int | None = None  # batches per epoch (None: the run's steps lie in one epoch)
    refresh: bool = False  # rebuild the store every epoch (--augment)
    medium: str = "memory"
    half: bool = False  # a 2-byte store of fp32 activations (priced at half the bytes)

    @property
    def devices(self) -> int:
        return len(self.assignment)

    def __str__(self) -> str:
        return ",".join(":".join(map(str, a)) for a in self.assignment)


def cache_block_cost(costs, block: int, batch_size: int, medium: str = "memory", replicas: int = 1) -> float:
    """One phase-B step of ``block`` on one of its ``replicas`` ranks (each a 1/replicas row shard):
    read its input (block 0: load the rows) and target, train it, and all-reduce its gradients."""
    rows = -(-batch_size // replicas)
    read = costs.activation_bytes[block + 1] + (costs.activation_bytes[block] if block else 0.0)
    return (costs.student_time(block, rows) + costs.store_time("read", medium, read * rows)
            + (costs.data_time(rows) if block == 0 else 0.0)
            + (costs.allreduce_time(block, replicas) if replicas > 1 else 0.0))


def replica_groups(assignment: Sequence[Sequence[int]]) -> dict[int, tuple[int, ...]]:
    """Block -> the ranks that train it (in rank order): more than one rank replicates the block,
    each on its own contiguous row shard (:func:`pipebd.distill.shard_sizes`), gradients all-reduced."""
    groups: dict[int, list[int]] = {}
    for r, blocks in enumerate(assignment):
        for blk in blocks:
            groups.setdefault(blk, []).append(r)
    return {blk: tuple(rs) for blk, rs in sorted(groups.items())}


def _assignment(costs, devices: int, batch_size: int, medium: str) -> tuple[tuple[int, ...], ...]:
    """Phase B's blocks per rank: the ranks split into ``g`` equal groups (every ``g`` dividing
    ``devices``, at most one group per block), the blocks into ``g`` bins by LPT (Graham's
    longest-processing-time-first), each bin trained by every rank of its group on a row shard —
    ``g = devices`` gives whole blocks one rank each, ``g = 1`` every block replicated on every
    rank — and the choice with the least predicted step (the slowest group's)."""
    from baselines.ls import lpt_assign

    n = costs.num_blocks
    best = None
    for g in range(1, min(devices, n) + 1):
        if devices % g:
            continue
        r = devices // g
        cost = [cache_block_cost(costs, b, batch_size, medium, r) for b in range(n)]
        bins = lpt_assign(cost, g)
        step = max(sum(cost[b] for b in blocks) for blocks in bins)
        if best is None or step < best[0] - 1e-12:
            best = (step, tuple(tuple(bins[k // r]) for k in range(devices)))
    return best[1]


def _dataset(cfg: RunConfig):
    """(dataset samples, batches per epoch) of ``cfg``'s data, without building the workload's weights."""
    import torch

    from ..data import build_dataset
    from ..options import data_config, workload_sizes
    from ..zoo import build_workload

    with torch.device("meta"):
        wl = build_workload(cfg.workload, workload_sizes(cfg), probe=False)
    n = len(build_dataset(data_config(cfg, wl)))
    return n, n // cfg.batch_size


def _teacher_weights_id(path: str | None) -> str:
    if not path or not os.path.exists(path):
        return str(path)
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}"


def store_spec_for(cfg: RunConfig, num_blocks: int, *, refresh: bool, dataset: tuple[int, int] | None = None
                   ) -> StoreSpec:
    """The store a run of ``cfg`` needs: its key, shapes, dtypes and where it fits (else ConfigError).
    ``dataset``: :func:`_dataset` of ``cfg`` when the caller has it already."""
    from ..options import workload_sizes
    from ..planner import modes_for
    from ..zoo.registry import meta_shapes

    rows, epoch_steps = dataset or _dataset(cfg)
    shapes = tuple(tuple(s) for s in meta_shapes(cfg.workload, workload_sizes(cfg))[1:num_blocks + 1])
    modes = modes_for(cfg)
    if cfg.cache_dtype == "auto":  # each activation as its teacher block produces it: exact
        dtypes = tuple(next(k for k, v in DTYPES.items() if v == modes.boundary(k1).dtype)
                       for k1 in range(1, num_blocks + 1))
    else:
        dtypes = (cfg.cache_dtype,) * num_blocks
    key = store_key(workload=cfg.workload, sizes=repr(workload_sizes(cfg)), seed=cfg.seed, data=cfg.data,
                    root=cfg.data_root, size=cfg.data_size, augment=cfg.augment, batch=cfg.batch_size,
                    teacher=_teacher_weights_id(cfg.teacher_weights), modes=modes.to_text(), dtypes=dtypes)
    probe = StoreSpec(path="", medium="memory", rows=rows, shapes=shapes, dtypes=dtypes, key=key, reuse=not refresh)
    filled = min(rows, (cfg.total_steps if refresh else min(cfg.total_steps, epoch_steps)) * cfg.batch_size)
    need = filled * probe.sample_bytes()
    shm_free = shutil.disk_usage(SHM).free if os.path.isdir(SHM) else 0
    memory = cfg.cache_memory if cfg.cache_memory is not None else shm_free / 2
    if need <= memory and need <= shm_free:
        return replace(probe, path=os.path.join(SHM, f"pipebd-cache-{key}"), medium="memory")
    where = "" if cfg.cache_dir is None else f"; --cache-dir {cfg.cache_dir} has {_gib(_free(cfg.cache_dir))} free"
    if cfg.cache_dir is not None and need <= _free(cfg.cache_dir):
        return replace(probe, path=os.path.join(os.path.abspath(cfg.cache_dir), f"pipebd-cache-{key}"), medium="disk")
    raise ConfigError(f"cache: the teacher-activation store needs {_gib(need)} ({filled} samples x "
                      f"{probe.sample_bytes()} bytes over {num_blocks} boundaries) but host memory allows "
                      f"{_gib(min(memory, shm_free))} (--cache-memory, and {_gib(shm_free)} free in {SHM}){where}. "
                      "Raise --cache-memory, give --cache-dir on a disk with that much free space, use "
                      "--cache-dtype bf16 to halve it, or train fewer steps")


def _free(path: str) -> float:
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return float(shutil.disk_usage(probe or ".").free)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


@register_strategy("cache")
class ActivationCache(Strategy):
    description = "teacher-activation cache: the teacher runs once into a store, every block trains from it"

    @classmethod
    def validate(cls, cfg: RunConfig, num_blocks: int) -> None:
        if cfg.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {cfg.epochs}")
        if cfg.augment and cfg.cache_refresh == "never":
            raise ConfigError("cache: --cache-refresh never reuses the stored teacher activations, but --augment draws "
                              "new augmentations every epoch, so the stored targets would not match the inputs; drop "
                              "--augment, or let the store be rebuilt every epoch (--cache-refresh auto or epoch)")
        if cfg.total_steps < cfg.devices:
            raise ConfigError(f"cache: the teacher pass shares the run's batches over the ranks and times a multiple of "
                              f"--devices of them, so it needs at least --devices ({cfg.devices}) steps (warm-up "
                              f"included); got {cfg.total_steps}")
        super().validate(cfg, num_blocks)

    @classmethod
    def lossy_reason(cls, cfg: RunConfig) -> str | None:
        if cfg.cache_dtype not in ("bf16", "fp16"):
            return None
        from ..planner import modes_for

        modes = modes_for(cfg)
        wide = [k for k in range(1, len(modes.teacher) + 1) if modes.boundary(k).dtype.itemsize > 2]
        if not wide:
            return None  # the activations are bf16 already: storing them in 2 bytes loses nothing
        return (f"--cache-dtype {cfg.cache_dtype} rounds the fp32 teacher activations of {len(wide)} boundaries to "
                f"{cfg.cache_dtype} in the store (half the bytes); --cache-dtype auto keeps them exact")

    @classmethod
    def reference_shards(cls, cfg: RunConfig, num_blocks: int) -> tuple[tuple[int, ...], ...]:
        """Each block's row shards: the whole batch, or one shard per replica."""
        replicas = replica_groups(cls.layout(cfg, num_blocks).assignment)
        return tuple(tuple(shard_sizes(cfg.batch_size, len(replicas[blk]))) for blk in range(num_blocks))

    @classmethod
    def layout(cls, cfg: RunConfig, num_blocks: int) -> CacheLayout:
        refresh = cfg.cache_refresh == "epoch" or (cfg.cache_refresh == "auto" and cfg.augment)
        if refresh and cfg.augment and cfg.cache_refresh == "auto":
            log.info("cache: --augment draws new inputs every epoch, so the store is rebuilt every epoch")
        rows, epoch_steps = _dataset(cfg)
        store = store_spec_for(cfg, num_blocks, refresh=refresh, dataset=(rows, epoch_steps))
        if not refresh and cfg.total_steps > epoch_steps and rows > epoch_steps * cfg.batch_size:
            raise ConfigError(f"cache: the run's {cfg.total_steps} steps cross an epoch ({epoch_steps} batches of "
                              f"{cfg.batch_size}), and the first epoch's batches leave {rows - epoch_steps * cfg.batch_size} "
                              "of the dataset's samples out (drop_last), so a reused store would lack samples the next "
                              "epoch draws; use a --data-size that is a multiple of --batch-size, fewer steps, or "
                              "--cache-refresh epoch")
        if cfg.ls_map is not None:
            from baselines.ls import parse_ls_map

            assignment = tuple(tuple(a) for a in parse_ls_map(cfg.ls_map, num_blocks, cfg.devices, shared=True))
        else:
            from ..planner import cost_table_for

            assignment = _assignment(cost_table_for(cfg), cfg.devices, cfg.batch_size, store.medium)
        half = any(DTYPES[d].itemsize < 4 for d in store.dtypes)
        return CacheLayout(assignment, store, epoch_steps, refresh, store.medium, half)

    @classmethod
    def choose_layout(cls, costs, spec: ScheduleSpec, *, memory_limit_bytes: float | None = None) -> CacheLayout:
        return CacheLayout(_assignment(costs, spec.devices, spec.batch_size, "memory"))

    @classmethod
    def format_layout(cls, layout: CacheLayout) -> str:
        return f"{layout} store={layout.medium}"

    @classmethod
    def generate(cls, spec: ScheduleSpec, layout: CacheLayout) -> Schedule:
        N, B, n = spec.devices, spec.batch_size, spec.num_blocks
        if len(layout.assignment) != N:
            raise ConfigError(f"cache: the assignment {layout} names {len(layout.assignment)} ranks, not {N}")
        b = ScheduleBuilder(cls.name, spec, layout=cls.format_layout(layout))
        per_epoch = layout.epoch_steps or spec.steps
        groups = [list(range(e, min(e + per_epoch, spec.steps))) for e in range(0, spec.steps, per_epoch)]
        medium = layout.medium + (" half" if layout.half else "")
        whole = (0, B)

        def fill(r: int, c: int) -> None:
            b.load(r, c, whole, note="fill")
            b.teacher(r, c, range(n), whole, note="fill")
            for k in range(1, n + 1):
                b.put(r, c, k, whole, note=f"fill {medium}")

        def teacher_pass(chunks: list[int], *, warm: bool, scale: float) -> None:
            mine = [[c for j, c in enumerate(chunks) if j % N == r] for r in range(N)]
            timed = (len(chunks) - (N if warm and len(chunks) >= 2 * N else 0)) // N  # timed batches per rank
            for r in range(N):
                for c in mine[r][:len(mine[r]) - timed]:
                    fill(r, c)
                if timed:
                    b.barrier(r)
                    b.open(r, scale=scale)
                    for c in mine[r][len(mine[r]) - timed:]:
                        fill(r, c)
                    b.barrier(r)
                    b.close(r)
                b.barrier(r)  # the store holds these batches before any rank reads them

        replicas = replica_groups(layout.assignment)
        shard = {(blk, r): rows for blk, rs in replicas.items()
                 for r, rows in zip(rs, row_ranges(shard_sizes(B, len(rs))))}

        def train(r: int, steps) -> None:
            for k in steps:
                for blk in layout.assignment[r]:
                    rows = shard[(blk, r)]
                    if blk == 0:
                        b.load(r, k, rows)
                    else:
                        b.get(r, k, blk, rows, note=medium)
                    b.get(r, k, blk + 1, rows, note=medium)
                    b.student(r, k, blk, rows)
                    if len(replicas[blk]) > 1:
                        b.allreduce(r, k, [blk], replicas[blk])
                    b.update(r, k, blk)

        def students(steps: list[int], *, scale: float) -> None:
            for r in range(N):
                train(r, [k for k in steps if k < spec.warmup])
                b.barrier(r)
                b.open(r, scale=scale)
                train(r, [k for k in steps if k >= spec.warmup])
                b.barrier(r)
                b.close(r)

        if layout.refresh:  # every epoch: its own teacher pass, then its students
            for e, g in enumerate(groups):
                teacher_pass(g, warm=e == 0, scale=1 / len(groups))
                students(g, scale=1 / len(groups))
        else:
            teacher_pass(groups[0], warm=True, scale=1 / spec.epochs)
            students(list(range(spec.steps)), scale=1.0)
        s = b.build()
        if layout.store is not None:
            s.meta["store"] = layout.store
        return s
