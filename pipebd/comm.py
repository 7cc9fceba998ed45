"""Process groups and point-to-point transport on torch.distributed (gloo on CPU, NCCL on CUDA).

Every op has the run's timeout (set on the process group), so a lost peer becomes an error,
never a hang. This module is the transport of Pipe-BD's relays:

- :func:`relay_shapes` / :func:`exchange_meta`: the one-time handshake (shape and dtype of the
  relayed activation) that lets a receiver preallocate its buffers, as Pipe-BD's released code
  probes shapes once at start-up; ``drop_last`` batches keep them fixed afterwards.
- :func:`row_ranges` / :func:`row_overlaps`: which rows of a batch each replica of a stage
  holds, and which rows each (sender replica, receiver replica) pair exchanges when stages
  of different widths meet (automatic hybrid distribution, Pipe-BD §III-C).
- :class:`Inbox` / :class:`Outbox`: a relay link's receive side (``K`` preallocated buffers,
  receives posted ahead of use) and send side (non-blocking sends, at most ``K`` batches in
  flight, every sent tensor kept alive until its send completes). With ``K >= 2`` the next
  batch's transfer overlaps the current batch's compute: the decoupled parameter update of
  Pipe-BD §III-B.
- :func:`allreduce_sum_`: one flattened SUM all-reduce of a list of gradients in a group.

Messages of step ``k`` carry tag ``k`` (gloo matches on it; NCCL orders messages per pair).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = [
    "backend_for", "threads_per_rank", "init_process_group", "relay_shapes", "send", "recv_into",
    "TensorMeta", "exchange_meta", "set_host_staging", "transport_device", "row_ranges", "row_overlaps", "Piece", "Inbox", "Outbox", "allreduce_sum_",
]


def backend_for(device_type: str, *, share_gpus: bool = False) -> str:
    """NCCL when every rank has its own GPU; gloo on CPU and for ranks sharing GPUs."""
    return "nccl" if device_type == "cuda" and not share_gpus else "gloo"


_HOST_STAGED = False


def set_host_staging(enabled: bool) -> None:
    """Stage point-to-point traffic through host memory (gloo cannot send CUDA tensors).

    Used when ranks outnumber GPUs and share them (``--share-gpus``): compute stays on the
    GPU, relays and collectives copy to the host, travel over gloo, and copy back.
    """
    global _HOST_STAGED
    _HOST_STAGED = enabled


def transport_device(device: torch.device) -> torch.device:
    """Where tensors must live to travel: the host when staging, else the compute device."""
    return torch.device("cpu") if _HOST_STAGED else device


def threads_per_rank(local_world_size: int, requested: int | None = None) -> int:
    """cores ÷ ranks on this host (at least 1): oversubscribed threads slow every rank down."""
    if requested:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size))


def init_process_group(*, backend: str, rank: int, world_size: int, timeout_s: float,
                       store: dist.Store | None = None, device: torch.device | None = None) -> None:
    kw = {}
    if device is not None and device.type == "cuda":
        kw["device_id"] = device
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s), init_method=None if store else "env://", **kw)


def _tag(step: int) -> int:
    return int(step) % (2**31 - 1)


def send(tensor: torch.Tensor, dst: int, *, group=None, tag: int = 0) -> dist.Work:
    """Non-blocking send; the caller keeps ``tensor`` alive and unmodified until the work completes."""
    return dist.isend(tensor.contiguous(), dst, group=group, tag=tag)


def recv_into(buffer: torch.Tensor, src: int, *, group=None, tag: int = 0) -> dist.Work:
    """Non-blocking receive into a preallocated (contiguous) buffer."""
    return dist.irecv(buffer, src, group=group, tag=tag)


# ----------------------------------------------------------------------------- handshake

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8)
_META_SLOTS = 10  # [ndim, dtype code, up to 8 dims]


@dataclass(frozen=True)
class TensorMeta:
    """Shape (per sample, or of the whole tensor: the caller decides) and dtype of a relayed tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    def encode(self, device: torch.device) -> torch.Tensor:
        if len(self.shape) > _META_SLOTS - 2:
            raise ValueError(f"cannot relay a tensor of {len(self.shape)} dimensions (at most {_META_SLOTS - 2})")
        if self.dtype not in _DTYPES:
            raise ValueError(f"cannot relay a tensor of dtype {self.dtype}; supported: {_DTYPES}")
        t = torch.zeros(_META_SLOTS, dtype=torch.int64)
        t[0] = len(self.shape)
        t[1] = _DTYPES.index(self.dtype)
        t[2:2 + len(self.shape)] = torch.tensor(self.shape, dtype=torch.int64)
        return t.to(device)

    @staticmethod
    def decode(t: torch.Tensor) -> "TensorMeta":
        v = [int(x) for x in t.cpu()]
        return TensorMeta(tuple(v[2:2 + v[0]]), _DTYPES[v[1]])


def exchange_meta(sends: Mapping[int, TensorMeta], recvs: Iterable[int], *,
                  device: torch.device) -> dict[int, TensorMeta]:
    """Receive a :class:`TensorMeta` from every rank in ``recvs``, then send ours to every rank in ``sends``.

    Receives come first so that a stage can derive what it sends from what it receives (a
    chain of stages resolves front to back). Peers are visited in rank order on both sides,
    so lazily created NCCL pair communicators never wait on each other in a cycle.
    """
    device = transport_device(device)
    got: dict[int, TensorMeta] = {}
    for src in sorted(set(recvs)):
        r = torch.zeros(_META_SLOTS, dtype=torch.int64, device=device)
        dist.recv(r, src)
        got[src] = TensorMeta.decode(r)
    works, keep = [], []
    for dst in sorted(sends):
        t = sends[dst].encode(device)
        keep.append(t)
        works.append(dist.isend(t, dst))
    for w in works:
        w.wait()
    return got


