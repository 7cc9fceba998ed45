"""Measurements without processes: results/README.md documents exactly the schema of
``pipebd/metrics.py``; the NVML sampler, the ideal/efficiency helper, the shared event clock,
the CUDA event clock on fake events and reading results back behave as documented. The CSVs a
real run writes are checked in tests/integration/test_metrics.py.

The column lists are parsed from the README's tables, so the docs and the schema in
``pipebd/metrics.py`` cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import threading

import pytest

from pipebd import metrics
from pipebd import recorder as recorder_mod
from pipebd.metrics import RankReport
from pipebd.recorder import CudaEventClock, NvmlSampler, Recorder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "results", "README.md")


def documented(section: str) -> list[str]:
    """First-column names of the table under the README heading that mentions ``section``."""
    lines = open(README, encoding="utf-8").read().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("## ") and f"`{section}`" in ln)
    names = []
    for ln in lines[start + 1:]:
        if ln.startswith("## "):
            break
        m = re.match(r"^\|\s*`([^`]+)`\s*\|", ln)
        if m:
            names.append(m.group(1))
    assert names, f"no table under the {section} heading of results/README.md"
    return names


def test_readme_documents_exactly_the_schema():
    assert documented("runs.csv") == metrics.RUN_COLUMNS
    assert documented("ranks.csv") == metrics.RANK_COLUMNS
    assert documented("events.csv") == metrics.EVENT_COLUMNS
    assert documented("losses.csv") == metrics.LOSS_COLUMNS
    text = open(README, encoding="utf-8").read()
    for phase in metrics.PHASES:
        assert f"`{phase}`" in text


def test_cpu_recorder_samples_nothing_and_stamps_its_clock():
    import torch

    rec = Recorder(0, torch.device("cpu"))
    assert rec._sampler is None
    assert recorder_mod.nvml_reader(torch.device("cpu")) is None
    with rec.measure():
        with rec.span("teacher", 0, 0):
            pass
    rep = rec.report()
    assert rep.nvml_utilisation is None and rep.t0_unix is not None and rep.peak_memory_mb > 0
    assert len(rep.events) == 1 and rep.wall_s >= rep.events[0][4] - rep.events[0][3]


def test_nvml_sampler_counts_only_open_windows():
    active = threading.Event()
    calls = []

    def read() -> float:
        calls.append(active.is_set())
        return 0.5

    s = NvmlSampler(read, active.is_set, interval_s=0.005)
    s.start()
    threading.Event().wait(0.05)
    assert not calls  # no window open: the thread never reads
    active.set()
    s.window_opened()
    threading.Event().wait(0.05)
    active.clear()
    s.window_closed()  # takes one reading if the thread took none in this window
    s.stop()
    assert len(s.samples) >= 1 and s.mean() == pytest.approx(0.5)
    assert s._thread is None


def test_nvml_sampler_stops_on_a_failing_read(capsys):
    def read() -> float:
        raise RuntimeError("no NVML here")

    s = NvmlSampler(read, lambda: True, interval_s=0.005, rank=0)
    s.window_closed()
    assert s.failed and s.mean() is None
    s.start()  # a failed sampler never starts a thread
    assert s._thread is None
    with pytest.raises(ValueError):
        NvmlSampler(read, lambda: True, interval_s=0)


def test_with_ideal():
    row = {"epoch_time_s": 20.0, "strategy": "tr"}
    assert metrics.with_ideal(row, 5.0) == {"epoch_time_s": 20.0, "strategy": "tr", "ideal_epoch_time_s": 5.0,
                                            "efficiency": 0.25}
    assert "ideal_epoch_time_s" not in row  # a copy
    for unknown in (None, float("nan"), 0.0, -1.0):
        out = metrics.with_ideal(row, unknown)
        assert out["ideal_epoch_time_s"] is None and out["efficiency"] is None
    assert metrics.with_ideal({"epoch_time_s": float("nan")}, 3.0)["efficiency"] is None


def test_event_rows_put_ranks_on_one_clock(tmp_path):
    a = RankReport(rank=0, wall_s=1.0, events=[("data", -1, 1, 1.0, 1.5)], peak_memory_mb=1.0, t0_unix=100.0)
    b = RankReport(rank=1, wall_s=1.0, events=[("teacher", 2, 1, 1.0, 1.5)], peak_memory_mb=1.0, t0_unix=100.25)
    rows = metrics.event_rows("r", [a, b])
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(1.0, 1.5), (1.25, 1.75)]
    metrics.write_trace(str(tmp_path / "t.json"), "r", [a, b])
    spans = [e for e in json.load(open(tmp_path / "t.json"))["traceEvents"] if e["ph"] == "X"]
    assert [e["ts"] for e in spans] == [1.0e6, 1.25e6]
    # reports without a clock stamp (older pickles) are left as they are
    c = RankReport(rank=1, wall_s=1.0, events=[("teacher", 2, 1, 1.0, 1.5)], peak_memory_mb=1.0)
    assert [r["start_s"] for r in metrics.event_rows("r", [a, c])] == [1.0, 1.0]


def _pipeline_reports(steps: int, period: float, latency: float, *, pipelined: bool = True) -> list[RankReport]:
    """A 2-stage pipeline in steady state: stage 0 finishes step k at (k+1)·period, stage 1
    starts it ``latency`` later and takes one period, so the window holds one fill."""
    end = (steps + 1) * period + latency
    r0 = [("teacher", 0, k, k * period, (k + 1) * period) for k in range(steps)]
    r1 = [("student", 1, k, (k + 1) * period + latency - period + period, (k + 2) * period + latency)
          for k in range(steps)]
    mk = lambda rank, evs: RankReport(rank=rank, wall_s=end, events=evs, peak_memory_mb=1.0,  # noqa: E731
                                      extra={"windows": [(0.0, end)], "pipelined": [pipelined]})
    return [mk(0, r0), mk(1, r1)]


def test_pipelined_epoch_pays_the_fill_once():
    S, p, lat, E = 16, 0.5, 0.2, 1000
    s = metrics.summarise(_pipeline_reports(S, p, lat), batch_size=10, steps=S, epoch_samples=E * 10)
    assert s["steady_period_s"] == pytest.approx(p)
    assert s["fill_drain_s"] == pytest.approx(p + lat)  # the window minus S periods: one fill
    assert s["epoch_time_s"] == pytest.approx(p + lat + E * p)
    assert s["throughput_sps"] == pytest.approx(E * 10 / (p + lat + E * p))
    # charged per measured step (the old extrapolation) the same window costs E/S windows
    naive = metrics.summarise(_pipeline_reports(S, p, lat, pipelined=False), batch_size=10, steps=S,
                              epoch_samples=E * 10)
    assert naive["fill_drain_s"] == pytest.approx(0.0, abs=1e-12)
    assert naive["epoch_time_s"] == pytest.approx(((S + 1) * p + lat) * E / S)


def test_a_cheap_first_step_gives_no_negative_fill():
    # varying step costs (NAS paths): the first step is short, so the later steps' period
    # exceeds the window's mean; the fill is then 0, never negative
    evs = [("student", 0, 0, 0.0, 0.5)] + [("student", 0, k, 0.5 + (k - 1), 0.5 + k) for k in range(1, 4)]
    rep = RankReport(rank=0, wall_s=3.5, events=evs, peak_memory_mb=1.0,
                     extra={"windows": [(0.0, 3.5)], "pipelined": [True]})
    s = metrics.summarise([rep], batch_size=1, steps=4, epoch_samples=100)
    assert s["fill_drain_s"] == pytest.approx(0.0) and s["steady_period_s"] == pytest.approx(3.5 / 4)


def test_windows_add_up_per_block_and_take_the_slowest_rank():
    # dp-like: two windows (blocks) of 4 steps each; rank 1 is slower in the second
    def rep(rank, t2):
        evs = [("student", 0, k, k * 1.0, (k + 1) * 1.0) for k in range(4)]
        evs += [("student", 1, k, 10 + k * t2 / 4, 10 + (k + 1) * t2 / 4) for k in range(4)]
        return RankReport(rank=rank, wall_s=4 + t2, events=evs, peak_memory_mb=1.0,
                          extra={"windows": [(0.0, 4.0), (10.0, 10.0 + t2)], "pipelined": [False, False]})
    s = metrics.summarise([rep(0, 2.0), rep(1, 6.0)], batch_size=8, steps=4, epoch_samples=80)
    assert s["measured_time_s"] == pytest.approx(4.0 + 6.0)
    assert s["steady_period_s"] == pytest.approx(1.0 + 1.5) and s["fill_drain_s"] == pytest.approx(0.0)
    assert s["epoch_time_s"] == pytest.approx(10 * 2.5)


def test_summarise_and_rank_rows():
    reps = [RankReport(rank=0, wall_s=2.0, events=[("teacher", 0, 1, 0.0, 1.0), ("comm", 0, 1, 1.0, 1.5)],
                       peak_memory_mb=10.0, nvml_utilisation=0.6),
            RankReport(rank=1, wall_s=4.0, events=[("student", 1, 1, 0.0, 2.0), ("comm", 1, 2, 2.0, 4.0)],
                       peak_memory_mb=30.0)]
    s = metrics.summarise(reps, batch_size=8, steps=2, epoch_samples=80)
    assert s["measured_time_s"] == 4.0 and s["throughput_sps"] == 4.0 and s["epoch_time_s"] == 20.0
    assert s["mean_utilisation"] == pytest.approx(0.5) and s["max_peak_memory_mb"] == 30.0
    assert s["mean_nvml_utilisation"] == pytest.approx(0.6)
    rows = metrics.rank_rows("r", {"workload": "w", "strategy": "s", "devices": 2}, reps)
    r0 = {r["phase"]: r for r in rows if r["rank"] == 0}
    assert r0["idle"]["seconds"] == pytest.approx(0.5) and r0["comm"]["fraction"] == pytest.approx(0.25)
    assert r0["teacher"]["utilisation"] == pytest.approx(0.5)
    assert set(RankReport.__dataclass_fields__) >= {"t0_unix", "nvml_utilisation"}


def test_load_results_skips_failed_and_orphan_rows(tmp_path, capsys):
    base = {c: None for c in metrics.RUN_COLUMNS}
    ok = {**base, "run_id": "a", "status": "ok", "workload": "tiny", "strategy": "dp", "devices": 1,
          "epoch_time_s": 3.0}
    bad = {**base, "run_id": "b", "status": "failed", "error": "rank 0 failed: boom", "workload": "tiny",
           "strategy": "tr", "devices": 2, "epoch_time_s": 1.0}
    nan = {**ok, "run_id": "c", "epoch_time_s": float("nan")}
    metrics.append_rows(str(tmp_path / "runs.csv"), [ok, bad, nan], metrics.RUN_COLUMNS)
    metrics.append_rows(str(tmp_path / "ranks.csv"),
                        [{"run_id": x, "rank": 0, "phase": "data", "seconds": 1.0} for x in "abz"],
                        metrics.RANK_COLUMNS)
    runs, ranks, events = metrics.load_results(str(tmp_path))
    err = capsys.readouterr().err
    assert list(runs.run_id) == ["a"] and list(ranks.run_id) == ["a"] and events.empty
    assert "skipped run b" in err and "boom" in err and "skipped run c" in err and "z" in err
    assert list(events.columns) == metrics.EVENT_COLUMNS


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_recorder_records_memory_and_nvml_or_notes_why(capsys):
    import torch

    dev = torch.device("cuda", 0)
    rec = Recorder(0, dev, nvml_interval_s=0.05)
    x = torch.randn(2048, 2048, device=dev)
    with rec.measure():
        for _ in range(20):
            with rec.span("student", 0, 0):
                x = (x @ x).tanh()
    rep = rec.report()
    assert rep.peak_memory_mb > 0 and rep.wall_s > 0
    if rec._sampler is None:  # no nvidia-ml-py: a one-time note said so
        assert rep.nvml_utilisation is None
    else:
        assert rep.nvml_utilisation is not None and 0.0 <= rep.nvml_utilisation <= 1.0
        assert rec._sampler._thread is None


class _Event:
    """A stand-in for ``torch.cuda.Event``: stamps the host clock when recorded, counts waits."""

    waits: list = []

    def record(self, stream=None):
        self.t = __import__("time").perf_counter()

    def synchronize(self):
        _Event.waits.append(self)

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def test_cuda_event_clock_waits_only_after_the_window(monkeypatch):
    """The CUDA clock's logic on fake events: spans only enqueue events; the one wait is on
    the window's last event, after it closed; resolved times are ordered and inside the window."""
    import torch

    monkeypatch.setattr(_Event, "waits", [])
    clock = CudaEventClock(torch.device("cpu"), event_factory=_Event)
    rec = Recorder(0, torch.device("cpu"), clock=clock)
    rec.start_window(pipelined=True)
    for k in range(3):
        with rec.span("teacher", 0, k):
            threading.Event().wait(0.002)
        assert not _Event.waits and not rec.events  # nothing resolved, nothing waited on, inside the window
    rec.stop_window()
    assert len(_Event.waits) == 1 and not rec.measuring
    (w0, w1), = rec.windows
    starts = [e[3] for e in rec.events]
    assert starts == sorted(starts) and w0 <= starts[0] and rec.events[-1][4] <= w1
    assert all(e[4] - e[3] >= 0.0015 for e in rec.events)
    assert rec.report().extra["pipelined"] == [True]


