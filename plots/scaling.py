"""Throughput vs batch size (at one device count) and vs device count (at one batch size),
one line per strategy: measured points from ``runs.csv`` (median over repeats), simulated
lines from an optional CSV written by the cost model (``--simulated FILE``; its columns are
documented in results/README.md: strategy, devices, batch_size, and throughput_sps or
epoch_time_s; optional epoch_samples, workload and extrapolated). A simulated point whose
per-replica batch lies outside the profile's measured batch sizes (``extrapolated`` true: the
cost model's fitted fixed + per-sample line, :mod:`pipebd.costfit`) is drawn hollow.
``--ratio A/B`` writes, per device count of the devices panel, how many times faster strategy A
is than B: simulated, and measured where both were run (e.g. ``ahd/even``: what the planner
buys over ModelOpt's equal split). ``--strategies LIST`` draws only those strategies.

    python plots/scaling.py RESULTS_DIR [RESULTS_DIR ...] -o scaling.png [--workload W] [--simulated sim.csv]
                            [--ratio A/B] [--strategies dp,even,ahd]
"""

from __future__ import annotations

import os
import sys

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator

from plots import _common as C  # the installed package (pyproject.toml), also when run as plots/NAME.py

SIM_REQUIRED = ("strategy", "devices", "batch_size")


def _pick(w: pd.DataFrame, fixed: str, varied: str, want: int | None) -> int | None:
    """The value of ``fixed`` to hold: ``want``, else the one with the most distinct ``varied``
    values (ties: the largest)."""
    if want is not None:
        return want
    if w.empty:
        return None
    counts = w.groupby(fixed)[varied].nunique()
    best = counts[counts == counts.max()].index.max()
    return int(best)


def compute(runs: pd.DataFrame, *, workload: str, batch_size: int | None = None,
            devices: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measured throughput (median over runs) vs batch size at one device count, and vs
    device count at one batch size; ``.attrs`` hold the value held fixed."""
    w = runs[runs["workload"] == workload]
    dev = _pick(w, "devices", "batch_size", devices)
    bs = _pick(w, "batch_size", "devices", batch_size)
    cols = ["strategy", "throughput_sps", "runs"]
    by_batch = (w[w["devices"] == dev].groupby(["strategy", "batch_size"])["throughput_sps"]
                .agg(throughput_sps="median", runs="count").reset_index()) if dev is not None else pd.DataFrame(
        columns=["batch_size", *cols])
    by_devices = (w[w["batch_size"] == bs].groupby(["strategy", "devices"])["throughput_sps"]
                  .agg(throughput_sps="median", runs="count").reset_index()) if bs is not None else pd.DataFrame(
        columns=["devices", *cols])
    by_batch.attrs["devices"], by_devices.attrs["batch_size"] = dev, bs
    return by_batch, by_devices


def load_simulated(path: str, *, workload: str, runs: pd.DataFrame) -> pd.DataFrame:
    """The simulated CSV's rows for ``workload`` with a ``throughput_sps`` column; empty (with
    a note) when the file is missing or lacks the required columns."""
    empty = pd.DataFrame(columns=[*SIM_REQUIRED, "throughput_sps"])
    if not os.path.exists(path):
        C.note(f"simulated CSV {path} not found; no simulated lines")
        return empty
    try:
        sim = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        C.note(f"simulated CSV {path} could not be read ({e}); no simulated lines")
        return empty
    missing = [c for c in SIM_REQUIRED if c not in sim]
    if missing or not ({"throughput_sps", "epoch_time_s"} & set(sim.columns)):
        C.note(f"simulated CSV {path} lacks column(s) {', '.join(missing) or 'throughput_sps or epoch_time_s'} "
               f"(needs {', '.join(SIM_REQUIRED)} and throughput_sps or epoch_time_s); no simulated lines")
        return empty
    if "workload" in sim:
        sim = sim[sim["workload"].map(lambda x: C.ALIASES.get(x, x)) == workload]
    sim = sim.copy()
    for c in ("devices", "batch_size", "throughput_sps", "epoch_time_s", "epoch_samples"):
        if c in sim:
            sim[c] = pd.to_numeric(sim[c], errors="coerce")
    if "throughput_sps" not in sim:
        sim["throughput_sps"] = float("nan")
    sim["extrapolated"] = (sim["extrapolated"].map(_truthy) if "extrapolated" in sim
                           else pd.Series(False, index=sim.index, dtype=bool))
    if "epoch_time_s" in sim:
        samples = sim["epoch_samples"] if "epoch_samples" in sim else pd.Series(float("nan"), index=sim.index)
        measured = runs[runs["workload"] == workload]["epoch_samples"].median()
        samples = samples.fillna(measured)
        sim["throughput_sps"] = sim["throughput_sps"].fillna(samples / sim["epoch_time_s"])
    bad = sim["throughput_sps"].isna() | ~(sim["throughput_sps"] > 0)
    if bad.any():
        C.note(f"simulated CSV {path}: {int(bad.sum())} row(s) without a usable throughput (no epoch_samples "
               "column and no measured run to take it from?); left out")
    return sim[~bad]


def _truthy(v) -> bool:
    """``extrapolated`` as written by the CSV writers: True/False, 1/0 or empty."""
    return str(v).strip().lower() in ("true", "1", "yes")


def ratios(by_devices: pd.DataFrame, sim: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per device count at the devices panel's batch size: how many times A's throughput is B's,
    measured (``measured``) and simulated (``simulated``); NaN where either strategy lacks a value."""
    bs = by_devices.attrs.get("batch_size")

    def per_devices(t: pd.DataFrame, strategy: str) -> pd.Series:
        if bs is not None and "batch_size" in t:
            t = t[t["batch_size"] == bs]
        return t[t["strategy"] == strategy].groupby("devices")["throughput_sps"].median()

    table = pd.DataFrame({"measured": per_devices(by_devices, a) / per_devices(by_devices, b),
                          "simulated": per_devices(sim, a) / per_devices(sim, b)})
    table.index = table.index.astype(int)
    return table.rename_axis("devices").reset_index()


