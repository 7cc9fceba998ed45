"""Shared helpers of the plot scripts: reading results directories, choosing one
configuration per workload, colours and paper-sized figures.

The plots read only the CSVs that runs write (results/README.md); they never import torch.
``pipebd.metrics`` is imported for :func:`~pipebd.metrics.load_results` and the schema
(it imports torch lazily, so this stays cheap). Anything missing or failed is left out with
a note on stderr, never an exception.
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipebd.derived import PAPER_ORDER
from pipebd.derived import ordered as _ordered
from pipebd.metrics import PHASES, load_results  # noqa: E402

__all__ = [
    "PHASES", "PHASE_COLORS", "STRATEGY_ORDER", "PAPER_WORKLOADS", "note", "load", "base_parser", "ordered",
    "strategy_color", "workload_label", "ordered_workloads", "choose_config", "median_run", "figure",
    "empty_figure", "save", "fmt_seconds", "ALIASES",
]

#: Okabe-Ito colours (colour-blind safe); idle is drawn light grey.
PHASE_COLORS = {"data": "#E69F00", "teacher": "#56B4E9", "student": "#0072B2", "update": "#009E73",
                "comm": "#CC79A7", "sync": "#D55E00", "idle": "#E4E4E4"}
STRATEGY_ORDER = list(PAPER_ORDER)
_STRATEGY_COLORS = {"sequential": "#000000", "dp": "#7F7F7F", "ls": "#E69F00", "tr": "#56B4E9",
                    "tr-dpu": "#0072B2", "ahd": "#009E73"}
_EXTRA_COLORS = ["#CC79A7", "#D55E00", "#F0E442", "#8C564B", "#9467BD", "#17BECF"]
#: The paper's four workloads in its figure order, and their short labels.
PAPER_WORKLOADS = ["nas-cifar10", "nas-imagenet", "compress-vgg16-cifar10", "compress-vgg16-imagenet"]
_LABELS = {"nas-cifar10": "NAS · CIFAR-10", "nas-imagenet": "NAS · ImageNet",
           "compress-vgg16-cifar10": "Compression · CIFAR-10", "compress-vgg16-imagenet": "Compression · ImageNet"}
#: Workload aliases (pipebd/zoo registers the same; repeated here so plots need not import the zoo).
ALIASES = {"compress-cifar10": "compress-vgg16-cifar10", "compress-imagenet": "compress-vgg16-imagenet"}

plt.rcParams.update({
    "font.size": 7, "axes.titlesize": 7.5, "axes.labelsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6, "lines.linewidth": 1.0,
    "savefig.dpi": 300, "savefig.bbox": "tight", "savefig.pad_inches": 0.02, "hatch.linewidth": 0.5,
})


def note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def load(dirs: list[str], *, statuses: tuple[str, ...] = ("ok",)) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``load_results`` of every directory, concatenated; adds ``source`` (the directory) and
    resolves workload aliases. Failed runs are left out (with notes) by ``load_results``."""
    parts = []
    for d in dirs:
        runs, ranks, events = load_results(d, statuses=statuses)
        for df in (runs, ranks, events):
            df["source"] = os.path.normpath(d)
        parts.append((runs, ranks, events))
    runs, ranks, events = (pd.concat([p[i] for p in parts], ignore_index=True) for i in range(3))
    for df in (runs, ranks):
        df["workload"] = df["workload"].map(lambda w: ALIASES.get(w, w))
    for c in ("devices", "batch_size", "steps_measured", "epoch_samples"):
        runs[c] = pd.to_numeric(runs[c], errors="coerce")
    for c in ("epoch_time_s", "throughput_sps", "ideal_epoch_time_s", "max_peak_memory_mb", "measured_time_s"):
        runs[c] = pd.to_numeric(runs[c], errors="coerce")
    return runs, ranks, events


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("dirs", nargs="+", metavar="RESULTS_DIR", help="results directories (runs.csv, ranks.csv, ...)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="the PNG to write")
    p.add_argument("--batch-size", type=int, default=None, help="use runs of this global batch size only")
    p.add_argument("--devices", type=int, default=None, help="use runs on this many devices only")
    return p


def ordered(strategies) -> list[str]:
    """Strategies in the paper's order, unknown ones after, alphabetically."""
    return _ordered(strategies)


def strategy_color(name: str) -> str:
    if name in _STRATEGY_COLORS:
        return _STRATEGY_COLORS[name]
    return _EXTRA_COLORS[sum(map(ord, name)) % len(_EXTRA_COLORS)]


def workload_label(name: str) -> str:
    return _LABELS.get(name, name)


def ordered_workloads(workloads) -> list[str]:
    s = set(workloads)
    return [w for w in PAPER_WORKLOADS if w in s] + sorted(s - set(PAPER_WORKLOADS))


def choose_config(runs: pd.DataFrame, workload: str, *, batch_size: int | None = None,
                  devices: int | None = None) -> pd.DataFrame:
    """The runs of ``workload`` at one (devices, batch size): the ones asked for, else the
    largest device count, then the largest batch size, that has a ``dp`` run (any run if no
    ``dp`` run exists). Says which when there was a choice."""
    w = runs[runs["workload"] == workload]
    if devices is not None:
        w = w[w["devices"] == devices]
    if batch_size is not None:
        w = w[w["batch_size"] == batch_size]
    if w.empty:
        return w
    combos = sorted({(int(d), int(b)) for d, b in zip(w["devices"], w["batch_size"])})
    if len(combos) == 1:
        return w
    with_dp = sorted({(int(d), int(b)) for d, b in zip(w[w["strategy"] == "dp"]["devices"],
                                                       w[w["strategy"] == "dp"]["batch_size"])})
    dev, bs = (with_dp or combos)[-1]
    others = ", ".join(f"{d} dev/B={b}" for d, b in combos if (d, b) != (dev, bs))
    note(f"{workload}: using runs on {dev} devices at batch size {bs} (also present: {others}; "
         "choose with --devices / --batch-size)")
    return w[(w["devices"] == dev) & (w["batch_size"] == bs)]


def median_run(df: pd.DataFrame) -> pd.Series:
    """The run whose epoch time is the median of ``df``'s (the lower middle one for an even count)."""
    s = df.sort_values("epoch_time_s", kind="stable")
    return s.iloc[(len(s) - 1) // 2]


def figure(panels: int, *, height: float = 2.0, max_cols: int = 4, width: float | None = None):
    """A figure of ``panels`` axes: 3.3 in wide for one panel, 7 in (two columns) for more."""
    cols = min(panels, max_cols)
    rows = -(-panels // cols)
    w = width or (3.3 if panels == 1 else 7.0)
    fig, axes = plt.subplots(rows, cols, figsize=(w, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def empty_figure(path: str, message: str) -> None:
    """Write a small PNG that says why there is nothing to plot (instead of failing)."""
    note(message)
    fig, ax = plt.subplots(figsize=(3.3, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=7)
    save(fig, path)


def save(fig, path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def fmt_seconds(max_seconds: float) -> tuple[float, str]:
    """A scale and unit for a time axis whose largest value is ``max_seconds``."""
    if max_seconds < 1e-3:
        return 1e6, "µs"
    if max_seconds < 2.0:
        return 1e3, "ms"
    return 1.0, "s"
