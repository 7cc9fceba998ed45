"""Which benches run every strategy again as S:fp32 (the mode comparison)."""

from __future__ import annotations

from pipebd.config import RunConfig


def test_an_fp32_pinned_bench_runs_no_identical_fp32_twins():
    from argparse import Namespace

    from pipebd.bench import compares_modes

    pins = dict(precision=None, teacher_precision=None, student_precision=None, memory_format=None, modes=None)
    assert not compares_modes(Namespace(compare_modes=False, **pins), RunConfig())
    assert compares_modes(Namespace(compare_modes=True, **pins), RunConfig())
    fp32 = RunConfig(teacher_precision="fp32", student_precision="fp32", memory_format="contiguous")
    assert not compares_modes(Namespace(compare_modes=False, **{**pins, "precision": "fp32",
                                                                "memory_format": "contiguous"}), fp32)
    bf16 = RunConfig(teacher_precision="bf16", student_precision="bf16")
    assert compares_modes(Namespace(compare_modes=False, **{**pins, "precision": "bf16"}), bf16)
