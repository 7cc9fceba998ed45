"""``python -m pipebd teacher``: the command line of :mod:`pipebd.teacher_training` (train a
workload's teacher end to end on real digits, report its test top-1, save it)."""

from __future__ import annotations

import argparse

from ..teacher_training import DEFAULTS, TeacherResult, train_teacher

__all__ = ["add_cli", "train_teacher", "TeacherResult", "DEFAULTS"]


def _cmd_teacher(args: argparse.Namespace) -> int:
    r = train_teacher(args)
    print(f"teacher of {r.workload}: {r.epochs} epoch(s), {r.steps} steps on {r.train_samples} mnist5k digits in "
          f"{r.seconds:.1f} s (final epoch loss {r.final_loss:.4f}); test top-1 {r.test_top1:.2%} on the 1,000 test "
          f"digits; saved to {r.out} (use: run -w {r.workload} --data mnist5k --teacher-weights {r.out})")
    return 0


def add_cli(sub) -> None:
    d = DEFAULTS
    p = sub.add_parser("teacher", help="train a workload's teacher on real digits (mnist5k), report test top-1, "
                       "save its state_dict for --teacher-weights")
    p.add_argument("-w", "--workload", default="compress-mnist",
                   help="workload whose teacher to train: compress-mnist (default) or nas-mnist (the same teacher)")
    p.add_argument("--data", default="mnist5k", choices=("mnist5k",), help="training data (mnist5k: 4,000 train / "
                   "1,000 test real digits, offline)")
    p.add_argument("--out", required=True, help="file to save the teacher's state_dict to (its directory must exist)")
    p.add_argument("--epochs", type=int, default=d["epochs"],
                   help=f"passes over the training split (default {d['epochs']})")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate, cosine-decayed per step "
                   f"(default {d['lr']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"default {d['batch_size']}")
    p.add_argument("--momentum", type=float, default=d["momentum"],
                   help=f"SGD Nesterov momentum (default {d['momentum']})")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help=f"default {d['weight_decay']}")
    p.add_argument("--seed", type=int, default=d["seed"], help="fixes the initialisation and the batch order")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core of this process)")
    p.add_argument("--width-mult", type=float, default=1.0, help="teacher width multiplier (as run's --width-mult)")
    p.add_argument("--train-samples", type=int, default=None, help="train on the first N training digits "
                   "(stratified; default: all 4,000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=_cmd_teacher)
