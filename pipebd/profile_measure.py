"""What one profiling rank measures (:mod:`pipebd.profiler` launches the ranks and writes the table).

Every rank measures *at the same time*, so contention for cores, memory bandwidth and the
interconnect is part of every number; every rank calls the same collectives in the same order
and starts each configuration at the same barrier:

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
  configuration (:func:`pipebd.costmodel.stage_memory`), so an out-of-memory with every block
  resident does not condemn a block: the ranks agree to re-measure from then on in *lean*
  mode, each block with only its own teacher and student on the device (the others offloaded
  to the host), and only a block that does not fit even alone is marked infeasible
  (:mod:`pipebd.profile_lean`);
- every candidate compute mode (:mod:`pipebd.modes`: bf16 autocast, channels-last, allowed by
  the run's pins; fp32 contiguous is the base): after the fp32 chain at each batch, the same
  chain again per mode — teacher blocks in the mode (when the teacher may use it) on the mode's
  activations, every student in the mode (a fresh trainer, warmed like the first: one untimed
  trial, and for supernets one step on every choice index) — recorded with the CSV's ``mode``
  column, so :func:`pipebd.costmodel.choose_modes` picks per block and part (resident blocks
  only: a lean, out-of-memory profile times fp32 alone; :mod:`pipebd.profile_modes`);
- relay, all-reduce and barrier: :mod:`pipebd.profile_comm` (relays also in bf16 when a bf16
  teacher is a candidate: a bf16 activation is half the bytes);
- data loading at each candidate batch (each rank loads its own shards) and a barrier;
- the ``cache`` strategy's activation store: gathered writes and reads of memory-mapped rows in
  host memory and on disk (:mod:`pipebd.profile_store`).

"""

from __future__ import annotations

import math
import statistics
import sys
import time

import torch
import torch.distributed as dist


from .config import RunConfig
from .data import DataSource
from .distill import BlockTrainer, optim_config, teacher_block
from .modes import FP32, Mode, candidate_modes, native_bf16
from .faults import Heartbeat, parse_fault
from .options import data_config, workload_is_conv, workload_options
from .profile_comm import CommMeasurements
from .profile_lean import LeanMeasurements, is_oom
from .profile_modes import ModeMeasurements
from .profile_store import StoreMeasurements
from .profile_options import ProfileOptions
from .zoo import build_workload

__all__ = ["RankProfiler"]

