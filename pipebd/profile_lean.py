"""The profiler's out-of-memory fallback (a mixin of :class:`pipebd.profile_measure.RankProfiler`).

Out of memory is a property of a *stage* configuration, so an out-of-memory with every block
resident does not condemn a block: the ranks agree to re-measure from then on in *lean* mode,
each block with only its own teacher and student on the device (the others offloaded to the
host), and only a block that does not fit even alone is marked infeasible. Lean measurements
time fp32 contiguous only (no compute-mode candidates).
"""

from __future__ import annotations

import statistics

import torch

__all__ = ["LeanMeasurements", "is_oom"]


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is an out-of-memory error (CUDA, or the CPU allocator)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in msg or "not enough memory" in msg)


class LeanMeasurements:
    """One block resident at a time; uses the profiler's ``_boundary``, ``_first_input``,
    ``_free``, ``_infeasible``, ``_row``, ``_student``, ``_teacher``, ``_time``, ``_warm_step`` and
    its ``cuda``, ``device``, ``n``, ``opts``, ``students``, ``teachers``."""

    def _compute_lean(self, b: int) -> None:
        """Each block alone on the device (teacher ``i`` and student ``i``; the rest on the host):
        teacher times on the relayed activation, then the student's; infeasible only if it does not
        fit alone (later blocks then have no input at this size)."""
        self._boundary()
        x = self._first_input(b)
        note = "measured alone (other blocks offloaded)"
        start = self._warm_step()
        for i in range(self.n):
            self._boundary()
            if x is None:
                self._infeasible(i, b)
                continue
            self._only(i)
            try:
                y = self._teacher(i, x)
                with torch.no_grad():
                    t_times = [self._time(lambda: self.teachers[i](x)) for _ in range(self.opts.trials)]
            except Exception as e:  # noqa: BLE001
                if not is_oom(e):
                    raise
                self._infeasible(i, b)
                x = None
                self._free()
                continue
            self._row("teacher", block=i, batch=b, seconds=statistics.median(t_times), note=note)
            try:
                trainer, mem, method = self._student(i, x, y)

                def step(k: int) -> None:
                    trainer.begin(k)
                    trainer.accumulate(x, y)
                    trainer.apply()

                s_times = [self._time(lambda k=k: step(start + k)) for k in range(1, self.opts.trials + 1)]
                central = statistics.mean if getattr(self.students[i], "is_supernet", False) else statistics.median
                self._row("student", block=i, batch=b, seconds=central(s_times), note=note)
                self._row("memory", block=i, batch=b, bytes=mem, note=f"{method}; {note}")
                del trainer
            except Exception as e:  # noqa: BLE001
                if not is_oom(e):
                    raise
                self._row("student", block=i, batch=b, feasible=0, note="out of memory alone")
                self._row("memory", block=i, batch=b, feasible=0, note="out of memory alone")
            self._free()
            x = y

    def _only(self, i: int) -> None:
        """Teacher and student ``i`` on the device, every other block on the host."""
        host = torch.device("cpu")
        for j in range(self.n):
            where = self.device if j == i else host
            self.students[j].zero_grad(set_to_none=True)
            self.teachers[j].to(where)
            self.students[j].to(where)
        if self.cuda:
            torch.cuda.empty_cache()

