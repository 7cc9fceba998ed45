"""Epoch-averaged time against epochs, one line per strategy: relay (the teacher every epoch) or
cache (the teacher once, ``--epochs E`` sharing it). Measured points from ``runs.csv`` (median over
repeats, the range as error bars; its ``epochs`` column), predicted lines from an optional
``simulate.csv`` (``--simulated FILE``, with an ``epochs`` column); the crossover — the fewest
epochs at which ``cache`` is measured faster than every other strategy plotted — is marked.

    python plots/epochs.py RESULTS_DIR [RESULTS_DIR ...] -o cache-epochs.png [--workload W] [--simulated sim.csv]
"""

from __future__ import annotations

import os
import sys

import pandas as pd

from plots import _common as C  # the installed package (pyproject.toml), also when run as plots/NAME.py

CACHE = "cache"


def compute(runs: pd.DataFrame, *, workload: str | None = None, devices: int | None = None,
            batch_size: int | None = None) -> pd.DataFrame:
    """Per (strategy, epochs): median, min and max epoch time and the run count."""
    if "epochs" not in runs.columns:
        return pd.DataFrame(columns=["strategy", "epochs", "epoch_s", "lo", "hi", "runs"])
    r = runs.copy()
    r["epochs"] = pd.to_numeric(r["epochs"], errors="coerce").fillna(1).astype(int)
    if workload is not None:
        r = r[r["workload"] == workload]
    elif not r.empty:
        r = r[r["workload"] == r["workload"].iloc[0]]
    for col, want in (("devices", devices), ("batch_size", batch_size)):
        if want is not None:
            r = r[r[col] == want]
        elif not r.empty:
            r = r[r[col] == r[col].max()]
    g = r.groupby(["strategy", "epochs"])["epoch_time_s"]
    out = g.agg(epoch_s="median", lo="min", hi="max", runs="count").reset_index()
    out.attrs.update(workload=r["workload"].iloc[0] if not r.empty else workload,
                     devices=int(r["devices"].iloc[0]) if not r.empty else devices,
                     batch_size=int(r["batch_size"].iloc[0]) if not r.empty else batch_size)
    return out


def crossover(table: pd.DataFrame) -> int | None:
    """The fewest epochs at which ``cache``'s median beats every other strategy's (None: never)."""
    for e in sorted(table["epochs"].unique()):
        at = table[table["epochs"] == e].set_index("strategy")["epoch_s"]
        if CACHE in at and len(at) > 1 and at[CACHE] < at.drop(CACHE).min():
            return int(e)
    return None


def load_simulated(path: str | None, *, workload, devices, batch_size) -> pd.DataFrame:
    if not path:
        return pd.DataFrame()
    if not os.path.exists(path):
        C.note(f"--simulated {path} does not exist; drawing the measured points only")
        return pd.DataFrame()
    sim = pd.read_csv(path)
    if "epochs" not in sim.columns:
        C.note(f"{path} has no epochs column (written before the cache strategy); drawing the measured points only")
        return pd.DataFrame()
    keep = (sim["devices"] == devices) & (sim["batch_size"] == batch_size)
    if "workload" in sim.columns and workload is not None:
        keep &= sim["workload"].map(lambda w: C.ALIASES.get(w, w)) == workload
    return sim[keep]


def plot(table: pd.DataFrame, sim: pd.DataFrame, path: str) -> None:
    fig, ax = C.figure(1, height=2.6, width=4.2)
    ax = ax[0] if isinstance(ax, (list, tuple)) else ax
    strategies = C.ordered(table["strategy"].unique())
    top = table["hi"].max()
    scale, unit = C.fmt_seconds(top)
    for s in strategies:
        t = table[table["strategy"] == s].sort_values("epochs")
        color = C.strategy_color(s)
        ax.errorbar(t["epochs"], t["epoch_s"] * scale, yerr=[(t["epoch_s"] - t["lo"]) * scale,
                                                             (t["hi"] - t["epoch_s"]) * scale],
                    marker="o", linestyle="none", color=color, capsize=2, label=f"{s} measured")
        if not sim.empty:
            p = sim[sim["strategy"] == s].sort_values("epochs")
            if not p.empty:
                ax.plot(p["epochs"], p["epoch_time_s"] * scale, linestyle="--", color=color, linewidth=1,
                        label=f"{s} predicted")
    e = crossover(table)
    if e is not None:
        ax.axvline(e, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"cache fastest from E = {e}", (e, ax.get_ylim()[1]), xytext=(3, -10),
                    textcoords="offset points", fontsize=7, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table["epochs"].unique()), [str(int(x)) for x in sorted(table["epochs"].unique())])
    ax.set_xlabel("epochs E (the teacher pass of cache paid once)")
    ax.set_ylabel(f"epoch time, averaged over E ({unit})")
    a = table.attrs
    ax.set_title(f"{C.workload_label(a.get('workload') or '')}, {a.get('devices')} devices, batch {a.get('batch_size')}",
                 fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--workload", default=None, help="plot this workload (default: the first in runs.csv)")
    p.add_argument("--simulated", default=None, metavar="CSV", help="simulate.csv with an epochs column")
    args = p.parse_args(argv)
    runs, _ranks, _events = C.load(args.dirs)
    workload = C.ALIASES.get(args.workload, args.workload) if args.workload else None  # runs.csv has canonical names
    table = compute(runs, workload=workload, devices=args.devices, batch_size=args.batch_size)
    if table.empty:
        C.empty_figure(args.output, "no epoch sweep to plot: no ok runs with an epochs column")
        return 0
    sim = load_simulated(args.simulated, workload=table.attrs["workload"], devices=table.attrs["devices"],
                         batch_size=table.attrs["batch_size"])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    e = crossover(table)
    print(f"crossover: cache fastest from {e} epoch(s)" if e else "crossover: cache never fastest here")
    plot(table, sim, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
