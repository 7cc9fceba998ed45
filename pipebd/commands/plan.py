"""``python -m pipebd plan``: choose the ``ahd`` layout (stages × replicas) and predict its epoch;
with ``--strategies LIST|all``, predict each strategy's epoch and pick the fastest, as ``--strategy
auto`` does (:func:`pipebd.strategies.auto.choose`: relaying against caching, for ``--epochs``)."""

from __future__ import annotations

import argparse

from ..runargs import add_run_options, config_from_args
from ..costmodel import epoch_steps, random_cost_table
from ..planner import cost_table_for, memory_limit_for, search
from ..strategies.predict import predict

__all__ = ["add_cli"]


def _strategies(text: str) -> tuple[str, ...]:
    """``--strategies`` names (comma-separated), or ``all``: every registered strategy but ``auto``."""
    from ..config import ConfigError
    from ..strategies import strategy_names
    from ..strategies.auto import AUTO

    known = [s for s in strategy_names() if s != AUTO]
    names = known if text.strip() == "all" else [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown or not names:
        raise ConfigError(f"--strategies {text!r}: unknown {unknown or 'empty list'}; give names from "
                          f"{', '.join(known)} (comma-separated) or all")
    return tuple(names)


def _cmd_plan(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.strategies:  # which strategy, not which ahd layout: auto's choice over these
        from ..strategies.auto import choose

        choice = choose(cfg, _strategies(args.strategies))
        for name, seconds in sorted(choice.predicted.items(), key=lambda kv: kv[1]):
            print(f"{name:<12}{seconds:>14.2f} s/epoch predicted")
        print(choice.why)
        return 0
    if args.synthetic:
        costs = random_cost_table(cfg.seed, args.synthetic, cfg.devices, cfg.batch_size, with_memory=True)
        what = f"random table ({args.synthetic} blocks, seed {cfg.seed})"
    else:
        costs = cost_table_for(cfg)
        what = f"profile {cfg.profile}" if cfg.profile else f"FLOP estimate ({cfg.device_type})"
    limit, source = memory_limit_for(cfg, costs)
    res = search(costs, cfg.devices, cfg.batch_size, memory_limit_bytes=limit, inflight=cfg.inflight)
    steps = args.steps_per_epoch or epoch_steps(costs.workload or cfg.workload, cfg.batch_size)
    pred = predict("ahd", costs, cfg.devices, cfg.batch_size, steps, inflight=cfg.inflight, layout=res.plan)
    name = costs.workload or cfg.workload
    print(f"ahd plan: {name} on {cfg.devices} device(s), batch {cfg.batch_size}, costs from {what}"
          + (f", memory limit {limit / 2**30:.2f} GiB ({source})" if limit is not None else ""))
    has_mem = any(c.memory_bytes is not None for c in res.stages)
    print(f"{'stage':>5}  {'blocks':<8}{'replicas':>8}  {'rows/replica':<14}{'stage ms':>10}"
          + (f"{'mem MiB':>10}" if has_mem else ""))
    for k, c in enumerate(res.stages):
        s = c.stage
        blocks = f"{s.first}" if s.first == s.last else f"{s.first}-{s.last}"
        rows = "/".join(map(str, sorted(set(c.rows), reverse=True)))
        mem = f"{c.memory_bytes / 2**20:10.1f}" if has_mem and c.memory_bytes is not None else ""
        print(f"{k:>5}  {blocks:<8}{s.replicas:>8}  {rows:<14}{c.total_s * 1e3:>10.2f}{mem}")
    print(f"bottleneck {res.bottleneck_s * 1e3:.2f} ms/step; predicted epoch ({steps} steps) {pred.epoch_s:.2f} s "
          f"(fill {pred.fill_s:.2f} s); searched {res.evaluated} stage configurations in {res.seconds:.3f} s")
    print(res.plan)
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("plan", help="choose the ahd layout (stages x replicas) for a workload on N devices")
    add_run_options(p, strategy=False)  # includes --memory-limit BYTES (e.g. 70GiB)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="steps of one epoch for the predicted time")
    p.add_argument("--strategies", default=None, metavar="LIST",
                   help="compare strategies instead: each one's predicted epoch (over --epochs) and the fastest, "
                        "as --strategy auto chooses (comma-separated names, or all)")
    p.add_argument("--synthetic", type=int, default=None, metavar="BLOCKS",
                   help="plan a random cost table of BLOCKS blocks instead (planner scaling check)")
    p.set_defaults(func=_cmd_plan)
