"""The interpreter: runs one rank's actions of a :class:`~pipebd.schedule.Schedule` on
torch.distributed (gloo on CPU, NCCL on CUDA), for every strategy alike.

What it does once, for all strategies:

- **Registers.** Each action reads and writes activations ``(step, boundary)`` holding a row
  range of the batch; a register is freed right after its last reader on this rank.
- **Transport.** RECVs are posted ahead in schedule order, at most ``inflight`` receive groups
  (one group = one step's pieces of one boundary) at a time, into preallocated buffers, so the
  transfer overlaps compute (Pipe-BD §III-B); SENDs are non-blocking, grouped by step, with at
  most ``inflight`` steps outstanding (the oldest is waited for first). Messages carry tag
  ``step × (blocks + 1) + boundary``; NCCL orders them per pair, which the validator checks.
- **The activation store** (``cache``): PUT writes a register to the
  :class:`~pipebd.cachestore.ActivationStore` at its batch's dataset rows; the last PUT of a
  batch marks it complete, and the teacher-pass actions (``fill``) of a batch already complete
  are skipped. GET reads a register back, the next step's GETs prefetched in the background.
- **Timing.** One recorder span per action (CUDA events on GPU, ``perf_counter`` on CPU — never
  a device-wide sync inside a window); OPEN / CLOSE are the measurement windows.
- **Step hooks.** After the last action of each step in which this rank updated a student,
  :meth:`~pipebd.runtime.RankContext.after_step` (heartbeat, checkpoint, fault injection) and
  one progress tick.
- **Resume.** A checkpoint restored at after-step call ``K`` (the same ``K`` on every rank: a
  consistent cut) resumes at the position after this rank's ``K``-th hook: actions before it
  are skipped except barriers and drains, which every rank still meets, so group collectives
  stay aligned; a window open at the resume point reopens there.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict, deque
from datetime import timedelta

import torch
import torch.distributed as dist

from ..comm import allreduce_sum_, dense, recv_into, send, transport_device
from ..distill import BlockTrainer, teacher_block
from ..schedule import (ALLREDUCE, BARRIER, CLOSE, DRAIN, GET, LOAD, OPEN, PUT, RECV, SEND, STUDENT, TEACHER, UPDATE,
                        Action, Schedule, is_fill, parse_window_note, to_csv_text)
from .context import RankContext

__all__ = ["Interpreter", "step_hooks", "register_drops", "SPAN_PHASE"]

#: the recorder phase each action kind is timed as
SPAN_PHASE = {LOAD: "data", TEACHER: "teacher", STUDENT: "student", UPDATE: "update", SEND: "comm", RECV: "comm",
         ALLREDUCE: "comm", DRAIN: "comm", BARRIER: "sync", PUT: "data", GET: "data"}


def step_hooks(actions: list[Action]) -> dict[int, tuple[int, tuple[int, ...]]]:
    """``{position: (step, blocks updated)}``: where the after-step hook runs — after the last
    action of each run of same-step actions that contains an UPDATE."""
    out: dict[int, tuple[int, tuple[int, ...]]] = {}
    cur, last, updated = None, None, []
    for i, a in enumerate(actions):
        if a.step < 0:
            continue
        if a.step != cur:
            if updated:
                out[last] = (cur, tuple(updated))
            cur, updated = a.step, []
        if a.kind == UPDATE:
            updated.append(a.block)
        last = i
    if updated:
        out[last] = (cur, tuple(updated))
    return out


def _window(a: Action) -> dict:
    pipelined, scale = parse_window_note(a.note)
    return {"pipelined": pipelined, "scale": scale}


def _readers(a: Action) -> list[tuple[int, int]]:
    if a.kind == TEACHER:
        return [(a.step, a.blocks[0])]
    if a.kind in (SEND, PUT):
        return [(a.step, a.boundary)]
    if a.kind == STUDENT:
        return [(a.step, a.block), (a.step, a.block + 1)]
    return []


def _writes(a: Action) -> list[tuple[int, int]]:
    if a.kind == LOAD:
        return [(a.step, 0)]
    if a.kind == TEACHER:
        return [(a.step, b + 1) for b in a.blocks]
    if a.kind in (RECV, GET):
        return [(a.step, a.boundary)]
    return []


def register_drops(actions: list[Action]) -> dict[int, list[tuple[int, int]]]:
    """``{position: [registers]}``: free each written value right after its last reader.

    A register key ``(step, boundary)`` can be written more than once on a rank — ``dp`` and
    ``ls`` load step ``k``'s batch again for every block — so lifetimes are per written value:
    a value dies at its last read before the next write of the same key (or, never read, right
    after its write). Keying the lifetime on the key alone would keep every step's activations
    alive until the last block, a whole block's worth of batches held at once."""
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    last: dict[tuple[int, int], int] = {}  # live value -> its last read so far (or its write)
    for i, a in enumerate(actions):
        for reg in _readers(a):
            if reg in last:
                last[reg] = i
        for reg in _writes(a):
            if reg in last:
                out[last[reg]].append(reg)
            last[reg] = i
    for reg, i in last.items():
        out[i].append(reg)
    return dict(out)


