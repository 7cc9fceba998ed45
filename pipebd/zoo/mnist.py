"""Workloads for the real digits of ``--data mnist5k`` (1×28×28, 10 classes): one small CNN teacher,
two students.

The teacher is a VGG-style CNN (3×3 conv + BN + ReLU, Simonyan & Zisserman 2015) of about 0.32 M
parameters in 5 blocks; the classifier joins the last block, whose output (the distillation
target) is the teacher's logits, as in ``compress-cifar10``. Boundary shapes at 28 px::

    1x28x28 -> 32x14x14 -> 64x7x7 -> 64x7x7 -> 128x4x4 -> 10

The full teacher is one ``nn.Sequential`` of the 5 blocks (:func:`mnist_teacher`), so its
``state_dict`` — what ``python -m pipebd teacher`` saves (:mod:`pipebd.commands.teacher`) — is the
one ``--teacher-weights`` loads with strict keys into either workload.

- ``compress-mnist``: each student block is the teacher block with every 3×3 convolution
  depthwise-separable (Blakeney et al. 2021; :func:`~pipebd.zoo.layers.depthwise_separable`) but
  the first, on the one grey channel, which stays full as MobileNet's first layer does.
- ``nas-mnist``: each student block is a ProxylessNAS-style supernet stage (DNA, Li et al. 2020;
  :class:`~pipebd.zoo.layers.SupernetBlock`: MBConv kernel {3, 5, 7} × expansion {3, 6}, plus Zero on
  every cell but a stage's first) with 2, 2, 2, 2, 1 cells; a 3×3 stem joins block 0 and the
  pooling and classifier join block 4. Downsampling is the first cell's stride where the teacher
  pools.
"""

from __future__ import annotations

from torch import nn

from .layers import SupernetBlock, depthwise_separable
from .registry import Workload, WorkloadOptions, load_teacher_weights, register_workload

__all__ = ["mnist_teacher", "MNIST_WORKLOADS"]

#: The workloads whose teacher is :func:`mnist_teacher` (``python -m pipebd teacher`` trains it).
MNIST_WORKLOADS = ("compress-mnist", "nas-mnist")
_WIDTHS = (16, 32, 64, 64, 128, 128)
_STUDENT_CELLS = (2, 2, 2, 2, 1)
_STRIDES = (2, 2, 1, 2, 1)  # each block's downsampling (teacher: max-pool or a stride-2 conv)


def _widths(options: WorkloadOptions) -> list[int]:
    return [max(4, int(c * options.width_mult)) for c in _WIDTHS]


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def mnist_teacher(options: WorkloadOptions) -> nn.Sequential:
    """The full teacher (random init from the current RNG): ``nn.Sequential`` of its 5 blocks."""
    w = _widths(options)
    classes = options.num_classes or 10
    return nn.Sequential(
        nn.Sequential(*_cbr(1, w[0]), *_cbr(w[0], w[1]), nn.MaxPool2d(2)),
        nn.Sequential(*_cbr(w[1], w[2]), nn.MaxPool2d(2)),
        nn.Sequential(*_cbr(w[2], w[3]), *_cbr(w[3], w[3])),
        nn.Sequential(*_cbr(w[3], w[4], stride=2)),
        nn.Sequential(*_cbr(w[4], w[5]), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(w[5], classes)),
    )


def _teacher_blocks(options: WorkloadOptions, name: str) -> list[nn.Module]:
    full = mnist_teacher(options)
    load_teacher_weights(full, options.teacher_weights, name)
    return list(full)


def _workload(name: str, options: WorkloadOptions, teacher: list[nn.Module], student: list[nn.Module]) -> Workload:
    res = options.resolution or 28
    return Workload(name=name, teacher=teacher, student=student, input_shape=(1, res, res),
                    num_classes=options.num_classes or 10, default_dataset="mnist5k", options=options)


@register_workload("compress-mnist", description="VGG-style CNN teacher (0.32 M), depthwise-separable student, "
                   "5 blocks, 1x28x28 (--data mnist5k)")
def compress_mnist(options: WorkloadOptions) -> Workload:
    teacher = _teacher_blocks(options, "compress-mnist")
    return _workload("compress-mnist", options, teacher, [depthwise_separable(b, full_below=4) for b in teacher])


@register_workload("nas-mnist", description="VGG-style CNN teacher (0.32 M), ProxylessNAS supernet student, "
                   "5 blocks, 1x28x28 (--data mnist5k)")
def nas_mnist(options: WorkloadOptions) -> Workload:
    teacher = _teacher_blocks(options, "nas-mnist")
    w = _widths(options)
    classes = options.num_classes or 10
    outs = [w[1], w[2], w[3], w[4], w[5]]
    students: list[nn.Module] = []
    for i, cout in enumerate(outs):
        cin = w[0] if i == 0 else outs[i - 1]
        prefix = nn.Sequential(nn.Conv2d(1, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]),
                               nn.ReLU6(inplace=True)) if i == 0 else None
        suffix = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cout, classes)) if i == 4 else None
        students.append(SupernetBlock(cin, cout, cells=_STUDENT_CELLS[i], stride=_STRIDES[i], prefix=prefix,
                                      suffix=suffix, zero=options.nas_zero))
    return _workload("nas-mnist", options, teacher, students)
