"""``python -m pipebd verify``: prove that strategies keep the math (DESIGN.md §1).

For each strategy, train ``K`` steps per block on ``N`` ranks and compare every student
block's final parameters with the sequential reference trained on the same batches, with
ghost shards equal to the strategy's data-parallel split of each block
(:meth:`Strategy.reference_shards`). Parameters must agree within ``rtol`` (relative to the
largest magnitude of the tensor) and the NAS paths sampled must be identical; buffers
(BatchNorm running statistics) are compared too where a block has a single replica.

Compute modes (:mod:`pipebd.modes`): the reference computes in exactly the run's modes (pinned
with ``--modes``). In fp32 the tolerance is 1e-5; with bf16 anywhere the per-step operations are
the same kernels on the same shapes, but a teacher that runs on a replica's rows rather than on
the whole batch (``dp``, replicated ``ahd`` stages) may round a few bf16 activations differently,
so the default tolerance is :data:`BF16_RTOL` and the measured difference is printed (on
``tiny`` at N = 2, bf16 channels-last everywhere, ``dp``, ``tr-dpu``, ``ahd`` and ``even`` measured
0.0: bit-identical to their bf16 references).

Every strategy is validated before anything runs: one that cannot run as configured (e.g.
``--stages`` with another number of stages than ``--devices``) gets an INVALID row that says
why and the others still run; a saved weights file that lacks a block or a tensor is a FAIL
that names the block and the strategy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass

import torch

from .comm import threads_per_rank
from .config import ConfigError, RunConfig
from .options import workload_num_blocks
from .planner import modes_for
from .preflight import validate
from .runner import launch_series
from .strategies import get_strategy, import_plugins, strategy_names

__all__ = ["VerifyResult", "verify_strategy", "verify_strategies", "compare_weights", "prepare", "add_cli"]

DEFAULT_RTOL = 1e-5
#: the default tolerance where a run computes in bf16 (see the module docstring)
BF16_RTOL = 1e-2


@dataclass
class VerifyResult:
    strategy: str
    devices: int
    ok: bool
    max_rel_error: float
    paths_equal: bool
    detail: str
    status: str = ""  # PASS, FAIL, LOSSY (a lossy option: the error is reported, not judged) or INVALID
    modes: str = ""  # the compute modes run and reference shared (pipebd.modes text)
    lossy: bool = False  # some part computed in bf16: compared with a bf16 reference

    def __post_init__(self) -> None:
        self.status = self.status or ("PASS" if self.ok else "FAIL")


def _saved_weights(report, who: str, bad: list[str]) -> dict | None:
    weights = report.get("weights") if isinstance(report, dict) else None
    if not isinstance(weights, dict):
        bad.append(f"{who}: the saved file holds no 'weights' mapping of block -> state dict")
        return None
    return weights


def compare_weights(got: dict, ref: dict, *, rtol: float, shards: tuple[tuple[int, ...], ...],
                    strategy: str = "the strategy") -> tuple[float, list[str]]:
    """Largest relative error over all parameters (and single-replica buffers); list of mismatches.

    Every block ``0 … len(shards) - 1`` must be in both saved files with the same tensors; a
    block or tensor that one of them lacks is a mismatch that names it (and ``strategy``)."""
    worst, bad = 0.0, []
    got_w = _saved_weights(got, strategy, bad)
    ref_w = _saved_weights(ref, "the sequential reference", bad)
    if got_w is None or ref_w is None:
        return float("inf"), bad
    for i in range(len(shards)):
        ref_state, state = ref_w.get(i), got_w.get(i)
        if ref_state is None:
            bad.append(f"block {i}: missing from the sequential reference's saved weights")
            continue
        if state is None:
            bad.append(f"block {i}: {strategy} saved no weights for it (no rank reported block {i})")
            worst = float("inf")
            continue
        missing, extra = sorted(set(ref_state) - set(state)), sorted(set(state) - set(ref_state))
        if missing or extra:
            bad.append(f"block {i}: {strategy}'s saved weights lack {missing[:3]} and have unexpected {extra[:3]}")
            worst = float("inf")
        for name in ref_state.keys() & state.keys():
            r, g = ref_state[name], state[name]
            is_buffer = name.endswith(("running_mean", "running_var", "num_batches_tracked"))
            if is_buffer and len(shards[i]) > 1:
                continue  # per-replica BN statistics differ by design (like DDP without buffer sync)
            if g.shape != r.shape:
                bad.append(f"block {i} {name}: {strategy} saved shape {tuple(g.shape)}, the reference {tuple(r.shape)}")
                worst = float("inf")
                continue
            if r.dtype in (torch.int64, torch.int32):
                err = 0.0 if torch.equal(g, r) else float("inf")
            else:
                err = float((g.double() - r.double()).abs().max() / (r.double().abs().max() + 1e-12))
            worst = max(worst, err)
            if err > rtol:
                bad.append(f"block {i} {name}: relative error {err:.2e}")
    extra_blocks = sorted(set(got_w) - set(range(len(shards))), key=str)
    if extra_blocks:
        bad.append(f"{strategy} saved weights for block(s) {extra_blocks}, but the workload has {len(shards)} blocks")
    return worst, bad


@dataclass
class _Prepared:
    """A strategy's run and its sequential reference, validated (nothing has run yet)."""

    run_cfg: RunConfig
    ref_cfg: RunConfig
    shards: tuple[tuple[int, ...], ...]


