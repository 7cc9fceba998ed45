"""Data sources (pipebd.data): every sample is a function of (seed, index), every batch of (seed, step).

No processes: the DataLoader path runs with ``workers=0`` on a tiny ImageFolder written to
``tmp_path``; the CUDA prefetcher test runs only where CUDA is available.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from pipebd.data import (DataConfig, DataSource, StepBatchSampler, SyntheticImages, _crop_flip, _PAD,
                         default_workers, mix_seed)


def synthetic(seed: int = 3, batch: int = 8, *, size: int = 40, res: int = 8, augment: bool = False) -> DataSource:
    return DataSource(DataConfig(resolution=res, size=size, seed=seed, augment=augment, num_classes=10), batch)


@pytest.mark.parametrize("augment", [False, True])
def test_rows_do_not_depend_on_how_a_batch_is_sliced(augment):
    data = synthetic(augment=augment)
    for step in (0, 4, 6):  # step 6 is in epoch 1 (40 // 8 = 5 steps per epoch)
        x, y = data.load(step)
        for cuts in ((0, 3, 8), (0, 1, 5, 8), (0, 8)):
            parts = [data.load(step, lo, hi) for lo, hi in itertools.pairwise(cuts)]
            assert torch.equal(torch.cat([p[0] for p in parts]), x)
            assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_a_sample_is_a_function_of_seed_and_index_alone():
    a, b = synthetic(batch=8), synthetic(batch=5)  # other batch sizes put sample i in other batches
    ds = SyntheticImages(size=40, resolution=8, num_classes=10, seed=3)
    for data in (a, b):
        x, y = data.load(2)
        for row, i in enumerate(data.indices(2).tolist()):
            xi, yi = ds[i]
            assert torch.equal(x[row], xi) and int(y[row]) == yi
    assert torch.equal(ds.batch([7, 1, 7])[0][0], ds.batch([7])[0][0])


def test_same_seed_same_batches_other_seed_other_samples():
    a, b, c = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    for step in (0, 3, 9):
        xa, ya = a.load(step)
        xb, yb = b.load(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x3, y3 = SyntheticImages(40, 8, 10, seed=3).batch(range(40))
    x4, y4 = SyntheticImages(40, 8, 10, seed=4).batch(range(40))
    assert not torch.equal(x3, x4) and not torch.equal(y3, y4)
    assert not torch.equal(a.indices(0), c.indices(0))
    assert not torch.equal(x3[0], x3[1])  # samples differ from each other too


def test_shapes_dtypes_and_value_range():
    data = synthetic(batch=16, size=64, res=12)
    x, y = data.load(1, 3, 11)
    assert x.shape == (8, 3, 12, 12) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (8,) and y.dtype == torch.int64
    x, y = SyntheticImages(2000, 16, 7, seed=0).batch(range(2000))
    assert 0 <= int(y.min()) and int(y.max()) == 6 and len(set(y.tolist())) == 7
    # normalised uint8 pixels, like ToTensor + Normalize(ImageNet mean/std) of a real image
    assert -2.2 < float(x.min()) < -1.9 and 2.4 < float(x.max()) < 2.7
    assert abs(float(x.mean())) < 0.25 and 0.8 < float(x.std()) < 1.5
    assert data.steps_per_epoch == 4 and data.epoch_samples == 64


def test_augmentation_is_seeded_per_seed_epoch_and_index():
    aug, plain = synthetic(augment=True), synthetic(augment=False)
    again = synthetic(augment=True)
    for step in (1, 6):
        assert torch.equal(aug.load(step)[0], again.load(step)[0])
        assert torch.equal(aug.load(step)[1], plain.load(step)[1])  # labels are not augmented
    x, _ = aug.load(6)
    raw, _ = plain.load(6)
    epoch = 6 // aug.steps_per_epoch
    assert not torch.equal(x, raw)
    for row, i in enumerate(aug.indices(6).tolist()):  # each row is its own seeded crop + flip of the sample
        dy, dx, flip = _crop_flip(mix_seed(3, epoch, i))
        padded = torch.nn.functional.pad(raw[row], (_PAD,) * 4)[:, dy:dy + 8, dx:dx + 8]
        assert torch.equal(x[row], padded.flip(-1) if flip else padded)
    # the same sample is augmented differently in another epoch
    draws = {_crop_flip(mix_seed(3, e, 5)) for e in range(8)}
    assert len(draws) > 1


def test_step_batch_sampler_yields_the_rows_of_each_step():
    data = synthetic()
    sampler = StepBatchSampler(data, 2, 6)
    sampler.start = 4
    got = list(itertools.islice(iter(sampler), 3))
    for k, keys in enumerate(got):
        step = 4 + k
        assert keys == [(step // 5, i) for i in data.indices(step)[2:6].tolist()]


@pytest.fixture
def image_folder(tmp_path):
    """An ImageNet-layout folder ``root/train/class/x.png`` of 12 8×8 images, each a distinct colour."""
    from PIL import Image

    for n in range(12):
        folder = tmp_path / "train" / f"class{n % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (20 * n, 255 - 20 * n, 7 * n)).save(folder / f"img{n:02d}.png")
    return tmp_path


@pytest.mark.parametrize("augment", [False, True])
def test_dataloader_path_follows_the_data_source_order(image_folder, augment):
    cfg = DataConfig(source="imagenet", root=str(image_folder), resolution=8, seed=5, workers=0, augment=augment)
    data = DataSource(cfg, batch_size=4)
    assert data.steps_per_epoch == 3
    ref = DataSource(cfg, batch_size=4)
    for step in [0, 1, 2, 3, 4, 1, 7]:  # consecutive steps, an epoch boundary, jumps back and forth
        x, y = data.load(step)
        idx = ref.indices(step).tolist()
        samples = [ref.dataset[i] for i in idx]
        want = torch.stack([s[0] for s in samples])
        if augment:
            from pipebd.data import _augment

            want = torch.stack([_augment(s[0], mix_seed(5, step // 3, i)) for s, i in zip(samples, idx)])
        assert torch.equal(x, want), step
        assert y.tolist() == [s[1] for s in samples]
        lo_hi = [data.load(step, 0, 1), data.load(step, 1, 4)]
        assert torch.equal(torch.cat([p[0] for p in lo_hi]), x)


def test_device_batches_on_cpu_are_the_loaded_batches():
    data = synthetic()
    batches = data.loader("cpu", 2, 6, end=10)
    for step in (0, 1, 2, 7, 3):
        x, y = batches.get(step)
        xr, yr = data.load(step, 2, 6)
        assert torch.equal(x, xr) and torch.equal(y, yr)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_batches_on_cuda_prefetch_the_same_batches():
    data = DataSource(DataConfig(resolution=8, size=40, seed=3, device="cuda"), 8)
    with data.loader("cuda", 1, 7, end=6) as batches:
        for step in (0, 1, 2, 4, 5, 0):
            x, y = batches.get(step)
            assert x.is_cuda
            xr, yr = data.load(step, 1, 7, pin=False)
            assert torch.equal(x.cpu(), xr) and torch.equal(y.cpu(), yr)
    x, _ = data.load(0)
    assert x.is_pinned()


def test_default_workers():
    assert default_workers("cpu") == 0
    assert 1 <= default_workers("cuda") <= 4


def test_augment_never_mirrors_digits():
    from pipebd.data import NO_FLIP, _augment_batch, flips

    assert flips(DataConfig(source="cifar10")) and flips(DataConfig(source="synthetic"))
    assert not flips(DataConfig(source="mnist5k", stands_in_for="mnist5k"))
    assert not flips(DataConfig(source="synthetic", stands_in_for="mnist5k"))  # its stand-in alike
    assert NO_FLIP == {"mnist5k"}
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    seeds = [s for s in range(200) if _crop_flip(s)[2]][:2]  # two draws that would mirror
    mirrored, cropped = _augment_batch(x, seeds), _augment_batch(x, seeds, flip=False)
    assert torch.equal(mirrored, cropped.flip(-1))  # the same crop, only the mirror left out
    cfg = DataConfig(source="synthetic", stands_in_for="mnist5k", channels=1, resolution=8, augment=True, seed=5)
    plain = DataSource(DataConfig(source="synthetic", stands_in_for="mnist5k", channels=1, resolution=8, seed=5), 4)
    data = DataSource(cfg, 4)
    idx = data.indices(0).tolist()
    want = _augment_batch(plain.load(0)[0], [mix_seed(5, 0, i) for i in idx], flip=False)
    assert torch.equal(data.load(0)[0], want)
