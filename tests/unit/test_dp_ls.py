"""The dp and ls baselines without processes: layouts (LPT, --ls-map), validation, the reference
shards. Batch 10 makes the 3-rank dp split uneven (4, 3, 3), which exercises the rows_r / B
loss weights; the runs are in tests/integration (test_dp_ls.py, test_verify_registry.py).
"""

from __future__ import annotations

import pytest

from baselines.dp import DataParallel
from baselines.ls import LayerWise, format_ls_map, lpt_assign, parse_ls_map
from pipebd.config import ConfigError, RunConfig
from pipebd.preflight import validate
from pipebd.planner import cost_table_for

BATCH = 10


def _cfg(workload: str, strategy: str, devices: int, tmp, **kw) -> RunConfig:
    return RunConfig(workload=workload, strategy=strategy, devices=devices, batch_size=BATCH, steps=3, warmup=1,
                     out=str(tmp), quiet=True, timeout=120.0, **kw)


def test_lpt_assign_balances_and_breaks_ties_deterministically():
    assert lpt_assign([1.0, 2.0, 3.0, 4.0], 2) == [[0, 3], [1, 2]]
    assert lpt_assign([1.0, 1.0, 1.0, 1.0], 2) == [[0, 2], [1, 3]]
    assert lpt_assign([1.0, 1.0, 1.0, 1.0], 3) == [[0, 3], [1], [2]]
    assert lpt_assign([2.0, 1.0], 3) == [[0], [1], []]
    # Graham's classic instance: LPT reaches makespan 11 where 9 is optimal
    jobs = [5.0, 5.0, 4.0, 4.0, 3.0, 3.0, 3.0]
    bins = lpt_assign(jobs, 3)
    assert sorted(b for rank in bins for b in rank) == list(range(7))
    assert max(sum(jobs[b] for b in rank) for rank in bins) == 11.0
    with pytest.raises(ValueError):
        lpt_assign([1.0], 0)


def test_ls_default_plan_is_lpt_of_the_runs_cost_table(tmp_path):
    cfg = _cfg("tiny", "ls", 2, tmp_path)
    table = cost_table_for(cfg)
    # the cost ls pays per block: data + teacher prefix 0..i + student i, at the full batch
    b = cfg.batch_size
    costs = [table.data_time(b) + sum(table.teacher_time(j, b) for j in range(i + 1)) + table.student_time(i, b)
             for i in range(4)]
    bins = lpt_assign(costs, 2)
    assert sorted(b for rank in bins for b in rank) == [0, 1, 2, 3] and all(bins)
    # no single move of a block to the other rank lowers the makespan
    loads = [sum(costs[b] for b in rank) for rank in bins]
    heavy = loads.index(max(loads))
    for b in bins[heavy]:
        assert max(loads[heavy] - costs[b], loads[1 - heavy] + costs[b]) >= max(loads)
    assert LayerWise.describe_plan(cfg, 4) == format_ls_map(bins)


def test_parse_ls_map_accepts_a_partition():
    assert parse_ls_map("0:1:2,3:4,5", 6, 3) == [[0, 1, 2], [3, 4], [5]]
    assert parse_ls_map(" 3 , 2:0:1 ", 4, 2) == [[3], [2, 0, 1]]
    assert format_ls_map([[0, 1, 2], [3, 4], [5]]) == "0:1:2,3:4,5"


@pytest.mark.parametrize("ls_map, devices, match", [
    ("0:x,1:2:3", 2, r"cannot parse --ls-map '0:x,1:2:3': 'x' \(rank 0\)"),
    ("0;1,2:3", 2, r"cannot parse --ls-map"),
    ("0:1,-2:3", 2, r"'-2' \(rank 1\) is not a block number"),
    ("0:1,2", 2, r"leaves block\(s\) 3 to no rank"),
    ("0:1,1:2:3", 2, r"assigns block 1 twice \(rank 0 and rank 1\)"),
    ("0:1,2:3:7", 2, r"names block 7 \(rank 1\).*blocks 0\.\.3"),
    ("0:1:2:3", 2, r"assigns blocks to 1 rank\(s\) but --devices is 2"),
    ("0:1,2,3", 2, r"3 rank\(s\) but --devices is 2.*--devices 3"),
    ("0:1:2:3,", 2, r"gives rank 1 no blocks"),
])
def test_ls_map_errors_are_actionable(ls_map, devices, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        validate(_cfg("tiny", "ls", devices, tmp_path, ls_map=ls_map))


def test_ls_rejects_more_devices_than_blocks(tmp_path):
    with pytest.raises(ConfigError, match=r"--devices 5 exceeds the 4 blocks.*use --devices 4 or fewer"):
        validate(_cfg("tiny", "ls", 5, tmp_path))
    validate(_cfg("tiny", "ls", 4, tmp_path))  # one block per rank is fine


def test_dp_validation_and_reference_shards(tmp_path):
    with pytest.raises(ConfigError, match=r"--batch-size must be >= --devices; got --batch-size 2"):
        validate(_cfg("tiny", "dp", 3, tmp_path).replace(batch_size=2))
    validate(_cfg("tiny", "dp", 3, tmp_path).replace(batch_size=3))
    assert DataParallel.reference_shards(_cfg("tiny", "dp", 2, tmp_path), 4) == ((5, 5),) * 4
    assert DataParallel.reference_shards(_cfg("tiny", "dp", 3, tmp_path), 4) == ((4, 3, 3),) * 4
    assert DataParallel.describe_plan(_cfg("tiny", "dp", 3, tmp_path), 4) == "dp x 3"
