"""The command line in this process (``pipebd.cli.main``): a refusal before spawning, --help and
the zoo table. ``python -m pipebd`` itself, in a fresh interpreter, is run by
tests/integration/test_cli.py (and the fault and torchrun tests)."""

from __future__ import annotations

import pytest

from pipebd.cli import main


def test_cli_rejects_bad_input_before_spawning(tmp_path, capsys):
    assert main(["run", "--workload", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown workload 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "runs.csv").exists()


def test_cli_help_and_zoo(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "run" in out and "zoo" in out
    assert main(["zoo", "tiny", "nas-cifar10"]) == 0
    out = capsys.readouterr().out
    assert "nas-cifar10" in out and "160x4x4 → 10" in out
