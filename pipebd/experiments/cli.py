"""The ``experiment`` command: choosing experiments, ``--list``/``--dry-run`` (what each runs and
what the results directory holds), running them in order with one ETA over the invocation, the
plots, and the speedup summary at the end.
"""

from __future__ import annotations

import argparse
import os
import time

from .grid import plan_units
from .journal import _journal, _not_ok, experiment_dir, is_done
from .load import load_experiments
from .plots import make_plots
from .run import Eta, run_experiment
from .spec import (DEFAULT_MAX_RERUNS, DEFAULT_PROFILE, EXPERIMENTS_DIR, OPTIONAL_PROFILES, PROFILES, Experiment,
                   ExperimentError)
from .tables import print_speedup_summary


def _select(exps: dict[str, Experiment], names: list[str], directory: str) -> list[Experiment]:
    if not names or names == ["all"]:
        return list(exps.values())
    wanted = [n for part in names for n in part.split(",") if n]
    unknown = [n for n in wanted if n not in exps]
    if unknown:
        raise ExperimentError(f"unknown experiment {', '.join(map(repr, unknown))}; {directory} has: "
                              f"{', '.join(exps)}")
    return [e for e in exps.values() if e.name in wanted]


def _state(results_root: str, profile: str, exp: Experiment) -> str:
    """``done`` / ``N of M runs ok, K failed`` / ``to run``: what ``results_root`` already holds."""
    if is_done(results_root, profile, exp.name):
        return "done"
    done, _ = _journal(experiment_dir(results_root, profile, exp.name))
    units = plan_units(exp.profile(profile))
    ok = len(units) - len(_not_ok(units, done))
    bad = sum(1 for u in units if done.get(u.key, {}).get("status") == "failed")
    if not ok and not bad:
        return "to run"
    return f"{ok} of {len(units)} ok" + (f", {bad} failed" if bad else "")


def _list(chosen: list[Experiment], args: argparse.Namespace) -> None:
    print(f"experiments of the {args.profile} profile (results in {os.path.join(args.results, args.profile)}):")
    for e in chosen:
        prof = e.profiles.get(args.profile)
        if prof is None:
            print(f"  {e.name:<13} (no {args.profile} profile: skipped)  {' '.join(e.description.split())[:70]}")
            continue
        wl = ", ".join(w.name for w in prof.workloads) or "(derived from other experiments)"
        what = (f"{len(plan_units(prof))} runs: {','.join(prof.strategies)} x {prof.repeats} repeat(s) on {wl}, "
                f"devices {','.join(map(str, prof.devices))}, {prof.steps} measured steps" if prof.strategies
                else f"no runs; costs from {prof.costs} on {wl}")
        print(f"  {e.name:<13} [{_state(args.results, args.profile, e)}] {what}")
        if args.dry_run:
            for u in plan_units(prof):
                print(f"      {u.key}  steps {u.steps} warmup {u.warmup}")


def _cmd_experiment(args: argparse.Namespace) -> int:
    from ..config import ConfigError

    try:
        exps = load_experiments(args.experiments)
        chosen = _select(exps, args.names, args.experiments)
    except ExperimentError as e:
        raise ConfigError(str(e)) from None
    if args.max_reruns < 0:
        raise ConfigError(f"--max-reruns must be >= 0, got {args.max_reruns}")
    if args.list or args.dry_run:
        _list(chosen, args)
        return 0
    explicit = bool(args.names) and args.names != ["all"]
    missing = [e.name for e in chosen if args.profile not in e.profiles]
    if missing and explicit:
        raise ConfigError(f"experiment(s) {', '.join(missing)} have no profile {args.profile!r}; they define: "
                          + "; ".join(f"{e.name}: {', '.join(e.profiles)}" for e in chosen if e.name in missing))
    for name in missing:
        print(f"{name}: no {args.profile} profile; skipped", flush=True)
    chosen = [e for e in chosen if args.profile in e.profiles]
    say = lambda m: print(m, flush=True)  # noqa: E731
    todo = 0
    for e in chosen:
        if args.force or not is_done(args.results, args.profile, e.name):
            done = {} if args.force else _journal(experiment_dir(args.results, args.profile, e.name))[0]
            todo += len(_not_ok(plan_units(e.profile(args.profile)), done))
    eta = Eta(todo)
    failed: list[str] = []
    t0 = time.perf_counter()
    for e in chosen:
        t = time.perf_counter()
        if not args.plots_only:
            try:
                out = run_experiment(e, args.profile, results_root=args.results, force=args.force, say=say,
                                     max_reruns=args.max_reruns, eta=eta)
                failed += [f"{e.name}: {f}" for f in out.failed]
            except KeyboardInterrupt:
                raise
            except Exception as ex:  # noqa: BLE001 — one broken experiment does not stop the others
                say(f"{e.name}: ERROR {type(ex).__name__}: {ex}; continuing with the next experiment")
                failed.append(f"{e.name}: {type(ex).__name__}: {ex}")
        if args.plot:
            make_plots(e, args.profile, results_root=args.results, plots_root=args.plots, say=say)
        say(f"{e.name}: {time.perf_counter() - t:.0f} s")
    say(f"experiments ({args.profile}): {len(chosen)} in {time.perf_counter() - t0:.0f} s")
    print_speedup_summary(chosen, args.profile, args.results, say)
    if failed:
        say(f"\n{len(failed)} run(s) failed; run the same command again to retry only those:")
        for f in failed:
            say(f"  {f}")
        return 1
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("experiment", help="run the paper's experiments (experiments/*.yaml): runs, CSVs and plots")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments to run (default / 'all': every one)")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"size profile: {', '.join(PROFILES + OPTIONAL_PROFILES)} (default {DEFAULT_PROFILE}; quick: "
                        "a first look in a few minutes, only the experiments that define it)")
    p.add_argument("--max-reruns", type=int, default=DEFAULT_MAX_RERUNS, metavar="K",
                   help="re-run rounds for a cell whose repeats differ by more than 25 %% (with its dp; default "
                        f"{DEFAULT_MAX_RERUNS}; 0: only flag it)")
    p.add_argument("--force", action="store_true", help="rerun finished experiments (deletes their results)")
    p.add_argument("--experiments", default=EXPERIMENTS_DIR, metavar="DIR", help="where the *.yaml files are")
    p.add_argument("--results", default="results", metavar="DIR", help="results root (RESULTS/<profile>/<name>/)")
    p.add_argument("--plots", default="plots", metavar="DIR", help="plots root (PLOTS/<profile>/*.png)")
    p.add_argument("--no-plots", dest="plot", action="store_false", help="do not run the plot scripts")
    p.add_argument("--plots-only", action="store_true", help="only remake the plots from existing results")
    p.add_argument("--list", action="store_true",
                   help="list what each experiment runs and what your results directory already holds")
    p.add_argument("--dry-run", action="store_true", help="list every run each experiment would make")
    p.set_defaults(func=_cmd_experiment)
