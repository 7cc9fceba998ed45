"""Architecture search after supernet distillation, as DNA does it, and the same ranking whichever
strategy trained the supernet.

DNA (Li et al., CVPR 2020, §3.3-3.4) rates every candidate path of every block by its
distillation loss on held-out data — each block alone, fed the teacher's input of its block — and
then searches for the architecture (one path per block) with the least summed loss under a
resource constraint. The run writes those ratings: ``block_losses.csv``, one row per block and
candidate path with its parameter count (:func:`pipebd.quality.block_losses`, on the first
:data:`pipebd.quality.SEARCH_ROWS` test digits). Here:

- :func:`pareto_choose` picks one option per block minimising the summed loss under a cost budget
  exactly: the multiple-choice knapsack solved by merging the blocks' Pareto fronts of
  (cost, loss) — a combination is kept only if no other is both cheaper and better, so the front
  stays small and the optimum is never pruned. The language-model library's assembly (Puzzle,
  Bercovich et al. 2025, §4: one replacement block per layer under a budget) is the same problem;
- :func:`search_run` applies it to one run (``--budget``: a fraction of the largest architecture
  in the space when <= 1, else a parameter count);
- :func:`kendall_tau` (τ-b, Kendall 1945, ties counted) compares the paths' ranking between runs;
  weights identical across strategies give τ = 1.

``python -m pipebd search RESULTS_DIR [--run ID] [--budget B]`` prints each block's ranking, the
chosen architecture and, with several runs of the workload, τ between every pair of strategies.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError

__all__ = ["SearchResult", "pareto_choose", "search_run", "read_block_losses", "kendall_tau", "ranking_tau"]


@dataclass
class SearchResult:
    """The chosen option per block, its summed loss and cost, and the budget it met."""

    choice: list[Hashable]  # one option key per block
    loss: float
    cost: float
    budget: float
    paths: list = None  # the chosen paths as tuples (None for a fixed block), from the keys
    run_id: str = ""  # the run searched


def pareto_choose(options: Sequence[Sequence[tuple[float, float, Hashable]]], budget: float) -> tuple[list, float, float]:
    """One ``(cost, loss, key)`` per block with the least summed loss whose summed cost is <= ``budget``.

    Exact: after each block the partial combinations are reduced to their Pareto front (sorted by
    cost, keeping only those that lower the best loss so far), which always contains an optimal
    completion's prefix, and combinations over the budget are dropped (costs are non-negative).
    Returns ``(keys, loss, cost)``; :class:`ConfigError` if even the cheapest combination is over.
    """
    front: list[tuple[float, float, tuple]] = [(0.0, 0.0, ())]
    for block, opts in enumerate(options):
        if not opts:
            raise ValueError(f"block {block} has no options")
        merged = [(c + oc, l + ol, keys + (k,)) for c, l, keys in front for oc, ol, k in opts if c + oc <= budget]
        if not merged:
            cheapest = sum(min(o[0] for o in opts) for opts in options)
            raise ConfigError(f"no architecture fits the budget {budget:,.0f}: the cheapest needs {cheapest:,.0f}; "
                              "raise --budget")
        merged.sort(key=lambda t: (t[0], t[1]))
        front, best = [], math.inf
        for item in merged:
            if item[1] < best:
                front.append(item)
                best = item[1]
    cost, loss, keys = min(front, key=lambda t: (t[1], t[0]))
    return list(keys), loss, cost


def read_block_losses(results_dir: str) -> pd.DataFrame:
    """``block_losses.csv`` of a results directory (:class:`ConfigError` naming what to run if absent)."""
    path = os.path.join(results_dir, "block_losses.csv")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} does not exist: run a workload on data with a test split (e.g. "
                          f"python -m pipebd run -w nas-mnist --data mnist5k --out {results_dir}) first")
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"path": str, "choices": str})


def _budget_params(budget: float | None, rows: pd.DataFrame) -> float:
    largest = float(rows.groupby("block")["params"].max().sum())
    if budget is None:
        return largest
    if not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--budget must be > 0 (a fraction <= 1 of the largest architecture, {largest:,.0f} "
                          f"parameters, or a parameter count), got {budget}")
    return budget * largest if budget <= 1 else budget




def search_run(results_dir: str, run_id: str | None = None, *, budget: float | None = None,
               losses: pd.DataFrame | None = None) -> SearchResult:
    """The best architecture of run ``run_id`` (default: the latest run with candidate paths) of
    ``results_dir``'s ``block_losses.csv`` (or of ``losses``, that file already read) under
    ``budget`` (see the module docstring)."""
    df = read_block_losses(results_dir) if losses is None else losses
    if run_id is None:
        nas = df[df["path"].fillna("") != ""]
        if nas.empty:
            raise ConfigError(f"{results_dir}/block_losses.csv has no candidate paths (no supernet run)")
        run_id = nas["run_id"].iloc[-1]
    rows = df[df["run_id"] == run_id].fillna({"path": ""})
    if rows.empty:
        raise ConfigError(f"run {run_id!r} has no rows in {results_dir}/block_losses.csv")
    cap = _budget_params(budget, rows)
    rows = rows.fillna({"choices": ""})
    options = [[(float(r.params), float(r.heldout_loss), r.path) for r in b.itertuples()]
               for _, b in rows.groupby("block", sort=True)]
    keys, loss, cost = pareto_choose(options, cap)
    indices = {(int(r.block), r.path): r.choices for r in rows.itertuples()}
    paths = [tuple(int(c) for c in str(indices[(b, k)]).split()) if k else None for b, k in enumerate(keys)]
    return SearchResult(choice=keys, loss=loss, cost=cost, budget=cap, paths=paths, run_id=run_id)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b of two equally long score lists (ties in either count as neither concordant
    nor discordant, and the normalisation accounts for them); NaN for fewer than two items or a
    constant list."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"kendall_tau needs equally long lists, got {x.shape} and {y.shape}")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = math.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float((dx * dy).sum() / denom) if denom else math.nan


def ranking_tau(df: pd.DataFrame, run_a: str, run_b: str) -> float:
    """The mean over supernet blocks of τ between two runs' held-out path losses."""
    taus = []
    for _, b in df[df["path"].fillna("") != ""].groupby("block"):
        pa = b[b["run_id"] == run_a].set_index("path")["heldout_loss"]
        pb = b[b["run_id"] == run_b].set_index("path")["heldout_loss"]
        common = pa.index.intersection(pb.index)
        if len(common) > 1:
            taus.append(kendall_tau(pa[common].to_numpy(), pb[common].to_numpy()))
    return float(np.mean(taus)) if taus else math.nan


