"""Data sources with a deterministic batch order shared by every strategy.

The batch of global step ``k`` is a pure function of (seed, k): the epoch order is
``randperm(len(dataset))`` drawn from a generator seeded by (seed, epoch), batches are
consecutive ``batch_size`` slices of it (``drop_last``, so shapes never change), and a
replica that owns rows ``[lo, hi)`` of a batch loads exactly those samples. This is what
lets data-parallel shards, relayed pipelines and the sequential reference see the same
samples (DESIGN.md §1). Augmentation, when on, is seeded per (seed, epoch, index).

Sources: ``synthetic`` (torchvision ``FakeData``: deterministic per index, any size, the
default), ``cifar10`` (torchvision ``CIFAR10`` from ``--data-root``, never downloaded) and
``imagenet`` (``ImageFolder`` of ``--data-root``/train).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, default_collate
from torchvision import datasets, transforms

__all__ = ["DataConfig", "DataSource", "DataError", "DATA_SOURCES", "build_dataset", "mix_seed"]

DATA_SOURCES = ("synthetic", "cifar10", "imagenet")
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
#: Epoch sizes of the real datasets, used by synthetic data standing in for them.
EPOCH_SAMPLES = {"cifar10": 50_000, "imagenet": 1_281_167, "synthetic": 50_000}


class DataError(ValueError):
    """The data source cannot be used as configured."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    root: str | None = None
    resolution: int = 32
    num_classes: int = 10
    size: int | None = None  # samples per epoch; None = the size of the dataset it stands in for
    stands_in_for: str = "cifar10"
    augment: bool = False
    seed: int = 0


def mix_seed(*parts: int) -> int:
    """Mix integers into one 63-bit generator seed (splitmix-style odd multipliers)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x632BE59BD9B4E019)) * 0xBF58476D1CE4E5B9 % (2**64)
        h ^= h >> 31
    return h % (2**63 - 1)


def validate_data_config(cfg: DataConfig) -> None:
    """Raise a :class:`DataError` for an unusable source before any process starts."""
    if cfg.source not in DATA_SOURCES:
        raise DataError(f"unknown data source {cfg.source!r}; choose one of {', '.join(DATA_SOURCES)}")
    if cfg.source == "synthetic":
        if cfg.size is not None and cfg.size < 1:
            raise DataError(f"--data-size must be >= 1, got {cfg.size}")
        return
    if not cfg.root:
        raise DataError(f"--data {cfg.source} needs --data-root DIR (or use --data synthetic, the default)")
    if cfg.source == "cifar10":
        where = os.path.join(cfg.root, "cifar-10-batches-py")
    else:
        where = os.path.join(cfg.root, "train")
    if not os.path.isdir(where):
        raise DataError(
            f"{cfg.source} not found: looked for {where!r} (downloads are disabled; put the dataset there "
            f"or run with --data synthetic)"
        )


def build_dataset(cfg: DataConfig) -> Dataset:
    validate_data_config(cfg)
    to_tensor = [transforms.ToTensor(), transforms.Normalize(_MEAN, _STD)]
    if cfg.source == "synthetic":
        size = cfg.size or EPOCH_SAMPLES[cfg.stands_in_for]
        return datasets.FakeData(size=size, image_size=(3, cfg.resolution, cfg.resolution),
                                 num_classes=cfg.num_classes, transform=transforms.Compose(to_tensor),
                                 random_offset=cfg.seed * 1_000_003)
    if cfg.source == "cifar10":
        resize = [transforms.Resize(cfg.resolution)] if cfg.resolution != 32 else []
        return datasets.CIFAR10(cfg.root, train=True, download=False, transform=transforms.Compose(resize + to_tensor))
    resize = [transforms.Resize(int(cfg.resolution * 256 / 224)), transforms.CenterCrop(cfg.resolution)]
    return datasets.ImageFolder(os.path.join(cfg.root, "train"), transform=transforms.Compose(resize + to_tensor))


class DataSource:
    """Deterministic batches of a dataset: ``load(step, lo, hi)`` returns rows [lo, hi) of batch ``step``."""

    def __init__(self, cfg: DataConfig, batch_size: int, dataset: Dataset | None = None):
        self.cfg = cfg
        self.dataset = dataset if dataset is not None else build_dataset(cfg)
        self.batch_size = batch_size
        n = len(self.dataset)
        if n < batch_size:
            raise DataError(f"the dataset has {n} samples, fewer than one batch of {batch_size}")
        self.steps_per_epoch = n // batch_size
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    @property
    def epoch_samples(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, epoch))
            self._perm = torch.randperm(len(self.dataset), generator=g)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        return self.epoch_order(epoch)[b * self.batch_size:(b + 1) * self.batch_size]

    def load(self, step: int, lo: int = 0, hi: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Load rows ``[lo, hi)`` of the batch of global step ``step`` (images, labels)."""
        idx = self.indices(step)[lo:hi].tolist()
        epoch = step // self.steps_per_epoch
        samples = [self.dataset[i] for i in idx]
        x, y = default_collate(samples)
        if self.cfg.augment:
            x = torch.stack([_augment(img, mix_seed(self.cfg.seed, epoch, i)) for img, i in zip(x, idx)])
        return x, y


def _augment(img: torch.Tensor, seed: int) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, drawn from a per-sample generator."""
    g = torch.Generator().manual_seed(seed)
    pad = 4
    h, w = img.shape[-2:]
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    out = padded[:, dy:dy + h, dx:dx + w]
    if bool(torch.randint(0, 2, (1,), generator=g)):
        out = out.flip(-1)
    return out
