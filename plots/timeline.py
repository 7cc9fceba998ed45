"""Gantt chart of a few measured steps: one row per rank, bars coloured by phase, block
labels inside bars wide enough to hold them; one panel per strategy for one workload.

The picture of Pipe-BD's argument (Jang et al. 2023, Fig. 2): ``dp`` repeats data loading
and the teacher on every rank block after block, ``tr`` relays the teacher's activations but
waits at a barrier each step, ``tr-dpu`` drops the barrier, ``ahd`` rebalances the stages.

From ``events.csv`` (times on the run's shared clock). Steps ``--first-step`` … ``+--steps``
are *selected* (default: the first measured steps); each panel shows the time from their
first to their last span, with spans of other steps in flight drawn lighter. When the blocks
are trained one after another (``dp``), the time between one block's selected steps and
the next block's (its other steps and untimed warm-up) is cut out, marked by a dashed
line, so every panel shows the time of the selected steps of every block. Each panel's
axis starts at 0; the panels share the scale.

    python plots/timeline.py RESULTS_DIR -o timeline.png --workload nas-cifar10 \\
        [--strategies dp,tr,tr-dpu,ahd] [--steps 3] [--first-step K] [--no-cut]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import matplotlib.patches as mpatches
import pandas as pd

from plots import _common as C  # the installed package (pyproject.toml), also when run as plots/NAME.py

_DARK = {"student", "comm", "sync", "update", "teacher"}


@dataclass
class Panel:
    """One strategy's timeline: events mapped to the panel's axis (``x0``, ``x1`` in seconds)."""

    strategy: str
    run_id: str
    devices: int
    batch_size: int
    plan: str
    steps: list[int]
    events: pd.DataFrame  # rank, phase, block, step, x0, x1, selected
    cuts: list[float] = field(default_factory=list)
    length: float = 0.0


def _merge(intervals: list[tuple[float, float]]) -> list[list[float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def windows(ev: pd.DataFrame, selected: pd.Series, *, cut: bool = True) -> list[list[float]]:
    """Time intervals to show: per block, from its first to its last selected span; merged
    where they overlap or where a selected span lies between them, so only gaps in which no
    rank works on a selected step (blocks trained one after another) are cut."""
    sel = ev[selected]
    if sel.empty:
        return []
    if not cut or (sel["block"] < 0).all():
        return [[float(sel["start_s"].min()), float(sel["end_s"].max())]]
    per_block = sel[sel["block"] >= 0].groupby("block").agg(a=("start_s", "min"), b=("end_s", "max"))
    merged = _merge(list(zip(per_block["a"], per_block["b"])))
    out = [merged[0]]
    for a, b in merged[1:]:
        gap_lo, gap_hi = out[-1][1], a
        inside = ((sel["end_s"] > gap_lo) & (sel["start_s"] < gap_hi)).any()
        if inside:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    # a selected span of no block (loading a batch, a wait) outside every window joins the nearest one
    for a, b in zip(sel["start_s"], sel["end_s"]):
        if any(a < hi and b > lo for lo, hi in out):
            continue
        j = min(range(len(out)), key=lambda i: min(abs(a - out[i][1]), abs(out[i][0] - b)))
        out[j] = [min(out[j][0], a), max(out[j][1], b)]
    return _merge([tuple(w) for w in out])


def layout(ev: pd.DataFrame, steps: list[int], *, cut: bool = True) -> tuple[pd.DataFrame, list[float], float]:
    """Map the events inside :func:`windows` onto one axis starting at 0, with a small gap at each cut."""
    selected = ev["step"].isin(steps)
    wins = windows(ev, selected, cut=cut)
    if not wins:
        return pd.DataFrame(columns=["rank", "phase", "block", "step", "x0", "x1", "selected"]), [], 0.0
    total = sum(b - a for a, b in wins)
    gap = 0.02 * total if len(wins) > 1 else 0.0
    parts, cuts, off = [], [], 0.0
    for j, (a, b) in enumerate(wins):
        if j:
            cuts.append(off + gap / 2)
            off += gap
        m = (ev["end_s"] > a) & (ev["start_s"] < b)
        e = ev[m].copy()
        e["x0"] = off + (e["start_s"].clip(lower=a) - a)
        e["x1"] = off + (e["end_s"].clip(upper=b) - a)
        e["selected"] = selected[m]
        parts.append(e)
        off += b - a
    out = pd.concat(parts, ignore_index=True)[["rank", "phase", "block", "step", "x0", "x1", "selected"]]
    return out, cuts, off


def compute(runs: pd.DataFrame, events: pd.DataFrame, *, workload: str, strategies: list[str], steps: int = 3,
            first_step: int | None = None, batch_size: int | None = None, devices: int | None = None,
            cut: bool = True) -> list[Panel]:
    with_events = runs[runs["run_id"].isin(set(events["run_id"]))]
    no_events = runs[(runs["workload"] == workload) & ~runs["run_id"].isin(set(events["run_id"]))]
    if len(no_events):
        C.note(f"{workload}: {len(no_events)} run(s) have no events.csv rows (run with --no-trace?); left out")
    w = C.choose_config(with_events, workload, batch_size=batch_size, devices=devices)
    panels = []
    for s in strategies:
        g = w[w["strategy"] == s]
        if g.empty:
            C.note(f"{workload}: no ok run of {s} with events; left out")
            continue
        run = C.median_run(g)
        ev = events[events["run_id"] == run.run_id].copy()
        for c in ("rank", "block", "step"):
            ev[c] = pd.to_numeric(ev[c], errors="coerce").fillna(-1).astype(int)
        for c in ("start_s", "end_s"):
            ev[c] = pd.to_numeric(ev[c], errors="coerce")
        ev = ev.dropna(subset=["start_s", "end_s"])
        measured = sorted(x for x in ev["step"].unique() if x >= 0)
        if not measured:
            C.note(f"{workload}: {s} run {run.run_id} has no events of a measured step; left out")
            continue
        first = measured[0] if first_step is None else first_step
        chosen = [int(x) for x in measured if first <= x < first + steps]
        if not chosen:
            C.note(f"{workload}: {s} run {run.run_id} measured steps {measured[0]}–{measured[-1]}, none from "
                   f"{first}; left out")
            continue
        if len(chosen) < steps:
            C.note(f"{workload}: {s} run {run.run_id} has only steps {chosen} from {first}")
        mapped, cuts, length = layout(ev, chosen, cut=cut)
        plan = run.plan if isinstance(run.plan, str) else ""
        panels.append(Panel(s, str(run.run_id), int(run.devices), int(run.batch_size), plan, chosen, mapped,
                            cuts, length))
    return panels


def plot(panels: list[Panel], path: str, workload: str) -> None:
    import matplotlib.pyplot as plt

    n_ranks = [max(1, p.events["rank"].nunique()) for p in panels]
    heights = [0.2 * r + 0.1 for r in n_ranks]  # axes heights (in); titles go in the gaps between them
    top, bottom, gap = 0.6, 0.42, 0.3  # inches: suptitle + legend, x label, each panel's title
    total = sum(heights) + gap * (len(panels) - 1) + top + bottom + 0.05
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.0, total), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": heights,
                                          "hspace": gap / (sum(heights) / len(panels))})
    fig.subplots_adjust(left=0.04, right=0.99, top=1 - top / total, bottom=bottom / total)
    axes = list(axes.flat)
    xmax = max(p.length for p in panels)
    scale, unit = C.fmt_seconds(xmax)
    min_label = 0.03 * xmax
    for ax, p in zip(axes, panels):
        ranks = sorted(p.events["rank"].unique())
        ypos = {r: i for i, r in enumerate(ranks)}
        for _, e in p.events.iterrows():
            y = ypos[e["rank"]]
            w = e.x1 - e.x0
            ax.barh(y, w * scale, left=e.x0 * scale, height=0.78, color=C.PHASE_COLORS.get(e.phase, "#BBBBBB"),
                    alpha=1.0 if e.selected else 0.4, edgecolor="white", linewidth=0.3)
            if e.block >= 0 and w >= min_label and e.selected:
                ax.text((e.x0 + w / 2) * scale, y, f"b{e.block}", ha="center", va="center", fontsize=7,
                        color="white" if e.phase in _DARK else "black")
        for x in p.cuts:
            ax.axvline(x * scale, color="0.25", linestyle=(0, (2, 2)), linewidth=0.7)
        ax.set_yticks(range(len(ranks)), [f"r{r}" for r in ranks])
        ax.set_ylim(len(ranks) - 0.5, -0.5)
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        plan = f" · {p.plan}" if p.plan and len(p.plan) <= 40 else ""
        steps = f"steps {p.steps[0]}–{p.steps[-1]}" if len(p.steps) > 1 else f"step {p.steps[0]}"
        ax.set_title(f"{p.strategy}{plan} · {steps}: {p.length * scale:.3g} {unit}", loc="left", pad=2)
    axes[-1].set_xlim(0, xmax * scale * 1.01)
    axes[-1].set_xlabel(f"time ({unit}); lighter: other steps in flight; dashed: cut (other steps, warm-up)")
    phases = [ph for ph in C.PHASES if ph != "idle"]
    handles = [mpatches.Patch(color=C.PHASE_COLORS[ph], label=ph) for ph in phases]
    handles.append(mpatches.Patch(facecolor="white", edgecolor="0.6", linewidth=0.5, label="idle"))
    first = panels[0]
    fig.suptitle(f"{C.workload_label(workload)} · {first.devices} devices, batch {first.batch_size}",
                 fontsize=7.5, y=1 - 0.03 / total, va="top")
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1 - 0.2 / total),
               handlelength=1.0, columnspacing=0.8, handletextpad=0.4)
    C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--workload", default=None, help="the workload (default: the first one with events)")
    p.add_argument("--strategies", default=None,
                   help="comma-separated, one panel each (default: every strategy present, in the paper's order)")
    p.add_argument("--steps", type=int, default=3, help="how many consecutive measured steps to show (default 3)")
    p.add_argument("--first-step", type=int, default=None, help="the first step shown (default: first measured)")
    p.add_argument("--no-cut", dest="cut", action="store_false", help="never cut time between blocks")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    # predicted runs too (`python -m pipebd schedule --predicted-out DIR`): the replayed timeline
    runs, _ranks, events = C.load(args.dirs, statuses=("ok", "predicted"))
    traced = runs[runs["run_id"].isin(set(events["run_id"]))]
    workload = args.workload
    if workload is None:
        candidates = C.ordered_workloads(traced["workload"].unique())
        if not candidates:
            C.empty_figure(args.output, "no timeline to plot: no ok runs with events.csv rows")
            return 0
        workload = candidates[0]
        C.note(f"no --workload given; showing {workload} (others with events: {', '.join(candidates[1:]) or 'none'})")
    workload = C.ALIASES.get(workload, workload)
    if args.strategies:
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    else:
        present = set(traced[traced["workload"] == workload]["strategy"])
        strategies = C.ordered(present)
    panels = compute(runs, events, workload=workload, strategies=strategies, steps=args.steps,
                     first_step=args.first_step, batch_size=args.batch_size, devices=args.devices, cut=args.cut)
    if not panels:
        C.empty_figure(args.output, f"no timeline to plot for {workload}: no ok runs with events")
        return 0
    for pn in panels:
        print(f"{pn.strategy}: run {pn.run_id}, steps {pn.steps}, {pn.length:.4g} s shown, {len(pn.cuts)} cut(s)")
    plot(panels, args.output, workload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
