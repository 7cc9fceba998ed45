"""Experiments and bench without processes: every shipped config validates, bad configs fail
clearly, noisy cells are flagged and re-run (with run_unit replaced), bench pairs its rounds. The
tiny experiment end to end and bench's table are in tests/integration/test_experiments.py.
"""

from __future__ import annotations

import glob
import os
import textwrap

import pandas as pd
import pytest

from pipebd.cli import main
from pipebd.experiments import (EXPERIMENTS_DIR, MIN_NAS_WARMUP, PROFILES, ExperimentError, load_experiment,
                                load_experiments, plan_units, rotated)
from pipebd.experiments.grid import _group_config

SHIPPED = sorted(glob.glob(os.path.join(EXPERIMENTS_DIR, "*.yaml")))
PAPER_FIG6 = {
    "nas-cifar10": {"ls": 1.93, "tr": 2.41, "tr-dpu": 3.08, "ahd": 3.08},
    "nas-imagenet": {"ls": 0.50, "tr": 3.03, "tr-dpu": 3.14, "ahd": 4.37},
    "compress-vgg16-cifar10": {"ls": 2.05, "tr": 5.64, "tr-dpu": 5.85, "ahd": 7.40},
    "compress-vgg16-imagenet": {"ls": 0.51, "tr": 3.98, "tr-dpu": 4.23, "ahd": 7.38},
}


# ---- the shipped configs ----------------------------------------------------------------------------------------

def test_the_required_experiments_exist():
    names = {os.path.splitext(os.path.basename(p))[0] for p in SHIPPED}
    assert {"speedup", "breakdown", "memory", "batch-sweep", "scaling", "schedules"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.basename(p))
def test_shipped_experiment_validates_for_both_profiles(path):
    exp = load_experiment(path)
    assert exp.description.strip()
    for profile in PROFILES:
        prof = exp.profile(profile)
        for u in plan_units(prof):
            assert u.devices <= (2 if profile == "cpu" else 4)
        if profile == "paper" and prof.strategies:
            assert prof.options.get("device_type") == "cuda"
        if profile == "cpu" and prof.strategies:
            assert max(prof.devices) <= 2, "this machine has 2 cores: at most 2 ranks of 1 thread"


def test_quality_and_search_distil_a_trained_teacher_on_real_digits_with_every_strategy():
    from pipebd.experiments.grid import unit_config

    quality = load_experiment(os.path.join(EXPERIMENTS_DIR, "quality.yaml")).profile("cpu")
    assert set(quality.strategies) == {"sequential", "dp", "ls", "tr", "tr-dpu", "ahd"}
    assert quality.teacher_epochs > 0 and quality.options["data"] == "mnist5k" and quality.options["save_students"]
    cfgs = {u.strategy: unit_config(quality, u, out="o", tag="t") for u in plan_units(quality)}
    assert cfgs["sequential"].devices == 1 and cfgs["sequential"].shards == 2  # the reference runs on 1 rank
    assert {c.devices for s, c in cfgs.items() if s != "sequential"} == {2}
    search = load_experiment(os.path.join(EXPERIMENTS_DIR, "search.yaml")).profile("cpu")
    assert [w.name for w in search.workloads] == ["nas-mnist"] and "sequential" in search.strategies


