"""``python -m pipebd zoo``: a table of every workload — blocks, per-block parameters and
forward FLOPs of teacher and student (counted by ``torch.utils.flop_counter``), and the
activation shape at each block boundary."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .zoo import WorkloadOptions, build_workload, canonical_name, workload_names
from .zoo.layers import sample_path

__all__ = ["zoo_rows", "print_zoo"]


def _flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        module(x)
    return fc.get_total_flops()


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def zoo_rows(names: list[str] | None = None, *, resolution: int | None = None) -> list[dict]:
    """One row per (workload, block); FLOPs are per sample, supernet FLOPs for path 0."""
    rows = []
    for name in names or workload_names():
        wl = build_workload(canonical_name(name), WorkloadOptions(resolution=resolution))
        x = torch.zeros((1, *wl.input_shape))
        for i, (t, s) in enumerate(zip(wl.teacher, wl.student)):
            s.eval()
            path = sample_path(s, seed=0, block_index=i, step=0)
            if path is not None:
                s.set_path(path)
            y = t(x)
            rows.append({"workload": wl.name, "block": i, "in_shape": tuple(x.shape[1:]), "out_shape": tuple(y.shape[1:]),
                         "teacher_params": _params(t), "student_params": _params(s),
                         "teacher_mflops": _flops(t, x) / 1e6, "student_mflops": _flops(s, x) / 1e6,
                         "default_dataset": wl.default_dataset})
            x = y
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
