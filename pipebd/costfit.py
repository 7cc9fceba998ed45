"""Cost curves of one block: measured points, and a fixed + per-sample model outside them.

A kernel-launch- and Python-bound block costs nearly the same on 2 rows as on 16, so time per
sample rises as the per-replica batch shrinks; extrapolating at constant time per sample
below the smallest measured batch makes data parallelism on many devices look almost linear,
the opposite of real hardware. Each curve is therefore modelled as

    t(b) = a + c·b,   a >= 0 (fixed seconds per call), c >= 0 (seconds per row),

fitted by non-negative least squares over the measured (finite) points: the unconstrained
least-squares line if both coefficients come out non-negative, else the better (smaller
squared error) of the two boundary fits ``a = 0`` (``c = Σxy / Σx²``) and ``c = 0``
(``a = mean y``) — for two unknowns these are the only candidates the KKT conditions allow.

:func:`evaluate` is exact at measured points, linear between neighbouring points, and the
fitted line outside ``[min, max]`` of the points (where it may differ from the nearest measured
point by the fit's residual there). With a single point there is nothing to fit: the curve is
proportional through it (``a = 0``) unless the caller knows the fixed part (memory: the
resident bytes). An infinite point marks an out-of-memory configuration: ``evaluate`` returns
``inf`` between it and its neighbours, and above the measured range if any point is infinite.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Mapping

__all__ = ["Affine", "fit_affine", "evaluate", "measured_range"]


@dataclass(frozen=True)
class Affine:
    """``t(b) = fixed + per_sample * b``."""

    fixed: float
    per_sample: float
    points: int  # finite points the fit used (1: proportional or given fixed part, nothing fitted)

    def __call__(self, rows: float) -> float:
        return self.fixed + self.per_sample * rows


def fit_affine(points: Mapping[int, float], *, fixed: float | None = None) -> Affine:
    """The non-negative least-squares fit of ``a + c·b`` to the finite ``points``.

    ``fixed`` is used as ``a`` when only one point is finite (e.g. resident memory); with more
    points it is ignored. Raises ``ValueError`` when no point is finite.
    """
    pts = [(float(x), float(y)) for x, y in points.items() if math.isfinite(y)]
    if not pts:
        raise ValueError(f"no finite points to fit a cost curve to, got {dict(points)}")
    if len(pts) == 1:
        (x, y), = pts
        a = min(max(0.0, fixed), y) if fixed is not None else 0.0
        return Affine(a, (y - a) / x if x else 0.0, 1)
    k = len(pts)
    mx = sum(x for x, _ in pts) / k
    my = sum(y for _, y in pts) / k
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    c = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a = my - c * mx
    if a >= 0 and c >= 0:
        return Affine(a, c, k)

    def sse(a: float, c: float) -> float:
        return sum((y - a - c * x) ** 2 for x, y in pts)

    c0 = sum(x * y for x, y in pts) / sum(x * x for x, _ in pts)  # a = 0
    a0 = my  # c = 0
    a, c = (0.0, max(0.0, c0)) if sse(0.0, max(0.0, c0)) <= sse(a0, 0.0) else (max(0.0, a0), 0.0)
    return Affine(a, c, k)


def measured_range(points: Mapping[int, float]) -> tuple[int, int] | None:
    """``(smallest, largest)`` measured row count (feasible or not), or ``None`` for no points."""
    return (min(points), max(points)) if points else None


def evaluate(points: Mapping[int, float], x: float, *, fixed: float | None = None) -> float:
    """The curve at ``x``: exact at points, linear between them, the fitted line outside them."""
    if not points:
        raise KeyError("no points")
    if x in points:
        return float(points[x])
    xs = sorted(points)
    if xs[0] < x < xs[-1]:
        hi = bisect.bisect_left(xs, x)
        x0, x1 = xs[hi - 1], xs[hi]
        y0, y1 = float(points[x0]), float(points[x1])
        if math.isinf(y0) or math.isinf(y1):
            return math.inf
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if x > xs[-1] and any(math.isinf(float(v)) for v in points.values()):
        return math.inf  # out of memory at a smaller size already
    try:
        return max(0.0, fit_affine(points, fixed=fixed)(x))
    except ValueError:  # every point out of memory
        return math.inf
