"""Fault injection and hang detection: how a run proves that it always ends (DESIGN.md §5).

Injection, a testing aid: ``--inject-fault RANK:STEP:raise|kill|hang`` makes rank RANK raise
an exception, die of SIGKILL, or hang forever right after it finishes training step STEP
(the first time :meth:`~pipebd.runtime.RankContext.after_step` sees that step). Tests use
it to show that a failing rank ends the whole run promptly and that the error names it.
``python -m pipebd profile`` honours it too, with STEP counting the profiler's measured
configurations instead of training steps (:mod:`pipebd.profiler`).

Detection of hangs, for locally spawned runs: every rank runs a :class:`Heartbeat`, a daemon
thread that publishes the rank's progress counter (bumped by ``after_step``, by the
runner's phase changes, and by the profiler after every timed trial) to the launcher's
``TCPStore`` under ``pipebd/hb/RANK`` (:mod:`pipebd.launch` starts it in every spawned
rank). Bumping is an integer increment on the training thread; only the heartbeat thread
talks to the store, at most every ``interval`` seconds, so the measured steps pay nothing
for it. The
launcher's :class:`HeartbeatWatch` notes when each counter last changed (by its own clock)
and reports a *stall* when no live rank has made progress for ``--timeout`` seconds. A
rank blocked in a collective raises the process group's timeout error at about the same
time; the launcher's root-cause analysis (:mod:`pipebd.launch.rootcause`) then names the
rank that is alive but made no progress as the one that hung, and its peers' timeouts as
consequences.

Under ``torchrun`` there is no launcher store: a hung rank is detected by its peers'
process-group timeout (``--timeout``), and torchrun's agent stops the remaining workers.
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import threading
import time
from dataclasses import dataclass

from .config import ConfigError

__all__ = ["Fault", "parse_fault", "InjectedFault", "Heartbeat", "HeartbeatWatch", "KINDS", "heartbeat_key"]

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
        while True:  # hang: sleep forever, holding nothing (a real hang might hold the GIL)
            time.sleep(3600)


def parse_fault(spec: str | None, devices: int) -> Fault | None:
    """Parse ``RANK:STEP:KIND``; raise :class:`ConfigError` naming the expected syntax."""
    if spec is None:
        return None
    parts = spec.split(":")
    if len(parts) != 3 or parts[2] not in KINDS or not parts[0].isdigit() or not parts[1].isdigit():
        raise ConfigError(f"--inject-fault must be RANK:STEP:KIND with KIND one of {', '.join(KINDS)}, got {spec!r}; "
                          "e.g. --inject-fault 1:2:kill")
    rank, step = int(parts[0]), int(parts[1])
    if rank >= devices:
        raise ConfigError(f"--inject-fault names rank {rank}, but the run has ranks 0..{devices - 1}; "
                          f"pick a rank below --devices {devices}")
    return Fault(rank, step, parts[2])


#: Seconds a rank may take to start (spawn, imports) before its first heartbeat, at least.
STARTUP_S = 60.0


def heartbeat_key(rank: int) -> str:
    return f"pipebd/hb/{rank}"


class Heartbeat:
    """Rank side: a progress counter, published to the launcher's store by a daemon thread.

    ``beat()`` is all the training thread does (an integer increment). The thread owns its
    own store client (a separate connection, so it never interleaves with the process
    group's use of the store) and stops quietly if the launcher has gone away.
    """

    def __init__(self, rank: int, host: str, port: int, *, interval_s: float = 1.0):
        import torch.distributed as dist

        self.rank = rank
        self.count = 0
        self.interval_s = interval_s
        self._published = -1
        self._stop = threading.Event()
        self._store = dist.TCPStore(host, port, world_size=None, is_master=False,
                                    timeout=_dt.timedelta(seconds=max(5.0, 4 * interval_s)))
        self._publish()
        self._thread = threading.Thread(target=self._loop, name=f"pipebd-heartbeat-{rank}", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """Record progress (called on the training thread; no I/O)."""
        self.count += 1

    def _publish(self) -> None:
        c = self.count
        if c != self._published:
            self._store.set(heartbeat_key(self.rank), str(c))
            self._published = c

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._publish()
            except Exception:  # noqa: BLE001 — the launcher is gone; the rank will be stopped by pdeathsig
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval_s + 1)
        try:
            self._publish()
        except Exception:  # noqa: BLE001
            pass


class HeartbeatWatch:
    """Launcher side: when did each rank's counter last change (launcher's monotonic clock)?"""

    def __init__(self, store, world_size: int, *, now: float | None = None):
        self.store = store
        self.world_size = world_size
        start = time.monotonic() if now is None else now
        for r in range(world_size):  # present before any rank starts, so reads never block
            store.set(heartbeat_key(r), "-1")
        self.values = ["-1"] * world_size
        self.changed_at = [start] * world_size

    def poll(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for r in range(self.world_size):
            try:
                v = self.store.get(heartbeat_key(r)).decode()
            except Exception:  # noqa: BLE001 — a store hiccup is not progress and not a failure
                continue
            if v != self.values[r]:
                self.values[r] = v
                self.changed_at[r] = now

    def age(self, rank: int, now: float | None = None) -> float:
        """Seconds since ``rank`` last made progress."""
        return (time.monotonic() if now is None else now) - self.changed_at[rank]

    def progress(self, rank: int) -> int:
        return int(self.values[rank])

    def started(self, rank: int) -> bool:
        """Whether ``rank`` has published a heartbeat yet (it is past interpreter start-up)."""
        return self.values[rank] != "-1"

    def stalled(self, alive: list[int], timeout_s: float, now: float | None = None) -> bool:
        """True when every live rank has made no progress for ``timeout_s`` seconds.

        A rank that has not published its first heartbeat is still starting (interpreter,
        imports; slow on a loaded host) and counts as stalled only after
        ``max(timeout_s, STARTUP_S)`` seconds.
        """
        return bool(alive) and all(
            self.age(r, now) >= (timeout_s if self.started(r) else max(timeout_s, STARTUP_S)) for r in alive)
