"""Launching ranks: local spawn under supervision, the torchrun entry, root-cause reports.

``python -m pipebd run`` (:mod:`pipebd.runner`) and ``python -m pipebd profile``
(:mod:`pipebd.profiler`) both start their ranks here, so a failing, killed or hung rank ends
either with a non-zero exit naming the rank and its cause, and no process is left
(DESIGN.md §5):

- :func:`spawn_supervised` (:mod:`.spawn`): local ranks on a ``TCPStore``, heartbeats,
  grace / SIGTERM / SIGKILL, SIGINT and SIGTERM handling;
- :func:`root_cause`, :class:`RunFailed`, :class:`RunInterrupted` (:mod:`.rootcause`);
- :func:`under_torchrun`, :func:`torchrun_rank`, :func:`init_rank` (:mod:`.rank`).
"""

from .rank import init_rank, torchrun_rank, under_torchrun
from .rootcause import RunFailed, RunInterrupted, root_cause
from .spawn import spawn_supervised, stop_all

__all__ = ["spawn_supervised", "stop_all", "RunFailed", "RunInterrupted", "root_cause", "under_torchrun",
           "torchrun_rank", "init_rank"]
