"""Spawn local ranks and supervise them until every one has ended (DESIGN.md §5).

:func:`spawn_supervised` opens a ``TCPStore`` on 127.0.0.1 (an OS-chosen free port: no port
race, nothing listens beyond this host), starts ``nprocs`` processes with
``torch.multiprocessing`` (spawn), and runs ``entry(local_rank, store, heartbeat, *args)`` in
each, with a client of that store and a running :class:`~pipebd.faults.Heartbeat`. ``run``
and ``profile`` both launch this way, so their ranks end the same way:

- a rank that raises, dies of a signal, or makes no progress for ``timeout`` seconds (no
  heartbeat; :class:`~pipebd.faults.HeartbeatWatch`) ends the launch; the other ranks get a
  short grace period to fail on their own (so their errors can be attributed), then SIGTERM,
  then SIGKILL, and all are reaped; :func:`~pipebd.launch.rootcause.root_cause` names the
  rank that caused it and :class:`RunFailed` carries the message;
- SIGINT/SIGTERM on the launcher stops every rank the same way and raises
  :class:`RunInterrupted` (the CLI exits with 130).
"""

from __future__ import annotations

import datetime as _dt
import logging
import multiprocessing.connection as mp_connection
import signal
import threading
import time
from collections.abc import Callable

import torch.distributed as dist
import torch.multiprocessing as mp

from ..faults import Heartbeat, HeartbeatWatch
from .rootcause import RunFailed, RunInterrupted, root_cause

__all__ = ["spawn_supervised", "stop_all"]

log = logging.getLogger("pipebd.launch")

#: Seconds the launcher sleeps between looks at its ranks (exits, heartbeats, signals).
_POLL_S = 0.5
#: After the first failure, seconds to let the other ranks fail (or finish) on their own, so
#: their errors can be attributed; then they are stopped. Capped by the timeout.
_GRACE_S = 5.0
#: Seconds between SIGTERM and SIGKILL when stopping ranks.
_KILL_AFTER_S = 3.0


def spawn_supervised(entry: Callable, args: tuple = (), *, nprocs: int, timeout: float) -> None:
    """Run ``entry(local_rank, store, heartbeat, *args)`` on ``nprocs`` spawned ranks; return
    when all exited 0. ``entry`` must be a module-level function (it is pickled by name).

    ``timeout``: seconds of the store's operations and of no progress on every live rank
    before the launch counts as stalled. Raises :class:`RunFailed` naming the root-cause rank,
    or :class:`RunInterrupted` on SIGINT/SIGTERM; either way no rank is left running."""
    store = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False,
                          timeout=_dt.timedelta(seconds=timeout))
    watch = HeartbeatWatch(store, nprocs)
    pending: list[int] = []  # signals received; acted on by the supervision loop, never mid-spawn

    def _on_signal(signum, frame):
        pending.append(signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, _on_signal)
    procs: list = []
    try:
        ctx = mp.start_processes(_child, args=(entry, tuple(args), store.port, timeout), nprocs=nprocs, join=False,
                                 start_method="spawn")
        procs = list(ctx.processes)
        failure = _supervise(procs, ctx.error_files, watch, timeout, pending)
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
        stop_all(procs)
    if failure is not None:
        raise failure


def _child(local_rank: int, entry: Callable, args: tuple, port: int, timeout: float) -> None:
    store = dist.TCPStore("127.0.0.1", port, world_size=None, is_master=False,
                          timeout=_dt.timedelta(seconds=timeout))
    heartbeat = Heartbeat(local_rank, "127.0.0.1", port, interval_s=min(1.0, timeout / 10))
    try:
        entry(local_rank, store, heartbeat, *args)
    finally:
        heartbeat.stop()


def _supervise(procs: list, error_files: list[str], watch: HeartbeatWatch, timeout: float,
               pending: list[int]) -> RunFailed | None:
    """Wait for the ranks; on the first failure (an exit != 0, or no rank making progress for
    ``timeout`` s) give the others a grace period, stop them, and return the root cause."""
    sentinels = {p.sentinel: i for i, p in enumerate(procs)}
    exited_at: dict[int, float] = {}
    failed_at: float | None = None
    stalled = False
    grace = min(_GRACE_S, timeout)
    while sentinels:
        ready = mp_connection.wait(list(sentinels), timeout=_POLL_S)
        now = time.monotonic()
        for s in ready:
            i = sentinels.pop(s)
            procs[i].join()
            exited_at[i] = now
            log.info("rank %d exited with code %s", i, procs[i].exitcode)
            if procs[i].exitcode != 0 and failed_at is None:
                failed_at = now
        if pending:
            raise RunInterrupted(pending[0])
        if not sentinels:
            break
        watch.poll(now)
        if failed_at is None and watch.stalled([i for i in range(len(procs)) if i not in exited_at], timeout, now):
            failed_at, stalled = now, True
            log.info("no rank made progress for %g s: stalled", timeout)
        if failed_at is not None and now - failed_at >= grace:
            break
    if failed_at is None:
        return None
    watch.poll()
    stopped = stop_all(procs)
    log.info("stopped rank(s) %s", sorted(stopped))
    return root_cause(procs, error_files, exited_at, stopped, watch, timeout, stalled)


def stop_all(procs: list) -> set[int]:
    """SIGTERM every live rank, SIGKILL those still alive after a few seconds, reap all.
    Returns the ranks that had to be stopped."""
    stopped = {i for i, p in enumerate(procs) if p.is_alive()}
    for i in stopped:
        procs[i].terminate()
    deadline = time.monotonic() + _KILL_AFTER_S
    for i in stopped:
        procs[i].join(max(0.0, deadline - time.monotonic()))
    for i in stopped:
        if procs[i].is_alive():
            procs[i].kill()
    for p in procs:
        p.join()
    return stopped
