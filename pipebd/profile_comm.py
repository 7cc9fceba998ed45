"""What a profiling rank measures of communication (a mixin of :class:`pipebd.profile_measure.RankProfiler`).

- relay: half the round trip of a real ``send``/``recv`` ping-pong of the activation entering
  each block, for each candidate batch, on rank pairs (0,1), (2,3), … simultaneously; again in
  bf16 (``mode`` ``bf16``: half the bytes) when a bf16 teacher is a candidate;
- all-reduce of each block's student gradients (the gradient bytes one step produces, in as many
  tensors, so the run's copy into and out of the flat staging buffer is timed too) over groups
  ``{0..g-1}`` made with ``dist.new_group``, for ``g = 2..N``;
- a barrier over all ranks.

With one rank there is nothing to send: relay, all-reduce (``g = 2..G``) and barrier rows are
*modelled* instead — ``latency + bytes / bandwidth`` point to point, the ring all-reduce
``2(g-1)·latency + 2(g-1)/g · bytes / bandwidth``, ``latency · log2 g`` — with the device
constants of :data:`pipebd.costmodel.ESTIMATE_SPECS`, and their ``note`` column says so.
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.distributed as dist

from .comm import allreduce_sum_, transport_device
from .costmodel import ESTIMATE_SPECS

__all__ = ["CommMeasurements"]


class CommMeasurements:
    """Relay, all-reduce and barrier timings; uses the profiler's ``_row``, ``_boundary``,
    ``_wall`` and its ``rank``, ``world``, ``n``, ``batches``, ``groups``, ``act_bytes``,
    ``grad_bytes``, ``grad_tensors``, ``wl``, ``device``, ``cfg`` and ``opts``."""

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
                if any(m.bf16 for m in self.teacher_modes):
                    self._row("relay", block=k, batch=b, seconds=lat + nbytes / 2 / p2p, bytes=nbytes // 2,
                              mode="bf16", note=f"modelled: {lat:g} s + bytes / {p2p:g} B/s {why}")
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
        dtypes = [("", torch.float32)] + ([("bf16", torch.bfloat16)] if any(m.bf16 for m in self.teacher_modes) else [])
        for (label, dtype), k, b in ((d, k, b) for d in dtypes for k in range(1, self.n) for b in self.batches):
            shape = self.wl.boundary_shapes[k]
            self._boundary()
            if self.world < 2 or not paired:
                continue
            buf = torch.zeros((b, *shape), dtype=dtype, device=transport_device(self.device))

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
                          bytes=buf.numel() * buf.element_size(), **({"mode": label} if label else {}))

    def _allreduce(self, groups: dict) -> None:
        sizes = [self.grad_bytes, self.grad_tensors]
        dist.broadcast_object_list(sizes, src=0)  # every rank reduces the same buffer sizes
        for i, (nbytes, count) in enumerate(zip(*sizes)):
            numel = max(1, int(nbytes) // 4)
            for g in range(2, self.world + 1):
                self._boundary()
                if self.rank >= g:
                    continue
                # the block's gradients as its step leaves them: `count` tensors, reduced as runs
                # reduce them (one flat staged all-reduce; through the host if sharing GPUs)
                grads = list(torch.ones(numel, device=self.device).tensor_split(min(count, numel)))
                allreduce_sum_(grads, group=groups[g])
                times = [self._wall(lambda: allreduce_sum_(grads, group=groups[g]))
                         for _ in range(self.opts.comm_trials)]
                self._row("allreduce", block=i, group=g, seconds=statistics.median(times), bytes=numel * 4)

    def _barrier(self) -> None:
        if self.world < 2:
            return
        self._boundary()
        times = [self._wall(dist.barrier) for _ in range(self.opts.comm_trials)]
        self._row("barrier", group=self.world, seconds=statistics.median(times))
