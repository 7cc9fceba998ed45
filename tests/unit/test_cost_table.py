"""The cost table and the predictions built on it: orderings every layout must respect, exact
closed forms, fitted costs, the CSV format, the ``simulate`` CLI."""

from __future__ import annotations

import csv
import math

import pytest

from pipebd.cli import main
from pipebd.config import ConfigError, RunConfig
from pipebd.costfit import Affine, evaluate, fit_affine
from pipebd.plan import Stage, parse_plan
from pipebd.planner import search
from baselines.ls import lpt_layout as ls_assignment
from pipebd.costmodel import (CostTable, candidate_batches, estimate_cost_table, predict_ideal, random_cost_table,
                              simulate_pipeline, stage_cost)
from pipebd.strategies.predict import predict
from pipebd.strategies.predict import predict_all as _predict_all


def predict_all(*a, **kw):
    return _predict_all(*a, skip_unpredictable=True, **kw)

STEPS = 500


def _flat(n: int, teacher: float, student: float, *, batch: int = 8, relay: float = 0.0) -> CostTable:
    """Every block costs the same; times proportional to rows (no fixed overhead)."""
    return CostTable(num_blocks=n, teacher=[{batch: teacher}] * n, student=[{batch: student}] * n,
                     relay=[{}] + [{batch: relay}] * (n - 1), batch_size=batch)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("devices", [2, 4])
def test_strategy_orderings_on_synthetic_tables(seed, devices):
    costs = random_cost_table(seed, 6, devices, 64)
    p = {x.strategy: x.epoch_s for x in predict_all(costs, devices, 64, STEPS)}
    assert p["tr-dpu"] <= p["tr"] * (1 + 1e-12)
    assert p["ahd"] <= p["tr-dpu"] * 1.01  # the planner's objective is the slowest stage; the replay adds the fill
    for name, t in p.items():
        assert p["ideal"] <= t * (1 + 1e-12), name
        assert t > 0


def test_one_device_dp_is_sequential_plus_its_redundant_teacher_and_data():
    """dp on one device trains block after block, re-running data + teacher 0..i-1 for each block i;
    without that redundancy it is exactly the sequential reference."""
    costs = random_cost_table(4, 5, 1, 32)
    B, n = 32, 5
    seq = predict("sequential", costs, 1, B, STEPS).epoch_s
    dp = predict("dp", costs, 1, B, STEPS).epoch_s
    redundant = sum(costs.teacher_time(k, B) for i in range(n) for k in range(i)) + (n - 1) * costs.data_time(B)
    assert dp == pytest.approx(seq + STEPS * redundant, rel=1e-12)
    one_block = costs.restricted([2])
    assert predict("dp", one_block, 1, B, STEPS).epoch_s == pytest.approx(predict("sequential", one_block, 1, B, STEPS).epoch_s)
    # on one device the pipelined strategies are the sequential reference; ls, like dp, trains
    # block after block with its own data and teacher prefix
    one = {x.strategy: x.epoch_s for x in predict_all(costs, 1, B, STEPS)}
    for name in ("tr", "tr-dpu", "ahd"):
        assert one[name] == pytest.approx(seq, rel=1e-9), name
    assert one["ls"] == pytest.approx(dp, rel=1e-12)


@pytest.mark.parametrize("name", ["sequential", "dp", "ls", "tr", "tr-dpu", "ahd", "ideal"])
def test_epoch_time_scales_with_steps(name):
    costs = random_cost_table(11, 6, 4, 64)
    a, b, c = (next(x for x in predict_all(costs, 4, 64, s) if x.strategy == name) for s in (1000, 2000, 4000))
    assert b.epoch_s > a.epoch_s
    assert b.epoch_s - a.epoch_s == pytest.approx(1000 * a.step_s, rel=1e-6)
    assert c.epoch_s - b.epoch_s == pytest.approx(2000 * a.step_s, rel=1e-6)


