"""Teacher relaying (``tr``) and decoupled parameter update (``tr-dpu``), Pipe-BD §III-A/B:
parsing and validating ``--stages``, and how relayed rows tile a batch (no processes; the runs
are in tests/integration/test_relay.py and test_verify_registry.py)."""

from __future__ import annotations

import pytest

from pipebd.plan import row_overlaps, row_ranges
from pipebd.config import ConfigError, RunConfig
from pipebd.preflight import validate
from pipebd.strategies.relay import parse_stages


@pytest.mark.parametrize("stages,devices,match", [
    ("0-1;2-3", 2, "cannot parse"),
    ("a-b,2-3", 2, "cannot parse"),
    ("1-0,2-3", 2, "ends before it starts"),
    ("0,2-3", 2, "misses block"),
    ("0-1,2", 2, "misses block"),
    ("0-2,2-3", 2, "repeats or reorders"),
    ("2-3,0-1", 2, "misses block"),
    ("0-1,2-4", 2, "only 4 blocks"),
    ("0-1,2-3", 3, "--devices is 3"),
    ("0,1,2,3", 2, "--devices is 2"),
])
def test_bad_stages(stages, devices, match):
    for strategy in ("tr", "tr-dpu"):
        with pytest.raises(ConfigError, match=match):
            validate(RunConfig(workload="tiny", strategy=strategy, devices=devices, stages=stages))


def test_reordered_stages_message():
    with pytest.raises(ConfigError, match="repeats or reorders block 0"):
        parse_stages("0-1,0-3", num_blocks=4, devices=2)


def test_more_devices_than_blocks():
    with pytest.raises(ConfigError, match="ahd"):
        validate(RunConfig(workload="tiny", strategy="tr-dpu", devices=5))


def test_good_stages_validate():
    validate(RunConfig(workload="tiny", strategy="tr", devices=2, stages="0, 1-3"))
    validate(RunConfig(workload="tiny", strategy="tr-dpu", devices=4))


def test_row_overlaps_tile_the_batch():
    for send, recv in [((8,), (4, 4)), ((4, 4), (8,)), ((3, 3, 2), (4, 4)), ((5, 3), (3, 3, 2)), ((8,), (8,))]:
        pieces = row_overlaps(send, recv)
        rows = sorted((lo, hi) for _i, _j, lo, hi in pieces)
        assert rows[0][0] == 0 and rows[-1][1] == 8 and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        for i, j, lo, hi in pieces:
            s, r = row_ranges(send)[i], row_ranges(recv)[j]
            assert s[0] <= lo < hi <= s[1] and r[0] <= lo < hi <= r[1]
    assert row_overlaps((4, 4), (8,)) == [(0, 0, 0, 4), (1, 0, 4, 8)]
