"""The runtime: what a rank does with a strategy — the interpreter of its schedule, and the
context (trainers, teacher, step hooks) both it and an escape-hatch strategy use."""

from .context import RankContext
from .interpreter import Interpreter, step_hooks

__all__ = ["RankContext", "Interpreter", "run_strategy", "step_hooks"]


def run_strategy(ctx: RankContext, strategy, schedule=None) -> dict:
    """Run ``strategy`` (a registered class) on this rank: its escape hatch if it has one, else
    the interpreter on its schedule (``schedule``, or the strategy's for the run's configuration).
    Returns the trainers this rank reports."""
    trainers = strategy.run(ctx)
    if trainers is not None:
        return trainers
    schedule = schedule or strategy.schedule_for(ctx.config, ctx.workload.num_blocks)
    return Interpreter(ctx, schedule).run()
