"""Workload registry: named builders of (teacher blocks, student blocks), timm-style.

A *workload* is what blockwise distillation trains (Pipe-BD, Jang et al. 2023, §2): a frozen
teacher cut into ``n`` consecutive blocks and a student with the same number of blocks, where
student block ``i`` learns to map the teacher's input of block ``i`` to the teacher's output
of block ``i``. Builders are registered by name with :func:`register_workload` and looked up
with :func:`build_workload`; nothing switches on names in ``if`` chains.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import WorkloadError

__all__ = [
    "WorkloadOptions",
    "Workload",
    "WorkloadError",
    "register_workload",
    "build_workload",
    "workload_names",
    "canonical_name",
    "load_teacher_weights",
    "BlockOwnership",
    "NotOwned",
    "ShapeError",
    "meta_shapes",
]

log = logging.getLogger("pipebd.zoo")


@dataclass(frozen=True)
class WorkloadOptions:
    """Knobs every workload accepts. ``None`` means the workload's own default."""

    resolution: int | None = None
    width_mult: float = 1.0
    num_classes: int | None = None
    teacher_weights: str | None = None
    seed: int = 0
    student_bn: bool = True  # tiny only: a BN-free student for exact-equivalence checks
    nas_zero: bool = True  # supernets: a Zero (skip) choice on every cell but the first of each stage
    # decoder (language-model) workloads, pipebd.zoo.llm
    seq_len: int | None = None  # tokens per sample
    layers_per_block: int = 1  # decoder layers per block
    candidates: str | None = None  # the candidate library per block (None: the "uniform" preset)
    logits_kd: bool = False  # the last block's output is the logits, distilled with KL

    def sizes(self) -> "WorkloadOptions":
        """These options without what leaves shapes, FLOPs and parameter counts alone (the teacher's
        weights and the seed): the key of everything counted on the meta device."""
        return dataclasses.replace(self, teacher_weights=None, seed=0)


@dataclass(frozen=True)
class BlockOwnership:
    """The blocks one rank builds: the teacher blocks its schedule runs and the student blocks it
    trains (DESIGN.md §5: a rank owning 1/N of the blocks holds about 1/N of the parameters)."""

    teacher: frozenset[int]
    student: frozenset[int]

    @classmethod
    def of(cls, teacher, student) -> "BlockOwnership":
        return cls(frozenset(int(b) for b in teacher), frozenset(int(b) for b in student))


class NotOwned(nn.Module):
    """Stands in for a block this rank did not build (no parameters, no memory); using it is a bug
    in the schedule's ownership, and says so."""

    def __init__(self, kind: str, index: int):
        super().__init__()
        self.kind, self.index = kind, index

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.kind} block {self.index} was not built on this rank: its schedule has no "
                           f"{self.kind.upper()} action for it (pipebd.zoo.BlockOwnership)")


