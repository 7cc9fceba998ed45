"""The profiler's compute-mode candidates (a mixin of :class:`pipebd.profile_measure.RankProfiler`).

After the fp32 contiguous chain at each per-replica batch, the same chain again per candidate
:class:`~pipebd.modes.Mode` the run's pins allow (bf16 autocast, channels-last): teacher blocks
in the mode (when the teacher may use it) on the mode's activations, every student in the mode
in a fresh trainer, warmed like the first (one untimed trial; supernets one step on every choice
index). The rows carry the mode (the profile CSV's ``mode`` column), and
:func:`pipebd.costmodel.choose_modes` picks per block and part.
"""

from __future__ import annotations

import torch

from .distill import BlockTrainer, optim_config, teacher_block
from .modes import FP32, Mode
from .profile_lean import is_oom

__all__ = ["ModeMeasurements"]


class ModeMeasurements:
    """Uses the profiler's ``_free``, ``_time_chain`` and its ``cfg``, ``n``, ``students``,
    ``teachers``, ``teacher_modes``, ``student_modes``."""

    def _time_mode(self, b: int, x0: torch.Tensor | None, mode: Mode) -> None:
        """The chain again with teacher and students in ``mode`` (where their pins allow it), fresh
        trainers; rows tagged with the mode. Modules go back to contiguous afterwards."""
        tmode = mode if mode in self.teacher_modes else FP32
        smode = mode if mode in self.student_modes else None
        chain: dict[int, BlockTrainer] = {}
        if x0 is not None:
            try:
                for t in self.teachers:
                    tmode.apply_to(t)
                x = x0
                for i in range(self.n):
                    y = teacher_block(self.teachers[i], x, tmode)
                    if smode is not None:
                        chain[i] = self._trainer(i, smode, x, y)
                    x = y
            except Exception as e:  # noqa: BLE001
                if not is_oom(e):
                    raise
                x0 = None  # this mode is not timed at this batch; every rank still meets the barriers
        self._time_chain(b, x0, chain, teacher_mode=tmode, mode=mode.label,
                         teacher_rows=tmode == mode)
        for m in self.teachers + self.students:
            m.to(memory_format=torch.contiguous_format)
        self._free()

    def _trainer(self, i: int, mode: Mode, x: torch.Tensor, y: torch.Tensor) -> BlockTrainer:
        """A warmed trainer of student ``i`` in ``mode`` (supernets: one step per choice index)."""
        cfg, block = self.cfg, self.students[i]
        trainer = BlockTrainer(index=i, block=block, last=i == self.n - 1, total_steps=10**6, seed=cfg.seed,
                               optim=optim_config(cfg), mode=mode)
        if getattr(block, "is_supernet", False):
            for c in range(max(block.choices_per_cell)):
                block.set_path(tuple(min(c, m - 1) for m in block.choices_per_cell))
                trainer.accumulate(x, y)
                trainer.apply()
        return trainer

