"""The model zoo: named workloads of teacher and student blocks (see :mod:`.registry`)."""

from . import compress, llm, mnist, nas, tiny  # noqa: F401  (registers the workloads)
from .layers import sample_path
from .registry import (BlockOwnership, NotOwned, Workload, WorkloadError, WorkloadOptions, build_workload,
                       canonical_name, workload_names)

__all__ = ["Workload", "WorkloadError", "WorkloadOptions", "BlockOwnership", "NotOwned", "build_workload",
           "canonical_name", "workload_names", "sample_path"]