def prepare(cfg: RunConfig, workdir: str) -> _Prepared:
    """Validate ``cfg`` and build its reference configuration; raise :class:`ConfigError` if it cannot run."""
    import_plugins(cfg.plugins)
    strategy = get_strategy(cfg.strategy)
    # Same threads per process for the reference and the ranks: float reductions then run in
    # the same order, so CPU results agree to the last bit where the math is the same.
    cfg = cfg.replace(threads=cfg.threads or threads_per_rank(cfg.devices))
    tag = f"{cfg.strategy}-n{cfg.devices}-{cfg.workload}-{uuid.uuid4().hex[:8]}"  # unique: runs of a series share the workdir
    got_path = os.path.join(workdir, f"{tag}.pt")
    run_cfg = cfg.replace(save_weights=got_path, quiet=True, trace=False, out=os.path.join(workdir, "results"))
    validate(run_cfg)  # before reference_shards, which may parse the strategy's layout options
    shards = strategy.reference_shards(cfg, workload_num_blocks(cfg))
    # the reference computes in exactly the run's modes (bf16 anywhere: the same kernels and shapes)
    modes = modes_for(cfg)
    ref_cfg = cfg.replace(strategy="sequential", devices=1, block_shards=shards, stages=None, ls_map=None, plan=None,
                          modes=modes.to_text(),
                          save_weights=os.path.join(workdir, f"ref-{tag}.pt"), quiet=True,
                          trace=False, out=os.path.join(workdir, "results"))
    return _Prepared(run_cfg, ref_cfg, shards)


