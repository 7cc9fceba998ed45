"""The teacher-activation cache without processes: its schedule, the store, the refusals before
spawning, the epoch-amortised windows (measured and replayed) and ``--strategy auto``."""

from __future__ import annotations

import json

import pytest
import torch

from pipebd import metrics
from pipebd.config import ConfigError, RunConfig
from pipebd.costmodel import random_cost_table
from pipebd.cachestore import ActivationStore, StoreSpec
from pipebd.schedule import (BARRIER, GET, OPEN, PUT, ScheduleSpec, is_fill, parse_window_note, problems,
                             window_note)
from pipebd.strategies import get_strategy
from pipebd.strategies.cache import CacheLayout
from pipebd.strategies.predict import predict

CACHE = get_strategy("cache")
TINY = RunConfig(workload="tiny", strategy="cache", devices=2, batch_size=8, steps=3, warmup=1)


def _schedule(devices=2, steps=5, warmup=1, epochs=4, blocks=4, **layout):
    assignment = tuple(tuple(b for b in range(blocks) if b % devices == r) for r in range(devices))
    spec = ScheduleSpec(num_blocks=blocks, devices=devices, batch_size=8, steps=steps, warmup=warmup, epochs=epochs)
    return CACHE.generate(spec, CacheLayout(assignment, **layout))


def test_window_notes_round_trip():
    assert parse_window_note(window_note(pipelined=True, scale=0.25)) == (True, 0.25)
    assert parse_window_note(window_note()) == (False, 1.0) and window_note() == ""
    assert parse_window_note("pipelined") == (True, 1.0)


@pytest.mark.parametrize("devices", [2, 3])
def test_the_schedule_is_valid_and_runs_the_teacher_once(devices):
    s = _schedule(devices=devices, steps=7)
    assert problems(s) == []
    puts = [(a.step, a.boundary) for _r, _i, a in s if a.kind == PUT]
    assert sorted(puts) == [(c, k) for c in range(7) for k in range(1, 5)]  # every batch once, every boundary
    owners = {a.step: r for r, _i, a in s if a.kind == PUT}
    assert all(owners[c] == c % devices for c in owners)  # the batches shared round-robin
    assert all(is_fill(a) for _r, _i, a in s if a.kind == PUT or a.kind == "TEACHER")
    # every rank's teacher-pass window counts 1/E of its time; the students' window all of it
    scales = [[parse_window_note(a.note)[1] for a in acts if a.kind == OPEN] for acts in s.ranks]
    assert all(sc == [0.25, 1.0] for sc in scales)
    # the timed batches are a multiple of the ranks (every rank times as many)
    timed = [sum(1 for a in acts[acts.index(next(a for a in acts if a.kind == OPEN)):] if a.kind == PUT) for acts
             in s.ranks]
    assert len(set(timed)) == 1 and timed[0] > 0


def test_refresh_rebuilds_the_store_every_epoch():
    s = _schedule(steps=6, epochs=1, epoch_steps=3, refresh=True)
    assert problems(s) == []
    opens = [parse_window_note(a.note)[1] for a in s.ranks[0] if a.kind == OPEN]
    assert opens == [0.5, 0.5, 0.5, 0.5]  # (teacher pass, students) per epoch, each half of two epochs
    kinds = [a.kind for a in s.ranks[0] if a.kind in (PUT, GET)]
    first_get, last_put = kinds.index(GET), len(kinds) - 1 - kinds[::-1].index(PUT)
    assert first_get < last_put  # epoch 1's pass comes after epoch 0's students


def test_the_validator_refuses_a_read_before_the_store_is_complete():
    s = _schedule()
    broken = s.with_ranks([[a for a in acts if a.kind != BARRIER] for acts in s.ranks])
    found = problems(broken)
    assert any("before the store is complete" in msg for _r, _i, msg in found), found


def test_a_replayed_cache_pays_its_teacher_pass_once_in_e_epochs():
    costs = random_cost_table(3, 4, 2, 8)
    layout = CACHE.choose_layout(costs, ScheduleSpec(num_blocks=4, devices=2, batch_size=8, steps=1))
    e1, e8 = (predict("cache", costs, 2, 8, 100, layout=layout, epochs=e).epoch_s for e in (1, 8))
    students = predict("cache", costs, 2, 8, 100, layout=layout, epochs=10**6).epoch_s  # the pass -> 0
    assert e8 < e1
    assert (e1 - students) == pytest.approx(8 * (e8 - students), rel=1e-4)  # the pass, 1/E of it per epoch
    relay = predict("tr-dpu", costs, 2, 8, 100)
    assert predict("tr-dpu", costs, 2, 8, 100, epochs=8).epoch_s == pytest.approx(relay.epoch_s)


