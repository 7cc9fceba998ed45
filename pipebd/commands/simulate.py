"""``python -m pipebd simulate``: the predicted epoch time of every registered strategy on N
devices, from a profile (each strategy's schedule replayed by the cost model)."""

from __future__ import annotations

import argparse
from collections import defaultdict

from ..config import ConfigError
from ..costmodel import CostTable, auto_priced, epoch_steps, write_csv
from ..strategies import strategy_names
from ..strategies.predict import IDEAL, predict

__all__ = ["add_cli", "RESULT_COLUMNS"]


RESULT_COLUMNS = ["strategy", "devices", "batch_size", "steps", "epoch_time_s", "step_time_s", "fill_s",
                  "speedup_vs_dp", "efficiency", "layout", "note", "workload", "profile"]


def _cmd_simulate(args: argparse.Namespace) -> int:
    # Checked before the profile is read: a bad flag is a ConfigError (exit 2), never a traceback.
    if args.inflight < 1:
        raise ConfigError(f"--inflight must be >= 1 (batches in flight per link of tr-dpu/ahd), got {args.inflight}; "
                          "e.g. --inflight 2 (the default)")
    for flag, value in (("--batch-size", args.batch_size), ("--steps-per-epoch", args.steps_per_epoch)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}; omit it to use the profile's")
    if args.memory_limit is not None and not args.memory_limit > 0:
        raise ConfigError(f"--memory-limit must be > 0 GB, got {args.memory_limit:g}; omit it for no limit")
    known = [*strategy_names(), IDEAL]
    unknown = [s for s in (args.strategies.split(",") if args.strategies else []) if s not in known]
    if unknown:
        raise ConfigError(f"cannot predict strategy {', '.join(map(repr, unknown))}; --strategies takes a "
                          f"comma-separated subset of {','.join(known)}")
    costs, modes = auto_priced(CostTable.from_csv(args.profile), teacher_precision=args.teacher_precision or args.precision,
                               student_precision=args.student_precision or args.precision,
                               memory_format=args.memory_format)
    batch = args.batch_size or costs.batch_size
    if not batch:
        raise ConfigError(f"{args.profile!r} records no batch size; pass --batch-size B")
    steps = args.steps_per_epoch or epoch_steps(costs.workload, batch)
    strategies = args.strategies.split(",") if args.strategies else known
    limit = args.memory_limit * 2**30 if args.memory_limit else None
    rows = []
    skipped_all: list[str] = []
    table: dict[str, dict[int, str]] = defaultdict(dict)
    for n in args.devices:
        if n < 1 or n > batch:
            raise ConfigError(f"--devices {n}: every device count must be between 1 and the batch size {batch}")
        preds, skipped = [], []
        for s in strategies:
            try:
                preds.append(predict(s, costs, n, batch, steps, inflight=args.inflight, memory_limit_bytes=limit,
                                     epochs=args.epochs))
            except ConfigError as e:  # a shape this strategy refuses (e.g. ls with N > blocks)
                table[s][n] = f"{'n/a':>10}"
                skipped.append(f"  N={n}: {s}: {' '.join(str(e).split())[:160]}")
        skipped_all.extend(skipped)
        dp = next((p.epoch_s for p in preds if p.strategy == "dp"), None)
        ideal = next((p.epoch_s for p in preds if p.strategy == "ideal"), None)
        for p in preds:
            sp = dp / p.epoch_s if dp else None
            table[p.strategy][n] = f"{p.epoch_s:10.2f}" + (f" ({sp:4.2f}x)" if sp else "")
            rows.append({"strategy": p.strategy, "devices": n, "batch_size": batch, "steps": steps,
                         "epoch_time_s": p.epoch_s, "step_time_s": p.step_s, "fill_s": p.fill_s, "speedup_vs_dp": sp,
                         "efficiency": ideal / p.epoch_s if ideal else None, "layout": p.layout, "note": p.note,
                         "workload": costs.workload, "profile": args.profile})
    print(f"predicted epoch time in seconds (speedup over dp), {costs.workload or 'workload'}, batch {batch}, "
          f"{steps} steps/epoch, costs: {costs.source or 'profile'} on {costs.device_type or '?'}")
    print(f"  compute modes: {modes}" + ("" if costs.modes or modes.is_fp32_contiguous else ""))
    for gap in costs.gaps(max(args.devices)):
        print(f"  note: {gap}")
    width = 20
    print(f"{'strategy':<12}" + "".join(f"{'N=' + str(n):>{width}}" for n in args.devices))
    for s in strategies:
        print(f"{s:<12}" + "".join(f"{table[s].get(n, ''):>{width}}" for n in args.devices))
    layouts = [f"  N={r['devices']}: {r['strategy']} {r['layout']}" for r in rows if r["strategy"] in ("ahd",)]
    if layouts:
        print("ahd plans:")
        print("\n".join(layouts))
    if skipped_all:
        print("not predicted (the strategy refuses the shape):")
        print("\n".join(skipped_all))
    if args.out:
        write_csv(args.out, rows, RESULT_COLUMNS)
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("simulate", help="predict the epoch time of every registered strategy on N devices from a profile")
    p.add_argument("--profile", required=True, metavar="CSV", help="a profile written by `python -m pipebd profile`")
    p.add_argument("--devices", "-n", type=int, nargs="+", default=[1, 2, 4, 8], help="device counts to predict")
    p.add_argument("--batch-size", "-b", type=int, default=None, help="global batch (default: the profile's)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="steps of one epoch (default: the dataset the workload stands in for ÷ batch)")
    p.add_argument("--inflight", type=int, default=2, help="tr-dpu/ahd: batches in flight per link")
    p.add_argument("--epochs", type=int, default=1, metavar="E",
                   help="epochs the predicted epoch is averaged over (cache pays its teacher pass once in E)")
    p.add_argument("--memory-limit", type=float, default=None, metavar="GB", help="ahd: per-device memory limit")
    p.add_argument("--strategies", default=None, help="comma-separated strategies (default: every registered one, and ideal)")
    p.add_argument("--out", default=None, metavar="CSV", help="write the predictions as a CSV")
    p.add_argument("--precision", default="auto", choices=("fp32", "bf16", "auto"),
                   help="price teacher and students in this precision (auto: per block, the profile's fastest)")
    p.add_argument("--teacher-precision", default=None, choices=("fp32", "bf16", "auto"))
    p.add_argument("--student-precision", default=None, choices=("fp32", "bf16", "auto"))
    p.add_argument("--memory-format", default="auto", choices=("auto", "contiguous", "channels-last"))
    p.set_defaults(func=_cmd_simulate)
