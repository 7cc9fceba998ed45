"""The schedule IR without processes: round trips, the grid, golden schedules of every built-in
strategy, and the validator rejecting hand-broken schedules with the grid in its message."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pipebd.config import RunConfig
from pipebd.schedule import (RECV, SEND, Action, Schedule, ScheduleError, execute, format_grid, from_csv_text,
                             from_json, problems, to_csv_text, to_json, validate_schedule)
from pipebd.strategies import get_strategy, strategy_names, uses_schedule

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden")
#: (strategy, devices, workload, blocks) of every golden schedule: the built-in strategies on tiny
#: at N = 2 and 3 (sequential at 1)
GOLDEN_CASES = ([("sequential", 1, "tiny", 4)]
                + [(s, n, "tiny", 4) for s in ("dp", "ls", "tr", "tr-dpu", "ahd") for n in (2, 3)])


def _schedule(strategy: str, devices: int, workload: str = "tiny", blocks: int = 4, **kw) -> Schedule:
    cfg = RunConfig(workload=workload, strategy=strategy, devices=devices, batch_size=12, steps=2, warmup=1, **kw)
    return get_strategy(strategy).schedule_for(cfg, blocks)


def test_every_registered_strategy_is_a_valid_schedule():
    """On tiny at N = 2 and 3 and on the paper's 4 devices x 6 blocks, wherever the strategy runs."""
    from pipebd.config import ConfigError

    for name in strategy_names():
        cls = get_strategy(name)
        if not uses_schedule(cls):
            continue
        shapes = [(1, "tiny", 4)] if cls.max_devices == 1 else [(2, "tiny", 4), (3, "tiny", 4),
                                                                 (4, "nas-cifar10", 6)]
        built = 0
        for n, workload, blocks in shapes:
            try:
                s = _schedule(name, n, workload, blocks)
            except ConfigError:  # the strategy refuses this shape
                continue
            built += 1
            assert problems(s) == [], (name, n)
            for b in range(s.num_blocks):  # every block trained once per step, rows summing to the batch
                assert sum(s.student_rows(b)) == 12
        assert built, f"{name} generates no schedule on any test shape"


@pytest.mark.parametrize("strategy,devices,workload,blocks", GOLDEN_CASES)
def test_golden_schedules(strategy, devices, workload, blocks):
    """The built-in generators' output, action by action (regenerate deliberately with
    PIPEBD_UPDATE_GOLDEN=1 when a generator is meant to change)."""
    got = to_csv_text(_schedule(strategy, devices, workload, blocks))
    path = os.path.join(GOLDEN, f"{strategy}-{workload}-n{devices}.csv")
    if os.environ.get("PIPEBD_UPDATE_GOLDEN") == "1":
        with open(path, "w") as f:
            f.write(got)
    with open(path) as f:
        want = f.read()
    assert got == want, f"{strategy} N={devices}: schedule differs from {path}"


def test_round_trips_through_csv_and_json():
    s = _schedule("ahd", 3, plan="0-1x2,2-3x1")
    back = from_csv_text(to_csv_text(s))
    assert back.ranks == s.ranks and back.layout == s.layout and back.batch_size == s.batch_size
    back = from_json(to_json(s))
    assert back.ranks == s.ranks and (back.steps, back.inflight, back.warmup) == (s.steps, s.inflight, s.warmup)


def test_grid_prints_every_rank_and_marks():
    s = _schedule("tr-dpu", 2)
    text = format_grid(s, marks=[(1, 0)], columns=None)
    assert "rank 0" in text and "rank 1" in text and ">>0:<0:a2[0:12]<<" in text
    assert "0:L[0:12]" in text and "OPEN~" in text  # a pipelined window


def _break(s: Schedule, rank: int, pos: int, action: Action | None) -> Schedule:
    ranks = [list(r) for r in s.ranks]
    if action is None:
        del ranks[rank][pos]
    else:
        ranks[rank][pos] = action
    return s.with_ranks(ranks)


def _first(s: Schedule, kind: str) -> tuple[int, int, Action]:
    return next((r, i, a) for r, i, a in s if a.kind == kind)


def test_rejects_a_missing_receive():
    s = _schedule("tr-dpu", 2)
    r, i, _a = _first(s, RECV)
    with pytest.raises(ScheduleError) as e:
        validate_schedule(_break(s, r, i, None))
    msg = str(e.value)
    assert "SEND to rank 1 has no matching RECV" in msg and "rank 0" in msg and ">>" in msg  # the grid, marked