def test_pipeline_simulation_against_hand_computed_schedules():
    # two stages: (teacher 1 + student 1) and (teacher 1 + student 3) per batch, free relays
    costs = CostTable(num_blocks=2, teacher=[{1: 1.0}, {1: 1.0}], student=[{1: 1.0}, {1: 3.0}])
    plan = parse_plan("0x1,1x1")
    sc = [stage_cost(costs, s, 1) for s in plan.stages]
    assert [c.total_s for c in sc] == [2.0, 4.0] and [c.teacher_done_s for c in sc] == [1.0, 1.0]
    res = simulate_pipeline(sc, 10, inflight=2)
    # stage 1 starts once stage 0 sent batch 0 (t=1) and then runs back to back: 1 + 10 * 4
    assert res.epoch_s == pytest.approx(41.0) and res.period_s == pytest.approx(4.0)
    assert res.fill_s == pytest.approx(1.0)
    # with a barrier every step (tr): step = relay latency 1 + stage 1's 4
    assert predict("tr", costs, 2, 1, 10, layout=plan).epoch_s == pytest.approx(50.0)
    assert predict("tr-dpu", costs, 2, 1, 10, layout=plan).epoch_s == pytest.approx(41.0)
    # inflight=1 couples the stages: stage 0 may send batch t only after stage 1 received t-1
    assert simulate_pipeline(sc, 10, inflight=1).period_s >= 4.0


def test_ahd_period_is_the_planners_bottleneck():
    costs = random_cost_table(8, 7, 6, 96)
    res = search(costs, 6, 96, inflight=16)
    pred = predict("ahd", costs, 6, 96, 3000, inflight=16, layout=res.plan)
    assert pred.step_s == pytest.approx(res.bottleneck_s, rel=1e-6)


def test_ideal_uses_the_per_sample_fastest_batch():
    costs = CostTable(num_blocks=1, teacher=[{4: 4.0, 8: 4.0}], student=[{4: 8.0, 8: 12.0}])
    # teacher 0.5 s/sample at 8, student 1.5 s/sample at 8 vs 2 at 4
    assert predict_ideal(costs, 2, 8, 10).epoch_s == pytest.approx(10 * 8 * (0.5 + 1.5) / 2)


def test_interpolation_and_extrapolation():
    costs = CostTable(num_blocks=1, teacher=[{4: 1.0, 8: 3.0}], student=[{4: 2.0}],
                      allreduce=[{2: 1.0, 4: 2.0}], barrier={2: 0.5})
    assert costs.teacher_time(0, 8) == 3.0
    assert costs.teacher_time(0, 6) == pytest.approx(2.0)  # linear between points
    # outside: the non-negative least-squares line; 1 + 0.5 b would need a negative fixed part,
    # so the fit is a = 0, c = (4·1 + 8·3) / (4² + 8²) = 0.35
    assert costs.teacher_time(0, 16) == pytest.approx(16 * 0.35)
    assert costs.teacher_time(0, 2) == pytest.approx(2 * 0.35)
    assert costs.student_time(0, 1) == pytest.approx(0.5)  # one point: proportional
    assert any("block(s) 0 measured at one batch size" in g for g in costs.gaps())
    assert costs.allreduce_time(0, 1) == 0.0
    assert costs.allreduce_time(0, 3) == pytest.approx(1.5)
    assert costs.allreduce_time(0, 8) == pytest.approx(2.0 * (14 / 8) / (6 / 4))  # ring factor
    assert costs.relay_time(0, 8) == 0.0


def test_uneven_weights_are_costed_by_their_slowest_replica():
    costs = _flat(2, 0.1, 0.3)
    even = stage_cost(costs, Stage(0, 1, 2), 8)
    skew = stage_cost(costs, Stage(0, 1, 2, (3, 1)), 8)
    assert skew.rows == (6, 2) and skew.total_s == pytest.approx(even.total_s * 6 / 4)


def test_ls_assignment_is_lpt():
    costs = random_cost_table(2, 7, 3, 32)
    a = ls_assignment(costs, 3, 32)
    assert sorted(b for d in a for b in d) == list(range(7)) and len(a) == 3
    assert [len(d) for d in ls_assignment(costs, 9, 32)] == [1] * 7
    # blocks of cost 5, 4, 3, 3, 3 (flat per-block cost, no teacher/data) on 2 devices: LPT gives 8 / 10
    flat = CostTable(num_blocks=5, teacher=[{1: 1e-12}] * 5, student=[{1: c} for c in (3, 5, 3, 4, 3)])
    assert ls_assignment(flat, 2, 1) == [[1, 2], [0, 3, 4]]
    assert predict("ls", flat, 2, 1, 10).epoch_s == pytest.approx(10 * 10, rel=1e-9)


