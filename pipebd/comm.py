"""Process groups and point-to-point transport on torch.distributed (gloo on CPU, NCCL on CUDA).

Every op has the run's timeout (set on the process group), so a lost peer becomes an error,
never a hang. :func:`relay_shapes` performs the one-time shape handshake that lets a receiver
preallocate its buffers (Pipe-BD's released code probes shapes the same way).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["backend_for", "threads_per_rank", "init_process_group", "relay_shapes", "send", "recv_into"]


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


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


def send(tensor: torch.Tensor, dst: int, *, group=None) -> dist.Work:
    """Non-blocking send; the caller waits on the returned work before reusing the tensor."""
    return dist.isend(tensor.contiguous(), dst, group=group)


def recv_into(buffer: torch.Tensor, src: int, *, group=None) -> dist.Work:
    """Non-blocking receive into a preallocated buffer."""
    return dist.irecv(buffer, src, group=group)


def relay_shapes(shape: tuple[int, ...] | None, *, src: int | None, dst: int | None,
                 device: torch.device) -> tuple[int, ...] | None:
    """Send our outgoing activation shape to ``dst`` and receive the incoming one from ``src``.

    Shapes travel as a fixed 8-slot int64 tensor (rank count first), once at start-up.
    """
    incoming = None
    if dst is not None:
        if shape is None or len(shape) > 7:
            raise ValueError(f"cannot relay an activation of shape {shape}")
        t = torch.zeros(8, dtype=torch.int64, device=device)
        t[0] = len(shape)
        t[1:1 + len(shape)] = torch.tensor(shape, dtype=torch.int64)
        work = dist.isend(t, dst)
    else:
        work = None
    if src is not None:
        r = torch.zeros(8, dtype=torch.int64, device=device)
        dist.recv(r, src)
        incoming = tuple(int(v) for v in r[1:1 + int(r[0])])
    if work is not None:
        work.wait()
    return incoming
