"""Every invalid configuration is refused before any process is spawned (DESIGN.md §5).

Each test calls the CLI's ``main()`` in-process and checks exit code 2 and a message that
names the bad value, the allowed values and a fix. Spawning is forbidden by a fixture: a
check that let a bad configuration through would fail the test instead of starting ranks.
Every built-in strategy must be registered: a missing one fails these tests, it is never skipped.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pipebd import preflight
from pipebd.checkpoint import fingerprint
from pipebd.cli import main
from pipebd.config import ConfigError, RunConfig
from pipebd.strategies import strategy_names
from pipebd.options import workload_num_blocks
from pipebd.preflight import validate
from pipebd.zoo import build_workload

BUILT_IN = {"sequential", "dp", "ls", "tr", "tr-dpu", "ahd"}


@pytest.fixture(autouse=True)
def no_spawn(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a process was about to be spawned for an invalid configuration")

    import pipebd.runner

    monkeypatch.setattr(pipebd.runner, "_spawn", refuse)
    monkeypatch.setattr(torch.multiprocessing, "start_processes", refuse)


@pytest.fixture
def cli(capsys, tmp_path):
    """``cli(*args)`` -> (exit code, stderr) of ``python -m pipebd run --out TMP ARGS``."""

    def run(*args: str, out: str | None = None) -> tuple[int, str]:
        rc = main(["run", "--quiet", "--out", out or str(tmp_path / "res"), *args])
        return rc, capsys.readouterr().err

    return run


def assert_refused(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, f"expected exit code 2, got {rc}; stderr: {err}"
    assert err.startswith("pipebd: error: "), err
    for n in needles:
        assert n in err, f"{n!r} not in message: {err}"


# ----------------------------------------------------------------------------- names


def test_every_built_in_strategy_is_registered():
    missing = BUILT_IN - set(strategy_names())
    assert not missing, f"built-in strategies not registered: {sorted(missing)}"


def test_unknown_workload(cli):
    rc, err = cli("--workload", "resnet-nope")
    assert_refused(rc, err, "unknown workload 'resnet-nope'", "tiny", "nas-cifar10", "python -m pipebd zoo")


def test_unknown_strategy(cli):
    rc, err = cli("--strategy", "pipedream")
    assert_refused(rc, err, "unknown strategy 'pipedream'", "sequential", "dp", "choose one of")


def test_unknown_data_source(cli):
    rc, err = cli("--data", "mnist")
    assert_refused(rc, err, "'mnist'", "synthetic", "cifar10", "imagenet")


def test_bad_fault_spec(cli):
    rc, err = cli("--inject-fault", "1:x:explode")
    assert_refused(rc, err, "'1:x:explode'", "raise, kill, hang", "e.g. --inject-fault")
    rc, err = cli("--inject-fault", "3:1:kill")
    assert_refused(rc, err, "rank 3", "0..0", "--devices")


# ----------------------------------------------------------------------------- devices and layouts


def test_devices_below_one(cli):
    rc, err = cli("--devices", "0")
    assert_refused(rc, err, "--devices must be >= 1", "got 0", "use --devices 1")


def test_tr_more_stages_than_blocks(cli):
    rc, err = cli("-w", "tiny", "-s", "tr", "-n", "5")
    assert_refused(rc, err, "4 blocks", "--devices is 5", "--devices <= 4")


def test_ls_more_devices_than_blocks(cli):
    rc, err = cli("-w", "tiny", "-s", "ls", "-n", "5")
    assert_refused(rc, err, "--devices 5", "4 blocks", "--devices 4 or fewer")


@pytest.mark.parametrize("stages, devices, what, fix", [
    ("0-1,3", 2, "misses block(s) 2", "e.g. 0-1,2-3"),
    ("0-1,1-3", 2, "repeats or reorders", "e.g. 0-1,2-3"),
    ("2-3,0-1", 2, "misses block(s) 0-1", "e.g. 0-1,2-3"),
    ("0-1,2-3", 3, "--devices is 3", "set --devices 2"),
    ("0-1,2-4", 2, "only 4 blocks", "e.g. 0-1,2-3"),
])
def test_stages_must_cover_blocks_in_order_on_the_devices(cli, stages, devices, what, fix):
    rc, err = cli("-w", "tiny", "-s", "tr-dpu", "-n", str(devices), "--stages", stages)
    assert_refused(rc, err, repr(stages), what, fix)


def test_stages_more_stages_than_blocks(cli):
    rc, err = cli("-w", "tiny", "-s", "tr-dpu", "-n", "5", "--stages", "0,1,2,3,4")
    assert_refused(rc, err, "4 blocks", "--devices is 5", "--devices <= 4")


@pytest.mark.parametrize("ls_map, devices, what", [
    ("0:1,2", 2, "leaves block(s) 3 to no rank"),
    ("0:1,1:2:3", 2, "assigns block 1 twice"),
    ("0:1:2:3:4,", 2, "no blocks"),
    ("0:1:5,2:3", 2, "names block 5"),
    ("0:1,2:3", 3, "--devices is 3"),
])
def test_ls_map_must_cover_each_block_once_on_the_devices(cli, ls_map, devices, what):
    rc, err = cli("-w", "tiny", "-s", "ls", "-n", str(devices), "--ls-map", ls_map)
    assert_refused(rc, err, repr(ls_map), what)


@pytest.mark.parametrize("plan, devices, batch, what", [
    ("0-1x1,3x1", 2, 8, "misses"),
    ("0-1x1,1-3x1", 2, 8, "repeats or reorders"),
    ("2-3x1,0-1x1", 2, 8, "misses"),
    ("0-1x2,2-3x1", 2, 8, "sum to the devices"),
    ("0x1,1x1,2x1,3x1,4x1", 5, 8, "4 blocks"),
    ("0-1x2,2-3x1", 3, 1, "--batch-size"),
])
def test_plan_must_cover_blocks_in_order_on_the_devices(cli, plan, devices, batch, what):
    rc, err = cli("-w", "tiny", "-s", "ahd", "-n", str(devices), "-b", str(batch), "--plan", plan)
    assert_refused(rc, err, what)
    assert plan.split(",")[0] in err


def test_batch_smaller_than_replicas(cli):
    rc, err = cli("-w", "tiny", "-s", "dp", "-n", "2", "-b", "1")
    assert_refused(rc, err, "--batch-size 1", "--batch-size 2 or more")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(cli):
    rc, err = cli("--device", "cuda")
    assert_refused(rc, err, "--device cuda", "CUDA is not available", "use --device cpu")


# ----------------------------------------------------------------------------- files


def test_data_root_missing(cli, tmp_path):
    rc, err = cli("--data", "cifar10")
    assert_refused(rc, err, "--data cifar10 needs --data-root", "--data synthetic")
    rc, err = cli("--data", "cifar10", "--data-root", str(tmp_path / "nowhere"))
    assert_refused(rc, err, "cifar10 not found", str(tmp_path / "nowhere"), "--data synthetic")


def _tiny_teacher_state() -> dict:
    wl = build_workload("tiny", probe=False)
    return nn.Sequential(*wl.teacher).state_dict()


def test_teacher_weights_missing(cli, tmp_path):
    rc, err = cli("--teacher-weights", str(tmp_path / "nope.pt"))
    assert_refused(rc, err, "nope.pt", "does not exist", "torch.save(teacher.state_dict(), PATH)")


def test_the_named_smollm2_teacher_is_not_a_file_and_needs_its_extra_and_llm_smol(cli, monkeypatch):
    from pipebd import smollm2

    rc, err = cli("-w", "tiny", "--teacher-weights", "smollm2")
    if smollm2.available():
        assert_refused(rc, err, "--teacher-weights smollm2 is the SmolLM2-135M teacher", "-w llm-smol, not tiny")
    monkeypatch.setattr(smollm2, "available", lambda: False)
    rc, err = cli("-w", "llm-smol", "--teacher-weights", "smollm2")
    assert_refused(rc, err, "--teacher-weights smollm2:", "./bootstrap.sh --with-smollm2")
    assert "does not exist" not in err


def test_text_data_is_checked_against_the_workloads_kind_before_spawning(tmp_path):
    validate(RunConfig(workload="llm-tiny", data="text", data_root="stdlib", out=str(tmp_path)))  # a decoder: fine
    with pytest.raises(ConfigError, match="--data text is for decoder"):
        validate(RunConfig(workload="tiny", data="text", data_root="stdlib", out=str(tmp_path)))


def test_teacher_weights_wrong_keys(cli, tmp_path):
    state = _tiny_teacher_state()
    state["head.extra"] = torch.zeros(3)
    del state["0.0.weight"]
    torch.save(state, tmp_path / "t.pt")
    rc, err = cli("-w", "tiny", "--teacher-weights", str(tmp_path / "t.pt"))
    assert_refused(rc, err, "t.pt", "do not fit tiny's teacher", "1 missing keys", "0.0.weight", "head.extra")


def test_teacher_weights_wrong_shapes(cli, tmp_path):
    state = _tiny_teacher_state()
    state["0.0.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "t.pt")
    rc, err = cli("-w", "tiny", "--teacher-weights", str(tmp_path / "t.pt"))
    assert_refused(rc, err, "t.pt", "do not fit tiny's teacher", "size mismatch")


def test_teacher_weights_not_a_state_dict(cli, tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    rc, err = cli("-w", "tiny", "--teacher-weights", str(tmp_path / "list.pt"))
    assert_refused(rc, err, "list.pt", "not a state dict")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    rc, err = cli("-w", "tiny", "--teacher-weights", str(tmp_path / "junk.pt"))
    assert_refused(rc, err, "junk.pt", "weights_only=True", "torch.save(model.state_dict(), PATH)")


def test_teacher_weights_that_fit_pass(tmp_path):
    torch.save(_tiny_teacher_state(), tmp_path / "ok.pt")
    validate(RunConfig(workload="tiny", teacher_weights=str(tmp_path / "ok.pt"), out=str(tmp_path / "res")))


def test_output_directory_not_writable(cli, tmp_path):
    (tmp_path / "file.txt").write_text("a file, not a directory")
    rc, err = cli(out=str(tmp_path / "file.txt" / "sub"))
    assert_refused(rc, err, "file.txt", "is not a directory", "pass --out")


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_options_need_a_directory(cli):
    rc, err = cli("--resume")
    assert_refused(rc, err, "--resume needs --checkpoint-dir")
    rc, err = cli("--checkpoint-every", "2")
    assert_refused(rc, err, "--checkpoint-every 2 needs --checkpoint-dir")
    rc, err = cli("--checkpoint-every", "-1", "--checkpoint-dir", "x")
    assert_refused(rc, err, "--checkpoint-every must be >= 0", "got -1")


def test_checkpoint_directory_not_writable(cli, tmp_path):
    (tmp_path / "file.txt").write_text("")
    rc, err = cli("--checkpoint-every", "1", "--checkpoint-dir", str(tmp_path / "file.txt" / "ck"))
    assert_refused(rc, err, "checkpoint directory", "--checkpoint-dir", "not a directory")


def _fake_checkpoints(root, cfg: RunConfig) -> None:
    (root / "rank0").mkdir(parents=True)
    (root / "rank0" / "ckpt-00000002.pt").write_bytes(b"")
    (root / "fingerprint.json").write_text(json.dumps(fingerprint(cfg)))


def test_resume_refuses_another_runs_checkpoints(cli, tmp_path):
    ck = tmp_path / "ck"
    _fake_checkpoints(ck, RunConfig(workload="tiny", strategy="sequential", batch_size=16))
    rc, err = cli("-w", "tiny", "-b", "8", "--resume", "--checkpoint-dir", str(ck))
    assert_refused(rc, err, "belong to another run", "batch_size: checkpoint 16, this run 8", "--checkpoint-dir")
    rc, err = cli("-w", "tiny-nas", "-b", "16", "--resume", "--checkpoint-dir", str(ck))
    assert_refused(rc, err, "workload: checkpoint 'tiny', this run 'tiny-nas'")


def test_fresh_run_refuses_a_directory_with_checkpoints(cli, tmp_path):
    ck = tmp_path / "ck"
    _fake_checkpoints(ck, RunConfig(workload="tiny"))
    rc, err = cli("-w", "tiny", "--checkpoint-every", "1", "--checkpoint-dir", str(ck))
    assert_refused(rc, err, "already holds checkpoints", "--resume", "empty --checkpoint-dir")


def test_validate_raises_config_error_directly(tmp_path):
    with pytest.raises(ConfigError, match="--devices must be >= 1"):
        validate(RunConfig(devices=-1, out=str(tmp_path)))
    assert workload_num_blocks(RunConfig(workload="tiny")) == 4


# ----------------------------------------------------------------------------- values that used to pass


def test_data_size_smaller_than_a_batch(cli):
    rc, err = cli("--data-size", "4", "-b", "8")
    assert_refused(rc, err, "--data-size 4", "--batch-size 8", "--data-size 8 or more", "--batch-size 4 or less")


def test_resolution_too_small_for_the_workload(cli):
    # VGG-16 pools 32 px down to 1×1 before its last pooling stage; 16 px leaves nothing to pool
    rc, err = cli("-w", "compress-vgg16-cifar10", "--resolution", "16")
    assert_refused(rc, err, "--resolution 16 is too small for workload compress-vgg16-cifar10",
                   "Output size is too small", "pass --resolution 32")
    rc, err = cli("-w", "tiny", "--resolution", "4")
    assert_refused(rc, err, "resolution must be >= 8", "got 4")


def test_resolution_probe_runs_on_the_meta_device(tmp_path, monkeypatch):
    import pipebd.zoo.registry as registry

    devices = []
    real = registry.probe_shapes

    def spy(wl):
        devices.append(next(wl.teacher[0].parameters()).device.type)
        return real(wl)

    monkeypatch.setattr(registry, "probe_shapes", spy)
    monkeypatch.setattr(registry, "_META_SHAPES", {})
    validate(RunConfig(workload="tiny", resolution=24, out=str(tmp_path)))
    assert devices == ["meta"]  # shapes only: no memory, no compute before spawn


def test_an_unknown_optimizer_is_refused_by_the_parser(cli, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's choices: exit 2 with the usage line
        cli("--optimizer", "lbfgs")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'lbfgs'" in err and "'sgd', 'adam'" in err


def test_an_unknown_optimizer_in_a_config_is_refused_before_spawning(tmp_path):
    with pytest.raises(ConfigError, match="--optimizer 'lbfgs' is not known; use one of: sgd, adam"):
        validate(RunConfig(workload="tiny", optimizer="lbfgs", out=str(tmp_path)))


@pytest.mark.parametrize("lr", ["0", "-0.1", "nan"])
def test_learning_rate_must_be_positive(cli, lr):
    rc, err = cli("--lr", lr)
    assert_refused(rc, err, "--lr must be a positive number", f"got {float(lr)}", "e.g. --lr 0.05")


def test_weight_decay_must_not_be_negative(cli):
    rc, err = cli("--weight-decay=-1e-4")
    assert_refused(rc, err, "--weight-decay must be >= 0", "got -0.0001")


@pytest.fixture
def profile_csv(tmp_path):
    from pipebd.costmodel import random_cost_table

    costs = random_cost_table(1, 6, 4, 64)
    costs.workload = "nas-cifar10"
    path = str(tmp_path / "p.csv")
    costs.to_csv(path)
    return path


@pytest.mark.parametrize("args, needles", [
    (["--inflight", "0"], ["--inflight must be >= 1", "got 0", "--inflight 2"]),
    (["--batch-size", "0"], ["--batch-size must be >= 1", "got 0"]),
    (["--steps-per-epoch", "-3"], ["--steps-per-epoch must be >= 1", "got -3"]),
    (["--memory-limit", "0"], ["--memory-limit must be > 0"]),
    (["--strategies", "dp,pipedream"], ["'pipedream'", "comma-separated subset of", "sequential", "tr-dpu"]),
])
def test_simulate_refuses_bad_flags(capsys, profile_csv, args, needles):
    rc = main(["simulate", "--profile", profile_csv, "--devices", "1", "2", *args])
    assert_refused(rc, capsys.readouterr().err, *needles)


# ----------------------------------------------------------------------------- verify


def _fake_weights(blocks=range(4), drop_param: int | None = None) -> dict:
    weights = {i: {"w": torch.full((2,), float(i)), "b": torch.zeros(1)} for i in blocks}
    if drop_param is not None:
        del weights[drop_param]["b"]
    return {"weights": weights, "paths": {i: [] for i in blocks}}


def test_compare_weights_names_a_missing_block_and_the_strategy():
    from pipebd.verify import compare_weights

    shards = ((8,),) * 4
    worst, bad = compare_weights(_fake_weights(), _fake_weights(), rtol=1e-5, shards=shards, strategy="tr")
    assert worst == 0.0 and bad == []
    worst, bad = compare_weights(_fake_weights([0, 1, 3]), _fake_weights(), rtol=1e-5, shards=shards, strategy="tr")
    assert bad == ["block 2: tr saved no weights for it (no rank reported block 2)"] and worst == float("inf")
    _, bad = compare_weights(_fake_weights(drop_param=1), _fake_weights(), rtol=1e-5, shards=shards, strategy="ls")
    assert len(bad) == 1 and "block 1: ls's saved weights lack ['b']" in bad[0]
    _, bad = compare_weights(_fake_weights(), _fake_weights([0, 1, 2]), rtol=1e-5, shards=shards, strategy="dp")
    assert bad == ["block 3: missing from the sequential reference's saved weights"]
    _, bad = compare_weights({"paths": {}}, _fake_weights(), rtol=1e-5, shards=shards, strategy="dp")
    assert bad == ["dp: the saved file holds no 'weights' mapping of block -> state dict"]


@pytest.fixture
def fake_launch(monkeypatch):
    """Replace verify's ``launch_series`` by one that writes saved weights without running
    anything; ``lacking[strategy]`` lists blocks that strategy's file leaves out. Records what ran."""
    import pipebd.verify

    ran, lacking = [], {}

    def launch_series(cfgs):
        for cfg in cfgs:
            ran.append(cfg.strategy)
            blocks = [i for i in range(4) if i not in lacking.get(cfg.strategy, ())]
            torch.save(_fake_weights(blocks), cfg.save_weights)

    monkeypatch.setattr(pipebd.verify, "launch_series", launch_series)
    return ran, lacking


