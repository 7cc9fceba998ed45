"""The plot scripts from the command line, in a fresh interpreter: ``python plots/X.py DIR -o
out.png`` works from any directory and never imports torch (results built by
tests/unit/test_plots.py's fixture)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.unit.test_plots import EXTRA_ARGS, FAILED_ID, ROOT, SCRIPTS, _png_ok, build_fixture


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory) -> tuple[str, str]:
    return build_fixture(str(tmp_path_factory.mktemp("results")))


def test_scripts_run_from_the_command_line_without_torch(fixture_dirs, tmp_path):
    """``python plots/X.py DIR -o out.png`` works from any directory and never imports torch."""
    code = (
        "import runpy, sys\n"
        f"for name, extra in {[(s, EXTRA_ARGS.get(s, [])) for s in SCRIPTS]!r}:\n"
        f"    sys.argv = [name + '.py', {fixture_dirs[0]!r}, '-o', {str(tmp_path)!r} + '/' + name + '.png', *extra]\n"
        "    try:\n"
        f"        runpy.run_path({ROOT!r} + '/plots/' + name + '.py', run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, (name, e.code)\n"
        "assert 'torch' not in sys.modules, 'a plot script imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in SCRIPTS:
        _png_ok(tmp_path / f"{name}.png")
    out = tmp_path / "cli.png"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "plots", "speedup.py"), fixture_dirs[0], "-o", str(out)],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _png_ok(out)
    assert FAILED_ID in proc.stderr
