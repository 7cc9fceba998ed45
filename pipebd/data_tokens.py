"""Token sequences for the decoder workloads: fixed length, no padding, so relay shapes never change.

- :class:`SyntheticTokens` (the default): sample ``i`` is ``seq_len`` token ids drawn uniformly
  from the vocabulary by one CPU generator seeded by ``mix_seed(seed, salt, i)`` — a pure function
  of (seed, index), as synthetic images are.
- :class:`TextTokens` (``--data text --data-root DIR``): every ``.txt`` and ``.py`` file under
  DIR (sorted paths; ``--data-root stdlib`` is the Python standard library's own sources, a real
  corpus every machine has), tokenised once and cut into consecutive ``seq_len`` windows (the tail
  that does not fill one is dropped). Tokens are UTF-8 bytes (ids 0–255: any vocabulary of at
  least 256) or, with the SmolLM2 teacher, its own tokenizer (:mod:`pipebd.smollm2`). The ids are
  cached under ``$PIPEBD_CACHE`` (default ``~/.cache/pipebd``), keyed by the files' paths, sizes
  and modification times and the tokenizer, and written atomically, so a half-written cache is
  never read.
"""

from __future__ import annotations

import hashlib
import io
import os
import sysconfig
from typing import Sequence

import torch
from torch.utils.data import Dataset

from .errors import DataError
from .fileio import atomic_write_bytes

__all__ = ["SyntheticTokens", "TextTokens", "TOKENIZERS", "resolve_text_root", "text_files", "encode_text",
           "tokenizer_for"]

TOKENIZERS = ("bytes", "smollm2")
_TOKEN_SALT = 0x70CE_5EED
_SUFFIXES = (".txt", ".py")


def _mix(*parts: int) -> int:
    from .data import mix_seed  # one mixer for every dataset

    return mix_seed(*parts)


class SyntheticTokens(Dataset):
    """``size`` sequences of ``seq_len`` uniform token ids below ``vocab``; each a pure function of (seed, index)."""

    def __init__(self, size: int, seq_len: int, vocab: int, seed: int):
        self.size, self.seq_len, self.vocab, self.seed = size, seq_len, vocab, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, _ = self.batch([index])
        return x[0], 0

    def batch(self, indices: Sequence[int], *, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(len(indices), seq_len)`` int64 and zero labels (the targets are the teacher's)."""
        out = torch.empty((len(indices), self.seq_len), dtype=torch.int64, pin_memory=pin)
        g = torch.Generator()
        for k, i in enumerate(indices):
            if not 0 <= i < self.size:
                raise IndexError(f"sample {i} is outside the synthetic token dataset of {self.size}")
            g.manual_seed(_mix(self.seed, _TOKEN_SALT, i))
            torch.randint(self.vocab, (self.seq_len,), generator=g, out=out[k])
        return out, torch.zeros(len(indices), dtype=torch.int64)


def resolve_text_root(root: str | None) -> str:
    """``stdlib`` is the Python standard library's source folder; anything else is a folder path."""
    if root == "stdlib":
        return sysconfig.get_paths()["stdlib"]
    if not root:
        raise DataError("--data text needs --data-root DIR of .txt/.py files (or --data-root stdlib: the Python "
                        "standard library's sources)")
    return root


def text_files(root: str) -> list[str]:
    """The corpus: every .txt/.py file under ``root``, sorted (``site-packages`` left out)."""
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "__pycache__"))
        found += [os.path.join(d, f) for f in sorted(files) if f.endswith(_SUFFIXES)]
    if not found:
        raise DataError(f"--data text: no .txt or .py files under {root!r}")
    return found


def tokenizer_for(teacher_weights: str | None) -> str:
    """The tokenizer of a run's text: SmolLM2's with the SmolLM2 teacher, else UTF-8 bytes."""
    return "smollm2" if teacher_weights == "smollm2" else "bytes"


def encode_text(text: str, tokenizer: str) -> list[int]:
    """Token ids of ``text``: its UTF-8 bytes, or the SmolLM2 tokenizer's ids (no special tokens)."""
    if tokenizer == "bytes":
        return list(text.encode("utf-8"))
    from . import smollm2

    return smollm2.tokenizer()(text, add_special_tokens=False)["input_ids"]


def _cache_dir() -> str:
    return os.environ.get("PIPEBD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pipebd")


class TextTokens(Dataset):
    """Consecutive ``seq_len`` windows of a tokenised text corpus (module docstring)."""

    def __init__(self, root: str, seq_len: int, vocab: int, tokenizer: str = "bytes",
                 limit: int | None = None):
        if tokenizer not in TOKENIZERS:
            raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
        if tokenizer == "bytes" and vocab < 256:
            raise DataError(f"byte tokens need a vocabulary of at least 256, the workload has {vocab}")
        self.root, self.seq_len, self.tokenizer = resolve_text_root(root), seq_len, tokenizer
        ids = self._ids(limit)
        n = ids.numel() // seq_len
        if n < 1:
            raise DataError(f"--data text: the corpus under {self.root!r} has {ids.numel()} tokens, "
                            f"fewer than one sequence of {seq_len}")
        self.tokens = ids[:n * seq_len].view(n, seq_len)
        if int(self.tokens.max()) >= vocab:
            raise DataError(f"the {tokenizer} tokenizer gives ids up to {int(self.tokens.max())}, outside the "
                            f"workload's vocabulary of {vocab}")

    def _ids(self, limit: int | None) -> torch.Tensor:
        files = text_files(self.root)
        key = hashlib.sha256(repr((self.tokenizer, limit, self.seq_len, [
            (f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files])).encode()).hexdigest()[:20]
        path = os.path.join(_cache_dir(), f"tokens-{key}.pt")
        if os.path.exists(path):
            return torch.load(path, weights_only=True)
        ids: list[int] = []
        want = None if limit is None else limit * self.seq_len
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                ids += encode_text(fh.read(), self.tokenizer)
            if want is not None and len(ids) >= want:
                break
        t = torch.tensor(ids, dtype=torch.int64)
        try:
            buf = io.BytesIO()
            torch.save(t, buf)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_bytes(path, buf.getvalue())
        except OSError:  # a read-only home: tokenise again next time
            pass
        return t

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.tokens[index], 0

    def batch(self, indices: Sequence[int], *, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tokens[torch.as_tensor(list(indices), dtype=torch.int64)]
        return (x.pin_memory() if pin else x), torch.zeros(len(indices), dtype=torch.int64)
