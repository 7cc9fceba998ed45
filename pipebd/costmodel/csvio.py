"""Reading and writing the cost model's CSVs: tolerant cell parsing and the atomic writer."""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Sequence

__all__ = ["write_csv"]


def _opt_int(v) -> int | None:
    if v is None or v == "" or _isnan(v):
        return None
    return int(float(v))


def _opt_float(v) -> float | None:
    if v is None or v == "" or _isnan(v):
        return None
    return float(v)


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _median(vals: Sequence[float]) -> float:
    s = sorted(vals)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    """Write ``rows`` to ``path`` atomically (:func:`pipebd.fileio.atomic_write_text`)."""
    from ..fileio import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    atomic_write_text(os.path.abspath(path), buf.getvalue())