def test_a_profile_with_teacher_epochs_trains_each_teacher_once_and_every_run_loads_it(tmp_path, monkeypatch):
    import dataclasses

    from pipebd import teacher_training as teacher
    from pipebd.experiments.grid import unit_config
    from pipebd.experiments.run import _with_teachers

    trained = []

    def fake_train(args):  # the command itself is tested in tests/unit/test_mnist.py; here: the wiring
        trained.append((args.workload, args.epochs, args.out))
        open(args.out, "wb").close()
        return teacher.TeacherResult(args.workload, args.out, args.epochs, 1, 1, 0.1, 0.1, 0.9)

    monkeypatch.setattr(teacher, "train_teacher", fake_train)
    prof = load_experiment(os.path.join(EXPERIMENTS_DIR, "search.yaml")).profile("cpu")
    prof = dataclasses.replace(prof, workloads=prof.workloads + (dataclasses.replace(prof.workloads[0], name="compress-mnist"),))
    said = []
    got = _with_teachers(prof, str(tmp_path), said.append)
    path = str(tmp_path / f"teacher-mnist-w1-e{prof.teacher_epochs}.pt")
    assert trained == [("nas-mnist", prof.teacher_epochs, path)]  # one teacher file for both workloads
    assert {w.teacher_weights for w in got.workloads} == {path} and "test top-1 90.00%" in said[0]
    assert {unit_config(got, u, out="o", tag="t").teacher_weights for u in plan_units(got)} == {path}
    assert [u.key for u in plan_units(got)] == [u.key for u in plan_units(prof)]  # the file is not in the key
    assert _with_teachers(dataclasses.replace(prof, teacher_epochs=0), str(tmp_path), said.append) is not None
    assert len(trained) == 1


def test_all_experiments_load_together_in_run_order():
    exps = load_experiments()
    assert list(exps)[0] == "speedup"  # memory reads the speedup results, so it must run first
    assert list(exps).index("memory") > list(exps).index("speedup")


def test_speedup_panels_and_paper_reference():
    """The paper's Fig. 6 numbers live once, in speedup.yaml; checked here against the values
    the reproduction issue quotes (PAPER_FIG6, this test's own copy, is the oracle)."""
    exp = load_experiment(os.path.join(EXPERIMENTS_DIR, "speedup.yaml"))
    assert exp.paper_reference == PAPER_FIG6
    for profile in PROFILES:
        prof = exp.profile(profile)
        assert prof.strategies == ("dp", "ls", "tr", "tr-dpu", "ahd")
        assert {w.name for w in prof.workloads} == set(PAPER_FIG6)
        assert prof.repeats >= 3
    quick = exp.profile("quick")
    assert {w.name for w in quick.workloads} == {"nas-cifar10", "compress-vgg16-cifar10"} and quick.repeats == 1
    paper = exp.profile("paper")
    assert paper.batch_sizes == (256,) and paper.devices == (4,)
    assert all(w.resolution is None and w.width_mult == 1.0 for w in paper.workloads)
    cpu = exp.profile("cpu")
    for w in cpu.workloads:
        if w.name.startswith("nas"):
            assert (w.warmup if w.warmup is not None else cpu.warmup) >= MIN_NAS_WARMUP
        if w.name.endswith("imagenet"):
            assert w.resolution is not None and w.resolution <= 96
    assert "64 px" in cpu.notes


def test_batch_sweep_paper_sizes():
    exp = load_experiment(os.path.join(EXPERIMENTS_DIR, "batch-sweep.yaml"))
    assert exp.profile("paper").batch_sizes == (128, 256, 384, 512)


def test_scaling_measures_1_and_2_and_simulates_to_16():
    prof = load_experiment(os.path.join(EXPERIMENTS_DIR, "scaling.yaml")).profile("cpu")
    assert prof.devices == (1, 2)
    assert min(prof.simulate_devices) == 1 and max(prof.simulate_devices) == 16


