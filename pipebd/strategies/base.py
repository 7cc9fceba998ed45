"""The strategy interface: a strategy is a *schedule generator* registered by name (timm-style).

A strategy turns (layout, workload shape, steps) into a :class:`~pipebd.schedule.Schedule`: one
ordered action list per rank (DESIGN.md §2, "schedules are data"). What a strategy writes:

- :meth:`Strategy.generate` — the schedule, from a :class:`~pipebd.schedule.ScheduleSpec` and a
  layout (the one required method);
- :meth:`Strategy.layout` / :meth:`Strategy.choose_layout` — the optional layout hook: from the
  run's own options (``--stages``, ``--ls-map``, ``--plan``) or, without them, chosen from a cost
  table (the ``ls`` assignment, the ``tr`` stages, the ``ahd`` plan);
- :meth:`Strategy.validate` — the strategy's own options, before any process is spawned (the
  base class also validates the generated schedule: matching sends and receives, complete
  collectives, every block trained once per step, no deadlock).

Everything else is shared and written once: the interpreter (:mod:`pipebd.runtime`) runs a
rank's actions on torch.distributed (resume, measurement windows, progress, heartbeat,
checkpoints, faults), the cost model (:mod:`pipebd.costmodel.replay`) replays the same lists, and
``verify``, ``schedule``, ``simulate``, ``bench``, the planner and the plots take any registered
name. Built-in strategies live here (the Pipe-BD ones) and in the top-level ``baselines/``
package, which is discovered by module scan: adding a baseline is adding one file there.
Other modules register strategies too and are named with ``--plugin MODULE``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, ClassVar

from ..config import ConfigError, RunConfig
from ..distill import shard_sizes
from ..schedule import Schedule, ScheduleSpec, validate_schedule

__all__ = ["Strategy", "register_strategy", "get_strategy", "strategy_names", "import_plugins", "spec_for",
           "uses_schedule"]

_STRATEGIES: dict[str, type["Strategy"]] = {}


def spec_for(cfg: RunConfig, num_blocks: int) -> ScheduleSpec:
    """The :class:`ScheduleSpec` of a run: every step (warm-up included), the window at ``--warmup``."""
    shards = cfg.block_shards
    if shards is None and cfg.shards > 1:
        shards = tuple(tuple(shard_sizes(cfg.batch_size, cfg.shards)) for _ in range(num_blocks))
    return ScheduleSpec(num_blocks=num_blocks, devices=cfg.devices, batch_size=cfg.batch_size, steps=cfg.total_steps,
                        warmup=cfg.warmup, inflight=cfg.inflight, shards=shards, epochs=max(1, cfg.epochs))


class Strategy:
    """Base class of every strategy: class-level hooks only (a strategy holds no per-run state)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    min_devices: ClassVar[int] = 1
    max_devices: ClassVar[int | None] = None

    # ---- the layout hook (optional) -----------------------------------------------------
    @classmethod
    def layout(cls, cfg: RunConfig, num_blocks: int) -> Any:
        """The layout this run uses: from ``cfg``'s own options, else :meth:`choose_layout` on
        the run's cost table (``--profile``, else FLOP estimates). Default: no layout."""
        return None

    @classmethod
    def choose_layout(cls, costs, spec: ScheduleSpec, *, memory_limit_bytes: float | None = None) -> Any:
        """The layout this strategy picks for a cost table (:class:`~pipebd.costmodel.CostTable`),
        with no run options; what ``simulate`` predicts. Default: :meth:`layout`'s default."""
        return None

    @classmethod
    def format_layout(cls, layout: Any) -> str:
        """A one-line description of ``layout`` (recorded in runs.csv as ``plan``)."""
        return "" if layout is None else str(layout)

    # ---- the generator ------------------------------------------------------------------
    @classmethod
    def generate(cls, spec: ScheduleSpec, layout: Any) -> Schedule:
        """Every rank's actions for ``spec.steps`` steps. Required unless :meth:`run` is overridden."""
        raise NotImplementedError(f"strategy {cls.name!r} does not generate a schedule (it overrides run())")

    @classmethod
    def run(cls, ctx) -> dict | None:
        """Escape hatch for a strategy the schedule IR cannot express: train on ``ctx`` (a
        :class:`pipebd.runtime.RankContext`) and return the trainers this rank reports.

        Return ``None`` (the default) to have the interpreter run :meth:`generate`'s schedule.
        What a strategy loses by overriding this: the schedule is not validated before spawn,
        ``schedule``/``simulate``/``bench`` cannot predict it, the planner cannot weigh it, and
        resume, measurement windows, progress, heartbeats, checkpoints and fault injection are
        its own to get right (through ``ctx.after_step`` and ``ctx.recorder``).
        """
        return None

    # ---- derived from the two above -----------------------------------------------------
    @classmethod
    def schedule_for(cls, cfg: RunConfig, num_blocks: int) -> Schedule:
        """The schedule a run of ``cfg`` executes."""
        from ..planner import modes_for

        s = cls.generate(spec_for(cfg, num_blocks), cls.layout(cfg, num_blocks))
        s.strategy = s.strategy or cls.name
        modes = modes_for(cfg)
        s.modes = "" if modes.is_fp32_contiguous else modes.to_text()
        return s

    @classmethod
    def ownership(cls, cfg: RunConfig, num_blocks: int, rank: int, schedule: Schedule | None = None):
        """The blocks ``rank`` must build (:class:`pipebd.zoo.BlockOwnership`): the teacher blocks
        its actions run and the student blocks they train; ``None`` (build everything) for a
        :meth:`run` escape hatch, whose use of the workload is unknown."""
        if not uses_schedule(cls):
            return None
        from ..zoo import BlockOwnership

        s = schedule or cls.schedule_for(cfg, num_blocks)
        return BlockOwnership.of(s.teachers_of(rank), s.trainers_of(rank))

    @classmethod
    def validate(cls, cfg: RunConfig, num_blocks: int) -> None:
        """Raise :class:`ConfigError` if ``cfg`` cannot run; called before any process starts."""
        if cfg.devices < cls.min_devices:
            raise ConfigError(f"strategy {cls.name!r} needs --devices >= {cls.min_devices}, got {cfg.devices}")
        if cls.max_devices is not None and cfg.devices > cls.max_devices:
            raise ConfigError(f"strategy {cls.name!r} runs on at most {cls.max_devices} device(s), got "
                              f"--devices {cfg.devices}")
        if uses_schedule(cls):
            validate_schedule(cls.schedule_for(cfg, num_blocks))

    @classmethod
    def lossy_reason(cls, cfg: RunConfig) -> str | None:
        """Why ``cfg`` asks this strategy for something that is not exact (``verify`` then reports
        the error it measures instead of failing); ``None``: the run must match its reference."""
        return None

    @classmethod
    def describe_plan(cls, cfg: RunConfig, num_blocks: int) -> str:
        return cls.format_layout(cls.layout(cfg, num_blocks))

    @classmethod
    def reference_shards(cls, cfg: RunConfig, num_blocks: int) -> tuple[tuple[int, ...], ...]:
        """Per block, the batch rows each replica trains on (in batch order): ``verify`` runs the
        sequential reference with these as ghost shards, reproducing this strategy's numerics."""
        if not uses_schedule(cls):
            return tuple((cfg.batch_size,) for _ in range(num_blocks))
        s = cls.schedule_for(cfg.replace(warmup=0, steps=1), num_blocks)
        return tuple(s.student_rows(b) or (cfg.batch_size,) for b in range(num_blocks))


