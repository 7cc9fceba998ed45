"""``python -m pipebd verify``: prove that strategies keep the math (DESIGN.md §1).

For each strategy, train ``K`` steps per block on ``N`` ranks and compare every student
block's final parameters with the sequential reference trained on the same batches, with
ghost shards equal to the strategy's data-parallel split of each block
(:meth:`Strategy.reference_shards`). Parameters must agree within ``rtol`` (relative to the
largest magnitude of the tensor) and the NAS paths sampled must be identical; buffers
(BatchNorm running statistics) are compared too where a block has a single replica.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass

import torch

from .comm import threads_per_rank
from .config import RunConfig, validate, workload_num_blocks
from .executors import get_strategy, import_plugins, strategy_names
from .runner import launch

__all__ = ["VerifyResult", "verify_strategy", "compare_weights", "add_cli"]

DEFAULT_RTOL = 1e-5


@dataclass
class VerifyResult:
    strategy: str
    devices: int
    ok: bool
    max_rel_error: float
    paths_equal: bool
    detail: str


def compare_weights(got: dict, ref: dict, *, rtol: float, shards: tuple[tuple[int, ...], ...]) -> tuple[float, list[str]]:
    """Largest relative error over all parameters (and single-replica buffers); list of mismatches."""
    worst, bad = 0.0, []
    for i, ref_state in ref["weights"].items():
        state = got["weights"].get(i)
        if state is None:
            bad.append(f"block {i}: no weights reported")
            continue
        for name, r in ref_state.items():
            is_buffer = name.endswith(("running_mean", "running_var", "num_batches_tracked"))
            if is_buffer and len(shards[i]) > 1:
                continue  # per-replica BN statistics differ by design (like DDP without buffer sync)
            g = state[name]
            if r.dtype in (torch.int64, torch.int32):
                err = 0.0 if torch.equal(g, r) else float("inf")
            else:
                err = float((g.double() - r.double()).abs().max() / (r.double().abs().max() + 1e-12))
            worst = max(worst, err)
            if err > rtol:
                bad.append(f"block {i} {name}: relative error {err:.2e}")
    return worst, bad


def verify_strategy(cfg: RunConfig, *, rtol: float = DEFAULT_RTOL, workdir: str | None = None,
                    reference_cache: dict | None = None) -> VerifyResult:
    """Run ``cfg`` and its sequential reference, compare final weights and NAS paths."""
    workdir = workdir or tempfile.mkdtemp(prefix="pipebd-verify-")
    num_blocks = workload_num_blocks(cfg)
    import_plugins(cfg.plugins)
    shards = get_strategy(cfg.strategy).reference_shards(cfg, num_blocks)
    # Same threads per process for the reference and the ranks: float reductions then run in
    # the same order, so CPU results agree to the last bit where the math is the same.
    cfg = cfg.replace(threads=cfg.threads or threads_per_rank(cfg.devices))
    got_path = os.path.join(workdir, f"{cfg.strategy}-n{cfg.devices}.pt")
    run_cfg = cfg.replace(save_weights=got_path, quiet=True, trace=False, out=os.path.join(workdir, "results"))
    validate(run_cfg)
    ref_cfg = cfg.replace(strategy="sequential", devices=1, block_shards=shards, stages=None, ls_map=None, plan=None,
                          save_weights=os.path.join(workdir, f"ref-{len(os.listdir(workdir))}.pt"), quiet=True, trace=False,
                          out=os.path.join(workdir, "results"))
    cache = reference_cache if reference_cache is not None else {}
    key = repr(ref_cfg.replace(save_weights=None))  # the whole reference configuration, not just its shards
    if key not in cache:
        launch(ref_cfg)
        cache[key] = torch.load(ref_cfg.save_weights, weights_only=True)
    ref = cache[key]
    launch(run_cfg)
    got = torch.load(got_path, weights_only=True)
    worst, bad = compare_weights(got, ref, rtol=rtol, shards=shards)
    paths_equal = got["paths"] == ref["paths"]
    if not paths_equal:
        bad.append("NAS paths differ from the reference")
    return VerifyResult(cfg.strategy, cfg.devices, not bad, worst, paths_equal, "; ".join(bad[:3]))


def _cmd_verify(args: argparse.Namespace) -> int:
    from .cli import config_from_args

    import_plugins(args.plugins)
    if args.list:
        for name in strategy_names():
            print(f"{name:<14}{get_strategy(name).description}")
        return 0
    names = args.strategies.split(",") if args.strategies else [s for s in strategy_names() if s != "sequential"]
    base = config_from_args(args, strategy="sequential")
    cache: dict = {}
    results = []
    print(f"verify: {base.workload}, {base.devices} rank(s), batch {base.batch_size}, "
          f"{base.total_steps} steps/block, tolerance {args.rtol:g} relative")
    for name in names:
        devices = 1 if get_strategy(name).max_devices == 1 else base.devices
        res = verify_strategy(base.replace(strategy=name, devices=devices), rtol=args.rtol, reference_cache=cache)
        results.append(res)
        print(f"  {name:<14}{'PASS' if res.ok else 'FAIL'}  max rel. error {res.max_rel_error:.1e}"
              f"  paths {'same' if res.paths_equal else 'DIFFER'}  {res.detail}", flush=True)
    failed = [r.strategy for r in results if not r.ok]
    print("all strategies keep the math" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


def add_cli(sub) -> None:
    from .cli import add_run_options

    p = sub.add_parser("verify", help="check every strategy against the sequential reference (same weights)")
    add_run_options(p, strategy=False)
    p.add_argument("--strategies", default=None, help="comma-separated strategies (default: all registered)")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help="relative tolerance on parameters")
    p.add_argument("--list", action="store_true", help="list the registered strategies and exit")
    p.set_defaults(func=_cmd_verify, steps=3, warmup=1, batch_size=12, quiet=True)