def test_rotation_interleaves_every_repeat():
    assert rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotated(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotated(["a", "b", "c"], 4) == ["b", "c", "a"]


# ---- clear errors ---------------------------------------------------------------------------------------------------

GOOD = """\
description: tiny end-to-end check
plots:
  - {script: speedup, output: tinyexp.png}
profiles:
  cpu:
    workloads: [tiny]
    strategies: [dp, nosuch]
    devices: [2]
    batch_sizes: [8]
    steps: 2
    warmup: 1
    repeats: 1
    costs: estimate
    simulate_devices: [1, 2, 4]
    plan_devices: [2, 4]
    options: {timeout: 120.0, trace: false}
"""


def _write(tmp_path, text: str, name: str = "tinyexp") -> str:
    d = tmp_path / "exps"
    d.mkdir(exist_ok=True)
    p = d / f"{name}.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


@pytest.mark.parametrize("old,new,expect", [
    ("    steps: 2\n", "    steps: 2\n    step: 3\n", ["profiles.cpu", "unknown key 'step'", "allowed keys:", "steps"]),
    ("    steps: 2\n", "    steps: two\n", ["profiles.cpu.steps", "expected int", "'two'"]),
    ("    devices: [2]\n", "    devices: 2\n", ["profiles.cpu.devices", "expected list of int"]),
    ("description: tiny end-to-end check\n", "description: x\ncolour: red\n", ["unknown key 'colour'", "profiles"]),
    ("{timeout: 120.0, trace: false}", "{timeout: 120.0, trace: false, speed: 3}",
     ["profiles.cpu.options", "unknown option 'speed'", "inflight"]),
    ("{timeout: 120.0, trace: false}", "{timeout: soon}", ["profiles.cpu.options.timeout", "expected float"]),
    ("{timeout: 120.0, trace: false}", "{batch_size: 4}",
     ["profiles.cpu.options", "'batch_size' is set by the experiment grid"]),
    ("{timeout: 120.0, trace: false}", "{ideal_seconds_per_sample: 0.1}",  # from the cost table, per group
     ["profiles.cpu.options", "'ideal_seconds_per_sample' is set by the experiment grid"]),
    ("workloads: [tiny]", "workloads: [nope]", ["profiles.cpu.workloads[0].name", "unknown workload 'nope'"]),
    ("workloads: [tiny]", "workloads: [tiny-nas]", ["tiny-nas is a NAS workload", f"warmup >= {MIN_NAS_WARMUP}"]),
    ("    costs: estimate\n", "    costs: guess\n", ["profiles.cpu.costs", "profile, estimate, none"]),
    ("    batch_sizes: [8]\n", "    batch_sizes: [1]\n", ["batch size 1 is smaller than 2 devices"]),
    ("    repeats: 1\n", "    repeats: 1\n    teacher_epochs: 3\n",
     ["profiles.cpu.workloads[0]", "teacher_epochs trains the teacher of compress-mnist, nas-mnist only, not of tiny"]),
    ("    repeats: 1\n", "    repeats: 1\n    teacher_epochs: -1\n", ["profiles.cpu.teacher_epochs: must be >= 0"]),
])
def test_bad_configs_name_file_key_and_allowed(tmp_path, old, new, expect):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ExperimentError) as e:
        load_experiment(path)
    msg = str(e.value)
    assert path in msg
    for part in expect:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_missing_profile_and_bad_yaml(tmp_path):
    exp = load_experiment(_write(tmp_path, GOOD))
    with pytest.raises(ExperimentError, match="has no profile 'paper'; it has: cpu"):
        exp.profile("paper")
    with pytest.raises(ExperimentError, match="not valid YAML"):
        load_experiment(_write(tmp_path, "description: [unclosed\n", "broken"))
    with pytest.raises(ExperimentError, match="missing required key 'description'"):
        load_experiment(_write(tmp_path, "profiles: {}\n", "nodesc"))


def test_cli_unknown_experiment_is_a_clear_error(tmp_path, capsys):
    _write(tmp_path, GOOD)
    rc = main(["experiment", "nosuch", "--experiments", str(tmp_path / "exps"), "--results", str(tmp_path / "r")])
    assert rc == 2
    assert "unknown experiment 'nosuch'" in capsys.readouterr().err