def _only(table: pd.DataFrame, strategies: set[str]) -> pd.DataFrame:
    """``table``'s rows of ``strategies``, keeping its ``.attrs`` (the value held fixed)."""
    kept = table[table["strategy"].isin(strategies)].copy()
    kept.attrs = dict(table.attrs)
    return kept


def parse_ratio(text: str) -> tuple[str, str]:
    """``"A/B"`` -> ``(A, B)``; anything else is a ValueError naming the form."""
    a, sep, b = text.partition("/")
    if not (sep and a and b and "/" not in b):
        raise ValueError(f"--ratio wants two strategies as A/B (e.g. ahd/even), not {text!r}")
    return a, b


def _annotate_ratios(ax, by_devices: pd.DataFrame, sim: pd.DataFrame, a: str, b: str) -> None:
    """Writes A/B per device count in a box in the panel's upper left corner."""
    lines = []
    for row in ratios(by_devices, sim, a, b).itertuples():
        parts = [f"{v:.2f}x {kind}" for kind, v in (("simulated", row.simulated), ("measured", row.measured))
                 if v == v]
        if parts:
            lines.append(f"{row.devices} devices: {', '.join(parts)}")
    if lines:
        ax.text(0.02, 0.97, f"{a} / {b}\n" + "\n".join(lines), transform=ax.transAxes, ha="left", va="top",
                fontsize=6, bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.8"})


def plot(by_batch: pd.DataFrame, by_devices: pd.DataFrame, sim: pd.DataFrame, path: str, workload: str,
         ratio: tuple[str, str] | None = None) -> None:
    fig, axes = C.figure(2, height=2.2)
    specs = [(axes[0], by_batch, "batch_size", "devices", by_batch.attrs.get("devices"), "global batch size"),
             (axes[1], by_devices, "devices", "batch_size", by_devices.attrs.get("batch_size"), "devices")]
    strategies = C.ordered(set(by_batch["strategy"]) | set(by_devices["strategy"]) | set(sim["strategy"]))
    for ax, meas, x, fixed, value, label in specs:
        xs = set()
        for s in strategies:
            color = C.strategy_color(s)
            m = meas[meas["strategy"] == s].sort_values(x)
            if len(m):
                ax.plot(m[x], m["throughput_sps"], marker="o", markersize=3, color=color, linewidth=0.9)
                xs |= set(m[x])
            if value is not None and len(sim):
                q = sim[(sim["strategy"] == s) & (sim[fixed] == value)].sort_values(x)
                if len(q):
                    ax.plot(q[x], q["throughput_sps"], linestyle="--", color=color, linewidth=0.9)
                    ext = q["extrapolated"].astype(bool) if "extrapolated" in q else pd.Series(False, index=q.index)
                    ax.plot(q[x][~ext], q["throughput_sps"][~ext], linestyle="none", marker="x", markersize=3,
                            color=color)
                    ax.plot(q[x][ext], q["throughput_sps"][ext], linestyle="none", marker="o", markersize=3.5,
                            markerfacecolor="none", markeredgewidth=0.8, color=color)
                    xs |= set(q[x])
        ax.set_xscale("log", base=2)
        if xs:
            ax.xaxis.set_major_locator(FixedLocator(sorted(xs)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(int(v)) for v in sorted(xs)])
        ax.set_ylim(bottom=0)
        ax.set_xlabel(label)
        held = f"{value} devices" if fixed == "devices" else f"batch {value}"
        ax.set_title(f"{C.workload_label(workload)} · {held}" if value is not None else C.workload_label(workload))
    if ratio is not None:
        _annotate_ratios(axes[1], by_devices, sim, *ratio)
    axes[0].set_ylabel("throughput (samples/s)")
    handles = [Line2D([], [], color=C.strategy_color(s), linewidth=1.5, label=s) for s in strategies]
    handles += [Line2D([], [], color="black", marker="o", markersize=3, linewidth=0.9, label="measured")]
    if len(sim):
        handles += [Line2D([], [], color="black", linestyle="--", marker="x", markersize=3, linewidth=0.9,
                           label="simulated")]
        if "extrapolated" in sim and sim["extrapolated"].astype(bool).any():
            handles += [Line2D([], [], color="black", linestyle="none", marker="o", markersize=3.5,
                               markerfacecolor="none", markeredgewidth=0.8,
                               label="extrapolated beyond measured batch sizes")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1.0),
               handlelength=1.6, columnspacing=1.0)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--workload", default=None, help="the workload (default: the one with the most runs)")
    p.add_argument("--simulated", default=None, metavar="FILE", help="simulated CSV (see results/README.md)")
    p.add_argument("--ratio", default=None, metavar="A/B",
                   help="write how many times faster strategy A is than B at each device count (e.g. ahd/even)")
    p.add_argument("--strategies", default=None, metavar="LIST",
                   help="comma-separated strategies to draw (default: every one in the runs and the simulated CSV)")
    args = p.parse_args(argv)
    try:
        ratio = parse_ratio(args.ratio) if args.ratio else None
    except ValueError as e:
        p.error(str(e))
    runs, _ranks, _events = C.load(args.dirs)
    workload = C.ALIASES.get(args.workload, args.workload) if args.workload else None
    if workload is None and len(runs):
        counts = runs["workload"].value_counts()
        workload = str(counts.index[0])
        if len(counts) > 1:
            C.note(f"no --workload given; showing {workload}, the one with the most runs "
                   f"(also: {', '.join(map(str, counts.index[1:]))})")
    if workload is None:
        C.empty_figure(args.output, "no scaling to plot: no ok runs")
        return 0
    by_batch, by_devices = compute(runs, workload=workload, batch_size=args.batch_size, devices=args.devices)
    sim = load_simulated(args.simulated, workload=workload, runs=runs) if args.simulated else pd.DataFrame(
        columns=[*SIM_REQUIRED, "throughput_sps"])
    if args.strategies:
        keep = set(args.strategies.split(","))
        by_batch, by_devices, sim = (_only(t, keep) for t in (by_batch, by_devices, sim))
    if by_batch.empty and by_devices.empty and sim.empty:
        C.empty_figure(args.output, f"no scaling to plot for {workload}: no ok runs or simulated rows")
        return 0
    for name, t in (("vs batch size", by_batch), ("vs devices", by_devices)):
        if len(t):
            print(f"measured {name}:\n{t.to_string(index=False, float_format=lambda v: f'{v:.4g}')}")
    if ratio is not None:
        table = ratios(by_devices, sim, *ratio)
        print(f"{ratio[0]} / {ratio[1]} (throughput ratio):\n{table.to_string(index=False, float_format=lambda v: f'{v:.3f}')}")
    plot(by_batch, by_devices, sim, args.output, workload, ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
