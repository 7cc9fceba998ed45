"""Experiments: one YAML file per figure of the paper, loaded, validated and run (``run_all.sh``).

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

Running ``python -m pipebd experiment NAME [--profile P] [--force]`` measures, for every
(workload, batch size, device count), ``repeats`` rounds of all strategies, each round in a
rotated order (round ``r`` starts at strategy ``r mod k``), because on a shared machine the
noise is ±20–35 % and drifts: interleaving spreads the drift over every strategy and the plots
take medians. Every run goes through :func:`pipebd.runner.launch` with
``out=RESULTS/<profile>/<experiment>``, ``tag=<experiment>``; a run that fails (or a strategy
that is not registered) becomes a ``runs.csv`` row with ``status=failed`` and the error, and the
experiment goes on. With ``costs: profile`` each (workload, batch, devices) is profiled once
(:mod:`pipebd.profiler`, cached under ``RESULTS/<profile>/profiles/`` and shared by every
experiment of the profile) and the CSV is passed to every run as ``--profile`` (``ahd`` plans
from it); the ideal epoch time (:func:`pipebd.simulate.predict_all`, DESIGN.md §4) then fills
``ideal_epoch_time_s``/``efficiency`` of the ok runs. ``paper_reference.csv``,
``simulate.csv`` and ``schedules.csv`` are written beside ``runs.csv``.

Resume. ``units.csv`` is the experiment's journal: a ``started`` row (with the run id, passed
to the runner through ``PIPEBD_RUN_ID``) before each run and an ``ok``/``failed`` row after it.
A restarted experiment skips units that finished ``ok``, runs the failed ones again, deletes the
rows (runs, ranks, events, trace) of run ids that started but never finished, and runs the rest.
``experiment.json`` records the measurement settings; if they changed since the partial run, the
old directory is moved aside to ``NAME.stale-<time>`` and the experiment starts afresh. ``DONE``
is written atomically only when every run succeeded (otherwise the command exits 1 naming the
failed runs); a finished experiment is skipped unless ``--force``, which deletes its directory
and reruns it (``--force`` also re-measures each cached profile once per invocation).

Noise. After a configuration's repeats, a cell (strategy) whose epoch times differ by more than
25 % of their median is re-run, in rounds of ``dp`` and the noisy strategies (rotated), up to
``--max-reruns`` rounds (:mod:`pipebd.derived`); cells still noisy are named in ``DONE``. Each
run line shows the invocation's ETA; the end prints the speedup table with spreads beside
``results/reference/<profile>/`` and the paper's numbers. Profiles: ``cpu`` (default) and
``paper`` are in every shipped file; ``quick`` (a first look in a few minutes) only where defined.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import fcntl
import functools
import glob
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

from .config import RunConfig
from .metrics import atomic_write_text, file_mode

__all__ = [
    "ExperimentError", "WorkloadSpec", "PlotSpec", "ProfileSpec", "Experiment", "Unit", "UnitResult",
    "PROFILES", "DEFAULT_PROFILE", "MIN_NAS_WARMUP", "EXPERIMENTS_DIR", "load_experiment", "load_experiments",
    "validate_experiment", "plan_units", "rotated", "run_experiment", "run_unit", "make_plots", "group_costs",
    "profile_name", "ideal_seconds_per_sample", "ideal_key", "fill_ideal", "input_resolution", "workload_facts",
    "add_cli",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
                         "width_mult", "num_classes", "out", "tag", "quiet", "profile", "save_weights",
                         "block_shards", "inject_fault", "resume", "extra"})
UNIT_COLUMNS = ["unit", "run_id", "status", "time", "workload", "strategy", "devices", "batch_size", "repeat",
                "wall_s", "error"]
SIMULATE_COLUMNS = ["workload", "strategy", "devices", "batch_size", "steps", "epoch_samples", "epoch_time_s",
                    "throughput_sps", "step_time_s", "fill_s", "speedup_vs_dp", "efficiency", "layout", "note",
                    "extrapolated", "resolution", "width_mult", "costs", "profile_devices"]
SCHEDULE_COLUMNS = ["workload", "devices", "batch_size", "plan", "predicted_epoch_time_s", "dp_epoch_time_s",
                    "speedup_vs_dp", "tr_dpu_stages", "tr_dpu_epoch_time_s", "ideal_epoch_time_s", "efficiency",
                    "note", "resolution", "width_mult", "costs", "profile_devices"]


class ExperimentError(ValueError):
    """An experiment file is invalid, or an experiment cannot run as asked; the message says where."""


# ---- the schema ---------------------------------------------------------------------------------------------------

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

    @property
    def key(self) -> str:
        res = "default" if self.resolution is None else str(self.resolution)
        cls = "" if self.num_classes is None else f"-c{self.num_classes}"
        return f"{self.name}-r{res}-w{self.width_mult:g}{cls}"


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


def _normalise_workloads(profile: dict) -> dict:
    """Accept a bare name for a workload entry (``- nas-cifar10``)."""
    if isinstance(profile, dict) and isinstance(profile.get("workloads"), list):
        profile = dict(profile)
        profile["workloads"] = [{"name": w} if isinstance(w, str) else w for w in profile["workloads"]]
    return profile


def load_experiment(path: str, *, check: bool = True) -> Experiment:
    """Load and validate ``experiments/NAME.yaml``; raise :class:`ExperimentError` naming file and key."""
    import yaml

    name = os.path.splitext(os.path.basename(path))[0]
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ExperimentError(f"{path}: experiment names (file names) use a-z, 0-9, '-' and '_', got {name!r}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ExperimentError(f"experiment file {path!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ExperimentError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: the top level must be a mapping with keys "
                              f"{_keys(Experiment, {'name': 0, 'path': 0})}, got {type(data).__name__}")
    profiles = data.get("profiles")
    if isinstance(profiles, dict):
        data = dict(data, profiles={k: _normalise_workloads(v) for k, v in profiles.items()})
    exp = _build(Experiment, data, path, name=name, path=path)
    if check:
        validate_experiment(exp)
    return exp


def load_experiments(directory: str = EXPERIMENTS_DIR, *, check: bool = True) -> dict[str, Experiment]:
    """Every ``*.yaml`` of ``directory`` by name, in run order (``order``, then name)."""
    paths = sorted(glob.glob(os.path.join(directory, "*.yaml")))
    exps = [load_experiment(p, check=check) for p in paths]
    names = {e.name for e in exps}
    outputs: dict[tuple[str, str], str] = {}
    for e in exps:
        for p in e.plots:
            for i in p.inputs:
                if i not in names:
                    raise ExperimentError(f"{e.path}: plots: input {i!r} is not an experiment in {directory} "
                                          f"(have: {', '.join(sorted(names))})")
            for prof in e.profiles:
                other = outputs.setdefault((prof, p.output), e.name)
                if other != e.name:
                    raise ExperimentError(f"{e.path}: plot output {p.output!r} is also written by experiment {other!r}")
    return {e.name: e for e in sorted(exps, key=lambda e: (e.order, e.name))}


# ---- semantic checks ----------------------------------------------------------------------------------------------

_RUN_HINTS: dict | None = None


def _run_hints() -> dict:
    global _RUN_HINTS
    if _RUN_HINTS is None:
        _RUN_HINTS = get_type_hints(RunConfig)
    return _RUN_HINTS


def _check_options(options: dict, where: str) -> dict:
    hints = _run_hints()
    allowed = sorted(k for k in hints if k not in GRID_FIELDS)
    out = {}
    for k, v in options.items():
        if k in GRID_FIELDS:
            raise ExperimentError(f"{where}: {k!r} is set by the experiment grid, not an option; use the profile's "
                                  "workloads / strategies / devices / batch_sizes / steps / warmup keys")
        if k not in hints:
            raise ExperimentError(f"{where}: unknown option {k!r}; allowed options (RunConfig fields): "
                                  f"{', '.join(allowed)}")
        out[k] = _coerce(v, hints[k], f"{where}.{k}")
    return out


@functools.lru_cache(maxsize=64)
def workload_facts(name: str, resolution: int | None = None, width_mult: float = 1.0,
                   num_classes: int | None = None) -> tuple[bool, int, int]:
    """(is NAS, input resolution, epoch samples of the dataset it stands in for), from a meta build."""
    import torch

    from .data import EPOCH_SAMPLES
    from .zoo import WorkloadOptions, build_workload

    with torch.device("meta"):
        wl = build_workload(name, WorkloadOptions(resolution=resolution, width_mult=width_mult,
                                                  num_classes=num_classes), probe=False)
    return wl.is_nas, wl.input_shape[-1], EPOCH_SAMPLES.get(wl.default_dataset, EPOCH_SAMPLES["cifar10"])


def _facts(cfg: RunConfig) -> tuple[bool, int, int]:
    return workload_facts(cfg.workload, cfg.resolution, cfg.width_mult, cfg.num_classes)


def validate_experiment(exp: Experiment) -> None:
    """Check values the types cannot: known workloads, positive sizes, NAS warm-up, options, costs."""
    from .zoo import WorkloadError, canonical_name

    where = exp.path
    if not exp.profiles:
        raise ExperimentError(f"{where}: profiles: define at least one profile ({', '.join(PROFILES)})")
    for wl, ref in exp.paper_reference.items():
        try:
            canonical_name(wl)
        except WorkloadError as e:
            raise ExperimentError(f"{where}: paper_reference.{wl}: {e}") from None
    for p in exp.plots:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", p.script):
            raise ExperimentError(f"{where}: plots: script {p.script!r} must be a name under plots/ (no path, no .py)")
        if not p.output.endswith(".png") or "/" in p.output:
            raise ExperimentError(f"{where}: plots: output {p.output!r} must be a file name ending in .png")
    for pname, prof in exp.profiles.items():
        at = f"{where}: profiles.{pname}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", pname):
            raise ExperimentError(f"{at}: profile names use a-z, 0-9, '-' and '_'")
        if prof.costs not in COSTS:
            raise ExperimentError(f"{at}.costs: expected one of {', '.join(COSTS)}, got {prof.costs!r}")
        if (prof.simulate_devices or prof.plan_devices) and prof.costs == "none":
            raise ExperimentError(f"{at}: simulate_devices / plan_devices need costs: profile or estimate")
        if not prof.workloads and (prof.strategies or prof.costs != "none"):
            raise ExperimentError(f"{at}.workloads: list at least one workload (only an experiment that derives "
                                  "everything from others' results, with no strategies and costs: none, has none)")
        if not prof.devices:
            raise ExperimentError(f"{at}.devices: list at least one device count")
        for key in ("devices", "batch_sizes", "simulate_devices", "plan_devices"):
            for v in getattr(prof, key):
                if v < 1:
                    raise ExperimentError(f"{at}.{key}: every value must be >= 1, got {v}")
        for key, low in (("steps", 1), ("warmup", 0), ("repeats", 1), ("profile_steps", 1), ("profile_warmup", 0)):
            if getattr(prof, key) < low:
                raise ExperimentError(f"{at}.{key}: must be >= {low}, got {getattr(prof, key)}")
        if len(set(prof.strategies)) != len(prof.strategies):
            raise ExperimentError(f"{at}.strategies: {list(prof.strategies)} names a strategy twice")
        opts = _check_options(prof.options, f"{at}.options")
        dev_type = opts.get("device_type", "cpu")
        if dev_type not in ("cpu", "cuda"):
            raise ExperimentError(f"{at}.options.device_type: expected cpu or cuda, got {dev_type!r}")
        for s, o in prof.strategy_options.items():
            if s not in prof.strategies:
                raise ExperimentError(f"{at}.strategy_options: {s!r} is not one of this profile's strategies "
                                      f"({', '.join(prof.strategies) or 'none'})")
            _check_options(o, f"{at}.strategy_options.{s}")
        for i, w in enumerate(prof.workloads):
            wat = f"{at}.workloads[{i}]"
            try:
                canonical_name(w.name)
            except WorkloadError as e:
                raise ExperimentError(f"{wat}.name: {e}") from None
            if w.resolution is not None and w.resolution < 8:
                raise ExperimentError(f"{wat}.resolution: must be >= 8 pixels, got {w.resolution}")
            if w.width_mult <= 0:
                raise ExperimentError(f"{wat}.width_mult: must be > 0, got {w.width_mult}")
            steps = w.steps if w.steps is not None else prof.steps
            warmup = w.warmup if w.warmup is not None else prof.warmup
            if steps < 1 or warmup < 0:
                raise ExperimentError(f"{wat}: steps must be >= 1 and warmup >= 0, got {steps} and {warmup}")
            batches = w.batch_sizes if w.batch_sizes is not None else prof.batch_sizes
            if not batches:
                raise ExperimentError(f"{wat}: no batch sizes (set batch_sizes on the profile or the workload)")
            for b in batches:
                if b < max(prof.devices):
                    raise ExperimentError(f"{wat}: batch size {b} is smaller than {max(prof.devices)} devices; "
                                          "every device needs at least one row")
            if prof.strategies and warmup < MIN_NAS_WARMUP and workload_facts(w.name, w.resolution, w.width_mult,
                                                                               w.num_classes)[0]:
                raise ExperimentError(
                    f"{wat}: {w.name} is a NAS workload and needs warmup >= {MIN_NAS_WARMUP} (got {warmup}) so "
                    "every candidate op has run before timing; set warmup on the profile or the workload")


# ---- the grid -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One run of an experiment: a strategy on one (workload, batch, devices) in one repeat."""

    workload: WorkloadSpec
    strategy: str
    devices: int
    batch_size: int
    repeat: int
    steps: int
    warmup: int

    @property
    def key(self) -> str:
        return f"{self.workload.key}|b{self.batch_size}|n{self.devices}|r{self.repeat}|{self.strategy}"

    @property
    def group(self) -> tuple[str, int, int]:
        return (self.workload.key, self.batch_size, self.devices)


