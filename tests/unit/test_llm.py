"""Decoder workloads (pipebd.zoo.llm) and token data (pipebd.data_tokens), in process."""

from __future__ import annotations

import os

import pytest
import torch

from pipebd.config import RunConfig
from pipebd.data import DataConfig, DataError, DataSource, validate_data_config
from pipebd.data_tokens import SyntheticTokens, TextTokens
from pipebd.distill import BlockTrainer, block_loss, teacher_forward
from pipebd.options import data_config
from pipebd.zoo import WorkloadError, WorkloadOptions, build_workload
from pipebd.zoo.llm import SMOL, TINY, parse_candidates


def test_candidate_presets_and_ranges():
    assert parse_candidates(None, 4, TINY) == [["ffn0.5", "kv1"]] * 4
    uneven = parse_candidates("uneven", 30, SMOL)
    assert [len(lib) for lib in uneven] == [6] * 10 + [2] * 20
    assert parse_candidates("0-1=ffn1,noattn;2-3=noffn", 4, TINY) == [["ffn1", "noattn"]] * 2 + [["noffn"]] * 2


@pytest.mark.parametrize("text,match", [
    ("ffn2", "unknown candidate"), ("kv3", "divide"), ("bogus", "unknown candidate"),
    ("0-1=ffn1", "no candidates"), ("0-2=ffn1;2-3=kv1", "given twice"), ("0-9=ffn1", "outside"),
    ("ffn1,ffn1", "twice"), ("0-3", "unknown candidate"), ("0-3=", "BLOCKS=NAMES")])
def test_bad_candidates_say_what_to_write(text, match):
    with pytest.raises(WorkloadError, match=match):
        parse_candidates(text, 4, TINY)


def test_layers_per_block_must_divide_the_layers():
    assert build_workload("llm-tiny", WorkloadOptions(layers_per_block=2)).num_blocks == 2
    with pytest.raises(WorkloadError, match="must divide"):
        build_workload("llm-tiny", WorkloadOptions(layers_per_block=3), probe=False)


@pytest.mark.parametrize("block", [0, 1, 3])
def test_the_full_width_candidate_starts_as_its_parent(block):
    """ffn1 is the parent layer itself (Puzzle initialises replacement blocks from the parent): the
    same output as the teacher block, and so a zero loss, on the first, a middle and the last block."""
    wl = build_workload("llm-tiny", WorkloadOptions(candidates="ffn1,ffn0.5,kv1,linattn,noattn,noffn", seq_len=16))
    x = torch.randint(wl.num_classes, (3, 16))
    x = teacher_forward(wl.teacher[:block], x)
    y = teacher_forward([wl.teacher[block]], x)
    s = wl.student[block].eval()
    with torch.no_grad():
        out = s(x)
    assert out.shape == (6, *y.shape)
    torch.testing.assert_close(out[0], y, rtol=1e-5, atol=1e-5)
    assert float(block_loss(out[:1], y, last=False, block=s)) < 1e-8
    assert all(float(block_loss(out[i:i + 1], y, last=False, block=s)) > 0 for i in range(1, 6))


def test_candidates_learn_as_if_trained_alone():
    """The library's summed loss gives every candidate exactly the gradient its own loss gives it."""
    wl = build_workload("llm-tiny", WorkloadOptions(candidates="ffn0.5,kv1,linattn", seq_len=8))
    lib = wl.student[1]
    x = torch.randn(2, 8, 128)
    y = teacher_forward([wl.teacher[1]], x)
    block_loss(lib(x), y, last=False, block=lib).backward()
    together = [p.grad.clone() for p in lib.candidates[1].parameters()]
    lib.zero_grad()
    out = lib(x)
    lib.distill_loss(out[1:2], y).backward()
    alone = [p.grad for p in lib.candidates[1].parameters()]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_the_loss_is_normalised_mse():
    wl = build_workload("llm-tiny", WorkloadOptions(candidates="ffn0.5", seq_len=8))
    lib = wl.student[1]
    y = torch.randn(2, 8, 128)
    out = (y + 0.1 * torch.randn_like(y)).unsqueeze(0)
    expect = float(((out[0] - y) ** 2).mean() / (y ** 2).mean())
    assert float(lib.distill_loss(out, y)) == pytest.approx(expect, rel=1e-5)
    assert float(lib.distill_loss(10 * out, 10 * y)) == pytest.approx(expect, rel=1e-4)  # scale-free


def test_logits_kd_ends_with_the_lm_head_and_kl():
    wl = build_workload("llm-tiny", WorkloadOptions(logits_kd=True, seq_len=8, candidates="ffn1"))
    assert wl.boundary_shapes[-1] == (8, 512)
    lib = wl.student[-1]
    x = torch.randn(2, 8, 128)
    y = teacher_forward([wl.teacher[-1]], x)
    with torch.no_grad():
        assert float(lib.distill_loss(lib(x), y)) == pytest.approx(0.0, abs=1e-5)  # ffn1 = parent: KL 0


def test_a_trainer_steps_a_library_and_only_its_students():
    wl = build_workload("llm-tiny", WorkloadOptions(seq_len=8))
    x = torch.randint(512, (4, 8))
    y = teacher_forward([wl.teacher[0]], x)
    embed = wl.student[0].embed.weight.clone()
    before = [p.clone() for p in wl.student[0].candidates.parameters()]
    tr = BlockTrainer(0, wl.student[0], last=False, total_steps=2, seed=0)
    loss = tr.train_step(0, x, y)
    assert torch.isfinite(loss)
    assert torch.equal(wl.student[0].embed.weight, embed)  # the frozen embedding is the teacher's
    assert any(not torch.equal(a, b) for a, b in zip(before, wl.student[0].candidates.parameters()))


