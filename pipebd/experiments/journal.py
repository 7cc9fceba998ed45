"""The journal of an experiment's results directory: ``units.csv`` (a ``started`` row with the run
id before each run, an ``ok``/``failed`` row after it), which units are done, clearing the rows of
runs that started but never finished, ``experiment.json`` (the settings; a changed one moves the
old directory aside), ``DONE``, and the CSV helpers the package shares.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
from typing import Callable

from ..fileio import atomic_write, atomic_write_text
from .grid import Unit
from .spec import Experiment


UNIT_COLUMNS = ["unit", "run_id", "status", "time", "workload", "strategy", "devices", "batch_size", "repeat",
                "wall_s", "error"]


def _rewrite_csv(path: str, fn: Callable) -> None:
    """Replace the table at ``path`` by ``fn(table)``, under the lock :func:`pipebd.metrics.append_rows` takes."""
    import pandas as pd

    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            table = fn(pd.read_csv(path))
            atomic_write(path, lambda f: table.to_csv(f, index=False))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_table(path: str, rows: list[dict], columns: list[str]) -> None:
    import pandas as pd

    df = pd.DataFrame(rows, columns=columns)
    atomic_write_text(path, df.to_csv(index=False))


def _read_csv(path: str):
    import pandas as pd

    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return pd.DataFrame()
    return pd.read_csv(path)


def experiment_dir(results_root: str, profile: str, name: str) -> str:
    return os.path.join(results_root, profile, name)


def _settings(exp: Experiment, profile: str) -> dict:
    prof = exp.profile(profile)
    d = dataclasses.asdict(prof)
    d.pop("notes", None)
    return {"experiment": exp.name, "profile": profile, "settings": d}


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prepare_dir(d: str, settings: dict, *, force: bool, say) -> None:
    """Create ``d`` (after ``--force`` deleted it), or clear what an interrupted run left."""
    if force and os.path.exists(d):
        shutil.rmtree(d)
        say(f"  --force: deleted {d}")
    meta = os.path.join(d, "experiment.json")
    if os.path.exists(meta):
        try:
            with open(meta) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
        if old.get("digest") != _digest(settings):
            aside = f"{d}.stale-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
            os.replace(d, aside)
            say(f"  the settings changed since the partial run; moved it aside to {aside}")
    elif os.path.isdir(d) and os.listdir(d):
        aside = f"{d}.stale-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        os.replace(d, aside)
        say(f"  {d} holds results of no known experiment run; moved them aside to {aside}")
    os.makedirs(d, exist_ok=True)
    if not os.path.exists(meta):
        atomic_write_text(meta, json.dumps({**settings, "digest": _digest(settings)}, indent=1, default=str) + "\n")


def _journal(d: str) -> tuple[dict[str, dict], set[str]]:
    """Finished units (key -> last row: ``ok`` or ``failed``) and run ids that started but never
    finished. Only ``ok`` units count as done: a failed one runs again next time."""
    df = _read_csv(os.path.join(d, "units.csv"))
    done: dict[str, dict] = {}
    started: dict[str, str] = {}
    for r in df.to_dict("records") if not df.empty else []:
        if r["status"] == "started":
            started[r["run_id"]] = r["unit"]
        else:
            done[r["unit"]] = r
            started.pop(r["run_id"], None)
    return done, set(started)


def _purge(d: str, run_ids: set[str], say) -> None:
    if not run_ids:
        return
    for name in ("runs.csv", "ranks.csv", "events.csv"):
        _rewrite_csv(os.path.join(d, name), lambda df: df[~df["run_id"].astype(str).isin(run_ids)])
    for rid in run_ids:
        trace = os.path.join(d, "traces", f"{rid}.json")
        if os.path.exists(trace):
            os.remove(trace)
    _rewrite_csv(os.path.join(d, "units.csv"), lambda df: df[~df["run_id"].astype(str).isin(run_ids)])
    say(f"  resumed: removed the rows of {len(run_ids)} interrupted run(s) ({', '.join(sorted(run_ids))})")


def _not_ok(units: list[Unit], done: dict[str, dict]) -> list[Unit]:
    """The ``units`` whose last journal row (``done``, from :func:`_journal`) is not ``ok``."""
    return [u for u in units if done.get(u.key, {}).get("status") != "ok"]


def _journal_row(d: str, unit: Unit, run_id: str, status: str, wall_s: float | None = None, error: str = "") -> None:
    from ..metrics import append_rows

    append_rows(os.path.join(d, "units.csv"), [{
        "unit": unit.key, "run_id": run_id, "status": status, "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "workload": unit.workload.name, "strategy": unit.strategy, "devices": unit.devices,
        "batch_size": unit.batch_size, "repeat": unit.repeat, "wall_s": wall_s, "error": error}], UNIT_COLUMNS)


def is_done(results_root: str, profile: str, name: str) -> bool:
    return os.path.exists(os.path.join(experiment_dir(results_root, profile, name), "DONE"))
