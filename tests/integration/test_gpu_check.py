"""experiments/gpu_check.sh, the prepared one-GPU check, in its CPU dry run.

``GPU_CHECK_DRY_RUN=1`` runs the script's steps with ``--device cpu`` at tiny sizes (batch 8,
one step, ``--replica-groups 2``); the test narrows it to one strategy and one workload so it
stays well under a minute on a shared CPU, and checks that it exits 0, that every step is
recorded as ok, and that the CSVs, logs and device.txt appear — the paper's speedups in the
comparison table read from experiments/speedup.yaml, not typed in.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from pipebd.experiments import load_experiment
from pipebd.modes import native_bf16

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "gpu_check.sh")


def _run(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    full = {**os.environ, "GPU_CHECK_SKIP_BOOTSTRAP": "1", "GPU_CHECK_PYTHON": sys.executable, **env}
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_dry_run_writes_every_output(tmp_path):
    out = tmp_path / "gpu"
    proc = _run({"GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_OUT": str(out), "GPU_CHECK_BUDGET_S": "600",
                 "GPU_CHECK_STRATEGIES": "tr-dpu", "GPU_CHECK_WORKLOADS": "compress-vgg16-cifar10"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    steps = _rows(out / "steps.csv")
    assert [s["step"] for s in steps] == ["run-tr-dpu", "verify-n1", "verify-bf16", "run-llm",
                                          "profile-compress-vgg16-cifar10",
                                          "simulate-compress-vgg16-cifar10",
                                          "compare"]
    assert all(s["status"] == "ok" and s["rc"] == "0" and int(s["seconds_limit"]) > 0 for s in steps), steps

    device = (out / "device.txt").read_text()
    for key in ("date:", "torch:", "nvidia-smi:", "mode: dry run"):
        assert key in device, device
    runs = _rows(out / "runs" / "runs.csv")
    assert [(r["strategy"], r["status"], r["device_type"], r["devices"]) for r in runs] == [("tr-dpu", "ok", "cpu", "1")]
    assert "PASS" in (out / "logs" / "verify-n1.log").read_text()
    llm = _rows(out / "runs-llm" / "runs.csv")
    assert [(r["workload"], r["status"], r["seq_len"]) for r in llm] == [("llm-tiny", "ok", "16")]
    assert float(llm[0]["throughput_tps"]) > 0 and float(llm[0]["model_tflops"]) > 0
    assert llm[0]["mfu"] == ""  # a CPU has no known peak: blank, never a made-up figure
    bf16 = (out / "logs" / "verify-bf16.log").read_text()
    assert "PASS" in bf16 and "bf16" in bf16
    rows = _rows(out / "profile-compress-vgg16-cifar10.csv")
    modes = {r["mode"] for r in rows if r["kind"] in ("teacher", "student")}
    # every block in every compute mode (bf16 where this CPU has it natively)
    assert modes == {"", "fp32-cl"} | ({"bf16", "bf16-cl"} if native_bf16(torch.device("cpu")) else set())
    # the cache store's bandwidth, to and from host memory and disk
    assert {r["mode"] for r in rows if r["kind"] == "store"} == {"write:memory", "read:memory", "write:disk",
                                                                  "read:disk"}

    profile = _rows(out / "profile-compress-vgg16-cifar10.csv")
    batches = {int(r["batch"]) for r in profile if r["kind"] == "student"}
    assert batches == ({8} if "replica-groups: not supported" in device else {8, 4})
    assert {r["devices"] for r in _rows(out / "simulate-compress-vgg16-cifar10.csv")} == {"4", "8"}

    paper = load_experiment(os.path.join(ROOT, "experiments", "speedup.yaml")).paper_reference["compress-vgg16-cifar10"]
    table = {r["strategy"]: r for r in _rows(out / "paper-vs-simulated.csv")}
    assert {s: float(table[s]["paper_fig6_4gpu"]) for s in paper} == paper
    assert all(float(table[s]["simulated_4"]) > 0 for s in paper)
    log = (out / "gpu_check.log").read_text()
    assert "NCCL" in log and "model" in log  # the caveat is printed
    assert "one GPU: NCCL" in proc.stdout


def test_bad_argument_and_no_cuda_are_clear(tmp_path):
    proc = _run({}, "--bogus", timeout=30)
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-CUDA refusal cannot be seen here")
    out = tmp_path / "gpu"
    proc = _run({"GPU_CHECK_OUT": str(out), "GPU_CHECK_PYTHON": "/nonexistent/python"}, timeout=120)
    # python3 may exist without torch or CUDA: either way no Python sees a GPU here
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "found; set GPU_CHECK_PYTHON" in proc.stdout
    assert "no usable Python" in (out / "device.txt").read_text()