def test_more_devices_than_blocks():
    costs = random_cost_table(6, 3, 8, 64)
    p = {x.strategy: x for x in predict_all(costs, 8, 64, STEPS)}
    assert "3 of 8" in p["tr"].note and "3 of 8" in p["tr-dpu"].note
    assert parse_plan(p["ahd"].layout).devices == 8
    assert p["ahd"].epoch_s < p["tr-dpu"].epoch_s


def test_csv_and_json_round_trip(tmp_path):
    costs = random_cost_table(3, 5, 4, 64, with_memory=True)
    costs.student[2][64] = math.inf  # an out-of-memory configuration
    path = str(tmp_path / "p.csv")
    costs.to_csv(path)
    back = CostTable.from_csv(path)
    for t in (back, CostTable.from_json(costs.to_json())):
        assert t.num_blocks == 5 and t.batch_size == 64
        assert t.student == costs.student and t.teacher == costs.teacher
        assert not t.feasible(2, 64) and t.feasible(2, 32)
        for i in range(5):
            for b in (1, 16, 20, 64, 100):
                assert t.relay_time(i, b) == pytest.approx(costs.relay_time(i, b))
                assert t.memory_bytes(i, b) == pytest.approx(costs.memory_bytes(i, b))
            assert t.allreduce_time(i, 3) == pytest.approx(costs.allreduce_time(i, 3))
        assert t.data_per_sample == pytest.approx(costs.data_per_sample)
    with open(path) as f:
        assert {r["kind"] for r in csv.DictReader(f)} >= {"teacher", "student", "relay", "allreduce", "memory"}


