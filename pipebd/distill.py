"""The math of one block of blockwise knowledge distillation (DESIGN.md §1).

Student block ``i`` is trained to map the teacher's input of block ``i`` to the teacher's
output of block ``i``: plain MSE on block outputs, and soft-label cross-entropy against the
teacher's logits for the last block (as in DNA and Pipe-BD's released code); a student block
that defines ``distill_loss`` (the candidate libraries of :mod:`pipebd.zoo.llm`: normalised MSE,
KL on logits) brings its own. The teacher is
frozen in eval mode under ``no_grad``. Each student block has its own SGD optimizer
(Nesterov momentum 0.9, weight decay; or Adam, Kingma & Ba 2015, with ``--optimizer adam``) and
cosine schedule over the steps it will train.

Every strategy trains through :class:`BlockTrainer`, so the math cannot drift between them:
``accumulate`` adds the gradient of one shard (weighted by its share of the batch, so uneven
data-parallel splits average correctly), ``apply`` takes the optimizer step.

Compute modes (:mod:`pipebd.modes`): a block runs in fp32 or under bf16 autocast (its weights,
gradients and optimizer state stay fp32 — the autocast "master weights" recipe — and the loss is
computed in fp32 from the bf16 output), contiguous or channels-last. In fp32 contiguous nothing
differs from the plain recipe above.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .modes import FP32, Mode
from .zoo.layers import sample_path

__all__ = ["OPTIMIZERS", "OptimConfig", "optim_config", "BlockTrainer", "block_loss", "teacher_forward", "teacher_block", "shard_sizes"]


#: ``--optimizer`` names. Adam's per-parameter step sizes suit the small local regressions of
#: blockwise distillation (each block fits its teacher block's output): on compress-mnist it reaches
#: in 600 steps a stitched student that SGD does not reach in 1,000 (README: "Results: what the
#: student is worth").
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    nesterov: bool = True
    name: str = "sgd"  # one of OPTIMIZERS; adam ignores momentum and nesterov

    def build(self, params) -> torch.optim.Optimizer:
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                   nesterov=self.nesterov)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.name!r}; known: {', '.join(OPTIMIZERS)}")


def optim_config(cfg) -> OptimConfig:
    """The :class:`OptimConfig` of a :class:`~pipebd.config.RunConfig` (``--optimizer``, ``--lr``,
    ``--weight-decay``): the one place a run's options become a student's optimizer."""
    return OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, name=cfg.optimizer)


def block_loss(output: torch.Tensor, target: torch.Tensor, *, last: bool, block: nn.Module | None = None) -> torch.Tensor:
    """MSE against the teacher's block output; soft-label CE against its logits on the last block.
    A student block with its own ``distill_loss(output, target)`` (a candidate library of a decoder
    workload, :mod:`pipebd.zoo.llm`) defines its loss itself."""
    own = getattr(block, "distill_loss", None)
    if own is not None:
        return own(output, target)
    if last:
        return -(F.softmax(target, dim=1) * F.log_softmax(output, dim=1)).sum(dim=1).mean()
    return F.mse_loss(output, target)


@torch.no_grad()
def teacher_forward(blocks: list[nn.Module], x: torch.Tensor, modes: list[Mode] | None = None) -> torch.Tensor:
    for i, b in enumerate(blocks):
        x = teacher_block(b, x, FP32 if modes is None else modes[i])
    return x


@torch.no_grad()
def teacher_block(block: nn.Module, x: torch.Tensor, mode: Mode = FP32) -> torch.Tensor:
    """One frozen teacher block in ``mode``; the output in the mode's dtype and format (what the
    boundary stores and relays). ``block`` must already be in the mode's memory format."""
    with mode.autocast(x.device):
        y = block(mode.prepare(x))
    return mode.output(y)


def shard_sizes(total: int, parts: int) -> list[int]:
    """Split ``total`` rows into ``parts`` contiguous shards as evenly as possible (larger first)."""
    if parts < 1 or parts > total:
        raise ValueError(f"cannot split a batch of {total} into {parts} shards (need 1 <= shards <= batch)")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@dataclass
class BlockTrainer:
    """One student block with its optimizer and schedule; the only place a student learns."""

    index: int
    block: nn.Module
    last: bool
    total_steps: int
    seed: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    paths: list[tuple[int, ...] | None] = field(default_factory=list)
    mode: Mode = FP32  # precision and memory format of the forward/backward (pipebd.modes)

    def __post_init__(self) -> None:
        self.mode.apply_to(self.block)
        self.block.train()
        self.optimizer = self.optim.build(self.block.parameters())
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, self.total_steps))
        self.step_count = 0
        self.current_step = -1
        #: step -> this trainer's share of the batch loss (sum over its shards of weight × loss;
        #: summed over the replicas of a block it is the batch's mean loss). Kept as tensors, so
        #: recording it never synchronises a device inside a measured window.
        self.loss_sums: dict[int, torch.Tensor] = {}
        self.optimizer.zero_grad(set_to_none=True)

    def begin(self, step: int) -> None:
        """Select the NAS path of ``step`` (a function of seed, block, step only)."""
        self.current_step = step
        path = sample_path(self.block, seed=self.seed, block_index=self.index, step=step)
        if path is not None:
            self.block.set_path(path)
        self.paths.append(path)

    def accumulate(self, x: torch.Tensor, target: torch.Tensor, *, weight: float = 1.0) -> torch.Tensor:
        """Forward + loss + backward of one shard; its loss counts ``weight`` of the batch's."""
        with self.mode.autocast(x.device):
            out = self.block(self.mode.prepare(x))
        loss = block_loss(out.float(), target.float(), last=self.last, block=self.block)  # in fp32 (no-op in fp32)
        (loss * weight).backward()
        loss = loss.detach()
        self.loss_sums[self.current_step] = self.loss_sums.get(self.current_step, 0.0) + weight * loss
        return loss

    def apply(self) -> None:
        """Optimizer and schedule step; clears the gradients."""
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1

    def grads(self) -> list[torch.Tensor]:
        """Gradients present this step (an unsampled supernet choice has none, on every replica)."""
        return [p.grad for p in self.block.parameters() if p.grad is not None]

    def train_step(self, step: int, x: torch.Tensor, target: torch.Tensor, *, shards: int = 1) -> torch.Tensor:
        """One whole step on one device, optionally as ``shards`` ghost shards (data-parallel numerics)."""
        self.begin(step)
        loss = torch.zeros(())
        lo = 0
        for n in shard_sizes(x.shape[0], shards):
            w = n / x.shape[0]
            loss += w * self.accumulate(x[lo:lo + n], target[lo:lo + n], weight=w)
            lo += n
        self.apply()
        return loss

    def losses(self) -> dict[int, float]:
        """``{step: loss share}`` as floats (call after the run: it reads the device)."""
        return {k: float(v) for k, v in self.loss_sums.items()}

    def state(self) -> dict:
        return {"block": self.block.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step_count}