def test_rejects_a_send_to_the_wrong_rank():
    s = _schedule("tr-dpu", 3)
    r, i, a = _first(s, SEND)
    wrong = 2 if a.peer == 1 else 1
    with pytest.raises(ScheduleError) as e:
        validate_schedule(_break(s, r, i, dataclasses.replace(a, peer=wrong)))
    assert f"SEND to rank {wrong} has no matching RECV" in str(e.value) and ">>" in str(e.value)


def test_rejects_an_untrained_block_and_a_missing_allreduce():
    s = _schedule("dp", 2)
    r, i, a = _first(s, "STUDENT")
    with pytest.raises(ScheduleError, match="partition the batch|cover rows"):
        validate_schedule(_break(s, r, i, dataclasses.replace(a, rows=(0, 3))))
    r, i, _a = _first(s, "ALLREDUCE")
    with pytest.raises(ScheduleError, match="does not all-reduce|never join|collectives differ"):
        validate_schedule(_break(s, r, i, None))


def test_rejects_reading_what_a_rank_does_not_hold():
    s = _schedule("tr", 2)
    r, i, a = next((r, i, a) for r, i, a in s if a.kind == "TEACHER" and r == 1)
    with pytest.raises(ScheduleError, match="never loaded, computed or received"):
        validate_schedule(_break(s, r, i, dataclasses.replace(a, blocks=(0,))))  # rank 1 never holds block 0's input


def _two_rank(rank0: list[Action], rank1: list[Action], inflight: int) -> Schedule:
    return Schedule("hand", num_blocks=2, batch_size=4, steps=2, ranks=[rank0, rank1], inflight=inflight)


def test_deadlock_only_at_inflight_1():
    """Rank 0 sends step 0 to rank 1 and step 1 to rank 2; rank 2 relays step 1 to rank 1, which
    receives it before step 0. With two steps in flight every send goes out; with one, rank 0's
    second send waits for rank 1 to receive step 0, which rank 1 does only after step 1 came round."""
    from pipebd.schedule import Deadlock

    def act(kind, step, peer):
        return Action(kind, step, rows=(0, 4), boundary=1, peer=peer)

    ranks = [[act(SEND, 0, 1), act(SEND, 1, 2)], [act(RECV, 1, 2), act(RECV, 0, 0)], [act(RECV, 1, 0), act(SEND, 1, 1)]]

    def sched(inflight):
        return Schedule("hand", num_blocks=2, batch_size=4, steps=2, ranks=ranks, inflight=inflight)

    execute(sched(2))  # fine
    with pytest.raises(Deadlock):
        execute(sched(1))
    found = [m for _r, _i, m in problems(sched(1))]
    assert any("deadlock under inflight 1" in m for m in found), found
    with pytest.raises(ScheduleError) as e:
        validate_schedule(sched(1))
    assert ">>" in str(e.value) and "rank 2" in str(e.value)


def test_validator_reports_a_receive_cycle_with_the_grid():
    a = [Action(RECV, 0, rows=(0, 4), boundary=1, peer=1), Action(SEND, 0, rows=(0, 4), boundary=1, peer=1)]
    b = [Action(RECV, 0, rows=(0, 4), boundary=1, peer=0), Action(SEND, 0, rows=(0, 4), boundary=1, peer=0)]
    sched = _two_rank(a, b, 2)
    found = [m for _r, _i, m in problems(sched)]
    assert any("deadlock" in m and "waits for rank" in m for m in found)


@pytest.mark.parametrize("strategy,devices", [("dp", 2), ("ls", 2), ("sequential", 1), ("tr", 2), ("ahd", 3)])
def test_registers_live_only_until_their_last_reader(strategy, devices):
    """Replays every rank's register lifetimes: a value is freed after its last reader and never
    read once freed, and no more than one batch's activations per in-flight step stay alive — in
    particular dp/ls, which write (step, 0) again for every block, hold no earlier block's
    batches (the interpreter once kept them all until the last block)."""
    from pipebd.runtime.interpreter import _readers, _writes, register_drops

    s = _schedule(strategy, devices)
    for r, actions in enumerate(s.ranks):
        drops = register_drops(actions)
        live: set = set()
        peak = 0
        for i, a in enumerate(actions):
            for reg in _readers(a):
                assert reg in live, (strategy, r, i, a, reg)
            live.update(_writes(a))
            for reg in drops.get(i, ()):
                live.discard(reg)
            peak = max(peak, len(live))
        assert not live, (strategy, r, live)
        assert peak <= (s.num_blocks + 1) * (s.inflight + 1), (strategy, r, peak)
        if strategy in ("dp", "ls", "sequential"):  # one step of one block at a time: input, output
            assert peak <= 2, (strategy, r, peak)
