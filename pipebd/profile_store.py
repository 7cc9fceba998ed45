"""What a profiling rank measures of the ``cache`` strategy's activation store (:mod:`pipebd.cachestore`).

The store is one memory-mapped file per boundary, written and read by gathering the rows of a
batch's samples (``index_copy_`` / ``index_select`` on a ``torch.from_file(shared=True)`` map).
Each rank times exactly that, at the same time as the others (contention included), on a file
of its own of ``32 MiB`` in rows of the workload's typical boundary (the median activation bytes
per sample), in random row order, each write to fresh pages (as a teacher pass writes each page
once: first touch included): in host memory (``/dev/shm``) and on disk (``--cache-dir``,
else the temporary directory; a write there includes the ``fsync`` a run pays to mark a batch
complete). Rows: kind ``store``, ``mode`` ``write:memory`` / ``read:memory`` / ``write:disk`` /
``read:disk``, the bytes moved and the median seconds.
"""

from __future__ import annotations

import os
import statistics
import tempfile

import torch

from .cachestore import SHM
from .fileio import fsync_path

__all__ = ["StoreMeasurements"]

_BYTES = 32 << 20


class StoreMeasurements:
    """Uses the profiler's ``rank``, ``cfg``, ``opts``, ``act_bytes``, ``_boundary``, ``_wall`` and ``_row``."""

    def _store(self) -> None:
        per_sample = statistics.median(self.act_bytes[1:] or self.act_bytes) or 4096
        width = max(1, int(per_sample // 4))
        rows = max(64, _BYTES // (width * 4))
        places = [("memory", SHM)] if os.path.isdir(SHM) else []
        places.append(("disk", self.cfg.cache_dir or tempfile.gettempdir()))
        for medium, where in places:
            self._boundary()
            os.makedirs(where, exist_ok=True)
            path = os.path.join(where, f"pipebd-profile-store-{os.getpid()}-{self.rank}.bin")
            try:
                x = torch.randn(rows, width)
                g = torch.Generator().manual_seed(self.rank)
                writes, reads = [], []
                for _ in range(self.opts.comm_trials):
                    # a fresh file each trial: a teacher pass writes every page of the store once, so its
                    # writes pay the first touch (page faults, zeroing); the reads that follow find them resident
                    with open(path, "wb") as f:
                        f.truncate(rows * width * 4)
                    mapped = torch.from_file(path, shared=True, size=rows * width,
                                             dtype=torch.float32).view(rows, width)
                    idx = torch.randperm(rows, generator=g)

                    def write() -> None:
                        mapped.index_copy_(0, idx, x)
                        if medium == "disk":
                            fsync_path(path)

                    writes.append(self._wall(write))
                    reads.append(self._wall(lambda: mapped.index_select(0, idx)))
                nbytes = rows * width * 4
                self._row("store", mode=f"write:{medium}", bytes=nbytes, seconds=statistics.median(writes))
                self._row("store", mode=f"read:{medium}", bytes=nbytes, seconds=statistics.median(reads))
                del mapped
            finally:
                if os.path.exists(path):
                    os.remove(path)
