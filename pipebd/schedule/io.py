"""Schedules as CSV and JSON, and back (round trip exact).

CSV: one row per action (``rank, position, kind, step, blocks, lo, hi, boundary, peer, group,
note``), with the schedule's own fields repeated on every row (as the profile CSV does), so a
file is self-describing and a spreadsheet or pandas reads it directly. Lists are written
colon-separated (``blocks=0:1:2``, ``group=0:1``).
"""

from __future__ import annotations

import csv
import io
import json

from .actions import KINDS, Action, Schedule

__all__ = ["CSV_COLUMNS", "to_csv_text", "from_csv_text", "to_json", "from_json", "write_csv", "read_csv"]

_META = ["strategy", "num_blocks", "batch_size", "steps", "inflight", "warmup", "layout", "modes"]
CSV_COLUMNS = ["rank", "position", "kind", "step", "blocks", "lo", "hi", "boundary", "peer", "group", "note", *_META]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(":")) if text else ()


def _row(schedule: Schedule, r: int, i: int, a: Action) -> dict:
    return {"rank": r, "position": i, "kind": a.kind, "step": a.step, "blocks": ":".join(map(str, a.blocks)),
            "lo": "" if a.rows is None else a.rows[0], "hi": "" if a.rows is None else a.rows[1],
            "boundary": "" if a.boundary is None else a.boundary, "peer": "" if a.peer is None else a.peer,
            "group": ":".join(map(str, a.group)), "note": a.note,
            **{k: getattr(schedule, k) for k in _META}}


def to_csv_text(schedule: Schedule) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r, i, a in schedule:
        w.writerow(_row(schedule, r, i, a))
    if len(schedule) == 0:  # an empty schedule still records its shape
        w.writerow({**{c: "" for c in CSV_COLUMNS}, **{k: getattr(schedule, k) for k in _META}, "rank": -1})
    return buf.getvalue()


def from_csv_text(text: str) -> Schedule:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError("not a schedule CSV: no rows")
    missing = set(CSV_COLUMNS) - set(rows[0]) - {"modes"}  # a schedule written before compute modes: fp32
    if missing:
        raise ValueError(f"not a schedule CSV: columns {sorted(missing)} are missing (expected {CSV_COLUMNS})")
    meta = rows[0]
    ranks: dict[int, list[tuple[int, Action]]] = {}
    devices = 0
    for row in rows:
        r = int(row["rank"])
        if r < 0:
            continue
        kind = row["kind"]
        if kind not in KINDS:
            raise ValueError(f"schedule CSV row {row}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        a = Action(kind, int(row["step"]), blocks=_ints(row["blocks"]),
                   rows=(int(row["lo"]), int(row["hi"])) if row["lo"] != "" else None,
                   boundary=int(row["boundary"]) if row["boundary"] != "" else None,
                   peer=int(row["peer"]) if row["peer"] != "" else None, group=_ints(row["group"]), note=row["note"])
        ranks.setdefault(r, []).append((int(row["position"]), a))
        devices = max(devices, r + 1)
    lists = [[a for _i, a in sorted(ranks.get(r, []), key=lambda x: x[0])] for r in range(devices)]
    return Schedule(meta["strategy"], int(meta["num_blocks"]), int(meta["batch_size"]), int(meta["steps"]), lists,
                    inflight=int(meta["inflight"]), warmup=int(meta["warmup"]), layout=meta["layout"],
                    modes=meta.get("modes") or "")


def write_csv(schedule: Schedule, path: str) -> None:
    from ..fileio import atomic_write_text

    atomic_write_text(path, to_csv_text(schedule))


def read_csv(path: str) -> Schedule:
    with open(path, newline="") as f:
        return from_csv_text(f.read())


def to_json(schedule: Schedule) -> str:
    def act(a: Action) -> dict:
        d = {"kind": a.kind, "step": a.step}
        for k in ("blocks", "group"):
            if getattr(a, k):
                d[k] = list(getattr(a, k))
        for k in ("rows", "boundary", "peer"):
            if getattr(a, k) is not None:
                d[k] = list(a.rows) if k == "rows" else getattr(a, k)
        if a.note:
            d["note"] = a.note
        return d

    return json.dumps({**{k: getattr(schedule, k) for k in _META},
                       "ranks": [[act(a) for a in acts] for acts in schedule.ranks]}, indent=1)


def from_json(text: str) -> Schedule:
    d = json.loads(text)
    ranks = [[Action(x["kind"], x.get("step", -1), blocks=tuple(x.get("blocks", ())),
                     rows=tuple(x["rows"]) if "rows" in x else None, boundary=x.get("boundary"), peer=x.get("peer"),
                     group=tuple(x.get("group", ())), note=x.get("note", "")) for x in acts] for acts in d["ranks"]]
    return Schedule(d["strategy"], d["num_blocks"], d["batch_size"], d["steps"], ranks, inflight=d["inflight"],
                    warmup=d["warmup"], layout=d["layout"], modes=d.get("modes", ""))
