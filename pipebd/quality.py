"""What a run's distilled student is worth: the stitched student's and the teacher's test top-1.

After a run whose data source has a held-out test split (:data:`TEST_SPLITS`; today only
``--data mnist5k``, :func:`pipebd.data_mnist.mnist5k_split`), rank 0 rebuilds the full workload on
CPU with the run's options (:func:`pipebd.options.workload_options`: the same ``--teacher-weights``,
seed and sizes), loads every block's final student weights (the ``state_dict``s the runner gathers
from the ranks that own them, as for ``--save-weights``) into its student blocks, stitches them —
student block 0 → 1 → … → the last, whose output is the logits, as the teacher's last block's is —
and scores that chain and the teacher's on the test split with
:func:`pipebd.evaluate.evaluate_top1`. The runner calls :func:`stitched_top1` once, after
training and after every measured window, so no timing figure changes.

Blank (``None``) figures: both, for a data source without a test split (synthetic data); the
student's, for a NAS supernet (``nas-*``), whose architecture (one path per block) has not been
chosen yet.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from .config import RunConfig

__all__ = ["TEST_SPLITS", "has_test_split", "stitched_top1", "EVAL_BATCH"]


def _mnist5k_test() -> tuple[torch.Tensor, torch.Tensor]:
    from .data_mnist import mnist5k_split

    return mnist5k_split("test")


#: Data sources with a held-out test split: ``--data`` name → a function giving (images, labels).
TEST_SPLITS: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {"mnist5k": _mnist5k_test}
#: Rows per forward pass when scoring.
EVAL_BATCH = 500


def has_test_split(cfg: RunConfig) -> bool:
    """Whether ``cfg``'s data source has a test split to score the stitched student on."""
    return cfg.data in TEST_SPLITS


def stitched_top1(cfg: RunConfig,
                  weights: Mapping[int, Mapping[str, torch.Tensor]]) -> tuple[float | None, float | None]:
    """``(student_top1, teacher_top1)``, each a fraction in [0, 1], of ``cfg``'s run on its test split.

    ``weights``: block index → that student block's final ``state_dict`` (every block, loaded with a
    strict key match); unused, and may be empty, for a NAS supernet or without a test split.
    ``(None, None)`` when the data has no test split; ``student_top1`` is ``None`` for a supernet.
    """
    if not has_test_split(cfg):
        return None, None
    from .evaluate import evaluate_top1
    from .options import workload_options
    from .zoo import build_workload

    images, labels = TEST_SPLITS[cfg.data]()
    workload = build_workload(cfg.workload, workload_options(cfg))  # the full build, on CPU
    teacher_top1 = evaluate_top1(workload.teacher, images, labels, batch=EVAL_BATCH)
    if workload.is_nas:
        return None, teacher_top1
    missing = sorted(set(range(workload.num_blocks)) - set(weights))
    if missing:
        raise ValueError(f"stitched_top1 needs every student block's weights; blocks {missing} of "
                         f"{workload.num_blocks} have none")
    for i, block in enumerate(workload.student):
        block.load_state_dict(weights[i], strict=True)
    return evaluate_top1(workload.student, images, labels, batch=EVAL_BATCH), teacher_top1
