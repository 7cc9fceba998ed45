"""``python -m pipebd profile``: measure the costs the planner and the simulator need.

Pipe-BD's automatic hybrid distribution (§III-C) plans from profiled costs. This profiler
launches ``N`` ranks (``torch.multiprocessing`` spawn on a ``TCPStore``, the runner's way, or
``torchrun``) and measures on every rank *at the same time*, so contention for cores, memory
bandwidth and the interconnect is part of every number:

- for each block ``i`` and each candidate per-replica batch ``b = ceil(B/g)``,
  ``g = 1..G`` (``G = --replica-groups``, default ``max(N, 4)``, so even a 1- or 2-rank profile
  has at least three sizes and :mod:`pipebd.costfit` can separate a block's fixed cost from its
  per-sample cost): teacher forward seconds and student train-step seconds (a fresh
  :class:`~pipebd.distill.BlockTrainer`: forward + loss + backward + SGD step). Each block is
  first warmed (``--warmup`` untimed steps; supernet students also run one step on each choice
  index of every cell, so every candidate op is warm); then ``--steps`` timed trials each run
  the whole chain as a relay stage does (the teacher blocks on fresh activations, then every
  student), reporting the median (the mean over sampled paths for supernets). CUDA events
  time the compute on GPU, ``perf_counter`` on CPU;
- peak memory of each (block, batch): on CUDA, ``torch.cuda.max_memory_allocated`` during the
  configuration minus what was resident before it, plus the block's parameters and its
  input/target activations; on CPU an *estimate* — parameters + momentum + gradients +
  input/target activations + the bytes autograd saves for backward (counted with
  ``torch.autograd.graph.saved_tensors_hooks``). Out of memory is a property of a *stage*
  configuration (:func:`pipebd.simulate.stage_memory`: the stage's resident blocks plus its
  largest transient), so an out-of-memory with every block resident does not condemn a block:
  the ranks agree to re-measure from then on in *lean* mode, each block with only its own
  teacher and student on the device (the others offloaded to the host), and only a block that
  does not fit even alone is marked infeasible. The bytes a device may use (``--memory-limit``,
  else the GPU's memory minus a margin) are recorded as the table's ``capacity``, so the
  planner judges every stage against it;
- relay: half the round trip of a real ``send``/``recv`` ping-pong of the activation entering
  each block, for each candidate batch, on rank pairs (0,1), (2,3), … simultaneously;
- all-reduce of each block's student gradients (a flat buffer of the gradient bytes one step
  produces) over groups ``{0..g-1}`` made with ``dist.new_group``, for ``g = 2..N``;
- data loading at each candidate batch (each rank loads its own shards) and a barrier.

With one rank there is nothing to send: relay, all-reduce (``g = 2..G``) and barrier rows are
*modelled* instead — ``latency + bytes / bandwidth`` point to point, the ring all-reduce
``2(g-1)·latency + 2(g-1)/g · bytes / bandwidth``, ``latency · log2 g`` — with the device
constants of :data:`pipebd.simulate.ESTIMATE_SPECS`, and their ``note`` column says so.

Rank 0 combines the ranks' medians (median over ranks; memory: the maximum) and writes one
tidy CSV (:data:`pipebd.simulate.CSV_COLUMNS`) that :meth:`CostTable.from_csv` reads back, so
later runs pass it with ``--profile FILE``. ``--quick`` takes few trials (for tests).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import signal
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from .comm import allreduce_sum_, transport_device
from .runner import init_rank
from .config import ConfigError, RunConfig, data_config, validate, workload_options
from .data import DataSource
from .distill import BlockTrainer, OptimConfig
from .simulate import CSV_COLUMNS, ESTIMATE_SPECS, CostTable, _write_csv, candidate_batches
from .zoo import WorkloadError, build_workload, canonical_name

__all__ = ["ProfileOptions", "profile", "default_profile_path", "add_cli"]


#: Fewest replica groups a profile covers (per-replica batches B, B/2, B/3, B/4): three or more
#: sizes let the cost model fit a fixed + per-sample cost (:mod:`pipebd.costfit`).
MIN_REPLICA_GROUPS = 4


@dataclass(frozen=True)
class ProfileOptions:
    out: str  # the CSV to write
    trials: int = 7  # timed repetitions of each compute configuration
    warmup: int = 2  # untimed repetitions before them
    comm_trials: int = 10  # timed repetitions of each relay / all-reduce / barrier
    replica_groups: int | None = None  # per-replica batches ceil(B/g), g = 1..G; None: max(ranks, 4)
    #: step index (so NAS path) of the first timed trial; trial k times step first_step + k. Give a
    #: run's first measured step (its --warmup) and trials = its --steps, and a supernet's profiled
    #: cost is that of exactly the paths the run trains. None: max(1, warmup).
    first_step: int | None = None

    @classmethod
    def for_config(cls, cfg: RunConfig, out: str, *, quick: bool = False,
                   replica_groups: int | None = None, first_step: int | None = None) -> "ProfileOptions":
        if quick:
            return cls(out=out, trials=2, warmup=1, comm_trials=3, replica_groups=replica_groups,
                       first_step=first_step)
        return cls(out=out, trials=cfg.steps, warmup=cfg.warmup, comm_trials=max(5, cfg.steps),
                   replica_groups=replica_groups, first_step=first_step)

    def groups(self, devices: int) -> int:
        """``G``: the largest replica group whose per-replica batch is profiled."""
        return self.replica_groups if self.replica_groups is not None else max(devices, MIN_REPLICA_GROUPS)

    def batches(self, batch_size: int, devices: int) -> list[int]:
        """The per-replica batch sizes profiled: ``ceil(B/g)`` for ``g = 1..G``, distinct, descending."""
        return candidate_batches(batch_size, self.groups(devices))


def default_profile_path(cfg: RunConfig, out: str | None = None) -> str:
    """``--out`` as given if it names a .csv, else ``DIR/<workload>-<device>-n<N>-b<B>.csv`` (DIR: results/profiles)."""
    name = f"{_canonical(cfg.workload)}-{cfg.device_type}-n{cfg.devices}-b{cfg.batch_size}.csv"
    if out is None:
        return os.path.join("results", "profiles", name)
    return out if out.endswith(".csv") else os.path.join(out, name)


def _canonical(workload: str) -> str:
    try:
        return canonical_name(workload)
    except WorkloadError as e:
        raise ConfigError(str(e)) from None


def _validate(cfg: RunConfig, out: str, opts: ProfileOptions | None = None) -> None:
    if cfg.devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {cfg.devices}")
    g = opts.replica_groups if opts is not None else None
    if g is not None and g < cfg.devices:
        raise ConfigError(f"--replica-groups {g} is below --devices {cfg.devices}: a stage on all {cfg.devices} "
                          f"ranks trains ceil(B/{cfg.devices}) rows, which would not be profiled; use "
                          f"--replica-groups {max(cfg.devices, MIN_REPLICA_GROUPS)} or more (or omit it)")
    if cfg.batch_size < cfg.devices:
        raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than --devices {cfg.devices}: the smallest "
                          "candidate batch ceil(B/N) needs at least one row per device")
    # Everything else a run checks (workload, data, CUDA, output directory), on one rank's terms:
    validate(cfg.replace(devices=1, strategy="sequential", shards=1, block_shards=None,
                         out=os.path.dirname(os.path.abspath(out))))
    if cfg.device_type == "cuda":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.devices))
        if torch.cuda.device_count() < local:
            raise ConfigError(f"--device cuda with {local} ranks on this host needs {local} GPUs, found "
                              f"{torch.cuda.device_count()}; lower --devices")


def profile(cfg: RunConfig, out: str, *, quick: bool = False, replica_groups: int | None = None,
            first_step: int | None = None) -> CostTable | None:
    """Profile ``cfg.workload`` on ``cfg.devices`` ranks at global batch ``cfg.batch_size``; write ``out``.

    ``replica_groups`` is ``G`` of :class:`ProfileOptions` (per-replica batches ``ceil(B/g)``,
    ``g = 1..G``; default ``max(devices, 4)``); ``first_step`` the step of the first timed trial
    (:attr:`ProfileOptions.first_step`). Returns the table (on the launching process / rank 0;
    ``None`` on other torchrun ranks).
    """
    from .runner import under_torchrun

    cfg = cfg.replace(workload=_canonical(cfg.workload))
    if replica_groups is not None and replica_groups < 1:
        raise ConfigError(f"--replica-groups must be >= 1, got {replica_groups}; e.g. --replica-groups 8 profiles "
                          "the per-replica batches of stages of up to 8 replicas")
    if first_step is not None and first_step < 1:
        raise ConfigError(f"--first-step must be >= 1 (a step index), got {first_step}")
    opts = ProfileOptions.for_config(cfg, out, quick=quick, replica_groups=replica_groups, first_step=first_step)
    _validate(cfg, out, opts)
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != cfg.devices:
            raise ConfigError(f"torchrun started {world} processes but --devices is {cfg.devices}; make them equal")
        rank = int(os.environ["RANK"])
        _rank_main(rank, cfg, opts, store=None)
        return CostTable.from_csv(out) if rank == 0 else None
    _spawn(cfg, opts)
    return CostTable.from_csv(out)


def _spawn(cfg: RunConfig, opts: ProfileOptions) -> None:
    """Spawn the ranks; torch's process context stops the others when one fails."""
    from .runner import RunFailed

    store = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False,
                          timeout=_dt.timedelta(seconds=cfg.timeout))
    ctx = mp.start_processes(_spawn_entry, args=(cfg, opts, store.port), nprocs=cfg.devices, join=False,
                             start_method="spawn")
    old_int = signal.getsignal(signal.SIGINT)

    def _stop(signum, frame):
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _stop)
    try:
        while not ctx.join(timeout=0.5):
            pass
    except ProcessException as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise RunFailed(f"profile rank {e.error_index} failed: {lines[-1] if lines else e}", e.error_index) from None
    finally:
        signal.signal(signal.SIGINT, old_int)
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join()


