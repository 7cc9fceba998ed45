"""``--strategy auto``: relay or cache — the faster of the best relayed plan (``ahd``) and ``cache``.

Pipe-BD relays the teacher every epoch; LoLCATs runs it once into a store. Which is faster
depends on the epochs (``--epochs E``: the teacher pass is paid once in ``E``), on how fast the
store is read and written, and on whether it fits (``--cache-memory``, ``--cache-dir``). Both are
schedules, so both are priced by the same replay (:func:`pipebd.strategies.predict.predict`) from
the run's cost table (``--profile``, else FLOP estimates), over an epoch of the run's data, and
:func:`choose` returns the faster with the reason (both predictions and the store it needs). A
store that does not fit rules ``cache`` out, with the size it would need.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, RunConfig

__all__ = ["AUTO", "CANDIDATES", "Choice", "choose", "resolve_auto"]

AUTO = "auto"
CANDIDATES = ("ahd", "cache")


@dataclass(frozen=True)
class Choice:
    strategy: str
    why: str
    predicted: dict  # strategy -> predicted epoch seconds (averaged over --epochs); absent: ruled out


def choose(cfg: RunConfig, candidates=CANDIDATES) -> Choice:
    """The fastest of ``candidates`` for ``cfg`` (predicted epoch averaged over ``cfg.epochs``)."""
    from ..options import workload_num_blocks
    from ..planner import cost_table_for, memory_limit_for
    from .base import get_strategy
    from .cache import _dataset, _gib
    from .predict import predict

    costs = cost_table_for(cfg)
    limit, _src = memory_limit_for(cfg, costs)
    steps = _dataset(cfg)[1]
    n = workload_num_blocks(cfg)
    predicted, notes, out = {}, {}, []
    for name in candidates:
        try:
            cls = get_strategy(name)
            if cls.max_devices is not None and cfg.devices > cls.max_devices:
                raise ConfigError(f"it runs on at most {cls.max_devices} device(s)")
            layout = cls.layout(cfg.replace(strategy=name), n)
            p = predict(name, costs, cfg.devices, cfg.batch_size, steps, inflight=cfg.inflight,
                        memory_limit_bytes=limit, layout=layout, epochs=cfg.epochs)
        except ConfigError as e:
            out.append(f"{name} ruled out: {e}")
            continue
        predicted[name] = p.epoch_s
        store = getattr(layout, "store", None)
        notes[name] = (f"{p.epoch_s:.2f} s/epoch" + (f" ({p.layout})" if p.layout else "")
                       + (f", store {_gib(_store_bytes(store, cfg, steps))} in {store.medium}"
                          if store is not None else ""))
    if not predicted:
        raise ConfigError("--strategy auto: no candidate can run: " + "; ".join(out))
    best = min(predicted, key=predicted.get)
    what = f"profile {cfg.profile}" if cfg.profile else f"FLOP estimates ({cfg.device_type})"
    why = (f"auto chose {best} for {cfg.epochs} epoch(s) of {steps} steps (costs from {what}): "
           + "; ".join(f"{k} {v}" for k, v in notes.items()) + ("; " + "; ".join(out) if out else ""))
    return Choice(best, why, predicted)


def _store_bytes(store, cfg: RunConfig, epoch_steps: int) -> float:
    """Bytes the teacher pass writes: the samples of the run's batches (one epoch at most)."""
    rows = min(store.rows, min(cfg.total_steps, epoch_steps) * cfg.batch_size)
    return rows * store.sample_bytes()


def resolve_auto(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``--strategy auto`` replaced by the choice (printed with why); others unchanged."""
    if cfg.strategy != AUTO:
        return cfg
    choice = choose(cfg)
    if not cfg.quiet:
        print(choice.why, flush=True)
    return cfg.replace(strategy=choice.strategy, tag=(cfg.tag + " " if cfg.tag else "") + "auto")
