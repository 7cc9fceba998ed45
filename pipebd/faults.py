"""Fault injection, a testing aid: ``--inject-fault RANK:STEP:raise|kill|hang`` makes rank RANK
raise an exception, die of SIGKILL, or hang forever right after it finishes training step STEP.
Tests use it to prove that a failing rank ends the whole run promptly and names itself."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from .config import ConfigError

__all__ = ["Fault", "parse_fault", "InjectedFault"]

KINDS = ("raise", "kill", "hang")


class InjectedFault(RuntimeError):
    """The exception an injected ``raise`` fault throws."""


@dataclass(frozen=True)
class Fault:
    rank: int
    step: int
    kind: str

    def fire(self) -> None:
        if self.kind == "raise":
            raise InjectedFault(f"injected fault on rank {self.rank} at step {self.step}")
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:  # hang
            time.sleep(3600)


def parse_fault(spec: str | None, devices: int) -> Fault | None:
    if spec is None:
        return None
    parts = spec.split(":")
    if len(parts) != 3 or parts[2] not in KINDS or not parts[0].isdigit() or not parts[1].isdigit():
        raise ConfigError(f"--inject-fault must be RANK:STEP:KIND with KIND one of {', '.join(KINDS)}, got {spec!r}")
    rank, step = int(parts[0]), int(parts[1])
    if rank >= devices:
        raise ConfigError(f"--inject-fault names rank {rank}, but the run has ranks 0..{devices - 1}")
    return Fault(rank, step, parts[2])
