"""Run configuration: one dataclass that every part of a run reads, validated before spawn.

:class:`RunConfig` holds what the CLI, an experiment file or a test asks for. :func:`validate`
checks everything that can be checked without starting a process (workload, strategy, data
source, devices, batch splits, learning rate, the workload's block shapes at the resolution by a
shape probe on the meta device, the strategy's own layout options, CUDA availability, output
directory) and raises :class:`ConfigError` with a message a user can act on.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

__all__ = ["RunConfig", "ConfigError", "validate"]

DEVICE_TYPES = ("cpu", "cuda")


class ConfigError(ValueError):
    """The run configuration is invalid; the message says what, the allowed values and a fix."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs. Strategy-specific layout options are plain strings here and
    parsed by the strategy's own ``validate`` (so the runner knows no strategy internals)."""

    workload: str = "tiny"
    strategy: str = "sequential"
    devices: int = 1
    batch_size: int = 32
    steps: int = 10  # measured steps per block
    warmup: int = 2  # trained but untimed steps per block, before the measured ones
    seed: int = 0
    device_type: str = "cpu"
    # workload options
    resolution: int | None = None
    width_mult: float = 1.0
    num_classes: int | None = None
    teacher_weights: str | None = None
    student_bn: bool = True
    # NAS search space: a Zero (skip) choice on every cell but the first of each stage, as the paper
    nas_zero: bool = True
    # data
    data: str = "synthetic"
    data_root: str | None = None
    data_size: int | None = None
    augment: bool = False
    # optimisation
    lr: float = 0.05
    weight_decay: float = 4e-5
    # strategy layout options
    shards: int = 1  # sequential: ghost shards
    block_shards: tuple[tuple[int, ...], ...] | None = None  # sequential: shard sizes per block (verify)
    stages: str | None = None  # tr / tr-dpu: "0-1,2-3"
    ls_map: str | None = None  # ls: "0:1:2,3:4,5"
    plan: str | None = None  # ahd
    inflight: int = 2  # tr-dpu / ahd: batches in flight per link
    profile: str | None = None  # a profile CSV reused by planners
    memory_limit: float | None = None  # bytes per device the planner may use (None: cuda total - margin, cpu unlimited)
    # run control
    threads: int | None = None  # threads per rank; default cores // ranks
    share_gpus: bool = False  # cuda: more ranks than GPUs, host-staged gloo transport
    timeout: float = 60.0  # seconds any collective / p2p op may wait
    out: str = "results"
    tag: str = ""  # free text recorded in runs.csv (experiment name etc.)
    quiet: bool = False
    trace: bool = True  # write events.csv + trace.json
    save_weights: str | None = None  # path: rank 0 saves the final student weights (verify)
    plugins: tuple[str, ...] = ()  # modules imported in every rank (register extra strategies)
    inject_fault: str | None = None  # RANK:STEP:raise|kill|hang (testing aid)
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    # DESIGN.md §4's ideal, seconds per trained sample (the cost model's); the run record carries
    # ideal_epoch_time_s = this x epoch samples, and the efficiency (None: not known)
    ideal_seconds_per_sample: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        """Training steps per block (warm-up + measured); the cosine schedule spans these."""
        return self.warmup + self.steps

    def replace(self, **kw) -> "RunConfig":
        return dataclasses.replace(self, **kw)


def validate(cfg: RunConfig) -> None:
    """Check ``cfg`` completely, without starting any process; raise :class:`ConfigError`."""
    from . import data as data_mod
    from .executors import get_strategy, import_plugins
    from .zoo import WorkloadError, canonical_name

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
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but CUDA is not available here; use --device cpu")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.devices))
        if torch.cuda.device_count() < local and not cfg.share_gpus:
            raise ConfigError(
                f"--device cuda with {local} ranks on this host needs {local} GPUs, found "
                f"{torch.cuda.device_count()}; lower --devices, or pass --share-gpus to let ranks share GPUs "
                "(gloo transport staged through host memory)"
            )
    if cfg.teacher_weights is not None and not os.path.isfile(cfg.teacher_weights):
        raise ConfigError(f"--teacher-weights {cfg.teacher_weights!r} does not exist; pass the path of a file saved "
                          "with torch.save(teacher.state_dict(), PATH), or omit it for a random teacher")
    try:
        data_mod.validate_data_config(data_config(cfg))
    except data_mod.DataError as e:
        raise ConfigError(str(e)) from None
    if cfg.data == "synthetic" and cfg.data_size is not None and cfg.data_size < cfg.batch_size:
        raise ConfigError(f"--data-size {cfg.data_size} is smaller than one batch (--batch-size {cfg.batch_size}): "
                          "every step trains on a full batch; pass --data-size "
                          f"{cfg.batch_size} or more, or --batch-size {cfg.data_size} or less")
    from .faults import parse_fault

    parse_fault(cfg.inject_fault, cfg.devices)
    try:
        _check_shapes(cfg)
        num_blocks = workload_num_blocks(cfg)
    except WorkloadError as e:
        raise ConfigError(str(e)) from None
    strategy.validate(cfg, num_blocks)
    _check_teacher_weights(cfg)
    _check_writable(cfg.out, "--out", "output directory")
    if cfg.save_weights is not None:
        _check_writable(os.path.dirname(os.path.abspath(cfg.save_weights)), "save_weights", "weights file directory")
    _check_checkpointing(cfg)


