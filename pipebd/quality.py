"""What a run's distilled student is worth: the stitched student's and the teacher's test top-1,
and every block's loss on held-out data.

After a run whose data source has a held-out test split (:data:`SPLITS`; today only
``--data mnist5k``, :func:`pipebd.data_mnist.mnist5k_split`), rank 0 rebuilds the full workload on
CPU with the run's options (:func:`pipebd.options.workload_options`: the same ``--teacher-weights``,
seed and sizes), loads every block's final student weights (the ``state_dict``s the runner gathers
from the ranks that own them, as for ``--save-weights``) and :func:`assess` measures, after
training and after every timing figure (so none changes):

- ``teacher_top1``: the teacher's top-1 on the test split (:func:`pipebd.evaluate.evaluate_top1`);
- ``student_top1_raw``: the stitched student's — student block 0 → 1 → … → the last, whose output
  is the logits, as the teacher's last block's is — with the BatchNorm statistics it trained with.
  Those were gathered on the *teacher's* block inputs; stitched, each block sees its student
  predecessor's outputs instead, whose statistics differ a little, and the differences compound;
- ``student_top1``: the same chain after its BatchNorm statistics are recalibrated
  (:func:`recalibrate_bn`: one train-mode pass over the *training* split, no labels, no weight
  changes), as one-shot NAS re-estimates them for every sub-network it scores (Guo et al.,
  "Single Path One-Shot", ECCV 2020, §3.3). This is the figure to compare with the teacher's;
- per block, :func:`block_losses`: the student block's loss (:func:`pipebd.distill.block_loss`,
  the loss it trained on) against the teacher block's output, both fed the teacher's input of that
  block, on the test split — and for a NAS supernet block, one row per candidate path (every
  combination of its cells' choices), which is what the search ranks (DNA, Li et al., CVPR 2020:
  each block's paths rated by their distillation loss on held-out data; :mod:`pipebd.search`), on
  the first :data:`SEARCH_ROWS` test rows, each path with its BatchNorm statistics re-estimated
  for that path alone on :data:`SEARCH_ROWS` training rows (a supernet's running statistics mix
  every sampled path; SPOS recalibrates each sub-network before scoring it, §3.3).

Blank (``None``) figures: all, for a data source without a test split (synthetic data); the
stitched student's, for a NAS supernet (``nas-*``), whose architecture (one path per block) the
search chooses afterwards.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .config import RunConfig

__all__ = ["SPLITS", "EVAL_BATCH", "Assessment", "has_test_split", "assess", "recalibrate_bn", "block_losses",
           "BLOCK_BATCH", "SEARCH_ROWS", "candidate_paths", "path_name", "path_params", "block_loss_rows", "BLOCK_LOSS_COLUMNS"]


def _mnist5k(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .data_mnist import mnist5k_split

    return mnist5k_split(split)


#: Data sources with a held-out test split: ``--data`` name → ``split ("train" | "test") -> (images, labels)``.
SPLITS: dict[str, Callable[[str], tuple[torch.Tensor, torch.Tensor]]] = {"mnist5k": _mnist5k}
#: Rows per forward pass when scoring and recalibrating.
EVAL_BATCH = 500
#: Rows per forward pass of a block's held-out loss (smaller: a supernet's expanded MBConv
#: activations at 500 rows spill the caches; 125 is 8x faster per row here).
BLOCK_BATCH = 125
#: Held-out rows a supernet's candidate paths are rated on: the first of the test split (every
#: prefix of mnist5k's is class-balanced). 500 rows rate nas-mnist's 174 paths in ~10 s on 2 cores.
SEARCH_ROWS = 500
#: Columns of ``block_losses.csv`` (one row per block, or per candidate path of a supernet block).
BLOCK_LOSS_COLUMNS = ["run_id", "workload", "strategy", "devices", "modes", "block", "path", "choices", "params",
                      "heldout_loss", "final_train_loss"]


@dataclass
class Assessment:
    """What :func:`assess` measured; fractions in [0, 1], ``None`` where it does not apply."""

    student_top1: float | None = None
    student_top1_raw: float | None = None
    teacher_top1: float | None = None
    blocks: list[dict] = field(default_factory=list)  # block_loss rows without the run's columns


def has_test_split(cfg: RunConfig) -> bool:
    """Whether ``cfg``'s data source has a test split to score the stitched student on."""
    return cfg.data in SPLITS


