"""The cost model: predicted epoch time of every strategy on N devices, from a :class:`CostTable`.

Pipe-BD (Jang et al., DATE 2023) §III-C chooses its hybrid layout from profiled per-block
costs; this module is that cost model, made explicit and reusable by the planner, the
benchmarks and the experiments. A :class:`CostTable` holds, per block ``i``:

- ``teacher[i][b]``  seconds of teacher block ``i``'s forward on ``b`` rows,
- ``student[i][b]``  seconds of one student train step (forward + loss + backward + optimizer)
  on ``b`` rows; ``inf`` marks a configuration that ran out of memory,
- ``allreduce[i][g]`` seconds to all-reduce student ``i``'s gradients over a group of ``g``,
- ``memory[i][b]``   peak bytes to train block ``i`` alone at ``b`` rows (where known), and
  ``static_memory[i]`` the part of it that stays resident (teacher params, student params +
  momentum),

plus ``relay[k][b]`` (seconds to receive ``b`` rows of the activation entering block ``k``,
``k = 1..n-1``; point-to-point, paid by the receiver), ``data_per_sample`` (seconds to load one
sample; ``data[b]`` seconds for ``b`` rows where profiled at several sizes), ``capacity`` (bytes
one profiled device could use), ``activation_bytes[k]`` (bytes per sample of the activation entering block ``k``;
``k = n`` is the logits) and ``barrier[g]`` (seconds of a barrier over ``g`` ranks).

Times are measured at a few per-replica batch sizes (the profiler uses ``ceil(B/g)``,
``g = 1..G``, ``G = --replica-groups``, at least 4) and are a function of the row count
(:mod:`pipebd.costfit`): exact at measured points, linear between them, and outside them a
fixed + per-sample line ``a + c·b`` fitted by non-negative least squares (one point:
proportional, listed by :meth:`CostTable.gaps`); :attr:`Prediction.extrapolated` says when a
prediction used a per-replica batch outside a block's measured range. All-reduce times beyond
the measured group sizes follow the ring all-reduce factor ``2(g-1)/g``. Rows a profile did not
measure but modelled (one rank: relay and all-reduce from bytes) are listed in ``modelled``.

Predictions, for ``steps`` steps of global batch ``B`` (one epoch):

- ``sequential``: one device, per step data + every teacher block once + every student block.
- ``dp`` (DNA): block after block; each of ``N`` replicas takes ``ceil(B/N)`` rows, loads them,
  runs teacher ``0..i`` and student ``i``, and all-reduces; epoch = sum over blocks.
- ``ls``: whole blocks per device (Graham's LPT on each block's cost); a device trains its
  blocks one after another at the full batch, each with its own data loading and teacher
  prefix ``0..i``, so its time is the sum over its blocks and the epoch is the slowest device.
- ``tr``: contiguous stages, one device each, a barrier every step, so every step pays the
  relay latency down the pipeline: ``step = max_k(arrival_k + work_k) + barrier``.
- ``tr-dpu`` and ``ahd`` (any :class:`~pipebd.plan.Plan`): a discrete-event simulation in
  which a stage starts batch ``t`` when it finished batch ``t-1`` and its input for ``t`` has
  been sent, and may send batch ``t`` only once its consumer has received batch
  ``t - inflight``. The result is split into the steady-state period and the fill.
- ``ideal`` (DESIGN.md §4): each teacher block once and each student block once per sample,
  at the candidate batch size that is fastest per sample, divided by ``N``; no data loading,
  communication or idle time.

Data-parallel replicas of a stage synchronise every step through their all-reduce, so a stage
is modelled as one unit whose per-batch time is its slowest replica plus the all-reduce.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .config import ConfigError
from .costfit import evaluate as _interp
from .costfit import measured_range as _range
from .plan import Plan, Stage

__all__ = [
    "CostTable", "StageCost", "PipelineResult", "Prediction", "EstimateSpec", "STRATEGIES", "CSV_COLUMNS",
    "candidate_batches", "stage_cost", "stage_memory", "simulate_pipeline", "ls_assignment", "lpt_assign", "format_ls_map",
    "predict_sequential", "predict_dp", "predict_ls", "predict_tr", "predict_tr_dpu", "predict_ahd",
    "predict_ideal", "predict_all", "pipeline_plan", "stages_string", "estimate_cost_table",
    "random_cost_table", "epoch_steps", "add_cli",
]

log = logging.getLogger("pipebd.simulate")

#: Strategies :func:`predict_all` reports, in table order.
STRATEGIES = ("sequential", "dp", "ls", "tr", "tr-dpu", "ahd", "ideal")

#: Columns of the tidy profile CSV (:meth:`CostTable.to_csv` / :meth:`CostTable.from_csv`).
CSV_COLUMNS = ["kind", "block", "batch", "group", "seconds", "bytes", "feasible", "ranks", "trials", "note",
               "workload", "device_type", "devices", "batch_size", "source"]

_KINDS = ("teacher", "student", "relay", "allreduce", "memory", "static_memory", "activation", "data", "barrier",
          "capacity")


def candidate_batches(batch_size: int, devices: int) -> list[int]:
    """Per-replica batch sizes a stage of ``g = 1..devices`` replicas trains: ``ceil(B/g)``, descending."""
    if batch_size < 1 or devices < 1:
        raise ValueError(f"batch size and devices must be >= 1, got {batch_size} and {devices}")
    return sorted({-(-batch_size // g) for g in range(1, min(devices, batch_size) + 1)}, reverse=True)


def _ring(g: int) -> float:
    return 2.0 * (g - 1) / g


def _intkeys(d: Mapping) -> dict[int, float]:
    return {int(k): float(v) for k, v in d.items()}


@dataclass
class CostTable:
    """Measured (or estimated) costs of one workload; see the module docstring for each field.

    Lists are indexed by block (``relay`` and ``activation_bytes`` by boundary: entry ``k`` is
    the activation entering block ``k``); dict keys are row counts (or group sizes for
    ``allreduce`` and ``barrier``). Missing relay / all-reduce / memory data count as free /
    unknown, and :meth:`gaps` lists them.
    """

    num_blocks: int
    teacher: list[dict[int, float]]
    student: list[dict[int, float]]
    data_per_sample: float = 0.0
    relay: list[dict[int, float]] = field(default_factory=list)
    allreduce: list[dict[int, float]] = field(default_factory=list)
    memory: list[dict[int, float]] = field(default_factory=list)
    static_memory: list[float] = field(default_factory=list)
    activation_bytes: list[float] = field(default_factory=list)
    barrier: dict[int, float] = field(default_factory=dict)
    workload: str = ""
    device_type: str = ""
    devices: int = 0  # ranks the profile ran on
    batch_size: int = 0  # global batch the profile's candidate sizes derive from
    source: str = ""  # "profile", "estimate" or "synthetic"
    data: dict[int, float] = field(default_factory=dict)  # seconds to load b rows (else data_per_sample * b)
    capacity: float = 0.0  # bytes one profiled device could use (0: unknown)
    modelled: tuple[str, ...] = ()  # kinds whose values a model gave (one-rank profile), not a measurement

    def __post_init__(self) -> None:
        n = self.num_blocks
        self.teacher = [_intkeys(d) for d in self.teacher]
        self.student = [_intkeys(d) for d in self.student]
        self.relay = [_intkeys(d) for d in self.relay] + [{} for _ in range(n - len(self.relay))]
        self.allreduce = [_intkeys(d) for d in self.allreduce] + [{} for _ in range(n - len(self.allreduce))]
        self.memory = [_intkeys(d) for d in self.memory] + [{} for _ in range(n - len(self.memory))]
        self.static_memory = [float(v) for v in self.static_memory] + [0.0] * (n - len(self.static_memory))
        self.activation_bytes = ([float(v) for v in self.activation_bytes]
                                 + [0.0] * (n + 1 - len(self.activation_bytes)))
        self.barrier = _intkeys(self.barrier)
        self.data = _intkeys(self.data)
        self.modelled = tuple(self.modelled)
        self.validate()

    # ---- checks -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` unless every block has positive teacher and student times."""
        n = self.num_blocks
        if n < 1:
            raise ConfigError(f"a cost table needs at least one block, got num_blocks={n}")
        for name in ("teacher", "student", "relay", "allreduce", "memory", "static_memory"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"cost table field {name!r} has {len(getattr(self, name))} entries for {n} blocks")
        for name in ("teacher", "student"):
            for i, pts in enumerate(getattr(self, name)):
                if not pts:
                    raise ConfigError(f"cost table has no {name} time for block {i}; re-run `python -m pipebd "
                                      "profile` (every block must be measured at least at one batch size)")
                bad = {b: t for b, t in pts.items() if b < 1 or not t > 0}
                if bad:
                    raise ConfigError(f"cost table {name} times of block {i} must be positive at batch sizes >= 1, "
                                      f"got {bad}")
        if self.data_per_sample < 0:
            raise ConfigError(f"data_per_sample must be >= 0, got {self.data_per_sample}")

    def gaps(self, devices: int | None = None) -> list[str]:
        """Human-readable list of costs this table lacks (they are taken as zero / unknown)."""
        out = []
        n = self.num_blocks
        if n > 1 and not any(self.relay[k] for k in range(1, n)):
            out.append("no relay (point-to-point) times: relays are free")
        if not any(self.allreduce):
            out.append("no all-reduce times: gradient all-reduce is free")
        elif devices is not None:
            top = max((g for d in self.allreduce for g in d), default=1)
            if devices > top:
                out.append(f"all-reduce measured up to {top} ranks; larger groups scaled by the ring factor 2(g-1)/g")
        if not any(self.memory):
            out.append("no memory data: memory limits cannot be checked")
        for kind in self.modelled:
            out.append(f"{kind} times are modelled from bytes, not measured (a one-rank profile)")
        single = [i for i in range(n) if min(len(self.teacher[i]), len(self.student[i])) == 1]
        if single:
            out.append(f"block(s) {', '.join(map(str, single))} measured at one batch size: other sizes scale "
                       "proportionally (no fixed cost); profile with --replica-groups 4 or more")
        lo = max((r[0] for r in map(self.measured_range, range(n)) if r), default=None)
        if devices is not None and self.batch_size and lo is not None and -(-self.batch_size // devices) < lo:
            out.append(f"per-replica batches below {lo} rows (ceil({self.batch_size}/{devices}) = "
                       f"{-(-self.batch_size // devices)}) are extrapolated by the fitted fixed + per-sample model")
        return out

    def measured_range(self, block: int) -> tuple[int, int] | None:
        """Smallest and largest row count block ``block``'s teacher or student was measured at."""
        return _range({**self.teacher[block], **self.student[block]})

    def extrapolates(self, rows: Iterable[float], blocks: Iterable[int] | None = None) -> bool:
        """True if some row count lies outside the measured range of one of ``blocks`` (default: all)."""
        rows = [r for r in rows if r > 0]
        for i in range(self.num_blocks) if blocks is None else blocks:
            lo, hi = self.measured_range(i)
            if any(r < lo or r > hi for r in rows):
                return True
        return False

    # ---- cost functions -----------------------------------------------------------------
    def teacher_time(self, block: int, rows: float) -> float:
        return _interp(self.teacher[block], rows) if rows > 0 else 0.0

    def student_time(self, block: int, rows: float) -> float:
        return _interp(self.student[block], rows) if rows > 0 else 0.0

    def relay_time(self, boundary: int, rows: float) -> float:
        """Seconds to receive ``rows`` rows of the activation entering block ``boundary``."""
        pts = self.relay[boundary] if 0 <= boundary < self.num_blocks else {}
        return _interp(pts, rows) if pts and rows > 0 else 0.0

    def data_time(self, rows: float) -> float:
        if self.data and rows > 0:
            return _interp(self.data, rows)
        return self.data_per_sample * rows

    def allreduce_time(self, block: int, group: int) -> float:
        if group <= 1:
            return 0.0
        pts = self.allreduce[block]
        if not pts:
            return 0.0
        if group in pts:
            return pts[group]
        gs = sorted(pts)
        if gs[0] < group < gs[-1]:
            return _interp(pts, group)
        ref = gs[-1] if group > gs[-1] else gs[0]
        return pts[ref] * _ring(group) / _ring(ref) if ref > 1 else pts[ref]

    def barrier_time(self, group: int) -> float:
        if group <= 1 or not self.barrier:
            return 0.0
        if group in self.barrier:
            return self.barrier[group]
        gs = sorted(self.barrier)
        ref = max((g for g in gs if g <= group), default=gs[0])
        return self.barrier[ref] * math.log2(group) / math.log2(ref) if ref > 1 else self.barrier[ref]

    def memory_bytes(self, block: int, rows: float) -> float | None:
        """Peak bytes to train ``block`` alone on ``rows`` rows, or ``None`` if not measured."""
        pts = self.memory[block]
        return _interp(pts, rows, fixed=self.static_memory[block] or None) if pts else None

    def feasible(self, block: int, rows: float) -> bool:
        """False where the profile recorded an out-of-memory at or below ``rows`` rows."""
        return not any(math.isinf(t) and b <= rows for b, t in self.student[block].items()) and \
            not any(math.isinf(t) and b <= rows for b, t in self.teacher[block].items())

    def batches(self) -> list[int]:
        """Every row count measured for some block, ascending."""
        return sorted({b for d in self.student + self.teacher for b in d})

    # ---- serialisation ------------------------------------------------------------------
    def to_rows(self) -> list[dict]:
        """The tidy rows of :data:`CSV_COLUMNS` (one per measured quantity)."""
        meta = {"workload": self.workload, "device_type": self.device_type, "devices": self.devices,
                "batch_size": self.batch_size, "source": self.source}
        rows: list[dict] = []

        def add(kind, block=None, batch=None, group=None, seconds=None, nbytes=None, feasible=1):
            rows.append({"kind": kind, "block": block, "batch": batch, "group": group, "seconds": seconds,
                         "bytes": nbytes, "feasible": feasible, "ranks": None, "trials": None,
                         "note": "modelled" if kind in self.modelled else "", **meta})

        for i in range(self.num_blocks):
            for b, t in sorted(self.teacher[i].items()):
                add("teacher", i, b, seconds=None if math.isinf(t) else t, feasible=int(not math.isinf(t)))
            for b, t in sorted(self.student[i].items()):
                add("student", i, b, seconds=None if math.isinf(t) else t, feasible=int(not math.isinf(t)))
            for b, t in sorted(self.relay[i].items()):
                add("relay", i, b, seconds=t)
            for g, t in sorted(self.allreduce[i].items()):
                add("allreduce", i, group=g, seconds=t)
            for b, m in sorted(self.memory[i].items()):
                add("memory", i, b, nbytes=m)
            if self.static_memory[i]:
                add("static_memory", i, nbytes=self.static_memory[i])
        for k, m in enumerate(self.activation_bytes):
            if m:
                add("activation", k, nbytes=m)
        for b, t in sorted(self.data.items()):
            add("data", batch=b, seconds=t)
        if self.data_per_sample and not self.data:
            add("data", batch=1, seconds=self.data_per_sample)
        for g, t in sorted(self.barrier.items()):
            add("barrier", group=g, seconds=t)
        if self.capacity:
            add("capacity", nbytes=self.capacity)
        return rows

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping]) -> "CostTable":
        """Build a table from tidy rows; several rows of one quantity are combined by median."""
        rows = list(rows)
        if not rows:
            raise ConfigError("the cost table is empty (no rows); re-run `python -m pipebd profile`")
        acc: dict[tuple, list[float]] = defaultdict(list)
        meta: dict[str, object] = {}
        modelled: set[str] = set()
        blocks = -1
        for r in rows:
            kind = str(r.get("kind", "")).strip()
            if kind not in _KINDS:
                raise ConfigError(f"unknown row kind {kind!r} in cost table; expected one of {', '.join(_KINDS)}")
            block, batch, group = (_opt_int(r.get(c)) for c in ("block", "batch", "group"))
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
                   modelled=tuple(k for k in _KINDS if k in modelled))

    def to_csv(self, path: str) -> None:
        _write_csv(path, self.to_rows(), CSV_COLUMNS)

    @classmethod
    def from_csv(cls, path: str) -> "CostTable":
        """Read a profile CSV written by ``python -m pipebd profile`` (or :meth:`to_csv`)."""
        if not os.path.isfile(path):
            raise ConfigError(f"profile {path!r} does not exist; write one with `python -m pipebd profile "
                              f"--workload W --devices N --batch-size B --out {path}`")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"kind", "block", "batch", "seconds"} - set(reader.fieldnames or ())
            if missing:
                raise ConfigError(f"{path!r} is not a pipebd profile CSV: columns {sorted(missing)} are missing "
                                  f"(expected {', '.join(CSV_COLUMNS)})")
            return cls.from_rows(list(reader))

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["teacher"] = [{str(k): (None if math.isinf(v) else v) for k, v in x.items()} for x in self.teacher]
        d["student"] = [{str(k): (None if math.isinf(v) else v) for k, v in x.items()} for x in self.student]
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "CostTable":
        d = json.loads(text)
        for name in ("teacher", "student"):
            d[name] = [{int(k): (math.inf if v is None else v) for k, v in x.items()} for x in d[name]]
        return cls(**d)

    def restricted(self, blocks: Sequence[int]) -> "CostTable":
        """A table of a contiguous subset of blocks (renumbered from 0)."""
        lo, hi = blocks[0], blocks[-1] + 1
        return dataclasses.replace(self, num_blocks=hi - lo, teacher=self.teacher[lo:hi], student=self.student[lo:hi],
                                   relay=self.relay[lo:hi], allreduce=self.allreduce[lo:hi],
                                   memory=self.memory[lo:hi], static_memory=self.static_memory[lo:hi],
                                   activation_bytes=self.activation_bytes[lo:hi + 1])


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


