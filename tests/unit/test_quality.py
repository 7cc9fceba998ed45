"""What a distilled student is worth (issue 15, deliverable 4): :mod:`pipebd.quality` (stitched
top-1 before and after BatchNorm recalibration, the teacher's, held-out block losses per block and
per supernet path), the runs.csv columns and the run summary's text. No processes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipebd import data_mnist, metrics, quality
from pipebd.cli import _top1_text
from pipebd.config import RunConfig
from pipebd.distill import block_loss
from pipebd.evaluate import evaluate_top1
from pipebd.options import workload_options
from pipebd.run_outputs import wants_weights as _wants_weights
from pipebd.zoo import WorkloadOptions, build_workload

MNIST = RunConfig(workload="compress-mnist", data="mnist5k")


def _weights(wl):
    return {i: {k: v.detach().clone() for k, v in b.state_dict().items()} for i, b in enumerate(wl.student)}


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    """A teacher trained briefly by the ``teacher`` command (as tests/unit/test_mnist.py does)."""
    from pipebd.cli import build_parser
    from pipebd.commands.teacher import train_teacher

    out = tmp_path_factory.mktemp("teacher") / "t.pt"
    argv = ["teacher", "-w", "compress-mnist", "--epochs", "3", "--train-samples", "500", "--batch-size", "25",
            "--threads", "2", "--quiet", "--out", str(out)]
    return str(out), train_teacher(build_parser().parse_args(argv)).test_top1


def test_the_given_weights_are_the_ones_scored_before_and_after_bn_recalibration():
    other = build_workload("compress-mnist", WorkloadOptions(seed=5))  # other initial weights: loaded, not rebuilt
    got = quality.assess(MNIST, _weights(other))
    xt, yt = data_mnist.mnist5k_split("test")
    assert got.student_top1_raw == evaluate_top1(other.student, xt, yt)
    quality.recalibrate_bn(other.student, data_mnist.mnist5k_split("train")[0])
    assert got.student_top1 == evaluate_top1(other.student, xt, yt)
    assert all(0.0 <= v <= 1.0 for v in (got.student_top1, got.student_top1_raw, got.teacher_top1))
    with pytest.raises(ValueError, match=r"blocks \[4\] of 5"):
        quality.assess(MNIST, {i: w for i, w in _weights(other).items() if i != 4})


def test_block_losses_are_each_blocks_loss_on_the_teachers_input_with_the_final_training_loss():
    wl = build_workload("compress-mnist", workload_options(MNIST))
    losses = {b: {s: float(10 * b + s) for s in range(20)} for b in range(5)}  # last tenth: steps 18, 19
    rows = quality.assess(MNIST, _weights(wl), losses).blocks
    assert [r["block"] for r in rows] == list(range(5)) and all(r["path"] == "" for r in rows)
    assert [r["final_train_loss"] for r in rows] == [10 * b + 18.5 for b in range(5)]
    assert rows[2]["params"] == sum(p.numel() for p in wl.student[2].parameters())
    xt = data_mnist.mnist5k_split("test")[0]
    for b in (*wl.teacher, *wl.student):
        b.eval()
    with torch.no_grad():
        x = wl.teacher[1](wl.teacher[0](xt))
        want = float(block_loss(wl.student[2](x), wl.teacher[2](x), last=False))
    assert rows[2]["heldout_loss"] == pytest.approx(want, rel=1e-5)


def test_a_supernet_gets_one_row_per_candidate_path_and_no_stitched_figure(monkeypatch):
    wl = build_workload("nas-mnist", WorkloadOptions())
    block = wl.student[1]
    paths = quality.candidate_paths(block)
    assert len(paths) == 6 * 7 and len(set(paths)) == 42 and quality.candidate_paths(wl.teacher[0]) == [None]
    zero_path = next(p for p in paths if block.choice_name(1, p[1]) == "zero")
    assert quality.path_name(block, zero_path).endswith("-zero")
    assert quality.path_params(block, zero_path) < quality.path_params(block, (5, 5)) < sum(
        p.numel() for p in block.parameters())
    xt = data_mnist.mnist5k_split("test")[0][:40]
    xc = data_mnist.mnist5k_split("train")[0][:40]
    rows = quality.block_losses(wl.teacher, wl.student, xt, calibration=xc)  # assess's slices
    assert len(rows) == 6 * 7 * 4 + 6 and {r["block"] for r in rows} == set(range(5))
    assert all(r["heldout_loss"] >= 0 and math.isfinite(r["heldout_loss"]) for r in rows)
    monkeypatch.setattr(quality, "SEARCH_ROWS", 40)
    got = quality.assess(RunConfig(workload="nas-mnist", data="mnist5k"), _weights(wl))
    assert [r["heldout_loss"] for r in got.blocks] == pytest.approx([r["heldout_loss"] for r in rows], rel=1e-5)
    assert got.student_top1 is None and got.student_top1_raw is None and 0.0 <= got.teacher_top1 <= 1.0
    assert len(got.blocks) == len(rows)


def test_every_supernet_path_is_scored_with_its_own_recalibrated_statistics():
    """A path's row equals that path alone as a fixed chain, recalibrated on the calibration rows
    (recalibrate_bn) and scored in eval mode; the supernet's own statistics are left as they were."""
    wl = build_workload("nas-mnist", WorkloadOptions())
    for b in (*wl.teacher, *wl.student):
        b.eval()
    xt, xc = data_mnist.mnist5k_split("test")[0][:30], data_mnist.mnist5k_split("train")[0][:30]
    before = {k: v.clone() for k, v in wl.student[1].state_dict().items()}
    rows = quality.block_losses(wl.teacher[:3], wl.student[:3], xt, batch=16, calibration=xc)  # block 1 not last
    assert all(torch.equal(v, wl.student[1].state_dict()[k]) for k, v in before.items())
    block = wl.student[1]
    with torch.no_grad():
        x, x_cal = wl.teacher[0](xt), wl.teacher[0](xc)
        target = wl.teacher[1](x)
    for path in [(0, 0), (3, 5), (5, 6)]:
        chain = nn.Sequential(block.prefix, *[cell[c] for cell, c in zip(block.cells, path)], block.suffix)
        quality.recalibrate_bn([chain], x_cal, batch=16)
        chain.eval()
        with torch.no_grad():
            want = (sum(float(block_loss(chain(x[lo:lo + 16]), target[lo:lo + 16], last=False)) * len(x[lo:lo + 16])
                        for lo in range(0, 30, 16)) / 30)
        got = next(r for r in rows if r["block"] == 1 and r["choices"] == " ".join(map(str, path)))
        assert got["heldout_loss"] == pytest.approx(want, rel=1e-5), path
        for k, v in before.items():  # put the supernet's statistics back for the next path
            block.state_dict()[k].copy_(v)
    plain = quality.block_losses(wl.teacher[:3], wl.student[:3], xt, batch=16)  # the mixed statistics
    assert [r["heldout_loss"] for r in plain if r["block"] == 1] != [r["heldout_loss"] for r in rows if r["block"] == 1]


