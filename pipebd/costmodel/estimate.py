"""Cost tables without a profile: FLOP-count estimates, random tables for tests, epoch sizes."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .table import CostTable, _ring, candidate_batches

__all__ = ["EstimateSpec", "ESTIMATE_SPECS", "estimate_cost_table", "random_cost_table", "epoch_steps"]

@dataclass(frozen=True)
class EstimateSpec:
    """Rough device constants turning FLOPs and bytes into seconds (no profile available)."""

    flops_per_s: float
    overhead_s: float  # fixed seconds per block call (kernel launches, Python)
    p2p_bytes_per_s: float
    allreduce_bytes_per_s: float
    latency_s: float
    data_per_sample_s: float


ESTIMATE_SPECS = {
    "cuda": EstimateSpec(flops_per_s=8e12, overhead_s=3e-4, p2p_bytes_per_s=2e10, allreduce_bytes_per_s=2e10,
                         latency_s=3e-5, data_per_sample_s=2e-5),
    "cpu": EstimateSpec(flops_per_s=3e10, overhead_s=1e-3, p2p_bytes_per_s=2e9, allreduce_bytes_per_s=1e9,
                        latency_s=1e-4, data_per_sample_s=1e-4),
}


def estimate_cost_table(cfg, *, devices: int | None = None, spec: EstimateSpec | None = None) -> CostTable:
    """A :class:`CostTable` from FLOP counts and sizes (:func:`pipebd.costs.block_facts`).

    Student train FLOPs = 3× its forward FLOPs;
    seconds = FLOPs × rows / ``spec.flops_per_s`` + a fixed per-call overhead; relays and
    all-reduces from activation and parameter bytes. Good enough to rank layouts before a
    profile exists; absolute times are not meaningful.
    """
    from ..costs import block_facts
    from ..options import workload_sizes
    from ..zoo import canonical_name

    spec = spec or ESTIMATE_SPECS.get(cfg.device_type, ESTIMATE_SPECS["cpu"])
    devices = devices or cfg.devices
    facts = block_facts(cfg.workload, workload_sizes(cfg))
    t_flops = [f.teacher_flops for f in facts]
    act = [float(math.prod(facts[0].in_shape) * 4)] + [float(math.prod(f.out_shape) * 4) for f in facts]
    t_bytes = [float(f.teacher_params * 4) for f in facts]
    s_bytes = [float(f.student_params * 4) for f in facts]
    n = len(t_flops)
    batches = candidate_batches(cfg.batch_size, max(devices, 4))  # >= 3 sizes: the fixed part is fitted
    teacher, student, relay, allreduce = [], [], [], []
    for i in range(n):
        s_flops = 3 * facts[i].student_flops  # forward + backward
        teacher.append({b: spec.overhead_s + t_flops[i] * b / spec.flops_per_s for b in batches})
        student.append({b: 3 * spec.overhead_s + s_flops * b / spec.flops_per_s for b in batches})
        relay.append({} if i == 0 else {b: spec.latency_s + act[i] * b / spec.p2p_bytes_per_s for b in batches})
        allreduce.append({g: spec.latency_s * math.log2(g) + _ring(g) * s_bytes[i] / spec.allreduce_bytes_per_s
                          for g in range(2, max(2, devices) + 1)})
    return CostTable(num_blocks=n, teacher=teacher, student=student, data_per_sample=spec.data_per_sample_s,
                     relay=relay, allreduce=allreduce, static_memory=[t_bytes[i] + 2 * s_bytes[i] for i in range(n)],
                     activation_bytes=act, barrier={g: spec.latency_s * math.log2(g) for g in range(2, devices + 1)},
                     workload=canonical_name(cfg.workload), device_type=cfg.device_type, devices=devices,
                     batch_size=cfg.batch_size, source="estimate")


def random_cost_table(seed: int, num_blocks: int, devices: int, batch_size: int, *,
                      with_memory: bool = False) -> CostTable:
    """A random but plausible table (fixed overhead + per-sample cost, comm costs) for tests and scaling."""
    rng = random.Random(seed)
    batches = candidate_batches(batch_size, devices)
    teacher, student, relay, allreduce, memory, static = [], [], [], [], [], []
    act = [rng.uniform(1e3, 1e5) for _ in range(num_blocks + 1)]
    for i in range(num_blocks):
        t_fix, t_ps = rng.uniform(1e-4, 2e-3), rng.uniform(1e-5, 5e-4)
        s_fix, s_ps = rng.uniform(5e-4, 5e-3), rng.uniform(5e-5, 2e-3)
        teacher.append({b: t_fix + t_ps * b for b in batches})
        student.append({b: s_fix + s_ps * b * rng.uniform(0.9, 1.1) for b in batches})
        relay.append({} if i == 0 else {b: 1e-5 + act[i] * b / 5e9 for b in batches})
        pbytes = rng.uniform(1e5, 5e7)
        allreduce.append({g: 2e-5 * math.log2(g) + _ring(g) * pbytes / 5e9 for g in range(2, devices + 1)})
        st = rng.uniform(1e6, 1e8)
        static.append(st)
        per = rng.uniform(1e4, 1e6)
        memory.append({b: st + per * b for b in batches} if with_memory else {})
    return CostTable(num_blocks=num_blocks, teacher=teacher, student=student, data_per_sample=rng.uniform(0, 1e-4),
                     relay=relay, allreduce=allreduce, memory=memory, static_memory=static, activation_bytes=act,
                     barrier={g: 1e-5 * math.log2(g) for g in range(2, devices + 1)}, workload=f"random-{seed}",
                     devices=devices, batch_size=batch_size, source="synthetic")


def epoch_steps(workload: str, batch_size: int) -> int:
    """Steps of one epoch of the dataset ``workload`` stands in for (50 000 CIFAR / 1 281 167 ImageNet)."""
    from ..data import EPOCH_SAMPLES

    try:
        import torch

        from ..zoo import build_workload

        with torch.device("meta"):
            ds = build_workload(workload, probe=False).default_dataset
    except Exception:  # noqa: BLE001 — an unknown or synthetic workload: CIFAR-10's size
        ds = "cifar10"
    return max(1, EPOCH_SAMPLES.get(ds, EPOCH_SAMPLES["cifar10"]) // batch_size)