def _write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    """Write ``rows`` to ``path`` atomically (temp file + rename)."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


# ---- stages -----------------------------------------------------------------------------

@dataclass(frozen=True)
class StageCost:
    """Per-batch cost of one stage (its slowest replica, plus the stage's all-reduce)."""

    stage: Stage
    rows: tuple[int, ...]  # rows per replica
    input_s: float  # data loading (first stage) or relay receive
    teacher_s: float
    student_s: float  # forward + backward + optimizer of every student block of the stage
    allreduce_s: float
    total_s: float  # busy seconds per batch: max over replicas(input + teacher + student) + all-reduce
    teacher_done_s: float  # seconds after the start when the stage's output can be sent
    memory_bytes: float | None  # peak bytes of the largest replica (None: not measured)
    extrapolated: bool = False  # a replica's rows lie outside a block's measured batch sizes

    @property
    def work_s(self) -> float:
        """Device-seconds per batch (replicas × stage time)."""
        return self.stage.replicas * self.total_s


def stage_cost(costs: CostTable, stage: Stage, batch_size: int, *, inflight: int = 2) -> StageCost:
    """Cost of ``stage`` when the global batch is ``batch_size`` (rows split as the stage says)."""
    rows = stage.rows(batch_size)
    if min(rows) < 1:
        raise ConfigError(f"stage {stage} gives a replica no rows of a {batch_size}-sample batch")
    best = None
    for b in sorted(set(rows), reverse=True):
        inp = costs.data_time(b) if stage.first == 0 else costs.relay_time(stage.first, b)
        tch = sum(costs.teacher_time(i, b) for i in stage.blocks)
        stu = sum(costs.student_time(i, b) for i in stage.blocks)
        key = inp + tch + stu
        if best is None or key > best[0]:
            best = (key, inp, tch, stu)
    _, inp, tch, stu = best
    ar = sum(costs.allreduce_time(i, stage.replicas) for i in stage.blocks)
    return StageCost(stage=stage, rows=rows, input_s=inp, teacher_s=tch, student_s=stu, allreduce_s=ar,
                     total_s=inp + tch + stu + ar, teacher_done_s=inp + tch,
                     memory_bytes=stage_memory(costs, stage.first, stage.last, max(rows), inflight=inflight),
                     extrapolated=costs.extrapolates(set(rows), stage.blocks))


def stage_memory(costs: CostTable, first: int, last: int, rows: int, *, inflight: int = 2) -> float | None:
    """Peak bytes of a replica training blocks ``first..last`` on ``rows`` rows.

    Blocks of a stage are trained one after another, so the resident parts add up and the
    transient parts (activations, gradients) peak at the largest block; the relay buffers
    (``inflight`` batches in and out) come on top. ``None`` when a block has no memory data.
    """
    static = 0.0
    peak = 0.0
    for i in range(first, last + 1):
        m = costs.memory_bytes(i, rows)
        if m is None:
            return None
        static += costs.static_memory[i]
        peak = max(peak, m - costs.static_memory[i])
    buffers = inflight * rows * ((costs.activation_bytes[first] if first > 0 else 0.0)
                                 + (costs.activation_bytes[last + 1] if last + 1 < costs.num_blocks else 0.0))
    return static + peak + buffers


# ---- pipelines --------------------------------------------------------------------------

@dataclass(frozen=True)
class PipelineResult:
    epoch_s: float  # time until every stage finished every step
    period_s: float  # steady-state seconds per step
    fill_s: float  # epoch_s - steps * period_s: pipeline fill and drain
    simulated_steps: int  # steps simulated event by event (the rest extrapolated at period_s)


def simulate_pipeline(stages: Sequence[StageCost], steps: int, *, inflight: int = 2) -> PipelineResult:
    """Discrete-event simulation of a pipeline without a barrier (tr-dpu, ahd).

    Stage ``k`` starts batch ``t`` when it finished batch ``t-1`` and stage ``k-1`` sent batch
    ``t``; it receives (``input_s``), runs its teacher blocks, sends its output — waiting first
    until stage ``k+1`` has received batch ``t - inflight`` (bounded in-flight sends) — and
    trains its students. Costs are constant per batch, so the schedule becomes periodic
    within a few multiples of ``stages × inflight`` batches; longer epochs are extrapolated
    from the simulated steady state.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if inflight < 1:
        raise ValueError(f"inflight must be >= 1, got {inflight}")
    K = len(stages)
    horizon = min(steps, max(256, 16 * K * inflight))
    finish = [0.0] * K
    recv_done: list[list[float]] = [[] for _ in range(K)]
    last_end: list[float] = []
    for t in range(horizon):
        arrival = 0.0
        for k, c in enumerate(stages):
            start = max(finish[k], arrival)
            recv_done[k].append(start + c.input_s)
            ready = start + c.teacher_done_s
            send = ready
            if k + 1 < K and t >= inflight:
                send = max(ready, recv_done[k + 1][t - inflight])
            finish[k] = start + c.total_s + (send - ready)
            arrival = send
        last_end.append(max(finish))
    if horizon >= 4:
        half = horizon // 2
        period = (last_end[-1] - last_end[half - 1]) / (horizon - half)
    else:
        period = max(c.total_s for c in stages)
    epoch = last_end[-1] + (steps - horizon) * period
    # the period is measured, so a pipeline without fill can come out a rounding error below zero
    return PipelineResult(epoch_s=epoch, period_s=period, fill_s=max(0.0, epoch - steps * period),
                          simulated_steps=horizon)


@dataclass(frozen=True)
class Prediction:
    """One predicted epoch of one strategy."""

    strategy: str
    devices: int
    batch_size: int
    steps: int
    epoch_s: float
    step_s: float  # steady-state seconds per step (for dp: sum over blocks of each block's step)
    fill_s: float = 0.0
    layout: str = ""  # the plan / stages / ls map the prediction assumes
    note: str = ""
    extrapolated: bool = False  # priced from a per-replica batch outside the measured range (costfit)


def predict_sequential(costs: CostTable, batch_size: int, steps: int) -> Prediction:
    n = costs.num_blocks
    step = costs.data_time(batch_size) + sum(costs.teacher_time(i, batch_size) + costs.student_time(i, batch_size)
                                             for i in range(n))
    return Prediction("sequential", 1, batch_size, steps, steps * step, step,
                      extrapolated=costs.extrapolates([batch_size]))


def predict_dp(costs: CostTable, devices: int, batch_size: int, steps: int) -> Prediction:
    """DNA-style data parallelism: each block trained in turn for ``steps`` steps on ``devices`` replicas."""
    if devices > batch_size:
        raise ConfigError(f"dp on {devices} devices needs a batch of at least {devices}, got {batch_size}")
    b = -(-batch_size // devices)
    total = 0.0
    teacher_prefix = 0.0
    for i in range(costs.num_blocks):
        teacher_prefix += costs.teacher_time(i, b)
        total += costs.data_time(b) + teacher_prefix + costs.student_time(i, b) + costs.allreduce_time(i, devices)
    return Prediction("dp", devices, batch_size, steps, steps * total, total, layout=f"{devices} replicas x {b} rows",
                      extrapolated=costs.extrapolates([b]))


def _ls_block_step(costs: CostTable, block: int, batch_size: int) -> float:
    """One ls step of ``block`` alone: load the batch, run the teacher from the image, train it."""
    return (costs.data_time(batch_size) + sum(costs.teacher_time(i, batch_size) for i in range(block + 1))
            + costs.student_time(block, batch_size))


def lpt_assign(costs: Sequence[float], n: int) -> list[list[int]]:
    """Graham's longest-processing-time-first assignment of jobs (by ``costs``) to ``n`` bins.

    Jobs are taken in decreasing cost (ties: lower index first) and each goes to the bin with
    the smallest load so far (ties: lower bin). Returns, per bin, its jobs in increasing order;
    a bin gets an empty list when ``n`` exceeds the number of jobs.
    """
    if n < 1:
        raise ValueError(f"need at least 1 rank, got {n}")
    loads = [0.0] * n
    bins: list[list[int]] = [[] for _ in range(n)]
    for b in sorted(range(len(costs)), key=lambda b: (-costs[b], b)):
        r = min(range(n), key=lambda r: (loads[r], r))
        bins[r].append(b)
        loads[r] += costs[b]
    return [sorted(blocks) for blocks in bins]


def ls_assignment(costs: CostTable, devices: int, batch_size: int) -> list[list[int]]:
    """The ls baseline's assignment of whole blocks to devices: :func:`lpt_assign` on block costs.

    A device trains its blocks one after another, each for every step with its own data
    loading and teacher prefix (as ``baselines/ls.py`` does), so a block's cost is
    :func:`_ls_block_step` and a device's load is the sum over its blocks. With more devices
    than blocks, only ``num_blocks`` devices are used.
    """
    n = costs.num_blocks
    return lpt_assign([_ls_block_step(costs, i, batch_size) for i in range(n)], min(devices, n))


def format_ls_map(assignment: Sequence[Sequence[int]]) -> str:
    """The ``--ls-map`` string of an assignment: ``0:1:2,3:4,5``."""
    return ",".join(":".join(map(str, a)) for a in assignment)


def predict_ls(costs: CostTable, devices: int, batch_size: int, steps: int,
               assignment: Sequence[Sequence[int]] | None = None) -> Prediction:
    assignment = assignment if assignment is not None else ls_assignment(costs, devices, batch_size)
    step = max(sum(_ls_block_step(costs, i, batch_size) for i in a) for a in assignment)
    note = f"uses {len(assignment)} of {devices} devices" if len(assignment) < devices else ""
    return Prediction("ls", devices, batch_size, steps, steps * step, step, layout=format_ls_map(assignment), note=note,
                      extrapolated=costs.extrapolates([batch_size]))


def pipeline_plan(costs: CostTable, devices: int, batch_size: int, *, memory_limit_bytes: float | None = None,
                  inflight: int = 2) -> Plan:
    """The best tr / tr-dpu layout: ``min(devices, blocks)`` contiguous stages of one replica each."""
    from .planner import search

    return search(costs, min(devices, costs.num_blocks), batch_size, memory_limit_bytes=memory_limit_bytes,
                  inflight=inflight, max_replicas=1).plan


def stages_string(plan: Plan) -> str:
    """The ``--stages`` string of a one-replica-per-stage plan: ``0-1,2-3,4-5``."""
    return ",".join(str(s.first) if s.first == s.last else f"{s.first}-{s.last}" for s in plan.stages)


def _as_plan(stages: Plan | str | None, costs: CostTable, devices: int, batch_size: int, inflight: int) -> Plan:
    if stages is None:
        return pipeline_plan(costs, devices, batch_size, inflight=inflight)
    if isinstance(stages, Plan):
        return stages
    from .plan import parse_plan

    return parse_plan(",".join(f"{p}x1" for p in stages.split(",")))


def predict_tr(costs: CostTable, devices: int, batch_size: int, steps: int, *,
               stages: Plan | str | None = None, inflight: int = 2) -> Prediction:
    """Teacher relaying with a barrier before every optimizer step (closed form)."""
    plan = _as_plan(stages, costs, devices, batch_size, inflight)
    arrival = 0.0
    end = 0.0
    sc = [stage_cost(costs, s, batch_size, inflight=inflight) for s in plan.stages]
    for c in sc:
        end = max(end, arrival + c.total_s)
        arrival += c.teacher_done_s
    step = end + costs.barrier_time(plan.devices)
    note = f"uses {plan.devices} of {devices} devices" if plan.devices < devices else ""
    return Prediction("tr", devices, batch_size, steps, steps * step, step, layout=stages_string(plan), note=note,
                      extrapolated=any(c.extrapolated for c in sc))


def predict_ahd(costs: CostTable, plan: Plan, batch_size: int, steps: int, *, inflight: int = 2,
                strategy: str = "ahd", devices: int | None = None) -> Prediction:
    """Any plan, pipelined without a barrier (discrete-event simulation)."""
    plan.validate(num_blocks=costs.num_blocks, devices=plan.devices, batch_size=batch_size)
    sc = [stage_cost(costs, s, batch_size, inflight=inflight) for s in plan.stages]
    res = simulate_pipeline(sc, steps, inflight=inflight)
    devices = devices or plan.devices
    note = f"uses {plan.devices} of {devices} devices" if plan.devices < devices else ""
    layout = stages_string(plan) if strategy == "tr-dpu" else str(plan)
    return Prediction(strategy, devices, batch_size, steps, res.epoch_s, res.period_s, res.fill_s, layout, note,
                      extrapolated=any(c.extrapolated for c in sc))


def predict_tr_dpu(costs: CostTable, devices: int, batch_size: int, steps: int, *,
                   stages: Plan | str | None = None, inflight: int = 2) -> Prediction:
    plan = _as_plan(stages, costs, devices, batch_size, inflight)
    return predict_ahd(costs, plan, batch_size, steps, inflight=inflight, strategy="tr-dpu", devices=devices)


def predict_ideal(costs: CostTable, devices: int, batch_size: int, steps: int) -> Prediction:
    """DESIGN.md §4: each teacher and student block once per sample at its per-sample-fastest size, ÷ N."""
    per_sample = 0.0
    for i in range(costs.num_blocks):
        per_sample += min(t / b for b, t in costs.teacher[i].items())
        per_sample += min(t / b for b, t in costs.student[i].items())
    step = per_sample * batch_size / devices
    return Prediction("ideal", devices, batch_size, steps, steps * step, step)


def predict_all(costs: CostTable, devices: int, batch_size: int, steps: int, *, inflight: int = 2,
                memory_limit_bytes: float | None = None, plan: Plan | None = None,
                strategies: Sequence[str] = STRATEGIES) -> list[Prediction]:
    """Predictions of ``strategies`` on ``devices`` devices (``ahd`` plans unless ``plan`` is given)."""
    out = []
    for s in strategies:
        if s == "sequential":
            p = predict_sequential(costs, batch_size, steps)
            out.append(dataclasses.replace(p, devices=devices, note="1 device" if devices > 1 else ""))
        elif s == "dp":
            out.append(predict_dp(costs, devices, batch_size, steps))
        elif s == "ls":
            out.append(predict_ls(costs, devices, batch_size, steps))
        elif s == "tr":
            out.append(predict_tr(costs, devices, batch_size, steps, inflight=inflight))
        elif s == "tr-dpu":
            out.append(predict_tr_dpu(costs, devices, batch_size, steps, inflight=inflight))
        elif s == "ahd":
            from .planner import plan as make_plan

            p = plan or make_plan(costs, devices, batch_size, memory_limit_bytes=memory_limit_bytes, inflight=inflight)
            out.append(predict_ahd(costs, p, batch_size, steps, inflight=inflight))
        elif s == "ideal":
            out.append(predict_ideal(costs, devices, batch_size, steps))
        else:
            raise ConfigError(f"cannot predict strategy {s!r}; choose from {', '.join(STRATEGIES)}")
    return out


# ---- cost tables without a profile ------------------------------------------------------

@dataclass(frozen=True)
class EstimateSpec:
    """Rough device constants turning FLOPs and bytes into seconds (no profile available)."""

    flops_per_s: float
    overhead_s: float  # fixed seconds per block call (kernel launches, Python)
    p2p_bytes_per_s: float
    allreduce_bytes_per_s: float
    latency_s: float
    data_per_sample_s: float


ESTIMATE_SPECS = {
    "cuda": EstimateSpec(flops_per_s=8e12, overhead_s=3e-4, p2p_bytes_per_s=2e10, allreduce_bytes_per_s=2e10,
                         latency_s=3e-5, data_per_sample_s=2e-5),
    "cpu": EstimateSpec(flops_per_s=3e10, overhead_s=1e-3, p2p_bytes_per_s=2e9, allreduce_bytes_per_s=1e9,
                        latency_s=1e-4, data_per_sample_s=1e-4),
}


def estimate_cost_table(cfg, *, devices: int | None = None, spec: EstimateSpec | None = None) -> CostTable:
    """A :class:`CostTable` from FLOP counts and sizes (:func:`pipebd.costs.block_facts`).

    Student train FLOPs = 3× its forward FLOPs;
    seconds = FLOPs × rows / ``spec.flops_per_s`` + a fixed per-call overhead; relays and
    all-reduces from activation and parameter bytes. Good enough to rank layouts before a
    profile exists; absolute times are not meaningful.
    """
    from .costs import block_facts
    from .zoo import canonical_name

    spec = spec or ESTIMATE_SPECS.get(cfg.device_type, ESTIMATE_SPECS["cpu"])
    devices = devices or cfg.devices
    facts = block_facts(cfg.workload, cfg.resolution, cfg.width_mult, cfg.num_classes, cfg.nas_zero)
    t_flops = [f.teacher_flops for f in facts]
    act = [float(math.prod(facts[0].in_shape) * 4)] + [float(math.prod(f.out_shape) * 4) for f in facts]
    t_bytes = [float(f.teacher_params * 4) for f in facts]
    s_bytes = [float(f.student_params * 4) for f in facts]
    n = len(t_flops)
    batches = candidate_batches(cfg.batch_size, max(devices, 4))  # >= 3 sizes: the fixed part is fitted
    teacher, student, relay, allreduce = [], [], [], []
    for i in range(n):
        s_flops = 3 * facts[i].student_flops  # forward + backward
        teacher.append({b: spec.overhead_s + t_flops[i] * b / spec.flops_per_s for b in batches})
        student.append({b: 3 * spec.overhead_s + s_flops * b / spec.flops_per_s for b in batches})
        relay.append({} if i == 0 else {b: spec.latency_s + act[i] * b / spec.p2p_bytes_per_s for b in batches})
        allreduce.append({g: spec.latency_s * math.log2(g) + _ring(g) * s_bytes[i] / spec.allreduce_bytes_per_s
                          for g in range(2, max(2, devices) + 1)})
    return CostTable(num_blocks=n, teacher=teacher, student=student, data_per_sample=spec.data_per_sample_s,
                     relay=relay, allreduce=allreduce, static_memory=[t_bytes[i] + 2 * s_bytes[i] for i in range(n)],
                     activation_bytes=act, barrier={g: spec.latency_s * math.log2(g) for g in range(2, devices + 1)},
                     workload=canonical_name(cfg.workload), device_type=cfg.device_type, devices=devices,
                     batch_size=cfg.batch_size, source="estimate")


def random_cost_table(seed: int, num_blocks: int, devices: int, batch_size: int, *,
                      with_memory: bool = False) -> CostTable:
    """A random but plausible table (fixed overhead + per-sample cost, comm costs) for tests and scaling."""
    rng = random.Random(seed)
    batches = candidate_batches(batch_size, devices)
    teacher, student, relay, allreduce, memory, static = [], [], [], [], [], []
    act = [rng.uniform(1e3, 1e5) for _ in range(num_blocks + 1)]
    for i in range(num_blocks):
        t_fix, t_ps = rng.uniform(1e-4, 2e-3), rng.uniform(1e-5, 5e-4)
        s_fix, s_ps = rng.uniform(5e-4, 5e-3), rng.uniform(5e-5, 2e-3)
        teacher.append({b: t_fix + t_ps * b for b in batches})
        student.append({b: s_fix + s_ps * b * rng.uniform(0.9, 1.1) for b in batches})
        relay.append({} if i == 0 else {b: 1e-5 + act[i] * b / 5e9 for b in batches})
        pbytes = rng.uniform(1e5, 5e7)
        allreduce.append({g: 2e-5 * math.log2(g) + _ring(g) * pbytes / 5e9 for g in range(2, devices + 1)})
        st = rng.uniform(1e6, 1e8)
        static.append(st)
        per = rng.uniform(1e4, 1e6)
        memory.append({b: st + per * b for b in batches} if with_memory else {})
    return CostTable(num_blocks=num_blocks, teacher=teacher, student=student, data_per_sample=rng.uniform(0, 1e-4),
                     relay=relay, allreduce=allreduce, memory=memory, static_memory=static, activation_bytes=act,
                     barrier={g: 1e-5 * math.log2(g) for g in range(2, devices + 1)}, workload=f"random-{seed}",
                     devices=devices, batch_size=batch_size, source="synthetic")


def epoch_steps(workload: str, batch_size: int) -> int:
    """Steps of one epoch of the dataset ``workload`` stands in for (50 000 CIFAR / 1 281 167 ImageNet)."""
    from .data import EPOCH_SAMPLES

    try:
        import torch

        from .zoo import build_workload

        with torch.device("meta"):
            ds = build_workload(workload, probe=False).default_dataset
    except Exception:  # noqa: BLE001 — an unknown or synthetic workload: CIFAR-10's size
        ds = "cifar10"
    return max(1, EPOCH_SAMPLES.get(ds, EPOCH_SAMPLES["cifar10"]) // batch_size)


# ---- CLI --------------------------------------------------------------------------------

RESULT_COLUMNS = ["strategy", "devices", "batch_size", "steps", "epoch_time_s", "step_time_s", "fill_s",
                  "speedup_vs_dp", "efficiency", "layout", "note", "workload", "profile"]


def _cmd_simulate(args: argparse.Namespace) -> int:
    # Checked before the profile is read: a bad flag is a ConfigError (exit 2), never a traceback.
    if args.inflight < 1:
        raise ConfigError(f"--inflight must be >= 1 (batches in flight per link of tr-dpu/ahd), got {args.inflight}; "
                          "e.g. --inflight 2 (the default)")
    for flag, value in (("--batch-size", args.batch_size), ("--steps-per-epoch", args.steps_per_epoch)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}; omit it to use the profile's")
    if args.memory_limit is not None and not args.memory_limit > 0:
        raise ConfigError(f"--memory-limit must be > 0 GB, got {args.memory_limit:g}; omit it for no limit")
    unknown = [s for s in (args.strategies.split(",") if args.strategies else []) if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"cannot predict strategy {', '.join(map(repr, unknown))}; --strategies takes a "
                          f"comma-separated subset of {','.join(STRATEGIES)}")
    costs = CostTable.from_csv(args.profile)
    batch = args.batch_size or costs.batch_size
    if not batch:
        raise ConfigError(f"{args.profile!r} records no batch size; pass --batch-size B")
    steps = args.steps_per_epoch or epoch_steps(costs.workload, batch)
    strategies = args.strategies.split(",") if args.strategies else list(STRATEGIES)
    limit = args.memory_limit * 2**30 if args.memory_limit else None
    rows = []
    table: dict[str, dict[int, str]] = defaultdict(dict)
    for n in args.devices:
        if n < 1 or n > batch:
            raise ConfigError(f"--devices {n}: every device count must be between 1 and the batch size {batch}")
        preds = predict_all(costs, n, batch, steps, inflight=args.inflight, memory_limit_bytes=limit,
                            strategies=strategies)
        dp = next((p.epoch_s for p in preds if p.strategy == "dp"), None)
        ideal = next((p.epoch_s for p in preds if p.strategy == "ideal"), None)
        for p in preds:
            sp = dp / p.epoch_s if dp else None
            table[p.strategy][n] = f"{p.epoch_s:10.2f}" + (f" ({sp:4.2f}x)" if sp else "")
            rows.append({"strategy": p.strategy, "devices": n, "batch_size": batch, "steps": steps,
                         "epoch_time_s": p.epoch_s, "step_time_s": p.step_s, "fill_s": p.fill_s, "speedup_vs_dp": sp,
                         "efficiency": ideal / p.epoch_s if ideal else None, "layout": p.layout, "note": p.note,
                         "workload": costs.workload, "profile": args.profile})
    print(f"predicted epoch time in seconds (speedup over dp), {costs.workload or 'workload'}, batch {batch}, "
          f"{steps} steps/epoch, costs: {costs.source or 'profile'} on {costs.device_type or '?'}")
    for gap in costs.gaps(max(args.devices)):
        print(f"  note: {gap}")
    width = 20
    print(f"{'strategy':<12}" + "".join(f"{'N=' + str(n):>{width}}" for n in args.devices))
    for s in strategies:
        print(f"{s:<12}" + "".join(f"{table[s].get(n, ''):>{width}}" for n in args.devices))
    layouts = [f"  N={r['devices']}: {r['strategy']} {r['layout']}" for r in rows if r["strategy"] in ("ahd",)]
    if layouts:
        print("ahd plans:")
        print("\n".join(layouts))
    if args.out:
        _write_csv(args.out, rows, RESULT_COLUMNS)
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("simulate", help="predict the epoch time of every strategy on N devices from a profile")
    p.add_argument("--profile", required=True, metavar="CSV", help="a profile written by `python -m pipebd profile`")
    p.add_argument("--devices", "-n", type=int, nargs="+", default=[1, 2, 4, 8], help="device counts to predict")
    p.add_argument("--batch-size", "-b", type=int, default=None, help="global batch (default: the profile's)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="steps of one epoch (default: the dataset the workload stands in for ÷ batch)")
    p.add_argument("--inflight", type=int, default=2, help="tr-dpu/ahd: batches in flight per link")
    p.add_argument("--memory-limit", type=float, default=None, metavar="GB", help="ahd: per-device memory limit")
    p.add_argument("--strategies", default=None, help=f"comma-separated subset of {','.join(STRATEGIES)}")
    p.add_argument("--out", default=None, metavar="CSV", help="write the predictions as a CSV")
    p.set_defaults(func=_cmd_simulate)
