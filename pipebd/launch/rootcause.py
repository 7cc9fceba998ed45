"""Why a locally spawned run failed: the rank that caused it, not the peers it took down.

When one rank fails, its peers fail too, a moment later and for a different reason: their
connection to it closed, or a collective timed out waiting for it. :func:`root_cause` reads
each rank's end (the error file torch.multiprocessing leaves for a rank that raised, its
exit code or signal, its heartbeat age from :class:`~pipebd.faults.HeartbeatWatch`) and
names the rank that raised a non-communication error, died of a signal nobody sent it, or
hung (alive, no progress) while the others timed out (DESIGN.md §5: a failing rank takes the
run down with a non-zero exit that names the rank and the cause).
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import time

from ..faults import HeartbeatWatch

__all__ = ["RunFailed", "RunInterrupted", "root_cause", "last_error_line"]


class RunFailed(RuntimeError):
    """A rank failed; the message names the rank and the cause."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


class RunInterrupted(KeyboardInterrupt):
    """The launcher got SIGINT or SIGTERM; every rank was stopped."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


#: Last lines that mean "my peer went away or was too slow", not "I am the cause".
_COMM_ERROR = re.compile(
    r"connection (closed|reset|refused|aborted)|timed out|timeout|broken pipe|distbackenderror|distnetworkerror|"
    r"diststoreerror|gloo|nccl|socket|by peer|rendezvous", re.IGNORECASE)


def last_error_line(path: str) -> tuple[str, str] | None:
    """(last line, whole traceback) a rank left in its error file, or None."""
    if not (os.access(path, os.R_OK) and os.path.getsize(path) > 0):
        return None
    with open(path, "rb") as fh:
        tb = pickle.load(fh)  # written by torch.multiprocessing in our own child, a local temp file
    lines = [ln for ln in str(tb).strip().splitlines() if ln.strip()]
    return (lines[-1].strip() if lines else "unknown error"), str(tb)


def root_cause(procs: list, error_files: list[str], exited_at: dict[int, float], stopped: set[int],
               watch: HeartbeatWatch, timeout_s: float, stalled: bool) -> RunFailed:
    """Name the rank that caused the failure, not one that merely lost its peer.

    In order: a rank that raised a non-communication error, or died of a signal the launcher
    did not send (SIGKILL: killed from outside or out of memory), or exited non-zero by
    itself; else a rank that was still alive but had made no progress while its peers timed
    out or the whole run stalled (it hung); else the first rank whose communication failed.
    """
    roots: list[tuple[float, int, str]] = []
    victims: list[tuple[float, int, str]] = []
    for i, p in enumerate(procs):
        if i in stopped or p.exitcode == 0:
            continue
        t = exited_at.get(i, float("inf"))
        err = last_error_line(error_files[i])
        if err is not None:
            (victims if _COMM_ERROR.search(err[0]) else roots).append((t, i, err[0]))
        elif p.exitcode is not None and p.exitcode < 0:
            name = _signal_name(-p.exitcode)
            hint = " (killed from outside, or by the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
            roots.append((t, i, f"killed by signal {name}{hint}"))
        else:
            roots.append((t, i, f"exited with code {p.exitcode}"))
    others = sorted({i for _t, i, _m in victims} | (stopped if roots else set()))
    if roots:
        _t, rank, msg = min(roots)
        return RunFailed(f"rank {rank} failed: {msg}{_also(others, rank)}", rank)
    now = time.monotonic()
    hung = [i for i in sorted(stopped) if watch.age(i, now) >= timeout_s / 2]
    if hung and (victims or stalled):
        rank = max(hung, key=lambda i: (watch.age(i, now), -i))
        age = watch.age(rank, now)
        waiting = sorted({i for _t, i, _m in victims} | (set(hung) - {rank}))
        tail = f"; rank(s) {', '.join(map(str, waiting))} timed out waiting for it" if waiting else ""
        return RunFailed(f"rank {rank} hung (no progress for {age:.0f} s, --timeout {timeout_s:g} s){tail}", rank)
    if victims:
        _t, rank, msg = min(victims)
        return RunFailed(f"rank {rank} failed: {msg} (a communication error: a peer failed, was stopped, or is "
                         f"slower than --timeout {timeout_s:g} s){_also(sorted(stopped), rank)}", rank)
    rank = min(stopped) if stopped else 0
    return RunFailed(f"rank {rank} failed for an unknown reason (exit code {procs[rank].exitcode})", rank)


def _also(ranks: list[int], rank: int) -> str:
    rest = [r for r in ranks if r != rank]
    return f"; rank(s) {', '.join(map(str, rest))} failed or were stopped as a consequence" if rest else ""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
