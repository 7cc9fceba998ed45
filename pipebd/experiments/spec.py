"""The experiment spec: the schema of ``experiments/NAME.yaml`` as typed dataclasses (what a
profile and a workload are), the constants every part of :mod:`pipebd.experiments` shares, and the
typed reading of a parsed file (:func:`_build`: every key known, every value of its type).
Reading the files and the checks the types cannot make are :mod:`pipebd.experiments.load`.

Pipe-BD (Jang et al., DATE 2023) reports speedups of its strategies over the data-parallel
baseline (Fig. 6), per-rank time breakdowns, memory, batch-size sensitivity and scaling. Each of
those is an *experiment*: ``experiments/NAME.yaml`` says which workloads, strategies, device
counts, batch sizes, steps and repeats to measure, per *profile* of size (``cpu``, the
default, sized for a 2-core machine; ``paper``, the paper's sizes for GPU machines), which
analyses to derive from a cost profile, and which ``plots/*.py`` scripts turn the results into
figures. The schema (every key; unknown keys and wrong types are errors naming the file, the
key and what is allowed)::

    description: str                 # required: what the figure shows
    order: int                       # run_all order (default 100; ties by name)
    notes: str                       # free text (reductions, caveats)
    paper_reference: {WORKLOAD: {STRATEGY: float}}   # speedups over dp the paper reports
    plots:                           # figures made from the results (plots/SCRIPT.py)
      - script: speedup              #   plots/speedup.py
        output: speedup.png          #   written to PLOTS/<profile>/speedup.png
        inputs: [speedup]            #   experiments whose results dirs are read (default: this one)
        args: ["--paper"]            #   more arguments; {results} / {results:NAME} / {profile} expand
    profiles:                        # at least one; the shipped files have cpu and paper
      cpu:
        notes: str                   #   what this profile reduces, and why
        workloads:                   #   names (aliases allowed) or mappings:
          - nas-cifar10
          - {name: nas-imagenet, resolution: 64, width_mult: 1.0, num_classes: null,
             steps: 4, warmup: 8, batch_sizes: [32], label: "NAS / ImageNet (64 px)"}
        strategies: [dp, ls, tr, tr-dpu, ahd]   # interleaved, rotating order per repeat
        devices: [2]                 #   device counts measured
        batch_sizes: [32]            #   global batch sizes
        steps: 4                     #   measured steps per block
        warmup: 2                    #   untimed warm-up steps per block (NAS workloads: >= 8)
        repeats: 3
        options: {threads: 1, timeout: 120.0, trace: false, device_type: cpu, ...}  # RunConfig fields
        strategy_options: {ahd: {inflight: 2}}  # RunConfig fields for one strategy only
        costs: profile               #   profile (measure, cached) | estimate (FLOPs) | none
        profile_steps: 5             #   profiler trials / warm-up per configuration
        profile_warmup: 1
        simulate_devices: [1, 2, 4, 8, 16]   # write simulate.csv: every strategy predicted on these
        plan_devices: [1, 2, 4, 8, 16]       # write schedules.csv: the ahd plan for these
        epochs: [1, 2, 4, 8]         #   --epochs of every run (a grid dimension) and of simulate.csv
        teacher_epochs: 6            #   train each workload's teacher first (python -m pipebd teacher,
                                     #   real data: mnist5k) into the results dir; every run distils it
                                     #   (a workload's own teacher_weights: PATH is used as given)
"""

from __future__ import annotations

import dataclasses
import os
import types
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints


#: The repository root (this file is pipebd/experiments/spec.py).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS_DIR = os.path.join(ROOT, "experiments")
PLOTS_SCRIPTS_DIR = os.path.join(ROOT, "plots")
#: The profiles of size every shipped experiment defines; ``cpu`` is the default.
PROFILES = ("cpu", "paper")
#: Profiles only some experiments define (``quick``: a first look in <= 5 minutes on 2 cores);
#: ``run_all`` skips, with a note, the experiments that lack the profile asked for.
OPTIONAL_PROFILES = ("quick",)
DEFAULT_PROFILE = "cpu"
#: Rounds of re-runs a noisy cell (repeats differing by more than derived.NOISE_THRESHOLD) gets.
DEFAULT_MAX_RERUNS = 2
#: Warm-up steps a NAS workload needs so every candidate op of every cell has run before timing.
MIN_NAS_WARMUP = 8
COSTS = ("profile", "estimate", "none")
#: RunConfig fields the experiment grid sets itself (not allowed under ``options``).
GRID_FIELDS = frozenset({"workload", "strategy", "devices", "batch_size", "steps", "warmup", "resolution",
                         "width_mult", "num_classes", "seq_len", "layers_per_block", "candidates", "teacher_weights", "out", "tag", "quiet", "profile", "save_weights",
                         "block_shards", "inject_fault", "resume", "ideal_seconds_per_sample", "extra"})


