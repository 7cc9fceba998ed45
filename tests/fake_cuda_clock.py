"""Test plugin (``--plugin tests.fake_cuda_clock``): every rank times with the real
:class:`~pipebd.recorder.CudaEventClock` over fake events, and every synchronisation is
counted as inside or outside an open measurement window. It patches only spawned ranks
(the launcher imports plugins too, to validate).

A fake event stamps ``perf_counter`` when recorded; ``synchronize`` (of an event, or
``torch.cuda.synchronize``) counts as *inside* while any recorder on this rank has a window
open. After each window the counts go to ``$PIPEBD_FAKE_CLOCK_DIR/rank-<rank>.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import torch

from pipebd import recorder

RECORDERS: list = []
STATE = {"syncs_in_window": 0, "syncs_outside": 0, "marks": 0, "windows": 0}


def _count_sync() -> None:
    inside = any(r.measuring for r in RECORDERS)
    STATE["syncs_in_window" if inside else "syncs_outside"] += 1


class FakeEvent:
    def record(self, stream=None) -> None:
        self.t = time.perf_counter()
        STATE["marks"] += 1

    def synchronize(self) -> None:
        _count_sync()

    def elapsed_time(self, other: "FakeEvent") -> float:
        return (other.t - self.t) * 1e3


def fake_clock(device):
    return recorder.CudaEventClock(device, event_factory=FakeEvent)


_init = recorder.Recorder.__init__
_stop = recorder.Recorder.stop_window


def _recorder_init(self, rank, device=None, **kw):
    kw.setdefault("clock", fake_clock(device))
    _init(self, rank, device, **kw)
    RECORDERS.append(self)


def _stop_window(self) -> None:
    was_open = self.measuring
    _stop(self)
    if was_open:
        STATE["windows"] += 1
        out = os.environ.get("PIPEBD_FAKE_CLOCK_DIR")
        if out:
            with open(os.path.join(out, f"rank-{self.rank}.json"), "w") as f:
                json.dump(STATE, f)


if multiprocessing.parent_process() is not None:  # only in spawned ranks, never in the test process itself
    recorder.Recorder.__init__ = _recorder_init
    recorder.Recorder.stop_window = _stop_window
    torch.cuda.synchronize = lambda device=None: _count_sync()
