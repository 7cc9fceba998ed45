"""Experiments: one YAML file per figure of the paper, loaded, validated and run (``run_all.sh``).

Pipe-BD (Jang et al., DATE 2023) reports speedups of its strategies over the data-parallel
baseline (Fig. 6), per-rank time breakdowns, memory, batch-size sensitivity and scaling. Each of
those is an *experiment*: ``experiments/NAME.yaml`` says which workloads, strategies, device
counts, batch sizes, steps and repeats to measure, per *profile* of size (``cpu``, the default,
sized for a 2-core machine; ``paper``, the paper's sizes for GPU machines), which analyses to
derive from a cost profile, and which ``plots/*.py`` scripts turn the results into figures. The
schema (every key, its type and default) is the docstring of :mod:`pipebd.experiments.spec`.

Running ``python -m pipebd experiment NAME [--profile P] [--force]`` measures, for every
(workload, batch size, device count), ``repeats`` rounds of all strategies, each round in a
rotated order (round ``r`` starts at strategy ``r mod k``), because on a shared machine the
noise is ±20–35 % and drifts: interleaving spreads the drift over every strategy and the plots
take medians. Every run goes through :func:`pipebd.runner.launch` with
``out=RESULTS/<profile>/<experiment>``, ``tag=<experiment>`` and its run id; a run that fails (or
a strategy that is not registered) becomes a ``runs.csv`` row with ``status=failed`` and the
error, and the experiment goes on. With ``costs: profile`` each (workload, batch, devices) is
profiled once, before its runs (:mod:`pipebd.profiler`, cached under ``RESULTS/<profile>/profiles/``
and shared by every experiment of the profile), and the CSV is passed to every run as
``--profile`` (``ahd`` plans from it); the ideal per sample (:func:`pipebd.costmodel.predict_ideal`,
DESIGN.md §4) from that cost table goes into each run's RunConfig, so the runner writes
``ideal_epoch_time_s``/``efficiency`` into the run record itself. ``paper_reference.csv``,
``simulate.csv`` and ``schedules.csv`` are written beside ``runs.csv``.

Resume. ``units.csv`` is the experiment's journal: a ``started`` row (with the run id, which
:func:`pipebd.runner.launch` is given) before each run and an ``ok``/``failed`` row after it.
A restarted experiment skips units that finished ``ok``, runs the failed ones again, deletes the
rows (runs, ranks, events, trace) of run ids that started but never finished, and runs the rest.
``experiment.json`` records the measurement settings; if they changed since the partial run, the
old directory is moved aside to ``NAME.stale-<time>`` and the experiment starts afresh. ``DONE``
is written atomically only when every run succeeded (otherwise the command exits 1 naming the
failed runs); a finished experiment is skipped unless ``--force``, which deletes its directory
and reruns it (``--force`` also re-measures each cached profile once per invocation).

Noise. After a configuration's repeats, a cell (strategy) whose epoch times differ by more than
25 % of their median is re-run, in rounds of ``dp`` and the noisy strategies (rotated), up to
``--max-reruns`` rounds (:mod:`pipebd.derived`); cells still noisy are named in ``DONE``. Each
run line shows the invocation's ETA; the end prints the speedup table with spreads beside
``results/reference/<profile>/`` and the paper's numbers. Profiles: ``cpu`` (default) and
``paper`` are in every shipped file; ``quick`` (a first look in a few minutes) only where defined.

The modules: :mod:`~pipebd.experiments.spec` (the schema as types, shared constants),
:mod:`~pipebd.experiments.load` (reading and checking the files), :mod:`~pipebd.experiments.grid`
(a profile expanded into run units and their RunConfigs), :mod:`~pipebd.experiments.journal`
(``units.csv``, resume, ``DONE``), :mod:`~pipebd.experiments.tables` (costs, the ideal,
``simulate.csv``/``schedules.csv``, the speedup summary), :mod:`~pipebd.experiments.run` (running
units and experiments), :mod:`~pipebd.experiments.plots` (the plot scripts) and
:mod:`~pipebd.experiments.cli` (the ``experiment`` command). This package re-exports their
public names.
"""

from __future__ import annotations

from .cli import add_cli
from .grid import Unit, input_resolution, plan_units, rotated, unit_config
from .journal import UNIT_COLUMNS, experiment_dir, is_done
from .load import load_experiment, load_experiments, validate_experiment, workload_facts
from .plots import make_plots
from .run import Eta, ExperimentOutcome, UnitResult, run_experiment, run_unit
from .spec import (COSTS, DEFAULT_MAX_RERUNS, DEFAULT_PROFILE, EXPERIMENTS_DIR, GRID_FIELDS, MIN_NAS_WARMUP,
                   OPTIONAL_PROFILES, PLOTS_SCRIPTS_DIR, PROFILES, ROOT, Experiment, ExperimentError, PlotSpec,
                   ProfileSpec, WorkloadSpec)
from .tables import (SCHEDULE_COLUMNS, SIMULATE_COLUMNS, group_costs, ideal_seconds_per_sample,
                     print_speedup_summary, profile_name)

__all__ = [
    "ExperimentError", "WorkloadSpec", "PlotSpec", "ProfileSpec", "Experiment", "Unit", "UnitResult",
    "PROFILES", "DEFAULT_PROFILE", "MIN_NAS_WARMUP", "EXPERIMENTS_DIR", "load_experiment", "load_experiments",
    "validate_experiment", "plan_units", "rotated", "run_experiment", "run_unit", "make_plots", "group_costs",
    "profile_name", "ideal_seconds_per_sample", "input_resolution", "workload_facts",
    "add_cli", "OPTIONAL_PROFILES", "DEFAULT_MAX_RERUNS", "COSTS", "GRID_FIELDS", "ROOT", "PLOTS_SCRIPTS_DIR",
    "UNIT_COLUMNS", "SIMULATE_COLUMNS", "SCHEDULE_COLUMNS", "unit_config", "experiment_dir", "is_done", "Eta",
    "ExperimentOutcome", "print_speedup_summary",
]
