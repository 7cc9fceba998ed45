"""Strategies: the schedule-generator interface and registry, and the Pipe-BD strategies
(``tr``, ``tr-dpu``, ``ahd``); the baselines live in the top-level ``baselines`` package."""

from .base import Strategy, get_strategy, import_plugins, register_strategy, spec_for, strategy_names, uses_schedule

__all__ = ["Strategy", "get_strategy", "import_plugins", "register_strategy", "spec_for", "strategy_names",
           "uses_schedule"]
