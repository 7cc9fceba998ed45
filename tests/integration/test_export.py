"""A real 2-rank run on real digits, its students saved (--save-students) and exported: the
exported network scores exactly what the run recorded (BatchNorm recalibrated, or as trained), and the held-out block losses are written
(issue 15, deliverables 4 and 7)."""

from __future__ import annotations

import os

import pandas as pd

import pipebd
from pipebd.cli import main
from pipebd.data_mnist import mnist5k_split
from pipebd.evaluate import evaluate_top1


def test_a_run_saves_its_students_and_export_gives_the_network_it_scored(tmp_path, capsys):
    out, exported = str(tmp_path / "res"), str(tmp_path / "student")
    rc = main(["run", "-w", "compress-mnist", "--data", "mnist5k", "-s", "tr", "-n", "2", "-b", "32", "--steps", "3",
               "--warmup", "1", "--optimizer", "adam", "--lr", "0.005", "--save-students", "--quiet", "--no-trace",
               "--out", out])
    assert rc == 0, capsys.readouterr().err
    run = pd.read_csv(os.path.join(out, "runs.csv")).iloc[0]
    assert os.path.isfile(os.path.join(out, "students", f"{run.run_id}.pt"))
    blocks = pd.read_csv(os.path.join(out, "block_losses.csv"))
    assert list(blocks["block"]) == list(range(5)) and (blocks["heldout_loss"] > 0).all()
    assert (blocks["final_train_loss"] > 0).all()
    assert main(["export", run.run_id, "--results", out, "--out", exported]) == 0
    assert "pipebd.load_student" in capsys.readouterr().out
    net = pipebd.load_student(exported)
    images, labels = mnist5k_split("test")
    assert evaluate_top1(net, images, labels) == run.student_top1  # BN recalibrated on the training digits
    assert "recalibrated on the 4,000 training images of mnist5k" in open(os.path.join(exported, "student.json")).read()
    assert main(["export", run.run_id, "--results", out, "--out", exported, "--no-recalibrate"]) == 0
    assert evaluate_top1(pipebd.load_student(exported), images, labels) == run.student_top1_raw  # as trained
    assert 0.0 <= run.student_top1 <= 1.0 and 0.0 <= run.teacher_top1 <= 1.0
