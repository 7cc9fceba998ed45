"""Foundation: zoo shapes, data order, distillation math, determinism, clear errors (no processes;
the CLI in a subprocess is in tests/integration/test_cli.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipebd.config import ConfigError, RunConfig
from pipebd.data import DataConfig, DataError, DataSource
from pipebd.distill import BlockTrainer, OptimConfig, shard_sizes, teacher_forward
from pipebd.preflight import validate
from pipebd.zoo import WorkloadError, WorkloadOptions, build_workload, sample_path, workload_names
from pipebd.zoo.registry import probe_shapes

PAPER_WORKLOADS = {"nas-cifar10", "nas-imagenet", "compress-vgg16-cifar10", "compress-vgg16-imagenet",
                   "compress-resnet50-cifar10", "compress-resnet50-imagenet", "tiny"}


@pytest.mark.parametrize("name", workload_names())
def test_every_workload_chains_shapes(name):
    wl = build_workload(name, WorkloadOptions(resolution=32 if "imagenet" in name else None))
    assert wl.num_blocks == len(wl.student) >= 4
    shapes = wl.boundary_shapes
    assert shapes[0] == wl.input_shape
    if wl.tokens_per_sample:  # a decoder: token ids in, the final hidden state out
        assert len(shapes[-1]) == 2 and shapes[-1][0] == wl.tokens_per_sample
        x = torch.randint(wl.num_classes, (2, *wl.input_shape))
    else:
        assert shapes[-1] == (wl.num_classes,)
        x = torch.randn(2, *wl.input_shape)
    for i, (t, s) in enumerate(zip(wl.teacher, wl.student)):
        y = teacher_forward([t], x)
        path = sample_path(s, seed=0, block_index=i, step=3)
        if path is not None:
            s.set_path(path)
        z = s(x)
        if getattr(s, "candidate_outputs", False):  # a library: one output per candidate
            assert z.shape[0] == len(s.names)
            z = z[0]
        assert z.shape == y.shape == (2, *shapes[i + 1])
        x = y


def test_zoo_lists_every_paper_workload_and_aliases():
    assert PAPER_WORKLOADS <= set(workload_names())
    assert build_workload("compress-cifar10", probe=False).name == "compress-vgg16-cifar10"
    assert build_workload("compress-imagenet", WorkloadOptions(resolution=32), probe=False).name == "compress-vgg16-imagenet"


def test_workload_structure_matches_the_paper():
    nas = build_workload("nas-cifar10")
    assert nas.num_blocks == 6 and nas.is_nas
    assert [len(b.cells) for b in nas.student] == [2, 4, 4, 4, 4, 1]
    assert [s[0] for s in nas.boundary_shapes[1:-1]] == [24, 32, 64, 96, 160]
    assert build_workload("compress-vgg16-cifar10").num_blocks == 5
    assert build_workload("compress-resnet50-cifar10").num_blocks == 4
    # student 3x3 convs are depthwise-separable: no dense 3x3 conv remains
    for s in build_workload("compress-vgg16-cifar10").student:
        for m in s.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                assert m.groups == m.in_channels


def test_workload_options_change_the_model():
    a = build_workload("nas-cifar10", WorkloadOptions(width_mult=0.5, num_classes=7, resolution=16))
    assert a.input_shape == (3, 16, 16) and a.boundary_shapes[-1] == (7,)
    assert a.boundary_shapes[1][0] < 24


def test_shape_mismatch_is_a_clear_error():
    wl = build_workload("tiny")
    wl.student[1] = nn.Conv2d(8, 5, 3, 2, 1)  # wrong width: teacher outputs 16 channels
    with pytest.raises(WorkloadError, match="student block 1 outputs"):
        probe_shapes(wl)


def test_unknown_workload_is_a_clear_error():
    with pytest.raises(WorkloadError, match="unknown workload 'nope'.*nas-cifar10"):
        build_workload("nope")
    with pytest.raises(ConfigError, match="unknown workload"):
        validate(RunConfig(workload="nope"))


def test_teacher_weights_load_strictly(tmp_path):
    wl = build_workload("tiny", WorkloadOptions(seed=5))
    good = tmp_path / "good.pt"
    torch.save(nn.Sequential(*wl.teacher).state_dict(), good)
    loaded = build_workload("tiny", WorkloadOptions(seed=9, teacher_weights=str(good)))
    assert torch.equal(loaded.teacher[0][0].weight, wl.teacher[0][0].weight)

    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(WorkloadError, match="do not fit tiny's teacher.*missing keys"):
        build_workload("tiny", WorkloadOptions(teacher_weights=str(wrong)))
    not_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(WorkloadError, match="not a state dict"):
        build_workload("tiny", WorkloadOptions(teacher_weights=str(not_dict)))
    with pytest.raises(WorkloadError, match="does not exist"):
        build_workload("tiny", WorkloadOptions(teacher_weights=str(tmp_path / "absent.pt")))


def test_path_sampler_is_a_function_of_seed_block_step():
    s = build_workload("nas-cifar10", probe=False).student[2]
    p = sample_path(s, seed=1, block_index=2, step=5)
    assert p == sample_path(s, seed=1, block_index=2, step=5)
    assert len(p) == 4 and all(0 <= c < n for c, n in zip(p, s.choices_per_cell))
    assert s.choices_per_cell == [6, 7, 7, 7]  # the Zero choice on all but the first cell (tests/unit/test_zoo.py)
    across_steps = {sample_path(s, seed=1, block_index=2, step=k) for k in range(20)}
    assert len(across_steps) > 10
    assert sample_path(s, seed=2, block_index=2, step=5) != p or sample_path(s, seed=2, block_index=2, step=6) != \
        sample_path(s, seed=1, block_index=2, step=6)
    fixed = build_workload("tiny").student[0]
    assert sample_path(fixed, seed=1, block_index=0, step=0) is None


def test_data_order_is_a_function_of_seed():
    cfg = DataConfig(resolution=8, size=64, seed=3)
    a, b = DataSource(cfg, batch_size=8), DataSource(cfg, batch_size=8)
    for step in (0, 3, 9):  # step 9 is in epoch 1
        xa, ya = a.load(step)
        xb, yb = b.load(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # a shard is exactly the rows of the full batch
    x, _ = a.load(3)
    assert torch.equal(a.load(3, 2, 5)[0], x[2:5])
    other = DataSource(DataConfig(resolution=8, size=64, seed=4), batch_size=8)
    assert not torch.equal(other.indices(0), a.indices(0))
    assert not torch.equal(a.indices(0), a.indices(8))  # a new epoch is reshuffled


def test_augmentation_is_seeded_per_sample():
    cfg = DataConfig(resolution=8, size=32, seed=3, augment=True)
    x1, _ = DataSource(cfg, 8).load(1)
    x2, _ = DataSource(cfg, 8).load(1)
    plain, _ = DataSource(DataConfig(resolution=8, size=32, seed=3), 8).load(1)
    assert torch.equal(x1, x2) and not torch.equal(x1, plain)


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"looked for .*cifar-10-batches-py.*--data synthetic"):
        DataSource(DataConfig(source="cifar10", root=str(tmp_path)), 8)
    with pytest.raises(ConfigError, match="imagenet not found"):
        validate(RunConfig(data="imagenet", data_root=str(tmp_path)))
    with pytest.raises(ConfigError, match="unknown data source 'mnist'"):
        validate(RunConfig(data="mnist"))


def _train_in_process(workload: str, steps: int, seed: int = 0, shards: int = 1):
    wl = build_workload(workload, WorkloadOptions(seed=seed))
    data = DataSource(DataConfig(resolution=wl.input_shape[-1], size=256, seed=seed), batch_size=16)
    trainers = [BlockTrainer(i, s, i == wl.num_blocks - 1, steps, seed) for i, s in enumerate(wl.student)]
    losses = [[] for _ in trainers]
    for step in range(steps):
        x, _ = data.load(step)
        for i, t in enumerate(trainers):
            y = teacher_forward([wl.teacher[i]], x)
            loss = float(t.train_step(step, x, y, shards=shards))
            if t.last:  # soft-label CE is bounded below by the teacher's entropy: track the KL part
                p = torch.softmax(y, 1)
                loss -= float(-(p * torch.log_softmax(y, 1)).sum(1).mean())
            losses[i].append(loss)
            x = y
    return trainers, losses


def test_every_block_loss_falls_on_tiny():
    _, losses = _train_in_process("tiny", 30)
    for i, curve in enumerate(losses):
        first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
        assert last < 0.9 * first, f"block {i}: loss {first:.4f} -> {last:.4f} did not fall"


def test_same_seed_gives_bit_identical_weights():
    a, _ = _train_in_process("tiny-nas", 4, seed=7)
    b, _ = _train_in_process("tiny-nas", 4, seed=7)
    c, _ = _train_in_process("tiny-nas", 4, seed=8)
    for ta, tb in zip(a, b):
        for pa, pb in zip(ta.block.parameters(), tb.block.parameters()):
            assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for ta, tc in zip(a, c) for pa, pc in zip(ta.block.parameters(), tc.block.parameters()))
    assert a[0].paths == b[0].paths != c[0].paths


def _ghost_block(last: bool) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)]
    if last:
        layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(4, 5)]
    return nn.Sequential(*layers)


def _by_hand(blk: nn.Module, x: torch.Tensor, y: torch.Tensor, sizes: list[int], weights: list[float],
             optim: OptimConfig, *, last: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """One SGD step written out: independent forward/backward per shard, gradients averaged by hand.

    Returns the stepped parameters, the buffers (BN running stats after both forwards) and the loss.
    """
    import torch.nn.functional as F

    params = list(blk.parameters())
    grads = [torch.zeros_like(p) for p in params]
    loss_total = torch.zeros(())
    lo = 0
    for n, w in zip(sizes, weights):
        out = blk(x[lo:lo + n])
        tgt = y[lo:lo + n]
        if last:
            loss = -(F.softmax(tgt, 1) * F.log_softmax(out, 1)).sum(1).mean()
        else:
            loss = ((out - tgt) ** 2).mean()
        for acc, g in zip(grads, torch.autograd.grad(loss, params)):
            acc += w * g
        loss_total += w * loss.detach()
        lo += n
    stepped = []
    with torch.no_grad():
        for p, g in zip(params, grads):  # torch.optim.SGD's first step: the momentum buffer is d itself
            d = g + optim.weight_decay * p
            d = d + optim.momentum * d if optim.nesterov else d
            stepped.append(p - optim.lr * d)
    return stepped, [b.detach().clone() for b in blk.buffers()], loss_total


@pytest.mark.parametrize("batch,last", [(8, False), (7, False), (7, True)])
def test_ghost_shards_match_data_parallel_numerics(batch, last):
    """``train_step(shards=2)`` = two half-batch gradients averaged by hand (weights n/B), then one SGD step.

    BatchNorm makes each shard's gradient depend on its own rows, so a shard weighting other
    than n_shard/B (a sum, or 1/shards on the uneven 4+3 split) gives other weights here.
    """
    import copy

    blk = _ghost_block(last)
    x = torch.randn(batch, 3, 6, 6)
    y = torch.randn(batch, 5) if last else torch.randn(batch, 4, 6, 6)
    optim = OptimConfig(lr=0.5, momentum=0.9, weight_decay=1e-2, nesterov=True)
    sizes = [(batch + 1) // 2, batch // 2]

    trained = copy.deepcopy(blk)
    loss = BlockTrainer(0, trained, last, 5, 0, optim=optim).train_step(0, x, y, shards=2)
    want, want_buffers, want_loss = _by_hand(copy.deepcopy(blk), x, y, sizes, [n / batch for n in sizes], optim,
                                             last=last)
    for got, exp in zip(trained.parameters(), want):
        torch.testing.assert_close(got.detach(), exp, rtol=1e-5, atol=1e-6)
    for got, exp in zip(trained.buffers(), want_buffers):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)

    # the comparison has power: other weightings and one unsharded step land measurably elsewhere
    wrong = [[1.0, 1.0]] + ([[0.5, 0.5]] if sizes[0] != sizes[1] else [])
    for weights in wrong:
        other, _, _ = _by_hand(copy.deepcopy(blk), x, y, sizes, weights, optim, last=last)
        assert max(float((a - b).abs().max()) for a, b in zip(want, other)) > 1e-4
    whole = copy.deepcopy(blk)
    BlockTrainer(0, whole, last, 5, 0, optim=optim).train_step(0, x, y, shards=1)
    assert max(float((a.detach() - b).abs().max()) for a, b in zip(whole.parameters(), want)) > 1e-4


def test_adam_is_the_optimizer_a_run_asks_for_and_its_first_step_is_the_textbook_one():
    """``--optimizer adam`` (Kingma & Ba 2015): the first step moves every parameter by lr * g / (|g| + eps)
    (bias-corrected moments of one gradient), g including the L2 weight decay; the cosine schedule applies."""
    import copy

    from pipebd.config import RunConfig
    from pipebd.distill import optim_config

    cfg = RunConfig(optimizer="adam", lr=0.01, weight_decay=1e-3)
    optim = optim_config(cfg)
    assert (optim.name, optim.lr, optim.weight_decay) == ("adam", 0.01, 1e-3)
    assert optim_config(RunConfig()).name == "sgd"
    blk = _ghost_block(False)
    x, y = torch.randn(6, 3, 6, 6), torch.randn(6, 4, 6, 6)
    trainer = BlockTrainer(0, copy.deepcopy(blk), False, 5, 0, optim=optim)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    ref = copy.deepcopy(blk)
    loss = ((ref(x) - y) ** 2).mean()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    trainer.train_step(0, x, y)
    with torch.no_grad():
        for got, p, g in zip(trainer.block.parameters(), ref.parameters(), grads):
            g = g + 1e-3 * p
            torch.testing.assert_close(got, p - 0.01 * g / (g.abs() + 1e-8), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; known: sgd, adam"):
        OptimConfig(name="lbfgs").build(blk.parameters())


def test_shard_sizes_split_evenly_larger_first():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert shard_sizes(7, 2) == [4, 3]
    with pytest.raises(ValueError, match="cannot split a batch of 2 into 3 shards"):
        shard_sizes(2, 3)