def test_recalibration_sets_the_running_statistics_of_the_chain_and_restores_every_mode():
    torch.manual_seed(0)
    chain = [nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)), nn.Sequential(nn.BatchNorm2d(3))]
    chain[0].eval()
    x = torch.randn(64, 1, 8, 8) * 3 + 1
    assert quality.recalibrate_bn(chain, x, batch=64) == 2
    with torch.no_grad():
        h = chain[0][0](x)
    assert torch.allclose(chain[0][1].running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not chain[0].training and chain[1].training and chain[0][1].momentum == 0.1
    assert quality.recalibrate_bn([nn.Linear(2, 2)], x) == 0


def test_a_trained_teacher_scores_well_above_chance_and_a_random_one_near_it(trained_teacher):
    path, top1 = trained_teacher
    weights = _weights(build_workload("compress-mnist", workload_options(MNIST)))
    trained = quality.assess(MNIST.replace(teacher_weights=path), weights).teacher_top1
    random = quality.assess(MNIST, weights).teacher_top1
    assert trained == top1 and trained > 0.5  # chance is 0.1
    assert random < 0.25


def test_blank_without_a_test_split():
    synthetic = RunConfig(workload="compress-mnist")
    assert not quality.has_test_split(synthetic) and quality.assess(synthetic, {}) == quality.Assessment()
    assert not _wants_weights(synthetic) and _wants_weights(MNIST)
    assert _wants_weights(synthetic.replace(save_weights="/tmp/w.pt"))
    assert metrics.RUN_COLUMNS[-3:] == ["student_top1", "student_top1_raw", "teacher_top1"]


def test_the_run_summary_shows_the_figures_only_when_present():
    assert _top1_text({"student_top1": 0.9712, "teacher_top1": 0.983}) == "student top-1 97.1 %; teacher top-1 98.3 %; "
    assert (_top1_text({"student_top1": 0.9712, "student_top1_raw": 0.96, "teacher_top1": 0.983})
            == "student top-1 97.1 % (96.0 % before BN recalibration); teacher top-1 98.3 %; ")
    assert _top1_text({"student_top1": math.nan, "teacher_top1": 0.5}) == "teacher top-1 50.0 %; "
    assert _top1_text({"student_top1": None}) == _top1_text({}) == ""
