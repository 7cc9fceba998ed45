"""The plot scripts render from hand-built results directories, skip failed rows and missing
strategies with a note, and never import torch.

The fixture (:func:`build_fixture`) simulates small schedules of dp, tr, tr-dpu and ahd on 2
ranks (a failed ahd run, no ls at all, a repeated run, a workload alias, an ideal time on one
workload) and writes them with the real row builders of ``pipebd.metrics``.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from pipebd import metrics
from pipebd.metrics import RankReport

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ["speedup", "breakdown", "memory", "timeline", "scaling", "epochs", "quality", "search"]
#: Arguments a script needs beyond RESULTS_DIR -o PNG
EXTRA_ARGS = {"timeline": ["--workload", "nas-cifar10"], "quality": ["--figure", "time"]}
FAILED_ID = "fixture-failed-ahd"
U = 0.01  # seconds per unit of simulated work


class _Sim:
    """Per-rank clocks; ``span`` appends an event and advances the rank's clock."""

    def __init__(self, ranks: int):
        self.t = [0.0] * ranks
        self.events: list[list[tuple]] = [[] for _ in range(ranks)]
        self.windows: list[list[tuple[float, float]]] = [[] for _ in range(ranks)]

    def span(self, rank: int, phase: str, block: int, step: int, units: float) -> None:
        start = self.t[rank]
        self.t[rank] = start + units * U
        self.events[rank].append((phase, block, step, start, self.t[rank]))

    def wait_until(self, rank: int, phase: str, step: int, t: float) -> None:
        if t > self.t[rank]:
            self.events[rank].append((phase, -1, step, self.t[rank], t))
            self.t[rank] = t

    def reports(self, mem: float) -> list[RankReport]:
        return [RankReport(rank=r, wall_s=sum(e - s for s, e in self.windows[r]), events=self.events[r],
                           peak_memory_mb=mem + 10 * r, t0_unix=1000.0 + 0.5 * r,
                           nvml_utilisation=None) for r in range(len(self.t))]


def _shift_clock(reports: list[RankReport]) -> list[RankReport]:
    """Rank r's recorder started 0.5 s after rank 0's; express its events on its own clock."""
    for rep in reports:
        d = rep.t0_unix - 1000.0
        rep.events = [(p, b, s, st - d, en - d) for p, b, s, st, en in rep.events]
    return reports


def _dp(steps: range, blocks: int, scale: float) -> _Sim:
    sim = _Sim(2)
    for b in range(blocks):
        for r in range(2):
            sim.t[r] += 3 * U  # untimed warm-up of the block
        start = max(sim.t)
        for r in range(2):
            sim.t[r] = start
        for s in steps:
            for r in range(2):
                sim.span(r, "data", b, s, 0.4)
                sim.span(r, "teacher", b, s, 0.5 * (b + 1) * scale)
                sim.span(r, "student", b, s, 1.0 * scale)
            t = max(sim.t)
            for r in range(2):
                sim.wait_until(r, "comm", s, t)
                sim.span(r, "comm", b, s, 0.3)
                sim.span(r, "update", b, s, 0.2)
        for r in range(2):
            sim.windows[r].append((start, sim.t[r]))
    return sim


def _pipe(steps: range, owned: list[list[int]], scale: float, barrier: bool) -> _Sim:
    sim = _Sim(2)
    start = 0.0
    for s in steps:
        sim.span(0, "data", -1, s, 0.5)
        for b in owned[0]:
            sim.span(0, "teacher", b, s, 1.0 * scale)
        sim.span(0, "comm", owned[0][-1], s, 0.2)
        ready = sim.t[0]
        for b in owned[0]:
            sim.span(0, "student", b, s, 1.5 * scale)
        sim.wait_until(1, "comm", s, ready)
        for b in owned[1]:
            sim.span(1, "teacher", b, s, 1.0 * scale)
            sim.span(1, "student", b, s, 1.5 * scale)
        if barrier:
            t = max(sim.t)
            for r in range(2):
                sim.wait_until(r, "sync", s, t)
        for r in range(2):
            for b in owned[r]:
                sim.span(r, "update", b, s, 0.1)
    end = max(sim.t)
    for r in range(2):
        sim.windows[r].append((start, end))
    return sim


