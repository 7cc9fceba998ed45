"""Compute modes (pipebd.modes): labels and text, the pins, the cost table's candidates, the
per-block choice, and what bf16 / channels-last do to one block's math (no processes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipebd.config import ConfigError, RunConfig
from pipebd.costmodel import CostTable, auto_priced, choose_modes, describe_modes, random_cost_table
from pipebd.distill import BlockTrainer, teacher_block
from pipebd.modes import FP32, BlockModes, Mode, candidate_modes
from pipebd.planner import modes_for

BF16, BF16_CL, FP32_CL = Mode("bf16"), Mode("bf16", True), Mode("fp32", True)


def test_mode_labels_round_trip():
    for label in ("fp32", "bf16", "fp32-cl", "bf16-cl"):
        assert Mode.parse(label).label == label
    with pytest.raises(ConfigError, match="unknown compute mode"):
        Mode.parse("fp16")


def test_block_modes_text_compresses_runs_and_round_trips():
    m = BlockModes((BF16_CL,) * 3 + (FP32,), (FP32_CL, BF16_CL, BF16_CL, FP32))
    assert m.to_text() == "teacher=bf16-cl*3,fp32;student=fp32-cl,bf16-cl*2,fp32"
    assert BlockModes.from_text(m.to_text()) == m
    assert m.lossy and not m.is_fp32_contiguous
    assert m.boundary(0) == FP32 and m.boundary(1) == BF16_CL and m.boundary(4) == FP32
    with pytest.raises(ConfigError):
        BlockModes.from_text("teacher=fp32")


def test_candidate_modes_follow_the_pins():
    assert candidate_modes() == (FP32, BF16, FP32_CL, BF16_CL)
    assert candidate_modes(conv=False) == (FP32, BF16)
    assert candidate_modes("fp32", "contiguous") == (FP32,)
    assert candidate_modes("bf16", "channels-last") == (BF16_CL,)
    with pytest.raises(ConfigError, match="convolutional"):
        candidate_modes("auto", "channels-last", conv=False)


def _table_with_modes() -> CostTable:
    """Two blocks: bf16-cl is fastest for both teachers; fp32-cl for student 1, bf16 for student 0."""
    base = random_cost_table(1, 2, 2, 32)
    rows = base.to_rows()
    scale = {("teacher", 0): {"bf16": 0.6, "fp32-cl": 0.9, "bf16-cl": 0.5},
             ("teacher", 1): {"bf16": 0.6, "fp32-cl": 0.9, "bf16-cl": 0.5},
             ("student", 0): {"bf16": 0.5, "fp32-cl": 0.9, "bf16-cl": 0.7},
             ("student", 1): {"bf16": 1.3, "fp32-cl": 0.6, "bf16-cl": 0.8}}
    extra = []
    for r in rows:
        for mode, f in scale.get((r["kind"], r["block"]), {}).items():
            extra.append({**r, "seconds": r["seconds"] * f, "mode": mode})
        if r["kind"] == "relay" and r["block"] == 1:
            extra.append({**r, "seconds": r["seconds"] * 0.5, "mode": "bf16"})
    return CostTable.from_rows(rows + extra)


def test_cost_table_keeps_every_mode_and_round_trips(tmp_path):
    t = _table_with_modes()
    assert t.has_modes()
    assert set(t.mode_times("student", 1)) == {"fp32", "bf16", "fp32-cl", "bf16-cl"}
    path = str(tmp_path / "p.csv")
    t.to_csv(path)
    back = CostTable.from_csv(path)
    assert back.variants == t.variants and back.teacher == t.teacher


def test_choice_is_per_block_and_part_and_priced():
    raw = _table_with_modes()
    modes = choose_modes(raw, 2, candidate_modes(), candidate_modes())
    assert modes.teacher == (BF16_CL, BF16_CL)
    assert modes.student == (BF16, FP32_CL)
    priced = raw.priced(modes)
    assert priced.modes == modes.to_text()
    assert priced.student[1] == raw.variants["student:1:fp32-cl"]
    assert priced.activation_bytes[0] == raw.activation_bytes[0]  # the loaded batch stays fp32
    assert priced.activation_bytes[1] == raw.activation_bytes[1] / 2  # a bf16 teacher's output
    assert priced.relay[1] == raw.variants["relay:1:bf16"]
    assert priced.priced(modes) is priced
    with pytest.raises(ValueError):
        priced.priced(BlockModes.uniform(2))
    # pins restrict the choice; fp32 pinned prices the base rows
    pinned = choose_modes(raw, 2, candidate_modes("fp32"), candidate_modes("fp32"))
    assert pinned.teacher == (FP32_CL, FP32_CL) and pinned.student == (FP32_CL, FP32_CL)
    assert raw.priced(BlockModes.uniform(2)) is raw
    lines = describe_modes(modes, raw)
    assert "bf16-cl*" in lines[1] and len(lines) == 3


def test_no_candidates_means_fp32_and_pins_are_kept():
    plain = random_cost_table(1, 3, 2, 32)
    assert choose_modes(plain, 3, candidate_modes(), candidate_modes()) == BlockModes.uniform(3)
    assert choose_modes(None, 3, candidate_modes("bf16", "contiguous"), candidate_modes("fp32")) == \
        BlockModes.uniform(3, BF16, FP32)
    assert plain.unpriced(BlockModes.uniform(3, BF16)) == [f"{p} {i} bf16" for p in ("teacher", "student")
                                                          for i in range(3)]
    priced, modes = auto_priced(plain)
    assert modes.is_fp32_contiguous and priced is plain


def test_modes_for_a_run(tmp_path):
    cfg = RunConfig(workload="tiny")
    assert modes_for(cfg).is_fp32_contiguous  # auto without a profile: fp32 contiguous
    pinned = modes_for(cfg.replace(teacher_precision="bf16", memory_format="channels-last"))
    assert pinned.teacher[0] == BF16_CL and pinned.student[0] == FP32_CL
    with pytest.raises(ConfigError, match="blocks"):
        modes_for(cfg.replace(modes="teacher=bf16*2;student=fp32*2"))
    n = modes_for(cfg).num_blocks
    text = f"teacher=bf16*{n};student=fp32*{n}"
    assert modes_for(cfg.replace(modes=text)).to_text() == text


def _conv(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))


def test_teacher_output_is_in_its_modes_dtype_and_format():
    x = torch.randn(4, 4, 8, 8)
    for mode in (FP32, BF16, FP32_CL, BF16_CL):
        t = mode.apply_to(_conv(0).eval())
        y = teacher_block(t, x, mode)
        assert y.dtype == mode.dtype
        assert y.is_contiguous(memory_format=mode.memory_format())
        ref = _conv(0).eval()(x)
        tol = 5e-2 if mode.bf16 else 1e-5
        assert torch.allclose(y.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_student_keeps_fp32_master_weights_and_loss_and_converts_its_input():
    torch.manual_seed(1)
    x, target = torch.randn(8, 4, 8, 8), torch.randn(8, 8, 8, 8)
    losses = {}
    for mode in (FP32, BF16_CL):
        t = BlockTrainer(index=0, block=_conv(2), last=False, total_steps=4, seed=0, mode=mode)
        for step in range(3):
            t.begin(step)
            # a bf16, channels-last input (a bf16-cl teacher's output) is converted on entry
            inp = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last) if step == 2 else x
            loss = t.accumulate(inp, target)
            assert loss.dtype == torch.float32
            t.apply()
        assert all(p.dtype == torch.float32 for p in t.block.parameters())
        assert all(s["momentum_buffer"].dtype == torch.float32 for s in t.optimizer.state.values())
        losses[mode.label] = t.losses()
        assert set(losses[mode.label]) == {0, 1, 2}
    for k in range(3):
        assert losses["bf16-cl"][k] == pytest.approx(losses["fp32"][k], rel=0.05)


def test_fp32_contiguous_is_the_plain_recipe_bit_for_bit():
    """The mode plumbing changes nothing in fp32 contiguous: the same bits as a plain SGD step."""
    torch.manual_seed(3)
    x, target = torch.randn(8, 4, 8, 8), torch.randn(8, 8, 8, 8)
    t = BlockTrainer(index=0, block=_conv(4), last=False, total_steps=4, seed=0)
    t.begin(0)
    t.accumulate(x, target)
    t.apply()
    ref = _conv(4)
    opt = torch.optim.SGD(ref.parameters(), lr=t.optim.lr, momentum=0.9, weight_decay=t.optim.weight_decay,
                          nesterov=True)
    nn.functional.mse_loss(ref(x), target).backward()
    opt.step()
    for a, b in zip(t.block.parameters(), ref.parameters()):
        assert torch.equal(a, b)
