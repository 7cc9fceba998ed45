"""Compute modes: the precision and memory format one block's teacher or student runs in.

A :class:`Mode` is a precision (``fp32``, or ``bf16`` autocast with fp32 master weights, fp32
optimizer state and the loss in fp32) and a memory format (contiguous NCHW, or channels-last
NHWC for convolutional activations). Labels: ``fp32``, ``bf16``, ``fp32-cl``, ``bf16-cl``.

:class:`BlockModes` is the choice for every block, teacher and student separately; it is part
of the schedule (the interpreter runs it, the cost model prices it). The data it implies:

- the activation entering block ``k >= 1`` (what the teacher of block ``k - 1`` writes, relays
  and caches) is in that teacher's compute dtype and format — a bf16 teacher halves relay bytes;
  boundary 0 (the loaded batch) is fp32, contiguous;
- a consumer in another mode converts its input explicitly on entry (:meth:`Mode.prepare`:
  a copy only where dtype or format differ, inside the consumer's timed action).

The choice is made per block from the profile (:func:`pipebd.costmodel.choose_modes`) unless
the user pins it (``--precision``, ``--teacher-precision``, ``--student-precision``,
``--memory-format``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

from .errors import ConfigError

__all__ = ["Mode", "BlockModes", "FP32", "MODES", "PRECISIONS", "MEMORY_FORMATS", "candidate_modes", "native_bf16", "FP32_PINS"]

PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("contiguous", "channels-last")


@dataclass(frozen=True)
class Mode:
    """One block part's precision and memory format."""

    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")

    @property
    def label(self) -> str:
        return self.precision + ("-cl" if self.channels_last else "")

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, label: str) -> "Mode":
        text = (label or "fp32").strip()
        prec, _, fmt = text.partition("-")
        if prec not in PRECISIONS or fmt not in ("", "cl"):
            raise ConfigError(f"unknown compute mode {label!r}; expected one of "
                              f"{', '.join(m.label for m in MODES)}")
        return cls(prec, fmt == "cl")

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def dtype(self):
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    @property
    def bytes_per_element(self) -> int:
        return 2 if self.bf16 else 4

    def autocast(self, device):
        """bf16 autocast on ``device`` (fp32 master weights stay fp32), or nothing."""
        if not self.bf16:
            return nullcontext()
        import torch

        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def memory_format(self):
        import torch

        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare(self, x):
        """``x`` as this mode consumes it: fp32 for an fp32 block (floating inputs), NHWC for a channels-last one
        (4-D only); returns ``x`` itself when nothing differs (no copy)."""
        import torch

        cast = not self.bf16 and x.is_floating_point() and x.dtype != torch.float32  # token ids stay ids
        return self._formatted(x.float() if cast else x)

    def output(self, y):
        """A teacher block's output as the boundary stores it: this mode's dtype and format."""
        return self._formatted(y.to(self.dtype))

    def _formatted(self, t):
        if t.dim() == 4 and not t.is_contiguous(memory_format=self.memory_format()):
            t = t.contiguous(memory_format=self.memory_format())
        return t

    def apply_to(self, module):
        """Convert ``module``'s 4-D parameters to this mode's memory format (values unchanged)."""
        if self.channels_last:
            module.to(memory_format=self.memory_format())
        return module


FP32 = Mode()
#: RunConfig fields that pin a run to fp32 contiguous (``cfg.replace(**FP32_PINS)``): the baseline
#: ``bench --precision`` and ``precision-check`` compare against
FP32_PINS = {"teacher_precision": "fp32", "student_precision": "fp32", "memory_format": "contiguous", "modes": None}
MODES = (Mode("fp32"), Mode("bf16"), Mode("fp32", True), Mode("bf16", True))


def candidate_modes(precision: str = "auto", memory_format: str = "auto", *, conv: bool = True) -> tuple[Mode, ...]:
    """The modes a part may run in under the pins: ``precision`` fp32|bf16|auto, ``memory_format``
    contiguous|channels-last|auto (channels-last only for convolutional workloads)."""
    if precision not in ("auto", *PRECISIONS):
        raise ConfigError(f"--precision {precision!r}: choose fp32, bf16 or auto")
    if memory_format not in ("auto", *MEMORY_FORMATS):
        raise ConfigError(f"--memory-format {memory_format!r}: choose contiguous, channels-last or auto")
    if memory_format == "channels-last" and not conv:
        raise ConfigError("--memory-format channels-last applies to convolutional workloads (4-D activations); "
                          "this workload has none: use --memory-format contiguous or auto")
    precs = PRECISIONS if precision == "auto" else (precision,)
    fmts = {"auto": (False, True) if conv else (False,), "contiguous": (False,), "channels-last": (True,)}[memory_format]
    return tuple(Mode(p, c) for c in fmts for p in precs)


def native_bf16(device) -> bool:
    """Whether ``device`` computes bf16 natively: on CUDA ``torch.cuda.is_bf16_supported()``; on
    the CPU oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX-512 or
    better — on an AVX2-only CPU bf16 is emulated, several times slower than fp32). The profiler
    leaves bf16 out of ``auto``'s candidates where it is not native (a pin still times it)."""
    import torch

    if getattr(device, "type", device) == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class BlockModes:
    """Per block, the teacher's and the student's :class:`Mode`; also how it is written
    (``teacher=bf16-cl*5;student=fp32-cl,bf16-cl,...``, runs of a mode compressed as ``mode*k``)."""

    teacher: tuple[Mode, ...]
    student: tuple[Mode, ...]

    def __post_init__(self) -> None:
        if len(self.teacher) != len(self.student):
            raise ConfigError(f"compute modes: {len(self.teacher)} teacher modes but {len(self.student)} student modes")

    @classmethod
    def uniform(cls, num_blocks: int, teacher: Mode = FP32, student: Mode | None = None) -> "BlockModes":
        return cls((teacher,) * num_blocks, ((student or teacher),) * num_blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.teacher)

    @property
    def is_fp32_contiguous(self) -> bool:
        return all(m == FP32 for m in self.teacher + self.student)

    @property
    def lossy(self) -> bool:
        """Whether any part computes in bf16 (same math as a reference in the same modes, not as fp32)."""
        return any(m.bf16 for m in self.teacher + self.student)

    def boundary(self, k: int) -> Mode:
        """The mode of the activation entering block ``k`` (``k = n``: the logits)."""
        return FP32 if k == 0 else self.teacher[k - 1]

    def boundary_bytes_factor(self, k: int) -> float:
        return self.boundary(k).bytes_per_element / 4

    @staticmethod
    def _runs(modes: Sequence[Mode]) -> str:
        out, i = [], 0
        while i < len(modes):
            j = i
            while j + 1 < len(modes) and modes[j + 1] == modes[i]:
                j += 1
            out.append(modes[i].label + (f"*{j - i + 1}" if j > i else ""))
            i = j + 1
        return ",".join(out)

    def to_text(self) -> str:
        return f"teacher={self._runs(self.teacher)};student={self._runs(self.student)}"

    def __str__(self) -> str:
        return self.to_text()

    @classmethod
    def from_text(cls, text: str) -> "BlockModes":
        parts = {}
        for chunk in text.split(";"):
            key, _, body = chunk.partition("=")
            modes = []
            for item in body.split(","):
                label, _, count = item.partition("*")
                modes += [Mode.parse(label)] * (int(count) if count else 1)
            parts[key.strip()] = tuple(modes)
        if set(parts) != {"teacher", "student"}:
            raise ConfigError(f"compute modes {text!r}: expected 'teacher=...;student=...'")
        return cls(parts["teacher"], parts["student"])