def _write_run(out: str, run_id: str, workload: str, strategy: str, reports: list[RankReport], *, batch: int,
               steps: int, ideal: float | None = None, devices: int = 2, plan: str = "") -> None:
    summary = metrics.summarise(reports, batch_size=batch, steps=steps, epoch_samples=50000)
    row = {"run_id": run_id, "timestamp": "2026-01-01T00:00:00", "tag": "fixture", "status": "ok", "error": "",
           "workload": workload, "strategy": strategy, "devices": devices, "device_type": "cpu", "batch_size": batch,
           "steps_measured": steps, "warmup_steps": 1, **summary, "plan": plan, "resolution": 32, "width_mult": 1.0,
           "data": "synthetic", "seed": 0, "threads_per_rank": 1, "git_commit": "fixture", "torch_version": "x",
           "hostname": "fixture"}
    row = metrics.with_ideal(row, ideal)
    reports = _shift_clock(reports)
    metrics.append_rows(os.path.join(out, "ranks.csv"), metrics.rank_rows(run_id, row, reports), metrics.RANK_COLUMNS)
    metrics.append_rows(os.path.join(out, "events.csv"), metrics.event_rows(run_id, reports), metrics.EVENT_COLUMNS)
    metrics.append_rows(os.path.join(out, "runs.csv"), [row], metrics.RUN_COLUMNS)


def build_fixture(root: str) -> tuple[str, str]:
    """Write two results directories under ``root``: ``main`` (speedup, breakdown, memory,
    timeline) and ``scaling`` (batch sizes and device counts). Returns their paths."""
    main, scaling = os.path.join(root, "main"), os.path.join(root, "scaling")
    steps = range(1, 5)
    for wl, scale, ideal in (("nas-cifar10", 1.0, 30.0), ("compress-cifar10", 0.6, None)):
        sims = {"dp": _dp(steps, 4, scale), "tr": _pipe(steps, [[0, 1], [2, 3]], scale, True),
                "tr-dpu": _pipe(steps, [[0, 1], [2, 3]], scale, False),
                "ahd": _pipe(steps, [[0, 1, 2], [3]], scale, False)}
        for strat, sim in sims.items():
            if wl == "nas-cifar10" and strat == "ahd":
                continue  # this one failed, below
            mem = {"dp": 900.0, "tr": 700.0, "tr-dpu": 720.0, "ahd": 800.0}[strat]
            _write_run(main, f"fixture-{wl}-{strat}", wl, strat, sim.reports(mem), batch=64, steps=len(steps),
                       ideal=ideal, plan=f"{strat} fixture")
        rep = _pipe(steps, [[0, 1], [2, 3]], scale * 1.2, False).reports(730.0)  # a slower repeat
        _write_run(main, f"fixture-{wl}-tr-dpu-2", wl, "tr-dpu", rep, batch=64, steps=len(steps), ideal=ideal)
    # the failed run: poison values (a huge speedup, a huge memory) that must never be plotted
    poison = _pipe(steps, [[0, 1], [2, 3]], 0.01, False).reports(1e6)
    _write_run(main, FAILED_ID, "nas-cifar10", "ahd", poison, batch=64, steps=len(steps))
    runs = pd.read_csv(os.path.join(main, "runs.csv"), dtype={"status": object, "error": object})
    runs.loc[runs.run_id == FAILED_ID, ["status", "error"]] = ["failed", "rank 1 failed: RuntimeError: boom"]
    runs.to_csv(os.path.join(main, "runs.csv"), index=False)
    # scaling: dp and tr-dpu over batch sizes (2 devices) and device counts (batch 64)
    for strat in ("dp", "tr-dpu"):
        for bs in (32, 64, 128):
            sc = 1.0 if strat == "dp" else 0.8
            sim = _dp(steps, 4, sc * bs / 64) if strat == "dp" else _pipe(steps, [[0, 1], [2, 3]], sc * bs / 64, False)
            _write_run(scaling, f"fixture-scale-{strat}-b{bs}", "nas-cifar10", strat, sim.reports(500.0), batch=bs,
                       steps=len(steps))
        for n in (1, 4):
            sim = _dp(steps, 4, 2.0 / n) if strat == "dp" else _pipe(steps, [[0, 1], [2, 3]], 1.6 / n, False)
            _write_run(scaling, f"fixture-scale-{strat}-n{n}", "nas-cifar10", strat, sim.reports(500.0), batch=64,
                       steps=len(steps), devices=n)
    return main, scaling


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory) -> tuple[str, str]:
    return build_fixture(str(tmp_path_factory.mktemp("results")))


