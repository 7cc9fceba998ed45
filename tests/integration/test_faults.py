"""Every distributed run ends (DESIGN.md §5): a rank that raises, is killed or hangs takes the
whole run down with a non-zero exit naming it and its cause, no process is left behind,
SIGINT stops every rank, and the failure is recorded in runs.csv without figures.

Runs go through ``python -m pipebd run`` in a subprocess whose environment carries a unique
marker; every process of the run (launcher, ranks, multiprocessing's helpers) inherits it,
so "no process left" is checked by scanning ``/proc/*/environ`` for the marker. Each
subprocess has a generous timeout as a hang guard; no test asserts a wall-clock time. The
three hang runs start together (``hang_runs``): they mostly wait out their --timeout.

The 2-rank runs use ``dp`` (an all-reduce every step, so a peer's failure is seen at once).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pytest

from pipebd import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARK_ENV = "PIPEBD_TEST_MARK"


STRATEGY = "dp"  # a collective every step: a peer's failure is seen at once


# ----------------------------------------------------------------------------- helpers


def marked_pids(mark: str) -> list[int]:
    """Processes whose environment carries ``MARK_ENV=mark`` (this test process excluded)."""
    needle = f"{MARK_ENV}={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if needle in env.split(b"\0"):
            try:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue  # a zombie is already dead; its parent reaps it
            except OSError:
                continue
            found.append(int(name))
    return found


def assert_nothing_left(mark: str, within_s: float = 15.0) -> None:
    """No process of the run is alive (multiprocessing's resource tracker may take a moment
    to see its parent's exit, hence the short wait)."""
    deadline = time.monotonic() + within_s
    while (left := marked_pids(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left behind: {left}"


def pipebd_args(out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipebd", "run", "--quiet", "--workload", "tiny", "--strategy", STRATEGY,
            "--devices", "2", "--batch-size", "4", "--steps", "3", "--warmup", "1", "--no-trace",
            "--out", str(out), *extra]


def run_marked(args: list[str], *, timeout: float) -> tuple[subprocess.CompletedProcess, str]:
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK_ENV: mark, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, mark


class _Background:
    """A marked run started in the background (output to files: nobody reads a pipe meanwhile)."""

    def __init__(self, args: list[str], logs, *, timeout: float):
        self.mark, self.timeout, self.logs = uuid.uuid4().hex, timeout, logs
        env = {**os.environ, MARK_ENV: self.mark, "PYTHONUNBUFFERED": "1"}
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)

    def result(self) -> tuple[subprocess.CompletedProcess, str]:
        """Wait for the run (like :func:`run_marked`, the timeout counted from now)."""
        try:
            rc = self.proc.wait(timeout=self.timeout)
        finally:
            self.stop()
        return (subprocess.CompletedProcess(self.proc.args, rc, (self.logs / "stdout").read_text(),
                                            (self.logs / "stderr").read_text()), self.mark)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def hang_runs(tmp_path_factory):
    """The three hang runs, started together on first use: each spends most of its time waiting out
    its --timeout (no CPU), so they overlap instead of adding up. Name -> (run, its --out)."""
    root = tmp_path_factory.mktemp("hangs")
    runs = {
        "peers": (pipebd_args(root / "peers" / "res", "--inject-fault", "1:2:hang", "--timeout", "10"), 180,
                  root / "peers" / "res"),
        "alone": ([sys.executable, "-m", "pipebd", "run", "--quiet", "-w", "tiny", "-s", "sequential", "-b", "4",
                   "--steps", "3", "--warmup", "1", "--inject-fault", "0:1:hang", "--timeout", "4", "--out",
                   str(root / "alone" / "res")], 120, root / "alone" / "res"),
        "profile": (profile_args(root / "profile" / "p.csv", "--devices", "1", "--inject-fault", "0:1:hang",
                                 "--timeout", "4"), 180, root / "profile" / "p.csv"),
    }
    started = {name: (_Background(args, root / name / "logs", timeout=timeout), out)
               for name, (args, timeout, out) in runs.items()}
    yield started
    for run, _out in started.values():
        run.stop()


def failed_rows(out) -> pd.DataFrame:
    runs = pd.read_csv(out / "runs.csv")
    return runs[runs.status == "failed"]


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("kind, cause", [
    ("raise", "InjectedFault: injected fault on rank 1 at step 2"),  # the exception line of rank 1
    ("kill", "killed by signal SIGKILL"),
])
def test_a_failing_rank_ends_the_run_and_is_named(tmp_path, kind, cause):
    out = tmp_path / "res"
    proc, mark = run_marked(pipebd_args(out, "--inject-fault", f"1:2:{kind}"), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "rank 1 failed: " in proc.stderr and cause in proc.stderr, proc.stderr
    assert "rank 0 failed" not in proc.stderr  # the peer that lost its connection is not blamed
    assert_nothing_left(mark)
    row = failed_rows(out)
    assert len(row) == 1 and "rank 1 failed: " in row.error.iloc[0] and cause in row.error.iloc[0]
    assert row.throughput_sps.isna().all() and row.measured_time_s.isna().all()  # no figures
    assert row.workload.iloc[0] == "tiny" and row.strategy.iloc[0] == STRATEGY and row.devices.iloc[0] == 2


def test_a_hung_rank_is_detected_and_named(hang_runs):
    run, out = hang_runs["peers"]  # pipebd_args(out, "--inject-fault", "1:2:hang", "--timeout", "10")
    proc, mark = run.result()
    assert proc.returncode == 1, proc.stderr
    assert "rank 1 hung (no progress for" in proc.stderr, proc.stderr
    assert_nothing_left(mark)
    assert "rank 1 hung" in failed_rows(out).error.iloc[0]


def test_a_hang_without_peers_is_caught_by_the_heartbeat(hang_runs):
    """One rank, nothing to time out on: only the launcher's heartbeat watch can see it."""
    run, _out = hang_runs["alone"]  # sequential, --inject-fault 0:1:hang --timeout 4
    proc, mark = run.result()
    assert proc.returncode == 1, proc.stderr
    assert "rank 0 hung (no progress for" in proc.stderr, proc.stderr
    assert_nothing_left(mark)


def test_sigint_stops_every_rank(tmp_path):
    out = tmp_path / "res"
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK_ENV: mark}
    args = pipebd_args(out)
    # long enough to outlast the signal by far (4 blocks x 2000 steps), and no longer: the launcher
    # validates the whole schedule before it spawns, ~0.5 ms a step here (100000 steps took 50 s)
    args[args.index("--steps") + 1] = "2000"
    launcher = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len([p for p in marked_pids(mark) if p != launcher.pid]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert launcher.poll() is None, launcher.communicate()[1]
        time.sleep(1.0)
        launcher.send_signal(signal.SIGINT)
        _out, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 130, err
    assert "interrupted" in err
    assert_nothing_left(mark)
    assert "interrupted by SIGINT" in failed_rows(out).error.iloc[0]


# ----------------------------------------------------------------------------- profiling ranks


def profile_args(out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipebd", "profile", "--workload", "tiny", "--batch-size", "8", "--quick",
            "--out", str(out), *extra]


def test_a_failing_profiling_rank_ends_the_profile_and_is_named(tmp_path):
    """The profiler launches like a run (pipebd.launch): the root cause is named, no process is left."""
    out = tmp_path / "p.csv"
    proc, mark = run_marked(profile_args(out, "--devices", "2", "--inject-fault", "1:3:raise"), timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert "rank 1 failed: " in proc.stderr and "InjectedFault: injected fault on rank 1 at step 3" in proc.stderr, \
        proc.stderr
    assert "rank 0 failed" not in proc.stderr
    assert_nothing_left(mark)
    assert not out.exists()


def test_a_hung_profiling_rank_is_caught_by_the_heartbeat(hang_runs):
    run, _out = hang_runs["profile"]  # profile -n 1 --inject-fault 0:1:hang --timeout 4
    proc, mark = run.result()
    assert proc.returncode == 1, proc.stderr
    assert "rank 0 hung (no progress for" in proc.stderr, proc.stderr
    assert_nothing_left(mark)


# ----------------------------------------------------------------------------- nothing lost


def _append_many(path: str, writer: int, n: int) -> None:
    for k in range(n):
        rows = [{"run_id": f"w{writer}-{k}-{j}", "status": "ok", "tag": f"writer {writer}", "devices": writer}
                for j in range(1 + k % 2)]
        metrics.append_rows(path, rows, metrics.RUN_COLUMNS)


def test_concurrent_appends_keep_every_row_exactly_once(tmp_path):
    path = str(tmp_path / "runs.csv")
    writers, per_writer = 4, 12
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, per_writer)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    runs = pd.read_csv(path)
    expected = {f"w{w}-{k}-{j}" for w in range(writers) for k in range(per_writer) for j in range(1 + k % 2)}
    assert len(runs) == len(expected)
    assert set(runs.run_id) == expected
    assert list(runs.columns[:len(metrics.RUN_COLUMNS)]) == metrics.RUN_COLUMNS
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]  # no temporary file left
