"""The launcher's heartbeat watch (pipebd.faults) on a fake store: a stall is reported only when no
rank progresses. Failing, hanging and interrupted runs are in tests/integration/test_faults.py."""

from __future__ import annotations


class _FakeStore:
    def __init__(self):
        self.kv: dict[str, bytes] = {}

    def set(self, k, v):
        self.kv[k] = v.encode() if isinstance(v, str) else v

    def get(self, k):
        return self.kv[k]


def test_heartbeat_watch_reports_a_stall_only_when_no_rank_progresses():
    from pipebd.faults import STARTUP_S, HeartbeatWatch, heartbeat_key

    store = _FakeStore()
    w = HeartbeatWatch(store, 2, now=0.0)
    assert not w.stalled([0, 1], 10.0, now=30.0)  # neither has started: start-up allowance
    assert w.stalled([0, 1], 10.0, now=STARTUP_S + 1)
    store.set(heartbeat_key(0), "0")
    store.set(heartbeat_key(1), "0")
    w.poll(now=1.0)
    store.set(heartbeat_key(0), "1")
    w.poll(now=5.0)
    assert not w.stalled([0, 1], 10.0, now=12.0)  # rank 0 progressed at t=5
    assert w.stalled([1], 10.0, now=12.0)  # rank 1 alone has not
    store.set(heartbeat_key(1), "3")
    w.poll(now=14.0)
    assert w.age(1, now=15.0) == 1.0 and w.progress(1) == 3
    assert w.stalled([0, 1], 10.0, now=25.0)
    assert not w.stalled([], 10.0, now=99.0)
