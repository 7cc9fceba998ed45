"""The cost model replays schedules: exact against closed forms where one exists, the same
answer as the earlier per-strategy recurrences, and ranking layouts as the planner does."""

from __future__ import annotations

import itertools
import math

import pytest

from pipebd.costmodel import CostTable, random_cost_table, simulate_pipeline, stage_cost
from pipebd.plan import Plan, Stage
from pipebd.planner import search
from pipebd.strategies import strategy_names
from pipebd.strategies.predict import predict, predict_all

STEPS = 200


def _flat(n: int = 2, t: float = 1.0, s: float = 2.0, relay: float = 0.5, batch: int = 4) -> CostTable:
    """Constant costs (independent of rows) so the closed forms are exact."""
    return CostTable(num_blocks=n, teacher=[{batch: t}] * n, student=[{batch: s}] * n,
                     relay=[{}] + [{batch: relay}] * (n - 1), workload="flat", batch_size=batch)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_equals_the_closed_forms(seed):
    c = random_cost_table(seed, 6, 4, 64)
    B, n = 64, 6
    seq = c.data_time(B) + sum(c.teacher_time(i, B) + c.student_time(i, B) for i in range(n))
    assert predict("sequential", c, 1, B, STEPS).epoch_s == pytest.approx(STEPS * seq, rel=1e-9)
    b = 16
    dp = sum(c.data_time(b) + sum(c.teacher_time(j, b) for j in range(i + 1)) + c.student_time(i, b)
             + c.allreduce_time(i, 4) for i in range(n))
    assert predict("dp", c, 4, B, STEPS).epoch_s == pytest.approx(STEPS * dp, rel=1e-9)
    p = predict("ls", c, 4, B, STEPS)
    assign = [list(map(int, a.split(":"))) for a in p.layout.split(",")]
    per = [sum(c.data_time(B) + sum(c.teacher_time(j, B) for j in range(i + 1)) + c.student_time(i, B) for i in a)
           for a in assign]
    assert p.epoch_s == pytest.approx(STEPS * max(per) + c.barrier_time(4), rel=1e-9)  # + the closing barrier


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("inflight", [1, 2, 4])
def test_replay_of_a_pipeline_matches_the_stage_recurrence(seed, inflight):
    """tr-dpu / ahd: the replay of the schedule against the old stage-level recurrence
    (kept as an oracle), within the window's framing (one closing drain + barrier)."""
    c = random_cost_table(seed, 6, 4, 64)
    plan = search(c, 4, 64, inflight=inflight).plan
    old = simulate_pipeline([stage_cost(c, s, 64, inflight=inflight) for s in plan.stages], STEPS,
                            inflight=inflight)
    new = predict("ahd", c, 4, 64, STEPS, inflight=inflight, layout=plan)
    assert new.epoch_s == pytest.approx(old.epoch_s + c.barrier_time(4), rel=0.01)
    assert new.step_s == pytest.approx(old.period_s, rel=0.01)


def test_hand_computed_pipelines():
    """Two one-block stages, teacher 1 s, student 2 s, relay 0.5 s (the receiver pays it)."""
    c = _flat()
    plan = Plan((Stage(0, 0, 1), Stage(1, 1, 1)))
    # tr: each step = stage 0's teacher (1) + stage 1's relay, teacher and student (3.5), one barrier (free)
    assert predict("tr", c, 2, 4, 10, layout=plan).epoch_s == pytest.approx(10 * 4.5)
    # tr-dpu: the period is the slowest stage (1 + 2 + ... stage 1: 0.5 + 1 + 2 = 3.5), one fill
    p = predict("tr-dpu", c, 2, 4, 10, layout=plan)
    assert p.step_s == pytest.approx(3.5) and p.epoch_s == pytest.approx(10 * 3.5 + 1.0)


def test_every_registered_strategy_is_predicted():
    c = random_cost_table(5, 6, 4, 64)
    got = {p.strategy: p for p in predict_all(c, 4, 64, 100)}  # 4 devices x 6 blocks: the paper's shape
    assert set(got) == set(strategy_names()) | {"ideal"}
    assert got["sequential"].note == "1 device(s)"
    for p in got.values():
        assert p.epoch_s > 0 and math.isfinite(p.epoch_s)
    assert got["ideal"].epoch_s <= min(p.epoch_s for p in got.values())


def _layouts(n: int, devices: int):
    """Every contiguous partition of n blocks, with every replica vector summing to ``devices``."""
    for k in range(1, min(n, devices) + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = [0, *cuts, n]
            for reps in itertools.product(range(1, devices + 1), repeat=k):
                if sum(reps) == devices:
                    yield Plan(tuple(Stage(bounds[i], bounds[i + 1] - 1, reps[i]) for i in range(k)))


@pytest.mark.parametrize("seed", range(6))
def test_the_planners_objective_ranks_layouts_as_the_replay_does(seed):
    """The planner searches with a closed-form objective (the slowest stage); on random tables
    its choice is the replay's best (within 2 %), and the two order the layouts alike."""
    c = random_cost_table(100 + seed, 5, 4, 64)
    rows = []
    for plan in _layouts(5, 4):
        bottleneck = max(stage_cost(c, s, 64).total_s for s in plan.stages)
        rows.append((bottleneck, predict("ahd", c, 4, 64, 400, layout=plan).epoch_s))
    best = min(e for _b, e in rows)
    chosen = predict("ahd", c, 4, 64, 400, layout=search(c, 4, 64).plan).epoch_s
    assert chosen <= best * 1.02
    concordant = discordant = 0
    for (b1, e1), (b2, e2) in itertools.combinations(rows, 2):
        if abs(b1 - b2) > 1e-9 * max(b1, b2):
            if (b1 - b2) * (e1 - e2) > 0:
                concordant += 1
            else:
                discordant += 1
    tau = (concordant - discordant) / (concordant + discordant)
    assert tau > 0.9, tau


def test_a_strategy_with_an_escape_hatch_is_not_predicted():
    from pipebd.strategies import Strategy, register_strategy
    from pipebd.strategies.predict import NotPredictable

    @register_strategy("test-own-loop")
    class OwnLoop(Strategy):
        @classmethod
        def run(cls, ctx):
            return {}

    try:
        with pytest.raises(NotPredictable, match="escape-hatch"):
            predict("test-own-loop", random_cost_table(0, 2, 2, 8), 2, 8, 10)
    finally:
        from pipebd.strategies import base

        base._STRATEGIES.pop("test-own-loop")
