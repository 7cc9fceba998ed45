"""Progress reporting on rank 0: a tqdm bar on a terminal, a plain line every few seconds
otherwise (logs stay readable), nothing with ``--quiet`` or on other ranks."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    def __init__(self, *, enabled: bool, batch_size: int, interval_s: float = 5.0):
        self.enabled = enabled
        self.batch_size = batch_size
        self.interval_s = interval_s
        self._bar: tqdm | None = None
        self._total = 0
        self._done = 0
        self._desc = ""
        self._t0 = self._last = 0.0

    def start(self, total: int, desc: str) -> None:
        """Begin a phase of ``total`` steps (dp/ls call this once per block)."""
        self.close()
        self._total, self._done, self._desc = total, 0, desc
        self._t0 = self._last = time.perf_counter()
        if self.enabled and sys.stderr.isatty():
            self._bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self._done += n
        now = time.perf_counter()
        rate = self._done * self.batch_size / max(now - self._t0, 1e-9)
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix_str(f"{rate:.0f} samples/s", refresh=False)
        elif now - self._last >= self.interval_s or self._done == self._total:
            self._last = now
            print(f"[pipebd] {self._desc}: step {self._done}/{self._total}, {rate:.1f} samples/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