def uses_schedule(cls: type[Strategy]) -> bool:
    """Whether ``cls`` is a schedule generator (not a :meth:`Strategy.run` escape hatch)."""
    return cls.generate.__func__ is not Strategy.generate.__func__


def register_strategy(name: str):
    """Class decorator: register a :class:`Strategy` subclass under ``name``."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"@register_strategy({name!r}) must decorate a Strategy subclass")
        old = _STRATEGIES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise RuntimeError(f"strategy {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        cls.name = name
        _STRATEGIES[name] = cls
        return cls

    return deco


_DISCOVERED = False


def _discover() -> None:
    """Import the built-in strategies and every module of the top-level ``baselines`` package."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    pkg = importlib.import_module("pipebd.strategies")
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("base", "predict"):
            importlib.import_module(f"pipebd.strategies.{mod.name}")
    baselines = importlib.import_module("baselines")
    for mod in pkgutil.iter_modules(baselines.__path__):
        importlib.import_module(f"baselines.{mod.name}")


def import_plugins(modules) -> None:
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise ConfigError(f"--plugin {m!r} could not be imported: {e}") from None


def strategy_names() -> list[str]:
    """Every registered strategy: the one list of strategies (experiments, bench, plots read it)."""
    _discover()
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> type[Strategy]:
    _discover()
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(strategy_names())} "
                          "(or register one: README 'Add a baseline')") from None
