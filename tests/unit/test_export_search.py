"""Getting the student out (issue 15, deliverables 5 and 7): the exact budgeted choice
(:func:`pipebd.search.pareto_choose`), Kendall's tau, the search of a run's held-out path losses,
and export -> load_student round trips for a compressed and a searched NAS student. No processes."""

from __future__ import annotations

import copy

import itertools
import json
import random

import pytest
import torch
from torch import nn

import pipebd
from pipebd import data_mnist, metrics, quality
from pipebd.errors import ConfigError
from pipebd.export import export_student, read_students, save_students, stitch, students_path, _parse_paths
from pipebd.search import kendall_tau, pareto_choose, ranking_tau, search_run
from pipebd.zoo import WorkloadOptions, build_workload


def _brute(options, budget):
    best = None
    for combo in itertools.product(*options):
        cost, loss = sum(c for c, _, _ in combo), sum(l for _, l, _ in combo)
        if cost <= budget and (best is None or loss < best[1]):
            best = ([k for _, _, k in combo], loss, cost)
    return best


def test_pareto_choice_is_the_exact_optimum_under_the_budget():
    rng = random.Random(3)
    for trial in range(40):
        options = [[(rng.randint(0, 20), rng.random(), (b, i)) for i in range(rng.randint(1, 5))] for b in range(4)]
        budget = rng.randint(10, 60)
        want = _brute(options, budget)
        if want is None:
            with pytest.raises(ConfigError, match="raise --budget"):
                pareto_choose(options, budget)
            continue
        keys, loss, cost = pareto_choose(options, budget)
        assert loss == pytest.approx(want[1]) and cost <= budget
        assert sum(dict(((b, i), c) for b, opts in enumerate(options) for c, _, (bb, i) in opts).get(k, 0)
                   for k in keys) == cost


def test_kendall_tau_b():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # ties: x has one tied pair, y none -> (concordant - discordant) / sqrt(5 * 6)
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / (5 * 6) ** 0.5)
    assert kendall_tau([1, 1], [1, 2]) != kendall_tau([1, 1], [1, 2])  # NaN: constant list


def _save(tmp_path, workload, wl, run_id="RUN1"):
    path = students_path(str(tmp_path), run_id)
    weights = {i: b.state_dict() for i, b in enumerate(wl.student)}
    save_students(path, run_id=run_id, workload=workload, options=WorkloadOptions(seed=1), weights=weights,
                  metrics={"student_top1": 0.9})
    return path


def test_a_compressed_student_round_trips_through_export(tmp_path):
    torch.manual_seed(0)
    wl = build_workload("compress-mnist", WorkloadOptions(seed=1))
    with torch.no_grad():
        for p in (p for b in wl.student for p in b.parameters()):
            p.add_(0.01 * torch.randn_like(p))  # trained weights differ from the build's
    _save(tmp_path, "compress-mnist", wl)
    spec = export_student("RUN1", str(tmp_path / "out"), results=str(tmp_path))
    assert spec["paths"] == [None] * 5 and spec["metrics"]["student_top1"] == 0.9
    assert json.loads((tmp_path / "out" / "student.json").read_text()) == spec
    net = pipebd.load_student(str(tmp_path / "out"))
    assert isinstance(net, nn.Sequential) and len(net) == 5
    assert spec["parameters"] == sum(p.numel() for p in net.parameters())
    x = data_mnist.mnist5k_split("test")[0][:16]
    for m in (net, *wl.student):
        m.eval()
    with torch.no_grad():
        want = x
        for b in wl.student:
            want = b(want)
        assert torch.equal(net(x), want)


