"""Reading experiments: ``experiments/*.yaml`` loaded into :mod:`pipebd.experiments.spec`'s types,
then checked for what the types cannot say (known workloads, positive sizes, the NAS warm-up,
``options`` that are RunConfig fields the grid does not set, costs), every error naming the
file, the key and what is allowed.
"""

from __future__ import annotations

import functools
import glob
import os
import re
from typing import get_type_hints

from ..config import RunConfig
from ..options import workload_sizes
from ..zoo.mnist import MNIST_WORKLOADS as TRAINABLE_TEACHERS
from .spec import (COSTS, EXPERIMENTS_DIR, GRID_FIELDS, MIN_NAS_WARMUP, PROFILES, Experiment, ExperimentError, _build,
                   _coerce, _keys)


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
def workload_facts(name: str, sizes=None) -> tuple[bool, int, int]:
    """(is NAS, input resolution, epoch samples of the dataset it stands in for), from a meta build."""
    import torch

    from ..data import EPOCH_SAMPLES
    from ..zoo import WorkloadOptions, build_workload

    with torch.device("meta"):
        wl = build_workload(name, (sizes or WorkloadOptions()).sizes(), probe=False)
    return wl.is_nas, wl.input_shape[-1], EPOCH_SAMPLES.get(wl.default_dataset, EPOCH_SAMPLES["cifar10"])


def _facts(cfg: RunConfig) -> tuple[bool, int, int]:
    return workload_facts(cfg.workload, workload_sizes(cfg))


def validate_experiment(exp: Experiment) -> None:
    """Check values the types cannot: known workloads, positive sizes, NAS warm-up, options, costs."""
    from ..zoo import WorkloadError, canonical_name

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
        for key, low in (("steps", 1), ("warmup", 0), ("repeats", 1), ("profile_steps", 1), ("profile_warmup", 0),
                         ("teacher_epochs", 0)):
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
            if prof.teacher_epochs and w.teacher_weights is None and canonical_name(w.name) not in TRAINABLE_TEACHERS:
                raise ExperimentError(f"{wat}: teacher_epochs trains the teacher of {', '.join(TRAINABLE_TEACHERS)} "
                                      f"only, not of {w.name}; give it teacher_weights: PATH or drop teacher_epochs")
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
            if prof.strategies and warmup < MIN_NAS_WARMUP and workload_facts(w.name, w.options())[0]:
                raise ExperimentError(
                    f"{wat}: {w.name} is a NAS workload and needs warmup >= {MIN_NAS_WARMUP} (got {warmup}) so "
                    "every candidate op has run before timing; set warmup on the profile or the workload")
