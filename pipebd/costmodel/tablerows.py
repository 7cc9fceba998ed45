"""The cost table's tidy rows: :class:`~pipebd.costmodel.CostTable` to and from the rows of
:data:`CSV_COLUMNS` (the profile CSV), and reading a profile CSV (parsed once per file version).

Several rows of one quantity (one per rank, or repeated profiles) are combined by their median;
rows with a ``mode`` (a compute mode other than fp32 contiguous, :mod:`pipebd.modes`) go to the
table's ``variants``.
"""

from __future__ import annotations

import copy
import csv
import math
import os
from collections import defaultdict
from typing import Iterable, Mapping

from ..config import ConfigError
from .csvio import _isnan, _median, _opt_float, _opt_int

__all__ = ["CSV_COLUMNS", "MODED_KINDS", "KINDS", "rows_of", "table_from_rows", "read_csv", "variant_key"]

#: Columns of the tidy profile CSV (:meth:`CostTable.to_csv` / :meth:`CostTable.from_csv`).
CSV_COLUMNS = ["kind", "block", "batch", "group", "seconds", "bytes", "feasible", "ranks", "trials", "note",
               "workload", "device_type", "devices", "batch_size", "source", "mode"]

#: kinds whose rows may name a compute mode (the others are mode-independent)
MODED_KINDS = ("teacher", "student", "relay")

KINDS = ("teacher", "student", "relay", "allreduce", "memory", "static_memory", "activation", "data", "barrier",
         "capacity", "store")
_KINDS = KINDS

_CSV_CACHE: dict[tuple, object] = {}


def variant_key(key: str) -> tuple[str, int, str]:
    """``"teacher:3:bf16-cl"`` -> ``("teacher", 3, "bf16-cl")``."""
    kind, block, mode = key.split(":")
    return kind, int(block), mode


def rows_of(table) -> list[dict]:
    """The tidy rows of :data:`CSV_COLUMNS` of ``table`` (one per measured quantity)."""
    meta = {"workload": table.workload, "device_type": table.device_type, "devices": table.devices,
            "batch_size": table.batch_size, "source": table.source}
    rows: list[dict] = []

    def add(kind, block=None, batch=None, group=None, seconds=None, nbytes=None, feasible=1, mode=""):
        rows.append({"kind": kind, "block": block, "batch": batch, "group": group, "seconds": seconds,
                     "bytes": nbytes, "feasible": feasible, "ranks": None, "trials": None,
                     "note": "modelled" if kind in table.modelled else "", **meta, "mode": mode})

    for i in range(table.num_blocks):
        for b, t in sorted(table.teacher[i].items()):
            add("teacher", i, b, seconds=None if math.isinf(t) else t, feasible=int(not math.isinf(t)))
        for b, t in sorted(table.student[i].items()):
            add("student", i, b, seconds=None if math.isinf(t) else t, feasible=int(not math.isinf(t)))
        for b, t in sorted(table.relay[i].items()):
            add("relay", i, b, seconds=t)
        for g, t in sorted(table.allreduce[i].items()):
            add("allreduce", i, group=g, seconds=t)
        for b, m in sorted(table.memory[i].items()):
            add("memory", i, b, nbytes=m)
        if table.static_memory[i]:
            add("static_memory", i, nbytes=table.static_memory[i])
    for k, m in enumerate(table.activation_bytes):
        if m:
            add("activation", k, nbytes=m)
    for b, t in sorted(table.data.items()):
        add("data", batch=b, seconds=t)
    if table.data_per_sample and not table.data:
        add("data", batch=1, seconds=table.data_per_sample)
    for g, t in sorted(table.barrier.items()):
        add("barrier", group=g, seconds=t)
    if table.capacity:
        add("capacity", nbytes=table.capacity)
    for key, per_byte in sorted(table.store.items()):  # the mode column names the operation and medium
        add("store", seconds=per_byte * (1 << 30), nbytes=1 << 30, mode=key)
    for key, pts in sorted(table.variants.items()):
        kind, block, mode = variant_key(key)
        for b, t in sorted(pts.items()):
            add(kind, block, b, seconds=None if math.isinf(t) else t, feasible=int(not math.isinf(t)), mode=mode)
    return rows


