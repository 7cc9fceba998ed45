"""Preflight: the one validator of a run configuration, run before any process is spawned.

:func:`validate` checks everything that can be checked without starting a process (workload,
strategy, data source, devices, batch splits, learning rate, the workload's block shapes at the
resolution by a shape probe on the meta device, the strategy's own layout options, CUDA
availability, teacher weights, fault injection, checkpoints, output directories) and raises
:class:`~pipebd.errors.ConfigError` with a message a user can act on. It is the only checker
that imports the strategies and the workloads; :mod:`pipebd.config` stays below them.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from .checkpoint import check_resumable
from .config import RunConfig
from .data import validate_data_config
from .data_mnist import MNIST_SHAPE
from .distill import OPTIMIZERS
from .errors import ConfigError, DataError, WorkloadError
from .faults import parse_fault
from .options import data_config, meta_workload, workload_num_blocks, workload_options, workload_sizes
from .strategies import get_strategy, import_plugins
from .zoo import build_workload, canonical_name, registry

__all__ = ["validate", "DEVICE_TYPES"]

DEVICE_TYPES = ("cpu", "cuda")


def validate(cfg: RunConfig) -> None:
    """Check ``cfg`` completely, without starting any process; raise :class:`ConfigError`."""
    try:
        canonical_name(cfg.workload)
    except WorkloadError as e:
        raise ConfigError(str(e)) from None
    import_plugins(cfg.plugins)
    strategy = get_strategy(cfg.strategy)  # raises ConfigError listing the strategies
    if cfg.devices < 1:
        raise ConfigError(f"--devices must be >= 1 (one rank per device), got {cfg.devices}; use --devices 1 or more")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.steps < 1:
        raise ConfigError(f"--steps must be >= 1 (measured steps per block), got {cfg.steps}")
    if cfg.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {cfg.warmup}")
    if cfg.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {cfg.timeout}")
    if cfg.inflight < 1:
        raise ConfigError(f"--inflight must be >= 1, got {cfg.inflight}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {cfg.optimizer!r} is not known; use one of: {', '.join(OPTIMIZERS)}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"--lr must be a positive number (the peak of the cosine schedule), got {cfg.lr}; "
                          f"e.g. --lr {RunConfig.lr} (the default)")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ConfigError(f"--weight-decay must be >= 0, got {cfg.weight_decay}; e.g. --weight-decay "
                          f"{RunConfig.weight_decay} (the default) or 0 for none")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {cfg.threads}")
    if cfg.device_type not in DEVICE_TYPES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICE_TYPES)}, got {cfg.device_type!r}")
    if cfg.device_type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but CUDA is not available here; use --device cpu")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.devices))
        if torch.cuda.device_count() < local and not cfg.share_gpus:
            raise ConfigError(
                f"--device cuda with {local} ranks on this host needs {local} GPUs, found "
                f"{torch.cuda.device_count()}; lower --devices, or pass --share-gpus to let ranks share GPUs "
                "(gloo transport staged through host memory)"
            )
    if cfg.teacher_weights == "smollm2":  # the named offline teacher (pipebd.smollm2), not a file
        from . import smollm2

        if not smollm2.available():
            raise ConfigError(f"--teacher-weights smollm2: {smollm2.MISSING} ({smollm2.problem()})")
        why = smollm2.wrong_workload(canonical_name(cfg.workload))
        if why:
            raise ConfigError(why)
    elif cfg.teacher_weights is not None and not os.path.isfile(cfg.teacher_weights):
        raise ConfigError(f"--teacher-weights {cfg.teacher_weights!r} does not exist; pass the path of a file saved "
                          "with torch.save(teacher.state_dict(), PATH), or omit it for a random teacher")
    if cfg.data == "synthetic" and cfg.data_size is not None and cfg.data_size < cfg.batch_size:
        raise ConfigError(f"--data-size {cfg.data_size} is smaller than one batch (--batch-size {cfg.batch_size}): "
                          "every step trains on a full batch; pass --data-size "
                          f"{cfg.batch_size} or more, or --batch-size {cfg.data_size} or less")
    parse_fault(cfg.inject_fault, cfg.devices)
    try:
        _check_shapes(cfg)
        _check_data_shape(cfg)
        num_blocks = workload_num_blocks(cfg)
    except WorkloadError as e:
        raise ConfigError(str(e)) from None
    try:  # after the workload's own checks: the data must suit what it is (images or tokens)
        validate_data_config(data_config(cfg, meta_workload(cfg)))
    except DataError as e:
        raise ConfigError(str(e)) from None
    from .planner import modes_for

    # after the workload's own checks: bad pins (or channels-last without convolutions) stop here
    modes = modes_for(cfg)
    if cfg.device_type == "cuda" and modes.lossy and not torch.cuda.is_bf16_supported():
        raise ConfigError("bf16 compute asked for (or chosen), but this GPU does not support bf16; use --precision fp32")
    strategy.validate(cfg, num_blocks)
    _check_teacher_weights(cfg)
    _check_writable(cfg.out, "--out", "output directory")
    if cfg.save_weights is not None:
        _check_writable(os.path.dirname(os.path.abspath(cfg.save_weights)), "save_weights", "weights file directory")
    _check_checkpointing(cfg)


def _check_teacher_weights(cfg: RunConfig) -> None:
    """Load ``--teacher-weights`` into the full teacher built on the meta device (no memory, no
    compute): a missing file, a non-state-dict or mismatched keys/shapes fail here, before spawn."""
    if cfg.teacher_weights is None or cfg.teacher_weights == "smollm2":
        return  # the named teacher is checked above; each rank loads it with a strict key match
    opts = workload_options(cfg)
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op": intended
            build_workload(cfg.workload, opts, probe=False)
    except WorkloadError as e:
        raise ConfigError(str(e)) from None


def _check_checkpointing(cfg: RunConfig) -> None:
    if cfg.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0 (0: never save), got {cfg.checkpoint_every}")
    if cfg.checkpoint_dir is None:
        if cfg.checkpoint_every > 0 or cfg.resume:
            flag = "--resume" if cfg.resume else f"--checkpoint-every {cfg.checkpoint_every}"
            raise ConfigError(f"{flag} needs --checkpoint-dir DIR (where checkpoints are saved and resumed from)")
        return
    if cfg.checkpoint_every == 0 and not cfg.resume:
        raise ConfigError(f"--checkpoint-dir {cfg.checkpoint_dir!r} given but --checkpoint-every is 0, so nothing "
                          "would be saved; pass --checkpoint-every K (save every K steps) or --resume")
    _check_writable(cfg.checkpoint_dir, "--checkpoint-dir", "checkpoint directory")
    check_resumable(cfg)


def _check_writable(out: str, flag: str = "--out", what: str = "output directory") -> None:
    path = os.path.abspath(out)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ConfigError(f"{what} {out!r} ({flag}) cannot be created: {probe!r} exists and is not a directory; "
                          f"pass {flag} with a path under a writable directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {out!r} ({flag}) is not writable (checked {probe!r}); "
                          f"pass {flag} with a path under a writable directory")


_PROBE_RESOLUTIONS = tuple(2**k for k in range(3, 11))  # 8 … 1024 pixels


def _probe_error(cfg: RunConfig, resolution: int | None) -> str | None:
    """Push a batch through every block of the workload on the meta device (shapes only, no
    memory, no compute; :func:`pipebd.zoo.registry.meta_shapes`, cached); the probe's message
    when the shapes do not chain, else ``None``. A bad option raises, it is not a shape."""
    try:
        registry.meta_shapes(cfg.workload, workload_sizes(cfg.replace(resolution=resolution)))
        return None
    except registry.ShapeError as e:
        return str(e)


def _check_data_shape(cfg: RunConfig) -> None:
    """A dataset of one fixed image shape (mnist5k: 1x28x28) needs a workload that takes it."""
    if cfg.data != "mnist5k":
        return
    shape = tuple(registry.meta_shapes(cfg.workload, workload_sizes(cfg))[0])
    if shape != MNIST_SHAPE:
        raise ConfigError(f"--data mnist5k gives {'x'.join(map(str, MNIST_SHAPE))} digits but workload "
                          f"{canonical_name(cfg.workload)} takes {'x'.join(map(str, shape))} inputs; use "
                          "-w compress-mnist or -w nas-mnist (at their default --resolution 28), or --data synthetic")


def _check_shapes(cfg: RunConfig) -> None:
    """Refuse a resolution the workload's blocks cannot take (e.g. pooled away before the last
    block), naming the smallest power-of-two resolution that works."""
    error = _probe_error(cfg, cfg.resolution)
    if error is None:
        return
    name = canonical_name(cfg.workload)
    at = f"--resolution {cfg.resolution}" if cfg.resolution is not None else "its default resolution"
    ok = next((r for r in _PROBE_RESOLUTIONS if _probe_error(cfg, r) is None), None)
    if ok is None:
        raise ConfigError(f"workload {name} cannot run at {at} (width {cfg.width_mult:g}): {error}; no resolution "
                          f"from {_PROBE_RESOLUTIONS[0]} to {_PROBE_RESOLUTIONS[-1]} works either, so try another "
                          "--width-mult or --num-classes")
    if cfg.resolution is not None and cfg.resolution > ok:  # not too small: an awkward size (e.g. odd)
        near = next((r for r in _PROBE_RESOLUTIONS if r >= cfg.resolution and _probe_error(cfg, r) is None), ok)
        raise ConfigError(f"{at} does not fit workload {name}: {error}; --resolution {near} works "
                          f"(the smallest power of two that does is {ok})")
    raise ConfigError(f"{at} is too small for workload {name}: {error}; the smallest power of two that works is "
                      f"{ok}: pass --resolution {ok} (or larger)")
