"""Assembly of a decoder student from its candidate libraries (issue 15, deliverable 6): held-out
candidate losses, the budgeted choice, the stitched model and its perplexity, the command and the
export of the assembled student. llm-tiny at random init; no processes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pipebd
from pipebd import assembly
from pipebd.cli import main
from pipebd.export import export_student, save_students, students_path
from pipebd.zoo import WorkloadOptions, build_workload

LIB = "ffn1,ffn0.5,noffn"


@pytest.fixture(scope="module")
def tiny():
    wl = build_workload("llm-tiny", WorkloadOptions(candidates=LIB, seq_len=16))
    windows = assembly.text_windows(assembly.default_text(), 16, "bytes", limit=6)
    return wl, windows


def test_held_out_losses_rate_each_candidate_and_the_parents_copy_is_exact(tiny):
    wl, windows = tiny
    assert windows.shape == (6, 16) and windows.dtype == torch.int64
    table = assembly.candidate_table(wl, windows, batch=4)
    assert [[r["candidate"] for r in rows] for rows in table] == [LIB.split(",")] * 4
    for rows, t in zip(table, wl.teacher):
        # ffn1 starts as the parent layer: zero loss, and the teacher block's decoder parameters
        assert rows[0]["heldout_loss"] < 1e-10 and rows[0]["params"] == assembly.decoder_params(t)
        assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"]
        assert rows[2]["heldout_loss"] > rows[1]["heldout_loss"] > 0


def test_the_assembly_at_the_full_budget_is_the_teacher_and_a_smaller_one_fits(tiny):
    wl, windows = tiny
    table = assembly.candidate_table(wl, windows)
    full = sum(assembly.decoder_params(t) for t in wl.teacher)
    choice, loss, cost = assembly.choose(table, full)
    assert choice == [0, 0, 0, 0] and cost == full and loss < 1e-9
    teacher_ppl = assembly.perplexity(assembly.TeacherLM(wl), windows)
    assert assembly.perplexity(assembly.AssembledLM(wl, choice), windows) == pytest.approx(teacher_ppl, rel=1e-5)
    with torch.no_grad():  # perplexity is exp(mean next-token cross-entropy)
        logits = assembly.TeacherLM(wl)(windows)[:, :-1]
        want = math.exp(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))))
    assert teacher_ppl == pytest.approx(want, rel=1e-5)
    half, _, cost = assembly.choose(table, 0.5 * full)
    assert cost <= 0.5 * full and any(c != 0 for c in half)
    assert assembly.AssembledLM(wl, half).names == [LIB.split(",")[c] for c in half]


def test_assemble_command_and_export_of_the_assembled_student(tiny, tmp_path, capsys):
    wl, windows = tiny
    options = WorkloadOptions(candidates=LIB, seq_len=16)
    save_students(students_path(str(tmp_path), "LLM1"), run_id="LLM1", workload="llm-tiny", options=options,
                  weights={i: b.state_dict() for i, b in enumerate(wl.student)})
    assert main(["assemble", "LLM1", "--results", str(tmp_path), "--budget", "1", "--budget", "0.5",
                 "--windows", "6"]) == 0
    out = capsys.readouterr().out
    assert "teacher perplexity" in out and "budget 100%" in out and "budget 50%" in out
    spec = export_student("LLM1", str(tmp_path / "student"), results=str(tmp_path), budget=0.5)
    assert spec["chosen_by"] == "assemble" and len(spec["choice"]) == 4
    net = pipebd.load_student(str(tmp_path / "student"))
    with torch.no_grad():
        assert torch.equal(net(windows), assembly.AssembledLM(wl, spec["choice"])(windows))
    assert main(["assemble", "LLM1", "--results", str(tmp_path), "--budget", "1.5"]) == 2
    assert "--budget must be a fraction" in capsys.readouterr().err
