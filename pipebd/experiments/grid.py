"""The grid: a profile expanded into its run units (one strategy on one (workload, batch size,
device count) in one repeat, in execution order: groups, then repeats, then rotated strategies)
and the :class:`~pipebd.config.RunConfig` of a unit and of a group's profiling.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from ..config import RunConfig
from .load import _facts
from .spec import ProfileSpec, WorkloadSpec


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
    epochs: int = 1

    @property
    def key(self) -> str:
        epochs = f"|e{self.epochs}" if self.epochs != 1 else ""
        return f"{self.workload.key}|b{self.batch_size}|n{self.devices}|r{self.repeat}{epochs}|{self.strategy}"

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
            for k, epochs in enumerate(prof.epochs):
                for s in rotated(prof.strategies, r + k):
                    units.append(Unit(w, s, n, b, r, steps, warmup, epochs))
    return units


def unit_config(prof: ProfileSpec, unit: Unit, *, out: str, tag: str, profile_csv: str | None = None,
                ideal_seconds_per_sample: float | None = None) -> RunConfig:
    """The run of ``unit``: the profile's options (and its strategy's), the unit's sizes, the group's
    cost profile (``profile_csv``) and ideal seconds per sample (the run record carries it). A
    strategy made for fewer devices than the group's runs on as many as it takes (``sequential``:
    one; give it ``strategy_options: {sequential: {shards: N}}`` for the N-replica batch split)."""
    w = unit.workload
    kw = dict(prof.options)
    kw.update(prof.strategy_options.get(unit.strategy, {}))
    return RunConfig(strategy=unit.strategy, devices=min(unit.devices, _max_devices(unit.strategy)), batch_size=unit.batch_size,
                     steps=unit.steps, warmup=unit.warmup, **w.run_fields(), out=out, tag=tag, quiet=True,
                     profile=profile_csv, ideal_seconds_per_sample=ideal_seconds_per_sample, epochs=unit.epochs, **kw)


def _max_devices(strategy: str) -> int:
    """The most devices ``strategy`` runs on (unbounded for an unregistered one: its run fails as such)."""
    from ..errors import ConfigError
    from ..strategies import get_strategy

    try:
        limit = get_strategy(strategy).max_devices
    except ConfigError:  # unknown here: its run records the error
        return 1 << 30
    return limit if limit is not None else 1 << 30


def _group_config(prof: ProfileSpec, w: WorkloadSpec, batch: int, devices: int) -> RunConfig:
    """The profile's configuration of one group: at least as many trials as the runs measure
    steps (they start at the runs' first measured step, so a supernet times the same paths)."""
    kw = {k: v for k, v in prof.options.items()}
    steps = w.steps if w.steps is not None else prof.steps
    return RunConfig(strategy="sequential", devices=devices, batch_size=batch,
                     steps=max(prof.profile_steps, steps), warmup=prof.profile_warmup, **w.run_fields(),
                     quiet=True, **kw)


def input_resolution(cfg: RunConfig) -> int:
    """The input resolution ``cfg``'s workload really uses (its default when ``cfg.resolution`` is None)."""
    return _facts(cfg)[1]


def _canon(name: str) -> str:
    from ..zoo import canonical_name

    return canonical_name(name)


def _canon_or_same(name: str) -> str:
    try:
        return _canon(name)
    except ValueError:
        return name
