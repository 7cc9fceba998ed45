"""Train a workload's teacher end to end on real digits, and save it (``python -m pipebd teacher``,
:mod:`pipebd.commands.teacher`; the ``teacher_epochs`` of an experiment profile).

Trains the full MNIST teacher of ``compress-mnist`` / ``nas-mnist`` (:func:`pipebd.zoo.mnist.mnist_teacher`,
one ``nn.Sequential`` of the workload's teacher blocks) on the 4,000 training digits of
``--data mnist5k`` on one process: cross-entropy, SGD with Nesterov momentum and weight decay, a
cosine learning rate decayed per step to zero (Loshchilov & Hutter 2017), no augmentation. The
batches are those of :class:`pipebd.data.DataSource` (the epoch order every run uses, seeded by
``--seed``, which also fixes the initialisation), so a run is a pure function of its arguments.
It then reports top-1 on the 1,000 test digits (:func:`pipebd.evaluate.evaluate_top1`) and saves
the teacher's ``state_dict`` atomically (:func:`pipebd.fileio.atomic_write`), which
``run -w compress-mnist --teacher-weights PATH`` (or ``nas-mnist``) loads with a strict key match.
Every argument is checked before training: a bad one exits 2 with what to change.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

from .errors import ConfigError, DataError, WorkloadError

__all__ = ["train_teacher", "teacher_args", "TeacherResult", "DEFAULTS"]

#: Defaults measured on a 2-core CPU (README: "Real data offline: mnist5k").
DEFAULTS = dict(epochs=6, lr=0.05, batch_size=64, momentum=0.9, weight_decay=5e-4, seed=0)


@dataclass
class TeacherResult:
    """What one training run gave: test top-1 (0–1), its size and where the weights went."""

    workload: str
    out: str
    epochs: int
    steps: int
    train_samples: int
    seconds: float
    final_loss: float
    test_top1: float


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _validate(args: argparse.Namespace) -> str:
    """Check every argument (ConfigError: the CLI prints it and exits 2); the canonical workload name."""
    from .data_mnist import SPLIT_SIZES, csv_path
    from .zoo import canonical_name
    from .zoo.mnist import MNIST_WORKLOADS

    try:
        name = canonical_name(args.workload)
    except WorkloadError as e:
        raise ConfigError(str(e)) from None
    if name not in MNIST_WORKLOADS:
        raise ConfigError(f"workload {name} has no MNIST teacher to train here; `teacher` trains the teacher of "
                          f"{' / '.join(MNIST_WORKLOADS)} (pass -w {MNIST_WORKLOADS[0]})")
    try:
        csv_path()
    except DataError as e:
        raise ConfigError(str(e)) from None
    train = args.train_samples if args.train_samples is not None else SPLIT_SIZES["train"]
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (math.isfinite(args.lr) and args.lr > 0, f"--lr must be a positive number, got {args.lr}"),
        (0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}"),
        (args.width_mult > 0, f"--width-mult must be > 0, got {args.width_mult}"),
        (args.threads is None or args.threads >= 1, f"--threads must be >= 1, got {args.threads}"),
        (1 <= train <= SPLIT_SIZES["train"],
         f"--train-samples must be from 1 to {SPLIT_SIZES['train']} (the mnist5k training split), got {train}"),
        (1 <= args.batch_size <= train, f"--batch-size must be from 1 to the {train} training samples (every step "
         f"is a full batch), got {args.batch_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    out = os.path.abspath(args.out)
    where = os.path.dirname(out)
    if os.path.isdir(out):
        raise ConfigError(f"--out {args.out!r} is a directory; give a file path such as "
                          f"{os.path.join(args.out, 'teacher.pt')}")
    if not os.path.isdir(where):
        raise ConfigError(f"--out {args.out!r}: the directory {where!r} does not exist; create it (mkdir -p) or "
                          "choose another path")
    if not os.access(where, os.W_OK):
        raise ConfigError(f"--out {args.out!r}: the directory {where!r} is not writable; choose another path")
    return name


def teacher_args(workload: str, out: str, **options) -> argparse.Namespace:
    """The arguments of :func:`train_teacher` without a command line: ``python -m pipebd teacher``'s
    defaults, ``options`` (``epochs=6``, ``seed=0``, ``width_mult=1.0``, …) over them."""
    base = dict(workload=workload, out=out, data="mnist5k", threads=None, width_mult=1.0, train_samples=None,
                quiet=True, **DEFAULTS)
    unknown = sorted(set(options) - set(base))
    if unknown:
        raise TypeError(f"teacher_args: unknown option(s) {unknown}; known: {sorted(base)}")
    return argparse.Namespace(**{**base, **options})


def train_teacher(args: argparse.Namespace) -> TeacherResult:
    """Validate ``args`` (the parser's options), train, evaluate on the test split, save; see the module docstring."""
    name = _validate(args)

    import torch
    import torch.nn.functional as F

    from .data import DataConfig, DataSource
    from .data_mnist import MNIST_SHAPE, mnist5k_split
    from .evaluate import evaluate_top1
    from .fileio import atomic_write
    from .progress import Progress
    from .zoo import WorkloadOptions
    from .zoo.mnist import mnist_teacher

    torch.set_num_threads(args.threads or _cores())
    options = WorkloadOptions(width_mult=args.width_mult, seed=args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)  # the random teacher `run` would build with this --seed
        model = mnist_teacher(options)
    model.train()
    data = DataSource(DataConfig(source="mnist5k", resolution=MNIST_SHAPE[-1], channels=MNIST_SHAPE[0],
                                 size=args.train_samples, seed=args.seed), args.batch_size)
    steps = args.epochs * data.steps_per_epoch
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    progress = Progress(enabled=not args.quiet, batch_size=args.batch_size)
    t0 = time.perf_counter()
    loss_sum, step = 0.0, 0
    for epoch in range(args.epochs):
        progress.start(data.steps_per_epoch, f"teacher epoch {epoch + 1}/{args.epochs}")
        loss_sum = 0.0
        for _ in range(data.steps_per_epoch):
            x, y = data.load(step)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
            step += 1
            progress.advance()
        progress.close()
        if not args.quiet:
            print(f"[pipebd] teacher epoch {epoch + 1}/{args.epochs}: mean loss {loss_sum / data.steps_per_epoch:.4f}, "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    top1 = evaluate_top1(model, *mnist5k_split("test"), batch=500)
    state = model.state_dict()
    atomic_write(args.out, lambda f: torch.save(state, f), binary=True, fsync=True)
    return TeacherResult(workload=name, out=args.out, epochs=args.epochs, steps=steps, train_samples=len(data.dataset),
                         seconds=seconds, final_loss=loss_sum / data.steps_per_epoch, test_top1=top1)
