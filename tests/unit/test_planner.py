"""The ahd planner: exact against brute force, memory limits, scale, plan strings, CLI."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from pipebd.cli import main
from pipebd.config import ConfigError, RunConfig
from pipebd.plan import Plan, Stage, parse_plan
from pipebd.planner import PlanError, cost_table_for, plan, plan_for, search
from pipebd.costmodel import CostTable, random_cost_table, stage_cost, stage_memory


def _compositions(total: int, parts: int, cap: int):
    """Tuples of ``parts`` integers in 1..cap summing to ``total``."""
    if parts == 1:
        if 1 <= total <= cap:
            yield (total,)
        return
    for first in range(1, min(cap, total - parts + 1) + 1):
        for rest in _compositions(total - first, parts - 1, cap):
            yield (first, *rest)


def brute_force(costs: CostTable, devices: int, batch: int, *, limit=None, inflight=2, max_replicas=None):
    """Every (contiguous partition × replica vector) layout, costed by pipebd.costmodel.stage_cost.

    Returns the lexicographic best (bottleneck, stages, total work) and the layout count."""
    n = costs.num_blocks
    cap = min(batch, max_replicas or devices)
    best, count = None, 0
    for s in range(1, min(n, devices) + 1):
        for cuts in itertools.combinations(range(1, n), s - 1):
            bounds = (0, *cuts, n)
            for reps in _compositions(devices, s, cap):
                stages = [Stage(bounds[k], bounds[k + 1] - 1, reps[k]) for k in range(s)]
                ok = True
                for st in stages:
                    if not all(costs.feasible(i, max(st.rows(batch))) for i in st.blocks):
                        ok = False
                    if limit is not None:
                        mem = stage_memory(costs, st.first, st.last, max(st.rows(batch)), inflight=inflight)
                        if mem is not None and mem > limit:
                            ok = False
                if not ok:
                    continue
                count += 1
                sc = [stage_cost(costs, st, batch, inflight=inflight) for st in stages]
                key = (max(c.total_s for c in sc), s, sum(c.work_s for c in sc))
                if best is None or key < best[0]:
                    best = (key, Plan(tuple(stages)))
    return best, count


def _random_case(seed: int):
    rng = random.Random(seed)
    n = rng.randint(1, 8)
    devices = rng.randint(1, 6)
    batch = rng.choice([devices, 7, 16, 33, 64, 256])
    batch = max(batch, devices)
    costs = random_cost_table(seed, n, devices, batch, with_memory=rng.random() < 0.5)
    if rng.random() < 0.3:  # some configurations ran out of memory
        i = rng.randrange(n)
        b = max(costs.student[i])
        costs.student[i][b] = math.inf
    return costs, devices, batch, rng


@pytest.mark.parametrize("seed", range(40))
def test_dp_matches_brute_force(seed):
    costs, devices, batch, rng = _random_case(seed)
    limit = None
    if costs.memory[0] and rng.random() < 0.6:
        try:
            free = search(costs, devices, batch)
            limit = rng.uniform(0.6, 1.0) * max(c.memory_bytes for c in free.stages)  # often binds
        except PlanError:
            pass
    best, count = brute_force(costs, devices, batch, limit=limit)
    if best is None:  # nothing fits: the planner must say so
        with pytest.raises(PlanError):
            search(costs, devices, batch, memory_limit_bytes=limit)
        return
    key, ref = best
    got = search(costs, devices, batch, memory_limit_bytes=limit)
    got.plan.validate(num_blocks=costs.num_blocks, devices=devices, batch_size=batch)
    assert got.bottleneck_s == pytest.approx(key[0], rel=1e-12), (str(got.plan), str(ref))
    # the deterministic tie-break is exact too: fewest stages, then least total work
    assert len(got.plan.stages) == key[1]
    assert got.total_work_s == pytest.approx(key[2], rel=1e-9)
    if limit is not None:
        for c in got.stages:
            assert c.memory_bytes <= limit


def test_brute_force_agreement_on_the_largest_size():
    """8 blocks x 6 devices, with and without a one-replica-per-stage restriction."""
    costs = random_cost_table(123, 8, 6, 48)
    (key, _), count = brute_force(costs, 6, 48)
    assert count == 792  # all contiguous partitions x replica vectors
    assert search(costs, 6, 48).bottleneck_s == pytest.approx(key[0], rel=1e-12)
    (key1, _), _ = brute_force(costs, 6, 48, max_replicas=1)
    tr = search(costs, 6, 48, max_replicas=1)
    assert tr.bottleneck_s == pytest.approx(key1[0], rel=1e-12)
    assert all(s.replicas == 1 for s in tr.plan.stages) and len(tr.plan.stages) == 6
    assert tr.bottleneck_s >= search(costs, 6, 48).bottleneck_s


def test_memory_limit_is_respected_and_impossible_limits_are_clear():
    costs = random_cost_table(7, 6, 4, 64, with_memory=True)
    free = search(costs, 4, 64)
    worst = max(c.memory_bytes for c in free.stages)
    for frac in (0.99, 0.95, 0.9, 0.8, 0.7, 0.6):  # the tightest limit that still changes the plan
        limit = frac * worst
        try:
            tight = search(costs, 4, 64, memory_limit_bytes=limit)
        except PlanError:
            continue
        if str(tight.plan) != str(free.plan):
            break
    else:
        pytest.fail("no memory limit changed the plan")
    assert all(c.memory_bytes <= limit for c in tight.stages)
    assert tight.bottleneck_s >= free.bottleneck_s
    with pytest.raises(PlanError, match="memory limit"):
        plan(costs, 4, 64, memory_limit_bytes=1.0)


def test_out_of_memory_configurations_are_avoided():
    costs = random_cost_table(3, 4, 4, 32)
    for i in range(4):
        costs.student[i][32] = math.inf  # nothing trains at the full batch
    p = plan(costs, 4, 32)
    assert all(s.replicas >= 2 for s in p.stages)


def test_16_blocks_on_64_devices():
    costs = random_cost_table(0, 16, 64, 256, with_memory=True)
    res = search(costs, 64, 256)
    p = res.plan
    p.validate(num_blocks=16, devices=64, batch_size=256)
    assert [b for s in p.stages for b in s.blocks] == list(range(16))
    assert p.devices == 64
    assert res.bottleneck_s == max(c.total_s for c in res.stages)
    # no worse than two obvious layouts
    for alt in (Plan((Stage(0, 15, 64),)), Plan(tuple(Stage(i, i, 4) for i in range(16)))):
        assert res.bottleneck_s <= max(stage_cost(costs, s, 256).total_s for s in alt.stages) * (1 + 1e-12)
    assert parse_plan(str(p)) == p


def test_plan_strings_round_trip_and_batches_split_by_largest_remainder():
    costs = random_cost_table(5, 5, 6, 21)
    p = plan(costs, 6, 21)
    assert parse_plan(str(p)) == p
    for s in p.stages:
        rows = s.rows(21)
        assert sum(rows) == 21 and max(rows) - min(rows) <= 1


def test_plan_is_deterministic():
    costs = random_cost_table(9, 7, 5, 40)
    assert {str(plan(costs, 5, 40)) for _ in range(3)} == {str(plan(costs, 5, 40))}


def test_bad_requests_are_clear():
    costs = random_cost_table(1, 2, 4, 8)
    with pytest.raises(PlanError, match="cannot all be used"):
        search(costs, 4, 8, max_replicas=1)
    with pytest.raises(PlanError, match="cannot all be used"):
        plan(costs, 20, 8)
    with pytest.raises(PlanError, match="devices must be >= 1"):
        plan(costs, 0, 8)


def test_plan_for_uses_the_estimate_or_a_profile(tmp_path):
    cfg = RunConfig(workload="tiny", devices=3, batch_size=16)
    p = plan_for(cfg)
    p.validate(num_blocks=4, devices=3, batch_size=16)
    costs = random_cost_table(2, 4, 3, 16)
    costs.workload = "tiny"
    path = str(tmp_path / "tiny.csv")
    costs.to_csv(path)
    assert plan_for(cfg.replace(profile=path)) == plan(costs, 3, 16)
    assert cost_table_for(cfg.replace(profile=path)).num_blocks == 4
    with pytest.raises(ConfigError, match="measured for workload 'tiny'"):
        plan_for(cfg.replace(workload="nas-cifar10", profile=path))
    with pytest.raises(ConfigError, match="does not exist"):
        plan_for(cfg.replace(profile=str(tmp_path / "missing.csv")))


def test_plan_cli_prints_a_table_and_a_plan_string(capsys):
    assert main(["plan", "--workload", "tiny", "--devices", "4", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "stage" in out[1] and "replicas" in out[1]
    p = parse_plan(out[-1])
    p.validate(num_blocks=4, devices=4, batch_size=16)
    assert any("bottleneck" in line for line in out)


def _tiny_profile(tmp_path, devices: int, batch: int, seed: int = 7) -> str:
    costs = random_cost_table(seed, 4, devices, batch, with_memory=True)
    costs.workload = "tiny"
    path = str(tmp_path / "tiny-mem.csv")
    costs.to_csv(path)
    return path


def test_an_explicit_plan_over_the_memory_limit_is_rejected_before_spawning(tmp_path):
    from pipebd.preflight import validate
    from pipebd.strategies.ahd import ahd_plan

    path = _tiny_profile(tmp_path, 3, 24)
    costs = CostTable.from_csv(path)
    cfg = RunConfig(workload="tiny", strategy="ahd", devices=3, batch_size=24, profile=path, out=str(tmp_path))
    free = plan_for(cfg)
    mems = [stage_memory(costs, s.first, s.last, max(s.rows(24))) for s in free.stages]
    k = max(range(len(mems)), key=mems.__getitem__)
    limit = mems[k] * 0.999
    explicit = cfg.replace(plan=str(free))
    assert ahd_plan(explicit, 4) == free  # fits without a limit
    with pytest.raises(ConfigError) as e:
        validate(explicit.replace(memory_limit=limit))
    msg = str(e.value)
    assert f"stage {k} ({free.stages[k]}" in msg
    assert f"{mems[k] / 2**30:.3f} GiB" in msg and f"{limit / 2**30:.3f} GiB" in msg and "--memory-limit" in msg
    # the planner, asked under the same limit, picks a layout that fits (or says none does)
    try:
        tight = plan_for(cfg.replace(memory_limit=limit))
    except PlanError as err:
        assert "memory limit" in str(err)
    else:
        assert tight != free
        assert all(stage_memory(costs, s.first, s.last, max(s.rows(24))) <= limit for s in tight.stages)
        ahd_plan(cfg.replace(plan=str(tight), memory_limit=limit), 4)  # and that plan validates


def test_plan_for_and_the_plan_cli_respect_the_memory_limit(tmp_path, capsys):
    costs = random_cost_table(7, 6, 4, 64, with_memory=True)
    free = search(costs, 4, 64)
    worst = max(c.memory_bytes for c in free.stages)
    for frac in (0.99, 0.95, 0.9, 0.8, 0.7, 0.6):
        try:
            tight = search(costs, 4, 64, memory_limit_bytes=frac * worst)
        except PlanError:
            continue
        if tight.plan != free.plan:
            break
    else:
        pytest.fail("no memory limit changed the plan")
    limit = frac * worst
    assert all(c.memory_bytes <= limit for c in tight.stages)
    costs.workload = "nas-cifar10"  # 6 blocks
    path = str(tmp_path / "nas.csv")
    costs.to_csv(path)
    cfg = RunConfig(workload="nas-cifar10", devices=4, batch_size=64, profile=path)
    assert plan_for(cfg) == free.plan
    assert plan_for(cfg.replace(memory_limit=limit)) == tight.plan
    # the tr / tr-dpu layout is held to the limit too
    from pipebd.planner import pipeline_plan_for

    for s in pipeline_plan_for(cfg.replace(memory_limit=limit * 4)).stages:
        assert stage_memory(costs, s.first, s.last, 64) <= limit * 4
    assert main(["plan", "-w", "nas-cifar10", "-n", "4", "-b", "64", "--profile", path,
                 "--memory-limit", f"{limit:.0f}"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert parse_plan(out[-1]) == tight.plan and "memory limit" in out[0]


def test_memory_limit_for(monkeypatch):
    import torch

    from pipebd.planner import CUDA_MARGIN, memory_limit_for

    assert memory_limit_for(RunConfig())[0] is None
    assert memory_limit_for(RunConfig(memory_limit=8e9)) == (8e9, "--memory-limit")
    with pytest.raises(ConfigError, match="must be > 0"):
        memory_limit_for(RunConfig(memory_limit=-1.0))
    cuda = RunConfig(device_type="cuda")
    table = random_cost_table(1, 2, 2, 8)
    table.capacity = 5e9
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert memory_limit_for(cuda, table)[0] == 5e9  # planning for a GPU elsewhere: the profile's capacity
    assert memory_limit_for(cuda)[0] is None

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props())
    frac, floor = CUDA_MARGIN
    assert memory_limit_for(cuda)[0] == pytest.approx(80 * 2**30 * (1 - frac))
    shared = memory_limit_for(cuda.replace(devices=4, share_gpus=True))
    assert shared[0] == pytest.approx(80 * 2**30 * (1 - frac) / 2) and "shared by 2" in shared[1]