def test_verify_reports_a_block_missing_from_a_saved_file(fake_launch, tmp_path):
    from pipebd.verify import verify_strategy

    ran, lacking = fake_launch
    lacking["tr"] = [2]
    res = verify_strategy(RunConfig(workload="tiny", strategy="tr", devices=2, batch_size=8), workdir=str(tmp_path))
    assert not res.ok and res.status == "FAIL"
    assert "block 2: tr saved no weights for it" in res.detail
    assert ran == ["sequential", "tr"]


def test_verify_runs_the_valid_strategies_and_says_why_the_others_cannot(fake_launch, capsys):
    ran, _ = fake_launch
    rc = main(["verify", "-w", "tiny", "-n", "3", "--stages", "0,1-3"])
    out = capsys.readouterr().out
    assert rc == 1
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for name in ("tr", "tr-dpu"):
        assert "INVALID" in rows[name] and "--stages '0,1-3' gives 2 stage(s) but --devices is 3" in rows[name]
    for name in ("dp", "ls", "ahd"):
        assert "PASS" in rows[name], rows[name]
    assert "tr" not in ran and "tr-dpu" not in ran and {"dp", "ls", "ahd"} <= set(ran)
    invalid = next(line for line in out.splitlines() if line.startswith("INVALID (not run): "))
    names = set(invalid.removeprefix("INVALID (not run): ").split(", "))
    assert {"tr", "tr-dpu"} <= names and not names & {"dp", "ls", "ahd"}, invalid


def test_verify_with_an_error_every_strategy_shares_exits_2(fake_launch, capsys):
    ran, _ = fake_launch
    rc = main(["verify", "-w", "tiny", "-n", "2", "--lr", "0"])
    err = capsys.readouterr().err
    assert_refused(rc, err, "--lr must be a positive number")
    assert err.count("--lr must") == 1 and ran == []