def _nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class RankProfiler(CommMeasurements, LeanMeasurements, ModeMeasurements, StoreMeasurements):
    """What one rank measures; every rank calls the same collectives in the same order.

    ``heartbeat`` (a :class:`~pipebd.faults.Heartbeat`, when spawned by :mod:`pipebd.launch`)
    is beaten after every timed trial and at every configuration boundary, so a long profile
    is never mistaken for a stall, while a rank that stops making progress still is."""

    def __init__(self, rank: int, world: int, device: torch.device, cfg: RunConfig, opts: ProfileOptions, *,
                 heartbeat: Heartbeat | None = None):
        self.rank, self.world, self.device, self.cfg, self.opts = rank, world, device, cfg, opts
        self._beat = heartbeat.beat if heartbeat is not None else (lambda: None)
        fault = parse_fault(cfg.inject_fault, world)
        self.fault = fault if fault is not None and fault.rank == rank else None
        self.configs = 0  # configuration boundaries passed (every rank passes the same ones)
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
        self.grad_tensors = [1] * self.n  # gradient tensors a step of each block reduces (flattened)
        self.rows: list[dict] = []
        self.lean = False  # one block resident at a time (after an out-of-memory with all resident)
        conv = workload_is_conv(cfg)
        self.teacher_modes = candidate_modes(cfg.teacher_precision, cfg.memory_format, conv=conv)
        self.student_modes = candidate_modes(cfg.student_precision, cfg.memory_format, conv=conv)
        if not native_bf16(device):  # auto leaves out what this device only emulates (a pin keeps it)
            self.teacher_modes = self._native(self.teacher_modes, cfg.teacher_precision, "teacher")
            self.student_modes = self._native(self.student_modes, cfg.student_precision, "student")
        #: the modes timed after fp32 contiguous (the base rows)
        self.extra_modes = [m for m in dict.fromkeys(self.teacher_modes + self.student_modes) if m != FP32]

    def _native(self, modes: tuple[Mode, ...], precision: str, part: str) -> tuple[Mode, ...]:
        if precision != "auto" or not any(m.bf16 for m in modes):
            return modes
        if self.rank == 0:
            print(f"profile: {part} bf16 candidates not timed: this {self.device.type} has no native bf16 "
                  "(it would be emulated, slower than fp32); pass --precision bf16 to time it anyway",
                  file=sys.stderr, flush=True)
        return tuple(m for m in modes if not m.bf16)

    def _row(self, kind: str, **kw) -> None:
        self.rows.append({"kind": kind, "rank": self.rank, **kw})

    def _boundary(self) -> None:
        """Between two measured configurations: progress for the heartbeat, the point where
        ``--inject-fault RANK:K:KIND`` fires (after configuration K, counted from 0, as a run
        counts steps), then a barrier, so every rank starts the next one together."""
        self._beat()
        if self.fault is not None and self.configs == self.fault.step + 1:
            self.fault.fire()
        self.configs += 1
        dist.barrier()

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
            self._beat()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        self._beat()
        return seconds

    def _wall(self, fn) -> float:
        """Wall seconds of ``fn`` including the device finishing it (communication)."""
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        seconds = time.perf_counter() - t0
        self._beat()
        return seconds

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
        self._store()
        return self.rows

    # ---- measurements -------------------------------------------------------------------
    def _data(self) -> None:
        trials = self.opts.comm_trials
        for k, b in enumerate(self.batches):
            self._boundary()
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
            if not is_oom(e):
                raise
            return None

    def _compute_resident(self, b: int) -> bool:
        """Every block resident, the chain timed as a stage runs it; True if something ran out of memory."""
        oom = False
        self._boundary()
        x = self._first_input(b)
        x0, chain = x, {}  # chain: block -> trainer, for the blocks feasible at this batch
        for i in range(self.n):
            self._boundary()  # every rank starts each configuration together (contention included)
            if x is None:  # an earlier teacher block ran out of memory at this batch
                self._infeasible(i, b)
                continue
            try:
                y = self._teacher(i, x)
            except Exception as e:  # noqa: BLE001
                if not is_oom(e):
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
                if not is_oom(e):
                    raise
                self._row("student", block=i, batch=b, feasible=0, note="out of memory")
                self._row("memory", block=i, batch=b, feasible=0, note="out of memory")
                oom = True
                self._free()
            x = y
        failed = self._time_chain(b, x0, chain) or oom  # x0 None: barriers only, so every rank meets them
        for mode in self.extra_modes:
            self._time_mode(b, None if failed else x0, mode)
        return failed

    def _time_chain(self, b: int, x0: torch.Tensor | None, chain: dict[int, BlockTrainer], *,
                    teacher_mode: Mode = FP32, mode: str = "", teacher_rows: bool = True) -> bool:
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
            self._boundary()
            if failed:
                continue
            acts = [x0]
            try:
                for i in range(self.n):
                    with torch.no_grad():
                        box = []
                        t = self._time(lambda: box.append(teacher_block(self.teachers[i], acts[-1], teacher_mode)))
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
                if not is_oom(e):
                    raise
                failed = True
            del acts
        if failed:
            chain.clear()
            self._free()
            return True
        tag = {"mode": mode} if mode else {}
        for i in range(self.n):
            if teacher_rows:
                self._row("teacher", block=i, batch=b, seconds=statistics.median(t_times[i]), **tag)
            if i in chain:
                supernet = getattr(chain[i].block, "is_supernet", False)
                central = statistics.mean if supernet else statistics.median
                self._row("student", block=i, batch=b, seconds=central(s_times[i]), **tag)
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
                               optim=optim_config(cfg))
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
            self.grad_tensors[i] = max(self.grad_tensors[i], len(trainer.grads()))
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

