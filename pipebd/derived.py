"""Derived tables: speedup over ``dp`` with its spread across repeats, and the cells too noisy to trust.

Pipe-BD (Jang et al., DATE 2023) reports its results as epoch-time speedups over the
data-parallel baseline (Fig. 6). A ratio of two noisy times means little without its spread,
so every speedup here carries one (DESIGN.md §4):

- a *cell* is one strategy on one configuration (workload, batch, devices, resolution, width);
- its epoch time is the median over its ok runs, and its *spread* is ``(max - min) / median``
  of those runs' epoch times;
- its speedup is ``median(dp) / median(strategy)``; the speedup's range pairs each run of the
  strategy with the ``dp`` run nearest to it in time (rounds are interleaved, so neighbours
  share the machine's drift) and takes the min and max of those ratios;
- a cell whose spread (or whose ``dp`` cell's spread) exceeds the threshold (default 25 %) is
  *noisy*: tables flag it and the experiment runner re-runs it, interleaved with its ``dp``.

Only pandas is needed (no torch), so plot scripts use it too.
"""

from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

#: The order strategies are shown in (tables, figures, bench rounds): the paper's, baselines
#: first; strategies not listed (a new baseline) follow alphabetically. Which strategies exist is
#: the registry's business (:func:`pipebd.strategies.strategy_names`), not this list's.
PAPER_ORDER = ("sequential", "dp", "ls", "tr", "tr-dpu", "ahd")


def ordered(strategies: Iterable[str]) -> list[str]:
    """``strategies`` in :data:`PAPER_ORDER`, the others after it, alphabetically."""
    s = set(strategies)
    return [x for x in PAPER_ORDER if x in s] + sorted(s - set(PAPER_ORDER))

__all__ = ["NOISE_THRESHOLD", "CONFIG_KEYS", "spread", "is_noisy", "speedup_cells", "noisy_strategies",
           "format_speedups"]

#: A cell whose repeats differ by more than this fraction of their median is flagged and re-run.
NOISE_THRESHOLD = 0.25
#: The runs.csv columns that identify one configuration (speedups compare runs within one).
CONFIG_KEYS = ["workload", "batch_size", "devices", "resolution", "width_mult"]
CELL_COLUMNS = CONFIG_KEYS + ["strategy", "runs", "epoch_time_s", "epoch_min_s", "epoch_max_s", "spread",
                              "speedup", "speedup_lo", "speedup_hi", "noisy", "plan", "run_ids"]


def spread(times: Iterable[float]) -> float:
    """``(max - min) / median`` of ``times``; 0 for one value, nan for none."""
    t = [float(v) for v in times]
    if not t:
        return math.nan
    med = float(pd.Series(t).median())
    return (max(t) - min(t)) / med if med > 0 else math.nan


def _paired_ratios(dp: pd.DataFrame, runs: pd.DataFrame) -> list[float]:
    """``dp epoch / epoch`` of each run, against the dp run nearest to it in time."""
    if dp.empty or runs.empty:
        return []
    t_dp = pd.to_datetime(dp["timestamp"], errors="coerce")
    out = []
    for _, r in runs.iterrows():
        t = pd.to_datetime(r["timestamp"], errors="coerce")
        if pd.isna(t) or t_dp.isna().all():
            k = 0
        else:
            k = int((t_dp - t).abs().values.argmin())
        out.append(float(dp["epoch_time_s"].iloc[k]) / float(r["epoch_time_s"]))
    return out


