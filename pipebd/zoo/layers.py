"""Building blocks shared by the workloads.

- :class:`MBConv`: the inverted-residual cell of MobileNetV2 (Sandler et al., 2018).
- :class:`SupernetBlock`: a ProxylessNAS-style supernet block (Cai et al., 2019) as used by
  DNA (Li et al., 2020): every cell holds one MBConv per (kernel, expansion) choice and a
  training step runs one sampled path through the cells. Every cell but the first of a block
  (a block is one stage) also holds the **Zero** choice (:class:`Zero`, an identity: the cell
  is skipped), as in ProxylessNAS / DNA / Pipe-BD's search space.
- :func:`depthwise_separable`: the compression student of Blakeney et al. (2021): a block
  where every 3×3 convolution is replaced by a depthwise 3×3 + BN + ReLU + pointwise 1×1.
- :func:`sample_path`: the path for (seed, block, step), identical on every rank.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["MBConv", "Zero", "SupernetBlock", "depthwise_separable", "sample_path", "NAS_CHOICES", "ZERO_CHOICE",
           "make_divisible"]

#: (kernel, expansion) choices of every supernet cell, as in Pipe-BD's NAS setting.
NAS_CHOICES: tuple[tuple[int, int], ...] = tuple((k, e) for k in (3, 5, 7) for e in (3, 6))
#: Index of the Zero (skip) choice in a cell that has one: after the MBConv choices, so the
#: indices 0..5 of recorded paths keep their meaning whether or not Zero is in the space.
ZERO_CHOICE: int = len(NAS_CHOICES)


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


class Zero(nn.Module):
    """The Zero choice of a supernet cell: the cell is skipped and its input passes through.

    ProxylessNAS calls it "zero" (the op outputs zero and only the cell's residual shortcut
    remains, so the cell is an identity); it has no parameters and no FLOPs, and it is only
    legal where the cell keeps the shape (stride 1, ``cin == cout``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SupernetBlock(nn.Module):
    """One student block (one stage) of a DNA/ProxylessNAS supernet.

    ``prefix`` and ``suffix`` are fixed layers (the stem joins block 0, the head joins the last
    block); between them, ``cells`` mixed cells each hold one :class:`MBConv` per entry of
    :data:`NAS_CHOICES`. With ``zero`` every cell but the first (the only one that may change
    stride and width) also holds a :class:`Zero` choice at index :data:`ZERO_CHOICE`.
    :meth:`set_path` picks one choice per cell before a forward.
    """

    is_supernet = True

    def __init__(self, cin: int, cout: int, *, cells: int, stride: int,
                 prefix: nn.Module | None = None, suffix: nn.Module | None = None, zero: bool = False):
        super().__init__()
        if cells < 1:
            raise ValueError(f"a supernet block needs >= 1 cell, got cells={cells}")
        self.prefix = prefix if prefix is not None else nn.Identity()
        self.cells = nn.ModuleList()
        for c in range(cells):
            ops: list[nn.Module] = [
                MBConv(cin if c == 0 else cout, cout, stride=stride if c == 0 else 1, expansion=e, kernel=k)
                for k, e in NAS_CHOICES
            ]
            if zero and c > 0:  # stride 1 and cout -> cout: the identity fits
                ops.append(Zero())
            self.cells.append(nn.ModuleList(ops))
        self.suffix = suffix if suffix is not None else nn.Identity()
        self.choices_per_cell = [len(cell) for cell in self.cells]
        self.path: tuple[int, ...] | None = None

    @property
    def zero_cells(self) -> int:
        """How many cells of this block hold the Zero choice."""
        return sum(1 for cell in self.cells if any(isinstance(op, Zero) for op in cell))

    def choice_name(self, cell: int, choice: int) -> str:
        """A readable name of choice ``choice`` of cell ``cell``: ``"k5e3"`` or ``"zero"``."""
        op = self.cells[cell][choice]
        if isinstance(op, Zero):
            return "zero"
        k, e = NAS_CHOICES[choice]
        return f"k{k}e{e}"

    def set_path(self, path: tuple[int, ...]) -> None:
        if len(path) != len(self.cells) or any(not 0 <= p < n for p, n in zip(path, self.choices_per_cell)):
            raise ValueError(f"path {path} does not fit a supernet block with choices per cell "
                             f"{self.choices_per_cell}: give one index 0 <= p < choices for each of its "
                             f"{len(self.cells)} cells")
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
    same path; fixed (non-supernet) blocks have no path. Each cell's choice is uniform over
    its ``choices_per_cell`` (7 with Zero, else 6), drawn in cell order from one generator;
    without Zero the paths are exactly those of the 6-choice space.
    """
    if not getattr(block, "is_supernet", False):
        return None
    g = torch.Generator(device="cpu")
    # Mix the three integers into one 63-bit seed (splitmix-style odd multipliers).
    mixed = (seed * 0x9E3779B97F4A7C15 + block_index * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) % (2**63 - 1)
    g.manual_seed(mixed)
    return tuple(int(torch.randint(n, (1,), generator=g, device="cpu")) for n in block.choices_per_cell)


def depthwise_separable(block: nn.Module, *, full_below: int = 0) -> nn.Module:
    """A copy of ``block`` with every 3×3 convolution replaced by a depthwise-separable one.

    Each ``Conv2d(cin, cout, 3, stride)`` becomes depthwise 3×3 (stride kept) + BN + ReLU +
    pointwise 1×1; every other layer (and its weights) is copied from the teacher, so shapes
    match the teacher at the block boundary. A convolution with fewer than ``full_below`` input
    channels stays the teacher's full convolution (copied with its weights, then trained): a depthwise 3×3 on
    one or two channels is a rank-one bottleneck (every output channel a scaled copy of one
    filtered image), which is why MobileNet keeps its first layer a full convolution (Howard et
    al. 2017, Table 1). The default (0) separates every 3×3 convolution.
    """
    student = copy.deepcopy(block)
    _replace_3x3(student, full_below)
    student.train()
    student.requires_grad_(True)
    return student


def _replace_3x3(module: nn.Module, full_below: int) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and child.groups == 1:
            cin, cout = child.in_channels, child.out_channels
            if cin < full_below:
                continue
            setattr(module, name, nn.Sequential(
                nn.Conv2d(cin, cin, 3, child.stride, child.padding, dilation=child.dilation, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU(inplace=True),
                nn.Conv2d(cin, cout, 1, bias=child.bias is not None),
            ))
        else:
            _replace_3x3(child, full_below)
