"""``python -m pipebd schedule``: see a run's schedule before running it.

Prints the rank × order grid of the actions the run would execute (validated, as before any
run), the predicted measured time of exactly this run (the schedule replayed by the cost model
from ``--profile``, else FLOP estimates), its steady-state step time and the predicted epoch.
``--trace FILE`` writes the predicted timeline as a Chrome trace in the same format as a
measured run's ``traces/RUN.json`` (open both in Perfetto side by side); ``--predicted-out DIR`` writes
it as ``runs.csv`` + ``events.csv`` (``status=predicted``) so ``plots/timeline.py DIR`` draws it;
``--csv`` / ``--json`` write the schedule itself.

    python -m pipebd schedule -w tiny -s tr-dpu -n 2 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os

from ..runargs import add_run_options, config_from_args
from ..costmodel import epoch_steps, replay
from ..metrics import RankReport, event_rows, write_trace
from ..costmodel import describe_modes
from ..planner import cost_table_for, modes_for, raw_cost_table_for
from ..options import workload_num_blocks
from ..preflight import validate
from ..runtime.interpreter import SPAN_PHASE
from ..schedule import format_grid, to_json, write_csv
from ..strategies import get_strategy, uses_schedule
from ..strategies.predict import predict
from ..config import ConfigError

__all__ = ["add_cli", "predicted_reports"]


def predicted_reports(schedule, timeline) -> list[RankReport]:
    """The replayed timeline as per-rank reports (every action, warm-up included)."""
    out = []
    for r, acts in enumerate(schedule.ranks):
        evs = [(SPAN_PHASE[a.kind], a.blocks[-1] if a.blocks else -1, a.step, s, e)
               for a, (s, e) in zip(acts, timeline.spans[r]) if a.kind in SPAN_PHASE and e > s]
        out.append(RankReport(rank=r, wall_s=timeline.makespan, events=evs, peak_memory_mb=0.0, plan=schedule.layout,
                              extra={"windows": [(w[0], w[1]) for w in timeline.windows[r]],
                                     "pipelined": [w[2] for w in timeline.windows[r]],
                                     "scales": [w[3] for w in timeline.windows[r]]}))
    return out


def _cmd_schedule(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    validate(cfg)  # the schedule is validated with the rest, before anything else
    cls = get_strategy(cfg.strategy)
    if not uses_schedule(cls):
        raise ConfigError(f"strategy {cfg.strategy!r} runs its own loop (an escape-hatch run()); it has no schedule")
    nb = workload_num_blocks(cfg)
    sched = cls.schedule_for(cfg, nb)
    print(format_grid(sched, columns=args.columns or None))
    raw = raw_cost_table_for(cfg)
    modes = modes_for(cfg, raw)
    how = ("pinned by --modes" if cfg.modes else "auto and pins, per block from the profile" if raw.has_modes()
           else "no profile timed the candidates: fp32 contiguous where not pinned")
    print(f"compute modes ({how}): {modes}")
    print("\n".join(describe_modes(modes, raw)))
    costs = cost_table_for(cfg)
    timeline = replay(sched, costs)
    measured = timeline.measured_s()
    steps = args.steps_per_epoch or epoch_steps(cfg.workload, cfg.batch_size)
    p = predict(cfg.strategy, costs, cfg.devices, cfg.batch_size, steps, inflight=cfg.inflight,
                layout=cls.layout(cfg, nb))
    what = f"profile {cfg.profile}" if cfg.profile else f"FLOP estimate ({cfg.device_type}; absolute times rough)"
    print(f"predicted (costs: {what}): this run's measured windows {measured:.3f} s for {cfg.steps} measured "
          f"step(s); steady step {p.step_s * 1e3:.2f} ms; epoch of {steps} steps {p.epoch_s:.2f} s "
          f"(fill {p.fill_s:.2f} s)" + (" [extrapolated batch sizes]" if p.extrapolated else ""))
    if args.csv:
        write_csv(sched, args.csv)
        print(f"wrote the schedule to {args.csv}")
    if args.json:
        from ..fileio import atomic_write_text

        atomic_write_text(args.json, to_json(sched))
        print(f"wrote the schedule to {args.json}")
    reports = predicted_reports(sched, timeline)
    run_id = f"predicted-{cfg.strategy}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if args.trace:
        write_trace(args.trace, run_id, reports)
        print(f"wrote the predicted timeline to {args.trace} (Chrome trace: open in https://ui.perfetto.dev)")
    if args.predicted_out:
        from ..metrics import RUN_COLUMNS, EVENT_COLUMNS, append_rows

        row = {"run_id": run_id, "timestamp": _dt.datetime.now().isoformat(timespec="seconds"), "tag": "predicted",
               "status": "predicted", "workload": cfg.workload, "strategy": cfg.strategy, "devices": cfg.devices,
               "device_type": cfg.device_type, "batch_size": cfg.batch_size, "steps_measured": cfg.steps,
               "warmup_steps": cfg.warmup, "epoch_time_s": p.epoch_s, "step_time_s": p.step_s, "plan": sched.layout}
        append_rows(os.path.join(args.predicted_out, "events.csv"), event_rows(run_id, reports), EVENT_COLUMNS)
        append_rows(os.path.join(args.predicted_out, "runs.csv"), [row], RUN_COLUMNS)
        print(f"wrote the predicted run {run_id} to {args.predicted_out}/runs.csv and events.csv")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("schedule", help="print a run's schedule (rank x order grid) and its predicted times")
    add_run_options(p)
    p.add_argument("--columns", type=int, default=24, help="positions of the grid to print (0: all)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="steps of the predicted epoch (default: the "
                   "dataset the workload stands in for ÷ batch)")
    p.add_argument("--trace", default=None, metavar="FILE", help="write the predicted timeline as a Chrome trace")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the schedule as CSV")
    p.add_argument("--json", default=None, metavar="FILE", help="write the schedule as JSON")
    p.add_argument("--predicted-out", default=None, metavar="DIR",
                   help="append the predicted run to DIR/runs.csv and DIR/events.csv (for plots/timeline.py)")
    p.set_defaults(func=_cmd_schedule)