def _png_ok(path) -> None:
    assert os.path.exists(path), path
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000, path


def test_load_results_skips_failed_rows_with_a_note(fixture_dirs, capsys):
    runs, ranks, events = metrics.load_results(fixture_dirs[0])
    err = capsys.readouterr().err
    assert FAILED_ID in err and "skipped" in err and "boom" in err
    for df in (runs, ranks, events):
        assert FAILED_ID not in set(df["run_id"]) and len(df)
    assert set(runs["strategy"]) == {"dp", "tr", "tr-dpu", "ahd"}


def test_speedup(fixture_dirs, tmp_path, capsys):
    from plots import speedup

    out = tmp_path / "speedup.png"
    assert speedup.main([fixture_dirs[0], "-o", str(out), "--paper"]) == 0
    _png_ok(out)
    err = capsys.readouterr().err
    assert FAILED_ID in err and "ls" in err  # the failed run and the missing strategy are both noted
    runs, _, _ = speedup.C.load([fixture_dirs[0]])
    table = speedup.compute(runs)
    assert set(table["workload"]) == {"nas-cifar10", "compress-vgg16-cifar10"}  # alias resolved
    assert FAILED_ID not in ",".join(table["run_ids"])
    nas = table[table.workload == "nas-cifar10"].set_index("strategy")
    assert "ahd" not in nas.index and nas.loc["dp", "speedup"] == pytest.approx(1.0)
    assert nas.loc["tr-dpu", "runs"] == 2 and nas.loc["tr-dpu", "speedup"] > nas.loc["tr", "speedup"] > 1
    assert nas["ideal_speedup"].notna().all()
    # two repeats: a range around the median ratio and their spread (the second is 20 % slower)
    tr_dpu = nas.loc["tr-dpu"]
    assert tr_dpu.speedup_lo < tr_dpu.speedup < tr_dpu.speedup_hi
    assert 0.1 < tr_dpu.spread < 0.25 and not tr_dpu.noisy  # (max-min)/median, under the 25 % threshold
    assert nas.loc["tr", "speedup_lo"] == pytest.approx(nas.loc["tr", "speedup"])  # one run: no range


def test_speedup_reads_the_paper_numbers_from_the_experiment(tmp_path):
    from pipebd.experiments import load_experiment
    from plots import speedup

    d = tmp_path / "r"
    d.mkdir()
    pd.DataFrame([{"workload": "compress-cifar10", "strategy": "ahd", "speedup_vs_dp": 7.4}]).to_csv(
        d / "paper_reference.csv", index=False)
    assert speedup.paper_reference([str(d)]) == {"compress-vgg16-cifar10": {"ahd": 7.4}}
    assert speedup.paper_reference([str(tmp_path)]) == {}
    assert "PAPER" not in vars(speedup)  # the numbers live once, in experiments/speedup.yaml
    assert load_experiment(os.path.join(ROOT, "experiments", "speedup.yaml")).paper_reference