def speedup_cells(runs: pd.DataFrame, *, threshold: float = NOISE_THRESHOLD) -> pd.DataFrame:
    """One row per cell of the ok runs in ``runs`` (a runs.csv table): :data:`CELL_COLUMNS`."""
    ok = runs[(runs["status"].astype(str) == "ok") & (pd.to_numeric(runs["epoch_time_s"], errors="coerce") > 0)]
    rows = []
    if ok.empty:
        return pd.DataFrame(columns=CELL_COLUMNS)
    ok = ok.assign(epoch_time_s=pd.to_numeric(ok["epoch_time_s"]))
    keys = [k for k in CONFIG_KEYS if k in ok]
    for cfg, g in ok.groupby(keys, dropna=False, sort=False):
        cfg = dict(zip(keys, cfg if isinstance(cfg, tuple) else (cfg,)))
        dp = g[g["strategy"] == "dp"].sort_values("timestamp")
        dp_med = float(dp["epoch_time_s"].median()) if len(dp) else math.nan
        dp_noisy = is_noisy(len(dp), spread(dp["epoch_time_s"]), threshold)
        for s, gs in g.groupby("strategy", sort=False):
            med = float(gs["epoch_time_s"].median())
            sp = spread(gs["epoch_time_s"])
            ratios = _paired_ratios(dp, gs)
            rows.append({**cfg, "strategy": s, "runs": len(gs), "epoch_time_s": med,
                         "epoch_min_s": float(gs["epoch_time_s"].min()), "epoch_max_s": float(gs["epoch_time_s"].max()),
                         "spread": sp, "speedup": dp_med / med if len(dp) else math.nan,
                         "speedup_lo": min(ratios) if ratios else math.nan,
                         "speedup_hi": max(ratios) if ratios else math.nan,
                         "noisy": is_noisy(len(gs), sp, threshold) or dp_noisy,
                         "plan": str(gs["plan"].iloc[-1]) if "plan" in gs else "",
                         "run_ids": ",".join(map(str, gs["run_id"]))})
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def is_noisy(runs: int, spread_: float, threshold: float = NOISE_THRESHOLD) -> bool:
    """Whether ``runs`` repeats whose epoch times have this :func:`spread` are too noisy to trust."""
    return runs > 1 and bool(spread_ > threshold)


def noisy_strategies(cells: Iterable[tuple[str, int, float]], *, baseline: str = "dp") -> list[str]:
    """What a re-run round measures, from ``(strategy, runs, spread)`` per cell of one configuration:
    the ``baseline`` (``dp`` by default: every speedup's denominator, always measured again beside
    them) and every noisy strategy; every strategy when the baseline itself is noisy (then every
    speedup is suspect); nothing when none is."""
    cells = list(cells)
    noisy = [s for s, n, sp in cells if is_noisy(n, sp)]
    if baseline in noisy:
        return [baseline] + [s for s, _n, _sp in cells if s != baseline]
    return [baseline] + noisy if noisy else []


def format_speedups(cells: pd.DataFrame, *, reference: pd.DataFrame | None = None,
                    paper: dict[str, dict[str, float]] | None = None, labels: dict[str, str] | None = None) -> str:
    """A plain-text table: per workload and strategy, the speedup here with its range and the
    epoch times' spread, a ``!`` on noisy cells, beside the reference's and the paper's."""
    ref = {}
    if reference is not None and not reference.empty:
        ref = {(r.workload, r.strategy): r.speedup for r in reference.itertuples()}
    names = [(labels or {}).get(w, w) for w in cells["workload"]] or ["workload"]
    wide = max(len(n) for n in names + ["workload"]) + 2
    head = (f"{'workload':<{wide}}{'strategy':<9}{'speedup here':>22}{'spread':>8}{'runs':>5}"
            f"{'reference':>10}{'paper':>7}  plan")
    lines = [head]
    for r in cells.itertuples():
        if r.strategy == "dp":
            continue
        rng = f"({r.speedup_lo:.2f}-{r.speedup_hi:.2f})" if r.runs > 1 and not math.isnan(r.speedup_lo) else ""
        here = f"{r.speedup:.2f}x {rng}{'!' if r.noisy else ' '}"
        refv = ref.get((r.workload, r.strategy))
        pap = (paper or {}).get(r.workload, {}).get(r.strategy)
        spr = f"{r.spread:.0%}" if r.runs > 1 else "-"
        lines.append(f"{(labels or {}).get(r.workload, r.workload):<{wide}}{r.strategy:<9}{here:>22}{spr:>8}"
                     f"{r.runs:>5}{(f'{refv:.2f}x' if refv is not None else '-'):>10}"
                     f"{(f'{pap:.2f}x' if pap is not None else '-'):>7}  {r.plan}")
    lines.append(f"speedup = median dp epoch / median epoch; (range) = per-run ratios against the nearest dp run; "
                 f"spread = (max-min)/median of the epoch times; ! = repeats differ by > {NOISE_THRESHOLD:.0%}")
    return "\n".join(lines)
