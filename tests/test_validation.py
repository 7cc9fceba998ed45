"""Every invalid configuration is refused before any process is spawned (DESIGN.md §5).

Each test calls the CLI's ``main()`` in-process and checks exit code 2 and a message that
names the bad value, the allowed values and a fix. Spawning is forbidden by a fixture: a
check that let a bad configuration through would fail the test instead of starting ranks.
Strategy-specific layouts (``--stages`` for tr/tr-dpu, ``--plan`` for ahd) are skipped while
those strategies are not registered.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pipebd import config as config_mod
from pipebd.checkpoint import fingerprint
from pipebd.cli import main
from pipebd.config import ConfigError, RunConfig, validate
from pipebd.executors import strategy_names
from pipebd.zoo import build_workload

STRATEGIES = set(strategy_names())
needs = {s: pytest.mark.skipif(s not in STRATEGIES, reason=f"strategy {s!r} is not registered yet")
         for s in ("tr", "tr-dpu", "ahd", "ls", "dp")}


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


@needs["tr"]
def test_tr_more_stages_than_blocks(cli):
    rc, err = cli("-w", "tiny", "-s", "tr", "-n", "5")
    assert_refused(rc, err, "4 blocks", "--devices is 5", "--devices <= 4")


@needs["ls"]
def test_ls_more_devices_than_blocks(cli):
    rc, err = cli("-w", "tiny", "-s", "ls", "-n", "5")
    assert_refused(rc, err, "--devices 5", "4 blocks", "--devices 4 or fewer")


@needs["tr-dpu"]
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


@needs["tr-dpu"]
def test_stages_more_stages_than_blocks(cli):
    rc, err = cli("-w", "tiny", "-s", "tr-dpu", "-n", "5", "--stages", "0,1,2,3,4")
    assert_refused(rc, err, "4 blocks", "--devices is 5", "--devices <= 4")


@needs["ls"]
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


@needs["ahd"]
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


@needs["dp"]
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
    assert config_mod.workload_num_blocks(RunConfig(workload="tiny")) == 4
