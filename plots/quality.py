"""What the distilled student is worth, per strategy (the ``quality`` experiment).

``--figure top1``: the stitched student's test top-1 per strategy (``runs.csv``: ``student_top1``,
BatchNorm recalibrated, as bars; ``student_top1_raw`` as a marker) against the teacher's (a line),
and the table printed.

``--figure steps``: every block's training loss (``losses.csv``, a running mean over ``--smooth``
steps) against the step, one panel per block, one line per strategy: the same math gives
overlapping curves.

``--figure time``: the same losses against wall-clock time — when each block's update of each step
ended, on the run's aligned clock (``events.csv``: the latest ``update`` event of that block and
step over its replicas; measured steps only, so traces must be on) — with, per block, the time each
strategy first reaches the target loss: the sequential run's final (smoothed) loss plus 10 %
(``--target``), MLPerf's "time to quality" per block; the table is printed, with the time at which
every block has reached it (the student is done when its last block is).

    python plots/quality.py RESULTS_DIR [RESULTS_DIR ...] -o quality-top1.png --figure top1|steps|time
"""

from __future__ import annotations

import os
import sys

import pandas as pd

from plots import _common as C  # the installed package (pyproject.toml), also when run as plots/NAME.py

REFERENCE = "sequential"


def _runs(runs: pd.DataFrame, workload: str | None) -> pd.DataFrame:
    """One (the latest) ok run per strategy of ``workload`` (default: the first in runs.csv)."""
    if runs.empty:
        return runs
    w = workload or runs["workload"].iloc[0]
    r = runs[runs["workload"] == w].sort_values("timestamp", kind="stable")
    return r.groupby("strategy", sort=False).tail(1)


def top1_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: student top-1 (recalibrated and raw), teacher top-1, epoch time, devices (percent)."""
    cols = {"student_top1": "student", "student_top1_raw": "student_raw", "teacher_top1": "teacher"}
    t = runs[["strategy", "devices", "epoch_time_s", *[c for c in cols if c in runs.columns]]].rename(columns=cols)
    for c in cols.values():
        t[c] = pd.to_numeric(t[c], errors="coerce") * 100 if c in t.columns else float("nan")
    order = {s: i for i, s in enumerate(C.ordered(t["strategy"]))}
    return t.sort_values("strategy", key=lambda s: s.map(order)).reset_index(drop=True)


def smoothed_losses(losses: pd.DataFrame, run_ids, window: int) -> pd.DataFrame:
    """``losses.csv`` rows of ``run_ids`` with ``smooth``: the running mean over ``window`` steps per block."""
    l = losses[losses["run_id"].isin(list(run_ids))].sort_values(["run_id", "block", "step"])
    l = l.assign(smooth=l.groupby(["run_id", "block"])["loss"].transform(
        lambda s: s.rolling(window, min_periods=1).mean()))
    return l


def step_times(events: pd.DataFrame) -> pd.DataFrame:
    """``(run_id, block, step, t)``: when that block's update of that step ended (latest replica)."""
    u = events[events["phase"] == "update"]
    return u.groupby(["run_id", "block", "step"], as_index=False)["end_s"].max().rename(columns={"end_s": "t"})


def time_to_target(curves: pd.DataFrame, runs: pd.DataFrame, margin: float) -> pd.DataFrame:
    """Per (strategy, block): the first time its smoothed loss is at most the reference's final
    smoothed loss × (1 + ``margin``); NaN if it never is (or there is no reference run)."""
    rows = []
    ref = runs[runs["strategy"] == REFERENCE]
    for block, b in curves.groupby("block"):
        target = None
        if not ref.empty:
            r = b[b["run_id"] == ref["run_id"].iloc[0]].sort_values("step")
            target = float(r["smooth"].iloc[-1]) * (1 + margin) if not r.empty else None
        for _, run in runs.iterrows():
            c = b[b["run_id"] == run["run_id"]].dropna(subset=["t"]).sort_values("t")
            hit = c[c["smooth"] <= target] if target is not None else c.iloc[0:0]
            rows.append({"block": int(block), "strategy": run["strategy"], "target_loss": target,
                         "time_s": float(hit["t"].iloc[0]) if not hit.empty else float("nan")})
    return pd.DataFrame(rows, columns=["block", "strategy", "target_loss", "time_s"])