def test_synthetic_tokens_are_a_function_of_seed_and_index():
    a = SyntheticTokens(100, 16, 512, seed=3)
    x, y = a.batch([5, 7])
    assert x.dtype == torch.int64 and x.shape == (2, 16) and int(x.max()) < 512
    torch.testing.assert_close(a.batch([7])[0][0], x[1])
    assert not torch.equal(SyntheticTokens(100, 16, 512, seed=4).batch([5])[0][0], x[0])


def test_text_tokens_window_a_local_corpus_and_cache_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPEBD_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello world, " * 10)
    (root / "sub" / "b.py").write_text("print('x')\n" * 10)
    (root / "skip.bin").write_bytes(b"\0" * 100)
    ds = TextTokens(str(root), seq_len=8, vocab=512)
    text = ("hello world, " * 10 + "print('x')\n" * 10).encode()
    assert len(ds) == len(text) // 8
    assert ds.tokens[0].tolist() == list(text[:8]) and ds.tokens[-1].tolist() == list(text[(len(ds) - 1) * 8:len(ds) * 8])
    assert len(os.listdir(tmp_path / "cache")) == 1  # tokenised once, cached
    again = TextTokens(str(root), seq_len=8, vocab=512)
    assert torch.equal(again.tokens, ds.tokens)
    with pytest.raises(DataError, match="at least 256"):
        TextTokens(str(root), seq_len=8, vocab=100)
    with pytest.raises(DataError, match="no .txt or .py"):
        TextTokens(str(tmp_path / "cache"), seq_len=8, vocab=512)


def test_the_stdlib_is_a_corpus_every_machine_has(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPEBD_CACHE", str(tmp_path))
    cfg = RunConfig(workload="llm-tiny", data="text", data_root="stdlib", data_size=64, seq_len=32)
    wl = build_workload("llm-tiny", WorkloadOptions(seq_len=32))
    src = DataSource(data_config(cfg, wl), batch_size=8)
    x, _ = src.load(0)
    assert x.shape == (8, 32) and x.dtype == torch.int64


def test_data_sources_match_the_workload_kind():
    with pytest.raises(DataError, match="decoder"):
        validate_data_config(DataConfig(source="text", root="stdlib"))  # an image workload
    with pytest.raises(DataError, match="image workloads"):
        validate_data_config(DataConfig(source="cifar10", root="/tmp", seq_len=16))
    with pytest.raises(DataError, match="needs --data-root"):
        validate_data_config(DataConfig(source="text", seq_len=16))


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_rank_builds_only_the_blocks_it_owns_with_the_full_builds_weights():
    from pipebd.zoo import BlockOwnership, NotOwned

    opts = WorkloadOptions(seq_len=8, candidates="ffn0.5,kv1", seed=5)
    full = build_workload("llm-tiny", opts)
    part = build_workload("llm-tiny", opts, owned=BlockOwnership.of([2, 3], [3]))
    assert part.boundary_shapes == full.boundary_shapes  # from the meta probe
    assert [type(t) is NotOwned for t in part.teacher] == [True, True, False, False]
    assert [type(s) is NotOwned for s in part.student] == [True, True, True, False]
    for i in (2, 3):
        assert _same_state(part.teacher[i], full.teacher[i])
    assert _same_state(part.student[3], full.student[3])
    held = sum(p.numel() for m in part.teacher + part.student for p in m.parameters())
    whole = sum(p.numel() for m in full.teacher + full.student for p in m.parameters())
    assert held < 0.5 * whole  # the embedding (block 0) and blocks 0-1 are not allocated
    with pytest.raises(RuntimeError, match="teacher block 0 was not built on this rank"):
        part.teacher[0](torch.zeros(1, 8, dtype=torch.long))


def test_an_owned_student_without_its_teacher_still_starts_from_its_parent():
    from pipebd.zoo import BlockOwnership

    opts = WorkloadOptions(seq_len=8, candidates="ffn1", seed=1, logits_kd=True)
    full = build_workload("llm-tiny", opts)
    part = build_workload("llm-tiny", opts, owned=BlockOwnership.of([], [0, 3]))
    assert _same_state(part.student[0], full.student[0]) and _same_state(part.student[3], full.student[3])
    tokens = torch.randint(0, 512, (2, 8))
    h = full.teacher[0](tokens)
    assert torch.equal(part.student[0](tokens)[0], full.student[0](tokens)[0])  # the shared embedding is real
    assert part.student[3].head.weight.data_ptr() == part.student[0].embed.weight.data_ptr()  # tied head
    assert h.shape[-1] == 128


def test_the_smollm2_teacher_fits_llm_smol_only_in_one_rule():
    from pipebd import smollm2

    assert smollm2.wrong_workload("llm-smol") is None
    assert "use it with -w llm-smol, not llm-tiny" in smollm2.wrong_workload("llm-tiny")
    # a direct build (no preflight) refuses it with the same words, before any weights are read
    with pytest.raises(WorkloadError, match="use it with -w llm-smol, not llm-tiny"):
        build_workload("llm-tiny", WorkloadOptions(teacher_weights="smollm2", seq_len=16))