def _cmd_search(args) -> int:
    df = read_block_losses(args.results)
    found = search_run(args.results, args.run, budget=args.budget, losses=df)
    run_id = found.run_id
    rows = df[df["run_id"] == run_id]
    strategy = rows["strategy"].iloc[0]
    print(f"search of run {run_id} ({rows['workload'].iloc[0]}, {strategy}): candidate paths ranked by "
          f"held-out block loss (best {args.top} per block)")
    for block, b in rows.groupby("block"):
        ranked = b.sort_values("heldout_loss")
        shown = ", ".join(f"{p or '(fixed)'} {l:.4g} [{int(n):,}]" for p, l, n in
                          zip(ranked["path"].fillna(""), ranked["heldout_loss"], ranked["params"]))
        print(f"  block {block}: " + ", ".join(shown.split(", ")[:args.top]) + ("" if len(ranked) <= args.top else ", ..."))
    print(f"chosen under {found.budget:,.0f} parameters: {' | '.join(k or '(fixed)' for k in found.choice)}; "
          f"summed held-out loss {found.loss:.4g}, {found.cost:,.0f} parameters")
    others = df[(df["workload"] == rows["workload"].iloc[0]) & (df["path"].fillna("") != "")]
    runs = list(dict.fromkeys(others["run_id"]))
    if len(runs) > 1:
        names = {r: f"{others[others['run_id'] == r]['strategy'].iloc[0]} ({r[-6:]})" for r in runs}
        print("Kendall tau-b of the candidate ranking between runs (mean over blocks):")
        for a_i, a in enumerate(runs):
            for b in runs[a_i + 1:]:
                print(f"  {names[a]} vs {names[b]}: {ranking_tau(others, a, b):.3f}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("search", help="pick the best NAS architecture of a run from its held-out block losses",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("results", metavar="RESULTS_DIR", help="a results directory with block_losses.csv")
    p.add_argument("--run", default=None, help="the run id (default: the latest supernet run)")
    p.add_argument("--budget", type=float, default=None,
                   help="parameters allowed: a fraction (<= 1) of the largest architecture, or a count (default: no limit)")
    p.add_argument("--top", type=int, default=5, help="paths shown per block (default 5)")
    p.set_defaults(func=_cmd_search)
