"""Per-rank time breakdown: stacked bars of data, teacher, student, update, comm, sync and
idle per rank, ``dp`` beside each Pipe-BD strategy (Pipe-BD, Jang et al. 2023, Fig. 2/3).

From ``ranks.csv``: each rank's phase seconds divided by the run's ``steps_measured``, i.e.
the time of one training step of every block, so bars of different runs compare directly
(``dp``'s time per step is the sum over its blocks). One run per strategy: the one with the
median epoch time. An "ideal" bar (``ideal_epoch_time_s`` × batch / epoch samples: all work
spread evenly, no communication, no idle) is added when the runs carry one.

    python plots/breakdown.py RESULTS_DIR [RESULTS_DIR ...] -o breakdown.png [--workload W]
"""

from __future__ import annotations

import math
import sys

import matplotlib.patches as mpatches
import pandas as pd

from plots import _common as C  # the installed package (pyproject.toml), also when run as plots/NAME.py


def compute(runs: pd.DataFrame, ranks: pd.DataFrame, *, workloads: list[str] | None = None,
            batch_size: int | None = None, devices: int | None = None) -> pd.DataFrame:
    """One row per (workload, strategy, rank): per-step seconds of each phase and of the wall.
    Ideal rows have strategy ``ideal``, rank -1, and only ``wall_per_step_s``."""
    rows = []
    for wl in C.ordered_workloads(workloads or runs["workload"].unique()):
        w = C.choose_config(runs, wl, batch_size=batch_size, devices=devices)
        if w.empty:
            C.note(f"{wl}: no ok runs; left out")
            continue
        for s in C.ordered(w["strategy"].unique()):
            run = C.median_run(w[w["strategy"] == s])
            r = ranks[ranks["run_id"] == run.run_id]
            if r.empty:
                C.note(f"{wl}: {s} run {run.run_id} has no ranks.csv rows; left out")
                continue
            steps = float(run.steps_measured) if run.steps_measured > 0 else 1.0
            for rank, g in r.groupby("rank"):
                sec = dict(zip(g["phase"], pd.to_numeric(g["seconds"], errors="coerce")))
                row = {"workload": wl, "strategy": s, "run_id": run.run_id, "rank": int(rank),
                       "devices": int(run.devices), "batch_size": int(run.batch_size),
                       "wall_per_step_s": float(g["wall_s"].iloc[0]) / steps}
                row.update({p: sec.get(p, 0.0) / steps for p in C.PHASES})
                rows.append(row)
        ideal = pd.to_numeric(w["ideal_epoch_time_s"], errors="coerce").dropna()
        if len(ideal):
            first = w.iloc[0]
            per_step = float(ideal.median()) * float(first.batch_size) / float(first.epoch_samples)
            rows.append({"workload": wl, "strategy": "ideal", "run_id": "", "rank": -1,
                         "devices": int(first.devices), "batch_size": int(first.batch_size),
                         "wall_per_step_s": per_step, **{p: math.nan for p in C.PHASES}})
    return pd.DataFrame(rows, columns=["workload", "strategy", "run_id", "rank", "devices", "batch_size",
                                       "wall_per_step_s", *C.PHASES])


def plot(table: pd.DataFrame, path: str) -> None:
    workloads = C.ordered_workloads(table["workload"].unique())
    most_bars = max(len(table[table.workload == wl]) + table[table.workload == wl]["strategy"].nunique()
                    for wl in workloads)
    fig, axes = C.figure(len(workloads), height=2.2, max_cols=2,
                         width=3.3 if len(workloads) == 1 and most_bars <= 14 else 7.0)
    scale, unit = C.fmt_seconds(float(table["wall_per_step_s"].max()))
    for ax, wl in zip(axes, workloads):
        t = table[table["workload"] == wl]
        x, ticks, labels, groups = 0.0, [], [], []
        strategies = [s for s in C.ordered(t["strategy"].unique()) if s != "ideal"]
        strategies += ["ideal"] if "ideal" in set(t["strategy"]) else []
        for s in strategies:
            g = t[t["strategy"] == s].sort_values("rank")
            x0 = x
            for _, r in g.iterrows():
                if s == "ideal":
                    ax.bar(x, r.wall_per_step_s * scale, 0.8, color="white", edgecolor="black", linewidth=0.5,
                           hatch="////")
                    labels.append("")
                else:
                    bottom = 0.0
                    for p in C.PHASES:
                        v = r[p] * scale
                        ax.bar(x, v, 0.8, bottom=bottom, color=C.PHASE_COLORS[p], edgecolor="black", linewidth=0.3)
                        bottom += v
                    labels.append(str(int(r["rank"])))
                ticks.append(x)
                x += 1.0
            groups.append(((x0 + x - 1.0) / 2, s))
            x += 0.6
        ax.set_xticks(ticks, labels)
        ax.tick_params(axis="x", length=0, pad=1)
        for xc, s in groups:
            ax.annotate(s, (xc, 0), xycoords=("data", "axes fraction"), xytext=(0, -10), textcoords="offset points",
                        ha="center", va="top", fontsize=7, fontweight="bold")
        ax.set_xlim(-0.7, x - 0.9)
        first = t.iloc[0]
        ax.set_title(f"{C.workload_label(wl)} · {first.devices} devices, batch {first.batch_size}")
        ax.set_ylabel(f"time per step, all blocks ({unit})")
        ax.set_xlabel("rank", labelpad=12)
    handles = [mpatches.Patch(facecolor=C.PHASE_COLORS[p], edgecolor="black", linewidth=0.3, label=p)
               for p in C.PHASES]
    if "ideal" in set(table["strategy"]):
        handles.append(mpatches.Patch(facecolor="white", edgecolor="black", hatch="////", linewidth=0.5,
                                      label="ideal"))
    narrow = fig.get_figwidth() < 4
    fig.legend(handles=handles, loc="upper center", ncol=4 if narrow else len(handles), bbox_to_anchor=(0.5, 1.0),
               handlelength=1.0, columnspacing=0.8, handletextpad=0.4)
    legend_in = 0.34 if narrow else 0.2  # inches the legend takes at the top
    fig.tight_layout(rect=(0, 0, 1, 1 - legend_in / fig.get_figheight()), h_pad=1.8)
    C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", default=None, help="plot only this workload (repeatable)")
    args = p.parse_args(argv)
    runs, ranks, _events = C.load(args.dirs)
    table = compute(runs, ranks, workloads=args.workload, batch_size=args.batch_size, devices=args.devices)
    if table.empty:
        C.empty_figure(args.output, "no per-rank breakdown to plot: no ok runs with ranks.csv rows")
        return 0
    print(table.drop(columns=["run_id"]).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    plot(table, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
