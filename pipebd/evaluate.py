"""Top-1 accuracy of a classifier, or of a chain of blocks, on held-out images.

:func:`evaluate_top1` scores a whole model or a list of blocks applied one after another (a
stitched student: student block 0 → 1 → … → the last block, whose output is the logits), in eval
mode (BatchNorm uses its running statistics) and without gradients, in batches of ``batch``
rows; each module's train/eval mode is restored afterwards. Supernet blocks must have their path
set (``SupernetBlock.set_path``) before the call. Used on the 1,000-digit test split of
``mnist5k`` (:func:`pipebd.data_mnist.mnist5k_split`) by ``python -m pipebd teacher``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["evaluate_top1", "chain"]


def chain(blocks: nn.Module | Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``blocks[-1](… blocks[0](x))``, or ``model(x)`` for one module."""
    for block in [blocks] if isinstance(blocks, nn.Module) else blocks:
        x = block(x)
    return x


def evaluate_top1(model_or_blocks: nn.Module | Sequence[nn.Module], images: torch.Tensor, labels: torch.Tensor,
                  batch: int = 500) -> float:
    """The fraction (0–1) of ``images`` whose arg-max logit is their label.

    ``model_or_blocks``: one module, or blocks chained in order (see the module docstring).
    ``images``/``labels``: ``(N, …)`` and ``(N,)``; moved in slices to the device of the first
    parameter (CPU for a module without any). ``batch``: rows per forward, at least 1.
    """
    blocks = [model_or_blocks] if isinstance(model_or_blocks, nn.Module) else list(model_or_blocks)
    if not blocks:
        raise ValueError("evaluate_top1 needs a model or at least one block, got an empty sequence")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    n = len(labels)
    if n == 0 or images.shape[0] != n:
        raise ValueError(f"images ({images.shape[0]} rows) and labels ({n}) must be the same, non-zero length")
    device = next((p.device for b in blocks for p in b.parameters()), torch.device("cpu"))
    modes = [m.training for b in blocks for m in b.modules()]
    for b in blocks:
        b.eval()
    correct = 0
    try:
        with torch.no_grad():
            for lo in range(0, n, batch):
                logits = chain(blocks, images[lo:lo + batch].to(device))
                if logits.dim() != 2:
                    raise ValueError(f"the last block must output logits (batch, classes), got shape "
                                     f"{tuple(logits.shape)}")
                correct += int((logits.argmax(1).cpu() == labels[lo:lo + batch].cpu()).sum())
    finally:
        for m, was in zip([m for b in blocks for m in b.modules()], modes):
            m.train(was)
    return correct / n