class Interpreter:
    """Executes ``schedule.ranks[ctx.rank]`` on this rank; :meth:`run` returns the trainers whose
    final weights this rank reports (the lowest rank training a block reports it)."""

    def __init__(self, ctx: RankContext, schedule: Schedule):
        self.ctx, self.schedule = ctx, schedule
        self.actions = schedule.ranks[ctx.rank]
        self.depth = schedule.inflight
        cfg = ctx.config
        self._check_same_schedule()
        self.groups = self._make_groups()
        self.modes = schedule.block_modes()
        mine = schedule.teachers_of(ctx.rank)
        self.teachers = dict(zip(mine, ctx.teacher(mine, [self.modes.teacher[b] for b in mine])))
        self.trainers: dict[int, BlockTrainer] = {b: ctx.trainer(b, self.modes.student[b])
                                                  for b in schedule.trainers_of(ctx.rank)}
        self.loaders: dict[tuple[int, int], object] = {}
        self.hooks = step_hooks(self.actions)
        self.drop_after = register_drops(self.actions)
        # registers some later action reads; a teacher prefix's other outputs are never kept, so a
        # TEACHER over blocks 0..i holds one activation at a time, as a plain forward would
        self.needed = {reg for a in self.actions for reg in _readers(a)}
        self.regs: dict[tuple[int, int], tuple] = {}  # (lo, tensor, recv buffer or None)
        self.end = cfg.total_steps
        self._recv_setup()
        self.sent: deque = deque()  # [step, [(tensor, work)]]
        self.begun: dict[int, int] = {}  # block -> the step its trainer began last
        self.store = self._open_store()
        # teacher-pass batches already in the store: their fill actions are skipped
        self.stored = {(a.step, a.rows) for a in self.actions if a.kind == PUT and self.store is not None
                       and self.store.complete(a.step, a.rows)}
        self.last_put = {}  # (step, rows) -> position of this rank's last PUT of that batch's rows
        self.gets_of_step: dict[int, list[int]] = defaultdict(list)
        for i, a in enumerate(self.actions):
            if a.kind == PUT:
                self.last_put[(a.step, a.rows)] = i
            elif a.kind == GET:
                self.gets_of_step[a.step].append(i)

    def _open_store(self):
        """The activation store, when the schedule uses one (collective: every rank's schedule does)."""
        if not any(a.kind in (PUT, GET) for _r, _i, a in self.schedule):
            return None
        from ..cachestore import ActivationStore

        spec = self.schedule.meta.get("store")
        if spec is None:
            raise RuntimeError(f"rank {self.ctx.rank}: the schedule reads and writes an activation store but names "
                               "none (its generator sets schedule.meta['store'] to a StoreSpec)")
        store = ActivationStore(spec, self.ctx.rank)
        if self.ctx.rank == 0:
            store.create()
        self.ctx.barrier()
        store.map()
        return store

    # ---------------------------------------------------------------- set-up
    def _check_same_schedule(self) -> None:
        """Every rank generates the schedule itself (a pure function of the configuration and the
        cost table); fail clearly, before any relay, if one rank's differs (e.g. a planner fed a
        different memory limit on a different GPU)."""
        if self.ctx.world_size == 1:
            return
        digest = hashlib.sha1(to_csv_text(self.schedule).encode()).hexdigest()
        got = [None] * self.ctx.world_size
        dist.all_gather_object(got, digest)
        odd = [r for r, d in enumerate(got) if d != got[0]]
        if odd:
            raise RuntimeError(f"rank(s) {odd} generated a different schedule from rank 0's (layout "
                               f"{self.schedule.layout!r} here); give the layout explicitly (--plan / --stages / "
                               "--ls-map) or the same --profile and --memory-limit on every rank")

    def _make_groups(self) -> dict[tuple[int, ...], object]:
        """A process group per distinct collective group (the world uses the default group);
        every rank creates them all, in the same sorted order, as torch.distributed requires."""
        world = tuple(range(self.schedule.devices))
        names = sorted({a.group for _r, _i, a in self.schedule if a.group})
        out = {}
        for g in names:
            if g == world or self.ctx.world_size == 1:
                out[g] = None
            else:
                out[g] = dist.new_group(ranks=list(g), timeout=timedelta(seconds=self.ctx.config.timeout))
        return out

    def _recv_setup(self) -> None:
        """Receive groups in schedule order: (step, boundary) -> pieces, buffer rows and pool."""
        groups: dict[tuple[int, int], list[tuple[int, Action]]] = {}
        for i, a in enumerate(self.actions):
            if a.kind == RECV:
                groups.setdefault((a.step, a.boundary), []).append((i, a))
        self.recv_order = list(groups)
        self.recv_groups = groups
        self.recv_rows = {k: (min(a.rows[0] for _i, a in v), max(a.rows[1] for _i, a in v)) for k, v in groups.items()}
        self.pools: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        self.posted: dict[tuple[int, int], tuple[torch.Tensor, dict[int, object]]] = {}
        self.in_use = 0  # groups posted or held in a register, not yet released
        self.next_post = 0
        self.last_piece = {v[-1][0]: k for k, v in groups.items()}

    def _pool_key(self, key: tuple[int, int]) -> tuple:
        lo, hi = self.recv_rows[key]
        return key[1], hi - lo

    def _post_ahead(self, position: int) -> None:
        while self.next_post < len(self.recv_order) and self.in_use < self.depth:
            key = self.recv_order[self.next_post]
            if self.recv_groups[key][0][0] < position:  # resumed past it
                self.next_post += 1
                continue
            pool = self.pools[self._pool_key(key)]
            if pool:
                buf = pool.pop()
            else:
                lo, hi = self.recv_rows[key]
                shape = (hi - lo, *self.ctx.workload.boundary_shapes[key[1]])
                mode = self.modes.boundary(key[1])  # the activation travels in its teacher's dtype and format
                buf = torch.empty(shape, dtype=mode.dtype, device=transport_device(self.ctx.device),
                                  memory_format=mode.memory_format() if len(shape) == 4 else torch.contiguous_format)
            lo = self.recv_rows[key][0]
            works = {i: recv_into(buf[a.rows[0] - lo:a.rows[1] - lo], a.peer, tag=self._tag(a))
                     for i, a in self.recv_groups[key]}
            self.posted[key] = (buf, works)
            self.in_use += 1
            self.next_post += 1

    def _tag(self, a: Action) -> int:
        return (a.step * (self.schedule.num_blocks + 1) + a.boundary) % (2**31 - 1)

    def _loader(self, rows: tuple[int, int]):
        if rows not in self.loaders:
            self.loaders[rows] = self.ctx.data.loader(self.ctx.device, rows[0], rows[1], end=self.end)
        return self.loaders[rows]

    # ---------------------------------------------------------------- the loop
    def _resume_position(self) -> int:
        calls = self.ctx.calls
        if not calls:
            return 0
        ends = sorted(self.hooks)
        if calls > len(ends):
            raise RuntimeError(f"rank {self.ctx.rank}: the checkpoint is at after-step call {calls} but this rank's "
                               f"schedule has only {len(ends)} steps")
        return ends[calls - 1] + 1

    def run(self) -> dict[int, BlockTrainer]:
        ctx, rec = self.ctx, self.ctx.recorder
        rec.plan = self.schedule.layout
        rec.modes = self.modes.to_text()
        start = self._resume_position()
        if ctx.rank == 0:
            ctx.progress.start(sum(1 for i in self.hooks if i >= start), f"{self.schedule.strategy} {self.schedule.layout}".strip())
        window = None
        for i, a in enumerate(self.actions[:start]):  # the skipped part: keep collective barriers aligned
            if a.kind == BARRIER:
                self._exec(i, a)
            elif a.kind == OPEN:
                window = a
            elif a.kind == CLOSE:
                window = None
        if window is not None:
            rec.start_window(**_window(window))
        for i in range(start, len(self.actions)):
            self._post_ahead(i)
            a = self.actions[i]
            if self.stored and is_fill(a) and (a.step, a.rows) in self.stored:
                continue  # this batch's teacher pass is already in the store
            if a.kind == OPEN:
                rec.start_window(**_window(a))
            elif a.kind == CLOSE:
                rec.stop_window()
            else:
                with rec.span(SPAN_PHASE[a.kind], a.blocks[-1] if a.blocks else -1, a.step):
                    self._exec(i, a)
            for reg in self.drop_after.get(i, ()):
                self._release(reg)
            hook = self.hooks.get(i)
            if hook is not None:
                step, blocks = hook
                ctx.after_step(step, {b: self.trainers[b] for b in blocks})
                if ctx.rank == 0:
                    ctx.progress.advance(1)
        self._drain()
        rec.stop_window()
        for ld in self.loaders.values():
            ld.close()
        if self.store is not None:
            self.ctx.barrier()  # every rank is done reading before a host-memory store is removed
            self.store.close(remove=self.ctx.rank == 0 and self.store.spec.medium == "memory")
        return {b: t for b, t in self.trainers.items() if self.schedule.reporter(b) == ctx.rank}

    def _release(self, reg: tuple[int, int]) -> None:
        held = self.regs.pop(reg, None)
        if reg in self.recv_groups and held is not None and held[2] is not None:
            self.pools[self._pool_key(reg)].append(held[2])
            self.in_use -= 1

    def _read(self, step: int, boundary: int, rows: tuple[int, int]) -> torch.Tensor:
        lo, x, _buf = self.regs[(step, boundary)]
        return x[rows[0] - lo:rows[1] - lo]

    def _exec(self, i: int, a: Action) -> None:
        k = a.kind
        if k == LOAD:
            x, _labels = self._loader(a.rows).get(a.step)
            self.regs[(a.step, 0)] = (a.rows[0], x, None)
        elif k == TEACHER:
            x = self._read(a.step, a.blocks[0], a.rows)
            for b in a.blocks:
                x = teacher_block(self.teachers[b], x, self.modes.teacher[b])
                if (a.step, b + 1) in self.needed:
                    self.regs[(a.step, b + 1)] = (a.rows[0], x, None)
        elif k == STUDENT:
            t = self.trainers[a.block]
            if self.begun.get(a.block) != a.step:  # the first shard of this block's step on this rank
                t.begin(a.step)
                self.begun[a.block] = a.step
            t.accumulate(self._read(a.step, a.block, a.rows), self._read(a.step, a.block + 1, a.rows),
                         weight=a.nrows / self.schedule.batch_size)
        elif k == UPDATE:
            self.trainers[a.block].apply()
        elif k == PUT:
            rows = self.ctx.data.indices(a.step)[a.rows[0]:a.rows[1]]
            self.store.put(a.boundary, rows, self._read(a.step, a.boundary, a.rows))
            if self.last_put.get((a.step, a.rows)) == i:
                self.store.mark_complete(a.step, a.rows)
                if self.ctx.heartbeat is not None:
                    self.ctx.heartbeat.beat()  # the teacher pass updates no student: beat per batch
        elif k == GET:
            self._get(i, a)
        elif k == ALLREDUCE:
            allreduce_sum_([g for b in a.blocks for g in self.trainers[b].grads()], group=self.groups[a.group])
        elif k == BARRIER:
            if self.ctx.world_size > 1:
                dist.barrier(group=self.groups[a.group])
        elif k == SEND:
            self._send(a)
        elif k == RECV:
            self._recv(i, a)
        elif k == DRAIN:
            self._drain()
        else:
            raise RuntimeError(f"rank {self.ctx.rank}: the interpreter cannot run action {a}")

    def _get(self, i: int, a: Action) -> None:
        """Read a register from the store, then start reading the next step's in the background."""
        def start(j: int) -> None:
            b = self.actions[j]
            self.store.prefetch(j, b.boundary, self.ctx.data.indices(b.step)[b.rows[0]:b.rows[1]])

        x = self.store.get(i, a.boundary, self.ctx.data.indices(a.step)[a.rows[0]:a.rows[1]], self.ctx.device)
        self.regs[(a.step, a.boundary)] = (a.rows[0], x, None)
        for j in self.gets_of_step.get(a.step, ()):
            if j > i:
                start(j)
        for j in self.gets_of_step.get(a.step + 1, ()):
            start(j)

    def _send(self, a: Action) -> None:
        if not self.sent or self.sent[-1][0] != a.step:
            while len(self.sent) >= self.depth:
                for _t, w in self.sent.popleft()[1]:
                    w.wait()
            self.sent.append([a.step, []])
        x = self._read(a.step, a.boundary, a.rows)
        x = dense(x.to(transport_device(x.device)))  # kept alive until the send completes
        self.sent[-1][1].append((x, send(x, a.peer, tag=self._tag(a))))

    def _drain(self) -> None:
        while self.sent:
            for _t, w in self.sent.popleft()[1]:
                w.wait()

    def _recv(self, i: int, a: Action) -> None:
        key = (a.step, a.boundary)
        if key not in self.posted:
            self._post_ahead(i)
        if key not in self.posted:
            raise RuntimeError(f"rank {self.ctx.rank}: the receive of step {a.step} boundary {a.boundary} was not "
                               f"posted (more than {self.depth} receive groups in use)")
        buf, works = self.posted[key]
        works.pop(i).wait()
        if i in self.last_piece:
            del self.posted[key]
            lo = self.recv_rows[key][0]
            self.regs[key] = (lo, buf.to(self.ctx.device), buf)  # a copy only when host-staged