def test_noisy_cells_are_flagged_and_rerun_with_dp():
    """derived.speedup_cells / noisy_strategies on a made-up table: a strategy whose repeats
    differ by > 25 % is noisy, and a re-run round measures it again beside dp."""
    from pipebd.derived import format_speedups, noisy_strategies, speedup_cells

    def row(s, t, ts):
        return {"run_id": f"{s}{ts}", "status": "ok", "workload": "tiny", "batch_size": 8, "devices": 2,
                "resolution": 16, "width_mult": 1.0, "strategy": s, "epoch_time_s": t, "plan": "",
                "timestamp": f"2026-01-01T00:00:0{ts}"}
    runs = pd.DataFrame([row("dp", 10.0, 0), row("tr", 5.0, 1), row("dp", 10.5, 2), row("tr", 8.0, 3),
                         row("ahd", 4.0, 4), row("dp", 9.5, 5), row("ahd", 4.2, 6)])
    cells = speedup_cells(runs).set_index("strategy")
    assert cells.loc["tr", "noisy"] and not cells.loc["ahd", "noisy"] and not cells.loc["dp", "noisy"]
    assert cells.loc["tr", "spread"] == pytest.approx(3.0 / 6.5)
    assert cells.loc["tr", "speedup"] == pytest.approx(10.0 / 6.5)
    assert cells.loc["tr", "speedup_lo"] == pytest.approx(10.5 / 8.0) and cells.loc["tr", "speedup_hi"] == 2.0
    triples = cells.reset_index()[["strategy", "runs", "spread"]].itertuples(index=False, name=None)
    assert noisy_strategies(triples) == ["dp", "tr"]
    assert noisy_strategies([("dp", 3, 0.4), ("tr", 3, 0.0), ("ahd", 1, 0.0)]) == ["dp", "tr", "ahd"]
    assert noisy_strategies([("dp", 3, 0.1), ("tr", 1, 0.9)]) == []  # one run has no spread
    table = format_speedups(cells.reset_index(), paper={"tiny": {"ahd": 7.4}})
    assert "!" in next(ln for ln in table.splitlines() if " tr " in ln)
    assert "7.40x" in next(ln for ln in table.splitlines() if " ahd " in ln)


def test_changed_settings_move_a_partial_run_aside(tmp_path):
    from pipebd.experiments.journal import _prepare_dir, _settings

    exp = load_experiment(_write(tmp_path, GOOD))
    d = tmp_path / "r" / "cpu" / "tinyexp"
    _prepare_dir(str(d), _settings(exp, "cpu"), force=False, say=lambda m: None)
    (d / "runs.csv").write_text("run_id\nx\n")
    exp2 = load_experiment(_write(tmp_path, GOOD.replace("steps: 2", "steps: 3")))
    _prepare_dir(str(d), _settings(exp2, "cpu"), force=False, say=lambda m: None)
    assert not (d / "runs.csv").exists()
    assert len(glob.glob(str(d) + ".stale-*")) == 1


def test_noisy_cells_get_rerun_rounds_with_dp_until_max_reruns(tmp_path, monkeypatch):
    """The runner's re-run loop (no processes: run_unit is replaced by one that appends a row):
    tr's repeats differ by > 25 %, so rounds of dp + tr are run, at most --max-reruns of them;
    every run, re-runs too, gets the group's ideal in its RunConfig."""
    from pipebd import metrics
    from pipebd.experiments import run as ex
    from pipebd.experiments.grid import input_resolution

    exp = load_experiment(_write(tmp_path, GOOD.replace("strategies: [dp, nosuch]", "strategies: [dp, tr]")
                                 .replace("repeats: 1", "repeats: 3")))
    prof = exp.profile("cpu")
    (w,) = prof.workloads
    gcfg = _group_config(prof, w, 8, 2)
    d = str(tmp_path / "r")
    os.makedirs(d)
    times = {"dp": [10.0, 10.2, 9.9, 10.1, 10.0], "tr": [5.0, 8.0, 5.1, 5.0, 5.2]}
    clock = iter(range(100))
    ideals = []

    def fake_run_unit(cfg, *, run_id=None):
        ideals.append(cfg.ideal_seconds_per_sample)
        t = times[cfg.strategy].pop(0)
        row = {c: None for c in metrics.RUN_COLUMNS}
        row.update(run_id=run_id, status="ok", workload="tiny", strategy=cfg.strategy, devices=2, batch_size=8,
                   resolution=float(input_resolution(gcfg)), width_mult=1.0, epoch_time_s=t, plan="",
                   timestamp=f"2026-01-01T00:00:{next(clock):02d}")
        metrics.append_rows(os.path.join(d, "runs.csv"), [row], metrics.RUN_COLUMNS)
        return ex.UnitResult(run_id, "ok", row, 0.1)

    monkeypatch.setattr(ex, "run_unit", fake_run_unit)
    eta, said = ex.Eta(6), []
    ex._run_units(plan_units(prof), d, prof, exp, None, eta, said.append, ideal=1e-3)
    noisy = ex._rerun_noisy(d, prof, exp, w, 8, 2, gcfg, None, 2, eta, said.append, ideal=1e-3)
    units = pd.read_csv(os.path.join(d, "units.csv"))
    done = units[units.status == "ok"]
    assert sorted(done[done.repeat >= 3][["repeat", "strategy"]].itertuples(index=False, name=None)) == [
        (3, "dp"), (3, "tr"), (4, "dp"), (4, "tr")]  # two rounds of dp + tr, then the bound
    assert len(noisy) == 1 and "tr" in noisy[0] and "spread" in noisy[0]
    assert any("re-run round 1/2" in m for m in said) and any("(re-run)" in m for m in said)
    assert eta.total == 10 and eta.done == 10
    assert ideals == [1e-3] * 10