def relay_shapes(shape: tuple[int, ...] | None, *, src: int | None, dst: int | None,
                 device: torch.device) -> tuple[int, ...] | None:
    """Send our outgoing activation shape to ``dst`` and receive the incoming one from ``src``.

    A chain handshake (sends are posted first, so every rank of a chain may call it at once).
    """
    device = transport_device(device)
    incoming = None
    work = keep = None
    if dst is not None:
        if shape is None:
            raise ValueError("relay_shapes needs the outgoing shape when dst is given")
        keep = TensorMeta(tuple(shape)).encode(device)
        work = dist.isend(keep, dst)
    if src is not None:
        r = torch.zeros(_META_SLOTS, dtype=torch.int64, device=device)
        dist.recv(r, src)
        incoming = TensorMeta.decode(r).shape
    if work is not None:
        work.wait()
    return incoming


# ----------------------------------------------------------------------------- row layout

def row_ranges(rows: Sequence[int]) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each replica, given the rows each replica holds (contiguous, in order)."""
    out, lo = [], 0
    for n in rows:
        out.append((lo, lo + n))
        lo += n
    return out


def row_overlaps(send_rows: Sequence[int], recv_rows: Sequence[int]) -> list[tuple[int, int, int, int]]:
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


@dataclass(frozen=True)
class Piece:
    """Rows ``[lo, hi)`` of the local tensor, exchanged with rank ``peer``."""

    peer: int
    lo: int
    hi: int


# ----------------------------------------------------------------------------- relay links

class Inbox:
    """Receive side of a relay link: one batch per step, assembled from ``pieces`` into one of
    ``depth`` preallocated buffers (buffer ``step % depth``).

    ``post(step)`` posts the step's receives; ``wait(step)`` blocks until they all arrived and
    returns the buffer. The buffer of step ``k`` is reused by step ``k + depth``, so post that
    step only once step ``k``'s buffer is no longer read.
    """

    def __init__(self, pieces: Sequence[Piece], shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device, *, depth: int, group=None):
        if depth < 1:
            raise ValueError(f"an inbox needs depth >= 1, got {depth}")
        covered = sorted((p.lo, p.hi) for p in pieces)
        expect = 0
        for lo, hi in covered:
            if lo != expect:
                raise ValueError(f"inbox pieces {list(pieces)} do not tile rows 0..{shape[0]}")
            expect = hi
        if expect != shape[0]:
            raise ValueError(f"inbox pieces {list(pieces)} do not tile rows 0..{shape[0]}")
        self.pieces = list(pieces)
        self.depth = depth
        self.group = group
        self.device = device
        self.buffers = [torch.empty(shape, dtype=dtype, device=transport_device(device)) for _ in range(depth)]
        self._pending: dict[int, list[dist.Work]] = {}

    def post(self, step: int) -> None:
        if step in self._pending:
            return
        if len(self._pending) >= self.depth:
            raise RuntimeError(f"inbox: cannot post step {step} with {len(self._pending)} steps already pending "
                               f"(depth {self.depth}); wait for an earlier step first")
        if any(s % self.depth == step % self.depth for s in self._pending):
            raise RuntimeError(f"inbox: step {step} would overwrite the buffer of a pending step")
        buf = self.buffers[step % self.depth]
        self._pending[step] = [recv_into(buf[p.lo:p.hi], p.peer, group=self.group, tag=_tag(step))
                               for p in self.pieces]

    def wait(self, step: int) -> torch.Tensor:
        """Block until every piece of ``step`` arrived (posting it first if needed); return its buffer."""
        if step not in self._pending:
            self.post(step)
        for w in self._pending.pop(step):
            w.wait()
        return self.buffers[step % self.depth].to(self.device)  # a copy only when host-staged

    @property
    def pending(self) -> list[int]:
        return sorted(self._pending)


class Outbox:
    """Send side of a relay link: rows ``[p.lo, p.hi)`` of each step's tensor go to ``p.peer``
    for every piece, with non-blocking sends and at most ``depth`` steps in flight.

    Each sent tensor is held until its sends complete (the transport reads it asynchronously).
    """

    def __init__(self, pieces: Sequence[Piece], *, depth: int, group=None):
        if depth < 1:
            raise ValueError(f"an outbox needs depth >= 1, got {depth}")
        self.pieces = list(pieces)
        self.depth = depth
        self.group = group
        self._inflight: deque[tuple[int, torch.Tensor, list[dist.Work]]] = deque()

    def send(self, step: int, tensor: torch.Tensor) -> None:
        """Send ``tensor``'s pieces of ``step``; first wait for the oldest step if ``depth`` are in flight."""
        while len(self._inflight) >= self.depth:
            self._wait_oldest()
        tensor = tensor.to(transport_device(tensor.device)).contiguous()
        works = [send(tensor[p.lo:p.hi], p.peer, group=self.group, tag=_tag(step)) for p in self.pieces]
        self._inflight.append((step, tensor, works))

    def _wait_oldest(self) -> None:
        _step, _tensor, works = self._inflight.popleft()
        for w in works:
            w.wait()

    def drain(self) -> None:
        """Wait until every send posted so far has completed."""
        while self._inflight:
            self._wait_oldest()

    @property
    def inflight(self) -> int:
        return len(self._inflight)


def allreduce_sum_(tensors: Sequence[torch.Tensor], *, group=None) -> None:
    """Sum ``tensors`` across ``group`` in place, as one flattened all-reduce."""
    if not tensors:
        return
    flat = _flatten_dense_tensors(list(tensors))
    flat = flat.to(transport_device(flat.device))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    for t, r in zip(tensors, _unflatten_dense_tensors(flat, list(tensors))):
        t.copy_(r)
