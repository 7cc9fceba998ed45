"""What a profile measures: :class:`ProfileOptions` (trials, warm-up, per-replica batches)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import RunConfig
from .costmodel import candidate_batches

__all__ = ["ProfileOptions", "MIN_REPLICA_GROUPS"]

#: Fewest replica groups a profile covers (per-replica batches B, B/2, B/3, B/4): three or more
#: sizes let the cost model fit a fixed + per-sample cost (:mod:`pipebd.costfit`).
MIN_REPLICA_GROUPS = 4


@dataclass(frozen=True)
class ProfileOptions:
    out: str  # the CSV to write
    trials: int = 7  # timed repetitions of each compute configuration
    warmup: int = 2  # untimed repetitions before them
    comm_trials: int = 10  # timed repetitions of each relay / all-reduce / barrier
    replica_groups: int | None = None  # per-replica batches ceil(B/g), g = 1..G; None: max(ranks, 4)
    #: step index (so NAS path) of the first timed trial; trial k times step first_step + k. Give a
    #: run's first measured step (its --warmup) and trials = its --steps, and a supernet's profiled
    #: cost is that of exactly the paths the run trains. None: max(1, warmup).
    first_step: int | None = None

    @classmethod
    def for_config(cls, cfg: RunConfig, out: str, *, quick: bool = False,
                   replica_groups: int | None = None, first_step: int | None = None) -> "ProfileOptions":
        if quick:
            return cls(out=out, trials=2, warmup=1, comm_trials=3, replica_groups=replica_groups,
                       first_step=first_step)
        return cls(out=out, trials=cfg.steps, warmup=cfg.warmup, comm_trials=max(5, cfg.steps),
                   replica_groups=replica_groups, first_step=first_step)

    def groups(self, devices: int) -> int:
        """``G``: the largest replica group whose per-replica batch is profiled."""
        return self.replica_groups if self.replica_groups is not None else max(devices, MIN_REPLICA_GROUPS)

    def batches(self, batch_size: int, devices: int) -> list[int]:
        """The per-replica batch sizes profiled: ``ceil(B/g)`` for ``g = 1..G``, distinct, descending."""
        return candidate_batches(batch_size, self.groups(devices))
