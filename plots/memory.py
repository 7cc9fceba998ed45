"""Peak memory per strategy and workload: a bar at the maximum over ranks, a tick at the
minimum over ranks (the spread shows how unevenly a strategy loads its devices).

From ``ranks.csv`` (``peak_memory_mb`` per rank; ``runs.csv``'s ``max_peak_memory_mb`` when a
run has no rank rows); the median over repeated runs. On CUDA this is
``max_memory_allocated``; on CPU the peak RSS of each rank's process (which includes the
interpreter and torch, so only differences between strategies mean something).

    python plots/memory.py RESULTS_DIR [RESULTS_DIR ...] -o memory.png
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from plots import _common as C  # the installed package (pyproject.toml), also when run as plots/NAME.py


def compute(runs: pd.DataFrame, ranks: pd.DataFrame, *, workloads: list[str] | None = None,
            batch_size: int | None = None, devices: int | None = None) -> pd.DataFrame:
    """One row per (workload, strategy): median over runs of the max / min per-rank peak (MiB)."""
    rows = []
    for wl in C.ordered_workloads(workloads or runs["workload"].unique()):
        w = C.choose_config(runs, wl, batch_size=batch_size, devices=devices)
        if w.empty:
            C.note(f"{wl}: no ok runs; left out")
            continue
        for s in C.ordered(w["strategy"].unique()):
            mx, mn = [], []
            for _, run in w[w["strategy"] == s].iterrows():
                per_rank = ranks[ranks["run_id"] == run.run_id].groupby("rank")["peak_memory_mb"].first()
                per_rank = pd.to_numeric(per_rank, errors="coerce").dropna()
                if len(per_rank):
                    mx.append(per_rank.max())
                    mn.append(per_rank.min())
                elif pd.notna(run.max_peak_memory_mb):
                    mx.append(run.max_peak_memory_mb)
                    mn.append(run.max_peak_memory_mb)
            if not mx:
                C.note(f"{wl}: {s} recorded no peak memory; left out")
                continue
            rows.append({"workload": wl, "strategy": s, "device_type": str(w["device_type"].iloc[0]),
                         "devices": int(w.devices.iloc[0]), "batch_size": int(w.batch_size.iloc[0]),
                         "runs": len(mx), "max_mb": float(np.median(mx)), "min_mb": float(np.median(mn))})
    return pd.DataFrame(rows, columns=["workload", "strategy", "device_type", "devices", "batch_size", "runs",
                                       "max_mb", "min_mb"])


def plot(table: pd.DataFrame, path: str) -> None:
    workloads = C.ordered_workloads(table["workload"].unique())
    strategies = C.ordered(table["strategy"].unique())
    fig, (ax,) = C.figure(1, height=2.0, width=3.3 if len(workloads) * len(strategies) <= 12 else 7.0)
    width = 0.8 / len(strategies)
    use_gib = table["max_mb"].max() >= 4096
    k, unit = (1 / 1024, "GiB") if use_gib else (1.0, "MiB")
    for j, s in enumerate(strategies):
        t = table[table["strategy"] == s]
        xs = [workloads.index(w) - 0.4 + width * (j + 0.5) for w in t["workload"]]
        ax.bar(xs, t["max_mb"] * k, width * 0.9, color=C.strategy_color(s), edgecolor="black", linewidth=0.4,
               label=s)
        ax.scatter(xs, t["min_mb"] * k, marker="_", s=30, color="black", linewidth=0.8, zorder=5)
    ax.set_xticks(range(len(workloads)), [C.workload_label(w).replace(" · ", "\n") for w in workloads])
    kinds = sorted(set(table["device_type"]))
    what = {"cuda": "peak allocated", "cpu": "peak RSS"}
    ax.set_ylabel(f"{' / '.join(what.get(d, d) for d in kinds)} per device ({unit})")
    import matplotlib.patches as mpatches
    from matplotlib.lines import Line2D

    handles = [mpatches.Patch(facecolor=C.strategy_color(s), edgecolor="black", linewidth=0.4, label=s)
               for s in strategies]
    handles.append(Line2D([], [], marker="_", markersize=7, color="black", linestyle="none", label="min over ranks"))
    ax.legend(handles=handles, ncol=min(len(handles), 6 if fig.get_figwidth() > 4 else 3), loc="lower center",
              bbox_to_anchor=(0.5, 1.0), handlelength=1.0, columnspacing=0.8, handletextpad=0.4)
    ax.set_ylim(0, table["max_mb"].max() * k * 1.05)
    fig.tight_layout()
    C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", default=None, help="plot only this workload (repeatable)")
    args = p.parse_args(argv)
    runs, ranks, _events = C.load(args.dirs)
    table = compute(runs, ranks, workloads=args.workload, batch_size=args.batch_size, devices=args.devices)
    if table.empty:
        C.empty_figure(args.output, "no peak memory to plot: no ok runs")
        return 0
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    plot(table, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
