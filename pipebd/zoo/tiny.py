"""Tiny workloads for tests: 4 small blocks on 16×16 inputs that train in seconds on a CPU.

``tiny`` has a compression-style student (depthwise-separable copy of each teacher block;
``student_bn=False`` strips its BatchNorm for exact-equivalence checks). ``tiny-nas`` has
supernet student blocks (with the Zero choice on every cell but a block's first unless
``nas_zero=False``), so NAS path sampling is exercised at test speed.
"""

from __future__ import annotations

from torch import nn

from .layers import SupernetBlock, depthwise_separable
from .registry import Workload, WorkloadOptions, load_teacher_weights, register_workload


def _teacher(options: WorkloadOptions, res: int, classes: int) -> tuple[list[nn.Module], list[int]]:
    w = [max(4, int(c * options.width_mult)) for c in (8, 16, 16, 32)]

    def cbr(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    full = nn.Sequential(
        nn.Sequential(*cbr(3, w[0], 1)),
        nn.Sequential(*cbr(w[0], w[1], 2)),
        nn.Sequential(*cbr(w[1], w[2], 1)),
        nn.Sequential(*cbr(w[2], w[3], 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(w[3], classes)),
    )
    return full, w


def _strip_bn(m: nn.Module) -> nn.Module:
    for name, child in m.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(m, name, nn.Identity())
        else:
            _strip_bn(child)
    return m


@register_workload("tiny", description="4 conv blocks at 16 px, depthwise-separable student (tests)")
def tiny(options: WorkloadOptions) -> Workload:
    res = options.resolution or 16
    classes = options.num_classes or 10
    full, _ = _teacher(options, res, classes)
    load_teacher_weights(full, options.teacher_weights, "tiny")
    t_blocks = list(full)
    students = [depthwise_separable(b) for b in t_blocks]
    if not options.student_bn:
        students = [_strip_bn(s) for s in students]
    return Workload(name="tiny", teacher=t_blocks, student=students, input_shape=(3, res, res),
                    num_classes=classes, default_dataset="synthetic", options=options)


@register_workload("tiny-nas", description="4 conv blocks at 16 px, small supernet student (tests)")
def tiny_nas(options: WorkloadOptions) -> Workload:
    res = options.resolution or 16
    classes = options.num_classes or 10
    full, w = _teacher(options, res, classes)
    load_teacher_weights(full, options.teacher_weights, "tiny-nas")
    strides = (1, 2, 1, 2)
    students: list[nn.Module] = []
    for i in range(4):
        cin = 3 if i == 0 else w[i - 1]
        suffix = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(w[3], classes)) if i == 3 else None
        students.append(SupernetBlock(cin, w[i], cells=2 if i < 3 else 1, stride=strides[i], suffix=suffix,
                                       zero=options.nas_zero))
    return Workload(name="tiny-nas", teacher=list(full), student=students, input_shape=(3, res, res),
                    num_classes=classes, default_dataset="synthetic", options=options)