def test_breakdown(fixture_dirs, tmp_path):
    from plots import breakdown

    out = tmp_path / "breakdown.png"
    assert breakdown.main([fixture_dirs[0], "-o", str(out)]) == 0
    _png_ok(out)
    runs, ranks, _ = breakdown.C.load([fixture_dirs[0]])
    table = breakdown.compute(runs, ranks)
    assert FAILED_ID not in set(table["run_id"])
    assert set(table["strategy"]) >= {"dp", "tr", "tr-dpu"}
    per_rank = table[table.strategy != "ideal"].groupby(["workload", "strategy", "rank"])
    # per-step phase times of a rank add up to its per-step wall time
    for _, g in per_rank:
        assert g[list(breakdown.C.PHASES)].sum(axis=1).iloc[0] == pytest.approx(g["wall_per_step_s"].iloc[0], rel=1e-6)


def test_memory(fixture_dirs, tmp_path):
    from plots import memory

    out = tmp_path / "memory.png"
    assert memory.main([fixture_dirs[0], "-o", str(out)]) == 0
    _png_ok(out)
    runs, ranks, _ = memory.C.load([fixture_dirs[0]])
    table = memory.compute(runs, ranks)
    assert table["max_mb"].max() < 1e5  # the failed run's poison value is not there
    nas = table[table.workload == "nas-cifar10"].set_index("strategy")
    assert nas.loc["dp", "max_mb"] == pytest.approx(910.0) and nas.loc["dp", "min_mb"] == pytest.approx(900.0)


def test_timeline(fixture_dirs, tmp_path, capsys):
    from plots import timeline

    out = tmp_path / "timeline.png"
    assert timeline.main([fixture_dirs[0], "-o", str(out), "--workload", "nas-cifar10", "--steps", "2",
                          "--strategies", "dp,tr,tr-dpu,ahd,ls"]) == 0
    _png_ok(out)
    err = capsys.readouterr().err
    assert "ahd" in err and "ls" in err  # left out: failed / never run
    runs, _, events = timeline.C.load([fixture_dirs[0]])
    panels = timeline.compute(runs, events, workload="nas-cifar10", strategies=["dp", "tr", "tr-dpu"], steps=2)
    assert [p.strategy for p in panels] == ["dp", "tr", "tr-dpu"]
    for p in panels:
        assert p.events["x0"].min() == pytest.approx(0.0) and (p.events["x1"] >= p.events["x0"]).all()
        assert set(p.events["rank"]) == {0, 1}
    dp, tr = panels[0], panels[1]
    assert len(dp.cuts) == 3  # four blocks one after another: three cuts between them
    assert not tr.cuts
    # rank clocks are aligned: tr's rank 1 starts its teacher after rank 0 relayed the first activation
    teacher = tr.events[tr.events.phase == "teacher"].groupby("rank")["x0"].min()
    assert teacher[1] > teacher[0] + 2 * U


def test_scaling(fixture_dirs, tmp_path):
    from plots import scaling

    sim = tmp_path / "sim.csv"
    pd.DataFrame({"strategy": ["dp", "dp", "tr-dpu", "tr-dpu", "ahd"], "devices": [2, 4, 2, 4, 4],
                  "batch_size": [64, 64, 64, 64, 64], "epoch_time_s": [900.0, 500.0, 300.0, 160.0, 120.0],
                  "workload": ["nas-cifar10"] * 5}).to_csv(sim, index=False)
    out = tmp_path / "scaling.png"
    assert scaling.main([fixture_dirs[1], fixture_dirs[0], "-o", str(out), "--simulated", str(sim)]) == 0
    _png_ok(out)
    runs, _, _ = scaling.C.load([fixture_dirs[1]])
    by_batch, by_devices = scaling.compute(runs, workload="nas-cifar10")
    assert set(by_batch["batch_size"]) == {32, 64, 128} and set(by_devices["devices"]) == {1, 2, 4}
    assert (by_batch["throughput_sps"] > 0).all()


