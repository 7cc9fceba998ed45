"""Building blocks shared by the workloads.

- :class:`MBConv`: the inverted-residual cell of MobileNetV2 (Sandler et al., 2018).
- :class:`SupernetBlock`: a ProxylessNAS-style supernet block (Cai et al., 2019) as used by
  DNA (Li et al., 2020): every cell holds one MBConv per (kernel, expansion) choice and a
  training step runs one sampled path through the cells.
- :func:`depthwise_separable`: the compression student of Blakeney et al. (2021): a block
  where every 3×3 convolution is replaced by a depthwise 3×3 + BN + ReLU + pointwise 1×1.
- :func:`sample_path`: the path for (seed, block, step), identical on every rank.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["MBConv", "SupernetBlock", "depthwise_separable", "sample_path", "NAS_CHOICES", "make_divisible"]

#: (kernel, expansion) choices of every supernet cell, as in Pipe-BD's NAS setting.
NAS_CHOICES: tuple[tuple[int, int], ...] = tuple((k, e) for k in (3, 5, 7) for e in (3, 6))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channel counts as MobileNetV2 does (keeps widths hardware friendly)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, k×k depthwise, 1×1 project; identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, *, stride: int, expansion: int, kernel: int = 3):
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class SupernetBlock(nn.Module):
    """One student block of a DNA/ProxylessNAS supernet.

    ``prefix`` and ``suffix`` are fixed layers (the stem joins block 0, the head joins the last
    block); between them, ``cells`` mixed cells each hold one :class:`MBConv` per entry of
    :data:`NAS_CHOICES`. :meth:`set_path` picks one choice per cell before a forward.
    """

    is_supernet = True

    def __init__(self, cin: int, cout: int, *, cells: int, stride: int,
                 prefix: nn.Module | None = None, suffix: nn.Module | None = None):
        super().__init__()
        self.prefix = prefix if prefix is not None else nn.Identity()
        self.cells = nn.ModuleList()
        for c in range(cells):
            self.cells.append(nn.ModuleList(
                MBConv(cin if c == 0 else cout, cout, stride=stride if c == 0 else 1, expansion=e, kernel=k)
                for k, e in NAS_CHOICES
            ))
        self.suffix = suffix if suffix is not None else nn.Identity()
        self.choices_per_cell = [len(NAS_CHOICES)] * cells
        self.path: tuple[int, ...] | None = None

    def set_path(self, path: tuple[int, ...]) -> None:
        if len(path) != len(self.cells) or any(not 0 <= p < n for p, n in zip(path, self.choices_per_cell)):
            raise ValueError(f"path {path} does not fit a supernet block with choices {self.choices_per_cell}")
        self.path = tuple(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path is None:
            raise RuntimeError("SupernetBlock.forward needs set_path(...) first")
        x = self.prefix(x)
        for cell, choice in zip(self.cells, self.path):
            x = cell[choice](x)
        return self.suffix(x)


def sample_path(block: nn.Module, *, seed: int, block_index: int, step: int) -> tuple[int, ...] | None:
    """Sample the path of ``block`` at ``step``: a pure function of (seed, block, step).

    Every strategy and every replica calls this with the same arguments and so trains the
    same path; fixed (non-supernet) blocks have no path.
    """
    if not getattr(block, "is_supernet", False):
        return None
    g = torch.Generator(device="cpu")
    # Mix the three integers into one 63-bit seed (splitmix-style odd multipliers).
    mixed = (seed * 0x9E3779B97F4A7C15 + block_index * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) % (2**63 - 1)
    g.manual_seed(mixed)
    return tuple(int(torch.randint(n, (1,), generator=g, device="cpu")) for n in block.choices_per_cell)


def depthwise_separable(block: nn.Module) -> nn.Module:
    """A copy of ``block`` with every 3×3 convolution replaced by a depthwise-separable one.

    Each ``Conv2d(cin, cout, 3, stride)`` becomes depthwise 3×3 (stride kept) + BN + ReLU +
    pointwise 1×1; every other layer (and its weights) is copied from the teacher, so shapes
    match the teacher at the block boundary.
    """
    student = copy.deepcopy(block)
    _replace_3x3(student)
    student.train()
    student.requires_grad_(True)
    return student


def _replace_3x3(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and child.groups == 1:
            cin, cout = child.in_channels, child.out_channels
            setattr(module, name, nn.Sequential(
                nn.Conv2d(cin, cin, 3, child.stride, child.padding, dilation=child.dilation, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU(inplace=True),
                nn.Conv2d(cin, cout, 1, bias=child.bias is not None),
            ))
        else:
            _replace_3x3(child)