def _spawn_entry(local_rank: int, cfg: RunConfig, opts: ProfileOptions, port: int) -> None:
    store = dist.TCPStore("127.0.0.1", port, world_size=None, is_master=False,
                          timeout=_dt.timedelta(seconds=cfg.timeout))
    _rank_main(local_rank, cfg, opts, store=store, local_world_size=cfg.devices)


def _rank_main(rank: int, cfg: RunConfig, opts: ProfileOptions, *, store, local_world_size: int | None = None) -> None:
    world = cfg.devices
    device = init_rank(cfg, rank, store=store, local_world_size=local_world_size)
    try:
        rows = _Profiler(rank, world, device, cfg, opts).run()
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
        if rank == 0:
            _write(cfg, opts, [r for part in gathered for r in part])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in msg or "not enough memory" in msg)


def _nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class _Profiler:
    """What one rank measures; every rank calls the same collectives in the same order."""

    def __init__(self, rank: int, world: int, device: torch.device, cfg: RunConfig, opts: ProfileOptions):
        self.rank, self.world, self.device, self.cfg, self.opts = rank, world, device, cfg, opts
        self.cuda = device.type == "cuda"
        self.wl = build_workload(cfg.workload, workload_options(cfg))
        self.n = self.wl.num_blocks
        self.data = DataSource(data_config(cfg, self.wl), cfg.batch_size)
        self.teachers = [t.to(device) for t in self.wl.teacher]
        self.students = [s.to(device) for s in self.wl.student]
        self.batches = opts.batches(cfg.batch_size, world)
        self.groups = opts.groups(world)
        self.act_bytes = [math.prod(s) * 4 for s in self.wl.boundary_shapes]  # float32 per sample
        self.grad_bytes = [0] * self.n
        self.rows: list[dict] = []
        self.lean = False  # one block resident at a time (after an out-of-memory with all resident)

    def _row(self, kind: str, **kw) -> None:
        self.rows.append({"kind": kind, "rank": self.rank, **kw})

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _time(self, fn) -> float:
        """Seconds ``fn`` takes (CUDA events on GPU)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def _wall(self, fn) -> float:
        """Wall seconds of ``fn`` including the device finishing it (communication)."""
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - t0

    def run(self) -> list[dict]:
        groups = {g: dist.new_group(list(range(g))) for g in range(2, self.world + 1)}
        if self.rank == 0:
            for k, nb in enumerate(self.act_bytes):
                self._row("activation", block=k, bytes=nb)
            for i in range(self.n):
                self._row("static_memory", block=i, bytes=_nbytes(self.teachers[i]) + 2 * _nbytes(self.students[i]))
            from .planner import memory_limit_for

            capacity, source = memory_limit_for(self.cfg)
            if capacity is not None:
                self._row("capacity", bytes=capacity, note=source)
        self._data()
        for b in self.batches:
            self._compute(b)
        self._relay()
        self._allreduce(groups)
        self._barrier()
        return self.rows

    # ---- measurements -------------------------------------------------------------------
    def _data(self) -> None:
        trials = self.opts.comm_trials
        for k, b in enumerate(self.batches):
            dist.barrier()
            self.data.load(self.rank, 0, b)
            times = [self._wall(lambda s=s: self.data.load((k * self.world + self.rank) * trials + s + 1, 0, b))
                     for s in range(trials)]
            self._row("data", batch=b, seconds=statistics.median(times))

    def _compute(self, b: int) -> None:
        """Every block at ``b`` rows; lean (one block resident) once any rank ran out of memory."""
        if not self.lean:
            start = len(self.rows)
            oom = self._compute_resident(b)
            flags: list = [None] * self.world
            dist.all_gather_object(flags, oom)
            if not any(flags):
                return
            del self.rows[start:]  # re-measured below, each block on its own
            self.lean = True
            self._free()
        self._compute_lean(b)

    def _warm_step(self) -> int:
        """The step of the untimed warm-up trial: trial k (1..trials) times step ``start + k``."""
        return self.opts.first_step - 1 if self.opts.first_step is not None else max(1, self.opts.warmup)

    def _first_input(self, b: int) -> torch.Tensor | None:
        """``b`` rows of a batch on the device, or None if even that ran out of memory."""
        try:
            return self.data.load(0, 0, b)[0].to(self.device)
        except Exception as e:  # noqa: BLE001
            if not _is_oom(e):
                raise
            return None

    def _compute_resident(self, b: int) -> bool:
        """Every block resident, the chain timed as a stage runs it; True if something ran out of memory."""
        oom = False
        dist.barrier()
        x = self._first_input(b)
        x0, chain = x, {}  # chain: block -> trainer, for the blocks feasible at this batch
        for i in range(self.n):
            dist.barrier()  # every rank starts each configuration together (contention included)
            if x is None:  # an earlier teacher block ran out of memory at this batch
                self._infeasible(i, b)
                continue
            try:
                y = self._teacher(i, x)
            except Exception as e:  # noqa: BLE001
                if not _is_oom(e):
                    raise
                self._infeasible(i, b)
                x, oom = None, True
                self._free()
                continue
            try:
                trainer, mem, method = self._student(i, x, y)
                chain[i] = trainer
                self._row("memory", block=i, batch=b, bytes=mem, note=method)
            except Exception as e:  # noqa: BLE001
                if not _is_oom(e):
                    raise
                self._row("student", block=i, batch=b, feasible=0, note="out of memory")
                self._row("memory", block=i, batch=b, feasible=0, note="out of memory")
                oom = True
                self._free()
            x = y
        return self._time_chain(b, x0, chain) or oom  # x0 None: barriers only, so every rank meets them

    def _compute_lean(self, b: int) -> None:
        """Each block alone on the device (teacher ``i`` and student ``i``; the rest on the host):
        teacher times on the relayed activation, then the student's; infeasible only if it does not
        fit alone (later blocks then have no input at this size)."""
        dist.barrier()
        x = self._first_input(b)
        note = "measured alone (other blocks offloaded)"
        start = self._warm_step()
        for i in range(self.n):
            dist.barrier()
            if x is None:
                self._infeasible(i, b)
                continue
            self._only(i)
            try:
                y = self._teacher(i, x)
                with torch.no_grad():
                    t_times = [self._time(lambda: self.teachers[i](x)) for _ in range(self.opts.trials)]
            except Exception as e:  # noqa: BLE001
                if not _is_oom(e):
                    raise
                self._infeasible(i, b)
                x = None
                self._free()
                continue
            self._row("teacher", block=i, batch=b, seconds=statistics.median(t_times), note=note)
            try:
                trainer, mem, method = self._student(i, x, y)

                def step(k: int) -> None:
                    trainer.begin(k)
                    trainer.accumulate(x, y)
                    trainer.apply()

                s_times = [self._time(lambda k=k: step(start + k)) for k in range(1, self.opts.trials + 1)]
                central = statistics.mean if getattr(self.students[i], "is_supernet", False) else statistics.median
                self._row("student", block=i, batch=b, seconds=central(s_times), note=note)
                self._row("memory", block=i, batch=b, bytes=mem, note=f"{method}; {note}")
                del trainer
            except Exception as e:  # noqa: BLE001
                if not _is_oom(e):
                    raise
                self._row("student", block=i, batch=b, feasible=0, note="out of memory alone")
                self._row("memory", block=i, batch=b, feasible=0, note="out of memory alone")
            self._free()
            x = y

    def _only(self, i: int) -> None:
        """Teacher and student ``i`` on the device, every other block on the host."""
        host = torch.device("cpu")
        for j in range(self.n):
            where = self.device if j == i else host
            self.students[j].zero_grad(set_to_none=True)
            self.teachers[j].to(where)
            self.students[j].to(where)
        if self.cuda:
            torch.cuda.empty_cache()

    def _time_chain(self, b: int, x0: torch.Tensor | None, chain: dict[int, BlockTrainer]) -> bool:
        """Time teacher and student of every block the way a Pipe-BD stage executes them: per
        trial, the teacher chain on fresh activations, then every student, all ranks at once.
        (Timing each block in isolation on a reused input measured memory-bound teacher blocks
        up to 1.5x slower than runs pay: caches and bandwidth contention differ.)
        A supernet's step time depends on the sampled path, so it reports the mean over trials
        (the expected cost a run pays); everything else reports the median. Returns True (and
        records nothing) if the chain ran out of memory; every rank still meets every barrier.
        """
        t_times: dict[int, list[float]] = {i: [] for i in range(self.n)}
        s_times: dict[int, list[float]] = {i: [] for i in chain}
        start = self._warm_step()
        failed = x0 is None
        for trial in range(self.opts.trials + 1):  # the first pass only warms the chain
            dist.barrier()
            if failed:
                continue
            acts = [x0]
            try:
                for i in range(self.n):
                    with torch.no_grad():
                        box = []
                        t = self._time(lambda: box.append(self.teachers[i](acts[-1])))
                    acts.append(box[0])
                    if trial:
                        t_times[i].append(t)
                for i, tr in chain.items():
                    def step(k: int = start + trial) -> None:
                        tr.begin(k)
                        tr.accumulate(acts[i], acts[i + 1])
                        tr.apply()

                    st = self._time(step)
                    if trial:
                        s_times[i].append(st)
            except Exception as e:  # noqa: BLE001
                if not _is_oom(e):
                    raise
                failed = True
            del acts
        if failed:
            chain.clear()
            self._free()
            return True
        for i in range(self.n):
            self._row("teacher", block=i, batch=b, seconds=statistics.median(t_times[i]))
            if i in chain:
                supernet = getattr(chain[i].block, "is_supernet", False)
                central = statistics.mean if supernet else statistics.median
                self._row("student", block=i, batch=b, seconds=central(s_times[i]))
        chain.clear()
        return False

    def _infeasible(self, i: int, b: int) -> None:
        for kind in ("teacher", "student", "memory"):
            self._row(kind, block=i, batch=b, feasible=0, note="out of memory")

    def _free(self) -> None:
        for s in self.students:
            s.zero_grad(set_to_none=True)
        if self.cuda:
            torch.cuda.empty_cache()

    @torch.no_grad()
    def _teacher(self, i: int, x: torch.Tensor) -> torch.Tensor:
        blk = self.teachers[i]
        for _ in range(self.opts.warmup):
            blk(x)
        return blk(x)

    def _student(self, i: int, x: torch.Tensor, y: torch.Tensor) -> tuple[BlockTrainer, float, str]:
        cfg, block = self.cfg, self.students[i]
        if self.cuda:
            self._sync()
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        trainer = BlockTrainer(index=i, block=block, last=i == self.n - 1, total_steps=10**6, seed=cfg.seed,
                               optim=OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay))
        if getattr(block, "is_supernet", False):
            # one step on every choice index of every cell, so each candidate op has run once
            for c in range(max(block.choices_per_cell)):
                block.set_path(tuple(min(c, m - 1) for m in block.choices_per_cell))
                trainer.accumulate(x, y)
                trainer.apply()
        grad_bytes, saved = [], 0
        for s in range(max(1, self.opts.warmup)):
            trainer.begin(s)
            if s == 0 and not self.cuda:
                saved = _saved_bytes(lambda: trainer.accumulate(x, y), block)
            else:
                trainer.accumulate(x, y)
            grad_bytes.append(sum(g.numel() * g.element_size() for g in trainer.grads()))
            trainer.apply()
        self.grad_bytes[i] = max(self.grad_bytes[i], int(statistics.mean(grad_bytes)))

        io_bytes = x.numel() * x.element_size() + y.numel() * y.element_size()
        params = _nbytes(self.teachers[i]) + _nbytes(block)
        if self.cuda:
            self._sync()
            mem = torch.cuda.max_memory_allocated(self.device) - base + params + io_bytes
            method = "cuda max_memory_allocated"
        else:
            mem = _nbytes(self.teachers[i]) + 2 * _nbytes(block) + max(grad_bytes) + io_bytes + saved
            method = "cpu estimate: params+momentum+grads+io+saved activations"
        return trainer, float(mem), method

    def _modelled(self) -> None:
        """One rank: relay, all-reduce and barrier rows from bytes and :data:`ESTIMATE_SPECS` constants."""
        spec = ESTIMATE_SPECS.get(self.cfg.device_type, ESTIMATE_SPECS["cpu"])
        lat, p2p, ar = spec.latency_s, spec.p2p_bytes_per_s, spec.allreduce_bytes_per_s
        why = "(one rank profiled, nothing to send)"
        for k in range(1, self.n):
            for b in self.batches:
                nbytes = self.act_bytes[k] * b
                self._row("relay", block=k, batch=b, seconds=lat + nbytes / p2p, bytes=nbytes,
                          note=f"modelled: {lat:g} s + bytes / {p2p:g} B/s {why}")
        for i, nbytes in enumerate(self.grad_bytes):
            for g in range(2, self.groups + 1):
                self._row("allreduce", block=i, group=g, bytes=nbytes,
                          seconds=2 * (g - 1) * lat + 2 * (g - 1) / g * nbytes / ar,
                          note=f"modelled: ring 2(g-1)*{lat:g} s + 2(g-1)/g * bytes / {ar:g} B/s {why}")
        for g in range(2, self.groups + 1):
            self._row("barrier", group=g, seconds=lat * math.log2(g), note=f"modelled: {lat:g} s * log2(g) {why}")

    def _relay(self) -> None:
        if self.world < 2:
            return self._modelled()
        paired = self.rank < self.world - self.world % 2
        partner = self.rank ^ 1
        for k in range(1, self.n):
            shape = self.wl.boundary_shapes[k]
            for b in self.batches:
                dist.barrier()
                if self.world < 2 or not paired:
                    continue
                buf = torch.zeros((b, *shape), device=transport_device(self.device))

                def pingpong() -> None:
                    if self.rank % 2 == 0:
                        dist.send(buf, partner)
                        dist.recv(buf, partner)
                    else:
                        dist.recv(buf, partner)
                        dist.send(buf, partner)

                pingpong()
                times = [self._wall(pingpong) / 2 for _ in range(self.opts.comm_trials)]
                if self.rank % 2 == 0:
                    self._row("relay", block=k, batch=b, seconds=statistics.median(times),
                              bytes=buf.numel() * buf.element_size())

    def _allreduce(self, groups: dict) -> None:
        sizes = [self.grad_bytes]
        dist.broadcast_object_list(sizes, src=0)  # every rank reduces the same buffer sizes
        for i, nbytes in enumerate(sizes[0]):
            numel = max(1, int(nbytes) // 4)
            for g in range(2, self.world + 1):
                dist.barrier()
                if self.rank >= g:
                    continue
                buf = torch.ones(numel, device=self.device)
                allreduce_sum_([buf], group=groups[g])  # as runs reduce (staged through the host if sharing GPUs)
                times = [self._wall(lambda: allreduce_sum_([buf], group=groups[g]))
                         for _ in range(self.opts.comm_trials)]
                self._row("allreduce", block=i, group=g, seconds=statistics.median(times), bytes=numel * 4)

    def _barrier(self) -> None:
        if self.world < 2:
            return
        dist.barrier()
        times = [self._wall(dist.barrier) for _ in range(self.opts.comm_trials)]
        self._row("barrier", group=self.world, seconds=statistics.median(times))


def _saved_bytes(fn, block: torch.nn.Module) -> int:
    """Bytes of the non-parameter tensors autograd saves for backward while ``fn`` runs."""
    params = {p.data_ptr() for p in block.parameters()}
    seen: set[tuple[int, int]] = set()
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        key = (t.data_ptr(), t.numel())
        if t.data_ptr() not in params and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _write(cfg: RunConfig, opts: ProfileOptions, rows: list[dict]) -> None:
    """Combine the ranks' rows (median seconds, max bytes, all must be feasible) and write the CSV."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["kind"], r.get("block"), r.get("batch"), r.get("group"))].append(r)
    meta = {"workload": cfg.workload, "device_type": cfg.device_type, "devices": cfg.devices,
            "batch_size": cfg.batch_size, "source": "profile"}
    out = []
    order = {k: i for i, k in enumerate(("teacher", "student", "memory", "static_memory", "activation", "relay",
                                         "allreduce", "data", "barrier", "capacity"))}
    for (kind, block, batch, group), rs in sorted(
            groups.items(), key=lambda kv: (order[kv[0][0]], *(-1 if v is None else v for v in kv[0][1:]))):
        feasible = min(int(r.get("feasible", 1)) for r in rs)
        secs = [r["seconds"] for r in rs if r.get("seconds") is not None]
        nbytes = [r["bytes"] for r in rs if r.get("bytes") is not None]
        trials = opts.trials if kind in ("teacher", "student") else opts.comm_trials
        note = next((r["note"] for r in rs if r.get("note")), "")
        measured = kind not in ("activation", "static_memory", "memory", "capacity") and not note.startswith("modelled")
        out.append({"kind": kind, "block": block, "batch": batch, "group": group,
                    "seconds": statistics.median(secs) if secs and feasible else None,
                    "bytes": max(nbytes) if nbytes and feasible else None, "feasible": feasible, "ranks": len(rs),
                    "trials": trials if measured else None, "note": note, **meta})
    CostTable.from_rows(out)  # refuse to write a table that cannot be read back
    _write_csv(opts.out, out, CSV_COLUMNS)


