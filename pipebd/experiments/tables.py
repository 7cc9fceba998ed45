"""Tables derived from a cost table: the cached profile of a (workload, batch, devices) group (or its
FLOP estimate), DESIGN.md §4's ideal per sample (which each run's RunConfig carries, so the runner
writes ``ideal_epoch_time_s``/``efficiency`` into the run record), ``simulate.csv`` (every strategy
predicted) and ``schedules.csv`` (the ahd plans), and the speedup summary printed at the end.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from ..config import RunConfig
from .grid import _canon, input_resolution
from .journal import _read_csv, experiment_dir
from .load import _facts
from .spec import DEFAULT_PROFILE, ROOT, Experiment, WorkloadSpec


SIMULATE_COLUMNS = ["workload", "strategy", "devices", "batch_size", "steps", "epoch_samples", "epoch_time_s",
                    "throughput_sps", "step_time_s", "fill_s", "speedup_vs_dp", "efficiency", "layout", "note",
                    "extrapolated", "resolution", "width_mult", "costs", "profile_devices", "epochs"]
SCHEDULE_COLUMNS = ["workload", "devices", "batch_size", "plan", "predicted_epoch_time_s", "dp_epoch_time_s",
                    "speedup_vs_dp", "tr_dpu_stages", "tr_dpu_epoch_time_s", "ideal_epoch_time_s", "efficiency",
                    "note", "resolution", "width_mult", "costs", "profile_devices"]


_REPROFILED: set[str] = set()


def profile_name(cfg: RunConfig) -> str:
    """File name of the cached profile of ``cfg``'s (workload and its sizes, device, devices, batch)."""
    spec = WorkloadSpec(cfg.workload, resolution=cfg.resolution, width_mult=cfg.width_mult,
                        num_classes=cfg.num_classes, seq_len=cfg.seq_len, layers_per_block=cfg.layers_per_block,
                        candidates=cfg.candidates)
    pins = (cfg.teacher_precision, cfg.student_precision, cfg.memory_format)
    modes = "" if pins == ("auto",) * 3 else "-m" + "-".join(p.replace("channels-last", "cl") for p in pins)
    return f"{spec.key}-{cfg.device_type}-n{cfg.devices}-b{cfg.batch_size}{modes}.csv"


def group_costs(cfg: RunConfig, mode: str, *, path: str | None = None, force: bool = False,
                say: Callable[[str], None] = print, first_step: int | None = None):
    """The cost table of ``cfg``'s (workload, batch, devices), priced for ``cfg``'s compute modes
    (:func:`pipebd.planner.modes_for`): measured into ``path`` (reused when it exists, unless
    ``force``), or estimated from FLOPs. ``(None, None)`` with a note when unavailable.
    ``first_step``: the runs' first measured step, so a profiled supernet times the paths they train."""
    costs, where = _group_costs(cfg, mode, path=path, force=force, say=say, first_step=first_step)
    if costs is None:
        return costs, where
    from ..planner import modes_for

    return costs.priced(modes_for(cfg, costs)), where


def _group_costs(cfg: RunConfig, mode: str, *, path: str | None, force: bool, say: Callable[[str], None],
                 first_step: int | None):
    if mode == "none":
        return None, None
    try:
        from ..costmodel import CostTable, estimate_cost_table
    except ImportError as e:
        say(f"note: no cost model here (pipebd.costmodel: {e}); no ideal / simulation / plans")
        return None, None
    if mode == "estimate":
        return estimate_cost_table(cfg), None
    fresh = force and path not in _REPROFILED
    if path and os.path.exists(path) and not fresh:
        try:
            return CostTable.from_csv(path), path
        except Exception as e:  # noqa: BLE001 — an unreadable cache is measured again
            say(f"note: cached profile {path} is unreadable ({e}); profiling again")
    try:
        from ..profiler import profile
    except ImportError as e:
        say(f"note: no profiler here (pipebd.profiler: {e}); using FLOP estimates")
        return estimate_cost_table(cfg), None
    t0 = time.perf_counter()
    try:
        costs = profile(cfg.replace(timeout=max(cfg.timeout, 600.0)), path, first_step=first_step)
    except Exception as e:  # noqa: BLE001
        say(f"note: profiling {cfg.workload} on {cfg.devices} device(s), batch {cfg.batch_size} failed: "
            f"{' '.join(str(e).split())}; no ideal for it")
        return None, None
    _REPROFILED.add(path)
    say(f"  profiled {cfg.workload} n{cfg.devices} b{cfg.batch_size} in {time.perf_counter() - t0:.0f} s -> {path}")
    return costs, path


def ideal_seconds_per_sample(costs, devices: int, batch_size: int) -> float | None:
    """DESIGN.md §4's ideal (the cost model's) per trained sample; × epoch samples = ideal epoch time."""
    from ..costmodel import predict_ideal

    try:
        p = predict_ideal(costs, devices, batch_size, 1)
    except Exception:  # noqa: BLE001 — a table the model cannot use gives no ideal
        return None
    return p.step_s / batch_size


