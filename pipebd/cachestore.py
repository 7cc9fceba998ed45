"""The teacher-activation store of the ``cache`` strategy: one memory-mapped file per boundary.

LoLCATs (Zhang et al., ICLR 2025) runs the teacher once, saves every block's input and output
hidden states, and then trains each block from them alone. Here the store holds, for every block
boundary ``k = 1..n`` (the teacher's output of block ``k - 1``; the input images are loaded, not
stored), one row per dataset sample, indexed by the sample's index in the dataset: so batch ``k``
of any epoch (:meth:`pipebd.data.DataSource.indices`) reads exactly its samples, however an epoch
shuffles them.

- **Where.** In host memory (files under ``/dev/shm``, shared by the ranks of one host) when the
  store fits under ``--cache-memory``, else under ``--cache-dir`` on disk. Either way each file is
  mapped with ``torch.from_file(..., shared=True)``: fixed shapes, written in place, read by gather.
  Ranks on other hosts need ``--cache-dir`` on a shared file system.
- **Never half-read.** ``manifest.json`` (written atomically by rank 0 before anything else)
  records the key — workload sizes, teacher weights, seed, data, batch, compute modes, dtype — and
  the shapes; a batch is *complete* once its marker file ``done/<step>-<lo>-<hi>`` exists, which
  is written (atomically, after an ``fsync`` of the data on disk) only after all of the batch's
  boundaries are. A rank skips the teacher pass of a complete batch, so an interrupted teacher pass
  resumes where it stopped and a later run with the same key reuses a complete store. When the
  store is rebuilt every epoch (``--augment``), nothing is skipped.
- **Prefetch.** :meth:`ActivationStore.prefetch` reads the next step's rows in a background thread
  while this step trains.

A host-memory store is removed at the end of a successful run (it is RAM); a disk store is kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .fileio import atomic_write_text, fsync_path

__all__ = ["StoreSpec", "ActivationStore", "DTYPES", "store_key"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHM = "/dev/shm"


@dataclass(frozen=True)
class StoreSpec:
    """Where the store lives and what it holds (the same on every rank; computed before spawn)."""

    path: str  # the store's directory
    medium: str  # "memory" (under /dev/shm) or "disk"
    rows: int  # dataset samples (the index space)
    shapes: tuple[tuple[int, ...], ...]  # per boundary 1..n: one sample's shape
    dtypes: tuple[str, ...]  # per boundary 1..n: fp32 / bf16 / fp16
    key: str  # what the stored values are a function of (hashed into the path)
    reuse: bool = True  # False: rebuilt every epoch, so no batch counts as complete from before

    def boundary_bytes(self, k: int) -> int:
        """Bytes of one sample of boundary ``k`` (1..n)."""
        return math.prod(self.shapes[k - 1]) * DTYPES[self.dtypes[k - 1]].itemsize

    def sample_bytes(self) -> int:
        return sum(self.boundary_bytes(k) for k in range(1, len(self.shapes) + 1))


def store_key(**parts) -> str:
    """A short hash of what the stored activations depend on."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ActivationStore:
    """One rank's handle on the store: rank 0 :meth:`create`\ s it, then (after a barrier) every rank
    :meth:`map`\ s it."""

    def __init__(self, spec: StoreSpec, rank: int):
        self.spec, self.rank = spec, rank
        self.maps: dict[int, torch.Tensor] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[tuple, Future] = {}

    # ---------------------------------------------------------------- set-up
    def _file(self, k: int) -> str:
        return os.path.join(self.spec.path, f"boundary-{k}.bin")

    def _marker(self, step: int, rows: tuple[int, int]) -> str:
        return os.path.join(self.spec.path, "done", f"{step}-{rows[0]}-{rows[1]}")

    def create(self) -> None:
        """Rank 0, before the others map it: the directory, a manifest naming the key and the
        shapes, and every boundary's file at its full (sparse) size. A manifest of another key (a
        hash collision, or a hand-edited directory) is refused rather than overwritten."""
        s = self.spec
        os.makedirs(os.path.join(s.path, "done"), exist_ok=True)
        manifest = os.path.join(s.path, "manifest.json")
        want = {"key": s.key, "rows": s.rows, "shapes": [list(x) for x in s.shapes], "dtypes": list(s.dtypes)}
        if os.path.exists(manifest):
            with open(manifest) as f:
                have = json.load(f)
            if have != want:
                raise RuntimeError(f"the activation store {s.path} holds something else (its manifest differs); "
                                   "remove that directory or use another --cache-dir")
        if not s.reuse:  # rebuilt every epoch: what an earlier run stored is stale
            shutil.rmtree(os.path.join(s.path, "done"), ignore_errors=True)
            os.makedirs(os.path.join(s.path, "done"), exist_ok=True)
        for k in range(1, len(s.shapes) + 1):
            path, size = self._file(k), s.rows * s.boundary_bytes(k)
            if not os.path.exists(path) or os.path.getsize(path) != size:
                with open(path, "wb") as f:
                    f.truncate(size)
        if not os.path.exists(manifest):
            atomic_write_text(manifest, json.dumps(want, indent=1) + "\n", fsync=s.medium == "disk")

    def map(self) -> None:
        """Map every boundary's file (after rank 0's :meth:`create` and a barrier)."""
        s = self.spec
        for k in range(1, len(s.shapes) + 1):
            flat = torch.from_file(self._file(k), shared=True, size=s.rows * math.prod(s.shapes[k - 1]),
                                   dtype=DTYPES[s.dtypes[k - 1]])
            self.maps[k] = flat.view(s.rows, *s.shapes[k - 1])

    # ---------------------------------------------------------------- use
    def complete(self, step: int, rows: tuple[int, int]) -> bool:
        """Whether rows ``rows`` of batch ``step`` are stored (and may be reused)."""
        return self.spec.reuse and os.path.exists(self._marker(step, rows))

    def put(self, k: int, indices: torch.Tensor, x: torch.Tensor) -> None:
        """Write activation rows ``x`` of boundary ``k`` at dataset rows ``indices``."""
        self.maps[k].index_copy_(0, indices, x.detach().to("cpu", self.maps[k].dtype))

    def mark_complete(self, step: int, rows: tuple[int, int]) -> None:
        """Every boundary of rows ``rows`` of batch ``step`` is written: flush (disk) and mark it."""
        if self.spec.medium == "disk":
            for k in self.maps:
                fsync_path(self._file(k))
        atomic_write_text(self._marker(step, rows), "", fsync=self.spec.medium == "disk")

    def _read(self, k: int, indices: torch.Tensor) -> torch.Tensor:
        return self.maps[k].index_select(0, indices)

    def prefetch(self, key: tuple, k: int, indices: torch.Tensor) -> None:
        """Start reading boundary ``k`` at ``indices`` in the background (``get(key, ...)`` takes it)."""
        if key in self._ahead:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipebd-store")
        self._ahead[key] = self._pool.submit(self._read, k, indices)

    def get(self, key: tuple, k: int, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Boundary ``k``'s rows at ``indices`` on ``device`` (a prefetched read if one was started)."""
        fut = self._ahead.pop(key, None)
        x = fut.result() if fut is not None else self._read(k, indices)
        return x.to(device, non_blocking=True) if device.type != "cpu" else x

    def close(self, *, remove: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._ahead.clear()
        self.maps.clear()
        if remove:
            shutil.rmtree(self.spec.path, ignore_errors=True)