def plot_top1(table: pd.DataFrame, path: str) -> None:
    fig, ax = C.figure(1, height=2.4, width=4.2)
    ax = ax[0]
    x = range(len(table))
    ax.bar(x, table["student"], color=[C.strategy_color(s) for s in table["strategy"]], label="student (BN recalibrated)")
    ax.plot(x, table["student_raw"], "k_", markersize=12, label="student, BN as trained")
    teacher = table["teacher"].dropna()
    if not teacher.empty:
        ax.axhline(float(teacher.iloc[0]), color="grey", linestyle="--", linewidth=1,
                   label=f"teacher {float(teacher.iloc[0]):.1f} %")
    for i, v in zip(x, table["student"]):
        if v == v:
            ax.annotate(f"{v:.1f}", (i, v), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=6)
    lo = min(v for v in (*table["student"], *table["student_raw"], *teacher) if v == v)
    ax.set_ylim(max(0.0, lo - 3), 100)
    ax.set_xticks(list(x), [f"{s}\n(N={int(d)})" for s, d in zip(table["strategy"], table["devices"])], fontsize=6)
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    C.save(fig, path)


def plot_curves(curves: pd.DataFrame, runs: pd.DataFrame, path: str, *, x: str, hits: pd.DataFrame | None = None) -> None:
    blocks = sorted(curves["block"].unique())
    fig, axes = C.figure(len(blocks), height=2.0, max_cols=3)
    for ax, block in zip(axes, blocks):
        b = curves[curves["block"] == block]
        for _, run in runs.iterrows():
            c = b[b["run_id"] == run["run_id"]].dropna(subset=[x]).sort_values(x)
            label = run["strategy"]
            if hits is not None:
                h = hits[(hits["block"] == block) & (hits["strategy"] == run["strategy"])]["time_s"]
                label += f" {float(h.iloc[0]):.1f} s" if not h.empty and h.iloc[0] == h.iloc[0] else " (not reached)"
            ax.plot(c[x], c["smooth"], color=C.strategy_color(run["strategy"]), linewidth=0.9, label=label)
        if hits is not None and not hits[hits["block"] == block].empty:
            target = hits[hits["block"] == block]["target_loss"].iloc[0]
            if target == target and target is not None:
                ax.axhline(target, color="grey", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(f"block {block}", fontsize=7)
        ax.set_xlabel("step" if x == "step" else "wall-clock time (s)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
    axes[0].set_ylabel("block loss (smoothed)", fontsize=7)
    fig.tight_layout()
    C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--figure", choices=("top1", "steps", "time"), required=True)
    p.add_argument("--workload", default=None, help="plot this workload (default: the first in runs.csv)")
    p.add_argument("--smooth", type=int, default=20, help="running-mean window in steps (default 20)")
    p.add_argument("--target", type=float, default=0.10,
                   help="time figure: the target is the sequential final loss x (1 + this) (default 0.10)")
    args = p.parse_args(argv)
    runs, _ranks, events = C.load(args.dirs)
    runs = _runs(runs, C.ALIASES.get(args.workload, args.workload) if args.workload else None)
    if runs.empty:
        C.empty_figure(args.output, "no ok runs to plot")
        return 0
    if args.figure == "top1":
        table = top1_table(runs)
        if table["student"].isna().all():
            C.empty_figure(args.output, "no student top-1 in runs.csv (a run on data with a test split, "
                                        "--data mnist5k, records it)")
            return 0
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        plot_top1(table, args.output)
        return 0
    losses = pd.concat([pd.read_csv(os.path.join(d, "losses.csv")) for d in args.dirs
                        if os.path.exists(os.path.join(d, "losses.csv"))]
                       or [pd.DataFrame(columns=["run_id", "block", "step", "loss"])])
    curves = smoothed_losses(losses, runs["run_id"], args.smooth)
    if curves.empty:
        C.empty_figure(args.output, "no losses.csv rows for these runs")
        return 0
    if args.figure == "steps":
        plot_curves(curves, runs, args.output, x="step")
        return 0
    curves = curves.merge(step_times(events), on=["run_id", "block", "step"], how="left")
    if curves["t"].isna().all():
        C.empty_figure(args.output, "no update events for these runs (run with traces on: events.csv)")
        return 0
    hits = time_to_target(curves, runs, args.target)
    table = hits.pivot(index="strategy", columns="block", values="time_s")
    table["every block"] = table.max(axis=1, skipna=False)  # the student is done when its last block is
    print(f"seconds to reach the target loss (sequential's final + {args.target:.0%}) per block:")
    print(table.loc[C.ordered(table.index)].to_string(float_format=lambda v: f"{v:.1f}"))
    plot_curves(curves, runs, args.output, x="t", hits=hits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
