"""Speedup over ``dp`` per strategy, one panel per workload (Pipe-BD, Jang et al. 2023, Fig. 6).

Speedup = epoch time of ``dp`` / epoch time of the strategy, both from the same results
directory, the same workload, device count and batch size; with several runs per
(workload, strategy, devices) the median epoch time is used, and the error bar spans the
per-run ratios against the nearest ``dp`` run (:mod:`pipebd.derived`); a cell whose repeats
differ by more than 25 % is marked ``!``. A dashed line marks the ideal (``dp`` epoch time /
``ideal_epoch_time_s``) when the runs carry one; ``--paper`` overlays the speedups the paper
reports (4 × RTX A6000), read from the ``paper_reference.csv`` the experiment writes beside
its runs (the numbers live once, in ``experiments/speedup.yaml``).

    python plots/speedup.py RESULTS_DIR [RESULTS_DIR ...] -o speedup.png [--paper]
"""

from __future__ import annotations

import math
import os
import sys

import pandas as pd

from plots import _common as C  # the installed package (pyproject.toml), also when run as plots/NAME.py

from pipebd.derived import speedup_cells

EXPECTED = [s for s in C.STRATEGY_ORDER if s != "sequential"]  # the paper's; noted when missing


def paper_reference(dirs: list[str]) -> dict[str, dict[str, float]]:
    """``{workload: {strategy: speedup}}`` from the ``paper_reference.csv`` files of ``dirs``."""
    out: dict[str, dict[str, float]] = {}
    for d in dirs:
        path = os.path.join(d, "paper_reference.csv")
        if os.path.exists(path) and os.path.getsize(path) > 0:
            for r in pd.read_csv(path).itertuples():
                out.setdefault(C.ALIASES.get(r.workload, r.workload), {})[r.strategy] = float(r.speedup_vs_dp)
    return out


def compute(runs: pd.DataFrame, *, workloads: list[str] | None = None, batch_size: int | None = None,
            devices: int | None = None) -> pd.DataFrame:
    """One row per (workload, source, strategy): median epoch time, speedup over dp with its
    range, spread, noisy flag, and the ideal speedup."""
    rows = []
    for wl in C.ordered_workloads(workloads or runs["workload"].unique()):
        for src in sorted(runs["source"].unique()):
            w = C.choose_config(runs[runs["source"] == src], wl, batch_size=batch_size, devices=devices)
            if w.empty:
                continue
            if w[w["strategy"] == "dp"].empty:
                C.note(f"{wl} in {src}: no ok dp run at {int(w.devices.iloc[0])} devices, B={int(w.batch_size.iloc[0])}; "
                       "no speedups for it")
                continue
            dp_time = float(w[w["strategy"] == "dp"]["epoch_time_s"].median())
            ideal = pd.to_numeric(w["ideal_epoch_time_s"], errors="coerce").dropna()
            ideal_speedup = dp_time / float(ideal.median()) if len(ideal) and ideal.median() > 0 else math.nan
            present = C.ordered(w["strategy"].unique())
            missing = [s for s in EXPECTED if s not in present]
            if missing:
                C.note(f"{wl} in {src}: no ok runs of {', '.join(missing)}; left out")
            cells = speedup_cells(w.assign(resolution=0, width_mult=0)).set_index("strategy")
            for s in present:
                c = cells.loc[s]
                rows.append({"workload": wl, "source": src, "devices": int(c.devices), "batch_size": int(c.batch_size),
                             "strategy": s, "runs": int(c.runs), "epoch_time_s": c.epoch_time_s, "speedup": c.speedup,
                             "speedup_lo": c.speedup_lo, "speedup_hi": c.speedup_hi, "spread": c.spread,
                             "noisy": bool(c.noisy), "ideal_speedup": ideal_speedup, "run_ids": c.run_ids})
    return pd.DataFrame(rows, columns=["workload", "source", "devices", "batch_size", "strategy", "runs",
                                       "epoch_time_s", "speedup", "speedup_lo", "speedup_hi", "spread", "noisy",
                                       "ideal_speedup", "run_ids"])


