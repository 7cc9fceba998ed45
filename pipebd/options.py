"""What a :class:`~pipebd.config.RunConfig` asks of the layers above it: the zoo's
:class:`~pipebd.zoo.WorkloadOptions`, the workload's block count and the data layer's
:class:`~pipebd.data.DataConfig`.

It sits just above config (it imports only config, zoo and data), so the planner, the
profiler, the runner and :mod:`pipebd.preflight` share one reading of the run options, and
config itself imports nothing of ours but :mod:`pipebd.errors`.
"""

from __future__ import annotations

import torch

from .config import RunConfig
from .data import DataConfig
from .data_tokens import tokenizer_for
from .zoo import Workload, WorkloadOptions, build_workload

__all__ = ["workload_options", "workload_sizes", "workload_num_blocks", "workload_is_conv", "data_config",
           "meta_workload"]

_SHAPES: dict[tuple, tuple[int, bool]] = {}  # (workload, sizes) -> (blocks, has convolutions)
_META: dict[tuple, Workload] = {}  # (workload, sizes) -> the workload built on the meta device


def workload_options(cfg: RunConfig) -> WorkloadOptions:
    """The zoo options of ``cfg``'s workload."""
    return WorkloadOptions(resolution=cfg.resolution, width_mult=cfg.width_mult, num_classes=cfg.num_classes,
                           teacher_weights=cfg.teacher_weights, seed=cfg.seed, student_bn=cfg.student_bn,
                           nas_zero=cfg.nas_zero, seq_len=cfg.seq_len, layers_per_block=cfg.layers_per_block,
                           candidates=cfg.candidates, logits_kd=cfg.logits_kd)


def workload_sizes(cfg: RunConfig) -> WorkloadOptions:
    """The options of ``cfg``'s workload that shape it (no weights, no seed): the key of facts
    counted on the meta device (:func:`pipebd.costs.block_facts`, :func:`workload_facts`)."""
    return workload_options(cfg).sizes()


def meta_workload(cfg: RunConfig) -> Workload:
    """``cfg``'s workload built once on the meta device (shapes, no memory; cached): what the
    checks before spawning read (its blocks, its input, its data)."""
    key = (cfg.workload, workload_sizes(cfg))
    if key not in _META:
        with torch.device("meta"):
            _META[key] = build_workload(cfg.workload, workload_sizes(cfg), probe=False)
    return _META[key]


def _meta_facts(cfg: RunConfig) -> tuple[int, bool]:
    """(blocks, has convolutions) of ``cfg``'s workload (:func:`meta_workload`; cached)."""
    key = (cfg.workload, workload_sizes(cfg))
    if key not in _SHAPES:
        wl = meta_workload(cfg)
        conv = any(isinstance(m, torch.nn.Conv2d) for b in wl.teacher + wl.student for m in b.modules())
        _SHAPES[key] = (wl.num_blocks, conv)
    return _SHAPES[key]


def workload_num_blocks(cfg: RunConfig) -> int:
    """Number of blocks of ``cfg``'s workload."""
    return _meta_facts(cfg)[0]


def workload_is_conv(cfg: RunConfig) -> bool:
    """Whether ``cfg``'s workload has convolutions (4-D activations: channels-last can apply)."""
    return _meta_facts(cfg)[1]


def data_config(cfg: RunConfig, workload: Workload | None = None) -> DataConfig:
    """The data configuration of ``cfg`` (resolution, channels and classes follow the workload when built)."""
    stands_in = "cifar10" if workload is None else workload.default_dataset
    if stands_in == "synthetic":
        stands_in = "cifar10"
    res = workload.input_shape[-1] if workload is not None else (cfg.resolution or 32)
    images = workload is not None and workload.tokens_per_sample is None and len(workload.input_shape) == 3
    channels = workload.input_shape[0] if images else 3
    classes = workload.num_classes if workload is not None else (cfg.num_classes or 10)
    seq = workload.tokens_per_sample if workload is not None else None
    return DataConfig(source=cfg.data, root=cfg.data_root, resolution=res, channels=channels, num_classes=classes,
                      size=cfg.data_size, stands_in_for=stands_in, augment=cfg.augment, seed=cfg.seed,
                      device=cfg.device_type, seq_len=seq,
                      tokenizer=tokenizer_for(cfg.teacher_weights))
