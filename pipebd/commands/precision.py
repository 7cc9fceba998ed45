"""``python -m pipebd precision-check``: does training in bf16 reach the fp32 run's block losses?

bf16 autocast is not the fp32 math, so ``verify`` compares a bf16 run with a bf16 reference
(same kernels, same shapes) and this check answers the other question: is bf16 training as good
as fp32 training? It trains the same workload, batches and steps twice — fp32 contiguous, then in
the modes asked (default: bf16 autocast for teacher and students, channels-last where the
workload has convolutions) — and compares every block's final loss (the mean over the last
``--tail`` steps, from ``losses.csv``): each bf16/fp32 ratio must lie within ``1 ± --band``.
Exit status 1 when a block falls outside the band.
"""

from __future__ import annotations

import argparse
import os
import statistics

from ..config import ConfigError, RunConfig
from ..modes import FP32_PINS
from ..runargs import add_run_options, config_from_args

__all__ = ["add_cli", "precision_check", "final_losses"]



def final_losses(out: str, run_id: str, tail: int) -> dict[int, float]:
    """Per block, the mean loss over the run's last ``tail`` steps (from ``OUT/losses.csv``)."""
    import pandas as pd

    df = pd.read_csv(os.path.join(out, "losses.csv"))
    df = df[df["run_id"].astype(str) == run_id]
    if df.empty:
        raise RuntimeError(f"run {run_id} recorded no losses in {out}/losses.csv")
    out_: dict[int, float] = {}
    for block, g in df.groupby("block"):
        g = g.sort_values("step")
        out_[int(block)] = statistics.fmean(g["loss"].tail(tail))
    return out_


def precision_check(cfg: RunConfig, *, tail: int = 5, band: float = 0.1, say=print) -> tuple[bool, list[dict]]:
    """Train ``cfg`` in fp32 contiguous and in its own modes; per block the two final losses and
    their ratio. Returns (every ratio within ``1 ± band``, the rows)."""
    from ..planner import modes_for
    from ..runner import launch

    if tail < 1 or tail > cfg.steps + cfg.warmup:
        raise ConfigError(f"--tail must be between 1 and the steps per block ({cfg.steps + cfg.warmup}), got {tail}")
    if not band > 0:
        raise ConfigError(f"--band must be > 0 (a relative tolerance, e.g. 0.1), got {band}")
    modes = modes_for(cfg)
    if not modes.lossy:
        raise ConfigError(f"the modes asked for ({modes}) compute nothing in bf16; pass --precision bf16 (the "
                          "default of this command) or --modes with a bf16 part")
    ref = launch(cfg.replace(**FP32_PINS, tag=cfg.tag or "precision-check"))
    got = launch(cfg.replace(tag=cfg.tag or "precision-check"))
    a, b = final_losses(cfg.out, ref.run_id, tail), final_losses(cfg.out, got.run_id, tail)
    rows = [{"block": i, "fp32": a[i], "modes": b[i], "ratio": b[i] / a[i] if a[i] else float("inf")} for i in sorted(a)]
    ok = all(abs(r["ratio"] - 1) <= band for r in rows)
    say(f"precision-check: {cfg.workload}, {cfg.strategy} on {cfg.devices} rank(s), batch {cfg.batch_size}, "
        f"{cfg.warmup + cfg.steps} steps/block; final loss = mean of the last {tail} steps")
    say(f"  modes: {modes}")
    say(f"{'block':>5}{'fp32 loss':>14}{'bf16 loss':>14}{'ratio':>8}")
    for r in rows:
        flag = "" if abs(r["ratio"] - 1) <= band else "  OUTSIDE"
        say(f"{r['block']:>5}{r['fp32']:>14.6g}{r['modes']:>14.6g}{r['ratio']:>8.3f}{flag}")
    say(f"{'every' if ok else 'NOT every'} block within 1 ± {band:g} of the fp32 run (runs {ref.run_id}, {got.run_id} "
        f"-> {cfg.out}/losses.csv)")
    return ok, rows


def _cmd_precision_check(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    given = any(getattr(args, k) is not None for k in ("precision", "teacher_precision", "student_precision", "modes"))
    if not given:
        cfg = cfg.replace(teacher_precision="bf16", student_precision="bf16")
    if args.memory_format is None:
        from ..options import workload_is_conv

        cfg = cfg.replace(memory_format="channels-last" if workload_is_conv(cfg) else "contiguous")
    ok, _rows = precision_check(cfg, tail=args.tail, band=args.band)
    return 0 if ok else 1


def add_cli(sub) -> None:
    p = sub.add_parser("precision-check", help="train in fp32 and in bf16 side by side; compare final block losses")
    add_run_options(p)
    p.add_argument("--tail", type=int, default=5, help="final loss = mean over the last K steps (default 5)")
    p.add_argument("--band", type=float, default=0.1, help="allowed relative difference of final losses (default 0.1)")
    p.set_defaults(func=_cmd_precision_check, steps=40, warmup=0, out="results/precision-check", quiet=True,
                   trace=False)