def test_bench_speedup_range_pairs_runs_of_the_same_round():
    from pipebd.bench import BenchRow, speedup_range

    dp = BenchRow("dp", epoch_times=[10.0, 12.0, 11.0], rounds=[0, 1, 2])
    tr = BenchRow("tr", epoch_times=[5.0, 8.0, 5.0], rounds=[0, 1, 3])  # round 3: a re-run without dp
    assert speedup_range(dp, tr) == (1.5, 2.0)
    assert speedup_range(dp, BenchRow("x", epoch_times=[1.0], rounds=[7])) is None


def test_bench_compares_each_strategy_with_its_fp32_contiguous_self():
    from pipebd.bench import BenchResult, BenchRow, format_table, label_cfg
    from pipebd.config import RunConfig

    cfg = RunConfig(workload="tiny", devices=2, teacher_precision="bf16")
    assert label_cfg(cfg, "ahd").teacher_precision == "bf16"
    pinned = label_cfg(cfg, "ahd:fp32")
    assert (pinned.strategy, pinned.teacher_precision, pinned.student_precision, pinned.memory_format) == \
        ("ahd", "fp32", "fp32", "contiguous")
    rows = {name: BenchRow(name, epoch_times=times, rounds=[0, 1], samples=1000)
            for name, times in (("dp", [8.0, 9.0]), ("dp:fp32", [16.0, 16.0]), ("ahd", [4.0, 5.0]),
                                ("ahd:fp32", [10.0, 9.0]))}
    text = format_table(BenchResult(cfg, rows, None, "n/a", 1.0, 2, modes_table=["block  teacher", "    0  bf16"]))
    section = text[text.index("compute modes: samples/s"):]
    ahd = next(line for line in section.splitlines() if line.startswith("ahd"))
    # samples/s 1000/4.5, fp32 1000/9.5, ratio 9.5/4.5, range per round 10/4 .. 9/5, against fp32 dp 16/4.5
    assert ahd.split() == ["ahd", "222.22", "105.26", "2.11x", "1.80-2.50", "3.56x"]
    # each row's speedup is over dp in the same modes
    assert next(line for line in text.splitlines() if line.startswith("ahd:fp32")).split()[2] == "1.68x"
    assert text.rstrip().endswith("    0  bf16")


