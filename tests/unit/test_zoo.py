"""The NAS search space of the zoo: the Zero (skip) choice of the supernet cells.

Pipe-BD's NAS setting (after DNA / ProxylessNAS) has, besides the six MBConv choices (kernel
3/5/7 × expansion 3/6), a Zero choice on every cell except the first of each stage: the cell
is skipped (an identity), which is only legal where the cell keeps the shape. These tests pin
where Zero is, that it is an identity, that paths stay a pure function of (seed, block, step),
that ``nas_zero=False`` gives back the old 6-choice space, and that the FLOP estimate is the
mean over the sampled paths with Zero costing nothing.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from pipebd.config import RunConfig
from pipebd.options import workload_options
from pipebd.costs import block_facts
from pipebd.distill import BlockTrainer
from pipebd.zoo import WorkloadOptions, build_workload, sample_path
from pipebd.zoo.layers import NAS_CHOICES, ZERO_CHOICE, SupernetBlock, Zero

#: Zero cells per block: stage cells 2,4,4,4,4,1 minus the first cell of each stage.
NAS_ZERO_CELLS = [1, 3, 3, 3, 3, 0]


@pytest.mark.parametrize("name,options", [("nas-cifar10", WorkloadOptions()),
                                          ("nas-imagenet", WorkloadOptions(resolution=32))])
def test_zero_is_on_every_cell_but_the_first_of_each_stage(name, options):
    wl = build_workload(name, options)
    assert [b.zero_cells for b in wl.student] == NAS_ZERO_CELLS
    assert sum(b.zero_cells for b in wl.student) == 13 and sum(len(b.cells) for b in wl.student) == 19
    x = torch.zeros(2, *wl.input_shape)
    for i, b in enumerate(wl.student):
        b.eval()
        assert b.choices_per_cell == [len(NAS_CHOICES)] + [len(NAS_CHOICES) + 1] * (len(b.cells) - 1)
        assert not any(isinstance(op, Zero) for op in b.cells[0])
        with torch.no_grad():
            h = b.prefix(x)
            for c, cell in enumerate(b.cells):
                y = cell[0](h)
                if c > 0:  # Zero is only there where the cell keeps the shape (stride 1, cin == cout)
                    assert isinstance(cell[ZERO_CHOICE], Zero) and y.shape == h.shape
                    assert b.choice_name(c, ZERO_CHOICE) == "zero"
                h = y
            x = wl.teacher[i](x)


def test_no_nas_zero_is_the_old_six_choice_space():
    wl = build_workload("nas-cifar10", WorkloadOptions(nas_zero=False))
    assert [b.zero_cells for b in wl.student] == [0] * 6
    assert all(b.choices_per_cell == [6] * len(b.cells) for b in wl.student)
    # the paths of the 6-choice space are unchanged (recorded paths and checkpoints stay valid)
    assert [sample_path(b, seed=0, block_index=i, step=0) for i, b in enumerate(wl.student)] == \
        [(2, 3), (4, 2, 3, 3), (3, 1, 0, 2), (5, 2, 5, 0), (2, 0, 0, 5), (5,)]
    assert [b.zero_cells for b in build_workload("tiny-nas", WorkloadOptions(nas_zero=False)).student] == [0] * 4
    assert [b.zero_cells for b in build_workload("tiny-nas").student] == [1, 1, 1, 0]


def test_run_config_passes_nas_zero_to_the_workload():
    assert RunConfig().nas_zero and workload_options(RunConfig()).nas_zero
    assert workload_options(RunConfig(nas_zero=False)).nas_zero is False


def test_zero_cell_is_an_identity():
    torch.manual_seed(0)
    blk = SupernetBlock(8, 16, cells=3, stride=2, zero=True)
    blk.eval()
    x = torch.randn(2, 8, 8, 8)
    assert blk.cells[1][ZERO_CHOICE](x) is x
    blk.set_path((4, ZERO_CHOICE, ZERO_CHOICE))
    with torch.no_grad():
        assert torch.equal(blk(x), blk.cells[0][4](x))
        blk.set_path((4, ZERO_CHOICE, 1))
        assert torch.equal(blk(x), blk.cells[2][1](blk.cells[0][4](x)))
    with pytest.raises(ValueError, match=r"does not fit .* choices per cell \[6, 7, 7\]"):
        blk.set_path((ZERO_CHOICE, 0, 0))  # the first cell has no Zero
    assert sum(p.numel() for p in blk.cells[1][ZERO_CHOICE].parameters()) == 0


def test_paths_with_zero_are_a_function_of_seed_block_step():
    s = build_workload("nas-cifar10", probe=False).student[2]
    again = build_workload("nas-cifar10", probe=False).student[2]
    paths = [sample_path(s, seed=1, block_index=2, step=k) for k in range(60)]
    assert paths == [sample_path(again, seed=1, block_index=2, step=k) for k in range(60)]
    assert all(isinstance(c, int) and 0 <= c < n for p in paths for c, n in zip(p, s.choices_per_cell))
    assert all(p[0] != ZERO_CHOICE for p in paths)
    assert any(ZERO_CHOICE in p[1:] for p in paths)  # Zero is sampled
    assert paths != [sample_path(s, seed=2, block_index=2, step=k) for k in range(60)]
    assert paths != [sample_path(s, seed=1, block_index=3, step=k) for k in range(60)]


def test_a_zero_cell_gets_no_update():
    wl = build_workload("tiny-nas", WorkloadOptions(seed=3))
    blk = wl.student[1]
    step = next(k for k in range(100) if sample_path(blk, seed=0, block_index=1, step=k)[1] == ZERO_CHOICE)
    before = [p.detach().clone() for p in blk.cells[1].parameters()]
    first = [p.detach().clone() for p in blk.cells[0].parameters()]
    trainer = BlockTrainer(1, blk, False, 5, 0)
    x = torch.randn(4, *wl.boundary_shapes[1])
    y = torch.randn(4, *wl.boundary_shapes[2])
    trainer.train_step(step, x, y)
    assert trainer.paths[-1][1] == ZERO_CHOICE
    assert all(torch.equal(a, p) for a, p in zip(before, blk.cells[1].parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(first, blk.cells[0].parameters()))


def _path_flops(block: SupernetBlock, x: torch.Tensor, path: tuple[int, ...]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    block.set_path(path)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        block(x)
    return float(fc.get_total_flops())


def test_student_flops_are_the_mean_over_paths_with_zero_free():
    facts = block_facts("tiny-nas")
    facts6 = block_facts("tiny-nas", WorkloadOptions(nas_zero=False))
    with torch.device("meta"):
        wl = build_workload("tiny-nas", probe=False)
        x = torch.zeros(1, *wl.input_shape)
        for i, blk in enumerate(wl.student):
            paths = list(itertools.product(*(range(n) for n in blk.choices_per_cell)))
            mean = sum(_path_flops(blk, x, p) for p in paths) / len(paths)
            assert facts[i].student_flops == pytest.approx(mean, rel=1e-9)
            x = wl.teacher[i](x)
    # Zero costs nothing: a cell with Zero averages 6/7 of its MBConv FLOPs
    assert all(a.student_flops < b.student_flops for a, b in zip(facts[:3], facts6[:3]))
    assert facts[3].student_flops == facts6[3].student_flops  # one cell, no Zero
    assert [f.student_params for f in facts] == [f.student_params for f in facts6]


def test_a_rank_of_a_schedule_builds_only_its_blocks():
    """The ownership is read from the rank's actions; a builder without partial support builds
    everything and the blocks the rank does not own are dropped."""
    from pipebd.strategies import get_strategy
    from pipebd.zoo import NotOwned

    cfg = RunConfig(workload="tiny", strategy="even", devices=2, batch_size=4, steps=1, warmup=0)
    owned = [get_strategy("even").ownership(cfg, 4, r) for r in range(2)]
    assert owned[0].student | owned[1].student == {0, 1, 2, 3} and not owned[0].student & owned[1].student
    assert all(o.student <= o.teacher for o in owned)  # a rank runs the teacher of what it trains
    wl = build_workload("tiny", workload_options(cfg), owned=owned[1])
    full = build_workload("tiny", workload_options(cfg))
    assert wl.boundary_shapes == full.boundary_shapes
    for i in range(4):
        assert (type(wl.student[i]) is NotOwned) == (i not in owned[1].student)
        if i in owned[1].student:
            assert all(torch.equal(a, b) for a, b in zip(wl.student[i].state_dict().values(),
                                                         full.student[i].state_dict().values()))
    assert get_strategy("dp").ownership(cfg.replace(strategy="dp"), 4, 1).student == {0, 1, 2, 3}
