"""Assemble one language-model student from its blocks' candidate libraries, and score it.

Puzzle (Bercovich et al., ICML 2025, §4) trains a library of replacement blocks per layer
("blockwise local distillation"), rates each on held-out data, and then picks one per block to
minimise the summed block loss under a resource budget — a small integer programme. Here:

1. :func:`candidate_table` rates every candidate of every block by its normalised MSE (the loss
   it trained on: MSE over the teacher output's mean square, :meth:`CandidateLibrary.distill_loss`)
   on held-out token windows, each block fed the teacher's input of its block, and counts its
   parameters (its decoder layers; the frozen embedding and the tied head are the teacher's);
2. :func:`choose` solves the budgeted choice exactly (:func:`pipebd.search.pareto_choose`) with the
   budget a fraction of the teacher's decoder-layer parameters;
3. :class:`AssembledLM` stitches the chosen candidates — embedding → candidate 0 → … → the last
   block's candidate (with its final norm) → the tied LM head — and :func:`perplexity` scores it
   and the teacher on the same held-out text.

``python -m pipebd assemble RUN --budget 0.75 --budget 0.5`` does all three for a run saved with
``--save-students`` (an ``llm-*`` workload), on ``--text`` (default: this project's README.md,
real text outside the ``--data-root stdlib`` training corpus), with the run's own tokenizer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

__all__ = ["Rated", "rate", "candidate_table", "choose", "AssembledLM", "TeacherLM", "perplexity", "text_windows",
           "decoder_params", "default_text"]


def default_text() -> str:
    """This project's README.md: real English prose and commands, not in the stdlib corpus."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def text_windows(path: str, seq_len: int, tokenizer: str, *, limit: int | None = None) -> torch.Tensor:
    """``(n, seq_len)`` consecutive token windows of the text file ``path`` (the tail dropped)."""
    from .data_tokens import encode_text

    try:
        with open(path, encoding="utf-8") as f:
            ids = encode_text(f.read(), tokenizer)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--text {path!r} cannot be read as UTF-8 text ({e}); pass a readable text file") from None
    n = len(ids) // seq_len
    if limit is not None:
        n = min(n, limit)
    if n < 1:
        raise ConfigError(f"--text {path!r} has {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[:n * seq_len], dtype=torch.int64).view(n, seq_len)


def decoder_params(module: nn.Module) -> int:
    """Parameters of a teacher block or a candidate, without the embedding and the LM head."""
    skip = {id(p) for name in ("embed", "head") for m in [getattr(module, name, None)] if m is not None
            for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


@torch.no_grad()
def candidate_table(workload, windows: torch.Tensor, *, batch: int = 8) -> list[list[dict]]:
    """Per block, per candidate: ``{"block", "candidate", "index", "params", "heldout_loss"}``."""
    for b in (*workload.teacher, *workload.student):
        b.eval()
    table, x = [], windows
    for i, (t_block, library) in enumerate(zip(workload.teacher, workload.student)):
        rows = [{"block": i, "candidate": n, "index": c, "params": decoder_params(library.candidates[c]),
                 "heldout_loss": 0.0} for c, n in enumerate(library.names)]
        outs = []
        for lo in range(0, x.shape[0], batch):
            xb = x[lo:lo + batch]
            y = t_block(xb)
            out = library(xb)
            for c in range(len(rows)):
                rows[c]["heldout_loss"] += float(library.distill_loss(out[c:c + 1], y)) * xb.shape[0]
            outs.append(y)
        for r in rows:
            r["heldout_loss"] /= x.shape[0]
        table.append(rows)
        x = torch.cat(outs)
    return table


@dataclass
class Rated:
    """A decoder run's students loaded beside its teacher, rated on held-out windows."""

    workload: object
    windows: torch.Tensor
    tokenizer: str
    table: list[list[dict]]
    teacher_params: int


def rate(payload: dict, text: str, *, limit: int | None = None) -> Rated:
    """Load a students file (:func:`pipebd.export.read_students`) with its teacher and rate every
    candidate on up to ``limit`` windows of ``text`` in the run's tokenizer (:func:`candidate_table`)."""
    from .data_tokens import tokenizer_for
    from .export import load_saved

    wl = load_saved(payload, teacher=True)
    tokenizer = tokenizer_for(payload.get("teacher_weights"))
    windows = text_windows(text, wl.input_shape[0], tokenizer, limit=limit)
    return Rated(wl, windows, tokenizer, candidate_table(wl, windows), sum(decoder_params(t) for t in wl.teacher))


def choose(table: Sequence[Sequence[dict]], budget_params: float) -> tuple[list[int], float, float]:
    """The candidate index per block with the least summed held-out loss within ``budget_params``."""
    from .search import pareto_choose

    options = [[(float(r["params"]), float(r["heldout_loss"]), r["index"]) for r in rows] for rows in table]
    return pareto_choose(options, budget_params)


class AssembledLM(nn.Module):
    """The stitched student: embedding → one chosen candidate per block → tied LM head (logits)."""

    def __init__(self, workload, choice: Sequence[int]):
        super().__init__()
        libraries = workload.student
        if len(choice) != len(libraries):
            raise ValueError(f"{len(choice)} choices for {len(libraries)} blocks")
        self.embed = libraries[0].embed
        self.blocks = nn.ModuleList(lib.candidates[c] for lib, c in zip(libraries, choice))
        self.rotary = libraries[0].rotary  # a list: shared buffers, not a submodule
        self.names = [lib.names[c] for lib, c in zip(libraries, choice)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from .zoo.llm import _positions

        h = self.embed(ids)
        pe = _positions(h, self.rotary[0])
        for block in self.blocks:
            h = block(h, pe)
        return F.linear(h, self.embed.weight)  # the tied head


class TeacherLM(nn.Module):
    """The teacher's blocks chained, with the tied LM head unless its last block already has one."""

    def __init__(self, workload):
        super().__init__()
        self.blocks = nn.ModuleList(workload.teacher)
        self.embed = workload.teacher[0].embed

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = ids
        for block in self.blocks:
            h = block(h)
        return h if self.blocks[-1].head is not None else F.linear(h, self.embed.weight)


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, *, batch: int = 8) -> float:
    """exp of the mean next-token cross-entropy over every window (each scored on its own)."""
    model.eval()
    total, count = 0.0, 0
    for lo in range(0, windows.shape[0], batch):
        ids = windows[lo:lo + batch]
        logits = model(ids)[:, :-1].float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
    return math.exp(total / count)


def _cmd_assemble(args) -> int:
    import time

    from .export import read_students

    payload = read_students(args.run, args.results)
    if not payload["workload"].startswith("llm-"):
        raise ConfigError(f"assemble picks one candidate per block of a decoder workload (llm-*); run "
                          f"{payload['run_id']} is {payload['workload']} (use `search` for a NAS supernet)")
    budgets = args.budget or [0.75, 0.5]
    bad = [b for b in budgets if not 0 < b <= 1]
    if bad:
        raise ConfigError(f"--budget must be a fraction in (0, 1] of the teacher's decoder parameters, got {bad}")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    text = args.text or default_text()
    rated = rate(payload, text, limit=args.windows)
    wl, windows, table, teacher_params = rated.workload, rated.windows, rated.table, rated.teacher_params
    print(f"assemble: run {payload['run_id']} ({payload['workload']}, teacher "
          f"{payload.get('teacher_weights') or 'random init'}); {windows.shape[0]} held-out windows of "
          f"{windows.shape[1]} {rated.tokenizer} tokens from {text}; teacher decoder parameters {teacher_params:,}")
    teacher_ppl = perplexity(TeacherLM(wl), windows)
    print(f"  teacher perplexity {teacher_ppl:,.2f}")
    for budget in budgets:
        choice, loss, cost = choose(table, budget * teacher_params)
        model = AssembledLM(wl, choice)
        names = ", ".join(f"{n}x{model.names.count(n)}" for n in dict.fromkeys(model.names))
        print(f"  budget {budget:.0%}: {cost:,.0f} parameters ({cost / teacher_params:.1%}), summed held-out "
              f"normalised MSE {loss:.4g}, perplexity {perplexity(model, windows):,.2f}; candidates {names}")
        print(f"    per block: {' '.join(model.names)}")
    print(f"  ({time.perf_counter() - t0:.1f} s)")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("assemble", help="pick one candidate per block of a decoder run under parameter budgets; "
                                        "perplexity against the teacher's")
    p.add_argument("run", metavar="RUN", help="a run id saved with --save-students (under --results), or its file")
    p.add_argument("--results", default="results", metavar="DIR", help="the run's results directory (default results)")
    p.add_argument("--budget", type=float, action="append", default=None,
                   help="a fraction of the teacher's decoder parameters (repeatable; default 0.75 and 0.5)")
    p.add_argument("--text", default=None, metavar="FILE", help="held-out text (default: this project's README.md)")
    p.add_argument("--windows", type=int, default=32, help="held-out windows scored (default 32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=_cmd_assemble)