def test_bench_reports_tokens_per_second_and_mfu_for_a_decoder():
    from pipebd.bench import BenchResult, BenchRow, _number, format_table
    from pipebd.config import RunConfig

    cfg = RunConfig(workload="llm-tiny", devices=2)
    rows = {"even": BenchRow("even", epoch_times=[10.0, 12.0, 11.0], rounds=[0, 1, 2], samples=550,
                             tokens_s=[3200.0, 3300.0, 3100.0], tflops=[0.5, 0.4, 0.6]),
            "ahd": BenchRow("ahd", epoch_times=[5.0], rounds=[0], samples=550, tokens_s=[6400.0], tflops=[1.0],
                            mfu=[0.25])}
    text = format_table(BenchResult(cfg, rows, None, "n/a", 1.0, 3))
    section = text[text.index("throughput (medians"):].splitlines()
    # samples/s from the median epoch (550 / 11), tokens/s and TFLOP/s medians over runs
    assert next(x for x in section if x.startswith("even")).split() == ["even", "50.000", "3200.0", "0.500", "n/a"]
    assert next(x for x in section if x.startswith("ahd")).split() == ["ahd", "110.000", "6400.0", "1.000", "25.0%"]
    image = {"dp": BenchRow("dp", epoch_times=[1.0], rounds=[0], samples=10)}  # no tokens: no section
    assert "throughput (medians" not in format_table(BenchResult(RunConfig(workload="tiny"), image, None, "", 1.0, 1))
    assert _number("") is None and _number("nan") is None and _number("2.5") == 2.5 and _number(None) is None


def test_bench_speedups_can_be_over_another_baseline_than_dp():
    from pipebd.bench import BenchResult, BenchRow, bench, format_table
    from pipebd.config import ConfigError, RunConfig
    from pipebd.derived import noisy_strategies

    rows = {"even": BenchRow("even", epoch_times=[20.0, 22.0], rounds=[0, 1]),
            "ahd": BenchRow("ahd", epoch_times=[16.0, 16.0], rounds=[0, 1])}
    text = format_table(BenchResult(RunConfig(workload="tiny", devices=2), rows, None, "", 1.0, 2, baseline="even"))
    assert "speedup = median even epoch / median epoch" in text
    # median 21 / 16; per round 20/16 .. 22/16
    assert next(x for x in text.splitlines() if x.startswith("ahd")).split()[1:4] == ["16.0", "1.31x", "1.25-1.38"]
    assert noisy_strategies([("even", 3, 0.1), ("ahd", 3, 0.4)], baseline="even") == ["even", "ahd"]
    assert noisy_strategies([("even", 3, 0.4), ("ahd", 3, 0.1)], baseline="even") == ["even", "ahd"]
    assert noisy_strategies([("even", 3, 0.1), ("ahd", 3, 0.1)], baseline="even") == []
    with pytest.raises(ConfigError, match="--baseline even is not among"):
        bench(RunConfig(workload="tiny", devices=2), ("dp", "ahd"), baseline="even")


def test_bench_ranking_judges_only_the_pairs_the_prediction_tells_apart():
    from pipebd.bench import BenchResult, BenchRow, format_table, ranking_disagreements
    from pipebd.config import RunConfig

    # even, tr-dpu, ahd run one schedule here: predicted alike, measured in noise order
    predicted = {"even": 100.0, "tr-dpu": 100.0, "ahd": 100.5, "dp": 300.0}
    measured = {"even": 107.0, "tr-dpu": 106.0, "ahd": 97.0, "dp": 280.0}
    wrong, tied = ranking_disagreements(predicted, measured)
    assert wrong == [] and set(tied) == {("even", "tr-dpu"), ("even", "ahd"), ("tr-dpu", "ahd")}
    assert ranking_disagreements({"a": 100.0, "b": 150.0}, {"a": 20.0, "b": 10.0}) == ([("a", "b")], [])
    rows = {k: BenchRow(k, epoch_times=[v], rounds=[0]) for k, v in measured.items()}
    text = format_table(BenchResult(RunConfig(workload="tiny", devices=2), rows, None, "", 1.0, 1, predicted))
    line = next(x for x in text.splitlines() if x.startswith("ranking"))
    assert line.startswith("ranking matches where the predictions differ; predicted tied within 2%")
    predicted["dp"] = 50.0  # dp predicted fastest, measured slowest: out of order
    text = format_table(BenchResult(RunConfig(workload="tiny", devices=2), rows, None, "", 1.0, 1, predicted))
    assert "out of order: dp < even, dp < tr-dpu, dp < ahd" in next(x for x in text.splitlines()
                                                                   if x.startswith("ranking differs"))
