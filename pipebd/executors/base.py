"""The executor interface: a strategy is a class registered by name (timm-style registry).

A strategy decides what each rank does with the blocks; it never parses arguments and never
writes files. The runner builds a :class:`RankContext` on every rank (the workload, the data
source, the process group, a :class:`~pipebd.recorder.Recorder`) and calls ``run``; the
strategy returns the :class:`~pipebd.distill.BlockTrainer` of every block whose final weights
this rank holds (one replica per block reports them), and reports timing through the
recorder. ``validate`` checks the strategy's own options before any process is spawned.

Built-in strategies live in :mod:`pipebd.executors` (the Pipe-BD ones) and in the top-level
``baselines/`` package, which is discovered by module scan: adding a baseline is adding one
file there. Other modules can register strategies too and be named with ``--plugin MODULE``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.distributed as dist

from ..config import ConfigError, RunConfig
from ..data import DataSource
from ..distill import BlockTrainer, OptimConfig
from ..faults import parse_fault
from ..recorder import Recorder
from ..zoo import Workload

__all__ = ["Strategy", "RankContext", "register_strategy", "get_strategy", "strategy_names", "import_plugins"]

_STRATEGIES: dict[str, type["Strategy"]] = {}


@dataclass
class RankContext:
    """What one rank knows while it runs a strategy."""

    rank: int
    world_size: int
    device: torch.device
    config: RunConfig
    workload: Workload
    data: DataSource
    recorder: Recorder
    progress: "object"  # pipebd.runner.Progress: .start(total, desc) / .advance(n)
    # Set by the runner (all optional, so a context built by hand works as before):
    heartbeat: "object | None" = None  # pipebd.faults.Heartbeat: .beat() on progress
    checkpointer: "object | None" = None  # pipebd.checkpoint.Checkpointer (--checkpoint-dir)
    resume_state: dict | None = None  # this rank's checkpoint payload when resuming (--resume)
    calls: int = 0  # after_step calls so far (restored on resume); checkpoints are keyed by it
    trainers: dict = field(default_factory=dict)  # every trainer built or stepped on this rank
    _fault: "object | None" = field(default=None, repr=False)
    _fault_parsed: bool = field(default=False, repr=False)

    def trainer(self, block: int) -> BlockTrainer:
        """A trainer for student ``block`` on this rank's device (same init on every rank).

        When the run resumes (``--resume``) and this rank's checkpoint holds ``block``, the
        trainer comes back with its weights, optimizer, schedule and ``step_count`` restored;
        strategies train it from ``step_count`` on.
        """
        cfg = self.config
        t = BlockTrainer(
            index=block, block=self.workload.student[block].to(self.device),
            last=block == self.workload.num_blocks - 1, total_steps=cfg.total_steps, seed=cfg.seed,
            optim=OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay),
        )
        saved = (self.resume_state or {}).get("trainers", {}).get(block)
        if saved is not None:
            from ..checkpoint import restore_trainer

            restore_trainer(t, saved)
        self.trainers[block] = t
        return t

    def teacher(self, blocks) -> list[torch.nn.Module]:
        return [self.workload.teacher[i].to(self.device) for i in blocks]

    def after_step(self, step: int, trainers: dict[int, BlockTrainer]) -> None:
        """Call after this rank finished training step ``step`` of ``trainers`` (heartbeat,
        checkpoints, fault injection). Every strategy calls it once per completed step it trains.

        With ``--checkpoint-every K`` every K-th call saves every trainer this rank holds
        (those built by :meth:`trainer` and those passed here), keyed by the call count."""
        self.calls += 1
        self.trainers.update(trainers)
        if self.heartbeat is not None:
            self.heartbeat.beat()
        if self.checkpointer is not None:
            self.checkpointer.maybe_save(self.calls, self.trainers)
        if not self._fault_parsed:
            self._fault = parse_fault(self.config.inject_fault, self.world_size)
            self._fault_parsed = True
        fault = self._fault
        if fault is not None and fault.rank == self.rank and fault.step == step:
            fault.fire()

    def barrier(self, group=None) -> None:
        if self.world_size > 1:
            dist.barrier(group=group)


class Strategy(ABC):
    """Base class of every strategy. Subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: whether the strategy splits each batch across replicas of a block (needs batch >= replicas)
    min_devices: ClassVar[int] = 1
    max_devices: ClassVar[int | None] = None

    def __init__(self, ctx: RankContext):
        self.ctx = ctx

    @classmethod
    def validate(cls, cfg: RunConfig, num_blocks: int) -> None:
        """Raise :class:`ConfigError` if ``cfg`` cannot run; called before any process starts."""
        if cfg.devices < cls.min_devices:
            raise ConfigError(f"strategy {cls.name!r} needs --devices >= {cls.min_devices}, got {cfg.devices}")
        if cls.max_devices is not None and cfg.devices > cls.max_devices:
            raise ConfigError(f"strategy {cls.name!r} runs on at most {cls.max_devices} device(s), got "
                              f"--devices {cfg.devices}")

    @classmethod
    def describe_plan(cls, cfg: RunConfig, num_blocks: int) -> str:
        """A one-line description of the layout this run uses (recorded in runs.csv)."""
        return ""

    @classmethod
    def reference_shards(cls, cfg: RunConfig, num_blocks: int) -> tuple[tuple[int, ...], ...]:
        """Per block, the batch rows each replica trains on (in rank order within the batch).

        ``verify`` runs the sequential reference with these as ghost shards, which reproduces
        this strategy's data-parallel numerics exactly. Default: one replica per block.
        """
        return tuple((cfg.batch_size,) for _ in range(num_blocks))

    @abstractmethod
    def run(self) -> dict[int, BlockTrainer]:
        """Train ``cfg.total_steps`` steps per block; return the trainers whose weights this rank reports.

        Conventions every strategy keeps: build trainers with ``ctx.trainer(i)``; train each
        trainer from ``trainer.step_count`` (0, or later when a run resumes from a checkpoint)
        to ``cfg.total_steps``; open the recorder's measurement window at step ``cfg.warmup``;
        call ``ctx.after_step(step, trainers)`` after each step it completes.
        """


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
    """Import the built-in executors and every module of the top-level ``baselines`` package."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.insert(0, root)
    pkg = importlib.import_module("pipebd.executors")
    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"pipebd.executors.{mod.name}")
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
    _discover()
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> type[Strategy]:
    _discover()
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(strategy_names())} "
                          "(or register one: README 'Add a baseline')") from None
