"""What the harness costs per training step: recorder spans, progress, and the per-step hook.

Issue "honest numbers" item 13: the recorder's spans, heartbeats, progress updates and step
hooks must together cost < 2 % of a step. This script measures each piece in-process (the
mean of many calls, median of several trials) with the implementation importable from
``--repo`` (default: this checkout; point it at a worktree of an older commit to get the
"before" figure), counts how many of each a step makes from a real run's ``events.csv``
(spans per rank per measured step), and divides by that run's steady-state step time.

    python experiments/harness_overhead.py --run-dir results/bench [--run-id ID] [--repo DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _per_call(fn, n: int = 20000, trials: int = 7) -> float:
    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def measure_pieces() -> dict[str, float]:
    """Seconds per call of each harness piece, from whichever pipebd is first on sys.path."""
    import torch

    try:
        from pipebd.recorder import Recorder
    except ImportError:  # older layout: the recorder lived in pipebd.metrics
        from pipebd.metrics import Recorder
    from pipebd.progress import Progress

    rec = Recorder(0, torch.device("cpu"))
    rec.start_window()

    def span():
        with rec.span("student", 1, 3):
            pass

    t_span = _per_call(span)
    rec.stop_window()
    prog = Progress(enabled=True, batch_size=64, interval_s=3600.0)
    prog.start(10**9, "overhead")
    prog._bar = None  # the plain-line path, as in logs (a tty bar costs more and is not what runs record)
    t_prog = _per_call(lambda: prog.advance(1))

    class _Beat:
        count = 0

        def beat(self):
            self.count += 1

    from pipebd.config import RunConfig
    from pipebd.runtime import RankContext

    ctx = RankContext(rank=0, world_size=2, device=torch.device("cpu"), config=RunConfig(), workload=None,
                      data=None, recorder=rec, progress=prog, heartbeat=_Beat())
    t_hook = _per_call(lambda: ctx.after_step(10**9, {}))
    return {"span": t_span, "progress": t_prog, "after_step": t_hook}


def step_counts(run_dir: str, run_id: str | None) -> tuple[dict, float, str]:
    """Per strategy of the run: spans per rank per measured step, and the steady period."""
    import pandas as pd

    runs = pd.read_csv(os.path.join(run_dir, "runs.csv"))
    runs = runs[runs["status"] == "ok"]
    row = runs[runs["run_id"] == run_id].iloc[-1] if run_id else runs.iloc[-1]
    ev = pd.read_csv(os.path.join(run_dir, "events.csv"))
    ev = ev[ev["run_id"] == row["run_id"]]
    spans = ev.groupby("rank").size().max() / float(row["steps_measured"])
    return {"spans": spans}, float(row["steady_period_s"]), f"{row['strategy']} {row['workload']} {row['run_id']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="results directory holding the run (runs.csv, events.csv)")
    p.add_argument("--run-id", default=None, help="the run (default: the last ok run)")
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   help="checkout whose pipebd is measured")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.repo))
    import torch

    torch.set_num_threads(1)
    pieces = measure_pieces()
    counts, period, what = step_counts(args.run_dir, args.run_id)
    # per rank and step: every span, one progress advance and one after_step (rank 0 does both)
    per_step = counts["spans"] * pieces["span"] + pieces["progress"] + pieces["after_step"]
    print(f"harness cost per call ({args.repo}): span {pieces['span'] * 1e6:.2f} us, progress.advance "
          f"{pieces['progress'] * 1e6:.2f} us, after_step {pieces['after_step'] * 1e6:.2f} us")
    print(f"run {what}: {counts['spans']:.1f} spans per rank per step, steady period {period * 1e3:.1f} ms")
    print(f"harness per step: {per_step * 1e6:.1f} us = {per_step / period:.4%} of a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
