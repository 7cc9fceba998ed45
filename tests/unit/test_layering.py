"""Layers point one way (DESIGN.md §3): a module may import only from its own layer or below.

    errors/fileio → config/plan/costfit → zoo/data/distill/schedule/costmodel/… → planner →
    strategies (+ baselines) → runtime/launch/measurement → results (runner, metrics) →
    experiments/verify → commands/bench → cli

Every ``import`` counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: module (or package) -> layer; the first matching prefix wins
LAYERS = {
    "pipebd.errors": 0, "pipebd.fileio": 0,
    "pipebd.config": 1, "pipebd.plan": 1, "pipebd.costfit": 1, "pipebd.runargs": 1, "pipebd.modes": 1,
    "pipebd.zoo": 2, "pipebd.data": 2, "pipebd.data_tokens": 2,
    "pipebd.data_mnist": 2, "pipebd.evaluate": 2, "pipebd.quality": 2, "pipebd.search": 2, "pipebd.export": 2, "pipebd.assembly": 2,
    "pipebd.teacher_training": 2, "pipebd.distill": 2, "pipebd.schedule": 2, "pipebd.costmodel": 2,
    "pipebd.costs": 2, "pipebd.options": 2, "pipebd.derived": 2, "pipebd.progress": 2,
    "pipebd.smollm2": 1,
    "pipebd.planner": 3,
    "pipebd.strategies": 4, "baselines": 4,
    "pipebd.comm": 5, "pipebd.faults": 5, "pipebd.recorder": 5, "pipebd.metrics": 5, "pipebd.checkpoint": 5,
    "pipebd.runtime": 5, "pipebd.launch": 5, "pipebd.preflight": 5, "pipebd.profile_measure": 5, "pipebd.profile_comm": 5,
    "pipebd.profile_lean": 5, "pipebd.profile_modes": 5, "pipebd.profile_store": 5, "pipebd.cachestore": 2,
    "pipebd.profile_options": 2,
    "pipebd.runner": 6, "pipebd.run_outputs": 6, "pipebd.profiler": 6,
    "pipebd.experiments": 7, "pipebd.verify": 7, "pipebd.zoo_table": 7,
    "pipebd.commands": 8, "pipebd.bench": 8,
    "pipebd.cli": 9, "pipebd.__main__": 9,
}
#: the root packages themselves (matched exactly, never as a prefix): pipebd's is the public facade
#: (``pipebd.load_student``), above every module it may reach, imported by none of them
EXACT = {"pipebd": 9, "baselines": 4}


def layer_of(module: str) -> int | None:
    if module in EXACT:
        return EXACT[module]
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def _modules():
    for pkg in ("pipebd", "baselines"):
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                    yield rel.removesuffix(".__init__"), os.path.join(dirpath, f), f == "__init__.py"


def _imports(module: str, path: str, is_pkg: bool):
    tree = ast.parse(open(path).read(), path)
    package = module if is_pkg else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if node.module or not node.level:  # `from .. import x` imports module x, not the package
                yield name, node.lineno
            for a in node.names:  # `from . import x` names a module
                yield f"{name}.{a.name}", node.lineno


def test_every_module_has_a_layer():
    missing = [m for m, _p, _k in _modules() if layer_of(m) is None]
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_no_lower_layer_imports_a_higher_one():
    bad = []
    for module, path, is_pkg in _modules():
        mine = layer_of(module)
        for name, line in _imports(module, path, is_pkg):
            theirs = layer_of(name)
            if theirs is not None and mine is not None and theirs > mine:
                bad.append(f"{os.path.relpath(path, ROOT)}:{line}: {module} (layer {mine}) imports {name} "
                           f"(layer {theirs})")
    assert not bad, "lower layers import higher ones:\n" + "\n".join(sorted(set(bad)))
