"""``python -m pipebd``: the command line.

``run`` and ``zoo`` live here; every other command lives in its own module that exposes
``add_cli(subparsers)`` (registering a parser whose ``func`` takes the parsed arguments) and is
listed in :data:`COMMAND_MODULES` (commands are leaves: nothing imports them but this module).
The run options every command shares live in :mod:`pipebd.runargs`.
"""

from __future__ import annotations

import argparse
import importlib
import logging

import sys

from .config import ConfigError
from .runargs import add_run_options, config_from_args  # noqa: F401  (the commands' shared options)

__all__ = ["main", "add_run_options", "config_from_args", "COMMAND_MODULES"]

#: Modules that add subcommands (each defines ``add_cli(subparsers)``).
COMMAND_MODULES = ["pipebd.verify", "pipebd.commands.simulate", "pipebd.commands.plan", "pipebd.commands.schedule",
                   "pipebd.profiler", "pipebd.experiments", "pipebd.bench", "pipebd.commands.precision",
                   "pipebd.commands.perplexity", "pipebd.commands.teacher", "pipebd.search", "pipebd.export",
                   "pipebd.assembly"]


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import launch

    cfg = config_from_args(args)
    outcome = launch(cfg)
    if outcome.row:
        r = outcome.row
        print(f"{r['strategy']} on {r['devices']} {r['device_type']} rank(s), {r['workload']}: "
              f"{r['throughput_sps']:.1f} samples/s, epoch {r['epoch_time_s']:.1f} s "
              f"({r['steps_measured']} measured steps/block, utilisation {r['mean_utilisation']:.0%}); "
              f"{_top1_text(r)}run {r['run_id']} -> {cfg.out}/runs.csv")
    return 0


def _top1_text(row: dict) -> str:
    """``student top-1 97.1 % (96.0 % before BN recalibration); teacher top-1 98.3 %; `` for the
    figures a run's row has (blank: none)."""
    def have(col: str) -> bool:
        return row.get(col) is not None and row.get(col) == row.get(col)  # NaN (a blank cell) != itself

    parts = []
    if have("student_top1"):
        raw = f" ({100 * float(row['student_top1_raw']):.1f} % before BN recalibration)" if have("student_top1_raw") else ""
        parts.append(f"student top-1 {100 * float(row['student_top1']):.1f} %{raw}")
    if have("teacher_top1"):
        parts.append(f"teacher top-1 {100 * float(row['teacher_top1']):.1f} %")
    return "; ".join(parts) + "; " if parts else ""


def _cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo_table import print_zoo

    print_zoo(args.workload, resolution=args.resolution)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipebd", description="Pipelined parallel blockwise distillation "
                                "(Pipe-BD) and its baselines: run, verify, profile, plan and benchmark.")
    p.add_argument("--log-level", default="WARNING", help="logging level (INFO shows what each part decides)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="train one strategy on N ranks and append its measurements to CSVs")
    add_run_options(r)
    r.set_defaults(func=_cmd_run)
    z = sub.add_parser("zoo", help="list the workloads: blocks, parameters, FLOPs, boundary shapes")
    z.add_argument("workload", nargs="*", help="workloads to show (default: all)")
    z.add_argument("--resolution", type=int, default=None, help="override every workload's resolution")
    z.set_defaults(func=_cmd_zoo)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="[%(name)s] %(message)s")
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"pipebd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pipebd: interrupted; every rank was stopped", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — a clear one-line error, the traceback with --log-level DEBUG
        from .runner import RunFailed

        if isinstance(e, RunFailed) or not logging.getLogger().isEnabledFor(logging.DEBUG):
            print(f"pipebd: error: {e}", file=sys.stderr)
            return 1
        raise