# ---- simulate.csv and schedules.csv --------------------------------------------------------------------------------


def _predictions(costs, devices_list, batch: int, steps: int, inflight: int, strategies, say, *,
                 epochs: int = 1) -> dict[int, list]:
    from ..strategies.predict import predict_all

    out = {}
    for n in devices_list:
        try:
            # a strategy that refuses a shape (e.g. ls with N > blocks) is left out of that N
            out[n] = predict_all(costs, n, batch, steps, inflight=inflight, strategies=strategies,
                                 skip_unpredictable=True, epochs=epochs)
        except Exception as e:  # noqa: BLE001 — e.g. more devices than rows
            say(f"note: cannot predict {n} device(s) at batch {batch}: {' '.join(str(e).split())}")
    return out


def _simulate_rows(cfg: RunConfig, costs, devices_list, costs_label: str, say) -> list[dict]:
    from ..strategies import strategy_names

    samples = _facts(cfg)[2]
    steps = max(1, samples // cfg.batch_size)
    rows = []
    for n, preds in _predictions(costs, devices_list, cfg.batch_size, steps, cfg.inflight,
                                 [*strategy_names(), "ideal"], say, epochs=cfg.epochs).items():
        dp = next((p.epoch_s for p in preds if p.strategy == "dp"), None)
        ideal = next((p.epoch_s for p in preds if p.strategy == "ideal"), None)
        for p in preds:
            rows.append({"workload": _canon(cfg.workload), "strategy": p.strategy, "devices": n,
                         "batch_size": cfg.batch_size, "steps": steps, "epoch_samples": steps * cfg.batch_size,
                         "epoch_time_s": p.epoch_s, "throughput_sps": steps * cfg.batch_size / p.epoch_s,
                         "step_time_s": p.step_s, "fill_s": p.fill_s, "speedup_vs_dp": dp / p.epoch_s if dp else None,
                         "efficiency": ideal / p.epoch_s if ideal else None, "layout": p.layout, "note": p.note,
                         "extrapolated": p.extrapolated, "resolution": input_resolution(cfg), "width_mult": cfg.width_mult, "costs": costs_label,
                         "profile_devices": cfg.devices, "epochs": cfg.epochs})
    return rows


def _schedule_rows(cfg: RunConfig, costs, devices_list, costs_label: str, say) -> list[dict]:
    steps = max(1, _facts(cfg)[2] // cfg.batch_size)
    rows = []
    for n, preds in _predictions(costs, devices_list, cfg.batch_size, steps, cfg.inflight,
                                 ("dp", "tr-dpu", "ahd", "ideal"), say).items():
        p = {x.strategy: x for x in preds}
        if not {"dp", "tr-dpu", "ahd", "ideal"} <= set(p):
            continue
        rows.append({"workload": _canon(cfg.workload), "devices": n, "batch_size": cfg.batch_size,
                     "plan": p["ahd"].layout, "predicted_epoch_time_s": p["ahd"].epoch_s,
                     "dp_epoch_time_s": p["dp"].epoch_s, "speedup_vs_dp": p["dp"].epoch_s / p["ahd"].epoch_s,
                     "tr_dpu_stages": p["tr-dpu"].layout, "tr_dpu_epoch_time_s": p["tr-dpu"].epoch_s,
                     "ideal_epoch_time_s": p["ideal"].epoch_s, "efficiency": p["ideal"].epoch_s / p["ahd"].epoch_s,
                     "note": p["ahd"].note, "resolution": input_resolution(cfg), "width_mult": cfg.width_mult,
                     "costs": costs_label, "profile_devices": cfg.devices})
    return rows


def print_speedup_summary(exps: list[Experiment], profile: str, results_root: str, say=print) -> None:
    """The speedup table of every experiment that has a paper reference, beside the committed
    reference results (``results/reference/<profile>/``) and the paper's numbers."""
    from ..derived import format_speedups, speedup_cells

    for e in exps:
        d = experiment_dir(results_root, profile, e.name)
        runs = _read_csv(os.path.join(d, "runs.csv"))
        if not e.paper_reference or runs.empty or profile not in e.profiles:
            continue
        ref_profile = profile
        ref_runs = _read_csv(os.path.join(ROOT, "results", "reference", profile, e.name, "runs.csv"))
        if ref_runs.empty and profile != DEFAULT_PROFILE:  # e.g. quick: its panels are the cpu profile's
            ref_profile = DEFAULT_PROFILE
            ref_runs = _read_csv(os.path.join(ROOT, "results", "reference", ref_profile, e.name, "runs.csv"))
        ref = speedup_cells(ref_runs) if not ref_runs.empty else None
        paper = {_canon(k): v for k, v in e.paper_reference.items()}
        labels = {_canon(w.name): w.label for w in e.profile(profile).workloads if w.label}
        say(f"\n{e.name} [{profile}]: speedup over dp here, beside results/reference/{ref_profile}/{e.name} "
            f"({'present' if ref is not None else 'none'}) and the paper (4 GPUs, batch 256)")
        say(format_speedups(speedup_cells(runs), reference=ref, paper=paper, labels=labels))
