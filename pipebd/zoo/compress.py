"""Compression workloads (blockwise distillation into depthwise-separable students,
Blakeney et al., "Parallel Blockwise Knowledge Distillation for Deep Neural Network
Compression", IEEE TPDS 2021).

Two teachers, each at CIFAR (32 px) and ImageNet (224 px) size:
- VGG-16-BN, cut at its five pooling layers; the classifier joins the last block. The CIFAR
  variant ends in a 512→classes linear layer; the ImageNet one is torchvision's ``vgg16_bn``.
- ResNet-50 (torchvision), cut at its four stages (the stem joins the first, pooling and the
  classifier the last); the CIFAR variant has a 3×3 stride-1 stem and no max-pool.
The student block is the teacher block with every 3×3 convolution made depthwise-separable
(:func:`~pipebd.zoo.layers.depthwise_separable`).
"""

from __future__ import annotations

from torch import nn

from .layers import depthwise_separable
from .registry import Workload, WorkloadOptions, load_teacher_weights, register_workload


def _finish(name: str, t_blocks: list[nn.Module], options: WorkloadOptions, res: int, classes: int,
            cifar: bool) -> Workload:
    return Workload(
        name=name, teacher=t_blocks, student=[depthwise_separable(b) for b in t_blocks],
        input_shape=(3, res, res), num_classes=classes,
        default_dataset="cifar10" if cifar else "imagenet", options=options,
    )


def _vgg16(options: WorkloadOptions, *, cifar: bool) -> Workload:
    res = options.resolution or (32 if cifar else 224)
    classes = options.num_classes or (10 if cifar else 1000)
    from torchvision.models.vgg import VGG, cfgs, make_layers  # torchvision on first use: ~2 s of imports

    cfg = [v if v == "M" else max(8, int(v * options.width_mult)) for v in cfgs["D"]]
    top = cfg[-2]
    teacher = VGG(make_layers(cfg, batch_norm=True), num_classes=classes)
    if cifar:
        teacher.avgpool = nn.AdaptiveAvgPool2d(1)
        teacher.classifier = nn.Linear(top, classes)
    elif top != 512:
        teacher.classifier[0] = nn.Linear(top * 7 * 7, 4096)
    name = f"compress-vgg16-{'cifar10' if cifar else 'imagenet'}"
    load_teacher_weights(teacher, options.teacher_weights, name)
    blocks, start = [], 0
    for i, layer in enumerate(teacher.features):
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(list(teacher.features[start:i + 1]))
            start = i + 1
    blocks[-1] += [teacher.avgpool, nn.Flatten(1), teacher.classifier]
    return _finish(name, [nn.Sequential(*b) for b in blocks], options, res, classes, cifar)


def _resnet50(options: WorkloadOptions, *, cifar: bool) -> Workload:
    res = options.resolution or (32 if cifar else 224)
    classes = options.num_classes or (10 if cifar else 1000)
    # torchvision's ResNet has fixed stage widths; the multiplier scales the bottleneck width.
    from torchvision.models import resnet50  # torchvision on first use: ~2 s of imports

    teacher = resnet50(num_classes=classes, width_per_group=max(8, int(64 * options.width_mult)))
    if cifar:
        teacher.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        teacher.maxpool = nn.Identity()
    name = f"compress-resnet50-{'cifar10' if cifar else 'imagenet'}"
    load_teacher_weights(teacher, options.teacher_weights, name)
    t = teacher
    blocks = [
        nn.Sequential(t.conv1, t.bn1, t.relu, t.maxpool, t.layer1),
        nn.Sequential(t.layer2),
        nn.Sequential(t.layer3),
        nn.Sequential(t.layer4, t.avgpool, nn.Flatten(1), t.fc),
    ]
    return _finish(name, blocks, options, res, classes, cifar)


@register_workload("compress-vgg16-cifar10", aliases=("compress-cifar10",),
                   description="VGG-16-BN (CIFAR) teacher, depthwise-separable student, 5 blocks, 32 px")
def compress_vgg16_cifar10(options: WorkloadOptions) -> Workload:
    return _vgg16(options, cifar=True)


@register_workload("compress-vgg16-imagenet", aliases=("compress-imagenet",),
                   description="torchvision vgg16_bn teacher, depthwise-separable student, 5 blocks, 224 px")
def compress_vgg16_imagenet(options: WorkloadOptions) -> Workload:
    return _vgg16(options, cifar=False)


@register_workload("compress-resnet50-cifar10",
                   description="ResNet-50 (CIFAR stem) teacher, depthwise-separable student, 4 blocks, 32 px")
def compress_resnet50_cifar10(options: WorkloadOptions) -> Workload:
    return _resnet50(options, cifar=True)


@register_workload("compress-resnet50-imagenet",
                   description="torchvision resnet50 teacher, depthwise-separable student, 4 blocks, 224 px")
def compress_resnet50_imagenet(options: WorkloadOptions) -> Workload:
    return _resnet50(options, cifar=False)