def test_a_clock_that_syncs_per_span_is_caught(monkeypatch):
    """The check the tr test relies on can fail: a clock that waits at every mark (as the old
    recorder's torch.cuda.synchronize per timestamp did) is seen waiting inside the window."""
    import torch

    class SyncingClock(CudaEventClock):
        def mark(self):
            e = super().mark()
            e.synchronize()
            return e

    monkeypatch.setattr(_Event, "waits", [])
    rec = Recorder(0, torch.device("cpu"), clock=SyncingClock(torch.device("cpu"), event_factory=_Event))
    with rec.measure():
        with rec.span("student", 0, 0):
            pass
        inside = len(_Event.waits)
    assert inside >= 2


def test_cuda_path_without_nvml_notes_once(monkeypatch, capsys):
    import torch

    def no_nvml(d=None):
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: None)
    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    monkeypatch.setattr(recorder_mod, "_NVML_NOTED", False)
    a = Recorder(0, torch.device("cuda", 0))
    b = Recorder(0, torch.device("cuda", 0))
    assert a._sampler is None and b._sampler is None
    assert capsys.readouterr().err.count("NVML utilisation is not recorded") == 1
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 0)
    assert a.report().nvml_utilisation is None


def test_loss_shares_of_replicas_are_summed_per_block_and_step():
    from pipebd.metrics import loss_rows, summed_losses

    # block 0 trained by two replicas (shares 0.25 + 0.5 of a batch's loss), block 1 by one
    per_rank = [{0: {0: 0.25, 1: 0.125}}, {0: {0: 0.5, 1: 0.25}, 1: {0: 2.0}}]
    assert summed_losses(per_rank) == {0: {0: 0.75, 1: 0.375}, 1: {0: 2.0}}
    rows = loss_rows("R", {"workload": "tiny", "strategy": "dp", "devices": 2, "modes": ""}, summed_losses(per_rank))
    assert [(r["block"], r["step"], r["loss"]) for r in rows] == [(0, 0, 0.75), (0, 1, 0.375), (1, 0, 2.0)]
    assert {r["run_id"] for r in rows} == {"R"} and rows[0]["strategy"] == "dp"