@dataclass
class Workload:
    """A built workload: block lists plus what strategies and data need to know."""

    name: str
    teacher: list[nn.Module]
    student: list[nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    default_dataset: str
    options: WorkloadOptions
    boundary_shapes: list[tuple[int, ...]] = field(default_factory=list)
    input_dtype: torch.dtype = torch.float32  # token ids: torch.int64
    tokens_per_sample: int | None = None  # sequence models: tokens per sample (throughput in tokens/s)

    def example_input(self, rows: int) -> torch.Tensor:
        """A zero batch of ``rows`` samples (on the current default device)."""
        return torch.zeros((rows, *self.input_shape), dtype=self.input_dtype)

    @property
    def num_blocks(self) -> int:
        return len(self.teacher)

    @property
    def is_nas(self) -> bool:
        return any(getattr(b, "is_supernet", False) for b in self.student)


Builder = Callable[..., Workload]
_BUILDERS: dict[str, Builder] = {}
_PARTIAL: set[str] = set()  # builders that take ``owned`` and build only those blocks
_ALIASES: dict[str, str] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_workload(name: str, *, aliases: tuple[str, ...] = (), description: str = "", partial: bool = False):
    """Decorator: register ``fn(options) -> Workload`` under ``name`` (and ``aliases``).

    ``partial``: the builder is ``fn(options, owned)`` and instantiates only the blocks ``owned``
    names (:class:`BlockOwnership`; ``None``: all), with an initialisation that does not depend on
    which blocks are built. Other builders build every block and :func:`build_workload` drops the
    ones a rank does not own (their memory is freed, but the build's peak includes them)."""

    def deco(fn: Builder) -> Builder:
        if name in _BUILDERS or name in _ALIASES:
            raise RuntimeError(f"workload {name!r} registered twice")
        _BUILDERS[name] = fn
        if partial:
            _PARTIAL.add(name)
        _DESCRIPTIONS[name] = description
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return deco


def workload_names(*, include_aliases: bool = False) -> list[str]:
    names = sorted(_BUILDERS)
    return names + sorted(_ALIASES) if include_aliases else names


def describe(name: str) -> str:
    return _DESCRIPTIONS[canonical_name(name)]


def canonical_name(name: str) -> str:
    """Resolve an alias; raise a :class:`WorkloadError` listing the choices when unknown."""
    if name in _BUILDERS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise WorkloadError(
        f"unknown workload {name!r}; choose one of: {', '.join(workload_names(include_aliases=True))} "
        "(`python -m pipebd zoo` lists them with their sizes)"
    )


def build_workload(name: str, options: WorkloadOptions | None = None, *, probe: bool = True,
                   owned: BlockOwnership | None = None) -> Workload:
    """Build workload ``name``; initialisation is a function of ``options.seed`` alone.

    With ``probe`` a zero batch is pushed through every block to check that shapes chain
    (teacher ``i`` output = student ``i`` output = teacher ``i+1`` input). With ``owned`` only
    those teacher and student blocks are built (the others are :class:`NotOwned`), each with the
    same weights as in the full build; the boundary shapes then come from a probe of the whole
    workload on the meta device.
    """
    options = options or WorkloadOptions()
    canon = canonical_name(name)
    if options.resolution is not None and options.resolution < 8:
        raise WorkloadError(f"resolution must be >= 8 pixels, got {options.resolution}")
    if options.width_mult <= 0:
        raise WorkloadError(f"width multiplier must be > 0, got {options.width_mult}")
    if options.num_classes is not None and options.num_classes < 2:
        raise WorkloadError(f"number of classes must be >= 2, got {options.num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        wl = _BUILDERS[canon](options, owned) if canon in _PARTIAL else _BUILDERS[canon](options)
    wl.name = canon
    if owned is not None and canon not in _PARTIAL:
        wl.teacher = [t if i in owned.teacher else NotOwned("teacher", i) for i, t in enumerate(wl.teacher)]
        wl.student = [s if i in owned.student else NotOwned("student", i) for i, s in enumerate(wl.student)]
    for blk in wl.teacher:
        blk.eval()
        blk.requires_grad_(False)
    if probe:
        wl.boundary_shapes = probe_shapes(wl) if owned is None else list(meta_shapes(canon, options.sizes()))
    return wl


class ShapeError(WorkloadError):
    """The blocks' shapes do not chain (:func:`probe_shapes`); a bad option is a plain :class:`WorkloadError`."""


_META_SHAPES: dict[tuple, tuple | ShapeError] = {}


def meta_shapes(name: str, sizes: WorkloadOptions) -> tuple[tuple[int, ...], ...]:
    """The boundary shapes of workload ``name`` (options without weights or seed: :meth:`WorkloadOptions.sizes`),
    probed on the meta device: no memory, no compute. Cached, the :class:`ShapeError` of shapes
    that do not chain included; a bad option raises its :class:`WorkloadError` from the build."""
    key = (canonical_name(name), sizes)
    if key not in _META_SHAPES:
        with torch.device("meta"):
            wl = build_workload(name, sizes, probe=False)
            try:
                _META_SHAPES[key] = tuple(probe_shapes(wl))
            except ShapeError as e:
                _META_SHAPES[key] = e
    found = _META_SHAPES[key]
    if isinstance(found, ShapeError):
        raise found
    return found


def probe_shapes(wl: Workload) -> list[tuple[int, ...]]:
    """Check that block shapes chain; return the per-sample activation shape at each boundary.

    Element 0 is the input shape, element ``i+1`` the output of block ``i``.
    """
    x = wl.example_input(2)
    shapes = [tuple(x.shape[1:])]
    with torch.no_grad():
        for i, (t, s) in enumerate(zip(wl.teacher, wl.student, strict=True)):
            was_training = s.training
            s.eval()
            try:
                y = t(x)
            except RuntimeError as e:
                raise ShapeError(
                    f"{wl.name}: teacher block {i} cannot take the output of block {i - 1} "
                    f"(shape {tuple(x.shape[1:])}): {e}"
                ) from e
            for path in _probe_paths(s):
                if path is not None:
                    s.set_path(path)
                try:
                    z = s(x)
                except RuntimeError as e:
                    raise ShapeError(
                        f"{wl.name}: student block {i} cannot take input of shape {tuple(x.shape[1:])}: {e}"
                    ) from e
                if getattr(s, "candidate_outputs", False):  # a library: one output per candidate
                    z = z[0]
                if z.shape != y.shape:
                    raise ShapeError(
                        f"{wl.name}: student block {i} outputs {tuple(z.shape[1:])} but teacher block {i} "
                        f"outputs {tuple(y.shape[1:])}; they must match"
                    )
            s.train(was_training)
            x = y
            shapes.append(tuple(y.shape[1:]))
    return shapes


def _probe_paths(block: nn.Module):
    """The paths to probe a student block with: none for fixed blocks, the extremes for supernets."""
    if not getattr(block, "is_supernet", False):
        return [None]
    return [tuple(0 for _ in block.choices_per_cell), tuple(c - 1 for c in block.choices_per_cell)]


def load_teacher_weights(model: nn.Module, path: str | None, workload: str) -> None:
    """Load a full-teacher state dict (strict keys) or say once that the teacher is random."""
    if path is None:
        log.info("%s: no --teacher-weights given; the teacher is randomly initialised", workload)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WorkloadError(f"teacher weights file {path!r} does not exist") from None
    except Exception as e:  # unpickling refused or corrupt file
        raise WorkloadError(
            f"teacher weights {path!r} could not be loaded with torch.load(weights_only=True): {e}. "
            "Save the teacher with torch.save(model.state_dict(), PATH)."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WorkloadError(f"teacher weights {path!r} are not a state dict (a mapping of names to tensors)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        missing, unexpected = _key_diff(model, state)
        raise WorkloadError(
            f"teacher weights {path!r} do not fit {workload}'s teacher: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}); shape errors: {str(e).splitlines()[-1].strip() if not missing and not unexpected else 'n/a'}"
        ) from None
    log.info("%s: loaded teacher weights from %s", workload, path)


def _key_diff(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    want = set(model.state_dict())
    have = set(state)
    return sorted(want - have), sorted(have - want)


def replace_options(options: WorkloadOptions, **kw) -> WorkloadOptions:
    return dataclasses.replace(options, **kw)
