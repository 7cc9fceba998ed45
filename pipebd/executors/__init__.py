"""Executors: the strategy interface and registry, and the Pipe-BD strategies (tr, tr-dpu, ahd)."""

from .base import RankContext, Strategy, get_strategy, import_plugins, register_strategy, strategy_names

__all__ = ["RankContext", "Strategy", "get_strategy", "import_plugins", "register_strategy", "strategy_names"]
