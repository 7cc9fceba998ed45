"""Process groups and point-to-point transport on torch.distributed (gloo on CPU, NCCL on CUDA).

Every op has the run's timeout (set on the process group), so a lost peer becomes an error,
never a hang. This module is the transport of Pipe-BD's relays:

- :func:`send` / :func:`recv_into`: non-blocking point-to-point (the interpreter,
  :mod:`pipebd.runtime.interpreter`, posts receives ahead into preallocated buffers and bounds
  the sends in flight; buffer shapes come from the workload's shape probe, and ``drop_last``
  batches keep them fixed, as Pipe-BD's released code does);
- :func:`allreduce_sum_`: one flattened SUM all-reduce of a list of gradients in a group, staged
  in one persistent buffer per (device, dtype) (a fresh flat copy of a block's gradients each
  step would be a fresh allocation — above glibc's mmap threshold for a 59 MB llm-smol library,
  so page-faulted in and zeroed every step: 130 ms against 70 ms for the all-reduce alone);
- :func:`set_host_staging` / :func:`transport_device`: gloo transport of CUDA tensors via the host.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist

__all__ = ["backend_for", "threads_per_rank", "init_process_group", "dense", "wire", "send", "recv_into", "set_host_staging",
           "transport_device", "allreduce_sum_"]


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


def dense(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself if it is dense in its own memory format (contiguous or channels-last: a
    row slice of either is), else a contiguous copy — a channels-last activation travels as is."""
    if tensor.is_contiguous() or (tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)):
        return tensor
    return tensor.contiguous()


def wire(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous *view* of a :func:`dense` tensor, as the transport wants it: the tensor itself,
    or a channels-last (N, C, H, W) one as its NHWC storage order ``permute(0, 2, 3, 1)`` — no copy,
    and sender and receiver (a buffer of the same shape and format) agree on the bytes."""
    if tensor.is_contiguous():
        return tensor
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1)
    raise ValueError(f"cannot send a tensor of strides {tensor.stride()} without a copy; pass it through dense()")


def send(tensor: torch.Tensor, dst: int, *, group=None, tag: int = 0) -> dist.Work:
    """Non-blocking send of ``tensor`` as :func:`dense` lays it out (the receiver's buffer has the
    same dtype and format); the caller keeps it alive and unmodified until the work completes."""
    return dist.isend(wire(dense(tensor)), dst, group=group, tag=tag)


def recv_into(buffer: torch.Tensor, src: int, *, group=None, tag: int = 0) -> dist.Work:
    """Non-blocking receive into a preallocated dense buffer (contiguous or channels-last: :func:`wire`)."""
    return dist.irecv(wire(buffer), src, group=group, tag=tag)


def allreduce_sum_(tensors: Sequence[torch.Tensor], *, group=None) -> None:
    """Sum ``tensors`` across ``group`` in place, as one flattened all-reduce.

    One contiguous tensor already where tensors travel is reduced in place; several are copied,
    in order, into the front of a persistent staging buffer (:func:`_staging`), reduced there and
    copied back — the same layout, so the same sums, as a fresh flat copy."""
    if not tensors:
        return
    where = transport_device(tensors[0].device)
    if len(tensors) == 1 and tensors[0].is_contiguous() and tensors[0].device == where:
        dist.all_reduce(tensors[0], op=dist.ReduceOp.SUM, group=group)
        return
    sizes = [t.numel() for t in tensors]
    flat = _staging(where, tensors[0].dtype, sum(sizes))
    parts = flat.split(sizes)
    for part, t in zip(parts, tensors):
        part.view_as(t).copy_(t)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    for part, t in zip(parts, tensors):
        t.copy_(part.view_as(t))


_STAGING: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _staging(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """The first ``numel`` elements of this process's staging buffer for ``(device, dtype)``,
    grown to the largest request so far (a NAS block's gradients differ in size from step to
    step; the buffer is as large as the largest, never one per size)."""
    buf = _STAGING.get((device, dtype))
    if buf is None or buf.numel() < numel:
        _STAGING.pop((device, dtype), None)  # free the smaller one before allocating
        buf = _STAGING[(device, dtype)] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]