# ---- CLI --------------------------------------------------------------------------------

def _cmd_profile(args: argparse.Namespace) -> int:
    from .cli import config_from_args

    cfg = config_from_args(args, out="results")
    out = default_profile_path(cfg, args.out)
    t0 = time.perf_counter()
    costs = profile(cfg, out, quick=args.quick, replica_groups=args.replica_groups, first_step=args.first_step)
    if costs is None:
        return 0
    sizes = sorted(costs.batches(), reverse=True)
    print(f"profiled {costs.workload} on {cfg.devices} {cfg.device_type} rank(s), batch {cfg.batch_size} "
          f"(per-replica sizes {', '.join(map(str, sizes))}) in {time.perf_counter() - t0:.1f} s")
    for gap in costs.gaps():
        print(f"  note: {gap}")
    print(f"{'block':>5}  " + "  ".join(f"{'b=' + str(b) + ' T/S ms':>18}" for b in sizes))
    for i in range(costs.num_blocks):
        cells = []
        for b in sizes:
            t, s = costs.teacher[i].get(b), costs.student[i].get(b)
            cells.append("OOM".rjust(18) if s is None or math.isinf(s) or t is None or math.isinf(t)
                         else f"{t * 1e3:8.2f}/{s * 1e3:<9.2f}")
        print(f"{i:>5}  " + "  ".join(cells))
    print(f"data {costs.data_per_sample * 1e6:.1f} us/sample; wrote {out} (reuse it with --profile {out})")
    return 0


def add_cli(sub) -> None:
    from .cli import add_run_options

    p = sub.add_parser("profile", help="measure per-block compute, memory and communication costs on N ranks")
    add_run_options(p, strategy=False)
    p.add_argument("--quick", action="store_true", help="few trials (tests, smoke checks)")
    p.add_argument("--replica-groups", type=int, default=None, metavar="G",
                   help=f"profile the per-replica batches ceil(B/g) for g = 1..G, even with fewer ranks "
                        f"(default: max(--devices, {MIN_REPLICA_GROUPS})); G >= --devices")
    p.add_argument("--first-step", type=int, default=None, metavar="K",
                   help="step index of the first timed trial (NAS: the sampled paths of steps K, K+1, ...); give a "
                        "run's --warmup and --steps to profile exactly the paths it measures")
    # --out names the CSV here (a directory gets <workload>-<device>-n<N>-b<B>.csv); trials = --steps
    p.set_defaults(func=_cmd_profile, out=None, steps=7, warmup=2, timeout=600.0)
