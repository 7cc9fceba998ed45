"""The all-reduce of a block's gradients (:func:`pipebd.comm.allreduce_sum_`) on a one-rank gloo
group in this process: every tensor comes back exactly, whatever its layout, and the flat
staging buffer is one per (device, dtype), grown to the largest request, not one per step.
The sums across ranks are checked by the integration verify of every data-parallel strategy."""

from __future__ import annotations

import torch
import torch.distributed as dist

from pipebd import comm


def test_gradients_come_back_exactly_through_one_reused_staging_buffer():
    comm.init_process_group(backend="gloo", rank=0, world_size=1, timeout_s=60, store=dist.HashStore())
    try:
        comm._STAGING.clear()
        g = torch.Generator().manual_seed(0)
        conv = torch.randn(4, 3, 3, 3, generator=g).to(memory_format=torch.channels_last)  # not contiguous
        grads = [torch.randn(5, 7, generator=g), conv, torch.randn(11, generator=g)]
        before = [t.clone() for t in grads]
        comm.allreduce_sum_(grads)
        assert all(torch.equal(a, b) for a, b in zip(grads, before))
        assert grads[1].is_contiguous(memory_format=torch.channels_last)  # reduced in place, layout kept
        buf = comm._STAGING[(torch.device("cpu"), torch.float32)]
        assert buf.numel() == 35 + 108 + 11
        comm.allreduce_sum_(grads[:2])  # smaller: the same buffer's front
        assert comm._STAGING[(torch.device("cpu"), torch.float32)].data_ptr() == buf.data_ptr()
        comm.allreduce_sum_(grads + [torch.ones(100)])  # larger: grown, still one buffer
        assert list(comm._STAGING) == [(torch.device("cpu"), torch.float32)]
        assert comm._STAGING[(torch.device("cpu"), torch.float32)].numel() == 254
        single = torch.arange(6.0)
        comm.allreduce_sum_([single])  # one contiguous tensor: reduced where it is, no staging
        assert torch.equal(single, torch.arange(6.0))
    finally:
        dist.destroy_process_group()
        comm._STAGING.clear()
