"""The error types of pipebd, at the bottom of the layers: this module imports nothing of ours.

Every error a user can act on before a run starts is a :class:`ConfigError` (the CLI prints its
message and exits 2). The modules that raise the others re-export them where they always were
(``pipebd.config.ConfigError``, ``pipebd.data.DataError``, ``pipebd.zoo.WorkloadError``,
``pipebd.checkpoint.CheckpointError``, ``pipebd.planner.PlanError``), so a caller can catch any
of them without importing torch.
"""

from __future__ import annotations

__all__ = ["ConfigError", "CheckpointError", "PlanError", "DataError", "WorkloadError"]


class ConfigError(ValueError):
    """The run configuration is invalid; the message says what, the allowed values and a fix."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be used (another run's, corrupt, incomplete)."""


class PlanError(ConfigError):
    """No layout satisfies the request (devices, batch size, memory); the message says what to change."""


class DataError(ValueError):
    """The data source cannot be used as configured."""


class WorkloadError(ValueError):
    """A workload could not be built as asked (unknown name, bad option, bad weights)."""