def plot(table: pd.DataFrame, path: str, *, paper: dict[str, dict[str, float]] | None = None) -> None:
    workloads = C.ordered_workloads(table["workload"].unique())
    fig, axes = C.figure(len(workloads), height=2.1)
    sources = sorted(table["source"].unique())
    hatches = ["", "////", "....", "xxxx"]
    for ax, wl in zip(axes, workloads):
        t = table[table["workload"] == wl]
        strategies = C.ordered(set(t["strategy"]) | set((paper or {}).get(wl, {})))
        x = {s: i for i, s in enumerate(strategies)}
        srcs = [s for s in sources if s in set(t["source"])]
        width = 0.8 / max(1, len(srcs))
        top = 1.0
        for j, src in enumerate(srcs):
            ts = t[t["source"] == src]
            for _, r in ts.iterrows():
                xi = x[r.strategy] - 0.4 + width * (j + 0.5)
                ax.bar(xi, r.speedup, width * 0.9, color=C.strategy_color(r.strategy), edgecolor="black",
                       linewidth=0.4, hatch=hatches[j % len(hatches)])
                hi = r.speedup
                if r.runs > 1 and not math.isnan(r.speedup_lo):
                    ax.errorbar(xi, r.speedup, yerr=[[max(0.0, r.speedup - r.speedup_lo)],
                                                     [max(0.0, r.speedup_hi - r.speedup)]],
                                fmt="none", ecolor="black", elinewidth=0.6, capsize=1.5)
                    hi = max(hi, r.speedup_hi)
                ax.text(xi, hi, f"{r.speedup:.2f}{'!' if r.noisy else ''}", ha="center", va="bottom", fontsize=7)
                top = max(top, hi)
            ideal = ts["ideal_speedup"].dropna()
            if len(ideal):
                ax.axhline(ideal.iloc[0], color="black", linestyle="--", linewidth=0.8)
                ax.text(len(strategies) - 0.5, ideal.iloc[0], f"ideal {ideal.iloc[0]:.2f}", ha="right",
                        va="bottom", fontsize=7)
                top = max(top, ideal.iloc[0])
        for s in strategies:
            if s not in set(t["strategy"]):
                ax.text(x[s], 0.05, "no run", ha="center", va="bottom", rotation=90, fontsize=7, color="0.45")
        if paper and wl in paper:
            ps = [s for s in strategies if s in paper[wl]]
            ax.scatter([x[s] for s in ps], [paper[wl][s] for s in ps], marker="D", s=14, color="white",
                       edgecolor="black", linewidth=0.8, zorder=5, label="paper")
            top = max([top] + [paper[wl][s] for s in ps])
        ax.axhline(1.0, color="black", linewidth=0.5)
        ax.set_xticks(range(len(strategies)), strategies, rotation=0)
        ax.set_xlim(-0.6, len(strategies) - 0.4)
        ax.set_ylim(0, top * 1.18)
        first = t.iloc[0]
        ax.set_title(f"{C.workload_label(wl)}\n{first.devices} devices, batch {first.batch_size}")
    axes[0].set_ylabel("speedup over dp (×)")
    handles, labels = [], []
    if paper:
        handles += [axes[0].scatter([], [], marker="D", s=14, color="white", edgecolor="black")]
        labels += ["paper (4× A6000)"]
    if (table["runs"] > 1).any():
        handles += [axes[0].errorbar([], [], yerr=[], fmt="none", ecolor="black", elinewidth=0.6)]
        labels += ["range over repeats (! = repeats differ > 25 %)"]
    if len(sources) > 1:
        import matplotlib.patches as mpatches
        for j, src in enumerate(sources):
            handles.append(mpatches.Patch(facecolor="white", edgecolor="black", hatch=hatches[j % len(hatches)]))
            labels.append(src)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", default=None, help="plot only this workload (repeatable)")
    p.add_argument("--paper", action="store_true",
                   help="overlay the paper's reported speedups (paper_reference.csv of the results directories)")
    args = p.parse_args(argv)
    runs, _ranks, _events = C.load(args.dirs)
    table = compute(runs, workloads=args.workload, batch_size=args.batch_size, devices=args.devices)
    if table.empty:
        C.empty_figure(args.output, "no speedups to plot: no ok dp run next to other strategies")
        return 0
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print(table.drop(columns=["run_ids"]).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    paper = paper_reference(args.dirs) if args.paper else None
    if args.paper and not paper:
        C.note("--paper: no paper_reference.csv in the results directories; no paper overlay")
    plot(table, args.output, paper=paper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
