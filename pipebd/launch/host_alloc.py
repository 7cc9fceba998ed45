"""Keep freed host memory in the process: glibc ``mallopt`` for a rank's training loop.

PyTorch's CPU allocator is plain ``posix_memalign``/``free``: every tensor of a step (activations,
gradients, optimizer temporaries) goes back to glibc at the end of its life. glibc returns the top
of the heap to the kernel once more than ``M_TRIM_THRESHOLD`` (128 KiB) is free there, and serves
large requests with fresh ``mmap`` pages (threshold ``M_MMAP_THRESHOLD``, adjusted dynamically up to
32 MiB); so a step that frees ~1 GB and the next that allocates it again page-faults the whole
gigabyte afresh (zeroed by the kernel, ~1 us per 4 KiB page), every step. Measured on ``llm-smol``
(uneven library, 2 CPU ranks, bf16): student steps 287 ms / 104 ms (6- / 2-candidate blocks) with
glibc's defaults against 226 ms / 84 ms with the heap kept — which is what a long-lived profiling
process, whose heap has grown to its peak, measures. So a run paid ~25 % more than its profile
predicted, for nothing the schedule does.

:func:`keep_host_memory` (called by :func:`pipebd.launch.init_rank` on every rank, runs and
profiles alike, so both are measured in the same regime) raises the trim threshold and the top pad
and fixes the mmap threshold at its maximum: the heap grows to the step's peak once and is reused.
The cost is resident memory: a rank keeps its peak heap (it would reach it every step anyway).
``PIPEBD_HOST_MALLOC=default`` leaves glibc alone; off glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_host_memory", "TRIM_THRESHOLD", "TOP_PAD", "MMAP_THRESHOLD"]

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB free at the top of the heap
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time
MMAP_THRESHOLD = 32 << 20  # glibc's maximum (HEAP_MAX_SIZE / 2): larger blocks are still mmapped


def keep_host_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; True if it was applied."""
    if os.environ.get("PIPEBD_HOST_MALLOC", "").strip().lower() == "default":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
