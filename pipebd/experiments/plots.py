"""Figures: an experiment's ``plots`` entries, each a ``plots/SCRIPT.py`` run on the results
directories it reads; a missing or failing script is a note, never fatal.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Callable

from .journal import experiment_dir
from .spec import DEFAULT_PROFILE, PLOTS_SCRIPTS_DIR, Experiment


def _expand(arg: str, exp: Experiment, profile: str, results_root: str) -> str:
    """``{results}`` -> this experiment's results dir, ``{results:NAME}`` -> NAME's, ``{profile}`` -> the profile."""
    arg = re.sub(r"\{results(?::([\w-]+))?\}",
                 lambda m: experiment_dir(results_root, profile, m.group(1) or exp.name), arg)
    return arg.replace("{profile}", profile)


def make_plots(exp: Experiment, profile: str = DEFAULT_PROFILE, *, results_root: str = "results",
               plots_root: str = "plots", say: Callable[[str], None] = print, timeout_s: float = 600.0) -> list[str]:
    """Run ``exp``'s plot scripts; a missing script or a failing one is a note, never fatal. Returns PNGs made."""
    made = []
    for p in exp.plots:
        script = os.path.join(PLOTS_SCRIPTS_DIR, f"{p.script}.py")
        out = os.path.join(plots_root, profile, p.output)
        if not os.path.exists(script):
            say(f"  note: plot script plots/{p.script}.py does not exist; {out} not made")
            continue
        dirs = [experiment_dir(results_root, profile, i) for i in (p.inputs or (exp.name,))]
        absent = [x for x in dirs if not os.path.exists(os.path.join(x, "runs.csv"))]
        if absent:
            say(f"  note: {out} not made: no results in {', '.join(absent)}")
            continue
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        cmd = [sys.executable, script, *dirs, "-o", out, *[_expand(a, exp, profile, results_root) for a in p.args]]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            say(f"  note: plots/{p.script}.py timed out after {timeout_s:.0f} s; {out} not made")
            continue
        if proc.returncode != 0 or not os.path.exists(out):
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            say(f"  note: plots/{p.script}.py failed (exit {proc.returncode}); {out} not made: {tail}")
            continue
        made.append(out)
        say(f"  plot {out}")
    return made