def table_from_rows(cls, rows: Iterable[Mapping]):
    """Build a table from tidy rows; several rows of one quantity are combined by median."""
    rows = list(rows)
    if not rows:
        raise ConfigError("the cost table is empty (no rows); re-run `python -m pipebd profile`")
    acc: dict[tuple, list[float]] = defaultdict(list)
    variants: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    meta: dict[str, object] = {}
    modelled: set[str] = set()
    store: dict[str, list[float]] = defaultdict(list)
    blocks = -1
    for r in rows:
        kind = str(r.get("kind", "")).strip()
        if kind not in _KINDS:
            raise ConfigError(f"unknown row kind {kind!r} in cost table; expected one of {', '.join(_KINDS)}")
        block, batch, group = (_opt_int(r.get(c)) for c in ("block", "batch", "group"))
        if kind == "store":  # seconds for `bytes` bytes of the operation:medium in the mode column
            secs, nb = _opt_float(r.get("seconds")), _opt_float(r.get("bytes"))
            if secs is not None and nb:
                store[str(r.get("mode") or "").strip()].append(secs / nb)
            continue
        feasible = _opt_int(r.get("feasible"))
        if kind in ("teacher", "student", "relay", "allreduce", "memory", "static_memory") and block is None:
            raise ConfigError(f"cost table row of kind {kind!r} has no block: {dict(r)}")
        if kind in ("teacher", "student", "memory"):
            blocks = max(blocks, block)
        is_bytes = kind in ("memory", "static_memory", "activation", "capacity")
        value = _opt_float(r.get("bytes") if is_bytes else r.get("seconds"))
        if feasible == 0 and kind in ("teacher", "student"):
            value = math.inf
        if value is None:
            continue
        mode = str(r.get("mode") or "").strip()
        if mode in ("nan", "fp32"):
            mode = ""
        if mode and kind in MODED_KINDS:
            if batch is None or batch < 1:
                raise ConfigError(f"cost table row {kind} block {block} mode {mode} needs a batch size >= 1")
            variants[f"{kind}:{block}:{mode}"][batch].append(value)
            continue
        acc[(kind, block, batch, group)].append(value)
        if str(r.get("note") or "").startswith("modelled"):
            modelled.add(kind)
        for c in ("workload", "device_type", "source"):
            if r.get(c) not in (None, "") and not _isnan(r.get(c)):
                meta.setdefault(c, str(r[c]))
        for c in ("devices", "batch_size"):
            if _opt_int(r.get(c)) is not None:
                meta.setdefault(c, _opt_int(r[c]))
    n = blocks + 1
    if n < 1:
        raise ConfigError("the cost table has no teacher/student rows; re-run `python -m pipebd profile`")
    teacher: list[dict] = [{} for _ in range(n)]
    student: list[dict] = [{} for _ in range(n)]
    relay: list[dict] = [{} for _ in range(n)]
    allreduce: list[dict] = [{} for _ in range(n)]
    memory: list[dict] = [{} for _ in range(n)]
    static = [0.0] * n
    act = [0.0] * (n + 1)
    barrier: dict[int, float] = {}
    data_ps: list[float] = []
    data: dict[int, float] = {}
    capacity = 0.0
    for (kind, block, batch, group), vals in acc.items():
        v = _median(vals)
        if kind in ("teacher", "student", "relay", "memory"):
            if batch is None or batch < 1:
                raise ConfigError(f"cost table row {kind} block {block} needs a batch size >= 1")
            if block >= n and kind == "relay":
                continue
            {"teacher": teacher, "student": student, "relay": relay, "memory": memory}[kind][block][batch] = v
        elif kind == "allreduce":
            allreduce[block][group or 1] = v
        elif kind == "static_memory":
            static[block] = v
        elif kind == "activation":
            if block is not None and block <= n:
                act[block] = v
        elif kind == "data":
            data_ps.append(v / (batch or 1))
            if batch:
                data[batch] = v
        elif kind == "capacity":
            capacity = v
        elif kind == "barrier":
            barrier[group or 1] = v
    return cls(num_blocks=n, teacher=teacher, student=student,
               data_per_sample=_median(data_ps) if data_ps else 0.0, relay=relay, allreduce=allreduce,
               memory=memory, static_memory=static, activation_bytes=act, barrier=barrier,
               workload=str(meta.get("workload", "")), device_type=str(meta.get("device_type", "")),
               devices=int(meta.get("devices", 0) or 0), batch_size=int(meta.get("batch_size", 0) or 0),
               source=str(meta.get("source", "")), data=data if len(data) > 1 else {}, capacity=capacity,
               modelled=tuple(k for k in _KINDS if k in modelled),
               variants={k: {b: _median(v) for b, v in pts.items()} for k, pts in variants.items()
                         if variant_key(k)[1] < n},
               store={k: _median(v) for k, v in store.items() if k})


def read_csv(cls, path: str):
    """Read a profile CSV written by ``python -m pipebd profile`` (or :meth:`to_csv`); a file
    read before and unchanged since (same size and modification time) is not parsed again."""
    if not os.path.isfile(path):
        raise ConfigError(f"profile {path!r} does not exist; write one with `python -m pipebd profile "
                          f"--workload W --devices N --batch-size B --out {path}`")
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _CSV_CACHE:
        _CSV_CACHE.clear()  # one profile at a time is what a process reads
        _CSV_CACHE[key] = _parse_csv(cls, path)
    return copy.deepcopy(_CSV_CACHE[key])

def _parse_csv(cls, path: str):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"kind", "block", "batch", "seconds"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path!r} is not a pipebd profile CSV: columns {sorted(missing)} are missing "
                              f"(expected {', '.join(CSV_COLUMNS)})")
        return table_from_rows(cls, list(reader))