@torch.no_grad()
def recalibrate_bn(blocks: Sequence[nn.Module], images: torch.Tensor, *, batch: int = EVAL_BATCH) -> int:
    """Re-estimate every BatchNorm's running statistics of the chain ``blocks`` on ``images``.

    Resets them and runs the chain in train mode with ``momentum=None`` (a cumulative average
    over the batches), under ``no_grad``, so only the running mean and variance change; every
    module's train/eval mode and momentum are restored. Returns the number of BatchNorm layers.
    """
    norms = [m for b in blocks for m in b.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    modes = [(m, m.training) for b in blocks for m in b.modules()]
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        for b in blocks:
            b.train()
        for lo in range(0, images.shape[0], batch):
            x = images[lo:lo + batch]
            for b in blocks:
                x = b(x)
    finally:
        for m, was in modes:
            m.train(was)
        for m, mom in zip(norms, momenta):
            m.momentum = mom
    return len(norms)


def candidate_paths(block: nn.Module) -> list[tuple[int, ...] | None]:
    """Every path of a supernet block (all combinations of its cells' choices, in order), or
    ``[None]`` for a fixed block."""
    if not getattr(block, "is_supernet", False):
        return [None]
    return list(itertools.product(*(range(n) for n in block.choices_per_cell)))


def path_name(block: nn.Module, path: tuple[int, ...] | None) -> str:
    """``"k3e6-zero"`` for a path of a supernet block (one choice name per cell); ``""`` for none."""
    if path is None:
        return ""
    return "-".join(block.choice_name(c, p) for c, p in enumerate(path))


def path_params(block: nn.Module, path: tuple[int, ...] | None) -> int:
    """Parameters of ``block`` on ``path``: its fixed layers and the chosen op of every cell (all of
    a fixed block's)."""
    if path is None:
        return sum(p.numel() for p in block.parameters())
    fixed = [block.prefix, block.suffix] + [cell[c] for cell, c in zip(block.cells, path)]
    return sum(p.numel() for m in fixed for p in m.parameters())


@torch.no_grad()
def block_losses(teacher: Sequence[nn.Module], student: Sequence[nn.Module], images: torch.Tensor, *,
                 batch: int = BLOCK_BATCH, calibration: torch.Tensor | None = None) -> list[dict]:
    """Each student block's held-out loss, fed the teacher's input of its block (eval mode).

    One row ``{"block", "path", "choices", "params", "heldout_loss"}`` per fixed block and per
    candidate path of a supernet block (:func:`candidate_paths`; ``path`` its name, ``choices`` its
    choice indices, space-separated; both blank for a fixed block); the loss is :func:`pipebd.distill.block_loss`
    averaged over ``images`` in slices of ``batch`` rows (weighted by their sizes). With
    ``calibration`` (unlabelled training images), every path of a supernet block is scored with
    its BatchNorm statistics re-estimated for that path on the teacher's input of the block from
    those images (:func:`_outputs_per_path`); the blocks' own statistics are restored after.
    """
    from .distill import block_loss

    modes = [(m, m.training) for b in (*teacher, *student) for m in b.modules()]
    saved = [_bn_state(b) for b in student]
    rows: list[dict] = []
    try:
        for b in (*teacher, *student):
            b.eval()
        x, xc = images, calibration
        for i, (t_block, s_block) in enumerate(zip(teacher, student)):
            y = torch.cat([t_block(x[lo:lo + batch]) for lo in range(0, x.shape[0], batch)])
            yc = None if xc is None else torch.cat([t_block(xc[lo:lo + batch]) for lo in range(0, xc.shape[0], batch)])
            last = i == len(teacher) - 1
            for path, out in _outputs_per_path(s_block, x, batch, calibration=xc):
                loss = sum(float(block_loss(out[lo:lo + batch].float(), y[lo:lo + batch].float(), last=last,
                                            block=s_block)) * min(batch, x.shape[0] - lo)
                           for lo in range(0, x.shape[0], batch)) / x.shape[0]
                rows.append({"block": i, "path": path_name(s_block, path),
                             "choices": "" if path is None else " ".join(map(str, path)),
                             "params": path_params(s_block, path), "heldout_loss": loss})
            x, xc = y, yc
    finally:
        for m, was in modes:
            m.train(was)
        for b, state in zip(student, saved):
            _restore_bn(b, state)
    return rows


def _norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _bn_state(module: nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """Copies of every BatchNorm's running statistics and momentum in ``module``."""
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
            for m in _norms(module) if m.running_mean is not None]


def _restore_bn(module: nn.Module, state: list[tuple[torch.Tensor, ...]]) -> None:
    for m, (mean, var, count, momentum) in zip([m for m in _norms(module) if m.running_mean is not None], state):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)
        m.momentum = momentum