def test_scaling_ratio_is_a_over_b_per_device_count(fixture_dirs, tmp_path, capsys):
    from plots import scaling

    sim = pd.DataFrame({"strategy": ["even", "ahd", "even", "ahd", "even"], "devices": [2, 2, 8, 8, 4],
                        "batch_size": [64] * 5, "throughput_sps": [10.0, 13.0, 20.0, 33.0, 15.0]})
    meas = pd.DataFrame({"strategy": ["even", "ahd", "even"], "devices": [2, 2, 4],
                         "throughput_sps": [8.0, 10.0, 12.0]})
    meas.attrs["batch_size"] = 64
    table = scaling.ratios(meas, sim, "ahd", "even").set_index("devices")
    assert table.loc[2, "measured"] == pytest.approx(1.25) and table.loc[2, "simulated"] == pytest.approx(1.3)
    assert table.loc[8, "simulated"] == pytest.approx(1.65) and pd.isna(table.loc[8, "measured"])
    assert pd.isna(table.loc[4, "simulated"])  # no ahd at 4 devices: no ratio, not a made-up one
    assert scaling.parse_ratio("ahd/even") == ("ahd", "even")
    for bad in ("ahd", "ahd/", "/even", "a/b/c"):
        with pytest.raises(ValueError, match="A/B"):
            scaling.parse_ratio(bad)
    path = tmp_path / "sim.csv"
    sim.assign(workload="nas-cifar10", batch_size=64).to_csv(path, index=False)
    out = tmp_path / "ratio.png"
    assert scaling.main([fixture_dirs[1], "-o", str(out), "--simulated", str(path), "--ratio", "ahd/even",
                         "--batch-size", "64"]) == 0
    _png_ok(out)
    assert "ahd / even" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        scaling.main([fixture_dirs[1], "-o", str(out), "--ratio", "ahd"])
    assert exit_.value.code == 2


def test_scaling_rejects_a_bad_simulated_csv_with_a_note(fixture_dirs, tmp_path, capsys):
    from plots import scaling

    sim = tmp_path / "sim.csv"
    pd.DataFrame({"strategy": ["dp"], "devices": [2]}).to_csv(sim, index=False)
    out = tmp_path / "scaling.png"
    assert scaling.main([fixture_dirs[1], "-o", str(out), "--simulated", str(sim)]) == 0
    _png_ok(out)
    assert "simulated" in capsys.readouterr().err


@pytest.mark.parametrize("name", SCRIPTS)
def test_empty_or_missing_dir_writes_a_note_not_a_crash(name, tmp_path, capsys):
    import importlib

    mod = importlib.import_module(f"plots.{name}")
    out = tmp_path / f"{name}.png"
    extra = EXTRA_ARGS.get(name, [])
    assert mod.main([str(tmp_path / "nothing-here"), "-o", str(out), *extra]) == 0
    assert out.exists() and out.stat().st_size > 0
    assert "note:" in capsys.readouterr().err


# ---- the quality and search experiments' figures ----------------------------------------------------------------

