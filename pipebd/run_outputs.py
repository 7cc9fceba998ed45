"""What a run leaves behind: rank 0 writes it after every rank has reported (DESIGN.md §5).

- ``runs.csv``: one row per run, its figures (:func:`pipebd.metrics.summarise`) with what they
  were measured on: git commit, host, CPU (:func:`cpu_description`), the load average around the
  run, and for a decoder its tokens/s and model FLOPs (:func:`token_throughput`);
- ``ranks.csv``, ``losses.csv``, ``events.csv`` and ``traces/<run>.json`` (``--trace``);
- with a test split (``--data mnist5k``), the student's top-1 and ``block_losses.csv``
  (:func:`pipebd.quality.assess`), scored after every timing figure is final;
- ``--save-weights`` and ``--save-students`` (:mod:`pipebd.export`), written atomically.

The runs.csv row is appended last, so a reader that finds it finds every other file complete.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess

import torch

from . import metrics, quality
from .config import RunConfig
from .data import DataSource
from .export import save_students, students_path
from .fileio import atomic_write
from .options import workload_options

__all__ = ["write_results", "wants_weights", "load_average", "git_commit", "token_throughput", "cpu_description",
           "PEAK_BF16_FLOPS"]


def load_average() -> float | None:
    """The host's 1-minute load average (recorded at a run's start and end, so a run that shared
    its cores with other work can be recognised afterwards); None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def write_results(cfg: RunConfig, run_id: str, workload, data: DataSource, gathered: list[dict], *,
                  resumed_from: int | None = None, load_start: float | None = None) -> dict:
    """Rank 0, once every rank has reported (``gathered``: their payloads): saves the weights
    asked for, scores the student, appends every CSV's rows, the runs.csv row last (a reader that
    sees the row sees every file it names), and returns that row."""
    reports = [g["report"] for g in sorted(gathered, key=lambda g: g["report"].rank)]
    weights = {}
    if wants_weights(cfg):
        weights, paths = {}, {}
        for g in gathered:
            for i, w in g["weights"].items():
                weights.setdefault(i, w)
            for i, p in g["paths"].items():
                paths.setdefault(i, p)
        missing = sorted(set(range(workload.num_blocks)) - set(weights))
        if missing:
            raise RuntimeError(f"strategy {cfg.strategy!r} reported no final weights for blocks {missing}")
    if cfg.save_weights:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.save_weights)), exist_ok=True)
        atomic_write(cfg.save_weights, lambda f: torch.save({"weights": weights, "paths": paths}, f), binary=True)
    summary = metrics.summarise(reports, batch_size=cfg.batch_size, steps=cfg.steps, epoch_samples=data.epoch_samples)
    row = {
        "run_id": run_id, "timestamp": _dt.datetime.now().isoformat(timespec="seconds"), "tag": cfg.tag,
        "status": "ok" if resumed_from is None else "resumed",
        "error": "" if resumed_from is None else (f"resumed from the checkpoint at after_step call {resumed_from}; "
                                                  "timings cover only the steps after it"),
        "workload": cfg.workload, "strategy": cfg.strategy, "devices": cfg.devices,
        "device_type": cfg.device_type, "batch_size": cfg.batch_size, "steps_measured": cfg.steps,
        "warmup_steps": cfg.warmup, **summary, "ideal_epoch_time_s": None, "efficiency": None,
        "plan": reports[0].plan, "resolution": workload.input_shape[-1], "width_mult": cfg.width_mult,
        "data": cfg.data, "seed": cfg.seed, "threads_per_rank": torch.get_num_threads(),
        "git_commit": git_commit(), "torch_version": torch.__version__, "hostname": socket.gethostname(),
        "load_avg_start": load_start, "load_avg_end": load_average(),
        "modes": reports[0].extra.get("modes") or "", "cpu": cpu_description(), "epochs": cfg.epochs,
        **token_throughput(cfg, workload.tokens_per_sample, summary["throughput_sps"]),
    }
    if cfg.ideal_seconds_per_sample is not None:
        row = metrics.with_ideal(row, cfg.ideal_seconds_per_sample * data.epoch_samples)
    losses = metrics.summed_losses([g.get("losses", {}) for g in gathered])
    # after training and every figure above: scoring the stitched student changes no timing
    assessed = quality.assess(cfg, weights, losses)
    row.update(student_top1=assessed.student_top1, student_top1_raw=assessed.student_top1_raw,
               teacher_top1=assessed.teacher_top1)
    out = cfg.out
    if cfg.save_students:
        save_students(students_path(out, run_id), run_id=run_id, workload=cfg.workload,
                      options=workload_options(cfg), weights=weights,
                      metrics={k: row[k] for k in ("student_top1", "student_top1_raw", "teacher_top1")},
                      data=cfg.data)
    metrics.append_rows(os.path.join(out, "losses.csv"), metrics.loss_rows(run_id, row, losses), metrics.LOSS_COLUMNS)
    if assessed.blocks:
        metrics.append_rows(os.path.join(out, "block_losses.csv"),
                            quality.block_loss_rows(run_id, row, assessed.blocks), quality.BLOCK_LOSS_COLUMNS)
    metrics.append_rows(os.path.join(out, "ranks.csv"), metrics.rank_rows(run_id, row, reports), metrics.RANK_COLUMNS)
    if cfg.trace:
        metrics.append_rows(os.path.join(out, "events.csv"), metrics.event_rows(run_id, reports), metrics.EVENT_COLUMNS)
        metrics.write_trace(os.path.join(out, "traces", f"{run_id}.json"), run_id, reports)
    metrics.append_rows(os.path.join(out, "runs.csv"), [row], metrics.RUN_COLUMNS)
    return row


