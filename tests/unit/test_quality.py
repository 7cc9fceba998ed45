"""The stitched student's and the teacher's test top-1 (issue 15, deliverable 4): :mod:`pipebd.quality`,
the runs.csv columns and the run summary's text. No processes."""

from __future__ import annotations

import math

import pytest

from pipebd import data_mnist, metrics, quality
from pipebd.cli import _top1_text
from pipebd.config import RunConfig
from pipebd.evaluate import evaluate_top1
from pipebd.options import workload_options
from pipebd.runner import _wants_weights
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


def test_stitched_initial_students_score_a_fraction_and_the_given_weights_are_the_ones_scored():
    student, teacher = quality.stitched_top1(MNIST, _weights(build_workload("compress-mnist", workload_options(MNIST))))
    assert isinstance(student, float) and isinstance(teacher, float)
    assert 0.0 <= student <= 1.0 and 0.0 <= teacher <= 1.0
    other = build_workload("compress-mnist", WorkloadOptions(seed=5))  # other initial weights: loaded, not rebuilt
    xt, yt = data_mnist.mnist5k_split("test")
    got, _ = quality.stitched_top1(MNIST, _weights(other))
    assert got == evaluate_top1(other.student, xt, yt)
    with pytest.raises(ValueError, match=r"blocks \[4\] of 5"):
        quality.stitched_top1(MNIST, {i: w for i, w in _weights(other).items() if i != 4})


def test_a_trained_teacher_scores_well_above_chance_and_a_random_one_near_it(trained_teacher):
    path, top1 = trained_teacher
    weights = _weights(build_workload("compress-mnist", workload_options(MNIST)))
    _, trained = quality.stitched_top1(MNIST.replace(teacher_weights=path), weights)
    _, random = quality.stitched_top1(MNIST, weights)
    assert trained == top1 and trained > 0.5  # chance is 0.1
    assert random < 0.25


def test_blank_without_a_test_split_and_for_a_supernet_student():
    synthetic = RunConfig(workload="compress-mnist")
    assert not quality.has_test_split(synthetic) and quality.stitched_top1(synthetic, {}) == (None, None)
    assert not _wants_weights(synthetic) and _wants_weights(MNIST)
    assert _wants_weights(synthetic.replace(save_weights="/tmp/w.pt"))
    student, teacher = quality.stitched_top1(RunConfig(workload="nas-mnist", data="mnist5k"), {})
    assert student is None and 0.0 <= teacher <= 1.0
    assert metrics.RUN_COLUMNS[-2:] == ["student_top1", "teacher_top1"]


def test_the_run_summary_shows_the_figures_only_when_present():
    assert _top1_text({"student_top1": 0.9712, "teacher_top1": 0.983}) == "student top-1 97.1 %; teacher top-1 98.3 %; "
    assert _top1_text({"student_top1": math.nan, "teacher_top1": 0.5}) == "teacher top-1 50.0 %; "
    assert _top1_text({"student_top1": None}) == _top1_text({}) == ""