def _quality_fixture(root: str) -> str:
    """sequential, dp and tr-dpu on 4 blocks: top-1 figures, losses falling with the step (the same per step for
    every strategy) and update events on each run's clock (tr-dpu twice as fast as sequential)."""
    out = os.path.join(root, "quality")
    steps = range(1, 5)
    sims = {"sequential": _dp(steps, 4, 2.0), "dp": _dp(steps, 4, 1.5), "tr-dpu": _pipe(steps, [[0, 1], [2, 3]], 1.0, False)}
    for strat, sim in sims.items():
        _write_run(out, f"q-{strat}", "compress-mnist", strat, sim.reports(100.0), batch=64, steps=len(steps),
                   devices=1 if strat == "sequential" else 2)
        rows = [{"run_id": f"q-{strat}", "block": b, "step": s, "loss": 1.0 / s + 0.1 * b} for b in range(4) for s in steps]
        metrics.append_rows(os.path.join(out, "losses.csv"), [dict(r, workload="compress-mnist", strategy=strat,
                                                                   devices=2, modes="") for r in rows],
                            metrics.LOSS_COLUMNS)
    runs = pd.read_csv(os.path.join(out, "runs.csv"))
    runs["student_top1"] = [0.967, 0.967, 0.966]
    runs["student_top1_raw"] = [0.954, 0.946, 0.954]
    runs["teacher_top1"] = 0.983
    runs.to_csv(os.path.join(out, "runs.csv"), index=False)
    return out


def test_quality_figures_top1_loss_against_steps_and_time_to_target(tmp_path, capsys):
    from plots import quality

    d = _quality_fixture(str(tmp_path))
    for figure in ("top1", "steps", "time"):
        out = tmp_path / f"q-{figure}.png"
        assert quality.main([d, "-o", str(out), "--figure", figure, "--smooth", "1"]) == 0
        _png_ok(out)
    text = capsys.readouterr().out
    assert "96.70" in text and "95.40" in text and "98.30" in text  # the top-1 table, in percent
    assert "every block" in text
    runs, _, events = __import__("plots._common", fromlist=["load"]).load([d])
    curves = quality.smoothed_losses(pd.read_csv(os.path.join(d, "losses.csv")), runs["run_id"], 1)
    curves = curves.merge(quality.step_times(events), on=["run_id", "block", "step"], how="left")
    hits = quality.time_to_target(curves, runs, 0.10)
    # every strategy reaches sequential's final loss (step 4) at its own step-4 update of that block
    t = quality.step_times(events)
    for strat in ("sequential", "dp", "tr-dpu"):
        want = float(t[(t.run_id == f"q-{strat}") & (t.block == 2) & (t.step == 4)]["t"].iloc[0])
        got = float(hits[(hits.strategy == strat) & (hits.block == 2)]["time_s"].iloc[0])
        assert got == pytest.approx(want)
    seq = hits[hits.strategy == "sequential"]["time_s"].max()
    assert hits[hits.strategy == "tr-dpu"]["time_s"].max() < seq  # faster to quality


def test_search_figure_prints_each_strategys_architecture_and_tau(tmp_path, capsys):
    from plots import search

    d = _quality_fixture(str(tmp_path))
    rows = []
    for rid, noise in (("q-sequential", 0.0), ("q-dp", 0.05), ("q-tr-dpu", 0.0)):
        for b in range(2):
            for c in range(4):
                loss = 1.0 / (c + 1) + b + (noise if c == 1 else 0.0) * (1 if rid == "q-dp" else 0) * 10
                rows.append({"run_id": rid, "workload": "compress-mnist", "strategy": rid[2:], "devices": 2, "modes": "",
                             "block": b, "path": f"k{c}", "choices": str(c), "params": 10 * (c + 1),
                             "heldout_loss": loss, "final_train_loss": ""})
    pd.DataFrame(rows).to_csv(os.path.join(d, "block_losses.csv"), index=False)
    out = tmp_path / "search.png"
    assert search.main([d, "-o", str(out), "--budget", "60"]) == 0
    _png_ok(out)
    text = capsys.readouterr().out
    assert "k2 | k2" in text  # within 60 parameters: 0.333 + 0.333 beats k3 | k1's 0.25 + 0.5
    lines = {l.split()[0]: l for l in text.splitlines() if l.strip() and l.split()[0] in ("sequential", "dp", "tr-dpu")}
    assert " 1 " in lines["tr-dpu"] + " " and " 1 " in lines["sequential"] + " "
    assert " 1 " not in lines["dp"] + " "  # dp's ranking differs: tau < 1
