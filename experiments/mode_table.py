"""Issue 12's table: per compute mode, the teacher forward and the student forward + backward of a
workload, summed over its blocks, on one thread at batch 64 (median of 3 and of 3 after one warm
step). Run it to see what bf16 and channels-last are worth on *this* CPU before trusting `auto`:

    .venv/bin/python experiments/mode_table.py compress-cifar10
    .venv/bin/python experiments/mode_table.py nas-cifar10      # students: the sampled paths of steps 1-3

It prints the CPU capability torch detected (AVX2, AVX512, ...): without native bf16 (no AVX-512)
oneDNN emulates bf16 and it is much slower than fp32.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from pipebd.distill import BlockTrainer, teacher_block
from pipebd.modes import MODES
from pipebd.zoo import WorkloadOptions, build_workload


def main(name: str, resolution: int | None = None, batch: int = 64) -> None:
    torch.set_num_threads(1)
    wl = build_workload(name, WorkloadOptions(resolution=resolution))
    x0 = torch.randn(batch, *wl.input_shape)
    print(f"{name}, batch {batch}, 1 thread, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    for mode in MODES:
        for m in wl.teacher + wl.student:
            m.to(memory_format=mode.memory_format())
        teacher_s = student_s = 0.0
        x = x0
        for i, (t, s) in enumerate(zip(wl.teacher, wl.student)):
            t.eval()
            y = teacher_block(t, x, mode)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                teacher_block(t, x, mode)
                times.append(time.perf_counter() - t0)
            teacher_s += statistics.median(times)
            trainer = BlockTrainer(index=i, block=s, last=i == wl.num_blocks - 1, total_steps=100, seed=0, mode=mode)
            times = []
            for k in range(4):
                trainer.begin(k)
                t0 = time.perf_counter()
                trainer.accumulate(x, y)
                times.append(time.perf_counter() - t0)
                trainer.apply()
            student_s += statistics.median(times[1:])
            x = y
        print(f"  {mode.label:<8} teacher fwd {teacher_s * 1e3:8.0f} ms   student fwd+bwd {student_s * 1e3:8.0f} ms")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
