"""``python -m pipebd zoo``: a table of every workload — blocks, per-block parameters and
forward FLOPs of teacher and student (counted by ``torch.utils.flop_counter``), and the
activation shape at each block boundary."""

from __future__ import annotations

from .costs import block_facts
from .zoo import WorkloadOptions, canonical_name, workload_names

__all__ = ["zoo_rows", "print_zoo"]


def zoo_rows(names: list[str] | None = None, *, resolution: int | None = None) -> list[dict]:
    """One row per (workload, block); FLOPs are per sample, supernet FLOPs for one sampled path."""
    rows = []
    for name in names or workload_names():
        canon = canonical_name(name)
        for i, f in enumerate(block_facts(canon, WorkloadOptions(resolution=resolution))):
            rows.append({"workload": canon, "block": i, "in_shape": f.in_shape, "out_shape": f.out_shape,
                         "teacher_params": f.teacher_params, "student_params": f.student_params,
                         "teacher_mflops": f.teacher_flops / 1e6, "student_mflops": f.student_flops / 1e6})
    return rows


def print_zoo(names: list[str] | None = None, *, resolution: int | None = None) -> None:
    rows = zoo_rows(names, resolution=resolution)
    hdr = f"{'workload':<28}{'blk':>4}  {'in → out':<34}{'T params':>13}{'S params':>13}{'T MFLOPs':>10}{'S MFLOPs':>10}"
    print(hdr)
    print("-" * len(hdr))
    last = None
    for r in rows:
        name = r["workload"] if r["workload"] != last else ""
        if name and last is not None:
            print()
        last = r["workload"]
        shapes = f"{'x'.join(map(str, r['in_shape']))} → {'x'.join(map(str, r['out_shape']))}"
        print(f"{name:<28}{r['block']:>4}  {shapes:<34}{r['teacher_params']:>13,}{r['student_params']:>13,}"
              f"{r['teacher_mflops']:>10.1f}{r['student_mflops']:>10.1f}")
    print("\nFLOPs are forward, per sample (supernet students: one sampled path). "
          "Aliases: compress-cifar10 = compress-vgg16-cifar10, compress-imagenet = compress-vgg16-imagenet.")