def test_summarise_scales_a_window_and_counts_steps_over_all_ranks():
    # rank 0 timed batches 2 and 4, rank 1 batches 3 and 5, in a 4 s window of scale 1/4; then an
    # 8 s students' window of 2 steps on both ranks
    def report(rank, steps):
        evs = [("teacher", -1, k, 0.5 + i, 1.0 + i) for i, k in enumerate(steps)] + \
              [("student", 0, k, 11.0 + i, 12.0 + i) for i, k in enumerate((1, 2))]
        return metrics.RankReport(rank=rank, wall_s=12.0, events=evs, peak_memory_mb=1.0,
                                  extra={"windows": [(0.0, 4.0), (10.0, 18.0)], "pipelined": [False, False],
                                         "scales": [0.25, 1.0]})

    out = metrics.summarise([report(0, (2, 4)), report(1, (3, 5))], batch_size=8, steps=2, epoch_samples=80)
    # teacher pass: 4 s for 4 batches -> 1 s per batch, x 10 batches x 1/4; students: 4 s per step x 10
    assert out["epoch_time_s"] == pytest.approx(10 * 1.0 / 4 + 10 * 4.0)
    assert out["measured_time_s"] == pytest.approx(12.0)


def _spec(tmp_path, **kw) -> StoreSpec:
    base = dict(path=str(tmp_path / "store"), medium="disk", rows=10, shapes=((2, 3), (4,)), dtypes=("fp32", "bf16"),
                key="k1")
    return StoreSpec(**{**base, **kw})


def test_the_store_writes_reads_and_marks_batches_complete(tmp_path):
    st = ActivationStore(_spec(tmp_path), 0)
    st.create()
    st.map()
    idx = torch.tensor([7, 2, 5])
    x1, x2 = torch.randn(3, 2, 3), torch.randn(3, 4)
    st.put(1, idx, x1)
    st.put(2, idx, x2)
    assert not st.complete(4, (0, 3))
    st.mark_complete(4, (0, 3))
    assert st.complete(4, (0, 3)) and not st.complete(4, (0, 2))
    assert torch.equal(st.get("a", 1, idx, torch.device("cpu")), x1)  # fp32: exact
    st.prefetch("b", 2, idx[:2])
    assert torch.equal(st.get("b", 2, idx[:2], torch.device("cpu")), x2[:2].bfloat16())
    st.close()
    again = ActivationStore(_spec(tmp_path), 0)  # a later run with the same key reuses it
    again.create()
    again.map()
    assert again.complete(4, (0, 3)) and torch.equal(again.get("c", 1, idx, torch.device("cpu")), x1)
    again.close()
    assert not ActivationStore(_spec(tmp_path, reuse=False), 0).complete(4, (0, 3))  # rebuilt: nothing reused
    with open(tmp_path / "store" / "manifest.json") as f:
        assert json.load(f)["key"] == "k1"
    with pytest.raises(RuntimeError, match="holds something else"):
        ActivationStore(_spec(tmp_path, key="k2"), 0).create()


def test_reuse_with_augmentation_is_refused_before_spawning():
    with pytest.raises(ConfigError, match="--augment"):
        CACHE.validate(TINY.replace(augment=True, cache_refresh="never"), 4)
    layout = CACHE.layout(TINY.replace(augment=True), 4)  # auto: rebuilt every epoch instead
    assert layout.refresh and not layout.store.reuse


def test_an_oversized_store_is_refused_with_the_size_it_needs(tmp_path):
    with pytest.raises(ConfigError, match=r"store needs 0\.\d\d GiB.*--cache-memory"):
        CACHE.layout(TINY.replace(workload="compress-cifar10", cache_memory=1024), 5)
    layout = CACHE.layout(TINY.replace(workload="compress-cifar10", cache_memory=1024, cache_dir=str(tmp_path)), 5)
    assert layout.medium == "disk" and layout.store.path.startswith(str(tmp_path))


def test_a_reused_store_that_would_miss_samples_is_refused():
    cfg = TINY.replace(data_size=20, steps=4)  # 2 batches of 8 per epoch leave 4 samples out
    with pytest.raises(ConfigError, match="drop_last"):
        CACHE.layout(cfg, 4)
    assert CACHE.layout(cfg.replace(data_size=16), 4).epoch_steps == 2
    assert CACHE.layout(cfg.replace(cache_refresh="epoch"), 4).refresh


def test_too_few_steps_for_the_ranks_is_refused():
    with pytest.raises(ConfigError, match="at least --devices"):
        CACHE.validate(TINY.replace(devices=3, steps=1, warmup=1), 4)


def test_a_half_precision_store_says_it_is_lossy():
    assert CACHE.lossy_reason(TINY) is None
    why = CACHE.lossy_reason(TINY.replace(cache_dtype="bf16", teacher_precision="fp32", student_precision="fp32"))
    assert why and "bf16" in why and "auto" in why


def test_auto_picks_the_faster_prediction_and_says_why():
    from pipebd.strategies.auto import choose

    for epochs in (1, 50):
        c = choose(TINY.replace(strategy="auto", epochs=epochs))
        assert set(c.predicted) == {"ahd", "cache"}
        assert c.strategy == min(c.predicted, key=c.predicted.get)
        assert "ahd" in c.why and "cache" in c.why and "GiB" in c.why
    assert choose(TINY.replace(epochs=50)).predicted["cache"] < choose(TINY.replace(epochs=1)).predicted["cache"]


