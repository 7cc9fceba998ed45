"""Run configuration: one dataclass that every part of a run reads.

:class:`RunConfig` holds what the CLI, an experiment file or a test asks for. It is checked
before any process starts by :func:`pipebd.preflight.validate`, which raises
:class:`ConfigError` (re-exported here from :mod:`pipebd.errors`) with a message a user can act
on; :mod:`pipebd.options` turns it into the zoo's and the data layer's options. This module
imports nothing of ours but :mod:`pipebd.errors`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = ["RunConfig", "ConfigError"]


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
    # decoder (language-model) workloads (pipebd.zoo.llm)
    seq_len: int | None = None  # tokens per sample (workload default)
    layers_per_block: int = 1
    candidates: str | None = None  # the candidate library per block ("uniform", "uneven", names or ranges)
    logits_kd: bool = False  # distil the logits (KL) on the last block
    # data
    data: str = "synthetic"
    data_root: str | None = None
    data_size: int | None = None
    augment: bool = False
    # optimisation
    optimizer: str = "sgd"  # sgd (Nesterov momentum 0.9) | adam (pipebd.distill.OPTIMIZERS)
    lr: float = 0.05
    weight_decay: float = 4e-5
    # strategy layout options
    shards: int = 1  # sequential: ghost shards
    block_shards: tuple[tuple[int, ...], ...] | None = None  # sequential: shard sizes per block (verify)
    stages: str | None = None  # tr / tr-dpu: "0-1,2-3"
    ls_map: str | None = None  # ls: "0:1:2,3:4,5"
    plan: str | None = None  # ahd
    inflight: int = 2  # tr-dpu / ahd: batches in flight per link
    epochs: int = 1  # epochs the figures are for: what is paid once (the cache teacher pass) is amortised over them
    # cache: the teacher-activation store (pipebd.strategies.cache)
    cache_dir: str | None = None  # a directory for an on-disk store (None: host memory only)
    cache_memory: float | None = None  # bytes the store may take in host memory (None: half the free shared memory)
    cache_dtype: str = "auto"  # auto (each activation's own dtype: exact) | fp32 | bf16 | fp16 (lossy)
    cache_refresh: str = "auto"  # auto | epoch (rebuild every epoch) | never (reuse; refused with --augment)
    profile: str | None = None  # a profile CSV reused by planners
    # compute modes (pipebd.modes): pins, or auto (chosen per block from the profile's candidates)
    teacher_precision: str = "auto"  # fp32 | bf16 | auto
    student_precision: str = "auto"  # fp32 | bf16 | auto
    memory_format: str = "auto"  # contiguous | channels-last | auto
    modes: str | None = None  # every block's modes pinned, BlockModes text ("teacher=bf16-cl*5;student=...")
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
    save_students: bool = False  # rank 0 writes <out>/students/<run_id>.pt for `export` (pipebd.export)
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