def verify_strategy(cfg: RunConfig, *, rtol: float = DEFAULT_RTOL, workdir: str | None = None,
                    reference_cache: dict | None = None, prepared: _Prepared | None = None) -> VerifyResult:
    """Run ``cfg`` and its sequential reference, compare final weights and NAS paths.

    Raises :class:`ConfigError` (nothing started) when ``cfg`` cannot run. Without ``workdir``
    the weights and results go to a temporary directory, removed afterwards."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="pipebd-verify-") as tmp:
            return verify_strategy(cfg, rtol=rtol, workdir=tmp, reference_cache=reference_cache, prepared=prepared)
    return verify_strategies([prepared or prepare(cfg, workdir)], rtol=rtol, reference_cache=reference_cache)[0]


def verify_strategies(prepared: list[_Prepared], *, rtol: float = DEFAULT_RTOL,
                      reference_cache: dict | None = None) -> list[VerifyResult]:
    """Verify several prepared runs (:func:`prepare`) with as few spawns as possible: the
    references not in ``reference_cache`` (each distinct one trained once) run as one series of
    single-rank runs, then the runs as one series per device count (:func:`pipebd.runner.launch_series`)."""
    cache = reference_cache if reference_cache is not None else {}
    keys = [repr(p.ref_cfg.replace(save_weights=None)) for p in prepared]  # the whole reference configuration
    todo = {k: p.ref_cfg for k, p in zip(keys, prepared) if k not in cache}
    launch_series(list(todo.values()))
    for k, ref_cfg in todo.items():
        cache[k] = torch.load(ref_cfg.save_weights, weights_only=True)
    by_devices: dict[int, list[RunConfig]] = defaultdict(list)
    for p in prepared:
        by_devices[p.run_cfg.devices].append(p.run_cfg)
    for group in by_devices.values():
        launch_series(group)
    return [_compare(p, cache[k], rtol) for p, k in zip(prepared, keys)]


def _compare(prep: _Prepared, ref: dict, rtol: float) -> VerifyResult:
    run_cfg = prep.run_cfg
    got = torch.load(run_cfg.save_weights, weights_only=True)
    modes = modes_for(run_cfg)
    if modes.lossy and rtol == DEFAULT_RTOL:
        rtol = BF16_RTOL
    worst, bad = compare_weights(got, ref, rtol=rtol, shards=prep.shards, strategy=run_cfg.strategy)
    paths_equal = isinstance(got, dict) and isinstance(ref, dict) and got.get("paths") == ref.get("paths")
    if not paths_equal:
        bad.append("NAS paths differ from the reference")
    why = get_strategy(run_cfg.strategy).lossy_reason(run_cfg)
    if why:  # a lossy option the user chose: report the error it makes, do not judge it
        return VerifyResult(run_cfg.strategy, run_cfg.devices, True, worst, paths_equal, f"not exact: {why}",
                            status="LOSSY", modes=modes.to_text(), lossy=True)
    return VerifyResult(run_cfg.strategy, run_cfg.devices, not bad, worst, paths_equal, "; ".join(bad[:3]),
                        modes=modes.to_text(), lossy=modes.lossy)


def _cmd_verify(args: argparse.Namespace) -> int:
    from .runargs import config_from_args

    import_plugins(args.plugins)
    if args.list:
        for name in strategy_names():
            print(f"{name:<14}{get_strategy(name).description}")
        return 0
    names = args.strategies.split(",") if args.strategies else [s for s in strategy_names() if s != "sequential"]
    base = config_from_args(args, strategy="sequential")
    with tempfile.TemporaryDirectory(prefix="pipebd-verify-") as workdir:  # weights of every run: removed after
        return _verify_all(args, base, names, workdir)


def _verify_all(args: argparse.Namespace, base: RunConfig, names: list[str], workdir: str) -> int:
    """The verify command's work: every strategy of ``names`` against its reference, in ``workdir``."""
    # Validate every strategy before anything runs: one that cannot run here gets an INVALID
    # row saying why, and the others still run. Nothing valid at all is a configuration error.
    prepared: dict[str, _Prepared | ConfigError] = {}
    for name in names:
        try:
            devices = 1 if get_strategy(name).max_devices == 1 else base.devices
            prepared[name] = prepare(base.replace(strategy=name, devices=devices), workdir)
        except ConfigError as e:
            prepared[name] = e
    if all(isinstance(p, ConfigError) for p in prepared.values()):
        reasons = dict.fromkeys(str(p) for p in prepared.values())
        if len(reasons) == 1:  # one cause shared by every strategy (e.g. --lr 0): say it once
            raise ConfigError(next(iter(reasons)))
        raise ConfigError("no strategy can run as configured: " + "; ".join(f"{n}: {p}" for n, p in prepared.items()))
    results = []
    print(f"verify: {base.workload}, {base.devices} rank(s), batch {base.batch_size}, "
          f"{base.total_steps} steps/block, tolerance {args.rtol:g} relative", flush=True)
    ready = [p for p in prepared.values() if not isinstance(p, ConfigError)]
    verified = iter(verify_strategies(ready, rtol=args.rtol))  # one spawn per device count, not one per run
    for name, prep in prepared.items():
        if isinstance(prep, ConfigError):
            res = VerifyResult(name, base.devices, False, float("nan"), False, str(prep), status="INVALID")
            print(f"  {name:<14}INVALID  {prep}", flush=True)
        else:
            res = next(verified)
            print(f"  {name:<14}{res.status}  max rel. error {res.max_rel_error:.1e}"
                  f"  paths {'same' if res.paths_equal else 'DIFFER'}  {res.detail}"
                  + (f"  [bf16 {res.modes}: against a reference in the same modes, tolerance "
                     f"{BF16_RTOL if args.rtol == DEFAULT_RTOL else args.rtol:g}]" if res.lossy and res.status != "LOSSY"
                     else ""), flush=True)
        results.append(res)
    failed = [r.strategy for r in results if r.status == "FAIL"]
    invalid = [r.strategy for r in results if r.status == "INVALID"]
    lossy = [r.strategy for r in results if r.status == "LOSSY"]
    if not failed and not invalid:
        print("all strategies keep the math" if not lossy else
              f"every exact strategy keeps the math; lossy by request (error reported above): {', '.join(lossy)}")
    else:
        print("; ".join(part for part in (f"FAILED: {', '.join(failed)}" if failed else "",
                                          f"INVALID (not run): {', '.join(invalid)}" if invalid else "") if part))
    return 1 if failed or invalid else 0


def add_cli(sub) -> None:
    from .runargs import add_run_options

    p = sub.add_parser("verify", help="check every strategy against the sequential reference (same weights)")
    add_run_options(p, strategy=False)
    p.add_argument("--strategies", default=None, help="comma-separated strategies (default: all registered)")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help="relative tolerance on parameters")
    p.add_argument("--list", action="store_true", help="list the registered strategies and exit")
    p.set_defaults(func=_cmd_verify, steps=3, warmup=1, batch_size=12, quiet=True)