def _outputs_per_path(block: nn.Module, x: torch.Tensor, batch: int, *, calibration: torch.Tensor | None = None):
    """``(path, output)`` of ``block`` on ``x`` for every path of :func:`candidate_paths`, in order.

    A supernet block's paths share prefixes, so the walk is depth-first over its cells: the prefix
    runs once, and each cell's choice once per distinct choice of the cells before it (2 cells of 6
    and 7 choices: 6 + 42 cell forwards, not 84). With ``calibration``, each module of the walk
    first re-estimates its BatchNorm statistics (reset, cumulative, train mode: exactly
    :func:`recalibrate_bn` of the path's chain, slice by slice) on the calibration rows as the
    modules before it on this path leave them, so every path is scored with its own statistics."""
    def run(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([module(h[lo:lo + batch]) for lo in range(0, h.shape[0], batch)])

    def step(module: nn.Module, h: torch.Tensor, hc: torch.Tensor | None):
        """``module`` on the scored rows (eval mode) and, recalibrated first, on the calibration rows
        (train mode, as a recalibration pass feeds the next module)."""
        if hc is None or not _norms(module):
            return run(module, h), (None if hc is None else run(module, hc))
        norms = _norms(module)
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        module.train()
        try:
            hc_out = run(module, hc)
        finally:
            module.eval()
        return run(module, h), hc_out

    if not getattr(block, "is_supernet", False):
        yield None, run(block, x)  # one path, trained with its own statistics: scored as it is
        return

    def walk(cell: int, h: torch.Tensor, hc: torch.Tensor | None, chosen: tuple[int, ...]):
        if cell == len(block.cells):
            yield chosen, step(block.suffix, h, hc)[0]
            return
        for c, op in enumerate(block.cells[cell]):
            yield from walk(cell + 1, *step(op, h, hc), chosen + (c,))

    yield from walk(0, *step(block.prefix, x, calibration), ())


def _final_train_loss(losses: Mapping[int, Mapping[int, float]], block: int) -> float | None:
    """The mean training loss of ``block``'s last tenth of steps (at least one), or None."""
    steps = losses.get(block) or {}
    if not steps:
        return None
    tail = sorted(steps)[-max(1, len(steps) // 10):]
    return sum(steps[k] for k in tail) / len(tail)


def assess(cfg: RunConfig, weights: Mapping[int, Mapping[str, torch.Tensor]],
           losses: Mapping[int, Mapping[int, float]] | None = None) -> Assessment:
    """Score ``cfg``'s run on its data's test split (an empty :class:`Assessment` without one).

    ``weights``: block index → that student block's final ``state_dict`` (every block, loaded with a
    strict key match). ``losses``: block → step → training loss (the summed ``losses.csv`` shares),
    for each block row's ``final_train_loss``.
    """
    if not has_test_split(cfg):
        return Assessment()
    from .evaluate import evaluate_top1
    from .options import workload_options
    from .zoo import build_workload

    images, labels = SPLITS[cfg.data]("test")
    workload = build_workload(cfg.workload, workload_options(cfg))  # the full build, on CPU
    missing = sorted(set(range(workload.num_blocks)) - set(weights))
    if missing:
        raise ValueError(f"assess needs every student block's weights; blocks {missing} of "
                         f"{workload.num_blocks} have none")
    for i, block in enumerate(workload.student):
        block.load_state_dict(weights[i], strict=True)
    result = Assessment(teacher_top1=evaluate_top1(workload.teacher, images, labels, batch=EVAL_BATCH))
    calibration = SPLITS[cfg.data]("train")[0][:SEARCH_ROWS] if workload.is_nas else None
    result.blocks = block_losses(workload.teacher, workload.student,
                                 images[:SEARCH_ROWS] if workload.is_nas else images, calibration=calibration)
    for row in result.blocks:
        row["final_train_loss"] = _final_train_loss(losses or {}, row["block"]) if not row["path"] else None
    if not workload.is_nas:
        result.student_top1_raw = evaluate_top1(workload.student, images, labels, batch=EVAL_BATCH)
        recalibrate_bn(workload.student, SPLITS[cfg.data]("train")[0])
        result.student_top1 = evaluate_top1(workload.student, images, labels, batch=EVAL_BATCH)
    return result


def block_loss_rows(run_id: str, run_row: Mapping, blocks: Iterable[dict]) -> list[dict]:
    """``block_losses.csv`` rows: the run's identifying columns joined to :attr:`Assessment.blocks`."""
    base = {k: run_row.get(k) for k in ("workload", "strategy", "devices", "modes")}
    return [{"run_id": run_id, **base, **b} for b in blocks]
