"""The cost table: measured (or estimated) seconds and bytes of one workload's blocks.

Pipe-BD (Jang et al., DATE 2023) §III-C chooses its layout from profiled per-block costs; a
:class:`CostTable` holds, per block ``i``:

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
one profiled device could use), ``activation_bytes[k]`` (bytes per sample of the activation
entering block ``k``; ``k = n`` is the logits), ``barrier[g]`` (seconds of a barrier over ``g``
ranks) and ``store["write:memory"]`` etc. (seconds per byte written to / read from the ``cache``
strategy's activation store in host memory or on disk; :data:`STORE_DEFAULTS` where not profiled).

**Compute modes** (:mod:`pipebd.modes`). ``teacher``, ``student`` and ``relay`` hold the times of
the modes the table is priced for (``modes``; empty: fp32, contiguous everywhere). The profiler
also times each block in every candidate mode (bf16 autocast, channels-last); those rows are kept
in ``variants`` (``"teacher:3:bf16-cl" -> {rows: seconds}``; relays by the activation's dtype,
``"relay:2:bf16"``) and the CSV's ``mode`` column. :meth:`CostTable.priced` returns the table
priced for a :class:`~pipebd.modes.BlockModes` — what the planner and the cost model then use.

Times are measured at a few per-replica batch sizes (the profiler uses ``ceil(B/g)``,
``g = 1..G``, ``G = --replica-groups``, at least 4) and are a function of the row count
(:mod:`pipebd.costfit`): exact at measured points, linear between them, and outside them a
fixed + per-sample line ``a + c·b`` fitted by non-negative least squares (one point:
proportional, listed by :meth:`CostTable.gaps`). All-reduce times beyond the measured group
sizes follow the ring all-reduce factor ``2(g-1)/g``. Rows a profile did not measure but
modelled (one rank: relay and all-reduce from bytes) are listed in ``modelled``. The table
round-trips through a tidy CSV (:data:`CSV_COLUMNS`) and JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ..config import ConfigError
from ..costfit import evaluate as _interp
from ..costfit import measured_range as _range
from .csvio import write_csv
from .tablerows import CSV_COLUMNS, read_csv, rows_of, table_from_rows, variant_key

__all__ = ["CostTable", "CSV_COLUMNS", "candidate_batches", "write_csv", "STORE_DEFAULTS"]

#: seconds per byte of the activation store where a profile did not measure it (an older profile,
#: a FLOP estimate): 2 GB/s to and from host memory (a gathered copy), 0.5 / 1 GB/s to / from disk
STORE_DEFAULTS = {"write:memory": 1 / 2e9, "read:memory": 1 / 2e9, "write:disk": 1 / 0.5e9, "read:disk": 1 / 1e9}


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
    variants: dict[str, dict[int, float]] = field(default_factory=dict)  # "kind:block:mode" -> {rows: s}
    modes: str = ""  # the BlockModes text teacher/student/relay are priced for ("": fp32 contiguous)
    store: dict[str, float] = field(default_factory=dict)  # "write:memory" etc. -> seconds per byte

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
        self.variants = {str(k): _intkeys(v) for k, v in self.variants.items()}
        self.store = {str(k): float(v) for k, v in self.store.items()}
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

    def store_time(self, op: str, medium: str, nbytes: float) -> float:
        """Seconds to ``op`` (``write`` / ``read``) ``nbytes`` to / from the activation store on
        ``medium`` (``memory`` / ``disk``): the profiled bandwidth, else :data:`STORE_DEFAULTS`."""
        key = f"{op}:{medium}"
        return nbytes * self.store.get(key, STORE_DEFAULTS[key])

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
        return rows_of(self)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping]) -> "CostTable":
        """Build a table from tidy rows; several rows of one quantity are combined by median."""
        return table_from_rows(cls, rows)

    def to_csv(self, path: str) -> None:
        write_csv(path, self.to_rows(), CSV_COLUMNS)

    @classmethod
    def from_csv(cls, path: str) -> "CostTable":
        """Read a profile CSV written by ``python -m pipebd profile`` (or :meth:`to_csv`); a file
        read before and unchanged since (same size and modification time) is not parsed again."""
        return read_csv(cls, path)

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
                                   activation_bytes=self.activation_bytes[lo:hi + 1], variants={})

    # ---- compute modes ------------------------------------------------------------------
    def mode_times(self, part: str, block: int) -> dict[str, dict[int, float]]:
        """``{mode label: {rows: seconds}}`` of ``part`` (teacher / student) of ``block``: every
        mode the profile timed (fp32 is the base row, when the table is unpriced)."""
        if self.modes:
            raise ValueError("mode_times() reads an unpriced table (CostTable.priced returns a priced copy)")
        out = {"fp32": getattr(self, part)[block]}
        for key, pts in self.variants.items():
            kind, b, mode = variant_key(key)
            if kind == part and b == block:
                out[mode] = pts
        return out

    def has_modes(self) -> bool:
        """Whether the profile timed any block in a mode other than fp32, contiguous."""
        return any(variant_key(k)[0] in ("teacher", "student") for k in self.variants)

    def priced(self, modes) -> "CostTable":
        """This table priced for ``modes`` (a :class:`~pipebd.modes.BlockModes`): each block's
        teacher and student times of its chosen mode, each relay at its activation's dtype and
        activation bytes scaled to it. A mode the profile did not time keeps the fp32 time
        (listed by :meth:`unpriced`)."""
        if self.modes:
            if self.modes == modes.to_text():
                return self
            raise ValueError("the table is already priced for " + self.modes)
        if modes.num_blocks != self.num_blocks:
            raise ValueError(f"modes for {modes.num_blocks} blocks, table of {self.num_blocks}")
        if modes.is_fp32_contiguous:
            return self
        teacher = [self.variants.get(f"teacher:{i}:{m.label}", self.teacher[i]) if m.label != "fp32"
                   else self.teacher[i] for i, m in enumerate(modes.teacher)]
        student = [self.variants.get(f"student:{i}:{m.label}", self.student[i]) if m.label != "fp32"
                   else self.student[i] for i, m in enumerate(modes.student)]
        relay = list(self.relay)
        act = list(self.activation_bytes)
        for k in range(1, self.num_blocks + 1):
            m = modes.boundary(k)
            act[k] = act[k] * m.bytes_per_element / 4
            if k < self.num_blocks and m.bf16:
                relay[k] = self.variants.get(f"relay:{k}:bf16", relay[k])
        return dataclasses.replace(self, teacher=teacher, student=student, relay=relay, activation_bytes=act,
                                   modes=modes.to_text())

    def unpriced(self, modes) -> list[str]:
        """The parts of ``modes`` this (unpriced) table has no time for (they are priced as fp32)."""
        out = []
        for part in ("teacher", "student"):
            for i, m in enumerate(getattr(modes, part)):
                if m.label != "fp32" and f"{part}:{i}:{m.label}" not in self.variants:
                    out.append(f"{part} {i} {m.label}")
        return out