class ExperimentError(ValueError):
    """An experiment file is invalid, or an experiment cannot run as asked; the message says where."""


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload of a profile, with the overrides that size it."""

    name: str
    label: str | None = None
    resolution: int | None = None
    width_mult: float = 1.0
    num_classes: int | None = None
    steps: int | None = None  # default: the profile's
    warmup: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    # decoder workloads (pipebd.zoo.llm)
    seq_len: int | None = None
    layers_per_block: int = 1
    candidates: str | None = None
    # a teacher state_dict (--teacher-weights); with the profile's teacher_epochs, the one trained
    # for the experiment (not part of the key: the same runs, whichever file holds the teacher)
    teacher_weights: str | None = None

    @property
    def key(self) -> str:
        res = "default" if self.resolution is None else str(self.resolution)
        cls = "" if self.num_classes is None else f"-c{self.num_classes}"
        llm = "" if self.seq_len is None else f"-s{self.seq_len}"
        llm += "" if self.layers_per_block == 1 else f"-k{self.layers_per_block}"
        llm += "" if self.candidates is None else "-" + "".join(c if c.isalnum() or c in ".-" else "_"
                                                                for c in self.candidates)
        return f"{self.name}-r{res}-w{self.width_mult:g}{cls}{llm}"

    def run_fields(self) -> dict:
        """The RunConfig fields this spec sets (the grid's sizes of the workload)."""
        return dict(workload=self.name, resolution=self.resolution, width_mult=self.width_mult,
                    num_classes=self.num_classes, seq_len=self.seq_len, layers_per_block=self.layers_per_block,
                    candidates=self.candidates, teacher_weights=self.teacher_weights)

    def options(self):
        """The zoo's options of this spec's sizes."""
        from ..zoo import WorkloadOptions

        fields = self.run_fields()
        fields.pop("workload")
        return WorkloadOptions(**fields)


@dataclass(frozen=True)
class PlotSpec:
    """``python plots/SCRIPT.py INPUT_DIRS... -o PLOTS/<profile>/OUTPUT ARGS...``"""

    script: str
    output: str
    inputs: tuple[str, ...] = ()  # experiment names; () = this experiment
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProfileSpec:
    """What one profile of an experiment measures and derives."""

    workloads: tuple[WorkloadSpec, ...]
    strategies: tuple[str, ...] = ()
    devices: tuple[int, ...] = (2,)
    batch_sizes: tuple[int, ...] = (32,)
    steps: int = 4
    warmup: int = 2
    repeats: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    costs: str = "profile"
    profile_steps: int = 5
    profile_warmup: int = 1
    simulate_devices: tuple[int, ...] = ()
    plan_devices: tuple[int, ...] = ()
    epochs: tuple[int, ...] = (1,)  # --epochs of the runs (and simulations): cache pays its teacher pass once in E
    teacher_epochs: int = 0  # > 0: train each workload's teacher first (python -m pipebd teacher) and distil from it
    notes: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str
    path: str
    description: str
    profiles: dict[str, ProfileSpec]
    plots: tuple[PlotSpec, ...] = ()
    paper_reference: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: str = ""
    order: int = 100

    def profile(self, name: str) -> ProfileSpec:
        if name not in self.profiles:
            raise ExperimentError(f"{self.path}: experiment {self.name!r} has no profile {name!r}; it has: "
                                  f"{', '.join(self.profiles)}")
        return self.profiles[name]


# ---- typed loading ------------------------------------------------------------------------------------------------

def _type_name(tp) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if tp is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, where: str):
    """``value`` checked against the type hint ``tp`` (lists become tuples); ExperimentError otherwise."""
    origin, args = get_origin(tp), get_args(tp)

    def bad():
        return ExperimentError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ExperimentError:
                continue
        raise bad()
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad()
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        inner = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise bad()
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad()
        if tp is dict:
            return dict(value)
        return {_coerce(k, args[0], f"{where} (key)"): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    raise TypeError(f"unsupported type hint {tp!r} at {where}")


def _build(cls, data, where: str, **fixed):
    """An instance of dataclass ``cls`` from mapping ``data``: every key known, every value typed."""
    if not isinstance(data, dict):
        raise ExperimentError(f"{where}: expected a mapping with keys {_keys(cls, fixed)}, got "
                              f"{type(data).__name__} {data!r}")
    hints = get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    for k in data:
        if k not in allowed:
            raise ExperimentError(f"{where}: unknown key {k!r}; allowed keys: {', '.join(allowed)}")
    kw = dict(fixed)
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ExperimentError(f"{where}: missing required key {f.name!r} ({_type_name(hints[f.name])})")
            continue
        kw[f.name] = _coerce(data[f.name], hints[f.name], f"{where}.{f.name}" if where else f.name)
    return cls(**kw)


def _keys(cls, fixed) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls) if f.name not in fixed)
