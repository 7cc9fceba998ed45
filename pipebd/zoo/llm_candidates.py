"""The ``--candidates`` syntax of the decoder workloads (:mod:`pipebd.zoo.llm`): which replacement
blocks each block's library holds.

A candidate is ``ffnF`` (FFN width × F, 0 < F <= 1), ``kvK`` (K key/value heads; K divides the
heads), ``linattn``, ``noattn`` or ``noffn``. A library text is a preset (``uniform``:
``ffn0.5,kv1`` on every block; ``uneven``: ``ffn1,ffn0.5,ffn0.25,ffn0.1,kv1,linattn`` on the first
third of the blocks, ``ffn0.5,kv1`` elsewhere), one list for every block, or ranges of blocks
(``0-3=ffn1,ffn0.5;4-9=ffn0.5``) that together cover every block once.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from .registry import WorkloadError

if TYPE_CHECKING:
    from .llm import LlamaArch

__all__ = ["CANDIDATES", "PRESETS", "parse_candidates"]

#: candidate name -> (kind, value) pattern; see the module docstring.
CANDIDATES = {"ffn": r"ffn(?P<v>1|1\.0|0?\.\d+)", "kv": r"kv(?P<v>\d+)", "linattn": r"linattn",
              "noattn": r"noattn", "noffn": r"noffn"}
PRESETS = {"uniform": "ffn0.5,kv1", "uneven": None}  # uneven depends on the block count
_UNEVEN_EARLY, _UNEVEN_LATE = "ffn1,ffn0.5,ffn0.25,ffn0.1,kv1,linattn", "ffn0.5,kv1"


def _check_name(name: str, arch: LlamaArch) -> str:
    for kind, pattern in CANDIDATES.items():
        m = re.fullmatch(pattern, name)
        if m is None:
            continue
        if kind == "ffn" and not 0 < float(m["v"]) <= 1:
            break
        if kind == "kv" and (int(m["v"]) < 1 or arch.heads % int(m["v"])):
            raise WorkloadError(f"candidate {name!r}: the KV heads must divide the {arch.heads} attention heads")
        return name
    raise WorkloadError(f"unknown candidate {name!r}; candidates are ffnF (0 < F <= 1, e.g. ffn0.5), kvK "
                        "(K divides the heads), linattn, noattn, noffn")


def parse_candidates(text: str | None, blocks: int, arch: LlamaArch) -> list[list[str]]:
    """Every block's candidate names from ``--candidates`` text (module docstring); checked."""
    text = (text or "uniform").strip()
    if text == "uneven":
        early = max(1, math.ceil(blocks / 3))
        return [_UNEVEN_EARLY.split(",") if b < early else _UNEVEN_LATE.split(",") for b in range(blocks)]
    text = PRESETS.get(text) or text
    if "=" not in text:
        libs: list[list[str] | None] = [[n.strip() for n in text.split(",")] for _ in range(blocks)]
    else:
        libs = [None] * blocks
        for part in filter(None, (p.strip() for p in text.split(";"))):
            rng, _, names = part.partition("=")
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", rng)
            if m is None or not names.strip():
                raise WorkloadError(f"--candidates part {part!r}: write BLOCKS=NAMES, e.g. 0-3=ffn1,ffn0.5")
            lo, hi = int(m[1]), int(m[2] or m[1])
            if not 0 <= lo <= hi < blocks:
                raise WorkloadError(f"--candidates part {part!r}: blocks {lo}-{hi} are outside 0-{blocks - 1}")
            for b in range(lo, hi + 1):
                if libs[b] is not None:
                    raise WorkloadError(f"--candidates: block {b} is given twice")
                libs[b] = [n.strip() for n in names.split(",")]
        missing = [b for b, lib in enumerate(libs) if lib is None]
        if missing:
            raise WorkloadError(f"--candidates: blocks {missing} have no candidates; cover every block 0-{blocks - 1}")
    for lib in libs:
        if not lib or "" in lib:
            raise WorkloadError(f"--candidates {text!r}: an empty candidate name")
        if len(set(lib)) != len(lib):
            raise WorkloadError(f"--candidates {text!r}: a block lists a candidate twice")
        for name in lib:
            _check_name(name, arch)
    return libs  # type: ignore[return-value]