def test_a_store_that_fits_nowhere_rules_cache_out_of_auto():
    from pipebd.strategies.auto import choose

    c = choose(TINY.replace(strategy="auto", workload="compress-cifar10", cache_memory=1024, epochs=50))
    assert c.strategy == "ahd" and "cache ruled out" in c.why



def test_plan_strategies_all_predicts_every_strategy_and_picks_as_auto_does(capsys):
    from pipebd.cli import main
    from pipebd.strategies import strategy_names

    argv = ["plan", "-w", "tiny", "-n", "2", "-b", "8", "--steps", "4", "--warmup", "1", "--epochs", "8"]
    assert main([*argv, "--strategies", "all"]) == 0
    out = capsys.readouterr().out
    predicted = [line.split()[0] for line in out.splitlines() if line.endswith("s/epoch predicted")]
    assert {"dp", "ls", "tr", "tr-dpu", "ahd", "cache"} <= set(predicted) and "auto" not in predicted
    assert set(predicted) | {"sequential", "ls-paper", "auto"} >= set(strategy_names())
    seconds = [float(line.split()[1]) for line in out.splitlines() if line.endswith("s/epoch predicted")]
    assert seconds == sorted(seconds)  # fastest first: the one auto chose
    assert f"auto chose {predicted[0]} for 8 epoch(s)" in out and "sequential ruled out" in out
    assert main([*argv, "--strategies", "ahd,cache"]) == 0
    assert "auto chose" in capsys.readouterr().out
    assert main([*argv, "--strategies", "ahd,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err


def test_phase_b_replicates_blocks_on_row_shards_with_an_allreduce_and_the_schedule_is_valid():
    from pipebd.schedule import ALLREDUCE, STUDENT
    from pipebd.strategies.cache import replica_groups

    spec = ScheduleSpec(num_blocks=4, devices=3, batch_size=9, steps=3, warmup=1)
    s = CACHE.generate(spec, CacheLayout(((0, 1), (0, 2), (0, 3))))
    assert problems(s) == []
    acts = [(r, a) for r, _i, a in s]
    assert sorted({a.rows for r, a in acts if a.kind == STUDENT and a.block == 0}) == [(0, 3), (3, 6), (6, 9)]
    assert {a.rows for r, a in acts if a.kind == STUDENT and a.block > 0} == {(0, 9)}
    assert {tuple(a.blocks) for r, a in acts if a.kind == ALLREDUCE} == {(0,)}
    assert {r for r, a in acts if a.kind == ALLREDUCE} == {0, 1, 2}
    assert replica_groups(((0, 1), (0, 2), (0, 3))) == {0: (0, 1, 2), 1: (0,), 2: (1,), 3: (2,)}
    shards = CACHE.reference_shards(TINY.replace(devices=3, batch_size=9, ls_map="0:1,0:2,0:3"), 4)
    assert shards == ((3, 3, 3), (9,), (9,), (9,))


def test_the_phase_b_grouping_is_the_cheapest_of_whole_blocks_to_every_block_everywhere():
    from pipebd.strategies.cache import _assignment, cache_block_cost, replica_groups

    costs = random_cost_table(5, 4, 8, 8)
    for devices in (2, 4, 8):  # 8 devices, 4 blocks: was refused; now blocks are replicated
        assignment = _assignment(costs, devices, 8, "memory")
        groups = replica_groups(assignment)
        assert len(assignment) == devices and set(groups) == set(range(4)) and all(assignment)
        sizes = {len(rs) for rs in groups.values()}
        assert len(sizes) == 1 and devices % sizes.pop() == 0  # equal groups
        def step(a):
            g = replica_groups(a)
            return max(sum(cache_block_cost(costs, b, 8, "memory", len(g[b])) for b in blocks) for blocks in a)
        everywhere = tuple(tuple(range(4)) for _ in range(devices))
        assert step(assignment) <= step(everywhere) + 1e-12
        if devices <= 4:
            from baselines.ls import lpt_assign

            whole = lpt_assign([cache_block_cost(costs, b, 8, "memory") for b in range(4)], devices)
            assert step(assignment) <= step(tuple(map(tuple, whole))) + 1e-12
        assert problems(CACHE.generate(ScheduleSpec(num_blocks=4, devices=devices, batch_size=8, steps=2),
                                       CacheLayout(assignment))) == []


def test_a_shared_ls_map_replicates_and_a_plain_one_still_refuses_duplicates():
    from baselines.ls import parse_ls_map

    assert parse_ls_map("0:1,0:2:3", 4, 2, shared=True) == [[0, 1], [0, 2, 3]]
    with pytest.raises(ConfigError, match="exactly one rank"):
        parse_ls_map("0:1,0:2:3", 4, 2)
    with pytest.raises(ConfigError, match="at most once per rank"):
        parse_ls_map("0:0:1,2:3", 4, 2, shared=True)
    with pytest.raises(ConfigError, match="leaves block"):
        parse_ls_map("0:1,0:2", 4, 2, shared=True)