def test_bad_tables_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no student time for block 1"):
        CostTable(num_blocks=2, teacher=[{1: 1.0}, {1: 1.0}], student=[{1: 1.0}, {}])
    with pytest.raises(ConfigError, match="does not exist"):
        CostTable.from_csv(str(tmp_path / "nope.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a pipebd profile"):
        CostTable.from_csv(str(bad))


def test_estimate_without_a_profile():
    costs = estimate_cost_table(RunConfig(workload="tiny", devices=2, batch_size=16))
    assert costs.num_blocks == 4 and costs.source == "estimate"
    assert all(costs.student_time(i, 16) > 0 and costs.teacher_time(i, 16) > 0 for i in range(4))
    assert costs.relay_time(1, 8) > 0 and costs.allreduce_time(1, 2) > 0


def test_simulate_cli_writes_a_csv(tmp_path, capsys):
    costs = random_cost_table(1, 6, 4, 64)
    costs.workload = "nas-cifar10"
    prof, out = str(tmp_path / "p.csv"), str(tmp_path / "pred.csv")
    costs.to_csv(prof)
    assert main(["simulate", "--profile", prof, "--devices", "1", "2", "4", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "tr-dpu" in text and "ideal" in text and "N=4" in text
    with open(out) as f:
        rows = list(csv.DictReader(f))
    from pipebd.strategies import strategy_names

    # every registered strategy (where it runs the shape; a refused one is named "n/a" in the table) and ideal
    assert {r["strategy"] for r in rows} == set(strategy_names()) | {"ideal"}
    assert {r["steps"] for r in rows} == {str(50_000 // 64)}
    for r in rows:
        if r["strategy"] == "dp":
            assert float(r["speedup_vs_dp"]) == pytest.approx(1.0)
    ahd4 = next(r for r in rows if r["strategy"] == "ahd" and r["devices"] == "4")
    assert parse_plan(ahd4["layout"]).devices == 4


def test_affine_fit_recovers_the_fixed_part():
    pts = {b: 0.004 + 2.5e-5 * b for b in (256, 128, 86, 64)}
    f = fit_affine(pts)
    assert f.fixed == pytest.approx(0.004, rel=1e-9) and f.per_sample == pytest.approx(2.5e-5, rel=1e-9)
    assert evaluate(pts, 16) == pytest.approx(0.004 + 2.5e-5 * 16, rel=1e-9)  # below the range: the line
    assert evaluate(pts, 512) == pytest.approx(0.004 + 2.5e-5 * 512, rel=1e-9)  # above it too
    assert evaluate(pts, 100) == pytest.approx(0.004 + 2.5e-5 * 100, rel=1e-9)
    noisy = {b: t * (1.03 if k % 2 else 0.97) for k, (b, t) in enumerate(sorted(pts.items()))}
    g = fit_affine(noisy)
    assert g.fixed == pytest.approx(0.004, rel=0.2) and g.fixed > 0 and g.per_sample > 0
    assert all(evaluate(noisy, b) == noisy[b] for b in noisy)  # exact at measured points
    # constraints: decreasing times give a flat line; superlinear ones a proportional line
    assert fit_affine({1: 3.0, 2: 2.0, 3: 1.0}) == Affine(2.0, 0.0, 3)
    assert fit_affine({4: 1.0, 8: 3.0}).fixed == 0.0
    assert fit_affine({8: 2.0}).fixed == 0.0 and fit_affine({8: 2.0}, fixed=1.0)(4) == pytest.approx(1.5)
    # an out-of-memory point: inf above it, the finite points' line below the range
    oom = {64: 1.0, 128: 2.0, 256: math.inf}
    assert evaluate(oom, 512) == math.inf and evaluate(oom, 200) == math.inf
    assert evaluate(oom, 32) == pytest.approx(0.5)


def _fixed_cost_table(n: int, batch: int, *, fixed: float, per_sample: float, devices: int = 4) -> CostTable:
    pts = {b: fixed + per_sample * b for b in candidate_batches(batch, devices)}
    return CostTable(num_blocks=n, teacher=[dict(pts)] * n, student=[{b: 3 * t for b, t in pts.items()}] * n,
                     batch_size=batch, devices=1)


def test_dp_at_16_devices_pays_the_fixed_cost_below_the_measured_batches():
    """Profiled at B/1..B/4 only; dp at 16 devices (2 rows per replica) must keep paying the fixed cost."""
    costs = _fixed_cost_table(3, 32, fixed=1e-3, per_sample=1e-5)
    assert costs.measured_range(0) == (8, 32)
    dp4, dp16 = predict("dp", costs, 4, 32, STEPS), predict("dp", costs, 16, 32, STEPS)
    assert not dp4.extrapolated and dp16.extrapolated
    speedup = dp4.epoch_s / dp16.epoch_s
    assert speedup < 1.1  # fixed-cost bound: 4x the devices buys almost nothing (was ~3.9x when proportional)
    per_block = 1e-3 + 1e-5 * 2
    assert costs.teacher_time(0, 2) == pytest.approx(per_block, rel=1e-9)
    assert any("extrapolated" in g for g in costs.gaps(16))
    assert not any("extrapolated" in g for g in costs.gaps(4))
    p = {x.strategy: x for x in predict_all(costs, 16, 32, STEPS)}
    assert p["dp"].extrapolated and not p["ideal"].extrapolated and not p["sequential"].extrapolated


def test_csv_round_trip_keeps_data_points_capacity_and_modelled_kinds(tmp_path):
    costs = _fixed_cost_table(2, 16, fixed=1e-3, per_sample=1e-4)
    costs.relay[1] = {16: 1e-4, 8: 6e-5}
    costs.data = {16: 2e-3, 8: 1.2e-3, 4: 8e-4}
    costs.capacity = 8e9
    costs.modelled = ("relay",)
    path = str(tmp_path / "p.csv")
    costs.to_csv(path)
    back = CostTable.from_csv(path)
    assert back.data == costs.data and back.capacity == 8e9 and back.modelled == ("relay",)
    assert back.data_time(2) == pytest.approx(costs.data_time(2)) and back.data_time(2) > 0.5e-3
    assert any("relay times are modelled" in g for g in back.gaps())
