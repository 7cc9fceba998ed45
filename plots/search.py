"""The NAS search after supernet distillation, per strategy (the ``search`` experiment).

Each run's candidate paths are rated by held-out block loss (``block_losses.csv``,
:func:`pipebd.quality.block_losses`); this prints, per strategy, the architecture
:func:`pipebd.search.search_run` picks under ``--budget`` and Kendall's τ-b of the candidate
ranking against the reference run (``sequential``, else the first strategy; the mean over blocks,
:func:`pipebd.search.ranking_tau`), and draws each run's path losses against the reference's, one
panel per strategy, coloured by block: on the diagonal (τ = 1) where the weights are identical.

    python plots/search.py RESULTS_DIR [RESULTS_DIR ...] -o search-ranking.png [--budget 0.5]
"""

from __future__ import annotations

import os
import sys

import pandas as pd

from pipebd.errors import ConfigError
from pipebd.search import ranking_tau, read_block_losses, search_run
from plots import _common as C  # the installed package (pyproject.toml), also when run as plots/NAME.py

REFERENCE = "sequential"


def nas_runs(runs: pd.DataFrame, losses: pd.DataFrame) -> pd.DataFrame:
    """The latest ok run per strategy that rated candidate paths, in the paper's strategy order."""
    with_paths = set(losses[losses["path"].fillna("") != ""]["run_id"])
    r = runs[runs["run_id"].isin(with_paths)].sort_values("timestamp", kind="stable")
    r = r.groupby("strategy", sort=False).tail(1)
    order = {s: i for i, s in enumerate(C.ordered(r["strategy"]))}
    return r.sort_values("strategy", key=lambda s: s.map(order)).reset_index(drop=True)


def table(runs: pd.DataFrame, losses: pd.DataFrame, results: dict[str, str], budget: float | None) -> pd.DataFrame:
    """Per run: tau against the reference, the chosen architecture, its summed loss and parameters."""
    ref = runs[runs["strategy"] == REFERENCE]
    ref_id = (ref if not ref.empty else runs)["run_id"].iloc[0]
    rows = []
    for _, r in runs.iterrows():
        found = search_run(results[r["run_id"]], r["run_id"], budget=budget, losses=losses)
        rows.append({"strategy": r["strategy"], "devices": int(r["devices"]), "run_id": r["run_id"],
                     "tau_vs_reference": ranking_tau(losses, ref_id, r["run_id"]),
                     "architecture": " | ".join(found.choice), "summed_loss": found.loss, "params": int(found.cost)})
    out = pd.DataFrame(rows)
    out.attrs["reference"] = runs[runs["run_id"] == ref_id]["strategy"].iloc[0]
    out.attrs["reference_id"] = ref_id
    return out


def plot(t: pd.DataFrame, losses: pd.DataFrame, path: str) -> None:
    others = t[t["run_id"] != t.attrs["reference_id"]]
    fig, axes = C.figure(max(1, len(others)), height=2.2, max_cols=3)
    ref = losses[losses["run_id"] == t.attrs["reference_id"]].set_index(["block", "path"])["heldout_loss"]
    for ax, (_, r) in zip(axes, others.iterrows()):
        mine = losses[losses["run_id"] == r["run_id"]].set_index(["block", "path"])["heldout_loss"]
        common = ref.index.intersection(mine.index)
        blocks = [b for b, _ in common]
        ax.scatter(ref[common], mine[common], c=blocks, cmap="viridis", s=6)
        lo, hi = min(ref[common].min(), mine[common].min()), max(ref[common].max(), mine[common].max())
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.6, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{r['strategy']}: tau = {r['tau_vs_reference']:.3f}", fontsize=7)
        ax.set_xlabel(f"held-out path loss, {t.attrs['reference']}", fontsize=6)
        ax.set_ylabel(f"{r['strategy']}", fontsize=6)
        ax.tick_params(labelsize=5)
    fig.tight_layout()
    C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=None,
                   help="parameters allowed (as `python -m pipebd search --budget`; default: no limit)")
    args = p.parse_args(argv)
    runs, _ranks, _events = C.load(args.dirs)
    parts, results = [], {}
    for d in args.dirs:
        if os.path.exists(os.path.join(d, "block_losses.csv")):
            part = read_block_losses(d)
            results.update({rid: d for rid in part["run_id"]})
            parts.append(part)
    losses = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run_id", "path"])
    runs = nas_runs(runs, losses) if not runs.empty else runs
    if runs.empty:
        C.empty_figure(args.output, "no supernet runs with held-out path losses (block_losses.csv) to compare")
        return 0
    try:
        t = table(runs, losses, results, args.budget)
    except ConfigError as e:
        C.empty_figure(args.output, str(e))
        return 0
    budget = "no budget" if args.budget is None else f"--budget {args.budget:g}"
    print(f"searched architectures ({budget}) and Kendall tau-b of the candidate ranking vs {t.attrs['reference']}:")
    print(t.drop(columns=["run_id"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    plot(t, losses, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