def test_a_supernet_exports_the_searched_architecture_with_only_its_ops(tmp_path):
    wl = build_workload("nas-mnist", WorkloadOptions(seed=1))
    _save(tmp_path, "nas-mnist", wl, "NAS1")
    xt = data_mnist.mnist5k_split("test")[0][:20]
    rows = quality.block_losses(wl.teacher, wl.student, xt, batch=10)
    run_row = {"workload": "nas-mnist", "strategy": "tr", "devices": 2, "modes": ""}
    metrics.append_rows(str(tmp_path / "block_losses.csv"), quality.block_loss_rows("NAS1", run_row, rows),
                        quality.BLOCK_LOSS_COLUMNS)
    found = search_run(str(tmp_path), "NAS1", budget=0.5)
    per_block = [[r for r in rows if r["block"] == b] for b in range(5)]
    assert found.cost <= found.budget and found.loss == pytest.approx(
        pareto_choose([[(r["params"], r["heldout_loss"], r["path"]) for r in b] for b in per_block], found.budget)[1])
    assert [quality.path_name(b, p) for b, p in zip(wl.student, found.paths)] == found.choice
    spec = export_student("NAS1", str(tmp_path / "out"), results=str(tmp_path), budget=0.5)
    assert spec["chosen_by"] == "search" and spec["paths"] == [list(p) for p in found.paths]
    assert spec["parameters"] == sum(quality.path_params(b, p) for b, p in zip(wl.student, found.paths))
    net = pipebd.load_student(str(tmp_path / "out"))
    for m in (net, *wl.student):
        m.eval()
    with torch.no_grad():
        want = xt
        for b, p in zip(wl.student, found.paths):
            b.set_path(p)
            want = b(want)
        assert torch.equal(net(xt), want)
    assert ranking_tau(pd_rows(tmp_path), "NAS1", "NAS1") == 1.0
    given = export_student(str(students_path(str(tmp_path), "NAS1")), str(tmp_path / "given"),
                           paths=_parse_paths("0,0|1,6|2,3|0,6|5"))
    assert given["chosen_by"] == "--paths" and given["paths"][1] == [1, 6]
    assert spec["batchnorm"].startswith("as trained")  # this file records no --data to recalibrate on


def test_an_export_recalibrates_batchnorm_on_the_runs_training_split(tmp_path):
    """Saved with --data mnist5k: the searched subnet is exported with its BatchNorm statistics
    re-estimated on the training digits (as the stitched chain, like the run's student_top1)."""
    wl = build_workload("nas-mnist", WorkloadOptions(seed=1))
    weights = {i: {k: v.detach().clone() for k, v in b.state_dict().items()} for i, b in enumerate(wl.student)}
    save_students(students_path(str(tmp_path), "R"), run_id="R", workload="nas-mnist",
                  options=WorkloadOptions(seed=1), weights=weights, data="mnist5k")
    paths = _parse_paths("0,0|1,6|2,3|0,6|5")
    spec = export_student("R", str(tmp_path / "out"), results=str(tmp_path), paths=paths)
    assert spec["batchnorm"] == "recalibrated on the 4,000 training images of mnist5k"
    net = pipebd.load_student(str(tmp_path / "out"))
    want = stitch(copy.deepcopy(list(wl.student)), paths)  # stitch shares the blocks' modules
    quality.recalibrate_bn([want], data_mnist.mnist5k_split("train")[0])
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), want.state_dict().values()))
    kept = export_student("R", str(tmp_path / "kept"), results=str(tmp_path), paths=paths, recalibrate=False)
    assert kept["batchnorm"].startswith("as trained")
    same = pipebd.load_student(str(tmp_path / "kept")).state_dict()
    assert all(torch.equal(same[k], v) for k, v in stitch(list(wl.student), paths).state_dict().items())
    assert any(not torch.equal(same[k], v) for k, v in net.state_dict().items())  # recalibration changed something


def pd_rows(tmp_path):
    import pandas as pd

    return pd.read_csv(tmp_path / "block_losses.csv", keep_default_na=False, na_values=[""], dtype={"path": str})


def test_bad_requests_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="--save-students"):
        read_students("nope", str(tmp_path))
    with pytest.raises(ConfigError, match="comma-separated"):
        _parse_paths("a|b")
    wl = build_workload("compress-mnist", WorkloadOptions(seed=1))
    _save(tmp_path, "compress-mnist", wl)
    with pytest.raises(ConfigError, match="no supernet"):
        export_student("RUN1", str(tmp_path / "o"), results=str(tmp_path), budget=0.5)
    with pytest.raises(FileNotFoundError, match="export a student there first"):
        pipebd.load_student(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="block_losses.csv does not exist"):
        search_run(str(tmp_path / "none"))
