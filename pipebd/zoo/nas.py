"""NAS workloads (DNA-style blockwise supernet distillation, Li et al. CVPR 2020).

The teacher is MobileNetV2 (torchvision's implementation), cut into 6 blocks at its stage
boundaries: the stem and the first two stages form block 0, the head and classifier join
block 5 (whose target is the teacher's logits). Each student block is a ProxylessNAS-style
supernet (:class:`~pipebd.zoo.layers.SupernetBlock`) with 2, 4, 4, 4, 4, 1 mixed cells of
MBConv choices kernel {3, 5, 7} × expansion {3, 6}, as in Pipe-BD's NAS experiments, plus a
Zero (skip) choice on every cell but the first of each stage (1 + 3 + 3 + 3 + 3 + 0 = 13 of the
19 cells; ``WorkloadOptions(nas_zero=False)`` / ``--no-nas-zero`` drops it).

``nas-cifar10`` uses the CIFAR variant (32 px, stem stride 1, stage strides 1,2,2,1,2,1);
``nas-imagenet`` uses torchvision's ``mobilenet_v2`` at 224 px (stage strides 2,2,2,1,2,1).
"""

from __future__ import annotations

from torch import nn

from .layers import MBConv, SupernetBlock, make_divisible
from .registry import Workload, WorkloadOptions, load_teacher_weights, register_workload

#: (expansion, width, cells, stride) of each MobileNetV2 row; row 0 is the t=1 cell of the stem.
_STEM_ROW = [1, 16, 1, 1]
_STAGE_WIDTHS = (24, 32, 64, 96, 160, 320)
_TEACHER_CELLS = (2, 3, 4, 3, 3, 1)
_STUDENT_CELLS = (2, 4, 4, 4, 4, 1)
_CIFAR_STRIDES = (1, 2, 2, 1, 2, 1)
_IMAGENET_STRIDES = (2, 2, 2, 1, 2, 1)


def _build(options: WorkloadOptions, *, cifar: bool) -> Workload:
    from torchvision.models.mobilenetv2 import MobileNetV2  # torchvision on first use: ~2 s of imports
    from torchvision.ops.misc import Conv2dNormActivation

    res = options.resolution or (32 if cifar else 224)
    classes = options.num_classes or (10 if cifar else 1000)
    wm = options.width_mult
    strides = _CIFAR_STRIDES if cifar else _IMAGENET_STRIDES
    setting = [_STEM_ROW] + [[6, w, n, s] for w, n, s in zip(_STAGE_WIDTHS, _TEACHER_CELLS, strides)]
    teacher = MobileNetV2(num_classes=classes, width_mult=wm, inverted_residual_setting=setting)
    stem_ch = make_divisible(32 * wm)
    if cifar:  # CIFAR stem keeps the 32 px resolution
        teacher.features[0] = Conv2dNormActivation(3, stem_ch, stride=1, norm_layer=nn.BatchNorm2d,
                                                   activation_layer=nn.ReLU6)
    load_teacher_weights(teacher, options.teacher_weights, "nas-cifar10" if cifar else "nas-imagenet")

    # features: [stem, t=1 cell, stage0 cells..., stage5 cells, head conv]
    bounds = [2]
    for n in _TEACHER_CELLS:
        bounds.append(bounds[-1] + n)
    f = teacher.features
    t_blocks: list[nn.Module] = []
    for i in range(6):
        lo = 0 if i == 0 else bounds[i]
        hi = bounds[i + 1]
        layers = list(f[lo:hi])
        if i == 5:
            layers += [f[hi], nn.AdaptiveAvgPool2d(1), nn.Flatten(1), teacher.classifier]
        t_blocks.append(nn.Sequential(*layers))

    widths = [make_divisible(w * wm) for w in _STAGE_WIDTHS]
    c16 = make_divisible(16 * wm)
    last = make_divisible(1280 * max(1.0, wm))
    s_blocks: list[nn.Module] = []
    for i in range(6):
        prefix = suffix = None
        cin = widths[i - 1] if i else c16
        if i == 0:
            prefix = nn.Sequential(
                Conv2dNormActivation(3, stem_ch, stride=1 if cifar else 2, norm_layer=nn.BatchNorm2d,
                                     activation_layer=nn.ReLU6),
                MBConv(stem_ch, c16, stride=1, expansion=1),
            )
        if i == 5:
            suffix = nn.Sequential(
                Conv2dNormActivation(widths[i], last, kernel_size=1, norm_layer=nn.BatchNorm2d,
                                     activation_layer=nn.ReLU6),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(last, classes),
            )
        s_blocks.append(SupernetBlock(cin, widths[i], cells=_STUDENT_CELLS[i], stride=strides[i],
                                      prefix=prefix, suffix=suffix, zero=options.nas_zero))
    return Workload(
        name="", teacher=t_blocks, student=s_blocks, input_shape=(3, res, res), num_classes=classes,
        default_dataset="cifar10" if cifar else "imagenet", options=options,
    )


@register_workload("nas-cifar10", description="MobileNetV2-CIFAR teacher, ProxylessNAS supernet student, 6 blocks, 32 px")
def nas_cifar10(options: WorkloadOptions) -> Workload:
    return _build(options, cifar=True)


@register_workload("nas-imagenet", description="torchvision mobilenet_v2 teacher, ProxylessNAS supernet student, 6 blocks, 224 px")
def nas_imagenet(options: WorkloadOptions) -> Workload:
    return _build(options, cifar=False)