def wants_weights(cfg: RunConfig) -> bool:
    """Whether the ranks send rank 0 their blocks' final student weights: to save them
    (``--save-weights``, ``--save-students``), or to score the stitched student on a test split
    (:mod:`pipebd.quality`)."""
    return bool(cfg.save_weights) or cfg.save_students or quality.has_test_split(cfg)


_GIT: str | None = None


def git_commit() -> str:
    global _GIT
    if _GIT is None:
        try:
            _GIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                  cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            _GIT = "unknown"
    return _GIT


#: Dense bf16 peak FLOP/s of known GPUs (vendor datasheets), for model FLOPs utilisation.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def token_throughput(cfg: RunConfig, tokens_per_sample: int | None, samples_per_s: float) -> dict:
    """Tokens/s of a sequence workload, the model FLOP/s it achieves (teacher forward + student
    forward and backward, 3× forward, counted by :func:`pipebd.costs.block_facts`) and, on a GPU of
    known peak, the model FLOPs utilisation (PaLM's MFU) over all devices; blank for image workloads."""
    if not tokens_per_sample:
        return {"seq_len": None, "throughput_tps": None, "model_tflops": None, "mfu": None}
    from .costs import block_facts
    from .options import workload_sizes

    per_sample = sum(f.teacher_flops + 3 * f.student_flops for f in block_facts(cfg.workload, workload_sizes(cfg)))
    tflops = per_sample * samples_per_s / 1e12
    mfu = None
    if cfg.device_type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        mfu = None if peak is None else tflops * 1e12 / (peak * cfg.devices)
    return {"seq_len": tokens_per_sample, "throughput_tps": samples_per_s * tokens_per_sample,
            "model_tflops": tflops, "mfu": mfu}


def cpu_description() -> str:
    """The host CPU's model and its widest vector / bf16 instructions (``/proc/cpuinfo``), e.g.
    ``AMD EPYC [avx2]`` or ``Intel(R) Xeon(R) Processor [avx512, avx512_bf16, amx_bf16]``: bf16
    on a CPU without ``avx512_bf16``/``amx_bf16`` is emulated, and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    if "avx512f" in have:
        have.remove("avx2")
    return f"{model or platform.machine()} [{', '.join(h.replace('avx512f', 'avx512') for h in have)}]"
