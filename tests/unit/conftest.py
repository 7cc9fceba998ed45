"""Unit tests run in this process alone: starting any process (a rank, a subprocess, a fork)
fails the test, so a test that needs one must live in tests/integration."""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess

import pytest
import torch.multiprocessing

# matplotlib builds its font cache when font_manager is first imported, asking `fc-list` in a
# subprocess; on a fresh machine (CI) that would trip the guard below inside a plotting test, so
# the import comes here, once, before any guard is set (the backend is plots._common's to choose)
import matplotlib.font_manager  # noqa: F401

MESSAGE = "unit tests run without processes: move this test to tests/integration"


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError(MESSAGE)

    monkeypatch.setattr(torch.multiprocessing, "start_processes", refuse)
    monkeypatch.setattr(torch.multiprocessing, "spawn", refuse)
    # every multiprocessing context's Process (fork, spawn, forkserver) starts through BaseProcess
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)  # subprocess.run, check_output, ...
    for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