def _check_teacher_weights(cfg: RunConfig) -> None:
    """Load ``--teacher-weights`` into the full teacher built on the meta device (no memory, no
    compute): a missing file, a non-state-dict or mismatched keys/shapes fail here, before spawn."""
    if cfg.teacher_weights is None:
        return
    import warnings

    import torch

    from .zoo import WorkloadError, build_workload

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
    from .checkpoint import check_resumable

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


_BLOCK_COUNTS: dict[tuple, int] = {}
_SHAPE_ERRORS: dict[tuple, str | None] = {}
_PROBE_RESOLUTIONS = tuple(2**k for k in range(3, 11))  # 8 … 1024 pixels


def _probe_error(cfg: RunConfig, resolution: int | None) -> str | None:
    """Push a batch through every block of the workload on the meta device (shapes only, no
    memory, no compute); the probe's message when the shapes do not chain, else ``None``."""
    import torch

    from .zoo import WorkloadError, build_workload
    from .zoo.registry import probe_shapes

    key = (cfg.workload, resolution, cfg.width_mult, cfg.num_classes, cfg.student_bn)
    if key not in _SHAPE_ERRORS:
        opts = workload_options(cfg.replace(resolution=resolution, teacher_weights=None))
        with torch.device("meta"):
            wl = build_workload(cfg.workload, opts, probe=False)  # a bad option raises here, not a shape
            try:
                probe_shapes(wl)
                _SHAPE_ERRORS[key] = None
            except WorkloadError as e:
                _SHAPE_ERRORS[key] = str(e)
        _BLOCK_COUNTS.setdefault(key[:4], wl.num_blocks)
    return _SHAPE_ERRORS[key]


def _check_shapes(cfg: RunConfig) -> None:
    """Refuse a resolution the workload's blocks cannot take (e.g. pooled away before the last
    block), naming the smallest power-of-two resolution that works."""
    error = _probe_error(cfg, cfg.resolution)
    if error is None:
        return
    from .zoo import canonical_name

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


def workload_num_blocks(cfg: RunConfig) -> int:
    """Number of blocks of ``cfg``'s workload (built once on the meta device, cached)."""
    from .zoo import WorkloadOptions, build_workload

    key = (cfg.workload, cfg.resolution, cfg.width_mult, cfg.num_classes)
    if key not in _BLOCK_COUNTS:
        import torch

        with torch.device("meta"):
            wl = build_workload(cfg.workload, WorkloadOptions(resolution=cfg.resolution, width_mult=cfg.width_mult,
                                                              num_classes=cfg.num_classes), probe=False)
        _BLOCK_COUNTS[key] = wl.num_blocks
    return _BLOCK_COUNTS[key]


def workload_options(cfg: RunConfig):
    from .zoo import WorkloadOptions

    return WorkloadOptions(resolution=cfg.resolution, width_mult=cfg.width_mult, num_classes=cfg.num_classes,
                           teacher_weights=cfg.teacher_weights, seed=cfg.seed, student_bn=cfg.student_bn,
                           nas_zero=cfg.nas_zero)


def data_config(cfg: RunConfig, workload=None):
    """The data configuration of ``cfg`` (resolution/classes follow the workload when built)."""
    from .data import DataConfig

    stands_in = "cifar10" if workload is None else workload.default_dataset
    if stands_in == "synthetic":
        stands_in = "cifar10"
    res = workload.input_shape[-1] if workload is not None else (cfg.resolution or 32)
    classes = workload.num_classes if workload is not None else (cfg.num_classes or 10)
    return DataConfig(source=cfg.data, root=cfg.data_root, resolution=res, num_classes=classes,
                      size=cfg.data_size, stands_in_for=stands_in, augment=cfg.augment, seed=cfg.seed,
                      device=cfg.device_type)