def rotated(items: typing.Sequence[str], k: int) -> list[str]:
    """``items`` starting at index ``k mod len``: repeat ``k``'s interleaving order."""
    if not items:
        return []
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def _groups(prof: ProfileSpec) -> list[tuple[WorkloadSpec, int, int]]:
    out = []
    for w in prof.workloads:
        for b in (w.batch_sizes if w.batch_sizes is not None else prof.batch_sizes):
            for n in prof.devices:
                out.append((w, b, n))
    return out


def plan_units(prof: ProfileSpec) -> list[Unit]:
    """Every run of the profile, in execution order: groups, then repeats, then rotated strategies."""
    units = []
    for w, b, n in _groups(prof):
        steps = w.steps if w.steps is not None else prof.steps
        warmup = w.warmup if w.warmup is not None else prof.warmup
        for r in range(prof.repeats):
            for s in rotated(prof.strategies, r):
                units.append(Unit(w, s, n, b, r, steps, warmup))
    return units


def unit_config(prof: ProfileSpec, unit: Unit, *, out: str, tag: str, profile_csv: str | None = None) -> RunConfig:
    w = unit.workload
    kw = dict(prof.options)
    kw.update(prof.strategy_options.get(unit.strategy, {}))
    return RunConfig(workload=w.name, strategy=unit.strategy, devices=unit.devices, batch_size=unit.batch_size,
                     steps=unit.steps, warmup=unit.warmup, resolution=w.resolution, width_mult=w.width_mult,
                     num_classes=w.num_classes, out=out, tag=tag, quiet=True, profile=profile_csv, **kw)


