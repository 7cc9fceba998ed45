"""Speedup over ``dp`` per strategy, one panel per workload (Pipe-BD, Jang et al. 2023, Fig. 6).

Speedup = epoch time of ``dp`` / epoch time of the strategy, both from the same results
directory, the same workload, device count and batch size; with several runs per
(workload, strategy, devices) the median epoch time is used. A dashed line marks the ideal
(``dp`` epoch time / ``ideal_epoch_time_s``) when the runs carry one; ``--paper`` overlays
the speedups the paper reports (4 × RTX A6000).

    python plots/speedup.py RESULTS_DIR [RESULTS_DIR ...] -o speedup.png [--paper]
"""

from __future__ import annotations

import math
import os
import sys

import pandas as pd

try:
    from . import _common as C
except ImportError:  # run as a script: python plots/NAME.py
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common as C

#: Speedups over DP reported in the paper (Fig. 6), per workload and strategy.
PAPER = {
    "nas-cifar10": {"ls": 1.93, "tr": 2.41, "tr-dpu": 3.08, "ahd": 3.08},
    "nas-imagenet": {"ls": 0.50, "tr": 3.03, "tr-dpu": 3.14, "ahd": 4.37},
    "compress-vgg16-cifar10": {"ls": 2.05, "tr": 5.64, "tr-dpu": 5.85, "ahd": 7.40},
    "compress-vgg16-imagenet": {"ls": 0.51, "tr": 3.98, "tr-dpu": 4.23, "ahd": 7.38},
}
EXPECTED = ["dp", "ls", "tr", "tr-dpu", "ahd"]


def compute(runs: pd.DataFrame, *, workloads: list[str] | None = None, batch_size: int | None = None,
            devices: int | None = None) -> pd.DataFrame:
    """One row per (workload, source, strategy): median epoch time, speedup over dp, ideal speedup."""
    rows = []
    for wl in C.ordered_workloads(workloads or runs["workload"].unique()):
        for src in sorted(runs["source"].unique()):
            w = C.choose_config(runs[runs["source"] == src], wl, batch_size=batch_size, devices=devices)
            if w.empty:
                continue
            dp = w[w["strategy"] == "dp"]
            if dp.empty:
                C.note(f"{wl} in {src}: no ok dp run at {int(w.devices.iloc[0])} devices, B={int(w.batch_size.iloc[0])}; "
                       "no speedups for it")
                continue
            dp_time = float(dp["epoch_time_s"].median())
            ideal = pd.to_numeric(w["ideal_epoch_time_s"], errors="coerce").dropna()
            ideal_speedup = dp_time / float(ideal.median()) if len(ideal) and ideal.median() > 0 else math.nan
            present = C.ordered(w["strategy"].unique())
            missing = [s for s in EXPECTED if s not in present]
            if missing:
                C.note(f"{wl} in {src}: no ok runs of {', '.join(missing)}; left out")
            for s in present:
                g = w[w["strategy"] == s]
                t = float(g["epoch_time_s"].median())
                rows.append({"workload": wl, "source": src, "devices": int(g.devices.iloc[0]),
                             "batch_size": int(g.batch_size.iloc[0]), "strategy": s, "runs": len(g),
                             "epoch_time_s": t, "speedup": dp_time / t, "ideal_speedup": ideal_speedup,
                             "run_ids": ",".join(map(str, g["run_id"]))})
    return pd.DataFrame(rows, columns=["workload", "source", "devices", "batch_size", "strategy", "runs",
                                       "epoch_time_s", "speedup", "ideal_speedup", "run_ids"])


def plot(table: pd.DataFrame, path: str, *, paper: bool = False) -> None:
    workloads = C.ordered_workloads(table["workload"].unique())
    fig, axes = C.figure(len(workloads), height=2.1)
    sources = sorted(table["source"].unique())
    hatches = ["", "////", "....", "xxxx"]
    for ax, wl in zip(axes, workloads):
        t = table[table["workload"] == wl]
        strategies = C.ordered(set(t["strategy"]) | (set(PAPER.get(wl, {})) if paper else set()))
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
                ax.text(xi, r.speedup, f"{r.speedup:.2f}", ha="center", va="bottom", fontsize=7)
                top = max(top, r.speedup)
            ideal = ts["ideal_speedup"].dropna()
            if len(ideal):
                ax.axhline(ideal.iloc[0], color="black", linestyle="--", linewidth=0.8)
                ax.text(len(strategies) - 0.5, ideal.iloc[0], f"ideal {ideal.iloc[0]:.2f}", ha="right",
                        va="bottom", fontsize=7)
                top = max(top, ideal.iloc[0])
        for s in strategies:
            if s not in set(t["strategy"]):
                ax.text(x[s], 0.05, "no run", ha="center", va="bottom", rotation=90, fontsize=7, color="0.45")
        if paper and wl in PAPER:
            ps = [s for s in strategies if s in PAPER[wl]]
            ax.scatter([x[s] for s in ps], [PAPER[wl][s] for s in ps], marker="D", s=14, color="white",
                       edgecolor="black", linewidth=0.8, zorder=5, label="paper")
            top = max([top] + [PAPER[wl][s] for s in ps])
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
    p.add_argument("--paper", action="store_true", help="overlay the paper's reported speedups")
    args = p.parse_args(argv)
    runs, _ranks, _events = C.load(args.dirs)
    table = compute(runs, workloads=args.workload, batch_size=args.batch_size, devices=args.devices)
    if table.empty:
        C.empty_figure(args.output, "no speedups to plot: no ok dp run next to other strategies")
        return 0
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print(table.drop(columns=["run_ids"]).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    plot(table, args.output, paper=args.paper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
