"""The rank side of a launch: which rank this process is under ``torchrun``, and joining the
process group (threads, device, backend, timeout) the same way for ``run`` and ``profile``.

Under ``torchrun`` (single or multi node) RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR come
from the environment and each process runs its rank directly; there is no launcher, so a hung
or dead rank surfaces as its peers' process-group timeout (``--timeout``) and torchrun's agent
stops the others.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..comm import backend_for, init_process_group, set_host_staging, threads_per_rank
from ..config import ConfigError, RunConfig
from .host_alloc import keep_host_memory

__all__ = ["under_torchrun", "torchrun_rank", "init_rank"]


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def torchrun_rank(devices: int) -> int:
    """This process's rank under torchrun, after checking torchrun started ``devices`` processes."""
    world = int(os.environ["WORLD_SIZE"])
    if world != devices:
        raise ConfigError(f"torchrun started {world} processes but --devices is {devices}; make them equal")
    return int(os.environ["RANK"])


def init_rank(cfg: RunConfig, rank: int, *, store: dist.Store | None, local_world_size: int | None = None) -> torch.device:
    """Join the process group as ``rank``: host allocator (:mod:`.host_alloc`), threads (cores ÷ local
    ranks), device, backend, timeout."""
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", cfg.devices))
    keep_host_memory()  # freed host tensors stay in the heap, not page-faulted back every step
    torch.set_num_threads(threads_per_rank(local_world, cfg.threads))
    if cfg.device_type == "cuda":
        # --share-gpus: more ranks than GPUs; ranks take GPUs round-robin and talk over gloo
        device = torch.device("cuda", local_rank % torch.cuda.device_count() if cfg.share_gpus else local_rank)
        torch.cuda.set_device(device)
        # fixed shapes (drop_last batches, fixed relay buffers): let cuDNN pick its fastest kernels —
        # except when weights are saved for `verify`, which compares bits across processes and
        # cuDNN's autotuner may pick a different algorithm in each
        torch.backends.cudnn.benchmark = not cfg.save_weights
        if "fp32" not in (cfg.teacher_precision, cfg.student_precision):
            # TF32 tensor cores for fp32 matmuls/convs unless fp32 was pinned (exact fp32 asked for)
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    set_host_staging(cfg.device_type == "cuda" and cfg.share_gpus)
    backend = backend_for(cfg.device_type, share_gpus=cfg.share_gpus)
    init_process_group(backend=backend, rank=rank, world_size=cfg.devices, timeout_s=cfg.timeout, store=store,
                       device=device if backend == "nccl" else None)
    return device