def _group_config(prof: ProfileSpec, w: WorkloadSpec, batch: int, devices: int) -> RunConfig:
    """The profile's configuration of one group: at least as many trials as the runs measure
    steps (they start at the runs' first measured step, so a supernet times the same paths)."""
    kw = {k: v for k, v in prof.options.items()}
    steps = w.steps if w.steps is not None else prof.steps
    return RunConfig(workload=w.name, strategy="sequential", devices=devices, batch_size=batch,
                     steps=max(prof.profile_steps, steps), warmup=prof.profile_warmup, resolution=w.resolution,
                     width_mult=w.width_mult, num_classes=w.num_classes, quiet=True, **kw)


# ---- CSV helpers ---------------------------------------------------------------------------------------------------

def _rewrite_csv(path: str, fn: Callable) -> None:
    """Replace the table at ``path`` by ``fn(table)``, under the lock :func:`pipebd.metrics.append_rows` takes."""
    import pandas as pd

    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            table = fn(pd.read_csv(path))
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".csv")
            with os.fdopen(fd, "w") as f:
                table.to_csv(f, index=False)
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_table(path: str, rows: list[dict], columns: list[str]) -> None:
    import pandas as pd

    df = pd.DataFrame(rows, columns=columns)
    atomic_write_text(path, df.to_csv(index=False))


def _read_csv(path: str):
    import pandas as pd

    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return pd.DataFrame()
    return pd.read_csv(path)


# ---- one run ------------------------------------------------------------------------------------------------------

@dataclass
class UnitResult:
    run_id: str
    status: str  # ok | failed
    row: dict
    wall_s: float
    error: str = ""


