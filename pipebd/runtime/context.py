"""What one rank knows while it runs: :class:`RankContext` (built by the runner on every rank).

The context owns the per-rank services a schedule's execution needs, so the interpreter (and
an escape-hatch strategy) uses them the same way: trainers built with the run's init and
restored on resume, the teacher blocks on the rank's device, and :meth:`RankContext.after_step`
— heartbeat, checkpoints and fault injection, once per completed training step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..config import RunConfig
from ..data import DataSource
from ..distill import BlockTrainer, optim_config
from ..faults import parse_fault
from ..modes import FP32, Mode
from ..recorder import Recorder
from ..zoo import Workload

__all__ = ["RankContext"]


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
    progress: "object"  # pipebd.progress.Progress: .start(total, desc) / .advance(n)
    # Set by the runner (all optional, so a context built by hand works):
    heartbeat: "object | None" = None  # pipebd.faults.Heartbeat: .beat() on progress
    checkpointer: "object | None" = None  # pipebd.checkpoint.Checkpointer (--checkpoint-dir)
    resume_state: dict | None = None  # this rank's checkpoint payload when resuming (--resume)
    calls: int = 0  # after_step calls so far (restored on resume); checkpoints are keyed by it
    trainers: dict = field(default_factory=dict)  # every trainer built or stepped on this rank
    _fault: "object | None" = field(default=None, repr=False)
    _fault_parsed: bool = field(default=False, repr=False)

    def trainer(self, block: int, mode: Mode = FP32) -> BlockTrainer:
        """A trainer for student ``block`` on this rank's device (same init on every rank).

        When the run resumes (``--resume``) and this rank's checkpoint holds ``block``, the
        trainer comes back with its weights, optimizer, schedule and ``step_count`` restored.
        """
        cfg = self.config
        t = BlockTrainer(
            index=block, block=self.workload.student[block].to(self.device),
            last=block == self.workload.num_blocks - 1, total_steps=cfg.total_steps, seed=cfg.seed,
            optim=optim_config(cfg), mode=mode,
        )
        saved = (self.resume_state or {}).get("trainers", {}).get(block)
        if saved is not None:
            from ..checkpoint import restore_trainer

            restore_trainer(t, saved)
        self.trainers[block] = t
        return t

    def teacher(self, blocks, modes: list[Mode] | None = None) -> list[torch.nn.Module]:
        """Teacher ``blocks`` on this rank's device, each in its mode's memory format."""
        modes = modes or [FP32] * len(blocks)
        return [m.apply_to(self.workload.teacher[i].to(self.device)) for i, m in zip(blocks, modes)]

    def after_step(self, step: int, trainers: dict[int, BlockTrainer]) -> None:
        """Call after this rank finished training step ``step`` of ``trainers`` (heartbeat,
        checkpoints, fault injection); the interpreter calls it once per completed step.

        With ``--checkpoint-every K`` every K-th call saves every trainer this rank holds,
        keyed by the call count."""
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