def run_unit(cfg: RunConfig, *, run_id: str | None = None) -> UnitResult:
    """Launch ``cfg`` under ``run_id``; a failure becomes a ``status=failed`` row of ``runs.csv`` (the
    runner writes it for failures after spawning; here for those before, e.g. an unknown strategy)."""
    from . import metrics
    from .runner import failed_row, launch, new_run_id

    run_id = run_id or new_run_id()
    old = os.environ.get("PIPEBD_RUN_ID")
    os.environ["PIPEBD_RUN_ID"] = run_id
    t0 = time.perf_counter()
    try:
        row = launch(cfg).row
        return UnitResult(run_id, "ok", row, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 — any failure of one run is recorded and the experiment goes on
        msg = " ".join(str(e).split()) or type(e).__name__
        path = os.path.join(cfg.out, "runs.csv")
        runs = _read_csv(path)
        if runs.empty or run_id not in set(runs["run_id"].astype(str)):
            row = failed_row(cfg.replace(workload=_canon_or_same(cfg.workload)), run_id, msg)
            with warnings.catch_warnings():  # pandas warns about the all-empty figure columns
                warnings.simplefilter("ignore", FutureWarning)
                metrics.append_rows(path, [row], metrics.RUN_COLUMNS)
        return UnitResult(run_id, "failed", {}, time.perf_counter() - t0, msg)
    finally:
        if old is None:
            os.environ.pop("PIPEBD_RUN_ID", None)
        else:
            os.environ["PIPEBD_RUN_ID"] = old


def _canon_or_same(name: str) -> str:
    try:
        return _canon(name)
    except ValueError:
        return name


# ---- costs: profile, ideal, simulation, plans ----------------------------------------------------------------------

_REPROFILED: set[str] = set()


def profile_name(cfg: RunConfig) -> str:
    """File name of the cached profile of ``cfg``'s (workload and its sizes, device, devices, batch)."""
    spec = WorkloadSpec(cfg.workload, resolution=cfg.resolution, width_mult=cfg.width_mult,
                        num_classes=cfg.num_classes)
    return f"{spec.key}-{cfg.device_type}-n{cfg.devices}-b{cfg.batch_size}.csv"


def group_costs(cfg: RunConfig, mode: str, *, path: str | None = None, force: bool = False,
                say: Callable[[str], None] = print, first_step: int | None = None):
    """The cost table of ``cfg``'s (workload, batch, devices): measured into ``path`` (reused when it
    exists, unless ``force``), or estimated from FLOPs. ``(None, None)`` with a note when unavailable.
    ``first_step``: the runs' first measured step, so a profiled supernet times the paths they train."""
    if mode == "none":
        return None, None
    try:
        from .simulate import CostTable, estimate_cost_table
    except ImportError as e:
        say(f"note: no cost model here (pipebd.simulate: {e}); no ideal / simulation / plans")
        return None, None
    if mode == "estimate":
        return estimate_cost_table(cfg), None
    fresh = force and path not in _REPROFILED
    if path and os.path.exists(path) and not fresh:
        try:
            return CostTable.from_csv(path), path
        except Exception as e:  # noqa: BLE001 — an unreadable cache is measured again
            say(f"note: cached profile {path} is unreadable ({e}); profiling again")
    try:
        from .profiler import profile
    except ImportError as e:
        say(f"note: no profiler here (pipebd.profiler: {e}); using FLOP estimates")
        return estimate_cost_table(cfg), None
    t0 = time.perf_counter()
    try:
        costs = profile(cfg.replace(timeout=max(cfg.timeout, 600.0)), path, first_step=first_step)
    except Exception as e:  # noqa: BLE001
        say(f"note: profiling {cfg.workload} on {cfg.devices} device(s), batch {cfg.batch_size} failed: "
            f"{' '.join(str(e).split())}; no ideal for it")
        return None, None
    _REPROFILED.add(path)
    say(f"  profiled {cfg.workload} n{cfg.devices} b{cfg.batch_size} in {time.perf_counter() - t0:.0f} s -> {path}")
    return costs, path


def ideal_seconds_per_sample(costs, devices: int, batch_size: int) -> float | None:
    """DESIGN.md §4's ideal (the cost model's) per trained sample; × epoch samples = ideal epoch time."""
    from .simulate import predict_all

    try:
        (p,) = predict_all(costs, devices, batch_size, 1, strategies=("ideal",))
    except Exception:  # noqa: BLE001 — a table the model cannot use gives no ideal
        return None
    return p.step_s / batch_size


def fill_ideal(runs_csv: str, ideals: dict[tuple, float]) -> int:
    """Set ``ideal_epoch_time_s``/``efficiency`` of the ok rows whose (workload, batch_size, devices,
    resolution, width_mult) is in ``ideals`` (ideal seconds per sample, × the row's ``epoch_samples``);
    returns the number of rows filled."""
    from .metrics import with_ideal

    filled = 0

    def fn(df):
        nonlocal filled
        if df.empty:
            return df
        for c in ("ideal_epoch_time_s", "efficiency"):
            df[c] = df[c].astype(object) if c in df else None
        for i, r in df.iterrows():
            if str(r.get("status")) != "ok":
                continue
            key = (r["workload"], int(r["batch_size"]), int(r["devices"]), _num(r.get("resolution")),
                   _num(r.get("width_mult")))
            per_sample = ideals.get(key)
            if per_sample is None:
                continue
            new = with_ideal(r.to_dict(), per_sample * float(r["epoch_samples"]))
            df.at[i, "ideal_epoch_time_s"] = new["ideal_epoch_time_s"]
            df.at[i, "efficiency"] = new["efficiency"]
            filled += 1
        return df

    _rewrite_csv(runs_csv, fn)
    return filled


def ideal_key(cfg: RunConfig) -> tuple:
    """What identifies the runs one ideal applies to (the runs.csv columns :func:`fill_ideal` matches)."""
    return (_canon(cfg.workload), cfg.batch_size, cfg.devices, float(input_resolution(cfg)), round(cfg.width_mult, 6))


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else round(f, 6)


def input_resolution(cfg: RunConfig) -> int:
    """The input resolution ``cfg``'s workload really uses (its default when ``cfg.resolution`` is None)."""
    return _facts(cfg)[1]


def _predictions(costs, devices_list, batch: int, steps: int, inflight: int, strategies, say) -> dict[int, list]:
    from .simulate import predict_all

    out = {}
    for n in devices_list:
        try:
            out[n] = predict_all(costs, n, batch, steps, inflight=inflight, strategies=strategies)
        except Exception as e:  # noqa: BLE001 — e.g. more devices than rows
            say(f"note: cannot predict {n} device(s) at batch {batch}: {' '.join(str(e).split())}")
    return out


def _simulate_rows(cfg: RunConfig, costs, devices_list, costs_label: str, say) -> list[dict]:
    from .simulate import STRATEGIES

    samples = _facts(cfg)[2]
    steps = max(1, samples // cfg.batch_size)
    rows = []
    for n, preds in _predictions(costs, devices_list, cfg.batch_size, steps, cfg.inflight, STRATEGIES, say).items():
        dp = next((p.epoch_s for p in preds if p.strategy == "dp"), None)
        ideal = next((p.epoch_s for p in preds if p.strategy == "ideal"), None)
        for p in preds:
            rows.append({"workload": _canon(cfg.workload), "strategy": p.strategy, "devices": n,
                         "batch_size": cfg.batch_size, "steps": steps, "epoch_samples": steps * cfg.batch_size,
                         "epoch_time_s": p.epoch_s, "throughput_sps": steps * cfg.batch_size / p.epoch_s,
                         "step_time_s": p.step_s, "fill_s": p.fill_s, "speedup_vs_dp": dp / p.epoch_s if dp else None,
                         "efficiency": ideal / p.epoch_s if ideal else None, "layout": p.layout, "note": p.note,
                         "extrapolated": p.extrapolated, "resolution": input_resolution(cfg), "width_mult": cfg.width_mult, "costs": costs_label,
                         "profile_devices": cfg.devices})
    return rows


def _schedule_rows(cfg: RunConfig, costs, devices_list, costs_label: str, say) -> list[dict]:
    steps = max(1, _facts(cfg)[2] // cfg.batch_size)
    rows = []
    for n, preds in _predictions(costs, devices_list, cfg.batch_size, steps, cfg.inflight,
                                 ("dp", "tr-dpu", "ahd", "ideal"), say).items():
        p = {x.strategy: x for x in preds}
        rows.append({"workload": _canon(cfg.workload), "devices": n, "batch_size": cfg.batch_size,
                     "plan": p["ahd"].layout, "predicted_epoch_time_s": p["ahd"].epoch_s,
                     "dp_epoch_time_s": p["dp"].epoch_s, "speedup_vs_dp": p["dp"].epoch_s / p["ahd"].epoch_s,
                     "tr_dpu_stages": p["tr-dpu"].layout, "tr_dpu_epoch_time_s": p["tr-dpu"].epoch_s,
                     "ideal_epoch_time_s": p["ideal"].epoch_s, "efficiency": p["ideal"].epoch_s / p["ahd"].epoch_s,
                     "note": p["ahd"].note, "resolution": input_resolution(cfg), "width_mult": cfg.width_mult,
                     "costs": costs_label, "profile_devices": cfg.devices})
    return rows


def _canon(name: str) -> str:
    from .zoo import canonical_name

    return canonical_name(name)


# ---- running an experiment ----------------------------------------------------------------------------------------

def experiment_dir(results_root: str, profile: str, name: str) -> str:
    return os.path.join(results_root, profile, name)


def _settings(exp: Experiment, profile: str) -> dict:
    prof = exp.profile(profile)
    d = dataclasses.asdict(prof)
    d.pop("notes", None)
    return {"experiment": exp.name, "profile": profile, "settings": d}


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prepare_dir(d: str, settings: dict, *, force: bool, say) -> None:
    """Create ``d`` (after ``--force`` deleted it), or clear what an interrupted run left."""
    if force and os.path.exists(d):
        shutil.rmtree(d)
        say(f"  --force: deleted {d}")
    meta = os.path.join(d, "experiment.json")
    if os.path.exists(meta):
        try:
            with open(meta) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
        if old.get("digest") != _digest(settings):
            aside = f"{d}.stale-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
            os.replace(d, aside)
            say(f"  the settings changed since the partial run; moved it aside to {aside}")
    elif os.path.isdir(d) and os.listdir(d):
        aside = f"{d}.stale-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        os.replace(d, aside)
        say(f"  {d} holds results of no known experiment run; moved them aside to {aside}")
    os.makedirs(d, exist_ok=True)
    if not os.path.exists(meta):
        atomic_write_text(meta, json.dumps({**settings, "digest": _digest(settings)}, indent=1, default=str) + "\n")


def _journal(d: str) -> tuple[dict[str, dict], set[str]]:
    """Finished units (key -> last row: ``ok`` or ``failed``) and run ids that started but never
    finished. Only ``ok`` units count as done: a failed one runs again next time."""
    df = _read_csv(os.path.join(d, "units.csv"))
    done: dict[str, dict] = {}
    started: dict[str, str] = {}
    for r in df.to_dict("records") if not df.empty else []:
        if r["status"] == "started":
            started[r["run_id"]] = r["unit"]
        else:
            done[r["unit"]] = r
            started.pop(r["run_id"], None)
    return done, set(started)


def _purge(d: str, run_ids: set[str], say) -> None:
    if not run_ids:
        return
    for name in ("runs.csv", "ranks.csv", "events.csv"):
        _rewrite_csv(os.path.join(d, name), lambda df: df[~df["run_id"].astype(str).isin(run_ids)])
    for rid in run_ids:
        trace = os.path.join(d, "traces", f"{rid}.json")
        if os.path.exists(trace):
            os.remove(trace)
    _rewrite_csv(os.path.join(d, "units.csv"), lambda df: df[~df["run_id"].astype(str).isin(run_ids)])
    say(f"  resumed: removed the rows of {len(run_ids)} interrupted run(s) ({', '.join(sorted(run_ids))})")


def _not_ok(units: list[Unit], done: dict[str, dict]) -> list[Unit]:
    """The ``units`` whose last journal row (``done``, from :func:`_journal`) is not ``ok``."""
    return [u for u in units if done.get(u.key, {}).get("status") != "ok"]


def _journal_row(d: str, unit: Unit, run_id: str, status: str, wall_s: float | None = None, error: str = "") -> None:
    from .metrics import append_rows

    append_rows(os.path.join(d, "units.csv"), [{
        "unit": unit.key, "run_id": run_id, "status": status, "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "workload": unit.workload.name, "strategy": unit.strategy, "devices": unit.devices,
        "batch_size": unit.batch_size, "repeat": unit.repeat, "wall_s": wall_s, "error": error}], UNIT_COLUMNS)


def is_done(results_root: str, profile: str, name: str) -> bool:
    return os.path.exists(os.path.join(experiment_dir(results_root, profile, name), "DONE"))


class Eta:
    """Progress over every run of an invocation: ``[k/N]`` and the estimated time left, from the
    mean wall time of the runs finished so far in this invocation."""

    def __init__(self, total: int):
        self.total, self.done, self.seconds = total, 0, 0.0

    def add(self, n: int) -> None:
        """``n`` more runs (re-runs of noisy cells) join the total."""
        self.total += n

    def tick(self, wall_s: float) -> str:
        self.done += 1
        self.seconds += wall_s
        left = max(0, self.total - self.done) * self.seconds / self.done
        return f"[{self.done}/{self.total}, ETA {int(left // 60)}m{int(left % 60):02d}s]"


@dataclass
class ExperimentOutcome:
    """What one :func:`run_experiment` call did: ``ran`` is False when it was skipped as done."""

    ran: bool
    failed: list[str] = field(default_factory=list)  # unit keys whose last run failed, with the error
    noisy: list[str] = field(default_factory=list)  # cells still noisy after the re-runs


def _run_units(units, d, prof, exp, csv_path, eta: Eta, say) -> None:
    from .runner import new_run_id

    for u in units:
        cfg = unit_config(prof, u, out=d, tag=exp.name, profile_csv=csv_path)
        run_id = new_run_id()
        _journal_row(d, u, run_id, "started")
        res = run_unit(cfg, run_id=run_id)
        _journal_row(d, u, run_id, res.status, res.wall_s, res.error)
        what = (f"epoch {float(res.row['epoch_time_s']):.1f} s" if res.status == "ok"
                else f"FAILED: {res.error[:160]}")
        rerun = " (re-run)" if u.repeat >= prof.repeats else ""
        say(f"  {eta.tick(res.wall_s)} {u.workload.name} b{u.batch_size} n{u.devices} r{u.repeat} {u.strategy:<7} "
            f"{what} ({res.wall_s:.0f} s){rerun}")


def _group_cells(d: str, w: WorkloadSpec, b: int, n: int, gcfg: RunConfig):
    """The speedup cells (:func:`pipebd.derived.speedup_cells`) of one group's ok runs so far."""
    from .derived import speedup_cells

    runs = _read_csv(os.path.join(d, "runs.csv"))
    if runs.empty:
        return None
    res = float(input_resolution(gcfg))
    g = runs[(runs["workload"] == _canon(w.name)) & (runs["batch_size"] == b) & (runs["devices"] == n)
             & (_numeric(runs["resolution"]) == res) & ((_numeric(runs["width_mult"]) - w.width_mult).abs() < 1e-9)]
    return speedup_cells(g)


def _numeric(col):
    """A CSV column as numbers (blanks and text become NaN)."""
    import pandas as pd

    return pd.to_numeric(col, errors="coerce")


def _rerun_noisy(d, prof, exp, w, b, n, gcfg, csv_path, max_reruns: int, eta: Eta, say) -> list[str]:
    """Re-run the group's noisy cells, each round ``dp`` and the noisy strategies in rotated order,
    until none is noisy or ``max_reruns`` rounds ran; returns the cells still noisy."""
    from .derived import noisy_strategies

    steps = w.steps if w.steps is not None else prof.steps
    warmup = w.warmup if w.warmup is not None else prof.warmup
    done, _ = _journal(d)
    group = f"{w.key}|b{b}|n{n}|"  # the Unit.key prefix of this group
    rounds = len({int(r["repeat"]) for k, r in done.items() if k.startswith(group) and int(r["repeat"]) >= prof.repeats})
    while True:
        cells = _group_cells(d, w, b, n, gcfg)
        noisy = (noisy_strategies(cells[["strategy", "runs", "spread"]].itertuples(index=False, name=None))
                 if cells is not None and prof.strategies else [])
        noisy = [s for s in noisy if s in prof.strategies]
        if not noisy or "dp" not in prof.strategies:
            return []
        if rounds >= max_reruns:
            flagged = cells[cells["noisy"]]
            return [f"{w.name} b{b} n{n} {r.strategy} (spread {r.spread:.0%} over {r.runs} runs)"
                    for r in flagged.itertuples()]
        repeat = prof.repeats + rounds
        say(f"  noisy: {', '.join(s for s in noisy if s != 'dp')} on {w.name} b{b} n{n} (repeats differ by more "
            f"than 25 %): re-run round {rounds + 1}/{max_reruns} with dp")
        units = [Unit(w, s, n, b, repeat, steps, warmup) for s in rotated(noisy, rounds)]
        eta.add(len(units))
        _run_units(units, d, prof, exp, csv_path, eta, say)
        rounds += 1


def run_experiment(exp: Experiment, profile: str = DEFAULT_PROFILE, *, results_root: str = "results",
                   force: bool = False, say: Callable[[str], None] = print, max_reruns: int = DEFAULT_MAX_RERUNS,
                   eta: Eta | None = None) -> ExperimentOutcome:
    """Run (or resume) ``exp``'s ``profile``. ``DONE`` is written only when every run succeeded; a
    failed run is retried by the next invocation. Noisy cells are re-run (``max_reruns`` rounds)."""
    from .executors import import_plugins, strategy_names

    prof = exp.profile(profile)
    d = experiment_dir(results_root, profile, exp.name)
    if not force and os.path.exists(os.path.join(d, "DONE")):
        say(f"{exp.name}: done already ({d}/DONE); --force reruns it")
        return ExperimentOutcome(ran=False)
    if prof.options.get("device_type") == "cuda" and (prof.strategies or prof.costs == "profile"):
        import torch

        if not torch.cuda.is_available():
            raise ExperimentError(f"{exp.name} [{profile}] runs on CUDA, which is not available here; run the "
                                  "cpu profile (--profile cpu) on this machine")
    t_start = time.perf_counter()
    settings = _settings(exp, profile)
    _prepare_dir(d, settings, force=force, say=say)
    done, interrupted = _journal(d)
    _purge(d, interrupted, say)
    units = plan_units(prof)
    todo = _not_ok(units, done)
    if eta is None:
        eta = Eta(len(todo))
    retried = sum(1 for u in todo if u.key in done)
    try:
        import_plugins(prof.options.get("plugins", ()))  # strategies a plugin registers are known here too
    except Exception as e:  # noqa: BLE001 — the runs will fail with the same error, recorded
        say(f"  note: {e}")
    known = set(strategy_names())
    missing = [s for s in prof.strategies if s not in known]
    say(f"{exp.name} [{profile}]: {len(units)} runs ({len(units) - len(todo)} done before"
        + (f", {retried} failed before and retried now" if retried else "") + f"), "
        f"{len(_groups(prof))} configuration(s) -> {d}")
    if missing:
        say(f"  note: strategy {', '.join(missing)} is not registered here; its runs are recorded as failed")
    ideals: dict[tuple, float] = {}
    sim_rows: list[dict] = []
    sched_rows: list[dict] = []
    still_noisy: list[str] = []
    top = max(prof.devices)
    for w, b, n in _groups(prof):
        gcfg = _group_config(prof, w, b, n)
        cache = os.path.join(results_root, profile, "profiles", profile_name(gcfg))
        warmup = w.warmup if w.warmup is not None else prof.warmup
        costs, csv_path = group_costs(gcfg, prof.costs, path=cache, force=force, say=say, first_step=warmup)
        if costs is not None:
            per_sample = ideal_seconds_per_sample(costs, n, b)
            if per_sample is not None:
                ideals[ideal_key(gcfg)] = per_sample
            if n == top:  # simulate and plan from the profile of the most devices measured
                label = csv_path or "estimate"
                sim_rows += _simulate_rows(gcfg, costs, prof.simulate_devices, label, say)
                sched_rows += _schedule_rows(gcfg, costs, prof.plan_devices, label, say)
        _run_units([u for u in todo if u.group == (w.key, b, n)], d, prof, exp, csv_path, eta, say)
        if prof.repeats > 1:
            still_noisy += _rerun_noisy(d, prof, exp, w, b, n, gcfg, csv_path, max_reruns, eta, say)
    if ideals:
        fill_ideal(os.path.join(d, "runs.csv"), ideals)
    if exp.paper_reference:
        _write_table(os.path.join(d, "paper_reference.csv"),
                     [{"workload": _canon(wl), "strategy": s, "speedup_vs_dp": v, "devices": 4,
                       "source": "Jang et al., DATE 2023, Fig. 6 (4 x RTX A6000)"}
                      for wl, ref in exp.paper_reference.items() for s, v in ref.items()],
                     ["workload", "strategy", "speedup_vs_dp", "devices", "source"])
    if prof.simulate_devices:
        _write_table(os.path.join(d, "simulate.csv"), sim_rows, SIMULATE_COLUMNS)
    if prof.plan_devices:
        _write_table(os.path.join(d, "schedules.csv"), sched_rows, SCHEDULE_COLUMNS)
    final, _ = _journal(d)
    failed = [f"{k}: {r.get('error', '')}"[:240] for k, r in final.items() if r["status"] != "ok"]
    summary = {"experiment": exp.name, "profile": profile, "finished": _dt.datetime.now().isoformat(timespec="seconds"),
               "runs": len(final), "ok": sum(r["status"] == "ok" for r in final.values()), "failed": len(failed),
               "noisy_cells": still_noisy, "seconds_this_session": round(time.perf_counter() - t_start, 1)}
    if failed:
        say(f"{exp.name}: NOT done: {len(failed)} run(s) failed (the next invocation retries only those): "
            + "; ".join(failed[:5]) + (" ..." if len(failed) > 5 else ""))
    else:
        atomic_write_text(os.path.join(d, "DONE"), json.dumps(summary, indent=1) + "\n")
        say(f"{exp.name}: done in {summary['seconds_this_session']:.0f} s, {summary['ok']} ok"
            + (f"; still noisy after {max_reruns} re-run round(s): {'; '.join(still_noisy)}" if still_noisy else ""))
    return ExperimentOutcome(ran=True, failed=failed, noisy=still_noisy)


# ---- plots --------------------------------------------------------------------------------------------------------

def _expand(arg: str, exp: Experiment, profile: str, results_root: str) -> str:
    """``{results}`` -> this experiment's results dir, ``{results:NAME}`` -> NAME's, ``{profile}`` -> the profile."""
    arg = re.sub(r"\{results(?::([\w-]+))?\}",
                 lambda m: experiment_dir(results_root, profile, m.group(1) or exp.name), arg)
    return arg.replace("{profile}", profile)


def make_plots(exp: Experiment, profile: str = DEFAULT_PROFILE, *, results_root: str = "results",
               plots_root: str = "plots", say: Callable[[str], None] = print, timeout_s: float = 600.0) -> list[str]:
    """Run ``exp``'s plot scripts; a missing script or a failing one is a note, never fatal. Returns PNGs made."""
    made = []
    for p in exp.plots:
        script = os.path.join(PLOTS_SCRIPTS_DIR, f"{p.script}.py")
        out = os.path.join(plots_root, profile, p.output)
        if not os.path.exists(script):
            say(f"  note: plot script plots/{p.script}.py does not exist; {out} not made")
            continue
        dirs = [experiment_dir(results_root, profile, i) for i in (p.inputs or (exp.name,))]
        absent = [x for x in dirs if not os.path.exists(os.path.join(x, "runs.csv"))]
        if absent:
            say(f"  note: {out} not made: no results in {', '.join(absent)}")
            continue
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        cmd = [sys.executable, script, *dirs, "-o", out, *[_expand(a, exp, profile, results_root) for a in p.args]]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            say(f"  note: plots/{p.script}.py timed out after {timeout_s:.0f} s; {out} not made")
            continue
        if proc.returncode != 0 or not os.path.exists(out):
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            say(f"  note: plots/{p.script}.py failed (exit {proc.returncode}); {out} not made: {tail}")
            continue
        made.append(out)
        say(f"  plot {out}")
    return made


# ---- CLI ----------------------------------------------------------------------------------------------------------

def _select(exps: dict[str, Experiment], names: list[str], directory: str) -> list[Experiment]:
    if not names or names == ["all"]:
        return list(exps.values())
    wanted = [n for part in names for n in part.split(",") if n]
    unknown = [n for n in wanted if n not in exps]
    if unknown:
        raise ExperimentError(f"unknown experiment {', '.join(map(repr, unknown))}; {directory} has: "
                              f"{', '.join(exps)}")
    return [e for e in exps.values() if e.name in wanted]


def _state(results_root: str, profile: str, exp: Experiment) -> str:
    """``done`` / ``N of M runs ok, K failed`` / ``to run``: what ``results_root`` already holds."""
    if is_done(results_root, profile, exp.name):
        return "done"
    done, _ = _journal(experiment_dir(results_root, profile, exp.name))
    units = plan_units(exp.profile(profile))
    ok = len(units) - len(_not_ok(units, done))
    bad = sum(1 for u in units if done.get(u.key, {}).get("status") == "failed")
    if not ok and not bad:
        return "to run"
    return f"{ok} of {len(units)} ok" + (f", {bad} failed" if bad else "")


def _list(chosen: list[Experiment], args: argparse.Namespace) -> None:
    print(f"experiments of the {args.profile} profile (results in {os.path.join(args.results, args.profile)}):")
    for e in chosen:
        prof = e.profiles.get(args.profile)
        if prof is None:
            print(f"  {e.name:<13} (no {args.profile} profile: skipped)  {' '.join(e.description.split())[:70]}")
            continue
        wl = ", ".join(w.name for w in prof.workloads) or "(derived from other experiments)"
        what = (f"{len(plan_units(prof))} runs: {','.join(prof.strategies)} x {prof.repeats} repeat(s) on {wl}, "
                f"devices {','.join(map(str, prof.devices))}, {prof.steps} measured steps" if prof.strategies
                else f"no runs; costs from {prof.costs} on {wl}")
        print(f"  {e.name:<13} [{_state(args.results, args.profile, e)}] {what}")
        if args.dry_run:
            for u in plan_units(prof):
                print(f"      {u.key}  steps {u.steps} warmup {u.warmup}")


def print_speedup_summary(exps: list[Experiment], profile: str, results_root: str, say=print) -> None:
    """The speedup table of every experiment that has a paper reference, beside the committed
    reference results (``results/reference/<profile>/``) and the paper's numbers."""
    from .derived import format_speedups, speedup_cells

    for e in exps:
        d = experiment_dir(results_root, profile, e.name)
        runs = _read_csv(os.path.join(d, "runs.csv"))
        if not e.paper_reference or runs.empty or profile not in e.profiles:
            continue
        ref_profile = profile
        ref_runs = _read_csv(os.path.join(ROOT, "results", "reference", profile, e.name, "runs.csv"))
        if ref_runs.empty and profile != DEFAULT_PROFILE:  # e.g. quick: its panels are the cpu profile's
            ref_profile = DEFAULT_PROFILE
            ref_runs = _read_csv(os.path.join(ROOT, "results", "reference", ref_profile, e.name, "runs.csv"))
        ref = speedup_cells(ref_runs) if not ref_runs.empty else None
        paper = {_canon(k): v for k, v in e.paper_reference.items()}
        labels = {_canon(w.name): w.label for w in e.profile(profile).workloads if w.label}
        say(f"\n{e.name} [{profile}]: speedup over dp here, beside results/reference/{ref_profile}/{e.name} "
            f"({'present' if ref is not None else 'none'}) and the paper (4 GPUs, batch 256)")
        say(format_speedups(speedup_cells(runs), reference=ref, paper=paper, labels=labels))


def _cmd_experiment(args: argparse.Namespace) -> int:
    from .config import ConfigError

    try:
        exps = load_experiments(args.experiments)
        chosen = _select(exps, args.names, args.experiments)
    except ExperimentError as e:
        raise ConfigError(str(e)) from None
    if args.max_reruns < 0:
        raise ConfigError(f"--max-reruns must be >= 0, got {args.max_reruns}")
    if args.list or args.dry_run:
        _list(chosen, args)
        return 0
    explicit = bool(args.names) and args.names != ["all"]
    missing = [e.name for e in chosen if args.profile not in e.profiles]
    if missing and explicit:
        raise ConfigError(f"experiment(s) {', '.join(missing)} have no profile {args.profile!r}; they define: "
                          + "; ".join(f"{e.name}: {', '.join(e.profiles)}" for e in chosen if e.name in missing))
    for name in missing:
        print(f"{name}: no {args.profile} profile; skipped", flush=True)
    chosen = [e for e in chosen if args.profile in e.profiles]
    say = lambda m: print(m, flush=True)  # noqa: E731
    todo = 0
    for e in chosen:
        if args.force or not is_done(args.results, args.profile, e.name):
            done = {} if args.force else _journal(experiment_dir(args.results, args.profile, e.name))[0]
            todo += len(_not_ok(plan_units(e.profile(args.profile)), done))
    eta = Eta(todo)
    failed: list[str] = []
    t0 = time.perf_counter()
    for e in chosen:
        t = time.perf_counter()
        if not args.plots_only:
            try:
                out = run_experiment(e, args.profile, results_root=args.results, force=args.force, say=say,
                                     max_reruns=args.max_reruns, eta=eta)
                failed += [f"{e.name}: {f}" for f in out.failed]
            except KeyboardInterrupt:
                raise
            except Exception as ex:  # noqa: BLE001 — one broken experiment does not stop the others
                say(f"{e.name}: ERROR {type(ex).__name__}: {ex}; continuing with the next experiment")
                failed.append(f"{e.name}: {type(ex).__name__}: {ex}")
        if args.plot:
            make_plots(e, args.profile, results_root=args.results, plots_root=args.plots, say=say)
        say(f"{e.name}: {time.perf_counter() - t:.0f} s")
    say(f"experiments ({args.profile}): {len(chosen)} in {time.perf_counter() - t0:.0f} s")
    print_speedup_summary(chosen, args.profile, args.results, say)
    if failed:
        say(f"\n{len(failed)} run(s) failed; run the same command again to retry only those:")
        for f in failed:
            say(f"  {f}")
        return 1
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("experiment", help="run the paper's experiments (experiments/*.yaml): runs, CSVs and plots")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments to run (default / 'all': every one)")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"size profile: {', '.join(PROFILES + OPTIONAL_PROFILES)} (default {DEFAULT_PROFILE}; quick: "
                        "a first look in a few minutes, only the experiments that define it)")
    p.add_argument("--max-reruns", type=int, default=DEFAULT_MAX_RERUNS, metavar="K",
                   help="re-run rounds for a cell whose repeats differ by more than 25 %% (with its dp; default "
                        f"{DEFAULT_MAX_RERUNS}; 0: only flag it)")
    p.add_argument("--force", action="store_true", help="rerun finished experiments (deletes their results)")
    p.add_argument("--experiments", default=EXPERIMENTS_DIR, metavar="DIR", help="where the *.yaml files are")
    p.add_argument("--results", default="results", metavar="DIR", help="results root (RESULTS/<profile>/<name>/)")
    p.add_argument("--plots", default="plots", metavar="DIR", help="plots root (PLOTS/<profile>/*.png)")
    p.add_argument("--no-plots", dest="plot", action="store_false", help="do not run the plot scripts")
    p.add_argument("--plots-only", action="store_true", help="only remake the plots from existing results")
    p.add_argument("--list", action="store_true",
                   help="list what each experiment runs and what your results directory already holds")
    p.add_argument("--dry-run", action="store_true", help="list every run each experiment would make")
    p.set_defaults(func=_cmd_experiment)
